/**
 * Parser work is bounded in total, not only per item: small hostile inputs (about 40 KB) whose
 * headers ask for many sections, overlapping section data, or zero fill summed over sections are
 * refused with E_MEASUREMENT instead of costing seconds of hashing or gigabytes of memory. Each
 * input is built here from scratch; the assertions are about the error, never about time.
 */
import { TdxError } from "../../../provider/errors";
import { authenticodeDigest, authenticodeDigestAsync, computeMrtd, parseCcel, parseEventLog, parsePe, parseTdvf, ukiPcr11Events, ukiSections } from "../../../provider/measure";
import { verify } from "../../../provider/measure/verify";
import { guidToBytes } from "../../../provider/measure/bytes";
import { buildPe, peOffsets } from "./pe-builder";

function measurementError(fn: () => unknown): TdxError {
  try {
    fn();
  } catch (e) {
    if (e instanceof TdxError && e.code === "E_MEASUREMENT") return e;
    throw e;
  }
  throw new Error("expected E_MEASUREMENT, but the call succeeded");
}

/** A PE with `n` one-byte sections (the first is .linux), laid out tightly so the file stays small. */
function manySections(n: number): Buffer {
  return buildPe({ plus: true, fileAlign: 8, sections: Array.from({ length: n }, (_, i) => ({ name: i ? `.s${i}` : ".linux", data: Buffer.from([i & 0xff]) })) });
}

/** Rewrite section i's header fields (VirtualSize, SizeOfRawData, PointerToRawData). */
function patchSection(pe: Buffer, i: number, f: { virtualSize?: number; sizeOfRawData?: number; pointerToRawData?: number }): void {
  const at = peOffsets(pe).table + 40 * i;
  if (f.virtualSize !== undefined) pe.writeUInt32LE(f.virtualSize, at + 8);
  if (f.sizeOfRawData !== undefined) pe.writeUInt32LE(f.sizeOfRawData, at + 16);
  if (f.pointerToRawData !== undefined) pe.writeUInt32LE(f.pointerToRawData, at + 20);
}

describe("PE / Authenticode: bounded section work", () => {
  it("refuses more sections than a PE loader accepts (96), in a 40 KB file", () => {
    const pe = manySections(900);
    expect(pe.length).toBeLessThan(48 * 1024);
    expect(measurementError(() => parsePe(pe)).message).toMatch(/900 sections/);
    expect(() => parsePe(manySections(96))).not.toThrow();
  });

  it("refuses section data that overlaps so that hashing would cover the file many times over", async () => {
    // 96 sections (the most a loader takes), each claiming the whole file as its raw data.
    const pe = manySections(96);
    for (let i = 0; i < 96; i++) patchSection(pe, i, { pointerToRawData: 0, sizeOfRawData: pe.length });
    expect(measurementError(() => authenticodeDigest(pe, "sha256")).message).toMatch(/overlap/);
    await expect(authenticodeDigestAsync(pe, "sha256")).rejects.toMatchObject({ code: "E_MEASUREMENT" });
  });
});

describe("UKI: zero fill is bounded summed over the sections", () => {
  it("refuses 96 sections that each ask for 16 MiB of zero fill (1.5 GiB in all) from a small file", () => {
    const pe = manySections(96);
    for (let i = 0; i < 96; i++) patchSection(pe, i, { virtualSize: 16 * 1024 * 1024 });
    expect(measurementError(() => ukiSections(pe)).message).toMatch(/zero fill/);
    expect(measurementError(() => ukiPcr11Events(pe)).message).toMatch(/zero fill/);
  });

  it("still zero-fills a plausible amount", () => {
    const pe = manySections(4);
    patchSection(pe, 0, { virtualSize: 4096 });
    const s = ukiSections(pe);
    expect(s[0]!.data.length).toBe(4096);
    expect(s[0]!.data.subarray(1).equals(Buffer.alloc(4095))).toBe(true);
  });
});

const TDVF_FOOTER = "96b582de-1fb2-45f7-baea-a366c55a082d";
const TDX_METADATA = "e47a6535-984a-4798-865e-4685a7bf8ec2";

/** A firmware image of `size` bytes whose TDVF descriptor (at 1 KiB) lists `sections`. */
function tdvfImage(size: number, sections: ReadonlyArray<{ dataOffset: number; rawDataSize: number; memoryAddress: bigint; memoryDataSize: bigint; type: number; attributes: number }>): Buffer {
  const fw = Buffer.alloc(size);
  const desc = 1024;
  fw.write("TDVF", desc, "latin1");
  fw.writeUInt32LE(16 + 32 * sections.length, desc + 4);
  fw.writeUInt32LE(1, desc + 8);
  fw.writeUInt32LE(sections.length, desc + 12);
  sections.forEach((s, i) => {
    const at = desc + 16 + 32 * i;
    fw.writeUInt32LE(s.dataOffset, at);
    fw.writeUInt32LE(s.rawDataSize, at + 4);
    fw.writeBigUInt64LE(s.memoryAddress, at + 8);
    fw.writeBigUInt64LE(s.memoryDataSize, at + 16);
    fw.writeUInt32LE(s.type, at + 24);
    fw.writeUInt32LE(s.attributes, at + 28);
  });
  // The GUIDed table before the footer (QEMU pc_sysfw_ovmf.c layout): one entry holding the
  // descriptor's offset from the end of the image, then the table length and the footer GUID.
  const footer = size - 32 - 16;
  guidToBytes(TDVF_FOOTER).copy(fw, footer);
  fw.writeUInt16LE(22 + 18, footer - 2);
  const entryEnd = footer - 2;
  guidToBytes(TDX_METADATA).copy(fw, entryEnd - 16);
  fw.writeUInt16LE(22, entryEnd - 18);
  fw.writeUInt32LE(size - desc, entryEnd - 22);
  return fw;
}

describe("TDVF: bounded section count and MR.EXTEND bytes", () => {
  const size = 40 * 1024;
  const bfv = (i: number) => ({ dataOffset: 0, rawDataSize: 36 * 1024, memoryAddress: BigInt(i) << 20n, memoryDataSize: 36n * 1024n, type: 0, attributes: 1 });

  it("a well-formed small image measures", () => {
    const fw = tdvfImage(size, [bfv(0)]);
    expect(parseTdvf(fw).sections).toHaveLength(1);
    expect(computeMrtd(fw, { pageOrder: "single-pass" })).toHaveLength(48);
  });

  it("refuses a descriptor with a thousand sections", () => {
    const fw = tdvfImage(size, Array.from({ length: 1000 }, (_, i) => bfv(i)));
    expect(measurementError(() => parseTdvf(fw)).message).toMatch(/1000 sections/);
  });

  it("refuses sections whose MR.EXTEND content adds up to more than the image (the same bytes extended over and over)", () => {
    const fw = tdvfImage(size, Array.from({ length: 32 }, (_, i) => bfv(i)));
    expect(measurementError(() => computeMrtd(fw, { pageOrder: "single-pass" })).message).toMatch(/MR\.EXTEND/);
    expect(measurementError(() => computeMrtd(fw, { pageOrder: "two-pass" })).message).toMatch(/MR\.EXTEND/);
  });
});

/** A crypto-agile log with one SHA-384 bank and `n` minimal events (what a hostile guest could send). */
function eventLog(n: number): Buffer {
  const spec = Buffer.alloc(28 + 4 + 1);
  spec.write("Spec ID Event03\0", 0, "latin1");
  spec.writeUInt32LE(1, 24);
  spec.writeUInt16LE(0x000c, 28); // TPM_ALG_SHA384
  spec.writeUInt16LE(48, 30);
  const header = Buffer.alloc(32);
  header.writeUInt32LE(3, 4); // EV_NO_ACTION
  header.writeUInt32LE(spec.length, 28);
  const event = Buffer.alloc(12 + 2 + 48 + 4);
  event.writeUInt32LE(2, 0); // RTMR1
  event.writeUInt32LE(0x80000007, 4); // EV_EFI_ACTION
  event.writeUInt32LE(1, 8);
  event.writeUInt16LE(0x000c, 12);
  event.fill(0xab, 14, 62);
  return Buffer.concat([header, spec, ...Array.from({ length: n }, () => event)]);
}

describe("event logs: bounded event count", () => {
  it("parses and verifies a log of a few thousand events", () => {
    const log = eventLog(2000);
    expect(parseCcel(log).events).toHaveLength(2000);
    const r = verify({ measurementsVersion: 1, backend: "rtmr", inputs: {}, registers: { RTMR1: { alg: "sha384", value: null, status: "exact", events: [] } } }, { ccel: log });
    expect(r.registers[0]!.problems).toHaveLength(2000); // every event is unexpected
  });

  it("refuses a 4.6 MB log of 70,000 events (a real CCEL or TPM log holds hundreds)", () => {
    const log = eventLog(70_000);
    expect(measurementError(() => parseEventLog(log)).message).toMatch(/more than 65536 events/);
    expect(measurementError(() => verify({ measurementsVersion: 1, backend: "rtmr", inputs: {}, registers: { RTMR1: { alg: "sha384", value: null, status: "exact", events: [] } } }, { ccel: log })).message).toMatch(/events/);
  });
});
