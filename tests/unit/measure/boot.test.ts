/**
 * The predictions above the parsers: bootEvents (which events, in which order, with which digests)
 * and measureBoot (how they become PCR 4/9/11, RTMR1/2, MRTD, RTMR0 and RTMR3 per backend).
 *
 * Second paths, none of which calls the code under test:
 * - independent/boot_events.py: the boot timeline written from edk2, systemd-stub 257, the Linux
 *   efistub and the TCG PFP (both banks, vTPM log and TD registers);
 * - systemd-measure calculate (systemd 257, tools tree): PCR 11 with and without the boot phases;
 * - the COS 113 CCEL of google/go-tdx-guest (fixtures/): a real TD's RTMR1 composition and the
 *   digests of its constant events and GPT, and its RTMR0 equal to the quote of the same boot;
 * - pinned values for the fixed synthetic image (fixed-image.ts), computed by boot_events.py.
 * The ground-truth boot (tests/integration/groundtruth.test.ts) holds the same predictions against
 * a booted VM's logs.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { createHash } from "node:crypto";
import { bootEvents, measureBoot, parseCcel, parseGptEventData, parseTdxQuote, ukiCmdline, EventType, LedgerEvent, Measurements } from "../../../provider/measure";
import { testUki } from "../../fixtures/testUki";
import { FIXED_ROOT_HASH, fixedDiskHead, fixedKernel, fixedUki } from "./fixed-image";
import { buildPe } from "./pe-builder";
import { EV, writeTcgLog } from "./tcg-log-writer";
import { fixture, hex, independent, ovmfPath, systemdMeasurePcr11, tempDir } from "./fixtures";

interface PyEvent { pcr: number; type: string; digest: string }
interface Prediction {
  tpm: Record<"sha256" | "sha384", PyEvent[]>;
  pcr: Record<"sha256" | "sha384", Record<string, string>>;
  td: { rtmr1: PyEvent[]; rtmr2: PyEvent[]; RTMR1: string; RTMR2: string };
}

/** independent/boot_events.py's prediction for a UKI and disk head. */
function predict(uki: Buffer, diskHead?: Buffer, opts: { rootfs?: string } = {}): Prediction {
  const dir = tempDir();
  fs.writeFileSync(path.join(dir, "uki.efi"), uki);
  const args = ["uki.efi"];
  if (diskHead) {
    fs.writeFileSync(path.join(dir, "disk.img"), diskHead);
    args.push("disk.img");
  }
  if (opts.rootfs) args.push(`--rootfs=${opts.rootfs}`);
  return JSON.parse(independent("boot_events.py", args, dir)) as Prediction;
}

const firmwareOnly = (events: PyEvent[]) => events.filter((e) => e.type !== "systemd-pcrphase");
const shape = (events: ReadonlyArray<LedgerEvent | PyEvent>) => events.map((e) => ({ pcr: e.pcr, type: e.type, digest: e.digest }));
const sha384 = (b: Buffer | string) => createHash("sha384").update(b).digest("hex");

/** Pinned for the fixed synthetic image (fixed-image.ts): values of independent/boot_events.py. */
const FIXED = {
  PCR4: "8b5be509a3968ebd6f1cb15ce8100b17f410ed8b183ce44418eb45eb21f8841d",
  PCR9: "d81719a1961e1a3309546b14e1f06181b62d9accd66a1c6f7025d2eac45d1b22",
  PCR11: "eb84af78191720d2b04ca23efac95848bcc08eceab2d20a3a77ac4db60c22c44",
  RTMR1: "aeb019018a47a9ec6c6db414ff6091a5bbae8ba61c90c4dd74bed9bd3afc07f70cac26817002444bf26b7b0ad13cb3fb",
  RTMR2: "abd06a4699814832f44e6c6fb1290fb2031b8e003a6665a0d60b20c9ddb685b7436e5469d51813538c330450630c79db",
};

describe("bootEvents: the fixed synthetic image", () => {
  it("lists the OS-phase events in log order, each with its register, type and meaning", () => {
    const events = bootEvents({ uki: fixedUki(), diskHead: fixedDiskHead() }, "sha256");
    const sections = [".linux", ".osrel", ".cmdline", ".initrd", ".uname", ".sbat", ".pcrpkey"];
    expect(events.map((e) => [e.pcr, e.type, e.description])).toEqual([
      [4, "EV_EFI_ACTION", "Calling EFI Application from Boot Option"],
      [4, "EV_SEPARATOR", "separator"],
      [5, "EV_SEPARATOR", "separator"],
      [5, "EV_EFI_GPT_EVENT", "GPT of the boot disk"],
      [4, "EV_EFI_BOOT_SERVICES_APPLICATION", "UKI (EFI/BOOT/BOOTX64.EFI)"],
      ...sections.flatMap((s) => [[11, "EV_IPL", `UKI section name ${s}`], [11, "EV_IPL", `UKI section ${s}`]]),
      [4, "EV_EFI_BOOT_SERVICES_APPLICATION", "kernel (.linux, loaded by systemd-stub)"],
      [9, "EV_EVENT_TAG", "kernel command line (LOADED_IMAGE::LoadOptions)"],
      [9, "EV_EVENT_TAG", "Linux initrd"],
      [5, "EV_EFI_ACTION", "Exit Boot Services Invocation"],
      [5, "EV_EFI_ACTION", "Exit Boot Services Returned with Success"],
    ]);
    // Constant events: the strings without NUL, the separator as four zero bytes, the section names with theirs.
    const d = (s: string | Buffer) => createHash("sha256").update(s).digest("hex");
    expect(events[0]!.digest).toBe(d("Calling EFI Application from Boot Option"));
    expect([events[1]!.digest, events[2]!.digest]).toEqual([d(Buffer.alloc(4)), d(Buffer.alloc(4))]);
    expect(events[5]!.digest).toBe(d(".linux\0"));
    expect(events.slice(-2).map((e) => e.digest)).toEqual([d("Exit Boot Services Invocation"), d("Exit Boot Services Returned with Success")]);
    expect(events.find((e) => e.description === "kernel command line (LOADED_IMAGE::LoadOptions)")!.origin).toContain(`roothash=${FIXED_ROOT_HASH}`);
  });

  it("has the digests the independent implementation computes, in both banks", () => {
    const py = predict(fixedUki(), fixedDiskHead());
    for (const alg of ["sha256", "sha384"] as const) {
      expect({ alg, events: shape(bootEvents({ uki: fixedUki(), diskHead: fixedDiskHead() }, alg)) }).toEqual({ alg, events: shape(firmwareOnly(py.tpm[alg])) });
    }
  });

  it("gives the pinned register values (azure: PCR 4, 9, 11 with the boot phases; rtmr: RTMR1, RTMR2)", async () => {
    const img = { uki: fixedUki(), diskHead: fixedDiskHead() };
    const azure = await measureBoot(img, { backend: "azure" });
    const rtmr = await measureBoot(img, { backend: "rtmr" });
    const got = { PCR4: azure.registers.PCR4!.value, PCR9: azure.registers.PCR9!.value, PCR11: azure.registers.PCR11!.value, RTMR1: rtmr.registers.RTMR1!.value, RTMR2: rtmr.registers.RTMR2!.value };
    expect(got).toEqual(FIXED);
    const py = predict(img.uki, img.diskHead);
    expect(FIXED).toEqual({ PCR4: py.pcr.sha256["4"], PCR9: py.pcr.sha256["9"], PCR11: py.pcr.sha256["11"], RTMR1: py.td.RTMR1, RTMR2: py.td.RTMR2 });
  });
});

describe("the kernel command line systemd-stub hands over (PCR 9, RTMR2)", () => {
  it("is .cmdline up to a NUL, as UCS-2 without what UCS-2 cannot hold, blanks skipped at the start, made spaces inside, cut at the end", () => {
    // systemd 257 src/boot/efi-string.c xstrn8_to_16 and src/boot/util.c mangle_stub_cmdline.
    const raw = Buffer.concat([
      Buffer.from("\t\n console=ttyS0\tquiet\r\n\x7f", "latin1"),
      Buffer.from("é😀", "utf8"), // U+1F600 does not fit UCS-2: dropped
      Buffer.from([0xff]), // not a lead byte: skipped
      Buffer.from("x"),
      Buffer.from([0xc3, 0x28]), // a two-byte sequence with a bad continuation: both bytes dropped
      Buffer.from("y  \n\0after the NUL"),
    ]);
    const uki = buildPe({ plus: true, sections: [{ name: ".linux", data: fixedKernel() }, { name: ".cmdline", data: raw }] });
    expect(ukiCmdline(uki)).toBe("console=ttyS0 quiet   éxy");
    const ours = bootEvents({ uki }, "sha256").filter((e) => e.pcr === 9);
    expect(ours[0]!.digest).toBe(createHash("sha256").update(Buffer.from("console=ttyS0 quiet   éxy\0", "utf16le")).digest("hex"));
    expect(shape(ours)).toEqual(shape(predict(uki).tpm.sha256.filter((e) => e.pcr === 9)));
  });
});

describe("measureBoot: the test UKI (ukify, with .ucode) and the sfdisk disk", () => {
  const img = () => ({ uki: fs.readFileSync(testUki().uki), diskHead: fs.readFileSync(testUki().disk).subarray(0, 64 * 1024) });

  it("azure: the PCR 4, 9, 11 events and values of the independent implementation", async () => {
    const { uki, diskHead } = img();
    const py = predict(uki, diskHead);
    const m = await measureBoot({ uki, diskHead }, { backend: "azure" });
    for (const pcr of [4, 9, 11]) {
      const reg = m.registers[`PCR${pcr}`]!;
      expect({ pcr, status: reg.status, events: shape(reg.events) }).toEqual({ pcr, status: "exact", events: shape(py.tpm.sha256.filter((e) => e.pcr === pcr)) });
      expect({ pcr, value: reg.value }).toEqual({ pcr, value: py.pcr.sha256[String(pcr)] });
    }
  });

  it("azure PCR 11 is what systemd-measure predicts after the four boot phases (two when the OS is the initrd)", async () => {
    const { uki, diskHead } = img();
    const sm = systemdMeasurePcr11(uki, ["enter-initrd:leave-initrd:sysinit:ready", "sysinit:ready"]);
    const verity = await measureBoot({ uki, diskHead }, { backend: "azure" });
    const initrd = await measureBoot({ uki, diskHead }, { backend: "azure", rootfs: "initrd" });
    expect([verity.registers.PCR11!.value, initrd.registers.PCR11!.value]).toEqual([sm.sha256["enter-initrd:leave-initrd:sysinit:ready"], sm.sha256["sysinit:ready"]]);
    expect(initrd.registers.PCR11!.events.filter((e) => e.log === "userspace").map((e) => e.description)).toEqual(['boot phase "sysinit"', 'boot phase "ready"']);
  });

  it("rtmr: RTMR1 and RTMR2 events and values of the independent implementation", async () => {
    const { uki, diskHead } = img();
    const py = predict(uki, diskHead);
    const m = await measureBoot({ uki, diskHead }, { backend: "rtmr" });
    // A TD logs events per register, not per PCR: compare types and digests.
    const td = (events: ReadonlyArray<LedgerEvent | PyEvent>) => events.map((e) => `${e.type} ${e.digest}`);
    expect(td(m.registers.RTMR1!.events)).toEqual(td(py.td.rtmr1));
    expect(td(m.registers.RTMR2!.events)).toEqual(td(py.td.rtmr2));
    expect([m.registers.RTMR1!.value, m.registers.RTMR2!.value]).toEqual([py.td.RTMR1, py.td.RTMR2]);
  });
});

describe("RTMR1 composition on a TD, against a real TD's CCEL (COS 113, google/go-tdx-guest)", () => {
  it("is the action, one separator, the GPT, the two applications and the two ExitBootServices actions, with the CCEL's own digests for everything but the applications", async () => {
    const ccel = parseCcel(fixture("ccel-cos113.bin"));
    const logged = ccel.events.filter((e) => e.register === "RTMR1");
    const gpt = logged.find((e) => e.type === EventType.EV_EFI_GPT_EVENT)!;
    // The COS disk's head, rebuilt from its GPT event: the prediction must log the same GPT event.
    const { headerBytes, header, entries } = parseGptEventData(gpt.data);
    const arrayAt = Number(header.partitionEntryLba) * 512;
    const diskHead = Buffer.alloc(arrayAt + header.numberOfPartitionEntries * header.sizeOfPartitionEntry);
    headerBytes.copy(diskHead, 512);
    entries.forEach((e, i) => e.copy(diskHead, arrayAt + i * header.sizeOfPartitionEntry));

    const m = await measureBoot({ uki: fixedUki(), diskHead }, { backend: "rtmr" });
    const predicted = m.registers.RTMR1!.events;
    expect(predicted.map((e) => e.type)).toEqual(logged.map((e) => e.typeName)); // COS boots shim + grub: two applications too
    expect(predicted.filter((e) => e.type === "EV_SEPARATOR")).toHaveLength(1);
    const ccelDigest = (i: number) => logged[i]!.digests.find((x) => x.alg === "sha384")!.digest.toString("hex");
    predicted.forEach((e, i) => {
      if (e.type === "EV_EFI_BOOT_SERVICES_APPLICATION") return;
      expect({ i, event: e.description, digest: e.digest }).toEqual({ i, event: e.description, digest: ccelDigest(i) });
    });
    // So the register is the CCEL's replay with our two applications in place of shim and grub.
    const apps = predicted.filter((e) => e.type === "EV_EFI_BOOT_SERVICES_APPLICATION").map((e) => e.digest);
    const mixed = logged.map((e, i) => (e.type === EventType.EV_EFI_BOOT_SERVICES_APPLICATION ? apps.shift()! : ccelDigest(i)));
    let r = Buffer.alloc(48);
    for (const d of mixed) r = createHash("sha384").update(r).update(Buffer.from(d, "hex")).digest();
    expect(m.registers.RTMR1!.value).toBe(r.toString("hex"));
  });
});

describe("measureBoot: the registers of each backend and their status", () => {
  const img = () => ({ uki: fixedUki(), diskHead: fixedDiskHead() });
  const statuses = (m: Measurements) => Object.fromEntries(Object.entries(m.registers).map(([k, v]) => [k, v.status]));

  it("azure: PCR 4, 9, 11 exact; 8, 12, 13 zero; the rest platform-defined with a reason", async () => {
    const m = await measureBoot(img(), { backend: "azure" });
    const p = "platform-defined";
    expect(statuses(m)).toEqual({ PCR4: "exact", PCR9: "exact", PCR11: "exact", PCR8: "zero", PCR12: "zero", PCR13: "zero", PCR0: p, PCR1: p, PCR2: p, PCR3: p, PCR5: p, PCR6: p, PCR7: p, PCR10: p, PCR15: p });
    for (const r of ["PCR8", "PCR12", "PCR13"]) expect(m.registers[r]).toMatchObject({ alg: "sha256", value: "0".repeat(64), events: [] });
    for (const [name, r] of Object.entries(m.registers)) if (r.status === p) expect({ name, value: r.value, why: (r.why ?? "").length > 20 }).toEqual({ name, value: null, why: true });
    // Nobody publishes reference values for Azure's firmware PCRs or the run-time ones: waived by
    // default, each with its own reason (every output shows WAIVED); none of the image's registers is.
    const waived = Object.fromEntries(Object.entries(m.registers).filter(([, r]) => r.waived !== undefined).map(([n, r]) => [n, r.waived]));
    expect(Object.keys(waived).sort()).toEqual(["PCR0", "PCR1", "PCR10", "PCR15", "PCR2", "PCR3", "PCR5", "PCR6", "PCR7"]);
    expect(waived.PCR15).toMatch(/per VM instance/);
    expect(waived.PCR0).toMatch(/no published reference value/);
    expect(m.inputs).toMatchObject({ pcrBank: "sha256", rootHash: FIXED_ROOT_HASH });
    // PCR 11 = the stub's section events, then systemd-pcrphase's phases from userspace.
    const pcr11 = m.registers.PCR11!.events;
    expect(pcr11.slice(-4).map((e) => [e.type, e.digest, e.log])).toEqual(["enter-initrd", "leave-initrd", "sysinit", "ready"].map((p) => ["systemd-pcrphase", createHash("sha256").update(p).digest("hex"), "userspace"]));
    expect(pcr11.slice(0, -4).every((e) => e.type === "EV_IPL" && e.log === undefined)).toBe(true);
  });

  it("rtmr: MRTD from the firmware in the chosen page order; RTMR0 platform-defined unless a CCEL was captured; RTMR3 zero", async () => {
    const fw = { bytes: fs.readFileSync(ovmfPath()), name: "OVMF.fd" };
    const single = await measureBoot(img(), { backend: "rtmr", firmware: fw });
    const two = await measureBoot(img(), { backend: "rtmr", firmware: fw, pageOrder: "two-pass" });
    // tdvf.test.ts pins these for Debian trixie's OVMF.fd (independent/mrtd.py agrees).
    expect(single.registers.MRTD).toMatchObject({ status: "exact", value: "bdc6fb145880f06f30c8b346b8dce2a99d9351b56892df22f80fcf6574caa9f9c31df8e8576d53b4d0cd1c3f28910e11" });
    expect(two.registers.MRTD!.value).toBe("456f07902150d008bb913c3e1e84e9297f735a6c83cd2a957a1f0a8bbedb06df188e3837ae48d32c73d473d097dc0db2");
    expect(single.inputs).toMatchObject({ firmware: "OVMF.fd", pageOrder: "single-pass", firmwareSha256: createHash("sha256").update(fw.bytes).digest("hex") });
    expect(statuses(single)).toEqual({ MRTD: "exact", RTMR0: "platform-defined", RTMR1: "exact", RTMR2: "exact", RTMR3: "zero" });
    expect(single.registers.RTMR3).toMatchObject({ alg: "sha384", value: "0".repeat(96) });
    expect([single.registers.RTMR0!.waived, single.registers.MRTD!.basis]).toEqual([undefined, undefined]); // not pinned, and predicted
    const gcp = await measureBoot(img(), { backend: "gcp" });
    expect(gcp.registers.MRTD).toMatchObject({ status: "platform-defined", value: null });
    expect([gcp.registers.MRTD!.waived, gcp.registers.RTMR0!.waived]).toEqual([undefined, undefined]);
    expect(gcp.registers.MRTD!.why).toMatch(/Google/);
    expect([gcp.registers.RTMR1!.value, gcp.registers.RTMR2!.value]).toEqual([FIXED.RTMR1, FIXED.RTMR2]);
  });

  it("RTMR0 from a captured CCEL is that CCEL's RTMR0 (= the quote of the same boot), EV_NO_ACTION events left out", async () => {
    const quote = parseTdxQuote(fixture("tdx-quote-cos113.dat"));
    const m = await measureBoot(img(), { backend: "rtmr", capturedCcel: fixture("ccel-cos113.bin") });
    expect(m.registers.RTMR0).toMatchObject({ status: "exact", value: hex(quote.body.rtmr[0]!) });
    expect(m.registers.RTMR0!.events).toHaveLength(parseCcel(fixture("ccel-cos113.bin")).events.filter((e) => e.register === "RTMR0").length);
    expect(m.registers.RTMR0!.basis).toBe("captured");
    // Each event named from its event data (the list an independent decoder printed for this log).
    expect(m.registers.RTMR0!.events.map((e) => e.description)).toEqual([
      "TD HOB (TdxTable: memory layout of the VM)", "configuration firmware volume (CFV) Fv(48DB5E17-707C-472D-91CD-1613E7EF51B0)",
      "EFI variable SecureBoot", "EFI variable PK", "EFI variable KEK", "EFI variable db", "EFI variable dbx", "separator",
      "ACPI table loader (etc/table-loader)", "ACPI RSDP (etc/acpi/rsdp)", "ACPI tables (etc/acpi/tables: DSDT, FACP, APIC, … as the host built them)",
      "EFI variable BootOrder", "EFI variable Boot0001", "EFI variable Boot0000", "EFI variable SbatLevel", "EFI variable MokListTrusted",
    ]);

    // The same log with EV_NO_ACTION records added to RTMR0 (digests that would change it, were they extended).
    const ccel = parseCcel(fixture("ccel-cos113.bin"));
    const noAction = { index: 1, type: EV.EV_NO_ACTION, digests: { sha384: sha384("vendor data") }, data: Buffer.from("vendor data") };
    const rewritten = writeTcgLog(["sha384"], ccel.events.flatMap((e, i) => {
      const ev = { index: e.index, type: e.type, digests: { sha384: e.digests.find((d) => d.alg === "sha384")!.digest.toString("hex") }, data: e.data };
      return i === 3 ? [noAction, ev, noAction] : [ev];
    }));
    const m2 = await measureBoot(img(), { backend: "rtmr", capturedCcel: rewritten });
    expect(m2.registers.RTMR0!.value).toBe(hex(quote.body.rtmr[0]!));
    expect(m2.registers.RTMR0!.events.map((e) => e.type)).not.toContain("EV_NO_ACTION");
  });
});
