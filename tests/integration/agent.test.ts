/**
 * The agent's TPM issuer against a real TPM 2.0 (swtpm from the tools tree — what the dev VM's
 * TPM is; the agent sends its commands to swtpm's socket as it does to /dev/tpmrm0 in a VM),
 * checked with code independent of the agent: the quote is parsed and its
 * ECDSA signature verified here from the TPM 2.0 Library spec (Part 2: TPMS_ATTEST §10.12.12,
 * TPMS_QUOTE_INFO §10.12.1, TPMT_PUBLIC §12.2.4, TPMT_SIGNATURE §11.3.4), and the credential is
 * made by tpm2-tools' own tpm2_makecredential.
 */
import { promises as fs } from "node:fs";
import * as https from "node:https";
import * as path from "node:path";
import { createHash, createPublicKey, randomBytes, verify, X509Certificate } from "node:crypto";
import { chooseIssuer, IssuerImpl } from "../../agent/issuers";
import { attestBinding, Evidence } from "../../agent/protocol";
import { agentServer } from "../../agent/server";
import { newTlsIdentity, spkiSha256Of } from "../../agent/tls";
import { startSwtpm, Swtpm } from "./swtpm";
import { tempDir } from "../helpers";

jest.setTimeout(10 * 60_000);

class Reader {
  constructor(private b: Buffer, public o = 0) {}
  u8() { return this.b.readUInt8((this.o += 1) - 1); }
  u16() { return this.b.readUInt16BE((this.o += 2) - 2); }
  u32() { return this.b.readUInt32BE((this.o += 4) - 4); }
  bytes(n: number) { return this.b.subarray(this.o, (this.o += n)); }
  tpm2b() { return this.bytes(this.u16()); }
}

/** TPMT_PUBLIC of an ECC key (no symmetric, any scheme): name and the public point as a KeyObject. */
function eccPublic(tpm2bPublic: Buffer) {
  const r = new Reader(tpm2bPublic);
  const pub = r.tpm2b();
  const p = new Reader(pub);
  const type = p.u16();
  const nameAlg = p.u16();
  const attributes = p.u32();
  p.tpm2b(); // authPolicy
  expect(type).toBe(0x0023); // TPM_ALG_ECC
  expect(p.u16()).toBe(0x0010); // symmetric: TPM_ALG_NULL (a signing key)
  const scheme = p.u16();
  if (scheme !== 0x0010) p.u16(); // scheme hash
  expect(p.u16()).toBe(0x0003); // TPM_ECC_NIST_P256
  expect(p.u16()).toBe(0x0010); // kdf NULL
  const x = p.tpm2b();
  const y = p.tpm2b();
  const name = Buffer.concat([Buffer.from([nameAlg >> 8, nameAlg & 0xff]), createHash("sha256").update(pub).digest()]);
  const key = createPublicKey({ key: { kty: "EC", crv: "P-256", x: x.toString("base64url"), y: y.toString("base64url") }, format: "jwk" });
  return { name, key, attributes, scheme };
}

function parseQuote(msg: Buffer) {
  const r = new Reader(msg);
  const magic = r.u32();
  const type = r.u16();
  const signer = r.tpm2b();
  const extraData = r.tpm2b();
  r.bytes(17); // TPMS_CLOCK_INFO
  r.bytes(8); // firmwareVersion
  const count = r.u32();
  const selection: Array<{ hash: number; pcrs: number[] }> = [];
  for (let i = 0; i < count; i++) {
    const hash = r.u16();
    const bits = r.bytes(r.u8());
    const pcrs: number[] = [];
    bits.forEach((byte, j) => { for (let b = 0; b < 8; b++) if (byte & (1 << b)) pcrs.push(j * 8 + b); });
    selection.push({ hash, pcrs });
  }
  return { magic, type, signer, extraData, selection, pcrDigest: r.tpm2b() };
}

function checkEvidence(ev: Evidence, nonce: Buffer, spki: Buffer) {
  const ak = eccPublic(Buffer.from(ev.tpm!.akPublic, "base64"));
  // fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted | sign
  for (const bit of [1, 4, 5, 6, 16, 18]) expect({ bit, set: (ak.attributes >>> bit) & 1 }).toEqual({ bit, set: 1 });
  const msg = Buffer.from(ev.tpm!.quote, "base64");
  const q = parseQuote(msg);
  expect(q.magic).toBe(0xff544347); // TPM_GENERATED_VALUE
  expect(q.type).toBe(0x8018); // TPM_ST_ATTEST_QUOTE
  // qualifiedSigner is the AK's *qualified* name (hashed with its parents'): a sha256 name here.
  expect(q.signer.subarray(0, 2).toString("hex")).toBe("000b");
  expect(q.signer).toHaveLength(34);
  expect(q.extraData.equals(attestBinding("sha256", nonce, spki))).toBe(true);
  expect(q.selection).toEqual([{ hash: 0x000b, pcrs: Array.from({ length: 16 }, (_, i) => i) }]);
  const values = Array.from({ length: 16 }, (_, i) => Buffer.from(ev.tpm!.pcrs.sha256![String(i)], "hex"));
  expect(q.pcrDigest.equals(createHash("sha256").update(Buffer.concat(values)).digest())).toBe(true);
  const sig = new Reader(Buffer.from(ev.tpm!.signature, "base64"));
  expect([sig.u16(), sig.u16()]).toEqual([0x0018, 0x000b]); // ECDSA, SHA-256
  const pad = (b: Buffer) => Buffer.concat([Buffer.alloc(32 - b.length), b]);
  const rs = Buffer.concat([pad(sig.tpm2b()), pad(sig.tpm2b())]);
  expect(verify("sha256", msg, { key: ak.key, dsaEncoding: "ieee-p1363" }, rs)).toBe(true);
  const tampered = Buffer.from(msg);
  tampered[tampered.length - 1] ^= 1;
  expect(verify("sha256", tampered, { key: ak.key, dsaEncoding: "ieee-p1363" }, rs)).toBe(false);
  return { ak, values };
}

describe("agent TPM issuer on swtpm", () => {
  let dir: string;
  let tpm: Swtpm;
  let issuer: IssuerImpl;

  beforeAll(async () => {
    dir = await tempDir("tdxvm-agent-tpm-");
    tpm = await startSwtpm(dir);
    // PCR 4 gets an event so the quote covers a non-trivial value.
    const r = await tpm.exec("tpm2_pcrextend", [`4:sha256=${createHash("sha256").update("tdxvm test").digest("hex")}`]);
    expect(r.code).toBe(0);
    issuer = await chooseIssuer("auto", { tpmSocket: tpm.socket, paths: { tsmReport: path.join(dir, "no-tsm"), tpmDevice: path.join(dir, "no-device"), tcgLog: path.join(dir, "no-log"), systemdLog: path.join(dir, "no-log") } });
  });

  afterAll(async () => {
    await tpm?.stop();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it("auto-selects the plain TPM issuer (no TDX, no Azure HCL report) and creates EK and AK", async () => {
    expect(issuer.name).toBe("tpm");
    const keys = await issuer.keys();
    expect(keys.issuer).toBe("tpm");
    expect(keys.tpm!.ekPublic).toEqual(expect.any(String));
    eccPublic(Buffer.from(keys.tpm!.akPublic, "base64"));
    expect(keys).toEqual(await issuer.keys()); // created once
  });

  it("quotes PCR 0–15 with the nonce + TLS key binding, signed by the AK", async () => {
    const nonce = randomBytes(32);
    const spki = randomBytes(32);
    const ev = await issuer.evidence(nonce, spki);
    expect(ev).toMatchObject({ evidenceVersion: 1, issuer: "tpm", nonce: nonce.toString("hex"), spkiSha256: spki.toString("hex") });
    expect(ev.tpm!.activatedSecret).toBeUndefined();
    const { values } = checkEvidence(ev, nonce, spki);
    const extended = createHash("sha256").update(Buffer.concat([Buffer.alloc(32), createHash("sha256").update("tdxvm test").digest()])).digest();
    expect(values[4].equals(extended)).toBe(true);
    expect(values[5].equals(Buffer.alloc(32))).toBe(true);
  });

  it("activates a credential made by tpm2_makecredential for its AK under its EK; a wrong one fails", async () => {
    const keys = (await issuer.keys()).tpm!;
    const ak = eccPublic(Buffer.from(keys.akPublic, "base64"));
    const secret = randomBytes(32);
    await fs.writeFile(path.join(dir, "ek.pub"), Buffer.from(keys.ekPublic!, "base64"));
    await fs.writeFile(path.join(dir, "secret.bin"), secret);
    const mk = await tpm.exec("tpm2_makecredential", ["-T", "none", "-u", path.join(dir, "ek.pub"), "-s", path.join(dir, "secret.bin"), "-n", ak.name.toString("hex"), "-o", path.join(dir, "cred.out")]);
    expect(mk.code).toBe(0);
    const file = await fs.readFile(path.join(dir, "cred.out"));
    expect(file.readUInt32BE(0)).toBe(0xbadcc0de);
    const idLen = file.readUInt16BE(8);
    const idObject = file.subarray(8, 10 + idLen);
    const encSecret = file.subarray(10 + idLen);
    const nonce = randomBytes(32);
    const spki = randomBytes(32);
    const ev = await issuer.evidence(nonce, spki, { idObject, encSecret });
    expect(Buffer.from(ev.tpm!.activatedSecret!, "base64").equals(secret)).toBe(true);
    checkEvidence(ev, nonce, spki);
    const bad = Buffer.from(encSecret);
    bad[bad.length - 1] ^= 0xff;
    await expect(issuer.evidence(nonce, spki, { idObject, encSecret: bad })).rejects.toThrow(/TPM2_ActivateCredential failed: TPM_RC/);
  });

  it("over HTTPS: the evidence is bound to the TLS key the client actually saw", async () => {
    const tls = newTlsIdentity();
    const server = agentServer({ issuer, tls, log: () => undefined });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as import("node:net").AddressInfo).port;
    const nonce = randomBytes(32);
    const { ev, spki } = await new Promise<{ ev: Evidence; spki: Buffer }>((resolve, reject) => {
      const body = JSON.stringify({ nonce: nonce.toString("hex") });
      const req = https.request({ host: "127.0.0.1", port, method: "POST", path: "/v1/attest", rejectUnauthorized: false, agent: false, headers: { "content-type": "application/json", "content-length": body.length } }, (res) => {
        const seen = spkiSha256Of(new X509Certificate((res.socket as import("node:tls").TLSSocket).getPeerCertificate().raw));
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ ev: JSON.parse(Buffer.concat(chunks).toString()), spki: seen }));
      });
      req.on("error", reject);
      req.end(body);
    });
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    expect(spki.equals(tls.spkiSha256)).toBe(true);
    checkEvidence(ev, nonce, spki);
  });
});
