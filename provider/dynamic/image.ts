/**
 * Dynamic provider behind TdxImage: lock + real mkosi bake, content-addressed.
 *
 * - check validates (zod), computes the bake plan (lock and compile in memory: cheap), and —
 *   with bakeOnPreview (default) — bakes or takes the cached bake, returning the artifact
 *   digests as checked inputs. That is what lets `pulumi preview` show digests and, through
 *   TdxMeasurement, register values (the CLI diffs inputs; docs/design.md §5). An unchanged stack
 *   reuses the previous inputs without touching the cache.
 * - diff compares the bake key (recipe, lock, sources, profile, targets, tool versions); a
 *   change is an update (re-bake), never a replace: an image is a build product.
 * - create/update bake (a cache hit when check already did); the id is the bake key.
 * - read reports artifacts that disappeared (cache cleaned) as drift; delete keeps the shared cache.
 */
import { existsSync, statSync } from "node:fs";
import * as path from "node:path";
import { z } from "zod";
import { Image } from "../recipe/image";
import { TARGETS } from "../recipe/schema";
import { bake, planBake, BakeResult, BakeOptions } from "../bake";
import { digestOf } from "../recipe/digest";
import { defaultCacheDir } from "../pipeline";
import { UNKNOWN, isUnknown, declared, failureOf, guarded, guardedSync, log, storePath, loadPath, CheckFailure, omit, pick as pickKeys, checkStart, requireInputs, parseState } from "./common";

export const IMAGE_STATE_VERSION = 1;

export const ImageArgs = z.object({
  recipe: z.record(z.string(), z.unknown()),
  /** Directory relative `src` files and build/ resolve against (relative to the directory of the program's main file, where the CLI runs the program and the provider host). */
  projectDir: z.string().min(1),
  profile: z.string().min(1).default("default"),
  targets: z.array(z.enum(TARGETS)).min(1).optional(),
  frozen: z.boolean().default(false),
  bakeOnPreview: z.boolean().default(true),
  cacheDir: z.string().min(1).optional(),
  timeoutMinutes: z.number().positive().default(120),
}).loose();
export type ImageArgsT = z.infer<typeof ImageArgs>;

export interface ArtifactOut { path: string; sha256: string; size: number }
const ArtifactOutSchema = z.object({ path: z.string().min(1), sha256: z.string(), size: z.number().int().nonnegative() }).loose();

/** The Debian packages (name=version, sorted) the image and its default initrd were baked from: TdxMeasurement names them in diffs. */
export const PackagePins = z.object({ image: z.array(z.string().max(512)).max(20_000), initrd: z.array(z.string().max(512)).max(20_000) });

/** The computed fields as state holds them (olds, props, checked inputs): typed wherever present. */
export const ImageState = z.object({
  stateVersion: z.number().optional(),
  recipeDigest: z.string().optional(),
  bakeKey: z.string().nullable().optional(),
  lockDigest: z.string().optional(),
  artifacts: z.record(z.string(), ArtifactOutSchema).optional(),
  reportPath: z.string().optional(),
  systemdStub: z.string().nullable().optional(),
  rootfs: z.string().optional(),
  rootHash: z.string().nullable().optional(),
  packages: PackagePins.optional(),
  missing: z.array(z.string()).optional(),
}).loose();

/** What check (bakeOnPreview) or create adds to the inputs. */
export interface ImageComputed {
  stateVersion: number;
  recipeDigest: string;
  bakeKey: string | null;
  lockDigest?: string;
  artifacts?: Record<string, ArtifactOut>;
  reportPath?: string;
  systemdStub?: string | null;
  /** How the root file system is measured, and the verity root hash on the UKI's command line. */
  rootfs?: string;
  rootHash?: string | null;
  /** The packages behind the image (pins), when the bake recorded them. */
  packages?: { image: string[]; initrd: string[] };
  /** Artifacts that were gone when the resource was last read (refresh). */
  missing?: string[];
}

function image(a: ImageArgsT): Image {
  const recipe = { ...a.recipe, ...(a.targets ? { outputTargets: a.targets } : {}) };
  return Image.fromRecipe(recipe, loadPath(a.projectDir));
}

function cacheDirOf(a: ImageArgsT): string {
  return a.cacheDir ? loadPath(a.cacheDir) : defaultCacheDir();
}

function bakeOptions(a: ImageArgsT): BakeOptions {
  return { frozen: a.frozen, profile: a.profile, cacheDir: cacheDirOf(a), quiet: true, timeoutMs: a.timeoutMinutes * 60_000 };
}

/** Outputs of a bake. Paths point into the content-addressed cache entry: immutable, the same whoever baked. */
export function computedFromBake(r: BakeResult, cacheDir: string): ImageComputed {
  const artifacts: Record<string, ArtifactOut> = {};
  for (const x of r.artifacts) artifacts[`${x.target}.${x.kind}`] = { path: storePath(x.cachePath ?? x.path), sha256: x.sha256, size: x.size };
  return {
    stateVersion: IMAGE_STATE_VERSION, recipeDigest: r.recipeDigest, bakeKey: r.key, lockDigest: r.lockIntegrity, artifacts,
    reportPath: storePath(path.join(cacheDir, "artifacts", r.key, "result.json")), systemdStub: r.systemdStub,
    rootfs: r.rootfs, rootHash: r.rootHash,
    ...(r.packages?.length ? { packages: { image: pinsOf(r.packages), initrd: pinsOf(r.initrdPackages ?? []) } } : {}),
  };
}

const pinsOf = (l: BakeResult["packages"]) => l.map((p) => `${p.name}=${p.version}`).sort();

/** Artifacts whose file is gone or has another size than recorded. */
export function missingArtifacts(artifacts: Record<string, ArtifactOut> | undefined): string[] {
  return Object.entries(artifacts ?? {}).filter(([, a]) => {
    const p = loadPath(a.path);
    return !existsSync(p) || statSync(p).size !== a.size;
  }).map(([k]) => k);
}

async function runBake(a: ImageArgsT, name: string): Promise<ImageComputed> {
  const img = image(a);
  log(name, `baking profile ${a.profile} (mkosi; minutes when cold, a cache hit otherwise)…`);
  const t0 = Date.now();
  const r = await bake({ recipe: img.recipe, projectDir: img.projectDir }, bakeOptions(a));
  log(name, `${r.cacheHit ? "cache hit" : "baked"} in ${((Date.now() - t0) / 1000).toFixed(1)} s: key ${r.key.slice(0, 12)}…, systemd-stub ${r.systemdStub ?? "?"}`);
  return computedFromBake(r, cacheDirOf(a));
}

const COMPUTED_KEYS = ["stateVersion", "recipeDigest", "bakeKey", "lockDigest", "artifacts", "reportPath", "systemdStub", "rootfs", "rootHash", "packages", "missing"];

function userInputs(news: Record<string, unknown>): Record<string, unknown> {
  return omit(news, COMPUTED_KEYS);
}

export const imageProvider = {
  async check(olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ inputs: Record<string, unknown>; failures?: CheckFailure[] }> {
    const start = checkStart(ImageArgs, news, COMPUTED_KEYS);
    if (start.done) return start.done;
    const { inputs, value: a } = start;
    try {
      const old = parseState(ImageState, olds, "TdxImage") as Partial<ImageComputed>;
      const img = image(a);
      const plan = await planBake({ recipe: img.recipe, projectDir: img.projectDir }, bakeOptions(a));
      // Unchanged: reuse what the last run computed (no cache lookup, no bake).
      if (plan.key && old.bakeKey === plan.key && old.artifacts && !missingArtifacts(old.artifacts).length) {
        return { inputs: { ...inputs, ...pick(old) } };
      }
      let computed: ImageComputed;
      if (plan.cached) computed = computedFromBake(plan.cached, cacheDirOf(a));
      else if (a.bakeOnPreview) computed = await runBake(a, "TdxImage");
      else computed = { stateVersion: IMAGE_STATE_VERSION, recipeDigest: plan.recipeDigest, bakeKey: plan.key ?? null };
      return { inputs: { ...inputs, ...computed } };
    } catch (e) {
      return { inputs, failures: [failureOf(e, "recipe")] };
    }
  },

  async diff(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ changes: boolean; replaces: string[]; deleteBeforeReplace: boolean }> {
    const o = guardedSync(() => parseState(ImageState, olds, "TdxImage")) as Partial<ImageComputed> & Record<string, unknown>;
    const n = news as Partial<ImageComputed> & Record<string, unknown>;
    let changes: boolean;
    if (isUnknown(declared(userInputs(n)))) changes = true;
    else if (o.missing?.length || missingArtifacts(o.artifacts).length) changes = true; // artifacts gone (cache cleaned, other machine): bake again
    else if (o.bakeKey && n.bakeKey) {
      // Same content, but the artifacts may live elsewhere now (another cache dir or machine): keep the paths true.
      changes = o.bakeKey !== n.bakeKey || (n.artifacts !== undefined && JSON.stringify(o.artifacts) !== JSON.stringify(n.artifacts));
    } else changes = digestOf(declared(userInputs(o))) !== digestOf(declared(userInputs(n)));
    return { changes, replaces: [], deleteBeforeReplace: false };
  },

  async create(inputs: Record<string, unknown>): Promise<{ id: string; outs: Record<string, unknown> }> {
    return guarded(async () => {
      const out = await ensureBaked(inputs);
      return { id: out.bakeKey ?? "unknown", outs: { ...userInputs(declared(inputs)), ...out } };
    });
  },

  async update(_id: string, _olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ outs: Record<string, unknown> }> {
    return guarded(async () => ({ outs: { ...userInputs(declared(news)), ...(await ensureBaked(news)) } }));
  },

  async read(id: string, props: Record<string, unknown>): Promise<{ id: string; props: Record<string, unknown> }> {
    const missing = missingArtifacts(guardedSync(() => parseState(ImageState, props, "TdxImage")).artifacts);
    const { missing: _m, ...rest } = declared(props);
    void _m;
    return { id, props: { ...rest, ...(missing.length ? { missing } : {}) } };
  },

  async delete(): Promise<void> {
    // Artifacts live in the shared, content-addressed cache (other stacks may use them) and in
    // the project's build/ directory, which belongs to the user: nothing to remove.
  },
};

function pick(o: Partial<ImageComputed>): ImageComputed {
  return pickKeys(o as Record<string, unknown>, COMPUTED_KEYS.filter((k) => k !== "missing")) as unknown as ImageComputed;
}

/** create/update: the checked inputs already carry a bake (bakeOnPreview) unless the cache lost it. */
async function ensureBaked(inputs: Record<string, unknown>): Promise<ImageComputed> {
  const a = requireInputs(ImageArgs, declared(userInputs(inputs)));
  const have = parseState(ImageState, inputs, "TdxImage") as Partial<ImageComputed>;
  if (have.artifacts && have.bakeKey && have.bakeKey !== UNKNOWN && !missingArtifacts(have.artifacts).length) return pick(have);
  return runBake(a, "TdxImage");
}
