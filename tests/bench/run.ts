/**
 * npm run bench — prints tables; targets are checked here by eye and ratio, never in tests.
 * Each measured operation is shown next to a baseline measured in the same run.
 */
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Image, compile, createLock, writeTree } from "../../provider";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function time(runs: number, fn: () => unknown | Promise<unknown>): Promise<number> {
  const t: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    t.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return median(t);
}

export function table(title: string, head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => "| " + r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join(" | ") + " |";
  return [`\n${title}`, line(head), "|" + w.map((n, i) => (i === 0 ? "-".repeat(n + 2) : "-".repeat(n + 1) + ":")).join("|") + "|", ...rows.map(line)].join("\n");
}

async function recipeBench() {
  const dir = mkdtempSync(path.join(os.tmpdir(), "tdxvm-bench-"));
  const img = new Image({ base: "debian/trixie", projectDir: dir });
  for (let i = 0; i < 500; i++) img.install(`pkg-${i.toString(36)}-bench`);
  for (let i = 0; i < 1000; i++) img.file(`/opt/bench/d${i % 37}/file-${i}.conf`, { content: `key=${i}\n`.repeat(20), mode: 0o644 });
  const recipe = img.recipe;
  const { lock } = await createLock(recipe, { projectDir: dir, cacheDir: dir });
  const runs = 15;

  const baseDigest = await time(runs, () => createHash("sha256").update(JSON.stringify(recipe)).digest("hex"));
  const digest = await time(runs, () => img.digests());
  const compileT = await time(runs, () => compile({ recipe, lock, source: () => Buffer.alloc(0) }));
  const tree = compile({ recipe, lock, source: () => Buffer.alloc(0) });
  let n = 0;
  const baseWrite = await time(runs, () => {
    const out = path.join(dir, `raw-${n++}`);
    for (const [p, e] of tree) {
      mkdirSync(path.dirname(path.join(out, p)), { recursive: true });
      writeFileSync(path.join(out, p), e.data, { mode: e.mode });
    }
  });
  const emit = await time(runs, async () => writeTree(compile({ recipe, lock, source: () => Buffer.alloc(0) }), path.join(dir, "tree")));
  rmSync(dir, { recursive: true, force: true });
  const f = (s: number) => `${(s * 1000).toFixed(1)} ms`;
  const target = (s: number) => (s <= 0.2 ? "yes (≤ 200 ms)" : "NO (> 200 ms)");
  console.log(table(
    "Recipe with 1,000 files and 500 packages (median of 15 runs)",
    ["operation", "time", "baseline", "baseline time", "ratio", "meets target"],
    [
      ["digest (validate + resolve + canonical CBOR + SHA-256, all profiles)", f(digest), "JSON.stringify + SHA-256", f(baseDigest), `${(digest / baseDigest).toFixed(1)}×`, target(digest)],
      ["emit (recipe + lock → in-memory mkosi tree)", f(compileT), "—", "—", "—", target(compileT)],
      ["emit + write the tree to disk atomically", f(emit), "plain writeFileSync of the same tree", f(baseWrite), `${(emit / baseWrite).toFixed(2)}×`, "(disk-bound; no target)"],
    ],
  ));
}

async function main() {
  const only = process.argv[2];
  if (!only || only === "recipe") await recipeBench();
  if (!only || only === "measure") await (await import("./measure")).measureBench(table);
  if (!only || only === "preview") await (await import("./preview")).previewBench(table);
  if (!only || only === "attest") await (await import("./attest")).attestBench(table);
  if (!only || only === "bake") {
    if (process.getuid?.() !== 0) console.log("\nBake benchmark skipped: it needs root (sudo npm run bench).");
    else await (await import("./bake")).bakeBench(table);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
