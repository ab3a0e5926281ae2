/**
 * Local VMs from the command line (`tdxvm vm up|ls|down`), for the single-VM loop without Pulumi:
 * start a dev VM (or a TD, where the host can run one) from a baked disk and keep it running after
 * tdxvm exits; list them; stop one. The same lifecycle as TdxDeployment's qemu target
 * (./qemu.ts): VM directories under `<cacheDir>/vms` carry tdxvm's marker, and only those — and
 * only the QEMU a directory's vm.json proves to be its own — are ever listed or stopped.
 */
import { promises as fs, existsSync, statSync } from "node:fs";
import * as path from "node:path";
import { TdxError } from "../errors";
import { ensureToolsTree } from "../bake/toolsTree";
import { DEFAULT_DEBIAN } from "../lock";
import { probeKvm, tdxSupport, parseQemuVersion } from "./host";
import { markReady, newStateDir, ownedVmDir, PortForward, Readiness, startVm, stopVm, sweepStale, VmInfo, vmRunning, waitReady } from "./qemu";

export interface LocalVm extends VmInfo { running: boolean; ready: boolean }

export const vmsDir = (cacheDir: string) => path.join(cacheDir, "vms");

/** Start a VM from `disk` and wait for `readiness` (null: only until QEMU runs). The VM outlives this process. */
export async function vmUp(o: { disk: string; cacheDir: string; memoryMiB?: number; cpus?: number; ports?: PortForward[]; readiness: Readiness | null; tdx?: "auto" | "off"; onProgress?: (m: string) => void }): Promise<VmInfo & { warning: string | null }> {
  if (!existsSync(o.disk) || !statSync(o.disk).isFile()) throw new TdxError("E_DEPLOYMENT", `the disk ${o.disk} does not exist`, { hint: "Bake the recipe (tdxvm vm up <recipe> does), or give a raw disk image with --disk." });
  const tools = await ensureToolsTree({ cacheDir: o.cacheDir, mirror: DEFAULT_DEBIAN.mirror });
  const kvm = await probeKvm(tools.root);
  const support = tdxSupport({ kvm, qemuVersion: parseQemuVersion(`QEMU emulator version ${(tools.versions["qemu-system-x86"] ?? "").replace(/^\d+:/, "")}`) });
  const isTd = o.tdx !== "off" && support.capable;
  const warning = isTd ? null : `not a TD: an emulated dev VM (${kvm.usable ? "KVM" : "TCG"}, OVMF + swtpm) — nothing is confidential. Why no TD: ${support.reasons.join("; ")}`;
  const root = vmsDir(o.cacheDir);
  await fs.mkdir(root, { recursive: true, mode: 0o700 });
  await sweepStale(root);
  const vm = await startVm({ toolsRoot: tools.root, cacheDir: o.cacheDir, disk: path.resolve(o.disk), stateDir: newStateDir(root), memoryMiB: o.memoryMiB, cpus: o.cpus, accel: kvm.usable ? "kvm" : "tcg", tdx: isTd, ports: o.ports });
  if (o.readiness) {
    try {
      await waitReady(vm, o.readiness, o.onProgress);
    } catch (e) {
      await stopVm(vm, { graceMs: 2000, root });
      throw e;
    }
  }
  await markReady(vm);
  return { ...vm, warning };
}

/** The VMs tdxvm started under `cacheDir` (ours by marker), running or not. */
export async function vmList(cacheDir: string): Promise<LocalVm[]> {
  const root = vmsDir(cacheDir);
  const out: LocalVm[] = [];
  for (const n of (await fs.readdir(root).catch(() => [] as string[])).sort()) {
    const dir = path.join(root, n);
    if (!/^vm-[0-9a-f]{12}$/.test(n) || !(await ownedVmDir(dir, root))) continue;
    const vm = await fs.readFile(path.join(dir, "vm.json"), "utf8").then((t) => JSON.parse(t) as VmInfo & { ready?: boolean }, () => undefined);
    if (!vm || vm.vmId !== n || !Number.isInteger(vm.pid)) continue;
    out.push({ ...vm, stateDir: dir, running: vmRunning(vm), ready: vm.ready === true });
  }
  return out;
}

/** Stop the VM `id` (vm-…: SIGTERM, SIGKILL after 5 s) and remove its state; E_DEPLOYMENT when tdxvm has no such VM. */
export async function vmDown(cacheDir: string, id: string): Promise<{ wasRunning: boolean; killed: boolean }> {
  if (!/^vm-[0-9a-f]{12}$/.test(id)) throw new TdxError("E_VALIDATION", `${JSON.stringify(id.slice(0, 40))} is not a VM id`, { hint: "Give an id as `tdxvm vm ls` lists it (vm-<12 hex digits>)." });
  const vm = (await vmList(cacheDir)).find((v) => v.vmId === id);
  if (!vm) throw new TdxError("E_DEPLOYMENT", `tdxvm started no VM ${id} under ${vmsDir(cacheDir)}`, { hint: "`tdxvm vm ls` lists the VMs tdxvm started (with the same --cache-dir)." });
  const r = await stopVm(vm, { graceMs: 5000, root: vmsDir(cacheDir) });
  return { wasRunning: vm.running, killed: r.killed };
}
