/** Host facts for local VMs: QEMU versions, TDX readiness, the QEMU command line of a dev VM and of a TD. */
import { parseQemuVersion, versionAtLeast, tdxSupport } from "../../provider/deploy/host";
import { qemuArgs, procStartTime, vmRunning, freePort, stopVm, sweepStale, ownedVmDir, markVmDir, bootId, VM_MARKER } from "../../provider/deploy/qemu";
import { qemuVmProvider } from "../../provider/dynamic/qemuVm";
import { spawn, ChildProcess } from "node:child_process";
import { promises as fs, openSync, closeSync, readFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

describe("QEMU version", () => {
  it("parses qemu --version output and Debian package versions", () => {
    expect(parseQemuVersion("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)")).toEqual([10, 0, 2]);
    expect(parseQemuVersion("QEMU emulator version 10.1")).toEqual([10, 1, 0]);
    expect(parseQemuVersion("qemu-kvm 7")).toBeUndefined();
  });
  it("compares versions component-wise", () => {
    expect(versionAtLeast([10, 1, 0], [10, 1])).toBe(true);
    expect(versionAtLeast([10, 0, 9], [10, 1])).toBe(false);
    expect(versionAtLeast([11, 0, 0], [10, 1])).toBe(true);
    expect(versionAtLeast([9, 2, 0], [10, 1])).toBe(false);
  });
});

describe("tdxSupport", () => {
  const kvmOk = { usable: true, reason: "ok" };
  it("is capable only with kvm_intel.tdx=Y, working KVM and QEMU >= 10.1", () => {
    expect(tdxSupport({ kvm: kvmOk, qemuVersion: [10, 1, 0], kvmIntelTdx: "Y\n" })).toEqual({ capable: true, reasons: [] });
  });
  it("names every missing piece", () => {
    const r = tdxSupport({ kvm: { usable: false, reason: "OVMF did not start under KVM" }, qemuVersion: [10, 0, 2], kvmIntelTdx: null });
    expect(r.capable).toBe(false);
    expect(r.reasons).toEqual([
      "the host kernel has no TDX support loaded (/sys/module/kvm_intel/parameters/tdx missing)",
      "KVM cannot run guests here: OVMF did not start under KVM",
      "QEMU 10.0.2 is older than 10.1 (first release with TDX guests)",
    ]);
    expect(tdxSupport({ kvm: kvmOk, qemuVersion: [10, 1, 0], kvmIntelTdx: "N" }).reasons).toEqual(["TDX is disabled in kvm_intel (tdx=N)"]);
  });
});

describe("qemuArgs", () => {
  const base = { memoryMiB: 2048, cpus: 2, ports: [{ guest: 22, host: 40022, bind: "127.0.0.1" }] };
  it("dev VM: OVMF in pflash, swtpm TPM, TCG with -cpu max, forwards and a QMP socket", () => {
    const a = qemuArgs({ ...base, accel: "tcg", tdx: false });
    const s = a.join(" ");
    expect(a[0]).toBe("qemu-system-x86_64");
    expect(s).toContain("-machine q35,accel=tcg -cpu max");
    expect(s).toContain("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd");
    expect(s).toContain("-device tpm-crb,tpmdev=tpm0");
    expect(s).toContain("-netdev user,id=n0,hostfwd=tcp:127.0.0.1:40022-:22");
    expect(s).toContain("-pidfile /vm/qemu.pid");
    expect(s).not.toContain("tdx-guest");
    expect(qemuArgs({ ...base, accel: "kvm", tdx: false }).join(" ")).toContain("-machine q35,accel=kvm -cpu host");
  });
  it("TD: tdx-guest object, TDVF as -bios, split irqchip, no pflash, no SMM, no TPM", () => {
    const s = qemuArgs({ ...base, accel: "kvm", tdx: true }).join(" ");
    expect(s).toContain('-object {"qom-type":"tdx-guest","id":"tdx0"}');
    expect(s).toContain("-machine q35,kernel-irqchip=split,confidential-guest-support=tdx0,hpet=off,smm=off");
    expect(s).toContain("-bios /usr/share/ovmf/OVMF.fd");
    expect(s).not.toContain("pflash");
    expect(s).not.toContain("tpm");
  });
  it("passes nothing to the guest through fw_cfg (secrets go to the attested agent only)", () => {
    expect(qemuArgs({ ...base, accel: "tcg", tdx: false }).join(" ")).not.toContain("-fw_cfg");
  });
});

describe("process identity", () => {
  it("knows this process by pid and start time, and not a reused pid", () => {
    const st = procStartTime(process.pid);
    expect(typeof st).toBe("number");
    expect(vmRunning({ pid: process.pid, startTime: st! })).toBe(true);
    expect(vmRunning({ pid: process.pid, startTime: st! + 1 })).toBe(false);
    expect(vmRunning({ pid: 0, startTime: 0 })).toBe(false);
  });
  it("finds a free port", async () => {
    const p = await freePort();
    expect(p).toBeGreaterThan(1024);
  });
});

describe("sweepStale", () => {
  it("removes what dead starters left (unready VM dirs) and keeps ready VMs, live starters' work and what it did not make", async () => {
    const { mkdtemp, mkdir, writeFile, readdir, rm } = await import("node:fs/promises");
    const os = await import("node:os");
    const path = await import("node:path");
    const { sweepStale, bootId } = await import("../../provider/deploy/qemu");
    const root = await mkdtemp(path.join(os.tmpdir(), "tdxvm-sweep-"));
    const me = `${process.pid} ${procStartTime(process.pid)} ${bootId()}\n`;
    const dead = `999999999 1 ${bootId()}\n`;
    const mk = async (name: string, files: Record<string, string>, marked = true) => {
      await mkdir(path.join(root, name));
      if (marked) await markVmDir(path.join(root, name));
      for (const [f, t] of Object.entries(files)) await writeFile(path.join(root, name, f), t);
    };
    await mk("vm-dead", { creator: dead });
    await mk("vm-ready", { creator: dead, "vm.json": JSON.stringify({ ready: true, pid: 1, startTime: 1 }) });
    await mk("vm-starting", { creator: me });
    await mk("vm-unmarked", { creator: dead }, false); // looks like a dead start, but tdxvm did not make it
    await mk(".secrets-dead", { owner: dead, "secrets.json": "{}" }, false); // tdxvm no longer makes these: not ours to remove
    await mk("unrelated", {}, false);
    const removed = await sweepStale(root);
    expect(removed.map((d) => path.basename(d)).sort()).toEqual(["vm-dead"]);
    expect((await readdir(root)).sort()).toEqual([".secrets-dead", "unrelated", "vm-ready", "vm-starting", "vm-unmarked"]);
    await rm(root, { recursive: true, force: true });
  });
});

describe("stop, sweep and delete act only on what tdxvm made (state is untrusted)", () => {
  let base: string;
  let root: string;
  const procs: ChildProcess[] = [];
  beforeEach(async () => {
    base = await fs.mkdtemp(path.join(os.tmpdir(), "tdxvm-own-"));
    root = path.join(base, "vms");
    await fs.mkdir(root);
  });
  afterEach(async () => {
    for (const p of procs.splice(0)) try { p.kill("SIGKILL"); } catch { /* gone */ }
    await fs.rm(base, { recursive: true, force: true });
  });

  const alive = (pid: number, start: number) => procStartTime(pid) === start;
  /** A real long-running process; with `qemuLog`, one that looks like a VM's QEMU (argv[0] and stdout). */
  async function proc(opts: { argv0?: string; stdout?: string } = {}): Promise<{ pid: number; startTime: number }> {
    const fd = opts.stdout ? openSync(opts.stdout, "a") : "ignore";
    const child = spawn("bash", ["-c", `exec -a ${opts.argv0 ?? "sleep"} sleep 300`], { stdio: ["ignore", fd, fd] });
    if (typeof fd === "number") closeSync(fd);
    procs.push(child);
    const pid = child.pid!;
    for (let i = 0; i < 200; i++) {
      if (readFileSync(`/proc/${pid}/cmdline`, "utf8").startsWith(`${opts.argv0 ?? "sleep"}\u0000300`)) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    return { pid, startTime: procStartTime(pid)! };
  }
  async function userDir(name = "mine"): Promise<string> {
    const d = path.join(base, name);
    await fs.mkdir(d, { recursive: true });
    await fs.writeFile(path.join(d, "precious.txt"), "keep me\n");
    return d;
  }
  async function vmDir(name = "vm-0123456789ab"): Promise<string> {
    const d = path.join(root, name);
    await fs.mkdir(d);
    await markVmDir(d);
    return d;
  }

  it("ownedVmDir: only absolute, normalised, real, marked directories (below the root when given)", async () => {
    const d = await vmDir();
    expect(await ownedVmDir(d)).toBe(true);
    expect(await ownedVmDir(d, root)).toBe(true);
    expect(await ownedVmDir(d, base)).toBe(false); // not directly below that root
    for (const bad of [undefined, 42, "", "/", ".", "..", path.relative(process.cwd(), d), `${d}/`, path.join(d, "..", path.basename(d)).replace(root, `${root}/.`)]) {
      expect({ bad, owned: await ownedVmDir(bad) }).toEqual({ bad, owned: false });
    }
    // A link to a marked directory is not that directory.
    await fs.symlink(d, path.join(root, "vm-link"));
    expect(await ownedVmDir(path.join(root, "vm-link"))).toBe(false);
    // A marker copied into another directory names the wrong path.
    const u = await userDir();
    await fs.copyFile(path.join(d, VM_MARKER), path.join(u, VM_MARKER));
    expect(await ownedVmDir(u)).toBe(false);
    // A marker that is a link (to a real marker) does not count either.
    const u2 = await userDir("mine2");
    await fs.symlink(path.join(d, VM_MARKER), path.join(u2, VM_MARKER));
    expect(await ownedVmDir(u2)).toBe(false);
  });

  it("stopVm leaves a user's directory alone (absolute, relative, through a link, outside the root) and signals nothing", async () => {
    const u = await userDir();
    const other = await proc();
    const owned: unknown[] = [];
    for (const stateDir of [u, path.relative(process.cwd(), u), `${u}/`, path.join(u, "..", "mine")]) {
      owned.push((await stopVm({ stateDir, pid: other.pid, startTime: other.startTime, bootId: bootId() }, { graceMs: 100 })).owned);
    }
    const marked = await vmDir();
    await fs.symlink(marked, path.join(base, "link"));
    owned.push((await stopVm({ stateDir: path.join(base, "link") }, { graceMs: 100 })).owned);
    owned.push((await stopVm({ stateDir: marked }, { graceMs: 100, root: base })).owned);
    expect(await fs.readFile(path.join(u, "precious.txt"), "utf8").catch(() => "removed")).toBe("keep me\n");
    expect(alive(other.pid, other.startTime)).toBe(true);
    expect(await ownedVmDir(marked)).toBe(true);
    expect(owned).toEqual([false, false, false, false, false, false]);
  });

  it("stopVm signals only a pid proven to be that VM's QEMU (start time, qemu-system command line, stdout on its qemu.log)", async () => {
    const d = await vmDir();
    const other = await proc(); // an unrelated process
    const lookalike = await proc({ argv0: "qemu-system-x86_64", stdout: path.join(await userDir("elsewhere"), "qemu.log") }); // a QEMU, not this VM's
    const qemu = await proc({ argv0: "qemu-system-x86_64", stdout: path.join(d, "qemu.log") });
    // State naming another process, or the right pid with a wrong start time: no signal, the dir (ours) goes.
    for (const p of [other, lookalike, { pid: qemu.pid, startTime: qemu.startTime + 1 }]) {
      const d2 = await vmDir(`vm-${p.pid}${p.startTime}`.slice(0, 15));
      await fs.writeFile(path.join(d2, "vm.json"), JSON.stringify({ pid: p.pid, startTime: p.startTime }));
      await stopVm({ ...p, stateDir: d2 }, { graceMs: 100 });
      await expect(fs.stat(d2)).rejects.toMatchObject({ code: "ENOENT" });
    }
    expect([alive(other.pid, other.startTime), alive(lookalike.pid, lookalike.startTime), alive(qemu.pid, qemu.startTime)]).toEqual([true, true, true]);
    // State with another process's pid, but the VM's own vm.json knows its QEMU: that one is stopped, the other is not.
    await fs.writeFile(path.join(d, "vm.json"), JSON.stringify({ pid: qemu.pid, startTime: qemu.startTime, bootId: bootId() }));
    const r = await stopVm({ pid: other.pid, startTime: other.startTime, stateDir: d }, { graceMs: 5000, root });
    expect(alive(qemu.pid, qemu.startTime)).toBe(false);
    expect(alive(other.pid, other.startTime)).toBe(true);
    expect(r).toEqual({ killed: false, owned: true });
    await expect(fs.stat(d)).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("sweepStale never stops a process its vm.json names unless it is that VM's QEMU", async () => {
    const other = await proc();
    const d = await vmDir();
    await fs.writeFile(path.join(d, "creator"), `999999999 1 ${bootId()}\n`);
    await fs.writeFile(path.join(d, "vm.json"), JSON.stringify({ pid: other.pid, startTime: other.startTime, bootId: bootId() }));
    expect(await sweepStale(root)).toEqual([d]);
    expect(alive(other.pid, other.startTime)).toBe(true);
  });

  it("QemuVm delete with hostile state (a user's directory, another process's pid) removes and signals nothing", async () => {
    const u = await userDir();
    const other = await proc({ argv0: "qemu-system-x86_64" });
    for (const stateDir of [u, path.relative(process.cwd(), u)]) {
      await qemuVmProvider.delete("vm-x", { stateDir, stateRoot: root, pid: other.pid, startTime: other.startTime, bootId: bootId() });
      await qemuVmProvider.delete("vm-x", { stateDir, stateRoot: base, pid: other.pid, startTime: other.startTime });
    }
    expect(await fs.readFile(path.join(u, "precious.txt"), "utf8")).toBe("keep me\n");
    expect(alive(other.pid, other.startTime)).toBe(true);
    // Its own VM directory below the state root does go.
    const d = await vmDir();
    await qemuVmProvider.delete("vm-0123456789ab", { stateDir: d, stateRoot: root, pid: other.pid, startTime: other.startTime });
    await expect(fs.stat(d)).rejects.toMatchObject({ code: "ENOENT" });
    expect(alive(other.pid, other.startTime)).toBe(true);
  });
});
