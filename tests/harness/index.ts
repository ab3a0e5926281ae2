/** Run one harness operation (a fresh process, like `pulumi <op>`) from a test. */
import { spawn } from "node:child_process";
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { RunResult, StepEvent, repoRoot, unwrap } from "./engine";
import type { UpStack } from "../../provider/deploy/rollout";

export interface OpOptions {
  program: string;
  dir: string;
  config?: Record<string, string>;
  secretConfig?: Record<string, string>;
  project?: string;
  stack?: string;
  /** Stacks a StackReference in the program may read: name → the directory of that stack's harness state. */
  stackRefs?: Record<string, string>;
  env?: Record<string, string>;
}

export interface OpResult extends RunResult { seconds: number; stdout: string }

export async function pulumiOp(op: "up" | "preview" | "refresh" | "destroy", o: OpOptions): Promise<OpResult> {
  const result = path.join(o.dir, `result-${op}-${Date.now()}.json`);
  const args = ["-r", "@swc-node/register", path.join(__dirname, "run.ts"), op, "--program", o.program, "--state", path.join(o.dir, "state.json"), "--result", result, "--host-log", path.join(o.dir, "host.log")];
  if (o.project) args.push("--project", o.project);
  if (o.stack) args.push("--stack", o.stack);
  for (const [name, dir] of Object.entries(o.stackRefs ?? {})) args.push("--stack-ref", `${name}=${path.join(dir, "state.json")}`);
  for (const [k, v] of Object.entries(o.config ?? {})) args.push("--config", `${k}=${v}`);
  for (const [k, v] of Object.entries(o.secretConfig ?? {})) args.push("--secret-config", `${k}=${v}`);
  const t0 = Date.now();
  const child = spawn(process.execPath, args, { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, TDXVM_PROVIDER_QUIET: "0", ...o.env } });
  let out = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (out += d));
  const code = await new Promise<number>((r) => child.on("exit", (c) => r(c ?? 1)));
  const parsed = await fs.readFile(result, "utf8").then((t) => JSON.parse(t) as RunResult, () => undefined);
  if (!parsed) throw new Error(`harness ${op} crashed (exit ${code}):\n${out}`);
  return { ...parsed, seconds: (Date.now() - t0) / 1000, stdout: out };
}

/** The events of custom resources of one type (by URN suffix name). */
export function stepsOf(r: RunResult, typeSuffix: string): StepEvent[] {
  return r.events.filter((e) => e.type.endsWith(typeSuffix));
}

/**
 * The rollout driver's `up` (provider/deploy/rollout.ts) through this harness instead of the
 * Automation API: `options(stack)` says where that stack's state lives and its config. `runs`
 * collects each stack's whole result for assertions beyond the driver's report.
 */
export function harnessUp(options: (stack: string) => OpOptions, runs: Record<string, OpResult> = {}): UpStack {
  return async (stack, log) => {
    const r = await pulumiOp("up", { stack, ...options(stack) });
    runs[stack] = r;
    for (const l of r.stdout.split("\n")) if (l.trim()) log(l);
    return { ok: r.ok, outputs: unwrap(r.outputs) as Record<string, unknown>, ...(r.error ? { error: r.error } : {}), seconds: r.seconds };
  };
}
