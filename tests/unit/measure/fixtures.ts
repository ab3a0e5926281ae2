/**
 * Where the measurement tests find their real inputs, and the independent tools they cross-check
 * against. Small vectors live in ./fixtures (origin and licence in fixtures/README.md); OVMF, the
 * test UKI and most tools come from the project's own tools tree (tests/toolsTree.ts,
 * tests/fixtures/testUki.ts); the rest is the README's test set-up on the host. A missing tool
 * fails the test that needs it: a check that did not run never counts as passed.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { inToolsTreeOk, toolsOvmf, TREE_INDEPENDENT } from "../../toolsTree";

export const FIXTURE_DIR = path.join(__dirname, "fixtures");

export function fixture(name: string): Buffer {
  return fs.readFileSync(path.join(FIXTURE_DIR, name));
}

/** Debian trixie's OVMF.fd from the tools tree (the pinned MRTD values are about that build). */
export function ovmfPath(): string {
  const p = toolsOvmf();
  if (!fs.existsSync(p)) throw new Error(`${p} is missing: the tools tree has no OVMF (its ovmf package is in TOOLS_PACKAGES)`);
  return p;
}

/**
 * Run an independent Python implementation (tests/unit/measure/independent/<script>) with the
 * tools tree's python3; file arguments are relative to `cwd` (or paths inside the tree). Returns stdout.
 */
export function independent(script: string, args: ReadonlyArray<string>, cwd?: string): string {
  return inToolsTreeOk(["python3", `${TREE_INDEPENDENT}/${script}`, ...args], { cwd });
}

/** A host program from the README's test set-up line; fails (never skips) when it is not installed. */
export function hostTool(cmd: string): string {
  for (const d of [...(process.env.PATH ?? "").split(path.delimiter), "/usr/sbin", "/usr/bin"]) {
    if (!d) continue;
    const p = path.join(d, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  throw new Error(`${cmd} is not installed: the tests cross-check against it. Install the README's test set-up (Tests: sudo apt-get install -y …).`);
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

export function tempDir(prefix = "tdxvm-measure-"): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export const hex = (b: Buffer | Uint8Array): string => Buffer.from(b).toString("hex");

/** The UKI sections systemd-stub 257 measures into PCR 11 that systemd-measure takes as --<name>=PATH. */
const MEASURE_SECTIONS = [".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat", ".pcrpkey", ".profile"];

/**
 * PCR 11 as `systemd-measure calculate` (systemd 257, tools tree) computes it for a UKI whose
 * sections pefile extracted (independent/uki_sections.py), for each phase path ("" = the stub's
 * section measurements only). Returns bank → phase path → hex.
 */
export function systemdMeasurePcr11(uki: Buffer, phasePaths: ReadonlyArray<string>): Record<"sha256" | "sha384", Record<string, string>> {
  const dir = tempDir();
  fs.writeFileSync(path.join(dir, "uki.efi"), uki);
  const listing = JSON.parse(independent("uki_sections.py", ["uki.efi", "sections"], dir)) as Array<{ name: string; virtualSize: number }>;
  const present = new Set(listing.filter((s) => s.virtualSize > 0).map((s) => s.name));
  const args = ["/usr/lib/systemd/systemd-measure", "calculate", "--json=short", "--bank=sha256", "--bank=sha384"];
  for (const s of MEASURE_SECTIONS) if (present.has(s)) args.push(`--${s.slice(1)}=sections/${s.slice(1)}`);
  for (const p of phasePaths) args.push(`--phase=${p}`);
  const out = JSON.parse(inToolsTreeOk(args, { cwd: dir })) as Record<string, Array<{ phase?: string; pcr: number; hash: string }>>;
  const bank = (b: string) => Object.fromEntries((out[b] ?? []).map((e) => [e.phase ?? "", e.hash]));
  return { sha256: bank("sha256"), sha384: bank("sha384") };
}
