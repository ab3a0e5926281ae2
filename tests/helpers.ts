import { spawn } from "node:child_process";
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

/** Run the real CLI (`node bin/tdxvm.js …`) as a child process, as a user or CI does. */
export function runTdxvm(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const repo = path.resolve(__dirname, "..");
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(repo, "bin/tdxvm.js"), ...args], { cwd: opts.cwd ?? repo, env: opts.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", reject);
    child.on("exit", (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr }));
  });
}
