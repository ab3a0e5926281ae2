/**
 * A local VM as a real, detached QEMU process (plus swtpm for the emulated dev VM), started
 * from the Debian trixie tools tree and living in its own mount and PID namespace.
 *
 * Process layout: `unshare --pid --fork` makes QEMU the init of a fresh PID namespace (the
 * launch script execs into it), with swtpm as its child. When QEMU ends — by TERM, KILL or a
 * guest power-off — the kernel kills swtpm and drops the namespace with its mounts, so no
 * stray process or mount can outlive the VM. The VM's files live in one state directory:
 * vm.json (pids, ports, arguments), disk.qcow2 (a copy-on-write overlay over the baked disk,
 * which is never written), OVMF vars, TPM state, serial.log, qemu.log.
 *
 * Two shapes: an emulated dev VM (OVMF in pflash + swtpm TPM 2.0; NOT a TD — nothing is
 * confidential) and, when the host can run one, a TD (`tdx-guest` object, TDVF via -bios, no
 * pflash, no SMM, no TPM), following docs/design.md §3.
 */
import { spawn } from "node:child_process";
import { promises as fs, existsSync, openSync, closeSync, readFileSync, readlinkSync, realpathSync } from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { TdxError } from "../errors";
import { sandboxArgv, runStreaming } from "../bake/sandbox";
import { shQuote } from "../compile/shell";
import { writeFileAtomic } from "../lock";
import { defaultCacheDir } from "../pipeline";
import { ensureLocalCa, swtpmEkCertSetup } from "../attest/localca";

export const VM_STATE_VERSION = 1;

export interface PortForward { guest: number; host?: number; bind?: string }

export interface Readiness {
  /** Regular expression the serial console must print (default: a login prompt). */
  serial?: string;
  /** Guest TCP ports (forwarded) that must answer with at least one byte or accept an HTTP request. */
  http?: Array<{ guestPort: number; path?: string }>;
  timeoutSeconds?: number;
}

export interface VmSpec {
  /** Root of the trixie tools tree (QEMU, OVMF, swtpm live there). */
  toolsRoot: string;
  /** The baked raw GPT disk (read-only; the VM writes to an overlay). */
  disk: string;
  /** Directory for the VM's files (created; must not exist or be empty). */
  stateDir: string;
  memoryMiB?: number;
  cpus?: number;
  accel: "kvm" | "tcg";
  /** Launch as a TD (only when tdxSupport() said so). */
  tdx?: boolean;
  ports?: PortForward[];
  pcrBanks?: Array<"sha256" | "sha384">;
  /** Where the per-host local CA for the dev VM's EK certificates lives (default: the tdxvm cache). */
  cacheDir?: string;
}

export interface VmInfo {
  stateVersion: number;
  vmId: string;
  stateDir: string;
  /** Host pid of QEMU (the PID-namespace init). */
  pid: number;
  /** Kernel start time of that pid (clock ticks since boot) and the boot: guard against pid reuse. */
  startTime: number;
  bootId: string;
  accel: "kvm" | "tcg";
  tdx: boolean;
  ports: Array<{ guest: number; host: number; bind: string }>;
  serialLog: string;
  qemuArgs: string[];
}

const D = "/vm";

export function qemuArgs(o: {
  accel: "kvm" | "tcg"; tdx: boolean; memoryMiB: number; cpus: number; ports: VmInfo["ports"];
}): string[] {
  const netdev = ["user", "id=n0", ...o.ports.map((p) => `hostfwd=tcp:${p.bind}:${p.host}-:${p.guest}`)].join(",");
  const common = [
    "-smp", String(o.cpus), "-m", String(o.memoryMiB),
    "-display", "none", "-vga", "none", "-serial", `file:${D}/serial.log`, "-monitor", "none",
    "-qmp", `unix:${D}/qmp.sock,server=on,wait=off`, "-pidfile", `${D}/qemu.pid`,
    "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
    "-drive", `if=virtio,format=qcow2,file=${D}/disk.qcow2`,
  ];
  if (o.tdx) {
    // docs/design.md §3: QEMU ≥ 10.1 on a TDX host; TDVF as -bios, no pflash, no SMM, split irqchip.
    return [
      "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host",
      "-object", '{"qom-type":"tdx-guest","id":"tdx0"}',
      "-machine", "q35,kernel-irqchip=split,confidential-guest-support=tdx0,hpet=off,smm=off",
      "-bios", "/usr/share/ovmf/OVMF.fd", "-nodefaults",
      ...common,
    ];
  }
  return [
    "qemu-system-x86_64", "-machine", `q35,accel=${o.accel}`, "-cpu", o.accel === "kvm" ? "host" : "max",
    "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
    "-drive", `if=pflash,format=raw,unit=1,file=${D}/vars.fd`,
    "-chardev", `socket,id=chrtpm,path=${D}/swtpm.sock`, "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0",
    "-no-reboot",
    ...common,
  ];
}

/** A free TCP port on `bind` (the kernel picks it; QEMU binds it moments later). */
export function freePort(bind = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, bind, () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Field 22 of /proc/<pid>/stat: start time in clock ticks since boot, or undefined when the pid is gone. */
export function procStartTime(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (fields[0] === "Z") return undefined; // a zombie has ended
    return Number(fields[19]);
  } catch {
    return undefined;
  }
}

function cmdlineOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
  } catch {
    return "";
  }
}

/** The file tdxvm puts into every VM state directory it creates; it names the directory. */
export const VM_MARKER = ".tdxvm-vm";
const markerText = (dir: string) => `tdxvm VM state directory ${dir}\n`;

/** Put tdxvm's marker into a fresh state directory (absolute path). */
export async function markVmDir(dir: string): Promise<void> {
  await fs.writeFile(path.join(dir, VM_MARKER), markerText(dir), { flag: "wx", mode: 0o600 });
}

/**
 * Is `dir` a VM state directory tdxvm made? An absolute, normalised path other than `/`, a real
 * directory (not a symbolic link), directly below `root` when one is given, holding tdxvm's
 * marker as a regular file that names this very path. State and vm.json are untrusted: nothing
 * else is ever removed.
 */
export async function ownedVmDir(dir: unknown, root?: string): Promise<boolean> {
  if (typeof dir !== "string" || !path.isAbsolute(dir) || path.normalize(dir) !== dir || path.dirname(dir) === dir || dir.endsWith("/")) return false;
  if (root !== undefined && path.dirname(dir) !== path.resolve(root)) return false;
  const st = await fs.lstat(dir).catch(() => undefined);
  if (!st?.isDirectory()) return false;
  const m = await fs.lstat(path.join(dir, VM_MARKER)).catch(() => undefined);
  if (!m?.isFile() || m.size > 4096) return false;
  return (await fs.readFile(path.join(dir, VM_MARKER), "utf8").catch(() => "")) === markerText(dir);
}

/**
 * Is `pid` the QEMU of the VM in `stateDir`? Same boot and start time (no reused pid), a
 * `qemu-system-*` command line, and its stdout is that VM's qemu.log (startVm opens it on the
 * host before QEMU starts, so no other process holds it). Only such a pid is ever signalled.
 */
export function isVmQemu(pid: unknown, startTime: unknown, stateDir: string, boot?: unknown): boolean {
  if (!Number.isSafeInteger(pid) || (pid as number) <= 1 || typeof startTime !== "number") return false;
  if (boot !== undefined && boot !== bootId()) return false;
  if (procStartTime(pid as number) !== startTime || !cmdlineOf(pid as number).startsWith("qemu-system-")) return false;
  try {
    return readlinkSync(`/proc/${pid}/fd/1`) === realpathSync(path.join(stateDir, "qemu.log"));
  } catch {
    return false;
  }
}

/** This boot of the host: pid + start time are unique only within one boot. */
export function bootId(): string {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "unknown";
  }
}

/** Is the VM's QEMU (same boot, same pid, same start time) still running? */
export function vmRunning(vm: Pick<VmInfo, "pid" | "startTime"> & { bootId?: string }): boolean {
  if (vm.bootId && vm.bootId !== bootId()) return false;
  return vm.pid > 0 && procStartTime(vm.pid) === vm.startTime;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

async function tail(file: string, lines = 15): Promise<string> {
  const t = await fs.readFile(file, "utf8").catch(() => "");
  return t.split(/\r?\n/).slice(-lines).join("\n");
}

/** Start the VM and return once QEMU runs (not yet ready: see waitReady). Cleans up after itself on failure. */
export async function startVm(spec: VmSpec): Promise<VmInfo> {
  const stateDir = path.resolve(spec.stateDir);
  await fs.mkdir(stateDir, { recursive: true, mode: 0o700 });
  if ((await fs.readdir(stateDir)).length) throw new TdxError("E_DEPLOYMENT", `VM state directory ${stateDir} is not empty`, { hint: "Use a fresh directory per VM (tdxvm picks one under the cache by default)." });
  // Who is starting this VM: if that process dies before the VM is marked ready, sweepStale() removes it.
  // Written before the mark: another process's sweepStale (a concurrent `vm up`) acts on marked
  // directories only, and would take a marked one without a creator for a dead start.
  await fs.writeFile(path.join(stateDir, "creator"), `${process.pid} ${procStartTime(process.pid) ?? 0} ${bootId()}\n`);
  // tdxvm's mark: stopVm and sweepStale remove only directories that carry it (see ownedVmDir).
  await markVmDir(stateDir);
  if (!existsSync(spec.disk)) throw new TdxError("E_DEPLOYMENT", `disk image ${spec.disk} does not exist`, { hint: "Bake the image (it may have been removed from the cache); TdxImage re-bakes on the next `pulumi up`." });
  const tdx = spec.tdx ?? false;
  const ports: VmInfo["ports"] = [];
  for (const p of spec.ports ?? []) {
    const bind = p.bind ?? "127.0.0.1";
    ports.push({ guest: p.guest, bind, host: p.host ?? (await freePort(bind)) });
  }
  // The dev VM's swtpm gets EK certificates from the per-host local CA (bound read-only below).
  const ca = tdx ? undefined : await ensureLocalCa(spec.cacheDir ?? defaultCacheDir(), spec.toolsRoot).catch(async (e) => {
    await fs.rm(stateDir, { recursive: true, force: true });
    throw e;
  });
  const ek = swtpmEkCertSetup("/localca", `${D}/ekca`);
  if (ca) {
    await fs.mkdir(path.join(stateDir, "ekca"), { mode: 0o700 });
    for (const [name, text] of Object.entries(ek.files)) await fs.writeFile(path.join(stateDir, "ekca", name), text, { mode: 0o600 });
  }
  const args = qemuArgs({ accel: tdx ? "kvm" : spec.accel, tdx, memoryMiB: spec.memoryMiB ?? 2048, cpus: spec.cpus ?? 2, ports });
  const diskInside = `/disk/${path.basename(spec.disk)}`;
  const diskBind = { host: path.dirname(path.resolve(spec.disk)), inside: "/disk", readOnly: true };
  // 1. Set up disk overlay, firmware variables and TPM in a short-lived sandbox: only it sees the
  //    local CA (swtpm_setup has the EK certificates signed), never the long-running VM's.
  const setup = [
    "set -eu",
    `qemu-img create -q -f qcow2 -b ${shQuote(diskInside)} -F raw ${D}/disk.qcow2`,
    ...(tdx ? [] : [
      `cp /usr/share/OVMF/OVMF_VARS_4M.fd ${D}/vars.fd`,
      `mkdir -p ${D}/tpm`,
      `swtpm_setup --tpm2 --tpmstate ${D}/tpm --pcr-banks ${(spec.pcrBanks ?? ["sha256", "sha384"]).join(",")} ${ek.args.join(" ")} --overwrite --logfile ${D}/swtpm_setup.log >/dev/null`,
    ]),
  ].join("\n");
  const prepared = await runStreaming(sandboxArgv(spec.toolsRoot, ["/bin/sh", "-c", setup], [
    { host: stateDir, inside: D },
    diskBind,
    ...(ca ? [{ host: ca.dir, inside: "/localca", readOnly: true }] : []),
  ]), { tailLines: 20, timeoutMs: 120_000 });
  if (prepared.code !== 0) {
    const log = await tail(path.join(stateDir, "swtpm_setup.log"));
    await fs.rm(stateDir, { recursive: true, force: true });
    throw new TdxError("E_DEPLOYMENT", `preparing the VM (disk overlay, firmware variables, TPM) failed (exit ${prepared.code ?? prepared.signal}):\n${prepared.tail.join("\n")}${log ? `\n${log}` : ""}`, { hint: "Check the message above; the VM's state directory was removed." });
  }
  // 2. The VM: swtpm and QEMU in a sandbox that outlives this process.
  const script = [
    "set -eu",
    ...(tdx ? [] : [
      `swtpm socket --tpm2 --tpmstate dir=${D}/tpm --ctrl type=unixio,path=${D}/swtpm.sock --log file=${D}/swtpm.log --flags startup-clear &`,
      `for i in $(seq 100); do [ -S ${D}/swtpm.sock ] && break; sleep 0.1; done`,
    ]),
    `: > ${D}/serial.log`,
    `exec ${args.map(shQuote).join(" ")}`,
  ].join("\n");
  const vmId = path.basename(stateDir);
  const argv = sandboxArgv(spec.toolsRoot, ["/bin/sh", "-c", script], [{ host: stateDir, inside: D }, diskBind], {}, { outliveParent: true }); // the VM outlives the provider process that starts it
  const logFd = openSync(path.join(stateDir, "qemu.log"), "a");
  let child;
  try {
    // node:child_process, not execa (which the project's other commands run on): the VM is a
    // daemon that must outlive this process, its output goes straight to a log file, and nothing
    // waits for it — execa's subprocess is a promise for a command we await and kill when we exit.
    child = spawn(argv[0], argv.slice(1), { detached: true, stdio: ["ignore", logFd, logFd] });
  } finally {
    closeSync(logFd);
  }
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => resolve());
    child.once("error", () => resolve()); // e.g. unshare missing: fail fast below, not after the timeout
  });
  child.unref();
  const fail = async (why: string): Promise<never> => {
    if (child.pid) for (const c of childrenOf(child.pid)) try { process.kill(c, "SIGKILL"); } catch { /* gone */ }
    try { child.kill("SIGKILL"); } catch { /* gone */ }
    await Promise.race([exited, sleep(2000)]);
    const log = await tail(path.join(stateDir, "qemu.log"));
    await fs.rm(stateDir, { recursive: true, force: true });
    throw new TdxError("E_DEPLOYMENT", `QEMU did not start: ${why}${log ? `\n${log}` : ""}`, { hint: "Check the message above; the VM's state directory was removed." });
  };
  // QEMU is the unshare child once the launch script has exec'd into it and written its pid file.
  const deadline = Date.now() + 60_000;
  let pid = 0;
  let done = false;
  void exited.then(() => { done = true; });
  while (Date.now() < deadline) {
    if (done) return fail("the launcher exited");
    const kid = child.pid ? childrenOf(child.pid)[0] : undefined;
    if (kid && cmdlineOf(kid).startsWith("qemu-system") && existsSync(path.join(stateDir, "qemu.pid"))) {
      pid = kid;
      break;
    }
    await sleep(50);
  }
  if (!pid) return fail("timed out after 60 s");
  const startTime = procStartTime(pid);
  if (startTime === undefined) return fail("QEMU exited right after starting");
  // QEMU answers QMP commands only once it has built the machine (after writing its pid file).
  try {
    await qmpReady(path.join(stateDir, "qmp.sock"), 60_000, () => done);
  } catch (e) {
    return fail(`QEMU did not answer on its QMP socket: ${(e as Error).message}`);
  }
  const info: VmInfo = {
    stateVersion: VM_STATE_VERSION, vmId, stateDir, pid, startTime, bootId: bootId(), accel: tdx ? "kvm" : spec.accel, tdx, ports,
    serialLog: path.join(stateDir, "serial.log"), qemuArgs: args,
  };
  await writeFileAtomic(path.join(stateDir, "vm.json"), JSON.stringify(info, null, 2) + "\n", 0o600);
  return info;
}

/**
 * Connect to QEMU's QMP socket, negotiate capabilities and ask for the VM status: QEMU answers
 * only from its main loop, i.e. after machine creation (devices realized).
 */
export async function qmpReady(sock: string, timeoutMs: number, gone: () => boolean): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last: Error = new Error("no socket yet");
  while (Date.now() < deadline && !gone()) {
    try {
      return await new Promise<string>((resolve, reject) => {
        const c = net.connect(sock);
        let buf = "";
        let step = 0;
        c.setTimeout(10_000, () => c.destroy(new Error("timed out")));
        c.on("error", reject);
        c.on("data", (d) => {
          buf += d.toString();
          let nl: number;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const msg = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
            buf = buf.slice(nl + 1);
            if (msg.event) continue;
            if (msg.error) return reject(new Error(JSON.stringify(msg.error)));
            if (step === 0 && msg.QMP) c.write('{"execute":"qmp_capabilities"}\n');
            else if (step === 1) c.write('{"execute":"query-status"}\n');
            else if (step === 2) {
              c.end();
              return resolve(String((msg.return as { status?: string })?.status));
            }
            step++;
          }
        });
      });
    } catch (e) {
      last = e as Error;
      await sleep(100);
    }
  }
  throw last;
}

/**
 * Remove what an interrupted start left behind below `root`: VM directories whose creator died
 * before the VM was marked ready (their QEMU is stopped), and only directories carrying tdxvm's
 * marker. Ready VMs (vm.json `ready: true`) are never touched.
 */
export async function sweepStale(root: string): Promise<string[]> {
  const removed: string[] = [];
  const alive = (rec: string) => {
    const [pid, start, boot] = rec.trim().split(/\s+/);
    return boot === bootId() && procStartTime(Number(pid)) === Number(start);
  };
  for (const n of await fs.readdir(root).catch(() => [] as string[])) {
    const dir = path.join(root, n);
    if (n.startsWith("vm-")) {
      if (!(await ownedVmDir(dir, root))) continue; // not ours
      const vm = await fs.readFile(path.join(dir, "vm.json"), "utf8").then((t) => JSON.parse(t) as Partial<VmInfo> & { ready?: boolean }, () => undefined);
      if (vm?.ready) continue;
      const creator = await fs.readFile(path.join(dir, "creator"), "utf8").catch(() => "");
      if (creator && alive(creator)) continue;
      // The directory is ours; pids come from its vm.json only (stopVm proves them again).
      await stopVm({ pid: vm?.pid, startTime: vm?.startTime, bootId: vm?.bootId, stateDir: dir }, { graceMs: 2000, root });
      removed.push(dir);
    }
  }
  return removed;
}

/** Mark a VM as ready (handed over to its owner): sweepStale leaves it alone from now on. */
export async function markReady(vm: VmInfo): Promise<void> {
  await writeFileAtomic(path.join(vm.stateDir, "vm.json"), JSON.stringify({ ...vm, ready: true }, null, 2) + "\n", 0o600);
}

/** A state directory under `root` with a random name. */
export function newStateDir(root: string): string {
  return path.join(root, `vm-${randomBytes(6).toString("hex")}`);
}

async function httpAnswers(port: number, host: string, p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host });
    let got = false;
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(3000, () => done(false));
    s.on("connect", () => s.write(`GET ${p} HTTP/1.0\r\nHost: localhost\r\n\r\n`));
    s.on("data", () => {
      got = true;
      done(true);
    });
    s.on("error", () => done(false));
    s.on("close", () => done(got));
  });
}

/**
 * Wait until the guest is ready: the serial console matched `serial` and every `http` port
 * answered. Fails with E_DEPLOYMENT (last serial lines) when QEMU ends or the time runs out.
 */
export async function waitReady(vm: VmInfo, r: Readiness = {}, onProgress?: (msg: string) => void): Promise<{ seconds: number }> {
  const t0 = Date.now();
  const timeout = (r.timeoutSeconds ?? 600) * 1000;
  const pattern = new RegExp(r.serial ?? "login: ?$", "m");
  let serialOk = false;
  let last = 0;
  for (;;) {
    if (!vmRunning(vm)) {
      throw new TdxError("E_DEPLOYMENT", `the VM stopped before it was ready; last serial lines:\n${await tail(vm.serialLog)}`, { hint: `See ${vm.serialLog} and ${path.join(vm.stateDir, "qemu.log")}.` });
    }
    if (!serialOk) serialOk = pattern.test(await fs.readFile(vm.serialLog, "utf8").catch(() => ""));
    if (serialOk) {
      let all = true;
      for (const h of r.http ?? []) {
        const fwd = vm.ports.find((p) => p.guest === h.guestPort);
        if (!fwd) throw new TdxError("E_VALIDATION", `readiness checks guest port ${h.guestPort}, which is not forwarded`, { hint: "Add it to ports: [{guest: …}]." });
        if (!(await httpAnswers(fwd.host, fwd.bind === "0.0.0.0" ? "127.0.0.1" : fwd.bind, h.path ?? "/"))) all = false;
      }
      if (all) return { seconds: (Date.now() - t0) / 1000 };
    }
    if (Date.now() - t0 > timeout) {
      throw new TdxError("E_DEPLOYMENT", `the VM was not ready after ${timeout / 1000} s (${serialOk ? "serial ok, HTTP checks failing" : `serial console never matched /${pattern.source}/`}); last serial lines:\n${await tail(vm.serialLog)}`, {
        hint: `Under TCG (no usable KVM) a boot takes about a minute; raise readiness.timeoutSeconds, or fix the readiness pattern. Serial log: ${vm.serialLog}.`,
      });
    }
    if (onProgress && Date.now() - last > 15_000) {
      last = Date.now();
      onProgress(`waiting for the VM to be ready (${Math.round((Date.now() - t0) / 1000)} s)`);
    }
    await sleep(500);
  }
}

/**
 * Stop the VM: SIGTERM, then SIGKILL after `graceMs`; then remove its state directory. Idempotent.
 * `vm` may come from state, i.e. be anything: nothing happens unless `stateDir` is a directory
 * tdxvm made (ownedVmDir, below `root` when given), and only a pid proven to be that VM's QEMU
 * (isVmQemu: the one named by the caller, else the one in the directory's vm.json) is signalled.
 */
export async function stopVm(vm: Partial<Pick<VmInfo, "pid" | "startTime" | "stateDir" | "bootId">>, opts: { graceMs?: number; keepState?: boolean; root?: string } = {}): Promise<{ killed: boolean; owned: boolean }> {
  const stateDir = vm.stateDir;
  if (!(await ownedVmDir(stateDir, opts.root))) return { killed: false, owned: false };
  const saved = await fs.readFile(path.join(stateDir!, "vm.json"), "utf8").then((t) => JSON.parse(t) as Partial<VmInfo>, () => undefined);
  const info = [vm, saved ?? {}].find((c) => isVmQemu(c.pid, c.startTime, stateDir!, c.bootId));
  let killed = false;
  if (info) {
    const pid = info.pid!;
    const gone = async (ms: number) => {
      const end = Date.now() + ms;
      while (Date.now() < end) {
        if (!vmRunning(info as VmInfo)) return true;
        await sleep(100);
      }
      return !vmRunning(info as VmInfo);
    };
    try { process.kill(pid, "SIGTERM"); } catch { /* already gone */ }
    if (!(await gone(opts.graceMs ?? 10_000))) {
      killed = true;
      try { process.kill(pid, "SIGKILL"); } catch { /* already gone */ }
      if (!(await gone(10_000))) throw new TdxError("E_DEPLOYMENT", `QEMU (pid ${pid}) did not exit after SIGKILL`, { hint: "Check the process by hand (ps -p PID); the state directory was kept." });
    }
  }
  if (!opts.keepState) await fs.rm(stateDir!, { recursive: true, force: true });
  return { killed, owned: true };
}
