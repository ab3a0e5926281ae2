/**
 * The bake lock and the processes a bake starts: a lock is held by one process at a time, also
 * when several waiters find a dead holder's lock at once (only one of them cleans up after it);
 * a dead holder's lock is free at once; a timed-out child is killed even if it ignores SIGTERM;
 * and everything a sandbox starts dies with the process that started it.
 */
import { spawn } from "node:child_process";
import { existsSync, promises as fs, readFileSync, readdirSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { acquire } from "../../provider/bake/filelock";
import { runStreaming, sandboxArgv } from "../../provider/bake/sandbox";
import { procStartTime } from "../../provider/deploy/qemu";
import { toolsTreeDir } from "../../provider/bake/toolsTree";
import { defaultCacheDir } from "../../provider/pipeline";
import { TdxError } from "../../provider/errors";

const repoRoot = path.resolve(__dirname, "../..");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A node process running `code` with the repository's TypeScript loader; resolves once it printed `ready`. */
async function nodeChild(code: string): Promise<{ pid: number; kill: () => void; exited: Promise<void> }> {
  const child = spawn(process.execPath, ["-r", "@swc-node/register", "-e", code], { cwd: repoRoot, stdio: ["ignore", "pipe", "inherit"] });
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  await new Promise<void>((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => { out += d.toString(); if (out.includes("ready")) resolve(); });
    void exited.then(() => reject(new Error(`child exited before it was ready: ${out}`)));
  });
  return { pid: child.pid!, kill: () => child.kill("SIGKILL"), exited };
}

/** All descendants of `pid` (pid and start time), from /proc. */
function descendants(pid: number): Array<{ pid: number; start: number }> {
  const parent = new Map<number, number>();
  for (const n of readdirSync("/proc")) {
    if (!/^\d+$/.test(n)) continue;
    try {
      const stat = readFileSync(`/proc/${n}/stat`, "utf8");
      parent.set(Number(n), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch { /* gone */ }
  }
  const out: Array<{ pid: number; start: number }> = [];
  const walk = (p: number) => {
    for (const [c, pp] of parent) if (pp === p) { const start = procStartTime(c); if (start !== undefined) out.push({ pid: c, start }); walk(c); }
  };
  walk(pid);
  return out;
}

async function untilGone(procs: Array<{ pid: number; start: number }>, ms = 20_000): Promise<number[]> {
  const end = Date.now() + ms;
  let alive = procs;
  while (Date.now() < end && (alive = procs.filter((p) => procStartTime(p.pid) === p.start)).length) await sleep(100);
  return alive.map((p) => p.pid);
}

describe("bake lock (flock semantics)", () => {
  let dir: string;
  beforeEach(async () => { dir = await fs.mkdtemp(path.join(os.tmpdir(), "tdxvm-lock-")); });
  afterEach(() => fs.rm(dir, { recursive: true, force: true }));

  it("a dead holder's lock found by several waiters at once: exactly one cleans up, and no two ever hold it together", async () => {
    const file = path.join(dir, "mkosi.lock");
    await fs.writeFile(file, "999999999\n"); // left by a holder that died (pid gone)
    let inside = 0;
    let most = 0;
    const stale: number[] = [];
    await Promise.all(Array.from({ length: 6 }, async () => {
      const release = await acquire(file, { onStale: async (pid) => { stale.push(pid); await sleep(50); } });
      inside++;
      most = Math.max(most, inside);
      await sleep(30);
      inside--;
      await release();
    }));
    expect({ stale, most }).toEqual({ stale: [999999999], most: 1 });
    expect(readFileSync(file, "utf8")).toBe(""); // released cleanly: the next holder cleans nothing
  }, 60_000);

  it("a holder killed with SIGKILL frees the lock at once; the next holder (only) is told, and a waiter times out with E_BAKE", async () => {
    const file = path.join(dir, "mkosi.lock");
    const holder = await nodeChild(`require("./provider/bake/filelock").acquire(${JSON.stringify(file)}).then(() => { console.log("ready"); setInterval(() => {}, 1000); });`);
    const e = await acquire(file, { timeoutMs: 1000 }).then(() => undefined, (x: unknown) => x);
    expect(e).toBeInstanceOf(TdxError);
    expect((e as TdxError).code).toBe("E_BAKE");
    holder.kill();
    await holder.exited;
    const stale: number[] = [];
    const release = await acquire(file, { timeoutMs: 20_000, onStale: (pid) => { stale.push(pid); } });
    expect(stale).toEqual([holder.pid]);
    await release();
  }, 60_000);
});

describe("sandbox processes", () => {
  it("a timed-out child that ignores SIGTERM is killed with SIGKILL", async () => {
    const r = await runStreaming(["/bin/sh", "-c", "trap '' TERM; exec sleep 300"], { timeoutMs: 300, killAfterMs: 500 });
    expect(r.signal).toBe("SIGKILL");
  }, 30_000);

  it("streams both streams' lines (a bare CR ends one too, the last line needs no newline) and keeps a bounded tail", async () => {
    const seen: string[] = [];
    const r = await runStreaming(["/bin/sh", "-c", "echo one; echo two >&2; printf '3%%\\r4%%\\n'; printf last; exit 7"], { onLine: (l) => seen.push(l), tailLines: 3 });
    expect(r).toEqual({ code: 7, signal: null, tail: expect.any(Array) });
    expect([...seen].sort()).toEqual(["3%", "4%", "last", "one", "two"]);
    expect(seen.indexOf("3%")).toBeLessThan(seen.indexOf("4%"));
    expect(r.tail).toHaveLength(3);
    expect(seen).toEqual(expect.arrayContaining(r.tail));
  });

  it("an aborted run ends with SIGTERM; a command that cannot start rejects with its spawn error", async () => {
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 200);
    await expect(runStreaming(["sleep", "30"], { signal: ac.signal })).resolves.toMatchObject({ code: null, signal: "SIGTERM" });
    await expect(runStreaming(["/nonexistent/tdxvm-no-such-tool"])).rejects.toMatchObject({ code: "ENOENT" });
  });

  const tools = toolsTreeDir(defaultCacheDir());
  it("everything a sandbox started dies when the process that started it is SIGKILLed", async () => {
    // The tools tree is provisioned by the bake tests (and every bake); it is only read here.
    expect(existsSync(path.join(tools, "usr/bin/sleep"))).toBe(true);
    const argv = sandboxArgv(tools, ["/bin/sh", "-c", "sleep 300 & sleep 301 & echo started; wait"]);
    const parent = await nodeChild(`const s = require("./provider/bake/sandbox"); s.runStreaming(${JSON.stringify(argv)}, { onLine: (l) => l === "started" && console.log("ready") });`);
    let procs: Array<{ pid: number; start: number }> = [];
    for (let i = 0; i < 50 && procs.filter((p) => /^sleep 30[01]/.test(readFileSync(`/proc/${p.pid}/cmdline`, "utf8").replace(/\0/g, " "))).length < 2; i++) {
      procs = descendants(parent.pid);
      await sleep(100);
    }
    expect(procs.length).toBeGreaterThanOrEqual(4); // unshare, its child, two sleeps
    parent.kill();
    await parent.exited;
    const left = await untilGone(procs);
    for (const p of left) try { process.kill(p, "SIGKILL"); } catch { /* gone */ }
    expect(left).toEqual([]);
  }, 60_000);
});
