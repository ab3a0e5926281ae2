/**
 * Measurements: register values plus the event ledger that explains each of them.
 * A register is `exact` (predicted from the artifacts, with how it was verified),
 * `platform-defined` (set by firmware or the cloud, not by the image: we report why instead of
 * guessing), or `zero` (expected never extended).
 */
import type { Encoder } from "cbor-x";
import { HashAlg } from "./bytes";
import { stableJson } from "../lock/files";

export type Backend = "rtmr" | "azure" | "gcp";

export interface LedgerEvent {
  /** TCG event type name, e.g. EV_EFI_BOOT_SERVICES_APPLICATION. */
  type: string;
  description: string;
  /** Where the measured bytes come from, e.g. "uki .linux section (Authenticode)". */
  origin: string;
  /** Hex digest extended into the register. */
  digest: string;
  /** PCR the event is logged under (TPM world); RTMR events keep the PCR they map from. */
  pcr?: number;
  /** Which log records it: the firmware's TCG2 log (default) or systemd's userspace log (/run/log/systemd/tpm2-measure.log). */
  log?: "firmware" | "userspace";
}

export interface RegisterValue {
  alg: HashAlg;
  /** Hex value, or null when the value is not determined by the image. */
  value: string | null;
  status: "exact" | "platform-defined" | "zero";
  /** For platform-defined registers: what sets them and where a user can obtain the value. */
  why?: string;
  events: LedgerEvent[];
}

export interface Measurements {
  measurementsVersion: 1;
  backend: Backend;
  /** Register name ("PCR4", "RTMR1", "MRTD") → value and ledger. */
  registers: Record<string, RegisterValue>;
  /** What the prediction assumed (stub version, firmware, VM shape, ...). */
  inputs: Record<string, string | number | null>;
}

export function measurementsToJson(m: Measurements): string {
  return stableJson(m);
}

let cbor: Encoder | undefined;
export function measurementsToCbor(m: Measurements): Buffer {
  // Required here, like the lock code above: measuring alone needs neither.
  const { canonicalize } = require("../recipe/digest") as typeof import("../recipe/digest");
  cbor ??= new (require("cbor-x") as typeof import("cbor-x")).Encoder({ useRecords: false, mapsAsObjects: true, variableMapSize: true });
  return Buffer.from(cbor.encode(canonicalize(JSON.parse(JSON.stringify(m)))));
}

export interface RegisterDiff {
  register: string;
  old: string | null;
  new: string | null;
  /** Human sentences: which events changed, were added or removed. */
  changes: string[];
}

/** Registers whose values differ between `a` and `b`, each with the events that explain it. */
export function diffMeasurements(a: Measurements, b: Measurements): RegisterDiff[] {
  const out: RegisterDiff[] = [];
  // The root file system is one input behind many events (the kernel command line carries its
  // verity root hash; the GPT holds partitions named after it): say so once per register.
  const rootA = a.inputs.rootHash ?? null;
  const rootB = b.inputs.rootHash ?? null;
  const rootChange = rootA !== rootB
    ? rootA && rootB ? `root file system changed (verity root hash ${String(rootA).slice(0, 16)}… → ${String(rootB).slice(0, 16)}…)`
      : `root file system mode changed (${String(a.inputs.rootfs ?? "unknown").split(":")[0]} → ${String(b.inputs.rootfs ?? "unknown").split(":")[0]})`
    : undefined;
  const names = [...new Set([...Object.keys(a.registers), ...Object.keys(b.registers)])].sort(registerOrder);
  for (const name of names) {
    const ra = a.registers[name];
    const rb = b.registers[name];
    if (ra?.value === rb?.value && ra?.status === rb?.status) continue;
    const changes: string[] = [];
    const ea = ra?.events ?? [];
    const eb = rb?.events ?? [];
    for (let i = 0; i < Math.max(ea.length, eb.length); i++) {
      const x = ea[i];
      const y = eb[i];
      if (x && y && x.digest === y.digest) continue;
      if (x && y && x.description === y.description) changes.push(`${name}: ${y.description} changed`);
      else if (x && y) changes.push(`${name}: event ${i + 1} is now "${y.description}" (was "${x.description}")`);
      else if (y) changes.push(`${name}: ${y.description} added`);
      else if (x) changes.push(`${name}: ${x.description} removed`);
    }
    if (!changes.length) changes.push(`${name}: ${rb?.status === "platform-defined" || ra?.status === "platform-defined" ? "platform-defined value changed" : "value changed"}`);
    else if (rootChange && ra?.status === "exact" && rb?.status === "exact") changes.unshift(`${name}: ${rootChange}`);
    out.push({ register: name, old: ra?.value ?? null, new: rb?.value ?? null, changes });
  }
  return out;
}

function registerOrder(a: string, b: string): number {
  const rank = (s: string) => (s === "MRTD" ? -1 : 0);
  const num = (s: string) => Number(/\d+$/.exec(s)?.[0] ?? 0);
  const kind = (s: string) => s.replace(/\d+$/, "");
  return rank(a) - rank(b) || kind(a).localeCompare(kind(b)) || num(a) - num(b);
}

const short = (v: string | null) => (v === null ? "—" : `\`${v.slice(0, 16)}…\``);

/** Markdown for a pull request: one row per changed register and the events behind it. */
export function diffToMarkdown(diffs: RegisterDiff[], title = "Measurement changes"): string {
  if (!diffs.length) return `### ${title}\n\nNo register changes.\n`;
  const rows = diffs.map((d) => `| ${d.register} | ${short(d.old)} | ${short(d.new)} | ${d.changes.map((c) => c.replace(/\|/g, "\\|")).join("<br>")} |`);
  return [`### ${title}`, "", "| register | old | new | why |", "|---|---|---|---|", ...rows, ""].join("\n");
}
