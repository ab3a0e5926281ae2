/**
 * Azure confidential VMs with Intel TDX (DCesv5/ECesv5): the evidence a vTPM gives and how its
 * parts bind together (Microsoft, "Confidential VM Guest Attestation Design Detail",
 * https://learn.microsoft.com/azure/confidential-computing/guest-attestation-confidential-virtual-machines-design):
 *
 * - the vTPM AK (persistent handle 0x81000003) signs the TPM quote; its certificate (NV index
 *   0x01C101D0) is issued by Azure and chains to "Azure Virtual TPM Root Certificate Authority
 *   2023";
 * - the HCL report (NV index 0x01400001) carries the hardware report — for TDX a TD report — and
 *   the runtime data (JSON) whose "HCLAkPub" key is the AK; the TD report's REPORTDATA starts with
 *   the SHA-256 of that runtime data. Byte layout: a 32-byte header, the hardware report in a
 *   1184-byte field, then IGVM request data {data_size, version, report_type (4 = TDX),
 *   report_data_hash_type (1 = SHA-256), variable_data_size} (u32 little-endian each) and the
 *   runtime data (layout as read by kinvolk/azure-cvm-tooling az-cvm-vtpm and Constellation's Azure
 *   TDX attestation);
 * - Azure's IMDS turns the TD report into a TD quote, which DCAP verifies; the quote's TD report
 *   body must be the one in the HCL report.
 *
 * TD report layout (TDREPORT_STRUCT, Intel TDX Module ABI specification): REPORTMACSTRUCT (256
 * bytes; REPORTDATA at 128), TEE_TCB_INFO (239 bytes at 256; TEE_TCB_SVN at 264, MRSEAM at 280,
 * MRSIGNERSEAM at 328, ATTRIBUTES at 376), reserved, TDINFO (at 512: ATTRIBUTES, XFAM, MRTD,
 * MRCONFIGID, MROWNER, MROWNERCONFIG, RTMR0–3).
 */
import { createHash, createPublicKey, X509Certificate } from "node:crypto";
import { parseTdxQuote } from "../../measure";
import { attestationError, parseTpm2bPublic, spkiOf } from "../tpm2";
import { verifyDcap } from "../dcap";
import { b64, chainProblems, Checks, EvidenceInput, pcrRegisters, RegisterVerdict, verifyTpmQuote, VerifyOptions } from "./common";

export { chainProblems };

export const HCL_HW_REPORT_OFFSET = 32;
export const HCL_HW_REPORT_FIELD = 1184;
export const TD_REPORT_SIZE = 1024;
const IGVM_OFFSET = HCL_HW_REPORT_OFFSET + HCL_HW_REPORT_FIELD;
const REPORT_TYPE_TDX = 4;
const HASH_TYPES: Record<number, "sha256" | "sha384" | "sha512"> = { 1: "sha256", 2: "sha384", 3: "sha512" };

/**
 * Azure Virtual TPM Root Certificate Authority 2023 (valid to 2048-06-01), as published by
 * Microsoft in its Trusted Launch FAQ (https://learn.microsoft.com/azure/virtual-machines/trusted-launch-faq);
 * the same anchor is pinned by
 * flashbots/cvm-reverse-proxy (internal/attestation/azure/tdx). SHA-256 fingerprint
 * E6:C5:96:B1:7F:8F:FE:FB:A5:C3:00:F7:14:CF:B1:26:0C:60:28:70:4E:CF:7B:EC:C4:AB:50:18:EF:B0:0E:95.
 */
export const AZURE_VTPM_ROOT_CA_PEM = `-----BEGIN CERTIFICATE-----
MIIFsDCCA5igAwIBAgIQUfQx2iySCIpOKeDZKd5KpzANBgkqhkiG9w0BAQwFADBp
MQswCQYDVQQGEwJVUzEeMBwGA1UEChMVTWljcm9zb2Z0IENvcnBvcmF0aW9uMTow
OAYDVQQDEzFBenVyZSBWaXJ0dWFsIFRQTSBSb290IENlcnRpZmljYXRlIEF1dGhv
cml0eSAyMDIzMB4XDTIzMDYwMTE4MDg1M1oXDTQ4MDYwMTE4MTU0MVowaTELMAkG
A1UEBhMCVVMxHjAcBgNVBAoTFU1pY3Jvc29mdCBDb3Jwb3JhdGlvbjE6MDgGA1UE
AxMxQXp1cmUgVmlydHVhbCBUUE0gUm9vdCBDZXJ0aWZpY2F0ZSBBdXRob3JpdHkg
MjAyMzCCAiIwDQYJKoZIhvcNAQEBBQADggIPADCCAgoCggIBALoMMwvdRJ7+bW00
adKE1VemNqJS+268Ure8QcfZXVOsVO22+PL9WRoPnWo0r5dVoomYGbobh4HC72s9
sGY6BGRe+Ui2LMwuWnirBtOjaJ34r1ZieNMcVNJT/dXW5HN/HLlm/gSKlWzqCEx6
gFFAQTvyYl/5jYI4Oe05zJ7ojgjK/6ZHXpFysXnyUITJ9qgjn546IJh/G5OMC3mD
fFU7A/GAi+LYaOHSzXj69Lk1vCftNq9DcQHtB7otO0VxFkRLaULcfu/AYHM7FC/S
q6cJb9Au8K/IUhw/5lJSXZawLJwHpcEYzETm2blad0VHsACaLNucZL5wBi8GEusQ
9Wo8W1p1rUCMp89pufxa3Ar9sYZvWeJlvKggWcQVUlhvvIZEnT+fteEvwTdoajl5
qSvZbDPGCPjb91rSznoiLq8XqgQBBFjnEiTL+ViaZmyZPYUsBvBY3lKXB1l2hgga
hfBIag4j0wcgqlL82SL7pAdGjq0Fou6SKgHnkkrV5CNxUBBVMNCwUoj5mvEjd5mF
7XPgfM98qNABb2Aqtfl+VuCkU/G1XvFoTqS9AkwbLTGFMS9+jCEU2rw6wnKuGv1T
x9iuSdNvsXt8stx4fkVeJvnFpJeAIwBZVgKRSTa3w3099k0mW8qGiMnwCI5SfdZ2
SJyD4uEmszsnieE6wAWd1tLLg1jvAgMBAAGjVDBSMA4GA1UdDwEB/wQEAwIBhjAP
BgNVHRMBAf8EBTADAQH/MB0GA1UdDgQWBBRL/iZalMH2M8ODSCbd8+WwZLKqlTAQ
BgkrBgEEAYI3FQEEAwIBADANBgkqhkiG9w0BAQwFAAOCAgEALgNAyg8I0ANNO/8I
2BhpTOsbywN2YSmShAmig5h4sCtaJSM1dRXwA+keY6PCXQEt/PRAQAiHNcOF5zbu
OU1Bw/Z5Z7k9okt04eu8CsS2Bpc+POg9js6lBtmigM5LWJCH1goMD0kJYpzkaCzx
1TdD3yjo0xSxgGhabk5Iu1soD3OxhUyIFcxaluhwkiVINt3Jhy7G7VJTlEwkk21A
oOrQxUsJH0f2GXjYShS1r9qLPzLf7ykcOm62jHGmLZVZujBzLIdNk1bljP9VuGW+
cISBwzkNeEMMFufcL2xh6s/oiUnXicFWvG7E6ioPnayYXrHy3Rh68XLnhfpzeCzv
bz/I4yMV38qGo/cAY2OJpXUuuD/ZbI5rT+lRBEkDW1kxHP8cpwkRwGopV8+gX2KS
UucIIN4l8/rrNDEX8T0b5U+BUqiO7Z5YnxCya/H0ZIwmQnTlLRTU2fW+OGG+xyIr
jMi/0l6/yWPUkIAkNtvS/yO7USRVLPbtGVk3Qre6HcqacCXzEjINcJhGEVg83Y8n
M+Y+a9J0lUnHytMSFZE85h88OseRS2QwqjozUo2j1DowmhSSUv9Na5Ae22ycciBk
EZSq8a4rSlwqthaELNpeoTLUk6iVoUkK/iLvaMvrkdj9yJY1O/gvlfN2aiNTST/2
bd+PA4RBToG9rXn6vNkUWdbLibU=
-----END CERTIFICATE-----
`;

/**
 * "Global Virtual TPM CA - 03", the intermediate (issued by the root above, valid 2025-04-24 to
 * 2027-04-24) that issues TDX CVMs' AK certificates; published on the same Microsoft page. The AK
 * certificate carries no link to it, so it is bundled; pass newer intermediates with
 * `azureIntermediatesPem`.
 */
export const AZURE_VTPM_INTERMEDIATES_PEM = [`-----BEGIN CERTIFICATE-----
MIIFnDCCA4SgAwIBAgITMwAAAAknQOWscnsOpgAAAAAACTANBgkqhkiG9w0BAQwF
ADBpMQswCQYDVQQGEwJVUzEeMBwGA1UEChMVTWljcm9zb2Z0IENvcnBvcmF0aW9u
MTowOAYDVQQDEzFBenVyZSBWaXJ0dWFsIFRQTSBSb290IENlcnRpZmljYXRlIEF1
dGhvcml0eSAyMDIzMB4XDTI1MDQyNDE4MDExN1oXDTI3MDQyNDE4MDExN1owJTEj
MCEGA1UEAxMaR2xvYmFsIFZpcnR1YWwgVFBNIENBIC0gMDMwggEiMA0GCSqGSIb3
DQEBAQUAA4IBDwAwggEKAoIBAQDYGYtis5ka0cxQkhU11jslgX6wzjR/UXQIFdUn
8juTUMJl91VokwUPX3WfXeog7mtbWyYWD8SI0BSnchRGlV8u3AhcW61/HetHqmIL
tD0c75UATi+gsTQnpwKPA/m38MGGyXFETr3xHXjilUPfIhmxO4ImuNJ0R95bZYhx
bLYmOZpVUcj8oz980An8HlIqSzrskQR6NiuEmikHkHc1/CpoNunrr8kQNPF6gxex
IrvXsKLUAuUqnNtcQWc/8Er5EN9+TdX6AOjUmKriVGbCInP1m/aC+DWH/+aJ/8aD
pKze6fe7OHh2BL9hxqIsmJAStIh4siRdLYTt8hKGmkdzOWnRAgMBAAGjggF/MIIB
ezASBgNVHRMBAf8ECDAGAQH/AgEAMA4GA1UdDwEB/wQEAwICBDAXBgNVHSUEEDAO
BgVngQUIAQYFZ4EFCAMwHQYDVR0OBBYEFGcJhvj5gV6TrfnJZOcUCtqZywotMB8G
A1UdIwQYMBaAFEv+JlqUwfYzw4NIJt3z5bBksqqVMHYGA1UdHwRvMG0wa6BpoGeG
ZWh0dHA6Ly93d3cubWljcm9zb2Z0LmNvbS9wa2lvcHMvY3JsL0F6dXJlJTIwVmly
dHVhbCUyMFRQTSUyMFJvb3QlMjBDZXJ0aWZpY2F0ZSUyMEF1dGhvcml0eSUyMDIw
MjMuY3JsMIGDBggrBgEFBQcBAQR3MHUwcwYIKwYBBQUHMAKGZ2h0dHA6Ly93d3cu
bWljcm9zb2Z0LmNvbS9wa2lvcHMvY2VydHMvQXp1cmUlMjBWaXJ0dWFsJTIwVFBN
JTIwUm9vdCUyMENlcnRpZmljYXRlJTIwQXV0aG9yaXR5JTIwMjAyMy5jcnQwDQYJ
KoZIhvcNAQEMBQADggIBAJPP3Z2z1zhzUS3qSRVgyoUVnaxCGuMHzPQAZuoPBVpz
wKnv4HqyjMgT8pBtQqxkqAsg7KiqbPfO97bMCHcuqkkfHjw8yg6IYt01RjUjVPKq
lrsY2iw7hFWNWr8SGMa10JdNYNyf5dxob5+mKAwEOhLzKNwq9rM/uIvZky77pNly
RLt55XEPfBMYdI9I8uQ5Uqmrw7mVJfERMfTBhSQF9BrcajAsaLcs7qEUyj0yUdJf
cgZkfCoUEUSPr3OwLHaYeV1J6VidhIYsYo53sXXal91d60NspYgei2nJFei/+R3E
SWnGbPBW+EQ4FbvZXxu57zUMX9mM7lC+GoXLvA6/vtKShEi9ZXl2PSnBQ/R2A7b3
AXyg4fmMLFausEk6OiuU8E/bvp+gPLOJ8YrX7SAJVuEn+koJaK5G7os5DMIh7/KM
l9cI9WxPwqoWjp4VBfrF4hDOCmKWrqtFUDQCML8qD8RTxlQKQtgeGAcNDfoAuL9K
VtSG5/iIhuyBEFYEHa3vRWbSaHCUzaHJsTmLcz4cp1VDdepzqZRVuErBzJKFnBXb
zRNW32EFmcAUKZImIsE5dgB7y7eiijf33VWNfWmK05fxzQziWFWRYlET4SVc3jMn
PBiY3N8BfK8EBOYbLvzo0qn2n3SAmPhYX3Ag6vbbIHd4Qc8DQKHRV0PB8D3jPGmD
-----END CERTIFICATE-----
`];

export interface TdReport {
  raw: Buffer;
  reportData: Buffer;
  teeTcbSvn: Buffer;
  mrSeam: Buffer;
  mrSignerSeam: Buffer;
  seamAttributes: Buffer;
  tdAttributes: Buffer;
  xfam: Buffer;
  mrTd: Buffer;
  mrConfigId: Buffer;
  mrOwner: Buffer;
  mrOwnerConfig: Buffer;
  rtmr: [Buffer, Buffer, Buffer, Buffer];
}

export function parseTdReport(b: Buffer): TdReport {
  if (b.length !== TD_REPORT_SIZE) throw attestationError("hcl-report", `TD report is ${b.length} bytes, not ${TD_REPORT_SIZE}`);
  const m = (off: number) => b.subarray(off, off + 48);
  return {
    raw: b,
    reportData: b.subarray(128, 192),
    teeTcbSvn: b.subarray(264, 280),
    mrSeam: m(280),
    mrSignerSeam: m(328),
    seamAttributes: b.subarray(376, 384),
    tdAttributes: b.subarray(512, 520),
    xfam: b.subarray(520, 528),
    mrTd: m(528),
    mrConfigId: m(576),
    mrOwner: m(624),
    mrOwnerConfig: m(672),
    rtmr: [m(720), m(768), m(816), m(864)],
  };
}

export interface HclReport {
  reportType: number;
  tdReport: TdReport;
  hashAlg: "sha256" | "sha384" | "sha512";
  /** The runtime data (JSON text) the TD report's REPORTDATA commits to. */
  runtimeData: Buffer;
}

export function parseHclReport(buf: Buffer): HclReport {
  if (buf.length < IGVM_OFFSET + 20) throw attestationError("hcl-report", `HCL report is ${buf.length} bytes, too short for its header, hardware report and request data`);
  if (buf.subarray(0, 4).toString("latin1") !== "HCLA") throw attestationError("hcl-report", "HCL report does not start with the \"HCLA\" signature");
  const reportType = buf.readUInt32LE(IGVM_OFFSET + 8);
  if (reportType !== REPORT_TYPE_TDX) throw attestationError("hcl-report", `HCL report holds hardware report type ${reportType}, not a TD report (${REPORT_TYPE_TDX})`);
  const hashAlg = HASH_TYPES[buf.readUInt32LE(IGVM_OFFSET + 12)];
  if (!hashAlg) throw attestationError("hcl-report", `HCL report data hash type ${buf.readUInt32LE(IGVM_OFFSET + 12)} is unknown`);
  const size = buf.readUInt32LE(IGVM_OFFSET + 16);
  const start = IGVM_OFFSET + 20;
  if (size > buf.length - start) throw attestationError("hcl-report", `HCL runtime data (${size} bytes) runs past the ${buf.length}-byte report`);
  return { reportType, hashAlg, tdReport: parseTdReport(buf.subarray(HCL_HW_REPORT_OFFSET, HCL_HW_REPORT_OFFSET + TD_REPORT_SIZE)), runtimeData: buf.subarray(start, start + size) };
}

/** Problems binding the HCL report to the AK: REPORTDATA = H(runtime data), runtime data's HCLAkPub = the AK. */
export function hclAkBindingProblems(hcl: HclReport, akSpki: Buffer): string[] {
  const problems: string[] = [];
  const h = createHash(hcl.hashAlg).update(hcl.runtimeData).digest();
  if (!hcl.tdReport.reportData.subarray(0, h.length).equals(h)) problems.push(`the TD report's REPORTDATA does not start with the ${hcl.hashAlg} of the runtime data`);
  let keys: unknown;
  try {
    keys = (JSON.parse(hcl.runtimeData.toString("utf8")) as { keys?: unknown }).keys;
  } catch {
    return [...problems, "the runtime data is not JSON"];
  }
  const jwk = Array.isArray(keys) ? (keys as Array<Record<string, unknown>>).find((k) => k && k.kid === "HCLAkPub") : undefined;
  if (!jwk) return [...problems, "the runtime data has no HCLAkPub key"];
  try {
    const spki = createPublicKey({ key: { kty: jwk.kty, n: jwk.n, e: jwk.e, crv: jwk.crv, x: jwk.x, y: jwk.y } as never, format: "jwk" }).export({ type: "spki", format: "der" });
    if (!spki.equals(akSpki)) problems.push("HCLAkPub in the runtime data is not the AK that signed the quote");
  } catch (e) {
    problems.push(`HCLAkPub is not a valid key (${(e as Error).message})`);
  }
  return problems;
}

/** Problems binding the TD quote to the HCL report: same TD report body and report data. */
export function tdQuoteBindingProblems(report: TdReport, body: { teeTcbSvn: Buffer; mrSeam: Buffer; mrSignerSeam: Buffer; seamAttributes: Buffer; tdAttributes: Buffer; xfam: Buffer; mrTd: Buffer; mrConfigId: Buffer; mrOwner: Buffer; mrOwnerConfig: Buffer; rtmr: readonly Buffer[]; reportData: Buffer }): string[] {
  const fields: Array<[string, Buffer, Buffer]> = [
    ["REPORTDATA", report.reportData, body.reportData],
    ["TEE_TCB_SVN", report.teeTcbSvn, body.teeTcbSvn],
    ["MRSEAM", report.mrSeam, body.mrSeam],
    ["MRSIGNERSEAM", report.mrSignerSeam, body.mrSignerSeam],
    ["SEAM attributes", report.seamAttributes, body.seamAttributes],
    ["TD attributes", report.tdAttributes, body.tdAttributes],
    ["XFAM", report.xfam, body.xfam],
    ["MRTD", report.mrTd, body.mrTd],
    ["MRCONFIGID", report.mrConfigId, body.mrConfigId],
    ["MROWNER", report.mrOwner, body.mrOwner],
    ["MROWNERCONFIG", report.mrOwnerConfig, body.mrOwnerConfig],
    ...report.rtmr.map((r, i): [string, Buffer, Buffer] => [`RTMR${i}`, r, body.rtmr[i]!]),
  ];
  return fields.filter(([, a, b]) => !a.equals(b)).map(([name]) => `${name} of the TD quote differs from the HCL report's TD report`);
}

// ---------------------------------------------------------------------------------------------
// The verdict (agent half: agent/issuers/azure.ts)

export async function verifyAzure(input: EvidenceInput, opts: VerifyOptions, checks: Checks): Promise<RegisterVerdict[]> {
  const { tpm, azure } = input.evidence;
  if (!tpm || !tpm.akCertificate || !azure) {
    checks.fail("evidence", "azure evidence needs the AK, its certificate, a quote and the HCL report");
    return [];
  }
  const now = opts.now ?? new Date();
  const ak = await checks.guard("ak-public", () => parseTpm2bPublic(Buffer.from(tpm.akPublic, "base64"), "AK TPM2B_PUBLIC"));
  if (!ak) return [];
  const akSpki = spkiOf(ak);
  const certDer = Buffer.from(tpm.akCertificate, "base64");
  const problems = chainProblems(certDer, opts.azureIntermediatesPem ?? AZURE_VTPM_INTERMEDIATES_PEM, opts.azureRootsPem ?? [AZURE_VTPM_ROOT_CA_PEM], now);
  if (!problems.length && !new X509Certificate(certDer).publicKey.export({ type: "spki", format: "der" }).equals(akSpki)) problems.push("the certificate certifies another key than the AK");
  if (problems.length) checks.fail("ak-certificate", problems.join("; "));
  else checks.pass("ak-certificate", "AK certificate chains to the Azure vTPM root and certifies this AK");
  const hcl = await checks.guard("hcl-report", () => parseHclReport(Buffer.from(azure.hclReport, "base64")));
  if (hcl) {
    const bind = hclAkBindingProblems(hcl, akSpki);
    if (bind.length) checks.fail("hcl-ak-binding", bind.join("; "));
    else checks.pass("hcl-ak-binding", `the TD report's REPORTDATA is the ${hcl.hashAlg} of the runtime data, whose HCLAkPub is this AK`);
    const tdQuote = b64(azure.tdQuote);
    if (!tdQuote) checks.fail("hcl-td-quote-binding", "no TD quote for the HCL report's TD report");
    else {
      const body = await checks.guard("td-quote", () => parseTdxQuote(tdQuote).body);
      if (body) {
        const diff = tdQuoteBindingProblems(hcl.tdReport, body);
        if (diff.length) checks.fail("hcl-td-quote-binding", diff.join("; "));
        else checks.pass("hcl-td-quote-binding", "the TD quote carries the HCL report's TD report (body and REPORTDATA)");
        const dcap = await checks.guard("dcap", () => verifyDcap(tdQuote, { ...opts.dcap, now }));
        if (dcap) checks.pass("dcap", `TD quote verified by DCAP: TCB ${dcap.status}${dcap.advisoryIds.length ? ` (${dcap.advisoryIds.join(", ")})` : ""}, collateral ${dcap.collateralSource}`);
      }
    }
  }
  const quoted = await checks.guard("quote-structure", () => verifyTpmQuote(tpm, ak, input, checks));
  return quoted ? pcrRegisters(input.expected, quoted, input.evidence.eventLogs, checks) : [];
}
