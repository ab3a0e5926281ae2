/**
 * A cross-process lock on a file with flock(2) semantics: a child process (util-linux `flock`)
 * takes an exclusive flock on the file and holds it while it lives. The kernel grants it to one
 * holder at a time and drops it when that holder dies, so a dead holder's lock is free at once
 * and two waiters can never both take it over. The child dies with us: its stdin is our pipe
 * (EOF when we exit, however we exit) and `setpriv --pdeathsig SIGKILL` is set on it.
 *
 * The file itself is never removed (removing a flock file lets a late waiter lock an unlinked
 * inode). While held it names the holder's pid; a clean release empties it. A holder that finds
 * a pid in it therefore knows the previous holder died while holding: `onStale` runs then, while
 * the lock is held — only the holder ever cleans up after a dead one.
 */
import { promises as fs, readFileSync } from "node:fs";
import { TdxError } from "../errors";

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
  /** Called, holding the lock, when the previous holder died without releasing it. */
  onStale?: (deadPid: number) => void | Promise<void>;
}

/**
 * Take the lock: wait up to opts.timeoutMs (`wait`), or only try once. The release function, or
 * null when `wait` is false and another process holds it.
 */
async function lock(file: string, opts: LockOptions, wait: boolean): Promise<(() => Promise<void>) | null> {
  const timeoutS = Math.max(1, Math.ceil((opts.timeoutMs ?? 6 * 3600_000) / 1000));
  await (await fs.open(file, "a", 0o644)).close();
  // flock -F execs the shell, which keeps the lock fd: one process holds the lock. It says
  // "locked" once it has it and exits when its stdin ends (our release, or our death).
  const how = wait ? ["--timeout", String(timeoutS)] : ["--nonblock"];
  // execa: a spawn failure (no setpriv/flock) resolves as a failed result naming the command instead of an unheard "error".
  const { execa } = require("execa") as typeof import("execa");
  const holder = execa("setpriv", ["--pdeathsig", "SIGKILL", "--", "flock", "--exclusive", "--no-fork", ...how, "--conflict-exit-code", "75", file, "/bin/sh", "-c", "echo locked; read _ || true"], {
    stdin: "pipe", buffer: false, reject: false,
  });
  // Not execa's buffer: its maxBuffer would kill the holder, i.e. drop the lock, on a chatty stderr.
  let stderr = "";
  holder.stderr.on("data", (d: Buffer) => { if (stderr.length < 4096) stderr += d.toString(); });
  const exited = holder.then((r) => r.exitCode ?? null);
  const stderrOf = async () => stderr.trim() || (await holder).shortMessage;
  // Tell the caller it waits only when someone holds the lock (a holder's pid is in the file).
  const waiting = wait ? setTimeout(() => {
    let held = "";
    try { held = readFileSync(file, "utf8").trim(); } catch { /* unreadable: say nothing */ }
    if (held) opts.onWait?.();
  }, 500) : undefined;
  try {
    const got = await new Promise<boolean>((resolve) => {
      holder.stdout.once("data", () => resolve(true));
      void exited.then(() => resolve(false));
    });
    if (!got) {
      const code = await exited;
      if (code === 75 && !wait) return null;
      if (code === 75) throw new TdxError("E_BAKE", `timed out after ${timeoutS} s waiting for the lock ${file}`, { hint: "Another bake holds it (see `fuser` on the file); wait for it or stop it." });
      throw new TdxError("E_BAKE", `could not lock ${file} (flock exited ${code}: ${await stderrOf()})`, { hint: "tdxvm needs util-linux's flock and setpriv on the host." });
    }
  } finally {
    clearTimeout(waiting);
  }
  const release = async () => {
    await fs.writeFile(file, "").catch(() => undefined);
    holder.stdin.end();
    await exited;
  };
  try {
    const previous = (await fs.readFile(file, "utf8")).trim();
    if (previous) await opts.onStale?.(Number(previous));
    await fs.writeFile(file, `${process.pid}\n`);
  } catch (e) {
    holder.stdin.end();
    await exited;
    throw e;
  }
  return release;
}

export async function acquire(file: string, opts: LockOptions = {}): Promise<() => Promise<void>> {
  return (await lock(file, opts, true))!;
}

/**
 * One attempt to take the lock: the release function, or the pid of the process that holds it
 * (0 while it has not written its pid yet).
 */
export async function tryAcquire(file: string, opts: Pick<LockOptions, "onStale"> = {}): Promise<{ release: () => Promise<void> } | { owner: number }> {
  const release = await lock(file, opts, false);
  if (release) return { release };
  const owner = Number((await fs.readFile(file, "utf8").catch(() => "")).trim());
  return { owner: Number.isInteger(owner) && owner > 0 ? owner : 0 };
}

export async function withFileLock<T>(file: string, fn: () => Promise<T>, opts: LockOptions = {}): Promise<T> {
  const release = await acquire(file, opts);
  try {
    return await fn();
  } finally {
    await release();
  }
}
