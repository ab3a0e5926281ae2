/**
 * The artifact cache: which entries `tdxvm cache prune` removes, and what it never touches.
 * Entries here are small directories laid out like bake/index.ts writes them.
 */
import { spawnSync } from "node:child_process";
import { promises as fs, existsSync } from "node:fs";
import * as path from "node:path";
import { listCache, planPrune, pruneCache, removeEntry, parseDuration, parseSize, markUsed, CacheEntry } from "../../provider/bake/cache";
import { tryAcquire } from "../../provider/bake/filelock";
import { tempDir, tdxErrorOf } from "../helpers";

const key = (n: number) => n.toString(16).padStart(64, "0");
const HOUR = 3600_000;

/** A pid that no longer runs (a child that has exited). */
const deadPid = () => spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" }).stdout.trim();

async function entry(cache: string, n: number, o: { buildDir: string; profile?: string; ageHours: number; bytes?: number }): Promise<string> {
  const dir = path.join(cache, "artifacts", key(n));
  await fs.mkdir(path.join(dir, "out"), { recursive: true });
  await fs.writeFile(path.join(dir, "out", "tdxvm.raw"), Buffer.alloc(o.bytes ?? 8192, 1));
  await fs.writeFile(path.join(dir, "result.json"), JSON.stringify({ key: key(n), profile: o.profile ?? "default", recipeDigest: `sha256:${n}`, mkosiLog: path.join(o.buildDir, `bake-${o.profile ?? "default"}.log`), artifacts: [] }));
  const t = new Date(Date.now() - o.ageHours * HOUR);
  await fs.utimes(path.join(dir, "result.json"), t, t);
  return dir;
}

function fake(n: number, recipe: string, usedMs: number, o: Partial<CacheEntry> = {}): CacheEntry {
  return { key: key(n), dir: `/c/${n}`, profile: "default", recipeDigest: `sha256:${n}`, buildDir: recipe, recipe, usedMs, bytes: 100, exclusiveBytes: 100, heldBy: null, ...o };
}

describe("planPrune", () => {
  const now = 1_000 * HOUR;
  const exists = () => true;

  it("keeps the newest entry of each recipe and removes the rest by default", () => {
    const es = [fake(1, "/a", now - 5 * HOUR), fake(2, "/a", now - 1 * HOUR), fake(3, "/b", now - 9 * HOUR), fake(4, "/a", now - 7 * HOUR)];
    const p = planPrune(es, { now }, exists);
    expect(p.remove.map((e) => e.key)).toEqual([key(1), key(4)]);
    expect(p.keep.map((k) => [k.entry.key, k.why])).toEqual([[key(2), "newest entry of its recipe"], [key(3), "newest entry of its recipe"]]);
  });

  it("--keep N keeps the N most recently used; --older-than keeps recent ones; both must allow a removal", () => {
    const es = [1, 2, 3, 4, 5].map((n) => fake(n, "/a", now - n * HOUR));
    expect(planPrune(es, { now, keep: 3 }, exists).remove.map((e) => e.key)).toEqual([key(4), key(5)]);
    expect(planPrune(es, { now, olderThanMs: 2.5 * HOUR }, exists).remove.map((e) => e.key)).toEqual([key(3), key(4), key(5)]);
    expect(planPrune(es, { now, keep: 4, olderThanMs: 2.5 * HOUR }, exists).remove.map((e) => e.key)).toEqual([key(5)]);
  });

  it("never removes an entry a running bake holds, even when it is old and beyond --keep", () => {
    const es = [fake(1, "/a", now), fake(2, "/a", now - 50 * HOUR, { heldBy: 4242 })];
    const p = planPrune(es, { now, keep: 0, olderThanMs: 0 }, exists);
    expect(p.remove).toEqual([]);
    expect(p.keep.find((k) => k.entry.key === key(2))!.why).toBe("held by a running bake (pid 4242)");
  });

  it("--max-size removes the least recently used entries, newest-of-recipe ones too, until the rest fit; never a held one", () => {
    const es = [fake(1, "/a", now - 1 * HOUR), fake(2, "/b", now - 2 * HOUR), fake(3, "/c", now - 3 * HOUR, { heldBy: 7 }), fake(4, "/d", now - 4 * HOUR)];
    // 4 × 100 bytes; 250 allowed: the two oldest unheld go (4, then 2), the held 3 stays although older than 2.
    const p = planPrune(es, { now, maxBytes: 250 }, exists);
    expect(p.remove.map((e) => e.key)).toEqual([key(4), key(2)]);
    expect(p.keep.map((k) => k.entry.key)).toEqual([key(1), key(3)]);
    expect(planPrune(es, { now, maxBytes: 400 }, exists).remove).toEqual([]);
    expect(planPrune(es, { now, maxBytes: 0 }, exists).keep.map((k) => k.entry.key)).toEqual([key(3)]);
  });

  it("parseSize reads binary units and refuses anything else with E_VALIDATION", async () => {
    expect(parseSize("30G")).toBe(30 * 1024 ** 3);
    expect(parseSize("512m")).toBe(512 * 1024 ** 2);
    expect(parseSize("1.5GiB")).toBe(1.5 * 1024 ** 3);
    expect(parseSize("4096")).toBe(4096);
    expect((await tdxErrorOf(() => parseSize("lots"))).code).toBe("E_VALIDATION");
    expect((await tdxErrorOf(() => parseSize("-1G"))).code).toBe("E_VALIDATION");
  });

  it("a recipe whose project directory is gone has no newest entry to protect", () => {
    const es = [fake(1, "/gone", now), fake(2, "/here", now - HOUR)];
    const p = planPrune(es, { now }, (d) => d === "/here");
    expect(p.remove.map((e) => e.key)).toEqual([key(1)]);
  });
});

describe("listCache / pruneCache on a cache directory", () => {
  let cache: string;
  let projA: string;
  let projB: string;
  beforeEach(async () => {
    cache = await tempDir();
    projA = path.join(cache, "projA", "build");
    projB = path.join(cache, "projB", "build");
    await fs.mkdir(projA, { recursive: true });
    await fs.mkdir(projB, { recursive: true });
  });
  afterEach(() => fs.rm(cache, { recursive: true, force: true }));

  it("lists entries newest first with their recipe, size and holder; leaves foreign names alone", async () => {
    await entry(cache, 1, { buildDir: projA, ageHours: 3, bytes: 64 * 1024 });
    await entry(cache, 2, { buildDir: projA, ageHours: 1 });
    await fs.writeFile(path.join(cache, "artifacts", `${key(2)}.lock`), `${process.pid}\n`);
    await fs.mkdir(path.join(cache, "artifacts", "not-a-key"));
    await fs.mkdir(path.join(cache, "artifacts", key(9))); // no result.json: not an entry
    const l = await listCache(cache);
    expect(l.entries.map((e) => e.key)).toEqual([key(2), key(1)]);
    expect(l.entries[0].heldBy).toBe(process.pid);
    expect(l.entries[1].heldBy).toBeNull();
    expect(l.entries[1].recipe).toBe(`${projA} (default)`);
    expect(l.entries[1].bytes).toBeGreaterThanOrEqual(64 * 1024);
    expect(l.foreign.sort()).toEqual([key(9), "not-a-key"].sort());
  });

  it("removes old entries, keeps each recipe's newest and held ones, cleans leftovers of dead bakes; dry run removes nothing", async () => {
    const old1 = await entry(cache, 1, { buildDir: projA, ageHours: 30 });
    const newA = await entry(cache, 2, { buildDir: projA, ageHours: 2 });
    const held = await entry(cache, 3, { buildDir: projA, ageHours: 40 });
    const newB = await entry(cache, 4, { buildDir: projB, ageHours: 50 });
    const dead = deadPid();
    await fs.writeFile(path.join(cache, "artifacts", `${key(3)}.lock`), `${process.pid}\n`);
    const tmpDead = path.join(cache, "artifacts", `.${key(5)}.${dead}.tmp`);
    const tmpLive = path.join(cache, "artifacts", `.${key(6)}.${process.pid}.tmp`);
    await fs.mkdir(tmpDead);
    await fs.mkdir(tmpLive);
    const staleLock = path.join(cache, "artifacts", `${key(7)}.lock`);
    await fs.writeFile(staleLock, `${dead}\n`);

    const dry = await pruneCache(cache, { olderThanMs: 24 * HOUR, dryRun: true });
    expect(dry.removed.map((e) => e.key)).toEqual([key(1)]);
    expect(dry.leftovers.map((l) => l.name).sort()).toEqual([`.${key(5)}.${dead}.tmp`, `${key(7)}.lock`].sort());
    expect(dry.freedBytes).toBeGreaterThan(0);
    for (const p of [old1, tmpDead, staleLock]) expect(existsSync(p)).toBe(true);

    const r = await pruneCache(cache, { olderThanMs: 24 * HOUR });
    expect(r.removed.map((e) => e.key)).toEqual([key(1)]);
    expect(r.freedBytes).toBe(dry.freedBytes);
    expect(existsSync(old1)).toBe(false);
    for (const p of [newA, held, newB, tmpLive, path.join(cache, "artifacts", `${key(3)}.lock`)]) expect(existsSync(p)).toBe(true);
    expect(existsSync(tmpDead)).toBe(false);
    // Lock files stay (bake/filelock.ts: removing a flock file would let two bakes hold "it"), but
    // no longer name the dead holder, so no one cleans up after it again.
    expect(await fs.readFile(staleLock, "utf8")).toBe("");
    // Nothing of prune's own is left behind: no trash directory; the removed key's lock is free.
    expect((await fs.readdir(path.join(cache, "artifacts"))).filter((n) => n.includes(key(1)))).toEqual([`${key(1)}.lock`]);
    expect(await fs.readFile(path.join(cache, "artifacts", `${key(1)}.lock`), "utf8")).toBe("");
  });

  it("an entry a bake locks between listing and removal is not removed", async () => {
    await entry(cache, 1, { buildDir: projA, ageHours: 30 });
    const [e] = (await listCache(cache)).entries;
    expect(e.heldBy).toBeNull();
    // A bake (this process) takes the key's lock after prune listed the cache.
    const lock = await tryAcquire(path.join(cache, "artifacts", `${key(1)}.lock`));
    if (!("release" in lock)) throw new Error("lock not taken");
    try {
      expect(await removeEntry(path.join(cache, "artifacts"), e)).toBe(`held by a running bake (pid ${process.pid})`);
      expect(existsSync(path.join(cache, "artifacts", key(1), "result.json"))).toBe(true);
    } finally {
      await lock.release();
    }
    expect(await removeEntry(path.join(cache, "artifacts"), e)).toBeUndefined();
    expect(existsSync(e.dir)).toBe(false);
  });

  it("a cache hit marks the entry used, so it becomes its recipe's newest", async () => {
    const a = await entry(cache, 1, { buildDir: projA, ageHours: 30 });
    await entry(cache, 2, { buildDir: projA, ageHours: 1 });
    await markUsed(a);
    const r = await pruneCache(cache, { dryRun: true });
    expect(r.removed.map((e) => e.key)).toEqual([key(2)]);
  });

  it("an empty or missing cache lists nothing", async () => {
    expect(await listCache(path.join(cache, "nothing-here"))).toEqual({ entries: [], leftovers: [], foreign: [] });
  });
});

describe("parseDuration", () => {
  it("reads 45s, 90m, 12h, 30d, 2w", () => {
    expect(["45s", "90m", "12h", "30d", "2w", "1.5h"].map(parseDuration)).toEqual([45e3, 90 * 60e3, 12 * HOUR, 30 * 24 * HOUR, 14 * 24 * HOUR, 1.5 * HOUR]);
  });

  it("rejects anything else with E_VALIDATION", async () => {
    for (const bad of ["", "10", "3 days", "-1d", "1y"]) expect((await tdxErrorOf(() => parseDuration(bad))).code).toBe("E_VALIDATION");
  });
});
