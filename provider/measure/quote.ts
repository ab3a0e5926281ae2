/**
 * TDX quote (DCAP ECDSA quote v4, and v5 with its body descriptor): header and TD report body.
 * Only the layout is parsed here; signature verification is a separate concern.
 *
 * Sources (read, not copied):
 * - Intel SGXDataCenterAttestationPrimitives QuoteGeneration/quote_wrapper/common/inc/sgx_quote_4.h
 *   (sgx_quote4_header_t, sgx_report2_body_t offsets 0..520, sgx_quote4_t) and sgx_quote_5.h.
 * - Intel TDX DCAP Quoting Library API, "Quote Format" (v4 header 48 bytes, TD quote body 584
 *   bytes, then a u32 signature data length).
 * - Cross-checked against google/go-tdx-guest abi/abi.go offsets (body 0x30..0x278, length field
 *   at 0x278; v5 body types 2 = TDX 1.0 (584 bytes), 3 = TDX 1.5 (648 bytes)).
 */
import { ByteView, measurementError } from "./bytes";

export const TDX_TEE_TYPE = 0x81;
const HEADER_SIZE = 48;
const TD10_BODY_SIZE = 584;
const TD15_BODY_SIZE = 648;

export interface QuoteHeader {
  readonly version: number;
  readonly attestationKeyType: number;
  readonly teeType: number;
  /** Bytes 8..11: reserved in sgx_quote_4.h (QE SVN / PCE SVN in some documents). */
  readonly reserved: Buffer;
  readonly qeVendorId: Buffer;
  readonly userData: Buffer;
}

export interface TdReportBody {
  readonly teeTcbSvn: Buffer;
  readonly mrSeam: Buffer;
  readonly mrSignerSeam: Buffer;
  readonly seamAttributes: Buffer;
  readonly tdAttributes: Buffer;
  readonly xfam: Buffer;
  readonly mrTd: Buffer;
  readonly mrConfigId: Buffer;
  readonly mrOwner: Buffer;
  readonly mrOwnerConfig: Buffer;
  readonly rtmr: readonly [Buffer, Buffer, Buffer, Buffer];
  readonly reportData: Buffer;
  /** TDX 1.5 bodies (quote v5, body type 3) only. */
  readonly teeTcbSvn2?: Buffer;
  readonly mrServiceTd?: Buffer;
}

export interface TdxQuote {
  readonly header: QuoteHeader;
  /** v5 only: 2 = TDX 1.0 body, 3 = TDX 1.5 body. */
  readonly bodyType?: number;
  readonly body: TdReportBody;
  readonly signatureData: Buffer;
  /** Bytes after the signature data (some quote providers pad the buffer). */
  readonly trailingBytes: number;
}

export function parseTdxQuote(buf: Buffer): TdxQuote {
  const v = new ByteView(buf, "TDX quote");
  v.need(0, HEADER_SIZE, "header");
  const header: QuoteHeader = {
    version: v.u16(0, "Version"),
    attestationKeyType: v.u16(2, "AttestationKeyType"),
    teeType: v.u32(4, "TeeType"),
    reserved: v.bytes(8, 4, "reserved"),
    qeVendorId: v.bytes(12, 16, "QEVendorID"),
    userData: v.bytes(28, 20, "UserData"),
  };
  if (header.teeType !== TDX_TEE_TYPE) measurementError(`TDX quote: TEE type 0x${header.teeType.toString(16)} is not TDX (0x81)`);

  let bodyAt = HEADER_SIZE;
  let bodySize = TD10_BODY_SIZE;
  let bodyType: number | undefined;
  if (header.version === 5) {
    bodyType = v.u16(HEADER_SIZE, "body type");
    const size = v.u32(HEADER_SIZE + 2, "body size");
    const expected = bodyType === 2 ? TD10_BODY_SIZE : bodyType === 3 ? TD15_BODY_SIZE : undefined;
    if (expected === undefined) measurementError(`TDX quote v5: body type ${bodyType} is not a TD report (2 or 3)`);
    if (size !== expected) measurementError(`TDX quote v5: body size ${size}, expected ${expected} for type ${bodyType}`);
    bodyAt = HEADER_SIZE + 6;
    bodySize = size;
  } else if (header.version !== 4) {
    measurementError(`TDX quote: version ${header.version} is not supported (4 or 5)`);
  }
  const b = new ByteView(v.bytes(bodyAt, bodySize, "TD report body"), "TD report body");
  const m = (off: number, field: string) => b.bytes(off, 48, field);
  const body: TdReportBody = {
    teeTcbSvn: b.bytes(0, 16, "TEE_TCB_SVN"),
    mrSeam: m(16, "MRSEAM"),
    mrSignerSeam: m(64, "MRSIGNERSEAM"),
    seamAttributes: b.bytes(112, 8, "SEAMATTRIBUTES"),
    tdAttributes: b.bytes(120, 8, "TDATTRIBUTES"),
    xfam: b.bytes(128, 8, "XFAM"),
    mrTd: m(136, "MRTD"),
    mrConfigId: m(184, "MRCONFIGID"),
    mrOwner: m(232, "MROWNER"),
    mrOwnerConfig: m(280, "MROWNERCONFIG"),
    rtmr: [m(328, "RTMR0"), m(376, "RTMR1"), m(424, "RTMR2"), m(472, "RTMR3")],
    reportData: b.bytes(520, 64, "REPORTDATA"),
    ...(bodySize === TD15_BODY_SIZE ? { teeTcbSvn2: b.bytes(584, 16, "TEE_TCB_SVN2"), mrServiceTd: m(600, "MRSERVICETD") } : {}),
  };
  const sigLenAt = bodyAt + bodySize;
  const sigLen = v.u32(sigLenAt, "signature data length");
  const signatureData = v.bytes(sigLenAt + 4, sigLen, "signature data");
  return {
    header,
    ...(bodyType === undefined ? {} : { bodyType }),
    body,
    signatureData,
    trailingBytes: buf.length - (sigLenAt + 4 + sigLen),
  };
}
