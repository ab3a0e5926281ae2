/**
 * What the boot events need from a UKI — its command line and the digests of everything the
 * firmware, systemd-stub and Linux measure — computed from a file in constant memory.
 *
 * Only the headers, the section table, the kernel's headers and .cmdline are read up front (all
 * bounded). Everything else becomes hash jobs (./hashjobs.js) that take their bytes as the file
 * streams past: the UKI's Authenticode digest, the kernel's (.linux) Authenticode digest, each
 * measured section, and the combined initrd (continuing from the .initrd section's hash when
 * there is no .ucode). The jobs are split over two threads. The formulas are the ones in pe.ts,
 * uki.ts and initrd.ts, which also compute the same values over a Buffer (boot.ts bootEvents);
 * tests/unit/measure/stream.test.ts holds the two to each other.
 */
import { promises as fs } from "node:fs";
import { HashAlg, measurementError } from "./bytes";
import { authenticodeRanges } from "./pe";
import { measuredSections, selectSections, ukiSectionPlaces, UkiSectionPlace } from "./uki";
import { stubCombinedInitrdParts } from "./initrd";
import { stubCmdline } from "./cmdline";
import { HashJob, HashPiece, jobBytes, runJobs, runJobsParallel } from "./hashjobs";
import { TdxError } from "../errors";

/** Headers are read in this much, then (only if the section table lies further) up to HEAD_MAX. */
const HEAD_FIRST = 64 * 1024;
const HEAD_MAX = 4 * 1024 * 1024;
/** Largest .cmdline read from the file (Linux itself takes 2 KiB on x86). */
export const MAX_CMDLINE = 1024 * 1024;
/** Below this many bytes to hash, a second thread costs more than it saves. */
export const PARALLEL_MIN_BYTES = 16 * 1024 * 1024;

export interface UkiDigests {
  /** The command line systemd-stub passes on (what it makes of .cmdline: boot.ts stubCmdline). */
  cmdline: string;
  /** Authenticode digest of the UKI (hex). */
  uki: string;
  /** Authenticode digest of the embedded kernel, the .linux section (hex); undefined without one. */
  kernel?: string;
  /** systemd-stub's PCR 11 events in order: section name, then content. */
  sections: Array<{ section: string; kind: "name" | "content"; digest: string }>;
  /** The combined initrd Linux measures (PCR 9). */
  initrd: string;
}

/** Random access to the UKI's bytes: a file (read on demand) or a Buffer. */
interface Source {
  size: number;
  /** How much the first look at headers reads: all of a Buffer, the start of a file. */
  headFirst: number;
  read(pos: number, len: number): Promise<Buffer>;
  /** What the hash jobs read: the open file (one file throughout, even if its path is replaced meanwhile), or the bytes. */
  jobSource: number | Buffer;
  close(): Promise<void>;
}

async function openSource(uki: string | Buffer): Promise<Source> {
  if (Buffer.isBuffer(uki)) return { size: uki.length, headFirst: uki.length, read: async (pos, len) => uki.subarray(pos, pos + len), jobSource: uki, close: async () => undefined };
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(uki, "r");
  } catch (e) {
    throw new TdxError("E_MEASUREMENT", `cannot read the UKI ${uki}: ${(e as Error).message}`, { hint: "Bake first: img.bake() (artifacts are cached; a missing file means the cache was cleaned)." });
  }
  const size = (await fh.stat()).size;
  return {
    size,
    headFirst: HEAD_FIRST,
    jobSource: fh.fd,
    read: async (pos, len) => {
      const buf = Buffer.alloc(len);
      const { bytesRead } = await fh.read(buf, 0, len, pos);
      return buf.subarray(0, bytesRead);
    },
    close: () => fh.close(),
  };
}

/** Parse headers: from a first small read, or from a larger one (up to HEAD_MAX) if the parse needs more. */
async function parseHead<T>(read: (len: number) => Promise<Buffer>, size: number, firstRead: number, parse: (head: Buffer) => T): Promise<T> {
  const first = await read(Math.min(size, firstRead));
  try {
    return parse(first);
  } catch (e) {
    if (first.length >= Math.min(size, HEAD_MAX)) throw e;
    return parse(await read(Math.min(size, HEAD_MAX)));
  }
}

/** A section's loaded bytes as pieces: its file bytes, then its zero fill. */
function sectionPieces(s: UkiSectionPlace): HashPiece[] {
  const pieces: HashPiece[] = [{ file: [s.pointerToRawData, s.pointerToRawData + s.fromFile] }];
  if (s.virtualSize > s.fromFile) pieces.push({ zeros: s.virtualSize - s.fromFile });
  return pieces;
}

/** Ranges [a, b) of a section's loaded bytes (offsets within the section) as pieces of the file. */
function withinSection(s: UkiSectionPlace, ranges: Array<[number, number]>): HashPiece[] {
  const pieces: HashPiece[] = [];
  for (const [a, b] of ranges) {
    if (a < s.fromFile) pieces.push({ file: [s.pointerToRawData + a, s.pointerToRawData + Math.min(b, s.fromFile)] });
    if (b > s.fromFile) pieces.push({ zeros: b - Math.max(a, s.fromFile) });
  }
  return pieces;
}

/** The first `len` loaded bytes of a section (file bytes, then zero fill). */
async function sectionHead(src: Source, s: UkiSectionPlace, len: number): Promise<Buffer> {
  const n = Math.min(len, s.virtualSize);
  const fromFile = await src.read(s.pointerToRawData, Math.min(n, s.fromFile));
  return fromFile.length === n ? fromFile : Buffer.concat([fromFile, Buffer.alloc(n - fromFile.length)]);
}

/**
 * Digests of a UKI (a file path, or bytes) for `alg`. A file is streamed (constant memory) and
 * hashed on two threads; bytes are hashed here, or on two threads when they live in a
 * SharedArrayBuffer. `parallel: false` keeps everything on this thread; `true` always uses two
 * and splits the bytes evenly.
 */
export async function ukiDigests(uki: string | Buffer, alg: HashAlg, opts: { parallel?: boolean } = {}): Promise<UkiDigests> {
  const src = await openSource(uki);
  let jobs: HashJob[];
  let cmdline: string;
  let digests: Buffer[];
  const slots: { uki: number; kernel?: number; sections: Array<{ section: string; kind: "name" | "content"; job: number }>; initrd: number } = { uki: 0, sections: [], initrd: 0 };
  try {
    const { ranges, places } = await parseHead((len) => src.read(0, len), src.size, src.headFirst, (head) => ({ ranges: authenticodeRanges(head, src.size), places: ukiSectionPlaces(head, src.size) }));
    const selected = selectSections(places);
    const measured = measuredSections(selected);
    jobs = [{ alg, pieces: ranges.map((r) => ({ file: r })) }];

    // The zero fill after .cmdline's file bytes would be trimmed with the trailing NULs: read the file bytes only.
    const cmd = selected.get(".cmdline");
    if (cmd && cmd.fromFile > MAX_CMDLINE) measurementError(`UKI: implausible .cmdline section of ${cmd.fromFile} bytes (limit ${MAX_CMDLINE})`);
    cmdline = cmd ? stubCmdline(await src.read(cmd.pointerToRawData, cmd.fromFile)) : "";

    const linux = selected.get(".linux");
    if (linux) {
      // The kernel is a PE of its own: the section's loaded bytes are its file.
      const kernelRanges = await parseHead((len) => sectionHead(src, linux, len), linux.virtualSize, src.headFirst, (head) => authenticodeRanges(head, linux.virtualSize));
      slots.kernel = jobs.push({ alg, pieces: withinSection(linux, kernelRanges) }) - 1;
    }

    const name = (section: string) => ({ alg, pieces: [{ bytes: Buffer.from(`${section}\0`, "latin1") }] });
    for (const [section, s] of measured) {
      slots.sections.push({ section, kind: "name", job: jobs.push(name(section)) - 1 });
      slots.sections.push({ section, kind: "content", job: jobs.push({ alg, pieces: sectionPieces(s) }) - 1 });
    }

    // PCR 9's initrd: without .ucode it begins with the .initrd section, whose hash is then continued.
    const initrdJob = slots.sections.find((x) => x.section === ".initrd" && x.kind === "content")?.job;
    const continues = initrdJob !== undefined && !selected.has(".ucode");
    const parts = stubCombinedInitrdParts(selected, { skipBase: continues });
    const pieces = parts.flatMap((p): HashPiece[] => (Buffer.isBuffer(p) ? [{ bytes: p }] : sectionPieces(p)));
    slots.initrd = jobs.push(continues ? { alg, pieces, from: initrdJob } : { alg, pieces }) - 1;

    const total = jobs.reduce((n, j) => n + jobBytes(j), 0);
    const parallel = opts.parallel ?? total >= PARALLEL_MIN_BYTES;
    try {
      digests = parallel ? await runJobsParallel(src.jobSource, jobs, opts.parallel ? { workerStartBytes: 0 } : {}) : runJobs(src.jobSource, jobs);
    } catch (e) {
      throw new TdxError("E_MEASUREMENT", `cannot hash the UKI${typeof uki === "string" ? ` ${uki}` : ""}: ${(e as Error).message}`, { hint: "The UKI changed while it was measured: bake again." });
    }
  } finally {
    await src.close();
  }
  const hex = (k: number) => digests[k]!.toString("hex");
  return {
    cmdline,
    uki: hex(slots.uki),
    kernel: slots.kernel === undefined ? undefined : hex(slots.kernel),
    sections: slots.sections.map((x) => ({ section: x.section, kind: x.kind, digest: hex(x.job) })),
    initrd: hex(slots.initrd),
  };
}
