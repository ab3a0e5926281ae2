/**
 * A cross-process lock on a file: created with O_EXCL and holding the owner's pid. A lock whose
 * owner no longer runs is stale and taken over. Waiters poll (bakes take minutes; 200 ms is fine).
 */
import { promises as fs } from "node:fs";

/** Whether a process with this pid exists (EPERM: it does, owned by someone else). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

export interface LockOptions {
  timeoutMs?: number;
  onWait?: () => void;
  /** Called (before we own the lock) when the previous holder died without releasing it. */
  onStale?: (deadPid: number) => void | Promise<void>;
}

/**
 * One attempt to take the lock (a stale lock is taken over): the release function, or the pid
 * of the running process that holds it (0 while its owner has not written its pid yet).
 */
export async function tryAcquire(file: string, opts: Pick<LockOptions, "onStale"> = {}): Promise<{ release: () => Promise<void> } | { owner: number }> {
  for (;;) {
    try {
      const fh = await fs.open(file, "wx");
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      return {
        release: async () => {
          await fs.rm(file, { force: true });
        },
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    const owner = Number((await fs.readFile(file, "utf8").catch(() => "")).trim());
    if (!(Number.isInteger(owner) && owner > 0 && !alive(owner))) return { owner: Number.isInteger(owner) && owner > 0 ? owner : 0 };
    // Stale: remove only if it still names the dead owner (another waiter may have won).
    const again = Number((await fs.readFile(file, "utf8").catch(() => "")).trim());
    if (again === owner) {
      await opts.onStale?.(owner);
      await fs.rm(file, { force: true });
    }
  }
}

export async function acquire(file: string, opts: LockOptions = {}): Promise<() => Promise<void>> {
  const deadline = Date.now() + (opts.timeoutMs ?? 6 * 3600_000);
  let told = false;
  for (;;) {
    const r = await tryAcquire(file, opts);
    if ("release" in r) return r.release;
    if (Date.now() > deadline) throw new Error(`timed out waiting for lock ${file} (held by pid ${r.owner})`);
    if (!told) {
      opts.onWait?.();
      told = true;
    }
    await new Promise((res) => setTimeout(res, 200));
  }
}

export async function withFileLock<T>(file: string, fn: () => Promise<T>, opts: LockOptions = {}): Promise<T> {
  const release = await acquire(file, opts);
  try {
    return await fn();
  } finally {
    await release();
  }
}
