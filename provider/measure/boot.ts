/**
 * The boot chain's measurements that the *image* determines, as one ordered event list.
 *
 * Sources (read, not copied):
 * - UEFI/OVMF: edk2 OvmfPkg + SecurityPkg Tcg2Dxe/TdTcg2Dxe (the "Calling EFI Application from
 *   Boot Option" action and separators at ReadyToBoot; EV_EFI_GPT_EVENT and
 *   EV_EFI_BOOT_SERVICES_APPLICATION from DxeTpm2MeasureBootLib when an image is loaded from a
 *   GPT disk; the two ExitBootServices actions), TCG PC Client PFP spec §10.
 * - systemd-stub 257 (src/boot/stub.c): measures the UKI sections into PCR 11 (see uki.ts),
 *   then LoadImage()s the embedded kernel — which the firmware measures like any EFI
 *   application (PCR 4).
 * - Linux EFI stub (drivers/firmware/efi/libstub): measures the initrd it receives through
 *   LINUX_EFI_INITRD_MEDIA_GUID and its LoadOptions (command line) into PCR 9 as EV_EVENT_TAG.
 * Every claim here is checked against a booted VM by tests/integration/groundtruth.test.ts.
 */
import { createHash } from "node:crypto";
import { HashAlg } from "./bytes";
import { authenticodeDigest } from "./pe";
import { ukiPcr11Events, ukiSelectedSections } from "./uki";
import { uefiGptEventData } from "./gpt";
import { LedgerEvent } from "./ledger";
import { stubCombinedInitrd } from "./initrd";

export const CALLING_EFI_APP = "Calling EFI Application from Boot Option";
export const EXIT_BS_INVOKED = "Exit Boot Services Invocation";
export const EXIT_BS_RETURNED = "Exit Boot Services Returned with Success";
export const SEPARATOR = Buffer.alloc(4);

export interface BootImage {
  /** The UKI exactly as it sits in the ESP (EFI/BOOT/BOOTX64.EFI). */
  uki: Buffer;
  /** The disk from LBA 0 through the end of the primary partition entry array (for the GPT event). */
  diskHead?: Buffer;
}

const h = (alg: HashAlg, data: Buffer) => createHash(alg).update(data).digest("hex");

/** Linux efistub hands its command line over as UCS-2 with a terminating NUL (what the stub passes as LoadOptions). */
export function loadOptionsBytes(cmdline: string): Buffer {
  return Buffer.from(`${cmdline}\0`, "utf16le");
}

/** The command line systemd-stub passes to the kernel: the .cmdline section, trailing whitespace and NULs trimmed. */
export function ukiCmdline(uki: Buffer): string {
  const s = ukiSelectedSections(uki).get(".cmdline");
  return s ? s.data.toString("utf8").replace(/[\0\s]+$/, "") : "";
}

/**
 * systemd-pcrphase (systemd 257, units systemd-pcrphase-initrd/-sysinit/.service) extends PCR 11
 * from userspace with these boot phases; by the time a booted VM can be attested all four are in.
 * Measured on a booted tdxvm image: firmware-log PCR 11 + these four = the PCR 11 it reports.
 * (TDX without a vTPM: systemd 257 measures phases only into a TPM, so RTMR2 has none.)
 */
export const BOOT_PHASES = ["enter-initrd", "leave-initrd", "sysinit", "ready"];

export function phaseEvents(alg: HashAlg): LedgerEvent[] {
  return BOOT_PHASES.map((p) => ({ pcr: 11, type: "systemd-pcrphase", description: `boot phase "${p}"`, origin: "systemd-pcrphase (userspace)", digest: h(alg, Buffer.from(p)), log: "userspace" as const }));
}

/** The OS-phase events in the order they happen, for one hash algorithm. */
export function bootEvents(img: BootImage, alg: HashAlg): LedgerEvent[] {
  const ev: LedgerEvent[] = [];
  const push = (pcr: number, type: string, description: string, origin: string, digest: string) => ev.push({ pcr, type, description, origin, digest });
  push(4, "EV_EFI_ACTION", CALLING_EFI_APP, "constant string (edk2 ReadyToBoot)", h(alg, Buffer.from(CALLING_EFI_APP)));
  push(4, "EV_SEPARATOR", "separator", "constant 00000000", h(alg, SEPARATOR));
  push(5, "EV_SEPARATOR", "separator", "constant 00000000", h(alg, SEPARATOR));
  if (img.diskHead) push(5, "EV_EFI_GPT_EVENT", "GPT of the boot disk", "disk: GPT header + partition entries (UEFI_GPT_DATA)", h(alg, uefiGptEventData(img.diskHead)));
  push(4, "EV_EFI_BOOT_SERVICES_APPLICATION", "UKI (EFI/BOOT/BOOTX64.EFI)", "uki: Authenticode digest", authenticodeDigest(img.uki, alg).toString("hex"));
  for (const e of ukiPcr11Events(img.uki)) {
    push(11, "EV_IPL", e.kind === "name" ? `UKI section name ${e.section}` : `UKI section ${e.section}`, e.kind === "name" ? `constant "${e.section}\\0"` : `uki ${e.section} section (VirtualSize bytes)`, h(alg, e.data));
  }
  const linux = ukiSelectedSections(img.uki).get(".linux");
  if (linux) push(4, "EV_EFI_BOOT_SERVICES_APPLICATION", "kernel (.linux, loaded by systemd-stub)", "uki .linux section: Authenticode digest", authenticodeDigest(linux.data, alg).toString("hex"));
  push(9, "EV_EVENT_TAG", "kernel command line (LOADED_IMAGE::LoadOptions)", "uki .cmdline as UCS-2 + NUL", h(alg, loadOptionsBytes(ukiCmdline(img.uki))));
  push(9, "EV_EVENT_TAG", "Linux initrd", "uki .initrd + stub cpio of .osrel (and .pcrsig/.pcrpkey/.profile if present)", h(alg, stubCombinedInitrd(img.uki)));
  push(5, "EV_EFI_ACTION", EXIT_BS_INVOKED, "constant string (edk2 ExitBootServices)", h(alg, Buffer.from(EXIT_BS_INVOKED)));
  push(5, "EV_EFI_ACTION", EXIT_BS_RETURNED, "constant string (edk2 ExitBootServices)", h(alg, Buffer.from(EXIT_BS_RETURNED)));
  return ev;
}
