/**
 * measure(): from a bake's artifacts to Measurements (file IO here; the formulas are pure).
 * The recipe, lock, fetch and bake code (and zod with them) is required only where a call needs
 * it, so that measuring alone (`require("tdxvm/measure")`) loads the measurement code only.
 */
import { promises as fs, existsSync } from "node:fs";
import * as path from "node:path";
import { TdxError } from "../errors";
import type { BakeResult } from "../bake";
import type { RootFs } from "../recipe/schema";
import { measureBoot, MeasureOptions, assertBackend } from "./backends";
import { Backend, Measurements } from "./ledger";
import { PageOrder } from "./tdvf";
import { parsePe } from "./pe";
import { stubCmdline } from "./cmdline";
import { loadTdShape, TdShape, TdShapeSpec } from "./rtmr0";
import { prewarm } from "./hashjobs";
import { PARALLEL_MIN_BYTES } from "./stream";

export interface MeasureCallOptions {
  backend: Backend;
  /** Firmware: a path, or {src, integrity} fetched through the content store. rtmr default: Debian trixie OVMF.fd. */
  firmware?: string | { src: string; integrity: string };
  pageOrder?: PageOrder;
  /** Path to (or bytes of) a CCEL captured on the target host and VM shape. */
  capturedCcel?: string | Buffer;
  /** rtmr: the QEMU TD shape RTMR0 is predicted for: a JSON file's path, or the spec itself (paths in it relative to the current directory). */
  tdShape?: string | TdShapeSpec;
  cacheDir?: string;
}

/** First sectors of a GPT disk: LBA 0 through the end of the primary partition entry array. */
export async function readDiskHead(file: string): Promise<Buffer> {
  const fh = await fs.open(file, "r");
  try {
    const hdr = Buffer.alloc(1024);
    await fh.read(hdr, 0, 1024, 0);
    if (hdr.toString("latin1", 512, 520) !== "EFI PART") throw new TdxError("E_MEASUREMENT", `${file} has no GPT header at LBA 1`);
    const end = Number(hdr.readBigUInt64LE(512 + 72)) * 512 + hdr.readUInt32LE(512 + 80) * hdr.readUInt32LE(512 + 84);
    if (end > 64 * 1024 * 1024) throw new TdxError("E_MEASUREMENT", `${file}: implausible GPT partition array end ${end}`);
    const head = Buffer.alloc(end);
    await fh.read(head, 0, end, 0);
    return head;
  } finally {
    await fh.close();
  }
}

/** The UKI's `.cmdline` as systemd-stub passes it on, read from the file without loading the rest. */
export async function readUkiCmdline(file: string): Promise<string> {
  const fh = await fs.open(file, "r");
  try {
    const head = Buffer.alloc(64 * 1024);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    const pe = parsePe(head.subarray(0, bytesRead));
    const s = pe.sections.find((x) => x.name === ".cmdline");
    if (!s) return "";
    const n = Math.min(s.virtualSize, s.sizeOfRawData);
    if (n > 1024 * 1024) throw new TdxError("E_MEASUREMENT", `${file}: implausible .cmdline section of ${n} bytes`);
    const data = Buffer.alloc(n);
    await fh.read(data, 0, n, s.pointerToRawData);
    return stubCmdline(data);
  } finally {
    await fh.close();
  }
}

/**
 * The firmware file a measurement uses: the given path, or for the rtmr backend the default
 * (Debian trixie's OVMF.fd from the tools tree, else the host's). undefined: none.
 */
export function firmwarePath(opts: Pick<MeasureCallOptions, "firmware" | "backend">, cacheDir: string): string | undefined {
  if (typeof opts.firmware === "object") return undefined;
  const toolsTree = () => (require("../bake/toolsTree") as typeof import("../bake/toolsTree")).toolsTreeDir(cacheDir);
  const candidates = typeof opts.firmware === "string" ? [opts.firmware] : opts.backend === "rtmr" ? [path.join(toolsTree(), "usr/share/ovmf/OVMF.fd"), "/usr/share/ovmf/OVMF.fd"] : [];
  return candidates.find((c) => existsSync(c));
}

/** Read a file a measurement depends on (firmware, captured CCEL); a missing or unreadable one is E_MEASUREMENT. */
export async function readMeasureInput(file: string, what: string): Promise<Buffer> {
  try {
    return await fs.readFile(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "error";
    throw new TdxError("E_MEASUREMENT", `cannot read the ${what} ${file} (${code === "ENOENT" ? "it does not exist" : code === "EISDIR" ? "it is a directory" : code})`, {
      hint: `Pass the path of an existing ${what} file (relative paths resolve against the Pulumi project root).`,
    });
  }
}

async function loadFirmware(opts: MeasureCallOptions, cacheDir: string): Promise<MeasureOptions["firmware"]> {
  if (typeof opts.firmware === "object") {
    const { ContentStore, fetchInput, redactRef } = require("../fetch") as typeof import("../fetch");
    const f = await fetchInput(new ContentStore(path.join(cacheDir, "content")), opts.firmware.src, { integrity: opts.firmware.integrity });
    return { bytes: await fs.readFile(f.path), name: `${redactRef(opts.firmware.src)} (${f.integrity.sha256})` };
  }
  const file = firmwarePath(opts, cacheDir);
  if (file) {
    // Named without this machine's cache path, so a committed measurements file is the same everywhere.
    const tree = (require("../bake/toolsTree") as typeof import("../bake/toolsTree")).toolsTreeDir(cacheDir);
    return { bytes: await readMeasureInput(file, "firmware"), name: file.startsWith(tree + path.sep) ? `tools tree ${file.slice(tree.length)}` : file };
  }
  if (typeof opts.firmware === "string") throw new TdxError("E_MEASUREMENT", `firmware ${opts.firmware} does not exist`, { hint: "Pass the path of the TDVF firmware (OVMF.fd) the VM boots." });
  return undefined;
}

export async function measureBake(bake: Pick<BakeResult, "artifacts" | "systemdStub" | "profile"> & Partial<Pick<BakeResult, "rootfs" | "packages" | "initrdPackages">>, opts: MeasureCallOptions): Promise<Measurements> {
  assertBackend(opts.backend);
  const uki = bake.artifacts.find((a) => a.target === "uki");
  const disk = bake.artifacts.find((a) => a.target === "disk");
  for (const a of [uki, disk]) {
    if (!a || !existsSync(a.path)) throw new TdxError("E_MEASUREMENT", `the bake has no ${a ? path.basename(a.path) : "UKI/disk"} to measure`, { hint: "Bake first: img.bake() (artifacts are cached; a missing file means the cache was cleaned)." });
  }
  const m = await measureFiles(uki!.path, disk!.path, bake.rootfs, { profile: bake.profile, systemdStub: bake.systemdStub, ukiSha256: uki!.sha256, diskSha256: disk!.sha256 }, opts);
  // The packages behind the image, for diffs that name them (pins: name=version, sorted).
  const pins = (l: BakeResult["packages"] | undefined) => (l ?? []).map((p) => `${p.name}=${p.version}`).sort();
  if (bake.packages?.length) m.packages = { image: pins(bake.packages), initrd: pins(bake.initrdPackages) };
  return m;
}

/**
 * Measure a UKI and its GPT disk given as files — built elsewhere, or published — without a
 * recipe or a bake. `rootfs` as the image was built (default: verity when the UKI's command line
 * names a roothash=, else none; an initrd image must say so).
 */
export async function measureArtifacts(files: { uki: string; disk: string; rootfs?: RootFs }, opts: MeasureCallOptions): Promise<Measurements> {
  assertBackend(opts.backend);
  for (const [what, file] of [["UKI", files.uki], ["disk", files.disk]] as const) {
    const st = await fs.stat(file).catch(() => undefined);
    if (!st?.isFile()) throw new TdxError("E_MEASUREMENT", `the ${what} ${file} ${st ? "is not a regular file" : "does not exist"}`, { hint: `Pass the ${what} file the VM boots (tdxvm bake lists a bake's artifacts).` });
  }
  return measureFiles(files.uki, files.disk, files.rootfs, { uki: path.basename(files.uki), disk: path.basename(files.disk) }, opts);
}

async function measureFiles(uki: string, disk: string, rootfs: RootFs | undefined, inputs: Record<string, string | null>, opts: MeasureCallOptions): Promise<Measurements> {
  // A UKI big enough to be hashed on two threads: the second boots while this one reads the GPT and the firmware.
  if (((await fs.stat(uki).catch(() => undefined))?.size ?? 0) >= PARALLEL_MIN_BYTES) prewarm();
  const cacheDir = opts.cacheDir ?? (require("../register") as { defaultCacheDir(): string }).defaultCacheDir();
  const ccel = typeof opts.capturedCcel === "string" ? await readMeasureInput(opts.capturedCcel, "captured CCEL") : opts.capturedCcel;
  const diskHead = await readDiskHead(disk);
  const tdShape = opts.tdShape === undefined ? undefined : await readTdShape(opts.tdShape);
  return measureBoot(
    { ukiPath: uki, diskHead },
    { backend: opts.backend, firmware: await loadFirmware(opts, cacheDir), pageOrder: opts.pageOrder, capturedCcel: ccel, tdShape, rootfs, inputs },
  );
}

/** A TD shape from its JSON file (paths in it relative to the file) or from a spec object (relative to the current directory). */
export async function readTdShape(shape: string | TdShapeSpec): Promise<TdShape> {
  if (typeof shape !== "string") return loadTdShape(shape, process.cwd(), readMeasureInput);
  const text = (await readMeasureInput(shape, "TD shape")).toString("utf8");
  let spec: unknown;
  try {
    spec = JSON.parse(text);
  } catch (e) {
    throw new TdxError("E_VALIDATION", `TD shape ${shape} is not JSON (${(e as Error).message})`);
  }
  return loadTdShape(spec, path.dirname(path.resolve(shape)), readMeasureInput);
}
