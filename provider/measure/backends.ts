/**
 * Backends: which registers a platform reports and how the image determines them.
 *
 * - azure: vTPM PCRs. Azure confidential VMs boot the image through Microsoft's firmware and
 *   paravisor; their MRTD/RTMRs cover the paravisor, so the image is visible only in vTPM PCRs
 *   (constellation image/measured-boot, flashbots/measured-boot). PCR 4, 9, 11 come from the
 *   image; PCR 8, 12, 13, 15 stay zero; the others are the platform's.
 * - rtmr: a TD on QEMU/KVM with an OVMF TDVF. MRTD from the firmware's TDVF metadata; RTMR1
 *   and RTMR2 from the image (PCR→RTMR mapping of edk2 MapPcrToMrIndex: PCR 1,7→RTMR0,
 *   2–6→RTMR1, 8–15→RTMR2), with one separator in RTMR1 as TDX OVMF logs it (dstack-mr
 *   kernel.rs rtmr1_log); RTMR3 zero. RTMR0 covers the TD HOB, CFV, ACPI tables and boot
 *   variables of the VM shape: exact only from a CCEL captured on the target host/shape.
 * - gcp: the same image-side RTMR1/RTMR2; MRTD from a Google TDVF firmware file the user
 *   supplies; RTMR0 from a captured CCEL of the machine shape.
 */
import { createHash } from "node:crypto";
import { TdxError } from "../errors";
import { HashAlg } from "./bytes";
import { bootEventsFrom, BootImage, BootImageFile, phaseEvents, rootHashOf } from "./boot";
import { ukiDigests } from "./stream";
import type { RootFs } from "../recipe/schema";
import { Backend, LedgerEvent, Measurements, RegisterValue } from "./ledger";
import { computeMrtd, PageOrder } from "./tdvf";
import { parseCcel } from "./eventlog";
import { pcrReplay } from "./uki";
import { predictRtmr0, TdShape } from "./rtmr0";

export interface FirmwareInput { bytes: Buffer; name: string }

export interface MeasureOptions {
  backend: Backend;
  /** TDVF firmware (rtmr: default Debian trixie OVMF.fd from the tools tree; gcp: required for MRTD). */
  firmware?: FirmwareInput;
  /** MRTD page order of the host stack: single-pass (QEMU ≥ 9, default) or two-pass (QEMU 8.x). */
  pageOrder?: PageOrder;
  /** A CCEL captured on the target host and VM shape; its RTMR0 events make RTMR0 exact. */
  capturedCcel?: Buffer;
  /** rtmr: the QEMU TD shape (memory, ACPI blobs, boot variables): RTMR0 predicted from it and the firmware. */
  tdShape?: TdShape;
  /** Facts recorded in the result (stub version, artifact digests, ...). */
  inputs?: Record<string, string | number | null>;
  /** How the image's root file system is measured (from the bake); default: verity when the UKI names a roothash=, else none. */
  rootfs?: RootFs;
}

/** What the registers say about the root file system, in words a verifier can act on. */
export function rootfsAssumption(rootfs: RootFs, rootHash: string | null): string {
  if (rootfs === "verity") return `verity: read-only root file system, dm-verity root hash ${rootHash} (on the kernel command line: PCR 9/11, RTMR2)`;
  if (rootfs === "initrd") return "initrd: the whole OS is the UKI's initrd (PCR 9/11, RTMR2); the disk holds only the ESP";
  return "none: the writable ext4 root file system is NOT measured — a host can change programs and configuration on the disk without changing any register";
}

const zero = (alg: HashAlg) => Buffer.alloc(alg === "sha256" ? 32 : 48).toString("hex");

function exact(alg: HashAlg, events: LedgerEvent[]): RegisterValue {
  return { alg, value: pcrReplay(events.map((e) => ({ digest: Buffer.from(e.digest, "hex") })), alg).toString("hex"), status: "exact", events };
}

function platform(alg: HashAlg, why: string): RegisterValue {
  return { alg, value: null, status: "platform-defined", why, events: [] };
}

/** Map a TPM-world event list to what a TD logs per RTMR (PCR 2–6 → RTMR1, 8–15 → RTMR2). */
export function rtmrEvents(events: LedgerEvent[]): { rtmr1: LedgerEvent[]; rtmr2: LedgerEvent[] } {
  const rtmr1: LedgerEvent[] = [];
  const rtmr2: LedgerEvent[] = [];
  let separatorSeen = false;
  for (const e of events) {
    const pcr = e.pcr ?? -1;
    if (pcr >= 2 && pcr <= 6) {
      if (e.type === "EV_SEPARATOR") {
        if (separatorSeen) continue; // TDX OVMF measures one separator into RTMR1
        separatorSeen = true;
      }
      rtmr1.push(e);
    } else if (pcr >= 8 && pcr <= 15) rtmr2.push(e);
  }
  return { rtmr1, rtmr2 };
}

/**
 * The name of an RTMR0 event, from its event data (edk2 OvmfPkg: TdxHelperLib measures the TD HOB
 * as "TdxTable" and the CFV as a firmware blob; TdTcg2Dxe the Secure Boot and boot variables as
 * UEFI_VARIABLE_DATA; QemuFwCfgAcpi.c each fw_cfg ACPI blob as "ACPI DATA" in loader order —
 * table-loader, RSDP, tables; QemuFwCfgLib "QEMU FW CFG" items by file name; SMBIOS as a handoff
 * table). A verifier's row then says "ACPI tables (etc/acpi/tables) differs", not "event 10".
 */
const clean = (t: string) => [...t].map((ch) => (ch.charCodeAt(0) < 0x20 || ch.charCodeAt(0) === 0x7f ? "?" : ch)).join("").slice(0, 120);

export function rtmr0EventName(e: { typeName: string; data: Buffer }, acpiSeen: number): string {
  const d = e.data;
  // Event data comes from a guest's log: printable, short text only in a ledger description.
  const ascii = (b: Buffer) => clean(b.toString("latin1").replace(/\0+$/, ""));
  if (e.typeName === "EV_EFI_HANDOFF_TABLES2" && d.length > 1 && d.length >= 1 + d[0]! && ascii(d.subarray(1, 1 + d[0]!)) === "TdxTable") return "TD HOB (TdxTable: memory layout of the VM)";
  if (e.typeName === "EV_EFI_HANDOFF_TABLES" || e.typeName === "EV_EFI_HANDOFF_TABLES2") return "SMBIOS tables (handoff table)";
  if (e.typeName === "EV_EFI_PLATFORM_FIRMWARE_BLOB2" && d.length > 1 && d.length >= 1 + d[0]!) return `configuration firmware volume (CFV) ${ascii(d.subarray(1, 1 + d[0]!))}`;
  if (/^EV_EFI_VARIABLE_/.test(e.typeName) && d.length >= 32) {
    const nameLen = Number(d.readBigUInt64LE(16));
    if (nameLen > 0 && nameLen < 128 && d.length >= 32 + nameLen * 2) return `EFI variable ${clean(d.subarray(32, 32 + nameLen * 2).toString("utf16le"))}`;
  }
  if (e.typeName === "EV_SEPARATOR") return "separator";
  if (e.typeName === "EV_PLATFORM_CONFIG_FLAGS" && ascii(d) === "ACPI DATA") return ["ACPI table loader (etc/table-loader)", "ACPI RSDP (etc/acpi/rsdp)", "ACPI tables (etc/acpi/tables: DSDT, FACP, APIC, … as the host built them)"][acpiSeen] ?? `ACPI blob ${acpiSeen + 1}`;
  if (e.typeName === "EV_PLATFORM_CONFIG_FLAGS" && d.length >= 12 && ascii(d.subarray(0, 12)) === "QEMU FW CFG") return `QEMU fw_cfg ${ascii(d.subarray(12))}`;
  return e.typeName;
}

function rtmr0FromCcel(ccel: Buffer): LedgerEvent[] {
  let acpi = 0;
  return parseCcel(ccel).events
    .filter((e) => e.index === 1 && e.typeName !== "EV_NO_ACTION")
    .map((e) => {
      const name = rtmr0EventName(e, acpi);
      if (name.startsWith("ACPI")) acpi++;
      return {
        type: e.typeName,
        description: name,
        origin: "captured CCEL (a trusted canary boot on the target host and VM shape)",
        digest: e.digests.find((d) => d.alg === "sha384")?.digest.toString("hex") ?? "",
      };
    });
}

/**
 * What `opts.backend` reports for this image. The UKI is a Buffer (`uki`), or a file (`ukiPath`)
 * that is streamed in constant memory; either way the digests are shared out over two threads.
 */
export async function measureBoot(image: BootImage | BootImageFile, opts: MeasureOptions): Promise<Measurements> {
  const registers: Record<string, RegisterValue> = {};
  const alg: HashAlg = opts.backend === "azure" ? "sha256" : "sha384";
  const digests = await ukiDigests("ukiPath" in image ? image.ukiPath : image.uki, alg);
  const rootHash = rootHashOf(digests.cmdline);
  const rootfs: RootFs = opts.rootfs ?? image.rootfs ?? (rootHash ? "verity" : "none");
  if (rootfs === "verity" && !rootHash) throw new TdxError("E_MEASUREMENT", "the image is declared rootfs \"verity\" but its UKI's command line has no roothash=", { hint: "Bake again: the verity root hash is written by mkosi when it builds the UKI." });
  const ev = bootEventsFrom({ diskHead: image.diskHead, rootfs }, alg, digests);
  const inputs: Record<string, string | number | null> = { ...opts.inputs, rootfs: rootfsAssumption(rootfs, rootHash), rootHash };
  if (opts.backend === "azure") {
    const on = (pcr: number) => ev.filter((e) => e.pcr === pcr);
    registers.PCR4 = exact("sha256", on(4));
    registers.PCR9 = exact("sha256", on(9));
    registers.PCR11 = exact("sha256", [...on(11), ...phaseEvents("sha256", rootfs)]);
    for (const pcr of [8, 12, 13]) registers[`PCR${pcr}`] = { alg: "sha256", value: zero("sha256"), status: "zero", events: [] };
    // Measured on a booted tdxvm image (systemd 257): PCR 15 is NOT zero at run time —
    // systemd-pcrmachine/systemd-pcrfs extend the machine ID and file system identities into it.
    const why: Record<number, string> = {
      0: "Azure firmware (Hyper-V UEFI) code and configuration: published by the platform, not derived from the image",
      1: "Azure firmware configuration and boot variables",
      2: "option ROMs of the Azure virtual hardware",
      3: "option ROM configuration of the Azure virtual hardware",
      5: "GPT and ExitBootServices plus Azure-specific firmware events; the image's GPT event is in the ledger of a dev boot",
      6: "platform manufacturer events",
      7: "Secure Boot policy of the Azure VM (tdxvm images boot with Secure Boot off)",
      10: "extended at run time by the Linux kernel's IMA (boot_aggregate and policy)",
      15: "extended at run time by systemd (machine ID, file systems): differs per VM instance",
    };
    // Nobody publishes reference values for these (Microsoft neither for its firmware nor for the
    // vTPM's run-time registers), so they are waived out loud: every output shows WAIVED and why.
    // A verifier that wants more replaces the waiver with a captured value or refuses.
    const waived: Record<number, string> = {
      0: "Azure's firmware: no published reference value (the vTPM and its AK are anchored by Azure's certificate chain and the TD quote, not by this value)",
      1: "Azure's firmware configuration: no published reference value",
      2: "Azure's virtual hardware option ROMs: no published reference value",
      3: "Azure's virtual hardware option ROM configuration: no published reference value",
      5: "GPT and ExitBootServices mixed with Azure-specific firmware events: no published reference value",
      6: "platform manufacturer events: no published reference value",
      7: "Secure Boot policy of the platform's firmware (tdxvm images boot with Secure Boot off): no published reference value",
      10: "extended at run time by the kernel's IMA: not a boot measurement",
      15: "extended at run time by systemd with the machine ID and file system identities: differs per VM instance",
    };
    for (const [pcr, w] of Object.entries(why)) registers[`PCR${pcr}`] = { ...platform("sha256", w), waived: waived[Number(pcr)]! };
    inputs.pcrBank = "sha256";
  } else {
    const { rtmr1, rtmr2 } = rtmrEvents(ev);
    if (opts.firmware) {
      const order = opts.pageOrder ?? "single-pass";
      const mrtd = computeMrtd(opts.firmware.bytes, { pageOrder: order }).toString("hex");
      registers.MRTD = { alg: "sha384", value: mrtd, status: "exact", events: [{ type: "TDVF", description: `TDVF pages and MR.EXTEND chunks (${order})`, origin: `firmware ${opts.firmware.name}`, digest: mrtd }] };
      inputs.firmware = opts.firmware.name;
      inputs.firmwareSha256 = createHash("sha256").update(opts.firmware.bytes).digest("hex");
      inputs.pageOrder = order;
    } else {
      registers.MRTD = platform("sha384", opts.backend === "gcp"
        ? "Google's TDVF firmware: pass its binary (published by Google, see gce-tcb-verifier) as `firmware` to compute MRTD"
        : "no firmware given");
    }
    if (opts.tdShape && opts.capturedCcel) throw new TdxError("E_VALIDATION", "RTMR0 is either captured (capturedCcel) or predicted from a TD shape (tdShape), not both", { hint: "Drop one of them." });
    if (opts.tdShape && (opts.backend !== "rtmr" || !opts.firmware)) throw new TdxError("E_VALIDATION", "a TD shape predicts RTMR0 for QEMU/KVM hosts (backend rtmr, with the firmware the host boots)", { hint: "On GCP, Google's VMM builds the TD HOB and ACPI tables: pin RTMR0 with a canary's captured CCEL." });
    registers.RTMR0 = opts.tdShape
      ? exact("sha384", predictRtmr0(opts.firmware!.bytes, opts.tdShape, { firmwareName: opts.firmware!.name }))
      : opts.capturedCcel
      ? { ...exact("sha384", rtmr0FromCcel(opts.capturedCcel)), basis: "captured" }
      : platform("sha384", "TD HOB, CFV, ACPI tables and boot variables of the VM shape (memory, CPUs, devices, QEMU version): predict it for a QEMU shape (`tdShape`), pin a CCEL captured on the target host with the same shape (`capturedCcel`), or waive it");
    if (opts.tdShape) Object.assign(inputs, { tdShapeMemoryMiB: opts.tdShape.memoryMiB, tdShapeBoot: opts.tdShape.boot === "direct-kernel" ? "direct-kernel" : "disk (boot variables given)" });
    registers.RTMR1 = exact("sha384", rtmr1);
    registers.RTMR2 = exact("sha384", rtmr2);
    registers.RTMR3 = { alg: "sha384", value: zero("sha384"), status: "zero", events: [] };
  }
  return { measurementsVersion: 1, backend: opts.backend, registers, inputs };
}

export function assertBackend(b: unknown): asserts b is Backend {
  if (b !== "rtmr" && b !== "azure" && b !== "gcp") throw new TdxError("E_VALIDATION", `unknown measurement backend ${JSON.stringify(b)}`, { hint: 'Use "rtmr" (QEMU/bare-metal TDX), "azure" or "gcp".' });
}
