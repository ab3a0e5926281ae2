/**
 * Per-target artifacts from the raw GPT disk mkosi produced.
 *
 * - azure: fixed VHD — the raw disk grown to a whole MiB, then the 512-byte footer of the
 *   Microsoft "Virtual Hard Disk Image Format Specification" (v1.0, 2006): big-endian fields,
 *   cookie "conectix", disk type 2 (fixed), CHS geometry by the spec's algorithm (Appendix),
 *   checksum = one's complement of the byte sum of the footer without the checksum field.
 * - gcp: tar.gz holding `disk.raw` grown to a whole GiB, GNU "oldgnu" format, sparse
 *   (GCE's documented import format: `tar --format=oldgnu -Sczf`).
 * - qemu: the raw disk itself, and qcow2 when qemu-img is available.
 *
 * Growing a GPT disk moves its backup header to the new last sector (UEFI spec §5.3: the
 * backup GPT header is at the last LBA), so the result is a valid GPT, not a truncated one.
 */
import { promises as fs, constants as fsc } from "node:fs";
import * as path from "node:path";
import { PassThrough } from "node:stream";
import { crc32 } from "node:zlib";
import * as zlib from "node:zlib";
import { TdxError } from "../errors";
import { runStreaming } from "./sandbox";

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
const SECTOR = 512;

const roundUp = (n: number, m: number) => Math.ceil(n / m) * m;

function gptError(msg: string): TdxError {
  return new TdxError("E_BAKE", `disk image has no valid GPT: ${msg}`, { hint: "The raw disk mkosi produced is damaged; bake again with a clean output directory.", details: { phase: "convert" } });
}

/**
 * Copy a disk image keeping its holes (a reflink where the filesystem supports it): coreutils'
 * `cp --sparse=always` reads the data extents and leaves the zeros unwritten — the raw disks
 * mkosi makes are about half holes. Falls back to a plain copy where `cp` is not GNU cp.
 */
export async function copyFast(src: string, dst: string): Promise<void> {
  const r = await runStreaming(["cp", "--sparse=always", "--reflink=auto", src, dst]).catch(() => undefined);
  if (r?.code === 0) return;
  await fs.rm(dst, { force: true });
  await fs.copyFile(src, dst, fsc.COPYFILE_FICLONE);
}

/**
 * gzip on every core, as one standard gzip member (RFC 1952): the input is cut into chunks that
 * zlib deflates concurrently on libuv's thread pool, each primed with the previous chunk's last
 * 32 KiB as its dictionary and ended with a sync flush (the last with a final block), so the raw
 * deflate streams concatenate into one valid stream — the technique pigz uses. The output is a
 * function of the input, the level and the chunk size only (not of timing or core count).
 */
export async function gzipParallel(input: AsyncIterable<Buffer>, out: string, opts: { level?: number; chunk?: number; inFlight?: number } = {}): Promise<{ bytesIn: number; bytesOut: number }> {
  const level = opts.level ?? 6;
  const chunkSize = opts.chunk ?? 1024 * 1024;
  const inFlight = opts.inFlight ?? 8;
  const deflate = (data: Buffer, dictionary: Buffer | undefined, last: boolean) =>
    new Promise<Buffer>((resolve, reject) => zlib.deflateRaw(data, { level, ...(dictionary ? { dictionary } : {}), finishFlush: last ? zlib.constants.Z_FINISH : zlib.constants.Z_SYNC_FLUSH }, (e, r) => (e ? reject(e) : resolve(r))));
  const fh = await fs.open(out, "w");
  let crc = 0;
  let bytesIn = 0;
  let bytesOut = 10;
  const pending: Array<Promise<Buffer>> = [];
  let prevTail: Buffer | undefined;
  let buf: Buffer = Buffer.alloc(0);
  const submit = async (data: Buffer, last: boolean) => {
    crc = zlib.crc32(data, crc);
    bytesIn += data.length;
    pending.push(deflate(data, prevTail, last));
    prevTail = data.length >= 32768 ? data.subarray(data.length - 32768) : Buffer.concat([prevTail ?? Buffer.alloc(0), data]).subarray(-32768);
    while (pending.length >= inFlight) {
      const b = await pending.shift()!;
      await fh.write(b);
      bytesOut += b.length;
    }
  };
  try {
    await fh.write(Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3])); // no name, mtime 0, OS unix
    for await (const c of input) {
      buf = buf.length ? Buffer.concat([buf, c]) : c;
      while (buf.length > chunkSize) {
        await submit(Buffer.from(buf.subarray(0, chunkSize)), false);
        buf = buf.subarray(chunkSize);
      }
    }
    await submit(Buffer.from(buf), true);
    for (const p of pending.splice(0)) {
      const b = await p;
      await fh.write(b);
      bytesOut += b.length;
    }
    const trailer = Buffer.alloc(8);
    trailer.writeUInt32LE(crc >>> 0, 0);
    trailer.writeUInt32LE(bytesIn % 2 ** 32, 4);
    await fh.write(trailer);
    bytesOut += 8;
  } finally {
    await fh.close();
  }
  return { bytesIn, bytesOut };
}

/**
 * The primary GPT header (LBA 1) of the disk grown to `newSize` bytes: AlternateLBA = the new last
 * LBA, LastUsableLBA before the backup entry array, header CRC recomputed (UEFI 2.10 §5.3.2).
 * Firmware measures this header in the GPT event, so a grown disk has its own PCR 5 / RTMR1.
 */
export function grownPrimaryHeader(hdr: Buffer, newSize: number): Buffer {
  const hdrSize = hdr.readUInt32LE(12);
  if (hdr.toString("latin1", 0, 8) !== "EFI PART" || hdrSize < 92 || hdrSize > SECTOR) throw gptError("not a GPT header");
  const entriesBytes = roundUp(hdr.readUInt32LE(80) * hdr.readUInt32LE(84), SECTOR);
  const lastLba = newSize / SECTOR - 1;
  const primary = Buffer.from(hdr.subarray(0, SECTOR));
  primary.writeBigUInt64LE(BigInt(lastLba), 32);
  primary.writeBigUInt64LE(BigInt(lastLba - entriesBytes / SECTOR - 1), 48);
  primary.writeUInt32LE(0, 16);
  primary.writeUInt32LE(crc32(primary.subarray(0, hdrSize)) >>> 0, 16);
  return primary;
}

/**
 * The size a baked disk is grown to: a whole GiB, which GCE requires (docs/design.md §6) and which
 * is also a whole MiB, as Azure requires. Every target then boots the same disk — the same GPT,
 * whose header the firmware measures (PCR 5 / RTMR1) — and no target needs its own copy to grow.
 */
export const diskSize = (rawSize: number) => roundUp(rawSize, GiB);

/**
 * Grow a raw GPT disk at `file` to `newSize` bytes (a multiple of 512) and rewrite the
 * backup GPT at the new end; updates the protective MBR and both headers' CRCs.
 */
export async function growGptDisk(file: string, newSize: number): Promise<void> {
  const fh = await fs.open(file, "r+");
  try {
    const { size } = await fh.stat();
    if (newSize % SECTOR !== 0 || newSize < size) throw new TdxError("E_BAKE", `cannot grow ${file} from ${size} to ${newSize} bytes`, { details: { phase: "convert" } });
    const hdr = Buffer.alloc(SECTOR);
    await fh.read(hdr, 0, SECTOR, SECTOR);
    if (hdr.toString("latin1", 0, 8) !== "EFI PART") throw gptError("no 'EFI PART' signature at LBA 1");
    const hdrSize = hdr.readUInt32LE(12);
    if (hdrSize < 92 || hdrSize > SECTOR) throw gptError(`header size ${hdrSize}`);
    const entriesLba = Number(hdr.readBigUInt64LE(72));
    const numEntries = hdr.readUInt32LE(80);
    const entrySize = hdr.readUInt32LE(84);
    if (entrySize < 128 || numEntries * entrySize > 64 * MiB) throw gptError("implausible partition entry array");
    const entriesBytes = roundUp(numEntries * entrySize, SECTOR);
    const entries = Buffer.alloc(entriesBytes);
    await fh.read(entries, 0, entriesBytes, entriesLba * SECTOR);
    if ((crc32(entries.subarray(0, numEntries * entrySize)) >>> 0) !== hdr.readUInt32LE(88)) throw gptError("partition entry array CRC mismatch");
    const oldLast = Number(hdr.readBigUInt64LE(32));
    if (newSize === size) return;

    await fh.truncate(newSize);
    const lastLba = newSize / SECTOR - 1;
    const entrySectors = entriesBytes / SECTOR;
    const seal = (h: Buffer) => {
      h.writeUInt32LE(0, 16);
      h.writeUInt32LE(crc32(h.subarray(0, hdrSize)) >>> 0, 16);
    };
    const primary = grownPrimaryHeader(hdr, newSize);
    const backup = Buffer.from(primary);
    backup.writeBigUInt64LE(BigInt(lastLba), 24);
    backup.writeBigUInt64LE(1n, 32);
    backup.writeBigUInt64LE(BigInt(lastLba - entrySectors), 72);
    seal(backup);
    // Clear the old backup header and entries, then write the new ones at the end.
    if (oldLast > 1 && oldLast < lastLba) {
      await fh.write(Buffer.alloc(SECTOR), 0, SECTOR, oldLast * SECTOR);
      await fh.write(Buffer.alloc(entriesBytes), 0, entriesBytes, (oldLast - entrySectors) * SECTOR);
    }
    await fh.write(primary, 0, SECTOR, SECTOR);
    await fh.write(entries, 0, entriesBytes, (lastLba - entrySectors) * SECTOR);
    await fh.write(backup, 0, SECTOR, lastLba * SECTOR);
    // Protective MBR: partition 1 spans the whole disk (size capped at 2^32-1 sectors).
    const mbr = Buffer.alloc(SECTOR);
    await fh.read(mbr, 0, SECTOR, 0);
    if (mbr.readUInt16LE(510) === 0xaa55 && mbr[446 + 4] === 0xee) {
      mbr.writeUInt32LE(Math.min(lastLba, 0xffffffff), 446 + 12);
      await fh.write(mbr, 0, SECTOR, 0);
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** CHS geometry per the VHD specification's algorithm. */
export function vhdGeometry(size: number): { cylinders: number; heads: number; sectorsPerTrack: number } {
  let total = Math.floor(size / SECTOR);
  if (total > 65535 * 16 * 255) total = 65535 * 16 * 255;
  let spt: number;
  let heads: number;
  let cth: number;
  if (total >= 65535 * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = Math.floor(total / spt);
  } else {
    spt = 17;
    cth = Math.floor(total / spt);
    heads = Math.max(4, Math.floor((cth + 1023) / 1024));
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = Math.floor(total / spt);
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = Math.floor(total / spt);
    }
  }
  return { cylinders: Math.floor(cth / heads), heads, sectorsPerTrack: spt };
}

export function vhdFooter(size: number, uniqueId: Buffer): Buffer {
  const f = Buffer.alloc(512);
  f.write("conectix", 0, "latin1");
  f.writeUInt32BE(2, 8); // features: reserved bit always set
  f.writeUInt32BE(0x00010000, 12); // file format version 1.0
  f.writeBigUInt64BE(0xffffffffffffffffn, 16); // data offset: none for fixed disks
  f.writeUInt32BE(0, 24); // timestamp: 0 (2000-01-01) for reproducible output
  f.write("tdxv", 28, "latin1"); // creator application
  f.writeUInt32BE(0x00010000, 32); // creator version
  f.write("Wi2k", 36, "latin1"); // creator host OS
  f.writeBigUInt64BE(BigInt(size), 40); // original size
  f.writeBigUInt64BE(BigInt(size), 48); // current size
  const g = vhdGeometry(size);
  f.writeUInt16BE(g.cylinders, 56);
  f.writeUInt8(g.heads, 58);
  f.writeUInt8(g.sectorsPerTrack, 59);
  f.writeUInt32BE(2, 60); // disk type: fixed
  uniqueId.copy(f, 68, 0, 16);
  f.writeUInt8(0, 84); // saved state
  f.writeUInt32BE(vhdChecksum(f), 64);
  return f;
}

export function vhdChecksum(footer: Buffer): number {
  let sum = 0;
  for (let i = 0; i < 512; i++) if (i < 64 || i >= 68) sum += footer[i];
  return ~sum >>> 0;
}

export interface VhdFooterFields { cookie: string; diskType: number; currentSize: number; originalSize: number; checksum: number; checksumOk: boolean; geometry: { cylinders: number; heads: number; sectorsPerTrack: number } }

export function parseVhdFooter(f: Buffer): VhdFooterFields {
  if (f.length !== 512) throw new TdxError("E_VALIDATION", "a VHD footer is 512 bytes");
  return {
    cookie: f.toString("latin1", 0, 8),
    diskType: f.readUInt32BE(60),
    currentSize: Number(f.readBigUInt64BE(48)),
    originalSize: Number(f.readBigUInt64BE(40)),
    checksum: f.readUInt32BE(64),
    checksumOk: f.readUInt32BE(64) === vhdChecksum(f),
    geometry: { cylinders: f.readUInt16BE(56), heads: f[58], sectorsPerTrack: f[59] },
  };
}

/** raw → fixed VHD (Azure): the disk (grown to a whole MiB if it is not yet) plus the footer. */
export async function rawToVhd(raw: string, out: string, uniqueId: Buffer): Promise<void> {
  const tmp = `${out}.tmp`;
  try {
    await copyFast(raw, tmp);
    const { size } = await fs.stat(tmp);
    const virtual = roundUp(size, MiB);
    if (virtual !== size) await growGptDisk(tmp, virtual);
    await fs.appendFile(tmp, vhdFooter(virtual, uniqueId));
    await fs.rename(tmp, out);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
}

/**
 * raw → GCE image tar.gz: one member `disk.raw` (oldgnu, sparse, deterministic headers), read
 * straight from the baked disk, which must already be a whole number of GiB (see diskSize).
 */
export async function rawToGceTarball(raw: string, out: string, tar = "tar"): Promise<void> {
  const tmp = `${out}.tmp`;
  try {
    const { size } = await fs.stat(raw);
    if (size % GiB !== 0) throw new TdxError("E_BAKE", `a GCE image disk must be a whole number of GiB; ${raw} is ${size} bytes`, { hint: "Grow the disk first (growGptDisk(raw, diskSize(size))).", details: { phase: "convert" } });
    // GNU tar writes the sparse oldgnu archive (the member renamed to disk.raw); it is compressed here, on both cores.
    const { execa } = require("execa") as typeof import("execa");
    const child = execa(tar, ["--format=oldgnu", "-S", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "--mode=0644", `--transform=s|^${path.basename(raw).replace(/[|\\]/g, "")}$|disk.raw|`, "-cf", "-", "-C", path.dirname(raw), path.basename(raw)], {
      stdin: "ignore", buffer: { stdout: false, stderr: true }, maxBuffer: { stderr: 64 * 1024 }, reject: false,
    });
    try {
      // Level 1: disk images are mostly compressed data already (measured: level 6 is 2 % smaller and 30 % slower).
      // Piped at once: Node drops a child's unread stdout when the child exits (a small archive
      // can be complete before the output file is open), a listener attached now keeps it.
      await gzipParallel(child.stdout.pipe(new PassThrough({ highWaterMark: 1024 * 1024 })), tmp, { level: 1 });
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
    }
    const r = await child;
    if (r.exitCode !== 0) throw new TdxError("E_BAKE", `tar failed (${r.exitCode !== undefined ? `exit ${r.exitCode}` : r.signal ?? `${r.code ?? "not started"}: ${tar}`}): ${String(r.stderr ?? "").trim().split("\n").slice(-5).join("\n")}`, { hint: "GNU tar is needed on the build host (apt-get install tar).", details: { phase: "convert" } });
    await fs.rename(tmp, out);
  } finally {
    await fs.rm(tmp, { force: true });
  }
}

/** raw → qcow2 with the given qemu-img argv prefix (host binary or sandboxed tools tree). */
export async function rawToQcow2(qemuImg: (args: string[]) => string[], raw: string, out: string): Promise<void> {
  const tmp = `${out}.tmp`;
  try {
    const r = await runStreaming(qemuImg(["convert", "-f", "raw", "-O", "qcow2", raw, tmp]));
    if (r.code !== 0) throw new TdxError("E_BAKE", `qemu-img convert failed: ${r.tail.slice(-5).join("\n")}`, { details: { phase: "convert" } });
    await fs.rename(tmp, out);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
}
