import { mkdirSync, writeFileSync, chmodSync, renameSync, rmSync } from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { MkosiTree } from "./index";

/**
 * Materialise a tree at `dir`, replacing what was there: written into a sibling temp
 * directory (modes applied explicitly, umask-proof), then swapped in by rename. Synchronous
 * calls on purpose: thousands of small files are several times faster without a promise per call.
 */
export async function writeTree(tree: MkosiTree, dir: string): Promise<void> {
  const parent = path.dirname(path.resolve(dir));
  mkdirSync(parent, { recursive: true });
  const tmp = path.join(parent, `.${path.basename(dir)}.${randomBytes(6).toString("hex")}.tmp`);
  try {
    mkdirSync(tmp, { mode: 0o755 });
    chmodSync(tmp, 0o755);
    const dirs = new Set<string>();
    for (const rel of tree.keys()) for (let d = path.dirname(rel); d !== "." && !dirs.has(d); d = path.dirname(d)) dirs.add(d);
    for (const d of [...dirs].sort()) {
      mkdirSync(path.join(tmp, d));
      chmodSync(path.join(tmp, d), 0o755);
    }
    for (const [rel, e] of tree) {
      const p = path.join(tmp, rel);
      writeFileSync(p, e.data, { mode: e.mode });
      chmodSync(p, e.mode);
    }
    // Swap: move the current tree aside, move ours in. Another writer may swap in between
    // (two bakes of one project); then move theirs aside too and retry.
    for (let attempt = 0; ; attempt++) {
      const old = `${tmp}.old${attempt}`;
      try {
        renameSync(dir, old);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      }
      try {
        renameSync(tmp, dir);
        rmSync(old, { recursive: true, force: true });
        break;
      } catch (err) {
        rmSync(old, { recursive: true, force: true });
        const code = (err as NodeJS.ErrnoException).code;
        if ((code !== "ENOTEMPTY" && code !== "EEXIST") || attempt >= 10) throw err;
      }
    }
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}
