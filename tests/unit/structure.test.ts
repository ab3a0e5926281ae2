/**
 * The code's shape, as docs/design.md §1 promises it: no import cycles among provider/, agent/ and
 * components/ (a cycle — like the CLI ↔ attest one that used to be — makes load order matter and
 * drags whole subsystems into a process that needs one function), and each attestation issuer's
 * verifier half beside its agent half (agent/issuers/<issuer>.ts ↔ provider/attest/issuers/<issuer>.ts).
 */
import { readdirSync, readFileSync, existsSync, statSync } from "node:fs";
import * as path from "node:path";

const ROOT = path.join(__dirname, "..", "..");

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
    const rel = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...sources(rel));
    else if (e.name.endsWith(".ts") && !e.name.endsWith(".d.ts")) out.push(rel);
  }
  return out;
}

/** Relative imports that load code at run time: static imports/exports (not `import type`), import(), require(). */
function dependencies(file: string): string[] {
  const text = readFileSync(path.join(ROOT, file), "utf8");
  const out = new Set<string>();
  for (const m of text.matchAll(/(?:^|\n)[ \t]*((?:import|export)(?![ \t]+type\b)[^;]*?from[ \t]+"(\.[^"]+)")|import\("(\.[^"]+)"\)|require\("(\.[^"]+)"\)/g)) {
    const spec = m[2] ?? m[3] ?? m[4];
    const base = path.normalize(path.join(path.dirname(file), spec));
    const hit = [`${base}.ts`, path.join(base, "index.ts"), base].find((c) => existsSync(path.join(ROOT, c)) && statSync(path.join(ROOT, c)).isFile());
    if (hit) out.add(hit);
  }
  return [...out];
}

/** Strongly connected components with more than one file (Tarjan). */
function cycles(graph: Map<string, string[]>): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const c: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        c.push(w);
      } while (w !== v);
      if (c.length > 1) found.push(c.sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return found;
}

describe("code structure", () => {
  const files = [...sources("provider"), ...sources("agent"), ...sources("components")];
  const graph = new Map(files.map((f) => [f, dependencies(f)]));

  it("sees the imports it judges (the CLI loads the attestation verifier; the verifier loads its issuers)", () => {
    expect(graph.get("provider/cli.ts")).toEqual(expect.arrayContaining(["provider/attest/cli.ts", "provider/attest/client.ts"]));
    expect(graph.get("provider/attest/verify.ts")).toEqual(expect.arrayContaining(["provider/attest/issuers/tpm.ts", "provider/attest/issuers/azure.ts", "provider/attest/issuers/tdx.ts"]));
    // …and finds a cycle when there is one.
    expect(cycles(new Map([["a", ["b"]], ["b", ["c"]], ["c", ["a"]], ["d", ["a"]]]))).toEqual([["a", "b", "c"]]);
  });

  it("has no import cycles", () => {
    expect(cycles(graph)).toEqual([]);
  });

  it("puts each issuer's verifier half beside its agent half", () => {
    const agent = readdirSync(path.join(ROOT, "agent/issuers")).filter((f) => f !== "index.ts");
    expect(agent.length).toBeGreaterThanOrEqual(3);
    for (const f of agent) expect({ f, verifier: existsSync(path.join(ROOT, "provider/attest/issuers", f)) }).toEqual({ f, verifier: true });
  });
});
