/**
 * Every output the README's component table lists is registered by its component
 * (registerOutputs: what Pulumi records as the component's outputs), for every deployment target.
 * The list is read from README.md itself, so a documented output that is not registered fails here.
 */
import { promises as fs, readFileSync } from "node:fs";
import * as path from "node:path";
import { pulumiOp } from "../harness";
import { tempDir } from "../helpers";

jest.setTimeout(10 * 60_000);

/** The README's "Pulumi components" table: component → target ("*" for all) → output names. */
export function readmeOutputs(readme: string): Record<string, Record<string, string[]>> {
  const out: Record<string, Record<string, string[]>> = {};
  for (const line of readme.split("\n")) {
    const m = /^\| `(Tdx\w+)` \(`(tdxvm:index:\w+)`\) \|[^|]*\|(.*)\|\s*$/.exec(line);
    if (!m) continue;
    const byTarget: Record<string, string[]> = {};
    let target = "*";
    // Tokens in order: "qemu:" / "azure/gcp:" switch the target; `name` is an output; `a0`–`a3` a range.
    for (const t of m[3].matchAll(/([a-z/]+):(?!\/)|`([A-Za-z]\w*?)(\d*)`(?:–`\2(\d+)`)?/g)) {
      if (t[1]) target = t[1];
      else if (t[4] !== undefined) for (let i = Number(t[3]); i <= Number(t[4]); i++) (byTarget[target] ??= []).push(`${t[2]}${i}`);
      else (byTarget[target] ??= []).push(`${t[2]}${t[3]}`);
    }
    out[m[2]] = byTarget;
  }
  return out;
}

describe("component outputs", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await tempDir("tdxvm-outputs-");
  });
  afterAll(() => fs.rm(dir, { recursive: true, force: true }));

  it("the README table parses into every component's outputs", () => {
    const listed = readmeOutputs(readFileSync(path.resolve(__dirname, "../../README.md"), "utf8"));
    expect(Object.keys(listed).sort()).toEqual(["tdxvm:index:TdxDeployment", "tdxvm:index:TdxImage", "tdxvm:index:TdxMeasurement"]);
    expect(listed["tdxvm:index:TdxMeasurement"]["*"]).toEqual(expect.arrayContaining(["rtmr0", "rtmr1", "rtmr2", "rtmr3", "assumptions"]));
    expect(listed["tdxvm:index:TdxDeployment"]).toMatchObject({ "*": ["instances", "expected", "promotion", "allowList"], qemu: expect.arrayContaining(["isTd"]), "azure/gcp": ["imageRef"] });
  });

  it("each component registers every output the README lists, for every target", async () => {
    const r = await pulumiOp("preview", { program: "tests/provider/programs/componentOutputs.ts", project: "outputs", dir });
    expect(r.error).toBeUndefined();
    const registered = r.outputs.registered as Record<string, string[]>;
    const listed = readmeOutputs(readFileSync(path.resolve(__dirname, "../../README.md"), "utf8"));
    const missing: string[] = [];
    for (const [type, byTarget] of Object.entries(listed)) {
      for (const [target, names] of Object.entries(byTarget)) {
        const instances = Object.keys(registered).filter((k) => k === type || (k.startsWith(`${type}:`) && (target === "*" || target.split("/").includes(k.split(":").pop()!))));
        expect({ type, target, instances: instances.length > 0 }).toEqual({ type, target, instances: true });
        for (const i of instances) for (const n of names) if (!registered[i].includes(n)) missing.push(`${i}.${n}`);
      }
    }
    expect(missing).toEqual([]);
  });
});
