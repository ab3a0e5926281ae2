/**
 * `tdxvm run`: bake → measure → boot → compare, without Pulumi. Boots the baked disk as a local
 * VM (the same code as TdxDeployment's qemu target), waits for the image's BootReport on the
 * serial console, and holds every register tdxvm predicts against what the guest reports:
 * - vTPM PCRs (the `azure` backend) against the guest's sha256 PCRs, by value, and the whole
 *   firmware + systemd event logs through verify();
 * - RTMR1/RTMR2 (the `rtmr` backend) event by event against the guest's sha384-bank events
 *   (this VM is not a TD: the registers themselves exist only on TDX hardware);
 * - MRTD and RTMR0 are printed as predicted, unverifiable here.
 */
import * as path from "node:path";
import { TdxError } from "../errors";
import type { BakeResult } from "../bake";
import { ensureToolsTree } from "../bake/toolsTree";
import { DEFAULT_DEBIAN } from "../lock";
import { measureBake } from "../measure/api";
import { Measurements } from "../measure/ledger";
import { verify } from "../measure/verify";
import { parseEventLog } from "../measure/eventlog";
import { REPORT_DONE } from "../modules/bootReport";
import { startVm, waitReady, stopVm, newStateDir } from "./qemu";
import { probeKvm } from "./host";
import { parseGuestReport, GuestReport } from "./devboot";
import { promises as fs } from "node:fs";

export interface RegisterRow { backend: string; register: string; predicted: string | null; observed: string | null; verdict: "match" | "MISMATCH" | "predicted only" | "platform-defined" }

export interface RunReport { rows: RegisterRow[]; ok: boolean; vm: { accel: string; bootSeconds: number; serialLog?: string }; measurements: Measurements[] }

export interface RunOptions {
  cacheDir: string;
  memoryMiB?: number;
  cpus?: number;
  timeoutSeconds?: number;
  /** Keep the VM's state directory (serial log) after the run. */
  keep?: boolean;
  onProgress?: (msg: string) => void;
}

export async function bootAndCompare(baked: BakeResult, opts: RunOptions): Promise<RunReport> {
  const disk = baked.artifacts.find((a) => a.target === "disk" && a.kind === "raw");
  if (!disk) throw new TdxError("E_DEPLOYMENT", "the bake has no disk image", { hint: "Bake again (img.bake())." });
  const azure = await measureBake(baked, { backend: "azure", cacheDir: opts.cacheDir });
  const rtmr = await measureBake(baked, { backend: "rtmr", cacheDir: opts.cacheDir });
  const tools = await ensureToolsTree({ cacheDir: opts.cacheDir, mirror: DEFAULT_DEBIAN.mirror });
  const kvm = await probeKvm(tools.root);
  opts.onProgress?.(`booting ${path.basename(disk.path)} (${kvm.usable ? "KVM" : `TCG: ${kvm.reason}`}); waiting for the boot report…`);
  const vm = await startVm({ toolsRoot: tools.root, cacheDir: opts.cacheDir, disk: disk.path, stateDir: newStateDir(path.join(opts.cacheDir, "vms")), accel: kvm.usable ? "kvm" : "tcg", memoryMiB: opts.memoryMiB, cpus: opts.cpus });
  let guest: GuestReport;
  let bootSeconds: number;
  try {
    ({ seconds: bootSeconds } = await waitReady(vm, { serial: REPORT_DONE, timeoutSeconds: opts.timeoutSeconds ?? 900 }, opts.onProgress));
    guest = parseGuestReport(await fs.readFile(vm.serialLog, "utf8"));
  } catch (e) {
    if (e instanceof TdxError && /not ready|stopped/.test(e.message)) {
      e.message += `\n(is the BootReport module in the recipe? \`.use(new BootReport())\` prints the report ${REPORT_DONE} ends)`;
    }
    await stopVm(vm, { keepState: opts.keep, graceMs: 2000 });
    throw e;
  }
  await stopVm(vm, { keepState: opts.keep, graceMs: 2000 });

  const rows: RegisterRow[] = [];
  const v = verify(azure, { eventLog: guest.eventLog, pcrs: guest.pcrs, userspaceLog: guest.userspaceLog });
  for (const [name, r] of Object.entries(azure.registers)) {
    const pcr = Number(name.slice(3));
    const observed = guest.pcrs.sha256?.[pcr] ?? null;
    if (r.status === "platform-defined") rows.push({ backend: "azure (vTPM)", register: name, predicted: null, observed, verdict: "platform-defined" });
    else rows.push({ backend: "azure (vTPM)", register: name, predicted: r.value, observed, verdict: r.value === observed ? "match" : "MISMATCH" });
  }
  const sha384 = new Set(parseEventLog(guest.eventLog).events.flatMap((e) => e.digests.filter((d) => d.alg === "sha384").map((d) => d.digest.toString("hex"))));
  for (const [name, r] of Object.entries(rtmr.registers)) {
    if (name === "RTMR1" || name === "RTMR2") {
      const found = r.events.filter((e) => sha384.has(e.digest)).length;
      rows.push({ backend: "rtmr (TD)", register: name, predicted: r.value, observed: `${found}/${r.events.length} events in the guest's sha384 log`, verdict: found === r.events.length ? "match" : "MISMATCH" });
    } else rows.push({ backend: "rtmr (TD)", register: name, predicted: r.value, observed: null, verdict: r.status === "platform-defined" ? "platform-defined" : "predicted only" });
  }
  const ok = v.ok && rows.every((r) => r.verdict !== "MISMATCH");
  return { rows, ok, vm: { accel: vm.accel, bootSeconds, serialLog: opts.keep ? vm.serialLog : undefined }, measurements: [azure, rtmr] };
}

/** The report as a table a person can read. */
export function formatRunReport(r: RunReport): string {
  const short = (s: string | null) => (s === null ? "—" : s.length > 40 ? `${s.slice(0, 16)}…${s.slice(-8)}` : s);
  const rows = r.rows.filter((x) => x.verdict !== "platform-defined" || x.backend.startsWith("rtmr"));
  const w = [12, 8, 26, 40];
  const line = (c: string[]) => c.map((x, i) => (i < w.length ? x.padEnd(w[i]) : x)).join("  ");
  return [
    line(["backend", "register", "predicted", "guest", "verdict"]),
    ...rows.map((x) => line([x.backend.split(" ")[0], x.register, short(x.predicted), short(x.observed), x.verdict])),
    "",
    `${r.ok ? "OK" : "MISMATCH"}: VM booted under ${r.vm.accel.toUpperCase()} in ${r.vm.bootSeconds.toFixed(0)} s; vTPM PCRs compared by value, RTMR1/RTMR2 event by event (not a TD here).`,
  ].join("\n");
}
