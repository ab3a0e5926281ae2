/**
 * `pulumi preview` of an unchanged stack, engine-free (tests/harness): per-resource check+diff
 * time through the real dynamic-provider host, target ≤ 0.3 s per resource and no bake; the
 * baseline is a preview of an empty program in the same run (process, SDK and host start-up).
 * Needs the example image baked (a cache hit; the first run bakes it).
 */
import { mkdtempSync, rmSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { pulumiOp } from "../harness";

export async function previewBench(table: (t: string, h: string[], r: string[][]) => string): Promise<void> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "tdxvm-bench-preview-"));
  const empty = mkdtempSync(path.join(os.tmpdir(), "tdxvm-bench-empty-"));
  try {
    const up = await pulumiOp("up", { program: "tests/bench/programs/imageAndMeasurements.ts", dir, project: "bench" });
    if (!up.ok) throw new Error(`bench up failed: ${up.error}`);
    const runs = 3;
    const base: number[] = [];
    const previews = [];
    for (let i = 0; i < runs; i++) {
      base.push((await pulumiOp("preview", { program: "tests/bench/programs/empty.ts", dir: empty, project: "bench-empty" })).seconds);
      previews.push(await pulumiOp("preview", { program: "tests/bench/programs/imageAndMeasurements.ts", dir, project: "bench" }));
    }
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const rows: string[][] = [["empty program (baseline)", `${med(base).toFixed(2)} s`, "—", "—", "—"]];
    rows.push(["image + 2 measurements (unchanged)", `${med(previews.map((p) => p.seconds)).toFixed(2)} s`, `${(med(previews.map((p) => p.seconds)) / med(base)).toFixed(2)}×`, "—", previews.every((p) => !p.stdout.includes("baking")) ? "no bake" : "BAKED"]);
    const names = [...new Set(previews[0].events.map((e) => e.urn.split("::").pop()!))];
    const first = names[0];
    for (const n of names) {
      const ms = med(previews.map((p) => p.events.find((e) => e.urn.endsWith(`::${n}`))!.ms));
      const step = previews[0].events.find((e) => e.urn.endsWith(`::${n}`))!.step;
      rows.push([`  ${n}: check + diff (${step})${n === first ? ", incl. loading tdxvm into the host" : ""}`, `${(ms / 1000).toFixed(3)} s`, "—", `${(ms / 300).toFixed(2)}× of 0.3 s`, ms <= 300 ? "yes" : "NO"]);
    }
    console.log(table(`Preview of an unchanged stack through the real provider host (median of ${runs})`, ["operation", "wall", "vs baseline", "vs target", "meets target"], rows));
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(empty, { recursive: true, force: true });
  }
}
