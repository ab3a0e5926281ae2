/**
 * Streaming measurement (stream.ts, hashjobs.js): a UKI file hashed in 256 KiB chunks on one or two
 * threads must give exactly the digests the in-memory formulas give (bootEvents over a Buffer:
 * authenticodeDigest, ukiPcr11Events, stubCombinedInitrd). Synthetic UKIs from the test PE writer,
 * several MiB so that ranges cross chunk boundaries, in layouts that exercise each path: sections
 * out of file order, zero fill, .ucode, literal cpio sections, profiles, overlapping sections,
 * and random header damage.
 */
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import * as path from "node:path";
import fc from "fast-check";
import { TdxError } from "../../../provider/errors";
import { bootEvents, bootEventsAsync, BootImage } from "../../../provider/measure/boot";
import { measureBoot, ukiSelectedSections } from "../../../provider/measure";
import { ukiDigests, MAX_CMDLINE } from "../../../provider/measure/stream";
import { readUkiCmdline } from "../../../provider/measure/api";
import { runJobs, runJobsParallel, prewarm, hashFile, HashJob, HashPiece } from "../../../provider/measure/hashjobs";
import { spawnSync } from "node:child_process";
import { buildPe, BuildSection, peOffsets } from "./pe-builder";
import { tempDir, tdxErrorOf } from "../../helpers";

const MiB = 1024 * 1024;

/** Deterministic bytes (a SHA-256 counter stream), so every run hashes the same images. */
function bytes(n: number, seed: string): Buffer {
  const out = Buffer.alloc(n);
  for (let at = 0, i = 0; at < n; at += 32, i++) createHash("sha256").update(`${seed}:${i}`).digest().copy(out, at);
  return out;
}

/** A kernel-like PE: code and data, a zero-filled .bss, and trailing bytes after the last section. */
function kernel(size: number): Buffer {
  return buildPe({
    plus: true,
    sections: [
      { name: ".text", data: bytes(size, "text") },
      { name: ".data", data: bytes(4096, "data") },
      { name: ".bss", data: Buffer.alloc(0), virtualSize: 8192 },
    ],
    trailer: bytes(1000, "trailer"),
  });
}

function uki(sections: BuildSection[]): Buffer {
  return buildPe({ plus: true, sections, trailer: bytes(300, "uki-trailer") });
}

const TYPICAL: BuildSection[] = [
  { name: ".osrel", data: Buffer.from("ID=debian\nVERSION_ID=13\n") },
  { name: ".cmdline", data: Buffer.from("console=ttyS0 roothash=6c4bd9155c528c38cebb0cc8a4708c4179023c323473e45b852987bdcc803a69\n") },
  { name: ".uname", data: Buffer.from("6.12.57+deb13-amd64") },
  { name: ".sbat", data: Buffer.from("sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n") },
  { name: ".initrd", data: bytes(MiB + 123, "initrd") },
  { name: ".linux", data: kernel(MiB + 77) },
];

async function writeTemp(buf: Buffer, name = "uki.efi"): Promise<string> {
  const file = path.join(await tempDir("tdxvm-stream-"), name);
  await fs.writeFile(file, buf);
  return file;
}

function shared(buf: Buffer): Buffer {
  const s = Buffer.from(new SharedArrayBuffer(buf.length));
  buf.copy(s);
  return s;
}

/** Every way of hashing `buf` streamingly must equal the in-memory reference, for both banks. */
async function expectSameAsInMemory(buf: Buffer, img: Omit<BootImage, "uki"> = {}): Promise<void> {
  const file = await writeTemp(buf);
  for (const alg of ["sha256", "sha384"] as const) {
    const reference = bootEvents({ ...img, uki: buf }, alg);
    expect(await bootEventsAsync({ ...img, ukiPath: file }, alg)).toEqual(reference);
    expect(await bootEventsAsync({ ...img, uki: buf }, alg)).toEqual(reference);
    const one = await ukiDigests(file, alg, { parallel: false });
    expect(await ukiDigests(file, alg, { parallel: true })).toEqual(one);
    expect(await ukiDigests(shared(buf), alg, { parallel: true })).toEqual(one);
    expect(await ukiDigests(buf, alg, { parallel: false })).toEqual(one);
  }
}

describe("streamed UKI digests equal the in-memory formulas", () => {
  it("a typical UKI (sections in mkosi's order, several MiB)", async () => {
    const buf = uki(TYPICAL);
    await expectSameAsInMemory(buf);
    // And the digests are the ones the formulas name, not just self-consistent: spot-check three.
    const d = await ukiDigests(await writeTemp(buf), "sha256");
    const initrd = TYPICAL.find((s) => s.name === ".initrd")!.data;
    expect(d.sections.find((s) => s.section === ".initrd" && s.kind === "content")!.digest).toBe(createHash("sha256").update(initrd).digest("hex"));
    expect(d.sections.find((s) => s.section === ".linux" && s.kind === "name")!.digest).toBe(createHash("sha256").update(".linux\0").digest("hex"));
    expect(d.cmdline).toBe(TYPICAL[1]!.data.toString().trim());
  });

  it("a UKI larger than the largest header read (4 MiB): judged by its file size, not by the bytes read", async () => {
    const buf = uki([...TYPICAL.filter((s) => s.name !== ".initrd"), { name: ".initrd", data: bytes(6 * MiB, "big-initrd") }]);
    expect(buf.length).toBeGreaterThan(4 * MiB);
    await expectSameAsInMemory(buf);
  });

  it("zero fill, .ucode, and every section that becomes a literal cpio", async () => {
    const sections: BuildSection[] = [
      { name: ".linux", data: kernel(MiB + 5) },
      { name: ".initrd", data: bytes(MiB + 1, "initrd2"), virtualSize: MiB + 1 + 40_000 },
      { name: ".ucode", data: bytes(70_001, "ucode") },
      { name: ".osrel", data: Buffer.from("ID=debian\n") },
      { name: ".pcrsig", data: Buffer.from('{"sha256":[]}') },
      { name: ".pcrpkey", data: Buffer.from("-----BEGIN PUBLIC KEY-----\n"), virtualSize: 4099 },
      { name: ".cmdline", data: Buffer.from("console=ttyS0"), virtualSize: 4096 },
    ];
    // The kernel itself zero-filled: its loaded bytes run past its raw data.
    const k = sections[0]!.data;
    sections[0] = { name: ".linux", data: k, virtualSize: k.length + 3 * 4096 };
    await expectSameAsInMemory(uki(sections));
    // Without .ucode the combined initrd continues from the .initrd section's hash.
    await expectSameAsInMemory(uki(sections.filter((s) => s.name !== ".ucode")));
    // .linux's raw data ends inside the kernel's .text: the kernel's later sections lie wholly in the zero fill.
    const cut = uki(sections);
    const { table } = peOffsets(cut);
    expect(cut.toString("latin1", table, table + 6)).toBe(".linux");
    cut.writeUInt32LE(0x1000, table + 16);
    await expectSameAsInMemory(cut);
  });

  it("literal sections after .initrd in the file, and .initrd last", async () => {
    const order = [".linux", ".initrd", ".osrel", ".cmdline"];
    await expectSameAsInMemory(uki(order.map((n) => TYPICAL.find((s) => s.name === n)!)));
    const last = [".osrel", ".cmdline", ".linux", ".initrd"];
    await expectSameAsInMemory(uki(last.map((n) => TYPICAL.find((s) => s.name === n)!)), { rootfs: "verity", diskHead: undefined });
  });

  it("profiles: the selected profile's sections, as the stub picks them", async () => {
    const withProfiles = uki([
      ...TYPICAL,
      { name: ".profile", data: Buffer.from("ID=main\n") },
      { name: ".cmdline", data: Buffer.from("console=ttyS0 profile=main") },
      { name: ".profile", data: Buffer.from("ID=debug\n") },
      { name: ".cmdline", data: Buffer.from("console=ttyS0 profile=debug") },
    ]);
    await expectSameAsInMemory(withProfiles);
    expect((await ukiDigests(await writeTemp(withProfiles), "sha256")).cmdline).toBe("console=ttyS0 profile=main");
  });

  it("overlapping sections refused by both paths; a gap before the first section (ranges out of file order) measured alike", async () => {
    const buf = uki(TYPICAL);
    const { table, nSections } = peOffsets(buf);
    const row = (name: string) => [...Array(nSections).keys()].find((i) => buf.toString("latin1", table + 40 * i, table + 40 * i + 8).replace(/\0+$/, "") === name)!;
    // .uname now also covers .osrel's bytes (same PointerToRawData, larger sizes): overlapping raw data.
    const osrel = row(".osrel");
    const uname = row(".uname");
    buf.writeUInt32LE(buf.readUInt32LE(table + 40 * osrel + 20), table + 40 * uname + 20);
    buf.writeUInt32LE(0x400, table + 40 * uname + 16);
    buf.writeUInt32LE(0x300, table + 40 * uname + 8);
    // Overlapping raw data is refused by both paths (it would let a small file ask for unbounded hashing).
    const file = await writeTemp(buf);
    expect((await tdxErrorOf(() => bootEventsAsync({ ukiPath: file }, "sha256"))).message).toMatch(/section raw data overlap/);
    expect((await tdxErrorOf(async () => bootEvents({ uki: buf }, "sha256"))).message).toMatch(/section raw data overlap/);
    // A gap between the headers and the first section: Authenticode's trailing data then starts inside the sections.
    const gapped = uki(TYPICAL);
    const g = peOffsets(gapped);
    const pad = 0x1000;
    const out = Buffer.concat([gapped.subarray(0, gapped.readUInt32LE(g.opt + 60)), Buffer.alloc(pad, 0xaa), gapped.subarray(gapped.readUInt32LE(g.opt + 60))]);
    for (let i = 0; i < g.nSections; i++) out.writeUInt32LE(out.readUInt32LE(g.table + 40 * i + 20) + pad, g.table + 40 * i + 20);
    await expectSameAsInMemory(out);
  });

  it("damaged headers: the stream agrees with the in-memory path, or both refuse with E_MEASUREMENT", async () => {
    const base = uki(TYPICAL);
    const { table, nSections } = peOffsets(base);
    const headerEnd = table + 40 * nSections;
    const file = path.join(await tempDir("tdxvm-stream-fuzz-"), "uki.efi");
    const outcome = async (f: () => Promise<unknown>) => {
      try {
        return { ok: await f() };
      } catch (e) {
        if (!(e instanceof TdxError) || e.code !== "E_MEASUREMENT") throw e;
        return { refused: true };
      }
    };
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ at: fc.integer({ min: 0, max: headerEnd - 4 }), value: fc.constantFrom(0, 1, 0x200, 0x1000, 0xffff, 0x100000, 0x7fffffff, 0xffffffff), bits: fc.integer({ min: 0, max: 31 }), flip: fc.boolean() }), { minLength: 1, maxLength: 4 }),
        async (edits) => {
          const b = Buffer.from(base);
          for (const e of edits) b.writeUInt32LE(e.flip ? (b.readUInt32LE(e.at) ^ (1 << e.bits)) >>> 0 : e.value, e.at);
          await fs.writeFile(file, b);
          const reference = await outcome(async () => bootEvents({ uki: b }, "sha256"));
          const streamed = await outcome(() => bootEventsAsync({ ukiPath: file }, "sha256"));
          // The one bound the in-memory path does not have: .cmdline's file bytes.
          const cmdline = "ok" in reference ? ukiSelectedSections(b).get(".cmdline") : undefined;
          if (cmdline && Math.min(cmdline.virtualSize, cmdline.sizeOfRawData) > MAX_CMDLINE) expect(streamed).toEqual({ refused: true });
          else expect(streamed).toEqual(reference);
        },
      ),
      { numRuns: 100 },
    );
  }, 60_000);
});

describe("readUkiCmdline (the bake's root-hash check)", () => {
  it("reads .cmdline as systemd-stub passes it on: the same text the measurement uses", async () => {
    const raw = Buffer.concat([Buffer.from("\t console=ttyS0\x01 roothash=ab\u00e9\n quiet \r\n"), Buffer.from([0xff, 0x20, 0x41]), Buffer.from("\0tail")]);
    const kernelPe = buildPe({ plus: true, sections: [{ name: ".text", data: Buffer.alloc(4096, 1) }] });
    const file = await writeTemp(buildPe({ plus: true, sections: [{ name: ".linux", data: kernelPe }, { name: ".cmdline", data: raw }, { name: ".initrd", data: Buffer.alloc(100, 7) }] }));
    const cmdline = await readUkiCmdline(file);
    expect(cmdline).toBe((await ukiDigests(file, "sha256")).cmdline);
    expect(cmdline).toBe("console=ttyS0  roothash=ab\u00e9  quiet    A");
  });
});

describe("streamed measurement refuses what it cannot bound", () => {
  it("a .cmdline larger than MAX_CMDLINE", async () => {
    const big = uki([{ name: ".linux", data: kernel(4096) }, { name: ".cmdline", data: Buffer.alloc(MAX_CMDLINE + 1, 0x61) }]);
    const file = await writeTemp(big);
    const e = await tdxErrorOf(() => measureBoot({ ukiPath: file }, { backend: "azure" }));
    expect([e.code, e.message]).toEqual(["E_MEASUREMENT", expect.stringMatching(/implausible \.cmdline section of 1048577 bytes/)]);
    // Zero fill does not count (it is trimmed with the trailing NULs): a short .cmdline with a large VirtualSize is measured.
    const filled = uki([{ name: ".linux", data: kernel(4096) }, { name: ".cmdline", data: Buffer.from("console=ttyS0"), virtualSize: MAX_CMDLINE + 4096 }]);
    expect(await bootEventsAsync({ ukiPath: await writeTemp(filled) }, "sha256")).toEqual(bootEvents({ uki: filled }, "sha256"));
  });

  it("a missing file, and a file that is shorter than its sections", async () => {
    const missing = await tdxErrorOf(() => measureBoot({ ukiPath: "/nonexistent/tdxvm.efi" }, { backend: "azure" }));
    expect(missing.code).toBe("E_MEASUREMENT");
    const buf = uki(TYPICAL);
    const short = await writeTemp(buf.subarray(0, buf.length - 4096));
    const cut = await tdxErrorOf(() => measureBoot({ ukiPath: short }, { backend: "rtmr" }));
    expect([cut.code, cut.message]).toEqual(["E_MEASUREMENT", expect.stringMatching(/lies outside the \d+-byte file/)]);
  });

  it("a file that shrinks while it is hashed fails instead of hashing less (both threads)", async () => {
    const file = await writeTemp(bytes(3 * MiB, "short"));
    const past: HashJob[] = [{ alg: "sha256", pieces: [{ file: [0, 4 * MiB] }] }, { alg: "sha256", pieces: [{ file: [0, 10] }] }];
    expect(() => runJobs(file, past)).toThrow(/ended at byte 3145728, before byte \d+ that a measurement covers/);
    await expect(runJobsParallel(file, past, { workerStartBytes: 0 })).rejects.toThrow(/ended at byte 3145728/);
    await expect(runJobsParallel(file, [...past].reverse(), { workerStartBytes: 0 })).rejects.toThrow(/ended at byte 3145728/);
  });
});

describe("hash jobs", () => {
  const source = bytes(3 * MiB + 11, "source");
  let file: string;
  beforeAll(async () => {
    file = await writeTemp(source, "source.bin");
  });

  /** The bytes a job hashes, concatenated (its `from` prefix first). */
  const expand = (jobs: HashJob[], k: number): Buffer => {
    const own = jobs[k]!.pieces.map((p) => ("file" in p ? source.subarray(p.file[0], p.file[1]) : "zeros" in p ? Buffer.alloc(p.zeros) : Buffer.from(p.bytes)));
    return Buffer.concat([...(jobs[k]!.from === undefined ? [] : [expand(jobs, jobs[k]!.from!)]), ...own]);
  };

  const piece: fc.Arbitrary<HashPiece> = fc.oneof(
    { weight: 6, arbitrary: fc.tuple(fc.integer({ min: 0, max: source.length }), fc.integer({ min: 0, max: 2 * MiB })).map(([a, n]): HashPiece => ({ file: [a, Math.min(source.length, a + n)] })) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 200_000 }).map((n): HashPiece => ({ zeros: n })) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }).map((b): HashPiece => ({ bytes: b })) },
  );
  const jobsArb = fc.array(fc.record({ alg: fc.constantFrom("sha256" as const, "sha384" as const), pieces: fc.array(piece, { maxLength: 5 }), from: fc.option(fc.nat(), { nil: undefined }) }), { minLength: 1, maxLength: 6 })
    .map((js) => js.map((j, k) => ({ ...j, from: j.from === undefined || k === 0 ? undefined : j.from % k })))
    // A job continues another's state: same algorithm.
    .map((js) => js.map((j, k, all) => ({ ...j, alg: j.from === undefined ? j.alg : all[root(all, k)]!.alg })));
  function root(js: HashJob[], k: number): number {
    return js[k]!.from === undefined ? k : root(js, js[k]!.from!);
  }

  it("each job's digest is the hash of its pieces in order — from a file, from memory, on one or two threads", async () => {
    await fc.assert(
      fc.asyncProperty(jobsArb, async (jobs) => {
        const expected = jobs.map((j, k) => createHash(j.alg).update(expand(jobs, k)).digest("hex"));
        const hex = (ds: Buffer[]) => ds.map((d) => d.toString("hex"));
        expect(hex(runJobs(file, jobs))).toEqual(expected);
        expect(hex(runJobs(source, jobs))).toEqual(expected);
        expect(hex(await runJobsParallel(file, jobs, { workerStartBytes: 0 }))).toEqual(expected);
        expect(hex(await runJobsParallel(shared(source), jobs, { workerStartBytes: 0 }))).toEqual(expected);
      }),
      { numRuns: 30 },
    );
  }, 120_000);

  it("an open file stays the file that was planned, on both threads, when its path is replaced", async () => {
    const dir = await tempDir("tdxvm-stream-fd-");
    const p = path.join(dir, "tdxvm.efi");
    await fs.writeFile(p, source);
    const fh = await fs.open(p, "r");
    try {
      await fs.writeFile(path.join(dir, "new.efi"), bytes(source.length, "another bake"));
      await fs.rename(path.join(dir, "new.efi"), p);
      const jobs: HashJob[] = [{ alg: "sha256", pieces: [{ file: [0, 2 * MiB] }] }, { alg: "sha384", pieces: [{ file: [MiB, source.length] }] }];
      const expected = [createHash("sha256").update(source.subarray(0, 2 * MiB)).digest("hex"), createHash("sha384").update(source.subarray(MiB)).digest("hex")];
      expect(runJobs(fh.fd, jobs).map((d) => d.toString("hex"))).toEqual(expected);
      expect((await runJobsParallel(fh.fd, jobs, { workerStartBytes: 0 })).map((d) => d.toString("hex"))).toEqual(expected);
      expect(runJobs(p, jobs).map((d) => d.toString("hex"))).not.toEqual(expected); // the path now names the other file
    } finally {
      await fh.close();
    }
  });

  it("a prewarmed worker serves the next call (digests right, an error from it rejects), then a fresh one serves the one after", async () => {
    const jobs: HashJob[] = [{ alg: "sha256", pieces: [{ file: [0, 2 * MiB] }] }, { alg: "sha384", pieces: [{ file: [MiB, source.length] }] }];
    const expected = jobs.map((j, k) => createHash(j.alg).update(expand(jobs, k)).digest("hex"));
    const hex = (ds: Buffer[]) => ds.map((d) => d.toString("hex"));
    prewarm();
    prewarm(); // one waiting worker, not two
    await new Promise((r) => setTimeout(r, 300)); // booted: the split is even
    expect(hex(await runJobsParallel(file, jobs))).toEqual(expected);
    expect(hex(await runJobsParallel(file, [...jobs].reverse()))).toEqual([...expected].reverse());
    prewarm();
    const short = await writeTemp(bytes(MiB, "short-warm"));
    // The larger job (all of the file) stays here, the smaller one (past its end) goes to the warm worker.
    await expect(runJobsParallel(short, [{ alg: "sha256", pieces: [{ file: [0, MiB] }] }, { alg: "sha256", pieces: [{ file: [MiB - 10, MiB + 10] }] }], { workerStartBytes: 0 })).rejects.toThrow(/ended at byte 1048576/);
    expect(hex(await runJobsParallel(file, jobs))).toEqual(expected);
  });

  it("a prewarmed worker that ended (or failed) before it was used is replaced, not waited for", async () => {
    const jobs: HashJob[] = [{ alg: "sha256", pieces: [{ file: [0, 2 * MiB] }] }, { alg: "sha256", pieces: [{ file: [MiB, source.length] }] }];
    const expected = jobs.map((j, k) => createHash(j.alg).update(expand(jobs, k)).digest("hex"));
    const w = prewarm()!;
    await w.terminate();
    await new Promise((r) => setImmediate(r));
    expect((await runJobsParallel(file, jobs, { workerStartBytes: 0 })).map((d) => d.toString("hex"))).toEqual(expected);
    expect(prewarm()).not.toBe(w);
  });

  it("a prewarmed worker never keeps the process alive, used or not", () => {
    const hashjobs = require.resolve("../../../provider/measure/hashjobs.js");
    for (const use of ["", `return hj.runJobsParallel(${JSON.stringify(file)}, [{alg: "sha256", pieces: [{file: [0, 5]}]}, {alg: "sha256", pieces: [{file: [5, 9]}]}], {workerStartBytes: 0}).then((d) => console.log(d.length));`]) {
      const r = spawnSync(process.execPath, ["-e", `const hj = require(${JSON.stringify(hashjobs)}); hj.prewarm(); (async () => { ${use} })();`], { encoding: "utf8", timeout: 20_000 });
      expect({ status: r.status, signal: r.signal, out: r.stdout.trim() }).toEqual({ status: 0, signal: null, out: use ? "2" : "" });
    }
  });

  it("hashFile: a whole file's digest and size, hashed on a worker while this thread's event loop keeps turning", async () => {
    const big = bytes(24 * MiB + 5, "hashFile");
    const files = { empty: await writeTemp(Buffer.alloc(0), "empty.bin"), small: await writeTemp(source.subarray(0, 1000), "small.bin"), big: await writeTemp(big, "big.bin") };
    const want = { empty: Buffer.alloc(0), small: source.subarray(0, 1000), big };
    for (const k of ["empty", "small", "big"] as const) {
      for (const alg of ["sha256", "sha384"] as const) {
        const r = await hashFile(files[k], alg);
        expect({ digest: r.digest.toString("hex"), size: r.size }).toEqual({ digest: createHash(alg).update(want[k]).digest("hex"), size: want[k].length });
      }
    }
    // Off this thread: timers fire before the digest of 24 MiB arrives (a hash on this thread would let none through).
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    try {
      const ticksWhenDone = await hashFile(files.big).then(() => ticks);
      expect(ticksWhenDone).toBeGreaterThan(0);
    } finally {
      clearInterval(timer);
    }
    await expect(hashFile(path.join(path.dirname(files.big), "missing.bin"))).rejects.toThrow(/ENOENT/);
  });

  it("rejects malformed jobs", () => {
    expect(() => runJobs(source, [{ alg: "sha256", pieces: [], from: 0 }])).toThrow(/from must name an earlier job/);
    expect(() => runJobs(source, [{ alg: "sha256", pieces: [{ file: [10, 5] }] }])).toThrow(/bad file range/);
    expect(() => runJobs(source, [{ alg: "sha256", pieces: [{ file: [0, source.length + 1] }] }])).toThrow(/outside the \d+-byte input/);
  });
});
