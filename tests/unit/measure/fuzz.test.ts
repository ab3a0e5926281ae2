/**
 * Robustness: every parser, fed hundreds of truncated / bit-flipped / field-smashed variants of
 * real inputs, either succeeds or throws TdxError("E_MEASUREMENT") — never a TypeError, RangeError
 * or a hang. Deterministic (seeded); set TDXVM_FUZZ_SEED and TDXVM_FUZZ_ROUNDS to explore more.
 */
import * as fs from "node:fs";
import * as zlib from "node:zlib";
import { TdxError } from "../../../provider/errors";
import {
  EventType,
  authenticodeDigest,
  computeMrtd,
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
import { fixture, ovmfPath, ukiFixturePath } from "./fixtures";
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

function expectOnlyMeasurementErrors(name: string, inputs: ReadonlyArray<Buffer>, fn: (b: Buffer) => unknown): { ok: number; rejected: number } {
  let ok = 0;
  let rejected = 0;
  inputs.forEach((input, i) => {
    const t0 = Date.now();
    try {
      fn(input);
      ok++;
    } catch (e) {
      if (!(e instanceof TdxError) || e.code !== "E_MEASUREMENT") {
        const msg = e instanceof Error ? `${e.name}: ${e.message}\n${e.stack}` : String(e);
        throw new Error(`${name}: variant ${i} (seed ${SEED}) threw something other than E_MEASUREMENT: ${msg}`, { cause: e });
      }
      rejected++;
    }
    const ms = Date.now() - t0;
    if (ms > MAX_CALL_MS) throw new Error(`${name}: variant ${i} (seed ${SEED}) took ${ms} ms`);
  });
  expect(ok + rejected).toBe(inputs.length);
  return { ok, rejected };
}

describe("fuzz: parsers only ever fail with E_MEASUREMENT", () => {
  it("PE / Authenticode / UKI", () => {
    const uki = fs.readFileSync(ukiFixturePath());
    const pe = parsePe(uki);
    const hot: Array<[number, number]> = [[0, pe.sectionTableOffset + 40 * pe.sections.length]];
    const inputs = variants(uki, ROUNDS * 2, 1, hot);
    const r = expectOnlyMeasurementErrors("pe+uki", inputs, (b) => {
      parsePe(b);
      authenticodeDigest(b, "sha256");
      ukiSections(b);
      ukiPcr11Events(b);
    });
    expect(r.ok).toBeGreaterThan(0);
    expect(r.rejected).toBeGreaterThan(0);
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
    const r = expectOnlyMeasurementErrors("gpt", [...raw, ...sealed], (b) => {
      parseGpt(b);
      uefiGptEventData(b);
    });
    expect(r.ok).toBeGreaterThan(0);
    expectOnlyMeasurementErrors("gpt event data", variants(ev, ROUNDS, 4, [[0, 100]]), (b) => parseGptEventData(b));
  });

  it("TCG2 event log and CCEL", () => {
    const tpm = fixture("tpm-eventlog-arch-linux.bin");
    const r1 = expectOnlyMeasurementErrors("tpm log", variants(tpm, ROUNDS, 5, [[0, 200], [0, tpm.length]]), (b) => replayLog(parseEventLog(b).events));
    const ccel = fixture("ccel-cos113.bin");
    const r2 = expectOnlyMeasurementErrors("ccel", variants(ccel, ROUNDS, 6, [[0, 200], [0, ccel.length]]), (b) => replayCcel(parseCcel(b).events));
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
    expectOnlyMeasurementErrors("ccel table", tables, (b) => parseCcelTable(b));
  });

  it("TDX quote v4 and v5", () => {
    for (const [name, salt] of [["tdx-quote-cos113.dat", 8], ["tdx-quote-v5-sample.dat", 9]] as const) {
      const q = fixture(name);
      const r = expectOnlyMeasurementErrors(name, variants(q, ROUNDS, salt, [[0, 60], [630, 720]]), (b) => parseTdxQuote(b));
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
    const r = expectOnlyMeasurementErrors("tdvf", inputs, (b) => {
      ovmfGuidTable(b);
      parseTdvf(b);
      tdvfCfv(b);
      computeMrtd(b, { pageOrder: "single-pass" });
    });
    expect(r.ok).toBeGreaterThan(0);
    expect(r.rejected).toBeGreaterThan(0);
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
