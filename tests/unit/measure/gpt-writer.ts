/** An independent GPT writer for tests (zlib CRC; no shared code with provider/measure/gpt.ts). */
import * as zlib from "node:zlib";
import { guidToBytes } from "../../../provider/measure";

/** An independent GPT writer (zlib CRC) for hosts without sfdisk. */
export function writeGpt(parts: Array<{ slot: number; type: string; uuid: string; start: number; end: number; name: string }>, opts: { size?: number } = {}): Buffer {
  const disk = Buffer.alloc(opts.size ?? 34 * 512);
  const entries = Buffer.alloc(128 * 128);
  for (const p of parts) {
    const e = entries.subarray(p.slot * 128, (p.slot + 1) * 128);
    guidToBytes(p.type).copy(e, 0);
    guidToBytes(p.uuid).copy(e, 16);
    e.writeBigUInt64LE(BigInt(p.start), 32);
    e.writeBigUInt64LE(BigInt(p.end), 40);
    e.write(p.name, 56, "utf16le");
  }
  entries.copy(disk, 1024);
  const h = disk.subarray(512, 604);
  h.write("EFI PART", 0, "latin1");
  h.writeUInt32LE(0x00010000, 8);
  h.writeUInt32LE(92, 12);
  h.writeBigUInt64LE(1n, 24);
  h.writeBigUInt64LE(100000n, 32);
  h.writeBigUInt64LE(34n, 40);
  h.writeBigUInt64LE(99966n, 48);
  guidToBytes("01234567-89ab-cdef-0123-456789abcdef").copy(h, 56);
  h.writeBigUInt64LE(2n, 72);
  h.writeUInt32LE(128, 80);
  h.writeUInt32LE(128, 84);
  h.writeUInt32LE(zlib.crc32(entries), 88);
  h.writeUInt32LE(zlib.crc32(h), 16);
  return disk;
}
