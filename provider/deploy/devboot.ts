/**
 * Dev boot: a bake's disk booted once under QEMU + OVMF + swtpm (docs/design.md §3) until the guest
 * powers off, with the serial console captured — the guest's own view of its measurements.
 * The same VM as TdxDeployment's qemu target (./qemu.ts), waited on to the end. Not a TD.
 */
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { TdxError } from "../errors";
import { startVm, stopVm, vmRunning } from "./qemu";

export interface DevBootOptions {
  toolsRoot: string;
  /** Raw GPT disk to boot from (never modified: the VM writes to an overlay). */
  disk: string;
  /** Directory for the VM's state and serial.log (created). */
  workDir: string;
  memoryMiB?: number;
  cpus?: number;
  pcrBanks?: Array<"sha256" | "sha384">;
  /** "kvm" only when KVM really runs guests here (see probeKvm). */
  accel?: "tcg" | "kvm";
  timeoutMs?: number;
}

export interface DevBootResult { serial: string; qemuArgs: string[]; seconds: number }

export async function devBoot(o: DevBootOptions): Promise<DevBootResult> {
  await fs.mkdir(o.workDir, { recursive: true });
  const t0 = Date.now();
  const timeout = o.timeoutMs ?? 10 * 60_000;
  const vm = await startVm({ toolsRoot: o.toolsRoot, disk: o.disk, stateDir: path.join(o.workDir, "vm"), memoryMiB: o.memoryMiB, cpus: o.cpus, accel: o.accel ?? "tcg", pcrBanks: o.pcrBanks });
  while (vmRunning(vm)) {
    if (Date.now() - t0 > timeout) {
      const last = (await fs.readFile(vm.serialLog, "utf8").catch(() => "")).split("\n").slice(-15).join("\n");
      await stopVm(vm, { keepState: true, graceMs: 2000 });
      throw new TdxError("E_DEPLOYMENT", `dev boot did not power off within ${Math.round(timeout / 1000)} s; last serial lines:\n${last}`, {
        hint: `See ${vm.serialLog}. Under TCG a boot takes one to three minutes; raise timeoutMs on slow hosts.`,
      });
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  const serial = await fs.readFile(vm.serialLog, "utf8").catch(() => "");
  await stopVm(vm, { keepState: true });
  return { serial, qemuArgs: vm.qemuArgs, seconds: (Date.now() - t0) / 1000 };
}

/** What the ground-truth guest printed: PCR values per bank, the firmware's TCG2 event log, systemd's userspace log. */
export interface GuestReport { pcrs: Record<string, Record<number, string>>; eventLog: Buffer; userspaceLog: string; cmdline: string }

/** PCR values per bank from `tpm2_pcrread` output ("sha256:" then "  4 : 0x…" lines). */
export function parsePcrRead(lines: string[]): Record<string, Record<number, string>> {
  const pcrs: Record<string, Record<number, string>> = {};
  let bank = "";
  for (const l of lines) {
    const b = /^\s*(sha1|sha256|sha384|sha512):\s*$/.exec(l);
    if (b) {
      bank = b[1];
      pcrs[bank] = {};
      continue;
    }
    const m = /^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*$/.exec(l);
    if (m && bank) pcrs[bank][Number(m[1])] = m[2].toLowerCase();
  }
  return pcrs;
}

export function parseGuestReport(serial: string): GuestReport {
  const lines = serial.split(/\r?\n/);
  const between = (a: string, b: string) => {
    const i = lines.findIndex((l) => l.includes(a));
    const j = lines.findIndex((l, k) => k > i && l.includes(b));
    if (i < 0 || j < 0) throw new TdxError("E_MEASUREMENT", `guest report lacks ${a}…${b} on the serial console`, { hint: "The guest did not reach the report service; read serial.log." });
    return lines.slice(i + 1, j);
  };
  const pcrs = parsePcrRead(between("TDXVM-PCRS-BEGIN", "TDXVM-PCRS-END"));
  const b64 = (a: string, b: string) => between(a, b).filter((l) => /^[A-Za-z0-9+/=]+$/.test(l.trim())).join("");
  const cmd = lines.find((l) => l.startsWith("TDXVM-CMDLINE "));
  const ulog = lines.some((l) => l.includes("TDXVM-ULOG-BEGIN")) ? Buffer.from(b64("TDXVM-ULOG-BEGIN", "TDXVM-ULOG-END"), "base64").toString("utf8") : "";
  return { pcrs, eventLog: Buffer.from(b64("TDXVM-LOG-BEGIN", "TDXVM-LOG-END"), "base64"), userspaceLog: ulog, cmdline: cmd ? cmd.slice("TDXVM-CMDLINE ".length) : "" };
}

/** Boot a bake's disk (see devBoot); the disk artifact must exist. */
export async function bootBakedDisk(bake: { artifacts: Array<{ target: string; kind: string; path: string }> }, opts: Omit<DevBootOptions, "disk">): Promise<DevBootResult> {
  const disk = bake.artifacts.find((a) => a.target === "disk" && a.kind === "raw");
  if (!disk || !(await fs.stat(disk.path).then((s) => s.isFile(), () => false))) {
    throw new TdxError("E_DEPLOYMENT", `the bake has no disk image to boot${disk ? ` (${disk.path} is gone)` : ""}`, { hint: "Bake the image again (img.bake()); artifacts live in build/artifacts/<profile>/ and the cache." });
  }
  return devBoot({ ...opts, disk: disk.path });
}
