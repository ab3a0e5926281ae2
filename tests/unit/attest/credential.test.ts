/**
 * makeCredential: KDFa/KDFe against an independent Python implementation (independent/kdf.py),
 * and the TPM's side of TPM2_ActivateCredential replayed with a software EK whose private key we
 * hold — RSA-OAEP("IDENTITY") or ECDH, integrity HMAC over encIdentity ‖ name, AES-CFB — using the
 * independent KDFs. The real TPM's activation is cross-checked in tests/integration/attest.test.ts.
 */
import { execFileSync } from "node:child_process";
import * as path from "node:path";
import { createDecipheriv, createECDH, createHmac, generateKeyPairSync, privateDecrypt, constants as cc } from "node:crypto";
import { kdfa, kdfe, makeCredential } from "../../../provider/attest/credential";
import { objectName, parseTpm2bPublic, TpmPublic } from "../../../provider/attest/tpm2";
import { fx } from "./fixtures";
import type { TdxError } from "../../../provider/errors";

type KdfCall = [kind: "kdfa" | "kdfe", hash: string, key: string, label: string, u: string, v: string, bits: number];
/** Run independent/kdf.py once for a batch of KDF calls. */
const independent = (calls: KdfCall[]): Buffer[] =>
  (JSON.parse(execFileSync("python3", [path.join(__dirname, "independent", "kdf.py")], { input: JSON.stringify(calls), encoding: "utf8" })) as string[]).map((h) => Buffer.from(h, "hex"));

describe("KDFs", () => {
  it("KDFa and KDFe equal the independent implementation for several hashes and lengths", () => {
    const key = Buffer.from("00112233445566778899aabbccddeeff", "hex");
    const u = Buffer.from("000b" + "ab".repeat(32), "hex");
    const z = Buffer.alloc(32, 7);
    const ours: Buffer[] = [];
    const calls: KdfCall[] = [];
    for (const [hash, bits] of [["sha256", 128], ["sha256", 256], ["sha256", 300], ["sha384", 256], ["sha512", 1000]] as const) {
      ours.push(kdfa(hash, key, "STORAGE", u, Buffer.alloc(0), bits));
      calls.push(["kdfa", hash, key.toString("hex"), "STORAGE", u.toString("hex"), "", bits]);
    }
    for (const [hash, bits] of [["sha256", 256], ["sha384", 384], ["sha256", 520]] as const) {
      ours.push(kdfe(hash, z, "IDENTITY", Buffer.alloc(32, 1), Buffer.alloc(32, 2), bits));
      calls.push(["kdfe", hash, z.toString("hex"), "IDENTITY", "01".repeat(32), "02".repeat(32), bits]);
    }
    expect(ours.map((b) => b.toString("hex"))).toEqual(independent(calls).map((b) => b.toString("hex")));
    expect(ours[2]).toHaveLength(38); // 300 bits round up to whole bytes
  });
});

/** A TPMT_PUBLIC for a software key with the EK template's attributes (restricted decrypt, AES-128-CFB). */
function ekPublic(kind: "rsa" | "ecc", pub: { n?: Buffer; x?: Buffer; y?: Buffer }): TpmPublic {
  const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
  const tpm2b = (b: Buffer) => Buffer.concat([u16(b.length), b]);
  const attrs = Buffer.alloc(4);
  attrs.writeUInt32BE((1 << 1) | (1 << 4) | (1 << 5) | (1 << 7) | (1 << 16) | (1 << 17));
  const common = [u16(kind === "rsa" ? 0x0001 : 0x0023), u16(0x000b), attrs, tpm2b(Buffer.alloc(32, 9)), u16(0x0006), u16(128), u16(0x0043), u16(0x0010)];
  const body = kind === "rsa" ? [...common, u16(2048), Buffer.alloc(4), tpm2b(pub.n!)] : [...common, u16(0x0003), u16(0x0010), tpm2b(pub.x!), tpm2b(pub.y!)];
  const t = Buffer.concat(body);
  return parseTpm2bPublic(Buffer.concat([u16(t.length), t]));
}

/** The TPM's TPM2_ActivateCredential, from Part 1 §24, with the independent KDFs. */
function activate(seed: Buffer, name: Buffer, idObject: Buffer): Buffer {
  const id = idObject.subarray(2);
  const hmacLen = id.readUInt16BE(0);
  const integrity = id.subarray(2, 2 + hmacLen);
  const encIdentity = id.subarray(2 + hmacLen);
  const [hmacKey, symKey] = independent([["kdfa", "sha256", seed.toString("hex"), "INTEGRITY", "", "", 256], ["kdfa", "sha256", seed.toString("hex"), "STORAGE", name.toString("hex"), "", 128]]);
  if (!createHmac("sha256", hmacKey).update(encIdentity).update(name).digest().equals(integrity)) throw new Error("integrity HMAC mismatch");
  const d = createDecipheriv("aes-128-cfb", symKey, Buffer.alloc(16));
  const plain = Buffer.concat([d.update(encIdentity), d.final()]);
  return plain.subarray(2, 2 + plain.readUInt16BE(0));
}

describe("makeCredential", () => {
  const name = objectName(parseTpm2bPublic(fx("tpm/ak-ecc.pub")));
  const secret = Buffer.from("0123456789abcdef0123456789abcdef");

  it("RSA EK: the seed travels RSA-OAEP(SHA-256, \"IDENTITY\\0\"); the TPM side recovers the secret only for the right name", () => {
    const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const n = Buffer.from(publicKey.export({ format: "jwk" }).n!, "base64url");
    const c = makeCredential(ekPublic("rsa", { n }), name, secret);
    expect(c.encSecret.readUInt16BE(0)).toBe(256);
    const seed = privateDecrypt({ key: privateKey, padding: cc.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256", oaepLabel: Buffer.from("IDENTITY\0") }, c.encSecret.subarray(2));
    expect(seed).toHaveLength(32);
    expect(activate(seed, name, c.idObject).equals(secret)).toBe(true);
    const otherName = Buffer.from(name);
    otherName[5] ^= 1;
    expect(() => activate(seed, otherName, c.idObject)).toThrow(/integrity/);
  });

  it("ECC P-256 EK: ECDH with an ephemeral key, seed = KDFe(Z, \"IDENTITY\", ephemeral x, EK x); encSecret is the ephemeral point", () => {
    const ek = createECDH("prime256v1");
    ek.generateKeys();
    const p = ek.getPublicKey();
    const c = makeCredential(ekPublic("ecc", { x: p.subarray(1, 33), y: p.subarray(33) }), name, secret);
    const point = c.encSecret.subarray(2);
    const ex = point.subarray(2, 2 + point.readUInt16BE(0));
    const ey = point.subarray(4 + ex.length);
    const z = ek.computeSecret(Buffer.concat([Buffer.from([4]), ex, ey]));
    const [seed] = independent([["kdfe", "sha256", z.toString("hex"), "IDENTITY", ex.toString("hex"), p.subarray(1, 33).toString("hex"), 256]]);
    expect(activate(seed, name, c.idObject).equals(secret)).toBe(true);
  });

  it("a hostile RSA EK (modulus 0, 3 or even; exponent 1 or even) is a refused check with a code, never a raw OpenSSL error", () => {
    const good = generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey.export({ format: "jwk" });
    const n = Buffer.from(good.n!, "base64url");
    const mod = (f: (b: Buffer) => void) => {
      const b = Buffer.from(n);
      f(b);
      return b;
    };
    for (const [what, m] of [["zero", Buffer.alloc(256)], ["three", mod((b) => (b.fill(0), (b[255] = 3)))], ["even", mod((b) => (b[255] &= 0xfe))], ["short top bit", mod((b) => (b[0] &= 0x7f))]] as const) {
      let err: unknown;
      try {
        makeCredential(ekPublic("rsa", { n: m }), name, secret);
      } catch (e) {
        err = e;
      }
      expect([what, (err as TdxError).code, (err as TdxError).details]).toEqual([what, "E_ATTESTATION", { check: "tpm-structure" }]);
    }
  });

  it("uses a fresh seed each time", () => {
    const ek = parseTpm2bPublic(fx("tpm/ek-rsa.pub"));
    expect(makeCredential(ek, name, secret).idObject.equals(makeCredential(ek, name, secret).idObject)).toBe(false);
  });

  it("refuses secrets longer than the name digest, and keys that are not restricted decryption keys", () => {
    const ek = parseTpm2bPublic(fx("tpm/ek-rsa.pub"));
    expect(() => makeCredential(ek, name, Buffer.alloc(33))).toThrow(/1–32/);
    expect(() => makeCredential(parseTpm2bPublic(fx("tpm/ak-rsassa.pub")), name, secret)).toThrow(/not a restricted decryption key/);
  });
});
