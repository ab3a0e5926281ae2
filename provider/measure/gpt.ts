/**
 * GUID Partition Table parsing and the UEFI_GPT_DATA structure that firmware measures as
 * EV_EFI_GPT_EVENT (PCR 5 on a TPM, RTMR1 on TDX) when it boots from a GPT disk.
 *
 * Sources (read, not copied):
 * - UEFI Specification 2.10, section 5.3 "GUID Partition Table (GPT) Disk Layout" (header at
 *   LBA 1, "EFI PART", CRC32 rules, partition entry array).
 * - TCG PC Client Platform Firmware Profile Specification, UEFI_GPT_DATA / EV_EFI_GPT_EVENT.
 * - edk2 SecurityPkg/Library/DxeTpm2MeasureBootLib/DxeTpm2MeasureBootLib.c Tcg2MeasureGptTable():
 *   the event data is the primary header (sizeof EFI_PARTITION_TABLE_HEADER = 92 bytes), a UINT64
 *   count of entries whose PartitionTypeGUID is not zero, then those entries in array order, each
 *   SizeOfPartitionEntry bytes.
 */
import { crc32 as zlibCrc32 } from "node:zlib";
import { ByteView, allBytesAre, guidToString, measurementError } from "./bytes";

export const SECTOR_SIZE = 512;
export const GPT_SIGNATURE = "EFI PART";
/** sizeof(EFI_PARTITION_TABLE_HEADER): what the firmware copies into the event. */
export const GPT_HEADER_SIZE = 92;
const MIN_ENTRY_SIZE = 128;

/**
 * CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), as UEFI uses for GPT; `seed` continues a
 * previous CRC. zlib's (Node ≥ 20.15): the table-driven loop in JavaScript cost ~8 ms of a measure.
 */
export function crc32(data: Uint8Array, seed = 0): number {
  return zlibCrc32(data, seed) >>> 0;
}

export interface GptHeader {
  readonly revision: number;
  readonly headerSize: number;
  readonly headerCrc32: number;
  readonly myLba: bigint;
  readonly alternateLba: bigint;
  readonly firstUsableLba: bigint;
  readonly lastUsableLba: bigint;
  readonly diskGuid: string;
  readonly partitionEntryLba: bigint;
  readonly numberOfPartitionEntries: number;
  readonly sizeOfPartitionEntry: number;
  readonly partitionEntryArrayCrc32: number;
}

export interface GptPartition {
  /** 0-based index in the partition entry array (partition number - 1). */
  readonly index: number;
  readonly typeGuid: string;
  readonly uniqueGuid: string;
  readonly startingLba: bigint;
  readonly endingLba: bigint;
  readonly attributes: bigint;
  readonly name: string;
  /** The whole entry, SizeOfPartitionEntry bytes. */
  readonly raw: Buffer;
}

export interface Gpt {
  readonly header: GptHeader;
  /** The first 92 bytes of LBA 1, as the firmware copies them. */
  readonly headerBytes: Buffer;
  /** Entries whose PartitionTypeGUID is non-zero, in array order. */
  readonly partitions: ReadonlyArray<GptPartition>;
}

/**
 * Parse the primary GPT of a disk image (512-byte sectors). `disk` needs to hold LBA 0 through the
 * end of the partition entry array, not the whole disk (so the backup header is not checked).
 */
export function parseGpt(disk: Buffer): Gpt {
  const v = new ByteView(disk, "GPT");
  const h = SECTOR_SIZE; // LBA 1
  v.need(h, SECTOR_SIZE, "header sector (LBA 1)");
  if (disk.toString("latin1", h, h + 8) !== GPT_SIGNATURE) measurementError('GPT: no "EFI PART" signature at LBA 1');
  const revision = v.u32(h + 8, "Revision");
  const headerSize = v.u32(h + 12, "HeaderSize");
  if (headerSize < GPT_HEADER_SIZE || headerSize > SECTOR_SIZE) measurementError(`GPT: HeaderSize ${headerSize} is outside [${GPT_HEADER_SIZE}, ${SECTOR_SIZE}]`);
  const headerCrc32 = v.u32(h + 16, "HeaderCRC32");
  const forCrc = Buffer.from(disk.subarray(h, h + headerSize));
  forCrc.writeUInt32LE(0, 16);
  const computed = crc32(forCrc);
  if (computed !== headerCrc32) measurementError(`GPT: header CRC32 mismatch (stored 0x${hex32(headerCrc32)}, computed 0x${hex32(computed)})`);

  const header: GptHeader = {
    revision,
    headerSize,
    headerCrc32,
    myLba: v.u64(h + 24, "MyLBA"),
    alternateLba: v.u64(h + 32, "AlternateLBA"),
    firstUsableLba: v.u64(h + 40, "FirstUsableLBA"),
    lastUsableLba: v.u64(h + 48, "LastUsableLBA"),
    diskGuid: guidToString(v.bytes(h + 56, 16, "DiskGUID")),
    partitionEntryLba: v.u64(h + 72, "PartitionEntryLBA"),
    numberOfPartitionEntries: v.u32(h + 80, "NumberOfPartitionEntries"),
    sizeOfPartitionEntry: v.u32(h + 84, "SizeOfPartitionEntry"),
    partitionEntryArrayCrc32: v.u32(h + 88, "PartitionEntryArrayCRC32"),
  };
  if (header.myLba !== 1n) measurementError(`GPT: primary header MyLBA is ${header.myLba}, expected 1`);
  if (header.partitionEntryLba < 2n) measurementError(`GPT: PartitionEntryLBA ${header.partitionEntryLba} overlaps the header`);
  if (header.firstUsableLba > header.lastUsableLba + 1n) measurementError("GPT: FirstUsableLBA is after LastUsableLBA");
  const size = header.sizeOfPartitionEntry;
  // UEFI: SizeOfPartitionEntry = 128 * 2^n.
  if (size < MIN_ENTRY_SIZE || (size & (size - 1)) !== 0) measurementError(`GPT: SizeOfPartitionEntry ${size} is not 128 * 2^n`);
  if (header.numberOfPartitionEntries === 0) measurementError("GPT: NumberOfPartitionEntries is 0");

  const arrayStart = Number(header.partitionEntryLba) * SECTOR_SIZE;
  const arraySize = header.numberOfPartitionEntries * size;
  if (header.partitionEntryLba > BigInt(Math.floor(disk.length / SECTOR_SIZE))) measurementError("GPT: partition entry array starts beyond the image");
  const array = v.bytes(arrayStart, arraySize, "partition entry array");
  const arrayCrc = crc32(array);
  if (arrayCrc !== header.partitionEntryArrayCrc32) {
    measurementError(`GPT: partition entry array CRC32 mismatch (stored 0x${hex32(header.partitionEntryArrayCrc32)}, computed 0x${hex32(arrayCrc)})`);
  }

  const partitions: GptPartition[] = [];
  for (let i = 0; i < header.numberOfPartitionEntries; i++) {
    const raw = array.subarray(i * size, (i + 1) * size);
    if (allBytesAre(raw.subarray(0, 16), 0, 0)) continue;
    const nameBytes = raw.subarray(56, 128);
    let end = 0;
    while (end + 1 < nameBytes.length && (nameBytes[end] !== 0 || nameBytes[end + 1] !== 0)) end += 2;
    partitions.push({
      index: i,
      typeGuid: guidToString(raw.subarray(0, 16)),
      uniqueGuid: guidToString(raw.subarray(16, 32)),
      startingLba: raw.readBigUInt64LE(32),
      endingLba: raw.readBigUInt64LE(40),
      attributes: raw.readBigUInt64LE(48),
      name: nameBytes.subarray(0, end).toString("utf16le"),
      raw,
    });
  }
  return { header, headerBytes: disk.subarray(h, h + GPT_HEADER_SIZE), partitions };
}

/** UEFI_GPT_DATA for a disk: header (92 bytes), UINT64 NumberOfPartitions, then the non-empty entries in order. */
export function uefiGptEventData(disk: Buffer): Buffer {
  return encodeGptEventData(parseGpt(disk));
}

export function encodeGptEventData(gpt: Gpt): Buffer {
  const count = Buffer.alloc(8);
  count.writeBigUInt64LE(BigInt(gpt.partitions.length));
  return Buffer.concat([gpt.headerBytes, count, ...gpt.partitions.map((p) => p.raw)]);
}

/** Split logged UEFI_GPT_DATA (an EV_EFI_GPT_EVENT's data) back into header bytes and entries. */
export function parseGptEventData(data: Buffer): { headerBytes: Buffer; header: Pick<GptHeader, "sizeOfPartitionEntry" | "numberOfPartitionEntries" | "partitionEntryLba">; entries: Buffer[] } {
  const v = new ByteView(data, "UEFI_GPT_DATA");
  v.need(0, GPT_HEADER_SIZE + 8, "header and NumberOfPartitions");
  if (data.toString("latin1", 0, 8) !== GPT_SIGNATURE) measurementError('UEFI_GPT_DATA: no "EFI PART" signature');
  const sizeOfPartitionEntry = v.u32(84, "SizeOfPartitionEntry");
  if (sizeOfPartitionEntry < MIN_ENTRY_SIZE) measurementError(`UEFI_GPT_DATA: SizeOfPartitionEntry ${sizeOfPartitionEntry} < ${MIN_ENTRY_SIZE}`);
  const n = v.u64(GPT_HEADER_SIZE, "NumberOfPartitions");
  const body = data.length - GPT_HEADER_SIZE - 8;
  if (n * BigInt(sizeOfPartitionEntry) !== BigInt(body)) measurementError(`UEFI_GPT_DATA: ${n} entries of ${sizeOfPartitionEntry} bytes do not match the ${body} bytes present`);
  const entries: Buffer[] = [];
  for (let off = GPT_HEADER_SIZE + 8; off < data.length; off += sizeOfPartitionEntry) entries.push(data.subarray(off, off + sizeOfPartitionEntry));
  return {
    headerBytes: data.subarray(0, GPT_HEADER_SIZE),
    header: { sizeOfPartitionEntry, numberOfPartitionEntries: v.u32(80, "NumberOfPartitionEntries"), partitionEntryLba: v.u64(72, "PartitionEntryLBA") },
    entries,
  };
}

function hex32(n: number): string {
  return n.toString(16).padStart(8, "0");
}
