/**
 * Lock: resolve a recipe's moving parts (source files, mirror, tool versions, and after a bake the
 * Debian packages it installed) into tdx.lock beside the recipe (the project directory, where
 * package-lock.json sits beside package.json: a committed file), and check a recipe against a lock
 * in frozen mode.
 *
 * The lock carries its own `integrity` (digest of its canonical body): a hand-edited lock,
 * e.g. a changed profile digest, no longer matches and is rejected as tampered.
 */
import { promises as fs, existsSync } from "node:fs";
import * as path from "node:path";
import { TdxError, formatIssues } from "../errors";
import { stableJson, writeFileAtomic } from "./files";

export { stableJson, writeFileAtomic };
import { Recipe } from "../recipe/schema";
import { allProfileDigests, sourceRefs } from "../recipe/resolve";
import { digestOf } from "../recipe/digest";
import { ContentStore, fetchInput, redactRef, sameDigest } from "../fetch";
import { checkSources, PolicyWarning, policyError } from "./policy";
import { Lock, LockBodyT, LockSchema, LOCK_VERSION, pinKey } from "./schema";

export { Lock, LockInput, LockSchema, pinKey } from "./schema";

export const DEFAULT_DEBIAN: LockBodyT["debian"] = {
  release: "trixie",
  mirror: "http://deb.debian.org/debian",
  securityMirror: "http://deb.debian.org/debian-security",
  snapshotMirror: "https://snapshot.debian.org",
  snapshot: null,
};

/** The lock, relative to the project directory: committed beside the recipe. */
export const LOCK_FILE = "tdx.lock";
/** Where tdxvm before 0.2 wrote it (under the ignored build/): read when no tdx.lock exists. */
export const LEGACY_LOCK_FILE = path.join("build", "tdx.lock");

/** The project's lock file: tdx.lock, or the legacy build/tdx.lock when only that one exists. */
export function lockFileOf(projectDir: string): string {
  const file = path.join(projectDir, LOCK_FILE);
  const legacy = path.join(projectDir, LEGACY_LOCK_FILE);
  return !existsSync(file) && existsSync(legacy) ? legacy : file;
}

export interface LockOptions {
  projectDir: string;
  cacheDir: string;
  debian?: Partial<LockBodyT["debian"]>;
  tools?: Partial<LockBodyT["tools"]>;
  /** Previous lock: its mirror pin, tool versions and package pins are kept unless overridden. */
  previous?: Lock;
  /** Drop the previous lock's package pins (the next bake resolves everything from the archive). */
  refresh?: boolean;
}

/** The previous lock's package pins that carry over, for the profiles the recipe still has. */
function pinsOf(previous: Lock | undefined, profiles: string[], refresh: boolean): Pick<LockBodyT, "packages" | "initrdPackages" | "debs"> {
  if (!previous || refresh) return {};
  const keep = <T>(r: Record<string, T> | undefined) => (r ? Object.fromEntries(Object.entries(r).filter(([p]) => profiles.includes(p))) : undefined);
  const out: Pick<LockBodyT, "packages" | "initrdPackages" | "debs"> = {};
  if (previous.packages) out.packages = keep(previous.packages);
  if (previous.initrdPackages) out.initrdPackages = keep(previous.initrdPackages);
  if (previous.debs) out.debs = previous.debs;
  return out;
}

export interface LockResult { lock: Lock; warnings: PolicyWarning[] }

export function sealLock(body: LockBodyT): Lock {
  return { ...body, integrity: digestOf(body) };
}

export async function createLock(recipe: Recipe, opts: LockOptions): Promise<LockResult> {
  const refs = sourceRefs(recipe);
  const warnings = checkSources(recipe.policy, refs);
  const store = new ContentStore(path.join(opts.cacheDir, "content"));
  const inputs: LockBodyT["inputs"] = [];
  for (const r of refs) {
    const f = await fetchInput(store, r.ref, { integrity: r.integrity, baseDir: opts.projectDir, offline: recipe.policy.networkMode === "offline" });
    // The lock names a source without its URL credentials (redactRef); sources that differ only
    // in credentials share that name, so they must be the same bytes.
    const ref = redactRef(r.ref);
    const same = inputs.find((i) => i.ref === ref);
    if (same && !sameDigest(same.sha256, f.integrity.sha256)) {
      throw new TdxError("E_LOCKFILE", `two sources named ${ref} (they differ only in URL credentials) served different bytes`, { hint: "Use one URL per source, or pin each with integrity." });
    }
    if (!same) inputs.push({ ref, size: f.size, sha256: f.integrity.sha256, sha384: f.integrity.sha384, sha512: f.integrity.sha512 });
  }
  const body: LockBodyT = {
    lockVersion: LOCK_VERSION,
    generator: "tdxvm 0.1",
    recipe: { profiles: allProfileDigests(recipe) },
    debian: { ...DEFAULT_DEBIAN, ...opts.previous?.debian, ...opts.debian },
    tools: { toolsTreeRelease: "trixie", mkosi: null, systemdStub: null, ...opts.previous?.tools, ...opts.tools },
    inputs,
    // Keep the pinned package sets, also of profiles whose recipe changed (the way package-lock.json
    // keeps every resolved version when package.json gains a dependency): the bake installs the
    // pinned versions of the packages it still needs, resolves only what is new, and re-pins. A
    // change to the recipe then moves registers by that change alone, not by Debian's updates of
    // the week. `tdxvm lock --refresh` drops them on purpose.
    ...pinsOf(opts.previous, Object.keys(allProfileDigests(recipe)), opts.refresh === true),
  };
  return { lock: sealLock(body), warnings };
}

/** A snapshot.debian.org timestamp for an instant (the service serves the newest snapshot at or before it). */
export function snapshotTimestamp(d: Date): string {
  return d.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
}

/**
 * The Debian snapshot a lock pins, as `tdxvm lock --snapshot` chooses it: a given timestamp,
 * "none" (the live mirror), or "auto": keep the current lock's, else pin now when the snapshot
 * service answers for the release (10 s), else none — and say why, since without a snapshot only
 * the pinned .debs (caches, `tdxvm archive export`) keep an old lock bakeable.
 */
export async function chooseSnapshot(choice: string, debian: LockBodyT["debian"], log: (m: string) => void, now = new Date()): Promise<string | null> {
  if (choice === "none") return null;
  if (choice !== "auto") {
    if (!/^\d{8}T\d{6}Z$/.test(choice)) throw new TdxError("E_VALIDATION", `--snapshot ${JSON.stringify(choice.slice(0, 40))} is not a snapshot timestamp`, { hint: "Use auto, none, or a timestamp like 20261201T000000Z." });
    return choice;
  }
  if (debian.snapshot) return debian.snapshot;
  const ts = snapshotTimestamp(now);
  const url = `${debian.snapshotMirror}/archive/debian/${ts}/dists/${debian.release}/InRelease`;
  const why = await fetch(url, { method: "HEAD", redirect: "follow", signal: AbortSignal.timeout(10_000) }).then((r) => (r.ok ? undefined : `it answered ${r.status}`), (e: Error) => (e.cause as Error | undefined)?.message ?? e.message);
  if (why === undefined) {
    log(`pinned the Debian snapshot ${ts} (${debian.snapshotMirror})`);
    return ts;
  }
  log(`no Debian snapshot pinned: ${debian.snapshotMirror} did not serve ${ts} (${why}). The lock names the live mirror; once Debian drops a pinned version, bakes take it from this machine's package caches or an archive (tdxvm archive export), else stop with E_PACKAGES.`);
  return null;
}

export async function writeLock(file: string, lock: Lock): Promise<void> {
  await writeFileAtomic(file, stableJson(lock));
}

/** Parse lock text; malformed, wrong version or tampered → E_LOCKFILE. */
export function parseLock(text: string, where = LOCK_FILE): Lock {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new TdxError("E_LOCKFILE", `${where} is not valid JSON (${(e as Error).message})`, { hint: "Restore it from version control or delete it and run img.lock() again." });
  }
  if (raw && typeof raw === "object" && "lockVersion" in raw && (raw as { lockVersion: unknown }).lockVersion !== LOCK_VERSION) {
    throw new TdxError("E_LOCKFILE", `${where} has lockVersion ${JSON.stringify((raw as { lockVersion: unknown }).lockVersion)}; this tdxvm reads version ${LOCK_VERSION}`, { hint: "Regenerate the lock with this version of tdxvm (img.lock())." });
  }
  const r = LockSchema.safeParse(raw);
  if (!r.success) {
    throw new TdxError("E_LOCKFILE", `${where} is malformed: ${formatIssues(r.error.issues)}`, { hint: "Restore it from version control or delete it and run img.lock() again." });
  }
  const { integrity, ...body } = r.data;
  const actual = digestOf(body);
  if (actual !== integrity) {
    throw new TdxError("E_LOCKFILE", `${where} was modified by hand: its content digest is ${actual}, but it records ${integrity}`, {
      hint: "Locks are written only by tdxvm. Revert the edit (git checkout tdx.lock) or run img.lock() to regenerate it.",
    });
  }
  return r.data;
}

export async function readLock(file: string): Promise<Lock> {
  let text: string;
  try {
    text = await fs.readFile(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") {
      throw new TdxError("E_LOCKFILE", `no lock file at ${file}`, { hint: "Run img.lock() (or `npx tdxvm lock`) and commit tdx.lock beside the recipe; frozen bakes need it." });
    }
    throw new TdxError("E_LOCKFILE", `cannot read ${file}: ${(e as NodeJS.ErrnoException).code}`);
  }
  return parseLock(text, file);
}

/**
 * Frozen check: the recipe's profile digests equal the lock's, and every source the recipe
 * names is locked (local files are re-hashed: an edited source file makes the lock stale).
 */
export async function checkFrozen(recipe: Recipe, lock: Lock, opts: { projectDir: string; cacheDir: string }): Promise<void> {
  const now = allProfileDigests(recipe);
  const stale: string[] = [];
  for (const p of new Set([...Object.keys(now), ...Object.keys(lock.recipe.profiles)])) {
    if (now[p] !== lock.recipe.profiles[p]) stale.push(`profile ${p}: recipe ${now[p] ?? "(absent)"} vs lock ${lock.recipe.profiles[p] ?? "(absent)"}`);
  }
  const locked = new Map(lock.inputs.map((i) => [i.ref, i]));
  const store = new ContentStore(path.join(opts.cacheDir, "content"));
  for (const r of sourceRefs(recipe)) {
    const ref = redactRef(r.ref);
    const l = locked.get(ref);
    if (!l) {
      stale.push(`source ${ref} is not in the lock`);
      continue;
    }
    if (r.integrity && ![l.sha256, l.sha384, l.sha512].some((x) => sameDigest(x, r.integrity!))) stale.push(`source ${ref}: recipe integrity ${r.integrity} differs from the lock`);
    if (!/^https?:/i.test(r.ref)) {
      try {
        const f = await fetchInput(store, r.ref, { baseDir: opts.projectDir });
        if (!sameDigest(f.integrity.sha256, l.sha256)) stale.push(`source ${ref} changed on disk since it was locked`);
      } catch (e) {
        if (e instanceof TdxError) stale.push(`source ${ref}: ${e.message}`);
        else throw e;
      }
    }
  }
  if (stale.length) {
    throw new TdxError("E_LOCKFILE", `tdx.lock is stale: ${stale.join("; ")}`, {
      hint: "The recipe changed since the lock was written. Run img.lock() (or `npx tdxvm lock`), review the diff, commit it, then bake again.",
      details: { stale },
    });
  }
}

/** `name=version` strings of a bake's package manifest, sorted. */
export function packagePins(packages: ReadonlyArray<{ name: string; version: string }>): string[] {
  return packages.map((p) => `${p.name}=${p.version}`).sort();
}

/**
 * Frozen check after a build: the packages must be the locked ones. Returns a description of the
 * differences (empty when equal or when nothing is pinned for the profile).
 */
export function packageDrift(lock: Lock, profile: string, pins: string[], initrdPins?: string[]): string[] {
  const diff = (locked: string[] | undefined, now: string[], tag: string) => {
    if (!locked) return [];
    const a = new Set(locked);
    const b = new Set(now);
    return [...locked.filter((x) => !b.has(x)).map((x) => `-${x}${tag}`), ...now.filter((x) => !a.has(x)).map((x) => `+${x}${tag}`)];
  };
  return [...diff(lock.packages?.[profile], pins, ""), ...(initrdPins ? diff(lock.initrdPackages?.[profile], initrdPins, " (initrd)") : [])];
}

/** The pins a profile's bake must install: the image's and its default initrd's. */
export function profilePins(lock: Lock, profile: string): string[] {
  return [...new Set([...(lock.packages?.[profile] ?? []), ...(lock.initrdPackages?.[profile] ?? [])])].sort();
}

/**
 * Record a profile's resolved packages (image and default initrd, and the .deb digests known for
 * them) in the lock at `file`: atomic rewrite, resealed.
 */
export async function pinPackages(file: string, profile: string, pins: string[], initrdPins?: string[], debs?: NonNullable<Lock["debs"]>): Promise<Lock> {
  const sealed = withPins(await readLock(file), profile, pins, initrdPins, debs);
  await writeLock(file, sealed);
  return sealed;
}

/** `lock` with a profile's pins (and .deb digests) recorded, resealed: pinPackages without the file. */
export function withPins(lock: Lock, profile: string, pins: string[], initrdPins?: string[], debs?: NonNullable<Lock["debs"]>): Lock {
  const { integrity: _old, ...body } = lock;
  void _old;
  const next: LockBodyT = { ...body, packages: { ...body.packages, [profile]: pins } };
  if (initrdPins) next.initrdPackages = { ...body.initrdPackages, [profile]: initrdPins };
  if (debs) {
    // Digests of every package some profile still pins: the new ones over the old.
    const wanted = new Set(Object.values({ ...next.packages }).concat(Object.values({ ...next.initrdPackages })).flat().map(pinKey));
    const all = { ...body.debs, ...debs };
    next.debs = Object.fromEntries(Object.entries(all).filter(([k]) => wanted.has(k)).sort(([a], [b]) => (a < b ? -1 : 1)));
  }
  return sealLock(next);
}

/** Enforce the policy rules that concern a bake. */
export function checkBakePolicy(recipe: Recipe, frozen: boolean): void {
  if (recipe.policy.requireFrozenLock && !frozen) {
    throw policyError("requireFrozenLock", "this recipe must be baked with {frozen: true}", "Bake with {frozen: true} against the committed tdx.lock (CI should always do this).");
  }
}
