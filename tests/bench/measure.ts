/**
 * measure() wall time per backend, next to `sha384sum` of the same UKI (one read, one hash)
 * and to systemd's own `systemd-measure calculate` (PCR 11 only) from the tools tree.
 * Needs a baked image: uses the newest artifact in the default cache.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync, realpathSync } from "node:fs";
import * as path from "node:path";
import { defaultCacheDir, measureBake, BakeResult } from "../../provider";
import { toolsTreeDir } from "../../provider/bake/toolsTree";
import { sandboxArgv } from "../../provider/bake/sandbox";

function newestBake(cache: string): BakeResult | undefined {
  const dir = path.join(cache, "artifacts");
  if (!existsSync(dir)) return undefined;
  const entries = readdirSync(dir).filter((n) => !n.startsWith(".") && existsSync(path.join(dir, n, "result.json")));
  entries.sort((a, b) => statSync(path.join(dir, b)).mtimeMs - statSync(path.join(dir, a)).mtimeMs);
  return entries.length ? (JSON.parse(readFileSync(path.join(dir, entries[0], "result.json"), "utf8")) as BakeResult) : undefined;
}

function time(runs: number, fn: () => unknown): number {
  const t: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    fn();
    t.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return t.sort((a, b) => a - b)[Math.floor(t.length / 2)];
}

async function timeAsync(runs: number, fn: () => Promise<unknown>): Promise<number> {
  const t: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    t.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return t.sort((a, b) => a - b)[Math.floor(t.length / 2)];
}

export async function measureBench(table: (t: string, h: string[], r: string[][]) => string): Promise<void> {
  const cache = defaultCacheDir();
  const bake = newestBake(cache);
  if (!bake) {
    console.log("\nmeasure benchmark skipped: no baked image in the cache (run a bake first).");
    return;
  }
  const uki = bake.artifacts.find((a) => a.target === "uki")!.path;
  const runs = 5;
  readFileSync(uki); // warm the page cache for everyone
  const base = time(runs, () => execFileSync("sha384sum", [uki]));
  const rows: string[][] = [["sha384sum of the UKI (baseline)", `${base.toFixed(3)} s`, "1.00×", "—"]];
  for (const backend of ["azure", "rtmr", "gcp"] as const) {
    const t = await timeAsync(runs, () => measureBake(bake, { backend, cacheDir: cache }));
    rows.push([`measure({backend: "${backend}"})`, `${t.toFixed(3)} s`, `${(t / base).toFixed(2)}×`, "≤ 1.5×"]);
  }
  const tree = toolsTreeDir(cache);
  if (existsSync(path.join(tree, "usr/lib/systemd/systemd-measure"))) {
    const dir = path.dirname(uki);
    const sections = ["linux", "osrel", "cmdline", "initrd", "uname", "sbat"];
    const ext = path.join(dir, ".sections");
    execFileSync("sh", ["-c", `mkdir -p '${ext}' && cd '${ext}' && for s in ${sections.join(" ")}; do objcopy -O binary --only-section=.$s '${uki}' $s 2>/dev/null || true; done`]);
    const cmd = sandboxArgv(realpathSync(tree), ["/usr/lib/systemd/systemd-measure", "calculate", ...sections.map((s) => `--${s}=/w/${s}`), "--bank=sha256", "--phase=enter-initrd"], [{ host: ext, inside: "/w" }]);
    const t = time(runs, () => execFileSync(cmd[0], cmd.slice(1), { stdio: "ignore" }));
    rows.push(["systemd-measure calculate (PCR 11 only, sections pre-extracted; includes sandbox start)", `${t.toFixed(3)} s`, `${(t / base).toFixed(2)}×`, "—"]);
  }
  console.log(table(`measure() on a ${(statSync(uki).size / 1048576).toFixed(0)} MiB UKI (median of ${runs})`, ["operation", "wall", "vs sha384sum", "target"], rows));
}
