/**
 * File helpers of the lock and measurement files, without the lock code (and zod): stable JSON and
 * atomic writes, for the processes that only measure.
 */
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";

/** Stable JSON: sorted keys, two-space indent, trailing newline. */
export function stableJson(value: unknown): string {
  const sort = (v: unknown): unknown =>
    Array.isArray(v) ? v.map(sort) : v && typeof v === "object" ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sort((v as Record<string, unknown>)[k])])) : v;
  return JSON.stringify(sort(value), null, 2) + "\n";
}

/** A hard link to `src` at `dst`, or a copy where a link cannot be made (another file system). */
export async function linkOrCopy(src: string, dst: string): Promise<void> {
  await fs.link(src, dst).catch(() => fs.copyFile(src, dst));
}

/**
 * A hard link to (or copy of) `src` at `dst`, through a temp file and a rename: `dst` is never
 * half-written, and a failure leaves no temp file.
 */
export async function linkOrCopyAtomic(src: string, dst: string): Promise<void> {
  const tmp = `${dst}.${randomBytes(6).toString("hex")}.tmp`;
  try {
    await linkOrCopy(src, tmp);
    await fs.rename(tmp, dst);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
}

/** Write a file atomically: temp file in the same directory, fsync, rename. */
export async function writeFileAtomic(file: string, data: string | Buffer, mode = 0o644): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${randomBytes(6).toString("hex")}.tmp`;
  try {
    const fh = await fs.open(tmp, "wx", mode);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, file);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
}
