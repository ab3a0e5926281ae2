/**
 * The artifact cache (`<cacheDir>/artifacts/<key>/`, see bake/index.ts): list its entries and
 * prune them. Each bake adds ~3 GB; nothing else removes them.
 *
 * An entry's identity comes from its own result.json (profile, recipe digest, and the build
 * directory the bake wrote its log to: `<project>/build/bake-<profile>.log`), which is read as
 * hostile input: a directory that is not named like a key, or whose result.json does not parse,
 * is listed as foreign and never touched.
 *
 * prune never removes
 * - an entry whose key a running bake holds (the per-key `<key>.lock` of bake/filelock.ts names a
 *   live pid); prune takes that lock itself while it deletes, so no bake can start on the key
 *   meanwhile, and renames the entry away first, so a reader sees it whole or not at all;
 * - the newest entry of each recipe (same project build directory and profile) — what that
 *   project's `build/` and its Pulumi stack use. A project whose build directory no longer exists
 *   (e.g. a deleted temporary directory) has no current entry to protect.
 * Temporary directories of bakes that died (`.<key>.<pid>.tmp`, pid gone, lock free) are removed
 * too; a stale `.lock` file (naming a dead holder) is taken and released, i.e. emptied — lock files
 * are never deleted (bake/filelock.ts).
 */
import { promises as fs, existsSync } from "node:fs";
import * as path from "node:path";
import { TdxError } from "../errors";
import { alive, tryAcquire } from "./filelock";

const KEY = /^[0-9a-f]{64}$/;
const TMP = /^\.([0-9a-f]{64})\.(\d+)\.tmp$/;
const LOCK = /^([0-9a-f]{64})\.lock$/;

export interface CacheEntry {
  key: string;
  dir: string;
  profile: string;
  recipeDigest: string;
  /** The project build directory that baked it (from result.json's log path), or null. */
  buildDir: string | null;
  /** What "each recipe" means for prune: build directory + profile (or the recipe digest when unknown). */
  recipe: string;
  /** Last used: when it was built, or the last bake that was a cache hit on it (ms since the epoch). */
  usedMs: number;
  /** Bytes on disk (allocated blocks: raw disks are sparse). */
  bytes: number;
  /** Of those, bytes no other hard link keeps (what removing the entry frees). */
  exclusiveBytes: number;
  /** Pid of the running bake that holds the key's lock, or null. */
  heldBy: number | null;
}

export interface CacheListing {
  entries: CacheEntry[];
  /** Leftovers of dead bakes (temp directories, stale lock files) that prune removes. */
  leftovers: Array<{ name: string; bytes: number }>;
  /** Names in artifacts/ that are neither entries nor leftovers: never touched. */
  foreign: string[];
}

async function diskUsage(p: string): Promise<{ bytes: number; exclusiveBytes: number }> {
  const st = await fs.lstat(p).catch(() => undefined);
  if (!st) return { bytes: 0, exclusiveBytes: 0 };
  if (!st.isDirectory()) {
    const b = st.blocks * 512;
    return { bytes: b, exclusiveBytes: st.nlink <= 1 ? b : 0 };
  }
  let bytes = 0;
  let exclusiveBytes = 0;
  for (const n of await fs.readdir(p).catch(() => [] as string[])) {
    const u = await diskUsage(path.join(p, n));
    bytes += u.bytes;
    exclusiveBytes += u.exclusiveBytes;
  }
  return { bytes, exclusiveBytes };
}

async function lockOwner(file: string): Promise<number | null> {
  const pid = Number((await fs.readFile(file, "utf8").catch(() => "")).trim());
  return Number.isInteger(pid) && pid > 0 && alive(pid) ? pid : null;
}

function str(v: unknown): string | null {
  return typeof v === "string" && v.length > 0 && v.length < 4096 && !v.includes("\0") ? v : null;
}

export async function listCache(cacheDir: string): Promise<CacheListing> {
  const root = path.join(cacheDir, "artifacts");
  const names = await fs.readdir(root).catch((e: NodeJS.ErrnoException) => {
    if (e.code === "ENOENT") return [] as string[];
    throw e;
  });
  const out: CacheListing = { entries: [], leftovers: [], foreign: [] };
  for (const name of names.sort()) {
    const p = path.join(root, name);
    if (KEY.test(name)) {
      const result = path.join(p, "result.json");
      let r: Record<string, unknown>;
      let usedMs: number;
      try {
        r = JSON.parse(await fs.readFile(result, "utf8")) as Record<string, unknown>;
        usedMs = (await fs.stat(result)).mtimeMs;
        if (!r || typeof r !== "object" || r.key !== name) throw new Error("not an entry");
      } catch {
        out.foreign.push(name);
        continue;
      }
      const profile = str(r.profile) ?? "default";
      const log = str(r.mkosiLog);
      const buildDir = log && path.isAbsolute(log) ? path.dirname(log) : null;
      const recipeDigest = str(r.recipeDigest) ?? "unknown";
      out.entries.push({
        key: name, dir: p, profile, recipeDigest, buildDir,
        recipe: buildDir ? `${buildDir} (${profile})` : `${recipeDigest} (${profile})`,
        usedMs, ...(await diskUsage(p)), heldBy: await lockOwner(path.join(root, `${name}.lock`)),
      });
    } else if (TMP.test(name)) {
      const [, key, pid] = TMP.exec(name)!;
      // A bake's work in progress while its pid runs or its key's lock is held.
      if (!alive(Number(pid)) && (await lockOwner(path.join(root, `${key}.lock`))) === null) out.leftovers.push({ name, bytes: (await diskUsage(p)).bytes });
    } else if (LOCK.test(name)) {
      if ((await lockOwner(p)) === null && (await fs.readFile(p, "utf8").catch(() => "")).trim() !== "") out.leftovers.push({ name, bytes: 0 });
    } else out.foreign.push(name);
  }
  out.entries.sort((a, b) => b.usedMs - a.usedMs);
  return out;
}

export interface PruneOptions {
  /** Keep the N most recently used entries. */
  keep?: number;
  /** Remove only entries last used longer ago than this (ms). */
  olderThanMs?: number;
  /**
   * Then, whatever the other rules keep, remove the least recently used entries until the kept
   * ones take at most this many bytes on disk (bytes only they hold). Never removed for it: a
   * running bake's entry, and one that would free nothing (its files are linked elsewhere too).
   */
  maxBytes?: number;
  now?: number;
}

export interface PrunePlan {
  remove: CacheEntry[];
  keep: Array<{ entry: CacheEntry; why: string }>;
}

/** Which entries prune removes, and why it keeps the others (pure: no IO). */
export function planPrune(entries: CacheEntry[], opts: PruneOptions = {}, projectExists: (buildDir: string) => boolean = existsSync): PrunePlan {
  const now = opts.now ?? Date.now();
  const sorted = [...entries].sort((a, b) => b.usedMs - a.usedMs);
  const newest = new Map<string, CacheEntry>();
  for (const e of sorted) if (!newest.has(e.recipe) && (e.buildDir === null || projectExists(e.buildDir))) newest.set(e.recipe, e);
  const plan: PrunePlan = { remove: [], keep: [] };
  sorted.forEach((e, i) => {
    let why: string | undefined;
    if (e.heldBy !== null) why = `held by a running bake (pid ${e.heldBy})`;
    else if (newest.get(e.recipe) === e) why = "newest entry of its recipe";
    else if (opts.keep !== undefined && i < opts.keep) why = `one of the ${opts.keep} most recently used`;
    else if (opts.olderThanMs !== undefined && now - e.usedMs <= opts.olderThanMs) why = "used more recently than --older-than";
    if (why) plan.keep.push({ entry: e, why });
    else plan.remove.push(e);
  });
  if (opts.maxBytes !== undefined) {
    let total = plan.keep.reduce((s, k) => s + k.entry.exclusiveBytes, 0);
    // Oldest first; plan.keep is in most-recently-used order.
    for (const k of [...plan.keep].reverse()) {
      if (total <= opts.maxBytes) break;
      // A running bake's entry stays; one whose files other links keep (the project's build/artifacts) frees nothing.
      if (k.entry.heldBy !== null || k.entry.exclusiveBytes === 0) continue;
      plan.keep.splice(plan.keep.indexOf(k), 1);
      plan.remove.push(k.entry);
      total -= k.entry.exclusiveBytes;
    }
  }
  return plan;
}

export interface PruneResult {
  plan: PrunePlan;
  removed: CacheEntry[];
  /** Entries a bake started to hold between listing and removal (left alone). */
  skipped: Array<{ entry: CacheEntry; why: string }>;
  leftovers: CacheListing["leftovers"];
  freedBytes: number;
  dryRun: boolean;
}

/**
 * Remove one entry under its key's lock: rename it away (readers see it whole or gone), then
 * delete. Returns why it was not removed (a bake took the lock since the listing), or undefined.
 */
export async function removeEntry(root: string, e: CacheEntry): Promise<string | undefined> {
  const lock = await tryAcquire(path.join(root, `${e.key}.lock`));
  if (!("release" in lock)) return `held by a running bake (pid ${lock.owner})`;
  try {
    // The bake's own temp-dir name: if prune dies mid-delete, the next bake or prune removes it.
    const trash = path.join(root, `.${e.key}.${process.pid}.tmp`);
    try {
      await fs.rename(e.dir, trash);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return "already gone";
      throw err;
    }
    await fs.rm(trash, { recursive: true, force: true });
    return undefined;
  } finally {
    await lock.release();
  }
}

export async function pruneCache(cacheDir: string, opts: PruneOptions & { dryRun?: boolean } = {}): Promise<PruneResult> {
  if (opts.keep !== undefined && (!Number.isInteger(opts.keep) || opts.keep < 0)) throw new TdxError("E_VALIDATION", `--keep must be a whole number ≥ 0, not ${opts.keep}`);
  if (opts.maxBytes !== undefined && !(Number.isSafeInteger(opts.maxBytes) && opts.maxBytes >= 0)) throw new TdxError("E_VALIDATION", `--max-size must be a size ≥ 0, not ${opts.maxBytes}`);
  const root = path.join(cacheDir, "artifacts");
  const listing = await listCache(cacheDir);
  const plan = planPrune(listing.entries, opts);
  const res: PruneResult = { plan, removed: [], skipped: [], leftovers: listing.leftovers, freedBytes: 0, dryRun: opts.dryRun === true };
  for (const e of plan.remove) {
    if (opts.dryRun) {
      res.removed.push(e);
      res.freedBytes += e.exclusiveBytes;
      continue;
    }
    const why = await removeEntry(root, e);
    if (why) res.skipped.push({ entry: e, why });
    else {
      res.removed.push(e);
      res.freedBytes += e.exclusiveBytes;
    }
  }
  for (const l of listing.leftovers) {
    res.freedBytes += l.bytes;
    if (opts.dryRun) continue;
    // Under the key's lock, as a bake cleans its own leftovers; a stale lock is taken over and released.
    const m = TMP.exec(l.name);
    const lock = await tryAcquire(path.join(root, m ? `${m[1]}.lock` : l.name));
    if (!("release" in lock)) continue;
    try {
      if (m) await fs.rm(path.join(root, l.name), { recursive: true, force: true });
    } finally {
      await lock.release();
    }
  }
  return res;
}

/** A bake that reuses an entry marks it used (prune's "last used"). */
export async function markUsed(entryDir: string): Promise<void> {
  const now = new Date();
  await fs.utimes(path.join(entryDir, "result.json"), now, now).catch(() => undefined);
}

/** "30d", "12h", "90m", "2w", "45s" → milliseconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$/.exec(text.trim());
  if (!m) throw new TdxError("E_VALIDATION", `cannot read the duration ${JSON.stringify(text)}`, { hint: "Use a number and a unit: 45s, 90m, 12h, 30d, 2w." });
  return Number(m[1]) * { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 }[m[2] as "s"];
}

/** "30G", "512M", "2T", "4096" (bytes) → bytes; binary units (G = GiB). */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!m) throw new TdxError("E_VALIDATION", `cannot read the size ${JSON.stringify(text)}`, { hint: "Use a number and a unit: 512M, 30G, 1T (binary units), or plain bytes." });
  return Math.floor(Number(m[1]) * 1024 ** " KMGT".indexOf(m[2].toUpperCase() || " "));
}

/** Remove all but the `n` most recently modified entries of `dir` (those `only` selects, if given). */
export async function keepNewest(dir: string, n: number, only: (name: string) => boolean = () => true): Promise<void> {
  const all = await Promise.all((await fs.readdir(dir)).filter(only).map(async (name) => ({ name, t: (await fs.stat(path.join(dir, name))).mtimeMs })));
  for (const old of all.sort((x, y) => y.t - x.t).slice(n)) await fs.rm(path.join(dir, old.name), { recursive: true, force: true });
}
