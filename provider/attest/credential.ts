/**
 * TPM2_MakeCredential on the verifier's side: wrap a secret so that only the TPM holding the EK
 * *and* an object with the given Name (the AK) can recover it with TPM2_ActivateCredential. That
 * is how a verifier learns that the AK lives in the same TPM as a certified EK (the protocol of
 * Keylime and go-attestation; docs/design.md §7).
 *
 * Formulas from the TCG "TPM 2.0 Library" specification:
 * - Part 1 §24 (Credential Protection): seed; symmetric key = KDFa(nameAlg, seed, "STORAGE", Name,
 *   ∅, symmetric key bits); encIdentity = CFB-encrypt(symKey, IV 0, TPM2B_DIGEST(credential)) —
 *   the size field is encrypted too; HMAC key = KDFa(nameAlg, seed, "INTEGRITY", ∅, ∅, digest
 *   bits); outer HMAC = HMAC_nameAlg(HMAC key, encIdentity ‖ Name).
 * - Part 1 §11.4.10.2 KDFa (SP 800-108 counter mode with HMAC; the label is NUL-terminated) and
 *   §11.4.10.3 KDFe (SP 800-56A concatenation KDF: H(counter ‖ Z ‖ label ‖ partyU ‖ partyV)).
 * - Part 1 Annexes B (RSA) and C (ECC), "Secret Sharing": for an RSA EK the seed is random and
 *   travels RSA-OAEP encrypted with the EK's nameAlg and the label "IDENTITY\0"; for an ECC EK it
 *   is one-pass ECDH with an ephemeral key, seed = KDFe(nameAlg, Z = x of the shared point,
 *   "IDENTITY", ephemeral x, EK x), and the encrypted secret is the ephemeral public point.
 * - Part 2: TPMS_ID_OBJECT (integrityHMAC as TPM2B_DIGEST, then encIdentity), TPM2B_ID_OBJECT,
 *   TPM2B_ENCRYPTED_SECRET, TPMS_ECC_POINT.
 * Outputs are marshalled as the TPM marshals TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET
 * (size-prefixed): the parameters of TPM2_ActivateCredential, as the agent sends them.
 */
import { createCipheriv, createECDH, createHash, createHmac, publicEncrypt, randomBytes, constants as cryptoConstants } from "node:crypto";
import { attestationError, ECC_CURVES, HASH_SIZE, publicKeyOf, TPM_ALG, TpmHash, TpmPublic, u32, tpm2b } from "./tpm2";

const label = (s: string) => Buffer.from(`${s}\0`, "latin1");

/** KDFa (Part 1 §11.4.10.2): SP 800-108 counter-mode KDF with HMAC-`hash`. */
export function kdfa(hash: TpmHash, key: Buffer, use: string, contextU: Buffer, contextV: Buffer, bits: number): Buffer {
  const out: Buffer[] = [];
  const bytes = Math.ceil(bits / 8);
  for (let i = 1, have = 0; have < bytes; i++) {
    const block = createHmac(hash, key).update(u32(i)).update(label(use)).update(contextU).update(contextV).update(u32(bits)).digest();
    out.push(block);
    have += block.length;
  }
  return Buffer.concat(out).subarray(0, bytes);
}

/** KDFe (Part 1 §11.4.10.3): SP 800-56A concatenation KDF with `hash`. */
export function kdfe(hash: TpmHash, z: Buffer, use: string, partyU: Buffer, partyV: Buffer, bits: number): Buffer {
  const out: Buffer[] = [];
  const bytes = Math.ceil(bits / 8);
  for (let i = 1, have = 0; have < bytes; i++) {
    const block = createHash(hash).update(u32(i)).update(z).update(label(use)).update(partyU).update(partyV).digest();
    out.push(block);
    have += block.length;
  }
  return Buffer.concat(out).subarray(0, bytes);
}

export interface Credential {
  /** Marshalled TPM2B_ID_OBJECT. */
  idObject: Buffer;
  /** Marshalled TPM2B_ENCRYPTED_SECRET. */
  encSecret: Buffer;
}

/** Seed and its encrypted form for the EK (RSA-OAEP or ECDH). `ephemeral` is for tests only. */
function seedFor(ek: TpmPublic, ephemeralPrivate?: Buffer): { seed: Buffer; encrypted: Buffer } {
  const size = HASH_SIZE[ek.nameAlg];
  if (ek.type === "rsa") {
    const seed = randomBytes(size);
    let encrypted: Buffer;
    try {
      encrypted = publicEncrypt({ key: publicKeyOf(ek), padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING, oaepHash: ek.nameAlg, oaepLabel: label("IDENTITY") }, seed);
    } catch (e) {
      throw attestationError("ek-public", `the EK's RSA key cannot encrypt the credential seed (${(e as Error).message})`);
    }
    return { seed, encrypted };
  }
  const curve = ECC_CURVES[ek.curveId!]!;
  const ecdh = createECDH(curve.node);
  if (ephemeralPrivate) ecdh.setPrivateKey(ephemeralPrivate);
  else ecdh.generateKeys();
  const point = ecdh.getPublicKey(); // 0x04 ‖ x ‖ y
  const ex = point.subarray(1, 1 + curve.size);
  const ey = point.subarray(1 + curve.size);
  const pad = (b: Buffer) => (b.length >= curve.size ? b : Buffer.concat([Buffer.alloc(curve.size - b.length), b]));
  const ekPoint = Buffer.concat([Buffer.from([4]), pad(ek.x!), pad(ek.y!)]);
  let z: Buffer;
  try {
    z = ecdh.computeSecret(ekPoint); // the x coordinate of the shared point
  } catch (e) {
    throw attestationError("ek-public", `the EK's ECC point is not on its curve (${(e as Error).message})`);
  }
  const seed = kdfe(ek.nameAlg, z, "IDENTITY", ex, pad(ek.x!), size * 8);
  return { seed, encrypted: Buffer.concat([tpm2b(ex), tpm2b(ey)]) };
}

/**
 * TPM2_MakeCredential(ek, objectName, secret) for an RSA (2048+) or ECC (P-256/P-384/P-521)
 * storage key with an AES-CFB symmetric definition, as the TCG EK templates have.
 */
export function makeCredential(ek: TpmPublic, objectName: Buffer, secret: Buffer, testOnly?: { ephemeralPrivate?: Buffer }): Credential {
  const digestSize = HASH_SIZE[ek.nameAlg];
  if (secret.length === 0 || secret.length > digestSize) throw attestationError("credential", `the credential is ${secret.length} bytes; it must be 1–${digestSize} (the EK's name digest size)`);
  if (!(ek.attributes & (1 << 17)) || !(ek.attributes & (1 << 16))) throw attestationError("ek-public", "the EK is not a restricted decryption key");
  const sym = ek.symmetric;
  if (sym.alg !== TPM_ALG.AES || sym.mode !== TPM_ALG.CFB || ![128, 192, 256].includes(sym.keyBits ?? 0)) {
    throw attestationError("ek-public", `the EK's symmetric definition (0x${sym.alg.toString(16)}/${sym.keyBits}/0x${(sym.mode ?? 0).toString(16)}) is not AES-CFB`);
  }
  const { seed, encrypted } = seedFor(ek, testOnly?.ephemeralPrivate);
  const symKey = kdfa(ek.nameAlg, seed, "STORAGE", objectName, Buffer.alloc(0), sym.keyBits!);
  const cipher = createCipheriv(`aes-${sym.keyBits}-cfb`, symKey, Buffer.alloc(16));
  const encIdentity = Buffer.concat([cipher.update(tpm2b(secret)), cipher.final()]);
  const hmacKey = kdfa(ek.nameAlg, seed, "INTEGRITY", Buffer.alloc(0), Buffer.alloc(0), digestSize * 8);
  const integrity = createHmac(ek.nameAlg, hmacKey).update(encIdentity).update(objectName).digest();
  return { idObject: tpm2b(Buffer.concat([tpm2b(integrity), encIdentity])), encSecret: tpm2b(encrypted) };
}
