/**
 * TPM 2.0 structures the verifier reads: public areas (RSA and ECC keys), attestation structures
 * (quotes), signatures; object names; quote signature verification with node:crypto.
 *
 * Layouts follow the TCG "TPM 2.0 Library" specification, Part 2: Structures — TPMT_PUBLIC and
 * TPM2B_PUBLIC with TPMS_RSA_PARMS / TPMS_ECC_PARMS and their schemes (§12.2, §11.1, §11.2),
 * TPMA_OBJECT (§8.3), TPMS_ATTEST / TPMS_QUOTE_INFO / TPMS_CLOCK_INFO (§10.12), TPML_PCR_SELECTION
 * (§10.9), TPMT_SIGNATURE (§11.3), TPM_GENERATED (§6.2), TPM_ALG_ID (§6.3), TPM_ECC_CURVE (§6.4),
 * TPM_ST (§6.9).
 * Names: Part 1 (Architecture) §16 — Name = nameAlg ‖ H_nameAlg(marshalled TPMT_PUBLIC).
 * Quote digest: Part 3 (Commands) §18.4 TPM2_Quote — pcrDigest is the digest, with the signing
 * scheme's hash, of the selected PCR values concatenated in selection order.
 *
 * All integers are big-endian. Every read is bounds-checked; malformed input is E_ATTESTATION.
 */
import { createHash, createPublicKey, KeyObject, verify as cryptoVerify, constants as cryptoConstants } from "node:crypto";
import { TdxError } from "../errors";

export type TpmHash = "sha1" | "sha256" | "sha384" | "sha512";

export const TPM_ALG = {
  RSA: 0x0001,
  SHA1: 0x0004,
  HMAC: 0x0005,
  AES: 0x0006,
  KEYEDHASH: 0x0008,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  RSASSA: 0x0014,
  RSAES: 0x0015,
  RSAPSS: 0x0016,
  OAEP: 0x0017,
  ECDSA: 0x0018,
  ECDH: 0x0019,
  ECDAA: 0x001a,
  ECC: 0x0023,
  SYMCIPHER: 0x0025,
  CFB: 0x0043,
} as const;

const HASH_BY_ALG: Record<number, TpmHash> = { [TPM_ALG.SHA1]: "sha1", [TPM_ALG.SHA256]: "sha256", [TPM_ALG.SHA384]: "sha384", [TPM_ALG.SHA512]: "sha512" };
export const ALG_BY_HASH: Record<TpmHash, number> = { sha1: TPM_ALG.SHA1, sha256: TPM_ALG.SHA256, sha384: TPM_ALG.SHA384, sha512: TPM_ALG.SHA512 };
export const HASH_SIZE: Record<TpmHash, number> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 };

/** TPM_ECC_CURVE (Part 2 §6.4) → JWK curve name and coordinate size. */
export const ECC_CURVES: Record<number, { crv: "P-256" | "P-384" | "P-521"; size: number; node: string }> = {
  0x0003: { crv: "P-256", size: 32, node: "prime256v1" },
  0x0004: { crv: "P-384", size: 48, node: "secp384r1" },
  0x0005: { crv: "P-521", size: 66, node: "secp521r1" },
};

export const TPM_GENERATED_VALUE = 0xff544347;
export const TPM_ST_ATTEST_QUOTE = 0x8018;

/** TPMA_OBJECT bits (Part 2 §8.3.2). */
export const OBJECT_ATTR = {
  fixedTPM: 1 << 1,
  stClear: 1 << 2,
  fixedParent: 1 << 4,
  sensitiveDataOrigin: 1 << 5,
  userWithAuth: 1 << 6,
  adminWithPolicy: 1 << 7,
  noDA: 1 << 10,
  encryptedDuplication: 1 << 11,
  restricted: 1 << 16,
  decrypt: 1 << 17,
  sign: 1 << 18,
} as const;

/** An E_ATTESTATION error naming the check that failed. */
export function attestationError(check: string, message: string, hint?: string): TdxError {
  return new TdxError("E_ATTESTATION", `${check}: ${message}`, { ...(hint ? { hint } : {}), details: { check } });
}

/** Big-endian writers for marshalling TPM structures (the reader below undoes them). */
export const u8 = (v: number) => Buffer.from([v]);
export const u16 = (v: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
};
export const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
};
/** A TPM2B: u16 size, then the bytes (empty by default). */
export const tpm2b = (b: Buffer = Buffer.alloc(0)) => Buffer.concat([u16(b.length), b]);

/** Bounds-checked big-endian reader; `what` names the structure in error messages. */
export class TpmReader {
  pos = 0;
  constructor(
    readonly buf: Buffer,
    readonly what: string,
  ) {}

  private need(n: number, field: string): void {
    if (this.pos + n > this.buf.length) throw attestationError("tpm-structure", `${this.what}: ${field} at offset ${this.pos} (+${n} bytes) runs past the ${this.buf.length}-byte input`);
  }
  u8(field: string): number {
    this.need(1, field);
    return this.buf[this.pos++]!;
  }
  u16(field: string): number {
    this.need(2, field);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  u32(field: string): number {
    this.need(4, field);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  u64(field: string): bigint {
    this.need(8, field);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }
  bytes(n: number, field: string): Buffer {
    this.need(n, field);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  /** A TPM2B: u16 size, then that many bytes (at most `max`). */
  tpm2b(field: string, max = 4096): Buffer {
    const n = this.u16(`${field}.size`);
    if (n > max) throw attestationError("tpm-structure", `${this.what}: ${field} is ${n} bytes, more than the ${max} allowed`);
    return this.bytes(n, field);
  }
  end(): void {
    if (this.pos !== this.buf.length) throw attestationError("tpm-structure", `${this.what}: ${this.buf.length - this.pos} trailing bytes after the structure`);
  }
}

function hashOf(alg: number, what: string, allowSha1 = false): TpmHash {
  const h = HASH_BY_ALG[alg];
  if (!h || (h === "sha1" && !allowSha1)) throw attestationError("tpm-structure", `${what}: hash algorithm 0x${alg.toString(16)} is not supported (SHA-256, SHA-384 or SHA-512)`);
  return h;
}

/** TPMT_SYM_DEF_OBJECT: algorithm, then keyBits and mode unless NULL. */
export interface SymDef { alg: number; keyBits?: number; mode?: number }
/** TPMT_RSA_SCHEME / TPMT_ECC_SCHEME / TPMT_KDF_SCHEME: scheme, then its hash unless NULL. */
export interface Scheme { scheme: number; hashAlg?: number }

export interface TpmPublic {
  type: "rsa" | "ecc";
  nameAlg: TpmHash;
  attributes: number;
  authPolicy: Buffer;
  symmetric: SymDef;
  scheme: Scheme;
  /** RSA */
  keyBits?: number;
  exponent?: number;
  modulus?: Buffer;
  /** ECC */
  curveId?: number;
  kdf?: Scheme;
  x?: Buffer;
  y?: Buffer;
  /** The marshalled TPMT_PUBLIC (what the name hashes). */
  raw: Buffer;
}

function symDef(r: TpmReader): SymDef {
  const alg = r.u16("symmetric.algorithm");
  if (alg === TPM_ALG.NULL) return { alg };
  return { alg, keyBits: r.u16("symmetric.keyBits"), mode: r.u16("symmetric.mode") };
}

function scheme(r: TpmReader, field: string): Scheme {
  const s = r.u16(`${field}.scheme`);
  if (s === TPM_ALG.NULL) return { scheme: s };
  const hashAlg = r.u16(`${field}.hashAlg`);
  if (s === TPM_ALG.ECDAA) r.u16(`${field}.count`);
  return { scheme: s, hashAlg };
}

/** Parse a TPMT_PUBLIC (RSA or ECC), consuming it from `r`. */
function parseTpmtPublic(r: TpmReader): TpmPublic {
  const start = r.pos;
  const typeAlg = r.u16("type");
  const nameAlg = hashOf(r.u16("nameAlg"), `${r.what} nameAlg`);
  const attributes = r.u32("objectAttributes");
  const authPolicy = r.tpm2b("authPolicy", 64);
  if (typeAlg === TPM_ALG.RSA) {
    const symmetric = symDef(r);
    const sch = scheme(r, "scheme");
    const keyBits = r.u16("keyBits");
    const exponent = r.u32("exponent");
    const modulus = r.tpm2b("unique.rsa", 512);
    if (keyBits < 2048 || keyBits > 4096 || modulus.length * 8 !== keyBits) throw attestationError("tpm-structure", `${r.what}: RSA key of ${keyBits} bits with a ${modulus.length}-byte modulus`);
    // A real RSA modulus has its top bit set (keyBits long) and is odd; a real exponent is odd and
    // above 1. Anything else (0, 3, an even number) is hostile: refused here, not by OpenSSL later.
    if (!(modulus[0] & 0x80) || !(modulus[modulus.length - 1] & 1)) throw attestationError("tpm-structure", `${r.what}: the RSA modulus is not a ${keyBits}-bit odd number`);
    if (exponent !== 0 && (exponent < 3 || exponent % 2 === 0)) throw attestationError("tpm-structure", `${r.what}: RSA exponent ${exponent} is not an odd number above 1`);
    return { type: "rsa", nameAlg, attributes, authPolicy, symmetric, scheme: sch, keyBits, exponent: exponent === 0 ? 65537 : exponent, modulus, raw: r.buf.subarray(start, r.pos) };
  }
  if (typeAlg === TPM_ALG.ECC) {
    const symmetric = symDef(r);
    const sch = scheme(r, "scheme");
    const curveId = r.u16("curveID");
    const kdf = scheme(r, "kdf");
    const x = r.tpm2b("unique.ecc.x", 66);
    const y = r.tpm2b("unique.ecc.y", 66);
    const curve = ECC_CURVES[curveId];
    if (!curve) throw attestationError("tpm-structure", `${r.what}: ECC curve 0x${curveId.toString(16)} is not supported (NIST P-256, P-384, P-521)`);
    if (x.length > curve.size || y.length > curve.size) throw attestationError("tpm-structure", `${r.what}: ECC point coordinates longer than the curve's ${curve.size} bytes`);
    return { type: "ecc", nameAlg, attributes, authPolicy, symmetric, scheme: sch, curveId, kdf, x, y, raw: r.buf.subarray(start, r.pos) };
  }
  throw attestationError("tpm-structure", `${r.what}: object type 0x${typeAlg.toString(16)} is not an RSA or ECC key`);
}

/** TPM2B_PUBLIC (as `tpm2_createak -u`, `tpm2_readpublic -o` write it). */
export function parseTpm2bPublic(buf: Buffer, what = "TPM2B_PUBLIC"): TpmPublic {
  const r = new TpmReader(buf, what);
  const size = r.u16("size");
  if (size !== buf.length - 2) throw attestationError("tpm-structure", `${what}: size field says ${size} bytes, the structure has ${buf.length - 2}`);
  const p = parseTpmtPublic(r);
  r.end();
  return p;
}

/** Part 1 §16: Name = nameAlg (u16) ‖ H_nameAlg(TPMT_PUBLIC). */
export function objectName(pub: TpmPublic): Buffer {
  const alg = Buffer.alloc(2);
  alg.writeUInt16BE(ALG_BY_HASH[pub.nameAlg]);
  return Buffer.concat([alg, createHash(pub.nameAlg).update(pub.raw).digest()]);
}

const pad = (b: Buffer, size: number) => (b.length >= size ? b : Buffer.concat([Buffer.alloc(size - b.length), b]));

/** The public key as a node:crypto KeyObject. */
export function publicKeyOf(pub: TpmPublic): KeyObject {
  try {
    if (pub.type === "rsa") {
      const e = Buffer.alloc(4);
      e.writeUInt32BE(pub.exponent!);
      let i = 0;
      while (i < 3 && e[i] === 0) i++;
      return createPublicKey({ key: { kty: "RSA", n: pub.modulus!.toString("base64url"), e: e.subarray(i).toString("base64url") }, format: "jwk" });
    }
    const c = ECC_CURVES[pub.curveId!]!;
    return createPublicKey({ key: { kty: "EC", crv: c.crv, x: pad(pub.x!, c.size).toString("base64url"), y: pad(pub.y!, c.size).toString("base64url") }, format: "jwk" });
  } catch (e) {
    throw attestationError("ak-public", `the ${pub.type.toUpperCase()} public key is not a valid key (${(e as Error).message})`);
  }
}

/** DER SubjectPublicKeyInfo of a TPM public area: to compare with a certificate's key. */
export function spkiOf(pub: TpmPublic): Buffer {
  return publicKeyOf(pub).export({ type: "spki", format: "der" });
}

/** What an attestation key must be: a restricted signing key whose private part never left the TPM. */
export function akAttributeProblems(pub: TpmPublic): string[] {
  const need: Array<keyof typeof OBJECT_ATTR> = ["fixedTPM", "fixedParent", "sensitiveDataOrigin", "restricted", "sign"];
  const problems = need.filter((a) => !(pub.attributes & OBJECT_ATTR[a])).map((a) => `${a} is not set`);
  if (pub.attributes & OBJECT_ATTR.decrypt) problems.push("decrypt is set (a restricted signing key must not decrypt)");
  return problems;
}

export interface PcrSelection { hash: TpmHash; pcrs: number[] }

export interface TpmsAttest {
  magic: number;
  type: number;
  qualifiedSigner: Buffer;
  extraData: Buffer;
  clock: bigint;
  resetCount: number;
  restartCount: number;
  safe: boolean;
  firmwareVersion: bigint;
  /** TPMS_QUOTE_INFO (type TPM_ST_ATTEST_QUOTE). */
  pcrSelect: PcrSelection[];
  pcrDigest: Buffer;
}

/** TPMS_ATTEST of a quote (as `tpm2_quote -m` writes it). Other attestation types are refused. */
export function parseQuoteAttest(buf: Buffer): TpmsAttest {
  const r = new TpmReader(buf, "TPMS_ATTEST");
  const magic = r.u32("magic");
  const type = r.u16("type");
  if (magic !== TPM_GENERATED_VALUE) throw attestationError("quote-structure", `magic is 0x${magic.toString(16)}, not TPM_GENERATED_VALUE (0xff544347): the TPM did not produce this structure`);
  if (type !== TPM_ST_ATTEST_QUOTE) throw attestationError("quote-structure", `attestation type is 0x${type.toString(16)}, not TPM_ST_ATTEST_QUOTE (0x8018)`);
  const qualifiedSigner = r.tpm2b("qualifiedSigner", 68);
  const extraData = r.tpm2b("extraData", 64);
  const clock = r.u64("clockInfo.clock");
  const resetCount = r.u32("clockInfo.resetCount");
  const restartCount = r.u32("clockInfo.restartCount");
  const safe = r.u8("clockInfo.safe") === 1;
  const firmwareVersion = r.u64("firmwareVersion");
  const count = r.u32("pcrSelect.count");
  if (count > 16) throw attestationError("quote-structure", `TPML_PCR_SELECTION has ${count} banks (at most 16)`);
  const pcrSelect: PcrSelection[] = [];
  for (let i = 0; i < count; i++) {
    const hash = hashOf(r.u16(`pcrSelections[${i}].hash`), `PCR selection ${i}`, true);
    const size = r.u8(`pcrSelections[${i}].sizeofSelect`);
    if (size > 4) throw attestationError("quote-structure", `PCR selection ${i} has a ${size}-byte bitmap (at most 4)`);
    const bits = r.bytes(size, `pcrSelections[${i}].pcrSelect`);
    const pcrs: number[] = [];
    for (let b = 0; b < size * 8; b++) if (bits[b >> 3]! & (1 << (b & 7))) pcrs.push(b);
    pcrSelect.push({ hash, pcrs });
  }
  const pcrDigest = r.tpm2b("pcrDigest", 64);
  r.end();
  return { magic, type, qualifiedSigner, extraData, clock, resetCount, restartCount, safe, firmwareVersion, pcrSelect, pcrDigest };
}

export interface TpmSignature { alg: "rsassa" | "rsapss" | "ecdsa"; hash: TpmHash; sig?: Buffer; r?: Buffer; s?: Buffer }

/** TPMT_SIGNATURE (as `tpm2_quote -s` writes it): RSASSA, RSAPSS or ECDSA. */
export function parseSignature(buf: Buffer): TpmSignature {
  const r = new TpmReader(buf, "TPMT_SIGNATURE");
  const alg = r.u16("sigAlg");
  let out: TpmSignature;
  if (alg === TPM_ALG.RSASSA || alg === TPM_ALG.RSAPSS) {
    out = { alg: alg === TPM_ALG.RSASSA ? "rsassa" : "rsapss", hash: hashOf(r.u16("hash"), "signature hash"), sig: r.tpm2b("sig", 512) };
  } else if (alg === TPM_ALG.ECDSA) {
    out = { alg: "ecdsa", hash: hashOf(r.u16("hash"), "signature hash"), r: r.tpm2b("signatureR", 66), s: r.tpm2b("signatureS", 66) };
  } else {
    throw attestationError("quote-signature", `signature algorithm 0x${alg.toString(16)} is not RSASSA, RSAPSS or ECDSA`);
  }
  r.end();
  return out;
}

/** True when `sig` is a valid signature of `message` by `key`; false for a wrong signature, error for a mismatch of kinds. */
export function verifySignature(key: TpmPublic, message: Buffer, sig: TpmSignature): boolean {
  const pk = publicKeyOf(key);
  if (key.scheme.scheme !== TPM_ALG.NULL) {
    const wantAlg = { rsassa: TPM_ALG.RSASSA, rsapss: TPM_ALG.RSAPSS, ecdsa: TPM_ALG.ECDSA }[sig.alg];
    if (key.scheme.scheme !== wantAlg || (key.scheme.hashAlg !== undefined && HASH_BY_ALG[key.scheme.hashAlg] !== sig.hash)) {
      throw attestationError("quote-signature", `the signature (${sig.alg}/${sig.hash}) does not use the key's own scheme`);
    }
  }
  if (sig.alg === "ecdsa") {
    if (key.type !== "ecc") throw attestationError("quote-signature", "an ECDSA signature from a key that is not ECC");
    const size = ECC_CURVES[key.curveId!]!.size;
    if (sig.r!.length > size || sig.s!.length > size) return false;
    return cryptoVerify(sig.hash, message, { key: pk, dsaEncoding: "ieee-p1363" }, Buffer.concat([pad(sig.r!, size), pad(sig.s!, size)]));
  }
  if (key.type !== "rsa") throw attestationError("quote-signature", `an ${sig.alg.toUpperCase()} signature from a key that is not RSA`);
  if (sig.alg === "rsassa") return cryptoVerify(sig.hash, message, { key: pk, padding: cryptoConstants.RSA_PKCS1_PADDING }, sig.sig!);
  // RSAPSS: the salt length is the TPM's choice (implementations differ); PSS verification recovers it.
  return cryptoVerify(sig.hash, message, { key: pk, padding: cryptoConstants.RSA_PKCS1_PSS_PADDING, saltLength: cryptoConstants.RSA_PSS_SALTLEN_AUTO }, sig.sig!);
}

/**
 * Part 3 §18.4: the digest (with `hash`) of the selected PCR values concatenated in selection
 * order — bank by bank as listed, PCRs in increasing index order. `values` is bank → index → hex.
 * Missing values are reported, not guessed.
 */
export function pcrSelectionDigest(hash: TpmHash, selection: PcrSelection[], values: Partial<Record<string, Record<string, string>>>): { digest?: Buffer; missing: string[] } {
  const h = createHash(hash);
  const missing: string[] = [];
  for (const sel of selection) {
    for (const pcr of sel.pcrs) {
      const v = values[sel.hash]?.[String(pcr)];
      if (v === undefined || v.length !== 2 * HASH_SIZE[sel.hash]) missing.push(`${sel.hash}:${pcr}`);
      else h.update(Buffer.from(v, "hex"));
    }
  }
  return missing.length ? { missing } : { digest: h.digest(), missing };
}
