/**
 * The kernel-modules initrd, kept between bakes.
 *
 * For every UKI, mkosi builds an initrd of the image's kernel modules and the firmware they need
 * (modinfo over every module, then cpio and zstd: about 8 s of a 43 s bake after a one-file
 * change, measured on 2 cores). It is a function of the image's /usr/lib/modules and
 * /usr/lib/firmware (after mkosi normalizes their times to SourceDateEpoch), a few settings and
 * the tools; and mkosi 25 uses the file already at <workspace>/kernel-modules-<kver>.initrd
 * instead of building it (build_kernel_modules_initrd returns early when it exists).
 *
 * So the image's finalize script (the initrd gate, which already runs after everything that can
 * change the tree) announces itself in $OUTPUTDIR and waits; tdxvm claims that marker, hashes those two
 * directories in mkosi's workspace, puts the initrd a previous bake kept under that key in place,
 * and lets the script go on. After a bake that built one, the kernel-modules initrd is taken from
 * the UKI's .initrd section (what follows the default initrd there) and kept. A kept initrd is
 * the same bytes mkosi would build: the UKI is byte-identical (tests/integration/bake.test.ts).
 *
 * Everything here is best effort: a tree that cannot be read, an unexpected layout or a failure
 * to keep only means that mkosi builds the initrd itself, as it always did.
 */
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream, existsSync, lstatSync, promises as fs, readdirSync, readlinkSync } from "node:fs";
import * as path from "node:path";
import { pipeline } from "node:stream/promises";
import { keepNewest } from "./cache";
import type { MkosiTree } from "../compile";
import { digestOf } from "../recipe/digest";
import { ukiSectionPlaces } from "../measure/uki";
import { runJobs } from "../measure/hashjobs";

/** Written by the finalize script into $OUTPUTDIR (mkosi's staging directory) while it waits. */
export const KMODS_MARKER = ".tdxvm-at-finalize";
/** Kept kernel-modules initrds (newest first) in this directory of the cache. */
export const KEPT_KMODS = "mkosi-kmods";
export const MAX_KEPT_KMODS = 4;
/** The directories the kernel-modules initrd is made from (mkosi 25 kmod.py). */
const SOURCES = ["usr/lib/modules", "usr/lib/firmware"];

/**
 * The settings that shape the kernel-modules initrd, from every mkosi configuration file of the
 * emitted tree: which modules (KernelModules*), how it is compressed (distribution and release),
 * its file times (SourceDateEpoch) and the architecture. Other settings (the repart seed, the
 * command line, ...) do not reach it, and anything they change in the modules is in the digest.
 * undefined (no reuse) when the configuration adds initrds of its own (Initrds=): the kept one is
 * cut from the UKI as "what follows the default initrd", which must then be the modules alone.
 */
export function kmodsSettings(tree: MkosiTree): string[] | undefined {
  const out: string[] = [];
  for (const [p, e] of [...tree].sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (!p.endsWith(".conf") || !(p.startsWith("mkosi.conf") || p.startsWith("mkosi.profiles/"))) continue;
    for (const line of e.data.toString("utf8").split("\n")) {
      if (/^\s*Initrds?\s*=/.test(line)) return undefined;
      if (/^\s*(KernelModules\w*|Distribution|Release|Architecture|SourceDateEpoch)\s*=/.test(line)) out.push(`${p}: ${line.trim()}`);
    }
  }
  return out;
}

/**
 * The kernel version (the one directory under usr/lib/modules) and a digest of everything under
 * the source directories of `root`: each entry's path, type, mode, link target and content.
 * undefined when there is not exactly one kernel.
 */
export async function modulesDigest(root: string): Promise<{ kver: string; digest: string } | undefined> {
  const kvers = (await fs.readdir(path.join(root, SOURCES[0]!), { withFileTypes: true })).filter((d) => d.isDirectory());
  if (kvers.length !== 1) return undefined;
  const h = createHash("sha256");
  // Synchronous calls (thousands of small files: several times faster than a promise each), with
  // a turn of the event loop every few hundred entries.
  let n = 0;
  const walk = async (rel: string): Promise<void> => {
    if (++n % 256 === 0) await new Promise((r) => setImmediate(r));
    const abs = path.join(root, rel);
    const st = lstatSync(abs);
    h.update(`${rel}\0${st.mode.toString(8)}\0`);
    if (st.isSymbolicLink()) h.update(`link\0${readlinkSync(abs)}\0`);
    else if (st.isFile()) h.update(`file\0${st.size}\0`).update(fileDigest(abs, [0, st.size]));
    else if (st.isDirectory()) for (const name of readdirSync(abs).sort()) await walk(`${rel}/${name}`);
    else h.update("other\0");
  };
  for (const dir of SOURCES) if (existsSync(path.join(root, dir))) await walk(dir);
  return { kver: kvers[0]!.name, digest: h.digest("hex") };
}

/** SHA-256 of a byte range of a file, read through one reused buffer (hashjobs.js; memory stays bounded). */
const fileDigest = (file: string, range: [number, number]) => runJobs(file, [{ alg: "sha256", pieces: [{ file: range }] }])[0]!;

export interface KmodsRun {
  /** The reuse key, once the tree was hashed (undefined: not reached, or not usable). */
  key?: string;
  /** A kept initrd was put in mkosi's workspace. */
  reused: boolean;
  /** Stop watching (the image run ended); resolves once any reuse in progress has finished. */
  stop(): Promise<void>;
}

/**
 * Watch mkosi's workspace directory `ws` for the finalize script's marker; then hash the tree,
 * put a kept initrd in place if there is one, and open `release` (the file the script waits for).
 * `release` is written in every case once the marker was seen, so the script never waits for
 * nothing. `keyInputs` are what besides the tree shapes the initrd (settings, tools).
 */
export function watchKmods(ws: string, keptDir: string, release: string, keyInputs: unknown, pollMs = 200): KmodsRun {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const run: KmodsRun = { reused: false, stop: async () => undefined };
  const handle = async (workspace: string) => {
    try {
      const m = await modulesDigest(path.join(workspace, "root"));
      if (!m) return;
      run.key = digestOf({ keyInputs, kver: m.kver, modules: m.digest }).slice("sha256:".length);
      const kept = path.join(keptDir, `${run.key}.initrd`);
      if (!existsSync(kept)) return;
      const now = new Date();
      await fs.utimes(kept, now, now); // the newest is kept longest
      const dst = path.join(workspace, `kernel-modules-${m.kver}.initrd`);
      const tmp = `${dst}.${process.pid}.tmp`;
      try {
        await fs.copyFile(kept, tmp); // a copy: whatever mkosi does with its file never reaches the kept one
        await fs.rename(tmp, dst);
        run.reused = true;
      } catch {
        await fs.rm(tmp, { force: true });
      }
    } catch {
      // not readable, or gone: mkosi builds the initrd itself
    } finally {
      await fs.writeFile(release, "").catch(() => undefined);
    }
  };
  let handling: Promise<void> | undefined;
  const poll = async () => {
    if (stopped) return;
    try {
      for (const n of await fs.readdir(ws)) {
        const marker = path.join(ws, n, "staging", KMODS_MARKER);
        if (!n.startsWith("mkosi-workspace") || !existsSync(marker)) continue;
        // Claimed by renaming it: a script that gave up waiting renamed it first, and then mkosi builds the initrd.
        const claimed = await fs.rename(marker, `${marker}.claimed`).then(() => true, () => false);
        if (claimed) handling = handle(path.join(ws, n));
        return;
      }
    } catch {
      // the workspace directory is not there yet
    }
    if (!stopped) timer = setTimeout(() => void poll(), pollMs);
  };
  timer = setTimeout(() => void poll(), pollMs);
  run.stop = async () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    await handling;
  };
  return run;
}

/**
 * Keep the kernel-modules initrd of a built UKI under `key`: the bytes of its .initrd section
 * after the default initrd (`defaultInitrd`, which the section must begin with; each initrd is
 * padded to 4 bytes there, mkosi qemu.py/ukify join_initrds). Throws if it cannot; leaves nothing
 * half-written.
 */
export async function keepKmods(keptDir: string, key: string, uki: string, defaultInitrd: string): Promise<void> {
  await fs.mkdir(keptDir, { recursive: true });
  const tmp = path.join(keptDir, `.${key}.${process.pid}.tmp`);
  const fh = await fs.open(uki, "r");
  try {
    const head = Buffer.alloc(64 * 1024);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    const initrd = ukiSectionPlaces(head.subarray(0, bytesRead), (await fh.stat()).size).find((s) => s.name === ".initrd");
    if (!initrd || initrd.fromFile !== initrd.virtualSize) throw new Error("the UKI has no plain .initrd section");
    const baseSize = (await fs.stat(defaultInitrd)).size;
    const start = baseSize + ((4 - (baseSize % 4)) % 4);
    if (initrd.virtualSize <= start) throw new Error("the .initrd section holds nothing after the default initrd");
    const at = initrd.pointerToRawData;
    if (!fileDigest(uki, [at, at + baseSize]).equals(fileDigest(defaultInitrd, [0, baseSize]))) throw new Error("the .initrd section does not begin with the default initrd");
    // Streamed: an initrd may be GBs.
    await pipeline(createReadStream(uki, { start: at + start, end: at + initrd.virtualSize - 1 }), createWriteStream(tmp, { flags: "wx", mode: 0o644 }));
    await fs.rename(tmp, path.join(keptDir, `${key}.initrd`));
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  } finally {
    await fh.close();
  }
  await keepNewest(keptDir, MAX_KEPT_KMODS, (n) => n.endsWith(".initrd"));
}
