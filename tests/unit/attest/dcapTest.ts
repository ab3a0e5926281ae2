/**
 * TD quotes and collateral signed by the test PKI (fixtures/dcap-test/pki.json): the layouts a
 * real Quoting Enclave and Intel's PCS produce, so the real @phala/dcap-qvl verifies them when
 * given the test root. Layouts (written from the specifications, not copied):
 * - Intel TDX DCAP Quoting Library API, "Quote Format": v4 header (48 bytes), TD quote body (584),
 *   u32 signature data length, ECDSA-P256 signature (r‖s) over header‖body, attestation public
 *   key (x‖y), certification data type 6 (QE report certification data: QE report (384), its
 *   signature by the PCK key, QE authentication data, certification data type 5 = PCK chain PEM);
 * - QE report = SGX REPORT body; its REPORTDATA[0:32] = SHA-256(attestation key ‖ QE auth data);
 * - Intel PCS API v4: TCB info v3 ("id": "TDX") and enclave identity v2 ("id": "TD_QE"), each
 *   signed (ECDSA P-256, r‖s hex) over its exact JSON text.
 */
import { createHash, createPrivateKey, generateKeyPairSync, sign, X509Certificate } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import type { Collateral } from "../../../provider/attest/dcap";

export const PKI = JSON.parse(fs.readFileSync(path.join(__dirname, "fixtures", "dcap-test", "pki.json"), "utf8")) as {
  rootPem: string; pckCaPem: string; pckPem: string; pckKeyPem: string; tcbSigningPem: string; tcbSigningKeyPem: string; rootCrlHex: string; pckCrlHex: string;
};
export const TEST_ROOT_DER = new X509Certificate(PKI.rootPem).raw;
/** Inside every test certificate's validity (2026-01-01 – 2036-01-01) and the collateral built below. */
export const TEST_NOW = new Date("2026-06-01T00:00:00Z");
/** From the SGX extension copied into the test PCK certificate (the GCP quote's): FMSPC, CPUSVN components, PCESVN. */
export const FMSPC = "00806f050000";
export const CPUSVN = [7, 7, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0];
export const PCESVN = 11;
const QE_MRSIGNER = Buffer.alloc(32, 0x5a);

export interface TdBody {
  teeTcbSvn: Buffer; mrSeam: Buffer; mrSignerSeam: Buffer; seamAttributes: Buffer; tdAttributes: Buffer; xfam: Buffer;
  mrTd: Buffer; mrConfigId: Buffer; mrOwner: Buffer; mrOwnerConfig: Buffer; rtmr: [Buffer, Buffer, Buffer, Buffer]; reportData: Buffer;
}

export function tdBody(over: Partial<TdBody> = {}): TdBody {
  return {
    teeTcbSvn: Buffer.from("04010700000000000000000000000000", "hex"),
    mrSeam: Buffer.alloc(48, 0x11), mrSignerSeam: Buffer.alloc(48), seamAttributes: Buffer.alloc(8),
    tdAttributes: Buffer.from("0000001000000000", "hex"), // SEPT_VE_DISABLE, not a debug TD
    xfam: Buffer.from("e718060000000000", "hex"),
    mrTd: Buffer.alloc(48, 0x22), mrConfigId: Buffer.alloc(48), mrOwner: Buffer.alloc(48), mrOwnerConfig: Buffer.alloc(48),
    rtmr: [Buffer.alloc(48, 0x30), Buffer.alloc(48, 0x31), Buffer.alloc(48, 0x32), Buffer.alloc(48)],
    reportData: Buffer.alloc(64),
    ...over,
  };
}

export function bodyBytes(b: TdBody): Buffer {
  const out = Buffer.concat([b.teeTcbSvn, b.mrSeam, b.mrSignerSeam, b.seamAttributes, b.tdAttributes, b.xfam, b.mrTd, b.mrConfigId, b.mrOwner, b.mrOwnerConfig, ...b.rtmr, b.reportData]);
  if (out.length !== 584) throw new Error(`TD quote body is ${out.length} bytes`);
  return out;
}

const u16 = (n: number) => { const b = Buffer.alloc(2); b.writeUInt16LE(n); return b; };
const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(n); return b; };
const p1363 = (key: string, data: Buffer) => sign("sha256", data, { key: createPrivateKey(key), dsaEncoding: "ieee-p1363" });

/** A TD quote v4 over `body`, signed by a fresh attestation key certified by the test QE. */
export function buildTdQuote(body: TdBody, opts: { qeIsvSvn?: number; qeAttributes?: Buffer } = {}): Buffer {
  const header = Buffer.concat([u16(4), u16(2), u32(0x81), u16(0), u16(PCESVN), Buffer.from("939a7233f79c4ca9940a0db3957f0607", "hex"), Buffer.alloc(20)]);
  const signed = Buffer.concat([header, bodyBytes(body)]);
  const att = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const jwk = att.publicKey.export({ format: "jwk" });
  const attPub = Buffer.concat([Buffer.from(jwk.x!, "base64url"), Buffer.from(jwk.y!, "base64url")]);
  const sig = sign("sha256", signed, { key: att.privateKey, dsaEncoding: "ieee-p1363" });
  const authData = Buffer.from(Array.from({ length: 32 }, (_, i) => i)); // QE authentication data: 32 bytes, as the QE emits
  const qeReportData = Buffer.concat([createHash("sha256").update(attPub).update(authData).digest(), Buffer.alloc(32)]);
  const qeReport = Buffer.concat([
    Buffer.alloc(16), // CPUSVN
    u32(0), Buffer.alloc(28), // MISCSELECT, reserved
    opts.qeAttributes ?? Buffer.from("11000000000000000700000000000000", "hex"), // ATTRIBUTES (INIT | MODE64BIT, not DEBUG)
    Buffer.alloc(32, 0x77), Buffer.alloc(32), // MRENCLAVE, reserved
    QE_MRSIGNER, Buffer.alloc(96), // MRSIGNER, reserved
    u16(2), u16(opts.qeIsvSvn ?? 4), Buffer.alloc(60), // ISVPRODID (TD_QE), ISVSVN, reserved
    qeReportData,
  ]);
  if (qeReport.length !== 384) throw new Error("QE report size");
  const chain = Buffer.from(PKI.pckPem + PKI.pckCaPem + PKI.rootPem, "latin1");
  const qeCert = Buffer.concat([qeReport, p1363(PKI.pckKeyPem, qeReport), u16(authData.length), authData, u16(5), u32(chain.length), chain]);
  const sigData = Buffer.concat([sig, attPub, u16(6), u32(qeCert.length), qeCert]);
  return Buffer.concat([signed, u32(sigData.length), sigData]);
}

const comps = (svns: number[]) => svns.map((svn) => ({ svn }));
export const TDX_MODULE = { mrsigner: "0".repeat(96), attributes: "0000000000000000", attributesMask: "FFFFFFFFFFFFFFFF" };

/** Collateral for the test platform, with one TCB level of `status` that the test quote reaches. */
export function buildCollateral(opts: { status?: string; issue?: string; next?: string; tdxSvn?: number[]; qeStatus?: string; tdxModule?: Record<string, unknown> | null; tdxModuleIdentities?: unknown[] } = {}): Collateral {
  const issueDate = opts.issue ?? "2026-05-01T00:00:00Z";
  const nextUpdate = opts.next ?? "2026-07-01T00:00:00Z";
  const tcbInfo = JSON.stringify({
    id: "TDX", version: 3, issueDate, nextUpdate, fmspc: FMSPC, pceId: "0000", tcbType: 0, tcbEvaluationDataNumber: 17,
    // Intel's TDX module identities, as its real TCB info lists them (signer all zeros, no attribute set).
    ...(opts.tdxModule === null ? {} : { tdxModule: opts.tdxModule ?? TDX_MODULE }), // null: a TCB info without it
    tdxModuleIdentities: opts.tdxModuleIdentities ?? [{ id: "TDX_01", ...TDX_MODULE, tcbLevels: [{ tcb: { isvsvn: 4 }, tcbDate: "2026-01-01T00:00:00Z", tcbStatus: "UpToDate" }, { tcb: { isvsvn: 2 }, tcbDate: "2025-01-01T00:00:00Z", tcbStatus: "OutOfDate" }] }],
    tcbLevels: [{ tcb: { sgxtcbcomponents: comps(CPUSVN), pcesvn: PCESVN, tdxtcbcomponents: comps(opts.tdxSvn ?? [4, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) }, tcbDate: "2026-01-01T00:00:00Z", tcbStatus: opts.status ?? "UpToDate", ...(opts.status && opts.status !== "UpToDate" ? { advisoryIDs: ["INTEL-SA-TEST"] } : {}) }],
  });
  const qeIdentity = JSON.stringify({
    id: "TD_QE", version: 2, issueDate, nextUpdate, tcbEvaluationDataNumber: 17, miscselect: "00000000", miscselectMask: "FFFFFFFF",
    attributes: "11000000000000000000000000000000", attributesMask: "FBFFFFFFFFFFFFFF0000000000000000", mrsigner: QE_MRSIGNER.toString("hex").toUpperCase(), isvprodid: 2,
    tcbLevels: [{ tcb: { isvsvn: 4 }, tcbDate: "2026-01-01T00:00:00Z", tcbStatus: opts.qeStatus ?? "UpToDate" }],
  });
  const signingChain = PKI.tcbSigningPem + PKI.rootPem;
  return {
    pck_crl_issuer_chain: PKI.pckCaPem + PKI.rootPem,
    root_ca_crl: PKI.rootCrlHex,
    pck_crl: PKI.pckCrlHex,
    tcb_info_issuer_chain: signingChain,
    tcb_info: tcbInfo,
    tcb_info_signature: p1363(PKI.tcbSigningKeyPem, Buffer.from(tcbInfo, "utf8")).toString("hex"),
    qe_identity_issuer_chain: signingChain,
    qe_identity: qeIdentity,
    qe_identity_signature: p1363(PKI.tcbSigningKeyPem, Buffer.from(qeIdentity, "utf8")).toString("hex"),
  };
}
