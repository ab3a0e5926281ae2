/**
 * Ground truth: bake an image, boot it from its disk under QEMU (TCG) + OVMF + swtpm with
 * sha256 and sha384 PCR banks, let the guest print its PCRs and TCG2 event log, and hold every
 * prediction against what the booted VM reports.
 */
import { promises as fs, readFileSync, realpathSync } from "node:fs";
import * as path from "node:path";
import { BakeResult, artifact, defaultCacheDir, bootBakedDisk, parseGuestReport, measureBake, measureBoot, verify, diffMeasurements, diffToMarkdown, measurementsToJson, measurementsToCbor } from "../../provider";
import { parseEventLog, replayLog, bootEvents, readDiskHead, ukiSections, TcgEvent, digest, parseGpt } from "../../provider/measure";
import { startVm, stopVm, vmRunning } from "../../provider/deploy/qemu";
import { REPORT_DONE } from "../../provider/modules/bootReport";
import { parseUserspaceLog } from "../../provider/measure/verify";
import { toolsTreeDir } from "../../provider/bake/toolsTree";
import { groundTruthImage } from "../fixtures/groundtruth";
import { tempDir } from "../helpers";
import { decode } from "cbor-x";

jest.setTimeout(40 * 60_000);

describe("ground truth: predictions equal what a booted VM reports", () => {
  const cacheDir = defaultCacheDir();
  let baked: BakeResult;
  let work: string;
  let guest: ReturnType<typeof parseGuestReport>;
  let log: ReturnType<typeof parseEventLog>;
  let uki: Buffer;
  let diskHead: Buffer;
  let serial: string;

  beforeAll(async () => {
    work = await tempDir("tdxvm-gt-");
    baked = await groundTruthImage(work).bake({ cacheDir, quiet: true });
    const boot = await bootBakedDisk(baked, { toolsRoot: realpathSync(toolsTreeDir(cacheDir)), workDir: path.join(work, "boot"), pcrBanks: ["sha256", "sha384"], timeoutMs: 20 * 60_000 });
    serial = boot.serial;
    guest = parseGuestReport(boot.serial);
    log = parseEventLog(guest.eventLog);
    uki = readFileSync(artifact(baked, "uki")!.path);
    diskHead = await readDiskHead(artifact(baked, "disk")!.path);
  });

  afterAll(async () => {
    if (work) await fs.rm(work, { recursive: true, force: true });
  });

  it("the guest reported both PCR banks and a parseable event log", () => {
    expect(Object.keys(guest.pcrs.sha256 ?? {})).toHaveLength(24);
    expect(Object.keys(guest.pcrs.sha384 ?? {})).toHaveLength(24);
    expect(log.specId.algorithms.map((a) => a.alg).sort()).toEqual(["sha256", "sha384"]);
    expect(guest.cmdline).toContain("systemd.firstboot=no");
  });

  it("booted the verity-protected root the UKI names (the default rootfs)", () => {
    expect(baked.rootfs).toBe("verity");
    expect(baked.rootHash).toMatch(/^[0-9a-f]{64}$/);
    expect(guest.cmdline.split(" ")).toContain(`roothash=${baked.rootHash}`);
    expect(guest.cmdline.split(" ")).toContain("systemd.volatile=state");
    expect(serial).toMatch(/Using verity root device \/dev\/mapper\/root/);
  });

  it("replaying the guest's logs reproduces its PCRs in both banks (firmware log; PCR 11 also systemd's userspace log)", () => {
    const replay = replayLog(log.events);
    const user = parseUserspaceLog(guest.userspaceLog);
    expect(user.filter((u) => u.pcr === 11)).toHaveLength(4); // systemd-pcrphase: enter-initrd, leave-initrd, sysinit, ready
    for (const alg of ["sha256", "sha384"] as const) {
      for (const pcr of [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14]) {
        const want = guest.pcrs[alg][pcr];
        let got: Buffer = replay.get(pcr)?.get(alg) ?? Buffer.alloc(want.length / 2);
        for (const u of user.filter((x) => x.pcr === pcr)) got = digest(alg, got, Buffer.from(u.event.digests.get(alg)!, "hex"));
        expect({ alg, pcr, value: got.toString("hex") }).toEqual({ alg, pcr, value: want });
      }
    }
  });

  it("azure backend: PCR 4, 9 and 11 equal the guest's sha256 PCRs; 8, 12, 13 are zero", async () => {
    const m = await measureBake(baked, { backend: "azure", cacheDir });
    for (const pcr of [4, 9, 11, 8, 12, 13]) expect({ pcr, value: m.registers[`PCR${pcr}`].value }).toEqual({ pcr, value: guest.pcrs.sha256[pcr] });
    expect(m.registers.PCR0.status).toBe("platform-defined");
    expect(m.registers.PCR15.status).toBe("platform-defined");
    expect(m.registers.PCR15.why).toContain("run time");
  });

  /** The log's events of one PCR, in order, with their digest in `alg`. */
  const logged = (pcr: number, alg: "sha256" | "sha384") =>
    log.events.filter((e: TcgEvent) => e.index === pcr && e.typeName !== "EV_NO_ACTION").map((e) => ({ type: e.typeName, digest: e.digests.find((d) => d.alg === alg)!.digest.toString("hex") }));

  it("every predicted OS event (PCR 4, 5, 9, 11) equals the guest's, in both banks", () => {
    for (const alg of ["sha256", "sha384"] as const) {
      const predicted = bootEvents({ uki, diskHead }, alg);
      for (const pcr of [4, 5, 9, 11]) {
        const want = predicted.filter((e) => e.pcr === pcr).map((e) => ({ type: e.type, digest: e.digest }));
        expect({ alg, pcr, events: logged(pcr, alg) }).toEqual({ alg, pcr, events: want });
      }
    }
  });

  it("rtmr backend: the SHA-384 digests of the RTMR1/RTMR2 events are the guest's sha384-bank events", async () => {
    const m = await measureBake(baked, { backend: "rtmr", cacheDir });
    const sha384 = new Set(log.events.flatMap((e) => e.digests.filter((d) => d.alg === "sha384").map((d) => d.digest.toString("hex"))));
    for (const reg of ["RTMR1", "RTMR2"]) {
      expect(m.registers[reg].events.length).toBeGreaterThan(3);
      for (const e of m.registers[reg].events) expect({ reg, event: e.description, inLog: sha384.has(e.digest) }).toEqual({ reg, event: e.description, inLog: true });
    }
    // RTMR2 = the PCR 11 then PCR 9 events in log order (stub sections, then the kernel's).
    const order = log.events.filter((e) => e.index === 11 || e.index === 9).map((e) => e.digests.find((d) => d.alg === "sha384")!.digest.toString("hex"));
    expect(m.registers.RTMR2.events.map((e) => e.digest)).toEqual(order);
    // RTMR1 = the PCR 4 and 5 events in log order, exactly, with one separator: a TPM logs one per
    // PCR, a TD one per RTMR (edk2 TdTcg2Dxe; the COS 113 CCEL in the unit tests shows it).
    let separators = 0;
    const rtmr1 = log.events
      .filter((e) => (e.index === 4 || e.index === 5) && e.typeName !== "EV_NO_ACTION")
      .filter((e) => e.typeName !== "EV_SEPARATOR" || separators++ === 0)
      .map((e) => `${e.typeName} ${e.digests.find((d) => d.alg === "sha384")!.digest.toString("hex")}`);
    expect(separators).toBe(2);
    expect(m.registers.RTMR1.events.map((e) => `${e.type} ${e.digest}`)).toEqual(rtmr1);
    expect(rtmr1).toHaveLength(7); // the action, a separator, the GPT, UKI and kernel, the two ExitBootServices actions
    expect(m.registers.MRTD.status).toBe("exact");
    expect(m.registers.RTMR0.status).toBe("platform-defined");
    expect(m.registers.RTMR3.value).toBe("0".repeat(96));
  });

  it("verify() accepts the guest's log and PCRs, and rejects them once one image byte changes", async () => {
    const m = await measureBake(baked, { backend: "azure", cacheDir });
    const ok = verify(m, { eventLog: guest.eventLog, pcrs: guest.pcrs, userspaceLog: guest.userspaceLog });
    expect(ok.registers.filter((r) => !r.ok)).toEqual([]);
    expect(ok.ok).toBe(true);

    // One byte of the UKI's .osrel section changes → PCR 11 (and PCR 9, via the stub's cpio) change.
    const osrel = ukiSections(uki).find((s) => s.name === ".osrel")!;
    const pe = uki; // section file offset: find it by content
    const at = pe.indexOf(osrel.data.subarray(0, 64));
    const tampered = Buffer.from(uki);
    tampered[at + 10] ^= 0x01;
    const m2 = await measureBoot({ uki: tampered, diskHead }, { backend: "azure" });
    const bad = verify(m2, { eventLog: guest.eventLog, pcrs: guest.pcrs, userspaceLog: guest.userspaceLog });
    expect(bad.ok).toBe(false);
    const failed = bad.registers.filter((r) => !r.ok).map((r) => r.register).sort();
    expect(failed).toEqual(["PCR11", "PCR4", "PCR9"].sort());
    expect(bad.registers.find((r) => r.register === "PCR11")!.problems.join("\n")).toContain("UKI section .osrel");

    const diff = diffMeasurements(m, m2);
    expect(diff.map((d) => d.register)).toEqual(["PCR4", "PCR9", "PCR11"]);
    expect(diff.find((d) => d.register === "PCR11")!.changes).toEqual(["PCR11: UKI section .osrel changed"]);
    expect(diffToMarkdown(diff)).toContain("| PCR11 |");
  });

  it("serialises measurements stably to JSON and CBOR", async () => {
    const m = await measureBake(baked, { backend: "rtmr", cacheDir });
    expect(measurementsToJson(m)).toBe(measurementsToJson(JSON.parse(measurementsToJson(m))));
    expect(decode(measurementsToCbor(m))).toEqual(JSON.parse(measurementsToJson(m)));
  });
});

/** Boot a disk until the serial console shows `success` or `failure`, or the time runs out; the VM is stopped either way. */
async function bootUntil(toolsRoot: string, disk: string, stateDir: string, o: { success: RegExp; failure: RegExp; timeoutMs: number }): Promise<{ outcome: "success" | "failure" | "timeout" | "exited"; serial: string; seconds: number }> {
  const t0 = Date.now();
  const vm = await startVm({ toolsRoot, disk, stateDir, accel: "tcg" });
  try {
    for (;;) {
      const serial = await fs.readFile(vm.serialLog, "utf8").catch(() => "");
      const seconds = (Date.now() - t0) / 1000;
      if (o.success.test(serial)) return { outcome: "success", serial, seconds };
      if (o.failure.test(serial)) return { outcome: "failure", serial, seconds };
      if (!vmRunning(vm)) return { outcome: "exited", serial, seconds };
      if (Date.now() - t0 > o.timeoutMs) return { outcome: "timeout", serial, seconds };
      await new Promise((r) => setTimeout(r, 1000));
    }
  } finally {
    await stopVm(vm, { graceMs: 1000 });
  }
}

/** Type GUIDs of the x86-64 root and root-verity partitions (Discoverable Partitions Specification). */
const ROOT_X86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
const ROOT_VERITY_X86_64 = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5";

describe("tamper-evidence: a verity root refuses a changed byte", () => {
  const cacheDir = defaultCacheDir();
  let work: string;
  let disk: string;
  let parts: { root: { start: number }; hash: { start: number } };
  // What a dm-verity failure looks like on the console: the kernel's "verity: … is corrupted", a
  // failed veritysetup or root mount, or systemd giving up into emergency mode.
  const failure = /device-mapper: verity.*corrupt|Failed to start .*[Vv]erity|Failed to mount .*sysroot|[Ee]mergency mode|Dependency failed for .*Initrd Root/;

  beforeAll(async () => {
    work = await tempDir("tdxvm-tamper-");
    const baked = await groundTruthImage(work).bake({ cacheDir, quiet: true });
    disk = artifact(baked, "disk")!.path;
    const gpt = parseGpt(await readDiskHead(disk));
    const find = (type: string) => {
      const p = gpt.partitions.find((x) => x.typeGuid.toLowerCase() === type);
      if (!p) throw new Error(`no partition of type ${type}: ${gpt.partitions.map((x) => x.typeGuid).join(", ")}`);
      return { start: Number(p.startingLba) * 512 };
    };
    parts = { root: find(ROOT_X86_64), hash: find(ROOT_VERITY_X86_64) };
  });

  afterAll(async () => {
    if (work) await fs.rm(work, { recursive: true, force: true });
  });

  /** A copy of the disk with one byte flipped at `offset`. */
  async function flipped(name: string, offset: number): Promise<string> {
    const copy = path.join(work, name);
    await fs.copyFile(disk, copy);
    const fh = await fs.open(copy, "r+");
    try {
      const b = Buffer.alloc(1);
      await fh.read(b, 0, 1, offset);
      b[0] ^= 0xff;
      await fh.write(b, 0, 1, offset);
    } finally {
      await fh.close();
    }
    return copy;
  }

  it("one byte of the root file system's data (the erofs superblock, read at mount) changed: no usable system, a verity error", async () => {
    // erofs keeps its superblock 1024 bytes into the partition (magic 0xE0F5E1E2).
    const head = Buffer.alloc(4);
    const fh = await fs.open(disk, "r");
    await fh.read(head, 0, 4, parts.root.start + 1024).finally(() => fh.close());
    expect(head.readUInt32LE(0)).toBe(0xe0f5e1e2);
    const bad = await flipped("data-flipped.raw", parts.root.start + 1024 + 16);
    const r = await bootUntil(realpathSync(toolsTreeDir(cacheDir)), bad, path.join(work, "vm-data"), { success: new RegExp(REPORT_DONE), failure, timeoutMs: 8 * 60_000 });
    expect({ outcome: r.outcome, report: r.serial.includes(REPORT_DONE) }).toEqual({ outcome: "failure", report: false });
    expect(r.serial).toMatch(/verity/i);
  });

  it("one byte of the hash partition (its top-level hash block) changed: no usable system, a verity error", async () => {
    // With a superblock ("verity\0\0") the hash tree starts one 4 KiB block in; its first block is the top level, which every read checks against the root hash.
    const sig = Buffer.alloc(8);
    const fh = await fs.open(disk, "r");
    await fh.read(sig, 0, 8, parts.hash.start).finally(() => fh.close());
    const treeStart = sig.toString("latin1") === "verity\0\0" ? 4096 : 0;
    const bad = await flipped("hash-flipped.raw", parts.hash.start + treeStart + 5);
    const r = await bootUntil(realpathSync(toolsTreeDir(cacheDir)), bad, path.join(work, "vm-hash"), { success: new RegExp(REPORT_DONE), failure, timeoutMs: 8 * 60_000 });
    expect({ outcome: r.outcome, report: r.serial.includes(REPORT_DONE) }).toEqual({ outcome: "failure", report: false });
    expect(r.serial).toMatch(/verity/i);
  });
});

describe("rootfs initrd: the whole OS in the UKI boots, and its PCRs equal the prediction", () => {
  const cacheDir = defaultCacheDir();
  let work: string;

  afterAll(async () => {
    if (work) await fs.rm(work, { recursive: true, force: true });
  });

  it("bakes an ESP-only disk, boots it, and PCR 4/9/11 (with only the sysinit and ready phases) match", async () => {
    work = await tempDir("tdxvm-initrd-");
    const baked = await groundTruthImage(work).rootFs("initrd").bake({ cacheDir, quiet: true });
    expect({ rootfs: baked.rootfs, rootHash: baked.rootHash }).toEqual({ rootfs: "initrd", rootHash: null });
    const gpt = parseGpt(await readDiskHead(artifact(baked, "disk")!.path));
    expect(gpt.partitions.map((p) => p.typeGuid.toLowerCase())).toEqual(["c12a7328-f81f-11d2-ba4b-00a0c93ec93b"]); // the ESP alone
    const boot = await bootBakedDisk(baked, { toolsRoot: realpathSync(toolsTreeDir(cacheDir)), workDir: path.join(work, "boot"), pcrBanks: ["sha256", "sha384"], timeoutMs: 20 * 60_000 });
    const guest = parseGuestReport(boot.serial);
    expect(guest.cmdline).not.toContain("roothash=");
    const m = await measureBake(baked, { backend: "azure", cacheDir });
    expect(String(m.inputs.rootfs)).toMatch(/^initrd/);
    for (const pcr of [4, 9, 11]) expect({ pcr, value: m.registers[`PCR${pcr}`].value }).toEqual({ pcr, value: guest.pcrs.sha256[pcr] });
    expect(parseUserspaceLog(guest.userspaceLog).filter((u) => u.pcr === 11)).toHaveLength(2);
    expect(verify(m, { eventLog: guest.eventLog, pcrs: guest.pcrs, userspaceLog: guest.userspaceLog }).ok).toBe(true);
  });
});
