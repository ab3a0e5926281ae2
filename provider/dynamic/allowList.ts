/**
 * Dynamic provider behind a TdxDeployment's allow-list (provider/deploy/allowList.ts): the
 * measurements the fleet's relying parties must accept, moved through a rollout by two resources —
 * `<name>-allow-open` after the first wave attested (incoming + what is live) and
 * `<name>-allow-close` after the last wave attested (incoming only). Each publishes the list to
 * `publish` (a file the verifiers read, written atomically) and returns it with its exports in the
 * flashbots, Constellation and Trustee formats.
 *
 * What is live is what this resource added (its state) and the published file still holds (a close
 * retired the rest): a list written into the file by anyone else is never taken up. Delete removes
 * the file only when it is this deployment's allow-list.
 */
import { z } from "zod";
import { TdxError } from "../errors";
import { ExpectedMeasurementSchema, fromComputed } from "./measurement";
import { declared, guarded, guardedSync, log, CheckFailure, omit, checkStart, requireInputs, parseState, loadPath } from "./common";
import { AllowedMeasurement, allowListExports, measurementIdOf, nextAllowList, publishAllowList, readAllowList, withVerifierWaivers } from "../deploy/allowList";
import { parseWaivers } from "../measure/ledger";
import { parseMeasurements } from "../measure/formats";

export const ALLOW_LIST_STATE_VERSION = 1;

export const AllowListArgs = z.object({
  deployment: z.string().regex(/^[A-Za-z0-9._-]{1,100}$/),
  phase: z.enum(["open", "close"]),
  /** The measurement this rollout's VMs proved (TdxDeployment's expected measurement). */
  incoming: ExpectedMeasurementSchema,
  /** The file the fleet's verifiers read (tdxvm allow-list format). */
  publish: z.string().min(1),
  /** The deployment's verifier waivers (attest.waive): registers without a value it accepts unchecked. */
  waive: z.record(z.string(), z.string()).optional(),
}).loose();
export type AllowListArgsT = z.infer<typeof AllowListArgs>;

const OUT = ["stateVersion", "ids", "measurements", "flashbots", "constellation", "trustee", "updatedAt"];
export const AllowListState = z.object({
  stateVersion: z.number().optional(),
  ids: z.array(z.string()).optional(),
  measurements: z.array(z.object({ id: z.string(), measurement: z.unknown() })).max(16).optional(),
  deployment: z.string().optional(),
  publish: z.string().optional(),
}).loose();
const state = (o: unknown) => guardedSync(() => parseState(AllowListState, o, "allow-list"));
const inputsOnly = (o: Record<string, unknown>) => omit(declared(o), OUT);

/** The measurements in state, validated (state is hostile until checked: ids recomputed). */
function fromState(o: ReturnType<typeof state>): AllowedMeasurement[] {
  return (o.measurements ?? []).map((x, i) => {
    const measurement = parseMeasurements(JSON.stringify(x.measurement), `allow-list state, measurement ${i + 1}`);
    if (measurementIdOf(measurement) !== x.id) throw new TdxError("E_STATE", `allow-list state: measurement ${i + 1}'s id does not match its registers`, { hint: "The state was edited; run pulumi refresh, or restore it from a backup." });
    return { id: x.id, measurement };
  });
}

/**
 * What is live: the published file says what was retired (a close), this resource's own state
 * says what it ever added — only what both hold carries forward, so a measurement written into the
 * file by anyone else is never accepted, and a retired one does not come back.
 */
async function liveList(file: string, deployment: string, olds: ReturnType<typeof state> | undefined): Promise<AllowedMeasurement[]> {
  const mine = olds ? fromState(olds) : [];
  const published = await readAllowList(file, deployment);
  if (!published) return mine;
  const ids = new Set(published.map((x) => x.id));
  return mine.filter((x) => ids.has(x.id));
}

async function apply(a: AllowListArgsT, olds: ReturnType<typeof state> | undefined): Promise<Record<string, unknown>> {
  const proved = fromComputed(a.incoming as never, a.incoming.backend);
  if (!proved) throw new TdxError("E_VALIDATION", "the allow-list's incoming measurement has no registers");
  const incoming = withVerifierWaivers(proved, a.waive ? parseWaivers(a.waive, "attest.waive") : undefined);
  const file = loadPath(a.publish);
  const list = nextAllowList(a.phase, incoming, a.phase === "open" ? await liveList(file, a.deployment, olds) : []);
  // Everything that can fail first; the file verifiers read changes last.
  const exports = await allowListExports(list);
  if (a.phase === "close") await readAllowList(file, a.deployment); // refuses to overwrite another deployment's list
  await publishAllowList(file, a.deployment, list);
  log(`TdxDeployment/${a.deployment}`, `allow-list (${a.phase}): ${list.map((x) => x.id.slice(7, 19)).join(", ")} → ${file}`);
  return { stateVersion: ALLOW_LIST_STATE_VERSION, ids: list.map((x) => x.id), measurements: list, ...exports, updatedAt: new Date().toISOString() };
}

export const allowListProvider = {
  async check(_olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ inputs: Record<string, unknown>; failures?: CheckFailure[] }> {
    const start = checkStart(AllowListArgs, news, OUT);
    return start.done ?? { inputs: start.inputs };
  },

  async diff(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ changes: boolean; replaces: string[]; deleteBeforeReplace: boolean }> {
    const o = state(olds);
    const n = declared(news);
    const same = (k: string) => JSON.stringify(o[k] ?? null) === JSON.stringify(n[k] ?? null);
    // A new incoming measurement (or another file) is the next step of the lifecycle: update in place.
    const changes = !same("incoming") || !same("publish") || !same("phase") || !same("waive");
    return { changes, replaces: same("deployment") ? [] : ["deployment"], deleteBeforeReplace: false };
  },

  async create(inputs: Record<string, unknown>): Promise<{ id: string; outs: Record<string, unknown> }> {
    return guarded(async () => {
      const a = requireInputs(AllowListArgs, inputsOnly(inputs));
      return { id: `allow-${a.deployment}-${a.phase}`, outs: { ...inputsOnly(inputs), ...(await apply(a, undefined)) } };
    });
  },

  async update(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ outs: Record<string, unknown> }> {
    return guarded(async () => {
      const a = requireInputs(AllowListArgs, inputsOnly(news));
      return { outs: { ...inputsOnly(news), ...(await apply(a, state(olds))) } };
    });
  },

  async read(id: string, props: Record<string, unknown>): Promise<{ id: string; props: Record<string, unknown> }> {
    return { id, props: declared(state(props)) };
  },

  async delete(_id: string, props: Record<string, unknown>): Promise<void> {
    const o = state(props);
    if (!o.publish || !o.deployment) return;
    const file = loadPath(o.publish);
    // Only our own list goes: a file that is not this deployment's allow-list is left alone.
    const mine = await readAllowList(file, o.deployment).then((l) => l !== undefined, () => false);
    if (mine) await (await import("node:fs")).promises.rm(file, { force: true });
  },
};
