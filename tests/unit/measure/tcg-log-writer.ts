/**
 * An independent writer of TCG2 crypto-agile event logs for tests (no shared code with
 * provider/measure/eventlog.ts), from the TCG PC Client Platform Firmware Profile: a TCG_PCR_EVENT
 * (SHA-1 format) carrying the "Spec ID Event03" EV_NO_ACTION, then TCG_PCR_EVENT2 records. A TDX
 * CCEL has the same layout with the CC measurement register index (1 = RTMR0, 2 = RTMR1, 3 = RTMR2)
 * in place of the PCR index.
 */

/** TPM_ALG_ID and digest size (TCG Algorithm Registry). */
const ALGS = { sha1: [0x0004, 20], sha256: [0x000b, 32], sha384: [0x000c, 48] } as const;
export type LogAlg = keyof typeof ALGS;

/** Event types used here (TCG PFP 10.4.1). */
export const EV = {
  EV_NO_ACTION: 0x00000003,
  EV_SEPARATOR: 0x00000004,
  EV_EVENT_TAG: 0x00000006,
  EV_IPL: 0x0000000d,
  EV_EFI_BOOT_SERVICES_APPLICATION: 0x80000003,
  EV_EFI_GPT_EVENT: 0x80000006,
  EV_EFI_ACTION: 0x80000007,
} as const;

export interface LogEvent {
  index: number;
  type: number;
  /** Hex digest per bank; banks left out are not recorded for this event. */
  digests: Partial<Record<LogAlg, string>>;
  data?: Buffer;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
}

/** The whole log: Spec ID header declaring `algs`, then the events. */
export function writeTcgLog(algs: ReadonlyArray<LogAlg>, events: ReadonlyArray<LogEvent>): Buffer {
  const specId = Buffer.concat([
    Buffer.from("Spec ID Event03\0", "latin1"),
    u32(0), // platformClass: client
    Buffer.from([0, 2, 0, 2]), // specVersionMinor, specVersionMajor, specErrata, uintnSize (UINT64)
    u32(algs.length),
    ...algs.map((a) => Buffer.concat([u16(ALGS[a][0]), u16(ALGS[a][1])])),
    Buffer.from([0]), // vendorInfoSize
  ]);
  const header = Buffer.concat([u32(0), u32(EV.EV_NO_ACTION), Buffer.alloc(20), u32(specId.length), specId]);
  const records = events.map((e) => {
    const present = algs.filter((a) => e.digests[a] !== undefined);
    const digests = present.map((a) => {
      const d = Buffer.from(e.digests[a]!, "hex");
      if (d.length !== ALGS[a][1]) throw new Error(`writeTcgLog: ${a} digest of ${d.length} bytes`);
      return Buffer.concat([u16(ALGS[a][0]), d]);
    });
    const data = e.data ?? Buffer.alloc(0);
    return Buffer.concat([u32(e.index), u32(e.type), u32(present.length), ...digests, u32(data.length), data]);
  });
  return Buffer.concat([header, ...records]);
}

/** systemd's userspace measurement log (/run/log/systemd/tpm2-measure.log): JSON-SEQ (RFC 7464) records. */
export function writeUserspaceLog(records: ReadonlyArray<{ pcr: number; digests: Partial<Record<LogAlg, string>>; string?: string }>): string {
  return records
    .map((r) => `\x1e${JSON.stringify({ pcr: r.pcr, digests: Object.entries(r.digests).map(([hashAlg, digest]) => ({ hashAlg, digest })), content_type: "phase", content: { string: r.string ?? "" } })}\n`)
    .join("");
}

/** One TCG_PCR_EVENT2 record with digests given by TPM_ALG_ID (for re-encoding what a parser read). */
export function encodeEvent2(index: number, type: number, digests: ReadonlyArray<{ algId: number; digest: Buffer }>, data: Buffer): Buffer {
  return Buffer.concat([u32(index), u32(type), u32(digests.length), ...digests.map((d) => Buffer.concat([u16(d.algId), d.digest])), u32(data.length), data]);
}
