/** Host facts for local VMs: QEMU versions, TDX readiness, the QEMU command line of a dev VM and of a TD. */
import { parseQemuVersion, versionAtLeast, tdxSupport } from "../../provider/deploy/host";
import { qemuArgs, procStartTime, vmRunning, freePort } from "../../provider/deploy/qemu";

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
  const base = { memoryMiB: 2048, cpus: 2, ports: [{ guest: 22, host: 40022, bind: "127.0.0.1" }], fwCfg: [] as string[] };
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
  it("passes fw_cfg blobs by name", () => {
    expect(qemuArgs({ ...base, accel: "tcg", tdx: false, fwCfg: ["opt/io.tdxvm/secrets"] }).join(" ")).toContain("-fw_cfg name=opt/io.tdxvm/secrets,file=/vm/fwcfg/opt_io.tdxvm_secrets");
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
  it("removes what dead starters left (unready VM dirs, secrets staging) and keeps ready VMs and live starters' work", async () => {
    const { mkdtemp, mkdir, writeFile, readdir, rm } = await import("node:fs/promises");
    const os = await import("node:os");
    const path = await import("node:path");
    const { sweepStale, bootId } = await import("../../provider/deploy/qemu");
    const root = await mkdtemp(path.join(os.tmpdir(), "tdxvm-sweep-"));
    const me = `${process.pid} ${procStartTime(process.pid)} ${bootId()}\n`;
    const dead = `999999999 1 ${bootId()}\n`;
    const mk = async (name: string, files: Record<string, string>) => {
      await mkdir(path.join(root, name));
      for (const [f, t] of Object.entries(files)) await writeFile(path.join(root, name, f), t);
    };
    await mk("vm-dead", { creator: dead });
    await mk("vm-ready", { creator: dead, "vm.json": JSON.stringify({ ready: true, pid: 1, startTime: 1 }) });
    await mk("vm-starting", { creator: me });
    await mk(".secrets-dead", { owner: dead, "secrets.json": "{}" });
    await mk(".secrets-live", { owner: me, "secrets.json": "{}" });
    await mk("unrelated", {});
    const removed = await sweepStale(root);
    expect(removed.map((d) => path.basename(d)).sort()).toEqual([".secrets-dead", "vm-dead"]);
    expect((await readdir(root)).sort()).toEqual([".secrets-live", "unrelated", "vm-ready", "vm-starting"]);
    await rm(root, { recursive: true, force: true });
  });
});
