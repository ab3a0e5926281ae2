/**
 * The agent's TLS identity: a fresh ECDSA P-256 key and a self-signed X.509 v3 certificate made at
 * every start. The key never leaves memory; a verifier binds its secrets to it through the SHA-256
 * of its SubjectPublicKeyInfo, which the platform-signed evidence commits to (docs/design.md §7).
 *
 * DER encoding written from ITU-T X.690 (definite lengths) and the certificate structure from
 * RFC 5280 §4.1; ecdsa-with-SHA256 = 1.2.840.10045.4.3.2 (RFC 5758 §3.2).
 */
import { createHash, generateKeyPairSync, KeyObject, randomBytes, sign, X509Certificate } from "node:crypto";

function len(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}
const tlv = (tag: number, body: Buffer) => Buffer.concat([Buffer.from([tag]), len(body.length), body]);
const seq = (...items: Buffer[]) => tlv(0x30, Buffer.concat(items));
const set = (...items: Buffer[]) => tlv(0x31, Buffer.concat(items));
const oid = (dotted: string) => {
  const parts = dotted.split(".").map(Number);
  const out = [40 * parts[0] + parts[1]];
  for (const p of parts.slice(2)) {
    const b: number[] = [p & 0x7f];
    for (let v = Math.floor(p / 128); v > 0; v = Math.floor(v / 128)) b.unshift(0x80 | (v & 0x7f));
    out.push(...b);
  }
  return tlv(0x06, Buffer.from(out));
};
const utf8 = (s: string) => tlv(0x0c, Buffer.from(s, "utf8"));
const int = (b: Buffer) => tlv(0x02, b[0] & 0x80 ? Buffer.concat([Buffer.from([0]), b]) : b);
/** UTCTime for years 1950–2049, GeneralizedTime after (RFC 5280 §4.1.2.5). */
const time = (d: Date) => {
  const s = d.toISOString().replace(/[-:T]/g, "").slice(0, 14) + "Z";
  return d.getUTCFullYear() < 2050 ? tlv(0x17, Buffer.from(s.slice(2), "latin1")) : tlv(0x18, Buffer.from(s, "latin1"));
};

export interface TlsIdentity {
  /** PKCS#8 PEM of the private key (Node's TLS takes keys as PEM); held in memory only. */
  keyPem: string;
  /** The same key: sealed secrets deliveries are encrypted to it (provider/secrets/owner.ts). */
  privateKey: KeyObject;
  certPem: string;
  /** SHA-256 of the DER SubjectPublicKeyInfo: what the evidence binds. */
  spkiSha256: Buffer;
}

export function spkiSha256Of(cert: X509Certificate): Buffer {
  return createHash("sha256").update(cert.publicKey.export({ type: "spki", format: "der" })).digest();
}

export function newTlsIdentity(commonName = "tdxvm-agent", now = new Date()): TlsIdentity {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const spki = publicKey.export({ type: "spki", format: "der" });
  const algorithm = seq(oid("1.2.840.10045.4.3.2"));
  const name = seq(set(seq(oid("2.5.4.3"), utf8(commonName))));
  const serial = randomBytes(16);
  serial[0] &= 0x7f;
  const notBefore = new Date(now.getTime() - 5 * 60_000);
  const notAfter = new Date(now.getTime() + 365 * 24 * 3600_000);
  const tbs = seq(
    tlv(0xa0, int(Buffer.from([2]))), // version v3
    int(serial),
    algorithm,
    name,
    seq(time(notBefore), time(notAfter)),
    name,
    spki,
  );
  const signature = sign("sha256", tbs, privateKey);
  const der = seq(tbs, algorithm, tlv(0x03, Buffer.concat([Buffer.from([0]), signature])));
  const certPem = `-----BEGIN CERTIFICATE-----\n${der.toString("base64").replace(/.{1,64}/g, "$&\n")}-----END CERTIFICATE-----\n`;
  return { keyPem: privateKey.export({ type: "pkcs8", format: "pem" }) as string, privateKey, certPem, spkiSha256: createHash("sha256").update(spki).digest() };
}
