/**
 * PE/COFF parsing and the Authenticode image digest that UEFI firmware extends for every
 * EFI application it starts (EV_EFI_BOOT_SERVICES_APPLICATION, PCR 4 / RTMR1).
 *
 * Sources (read, not copied):
 * - Microsoft PE format: https://learn.microsoft.com/windows/win32/debug/pe-format
 * - Microsoft "Windows Authenticode Portable Executable Signature Format", section
 *   "Calculating the PE Image Hash".
 * - edk2 SecurityPkg/Library/DxeTpm2MeasureBootLib/DxeTpm2MeasureBootLib.c (Tcg2MeasurePeImage)
 *   and SecurityPkg/Tcg/Tcg2Dxe/MeasureBootPeCoff.c (MeasurePeImageAndExtend), steps 1-17.
 */
import { createHash } from "node:crypto";
import { ByteView, HashAlg, measurementError } from "./bytes";

export const PE32_MAGIC = 0x10b;
export const PE32_PLUS_MAGIC = 0x20b;
/** Index of the Certificate Table ("Security") entry in the data directories. */
export const SECURITY_DIRECTORY_INDEX = 4;

const COFF_HEADER_SIZE = 20;
const SECTION_HEADER_SIZE = 40;
const DATA_DIRECTORY_ENTRY_SIZE = 8;
/**
 * Most sections a PE image may have: the Microsoft PE format's section table notes that the
 * Windows loader limits the number of sections to 96, and systemd-boot/stub (src/boot/pe.c
 * MAX_SECTIONS) refuse images with more. It bounds the per-section work of every parser here.
 */
export const MAX_PE_SECTIONS = 96;

export interface DataDirectory {
  readonly virtualAddress: number;
  readonly size: number;
}

export interface PeSection {
  /** Name without NUL padding (the 8 raw bytes up to the first NUL, latin1). */
  readonly name: string;
  readonly virtualSize: number;
  readonly virtualAddress: number;
  readonly sizeOfRawData: number;
  readonly pointerToRawData: number;
  readonly characteristics: number;
}

export interface PeImage {
  /** e_lfanew: file offset of the "PE\0\0" signature. */
  readonly peOffset: number;
  readonly machine: number;
  readonly timeDateStamp: number;
  readonly characteristics: number;
  readonly format: "PE32" | "PE32+";
  readonly optionalHeaderOffset: number;
  readonly sizeOfOptionalHeader: number;
  readonly addressOfEntryPoint: number;
  readonly sizeOfImage: number;
  readonly sizeOfHeaders: number;
  readonly subsystem: number;
  /** File offset of the 4-byte CheckSum field (skipped by Authenticode). */
  readonly checkSumOffset: number;
  readonly checkSum: number;
  readonly numberOfRvaAndSizes: number;
  /** File offset of data directory 0. */
  readonly dataDirectoryOffset: number;
  readonly dataDirectories: ReadonlyArray<DataDirectory>;
  readonly sectionTableOffset: number;
  readonly sections: ReadonlyArray<PeSection>;
}

/** Parse the DOS header, PE signature, COFF header, optional header (PE32/PE32+), data directories and section table. */
export function parsePe(buf: Buffer): PeImage {
  const v = new ByteView(buf, "PE image");
  if (v.length < 64 || buf[0] !== 0x4d || buf[1] !== 0x5a) measurementError("PE image: missing DOS header signature 'MZ'");
  const peOffset = v.u32(0x3c, "e_lfanew");
  if (peOffset < 64) measurementError(`PE image: e_lfanew ${peOffset} points into the DOS header`);
  v.need(peOffset, 4 + COFF_HEADER_SIZE, "PE signature and COFF header");
  if (buf.readUInt32LE(peOffset) !== 0x00004550) measurementError("PE image: missing 'PE\\0\\0' signature");

  const coff = peOffset + 4;
  const machine = v.u16(coff, "Machine");
  const numberOfSections = v.u16(coff + 2, "NumberOfSections");
  const timeDateStamp = v.u32(coff + 4, "TimeDateStamp");
  const sizeOfOptionalHeader = v.u16(coff + 16, "SizeOfOptionalHeader");
  const characteristics = v.u16(coff + 18, "Characteristics");

  const opt = coff + COFF_HEADER_SIZE;
  v.need(opt, sizeOfOptionalHeader, "optional header");
  if (sizeOfOptionalHeader < 2) measurementError("PE image: optional header is missing (not an image file)");
  const magic = v.u16(opt, "optional header Magic");
  if (magic !== PE32_MAGIC && magic !== PE32_PLUS_MAGIC) measurementError(`PE image: unknown optional header magic 0x${magic.toString(16)}`);
  const plus = magic === PE32_PLUS_MAGIC;
  // Fixed part of the optional header, before the data directories: 96 bytes (PE32) / 112 (PE32+).
  const fixed = plus ? 112 : 96;
  if (sizeOfOptionalHeader < fixed) measurementError(`PE image: optional header (${sizeOfOptionalHeader} bytes) is shorter than its fixed part (${fixed})`);
  const numberOfRvaAndSizes = v.u32(opt + fixed - 4, "NumberOfRvaAndSizes");
  if (fixed + numberOfRvaAndSizes * DATA_DIRECTORY_ENTRY_SIZE > sizeOfOptionalHeader) {
    measurementError(`PE image: ${numberOfRvaAndSizes} data directories do not fit the ${sizeOfOptionalHeader}-byte optional header`);
  }
  const dataDirectoryOffset = opt + fixed;
  const dataDirectories: DataDirectory[] = [];
  for (let i = 0; i < numberOfRvaAndSizes; i++) {
    const at = dataDirectoryOffset + i * DATA_DIRECTORY_ENTRY_SIZE;
    dataDirectories.push({ virtualAddress: v.u32(at, `data directory ${i}`), size: v.u32(at + 4, `data directory ${i}`) });
  }

  if (numberOfSections > MAX_PE_SECTIONS) measurementError(`PE image: ${numberOfSections} sections (a PE loader accepts at most ${MAX_PE_SECTIONS})`);
  const sectionTableOffset = opt + sizeOfOptionalHeader;
  v.need(sectionTableOffset, numberOfSections * SECTION_HEADER_SIZE, "section table");
  const sections: PeSection[] = [];
  for (let i = 0; i < numberOfSections; i++) {
    const at = sectionTableOffset + i * SECTION_HEADER_SIZE;
    const rawName = buf.subarray(at, at + 8);
    const nul = rawName.indexOf(0);
    sections.push({
      name: rawName.subarray(0, nul === -1 ? 8 : nul).toString("latin1"),
      virtualSize: buf.readUInt32LE(at + 8),
      virtualAddress: buf.readUInt32LE(at + 12),
      sizeOfRawData: buf.readUInt32LE(at + 16),
      pointerToRawData: buf.readUInt32LE(at + 20),
      characteristics: buf.readUInt32LE(at + 36),
    });
  }

  return {
    peOffset,
    machine,
    timeDateStamp,
    characteristics,
    format: plus ? "PE32+" : "PE32",
    optionalHeaderOffset: opt,
    sizeOfOptionalHeader,
    addressOfEntryPoint: v.u32(opt + 16, "AddressOfEntryPoint"),
    sizeOfImage: v.u32(opt + 56, "SizeOfImage"),
    sizeOfHeaders: v.u32(opt + 60, "SizeOfHeaders"),
    checkSumOffset: opt + 64,
    checkSum: v.u32(opt + 64, "CheckSum"),
    subsystem: v.u16(opt + 68, "Subsystem"),
    numberOfRvaAndSizes,
    dataDirectoryOffset,
    dataDirectories,
    sectionTableOffset,
    sections,
  };
}

/**
 * The Authenticode PE image hash exactly as edk2 measures it (MeasurePeImageAndExtend):
 *  1. hash from the start of the file up to the CheckSum field; skip CheckSum (4 bytes);
 *  2. if there is a Security data directory (NumberOfRvaAndSizes > 4): hash up to that entry,
 *     skip the 8-byte entry, hash the rest up to SizeOfHeaders; otherwise hash up to SizeOfHeaders;
 *  3. hash each section's raw data (SizeOfRawData bytes at PointerToRawData), sections sorted by
 *     PointerToRawData (stable), sections with SizeOfRawData == 0 skipped;
 *  4. SUM = SizeOfHeaders + sum of hashed SizeOfRawData. If the file is longer than SUM, hash the
 *     bytes from *file offset SUM* to (file size - certificate table size).
 *
 * Step 4 follows edk2 to the letter: it uses the byte count as the start offset of the trailing
 * data. That equals "the data after the last section" whenever sections are laid out back to back
 * from SizeOfHeaders (every normal linker/objcopy/ukify output); where they are not (gaps before or
 * between sections) firmware — and pesign, go-uefi — hash what this function hashes, while a
 * linear hasher like osslsigncode differs. Measurements follow the firmware.
 */
/**
 * The byte ranges [start, end) of a PE file that the Authenticode digest covers, in hashing order.
 * `buf` holds the file, or at least its headers and section table when `fileSize` gives the length
 * of the whole file (for callers that stream the rest).
 */
export function authenticodeRanges(buf: Buffer, fileSize = buf.length): Array<[number, number]> {
  const pe = parsePe(buf);
  const ranges: Array<[number, number]> = [];
  const soh = pe.sizeOfHeaders;
  if (soh > fileSize) measurementError(`PE image: SizeOfHeaders ${soh} exceeds the ${fileSize}-byte file`);
  const afterCheckSum = pe.checkSumOffset + 4;

  ranges.push([0, pe.checkSumOffset]);
  const hasSecurityDir = pe.numberOfRvaAndSizes > SECURITY_DIRECTORY_INDEX;
  if (hasSecurityDir) {
    const secEntry = pe.dataDirectoryOffset + SECURITY_DIRECTORY_INDEX * DATA_DIRECTORY_ENTRY_SIZE;
    if (soh < secEntry + DATA_DIRECTORY_ENTRY_SIZE) measurementError(`PE image: SizeOfHeaders ${soh} ends inside the data directories`);
    ranges.push([afterCheckSum, secEntry], [secEntry + DATA_DIRECTORY_ENTRY_SIZE, soh]);
  } else {
    if (soh < afterCheckSum) measurementError(`PE image: SizeOfHeaders ${soh} ends inside the optional header`);
    ranges.push([afterCheckSum, soh]);
  }

  // Stable sort by file offset, as edk2's insertion sort is.
  const sorted = pe.sections.map((s, i) => ({ s, i })).sort((a, b) => a.s.pointerToRawData - b.s.pointerToRawData || a.i - b.i);
  let sumOfBytesHashed = soh;
  for (const { s } of sorted) {
    if (s.sizeOfRawData === 0) continue;
    if (s.pointerToRawData + s.sizeOfRawData > fileSize) {
      measurementError(`PE image: section ${JSON.stringify(s.name)} raw data (${s.pointerToRawData}+${s.sizeOfRawData}) lies outside the ${fileSize}-byte file`);
    }
    ranges.push([s.pointerToRawData, s.pointerToRawData + s.sizeOfRawData]);
    sumOfBytesHashed += s.sizeOfRawData;
  }
  // Sections of a real image do not share file bytes, so headers plus section data fit in the
  // file; overlapping ones could make us hash (and, in the async path, copy) the file up to 96 times.
  if (sumOfBytesHashed > fileSize) measurementError(`PE image: section raw data overlap (${sumOfBytesHashed} bytes to hash from a ${fileSize}-byte file)`);

  if (fileSize > sumOfBytesHashed) {
    const certSize = hasSecurityDir ? pe.dataDirectories[SECURITY_DIRECTORY_INDEX]!.size : 0;
    if (fileSize > sumOfBytesHashed + certSize) ranges.push([sumOfBytesHashed, fileSize - certSize]);
    else if (fileSize < sumOfBytesHashed + certSize) {
      measurementError(`PE image: certificate table (${certSize} bytes) overlaps the hashed image data`);
    }
  }
  return ranges;
}

export function authenticodeDigest(buf: Buffer, alg: HashAlg): Buffer {
  const h = createHash(alg);
  for (const [a, b] of authenticodeRanges(buf)) h.update(buf.subarray(a, b));
  return h.digest();
}

const SUBTLE_NAME: Partial<Record<HashAlg, string>> = { sha1: "SHA-1", sha256: "SHA-256", sha384: "SHA-384", sha512: "SHA-512" };

/**
 * The same digest, computed on libuv's thread pool (WebCrypto) so that it runs in parallel with
 * other hashing on the main thread. Costs one copy of the covered bytes.
 */
export async function authenticodeDigestAsync(buf: Buffer, alg: HashAlg): Promise<Buffer> {
  const ranges = authenticodeRanges(buf);
  const joined = Buffer.concat(ranges.map(([a, b]) => buf.subarray(a, b)));
  return Buffer.from(await globalThis.crypto.subtle.digest(SUBTLE_NAME[alg]!, joined));
}
