/**
 * Azure (TDX CVM with a paravisor vTPM). No real Azure evidence is available offline, so the
 * evidence is built here from the documented formats (provider/attest/azure.ts cites them: the
 * HCL report layout, runtime data with HCLAkPub, the TD report, TPM 2.0 quotes) and signed by
 * test keys standing in for Azure's vTPM CA (fixtures/azure-test) and Intel's DCAP PKI
 * (fixtures/dcap-test). What is real: the verifier, @phala/dcap-qvl, node:crypto.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, X509Certificate } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { verifyEvidence, EvidenceInput, VerifyOptions } from "../../../provider/attest/verify";
import { attestBinding, Evidence } from "../../../provider/attest/evidence";
import { AZURE_VTPM_INTERMEDIATES_PEM, AZURE_VTPM_ROOT_CA_PEM, chainProblems, parseTdReport, tdQuoteBindingProblems } from "../../../provider/attest/issuers/azure";
import type { Measurements } from "../../../provider/measure";
import { buildCollateral, buildTdQuote, tdBody, TdBody, TEST_NOW, TEST_ROOT_DER } from "./dcapTest";
import { makeCa, makeCert, spkiDer, TestCert } from "./x509Test";

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

/** Each azure check on its own: one change, the one check that fails, its reason. */
describe("azure issuer: each check refuses on its own", () => {
  const refusedBy = async (i: EvidenceInput, name: string, detail: RegExp, o: VerifyOptions = opts) => {
    const v = await verifyEvidence(i, o);
    expect(v.ok).toBe(false);
    expect(failed(v)).toEqual([name]);
    expect(v.checks.filter((c) => !c.ok)).toEqual([{ check: name, ok: false, detail: expect.stringMatching(detail) }]);
    return v;
  };
  /** The evidence with its HCL report changed by `edit` (offsets of azure.ts: IGVM request data at 32 + 1184). */
  const hclEdited = (edit: (b: Buffer) => Buffer, ev = evidence()) => {
    ev.azure!.hclReport = edit(Buffer.from(ev.azure!.hclReport, "base64")).toString("base64");
    return input(ev);
  };
  const IGVM = 32 + 1184;
  const setLe32 = (at: number, v: number) => (b: Buffer) => {
    b.writeUInt32LE(v, at);
    return b;
  };

  it("counts only the SHA-256 bank as covering the prediction: PCR 16 quoted in the SHA-384 bank alone is not covered", async () => {
    // A quote selecting sha256 PCR 0–15 and sha384 PCR 16, signed by the AK; the digest covers both banks in order.
    const pcr16 = Buffer.alloc(48, 0x16);
    const digest = createHash("sha256").update(Buffer.concat([...PCRS, pcr16])).digest();
    const msg = Buffer.concat([u32(0xff544347), u16(0x8018), tpm2b(Buffer.concat([u16(0x000b), Buffer.alloc(32, 1)])), tpm2b(attestBinding("sha256", nonce, spki)), Buffer.alloc(17), Buffer.alloc(8),
      u32(2), u16(0x000b), Buffer.from([3, 0xff, 0xff, 0x00]), u16(0x000c), Buffer.from([3, 0x00, 0x00, 0x01]), tpm2b(digest)]);
    const e = evidence();
    e.tpm!.quote = msg.toString("base64");
    e.tpm!.signature = Buffer.concat([u16(0x0014), u16(0x000b), tpm2b(sign("sha256", msg, akKey))]).toString("base64");
    e.tpm!.pcrs.sha384 = { "16": pcr16.toString("hex") };
    const exp = expected();
    exp.registers.PCR16 = { alg: "sha256", value: "00".repeat(32), status: "zero", events: [] };
    const v = await refusedBy(input(e, { expected: exp }), "quote-coverage", /^the quote does not cover PCR16, which the expected measurement predicts$/);
    expect(v.checks.find((c) => c.check === "pcr-digest")).toEqual({ check: "pcr-digest", ok: true, detail: "signed digest covers sha256:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 sha384:16" });
  });

  it("refuses evidence lacking a part: no AK certificate, no HCL report, no TPM quote", async () => {
    const noCert = evidence();
    delete noCert.tpm!.akCertificate;
    const noHcl = evidence();
    delete noHcl.azure;
    const noTpm = evidence();
    delete noTpm.tpm;
    for (const e of [noCert, noHcl, noTpm]) {
      const v = await refusedBy(input(e), "evidence", /^azure evidence needs the AK, its certificate, a quote and the HCL report$/);
      expect(v.registers).toEqual([]);
    }
  });

  describe("the AK certificate chain", () => {
    const root = makeCa("tdxvm test vTPM root");
    const ca = makeCa("tdxvm test vTPM CA", { issuer: { cert: root }, serial: 2 });
    const akCert = (issuer: TestCert, publicKey = spkiDer(createPublicKey(akKey))) => makeCert({ subject: "test-vm AK", publicKey, issuer: { cert: issuer }, serial: 3 });
    const withAkCert = (der: Buffer) => {
      const e = evidence();
      e.tpm!.akCertificate = der.toString("base64");
      return input(e);
    };
    const chainOpts = (intermediates: TestCert[]): VerifyOptions => ({ ...opts, azureRootsPem: [root.pem], azureIntermediatesPem: intermediates.map((c) => c.pem) });

    it("accepts a generated root → CA → AK chain (the control for the cases below)", async () => {
      const v = await verifyEvidence(withAkCert(akCert(ca).der), chainOpts([ca]));
      expect(failed(v)).toEqual([]);
      expect(v.checks.find((c) => c.check === "ak-certificate")).toEqual({ check: "ak-certificate", ok: true, detail: "AK certificate chains to the Azure vTPM root and certifies this AK" });
    });

    it("refuses a certificate for another key than the AK", async () => {
      const other = generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey;
      await refusedBy(withAkCert(akCert(ca, spkiDer(other)).der), "ak-certificate", /^the certificate certifies another key than the AK$/, chainOpts([ca]));
    });

    it("refuses a chain through an intermediate that is not a CA", async () => {
      const notCa = makeCa("tdxvm test vTPM not-a-CA", { issuer: { cert: root }, ca: false, serial: 4 });
      expect(notCa.x509.ca).toBe(false);
      await refusedBy(withAkCert(akCert(notCa).der), "ak-certificate", /^no trusted issuer for CN=test-vm AK \(issuer CN=tdxvm test vTPM not-a-CA\)$/, chainOpts([notCa]));
    });

    it("refuses a chain through an intermediate of the right name but another key", async () => {
      const impostor = makeCa("tdxvm test vTPM CA", { issuer: { cert: root }, serial: 5 });
      await refusedBy(withAkCert(akCert(impostor).der), "ak-certificate", /^no trusted issuer for CN=test-vm AK/, chainOpts([ca]));
    });

    it("chainProblems: a certificate signed by the root's key but naming another issuer is not issued by the root", () => {
      const leaf = makeCert({ subject: "test-vm AK", publicKey: createPublicKey(akKey), issuer: { cert: { subject: "tdxvm somebody else", key: root.key } } });
      expect(leaf.x509.verify(root.x509.publicKey)).toBe(true);
      expect(chainProblems(leaf.der, [], [root.pem], TEST_NOW)).toEqual(["no trusted issuer for CN=test-vm AK (issuer CN=tdxvm somebody else)"]);
      expect(chainProblems(akCert(ca).der, [ca.pem], [root.pem], TEST_NOW)).toEqual([]);
    });

    it("chainProblems: a cycle of cross-signed intermediates ends, as a chain too long", () => {
      const a = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const b = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const caA = makeCert({ subject: "tdxvm cycle A", publicKey: a.publicKey, ca: true, issuer: { cert: { subject: "tdxvm cycle B", key: b.privateKey } } });
      const caB = makeCert({ subject: "tdxvm cycle B", publicKey: b.publicKey, ca: true, issuer: { cert: { subject: "tdxvm cycle A", key: a.privateKey } } });
      const leaf = makeCert({ subject: "test-vm AK", publicKey: createPublicKey(akKey), issuer: { cert: { subject: "tdxvm cycle A", key: a.privateKey } } });
      const issuedChecks = jest.spyOn(X509Certificate.prototype, "checkIssued");
      try {
        expect(chainProblems(leaf.der, [caA.pem, caB.pem], [root.pem], TEST_NOW)).toEqual(["the certificate chain is too long"]);
        // A few links walked (6 at most, each asking root and pool), not thousands: the walk is bounded.
        expect(issuedChecks.mock.calls.length).toBeLessThanOrEqual(6 * 3);
      } finally {
        issuedChecks.mockRestore();
      }
    });

    it("refuses an AK certificate that does not parse", async () => {
      await refusedBy(withAkCert(Buffer.from("no certificate")), "ak-certificate", /^the certificate does not parse/, chainOpts([ca]));
    });
  });

  it.each([
    ["too short", (b: Buffer) => b.subarray(0, IGVM + 19), /^HCL report is 1235 bytes, too short for its header, hardware report and request data$/],
    ["without the HCLA signature", (b: Buffer) => { b.write("HCLB", 0, "latin1"); return b; }, /^HCL report does not start with the "HCLA" signature$/],
    ["of another hardware report type (SNP)", setLe32(IGVM + 8, 2), /^HCL report holds hardware report type 2, not a TD report \(4\)$/],
    ["with an unknown report data hash type", setLe32(IGVM + 12, 9), /^HCL report data hash type 9 is unknown$/],
    ["whose runtime data runs past its end", setLe32(IGVM + 16, 100000), /^HCL runtime data \(100000 bytes\) runs past the \d+-byte report$/],
  ] as const)("refuses an HCL report %s (and still judges the TPM quote)", async (_what, edit, detail) => {
    const v = await refusedBy(hclEdited(edit), "hcl-report", detail);
    expect(v.checks.map((c) => c.check)).toEqual(["issuer", "ak-certificate", "hcl-report", "ak-attributes", "quote-structure", "quote-signature", "channel-binding", "pcr-digest"]);
  });

  it("parseTdReport refuses anything but a 1024-byte TDREPORT_STRUCT (unreachable through parseHclReport, which always cuts 1024)", () => {
    expect(parseTdReport(tdReport(tdBody())).mrTd).toEqual(Buffer.alloc(48, 0x22));
    for (const n of [1023, 1025]) {
      let err: unknown;
      try {
        parseTdReport(Buffer.alloc(n));
      } catch (e) {
        err = e;
      }
      expect(err).toMatchObject({ code: "E_ATTESTATION", details: { check: "hcl-report" }, message: `hcl-report: TD report is ${n} bytes, not 1024` });
    }
  });

  describe("HCL report ↔ AK", () => {
    const rt = (keys: unknown[]) => Buffer.from(JSON.stringify({ keys, "vm-configuration": { tpm: true } }));
    const ak = { kid: "HCLAkPub", kty: "RSA", e: akJwk.e, n: akJwk.n };
    const other = generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey.export({ format: "jwk" });

    it("finds HCLAkPub by its kid, wherever it is in the list", async () => {
      const v = await verifyEvidence(input(evidence({ runtime: rt([{ kid: "HCLEkPub", kty: "RSA", e: other.e, n: other.n }, ak]) })), opts);
      expect(failed(v)).toEqual([]);
    });

    it.each([
      ["runtime data that is not JSON", Buffer.from("{not json"), /^the runtime data is not JSON$/],
      ["runtime data without HCLAkPub (the AK under another kid)", rt([{ ...ak, kid: "HCLEkPub" }]), /^the runtime data has no HCLAkPub key$/],
      ["runtime data without a key list", Buffer.from(JSON.stringify({ keys: "HCLAkPub" })), /^the runtime data has no HCLAkPub key$/],
      ["an HCLAkPub that is not a key", rt([{ kid: "HCLAkPub", kty: "RSA", e: "AQAB" }]), /^HCLAkPub is not a valid key \(/],
      ["an HCLAkPub that is another key", rt([{ ...ak, n: other.n }]), /^HCLAkPub in the runtime data is not the AK that signed the quote$/],
    ] as const)("refuses %s", async (_what, runtime, detail) => {
      await refusedBy(input(evidence({ runtime })), "hcl-ak-binding", detail);
    });

    it("refuses a TD report whose REPORTDATA is not the hash of the runtime data, naming that alone", async () => {
      await refusedBy(input(evidence({ body: { reportData: Buffer.alloc(64, 1) } })), "hcl-ak-binding", /^the TD report's REPORTDATA does not start with the sha256 of the runtime data$/);
    });
  });

  describe("HCL report ↔ TD quote", () => {
    const base = tdBody({ reportData: Buffer.alloc(64, 0x5c) });
    const fields: Array<[string, Partial<TdBody>]> = [
      ["REPORTDATA", { reportData: Buffer.alloc(64, 0x5d) }],
      ["TEE_TCB_SVN", { teeTcbSvn: Buffer.from("05010700000000000000000000000000", "hex") }],
      ["MRSEAM", { mrSeam: Buffer.alloc(48, 0x12) }],
      ["MRSIGNERSEAM", { mrSignerSeam: Buffer.alloc(48, 0x01) }],
      ["SEAM attributes", { seamAttributes: Buffer.from("0000000000000001", "hex") }],
      ["TD attributes", { tdAttributes: Buffer.from("0000001000000001", "hex") }],
      ["XFAM", { xfam: Buffer.from("e718060000000001", "hex") }],
      ["MRTD", { mrTd: Buffer.alloc(48, 0x23) }],
      ["MRCONFIGID", { mrConfigId: Buffer.alloc(48, 1) }],
      ["MROWNER", { mrOwner: Buffer.alloc(48, 1) }],
      ["MROWNERCONFIG", { mrOwnerConfig: Buffer.alloc(48, 1) }],
      ...[0, 1, 2, 3].map((i): [string, Partial<TdBody>] => [`RTMR${i}`, { rtmr: base.rtmr.map((r, j) => (j === i ? Buffer.alloc(48, 0xe0 + i) : r)) as TdBody["rtmr"] }]),
    ];
    it("compares every field of the TD report body, and REPORTDATA", () => {
      const report = parseTdReport(tdReport(base));
      expect(tdQuoteBindingProblems(report, base)).toEqual([]);
      for (const [field, change] of fields) {
        expect([field, tdQuoteBindingProblems(report, { ...base, ...change })]).toEqual([field, [`${field} of the TD quote differs from the HCL report's TD report`]]);
      }
    });

    it("refuses a TD quote of another TD (MRTD differs) through the verifier", async () => {
      await refusedBy(input(evidence({ quoteBody: { mrTd: Buffer.alloc(48, 0x99) } })), "hcl-td-quote-binding", /^MRTD of the TD quote differs from the HCL report's TD report$/);
    });

    it("refuses a TD quote that does not parse", async () => {
      const e = evidence();
      e.azure!.tdQuote = Buffer.from("not a TD quote").toString("base64");
      await refusedBy(input(e), "td-quote", /^TDX quote: header at offset 0 \(\+48 bytes\) lies outside the 14-byte input$/);
    });

    it("refuses a TD quote that DCAP refuses (TCB status policy)", async () => {
      const v = await refusedBy(input(), "tcb-status", /^the platform's TCB status is OutOfDate \(INTEL-SA-TEST\); accepted: UpToDate$/, { ...opts, dcap: { collateral: buildCollateral({ status: "OutOfDate" }), rootCaDer: TEST_ROOT_DER } });
      expect(v.checks.map((c) => c.check)).not.toContain("dcap");
    });

    it("refuses a TD quote under another DCAP root", async () => {
      await refusedBy(input(), "pck-chain", /^DCAP verification failed: /, { ...opts, dcap: { collateral: buildCollateral() } });
    });
  });
});
