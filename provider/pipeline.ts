/**
 * The library entry points behind Image.lock() / Image.emit(): lock a recipe, check it in
 * frozen mode, and emit the mkosi tree. Bake (mkosi run) builds on emit.
 */
import * as path from "node:path";
import { readFileSync } from "node:fs";
import { TdxError } from "./errors";
import { Recipe } from "./recipe/schema";
import { ContentStore, redactRef } from "./fetch";
import { createLock, readLock, writeLock, checkFrozen, checkBakePolicy, lockFileOf, LOCK_FILE, Lock, LockOptions } from "./lock";
import { PolicyWarning } from "./lock/policy";
import { compile, MkosiTree } from "./compile";
import { writeTree } from "./compile/write";

/** tdxvm's cache directory: $TDXVM_CACHE_DIR, else $XDG_CACHE_HOME/tdxvm, else ~/.cache/tdxvm (register.js keeps compiled JavaScript there too). */
export function defaultCacheDir(): string {
  return (require("./register") as { defaultCacheDir(): string }).defaultCacheDir();
}

export interface ProjectContext { recipe: Recipe; projectDir: string }

export interface LockCallOptions {
  cacheDir?: string; debian?: LockOptions["debian"]; tools?: LockOptions["tools"]; onWarning?: (w: PolicyWarning) => void;
  /** Drop the previous lock's package pins (`tdxvm lock --refresh`). */
  refresh?: boolean;
}

/** Lock the recipe into tdx.lock beside it (a legacy build/tdx.lock is read as the previous lock). */
export async function lockRecipe(ctx: ProjectContext, opts: LockCallOptions = {}): Promise<Lock> {
  const file = path.join(ctx.projectDir, LOCK_FILE);
  const previous = await readLock(lockFileOf(ctx.projectDir)).catch(() => undefined);
  const { lock, warnings } = await createLock(ctx.recipe, { projectDir: ctx.projectDir, cacheDir: opts.cacheDir ?? defaultCacheDir(), debian: opts.debian, tools: opts.tools, previous, refresh: opts.refresh });
  for (const w of warnings) (opts.onWarning ?? ((x: PolicyWarning) => console.error(`tdxvm: warning (${x.rule}): ${x.message}`)))(w);
  await writeLock(file, lock);
  return lock;
}

export interface EmitOptions extends LockCallOptions {
  frozen?: boolean;
  /** Where the mkosi tree is written (default <project>/build/mkosi). */
  outDir?: string;
}

export interface EmitResult { dir: string; lock: Lock; tree: MkosiTree }

/**
 * Policy and lock checks, then compile — in memory: nothing is written. Frozen: the committed
 * lock must match; otherwise the lock is computed afresh (keeping the previous lock's pins).
 */
export async function compileRecipe(ctx: ProjectContext, opts: LockCallOptions & { frozen?: boolean } = {}): Promise<{ lock: Lock; tree: MkosiTree; warnings: PolicyWarning[] }> {
  const frozen = opts.frozen ?? false;
  checkBakePolicy(ctx.recipe, frozen);
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  const file = lockFileOf(ctx.projectDir);
  let lock: Lock;
  let warnings: PolicyWarning[] = [];
  if (frozen) {
    lock = await readLock(file);
    await checkFrozen(ctx.recipe, lock, { projectDir: ctx.projectDir, cacheDir });
  } else {
    const previous = await readLock(file).catch(() => undefined);
    ({ lock, warnings } = await createLock(ctx.recipe, { projectDir: ctx.projectDir, cacheDir, debian: opts.debian, tools: opts.tools, previous }));
  }
  return { lock, tree: compileFromStore(ctx.recipe, lock, cacheDir), warnings };
}

/** Policy and lock checks, then compile, then write the lock (unless frozen) and the tree. */
export async function emitRecipe(ctx: ProjectContext, opts: EmitOptions = {}): Promise<EmitResult> {
  const frozen = opts.frozen ?? false;
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  let tree: MkosiTree;
  let lock: Lock;
  if (frozen) ({ lock, tree } = await compileRecipe(ctx, { ...opts, cacheDir }));
  else {
    checkBakePolicy(ctx.recipe, frozen);
    lock = await lockRecipe(ctx, { ...opts, cacheDir });
    tree = compileFromStore(ctx.recipe, lock, cacheDir);
  }
  const dir = opts.outDir ?? path.join(ctx.projectDir, "build", "mkosi");
  await writeTree(tree, dir);
  return { dir, lock, tree };
}

/** Compile with sources read from the content store by their locked sha256. */
export function compileFromStore(recipe: Recipe, lock: Lock, cacheDir: string): MkosiTree {
  const store = new ContentStore(path.join(cacheDir, "content"));
  const byRef = new Map(lock.inputs.map((i) => [i.ref, i]));
  return compile({
    recipe,
    lock,
    source: (src) => {
      const ref = redactRef(src); // the lock names sources without URL credentials
      const input = byRef.get(ref);
      if (!input) throw new TdxError("E_LOCKFILE", `source ${ref} is not in the lock`, { hint: "Run img.lock() again." });
      const hex = Buffer.from(input.sha256.slice("sha256-".length), "base64").toString("hex");
      try {
        return readFileSync(store.entryPath("sha256", hex));
      } catch {
        throw new TdxError("E_FETCH", `source ${ref} (locked as ${input.sha256}) is not in the content store ${store.dir}`, { hint: "Run img.lock() once online to fill the cache, or copy the cache directory." });
      }
    },
  });
}
