/**
 * TDX quote layout.
 * Vectors: google/go-tdx-guest testing/testdata — ccel/cos-113-tdx-quote.dat (v4; its RTMRs are
 * checked against the replayed CCEL of the same boot in eventlog.test.ts, which pins the body
 * offsets) and quote_v5_sample.dat (v5, TDX 1.5 body). Field offsets per Intel sgx_quote_4.h.
 */
import { TdxError } from "../../../provider/errors";
import { parseTdxQuote } from "../../../provider/measure";
import { fixture, hex } from "./fixtures";

describe("parseTdxQuote", () => {
  it("parses a v4 quote (COS 113 on TDX)", () => {
    const q = parseTdxQuote(fixture("tdx-quote-cos113.dat"));
    expect(q.header).toMatchObject({ version: 4, attestationKeyType: 2, teeType: 0x81 });
    expect(hex(q.header.qeVendorId)).toBe("939a7233f79c4ca9940a0db3957f0607"); // Intel QE vendor ID
    expect(q.bodyType).toBeUndefined();
    expect(hex(q.body.mrTd)).toBe("dae67181d3d65e073ad8f95b7907d5e927bfe9761c9ff3e9b89734a45d8954dba41394c7717cb2735396c1d04231f94a");
    expect(q.body.rtmr[3]).toEqual(Buffer.alloc(48));
    expect(q.body.mrSignerSeam).toEqual(Buffer.alloc(48)); // Intel's own SEAM module
    expect(q.body.seamAttributes).toEqual(Buffer.alloc(8)); // MBZ in TDX 1.0
    expect(q.body.reportData).toEqual(fixture("tdx-quote-cos113.dat").subarray(48 + 520, 48 + 584));
    expect(q.signatureData.length).toBe(4299);
    expect(q.trailingBytes).toBe(8000 - 636 - 4299); // the provider's buffer is zero-padded
    expect(q.body.teeTcbSvn2).toBeUndefined();
  });

  it("parses a v5 quote with a TDX 1.5 body", () => {
    const q = parseTdxQuote(fixture("tdx-quote-v5-sample.dat"));
    expect(q.header).toMatchObject({ version: 5, teeType: 0x81 });
    expect(q.bodyType).toBe(3);
    expect(hex(q.body.mrTd)).toBe("7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f876");
    expect(hex(q.body.rtmr[0])).toBe("5c8daf76063a71ac8fcef4067564661fc682ed7944c7a5d21dbbced02f61ceff4ba0678c6aef3bdae8cbc614cec24619");
    expect(q.body.teeTcbSvn2).toHaveLength(16);
    expect(q.body.mrServiceTd).toHaveLength(48);
    expect(q.signatureData.length).toBe(4300);
    expect(q.trailingBytes).toBe(0);
  });

  it("rejects non-TDX quotes, unknown versions and truncation with E_MEASUREMENT", () => {
    const raw = fixture("tdx-quote-cos113.dat");
    const sgx = Buffer.from(raw);
    sgx.writeUInt32LE(0, 4);
    expect(() => parseTdxQuote(sgx)).toThrow(/not TDX/);
    const v3 = Buffer.from(raw);
    v3.writeUInt16LE(3, 0);
    expect(() => parseTdxQuote(v3)).toThrow(/version 3/);
    expect(() => parseTdxQuote(raw.subarray(0, 700))).toThrow(TdxError);
  });
});
