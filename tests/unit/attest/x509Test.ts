/**
 * X.509 certificates made in tests (DER written by hand from RFC 5280 §4.1, signed with
 * node:crypto): for the chain rules the fixtures cannot reach — a leaf outside its validity under a
 * valid CA, a CA outside its own, an issuer that is not a CA, an EK certificate without the TCG EK
 * purpose. ECDSA P-256 with SHA-256 (RFC 5758 §3.2) throughout.
 */
import { generateKeyPairSync, KeyObject, sign, X509Certificate } from "node:crypto";

const len = (n: number): Buffer => {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v >>= 8) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
};
const tlv = (tag: number, ...content: Buffer[]): Buffer => {
  const c = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), len(c.length), c]);
};
const seq = (...c: Buffer[]) => tlv(0x30, ...c);
const set = (...c: Buffer[]) => tlv(0x31, ...c);
const int = (n: number) => {
  const bytes: number[] = [];
  for (let v = n; v > 0 || !bytes.length; v >>= 8) bytes.unshift(v & 0xff);
  if (bytes[0]! & 0x80) bytes.unshift(0);
  return tlv(0x02, Buffer.from(bytes));
};
const bool = (v: boolean) => tlv(0x01, Buffer.from([v ? 0xff : 0]));
const octets = (b: Buffer) => tlv(0x04, b);
const bits = (b: Buffer) => tlv(0x03, Buffer.from([0]), b);
function oid(dotted: string): Buffer {
  const [a, b, ...rest] = dotted.split(".").map(Number);
  const out = [40 * a! + b!];
  for (const v of rest) {
    const septets: number[] = [];
    for (let x = v; ; x = Math.floor(x / 128)) {
      septets.unshift(x % 128);
      if (x < 128) break;
    }
    out.push(...septets.map((s, i) => (i < septets.length - 1 ? s | 0x80 : s)));
  }
  return tlv(0x06, Buffer.from(out));
}
function time(d: Date): Buffer {
  const iso = d.toISOString().replace(/[-:T]/g, "").slice(0, 14) + "Z"; // YYYYMMDDHHMMSSZ
  return d.getUTCFullYear() < 2050 ? tlv(0x17, Buffer.from(iso.slice(2), "latin1")) : tlv(0x18, Buffer.from(iso, "latin1"));
}
const name = (cn: string) => seq(set(seq(oid("2.5.4.3"), tlv(0x0c, Buffer.from(cn, "utf8")))));
const ECDSA_SHA256 = seq(oid("1.2.840.10045.4.3.2"));
const ext = (id: string, critical: boolean, value: Buffer) => seq(oid(id), ...(critical ? [bool(true)] : []), octets(value));

export const TCG_EK_PURPOSE = "2.23.133.8.1";

export interface CertSpec {
  subject: string;
  /** The subject's public key: a KeyObject or a DER SubjectPublicKeyInfo. */
  publicKey: KeyObject | Buffer;
  /** The issuer: a certificate made here, or just a name and a signing key (a forged or cross-signing issuer). */
  issuer?: { cert: Pick<TestCert, "subject" | "key"> };
  notBefore?: Date;
  notAfter?: Date;
  /** basicConstraints CA:TRUE (and keyUsage keyCertSign, cRLSign) — or CA:FALSE without keyUsage. */
  ca?: boolean;
  /** extKeyUsage OIDs (none: no extension). */
  extKeyUsage?: string[];
  serial?: number;
}

export interface TestCert { der: Buffer; pem: string; x509: X509Certificate; key: KeyObject; subject: string }

/** A certificate for `spec`, signed by `spec.issuer` (or self-signed with `selfKey`). */
export function makeCert(spec: CertSpec, selfKey?: KeyObject): TestCert {
  const spki = Buffer.isBuffer(spec.publicKey) ? spec.publicKey : spec.publicKey.export({ type: "spki", format: "der" });
  const signer = spec.issuer?.cert.key ?? selfKey;
  if (!signer) throw new Error("makeCert: an issuer or a self-signing key is needed");
  const extensions = [
    ext("2.5.29.19", true, spec.ca ? seq(bool(true)) : seq()),
    ...(spec.ca ? [ext("2.5.29.15", true, tlv(0x03, Buffer.from([1, 0x06])))] : []),
    ...(spec.extKeyUsage ? [ext("2.5.29.37", false, seq(...spec.extKeyUsage.map(oid)))] : []),
  ];
  const tbs = seq(
    tlv(0xa0, int(2)),
    int(spec.serial ?? 1),
    ECDSA_SHA256,
    name(spec.issuer?.cert.subject ?? spec.subject),
    seq(time(spec.notBefore ?? new Date("2026-01-01T00:00:00Z")), time(spec.notAfter ?? new Date("2036-01-01T00:00:00Z"))),
    name(spec.subject),
    spki,
    tlv(0xa3, seq(...extensions)),
  );
  const der = seq(tbs, ECDSA_SHA256, bits(sign("sha256", tbs, signer)));
  const pem = `-----BEGIN CERTIFICATE-----\n${der.toString("base64").replace(/.{64}/g, "$&\n").replace(/\n?$/, "\n")}-----END CERTIFICATE-----\n`;
  return { der, pem, x509: new X509Certificate(der), key: signer, subject: spec.subject };
}

/** A CA: its own key pair, self-signed (root) or issued by `issuer`. */
export function makeCa(subject: string, over: Partial<CertSpec> = {}): TestCert {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const c = makeCert({ subject, publicKey, ca: true, ...over }, privateKey);
  return { ...c, key: privateKey };
}

/** The DER SubjectPublicKeyInfo of a public key. */
export const spkiDer = (k: KeyObject): Buffer => k.export({ type: "spki", format: "der" });
