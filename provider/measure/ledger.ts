/**
 * Measurements: register values plus the event ledger that explains each of them.
 * A register is `exact` (a value a verifier compares with: predicted from the artifacts, endorsed
 * by the platform's vendor, or captured from a trusted canary — `basis`), `zero` (expected never
 * extended), or `platform-defined` (set by firmware or the cloud, not by the image: we report why
 * instead of guessing). A platform-defined register the platform signs is not pinned: a verifier
 * refuses it unless it is waived by name with a reason (`waived`), which every output shows.
 */
import type { Encoder } from "cbor-x";
import { HashAlg } from "./bytes";
import { stableJson } from "../lock/files";
import { TdxError } from "../errors";

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
  /** Exact registers: where the value comes from (default "predicted": computed from the artifacts). */
  basis?: PinBasis;
  /** Platform-defined registers: accepted unchecked for this reason (shown as WAIVED everywhere). */
  waived?: string;
  events: LedgerEvent[];
}

/** How an exact value is known: computed here, signed by the platform's vendor, or read from a trusted canary boot. */
export type PinBasis = "predicted" | "endorsed" | "captured";

/** How a register is pinned, in words every output uses (CLI table, JSON verdict, Pulumi outputs, PR comment). */
export function pinOf(r: Pick<RegisterValue, "status" | "basis" | "waived"> & Partial<RegisterValue>): PinBasis | "zero" | "waived" | "unpinned" {
  if (r.status === "zero") return "zero";
  if (r.status === "exact") return r.basis ?? "predicted";
  return r.waived !== undefined ? "waived" : "unpinned";
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
  /**
   * The measurement envelope: other host shapes (QEMU versions, memory sizes, firmware builds)
   * the deployment may run on, each a label and the registers that differ from `registers` on it.
   * A verifier accepts the base combination or any one listed here, and says which matched.
   */
  alternatives?: Alternative[];
}

export interface Alternative { label: string; registers: Record<string, RegisterValue> }

export const MAX_ALTERNATIVES = 16;

/** What a host shape may change: the firmware (MRTD) and the TD HOB, ACPI tables and boot variables (RTMR0). */
export const HOST_SHAPE_REGISTERS: ReadonlySet<string> = new Set(["MRTD", "RTMR0"]);

/**
 * `base` with `others` as its envelope (base labelled `baseLabel`): each other measurement
 * contributes the registers whose value or pin differs from the base; one that differs nowhere
 * adds nothing (it is the same combination).
 */
export function withAlternatives(base: Measurements, baseLabel: string, others: ReadonlyArray<{ label: string; m: Measurements }>): Measurements {
  if (others.length + 1 > MAX_ALTERNATIVES) throw new TdxError("E_VALIDATION", `a measurement envelope holds at most ${MAX_ALTERNATIVES} shapes, not ${others.length + 1}`, { hint: "Split the fleet by host shape into stacks." });
  const labels = [baseLabel, ...others.map((o) => o.label)];
  if (new Set(labels).size !== labels.length || labels.some((l) => !/^[A-Za-z0-9._:@+-]{1,100}$/.test(l))) throw new TdxError("E_VALIDATION", `shape labels must be distinct names (letters, digits, . _ : @ + -): ${labels.join(", ").slice(0, 200)}`);
  const alternatives: Alternative[] = [];
  for (const o of others) {
    if (o.m.backend !== base.backend) throw new TdxError("E_VALIDATION", `shape ${o.label} is a ${o.m.backend} measurement, the base is ${base.backend}`);
    const differing = Object.entries(o.m.registers).filter(([n, r]) => {
      const b = base.registers[n];
      return !b || b.value !== r.value || pinOf(b) !== pinOf(r);
    });
    // An envelope is about the host (firmware, VM shape), never about the image: another image is another measurement.
    const image = differing.map(([n]) => n).filter((n) => !HOST_SHAPE_REGISTERS.has(n));
    if (image.length) throw new TdxError("E_VALIDATION", `shape ${o.label} differs from ${baseLabel} in ${image.join(", ")}, which the image determines: an envelope varies only the host (${[...HOST_SHAPE_REGISTERS].join(", ")})`, { hint: "Measure the same image for each host shape; roll out another image as its own measurement." });
    if (differing.length) alternatives.push({ label: o.label, registers: Object.fromEntries(differing) });
  }
  return { ...base, inputs: { ...base.inputs, shape: baseLabel }, ...(alternatives.length ? { alternatives } : {}) };
}

/** Every combination a verifier accepts: the base (label inputs.shape, or "base") and each alternative applied to it. */
export function combinations(m: Measurements): Array<{ label: string; m: Measurements }> {
  const { alternatives, ...base } = m;
  return [
    { label: typeof m.inputs.shape === "string" ? m.inputs.shape : "base", m: base },
    ...(alternatives ?? []).map((a) => ({ label: a.label, m: { ...base, registers: { ...base.registers, ...a.registers } } })),
  ];
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
    if (ra?.value === rb?.value && ra?.status === rb?.status && ra?.waived === rb?.waived && (ra?.basis ?? "predicted") === (rb?.basis ?? "predicted")) continue;
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
    if (ra?.waived !== rb?.waived) changes.push(rb?.waived !== undefined ? `${name}: now WAIVED (${rb.waived})` : `${name}: no longer waived${rb ? ` (${pinOf(rb)})` : ""}`);
    else if ((ra?.basis ?? "predicted") !== (rb?.basis ?? "predicted") && ra?.status === "exact" && rb?.status === "exact") changes.push(`${name}: now ${pinOf(rb)} (was ${pinOf(ra)})`);
    if (!changes.length) changes.push(`${name}: ${rb?.status === "platform-defined" || ra?.status === "platform-defined" ? "platform-defined value changed" : "value changed"}`);
    else if (rootChange && ra?.status === "exact" && rb?.status === "exact") changes.unshift(`${name}: ${rootChange}`);
    out.push({ register: name, old: ra?.value ?? null, new: rb?.value ?? null, changes: pkgs ? changes.map((c) => withPackageCauses(c, pkgs)) : changes });
  }
  // The envelope: another host shape a verifier accepts is as much a change as another value.
  const alts = (m: Measurements) => new Map((m.alternatives ?? []).map((x) => [x.label, x.registers]));
  const [aa, ab] = [alts(a), alts(b)];
  for (const label of [...new Set([...aa.keys(), ...ab.keys()])].sort()) {
    const [x, y] = [aa.get(label), ab.get(label)];
    for (const reg of [...new Set([...Object.keys(x ?? {}), ...Object.keys(y ?? {})])].sort(registerOrder)) {
      const [rx, ry] = [x?.[reg], y?.[reg]];
      if (rx?.value === ry?.value && (rx ? pinOf(rx) : null) === (ry ? pinOf(ry) : null)) continue;
      out.push({ register: `${reg}@${label}`, old: rx?.value ?? null, new: ry?.value ?? null, changes: [!rx ? `${reg}: host shape ${label} added to the envelope` : !ry ? `${reg}: host shape ${label} removed from the envelope` : `${reg}: host shape ${label}'s value changed`] });
    }
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

/**
 * Markdown for a pull request: one row per changed register and the events behind it; with the
 * new measurement `m`, also every register left unpinned or waived (a reviewer must see those on
 * every change, not only when they change).
 */
export function diffToMarkdown(diffs: RegisterDiff[], title = "Measurement changes", m?: Measurements): string {
  const tail = m ? unpinnedMarkdown(m) : [];
  if (!diffs.length) return [`### ${title}`, "", "No register changes.", ...tail, ""].join("\n");
  const rows = diffs.map((d) => `| ${d.register} | ${short(d.old)} | ${short(d.new)} | ${d.changes.map((c) => c.replace(/\|/g, "\\|")).join("<br>")} |`);
  return [`### ${title}`, "", "| register | old | new | why |", "|---|---|---|---|", ...rows, ...tail, ""].join("\n");
}

function unpinnedMarkdown(m: Measurements): string[] {
  const esc = (s: string) => s.replace(/\|/g, "\\|");
  const rows = Object.entries(m.registers).sort(([a], [b]) => registerOrder(a, b)).flatMap(([n, r]) => {
    const pin = pinOf(r);
    if (pin === "waived") return [`| ${n} | WAIVED | ${esc(r.waived ?? "")} |`];
    if (pin === "unpinned") return [`| ${n} | NOT PINNED: a verifier refuses it | ${esc(r.why ?? "")} |`];
    return [];
  });
  return rows.length ? ["", "Registers without an expected value:", "", "| register | pinned | reason |", "|---|---|---|", ...rows] : [];
}

const REGISTER_NAME = /^(MRTD|RTMR[0-3]|PCR([0-9]|1[0-9]|2[0-3]))$/;

/**
 * Waivers as given by a user (`REG:reason` strings from a command line, or a {REG: reason} map):
 * validated names, non-empty single-line reasons of at most 300 characters.
 */
export function parseWaivers(given: readonly string[] | Readonly<Record<string, string>> | undefined, where = "waive"): Record<string, string> {
  const pairs: [string, string][] = Array.isArray(given)
    ? (given as readonly string[]).map((g) => {
      const i = g.indexOf(":");
      return i < 0 ? [g, ""] : [g.slice(0, i).trim(), g.slice(i + 1).trim().replace(/^"(.*)"$/s, "$1")];
    })
    : Object.entries(given ?? {});
  const out: Record<string, string> = {};
  for (const [name, reason] of pairs) {
    if (!REGISTER_NAME.test(name)) throw new TdxError("E_VALIDATION", `${where}: ${JSON.stringify(name.slice(0, 20))} is not a register name`, { hint: 'Name the register and the reason: RTMR0:"host shape not captured yet" (MRTD, RTMR0–3, PCR0–23).' });
    if (!reason || reason.length > 300 || [...reason].some((ch) => ch.charCodeAt(0) < 0x20 || ch.charCodeAt(0) === 0x7f)) throw new TdxError("E_VALIDATION", `${where}: waiving ${name} needs a reason (one line, at most 300 characters)`, { hint: `Every output shows it: ${name}:"why this register need not be checked".` });
    if (out[name] !== undefined) throw new TdxError("E_VALIDATION", `${where}: ${name} is waived twice`, { hint: "Give one reason per register." });
    out[name] = reason;
  }
  return out;
}

/**
 * The measurement with `waive`'s registers waived (TdxMeasurement's `waive`, `tdxvm measure --waive`).
 * Only platform-defined registers can be waived here: an exact register has a value to compare,
 * and a verifier that must accept another one waives it itself (attest --waive).
 */
export function waiveRegisters(m: Measurements, waive: Readonly<Record<string, string>>): Measurements {
  const registers = { ...m.registers };
  for (const [name, reason] of Object.entries(waive)) {
    const r = registers[name];
    if (!r) throw new TdxError("E_VALIDATION", `cannot waive ${name}: the ${m.backend} backend has no such register (it has ${Object.keys(m.registers).join(", ")})`, { hint: "Waive only registers the platform reports." });
    if (r.status !== "platform-defined") throw new TdxError("E_VALIDATION", `cannot waive ${name}: it is ${pinOf(r)} (${r.value?.slice(0, 16)}…), a value a verifier compares with`, { hint: "A verifier that must accept another value waives it when attesting (tdxvm attest --waive, TdxDeployment attest.waive)." });
    registers[name] = { ...r, waived: reason };
  }
  return { ...m, registers };
}
