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
  /**
   * The Debian packages (`name=version`, sorted) the measured image was baked from: those of its
   * root file system (the image; the kernel is one of them) and those of the default initrd in the
   * UKI's .initrd. Lets a diff name the packages behind a register change.
   */
  packages?: { image: string[]; initrd: string[] };
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
  const pkgs = a.packages && b.packages ? packageChanges(a.packages, b.packages) : undefined;
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
    out.push({ register: name, old: ra?.value ?? null, new: rb?.value ?? null, changes: pkgs ? changes.map((c) => withPackageCauses(c, pkgs)) : changes });
  }
  return out;
}

/** A package's version change between two pin lists: `name old → new`, `name (new) → v`, `name v → (removed)`. */
export interface PackageChange { name: string; old: string | null; new: string | null }

export function pinDiff(a: string[], b: string[]): PackageChange[] {
  const split = (l: string[]) => new Map(l.map((p) => [p.slice(0, p.indexOf("=")), p.slice(p.indexOf("=") + 1)]));
  const ma = split(a);
  const mb = split(b);
  const out: PackageChange[] = [];
  for (const n of [...new Set([...ma.keys(), ...mb.keys()])].sort()) {
    const x = ma.get(n) ?? null;
    const y = mb.get(n) ?? null;
    if (x !== y) out.push({ name: n, old: x, new: y });
  }
  return out;
}

export const formatPackageChange = (c: PackageChange) => `${c.name} ${c.old ?? "(new)"} → ${c.new ?? "(removed)"}`;

interface PackageChanges { image: PackageChange[]; initrd: PackageChange[]; kernel: PackageChange[]; stub: PackageChange[]; osrel: PackageChange[] }

function packageChanges(a: NonNullable<Measurements["packages"]>, b: NonNullable<Measurements["packages"]>): PackageChanges {
  const image = pinDiff(a.image, b.image);
  return {
    image,
    initrd: pinDiff(a.initrd, b.initrd),
    // The UKI's .linux/.uname come from the kernel package, its stub from systemd-boot-efi, .osrel from base-files (/usr/lib/os-release).
    kernel: image.filter((c) => /^linux-image-/.test(c.name)),
    stub: image.filter((c) => c.name === "systemd-boot-efi"),
    osrel: image.filter((c) => c.name === "base-files"),
  };
}

/**
 * A ledger change with the package changes behind it, by what the event measures: the UKI's
 * .initrd holds the default initrd's packages and the kernel's modules; .linux and .uname the
 * kernel; .osrel base-files; the command line and the GPT the root file system (its verity root
 * hash); the UKI as a whole (Authenticode) all of these and the stub.
 */
function withPackageCauses(change: string, p: PackageChanges): string {
  const list = (cs: PackageChange[], where: string) => cs.map((c) => `${formatPackageChange(c)} (${where})`);
  let causes: string[] = [];
  if (/\.initrd|Linux initrd/.test(change)) causes = [...list(p.initrd, "in the initrd"), ...list(p.kernel, "kernel modules in the initrd")];
  else if (/\.linux|\.uname|kernel \(/.test(change)) causes = list(p.kernel, "the kernel");
  else if (/\.osrel/.test(change)) causes = list(p.osrel, "os-release");
  else if (/root file system|command line|\.cmdline|GPT/.test(change)) causes = list(p.image, "in the root file system");
  else if (/UKI \(|UKI changed|Authenticode/.test(change)) causes = [...list(p.stub, "the stub"), ...list(p.kernel, "the kernel"), ...list(p.initrd, "in the initrd"), ...list(p.image.filter((c) => !p.kernel.includes(c) && !p.stub.includes(c)), "in the root file system")];
  if (!causes.length) return change;
  const shown = causes.slice(0, 8);
  return `${change} — ${shown.join(", ")}${causes.length > shown.length ? `, and ${causes.length - shown.length} more` : ""}`;
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
