/**
 * The measurements a fleet's relying parties must accept (verifiers, secret services), with the
 * lifecycle of a rollout: add → roll → retire.
 *
 * - open (once the rollout's first wave proved the incoming measurement): incoming + every
 *   measurement still live (the outgoing one, and any a stopped rollout left behind);
 * - close (once every wave proved it): the incoming measurement alone.
 * A measurement enters only after a VM attested it, so the list never holds one no VM proved.
 * The list is bounded (MAX_LIVE): more live measurements than that means earlier rollouts were
 * left half-done, which is refused rather than accepted without end.
 */
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { TdxError } from "../errors";
import { stableJson, writeFileAtomic } from "../lock/files";
import { combinations, Measurements } from "../measure/ledger";

export const MAX_LIVE = 4;

/** One accepted measurement: a content id and the measurement a verifier compares with. */
export interface AllowedMeasurement { id: string; measurement: Measurements }

export interface AllowListFile { allowListVersion: 1; deployment: string; updatedAt: string; measurements: AllowedMeasurement[] }

/** Content id of a measurement: what its verifier compares (backend, values, pins, envelope), not its ledger's wording. */
export function measurementIdOf(m: Measurements): string {
  const values = (r: Measurements["registers"]) => Object.fromEntries(Object.entries(r).map(([n, v]) => [n, [v.value, v.status, v.basis ?? null, v.waived ?? null]]));
  return `sha256:${createHash("sha256").update(stableJson({ backend: m.backend, registers: values(m.registers), alternatives: (m.alternatives ?? []).map((a) => [a.label, values(a.registers)]) })).digest("hex")}`;
}

/**
 * The measurement as the deployment's verifier accepted it: a register its `attest.waive` names that
 * has no value (or is missing from a TD measurement) is waived in the list too, with that reason —
 * so the exports leave it out out loud instead of refusing a measurement the VMs passed with.
 * Registers with a value keep it: relying parties still compare those.
 */
export function withVerifierWaivers(m: Measurements, waive: Readonly<Record<string, string>> | undefined): Measurements {
  if (!waive || !Object.keys(waive).length) return m;
  const registers = { ...m.registers };
  for (const [name, reason] of Object.entries(waive)) {
    const r = registers[name];
    if (r && (r.value === null || r.status === "platform-defined") && !r.waived) registers[name] = { ...r, waived: reason };
    else if (!r && m.backend !== "azure" && /^(MRTD|RTMR[0-3])$/.test(name)) registers[name] = { alg: "sha384", value: null, status: "platform-defined", waived: reason, events: [] };
  }
  return { ...m, registers };
}

/** The list after a rollout phase: "open" adds `incoming` in front of what is live, "close" leaves it alone. */
export function nextAllowList(phase: "open" | "close", incoming: Measurements, live: readonly AllowedMeasurement[]): AllowedMeasurement[] {
  const entry = { id: measurementIdOf(incoming), measurement: incoming };
  if (phase === "close") return [entry];
  const list = [entry, ...live.filter((x) => x.id !== entry.id)];
  if (list.length > MAX_LIVE) {
    throw new TdxError("E_DEPLOYMENT", `${list.length} measurements would be live at once (at most ${MAX_LIVE}): earlier rollouts of this deployment stopped half-way`, {
      hint: "Finish (or roll back) the earlier rollout first: a successful `pulumi up` of one image retires every other measurement.",
    });
  }
  return list;
}

/** The live list as a verifier reads it from `file`, or undefined when there is none yet. Validated: it is read back from disk. */
export async function readAllowList(file: string, deployment: string): Promise<AllowedMeasurement[] | undefined> {
  const text = await fs.readFile(file, "utf8").catch((e: NodeJS.ErrnoException) => (e.code === "ENOENT" ? undefined : Promise.reject(e)));
  if (text === undefined) return undefined;
  const { parseMeasurements } = await import("../measure/formats");
  let raw: AllowListFile;
  try {
    raw = JSON.parse(text) as AllowListFile;
  } catch {
    throw new TdxError("E_DEPLOYMENT", `the allow-list ${file} is not JSON`, { hint: "It is written by tdxvm only; remove it if something else wrote there." });
  }
  if (raw?.allowListVersion !== 1 || raw.deployment !== deployment || !Array.isArray(raw.measurements) || raw.measurements.length > MAX_LIVE) {
    throw new TdxError("E_DEPLOYMENT", `${file} is not the allow-list of deployment ${deployment}`, { hint: "Publish each deployment's allow-list to its own file." });
  }
  return raw.measurements.map((x, i) => {
    const measurement = parseMeasurements(JSON.stringify(x.measurement), `${file} measurement ${i + 1}`);
    if (measurementIdOf(measurement) !== x.id) throw new TdxError("E_DEPLOYMENT", `${file}: measurement ${i + 1}'s id does not match its registers`);
    return { id: x.id, measurement };
  });
}

/** Write the list where verifiers read it (atomically: a reader sees the old or the new list, never half). */
export async function publishAllowList(file: string, deployment: string, list: readonly AllowedMeasurement[], now = new Date()): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  const doc: AllowListFile = { allowListVersion: 1, deployment, updatedAt: now.toISOString(), measurements: [...list] };
  await writeFileAtomic(file, stableJson(doc));
}

/**
 * The list in the formats relying parties take: flashbots (one entry per accepted combination —
 * each measurement, each host shape of its envelope), Constellation (one map per combination, by
 * id: pick the one for a verifier's config), Trustee (reference values: each register's accepted
 * values; Trustee's lists are per claim, so it accepts any mix of them — weaker than the others).
 */
export async function allowListExports(list: readonly AllowedMeasurement[]): Promise<{ flashbots: string; constellation: string; trustee: string }> {
  const { formatMeasurements, toFlashbotsEntries, toTrusteeReferenceValues } = await import("../measure/formats");
  const all = list.flatMap((x) => combinations(x.measurement).map((c, i) => ({ id: x.measurement.alternatives?.length || i > 0 ? `${x.id}@${c.label}` : x.id, m: c.m })));
  const constellation = Object.fromEntries(all.map((c) => [c.id, JSON.parse(formatMeasurements(c.m, "constellation"))]));
  return {
    flashbots: JSON.stringify(toFlashbotsEntries(all), null, 2) + "\n",
    constellation: JSON.stringify(constellation, null, 2) + "\n",
    trustee: JSON.stringify(toTrusteeReferenceValues(all.map((c) => c.m)), null, 2) + "\n",
  };
}
