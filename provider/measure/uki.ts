/**
 * Unified Kernel Image sections and the events systemd-stub measures for them (PCR 11 on a vTPM;
 * on TDX without a vTPM the same events go to RTMR2, since PCR 11 maps to CC MR index 3).
 *
 * Facts from systemd (read, not copied; v257 is what Debian trixie ships):
 * - src/fundamental/uki.c `unified_sections[]` and src/fundamental/uki.h `UnifiedSection`: the
 *   fixed order .linux .osrel .cmdline .initrd .ucode .splash .dtb .uname .sbat .pcrsig .pcrpkey
 *   .profile .dtbauto .hwids (.efifw from v258). `unified_section_measure()` measures every one of
 *   them except .pcrsig.
 * - src/boot/stub.c `measure_sections()`: for each present section, in that order, an EV_IPL event
 *   over the name including its trailing NUL, then one over the section's memory
 *   (`memory_size` bytes).
 * - src/boot/pe.c `pe_locate_sections_internal()`: `memory_size = VirtualSize`; the bytes read
 *   from the file are min(SizeOfRawData, VirtualSize), the loader zero-fills the rest; the first
 *   section with a matching name wins; a section with VirtualSize 0 counts as absent
 *   (PE_SECTION_VECTOR_IS_SET). Names compare on the 8 header bytes up to the first NUL.
 * - Profiles (v257): base sections are those before the first `.profile`; the selected profile
 *   (default 0) is the run from its `.profile` section to the next one, and its sections override
 *   the base ones. Profile 0 may be absent; any other missing profile fails the boot.
 */
import { createHash } from "node:crypto";
import { DIGEST_SIZES, HashAlg, measurementError } from "./bytes";
import { parsePe } from "./pe";

/** Every section name systemd-stub knows, in measuring order (`.pcrsig` is known but never measured). */
export const UKI_SECTION_ORDER = [
  ".linux",
  ".osrel",
  ".cmdline",
  ".initrd",
  ".ucode",
  ".splash",
  ".dtb",
  ".uname",
  ".sbat",
  ".pcrsig",
  ".pcrpkey",
  ".profile",
  ".dtbauto",
  ".hwids",
  ".efifw",
] as const;

/** Sections whose selection depends on the machine's hardware IDs; their measurement cannot be predicted offline. */
const HARDWARE_SELECTED = new Set([".dtbauto", ".efifw"]);

/** Largest zero fill (VirtualSize beyond SizeOfRawData) accepted for one section. */
export const MAX_SECTION_ZERO_FILL = 16 * 1024 * 1024;
/** Largest zero fill accepted summed over all sections (a UKI's sections are laid out in full in the file). */
export const MAX_TOTAL_ZERO_FILL = 64 * 1024 * 1024;

/** TCG event type systemd-stub logs section measurements with. */
export const EV_IPL = 0x0000000d;

export interface UkiSection {
  /** Index in the PE section table. */
  readonly index: number;
  readonly name: string;
  readonly virtualSize: number;
  readonly sizeOfRawData: number;
  /** The section as loaded in memory: VirtualSize bytes, file bytes then zero fill. */
  readonly data: Buffer;
}

/** One event systemd-stub logs: `data` is what gets hashed (the digest is H(data) in every bank). */
export interface UkiEvent {
  readonly pcr: 11;
  readonly eventType: typeof EV_IPL;
  readonly section: string;
  readonly kind: "name" | "content";
  readonly data: Buffer;
}

/** Where a section's loaded bytes come from: `fromFile` bytes at `pointerToRawData`, then zeros up to VirtualSize. */
export interface UkiSectionPlace {
  readonly index: number;
  readonly name: string;
  readonly virtualSize: number;
  readonly sizeOfRawData: number;
  readonly pointerToRawData: number;
  readonly fromFile: number;
}

/**
 * All sections in section-table order, with where their bytes come from, checked against the
 * file's size. `buf` may hold just the headers and section table when `fileSize` is given.
 */
export function ukiSectionPlaces(buf: Buffer, fileSize = buf.length): UkiSectionPlace[] {
  const pe = parsePe(buf);
  let totalFill = 0;
  for (const s of pe.sections) {
    const fromFile = Math.min(s.virtualSize, s.sizeOfRawData);
    if (s.pointerToRawData + fromFile > fileSize) {
      measurementError(`UKI: section ${JSON.stringify(s.name)} (${s.pointerToRawData}+${fromFile}) lies outside the ${fileSize}-byte file`);
    }
    const fill = s.virtualSize - fromFile;
    if (fill > MAX_SECTION_ZERO_FILL) measurementError(`UKI: section ${JSON.stringify(s.name)} asks for ${fill} bytes of zero fill (implausible)`);
    totalFill += fill;
  }
  // Checked before any section is built: the fill is allocated, so the sum bounds the memory.
  if (totalFill > MAX_TOTAL_ZERO_FILL) measurementError(`UKI: the sections ask for ${totalFill} bytes of zero fill in all (implausible; limit ${MAX_TOTAL_ZERO_FILL})`);
  return pe.sections.map((s, index) => {
    const fromFile = Math.min(s.virtualSize, s.sizeOfRawData);
    return { index, name: s.name, virtualSize: s.virtualSize, sizeOfRawData: s.sizeOfRawData, pointerToRawData: s.pointerToRawData, fromFile };
  });
}

/** All sections in section-table order, each with its VirtualSize bytes as systemd-stub sees them in memory. */
export function ukiSections(buf: Buffer): UkiSection[] {
  return ukiSectionPlaces(buf).map(({ pointerToRawData, fromFile, ...s }) => {
    const fileBytes = buf.subarray(pointerToRawData, pointerToRawData + fromFile);
    const fill = s.virtualSize - fromFile;
    return { ...s, data: fill === 0 ? fileBytes : Buffer.concat([fileBytes, Buffer.alloc(fill)]) };
  });
}

/** The sections systemd-stub uses for `profile` (default 0), keyed by name, as stub.c/pe.c select them. */
export function ukiSelectedSections(buf: Buffer, opts: { profile?: number } = {}): Map<string, UkiSection> {
  return selectSections(ukiSections(buf), opts);
}

/** The same selection over any section list in section-table order (e.g. ukiSectionPlaces). */
export function selectSections<T extends { readonly index: number; readonly name: string; readonly virtualSize: number }>(all: ReadonlyArray<T>, opts: { profile?: number } = {}): Map<string, T> {
  const profile = opts.profile ?? 0;
  if (!Number.isSafeInteger(profile) || profile < 0) measurementError(`UKI: profile must be a non-negative integer, got ${profile}`);
  const profileStarts = all.filter((s) => s.name === ".profile").map((s) => s.index);
  const baseEnd = profileStarts[0] ?? all.length;

  const pick = (from: number, to: number, into: Map<string, T>) => {
    const seen = new Set<string>();
    for (const s of all.slice(from, to)) {
      // First matching section wins; VirtualSize 0 means "not set".
      if (seen.has(s.name) || s.virtualSize === 0 || !(UKI_SECTION_ORDER as ReadonlyArray<string>).includes(s.name)) continue;
      seen.add(s.name);
      into.set(s.name, s);
    }
  };

  const selected = new Map<string, T>();
  pick(0, baseEnd, selected);
  const start = profileStarts[profile];
  if (start !== undefined) {
    const end = profileStarts[profile + 1] ?? all.length;
    const overrides = new Map<string, T>();
    pick(start, end, overrides);
    for (const [name, s] of overrides) selected.set(name, s);
  } else if (profile !== 0) {
    measurementError(`UKI: profile ${profile} does not exist (the image has ${profileStarts.length} profiles)`);
  }
  return selected;
}

/**
 * The systemd-stub PCR 11 events for this UKI: for each present section in UKI_SECTION_ORDER
 * (except .pcrsig), an event over `name\0`, then one over the section's VirtualSize bytes.
 */
export function ukiPcr11Events(buf: Buffer, opts: { profile?: number } = {}): UkiEvent[] {
  const events: UkiEvent[] = [];
  for (const [name, s] of measuredSections(ukiSelectedSections(buf, opts))) {
    events.push({ pcr: 11, eventType: EV_IPL, section: name, kind: "name", data: Buffer.from(`${name}\0`, "latin1") });
    events.push({ pcr: 11, eventType: EV_IPL, section: name, kind: "content", data: s.data });
  }
  return events;
}

/** The selected sections systemd-stub measures, in its order; refuses what it cannot predict. */
export function measuredSections<T>(selected: ReadonlyMap<string, T>): Array<[string, T]> {
  if (!selected.has(".linux")) measurementError("UKI: no .linux section; systemd-stub refuses to boot such an image");
  const out: Array<[string, T]> = [];
  for (const name of UKI_SECTION_ORDER) {
    if (name === ".pcrsig") continue;
    const s = selected.get(name);
    if (!s) continue;
    if (HARDWARE_SELECTED.has(name)) {
      measurementError(`UKI: section ${name} is chosen by the stub from the machine's hardware IDs; its PCR 11 measurement cannot be predicted offline`);
    }
    out.push([name, s]);
  }
  return out;
}

/** Something that can be extended into a register: either the measured bytes or a precomputed digest. */
export type Extendable = { readonly data: Buffer } | { readonly digest: Buffer };

/** Replay events into one register from zeros: `R = H(R || digest)`, digest = H(data) unless given. */
export function pcrReplay(events: ReadonlyArray<Extendable>, alg: HashAlg): Buffer {
  const size = DIGEST_SIZES[alg];
  if (size === undefined) measurementError(`unsupported hash algorithm ${String(alg)}`);
  let r = Buffer.alloc(size);
  for (const e of events) {
    const d = "digest" in e ? e.digest : createHash(alg).update(e.data).digest();
    if (d.length !== size) measurementError(`pcrReplay ${alg}: digest is ${d.length} bytes, expected ${size}`);
    r = createHash(alg).update(r).update(d).digest();
  }
  return r;
}
