/**
 * Robustness and meaning: every parser, fed hundreds of truncated / bit-flipped / field-smashed
 * variants of real inputs, either throws TdxError("E_MEASUREMENT") — never a TypeError, RangeError
 * or a hang — or returns a result that still means what it says: section bytes are the file's
 * bytes at the declared place, events re-encode to the very bytes they were read from, the GPT
 * event holds the disk's header and used entries, quote fields sit at the specification's offsets,
 * and digests of accepted variants agree with the independent implementations.
 * Deterministic (seeded); set TDXVM_FUZZ_SEED and TDXVM_FUZZ_ROUNDS to explore more.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as zlib from "node:zlib";
import { createHash } from "node:crypto";
import { TdxError } from "../../../provider/errors";
import {
  EventType,
  authenticodeDigest,
  computeMrtd,
  CC_MR_NAMES,
  UKI_SECTION_ORDER,
  ovmfGuidTable,
  parseCcel,
  parseCcelTable,
  parseEventLog,
  parseGpt,
  parseGptEventData,
  parsePe,
  parseTdvf,
  parseTdxQuote,
  replayCcel,
  replayLog,
  tdvfCfv,
  uefiGptEventData,
  ukiPcr11Events,
  ukiSections,
} from "../../../provider/measure";
import { testUki } from "../../fixtures/testUki";
import { peOffsets } from "./pe-builder";
import { encodeEvent2 } from "./tcg-log-writer";
import { fixture, hex, independent, ovmfPath, tempDir } from "./fixtures";
import fc from "fast-check";
import { verify, VerifyInput } from "../../../provider/measure/verify";
import type { Measurements } from "../../../provider/measure/ledger";

const SEED = Number(process.env.TDXVM_FUZZ_SEED ?? 20261124);
const ROUNDS = Number(process.env.TDXVM_FUZZ_ROUNDS ?? 300);
/** A single call taking longer than this counts as a hang. */
const MAX_CALL_MS = 5_000;

/** mulberry32: small deterministic PRNG. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SMASH_VALUES = [0, 1, 0x7f, 0x80, 0xff, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff, 0x1000, 0x200];

/**
 * Variants of `seed`: truncations, bit flips and 32-bit field smashes. `hot` ranges (e.g. headers)
 * receive most of the mutations so they reach deep parser paths instead of dying on a checksum.
 */
function variants(seedBuf: Buffer, n: number, salt: number, hot: ReadonlyArray<[number, number]> = [[0, seedBuf.length]]): Buffer[] {
  const r = rng(SEED ^ salt);
  const int = (lo: number, hi: number) => lo + Math.floor(r() * Math.max(1, hi - lo));
  const pickOffset = () => {
    const [lo, hi] = r() < 0.85 ? hot[int(0, hot.length)]! : [0, seedBuf.length];
    return Math.min(seedBuf.length - 1, int(lo, hi));
  };
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const kind = i % 4;
    if (kind === 0) {
      out.push(Buffer.from(seedBuf.subarray(0, int(0, seedBuf.length))));
      continue;
    }
    const b = Buffer.from(seedBuf);
    const edits = int(1, 6);
    for (let e = 0; e < edits; e++) {
      const at = pickOffset();
      if (kind === 1) b[at] ^= 1 << int(0, 8);
      else if (kind === 2 && at + 4 <= b.length) b.writeUInt32LE(SMASH_VALUES[int(0, SMASH_VALUES.length)]! >>> 0, at - (at % 2));
      else b[at] = int(0, 256);
    }
    out.push(kind === 3 && r() < 0.5 ? b.subarray(0, int(seedBuf.length >> 1, seedBuf.length)) : b);
  }
  return out;
}

function expectOnlyMeasurementErrors<T>(name: string, inputs: ReadonlyArray<Buffer>, fn: (b: Buffer) => T, onAccepted: (b: Buffer, result: T, i: number) => void = () => {}): { ok: number; rejected: number } {
  let ok = 0;
  let rejected = 0;
  inputs.forEach((input, i) => {
    const t0 = Date.now();
    let result: { value: T } | undefined;
    try {
      result = { value: fn(input) };
    } catch (e) {
      if (!(e instanceof TdxError) || e.code !== "E_MEASUREMENT") {
        const msg = e instanceof Error ? `${e.name}: ${e.message}\n${e.stack}` : String(e);
        throw new Error(`${name}: variant ${i} (seed ${SEED}) threw something other than E_MEASUREMENT: ${msg}`, { cause: e });
      }
    }
    const ms = Date.now() - t0;
    if (ms > MAX_CALL_MS) throw new Error(`${name}: variant ${i} (seed ${SEED}) took ${ms} ms`);
    if (!result) {
      rejected++;
      return;
    }
    ok++;
    onAccepted(input, result.value, i);
  });
  expect(ok + rejected).toBe(inputs.length);
  return { ok, rejected };
}

/** Call fn; undefined when it throws E_MEASUREMENT (anything else is rethrown). */
function accepted<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch (e) {
    if (e instanceof TdxError && e.code === "E_MEASUREMENT") return undefined;
    throw e;
  }
}

describe("fuzz: parsers fail only with E_MEASUREMENT, and what they accept means what it says", () => {
  it("PE / Authenticode / UKI", () => {
    const uki = fs.readFileSync(testUki().uki);
    const pe = parsePe(uki);
    const hot: Array<[number, number]> = [[0, pe.sectionTableOffset + 40 * pe.sections.length]];
    const inputs = variants(uki, ROUNDS * 2, 1, hot);
    const digests: Array<{ buf: Buffer; sha256: string }> = [];
    const order = UKI_SECTION_ORDER as ReadonlyArray<string>;
    const r = expectOnlyMeasurementErrors("pe+uki", inputs, (b) => parsePe(b), (b, parsed) => {
      // The section table is read from where the headers say, entry for entry.
      const { table, nSections } = peOffsets(b);
      expect(parsed.sections.length).toBe(nSections);
      parsed.sections.forEach((s, i) => {
        const at = table + 40 * i;
        expect([s.virtualSize, s.sizeOfRawData, s.pointerToRawData]).toEqual([b.readUInt32LE(at + 8), b.readUInt32LE(at + 16), b.readUInt32LE(at + 20)]);
      });
      const d = accepted(() => authenticodeDigest(b, "sha256"));
      if (d) {
        // CheckSum is not hashed as a header field (only section data laid over the headers could cover it).
        const c = parsed.checkSumOffset;
        if (parsed.sections.every((s) => s.sizeOfRawData === 0 || s.pointerToRawData >= c + 4 || s.pointerToRawData + s.sizeOfRawData <= c)) {
          const other = Buffer.from(b);
          other.writeUInt32LE((b.readUInt32LE(c) ^ 0x5a5a5a5a) >>> 0, c);
          expect(hex(authenticodeDigest(other, "sha256"))).toBe(hex(d));
        }
        if (digests.length < 25 && !b.equals(uki)) digests.push({ buf: b, sha256: hex(d) });
      }
      const sections = accepted(() => ukiSections(b));
      if (sections) {
        for (const s of sections) {
          const n = Math.min(s.virtualSize, s.sizeOfRawData);
          const ptr = parsed.sections[s.index]!.pointerToRawData;
          expect(s.data.length).toBe(s.virtualSize);
          expect(s.data.subarray(0, n).equals(b.subarray(ptr, ptr + n))).toBe(true);
          expect(s.data.subarray(n).every((x) => x === 0)).toBe(true);
        }
      }
      const events = accepted(() => ukiPcr11Events(b));
      if (events) {
        // Pairs of name\0 and content, in systemd's order, each name once, never .pcrsig.
        const names = events.filter((e, i) => (i % 2 === 0 ? e.kind === "name" : e.kind === "content") && e.section === events[i - (i % 2)]!.section);
        expect(names).toHaveLength(events.length);
        const sectionOrder = events.filter((e) => e.kind === "name").map((e) => order.indexOf(e.section));
        expect(sectionOrder).toEqual([...sectionOrder].sort((x, y) => x - y));
        expect(new Set(sectionOrder).size).toBe(sectionOrder.length);
        expect(sectionOrder).not.toContain(order.indexOf(".pcrsig"));
        for (const e of events.filter((x) => x.kind === "name")) expect(e.data.toString("latin1")).toBe(`${e.section}\0`);
      }
    });
    expect(r.ok).toBeGreaterThan(0);
    expect(r.rejected).toBeGreaterThan(0);
    // Digests of accepted variants: the independent implementation agrees wherever it can read the file.
    const dir = tempDir();
    digests.forEach((d, i) => fs.writeFileSync(path.join(dir, `v${i}.efi`), d.buf));
    const py = JSON.parse(independent("authenticode.py", ["--json", ...digests.map((_, i) => `v${i}.efi`)], dir)) as Record<string, { sha256?: string }>;
    const compared = digests.filter((_, i) => py[`v${i}.efi`]!.sha256 !== undefined);
    expect(compared.length).toBeGreaterThanOrEqual(10);
    digests.forEach((d, i) => {
      if (py[`v${i}.efi`]!.sha256 !== undefined) expect({ i, sha256: d.sha256 }).toEqual({ i, sha256: py[`v${i}.efi`]!.sha256 });
    });
  });

  it("GPT and UEFI_GPT_DATA", () => {
    const ev = parseCcel(fixture("ccel-cos113.bin")).events.find((e) => e.type === EventType.EV_EFI_GPT_EVENT)!.data;
    const { headerBytes, header, entries } = parseGptEventData(ev);
    const arrayAt = Number(header.partitionEntryLba) * 512;
    const disk = Buffer.alloc(arrayAt + header.numberOfPartitionEntries * header.sizeOfPartitionEntry);
    headerBytes.copy(disk, 512);
    entries.forEach((e, i) => e.copy(disk, arrayAt + i * header.sizeOfPartitionEntry));

    // Raw variants mostly die on a CRC; also re-seal CRCs so mutated fields reach the later checks.
    const reseal = (b: Buffer): Buffer => {
      if (b.length < 1024) return b;
      const size = b.readUInt32LE(512 + 84);
      const count = b.readUInt32LE(512 + 80);
      const lba = Number(b.readBigUInt64LE(512 + 72));
      const end = lba * 512 + count * size;
      if (Number.isSafeInteger(end) && end <= b.length && lba >= 2) b.writeUInt32LE(zlib.crc32(b.subarray(lba * 512, end)), 512 + 88);
      const hs = b.readUInt32LE(512 + 12);
      if (hs >= 92 && hs <= 512) {
        b.writeUInt32LE(0, 512 + 16);
        b.writeUInt32LE(zlib.crc32(b.subarray(512, 512 + hs)), 512 + 16);
      }
      return b;
    };
    const raw = variants(disk, ROUNDS, 2, [[512, 604], [arrayAt, arrayAt + 12 * 128]]);
    const sealed = variants(disk, ROUNDS, 3, [[512, 604], [arrayAt, arrayAt + 12 * 128]]).map((b) => reseal(Buffer.from(b)));
    const r = expectOnlyMeasurementErrors("gpt", [...raw, ...sealed], (b) => ({ gpt: parseGpt(b), data: uefiGptEventData(b) }), (b, { gpt, data }) => {
      // UEFI_GPT_DATA = the 92-byte header at LBA 1, the count, then the used entries in array order.
      const lba = Number(b.readBigUInt64LE(512 + 72));
      const size = b.readUInt32LE(512 + 84);
      const used: Buffer[] = [];
      for (let i = 0; i < b.readUInt32LE(512 + 80); i++) {
        const e = b.subarray(lba * 512 + i * size, lba * 512 + (i + 1) * size);
        if (!e.subarray(0, 16).equals(Buffer.alloc(16))) used.push(e);
      }
      expect(data.equals(Buffer.concat([b.subarray(512, 604), Buffer.from(new BigUint64Array([BigInt(used.length)]).buffer), ...used]))).toBe(true);
      expect(gpt.partitions).toHaveLength(used.length);
    });
    expect(r.ok).toBeGreaterThan(0);
    expectOnlyMeasurementErrors("gpt event data", variants(ev, ROUNDS, 4, [[0, 100]]), (b) => parseGptEventData(b));
  });

  it("TCG2 event log and CCEL", () => {
    /** Accepted logs re-encode to the bytes they were read from; replay equals extending the parsed digests. */
    const lossless = (b: Buffer, log: ReturnType<typeof parseEventLog>) => {
      if (!log.events.length) return;
      const again = Buffer.concat(log.events.map((e) => encodeEvent2(e.index, e.type, e.digests, e.data)));
      expect(again.equals(b.subarray(log.events[0]!.offset, log.length))).toBe(true);
    };
    const tpm = fixture("tpm-eventlog-arch-linux.bin");
    const r1 = expectOnlyMeasurementErrors("tpm log", variants(tpm, ROUNDS, 5, [[0, 200], [0, tpm.length]]), (b) => {
      const log = parseEventLog(b);
      return { log, banks: replayLog(log.events) };
    }, (b, { log, banks }) => {
      lossless(b, log);
      const pcr4 = log.events.filter((e) => e.index === 4 && e.type !== EventType.EV_NO_ACTION).flatMap((e) => e.digests.filter((d) => d.alg === "sha256").map((d) => d.digest));
      if (pcr4.length) expect(banks.get(4)!.get("sha256")).toEqual(pcr4.reduce((acc, d) => createHash("sha256").update(acc).update(d).digest(), Buffer.alloc(32)));
    });
    const ccel = fixture("ccel-cos113.bin");
    const r2 = expectOnlyMeasurementErrors("ccel", variants(ccel, ROUNDS, 6, [[0, 200], [0, ccel.length]]), (b) => {
      const log = parseCcel(b);
      return { log, rtmr: replayCcel(log.events) };
    }, (b, { log, rtmr }) => {
      lossless(b, log);
      for (const e of log.events) expect(e.register).toBe(CC_MR_NAMES[e.index]);
      const rtmr1 = log.events.filter((e) => e.register === "RTMR1" && e.type !== EventType.EV_NO_ACTION).map((e) => e.digests.find((d) => d.alg === "sha384")!.digest);
      expect(rtmr.RTMR1).toEqual(rtmr1.reduce((acc, d) => createHash("sha384").update(acc).update(d).digest(), Buffer.alloc(48)));
    });
    expect(r1.ok + r2.ok).toBeGreaterThan(0);
    // Half of the table variants get their ACPI checksum fixed so mutations reach the field checks.
    const resum = (b: Buffer, i: number): Buffer => {
      if (i % 2 === 0 || b.length < 10) return b;
      const len = Math.min(b.length, b.readUInt32LE(4));
      let sum = 0;
      for (let k = 0; k < len; k++) if (k !== 9) sum = (sum + b[k]!) & 0xff;
      b[9] = (256 - sum) & 0xff;
      return b;
    };
    const tables = variants(fixture("ccel-table-cos113.bin"), ROUNDS, 7).map((b, i) => resum(Buffer.from(b), i));
    expectOnlyMeasurementErrors("ccel table", tables, (b) => parseCcelTable(b), (b, t) => {
      expect([t.logAreaMinimumLength, t.logAreaStartAddress]).toEqual([b.readBigUInt64LE(40), b.readBigUInt64LE(48)]);
    });
  });

  it("TDX quote v4 and v5", () => {
    for (const [name, salt] of [["tdx-quote-cos113.dat", 8], ["tdx-quote-v5-sample.dat", 9]] as const) {
      const q = fixture(name);
      const r = expectOnlyMeasurementErrors(name, variants(q, ROUNDS, salt, [[0, 60], [630, 720]]), (b) => parseTdxQuote(b), (b, quote) => {
        // TD report fields at the offsets of Intel's quote layout: header 48 bytes (v5: + type and size), then the body.
        const body = quote.header.version === 4 ? 48 : 54;
        expect(quote.header.version === 4 || quote.header.version === 5).toBe(true);
        expect(quote.body.mrTd.equals(b.subarray(body + 136, body + 184))).toBe(true);
        quote.body.rtmr.forEach((r, i) => expect(r.equals(b.subarray(body + 328 + 48 * i, body + 376 + 48 * i))).toBe(true));
        expect(quote.body.reportData.equals(b.subarray(body + 520, body + 584))).toBe(true);
      });
      expect(r.ok).toBeGreaterThan(0);
    }
  });

  it("TDVF metadata, MRTD and CFV", () => {
    const fw = fs.readFileSync(ovmfPath());
    const meta = parseTdvf(fw);
    const hot: Array<[number, number]> = [
      [fw.length - 4096, fw.length - 32], // GUIDed table and footer
      [meta.offset, meta.offset + meta.length], // TDVF descriptor
    ];
    const inputs = variants(fw, ROUNDS, 10, hot);
    const changed: Array<{ buf: Buffer; mrtd: string }> = [];
    const r = expectOnlyMeasurementErrors("tdvf", inputs, (b) => {
      ovmfGuidTable(b);
      parseTdvf(b);
      tdvfCfv(b);
      return hex(computeMrtd(b, { pageOrder: "single-pass" }));
    }, (b, mrtd) => {
      if (changed.length < 3 && b.length === fw.length && !b.equals(fw)) changed.push({ buf: b, mrtd });
    });
    expect(r.ok).toBeGreaterThan(0);
    expect(r.rejected).toBeGreaterThan(0);
    // Accepted variants of the firmware: the independent implementation computes the same MRTD.
    expect(changed.length).toBeGreaterThan(0);
    const dir = tempDir();
    for (const [i, c] of changed.entries()) {
      fs.writeFileSync(path.join(dir, `fw${i}.fd`), c.buf);
      expect({ i, mrtd: c.mrtd }).toEqual({ i, mrtd: (JSON.parse(independent("mrtd.py", [`fw${i}.fd`], dir)) as Record<string, string>)["single-pass"] });
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }, 120_000);
});

describe("verify() on guest-supplied evidence", () => {
  const hex = (n: number, c: string) => c.repeat(n);
  const expected: Measurements = {
    measurementsVersion: 1, backend: "azure", inputs: {},
    registers: {
      PCR4: { alg: "sha256", value: hex(64, "a"), status: "exact", events: [{ type: "EV_EFI_BOOT_SERVICES_APPLICATION", description: "uki", origin: "uki", digest: hex(64, "1") }] },
      PCR11: { alg: "sha256", value: hex(64, "b"), status: "exact", events: [{ type: "systemd", description: "phase", origin: "stub", digest: hex(64, "2"), log: "userspace" }] },
      MRTD: { alg: "sha384", value: hex(96, "c"), status: "exact", events: [] },
    },
  };

  it("malformed records, PCR values and buffers fail with E_MEASUREMENT or are ignored, never with a TypeError", () => {
    const RS = String.fromCharCode(0x1e);
    // Each of these crashed verify() with a TypeError before it checked the guest's data.
    const cases: unknown[] = [
      { userspaceLog: `${RS}{"pcr":11,"digests":[{"hashAlg":"sha256","digest":5}]}\n` },
      { userspaceLog: `${RS}null\n${RS}{"pcr":11,"digests":[null]}\n` },
      { pcrs: { sha256: { 4: 1234 } } },
      { eventLog: "not a buffer" },
      { userspaceLog: 42 },
    ];
    for (const input of cases) {
      let code: string | undefined;
      try {
        verify(expected, input as VerifyInput);
      } catch (e) {
        code = e instanceof TdxError ? e.code : `${(e as Error).name}: ${(e as Error).message}`;
      }
      expect({ input, code: code ?? "E_MEASUREMENT" }).toEqual({ input, code: "E_MEASUREMENT" });
    }
  });

  it("fuzz: only TdxError comes out, and a register whose reported value differs from the expected one is never ok", () => {
    const tpm = fixture("tpm-eventlog-arch-linux.bin");
    const logs = variants(tpm, 60, 21, [[0, 200], [0, tpm.length]]);
    const record = fc.oneof(
      fc.jsonValue().map((j) => JSON.stringify(j)),
      fc.record({ pcr: fc.oneof(fc.integer({ min: 0, max: 23 }), fc.anything()), digests: fc.oneof(fc.array(fc.record({ hashAlg: fc.oneof(fc.constant("sha256"), fc.anything()), digest: fc.oneof(fc.stringMatching(/^[0-9a-f]{64}$/), fc.anything()) }, { requiredKeys: [] })), fc.anything()) }, { requiredKeys: [] }).map((r) => { try { return JSON.stringify(r) ?? ""; } catch { return ""; } }),
      fc.string(),
    );
    const input = fc.record({
      eventLog: fc.oneof(fc.constant(undefined), fc.nat(logs.length - 1).map((i) => logs[i]!), fc.uint8Array({ maxLength: 256 }).map((a) => Buffer.from(a)), fc.anything()),
      userspaceLog: fc.oneof(fc.constant(undefined), fc.array(record, { maxLength: 6 }).map((rs) => rs.map((r) => `${String.fromCharCode(0x1e)}${r}\n`).join("")), fc.anything()),
      pcrs: fc.oneof(fc.constant(undefined), fc.anything(), fc.record({ sha256: fc.dictionary(fc.constantFrom("4", "11", "x"), fc.oneof(fc.stringMatching(/^[0-9a-f]{64}$/), fc.anything())) })),
      quote: fc.oneof(fc.constant(undefined), fc.uint8Array({ maxLength: 700 }).map((a) => Buffer.from(a))),
    }, { requiredKeys: [] });
    let returned = 0;
    fc.assert(
      fc.property(input, (i) => {
        let r;
        try {
          r = verify(expected, i as VerifyInput);
        } catch (e) {
          if (!(e instanceof TdxError) || e.code !== "E_MEASUREMENT") throw e;
          return;
        }
        returned++;
        for (const v of r.registers) {
          if (v.reported !== null && v.reported !== v.expected) expect(v.ok).toBe(false);
          expect(v.ok).toBe(v.problems.length === 0);
        }
        expect(r.ok).toBe(r.registers.every((v) => v.ok));
      }),
      { numRuns: 600, seed: SEED },
    );
    expect(returned).toBeGreaterThan(0);
  });
});
