/**
 * Bake: emit the mkosi tree, run mkosi 25 (host or trixie tools tree), convert per target,
 * and store everything in a content-addressed cache.
 *
 * Cache key = digest(tree digest, profile, targets, tools versions, BAKE_VERSION). An entry is
 * built in a temp dir and renamed; a file lock per key makes concurrent bakes of one key build
 * once; a killed bake leaves only its temp dir, which the next bake of that key removes.
 */
import { promises as fs, existsSync } from "node:fs";
import * as path from "node:path";
import { TdxError } from "../errors";
import { digestOf } from "../recipe/digest";
import { DEFAULT_PROFILE, resolveProfile } from "../recipe/resolve";
import { Target, RootFs } from "../recipe/schema";
import { treeDigest, BASE_PACKAGES } from "../compile";
import { linkOrCopy, linkOrCopyAtomic } from "../lock/files";
import { writeFileAtomic, stableJson, packagePins, packageDrift, pinPackages, withPins, profilePins, pinKey, LOCK_FILE, Lock } from "../lock";
import { unobtainablePins, pinsUnavailable } from "../fetch/debian";
import { gatherDebs, serveFlatRepository, flatRepositorySource, DebPin } from "../fetch/archive";
import { emitRecipe, compileRecipe, compileFromStore, defaultCacheDir, ProjectContext } from "../pipeline";
import { writeTree } from "../compile/write";
import { ensureToolsTree, ToolsTree, preflight, readToolsManifest } from "./toolsTree";
import { sandboxArgv, runStreaming, Bind, findOnPath } from "./sandbox";
import { withFileLock } from "./filelock";
import { markUsed, keepNewest } from "./cache";
import { Progress } from "./progress";
import { rawToVhd, rawToGceTarball, rawToQcow2, growGptDisk, diskSize } from "./convert";
import { limaArgv } from "./lima";
import { readDiskHead, readUkiCmdline } from "../measure/api";
import { rootHashOf } from "../measure/boot";
import { parseGpt } from "../measure/gpt";
import { hashFile } from "../measure/hashjobs";
import { KEPT_KMODS, KMODS_MARKER, KmodsRun, keepKmods, kmodsSettings, watchKmods } from "./kmods";

export const BAKE_VERSION = 3;
export const REPORT_VERSION = 1;

export type Backend = "local_linux" | "lima";

export interface BakeOptions {
  frozen?: boolean;
  /** A package archive (directory or http(s) URL; tdxvm archive export) for pinned packages the Debian mirror dropped. */
  archive?: string;
  profile?: string;
  cacheDir?: string;
  /** Where per-bake outputs (tree, log, report, artifact links) go; default <project>/build. */
  buildDir?: string;
  backend?: Backend;
  lima?: { instance?: string };
  /** false: ignore an existing cache entry and build again (package cache still used). */
  useCache?: boolean;
  /** Use mkosi's incremental cache for warm rebuilds (default true). */
  incremental?: boolean;
  quiet?: boolean;
  /** Kill mkosi after this long (default 2 h). */
  timeoutMs?: number;
}

export interface Artifact {
  target: Target | "uki" | "disk"; kind: string; path: string; sha256: string; size: number;
  /** The immutable copy in the content-addressed cache (path is the link under build/artifacts). */
  cachePath?: string;
}

export interface BakeResult {
  reportVersion: 1;
  profile: string;
  key: string;
  cacheHit: boolean;
  recipeDigest: string;
  lockIntegrity: string;
  treeDigest: string;
  artifacts: Artifact[];
  tools: { source: "tools-tree" | "host"; versions: Record<string, string> };
  systemdStub: string | null;
  /** How the root file system is measured (the recipe's choice) and, for verity, the root hash on the UKI's command line. */
  rootfs: RootFs;
  rootHash: string | null;
  packages: Array<{ name: string; version: string; architecture?: string }>;
  /** The packages of the default initrd in the UKI's .initrd (none for an initrd root file system, or a bake before tdxvm 0.2). */
  initrdPackages?: Array<{ name: string; version: string; architecture?: string }>;
  durations: Record<string, number>;
  /** Seconds per mkosi step (its "‣" lines; nested steps indented), for finding where a bake's time goes. */
  mkosiSteps?: Record<string, number>;
  mkosiLog: string;
}

/** Artifact by target/kind, or undefined. */
export function artifact(r: BakeResult, target: Artifact["target"], kind?: string): Artifact | undefined {
  return r.artifacts.find((a) => a.target === target && (kind === undefined || a.kind === kind));
}

/** An artifact's sha256 and size: hashed off this thread, in constant memory (hashjobs.js hashFile). */
async function sha256File(file: string): Promise<{ sha256: string; size: number }> {
  try {
    const { digest, size } = await hashFile(file, "sha256");
    return { sha256: digest.toString("hex"), size };
  } catch (e) {
    throw new TdxError("E_BAKE", `cannot hash the artifact ${file}: ${(e as Error).message}`, { hint: "Check the disk (space, I/O errors) and bake again." });
  }
}

/** systemd-stub writes "#### LoaderInfo: systemd-stub <version> ####" into its .sdmagic section. */
export async function stubVersion(uki: string): Promise<string | null> {
  const fh = await fs.open(uki, "r");
  try {
    const buf = Buffer.alloc(2 * 1024 * 1024);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    const m = /LoaderInfo: systemd-stub ([0-9][0-9A-Za-z.~+-]*)/.exec(buf.subarray(0, bytesRead).toString("latin1"));
    return m ? m[1] : null;
  } finally {
    await fh.close();
  }
}

function hostMkosiVersion(): string | undefined {
  const bin = findOnPath("mkosi");
  if (!bin) return undefined;
  try {
    const { execaSync } = require("execa") as typeof import("execa");
    const out = execaSync(bin, ["--version"], { stdin: "ignore", stderr: "ignore", timeout: 30_000 }).stdout;
    const m = /mkosi\s+(\d+(?:\.\d+)*)/.exec(out);
    return m && Number(m[1].split(".")[0]) >= 25 ? m[1] : undefined;
  } catch {
    return undefined;
  }
}

interface Executor {
  source: "tools-tree" | "host";
  versions: Record<string, string>;
  /** argv for a command inside the build environment, with host dirs mapped in. */
  argv(cmd: string[], binds: Bind[]): string[];
  /** Path as the command sees it. */
  inside(b: Bind): string;
}

async function executor(opts: BakeOptions, cacheDir: string, mirror: string, progress: Progress): Promise<Executor> {
  if (opts.backend === "lima") {
    preflight([{ command: "limactl", install: "brew install lima (macOS) — see lima-vm.io" }]);
    return { source: "host", versions: {}, argv: (cmd) => limaArgv(opts.lima?.instance ?? "tdxvm", cmd), inside: (b) => b.host };
  }
  const host = hostMkosiVersion();
  if (host && process.env.TDXVM_FORCE_TOOLS_TREE !== "1") {
    return { source: "host", versions: { mkosi: host }, argv: (cmd) => cmd, inside: (b) => b.host };
  }
  const tree: ToolsTree = await ensureToolsTree({ cacheDir, mirror, progress });
  return { source: "tools-tree", versions: tree.versions, argv: (cmd, binds) => sandboxArgv(tree.root, cmd, binds), inside: (b) => b.inside };
}

/** The cache key of a bake: what the artifacts are a function of. */
export function bakeKey(k: { treeDigest: string; profile: string; targets: Target[]; tools: Record<string, string> }): string {
  return digestOf({ bakeVersion: BAKE_VERSION, tree: k.treeDigest, profile: k.profile, targets: [...k.targets].sort(), tools: k.tools }).slice("sha256:".length);
}

/** Tool versions a bake would use, found without provisioning anything (undefined: the tools tree is not there yet). */
export function knownToolsVersions(opts: Pick<BakeOptions, "backend">, cacheDir: string): Record<string, string> | undefined {
  if (opts.backend === "lima") return {};
  const host = hostMkosiVersion();
  if (host && process.env.TDXVM_FORCE_TOOLS_TREE !== "1") return { mkosi: host };
  return readToolsManifest(cacheDir)?.versions;
}

export interface BakePlan {
  profile: string;
  recipeDigest: string;
  treeDigest: string;
  /** Cache key, when the tool versions are known (tools tree present or host mkosi). */
  key?: string;
  /** The finished bake for that key, when the cache has it. */
  cached?: BakeResult;
}

/**
 * What bake() would do, without doing it: lock (in memory) and compile, derive the cache key,
 * look the key up. Writes nothing and starts no process, so previews can call it cheaply.
 */
export async function planBake(ctx: ProjectContext, opts: Pick<BakeOptions, "frozen" | "profile" | "cacheDir" | "backend"> = {}): Promise<BakePlan> {
  const profile = opts.profile ?? DEFAULT_PROFILE;
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  const { lock, tree } = await compileRecipe(ctx, { frozen: opts.frozen, cacheDir });
  if (!(profile in lock.recipe.profiles)) {
    throw new TdxError("E_VALIDATION", `unknown profile ${JSON.stringify(profile)}`, { hint: `Known profiles: ${Object.keys(lock.recipe.profiles).join(", ")}.` });
  }
  const tDigest = treeDigest(tree);
  const tools = knownToolsVersions(opts, cacheDir);
  const plan: BakePlan = { profile, recipeDigest: lock.recipe.profiles[profile], treeDigest: tDigest };
  if (tools) {
    plan.key = bakeKey({ treeDigest: tDigest, profile, targets: ctx.recipe.outputTargets, tools });
    plan.cached = await readEntry(path.join(cacheDir, "artifacts", plan.key));
  }
  return plan;
}

export async function bake(ctx: ProjectContext, opts: BakeOptions = {}): Promise<BakeResult> {
  const progress = new Progress({ quiet: opts.quiet });
  const profile = opts.profile ?? DEFAULT_PROFILE;
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  const buildDir = opts.buildDir ?? path.join(ctx.projectDir, "build");
  try {
    progress.phase("lock & emit");
    const emitted = await emitRecipe(ctx, { frozen: opts.frozen, cacheDir, outDir: path.join(buildDir, "mkosi") });
    if (!(profile in emitted.lock.recipe.profiles)) {
      throw new TdxError("E_VALIDATION", `unknown profile ${JSON.stringify(profile)}`, { hint: `Known profiles: ${Object.keys(emitted.lock.recipe.profiles).join(", ")}.` });
    }
    const exec = await executor(opts, cacheDir, emitted.lock.debian.mirror, progress);
    const targets = [...ctx.recipe.outputTargets].sort();
    const tDigest = treeDigest(emitted.tree);
    const key = bakeKey({ treeDigest: tDigest, profile, targets, tools: exec.versions });
    const entries = path.join(cacheDir, "artifacts");
    const entry = path.join(entries, key);
    await fs.mkdir(entries, { recursive: true });

    // The packages a bake installed against the lock's pins for the profile (none pinned: no drift).
    const pinsOf = (r: BakeResult) => {
      const pins = packagePins(r.packages);
      const initrdPins = r.initrdPackages?.length ? packagePins(r.initrdPackages) : undefined;
      return { pins, initrdPins, drift: packageDrift(emitted.lock, profile, pins, initrdPins) };
    };
    const driftError = (drift: string[]) => new TdxError("E_LOCKFILE", `the bake installed other packages than tdx.lock pins: ${drift.length} package change(s) for profile ${profile}: ${drift.slice(0, 12).join(" ")}${drift.length > 12 ? " …" : ""}`, {
      hint: "Review the changes, then run `tdxvm lock --refresh` (it re-pins the packages and shows which registers move) and commit tdx.lock; or bake from a package archive holding the pinned versions (--archive).",
      details: { drift },
    });
    const finish = async (baked: BakeResult, cacheHit: boolean): Promise<BakeResult> => {
      let result = baked;
      if (cacheHit) await markUsed(entry);
      // Package pinning: a non-frozen bake records what it installed (image and default initrd,
      // with the .deb digests) and bakes with those pins from then on; a frozen bake must install
      // exactly the pinned set.
      const { pins, initrdPins, drift } = pinsOf(result);
      if (opts.frozen) {
        if (drift.length) throw driftError(drift);
      } else if (pins.length && (JSON.stringify(emitted.lock.packages?.[profile]) !== JSON.stringify(pins) || (initrdPins && JSON.stringify(emitted.lock.initrdPackages?.[profile]) !== JSON.stringify(initrdPins)))) {
        const debs = await debDigests(cacheDir, [...pins, ...(initrdPins ?? [])]);
        await pinPackages(path.join(ctx.projectDir, LOCK_FILE), profile, pins, initrdPins, debs);
        // The pins are in the tree (apt preferences), so the pinned lock names another cache key
        // for the very same image: file this bake under it too (hard links), so the next bake is a
        // hit. From this bake's own lock: the file may meanwhile hold another image's of the project.
        const pinned = withPins(emitted.lock, profile, pins, initrdPins, debs);
        const key2 = bakeKey({ treeDigest: treeDigest(compileFromStore(ctx.recipe, pinned, cacheDir)), profile, targets, tools: exec.versions });
        if (key2 !== key) {
          await aliasEntry(entries, key, key2, { lockIntegrity: pinned.integrity }).catch(() => undefined);
          // Installed another version than a pin of its key (no source offered it): an entry under that
          // key would answer every later bake of those pins, frozen ones given an archive included.
          const moved = await readEntry(path.join(entries, key2));
          if (!cacheHit && moved && overridden(emitted.lock, profile, [...pins, ...(initrdPins ?? [])]).length) {
            await fs.rm(entry, { recursive: true, force: true });
            result = moved;
          }
        }
      }
      const out = { ...result, cacheHit, durations: { ...result.durations } };
      const outDir = path.join(buildDir, "artifacts", profile);
      await fs.rm(outDir, { recursive: true, force: true });
      await fs.mkdir(outDir, { recursive: true });
      out.artifacts = [];
      for (const a of result.artifacts) {
        const dst = path.join(outDir, path.basename(a.path));
        if (!existsSync(dst)) await linkOrCopy(a.path, dst);
        out.artifacts.push({ ...a, path: dst, cachePath: a.path });
      }
      out.durations = { ...out.durations, ...progress.done() };
      await writeReport(buildDir, out);
      return out;
    };

    const cached = await readEntry(entry);
    if (cached && opts.useCache !== false) return finish(cached, true);

    return await withFileLock(`${entry}.lock`, async () => {
      const again = await readEntry(entry);
      if (again && opts.useCache !== false) return finish(again, true);
      for (const n of await fs.readdir(entries)) if (n.startsWith(`.${key}.`)) await fs.rm(path.join(entries, n), { recursive: true, force: true });
      const archived = await pinnedFromArchive(emitted.lock, profile, { ...opts, cacheDir }, progress);
      const tmp = path.join(entries, `.${key}.${process.pid}.tmp`);
      await fs.mkdir(path.join(tmp, "out"), { recursive: true });
      await fs.mkdir(path.join(tmp, "ws"), { recursive: true });
      const logFile = path.join(buildDir, `bake-${profile}.log`);
      try {
        // mkosi builds a private copy of the tree: build/mkosi is shared by every image of the
        // project (two TdxImages of one program bake concurrently), so a tree read from there
        // could be another image's by the time mkosi starts — built under this image's key.
        const tree = path.join(tmp, "tree");
        await writeTree(emitted.tree, tree);
        let repo: Awaited<ReturnType<typeof serveFlatRepository>> | undefined;
        if (archived?.size) {
          // Pinned packages the mirror dropped, from the archive: a repository for this bake's
          // private tree only (a transport, not content: the pins are in the key already).
          repo = await serveFlatRepository(await debControls(exec, [...archived.values()]));
          await fs.writeFile(path.join(tree, "mkosi.sandbox", "etc", "apt", "sources.list.d", "tdxvm-archive.sources"), flatRepositorySource(repo.url));
        }
        const sandboxDigest = treeDigest(new Map([...emitted.tree].filter(([p]) => p.startsWith("mkosi.sandbox/"))));
        // What the default initrd installs with: the apt sources and the pins of its own packages
        // (pins of packages it does not install change nothing in it).
        const initrdSandbox = digestOf({ sources: treeDigest(new Map([...emitted.tree].filter(([p]) => p.startsWith("mkosi.sandbox/") && !p.includes("/preferences.d/")))), pins: emitted.lock.initrdPackages?.[profile] ?? [] });
        const result = await build({ ctx, opts, exec, profile, targets, tmp, cacheDir, logFile, progress, emittedDir: tree, sandboxDigest, initrdSandbox, kmodsSettings: kmodsSettings(emitted.tree) }).finally(() => repo?.close());
        const final: BakeResult = {
          ...result, key, cacheHit: false, recipeDigest: emitted.lock.recipe.profiles[profile], lockIntegrity: emitted.lock.integrity, treeDigest: tDigest,
          artifacts: result.artifacts.map((a) => ({ ...a, path: path.join(entry, path.relative(tmp, a.path)) })),
        };
        // Frozen: a build that did not install the pins is refused before it becomes a cache entry.
        const { drift } = pinsOf(final);
        if (opts.frozen && drift.length) throw driftError(drift);
        await fs.writeFile(path.join(tmp, "result.json"), stableJson(final));
        await fs.rm(path.join(tmp, "ws"), { recursive: true, force: true });
        await fs.rm(tree, { recursive: true, force: true });
        await fs.rm(entry, { recursive: true, force: true });
        await fs.rename(tmp, entry);
        return finish(final, false);
      } catch (e) {
        await fs.rm(tmp, { recursive: true, force: true });
        throw e;
      }
    }, { onWait: () => progress.phase("waiting for a concurrent bake of the same image") });
  } finally {
    progress.done();
  }
}

/** The pins of the lock (profile: image and initrd) that the installed packages `installed` contradict: same name, another version. */
export function overridden(lock: Lock, profile: string, installed: string[]): string[] {
  const have = new Map(installed.map((p) => [p.slice(0, p.indexOf("=")), p]));
  return profilePins(lock, profile).filter((p) => {
    const now = have.get(p.slice(0, p.indexOf("=")));
    return now !== undefined && now !== p;
  });
}

/**
 * File the cache entry `key` under `key2` as well: a directory of hard links (no copy) with its
 * result.json naming the new key. Nothing is written when `key2` exists; a failure leaves nothing.
 */
export async function aliasEntry(entries: string, key: string, key2: string, patch: Partial<BakeResult>): Promise<void> {
  const from = path.join(entries, key);
  const to = path.join(entries, key2);
  const r = await readEntry(from);
  if (!r || existsSync(to)) return;
  const tmp = path.join(entries, `.${key2}.${process.pid}.tmp`);
  try {
    const walk = async (rel: string): Promise<void> => {
      await fs.mkdir(path.join(tmp, rel), { recursive: true });
      for (const e of await fs.readdir(path.join(from, rel), { withFileTypes: true })) {
        const r2 = path.join(rel, e.name);
        if (e.isDirectory()) await walk(r2);
        else if (e.isFile() && r2 !== "result.json") await linkOrCopy(path.join(from, r2), path.join(tmp, r2));
      }
    };
    await walk("");
    const moved = (p: string) => path.join(to, path.relative(from, p));
    await fs.writeFile(path.join(tmp, "result.json"), stableJson({ ...r, ...patch, key: key2, artifacts: r.artifacts.map((a) => ({ ...a, path: moved(a.path) })) }));
    await fs.rename(tmp, to);
  } catch (e) {
    await fs.rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

/**
 * SHA-256 and size of the .deb behind each pin, from the package caches of both mkosi runs
 * (apt names a file name_version_arch.deb, the epoch's ':' as %3a). Pins without a cached file
 * (an offline bake from a seeded cache, say) get no entry.
 */
export async function debDigests(cacheDir: string, pins: string[]): Promise<NonNullable<Lock["debs"]>> {
  const dirs = ["packages", "packages-initrd"].map((d) => path.join(cacheDir, d, "cache", "apt", "archives"));
  const files = new Map<string, string>();
  for (const d of dirs) for (const n of await fs.readdir(d).catch(() => [] as string[])) if (n.endsWith(".deb") && !files.has(n)) files.set(n, path.join(d, n));
  const byPin = new Map<string, string>();
  for (const n of files.keys()) {
    const m = /^([^_]+)_([^_]+)_([^_]+)\.deb$/.exec(n);
    if (m) byPin.set(`${m[1]}=${decodeURIComponent(m[2])}`, n);
  }
  const out: NonNullable<Lock["debs"]> = {};
  for (const pin of new Set(pins.map(pinKey))) {
    const n = byPin.get(pin);
    if (!n) continue;
    const { digest, size } = await hashFile(files.get(n)!, "sha256");
    out[pin] = { file: n, sha256: digest.toString("hex"), size };
  }
  return out;
}

/**
 * Before a bake that must install the lock's pins (frozen, or given an archive): the pins the
 * Debian sources no longer offer, gathered from the local caches and the archive (each checked
 * against the lock's SHA-256). Frozen and some found nowhere: E_PACKAGES naming them, before any
 * build (apt would otherwise quietly take other versions, and the bake fail only at its end).
 * Not frozen: what cannot be found is resolved anew and re-pinned. An index that cannot be
 * fetched proves nothing: the bake goes on, and the drift check after it still holds.
 */
async function pinnedFromArchive(lock: Lock, profile: string, opts: BakeOptions & { cacheDir: string }, progress: Progress): Promise<Map<string, DebPin & { path: string }> | undefined> {
  const pins = profilePins(lock, profile);
  if (!pins.length || !(opts.frozen || opts.archive)) return undefined;
  progress.phase("checking that the Debian sources offer the pinned packages");
  const dropped = await unobtainablePins(lock, pins);
  if (!dropped?.length) return undefined;
  progress.phase(`${dropped.length} pinned package(s) no longer offered: taking them from ${opts.archive ? "the archive and " : ""}the local caches`);
  const { found, missing } = await gatherDebs(lock, dropped, { cacheDir: opts.cacheDir, archive: opts.archive });
  if (missing.length && opts.frozen) throw pinsUnavailable(lock, profile, missing, opts.archive);
  return found;
}

/** Each deb's control paragraph (dpkg-deb --field, in the build environment), for the flat repository's index. */
async function debControls(exec: Executor, debs: Array<DebPin & { path: string }>): Promise<Array<DebPin & { path: string; control: string }>> {
  const out: Array<DebPin & { path: string; control: string }> = [];
  for (const d of debs) {
    const bind: Bind = { host: path.dirname(d.path), inside: "/work/deb", readOnly: true };
    const lines: string[] = [];
    const r = await runStreaming(exec.argv(["dpkg-deb", "--field", path.posix.join(exec.inside(bind), path.basename(d.path))], [bind]), { onLine: (l) => lines.push(l), tailLines: 10, timeoutMs: 60_000 });
    if (r.code !== 0 || !lines.some((l) => /^Package: /.test(l))) throw new TdxError("E_BAKE", `cannot read the control fields of ${d.file} (${d.sha256}): ${r.tail.join(" ").slice(0, 300)}`, { hint: "The archive's file is not a Debian package; remove it from the archive and export it again.", details: { phase: "archive" } });
    out.push({ ...d, control: lines.filter((l) => !/^(Filename|Size|SHA256|MD5sum):/.test(l)).join("\n") });
  }
  return out;
}

async function readEntry(entry: string): Promise<BakeResult | undefined> {
  try {
    const r = JSON.parse(await fs.readFile(path.join(entry, "result.json"), "utf8")) as BakeResult;
    for (const a of r.artifacts) if (!existsSync(a.path)) return undefined;
    return r;
  } catch {
    return undefined;
  }
}

interface BuildArgs {
  ctx: ProjectContext; opts: BakeOptions; exec: Executor; profile: string; targets: Target[];
  tmp: string; cacheDir: string; logFile: string; progress: Progress; emittedDir: string;
  /** treeDigest of the emitted tree's mkosi.sandbox/ (the apt sources and pins both mkosi runs install with). */
  sandboxDigest: string;
  /** The part of it the default initrd depends on: the sources and the pins of the initrd's own packages. */
  initrdSandbox: string;
  /** The settings that shape the kernel-modules initrd (kmods.ts kmodsSettings); undefined: not reused. */
  kmodsSettings: string[] | undefined;
}

async function build(a: BuildArgs): Promise<Omit<BakeResult, "key" | "recipeDigest" | "lockIntegrity" | "treeDigest" | "cacheHit">> {
  const { exec, progress } = a;
  const mkcache = path.join(a.cacheDir, "mkosi-cache");
  const pkgcache = path.join(a.cacheDir, "packages");
  await fs.mkdir(mkcache, { recursive: true });
  await fs.mkdir(pkgcache, { recursive: true });
  // One bind for the whole cache: output, workspace and mkosi's cache are then on one mount,
  // so mkosi renames instead of copying multi-GB trees between them.
  const binds: Bind[] = [
    { host: a.emittedDir, inside: "/work/tree" },
    { host: a.cacheDir, inside: "/work/cache" },
  ];
  const inCache = (hostPath: string) => path.posix.join(exec.inside(binds[1]), path.relative(a.cacheDir, hostPath));
  const initrdCache = path.join(a.cacheDir, "mkosi-initrd-cache");
  const initrdPkgcache = path.join(a.cacheDir, "packages-initrd");
  await fs.mkdir(initrdCache, { recursive: true });
  await fs.mkdir(path.join(a.tmp, "initrd", "ws"), { recursive: true });
  const recipe = a.ctx.recipe;
  const gate = initrdGate(a.emittedDir);
  const inTree = (hostPath: string) => path.posix.join(exec.inside(binds[0]), path.relative(a.emittedDir, hostPath));
  if (recipe.rootfs !== "initrd") {
    await fs.mkdir(gate.dir, { recursive: true });
    await fs.writeFile(gate.initrd, "");
    await fs.writeFile(gate.script, INITRD_GATE_SCRIPT, { mode: 0o755 });
  }
  // The default initrd as its own mkosi image (the settings mkosi 25's finalize_default_initrd
  // passes its sub-image), with its own incremental cache: see defaultInitrd below.
  // It runs beside the image at the lowest CPU priority: the image is the longer run, and the
  // initrd only has to be ready when the image reaches its UKI step.
  const initrd = recipe.rootfs === "initrd" ? undefined : [
    "nice", "-n", "19", "mkosi", "--directory", "", "--include=mkosi-initrd", "--distribution", "debian", "--release", "trixie", "--architecture", recipe.arch,
    `--sandbox-tree=${path.posix.join(exec.inside(binds[0]), "mkosi.sandbox")}`,
    "--cache-directory", inCache(initrdCache), "--package-cache-directory", inCache(initrdPkgcache), `--incremental=${a.opts.incremental === false ? "no" : "yes"}`,
    "--output", "initrd", "--manifest-format", "json", "--image-id", "tdxvm", "--source-date-epoch", "0", "--locale", "C.UTF-8", "--keymap", "us", "--timezone", "UTC", "--hostname", recipe.hostname,
    "--output-directory", inCache(path.join(a.tmp, "initrd")), "--workspace-directory", inCache(path.join(a.tmp, "initrd", "ws")),
    ...(recipe.policy.networkMode === "offline" ? ["--cache-only=always"] : []),
    "--force", "build",
  ];
  const mkosi = [
    "mkosi", "--directory", exec.inside(binds[0]), "--output-dir", inCache(path.join(a.tmp, "out")), "--workspace-directory", inCache(path.join(a.tmp, "ws")),
    "--cache-dir", inCache(mkcache), "--package-cache-dir", inCache(pkgcache),
    ...(initrd ? [`--initrd=${inTree(gate.initrd)}`, `--finalize-script=${inTree(gate.script)}`] : []),
    ...(a.profile !== DEFAULT_PROFILE ? [`--profile=${a.profile}`] : []),
    `--incremental=${a.opts.incremental === false ? "no" : "yes"}`,
    ...(a.ctx.recipe.policy.networkMode === "offline" ? ["--cache-only=always"] : []),
    "--force", "build",
  ];
  progress.phase("mkosi build");
  await fs.mkdir(path.dirname(a.logFile), { recursive: true });
  // One mkosi at a time per cache: mkosi's incremental and metadata caches are shared and not
  // written atomically. If the previous holder died mid-build, those caches may be torn: drop them.
  const slot = cacheSlotKey(a);
  // The initrd's reuse key: its argv without this bake's temp paths, the sandbox tree it installs
  // with, the tools, and the state of its incremental cache.
  const initrdKey = initrd && a.opts.incremental !== false
    ? async () => initrdReuseKey(initrdCache, { argv: initrd.map((x) => x.split(inCache(a.tmp)).join("<tmp>")), sandbox: a.initrdSandbox, tools: exec.versions })
    : undefined;
  return withFileLock(path.join(a.cacheDir, "mkosi.lock"), async () => {
    await enterCacheSlot(mkcache, slot);
    try {
      // The same initrd as a previous bake built: put it at the gate, and skip its mkosi run.
      // Both best effort: a kept initrd that cannot be used is a miss, one that cannot be kept is not kept.
      if (initrd) await matchInitrdCache(initrdCache, a.initrdSandbox);
      const initrdManifest = path.join(a.tmp, "initrd", "initrd.manifest");
      const reused = initrdKey && (await reuseInitrd(initrdCache, await initrdKey(), gate, initrdManifest).catch(() => false));
      if (initrd && !reused) await seedPackageCache(pkgcache, initrdPkgcache);
      // The kernel-modules initrd a previous bake kept for the same modules (kmods.ts), unless asked to build everything.
      // Local builds only: the workspace must be the same directory for tdxvm as for mkosi.
      const kmods = initrd && a.kmodsSettings && a.opts.incremental !== false && a.opts.backend !== "lima" ? { gate, keyInputs: { settings: a.kmodsSettings, tools: exec.versions } } : undefined;
      const r = await runMkosi(a, exec, binds, mkosi, inCache, reused ? undefined : initrd && { argv: initrd, gate }, kmods);
      if (initrdKey && !reused) await keepInitrd(initrdCache, await initrdKey(), gate.initrd, initrdManifest).catch(() => undefined);
      if (reused) r.mkosiSteps = { ...r.mkosiSteps, "initrd: reused a previous bake's default initrd": 0 };
      return r;
    } finally {
      await leaveCacheSlot(mkcache, slot);
    }
  }, {
    onWait: () => progress.phase("waiting for another mkosi build on this cache"),
    onStale: async () => {
      for (const c of [mkcache, initrdCache]) {
        await fs.rm(c, { recursive: true, force: true });
        await fs.mkdir(c, { recursive: true });
      }
    },
  });
}

/**
 * Run mkosi for the image and, when given, the default initrd side by side (each mostly one core:
 * dpkg, then compression). The image's UKI step waits at the gate until the initrd is in place.
 * Whichever run fails first stops the other (the image would wait at the gate for nothing, an
 * initrd is useless without its image) and is the one reported: the other then only failed at the
 * gate or was stopped. Returns the time each mkosi step took; the two runs overlap, so their steps
 * add up to more than the wall time.
 */
export async function runMkosiBuilds(o: {
  argv: (cmd: string[]) => string[]; image: string[]; initrd?: { argv: string[]; built: string; gate: ReturnType<typeof initrdGate> };
  logFile: string; progress: Progress; timeoutMs: number;
}): Promise<Record<string, number>> {
  const { progress } = o;
  const log = await fs.open(o.logFile, "w");
  const steps: Record<string, number> = {};
  const stop = new AbortController();
  const run = async (prefix: string, argv: string[]) => {
    let step = "starting mkosi";
    let current: { name: string; at: number } | undefined;
    const endStep = () => {
      if (current) steps[current.name] = (steps[current.name] ?? 0) + (Date.now() - current.at) / 1000;
    };
    try {
      const r = await runStreaming(o.argv(argv), {
        tailLines: 30,
        timeoutMs: o.timeoutMs,
        signal: stop.signal,
        onLine: (l) => {
          void log.write(prefix + l + "\n");
          const m = /^‣(\s*)(.*)$/.exec(l.trim());
          if (m && isStepLine(m[2])) {
            step = `${prefix}${m[2].replace(/…$/, "")}`;
            endStep();
            current = { name: `${"  ".repeat(Math.max(0, m[1].length - 1))}${step.replace(/\s\/\S*/g, " …").slice(0, 60)}`, at: Date.now() };
          }
          progress.line(prefix + l);
        },
      });
      return { ...r, step };
    } finally {
      endStep();
    }
  };
  let failed: (Awaited<ReturnType<typeof run>> & { what: string }) | undefined;
  try {
    if (!o.initrd) {
      progress.phase("mkosi build: image");
      const r = await run("", o.image);
      if (r.code !== 0) failed = { ...r, what: "mkosi" };
    } else {
      const { gate, built } = o.initrd;
      progress.phase("mkosi build: image and default initrd, concurrently");
      const initrdRun = run("initrd: ", o.initrd.argv).then(async (r) => {
        if (r.code === 0) {
          await fs.rename(built, gate.initrd).catch(async (e: NodeJS.ErrnoException) => {
            await fs.writeFile(gate.failed, "");
            throw new TdxError("E_BAKE", `mkosi (default initrd) finished but its ${path.basename(built)} could not be put in place (${e.code ?? e.message})`, { hint: `See ${o.logFile}.`, details: { phase: "initrd: collect" } });
          });
        }
        await fs.writeFile(r.code === 0 ? gate.ready : gate.failed, "");
        return r;
      });
      const imageRun = run("", o.image);
      let first: "initrd" | "image" | undefined;
      const watch = (who: "initrd" | "image") => (r: { code: number | null }) => {
        if (r.code !== 0) { first ??= who; stop.abort(); }
      };
      void initrdRun.then(watch("initrd"), () => stop.abort());
      void imageRun.then(watch("image"), () => stop.abort());
      const [ri, rm] = await Promise.allSettled([initrdRun, imageRun]);
      if (ri.status === "rejected") { await fs.writeFile(gate.failed, "").catch(() => undefined); throw ri.reason; }
      if (rm.status === "rejected") throw rm.reason;
      if (first === "initrd") failed = { ...ri.value, what: "mkosi (default initrd)" };
      else if (first === "image") failed = { ...rm.value, what: "mkosi" };
    }
  } finally {
    stop.abort();
    await log.close();
  }
  if (failed) {
    throw new TdxError("E_BAKE", `${failed.what} failed during "${failed.step}" (exit ${failed.code ?? failed.signal}). Last lines:\n${failed.tail.slice(-20).join("\n")}`, {
      hint: `Full log: ${o.logFile}. Fix the recipe (package names, run() steps) or the host, then bake again.`,
      details: { phase: failed.step, exitCode: failed.code, signal: failed.signal, log: o.logFile },
    });
  }
  return steps;
}

async function runMkosi(
  a: BuildArgs, exec: Executor, binds: Bind[], mkosi: string[], inCache: (p: string) => string,
  initrd: { argv: string[]; gate: ReturnType<typeof initrdGate> } | undefined,
  kmods: { gate: ReturnType<typeof initrdGate>; keyInputs: unknown } | undefined,
): Promise<Omit<BakeResult, "key" | "recipeDigest" | "lockIntegrity" | "treeDigest" | "cacheHit">> {
  const t0 = Date.now();
  const keptKmods = path.join(a.cacheDir, KEPT_KMODS);
  let watch: KmodsRun | undefined;
  if (kmods) {
    await fs.writeFile(kmods.gate.kmodsWanted, "");
    watch = watchKmods(path.join(a.tmp, "ws"), keptKmods, kmods.gate.kmods, kmods.keyInputs);
  }
  let steps: Record<string, number>;
  try {
    steps = await runMkosiBuilds({
      argv: (cmd) => exec.argv(cmd, binds), image: mkosi,
      initrd: initrd && { ...initrd, built: path.join(a.tmp, "initrd", "initrd.cpio.zst") },
      logFile: a.logFile, progress: a.progress, timeoutMs: a.opts.timeoutMs ?? 2 * 3600_000,
    });
  } finally {
    await watch?.stop();
  }
  const mkosiSeconds = (Date.now() - t0) / 1000;
  const { progress } = a;
  const base = a.profile === DEFAULT_PROFILE ? "tdxvm" : `tdxvm-${a.profile}`;
  const out = path.join(a.tmp, "out");
  const raw = path.join(out, `${base}.raw`);
  const uki = path.join(out, `${base}.efi`);
  for (const f of [raw, uki]) {
    if (!existsSync(f)) throw new TdxError("E_BAKE", `mkosi finished but produced no ${path.basename(f)}`, { hint: `See ${a.logFile}.`, details: { phase: "collect" } });
  }
  if (watch?.reused) steps = { ...steps, "kernel-modules initrd: reused a previous bake's": 0 };
  else if (kmods && watch?.key) await keepKmods(keptKmods, watch.key, uki, kmods.gate.initrd).catch(() => undefined);
  // One disk for every target: grown to a whole GiB (GCE's rule, a whole MiB for Azure too).
  await growGptDisk(raw, diskSize((await fs.stat(raw)).size));
  const files: Array<Omit<Artifact, "sha256" | "size">> = [
    { target: "uki", kind: "efi", path: uki },
    { target: "disk", kind: "raw", path: raw },
    { target: "qemu", kind: "raw", path: raw },
  ];
  // The per-target conversions read the raw disk and write their own files: they run together
  // (qemu-img and tar in their own processes, gzip and hashing on the thread pool and the main
  // thread), each hashing what it wrote as soon as it is done. The VHD's unique id is derived from
  // the raw disk's digest, so it waits for that hash only.
  progress.phase("convert & hash");
  const tConvert = Date.now();
  const timed = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    const t = Date.now();
    try {
      return await fn();
    } finally {
      convertSeconds[name] = (Date.now() - t) / 1000;
    }
  };
  const convertSeconds: Record<string, number> = {};
  const hashed = (f: Omit<Artifact, "sha256" | "size">) => sha256File(f.path).then((h) => ({ ...f, ...h }));
  const rawSum = sha256File(raw);
  const jobs: Array<Promise<Artifact[]>> = [
    timed("hash uki+raw", async () => [await hashed(files[0]), ...(await rawSum.then((h) => files.slice(1).map((f) => ({ ...f, ...h }))))]),
  ];
  if (a.targets.includes("qemu")) {
    const qemuImg = exec.source === "tools-tree" ? "/usr/bin/qemu-img" : findOnPath("qemu-img");
    if (qemuImg) {
      const q = path.join(out, `${base}.qcow2`);
      jobs.push(timed("qcow2", async () => {
        await rawToQcow2((args) => exec.argv([qemuImg, ...args.map((x) => (x.startsWith(a.cacheDir) ? inCache(x) : x))], binds), raw, q);
        return [await hashed({ target: "qemu", kind: "qcow2", path: q })];
      }));
    }
  }
  if (a.targets.includes("azure")) {
    const v = path.join(out, `${base}.vhd`);
    jobs.push(timed("azure vhd", async () => {
      await rawToVhd(raw, v, Buffer.from((await rawSum).sha256.slice(0, 32), "hex"));
      return [await hashed({ target: "azure", kind: "vhd", path: v })];
    }));
  }
  if (a.targets.includes("gcp")) {
    const t = path.join(out, `${base}.tar.gz`);
    jobs.push(timed("gcp tar.gz", async () => {
      await rawToGceTarball(raw, t);
      return [await hashed({ target: "gcp", kind: "tar.gz", path: t })];
    }));
  }
  const artifacts: Artifact[] = (await Promise.all(jobs)).flat();
  convertSeconds.total = (Date.now() - tConvert) / 1000;
  const packages = await readManifest(path.join(out, `${base}.manifest`));
  const initrdPackages = await readManifest(path.join(a.tmp, "initrd", "initrd.manifest"));
  return {
    reportVersion: REPORT_VERSION,
    profile: a.profile,
    artifacts,
    tools: { source: exec.source, versions: exec.versions },
    systemdStub: await stubVersion(uki),
    rootfs: a.ctx.recipe.rootfs,
    rootHash: await checkRootHash(a.ctx.recipe.rootfs, uki, raw),
    packages,
    initrdPackages,
    durations: { mkosi: mkosiSeconds, ...Object.fromEntries(Object.entries(convertSeconds).map(([k, v]) => [`convert: ${k}`, v])) },
    mkosiSteps: steps,
    mkosiLog: a.logFile,
  };
}

/** The packages of a mkosi JSON manifest (none when mkosi wrote none). */
async function readManifest(file: string): Promise<BakeResult["packages"]> {
  if (!existsSync(file)) return [];
  const m = JSON.parse(await fs.readFile(file, "utf8")) as { packages?: Array<{ name: string; version: string; architecture?: string }> };
  return (m.packages ?? []).map((p) => ({ name: p.name, version: p.version, architecture: p.architecture }));
}

/**
 * The verity root hash the UKI's command line names, checked against the disk: systemd-repart
 * derives the data and hash partitions' UUIDs from the root hash (repart.d(5) Verity=: the first
 * and the last 128 bits), which is how systemd-veritysetup-generator finds them at boot. A UKI
 * and disk that disagree would not boot; catching it here names the problem.
 */
async function checkRootHash(mode: RootFs, uki: string, raw: string): Promise<string | null> {
  const hash = rootHashOf(await readUkiCmdline(uki));
  if (mode !== "verity") {
    if (hash) throw new TdxError("E_BAKE", `rootfs "${mode}" but the UKI's command line carries roothash=${hash}`, { hint: "Remove roothash= from the recipe's cmdline().", details: { phase: "collect" } });
    return null;
  }
  if (!hash) throw new TdxError("E_BAKE", "rootfs \"verity\" but mkosi wrote no roothash= into the UKI's command line", { hint: "Check the bake log for the repart step; the root would boot unverified.", details: { phase: "collect" } });
  const gpt = parseGpt(await readDiskHead(raw));
  const uuid = (hex: string) => `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
  const want = [uuid(hash.slice(0, 32)), uuid(hash.slice(-32))];
  const have = gpt.partitions.map((p) => p.uniqueGuid.toLowerCase());
  if (!want.every((w) => have.includes(w))) {
    throw new TdxError("E_BAKE", `the disk's partitions do not belong to roothash=${hash} (want partition UUIDs ${want.join(", ")}; disk has ${have.join(", ")})`, { hint: "Bake again with a clean cache entry; report it if it repeats.", details: { phase: "collect" } });
  }
  return hash;
}

/**
 * mkosi keeps ONE incremental cache per distribution/release/architecture (mkosi 25
 * cache_tree_paths: "debian~trixie~x86-64.cache" + ".manifest"), and drops it whenever the package
 * set differs (cache_manifest: packages, repositories, prepare scripts, …). Recipes with different
 * packages baked one after another would rebuild from scratch every time; tdxvm therefore keeps a
 * slot per package set and moves it in place (a rename) around each mkosi run, keeping the most
 * recently used MAX_CACHE_SLOTS. The shared metadata, keyring and default-initrd caches stay put.
 */
export const MAX_CACHE_SLOTS = 4;
const MAIN_CACHE_ENTRIES = ["debian~trixie~x86-64.cache", "debian~trixie~x86-64.build.cache", "debian~trixie~x86-64.manifest"];

export function cacheSlotKey(a: Pick<BuildArgs, "ctx" | "profile" | "sandboxDigest">): string {
  const p = resolveProfile(a.ctx.recipe, a.profile);
  // The sandbox tree (apt sources and the lock's version pins) is not in mkosi's own cache manifest:
  // without it here, a bake after `lock --refresh` would reuse a tree installed at the old versions.
  return digestOf({ packages: [...BASE_PACKAGES, ...p.packages].sort(), prepare: p.runs.filter((r) => r.phase === "prepare"), release: "trixie", arch: p.arch, sandbox: a.sandboxDigest }).slice("sha256:".length, "sha256:".length + 16);
}

/**
 * The default initrd's incremental cache is one per cache directory and mkosi reuses it whatever
 * the apt sources and pins say: drop it when those (BuildArgs.initrdSandbox) differ from the ones
 * it was built with.
 */
async function matchInitrdCache(initrdCache: string, sandboxDigest: string): Promise<void> {
  const marker = path.join(initrdCache, "tdxvm-sandbox");
  if ((await fs.readFile(marker, "utf8").catch(() => "")) === sandboxDigest) return;
  for (const n of await fs.readdir(initrdCache).catch(() => [] as string[])) {
    if (n !== KEPT_INITRDS) await fs.rm(path.join(initrdCache, n), { recursive: true, force: true });
  }
  await writeFileAtomic(marker, sandboxDigest);
}

async function enterCacheSlot(mkcache: string, slot: string): Promise<void> {
  const dir = path.join(mkcache, "slots", slot);
  for (const n of MAIN_CACHE_ENTRIES) {
    await fs.rm(path.join(mkcache, n), { recursive: true, force: true }); // another slot's, left by a crash
    await fs.rename(path.join(dir, n), path.join(mkcache, n)).catch(() => undefined);
  }
}

async function leaveCacheSlot(mkcache: string, slot: string): Promise<void> {
  const slots = path.join(mkcache, "slots");
  const dir = path.join(slots, slot);
  await fs.mkdir(dir, { recursive: true });
  for (const n of MAIN_CACHE_ENTRIES) await fs.rename(path.join(mkcache, n), path.join(dir, n)).catch(() => undefined);
  const now = new Date();
  await fs.utimes(dir, now, now);
  await keepNewest(slots, MAX_CACHE_SLOTS);
}

/**
 * The gate between the two mkosi runs, inside the image's private tree (mkosi's default build
 * source, which its finalize scripts see at $SRCDIR). mkosi refuses to start when an --initrd file
 * is missing (check_inputs), so the image starts with an empty placeholder; its last finalize
 * script waits for "ready" and mkosi reads the initrd only after the finalize scripts, when it
 * builds the UKI (mkosi 25 build_image: run_finalize_scripts, then make_disk and install_kernel).
 */
export const INITRD_GATE_DIR = ".tdxvm-initrd-gate";

export function initrdGate(tree: string) {
  const dir = path.join(tree, INITRD_GATE_DIR);
  return {
    dir, initrd: path.join(dir, "initrd.cpio.zst"), ready: path.join(dir, "ready"), failed: path.join(dir, "failed"), script: path.join(dir, "wait-for-initrd"),
    /** tdxvm watches for the script's marker (kmods.ts); then the script also waits for "kmods". */
    kmodsWanted: path.join(dir, "kmods-wanted"), kmods: path.join(dir, "kmods"),
  };
}

export const INITRD_GATE_SCRIPT = `#!/bin/sh
# tdxvm: wait until the default initrd, built by a concurrent mkosi run, is in place; and, when
# tdxvm watches for it, tell it that the tree is final (a marker in $OUTPUTDIR) and wait until it
# has put a kept kernel-modules initrd in mkosi's workspace or decided not to. tdxvm claims the
# marker by renaming it; one that is not claimed within a minute is taken back the same way (the
# two renames exclude each other), and mkosi builds that initrd itself.
gate="$SRCDIR/${INITRD_GATE_DIR}"
marker="$OUTPUTDIR/${KMODS_MARKER}"
kmods=
announced=
if [ -e "$gate/kmods-wanted" ] && : > "$marker" 2>/dev/null; then kmods=1; announced=1; fi
waited=0
while [ ! -e "$gate/ready" ] || { [ -n "$kmods" ] && [ ! -e "$gate/kmods" ]; }; do
  if [ -e "$gate/failed" ]; then echo "tdxvm: the default initrd build failed; see its lines (initrd: …) in the log" >&2; exit 1; fi
  if [ -n "$kmods" ] && [ "$waited" -ge 300 ] && mv "$marker" "$marker.unclaimed" 2>/dev/null; then kmods=; fi
  sleep 0.2
  waited=$((waited + 1))
done
[ -z "$announced" ] || rm -f "$marker" "$marker.claimed" "$marker.unclaimed"
`;

/**
 * Built default initrds, kept by reuse key: an unchanged initrd is not built again (its mkosi run,
 * even from mkosi's incremental cache, took ~12 s beside the image and held up its UKI step).
 * The key covers the run's argv (this bake's temp paths taken out), the sandbox tree, the tools
 * versions and mkosi's incremental cache for the initrd: every top-level entry's inode and ctime,
 * and the manifests' bytes. mkosi reusing that cache gives byte-identical initrds (measured
 * 2026-11-28), and anything that makes it rebuild the cache changes the key. Kept: the newest
 * MAX_KEPT_INITRDS.
 */
const KEPT_INITRDS = "outputs";
export const MAX_KEPT_INITRDS = 4;

export async function initrdReuseKey(initrdCache: string, inputs: { argv: string[]; sandbox: string; tools: Record<string, string> }): Promise<string> {
  const state: string[][] = [];
  for (const n of (await fs.readdir(initrdCache).catch(() => [] as string[])).sort()) {
    if (n === KEPT_INITRDS) continue;
    const st = await fs.lstat(path.join(initrdCache, n), { bigint: true });
    state.push([n, String(st.ino), String(st.ctimeNs), n.endsWith(".manifest") && st.isFile() ? await fs.readFile(path.join(initrdCache, n), "utf8") : ""]);
  }
  return digestOf({ ...inputs, state }).slice("sha256:".length);
}

/** Put the initrd kept under `key` at the gate and open it; false when none is kept. Throws if it cannot (the caller takes that as a miss). */
export async function reuseInitrd(initrdCache: string, key: string, gate: ReturnType<typeof initrdGate>, manifest?: string): Promise<boolean> {
  const kept = path.join(initrdCache, KEPT_INITRDS, `${key}.cpio.zst`);
  const keptManifest = path.join(initrdCache, KEPT_INITRDS, `${key}.manifest`);
  if (!existsSync(kept) || (manifest && !existsSync(keptManifest))) return false;
  const now = new Date();
  await fs.utimes(kept, now, now); // the newest is kept longest
  if (manifest) await linkOrCopyAtomic(keptManifest, manifest);
  await linkOrCopyAtomic(kept, gate.initrd);
  await fs.writeFile(gate.ready, ""); // last: the image's UKI step takes the initrd once this exists
  return true;
}

/** Keep a built initrd (and its package manifest) under `key` (the newest MAX_KEPT_INITRDS stay). Throws if it cannot, leaving nothing half-written. */
export async function keepInitrd(initrdCache: string, key: string, built: string, manifest?: string): Promise<void> {
  const dir = path.join(initrdCache, KEPT_INITRDS);
  await fs.mkdir(dir, { recursive: true });
  if (manifest) await linkOrCopyAtomic(manifest, path.join(dir, `${key}.manifest`));
  await linkOrCopyAtomic(built, path.join(dir, `${key}.cpio.zst`));
  await keepNewest(dir, MAX_KEPT_INITRDS, (n) => n.endsWith(".cpio.zst"));
  for (const n of await fs.readdir(dir)) {
    if (n.endsWith(".manifest") && !existsSync(path.join(dir, n.replace(/\.manifest$/, ".cpio.zst")))) await fs.rm(path.join(dir, n), { force: true });
  }
}

/**
 * The initrd run's own package cache: mkosi runs apt with Debug::NoLocking=true, so two concurrent
 * runs must not write one cache. Seeded with hard links to what the image's cache already holds
 * (an offline bake must find its packages there too); files it already has are left alone.
 */
export async function seedPackageCache(from: string, to: string): Promise<void> {
  const walk = async (rel: string): Promise<void> => {
    const entries = await fs.readdir(path.join(from, rel), { withFileTypes: true }).catch(() => []);
    await fs.mkdir(path.join(to, rel), { recursive: true });
    for (const e of entries) {
      const r = path.join(rel, e.name);
      if (e.isDirectory()) { if (e.name !== "partial") await walk(r); continue; }
      if (!e.isFile() || e.name === "lock" || existsSync(path.join(to, r))) continue;
      await linkOrCopy(path.join(from, r), path.join(to, r));
    }
  };
  await walk("");
}

/**
 * The default initrd is built by a separate mkosi run with its own cache directory (so its own
 * package-manager metadata). Built as mkosi 25.3's sub-image with Incremental=yes, it shares the
 * main image's apt metadata: on reuse, its `RemovePackages=dpkg` autoremoved what the *main*
 * image had marked automatic (kmod) and the build failed ("dpkg-maintscript-helper: not found",
 * measured here 2026-11-24), so it had to be rebuilt every time (about 45 s). On its own it
 * reuses cleanly (≈ 8 s) and gives byte-identical output (measured 2026-11-28). It runs
 * concurrently with the image (runMkosiBuilds): built first, it had cost a cold bake about 60 s
 * more than plain mkosi.
 */

/** mkosi prefixes both its steps and its errors/warnings with "‣"; keep only the steps. */
export function isStepLine(text: string): boolean {
  return !/^["'/]|returned non-zero exit code|^Could not|^Error|^Warning|not found|is a dependency of|size is .* consumes/i.test(text.trim());
}

async function writeReport(buildDir: string, r: BakeResult): Promise<void> {
  const file = path.join(buildDir, "report.json");
  const existing: { reportVersion?: number; bakes?: Record<string, BakeResult> } = await fs.readFile(file, "utf8").then((t) => JSON.parse(t), () => ({}));
  const bakes = existing.reportVersion === REPORT_VERSION ? existing.bakes ?? {} : {};
  bakes[r.profile] = r;
  await writeFileAtomic(file, stableJson({ reportVersion: REPORT_VERSION, bakes }));
}
