/**
 * Dev boot: a bake's disk booted under QEMU + OVMF + swtpm from the tools tree (DESIGN.md §4),
 * with the serial console captured. Used to read the guest's own view of its measurements.
 * Not a TD: this is an emulated VM with a software TPM (PCR banks of your choice).
 */
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { TdxError } from "../errors";
import { sandboxArgv, runStreaming } from "../bake/sandbox";
import { shQuote } from "../compile/shell";

export interface DevBootOptions {
  toolsRoot: string;
  /** Raw GPT disk to boot from (opened with snapshot=on: never modified). */
  disk: string;
  /** Directory for swtpm state, OVMF vars and serial.log (created). */
  workDir: string;
  memoryMiB?: number;
  cpus?: number;
  pcrBanks?: Array<"sha1" | "sha256" | "sha384" | "sha512">;
  /** "kvm" only when KVM really runs guests here (see detectKvm). */
  accel?: "tcg" | "kvm";
  timeoutMs?: number;
  onLine?: (line: string) => void;
}

export interface DevBootResult { serial: string; exitCode: number | null; qemuArgs: string[] }

export function qemuDevArgs(o: { disk: string; vars: string; sock: string; serial: string; memoryMiB: number; cpus: number; accel: "tcg" | "kvm" }): string[] {
  return [
    "qemu-system-x86_64",
    "-machine", `q35,accel=${o.accel}`, "-cpu", o.accel === "kvm" ? "host" : "max", "-smp", String(o.cpus), "-m", String(o.memoryMiB),
    "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
    "-drive", `if=pflash,format=raw,unit=1,file=${o.vars}`,
    "-chardev", `socket,id=chrtpm,path=${o.sock}`, "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0",
    "-display", "none", "-serial", `file:${o.serial}`, "-no-reboot", "-nic", "none",
    "-drive", `if=virtio,format=raw,file=${o.disk},snapshot=on`,
  ];
}

export async function devBoot(o: DevBootOptions): Promise<DevBootResult> {
  await fs.mkdir(path.join(o.workDir, "tpm"), { recursive: true });
  const D = "/work/boot";
  const diskInside = `/work/disk/${path.basename(o.disk)}`;
  const timeoutS = Math.ceil((o.timeoutMs ?? 10 * 60_000) / 1000);
  const qemu = qemuDevArgs({ disk: diskInside, vars: `${D}/vars.fd`, sock: `${D}/swtpm.sock`, serial: `${D}/serial.log`, memoryMiB: o.memoryMiB ?? 2048, cpus: o.cpus ?? 2, accel: o.accel ?? "tcg" });
  const script = [
    "set -eu",
    `D=${D}`,
    `swtpm_setup --tpm2 --tpmstate "$D/tpm" --pcr-banks ${(o.pcrBanks ?? ["sha256", "sha384"]).join(",")} --overwrite --logfile "$D/swtpm_setup.log" >/dev/null`,
    `swtpm socket --tpm2 --tpmstate dir="$D/tpm" --ctrl type=unixio,path="$D/swtpm.sock" --log file="$D/swtpm.log" --flags startup-clear &`,
    `for i in $(seq 50); do [ -S "$D/swtpm.sock" ] && break; sleep 0.1; done`,
    `cp /usr/share/OVMF/OVMF_VARS_4M.fd "$D/vars.fd"`,
    `: > "$D/serial.log"`,
    `exec timeout --kill-after=10 ${timeoutS} ${qemu.map(shQuote).join(" ")}`,
  ].join("\n");
  const r = await runStreaming(sandboxArgv(o.toolsRoot, ["/bin/sh", "-c", script], [
    { host: o.workDir, inside: D },
    { host: path.dirname(path.resolve(o.disk)), inside: "/work/disk", readOnly: true },
  ]), { onLine: o.onLine, tailLines: 30 });
  const serial = await fs.readFile(path.join(o.workDir, "serial.log"), "utf8").catch(() => "");
  if (r.code === 124 || r.code === 137) {
    throw new TdxError("E_DEPLOYMENT", `dev boot timed out after ${timeoutS} s; last serial lines:\n${serial.split("\n").slice(-15).join("\n")}`, {
      hint: `See ${path.join(o.workDir, "serial.log")}. Under TCG a boot takes about a minute; raise timeoutMs on slow hosts.`,
    });
  }
  if (r.code !== 0) {
    throw new TdxError("E_DEPLOYMENT", `QEMU exited with ${r.code ?? r.signal}: ${r.tail.slice(-10).join("\n")}`, { hint: `See ${path.join(o.workDir, "serial.log")} and swtpm.log.` });
  }
  return { serial, exitCode: r.code, qemuArgs: qemu };
}

/** What the ground-truth guest printed: PCR values per bank, the firmware's TCG2 event log, systemd's userspace log. */
export interface GuestReport { pcrs: Record<string, Record<number, string>>; eventLog: Buffer; userspaceLog: string; cmdline: string }

export function parseGuestReport(serial: string): GuestReport {
  const lines = serial.split(/\r?\n/);
  const between = (a: string, b: string) => {
    const i = lines.findIndex((l) => l.includes(a));
    const j = lines.findIndex((l, k) => k > i && l.includes(b));
    if (i < 0 || j < 0) throw new TdxError("E_MEASUREMENT", `guest report lacks ${a}…${b} on the serial console`, { hint: "The guest did not reach the report service; read serial.log." });
    return lines.slice(i + 1, j);
  };
  const pcrs: Record<string, Record<number, string>> = {};
  let bank = "";
  for (const l of between("TDXVM-PCRS-BEGIN", "TDXVM-PCRS-END")) {
    const b = /^\s*(sha1|sha256|sha384|sha512):\s*$/.exec(l);
    if (b) {
      bank = b[1];
      pcrs[bank] = {};
      continue;
    }
    const m = /^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*$/.exec(l);
    if (m && bank) pcrs[bank][Number(m[1])] = m[2].toLowerCase();
  }
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
