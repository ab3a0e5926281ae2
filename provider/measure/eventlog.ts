/**
 * TCG2 crypto-agile event logs: the TPM log Linux exposes at
 * /sys/kernel/security/tpm0/binary_bios_measurements, and the TDX CC event log (ACPI CCEL table,
 * /sys/firmware/acpi/tables/data/CCEL), which uses the same format with the CC measurement
 * register index in place of the PCR index.
 *
 * Sources (read, not copied):
 * - TCG PC Client Platform Firmware Profile Specification (PFP) 1.05: TCG_PCR_EVENT (the first,
 *   SHA1-format event), TCG_EfiSpecIdEvent ("Spec ID Event03"), TCG_PCR_EVENT2, event types,
 *   StartupLocality event.
 * - TCG Algorithm Registry: TPM_ALG_ID values.
 * - UEFI Specification 2.10 section 38.4 (EFI_CC_MEASUREMENT_PROTOCOL) and edk2
 *   MdePkg/Library/TdxLib / TdxMeasurementLib MapPcrToMrIndex: MR index 0 = MRTD, 1 = RTMR0,
 *   2 = RTMR1, 3 = RTMR2 (4 = RTMR3); PCR 0 -> 0, PCR 1,7 -> 1, PCR 2-6 -> 2, PCR 8-15 -> 3.
 * - ACPI 6.5 section 5.2.35 "CC Event Log ACPI Table" (CCEL) for the table layout.
 */
import { ByteView, DIGEST_SIZES, HashAlg, digest, measurementError } from "./bytes";

/** TCG PFP event types. */
export const EventType = {
  EV_PREBOOT_CERT: 0x00000000,
  EV_POST_CODE: 0x00000001,
  EV_UNUSED: 0x00000002,
  EV_NO_ACTION: 0x00000003,
  EV_SEPARATOR: 0x00000004,
  EV_ACTION: 0x00000005,
  EV_EVENT_TAG: 0x00000006,
  EV_S_CRTM_CONTENTS: 0x00000007,
  EV_S_CRTM_VERSION: 0x00000008,
  EV_CPU_MICROCODE: 0x00000009,
  EV_PLATFORM_CONFIG_FLAGS: 0x0000000a,
  EV_TABLE_OF_DEVICES: 0x0000000b,
  EV_COMPACT_HASH: 0x0000000c,
  EV_IPL: 0x0000000d,
  EV_IPL_PARTITION_DATA: 0x0000000e,
  EV_NONHOST_CODE: 0x0000000f,
  EV_NONHOST_CONFIG: 0x00000010,
  EV_NONHOST_INFO: 0x00000011,
  EV_OMIT_BOOT_DEVICE_EVENTS: 0x00000012,
  EV_POST_CODE2: 0x00000013,
  EV_EFI_VARIABLE_DRIVER_CONFIG: 0x80000001,
  EV_EFI_VARIABLE_BOOT: 0x80000002,
  EV_EFI_BOOT_SERVICES_APPLICATION: 0x80000003,
  EV_EFI_BOOT_SERVICES_DRIVER: 0x80000004,
  EV_EFI_RUNTIME_SERVICES_DRIVER: 0x80000005,
  EV_EFI_GPT_EVENT: 0x80000006,
  EV_EFI_ACTION: 0x80000007,
  EV_EFI_PLATFORM_FIRMWARE_BLOB: 0x80000008,
  EV_EFI_HANDOFF_TABLES: 0x80000009,
  EV_EFI_PLATFORM_FIRMWARE_BLOB2: 0x8000000a,
  EV_EFI_HANDOFF_TABLES2: 0x8000000b,
  EV_EFI_VARIABLE_BOOT2: 0x8000000c,
  EV_EFI_GPT_EVENT2: 0x8000000d,
  EV_EFI_HCRTM_EVENT: 0x80000010,
  EV_EFI_VARIABLE_AUTHORITY: 0x800000e0,
  EV_EFI_SPDM_FIRMWARE_BLOB: 0x800000e1,
  EV_EFI_SPDM_FIRMWARE_CONFIG: 0x800000e2,
  EV_EFI_SPDM_DEVICE_POLICY: 0x800000e3,
  EV_EFI_SPDM_DEVICE_AUTHORITY: 0x800000e4,
} as const;

export type EventTypeName = keyof typeof EventType;

const EVENT_TYPE_NAMES = new Map<number, EventTypeName>(Object.entries(EventType).map(([k, v]) => [v, k as EventTypeName]));

export function eventTypeName(type: number): string {
  return EVENT_TYPE_NAMES.get(type) ?? `0x${type.toString(16).padStart(8, "0")}`;
}

/** TPM_ALG_ID values for the banks we can replay. */
export const TPM_ALG: Readonly<Record<HashAlg, number>> = { sha1: 0x0004, sha256: 0x000b, sha384: 0x000c, sha512: 0x000d };
const ALG_BY_ID = new Map<number, HashAlg>(Object.entries(TPM_ALG).map(([k, v]) => [v, k as HashAlg]));

export interface SpecIdAlgorithm {
  readonly algId: number;
  readonly digestSize: number;
  /** Set when we know (and can replay) the algorithm. */
  readonly alg?: HashAlg;
}

export interface SpecIdEvent {
  readonly platformClass: number;
  readonly specVersionMinor: number;
  readonly specVersionMajor: number;
  readonly specErrata: number;
  readonly uintnSize: number;
  readonly algorithms: ReadonlyArray<SpecIdAlgorithm>;
  readonly vendorInfo: Buffer;
}

export interface LogDigest {
  readonly algId: number;
  readonly alg?: HashAlg;
  readonly digest: Buffer;
}

export interface TcgEvent {
  /** Byte offset of the event in the log. */
  readonly offset: number;
  /** The PCR index (TPM log) or CC measurement register index (CCEL). */
  readonly index: number;
  readonly type: number;
  readonly typeName: string;
  readonly digests: ReadonlyArray<LogDigest>;
  readonly data: Buffer;
}

export interface EventLog {
  readonly specId: SpecIdEvent;
  /** The leading SHA1-format TCG_PCR_EVENT carrying the Spec ID event (never extended). */
  readonly header: TcgEvent;
  /** The TCG_PCR_EVENT2 records that follow, in log order. */
  readonly events: ReadonlyArray<TcgEvent>;
  /** Bytes of the input the log occupies (trailing 0x00/0xFF padding excluded). */
  readonly length: number;
}

/**
 * Most events a log may hold. A firmware log (TPM or CCEL) has a few hundred; a log is guest-supplied
 * input, so its size bounds the work of everything that replays or compares it.
 */
export const MAX_LOG_EVENTS = 65_536;

const SPEC_ID_SIGNATURE = Buffer.from("Spec ID Event03\0", "latin1");
const STARTUP_LOCALITY_SIGNATURE = Buffer.from("StartupLocality\0", "latin1");

/** Parse a crypto-agile TCG2 event log. Trailing bytes that are all 0x00 or all 0xFF (unused log area) end the log. */
export function parseEventLog(buf: Buffer): EventLog {
  const v = new ByteView(buf, "event log");
  // TCG_PCR_EVENT: PCRIndex u32, EventType u32, Digest[20], EventSize u32, Event[EventSize].
  const headerIndex = v.u32(0, "first event PCRIndex");
  const headerType = v.u32(4, "first event EventType");
  const headerDigest = v.bytes(8, 20, "first event Digest");
  const headerSize = v.u32(28, "first event EventSize");
  const headerData = v.bytes(32, headerSize, "first event data");
  if (headerType !== EventType.EV_NO_ACTION || headerData.length < 16 || !headerData.subarray(0, 16).equals(SPEC_ID_SIGNATURE)) {
    measurementError('event log: the first event is not an EV_NO_ACTION "Spec ID Event03" (not a crypto-agile TCG2 log)');
  }
  const specId = parseSpecId(headerData);
  const sizeById = new Map(specId.algorithms.map((a) => [a.algId, a]));
  const header: TcgEvent = {
    offset: 0,
    index: headerIndex,
    type: headerType,
    typeName: eventTypeName(headerType),
    digests: [{ algId: TPM_ALG.sha1, alg: "sha1", digest: headerDigest }],
    data: headerData,
  };

  // The unused tail of a log area is 0xFF (CCEL) or 0x00 filled: where it starts, the log ends.
  const padding = Math.min(trailingRunStart(buf, 0xff), trailingRunStart(buf, 0x00));
  const events: TcgEvent[] = [];
  let o = 32 + headerSize;
  while (o < padding) {
    if (events.length === MAX_LOG_EVENTS) measurementError(`event log: more than ${MAX_LOG_EVENTS} events (implausible for a boot)`);
    const start = o;
    const index = v.u32(o, "PCRIndex");
    const type = v.u32(o + 4, "EventType");
    const count = v.u32(o + 8, "digest count");
    if (count > specId.algorithms.length) measurementError(`event log: event at ${start} has ${count} digests, the Spec ID event declares ${specId.algorithms.length} algorithms`);
    o += 12;
    const digests: LogDigest[] = [];
    for (let i = 0; i < count; i++) {
      const algId = v.u16(o, "digest AlgorithmId");
      const known = sizeById.get(algId);
      if (!known) measurementError(`event log: event at ${start} uses algorithm 0x${algId.toString(16)}, not declared in the Spec ID event`);
      const d = v.bytes(o + 2, known.digestSize, "digest");
      digests.push(known.alg === undefined ? { algId, digest: d } : { algId, alg: known.alg, digest: d });
      o += 2 + known.digestSize;
    }
    const size = v.u32(o, "EventSize");
    const data = v.bytes(o + 4, size, "event data");
    o += 4 + size;
    events.push({ offset: start, index, type, typeName: eventTypeName(type), digests, data });
  }
  return { specId, header, events, length: o };
}

/** Index where the run of `value` bytes that ends the buffer begins (buf.length if there is none). */
function trailingRunStart(buf: Buffer, value: number): number {
  let i = buf.length;
  while (i > 0 && buf[i - 1] === value) i--;
  return i;
}

function parseSpecId(ev: Buffer): SpecIdEvent {
  const v = new ByteView(ev, "Spec ID event");
  const n = v.u32(24, "numberOfAlgorithms");
  if (n === 0 || 28 + n * 4 > ev.length) measurementError(`Spec ID event: ${n} algorithms do not fit the ${ev.length}-byte event`);
  const algorithms: SpecIdAlgorithm[] = [];
  for (let i = 0; i < n; i++) {
    const algId = v.u16(28 + 4 * i, "algorithmId");
    const digestSize = v.u16(30 + 4 * i, "digestSize");
    const alg = ALG_BY_ID.get(algId);
    if (alg !== undefined && DIGEST_SIZES[alg] !== digestSize) measurementError(`Spec ID event: ${alg} declared with digest size ${digestSize}`);
    if (digestSize === 0) measurementError(`Spec ID event: algorithm 0x${algId.toString(16)} has digest size 0`);
    algorithms.push(alg === undefined ? { algId, digestSize } : { algId, digestSize, alg });
  }
  const vendorAt = 28 + n * 4;
  const vendorSize = v.u8(vendorAt, "vendorInfoSize");
  return {
    platformClass: v.u32(16, "platformClass"),
    specVersionMinor: v.u8(20, "specVersionMinor"),
    specVersionMajor: v.u8(21, "specVersionMajor"),
    specErrata: v.u8(22, "specErrata"),
    uintnSize: v.u8(23, "uintnSize"),
    algorithms,
    vendorInfo: v.bytes(vendorAt + 1, vendorSize, "vendorInfo"),
  };
}

/** Register values per index per bank. */
export type RegisterBanks = Map<number, Map<HashAlg, Buffer>>;

/**
 * Replay events into registers from zeros (`R = H(R || digest)` per bank). EV_NO_ACTION events
 * are not extended, except that a PCR 0 "StartupLocality" event sets PCR 0's initial value to
 * the locality in its last byte (TCG PFP). Digests of algorithms we cannot compute are ignored.
 */
export function replayLog(events: ReadonlyArray<TcgEvent>): RegisterBanks {
  const out: RegisterBanks = new Map();
  const locality = new Map<number, number>();
  for (const e of events) {
    if (e.type === EventType.EV_NO_ACTION) {
      if (e.index === 0 && e.data.length >= 17 && e.data.subarray(0, 16).equals(STARTUP_LOCALITY_SIGNATURE)) locality.set(0, e.data[16]!);
      continue;
    }
    let banks = out.get(e.index);
    if (!banks) out.set(e.index, (banks = new Map()));
    for (const d of e.digests) {
      if (!d.alg) continue;
      let r = banks.get(d.alg);
      if (!r) {
        r = Buffer.alloc(DIGEST_SIZES[d.alg]);
        const l = locality.get(e.index);
        if (l !== undefined) r[r.length - 1] = l;
      }
      banks.set(d.alg, digest(d.alg, r, d.digest));
    }
  }
  return out;
}

/** CC measurement register names by CC MR index (UEFI 2.10 section 38.4.1, TDX). */
export const CC_MR_NAMES = ["MRTD", "RTMR0", "RTMR1", "RTMR2", "RTMR3"] as const;
export type CcMrName = (typeof CC_MR_NAMES)[number];

export interface CcEvent extends TcgEvent {
  /** The register this event is accounted to. MRTD events are informational: MRTD is built by the TDX module. */
  readonly register: CcMrName;
}

export interface CcEventLog extends Omit<EventLog, "events"> {
  readonly events: ReadonlyArray<CcEvent>;
}

/** Parse a TDX CC event log (the CCEL log area): TCG2 format, index field = CC MR index. */
export function parseCcel(buf: Buffer): CcEventLog {
  const log = parseEventLog(buf);
  const events = log.events.map((e): CcEvent => {
    const register = CC_MR_NAMES[e.index];
    if (register === undefined) measurementError(`CCEL: event at ${e.offset} has MR index ${e.index}; TDX defines 0 (MRTD) to 4 (RTMR3)`);
    return { ...e, register };
  });
  return { ...log, events };
}

export interface RtmrValues {
  readonly RTMR0: Buffer;
  readonly RTMR1: Buffer;
  readonly RTMR2: Buffer;
  readonly RTMR3: Buffer;
}

/** Replay a CCEL into RTMR0..3 (SHA-384, from zeros). MR index 0 events cannot be replayed (MRTD) and are skipped. */
export function replayCcel(events: ReadonlyArray<CcEvent>): RtmrValues {
  const r: Record<"RTMR0" | "RTMR1" | "RTMR2" | "RTMR3", Buffer> = {
    RTMR0: Buffer.alloc(48),
    RTMR1: Buffer.alloc(48),
    RTMR2: Buffer.alloc(48),
    RTMR3: Buffer.alloc(48),
  };
  for (const e of events) {
    if (e.type === EventType.EV_NO_ACTION || e.register === "MRTD") continue;
    const d = e.digests.find((x) => x.alg === "sha384");
    if (!d) measurementError(`CCEL: event at ${e.offset} has no SHA-384 digest`);
    r[e.register] = digest("sha384", r[e.register], d.digest);
  }
  return r;
}

/** Map a TCG PCR index to the TDX CC MR index (edk2 MapPcrToMrIndex). */
export function pcrToCcMrIndex(pcr: number): number {
  if (pcr === 0) return 0;
  if (pcr === 1 || pcr === 7) return 1;
  if (pcr >= 2 && pcr <= 6) return 2;
  if (pcr >= 8 && pcr <= 15) return 3;
  return measurementError(`PCR ${pcr} has no TDX measurement register`);
}

export interface CcelTable {
  readonly revision: number;
  readonly oemId: string;
  /** CC type: 1 = AMD SEV, 2 = Intel TDX. */
  readonly ccType: number;
  readonly ccSubType: number;
  /** Log Area Minimum Length (LAML). */
  readonly logAreaMinimumLength: bigint;
  /** Log Area Start Address (LASA). */
  readonly logAreaStartAddress: bigint;
}

/** Parse the 56-byte ACPI CCEL table (/sys/firmware/acpi/tables/CCEL); validates signature, length and checksum. */
export function parseCcelTable(buf: Buffer): CcelTable {
  const v = new ByteView(buf, "CCEL table");
  v.need(0, 56, "table");
  if (buf.toString("latin1", 0, 4) !== "CCEL") measurementError('CCEL table: signature is not "CCEL"');
  const length = v.u32(4, "Length");
  if (length < 56 || length > buf.length) measurementError(`CCEL table: Length ${length} is invalid for a ${buf.length}-byte input`);
  let sum = 0;
  for (let i = 0; i < length; i++) sum = (sum + buf[i]!) & 0xff;
  if (sum !== 0) measurementError("CCEL table: checksum does not add up to zero");
  return {
    revision: v.u8(8, "Revision"),
    oemId: buf.toString("latin1", 10, 16),
    ccType: v.u8(36, "CC Type"),
    ccSubType: v.u8(37, "CC Subtype"),
    logAreaMinimumLength: v.u64(40, "LAML"),
    logAreaStartAddress: v.u64(48, "LASA"),
  };
}
