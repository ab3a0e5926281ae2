/**
 * What this host can run: KVM (probed for real, never assumed) and Intel TDX guests.
 *
 * /dev/kvm existing is not enough: on paravirtual KVM (PVM, measured on our CI machines)
 * QEMU opens /dev/kvm and then dies in firmware ("failed to set MSR 0x10a", an assertion in
 * kvm_buf_set_msrs). So the probe boots the same OVMF firmware on the same machine type and
 * CPU model a VM would use, and calls KVM usable only when the firmware reaches its boot
 * manager (BdsDxe prints to the serial console) in time.
 */
import { promises as fs, constants as fsc, existsSync, readFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { sandboxArgv, runStreaming } from "../bake/sandbox";

export interface KvmProbe { usable: boolean; reason: string }

let probeMemo: Promise<KvmProbe> | undefined;

/** Boot OVMF under `-accel kvm` once per process (about 1 s when KVM works, 0.1 s when it fails). */
export function probeKvm(toolsRoot: string, opts: { timeoutMs?: number; fresh?: boolean } = {}): Promise<KvmProbe> {
  if (!probeMemo || opts.fresh) probeMemo = runKvmProbe(toolsRoot, opts.timeoutMs ?? 20_000);
  return probeMemo;
}

async function runKvmProbe(toolsRoot: string, timeoutMs: number): Promise<KvmProbe> {
  if (process.env.TDXVM_ACCEL === "tcg") return { usable: false, reason: "TDXVM_ACCEL=tcg" };
  try {
    await fs.access("/dev/kvm", fsc.R_OK | fsc.W_OK);
  } catch (e) {
    return { usable: false, reason: `/dev/kvm is not accessible (${(e as NodeJS.ErrnoException).code})` };
  }
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "tdxvm-kvm-probe-"));
  try {
    const r = await runStreaming(sandboxArgv(toolsRoot, [
      "/bin/sh", "-c",
      `cp /usr/share/OVMF/OVMF_VARS_4M.fd /probe/vars.fd && exec timeout ${Math.ceil(timeoutMs / 1000)} qemu-system-x86_64 -machine q35,accel=kvm -cpu host -nodefaults -display none -m 256 ` +
      "-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd -drive if=pflash,format=raw,unit=1,file=/probe/vars.fd " +
      "-serial file:/probe/serial.log -no-reboot & Q=$!; " +
      `for i in $(seq ${Math.ceil(timeoutMs / 200)}); do grep -q BdsDxe /probe/serial.log 2>/dev/null && { kill $Q; echo TDXVM-KVM-OK; exit 0; }; kill -0 $Q 2>/dev/null || break; sleep 0.2; done; kill $Q 2>/dev/null; wait $Q; exit 3`,
    ], [{ host: dir, inside: "/probe" }]), { tailLines: 20, timeoutMs: timeoutMs + 10_000 });
    if (r.tail.includes("TDXVM-KVM-OK")) return { usable: true, reason: "OVMF reached its boot manager under KVM" };
    const why = r.tail.filter((l) => /qemu|kvm|error/i.test(l)).slice(-2).join("; ");
    return { usable: false, reason: `OVMF did not start under KVM${why ? `: ${why}` : ""}` };
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

export interface TdxSupport { capable: boolean; reasons: string[] }

/** Parse "QEMU emulator version 10.0.2 (Debian …)" → [10, 0, 2]. */
export function parseQemuVersion(text: string): number[] | undefined {
  const m = /QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?/.exec(text);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)] : undefined;
}

export function versionAtLeast(v: number[], min: number[]): boolean {
  for (let i = 0; i < min.length; i++) {
    if ((v[i] ?? 0) !== min[i]) return (v[i] ?? 0) > min[i];
  }
  return true;
}

/**
 * A TD needs: the host kernel's TDX module enabled (kvm_intel.tdx=Y), KVM that runs guests,
 * and QEMU ≥ 10.1 (upstream TDX support). Every missing piece is named.
 */
export function tdxSupport(facts: { kvm: KvmProbe; qemuVersion?: number[]; kvmIntelTdx?: string | null }): TdxSupport {
  const reasons: string[] = [];
  const tdxParam = facts.kvmIntelTdx === undefined ? readParam("/sys/module/kvm_intel/parameters/tdx") : facts.kvmIntelTdx;
  if (tdxParam === null) reasons.push("the host kernel has no TDX support loaded (/sys/module/kvm_intel/parameters/tdx missing)");
  else if (!/^[Y1]/.test(tdxParam)) reasons.push(`TDX is disabled in kvm_intel (tdx=${tdxParam.trim()})`);
  if (!facts.kvm.usable) reasons.push(`KVM cannot run guests here: ${facts.kvm.reason}`);
  if (!facts.qemuVersion) reasons.push("QEMU version unknown");
  else if (!versionAtLeast(facts.qemuVersion, [10, 1])) reasons.push(`QEMU ${facts.qemuVersion.join(".")} is older than 10.1 (first release with TDX guests)`);
  return { capable: reasons.length === 0, reasons };
}

function readParam(file: string): string | null {
  try {
    return existsSync(file) ? readFileSync(file, "utf8") : null;
  } catch {
    return null;
  }
}
