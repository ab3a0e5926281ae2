/**
 * Where the measurement tests find their real inputs, and small helpers to run the independent
 * tools they cross-check against. Small vectors live in ./fixtures (see fixtures/README.md for
 * origin and license); big ones (OVMF) come from the host and are never copied into the repo.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

/** The team's shared fixtures: `../shared/fixtures` beside the checkout (CI clones it there too). */
export const SHARED_FIXTURES = path.resolve(__dirname, "../../../../shared/fixtures");
export const FIXTURE_DIR = path.join(__dirname, "fixtures");

export function fixture(name: string): Buffer {
  return fs.readFileSync(path.join(FIXTURE_DIR, name));
}

function firstExisting(candidates: ReadonlyArray<string | undefined>, what: string, howToGet: string): string {
  for (const c of candidates) if (c && fs.existsSync(c)) return c;
  throw new Error(`${what} not found; looked at: ${candidates.filter(Boolean).join(", ")}. ${howToGet}`);
}

/**
 * An OVMF image carrying TDVF metadata: $TDXVM_TOOLS_TREE/usr/share/ovmf/OVMF.fd, else the host's
 * /usr/share/ovmf/OVMF.fd. Fails (never skips) when neither exists.
 */
export function ovmfPath(): string {
  const tree = process.env.TDXVM_TOOLS_TREE;
  return firstExisting(
    [tree ? path.join(tree, "usr/share/ovmf/OVMF.fd") : undefined, "/usr/share/ovmf/OVMF.fd"],
    "OVMF firmware (OVMF.fd)",
    "Install the Debian `ovmf` package on the host (`apt-get install -y ovmf`) or set TDXVM_TOOLS_TREE to a tools tree that has it.",
  );
}

/**
 * The small test UKI from flashbots/measured-boot (fixtures/uki.efi, sha256 ab7f44ff…d2f491):
 * $TDXVM_TEST_UKI, a copy in ./fixtures, or the team's shared fixture directory.
 */
export function ukiFixturePath(): string {
  return firstExisting(
    [process.env.TDXVM_TEST_UKI, path.join(SHARED_FIXTURES, "measured-boot-test-uki.efi")],
    "measured-boot test UKI",
    "Fetch fixtures/uki.efi from github.com/flashbots/measured-boot (commit ceeb7af) and point TDXVM_TEST_UKI at it.",
  );
}

/** Absolute path of an executable on PATH (or in the extra directories), if any. */
export function which(cmd: string, extraDirs: ReadonlyArray<string> = []): string | undefined {
  const dirs = [...(process.env.PATH ?? "").split(path.delimiter), "/usr/sbin", "/sbin", ...extraDirs];
  for (const d of dirs) {
    if (!d) continue;
    const p = path.join(d, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

export interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: ReadonlyArray<string>, opts: { input?: string; cwd?: string } = {}): RunResult {
  const r = spawnSync(cmd, args as string[], { input: opts.input, cwd: opts.cwd, encoding: "utf8", timeout: 120_000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Run a command that must succeed; fail the test with its output otherwise. */
export function runOk(cmd: string, args: ReadonlyArray<string>, opts: { input?: string; cwd?: string } = {}): string {
  const r = run(cmd, args, opts);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${r.status}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** python3 is the independent implementation language for cross-checks; it is required (mkosi needs it anyway). */
export function python3(): string {
  const p = which("python3");
  if (!p) throw new Error("python3 not found on PATH; the measurement cross-checks run an independent Python implementation");
  return p;
}

export function tempDir(prefix = "tdxvm-measure-"): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export const hex = (b: Buffer | Uint8Array): string => Buffer.from(b).toString("hex");
