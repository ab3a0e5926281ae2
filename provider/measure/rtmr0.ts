/**
 * RTMR0 of a TD that QEMU/KVM boots with an OVMF TDVF, predicted from a declared VM shape.
 *
 * Events, in the order the firmware extends them (edk2 OvmfPkg up to edk2-stable202502 — the
 * layout of Debian trixie's OVMF 2025.02: IntelTdx/TdxHelperLib SecTdxHelper.c measures the TD HOB
 * and the CFV in SEC; Tcg/TdTcg2Dxe measures the Secure Boot variables, a separator and, at
 * ReadyToBoot, the boot variables; Library/AcpiPlatformLib QemuFwCfgAcpi.c measures each fw_cfg
 * ACPI blob QEMU serves, raw, before the firmware patches it):
 *   1. TD HOB (EV_EFI_HANDOFF_TABLES2 "TdxTable"): the hand-off block list QEMU writes
 *      (hw/i386/tdvf-hob.c): a PHIT HOB, then one resource-descriptor HOB per RAM range —
 *      the TDVF's TD_HOB and TEMP_MEM sections as accepted system memory, the gaps and the rest
 *      of RAM as unaccepted memory; RAM above 2 GiB moves to 4 GiB when the VM has ≥ 0xB0000000.
 *   2. CFV (EV_EFI_PLATFORM_FIRMWARE_BLOB2): the firmware's variable store as shipped.
 *   3. SecureBoot, PK, KEK, db, dbx (EV_EFI_VARIABLE_DRIVER_CONFIG): UEFI_VARIABLE_DATA with no
 *      data (a fresh variable store; tdxvm boots without Secure Boot), hashed whole.
 *   4. separator (00000000).
 *   5. ACPI: etc/table-loader, etc/acpi/rsdp, etc/acpi/tables (EV_PLATFORM_CONFIG_FLAGS "ACPI DATA").
 *   6. BootOrder = {0000} and Boot0000 = the firmware's "UiApp" load option (EV_EFI_VARIABLE_BOOT),
 *      hashed over the variable data only.
 * edk2-stable202505 adds fw_cfg and SMBIOS events (SMBIOS depends on memory and vCPUs) and other
 * boot options: not modelled (refused by name). The formulas agree with Phala's dstack-mr
 * (tdvf.rs) and virtee's tdx-measure; tests/unit/measure/rtmr0.test.ts reproduces two RTMR0
 * values of real dstack TDs exactly.
 *
 * The ACPI blobs depend on QEMU's version and the whole VM shape (vCPUs, memory, devices) and a
 * TDX QEMU builds them differently from a plain one, so they are inputs: blobs dumped from the
 * host's QEMU for the shape (then the ledger names the tables inside), or their digests taken from
 * a trusted canary's CCEL.
 */
import { createHash } from "node:crypto";
import * as path from "node:path";
import { TdxError } from "../errors";
import type { LedgerEvent } from "./ledger";
import { parseTdvf, tdvfCfv, TdvfSectionType } from "./tdvf";

const sha384 = (b: Buffer) => createHash("sha384").update(b).digest("hex");

export interface RamSection { start: bigint; length: bigint }

export interface AcpiBlobs {
  /** etc/table-loader, etc/acpi/rsdp, etc/acpi/tables as QEMU serves them (Buffer), or their SHA-384 (hex). */
  tableLoader: Buffer | string;
  rsdp: Buffer | string;
  tables: Buffer | string;
}

/** A boot variable as the firmware measures it at ReadyToBoot: its data, or the SHA-384 of its data (hex). */
export interface BootVariable { name: string; data: Buffer | string }

export interface TdShape {
  /** Guest RAM in MiB (QEMU -m). */
  memoryMiB: number;
  acpi: AcpiBlobs;
  /**
   * The boot variables at ReadyToBoot. "direct-kernel" (QEMU -kernel): the firmware signals
   * ReadyToBoot before it registers any device, so only BootOrder {0000} and Boot0000 (UiApp)
   * exist. A boot from a disk (tdxvm's UKI on the ESP) has the firmware's options for the host's
   * devices first (device paths: PCI slots of the shape): give them in BootOrder order, from the
   * host's firmware or a canary's CCEL.
   */
  boot: "direct-kernel" | readonly BootVariable[];
  /** The OVMF's edk2 event layout; only edk2 ≤ stable202502 ("pre202505") is modelled. */
  ovmfLayout?: "pre202505";
}

const HOB_TYPE_HANDOFF = 1;
const HOB_TYPE_RESOURCE = 3;
const RESOURCE_SYSTEM_MEMORY = 0;
const RESOURCE_UNACCEPTED = 7;
/** Present | initialized | tested (EFI_RESOURCE_ATTRIBUTE_*), as QEMU sets on every range. */
const RESOURCE_ATTRIBUTES = 7;
const LOW_RAM_LIMIT = 0xb000_0000n; // QEMU q35: at or above this, RAM is split at 2 GiB
const TWO_GIB = 0x8000_0000n;
const FOUR_GIB = 0x1_0000_0000n;

/**
 * The TD HOB QEMU hands a TD of `memory` bytes whose firmware accepts `accepted` (its TD_HOB and
 * TEMP_MEM sections), written at `hobAddress`: the bytes RTMR0's first event hashes (PHIT and
 * resource descriptors; the end-of-list HOB is not hashed).
 */
export function tdHob(memory: bigint, accepted: readonly RamSection[], hobAddress: bigint): Buffer {
  type Range = { accepted: boolean; start: bigint; end: bigint };
  let ranges: Range[] = [{ accepted: false, start: 0n, end: memory }];
  for (const s of accepted) {
    const end = s.start + s.length;
    const next: Range[] = [];
    for (const r of ranges) {
      if (r.accepted || r.end <= s.start || r.start >= end) next.push(r);
      else {
        if (r.start < s.start) next.push({ accepted: false, start: r.start, end: s.start });
        if (r.end > end) next.push({ accepted: false, start: end, end: r.end });
      }
    }
    next.push({ accepted: true, start: s.start, end });
    ranges = next.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  }
  const records: Buffer[] = [];
  const resource = (type: number, start: bigint, length: bigint) => {
    const b = Buffer.alloc(48);
    b.writeUInt16LE(HOB_TYPE_RESOURCE, 0);
    b.writeUInt16LE(48, 2);
    // 4 reserved bytes, 16-byte owner GUID (zero)
    b.writeUInt8(type, 24);
    b.writeUInt32LE(RESOURCE_ATTRIBUTES, 28);
    b.writeBigUInt64LE(start, 32);
    b.writeBigUInt64LE(length, 40);
    records.push(b);
  };
  const top = ranges.pop()!;
  for (const r of ranges) resource(r.accepted ? RESOURCE_SYSTEM_MEMORY : RESOURCE_UNACCEPTED, r.start, r.end - r.start);
  if (memory >= LOW_RAM_LIMIT) {
    if (top.start < TWO_GIB) resource(RESOURCE_UNACCEPTED, top.start, TWO_GIB - top.start);
    if (top.end > TWO_GIB) resource(RESOURCE_UNACCEPTED, FOUR_GIB, top.end - TWO_GIB);
  } else resource(RESOURCE_UNACCEPTED, top.start, top.end - top.start);
  const phit = Buffer.alloc(56);
  phit.writeUInt16LE(HOB_TYPE_HANDOFF, 0);
  phit.writeUInt16LE(56, 2);
  phit.writeUInt32LE(9, 8); // EFI_HOB_HANDOFF_TABLE_VERSION
  const length = 56 + records.length * 48;
  phit.writeBigUInt64LE(hobAddress + BigInt(length) + 8n, 48); // EfiEndOfHobList: just past the 8-byte end HOB
  return Buffer.concat([phit, ...records]);
}

/** UEFI_VARIABLE_DATA (TCG PC Client PFP: GUID, name length in chars, data length, UTF-16LE name, data). */
export function uefiVariableData(guid: string, name: string, data = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(32);
  guidBytes(guid).copy(head, 0);
  head.writeBigUInt64LE(BigInt(name.length), 16);
  head.writeBigUInt64LE(BigInt(data.length), 24);
  return Buffer.concat([head, Buffer.from(name, "utf16le"), data]);
}

/** A GUID in its mixed-endian EFI byte form. */
export function guidBytes(guid: string): Buffer {
  const p = guid.split("-");
  if (p.length !== 5 || !/^[0-9a-fA-F-]{36}$/.test(guid)) throw new TdxError("E_VALIDATION", `not a GUID: ${guid}`);
  const le = (h: string) => Buffer.from(h, "hex").reverse();
  return Buffer.concat([le(p[0]!), le(p[1]!), le(p[2]!), Buffer.from(p[3]! + p[4]!, "hex")]);
}

const EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
const EFI_IMAGE_SECURITY_DATABASE = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";
/** OVMF's DXE firmware volume and the UiApp file in it (OvmfPkg .fdf: the boot manager menu). */
const OVMF_DXEFV = "7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1";
const UIAPP_FILE = "462caa21-7614-4503-836e-8ab6f4662331";

/** Boot0000 on a fresh variable store: LOAD_OPTION_ACTIVE|HIDDEN|CATEGORY_APP "UiApp" at FV(DXEFV)/FvFile(UiApp). */
export function uiAppLoadOption(): Buffer {
  const node = (subtype: number, guid: string) => Buffer.concat([Buffer.from([4, subtype, 20, 0]), guidBytes(guid)]);
  const path = Buffer.concat([node(7, OVMF_DXEFV), node(6, UIAPP_FILE), Buffer.from([0x7f, 0xff, 4, 0])]);
  const head = Buffer.alloc(6);
  head.writeUInt32LE(0x109, 0);
  head.writeUInt16LE(path.length, 4);
  return Buffer.concat([head, Buffer.from("UiApp\0", "utf16le"), path]);
}

/** The ACPI table signatures in an etc/acpi/tables blob, in order (headers: signature, u32 length). */
export function acpiTableNames(tables: Buffer): string[] {
  const names: string[] = [];
  let at = 0;
  while (at + 8 <= tables.length && names.length < 256) {
    const sig = tables.subarray(at, at + 4).toString("latin1");
    const len = tables.readUInt32LE(at + 4);
    if (!/^[A-Z0-9_]{4}$/.test(sig) || len < 36 || at + len > tables.length) {
      // FACS has a 64-byte header without the common fields, but its length is valid too
      if (sig !== "FACS" || len < 64 || at + len > tables.length) break;
    }
    names.push(sig);
    at += len;
  }
  return names;
}

const digestOf = (b: Buffer | string, what: string): string => {
  if (typeof b !== "string") return sha384(b);
  if (!/^[0-9a-f]{96}$/.test(b)) throw new TdxError("E_VALIDATION", `${what}: a SHA-384 digest is 96 lowercase hex digits`);
  return b;
};

/** The RTMR0 events of `firmware` (OVMF.fd with TDVF metadata) booting a TD of `shape`. */
export function predictRtmr0(firmware: Buffer, shape: TdShape, opts: { accepted?: readonly RamSection[]; hobAddress?: bigint; firmwareName?: string } = {}): LedgerEvent[] {
  if ((shape.ovmfLayout ?? "pre202505") !== "pre202505") throw new TdxError("E_MEASUREMENT", `the OVMF layout ${JSON.stringify(shape.ovmfLayout)} is not modelled`, { hint: "edk2-stable202505 and later add fw_cfg and SMBIOS events to RTMR0: pin RTMR0 with a captured CCEL instead." });
  if (!Number.isInteger(shape.memoryMiB) || shape.memoryMiB < 64 || shape.memoryMiB > 16 * 1024 * 1024) throw new TdxError("E_VALIDATION", `memoryMiB ${shape.memoryMiB} is not a plausible TD memory size`, { hint: "Give the VM's memory in MiB (QEMU -m), 64 MiB to 16 TiB." });
  const meta = parseTdvf(firmware);
  const hobSection = meta.sections.find((s) => s.type === TdvfSectionType.TD_HOB);
  if (!hobSection && opts.hobAddress === undefined) throw new TdxError("E_MEASUREMENT", "the firmware's TDVF metadata has no TD_HOB section", { hint: "Pass an OVMF built for TDX (OvmfPkgX64 with TDX, or IntelTdxX64)." });
  const accepted = opts.accepted ?? meta.sections.filter((s) => s.type === TdvfSectionType.TD_HOB || s.type === TdvfSectionType.TEMP_MEM).map((s) => ({ start: s.memoryAddress, length: s.memoryDataSize }));
  const hobAddress = opts.hobAddress ?? hobSection!.memoryAddress;
  const memory = BigInt(shape.memoryMiB) * 1024n * 1024n;
  const fw = opts.firmwareName ?? "the firmware";
  const tables = typeof shape.acpi.tables === "string" ? null : acpiTableNames(shape.acpi.tables);
  const acpiOrigin = (b: Buffer | string) => (typeof b === "string" ? "digest given for the VM shape (from a trusted canary's CCEL)" : "fw_cfg blob QEMU serves for the VM shape (dumped from the host's QEMU)");
  const ev = (type: string, description: string, origin: string, digest: string): LedgerEvent => ({ type, description, origin, digest, pcr: type === "EV_EFI_VARIABLE_BOOT" || type === "EV_EFI_HANDOFF_TABLES2" || type === "EV_EFI_PLATFORM_FIRMWARE_BLOB2" || type === "EV_PLATFORM_CONFIG_FLAGS" ? 1 : 7 });
  const hob = tdHob(memory, accepted, hobAddress);
  return [
    ev("EV_EFI_HANDOFF_TABLES2", "TD HOB (TdxTable: memory layout of the VM)", `QEMU's TD HOB for ${shape.memoryMiB} MiB and the TDVF sections of ${fw} (${hob.length} bytes)`, sha384(hob)),
    ev("EV_EFI_PLATFORM_FIRMWARE_BLOB2", "configuration firmware volume (CFV)", `the variable store of ${fw} as shipped`, sha384(tdvfCfv(firmware))),
    ...([["SecureBoot", EFI_GLOBAL_VARIABLE], ["PK", EFI_GLOBAL_VARIABLE], ["KEK", EFI_GLOBAL_VARIABLE], ["db", EFI_IMAGE_SECURITY_DATABASE], ["dbx", EFI_IMAGE_SECURITY_DATABASE]] as const)
      .map(([name, guid]) => ev("EV_EFI_VARIABLE_DRIVER_CONFIG", `EFI variable ${name}`, "absent (a fresh variable store: Secure Boot off)", sha384(uefiVariableData(guid, name)))),
    ev("EV_SEPARATOR", "separator", "00000000", sha384(Buffer.alloc(4))),
    ev("EV_PLATFORM_CONFIG_FLAGS", "ACPI table loader (etc/table-loader)", acpiOrigin(shape.acpi.tableLoader), digestOf(shape.acpi.tableLoader, "acpi.tableLoader")),
    ev("EV_PLATFORM_CONFIG_FLAGS", "ACPI RSDP (etc/acpi/rsdp)", acpiOrigin(shape.acpi.rsdp), digestOf(shape.acpi.rsdp, "acpi.rsdp")),
    ev("EV_PLATFORM_CONFIG_FLAGS", `ACPI tables (etc/acpi/tables: ${tables ? tables.join(", ") : "DSDT, FACP, APIC, … as the host built them"})`, acpiOrigin(shape.acpi.tables), digestOf(shape.acpi.tables, "acpi.tables")),
    ...(shape.boot === "direct-kernel"
      ? [
        ev("EV_EFI_VARIABLE_BOOT", "EFI variable BootOrder", "{0000}: with QEMU -kernel only the boot manager menu exists at ReadyToBoot", sha384(Buffer.alloc(2))),
        ev("EV_EFI_VARIABLE_BOOT", "EFI variable Boot0000", "OVMF's UiApp load option", sha384(uiAppLoadOption())),
      ]
      : bootVariables(shape.boot).map((v) => ev("EV_EFI_VARIABLE_BOOT", `EFI variable ${v.name}`, typeof v.data === "string" ? "digest given for the VM shape" : "variable data given for the VM shape", digestOf(v.data, `boot ${v.name}`)))),
  ];
}

function bootVariables(vars: readonly BootVariable[]): readonly BootVariable[] {
  if (!vars.length || vars.length > 64) throw new TdxError("E_VALIDATION", `a disk boot's RTMR0 needs its boot variables (BootOrder first, then each Boot#### in its order), 1 to 64 of them; got ${vars.length}`, { hint: 'Give them from the host\'s firmware or a canary\'s CCEL, or use boot: "direct-kernel" for QEMU -kernel.' });
  if (vars[0]!.name !== "BootOrder" || vars.slice(1).some((v) => !/^Boot[0-9A-F]{4}$/.test(v.name))) throw new TdxError("E_VALIDATION", `boot variables are BootOrder then Boot#### (4 upper-case hex digits); got ${vars.map((v) => v.name).join(", ").slice(0, 200)}`);
  return vars;
}

/**
 * A TD shape as a file or a program writes it (`tdxvm measure --td-shape F.json`, TdxMeasurement
 * `tdShape`): ACPI blobs and boot variable data by file path or as a 96-hex SHA-384 digest.
 *   {"memoryMiB": 4096, "acpi": {"tableLoader": "loader.bin", "rsdp": "rsdp.bin", "tables": "<sha384>"},
 *    "boot": "direct-kernel" | [{"name": "BootOrder", "data": "bootorder.bin"}, {"name": "Boot0001", "data": "<sha384>"}]}
 */
export interface TdShapeSpec {
  memoryMiB: number;
  acpi: { tableLoader: string; rsdp: string; tables: string };
  boot: "direct-kernel" | Array<{ name: string; data: string }>;
  ovmfLayout?: "pre202505";
}

const MAX_BLOB = 4 * 1024 * 1024;

/** Validate a shape spec (hostile until checked) and read the files it names, relative to `baseDir`. */
export async function loadTdShape(spec: unknown, baseDir: string, read: (file: string, what: string) => Promise<Buffer>): Promise<TdShape> {
  const bad = (why: string): never => {
    throw new TdxError("E_VALIDATION", `TD shape: ${why}`, { hint: '{"memoryMiB": 4096, "acpi": {"tableLoader": F|sha384, "rsdp": F|sha384, "tables": F|sha384}, "boot": "direct-kernel" | [{"name": "BootOrder", "data": F|sha384}, …]}' });
  };
  const o = spec as Partial<TdShapeSpec> | null;
  if (!o || typeof o !== "object" || Array.isArray(o)) return bad("not an object");
  const extra = Object.keys(o).filter((k) => !["memoryMiB", "acpi", "boot", "ovmfLayout"].includes(k));
  if (extra.length) bad(`unknown field(s) ${extra.join(", ").slice(0, 100)}`);
  if (typeof o.memoryMiB !== "number") bad("memoryMiB must be a number (MiB)");
  const blob = async (v: unknown, what: string): Promise<Buffer | string> => {
    if (typeof v !== "string" || !v || v.length > 4096) return bad(`${what} must be a file path or a SHA-384 digest`);
    if (/^[0-9a-f]{96}$/.test(v)) return v;
    const b = await read(path.resolve(baseDir, v), `TD shape ${what}`);
    if (b.length > MAX_BLOB) bad(`${what} ${v} is larger than ${MAX_BLOB} bytes`);
    return b;
  };
  const a = o.acpi as Record<string, unknown> | undefined;
  if (!a || typeof a !== "object") return bad("acpi must name tableLoader, rsdp and tables");
  const acpi = { tableLoader: await blob(a.tableLoader, "acpi.tableLoader"), rsdp: await blob(a.rsdp, "acpi.rsdp"), tables: await blob(a.tables, "acpi.tables") };
  let boot: TdShape["boot"];
  if (o.boot === "direct-kernel") boot = "direct-kernel";
  else if (Array.isArray(o.boot) && o.boot.length <= 64) {
    const vars: BootVariable[] = [];
    for (const [i, v] of (o.boot as unknown[]).entries()) {
      const e = v as { name?: unknown; data?: unknown };
      if (!e || typeof e.name !== "string") return bad(`boot[${i}] needs a name`);
      vars.push({ name: e.name, data: await blob(e.data, `boot[${i}].data`) });
    }
    boot = vars;
  } else return bad('boot must be "direct-kernel" or a list of {name, data}');
  if (o.ovmfLayout !== undefined && o.ovmfLayout !== "pre202505") bad(`ovmfLayout ${JSON.stringify(o.ovmfLayout).slice(0, 40)} is not modelled (only "pre202505")`);
  return { memoryMiB: o.memoryMiB!, acpi, boot, ...(o.ovmfLayout ? { ovmfLayout: o.ovmfLayout } : {}) };
}
