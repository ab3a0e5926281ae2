/**
 * Dynamic provider behind TdxMeasurement: the registers a platform will report for a baked image.
 *
 * Register values are computed in check and returned as checked inputs, so `pulumi preview`
 * on a pull request lists every register that changes, old → new (the CLI draws its diff from
 * inputs; docs/design.md §5). An unchanged image reuses the previous values without reading a byte.
 * Measuring is pure: update recomputes in place, delete has nothing to remove.
 */
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import { z } from "zod";
import { TdxError } from "../errors";
import { digestOf } from "../recipe/digest";
import { measureBake, firmwarePath, readMeasureInput, readTdShape } from "../measure/api";
import type { TdShape, TdShapeSpec } from "../measure/rtmr0";
import { PackagePins } from "./image";
import { defaultCacheDir } from "../pipeline";
import { diffMeasurements, diffToMarkdown, Measurements, parseWaivers, RegisterValue, waiveRegisters, withAlternatives } from "../measure/ledger";
import { isUnknown, declared, failureOf, guarded, guardedSync, log, loadPath, CheckFailure, omit, pick as pickKeys, checkStart, requireInputs, parseState } from "./common";
import type { ArtifactOut } from "./image";
import { ROOTFS_MODES } from "../recipe/schema";

export const MEASUREMENT_STATE_VERSION = 1;
/** Bump when a formula changes: every stack then recomputes (and shows the new values in preview). */
export const MEASURE_ENGINE_VERSION = 4;

const Artifact = z.object({ path: z.string(), sha256: z.string().regex(/^[0-9a-f]{64}$/), size: z.number() });

export const MeasurementArgs = z.object({
  image: z.object({
    bakeKey: z.string().nullable().optional(),
    artifacts: z.record(z.string(), Artifact),
    systemdStub: z.string().nullable().optional(),
    profile: z.string().optional(),
    rootfs: z.enum(ROOTFS_MODES).optional(),
    packages: PackagePins.optional(),
  }).loose(),
  backend: z.enum(["rtmr", "azure", "gcp"]),
  firmware: z.union([z.string().min(1), z.object({ src: z.string().min(1), integrity: z.string().min(1) })]).optional(),
  pageOrder: z.enum(["single-pass", "two-pass"]).optional(),
  /** A CCEL captured on the target host and VM shape (path): makes RTMR0 exact. */
  capturedCcel: z.string().min(1).optional(),
  /** rtmr: the QEMU TD shape RTMR0 is predicted for (a JSON file's path, or the spec: memoryMiB, acpi, boot). */
  tdShape: z.union([z.string().min(1), z.object({}).loose()]).optional(),
  /**
   * The measurement envelope: further host shapes the VMs may run on (another QEMU TD shape,
   * another Google firmware), each under a label; the base is `shapeLabel` (default "base").
   */
  shapes: z.array(z.object({
    label: z.string().regex(/^[A-Za-z0-9._:@+-]{1,100}$/),
    tdShape: z.union([z.string().min(1), z.object({}).loose()]).optional(),
    endorsement: z.string().min(1).optional(),
  }).strict()).max(15).optional(),
  shapeLabel: z.string().regex(/^[A-Za-z0-9._:@+-]{1,100}$/).optional(),
  /** gcp: path of Google's launch endorsement (.binarypb) of the firmware: pins MRTD ("endorsed"). */
  endorsement: z.string().min(1).optional(),
  /** Platform-defined registers accepted unchecked, by name, each with its reason (shown as WAIVED everywhere). */
  waive: z.record(z.string(), z.string()).optional(),
  /** The VM shape the values assume (recorded; RTMR0 depends on it). */
  vm: z.object({ memoryMiB: z.number().int().positive().optional(), cpus: z.number().int().positive().optional() }).optional(),
  cacheDir: z.string().optional(),
}).loose();
export type MeasurementArgsT = z.infer<typeof MeasurementArgs>;

export interface LedgerRow { type: string; description: string; origin: string; digest: string; pcr?: number; log?: "firmware" | "userspace" }

/** A ledger row as state and inputs carry it (typed wherever present). */
const LedgerRowSchema = z.object({ type: z.string(), description: z.string(), origin: z.string(), digest: z.string(), pcr: z.number().optional(), log: z.enum(["firmware", "userspace"]).optional() }).loose();
const LedgerSchema = z.record(z.string(), z.array(LedgerRowSchema));

/**
 * TdxMeasurement's outputs as a verifier takes them (TdxDeployment passes them on: a VM's
 * attestation, a deployment's allow-list, a promotion).
 */
export const ExpectedMeasurementSchema = z.object({
  backend: z.enum(["rtmr", "azure", "gcp"]),
  registers: z.record(z.string(), z.string().nullable()),
  status: z.record(z.string(), z.string()),
  ledger: LedgerSchema,
  assumptions: z.record(z.string(), z.union([z.string(), z.number(), z.null()])).default({}),
  alternatives: z.array(z.object({ label: z.string(), registers: z.record(z.string(), z.string().nullable()), status: z.record(z.string(), z.string()), ledger: LedgerSchema })).max(16).optional(),
});

export interface MeasurementComputed {
  stateVersion: number;
  measurementKey: string;
  /** Register → hex value (null: platform-defined, see `status`). */
  registers: Record<string, string | null>;
  /**
   * Register → how it is pinned: "exact" (predicted), "captured", "endorsed", "zero",
   * "WAIVED (<reason>)", or "platform-defined: <why>" (not pinned: a verifier refuses it).
   */
  status: Record<string, string>;
  /** Register → the ordered events behind its value. */
  ledger: Record<string, LedgerRow[]>;
  /** What the values assume (stub version, firmware, page order, VM shape). */
  assumptions: Record<string, string | number | null>;
  /** Markdown table of the registers that changed against the previous state (with the packages behind them). */
  diffMarkdown: string;
  /** The packages the measured image was baked from (pins), for the next diff. */
  packages?: { image: string[]; initrd: string[] };
  /** The envelope: per further host shape, the registers that differ there (values, pins, ledgers); empty without one. */
  alternatives: AlternativeComputed[];
}

export interface AlternativeComputed { label: string; registers: Record<string, string | null>; status: Record<string, string>; ledger: Record<string, LedgerRow[]> }

/** The computed fields as state holds them (olds, checked inputs): typed wherever present. */
export const MeasurementState = z.object({
  stateVersion: z.number().optional(),
  measurementKey: z.string().optional(),
  registers: z.record(z.string(), z.string().nullable()).optional(),
  status: z.record(z.string(), z.string()).optional(),
  ledger: LedgerSchema.optional(),
  assumptions: z.record(z.string(), z.union([z.string(), z.number(), z.null()])).optional(),
  diffMarkdown: z.string().optional(),
  packages: PackagePins.optional(),
  alternatives: z.array(z.object({ label: z.string(), registers: z.record(z.string(), z.string().nullable()), status: z.record(z.string(), z.string()), ledger: LedgerSchema }).loose()).optional(),
  backend: z.string().optional(),
}).loose();
const state = (o: unknown) => parseState(MeasurementState, o, "TdxMeasurement") as Partial<MeasurementComputed> & Record<string, unknown>;

const COMPUTED = ["stateVersion", "measurementKey", "registers", "status", "ledger", "assumptions", "diffMarkdown", "packages", "alternatives"];
const userInputs = (n: Record<string, unknown>) => omit(n, COMPUTED);

function need(a: MeasurementArgsT, key: string): ArtifactOut {
  const x = a.image.artifacts[key];
  if (!x) throw new TdxError("E_MEASUREMENT", `the image has no ${key} artifact`, { hint: "Measure a TdxImage's outputs (its artifacts include uki.efi and disk.raw)." });
  return x;
}

/**
 * Digests of files a measurement key covers (the firmware, a captured CCEL), remembered per process
 * by the file's identity, size and times: a preview checks every measurement of a stack in one
 * provider host, and each rtmr measurement read and hashed the same 4 MiB OVMF again (~30 ms).
 * A file written since has another ctime (or inode); one written between the stat and the read is
 * remembered under the older stamp, so the next call hashes it again. The kernel stamps times from
 * a coarse clock (a few ms), so two writes close together may share one: a file changed less than
 * RECENT_NS ago is not remembered (git's "racily clean" entries, the same problem).
 */
const fileDigests = new Map<string, { stamp: string; sha256: string }>();
const RECENT_NS = 2_000_000_000n;

export async function fileSha256(p: string, what: string): Promise<string> {
  const st = await fs.stat(p, { bigint: true }).catch(() => undefined);
  const stamp = st?.isFile() && BigInt(Date.now()) * 1_000_000n - st.ctimeNs > RECENT_NS ? `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}` : undefined;
  const known = fileDigests.get(p);
  if (stamp && known?.stamp === stamp) return known.sha256;
  const sha256 = createHash("sha256").update(await readMeasureInput(p, what)).digest("hex");
  if (stamp) fileDigests.set(p, { stamp, sha256 });
  return sha256;
}

export async function measurementKey(a: MeasurementArgsT): Promise<string> {
  // The firmware actually used — the default one too: an OVMF update must show as a change.
  const fwFile = firmwarePath({ backend: a.backend, firmware: typeof a.firmware === "string" ? loadPath(a.firmware) : a.firmware }, a.cacheDir ? loadPath(a.cacheDir) : defaultCacheDir());
  const fw = typeof a.firmware === "object" ? a.firmware : fwFile ? { sha256: await fileSha256(fwFile, "firmware") } : a.firmware ? { missing: a.firmware } : null;
  return digestOf({
    engine: MEASURE_ENGINE_VERSION, backend: a.backend, uki: need(a, "uki.efi").sha256, disk: need(a, "disk.raw").sha256,
    stub: a.image.systemdStub ?? null, rootfs: a.image.rootfs ?? null, firmware: fw, pageOrder: a.pageOrder ?? null,
    ccel: a.capturedCcel ? await fileSha256(loadPath(a.capturedCcel), "captured CCEL") : null, vm: a.vm ?? null,
    waive: a.waive ? parseWaivers(a.waive, "TdxMeasurement waive") : null,
    endorsement: a.endorsement ? await fileSha256(loadPath(a.endorsement), "launch endorsement") : null,
    tdShape: a.tdShape ? shapeKey(await readTdShape(typeof a.tdShape === "string" ? loadPath(a.tdShape) : (a.tdShape as unknown as TdShapeSpec))) : null,
    shapes: a.shapes ? await Promise.all(a.shapes.map(async (x) => ({
      label: x.label,
      tdShape: x.tdShape ? shapeKey(await readTdShape(typeof x.tdShape === "string" ? loadPath(x.tdShape) : (x.tdShape as unknown as TdShapeSpec))) : null,
      endorsement: x.endorsement ? await fileSha256(loadPath(x.endorsement), "launch endorsement") : null,
    }))) : null,
    shapeLabel: a.shapeLabel ?? null,
  });
}

/** The VM's memory in whole GiB (endorsement entries are per GiB), when declared. */
const ramGib = (a: MeasurementArgsT): number | undefined => (a.vm?.memoryMiB !== undefined && a.vm.memoryMiB % 1024 === 0 ? a.vm.memoryMiB / 1024 : undefined);

/** What of a TD shape the registers depend on: memory, layout and each blob's digest. */
function shapeKey(t: TdShape): string {
  const d = (b: Buffer | string) => (typeof b === "string" ? b : createHash("sha384").update(b).digest("hex"));
  return JSON.stringify({ m: t.memoryMiB, l: t.ovmfLayout ?? null, a: [d(t.acpi.tableLoader), d(t.acpi.rsdp), d(t.acpi.tables)], b: t.boot === "direct-kernel" ? t.boot : t.boot.map((v) => [v.name, d(v.data)]) });
}

function registersOut(regs: Record<string, RegisterValue>): Pick<MeasurementComputed, "registers" | "status" | "ledger"> {
  const registers: Record<string, string | null> = {};
  const status: Record<string, string> = {};
  const ledger: Record<string, LedgerRow[]> = {};
  for (const [name, r] of Object.entries(regs)) {
    registers[name] = r.value;
    status[name] = r.status === "platform-defined" ? (r.waived !== undefined ? `WAIVED (${r.waived})` : `platform-defined: ${r.why ?? ""}`) : r.status === "exact" && r.basis && r.basis !== "predicted" ? r.basis : r.status;
    ledger[name] = r.events.map((e) => ({ type: e.type, description: e.description, origin: e.origin, digest: e.digest, ...(e.pcr !== undefined ? { pcr: e.pcr } : {}), ...(e.log ? { log: e.log } : {}) }));
  }
  return { registers, status, ledger };
}

function registersIn(c: Partial<Pick<MeasurementComputed, "registers" | "status" | "ledger">>): Record<string, RegisterValue> {
  const registers: Record<string, RegisterValue> = {};
  for (const [name, value] of Object.entries(c.registers ?? {})) {
    // A register state names no status for: exact only when it has a value (else it pins nothing).
    const st = c.status?.[name] ?? (value === null ? "platform-defined: no status in state" : "exact");
    const waived = /^WAIVED \((.*)\)$/s.exec(st)?.[1];
    const basis = st === "captured" || st === "endorsed" ? st : undefined;
    registers[name] = {
      alg: name.startsWith("PCR") ? "sha256" : "sha384", value,
      status: st.startsWith("platform-defined") || waived !== undefined ? "platform-defined" : basis ? "exact" : (st as RegisterValue["status"]),
      ...(waived !== undefined ? { waived } : {}), ...(basis ? { basis } : {}),
      events: (c.ledger?.[name] ?? []).map((e) => ({ ...e })),
    };
  }
  return registers;
}

export function toComputed(m: Measurements, key: string, previous?: Measurements): MeasurementComputed {
  const { registers, status, ledger } = registersOut(m.registers);
  return {
    stateVersion: MEASUREMENT_STATE_VERSION, measurementKey: key, registers, status, ledger, assumptions: { backend: m.backend, ...m.inputs },
    diffMarkdown: previous ? diffToMarkdown(diffMeasurements(previous, m), `Measurement changes (${m.backend})`, m) : diffToMarkdown([], `Measurement changes (${m.backend})`, m).replace("No register changes.", "First measurement: no previous state."),
    ...(m.packages ? { packages: m.packages } : {}),
    // Always present (empty without an envelope): an output a stack's state lacks reads as unknown in a preview.
    alternatives: (m.alternatives ?? []).map((x) => ({ label: x.label, ...registersOut(x.registers) })),
  };
}

/** Rebuild the Measurements object from stored outputs (to diff against it, or to verify a VM with it). */
export function fromComputed(c: Partial<MeasurementComputed>, backend: string): Measurements | undefined {
  if (!c.registers || typeof c.registers !== "object") return undefined;
  const registers = registersIn(c);
  const { backend: _b, ...inputs } = (c.assumptions ?? {}) as Record<string, string | number | null>;
  void _b;
  const alternatives = (c.alternatives ?? []).map((x) => ({ label: x.label, registers: registersIn(x) }));
  return { measurementsVersion: 1, backend: backend as Measurements["backend"], registers, inputs, ...(c.packages ? { packages: c.packages } : {}), ...(alternatives.length ? { alternatives } : {}) };
}

async function compute(a: MeasurementArgsT, previous: Partial<MeasurementComputed> & Record<string, unknown>): Promise<MeasurementComputed> {
  const key = await measurementKey(a);
  const t0 = Date.now();
  const uki = need(a, "uki.efi");
  const disk = need(a, "disk.raw");
  const bakeInput = { profile: a.image.profile ?? "default", systemdStub: a.image.systemdStub ?? null, rootfs: a.image.rootfs, artifacts: [
    { target: "uki" as const, kind: "efi" as const, path: loadPath(uki.path), sha256: uki.sha256, size: uki.size },
    { target: "disk" as const, kind: "raw" as const, path: loadPath(disk.path), sha256: disk.sha256, size: disk.size },
  ] };
  const measureOpts = { backend: a.backend, firmware: typeof a.firmware === "string" ? loadPath(a.firmware) : a.firmware, pageOrder: a.pageOrder, capturedCcel: a.capturedCcel ? loadPath(a.capturedCcel) : undefined, cacheDir: a.cacheDir ? loadPath(a.cacheDir) : undefined };
  let m = await measureBake(bakeInput, { ...measureOpts, tdShape: typeof a.tdShape === "string" ? loadPath(a.tdShape) : (a.tdShape as unknown as TdShapeSpec | undefined) });
  if (a.endorsement) {
    const { withEndorsedMrtd } = await import("../attest/gcpEndorsement");
    m = withEndorsedMrtd(m, await readMeasureInput(loadPath(a.endorsement), "launch endorsement"), { ramGib: ramGib(a) });
  }
  if (a.shapes?.length) {
    const { withEndorsedMrtd } = await import("../attest/gcpEndorsement");
    const others: { label: string; m: Measurements }[] = [];
    for (const x of a.shapes) {
      let o = x.tdShape
        ? await measureBake(bakeInput, { ...measureOpts, tdShape: typeof x.tdShape === "string" ? loadPath(x.tdShape) : (x.tdShape as unknown as TdShapeSpec) })
        : m;
      if (x.endorsement) o = withEndorsedMrtd(o, await readMeasureInput(loadPath(x.endorsement), "launch endorsement"), { ramGib: ramGib(a) });
      others.push({ label: x.label, m: o });
    }
    m = withAlternatives(m, a.shapeLabel ?? "base", others);
  }
  if (a.waive) m = waiveRegisters(m, parseWaivers(a.waive, "TdxMeasurement waive"));
  if (a.vm) Object.assign(m.inputs, { vmMemoryMiB: a.vm.memoryMiB ?? null, vmCpus: a.vm.cpus ?? null });
  if (a.image.packages) m.packages = a.image.packages;
  log("TdxMeasurement", `${a.backend}: measured in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const prev = previous.backend === a.backend ? fromComputed(previous, a.backend) : undefined;
  return toComputed(m, key, prev);
}

function pick(o: Record<string, unknown>): MeasurementComputed {
  return pickKeys(o, COMPUTED) as unknown as MeasurementComputed;
}

export const measurementProvider = {
  async check(olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ inputs: Record<string, unknown>; failures?: CheckFailure[] }> {
    // Unknown image outputs (bakeOnPreview: false, or a new image) pass through: the registers will be recomputed.
    const start = checkStart(MeasurementArgs, news, COMPUTED);
    if (start.done) return start.done;
    const { inputs, value } = start;
    try {
      const old = state(olds);
      const key = await measurementKey(value);
      if (old.measurementKey === key && old.registers) return { inputs: { ...inputs, ...pick(old) } };
      return { inputs: { ...inputs, ...(await compute(value, old)) } };
    } catch (e) {
      return { inputs, failures: [failureOf(e, "image")] };
    }
  },

  async diff(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ changes: boolean; replaces: string[]; deleteBeforeReplace: boolean }> {
    const n = declared(news);
    const o = guardedSync(() => state(olds));
    if (isUnknown(userInputs(n)) || !n.measurementKey) return { changes: true, replaces: [], deleteBeforeReplace: false };
    const changes = o.measurementKey !== n.measurementKey || JSON.stringify(o.registers) !== JSON.stringify(n.registers) || JSON.stringify(o.status) !== JSON.stringify(n.status);
    return { changes, replaces: [], deleteBeforeReplace: false };
  },

  async create(inputs: Record<string, unknown>): Promise<{ id: string; outs: Record<string, unknown> }> {
    return guarded(async () => {
      const out = await ensure(inputs, {});
      return { id: out.measurementKey.slice("sha256:".length, "sha256:".length + 32), outs: { ...userInputs(declared(inputs)), ...out } };
    });
  },

  async update(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ outs: Record<string, unknown> }> {
    return guarded(async () => ({ outs: { ...userInputs(declared(news)), ...(await ensure(news, olds)) } }));
  },

  async read(id: string, props: Record<string, unknown>): Promise<{ id: string; props: Record<string, unknown> }> {
    return { id, props: declared(props) };
  },

  async delete(): Promise<void> {
    // A measurement is a computed value: nothing exists outside the state.
  },
};

async function ensure(inputs: Record<string, unknown>, olds: Record<string, unknown>): Promise<MeasurementComputed> {
  const have = state(inputs);
  if (have.measurementKey && have.registers) return pick(have);
  return compute(requireInputs(MeasurementArgs, declared(userInputs(inputs))), state(olds));
}
