/**
 * Azure (TDX CVM with a paravisor vTPM). No real Azure evidence is available offline, so the
 * evidence is built here from the documented formats (provider/attest/azure.ts cites them: the
 * HCL report layout, runtime data with HCLAkPub, the TD report, TPM 2.0 quotes) and signed by
 * test keys standing in for Azure's vTPM CA (fixtures/azure-test) and Intel's DCAP PKI
 * (fixtures/dcap-test). What is real: the verifier, @phala/dcap-qvl, node:crypto.
 */
import { createHash, createPrivateKey, createPublicKey, sign, X509Certificate } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { verifyEvidence, EvidenceInput } from "../../../provider/attest/verify";
import { attestBinding, Evidence } from "../../../provider/attest/evidence";
import { AZURE_VTPM_INTERMEDIATES_PEM, AZURE_VTPM_ROOT_CA_PEM, chainProblems } from "../../../provider/attest/issuers/azure";
import type { Measurements } from "../../../provider/measure";
import { buildCollateral, buildTdQuote, tdBody, TdBody, TEST_NOW, TEST_ROOT_DER } from "./dcapTest";

const AZ = JSON.parse(fs.readFileSync(path.join(__dirname, "fixtures", "azure-test", "pki.json"), "utf8")) as { rootPem: string; intermediatePem: string; akCertificateHex: string; akKeyPem: string };
const akKey = createPrivateKey(AZ.akKeyPem);
const akJwk = createPublicKey(akKey).export({ format: "jwk" });

const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; };
const tpm2b = (b: Buffer) => Buffer.concat([u16(b.length), b]);
const le32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(n); return b; };

/** TPM2B_PUBLIC of the AK: restricted RSA-2048 signing key, RSASSA/SHA-256 (Part 2 §12.2). */
function akPublic(attrs = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 16) | (1 << 18)): Buffer {
  const t = Buffer.concat([u16(0x0001), u16(0x000b), u32(attrs), tpm2b(Buffer.alloc(0)), u16(0x0010), u16(0x0014), u16(0x000b), u16(2048), u32(0), tpm2b(Buffer.from(akJwk.n!, "base64url"))]);
  return tpm2b(t);
}

/** TPMS_ATTEST of a quote over sha256 PCRs 0–15 and its TPMT_SIGNATURE (RSASSA-SHA256) by the AK. */
function quote(extraData: Buffer, pcrs: Buffer[]): { msg: Buffer; sig: Buffer } {
  const digest = createHash("sha256").update(Buffer.concat(pcrs)).digest();
  const msg = Buffer.concat([u32(0xff544347), u16(0x8018), tpm2b(Buffer.concat([u16(0x000b), Buffer.alloc(32, 1)])), tpm2b(extraData), Buffer.alloc(17), Buffer.alloc(8), u32(1), u16(0x000b), Buffer.from([3, 0xff, 0xff, 0x00]), tpm2b(digest)]);
  const s = sign("sha256", msg, akKey);
  return { msg, sig: Buffer.concat([u16(0x0014), u16(0x000b), tpm2b(s)]) };
}

/** TDREPORT_STRUCT (1024 bytes) carrying `b` (Intel TDX Module ABI: REPORTMACSTRUCT, TEE_TCB_INFO, TDINFO). */
function tdReport(b: TdBody): Buffer {
  const r = Buffer.alloc(1024);
  b.reportData.copy(r, 128);
  b.teeTcbSvn.copy(r, 264);
  b.mrSeam.copy(r, 280);
  b.mrSignerSeam.copy(r, 328);
  b.seamAttributes.copy(r, 376);
  b.tdAttributes.copy(r, 512);
  b.xfam.copy(r, 520);
  b.mrTd.copy(r, 528);
  b.mrConfigId.copy(r, 576);
  b.mrOwner.copy(r, 624);
  b.mrOwnerConfig.copy(r, 672);
  b.rtmr.forEach((x, i) => x.copy(r, 720 + 48 * i));
  return r;
}

/** HCL report: "HCLA" header, TD report in the 1184-byte hardware report field, IGVM request data, runtime data. */
function hclReport(report: Buffer, runtime: Buffer): Buffer {
  const header = Buffer.concat([Buffer.from("HCLA", "latin1"), le32(2), le32(0), le32(2), Buffer.alloc(16)]);
  const hw = Buffer.concat([report, Buffer.alloc(1184 - report.length)]);
  const igvm = Buffer.concat([le32(20 + runtime.length), le32(1), le32(4), le32(1), le32(runtime.length)]);
  return Buffer.concat([header, hw, igvm, runtime]);
}

const nonce = Buffer.alloc(32, 0x61);
const spki = Buffer.alloc(32, 0x62);
const PCRS = Array.from({ length: 16 }, (_, i) => (i === 4 || i === 9 || i === 11 ? Buffer.alloc(32, 0x40 + i) : Buffer.alloc(32)));
const runtimeData = (n = akJwk.n!) => Buffer.from(JSON.stringify({ keys: [{ kid: "HCLAkPub", key_ops: ["sign"], kty: "RSA", e: akJwk.e, n }, { kid: "HCLEkPub", kty: "RSA", e: "AQAB", n: "AQAB" }], "vm-configuration": { "secure-boot": false, tpm: true } }));

function evidence(over: { runtime?: Buffer; body?: Partial<TdBody>; quoteBody?: Partial<TdBody>; extra?: Buffer; pcrs?: Buffer[] } = {}): Evidence {
  const runtime = over.runtime ?? runtimeData();
  const body = tdBody({ reportData: Buffer.concat([createHash("sha256").update(runtime).digest(), Buffer.alloc(32)]), ...over.body });
  const q = quote(over.extra ?? attestBinding("sha256", nonce, spki), over.pcrs ?? PCRS);
  return {
    evidenceVersion: 1, issuer: "azure", nonce: nonce.toString("hex"), spkiSha256: spki.toString("hex"),
    tpm: {
      akPublic: akPublic().toString("base64"), akCertificate: Buffer.from(AZ.akCertificateHex, "hex").toString("base64"),
      quote: q.msg.toString("base64"), signature: q.sig.toString("base64"),
      pcrs: { sha256: Object.fromEntries(PCRS.map((p, i) => [String(i), p.toString("hex")])) },
    },
    azure: { hclReport: hclReport(tdReport(body), runtime).toString("base64"), tdQuote: buildTdQuote({ ...body, ...over.quoteBody }).toString("base64") },
    eventLogs: {},
  };
}

const expected = (pcr11 = PCRS[11]!.toString("hex")): Measurements => ({
  measurementsVersion: 1, backend: "azure", inputs: {},
  registers: {
    PCR4: { alg: "sha256", value: PCRS[4]!.toString("hex"), status: "exact", events: [] },
    PCR9: { alg: "sha256", value: PCRS[9]!.toString("hex"), status: "exact", events: [] },
    PCR11: { alg: "sha256", value: pcr11, status: "exact", events: [] },
  },
});
const input = (ev = evidence(), over: Partial<EvidenceInput> = {}): EvidenceInput => ({ evidence: ev, nonce, channelSpkiSha256: spki, expected: expected(), ...over });
const opts = { azureRootsPem: [AZ.rootPem], azureIntermediatesPem: [AZ.intermediatePem], dcap: { collateral: buildCollateral(), rootCaDer: TEST_ROOT_DER }, now: TEST_NOW };
const failed = (v: { checks: Array<{ check: string; ok: boolean }> }) => v.checks.filter((c) => !c.ok).map((c) => c.check);

describe("azure issuer", () => {
  it("accepts: AK certificate chain, HCL report ↔ AK, HCL report ↔ TD quote, DCAP, quote signature and binding, PCR 4/9/11", async () => {
    const v = await verifyEvidence(input(), opts);
    expect(failed(v)).toEqual([]);
    expect(v.checks.map((c) => c.check)).toEqual(["issuer", "ak-certificate", "hcl-ak-binding", "hcl-td-quote-binding", "dcap", "ak-attributes", "quote-structure", "quote-signature", "channel-binding", "pcr-digest"]);
    expect(v.registers.map((r) => [r.register, r.ok])).toEqual([["PCR4", true], ["PCR9", true], ["PCR11", true]]);
    expect(v.ok).toBe(true);
  });

  it("the embedded Azure certificates chain (Global Virtual TPM CA - 03 under the 2023 root), within their validity only", () => {
    const ca03 = new X509Certificate(AZURE_VTPM_INTERMEDIATES_PEM[0]!).raw;
    expect(chainProblems(ca03, [], [AZURE_VTPM_ROOT_CA_PEM], new Date("2026-01-01T00:00:00Z"))).toEqual([]);
    expect(chainProblems(ca03, [], [AZURE_VTPM_ROOT_CA_PEM], new Date("2028-01-01T00:00:00Z"))).toEqual([expect.stringMatching(/Global Virtual TPM CA - 03 is not valid at 2028-01-01/)]);
    expect(chainProblems(ca03, [], [AZ.rootPem], new Date("2026-01-01T00:00:00Z"))).toEqual([expect.stringMatching(/no trusted issuer/)]);
  });

  it("trusts only Azure's real vTPM root by default (the test CA is refused)", async () => {
    expect(AZURE_VTPM_ROOT_CA_PEM).toMatch(/^-----BEGIN CERTIFICATE-----\nMIIFsDCCA5igAwIBAgIQUfQx2iySCIpOKeDZKd5KpzANBgkqhkiG9w0BAQwFADBp\n/);
    const v = await verifyEvidence(input(), { ...opts, azureRootsPem: undefined, azureIntermediatesPem: undefined });
    expect(failed(v)).toEqual(["ak-certificate"]);
  });

  const cases: Array<[string, () => EvidenceInput, string[]]> = [
    ["runtime data naming another AK", () => input(evidence({ runtime: runtimeData(Buffer.alloc(256, 7).toString("base64url")) })), ["hcl-ak-binding"]],
    ["a TD report whose REPORTDATA is not the runtime data's hash", () => input(evidence({ body: { reportData: Buffer.alloc(64, 1) } })), ["hcl-ak-binding"]],
    ["a TD quote of another TD report (RTMR1 differs)", () => input(evidence({ quoteBody: { rtmr: [Buffer.alloc(48, 0x30), Buffer.alloc(48, 0x99), Buffer.alloc(48, 0x32), Buffer.alloc(48)] } })), ["hcl-td-quote-binding"]],
    ["another nonce", () => input(evidence({ extra: attestBinding("sha256", Buffer.alloc(32, 1), spki) })), ["channel-binding"]],
    ["a relay's TLS key", () => input(evidence(), { channelSpkiSha256: Buffer.alloc(32, 0x63) }), ["channel-binding"]],
    ["a flipped byte in the quote", () => { const e = evidence(); const b = Buffer.from(e.tpm!.quote, "base64"); b[80] ^= 1; e.tpm!.quote = b.toString("base64"); return input(e); }, ["quote-signature"]],
    ["a flipped byte in the AK certificate", () => { const e = evidence(); const b = Buffer.from(e.tpm!.akCertificate!, "base64"); b[b.length - 20] ^= 1; e.tpm!.akCertificate = b.toString("base64"); return input(e); }, ["ak-certificate"]],
    ["a missing TD quote", () => { const e = evidence(); delete e.azure!.tdQuote; return input(e); }, ["hcl-td-quote-binding"]],
  ];
  it.each(cases)("refuses %s", async (_what, make, checks) => {
    const v = await verifyEvidence(make(), opts);
    expect(v.ok).toBe(false);
    expect(failed(v)).toEqual(checks);
  });

  it("refuses PCR 11 that is not the prediction's", async () => {
    const v = await verifyEvidence(input(evidence(), { expected: expected("00".repeat(32)) }), opts);
    expect(failed(v)).toEqual([]);
    expect(v.registers.find((r) => r.register === "PCR11")).toMatchObject({ ok: false });
  });
});
