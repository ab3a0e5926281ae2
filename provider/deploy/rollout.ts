/**
 * A rollout across stacks: `up` one stack after the other (canary, then production stacks), stop
 * at the first stack that does not come up, and report per stack — image, waves, verdict, time.
 *
 * The order logic is independent of how a stack is brought up (`UpStack`): `automationUp` runs
 * `pulumi up` through Pulumi's Automation API (needs the Pulumi CLI on the machine); tests pass an
 * engine-free harness. Promotion itself is not decided here: a production stack whose config says
 * `promoteFrom: <canary>` refuses, at its first wave, an image its canary's VMs did not prove
 * (TdxDeployment, examples/fleet) — the driver only refuses to go on after a refusal.
 */
import { TdxError } from "../errors";

/** What one `up` of one stack came to. `outputs` are the stack's outputs (plain values). */
export interface StackOutcome {
  ok: boolean;
  outputs: Record<string, unknown>;
  /** The engine's error text when the update failed. */
  error?: string;
  seconds: number;
}

export type UpStack = (stack: string, log: (line: string) => void) => Promise<StackOutcome>;

export interface RolloutRow {
  stack: string;
  /** The image's bake key (first 12 hex digits), from the stack's `promotion` output. */
  image: string;
  /** "2/2" waves done, "refused at 1/2", or "—". */
  waves: string;
  verdict: string;
  seconds: number | null;
  /** A failed stack's error, from tdxvm's error code on when it has one. */
  error?: string;
}

export interface RolloutReport {
  ok: boolean;
  rows: RolloutRow[];
  /** The stack the rollout stopped at, if it stopped. */
  stoppedAt?: string;
}

const STACK = /^[A-Za-z0-9][A-Za-z0-9._-]*(\/[A-Za-z0-9][A-Za-z0-9._-]*){0,2}$/;

/** "canary,prod-eu,prod-us" → the stack names, each once, or E_VALIDATION. */
export function parseStacks(list: string): string[] {
  const stacks = list.split(",").map((s) => s.trim());
  const bad = stacks.find((s) => !STACK.test(s));
  if (bad !== undefined) throw new TdxError("E_VALIDATION", `--stacks: ${JSON.stringify(bad)} is not a stack name`, { hint: "Give stack names (or org/project/stack) separated by commas, in rollout order: canary,prod-eu,prod-us." });
  const twice = stacks.find((s, i) => stacks.indexOf(s) !== i);
  if (twice !== undefined) throw new TdxError("E_VALIDATION", `--stacks names ${twice} twice`, { hint: "Each stack rolls out once per run." });
  return stacks;
}

const obj = (v: unknown): Record<string, unknown> | undefined => (v && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined);

/** Waves done from the `instances` output (each VM's 0-based wave). */
function wavesOf(outputs: Record<string, unknown>): number | undefined {
  const inst = outputs.instances;
  if (!Array.isArray(inst) || !inst.length) return undefined;
  const waves = inst.map((i) => obj(i)?.wave).filter((w): w is number => Number.isInteger(w));
  return waves.length ? Math.max(...waves) + 1 : undefined;
}

/** One row from a stack's outcome. */
export function rowOf(stack: string, o: StackOutcome): RolloutRow {
  const promotion = obj(o.outputs.promotion);
  const bakeKey = obj(promotion?.image)?.bakeKey;
  const image = typeof bakeKey === "string" ? bakeKey.slice(0, 12) : "—";
  const seconds = Math.round(o.seconds);
  if (o.ok) {
    const n = wavesOf(o.outputs);
    const by = Array.isArray(promotion?.attestedBy) ? promotion.attestedBy.length : 0;
    return { stack, image, waves: n ? `${n}/${n}` : "—", verdict: by ? `attested by ${by} VM${by === 1 ? "" : "s"}` : "up (no attested VMs)", seconds };
  }
  // From tdxvm's error code on: the engine wraps a resource's error in its own words ("failed to register …").
  const whole = o.error ?? "the update failed";
  const at = whole.search(/\bE_[A-Z_]+: /);
  const err = at > 0 ? whole.slice(at) : whole;
  const refused = /rollout refused at wave (\d+) of (\d+)/.exec(err);
  const failed = /Failed: ([^\n]*)/.exec(err)?.[1]?.split(" | ").map((x) => x.split(":")[0]).join(", ");
  // REFUSED is a verdict (the VM answered and proved something else); an agent that never answered is a failure.
  const attestation = /failed attestation/.test(err) && failed !== undefined;
  const code = /\b(E_[A-Z]+)\b/.exec(err)?.[1];
  return {
    stack,
    // After a failed update the stack's image output is the last good one, not the refused one.
    image: "—",
    waves: refused ? `refused at ${refused[1]}/${refused[2]}` : "—",
    verdict: attestation ? `REFUSED${failed ? `: ${failed}` : ""}` : `FAILED${code ? ` (${code})` : ""}`,
    seconds, error: err,
  };
}

/**
 * Bring `stacks` up in order; stop at the first that fails (later stacks are "not run"). `up`
 * errors are outcomes, not exceptions: the report always has a row per stack.
 */
export async function rolloutStacks(stacks: string[], up: UpStack, log: (line: string) => void = () => undefined): Promise<RolloutReport> {
  const rows: RolloutRow[] = [];
  let stoppedAt: string | undefined;
  for (const stack of stacks) {
    if (stoppedAt !== undefined) {
      rows.push({ stack, image: "—", waves: "—", verdict: `not run (stopped at ${stoppedAt})`, seconds: null });
      continue;
    }
    log(`== ${stack}: up`);
    const t0 = Date.now();
    let o: StackOutcome;
    try {
      o = await up(stack, (line) => log(`[${stack}] ${line}`));
    } catch (e) {
      o = { ok: false, outputs: {}, error: e instanceof Error ? e.message : String(e), seconds: (Date.now() - t0) / 1000 };
    }
    const row = rowOf(stack, o);
    rows.push(row);
    log(`== ${stack}: ${row.verdict}`);
    if (!o.ok) stoppedAt = stack;
  }
  return { ok: stoppedAt === undefined, rows, ...(stoppedAt !== undefined ? { stoppedAt } : {}) };
}

/** The report as a table a person reads (and the failing stack's error under it). */
export function rolloutTable(r: RolloutReport): string {
  const head = ["stack", "image", "waves", "verdict", "duration"];
  const body = r.rows.map((x) => [x.stack, x.image, x.waves, x.verdict, x.seconds === null ? "—" : `${x.seconds} s`]);
  const width = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(width[i])).join("  ").trimEnd();
  const out = [line(head), line(width.map((w) => "-".repeat(w))), ...body.map(line)];
  const failed = r.rows.find((x) => x.error);
  if (failed) out.push("", `${failed.stack}: ${failed.error}`);
  return out.join("\n");
}

/**
 * `up` through Pulumi's Automation API in the project directory `workDir` (its Pulumi.yaml and
 * Pulumi.<stack>.yaml config, the CLI's login). A thin adapter: stack selection, the update with
 * its output streamed, the outputs as plain values; errors become a failed outcome.
 */
export async function automationUp(workDir: string): Promise<UpStack> {
  const auto = await import("@pulumi/pulumi/automation");
  let pulumi: import("@pulumi/pulumi/automation").PulumiCommand;
  try {
    pulumi = await auto.PulumiCommand.get();
  } catch (e) {
    throw new TdxError("E_DEPLOYMENT", `tdxvm rollout drives the Pulumi CLI, and \`pulumi version\` did not run here (${(e as Error).message.split("\n")[0].trim() === "code: -2" ? "no pulumi on PATH" : (e as Error).message.split("\n")[0]})`, { hint: "Install the Pulumi CLI (https://www.pulumi.com/docs/install/) and log in (pulumi login), then run tdxvm rollout again." });
  }
  return async (stack, log) => {
    const t0 = Date.now();
    try {
      const ws = await auto.LocalWorkspace.selectStack({ stackName: stack, workDir }, { pulumiCommand: pulumi });
      const r = await ws.up({ onOutput: (o: string) => { for (const l of o.split("\n")) if (l.trim()) log(l); } });
      const outputs = Object.fromEntries(Object.entries(r.outputs).map(([k, v]) => [k, v.value as unknown]));
      return { ok: r.summary.result === "succeeded", outputs, seconds: (Date.now() - t0) / 1000 };
    } catch (e) {
      // The CLI's own error text (CommandError carries its stderr, where the engine prints the resource's TdxError).
      return { ok: false, outputs: {}, error: e instanceof Error ? e.message : String(e), seconds: (Date.now() - t0) / 1000 };
    }
  };
}
