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
import { ukiDigests, UkiDigests } from "./stream";
import { stubCmdline } from "./cmdline";
export { stubCmdline };
import type { RootFs } from "../recipe/schema";

export const CALLING_EFI_APP = "Calling EFI Application from Boot Option";
export const EXIT_BS_INVOKED = "Exit Boot Services Invocation";
export const EXIT_BS_RETURNED = "Exit Boot Services Returned with Success";
export const SEPARATOR = Buffer.alloc(4);

export interface BootImage {
  /** The UKI exactly as it sits in the ESP (EFI/BOOT/BOOTX64.EFI). */
  uki: Buffer;
  /** The disk from LBA 0 through the end of the primary partition entry array (for the GPT event). */
  diskHead?: Buffer;
  /** How the root file system is measured (names it in the ledger; default: inferred from roothash=). */
  rootfs?: RootFs;
}

/** The same, with the UKI as a file: it is streamed (constant memory) instead of held in memory. */
export interface BootImageFile extends Omit<BootImage, "uki"> {
  ukiPath: string;
}

const h = (alg: HashAlg, data: Buffer) => createHash(alg).update(data).digest("hex");

/** Linux efistub hands its command line over as UCS-2 with a terminating NUL (what the stub passes as LoadOptions). */
export function loadOptionsBytes(cmdline: string): Buffer {
  return Buffer.from(`${cmdline}\0`, "utf16le");
}

/**
 * The command line systemd-stub 257 passes to the kernel for the UKI's .cmdline:
 * - UTF-8 to UCS-2 up to the first NUL (src/boot/efi-string.c xstrn8_to_16): a byte that cannot
 *   start a sequence is skipped, a sequence with a bad continuation byte is dropped whole, and
 *   code points UCS-2 cannot hold (surrogates, beyond U+FFFF) are dropped;
 * - then src/boot/util.c mangle_stub_cmdline: blanks (U+0000–U+0020 and U+007F) at the start are
 *   skipped, the others become spaces, and the trailing ones are cut.
 */
export function ukiCmdline(uki: Buffer): string {
  const s = ukiSelectedSections(uki).get(".cmdline");
  return s ? stubCmdline(s.data) : "";
}

/** The dm-verity root hash a kernel command line names (`roothash=<hex>`), or null. */
export function rootHashOf(cmdline: string): string | null {
  const words = cmdline.split(/\s+/).filter((w) => w.startsWith("roothash="));
  if (words.length === 0) return null;
  const v = words[words.length - 1].slice("roothash=".length).toLowerCase();
  return /^[0-9a-f]{64,128}$/.test(v) ? v : null;
}

/**
 * systemd-pcrphase (systemd 257, units systemd-pcrphase-initrd/-sysinit/.service) extends PCR 11
 * from userspace with these boot phases; by the time a booted VM can be attested all four are in.
 * Measured on a booted tdxvm image: firmware-log PCR 11 + these four = the PCR 11 it reports.
 * (TDX without a vTPM: systemd 257 measures phases only into a TPM, so RTMR2 has none.)
 */
export const BOOT_PHASES = ["enter-initrd", "leave-initrd", "sysinit", "ready"];
/**
 * With the whole OS as the initrd (rootfs "initrd"), systemd runs as the real system from the
 * start: there is no /etc/initrd-release, so systemd-pcrphase-initrd (ConditionPathExists=
 * /etc/initrd-release) never runs and only "sysinit" and "ready" are measured.
 */
export const BOOT_PHASES_NO_INITRD = ["sysinit", "ready"];

export function phaseEvents(alg: HashAlg, rootfs: RootFs = "verity"): LedgerEvent[] {
  return (rootfs === "initrd" ? BOOT_PHASES_NO_INITRD : BOOT_PHASES).map((p) => ({ pcr: 11, type: "systemd-pcrphase", description: `boot phase "${p}"`, origin: "systemd-pcrphase (userspace)", digest: h(alg, Buffer.from(p)), log: "userspace" as const }));
}

/**
 * Section digests and the combined initrd's digest in one pass over the section bytes: when the
 * combined initrd starts with the .initrd section (no .ucode), its hash continues from a copy of
 * the .initrd section's hash state instead of hashing those bytes again.
 */
function sectionDigests(uki: Buffer, alg: HashAlg): Pick<UkiDigests, "sections" | "initrd"> {
  const sections: UkiDigests["sections"] = [];
  let initrdState: ReturnType<typeof createHash> | undefined;
  for (const e of ukiPcr11Events(uki)) {
    const hash = createHash(alg).update(e.data);
    if (e.kind === "content" && e.section === ".initrd") initrdState = hash.copy();
    sections.push({ section: e.section, kind: e.kind, digest: hash.digest("hex") });
  }
  const hasUcode = ukiSelectedSections(uki).has(".ucode");
  let initrd: string;
  if (initrdState && !hasUcode) {
    const combined = stubCombinedInitrd(uki, { skipBase: true });
    initrd = initrdState.update(combined).digest("hex");
  } else {
    initrd = h(alg, stubCombinedInitrd(uki));
  }
  return { sections, initrd };
}

/** The events, in the order they happen, from a UKI's digests (ukiDigests). */
export function bootEventsFrom(img: Omit<BootImage, "uki">, alg: HashAlg, d: UkiDigests): LedgerEvent[] {
  const ev: LedgerEvent[] = [];
  const rootHash = rootHashOf(d.cmdline);
  const root = rootHash ? `; it carries roothash=${rootHash}: the root file system, verity root hash` : "";
  const push = (pcr: number, type: string, description: string, origin: string, digest: string) => ev.push({ pcr, type, description, origin, digest });
  push(4, "EV_EFI_ACTION", CALLING_EFI_APP, "constant string (edk2 ReadyToBoot)", h(alg, Buffer.from(CALLING_EFI_APP)));
  push(4, "EV_SEPARATOR", "separator", "constant 00000000", h(alg, SEPARATOR));
  push(5, "EV_SEPARATOR", "separator", "constant 00000000", h(alg, SEPARATOR));
  if (img.diskHead) push(5, "EV_EFI_GPT_EVENT", "GPT of the boot disk", "disk: GPT header + partition entries (UEFI_GPT_DATA)", h(alg, uefiGptEventData(img.diskHead)));
  push(4, "EV_EFI_BOOT_SERVICES_APPLICATION", "UKI (EFI/BOOT/BOOTX64.EFI)", "uki: Authenticode digest", d.uki);
  for (const e of d.sections) {
    const content = `uki ${e.section} section (VirtualSize bytes)${e.section === ".cmdline" ? root : e.section === ".initrd" && img.rootfs === "initrd" ? "; the whole OS (rootfs initrd)" : ""}`;
    push(11, "EV_IPL", e.kind === "name" ? `UKI section name ${e.section}` : `UKI section ${e.section}`, e.kind === "name" ? `constant "${e.section}\\0"` : content, e.digest);
  }
  if (d.kernel) push(4, "EV_EFI_BOOT_SERVICES_APPLICATION", "kernel (.linux, loaded by systemd-stub)", "uki .linux section: Authenticode digest", d.kernel);
  push(9, "EV_EVENT_TAG", "kernel command line (LOADED_IMAGE::LoadOptions)", `uki .cmdline as UCS-2 + NUL${root}`, h(alg, loadOptionsBytes(d.cmdline)));
  push(9, "EV_EVENT_TAG", "Linux initrd", `uki .initrd${img.rootfs === "initrd" ? " (the whole OS)" : ""} + stub cpio of .osrel (and .pcrsig/.pcrpkey/.profile if present)`, d.initrd);
  push(5, "EV_EFI_ACTION", EXIT_BS_INVOKED, "constant string (edk2 ExitBootServices)", h(alg, Buffer.from(EXIT_BS_INVOKED)));
  push(5, "EV_EFI_ACTION", EXIT_BS_RETURNED, "constant string (edk2 ExitBootServices)", h(alg, Buffer.from(EXIT_BS_RETURNED)));
  return ev;
}

/** The OS-phase events in the order they happen, for one hash algorithm (from the UKI in memory, on this thread). */
export function bootEvents(img: BootImage, alg: HashAlg): LedgerEvent[] {
  const linux = ukiSelectedSections(img.uki).get(".linux");
  return bootEventsFrom(img, alg, {
    cmdline: ukiCmdline(img.uki),
    uki: authenticodeDigest(img.uki, alg).toString("hex"),
    kernel: linux ? authenticodeDigest(linux.data, alg).toString("hex") : undefined,
    ...sectionDigests(img.uki, alg),
  });
}

/**
 * The same events, faster and for a UKI file too: a file is streamed in constant memory, and the
 * digests are shared out over two threads (see stream.ts).
 */
export async function bootEventsAsync(img: BootImage | BootImageFile, alg: HashAlg): Promise<LedgerEvent[]> {
  return bootEventsFrom(img, alg, await ukiDigests("ukiPath" in img ? img.ukiPath : img.uki, alg));
}
