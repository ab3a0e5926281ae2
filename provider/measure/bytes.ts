/**
 * Shared helpers for the measurement parsers: bounds-checked little-endian reads that fail with
 * `E_MEASUREMENT` (never a RangeError), digests, and the register-extend step.
 *
 * Every parser in this folder is pure: it takes Buffers and returns values, no IO.
 */
import { createHash } from "node:crypto";
import { TdxError } from "../errors";

export type HashAlg = "sha1" | "sha256" | "sha384" | "sha512";

export const DIGEST_SIZES: Readonly<Record<HashAlg, number>> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 };

/** Throw the one error type the measure layer reports for malformed or unusable input. */
export function measurementError(message: string, details?: Record<string, unknown>): never {
  throw new TdxError("E_MEASUREMENT", message, details === undefined ? {} : { details });
}

/** Bounds-checked reader over one Buffer; `what` names the structure in error messages. */
export class ByteView {
  constructor(
    readonly buf: Buffer,
    readonly what: string,
  ) {}

  get length(): number {
    return this.buf.length;
  }

  /** Fail unless `[offset, offset + size)` lies inside the buffer. */
  need(offset: number, size: number, field: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(size) || offset < 0 || size < 0 || offset + size > this.buf.length) {
      measurementError(`${this.what}: ${field} at offset ${offset} (+${size} bytes) lies outside the ${this.buf.length}-byte input`);
    }
  }

  u8(offset: number, field: string): number {
    this.need(offset, 1, field);
    return this.buf[offset]!;
  }

  u16(offset: number, field: string): number {
    this.need(offset, 2, field);
    return this.buf.readUInt16LE(offset);
  }

  u32(offset: number, field: string): number {
    this.need(offset, 4, field);
    return this.buf.readUInt32LE(offset);
  }

  u64(offset: number, field: string): bigint {
    this.need(offset, 8, field);
    return this.buf.readBigUInt64LE(offset);
  }

  /** A u64 that must fit a JS safe integer (offsets, LBAs used for indexing). */
  u64n(offset: number, field: string): number {
    const v = this.u64(offset, field);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) measurementError(`${this.what}: ${field} (${v}) is implausibly large`);
    return Number(v);
  }

  /** A copy-free view of `[offset, offset + size)`. */
  bytes(offset: number, size: number, field: string): Buffer {
    this.need(offset, size, field);
    return this.buf.subarray(offset, offset + size);
  }
}

export function digest(alg: HashAlg, ...parts: ReadonlyArray<Uint8Array>): Buffer {
  const h = createHash(alg);
  for (const p of parts) h.update(p);
  return h.digest();
}

/** One register update: `R' = H(R || d)`. */
export function extend(alg: HashAlg, register: Buffer, d: Buffer): Buffer {
  if (register.length !== DIGEST_SIZES[alg] || d.length !== DIGEST_SIZES[alg]) {
    measurementError(`extend ${alg}: register (${register.length} bytes) and digest (${d.length} bytes) must both be ${DIGEST_SIZES[alg]} bytes`);
  }
  return digest(alg, register, d);
}

/** Canonical text form of a little-endian (EFI_GUID) 16-byte GUID: `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`. */
export function guidToString(b: Buffer): string {
  if (b.length !== 16) measurementError(`GUID must be 16 bytes, got ${b.length}`);
  const h = (s: Buffer) => s.toString("hex");
  const rev = (s: Buffer) => Buffer.from(s).reverse();
  return `${h(rev(b.subarray(0, 4)))}-${h(rev(b.subarray(4, 6)))}-${h(rev(b.subarray(6, 8)))}-${h(b.subarray(8, 10))}-${h(b.subarray(10, 16))}`;
}

/** Inverse of guidToString: the 16 on-disk bytes of a canonical GUID string. */
export function guidToBytes(s: string): Buffer {
  const m = /^([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})$/i.exec(s);
  if (!m) measurementError(`not a GUID: ${JSON.stringify(s)}`);
  const [, a, b, c, d, e] = m;
  const rev = (x: string) => Buffer.from(x, "hex").reverse();
  return Buffer.concat([rev(a!), rev(b!), rev(c!), Buffer.from(d!, "hex"), Buffer.from(e!, "hex")]);
}

/** True when every byte of `b[from..]` equals `value`. */
export function allBytesAre(b: Buffer, from: number, value: number): boolean {
  for (let i = from; i < b.length; i++) if (b[i] !== value) return false;
  return true;
}
