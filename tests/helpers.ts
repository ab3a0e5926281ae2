import { promises as fs } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { TdxError } from "../provider";

export async function tempDir(prefix = "tdxvm-test-"): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), prefix));
}

/** Run fn and return the TdxError it throws (fails the test if it throws anything else or nothing). */
export async function tdxErrorOf(fn: () => unknown): Promise<TdxError> {
  try {
    await fn();
  } catch (e) {
    if (e instanceof TdxError) return e;
    throw new Error(`expected a TdxError, got ${String(e)}`, { cause: e });
  }
  throw new Error("expected a TdxError, but nothing was thrown");
}

/** Every file below dir (relative paths), recursively. */
export async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  const rec = async (d: string) => {
    for (const e of await fs.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await rec(p);
      else out.push(path.relative(dir, p));
    }
  };
  await rec(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== "ENOENT") throw e;
  });
  return out.sort();
}
