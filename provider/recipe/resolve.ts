/**
 * From the recipe (base layer + profile layers) to the flat, canonical description of one
 * profile's image. The digest of that description is what the lock pins and the bake cache
 * keys on. Canonical form: sets (packages, targets, debloat lists, secret names) sorted and
 * de-duplicated; sequences (run steps, modules, kernel command line) kept in call order.
 */
import { Recipe, LayerData, FileEntryData, SecretDeclData } from "./schema";
import { digestOf } from "./digest";
import { TdxError } from "../errors";

export const DEFAULT_PROFILE = "default";

export interface ResolvedProfile {
  schemaVersion: 1;
  profile: string;
  base: Recipe["base"];
  arch: Recipe["arch"];
  hostname: string;
  rootfs: Recipe["rootfs"];
  packages: string[];
  files: FileEntryData[];
  runs: LayerData["runs"];
  cmdline: string[];
  outputTargets: Recipe["outputTargets"];
  debloat: Recipe["debloat"];
  secrets: SecretDeclData[];
  modules: Recipe["modules"];
}

const sortedSet = <T extends string>(xs: readonly T[]): T[] => [...new Set(xs)].sort();

export function profileNames(recipe: Recipe): string[] {
  return [DEFAULT_PROFILE, ...Object.keys(recipe.profiles).sort()];
}

export function resolveProfile(recipe: Recipe, profile: string = DEFAULT_PROFILE): ResolvedProfile {
  const overlay: LayerData | undefined = profile === DEFAULT_PROFILE ? undefined : recipe.profiles[profile];
  if (profile !== DEFAULT_PROFILE && overlay === undefined) {
    throw new TdxError("E_VALIDATION", `unknown profile ${JSON.stringify(profile)}`, { hint: `Known profiles: ${profileNames(recipe).join(", ")}.` });
  }
  const files = new Map<string, FileEntryData>();
  for (const f of recipe.base_layer.files) files.set(f.path, f);
  for (const f of overlay?.files ?? []) files.set(f.path, f);
  return {
    schemaVersion: 1,
    profile,
    base: recipe.base,
    arch: recipe.arch,
    hostname: recipe.hostname,
    rootfs: recipe.rootfs,
    packages: sortedSet([...recipe.base_layer.packages, ...(overlay?.packages ?? [])]),
    files: [...files.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)),
    runs: [...recipe.base_layer.runs, ...(overlay?.runs ?? [])],
    cmdline: [...recipe.base_layer.cmdline, ...(overlay?.cmdline ?? [])],
    outputTargets: sortedSet(recipe.outputTargets),
    debloat: {
      ...recipe.debloat,
      pathsRemoveExtra: sortedSet(recipe.debloat.pathsRemoveExtra),
      pathsSkip: sortedSet(recipe.debloat.pathsSkip),
      unitsKeepExtra: sortedSet(recipe.debloat.unitsKeepExtra),
    },
    secrets: [...recipe.secrets].sort((a, b) => (a.name < b.name ? -1 : 1)),
    modules: recipe.modules,
  };
}

/** `sha256:<hex>` digest of one profile. Policy is not part of it: it governs how, not what. */
export function profileDigest(recipe: Recipe, profile: string = DEFAULT_PROFILE): string {
  return digestOf(resolveProfile(recipe, profile));
}

export function allProfileDigests(recipe: Recipe): Record<string, string> {
  return Object.fromEntries(profileNames(recipe).map((p) => [p, profileDigest(recipe, p)]));
}

/** Every source reference (file src) of every profile, for lock and policy. */
export function sourceRefs(recipe: Recipe): Array<{ ref: string; integrity?: string }> {
  const out = new Map<string, { ref: string; integrity?: string }>();
  for (const layer of [recipe.base_layer, ...Object.values(recipe.profiles)]) {
    for (const f of layer.files) if (f.source.kind === "src") out.set(`${f.source.ref}\0${f.source.integrity ?? ""}`, { ref: f.source.ref, integrity: f.source.integrity });
  }
  return [...out.values()].sort((a, b) => (a.ref < b.ref ? -1 : a.ref > b.ref ? 1 : 0));
}
