/**
 * `tdxvm lock --refresh`: take Debian's updates on purpose, and see what they move. Drops the
 * lock's package pins, bakes (which re-pins what the archive now resolves to), and reports the
 * package changes (name, old → new, image or initrd) and the register changes they cause, each
 * register change with the packages behind it (ledger.ts diffMeasurements). The registers before
 * come from measurement files given (the committed ones, in CI) or from the current lock's bake
 * when the cache still has it.
 */
import * as path from "node:path";
import type { Image } from "../recipe/image";
import { DEFAULT_PROFILE } from "../recipe/resolve";
import { LOCK_FILE, lockFileOf, readLock } from ".";
import { diffMeasurements, formatPackageChange, pinDiff, Backend, Measurements, PackageChange, RegisterDiff } from "../measure/ledger";

export interface RefreshResult {
  lockFile: string;
  profile: string;
  packages: { image: PackageChange[]; initrd: PackageChange[] };
  /** Per backend: what the registers were compared against, and the changes. */
  registers: Array<{ backend: Backend; against: string; diffs: RegisterDiff[] }>;
  /** Things the reader should know (e.g. no earlier registers to compare with). */
  notes: string[];
}

export interface RefreshOptions {
  cacheDir: string;
  profile?: string;
  /** tdxvm measurements files to compare the new registers with. */
  against?: string[];
  archive?: string;
  /** The Debian snapshot the refreshed lock pins (undefined: keep the lock's). */
  snapshot?: string | null;
  quiet?: boolean;
  log?: (m: string) => void;
}

export async function refreshLock(img: Image, opts: RefreshOptions): Promise<RefreshResult> {
  const profile = opts.profile ?? DEFAULT_PROFILE;
  const ctx = { recipe: img.recipe, projectDir: img.projectDir };
  const before = await readLock(lockFileOf(img.projectDir)).catch(() => undefined);
  const { measureBake } = await import("../measure/api");
  const notes: string[] = [];
  const old: Array<{ against: string; m: Measurements }> = [];
  if (opts.against?.length) {
    const { readMeasurements } = await import("../measure/formats");
    for (const f of opts.against) old.push({ against: f, m: await readMeasurements(f) });
  } else if (before) {
    const { planBake } = await import("../bake");
    const plan = await planBake(ctx, { cacheDir: opts.cacheDir, profile }).catch(() => undefined);
    if (plan?.cached) {
      for (const backend of ["rtmr", "azure"] as const) old.push({ against: "the current lock's bake", m: await measureBake(plan.cached, { backend, cacheDir: opts.cacheDir }) });
    } else notes.push("the cache has no bake of the current lock, so no registers to compare with: pass --against <measurements files>");
  }
  opts.log?.("dropping the package pins and baking: the archive resolves every package anew");
  await img.lock({ cacheDir: opts.cacheDir, refresh: true, ...(opts.snapshot !== undefined ? { debian: { snapshot: opts.snapshot } } : {}) });
  const baked = await img.bake({ cacheDir: opts.cacheDir, profile, quiet: opts.quiet, archive: opts.archive, frozen: false });
  const after = await readLock(path.join(img.projectDir, LOCK_FILE));
  const registers: RefreshResult["registers"] = [];
  for (const o of old) {
    const now = await measureBake(baked, { backend: o.m.backend, cacheDir: opts.cacheDir });
    registers.push({ backend: o.m.backend, against: o.against, diffs: diffMeasurements(o.m, now) });
  }
  return {
    lockFile: path.join(img.projectDir, LOCK_FILE),
    profile,
    packages: {
      image: pinDiff(before?.packages?.[profile] ?? [], after.packages?.[profile] ?? []),
      initrd: pinDiff(before?.initrdPackages?.[profile] ?? [], after.initrdPackages?.[profile] ?? []),
    },
    registers,
    notes,
  };
}

/** The refresh as text: a package table, then per backend the registers that move and why. */
export function formatRefresh(r: RefreshResult): string {
  const lines: string[] = [];
  const rows = [...r.packages.image.map((c) => [c, "image"] as const), ...r.packages.initrd.map((c) => [c, "initrd"] as const)];
  lines.push(`${r.lockFile}: ${rows.length ? `${rows.length} package change(s)` : "no package changes"} (profile ${r.profile})`);
  if (rows.length) {
    const w = Math.max(...rows.map(([c]) => c.name.length), 7);
    lines.push(`  ${"package".padEnd(w)}  where   old → new`);
    for (const [c, where] of rows) lines.push(`  ${c.name.padEnd(w)}  ${where.padEnd(6)}  ${formatPackageChange(c).slice(c.name.length + 1)}`);
  }
  for (const g of r.registers) {
    lines.push("", `${g.backend}: ${g.diffs.length ? `${g.diffs.length} register(s) move` : "no register moves"} (against ${g.against})`);
    for (const d of g.diffs) {
      lines.push(`  ${d.register}: ${d.old === null ? "—" : `${d.old.slice(0, 16)}…`} → ${d.new === null ? "—" : `${d.new.slice(0, 16)}…`}`);
      for (const c of d.changes) lines.push(`    - ${c}`);
    }
  }
  for (const n of r.notes) lines.push("", `note: ${n}`);
  return lines.join("\n");
}
