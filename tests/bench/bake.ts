/**
 * Bake benchmark (root; real mkosi): plain `mkosi build` on the emitted tree vs img.bake()
 * cold, warm (cache hit) and incremental (one file() changed). Tools tree and package cache
 * are shared with the default cache; everything else starts empty in a temp cache.
 */
import { promises as fs, mkdtempSync, symlinkSync } from "node:fs";
import * as os from "node:os";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as path from "node:path";
import { Image, defaultCacheDir } from "../../provider";
import { ensureToolsTree } from "../../provider/bake/toolsTree";
import { runStreaming, sandboxArgv } from "../../provider/bake/sandbox";
import { DEFAULT_DEBIAN } from "../../provider/lock";

const recipe = (dir: string, motd: string) =>
  new Image({ base: "debian/trixie", hostname: "bench", projectDir: dir }).file("/etc/motd", { content: motd }).outputTargets("qemu");

/**
 * Wall time of fn, after `sync`: the previous run's dirty pages (GBs of disk images) are written
 * back before the clock starts, so no run pays for the one before. Every row starts this way.
 */
async function secs<T>(fn: () => Promise<T>): Promise<[number, T]> {
  execFileSync("sync");
  const t0 = process.hrtime.bigint();
  const r = await fn();
  return [Number(process.hrtime.bigint() - t0) / 1e9, r];
}

/**
 * Bytes of the non-zero 4 KiB blocks (at 4 KiB offsets) of the files under `dir` that are not in
 * `seen` yet; adds them. erofs, the verity tree, the ESP and qcow2 clusters are 4 KiB-aligned, so
 * this is what content-addressed 4 KiB blocks would store. SHA-1 is only a block identity here.
 */
const BLOCK = 4096;
const ZERO_BLOCK = Buffer.alloc(BLOCK);
async function newBlocks(dir: string, seen: Set<string>): Promise<number> {
  const buf = Buffer.alloc(256 * BLOCK);
  let bytes = 0;
  for (const f of (await fs.readdir(dir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile())) {
    const fh = await fs.open(path.join(f.parentPath ?? f.path, f.name), "r");
    try {
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, buf.length, null);
        if (!bytesRead) break;
        for (let o = 0; o < bytesRead; o += BLOCK) {
          const b = buf.subarray(o, Math.min(o + BLOCK, bytesRead));
          if (b.equals(ZERO_BLOCK.subarray(0, b.length))) continue;
          const h = createHash("sha1").update(b).digest("base64");
          if (seen.has(h)) continue;
          seen.add(h);
          bytes += b.length;
        }
      }
    } finally {
      await fh.close();
    }
  }
  return bytes;
}

export async function bakeBench(table: (t: string, h: string[], r: string[][]) => string): Promise<void> {
  const shared = defaultCacheDir();
  const tree = await ensureToolsTree({ cacheDir: shared, mirror: DEFAULT_DEBIAN.mirror });
  const fresh = () => {
    const c = mkdtempSync(path.join(os.tmpdir(), "tdxvm-bench-cache-"));
    symlinkSync(path.join(shared, "tools"), path.join(c, "tools"));
    symlinkSync(path.join(shared, "packages"), path.join(c, "packages"));
    return c;
  };

  // 1. Plain mkosi on the same emitted tree (fresh incremental cache, shared package cache).
  const plainCache = fresh();
  const plainProject = mkdtempSync(path.join(os.tmpdir(), "tdxvm-bench-plain-"));
  const emitted = await recipe(plainProject, "bench\n").emit({ cacheDir: plainCache });
  const out = path.join(plainProject, "out");
  await fs.mkdir(path.join(out, "o"), { recursive: true });
  await fs.mkdir(path.join(out, "ws"), { recursive: true });
  await fs.mkdir(path.join(plainCache, "mkosi-cache"), { recursive: true });
  const binds = [
    { host: emitted.dir, inside: "/work/tree" }, { host: out, inside: "/work/entry" },
    { host: path.join(plainCache, "mkosi-cache"), inside: "/work/mkcache" }, { host: path.join(shared, "packages"), inside: "/work/pkgcache" },
  ];
  const [plain, r] = await secs(() => runStreaming(sandboxArgv(tree.root, ["mkosi", "--directory", "/work/tree", "--output-dir", "/work/entry/o", "--workspace-directory", "/work/entry/ws", "--cache-dir", "/work/mkcache", "--package-cache-dir", "/work/pkgcache", "--incremental=yes", "--force", "build"], binds)));
  if (r.code !== 0) throw new Error(`plain mkosi failed:\n${r.tail.join("\n")}`);

  // 2. bake() cold, 3. warm, 4. incremental after one file() change.
  const cache = fresh();
  const project = mkdtempSync(path.join(os.tmpdir(), "tdxvm-bench-bake-"));
  const [cold, coldR] = await secs(() => recipe(project, "bench\n").bake({ cacheDir: cache, quiet: true }));
  const [warm, warmR] = await secs(() => recipe(project, "bench\n").bake({ cacheDir: cache, quiet: true }));
  const [incr, incrR] = await secs(() => recipe(project, "bench, one file changed\n").bake({ cacheDir: cache, quiet: true }));

  const f = (s: number) => `${s.toFixed(2)} s`;
  // The conversion phase's wall time (its parts overlap: their sum would count it twice).
  const conv = (d: Record<string, number>) => d["convert & hash"] ?? d["convert: total"] ?? 0;
  console.log(table(
    "Bake (qemu target; tools tree and package cache warm; 2 cores)",
    ["run", "wall", "vs plain mkosi", "target", "notes"],
    [
      ["plain `mkosi build` on the emitted tree (baseline)", f(plain), "1.00×", "—", "fresh incremental cache"],
      ["img.bake() cold", f(cold), `${(cold / plain).toFixed(2)}×`, "≤ 1.05×", `cacheHit=${coldR.cacheHit}; mkosi ${coldR.durations.mkosi.toFixed(1)} s, qcow2+hashing ${conv(coldR.durations).toFixed(1)} s`],
      ["img.bake() warm (cache hit)", f(warm), `${(warm / plain).toFixed(3)}×`, "≤ 1 s", `cacheHit=${warmR.cacheHit}; no mkosi spawn`],
      ["img.bake() after one file() change", f(incr), `${(incr / cold).toFixed(2)}× of cold`, "≤ 0.35× cold", `cacheHit=${incrR.cacheHit}; Incremental=yes; mkosi ${incrR.durations.mkosi.toFixed(1)} s`],
    ],
  ));
  // Where the time goes: tdxvm's phases and mkosi's own steps (from its log), cold vs one-file change.
  const phases = (r: typeof coldR) => ({
    ...Object.fromEntries(Object.entries(r.durations).filter(([k]) => k !== "mkosi" && k !== "convert: total")),
    ...Object.fromEntries(Object.entries(r.mkosiSteps ?? {}).map(([k, v]) => [`mkosi: ${k}`, v])),
  });
  const [pc, pi] = [phases(coldR), phases(incrR)];
  const names = [...new Set([...Object.keys(pc), ...Object.keys(pi)])];
  const cell = (v: number | undefined) => (v === undefined ? "—" : `${v.toFixed(1)} s`);
  console.log(table(
    "Where a bake's time goes (tdxvm phases; mkosi steps from its log, each until the next step line)",
    ["phase / step", "cold", "after one file() change"],
    [...names.map((n) => [n, cell(pc[n]), cell(pi[n])]), ["total (wall)", f(cold), f(incr)]],
  ));
  // Storage: what the second bake (one file changed) added to the cache's artifacts, beside the first.
  // `du` counts a file hard-linked into both entries once; sparse disks count by their blocks.
  const du = (...dirs: string[]) => Number(execFileSync("du", ["-sk", "--total", ...dirs], { encoding: "utf8" }).trim().split("\n").pop()!.split("\t")[0]) * 1024;
  const entry = (r: typeof coldR) => path.dirname(path.dirname(r.artifacts[0]!.cachePath ?? r.artifacts[0]!.path));
  const [one, two] = [du(entry(coldR)), du(entry(coldR), entry(incrR))];
  const ten = one + 9 * (two - one);
  const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
  console.log(table(
    "Artifact cache on disk (qemu target; du: hard links once, sparse files by their blocks)",
    ["cache holds", "disk used", "vs one bake", "target", "meets target"],
    [
      ["one bake (baseline)", gib(one), "1.00×", "—", "—"],
      ["that bake and one variant (one file() changed)", gib(two), `${(two / one).toFixed(2)}×`, "—", "—"],
      ["ten one-file variants (the first plus 9 × what the variant added)", gib(ten), `${(ten / one).toFixed(2)}×`, "≤ 3×", ten / one <= 3 ? "yes" : "NO"],
    ],
  ));
  // What sharing below the file level could reach (not built: ext4 here has no reflinks): the
  // same entries as distinct non-zero 4 KiB blocks, as a content-addressed block store would keep them.
  const seen = new Set<string>();
  const [blocksOne, blocksVariant] = [await newBlocks(entry(coldR), seen), await newBlocks(entry(incrR), seen)];
  const tenBlocks = blocksOne + 9 * blocksVariant;
  console.log(table(
    "What a 4 KiB block store would hold instead (distinct non-zero blocks of every output file; not built)",
    ["cache holds", "blocks stored", "vs one bake on disk today", "target", "meets target"],
    [
      ["one bake (its formats share blocks)", gib(blocksOne), `${(blocksOne / one).toFixed(2)}×`, "—", "—"],
      ["what one variant adds", gib(blocksVariant), `${(blocksVariant / one).toFixed(3)}×`, "—", "—"],
      ["ten one-file variants, projected", gib(tenBlocks), `${(tenBlocks / one).toFixed(2)}×`, "≤ 3×", tenBlocks / one <= 3 ? "yes" : "NO"],
    ],
  ));
  const uki = coldR.artifacts.find((a) => a.target === "uki")!;
  const disk = coldR.artifacts.find((a) => a.target === "disk")!;
  console.log(`image sizes: UKI ${(uki.size / 1048576).toFixed(1)} MiB, disk ${(disk.size / 1048576).toFixed(1)} MiB`);
  for (const d of [plainCache, cache, plainProject, project]) await fs.rm(d, { recursive: true, force: true });
}
