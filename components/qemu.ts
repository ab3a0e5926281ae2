/**
 * The qemu target's resource graph: one dynamic resource per VM (type
 * pulumi-nodejs:dynamic/tdxvm:QemuVm), a real local QEMU process — a TD when the host can run
 * one, else an emulated dev VM (see the `warning` output).
 */
import * as pulumi from "@pulumi/pulumi";
import { providerShim } from "../provider/dynamic/shim";

export interface QemuTargetArgs {
  memoryMiB?: pulumi.Input<number>;
  cpus?: pulumi.Input<number>;
  /** Guest TCP ports to forward; `host` unset picks a free port (see the `forwards` output). Pinned host ports make replacements delete-first. */
  ports?: pulumi.Input<Array<{ guest: number; host?: number; bind?: string }>>;
  /** When the VM counts as up: a serial-console regex (default a login prompt) and/or HTTP answers on forwarded ports. */
  readiness?: pulumi.Input<{ serial?: string; http?: Array<{ guestPort: number; path?: string }>; timeoutSeconds?: number }>;
  /** "auto" (default): KVM only if the probe boots firmware under it, else TCG. */
  accel?: pulumi.Input<"auto" | "kvm" | "tcg">;
  /** "auto" (default): a TD when the host can run one, else a dev VM with a warning; "require": fail instead; "off": always a dev VM. */
  tdx?: pulumi.Input<"auto" | "off" | "require">;
  /** Where VM state directories go (default <cacheDir>/vms). */
  stateRoot?: pulumi.Input<string>;
  cacheDir?: pulumi.Input<string>;
}

const COMPUTED = {
  stateVersion: undefined, vmId: undefined, pid: undefined, startTime: undefined, stateDir: undefined, serialLog: undefined, forwards: undefined,
  accelUsed: undefined, isTd: undefined, warning: undefined, running: undefined, readySeconds: undefined, qemuArgs: undefined, diskSha256: undefined,
};

export class QemuVm extends pulumi.dynamic.Resource {
  declare readonly vmId: pulumi.Output<string>;
  declare readonly pid: pulumi.Output<number>;
  declare readonly stateDir: pulumi.Output<string>;
  declare readonly serialLog: pulumi.Output<string>;
  declare readonly forwards: pulumi.Output<Array<{ guest: number; host: number; bind: string }>>;
  declare readonly accelUsed: pulumi.Output<"kvm" | "tcg">;
  declare readonly isTd: pulumi.Output<boolean>;
  declare readonly warning: pulumi.Output<string | null>;
  declare readonly running: pulumi.Output<boolean>;

  constructor(name: string, props: Record<string, pulumi.Input<unknown>>, opts?: pulumi.CustomResourceOptions) {
    super(providerShim("qemuVm"), name, { ...props, ...COMPUTED }, opts, "tdxvm", "QemuVm");
  }
}

export function qemuVm(name: string, a: {
  image: pulumi.Input<{ bakeKey?: string; artifacts: Record<string, unknown> }>;
  qemu: QemuTargetArgs;
  expected?: pulumi.Input<Record<string, string | null>>;
  /** Attesting rollouts: the VM's create counts only once its agent proved the expected measurement (provider/dynamic/qemuVm.ts). */
  admission?: pulumi.Input<Record<string, unknown>>;
}, opts: pulumi.CustomResourceOptions): QemuVm {
  const q = a.qemu;
  return new QemuVm(name, {
    image: a.image, memoryMiB: q.memoryMiB, cpus: q.cpus, ports: q.ports, readiness: q.readiness, accel: q.accel, tdx: q.tdx,
    expected: a.expected, stateRoot: q.stateRoot, cacheDir: q.cacheDir, ...(a.admission ? { admission: a.admission } : {}),
  }, opts);
}
