/**
 * Lock: resolve a recipe's moving parts (source files, mirror, tool versions) into
 * build/tdx.lock, and check a recipe against a lock in frozen mode.
 *
 * The lock carries its own `integrity` (digest of its canonical body): a hand-edited lock,
 * e.g. a changed profile digest, no longer matches and is rejected as tampered.
 */
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { TdxError, formatIssues } from "../errors";
import { stableJson, writeFileAtomic } from "./files";

export { stableJson, writeFileAtomic };
import { Recipe } from "../recipe/schema";
import { allProfileDigests, sourceRefs } from "../recipe/resolve";
import { digestOf } from "../recipe/digest";
import { ContentStore, fetchInput, redactRef, sameDigest } from "../fetch";
import { checkSources, PolicyWarning, policyError } from "./policy";
import { Lock, LockBodyT, LockSchema, LOCK_VERSION } from "./schema";

export { Lock, LockInput, LockSchema } from "./schema";

export const DEFAULT_DEBIAN: LockBodyT["debian"] = {
  release: "trixie",
  mirror: "http://deb.debian.org/debian",
  securityMirror: "http://deb.debian.org/debian-security",
  snapshotMirror: "https://snapshot.debian.org",
  snapshot: null,
};

export const LOCK_FILE = path.join("build", "tdx.lock");

export interface LockOptions {
  projectDir: string;
  cacheDir: string;
  debian?: Partial<LockBodyT["debian"]>;
  tools?: Partial<LockBodyT["tools"]>;
  /** Previous lock: its mirror pin and tool versions are kept unless overridden. */
  previous?: Lock;
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
    // Keep pinned package sets of profiles whose recipe did not change.
    ...(opts.previous?.packages ? { packages: Object.fromEntries(Object.entries(opts.previous.packages).filter(([p]) => opts.previous!.recipe.profiles[p] === allProfileDigests(recipe)[p])) } : {}),
  };
  return { lock: sealLock(body), warnings };
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
      hint: "Locks are written only by tdxvm. Revert the edit (git checkout build/tdx.lock) or run img.lock() to regenerate it.",
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
      throw new TdxError("E_LOCKFILE", `no lock file at ${file}`, { hint: "Run img.lock() (or `npx tdxvm lock`) and commit build/tdx.lock; frozen bakes need it." });
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
    throw new TdxError("E_LOCKFILE", `build/tdx.lock is stale: ${stale.join("; ")}`, {
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
export function packageDrift(lock: Lock, profile: string, pins: string[]): string[] {
  const locked = lock.packages?.[profile];
  if (!locked) return [];
  const a = new Set(locked);
  const b = new Set(pins);
  return [
    ...locked.filter((x) => !b.has(x)).map((x) => `-${x}`),
    ...pins.filter((x) => !a.has(x)).map((x) => `+${x}`),
  ];
}

/** Record a profile's resolved packages in the lock at `file` (atomic rewrite, resealed). */
export async function pinPackages(file: string, profile: string, pins: string[]): Promise<Lock> {
  const lock = await readLock(file);
  const { integrity: _old, ...body } = lock;
  void _old;
  const sealed = sealLock({ ...body, packages: { ...body.packages, [profile]: pins } });
  await writeLock(file, sealed);
  return sealed;
}

/** Enforce the policy rules that concern a bake. */
export function checkBakePolicy(recipe: Recipe, frozen: boolean): void {
  if (recipe.policy.requireFrozenLock && !frozen) {
    throw policyError("requireFrozenLock", "this recipe must be baked with {frozen: true}", "Bake with {frozen: true} against a committed build/tdx.lock (CI should always do this).");
  }
}
