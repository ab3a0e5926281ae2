import { spawn } from "node:child_process";
import { promises as fs, readFileSync } from "node:fs";
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

/**
 * Run the real CLI (`node bin/tdxvm.js …`) as a child process, as a user or CI does. Without CI in
 * its environment unless given (under CI=true the CLI bakes frozen by default: tests say so when
 * they mean it).
 */
function withoutCi(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const { CI: _ci, ...rest } = env;
  void _ci;
  return rest;
}

export function runTdxvm(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const repo = path.resolve(__dirname, "..");
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(repo, "bin/tdxvm.js"), ...args], { cwd: opts.cwd ?? repo, env: opts.env ?? withoutCi(process.env), stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", reject);
    child.on("exit", (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr }));
  });
}

/** A running Azurite blob service (Microsoft's storage emulator, from npm) with its own account and key. */
export interface Azurite {
  /** Blob service endpoint of the account: http://127.0.0.1:<port>/<account>/ (path-style, like the emulator's). */
  endpoint: string;
  account: string;
  key: string;
  /** Stops the process this helper started (by its pid). */
  stop(): Promise<void>;
}

/**
 * Start Azurite's blob service on a free loopback port, storing into `dir`, with a fresh random
 * account key (AZURITE_ACCOUNTS; Shared Key signatures are checked against it). No telemetry;
 * `--skipApiVersionCheck` because @azure/storage-blob may speak a newer API version than the
 * emulator knows.
 */
export async function startAzurite(dir: string, account = "tdxvmtest"): Promise<Azurite> {
  const { spawn } = await import("node:child_process");
  const { randomBytes } = await import("node:crypto");
  const pkg = require.resolve("azurite/package.json");
  const main = path.join(path.dirname(pkg), (require(pkg) as { bin: Record<string, string> }).bin["azurite-blob"]);
  const key = randomBytes(64).toString("base64");
  const child = spawn(process.execPath, [main, "--blobHost", "127.0.0.1", "--blobPort", "0", "--location", dir, "--skipApiVersionCheck", "--disableTelemetry", "--silent"], {
    env: { ...process.env, AZURITE_ACCOUNTS: `${account}:${key}` }, stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  const port = await new Promise<number>((resolve, reject) => {
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = /successfully listens on http:\/\/127\.0\.0\.1:(\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.once("exit", (c) => reject(new Error(`azurite exited (${c}) before listening: ${out}`)));
    setTimeout(() => reject(new Error(`azurite did not listen within 60 s: ${out}`)), 60_000).unref();
  });
  return {
    endpoint: `http://127.0.0.1:${port}/${account}/`, account, key,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await gone;
    },
  };
}

/** The test-only image owner key (tests/fixtures/owner): keeps harness-baked images the same run to run. Public: never deploy with it. */
export const TEST_OWNER_KEY = readFileSync(path.join(__dirname, "fixtures", "owner", "test-owner.key"), "utf8");
