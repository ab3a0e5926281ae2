/**
 * The project's own Debian trixie tools tree, for tests. jest's globalSetup (tests/globalSetup.ts)
 * provisions it once, as the first bake would; tests then run its programs (ukify, systemd-measure,
 * pesign, sfdisk, python3 with pefile, openssl) and read its OVMF — never whatever the host has.
 */
import { spawnSync } from "node:child_process";
import { realpathSync } from "node:fs";
import * as path from "node:path";
import { defaultCacheDir } from "../provider/pipeline";
import { readToolsManifest, toolsTreeDir } from "../provider/bake/toolsTree";
import { sandboxArgv } from "../provider/bake/sandbox";

/** Where the working directory of `inToolsTree` appears inside the tree (a tmpfs there: nothing persists). */
export const TREE_WORK = "/tmp/work";
/** Where tests/unit/measure/independent (the independent Python implementations) appears inside the tree, read-only. */
export const TREE_INDEPENDENT = "/tmp/independent";
const INDEPENDENT = path.join(__dirname, "unit", "measure", "independent");

export function toolsRoot(): string {
  const cacheDir = defaultCacheDir();
  if (!readToolsManifest(cacheDir)) {
    throw new Error(`no tdxvm tools tree in ${cacheDir}: run tests through jest (npm test, npx jest …), whose globalSetup provisions it`);
  }
  return realpathSync(toolsTreeDir(cacheDir));
}

/** Debian trixie's OVMF.fd (with TDVF metadata), as the project provisions it. */
export function toolsOvmf(): string {
  return path.join(toolsRoot(), "usr/share/ovmf/OVMF.fd");
}

export interface ToolRun { status: number | null; stdout: string; stderr: string }

/**
 * Run `argv` inside the tools tree with `cwd` (a host directory) bound at TREE_WORK as its working
 * directory, so relative file names work on both sides. Never throws for an exit code.
 */
export function inToolsTree(argv: ReadonlyArray<string>, opts: { cwd?: string; input?: string } = {}): ToolRun {
  const binds = [{ host: INDEPENDENT, inside: TREE_INDEPENDENT, readOnly: true }];
  if (opts.cwd) binds.push({ host: opts.cwd, inside: TREE_WORK, readOnly: false });
  const inner = opts.cwd ? ["/bin/sh", "-c", `cd ${TREE_WORK} && exec "$@"`, "sh", ...argv] : [...argv];
  const a = sandboxArgv(toolsRoot(), inner, binds);
  const r = spawnSync(a[0], a.slice(1), { input: opts.input, encoding: "utf8", timeout: 300_000, maxBuffer: 256 * 1024 * 1024 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** inToolsTree for a command that must succeed: its output, or an error with both streams. */
export function inToolsTreeOk(argv: ReadonlyArray<string>, opts: { cwd?: string; input?: string } = {}): string {
  const r = inToolsTree(argv, opts);
  if (r.status !== 0) throw new Error(`${argv.join(" ")} (in the tools tree) exited ${r.status}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}
