/**
 * TDVF (TDX OVMF) metadata and the MRTD a TDX host computes when it loads the firmware, plus the
 * configuration firmware volume (CFV) that the firmware measures into RTMR0.
 *
 * Sources (read, not copied):
 * - QEMU hw/i386/pc_sysfw_ovmf.c: the GUIDed table ends 32 bytes before the end of the image with
 *   the footer GUID 96b582de-1fb2-45f7-baea-a366c55a082d and a u16 total length that includes the
 *   footer's own 18 bytes; each entry is [data][u16 entry length][16-byte GUID], walked backwards.
 * - QEMU hw/i386/tdvf.c: the TDX metadata offset entry (e47a6535-984a-4798-865e-4685a7bf8ec2)
 *   holds a u32 offset from the end of the image to the "TDVF" descriptor {Signature, Length,
 *   Version = 1, NumberOfSectionEntries} followed by 32-byte entries {DataOffset u32, RawDataSize
 *   u32, MemoryAddress u64, MemoryDataSize u64, Type u32, Attributes u32}; sanity checks.
 * - QEMU target/i386/kvm/tdx.c tdx_finalize_vm / tdx_init_fw_mem_region: every section's
 *   MemoryDataSize/4096 pages are added at MemoryAddress; BFV/CFV pages take their content from the
 *   image at DataOffset; MR.EXTEND is requested for sections with attribute bit 0.
 * - Intel TDX Module spec (TDH.MEM.PAGE.ADD, TDH.MR.EXTEND), as quoted in google/gce-tcb-verifier
 *   tdx/measurement.go: one running SHA-384; a MEM.PAGE.ADD record is 128 bytes ("MEM.PAGE.ADD" at
 *   0..11, GPA u64 LE at 16..23, zeros); MR.EXTEND per 256-byte chunk is a 128-byte record
 *   ("MR.EXTEND" at 0..8, GPA at 16..23) followed by the chunk as two 128-byte blocks.
 * - Dstack-TEE/dstack dstack-mr/src/tdvf.rs and machine.rs: page order "two-pass" (per section,
 *   all MEM.PAGE.ADD then all MR.EXTEND; QEMU 8.x) vs "single-pass" (per page, MEM.PAGE.ADD then
 *   its 16 MR.EXTEND chunks; QEMU >= 9 / upstream KVM); sections with PAGE.AUG (bit 1) get no
 *   MEM.PAGE.ADD (TDVF design guide: the VMM adds those pages with TDH.MEM.PAGE.AUG later).
 * - edk2 OvmfPkg/Library/TdxHelperLib TdxHelperMeasureCfvImage: RTMR0 gets SHA-384 of
 *   PcdCfvRawDataSize bytes at the CFV base, i.e. the CFV section's raw data.
 */
import { createHash } from "node:crypto";
import { ByteView, guidToBytes, guidToString, measurementError } from "./bytes";

export const OVMF_TABLE_FOOTER_GUID = "96b582de-1fb2-45f7-baea-a366c55a082d";
export const TDX_METADATA_OFFSET_GUID = "e47a6535-984a-4798-865e-4685a7bf8ec2";
/** The footer GUID ends this many bytes before the end of the image. */
const BYTES_AFTER_TABLE_FOOTER = 32;
const ENTRY_TRAILER = 18; // u16 length + 16-byte GUID

export const TdvfSectionType = { BFV: 0, CFV: 1, TD_HOB: 2, TEMP_MEM: 3, PERM_MEM: 4, PAYLOAD: 5, PAYLOAD_PARAM: 6 } as const;
export type TdvfSectionTypeName = keyof typeof TdvfSectionType;
const TYPE_NAMES = Object.keys(TdvfSectionType) as TdvfSectionTypeName[];

export const TDVF_ATTRIBUTE_MR_EXTEND = 1 << 0;
export const TDVF_ATTRIBUTE_PAGE_AUG = 1 << 1;

const PAGE_SIZE = 4096;
const CHUNK_SIZE = 256;
const RECORD_SIZE = 128;
/** Upper bound on pages added without content (TempMem etc.), so a corrupt size cannot stall us: 1 GiB. */
export const MAX_PAGE_ADD_BYTES = 1n << 30n;
/** Most section entries a TDVF descriptor may list (TDVF builds have 6–9: BFV, CFV, TD_HOB, TempMem, …). */
export const MAX_TDVF_SECTIONS = 64;

export interface OvmfTableEntry {
  readonly guid: string;
  /** File offset of the entry's data. */
  readonly offset: number;
  readonly data: Buffer;
}

export interface TdvfSection {
  readonly index: number;
  readonly dataOffset: number;
  readonly rawDataSize: number;
  readonly memoryAddress: bigint;
  readonly memoryDataSize: bigint;
  readonly type: number;
  readonly typeName: TdvfSectionTypeName;
  readonly attributes: number;
  readonly mrExtend: boolean;
  readonly pageAug: boolean;
}

export interface TdvfMetadata {
  /** File offset of the "TDVF" descriptor. */
  readonly offset: number;
  readonly length: number;
  readonly version: number;
  readonly sections: ReadonlyArray<TdvfSection>;
}

export type PageOrder = "single-pass" | "two-pass";

/** The OVMF reset-vector GUIDed table, entries in the order they are found (from the end backwards). */
export function ovmfGuidTable(firmware: Buffer): OvmfTableEntry[] {
  const v = new ByteView(firmware, "OVMF image");
  const footerAt = firmware.length - BYTES_AFTER_TABLE_FOOTER - 16;
  v.need(footerAt - 2, 18, "GUIDed table footer");
  if (!firmware.subarray(footerAt, footerAt + 16).equals(guidToBytes(OVMF_TABLE_FOOTER_GUID))) {
    measurementError("OVMF image: no GUIDed table footer 48 bytes before the end (not an OVMF/TDVF image)");
  }
  const total = v.u16(footerAt - 2, "GUIDed table length");
  const tableEnd = footerAt - 2; // exclusive; the footer's own 18 bytes follow
  const tableLen = total - ENTRY_TRAILER;
  if (tableLen < 0 || tableLen > tableEnd) measurementError(`OVMF image: GUIDed table length ${total} is invalid`);
  const tableStart = tableEnd - tableLen;
  const entries: OvmfTableEntry[] = [];
  let end = tableEnd;
  while (end - tableStart >= ENTRY_TRAILER) {
    const guid = guidToString(firmware.subarray(end - 16, end));
    const len = firmware.readUInt16LE(end - ENTRY_TRAILER);
    if (len < ENTRY_TRAILER || len > end - tableStart) measurementError(`OVMF image: GUIDed table entry ${guid} has invalid length ${len}`);
    const start = end - len;
    entries.push({ guid, offset: start, data: firmware.subarray(start, end - ENTRY_TRAILER) });
    end = start;
  }
  return entries;
}

/** Locate and parse the TDVF metadata descriptor and its section entries. */
export function parseTdvf(firmware: Buffer): TdvfMetadata {
  const entry = ovmfGuidTable(firmware).find((e) => e.guid === TDX_METADATA_OFFSET_GUID);
  if (!entry) measurementError("OVMF image: no TDX metadata offset entry in the GUIDed table (firmware built without TDX support)");
  if (entry.data.length < 4) measurementError("OVMF image: TDX metadata offset entry is shorter than 4 bytes");
  const fromEnd = entry.data.readUInt32LE(0);
  if (fromEnd > firmware.length || fromEnd < 16) measurementError(`TDVF: metadata offset ${fromEnd} is outside the ${firmware.length}-byte image`);
  const offset = firmware.length - fromEnd;
  const v = new ByteView(firmware, "TDVF metadata");
  if (firmware.toString("latin1", offset, offset + 4) !== "TDVF") measurementError('TDVF: descriptor signature is not "TDVF"');
  const length = v.u32(offset + 4, "Length");
  const version = v.u32(offset + 8, "Version");
  const count = v.u32(offset + 12, "NumberOfSectionEntries");
  if (version !== 1) measurementError(`TDVF: metadata version ${version} is not supported (1)`);
  if (count < 1 || length !== 16 + 32 * count) measurementError(`TDVF: Length ${length} does not match ${count} section entries`);
  if (count > MAX_TDVF_SECTIONS) measurementError(`TDVF: ${count} sections (implausible; limit ${MAX_TDVF_SECTIONS})`);
  v.need(offset, length, "descriptor and section entries");

  const sections: TdvfSection[] = [];
  for (let i = 0; i < count; i++) {
    const at = offset + 16 + 32 * i;
    const dataOffset = v.u32(at, "DataOffset");
    const rawDataSize = v.u32(at + 4, "RawDataSize");
    const memoryAddress = v.u64(at + 8, "MemoryAddress");
    const memoryDataSize = v.u64(at + 16, "MemoryDataSize");
    const type = v.u32(at + 24, "Type");
    const attributes = v.u32(at + 28, "Attributes");
    const typeName = TYPE_NAMES[type];
    const where = `TDVF section ${i}`;
    if (typeName === undefined) measurementError(`${where}: unknown type ${type}`);
    if (memoryDataSize < BigInt(rawDataSize)) measurementError(`${where}: MemoryDataSize ${memoryDataSize} < RawDataSize ${rawDataSize}`);
    if (memoryAddress % BigInt(PAGE_SIZE) !== 0n) measurementError(`${where}: MemoryAddress 0x${memoryAddress.toString(16)} is not page aligned`);
    if (memoryDataSize % BigInt(PAGE_SIZE) !== 0n) measurementError(`${where}: MemoryDataSize 0x${memoryDataSize.toString(16)} is not page aligned`);
    if (memoryAddress + memoryDataSize > 1n << 64n) measurementError(`${where}: memory range overflows 64 bits`);
    if ((type === TdvfSectionType.BFV || type === TdvfSectionType.CFV) && rawDataSize === 0) measurementError(`${where}: ${typeName} has RawDataSize 0`);
    if ((type === TdvfSectionType.TD_HOB || type === TdvfSectionType.TEMP_MEM) && rawDataSize !== 0) measurementError(`${where}: ${typeName} has RawDataSize ${rawDataSize}, expected 0`);
    if (dataOffset + rawDataSize > firmware.length) measurementError(`${where}: raw data (${dataOffset}+${rawDataSize}) lies outside the image`);
    sections.push({
      index: i,
      dataOffset,
      rawDataSize,
      memoryAddress,
      memoryDataSize,
      type,
      typeName,
      attributes,
      mrExtend: (attributes & TDVF_ATTRIBUTE_MR_EXTEND) !== 0,
      pageAug: (attributes & TDVF_ATTRIBUTE_PAGE_AUG) !== 0,
    });
  }
  return { offset, length, version, sections };
}

/**
 * MRTD of a TD booted with this firmware. `pageOrder` is the host stack's choice: "single-pass"
 * for upstream KVM / QEMU >= 9, "two-pass" for the QEMU 8.x TDX patches.
 */
export function computeMrtd(firmware: Buffer, opts: { pageOrder: PageOrder }): Buffer {
  const { pageOrder } = opts;
  if (pageOrder !== "single-pass" && pageOrder !== "two-pass") measurementError(`computeMrtd: pageOrder must be "single-pass" or "two-pass", got ${String(pageOrder)}`);
  const meta = parseTdvf(firmware);

  let addedWithoutContent = 0n;
  let extended = 0n;
  for (const s of meta.sections) {
    if (s.mrExtend) {
      // The extended content comes from the image (QEMU maps BFV/CFV at DataOffset for MemoryDataSize bytes).
      if (BigInt(s.dataOffset) + s.memoryDataSize > BigInt(firmware.length)) {
        measurementError(`TDVF section ${s.index} (${s.typeName}): MR.EXTEND content (${s.dataOffset}+${s.memoryDataSize}) lies outside the image`);
      }
      extended += s.memoryDataSize;
    } else if (!s.pageAug) {
      addedWithoutContent += s.memoryDataSize;
    }
  }
  if (addedWithoutContent > MAX_PAGE_ADD_BYTES) measurementError(`TDVF: sections add ${addedWithoutContent} bytes of pages without content (implausible; limit ${MAX_PAGE_ADD_BYTES})`);
  // Firmware volumes occupy distinct parts of the image: more MR.EXTEND content than the image
  // holds means sections extend the same bytes again and again.
  if (extended > BigInt(firmware.length)) measurementError(`TDVF: sections MR.EXTEND ${extended} bytes in all, more than the ${firmware.length}-byte image holds`);

  const h = createHash("sha384");
  const record = Buffer.alloc(RECORD_SIZE);
  const pageAdd = (gpa: bigint) => {
    record.fill(0);
    record.write("MEM.PAGE.ADD", 0, "latin1");
    record.writeBigUInt64LE(gpa, 16);
    h.update(record);
  };
  const mrExtendPage = (s: TdvfSection, page: number) => {
    for (let c = 0; c < PAGE_SIZE / CHUNK_SIZE; c++) {
      const within = page * PAGE_SIZE + c * CHUNK_SIZE;
      record.fill(0);
      record.write("MR.EXTEND", 0, "latin1");
      record.writeBigUInt64LE(s.memoryAddress + BigInt(within), 16);
      h.update(record);
      h.update(firmware.subarray(s.dataOffset + within, s.dataOffset + within + CHUNK_SIZE));
    }
  };

  for (const s of meta.sections) {
    const addPages = !s.pageAug;
    if (!addPages && !s.mrExtend) continue; // nothing about this section enters MRTD
    const pages = Number(s.memoryDataSize / BigInt(PAGE_SIZE));
    if (pageOrder === "two-pass") {
      if (addPages) for (let p = 0; p < pages; p++) pageAdd(s.memoryAddress + BigInt(p * PAGE_SIZE));
      if (s.mrExtend) for (let p = 0; p < pages; p++) mrExtendPage(s, p);
    } else {
      for (let p = 0; p < pages; p++) {
        if (addPages) pageAdd(s.memoryAddress + BigInt(p * PAGE_SIZE));
        if (s.mrExtend) mrExtendPage(s, p);
      }
    }
  }
  return h.digest();
}

/** The configuration firmware volume (UEFI variable store) as loaded into the TD: the CFV section's raw data. */
export function tdvfCfv(firmware: Buffer): Buffer {
  const cfv = parseTdvf(firmware).sections.filter((s) => s.type === TdvfSectionType.CFV);
  if (cfv.length !== 1) measurementError(`TDVF: expected exactly one CFV section, found ${cfv.length}`);
  const s = cfv[0]!;
  return firmware.subarray(s.dataOffset, s.dataOffset + s.rawDataSize);
}
