/**
 * Dynamic provider behind TdxDeployment target "qemu": a real local VM (provider/deploy/qemu.ts).
 *
 * - create starts QEMU (+ swtpm) detached, waits for readiness (serial pattern and/or HTTP on a
 *   forwarded port) with a timeout, and stops everything again if the VM never becomes ready.
 * - A TD when the host can run one (kvm_intel.tdx, working KVM, QEMU ≥ 10.1); otherwise an
 *   emulated dev VM, with a warning output saying it is not a TD. KVM only when the probe
 *   boots firmware under it, else TCG.
 * - Any change of what the VM is (disk, shape, ports) replaces it; Pulumi creates the
 *   new VM before it deletes the old one, unless host ports are pinned (then delete first).
 * - read: a VM whose QEMU is gone shows as drift (running: false) and the next up replaces it.
 * - delete: TERM, then KILL; the PID namespace takes swtpm with it; the state directory goes.
 * - Secrets do not pass through here: a VM gets them from the deployment's attestation resource
 *   (./attestation.ts) after its agent proved what it runs — never through the launcher.
 * - admission (a fleet's attesting rollout): create counts only when the new VM's agent proves the
 *   expected measurement. A refused VM is stopped and removed in the same step, so the create
 *   fails and leaves nothing: Pulumi keeps the VM it was to replace as it was (not even scheduled
 *   for deletion), later waves depend on this one and are not touched, and the next `up` after a
 *   fix creates the replacement again — the rollout resumes at this wave. No human cleans up.
 */
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { z } from "zod";
import { TdxError } from "../errors";
import { defaultCacheDir } from "../pipeline";
import { ensureToolsTree } from "../bake/toolsTree";
import { DEFAULT_DEBIAN } from "../lock";
import { startVm, waitReady, stopVm, vmRunning, newStateDir, sweepStale, markReady, VmInfo, VM_STATE_VERSION } from "../deploy/qemu";
import { probeKvm, tdxSupport, parseQemuVersion } from "../deploy/host";
import { ExpectedMeasurementSchema } from "./measurement";
import { AttestationArgs, verifyAgent } from "./attestation";
import { isUnknown, declared, failureOf, guarded, guardedSync, log, loadPath, storePath, withTimeout, CheckFailure, omit, pick, checkStart, requireInputs, parseState } from "./common";

const Port = z.object({ guest: z.number().int().min(1).max(65535), host: z.number().int().min(1).max(65535).optional(), bind: z.string().optional() }).strict();

export const QemuVmArgs = z.object({
  image: z.object({
    bakeKey: z.string().nullable().optional(),
    artifacts: z.record(z.string(), z.object({ path: z.string(), sha256: z.string(), size: z.number() })),
  }).loose(),
  memoryMiB: z.number().int().min(256).default(2048),
  cpus: z.number().int().min(1).max(64).default(2),
  ports: z.array(Port).default([]),
  readiness: z.object({
    serial: z.string().optional(),
    http: z.array(z.object({ guestPort: z.number().int(), path: z.string().optional() })).optional(),
    timeoutSeconds: z.number().positive().optional(),
  }).default({}),
  accel: z.enum(["auto", "kvm", "tcg"]).default("auto"),
  tdx: z.enum(["auto", "off", "require"]).default("auto"),
  /** Expected measurements, passed through to the outputs for verifiers. */
  expected: z.record(z.string(), z.string().nullable()).optional(),
  stateRoot: z.string().optional(),
  cacheDir: z.string().optional(),
  /** Admit the new VM only when its agent on `guestPort` proves `expected` (see the header). */
  admission: z.object({
    /** 0-based wave of a rollout, and how many there are (for the messages). */
    wave: z.number().int().min(0),
    waves: z.number().int().min(1),
    guestPort: z.number().int().min(1).max(65535),
    expected: ExpectedMeasurementSchema,
    trust: AttestationArgs.shape.trust,
    waive: z.record(z.string(), z.string()).optional(),
    timeoutSeconds: z.number().positive().default(300),
    intervalSeconds: z.number().positive().default(5),
  }).optional(),
}).loose();
export type QemuVmArgsT = z.infer<typeof QemuVmArgs>;

/** The VM's outputs as state holds them (olds, props): typed wherever present. */
export const QemuVmState = z.object({
  stateVersion: z.number().optional(),
  vmId: z.string().optional(),
  pid: z.number().int().optional(),
  startTime: z.number().optional(),
  bootId: z.string().optional(),
  stateDir: z.string().optional(),
  stateRoot: z.string().optional(),
  cacheDir: z.string().optional(),
  forwards: z.array(z.object({ guest: z.number().int(), host: z.number().int(), bind: z.string() }).loose()).optional(),
  diskSha256: z.string().optional(),
  running: z.boolean().optional(),
}).loose();
const state = (o: unknown) => parseState(QemuVmState, o, "TdxDeployment (qemu)");

const OUT_KEYS = ["stateVersion", "vmId", "pid", "startTime", "bootId", "stateDir", "serialLog", "forwards", "accelUsed", "isTd", "warning", "running", "readySeconds", "qemuArgs", "diskSha256"];

function disk(a: QemuVmArgsT): { path: string; sha256: string } {
  const d = a.image.artifacts["qemu.raw"] ?? a.image.artifacts["disk.raw"];
  if (!d) throw new TdxError("E_DEPLOYMENT", "the image has no raw disk for the qemu target", { hint: 'Add "qemu" to the recipe\'s outputTargets (it is the default).', details: { property: "image" } });
  return d;
}

export const qemuVmProvider = {
  async check(_olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ inputs: Record<string, unknown>; failures?: CheckFailure[] }> {
    const start = checkStart(QemuVmArgs, news, OUT_KEYS);
    if (start.done) return start.done;
    const { inputs, value } = start;
    try {
      disk(value);
      const pinned = value.ports.filter((p) => p.host !== undefined).map((p) => p.host);
      if (new Set(pinned).size !== pinned.length) throw new TdxError("E_VALIDATION", "two port forwards use the same host port", { hint: "Give each forward its own host port, or leave host unset to pick a free one.", details: { property: "ports" } });
    } catch (e) {
      return { inputs, failures: [failureOf(e)] };
    }
    return { inputs };
  },

  async diff(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ changes: boolean; replaces: string[]; deleteBeforeReplace: boolean }> {
    const n = declared(news);
    const replaces: string[] = [];
    const same = (a: unknown, b: unknown) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
    const parsed = QemuVmArgs.safeParse(n);
    if (isUnknown(n)) {
      // Preview with values not known yet: a replacement only if something that replaces is unknown.
      const unknown = ["image", "memoryMiB", "cpus", "ports", "accel", "tdx"].filter((k) => isUnknown(n[k]));
      return { changes: true, replaces: unknown, deleteBeforeReplace: false };
    }
    if (!parsed.success) return { changes: true, replaces: ["image"], deleteBeforeReplace: false };
    const a = parsed.data;
    const old = guardedSync(() => state(olds));
    if (old.running === false) replaces.push("running");
    if (old.diskSha256 !== guardedSync(() => disk(a)).sha256) replaces.push("image");
    const before = QemuVmArgs.safeParse(declared(olds)); // defaults applied, like the new side
    const o = before.success ? before.data : undefined;
    for (const k of ["memoryMiB", "cpus", "accel", "tdx"] as const) if (!same(o?.[k], a[k])) replaces.push(k);
    const oldPorts = old.forwards ?? [];
    const portsDiffer = a.ports.length !== oldPorts.length || a.ports.some((p, i) => p.guest !== oldPorts[i]?.guest || (p.host !== undefined && p.host !== oldPorts[i]?.host) || (p.bind ?? "127.0.0.1") !== oldPorts[i]?.bind);
    if (portsDiffer) replaces.push("ports");
    // admission is asked at a VM's birth only: a running VM is not re-admitted (its attestation resource re-attests).
    const changes = replaces.length > 0 || !same(o?.readiness, a.readiness) || !same(o?.expected, a.expected) || !same(o?.admission, a.admission);
    // Create-before-delete needs the old VM's host ports free for the new one: pinned ports force delete-first.
    const deleteBeforeReplace = replaces.length > 0 && a.ports.some((p) => p.host !== undefined);
    return { changes, replaces, deleteBeforeReplace };
  },

  async create(inputs: Record<string, unknown>): Promise<{ id: string; outs: Record<string, unknown> }> {
    return guarded(async () => {
      const a = requireInputs(QemuVmArgs, declared(inputs));
      const cacheDir = a.cacheDir ? loadPath(a.cacheDir) : defaultCacheDir();
      const tools = await ensureToolsTree({ cacheDir, mirror: DEFAULT_DEBIAN.mirror });
      const kvm = a.accel === "tcg" ? { usable: false, reason: "accel: tcg requested" } : await probeKvm(tools.root);
      if (a.accel === "kvm" && !kvm.usable) throw new TdxError("E_DEPLOYMENT", `accel "kvm" was requested but KVM cannot run guests here: ${kvm.reason}`, { hint: 'Use accel: "auto" (falls back to TCG) or fix the host\'s KVM.' });
      const support = tdxSupport({ kvm, qemuVersion: parseQemuVersion(`QEMU emulator version ${(tools.versions["qemu-system-x86"] ?? "").replace(/^\d+:/, "")}`) });
      const isTd = a.tdx !== "off" && support.capable;
      if (a.tdx === "require" && !isTd) throw new TdxError("E_DEPLOYMENT", `this host cannot run a TDX guest: ${support.reasons.join("; ")}`, { hint: 'Deploy on a TDX host (Azure/GCP targets, or bare metal with TDX enabled), or set tdx: "auto" to get an emulated dev VM.' });
      const warning = isTd ? null : `not a TD: an emulated dev VM (${kvm.usable ? "KVM" : "TCG"}, OVMF + swtpm) — nothing is confidential. Why no TD: ${support.reasons.join("; ")}`;
      if (warning) log("TdxDeployment", `warning: ${warning}`);
      const root = a.stateRoot ? loadPath(a.stateRoot) : path.join(cacheDir, "vms");
      await fs.mkdir(root, { recursive: true, mode: 0o700 });
      for (const d of await sweepStale(root)) log("TdxDeployment", `removed ${d}, left by an interrupted start`);
      const stateDir = newStateDir(root);
      const d = disk(a);
      log("TdxDeployment", `starting ${isTd ? "TD" : "dev VM"} (${kvm.usable ? "KVM" : "TCG"}, ${a.cpus} vCPU, ${a.memoryMiB} MiB) from ${path.basename(d.path)}`);
      const vm: VmInfo = await startVm({ toolsRoot: tools.root, cacheDir, disk: loadPath(d.path), stateDir, memoryMiB: a.memoryMiB, cpus: a.cpus, accel: kvm.usable ? "kvm" : "tcg", tdx: isTd, ports: a.ports });
      let ready: { seconds: number };
      try {
        const timeoutS = a.readiness.timeoutSeconds ?? 900;
        ready = await withTimeout((timeoutS + 30) * 1000, "VM readiness", () => waitReady(vm, a.readiness, (m) => log("TdxDeployment", m)));
      } catch (e) {
        await stopVm(vm, { graceMs: 2000 });
        throw e;
      }
      log("TdxDeployment", `VM ${vm.vmId} ready after ${ready.seconds.toFixed(0)} s (pid ${vm.pid}; serial log ${vm.serialLog})`);
      // Admitted before it is marked ready: a provider killed mid-admission leaves an unmarked VM
      // whose creator is gone, which the next create's sweep removes (a marked one is a stack's).
      if (a.admission) await admit(vm, a.admission);
      await markReady(vm);
      return { id: vm.vmId, outs: { ...publicInputs(inputs), ...outputsOf(vm, a, { warning, isTd, readySeconds: ready.seconds }) } };
    });
  },

  async update(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ outs: Record<string, unknown> }> {
    // Only readiness/expected changed (everything else replaces): the running VM stays.
    const kept = pick(guardedSync(() => state(olds)), OUT_KEYS);
    return { outs: { ...publicInputs(news), ...kept } };
  },

  async read(id: string, props: Record<string, unknown>): Promise<{ id: string; props: Record<string, unknown> }> {
    const s = guardedSync(() => state(props));
    const running = s.pid !== undefined && s.startTime !== undefined && vmRunning({ pid: s.pid, startTime: s.startTime, bootId: s.bootId });
    return { id, props: { ...declared(props), running } };
  },

  async delete(_id: string, props: Record<string, unknown>): Promise<void> {
    await guarded(async () => {
      const s = state(props);
      const stateDir = s.stateDir ? loadPath(s.stateDir) : undefined;
      // State is untrusted: stopVm touches only a directory tdxvm marked below the VM state root, and only that VM's QEMU.
      const root = s.stateRoot ? loadPath(s.stateRoot) : path.join(s.cacheDir ? loadPath(s.cacheDir) : defaultCacheDir(), "vms");
      const r = await stopVm({ pid: s.pid, startTime: s.startTime, bootId: s.bootId, stateDir }, { root });
      if (!r.owned) log("TdxDeployment", `VM ${_id}: ${stateDir ?? "(no state directory)"} is not a VM state directory tdxvm made below ${root}; left it and any process alone`);
      else log("TdxDeployment", `VM ${_id} stopped${r.killed ? " (SIGKILL after the grace period)" : ""}; state removed`);
    });
  },
};

/**
 * A rollout's admission of a VM this create just started: attest its agent; if refused, stop it
 * (it is provably ours: started in this very call) and fail with the wave and the failed checks.
 */
async function admit(vm: VmInfo, ad: NonNullable<QemuVmArgsT["admission"]>): Promise<void> {
  const fwd = vm.ports.find((p) => p.guest === ad.guestPort);
  const wave = `wave ${ad.wave + 1} of ${ad.waves}`;
  try {
    if (!fwd) throw new TdxError("E_DEPLOYMENT", `the agent's guest port ${ad.guestPort} is not forwarded`, { hint: "Forward it in qemu.ports (TdxDeployment does when VMs are attested)." });
    const endpoint = `${fwd.bind === "0.0.0.0" ? "127.0.0.1" : fwd.bind}:${fwd.host}`;
    const { verdict, seconds } = await verifyAgent({ ...ad, endpoint }, "the new VM is stopped and removed, nothing was sent");
    log("TdxDeployment", `VM ${vm.vmId} admitted to ${wave}: attested (${verdict.issuer}) in ${seconds.toFixed(1)} s`);
  } catch (e) {
    const err = e instanceof TdxError ? e : new TdxError("E_ATTESTATION", (e as Error).message);
    // The refusal is the news; a failure to stop the VM is added to it, never put in its place.
    const stopped = await stopVm(vm, { graceMs: 2000 }).then(() => undefined, (x: Error) => x.message);
    throw new TdxError(err.code, `rollout refused at ${wave} (new VM ${vm.vmId}): ${err.message}.${stopped ? ` STOPPING THE NEW VM FAILED (${stopped}): stop it with tdxvm vm down ${vm.vmId}.` : ""} Later waves were not touched; a VM this one was to replace keeps running (unless host ports are pinned: then Pulumi deleted it first)`, {
      hint: "Fix the recipe (or revert it) and run `pulumi up` again: the rollout resumes at this wave. The failed checks are in this message and in the error's details.",
      details: { ...err.details, wave: ad.wave, waves: ad.waves, vmId: vm.vmId, ...(stopped ? { stopFailed: stopped } : {}) },
    });
  }
}

/** The inputs carried into the outputs. */
function publicInputs(inputs: Record<string, unknown>): Record<string, unknown> {
  return omit(declared(inputs), OUT_KEYS);
}

function outputsOf(vm: VmInfo, a: QemuVmArgsT, x: { warning: string | null; isTd: boolean; readySeconds: number }): Record<string, unknown> {
  return {
    stateVersion: VM_STATE_VERSION, vmId: vm.vmId, pid: vm.pid, startTime: vm.startTime, bootId: vm.bootId, stateDir: storePath(vm.stateDir), serialLog: storePath(vm.serialLog),
    forwards: vm.ports, accelUsed: vm.accel, isTd: x.isTd, warning: x.warning, running: true, readySeconds: Math.round(x.readySeconds), qemuArgs: vm.qemuArgs,
    diskSha256: disk(a).sha256,
  };
}
