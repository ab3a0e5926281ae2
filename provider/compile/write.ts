import { promises as fs } from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { MkosiTree } from "./index";

/**
 * Materialise a tree at `dir`, replacing what was there: written into a sibling temp
 * directory (modes applied explicitly, umask-proof), then swapped in by rename.
 */
export async function writeTree(tree: MkosiTree, dir: string): Promise<void> {
  const parent = path.dirname(path.resolve(dir));
  await fs.mkdir(parent, { recursive: true });
  const tmp = path.join(parent, `.${path.basename(dir)}.${randomBytes(6).toString("hex")}.tmp`);
  try {
    await fs.mkdir(tmp, { mode: 0o755 });
    const dirs = new Set<string>();
    for (const rel of tree.keys()) for (let d = path.dirname(rel); d !== "."; d = path.dirname(d)) dirs.add(d);
    for (const d of [...dirs].sort()) {
      await fs.mkdir(path.join(tmp, d), { recursive: true });
      await fs.chmod(path.join(tmp, d), 0o755);
    }
    for (const [rel, e] of tree) {
      const p = path.join(tmp, rel);
      await fs.writeFile(p, e.data);
      await fs.chmod(p, e.mode);
    }
    const old = `${tmp}.old`;
    const had = await fs.rename(dir, old).then(() => true, (err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return false;
      throw err;
    });
    await fs.rename(tmp, dir);
    if (had) await fs.rm(old, { recursive: true, force: true });
  } catch (e) {
    await fs.rm(tmp, { recursive: true, force: true });
    throw e;
  }
}
