/**
 * The engine-free harness behaves like the Pulumi engine where tdxvm depends on it (sources in
 * pulumi/pulumi: pkg/engine/project.go getPwdMain, pkg/resource/deploy/step_generator.go,
 * pkg/resource/deploy/step.go RefreshStep, sdk/nodejs/cmd/dynamic-provider/index.ts): a small
 * dynamic provider (programs/parity.ts) in the real provider host records what it is asked.
 */
import { promises as fs, readFileSync } from "node:fs";
import * as path from "node:path";
import { pulumiOp, OpResult } from "../harness";
import { deleteOrder, isSecret, ResourceState } from "../harness/engine";
import { tempDir } from "../helpers";

jest.setTimeout(5 * 60_000);

interface Call { m: string; name: string; olds?: Record<string, unknown>; news?: Record<string, unknown>; cwd?: string }

describe("harness ↔ engine parity (programs/parity.ts)", () => {
  let dir: string;
  let log: string;
  const op = (o: "up" | "refresh" | "destroy", v: string) => pulumiOp(o, { program: "tests/provider/programs/parity.ts", project: "parity", dir, config: { v, log } });
  const steps = (r: OpResult, name: string) => r.events.filter((e) => e.urn.endsWith(`::${name}`)).map((e) => e.step);
  const calls = (): Call[] => readFileSync(log, "utf8").trim().split("\n").map((l) => JSON.parse(l) as Call);

  beforeAll(async () => {
    dir = await tempDir("tdxvm-parity-");
    log = path.join(dir, "calls.jsonl");
  });
  afterAll(() => fs.rm(dir, { recursive: true, force: true }));

  it("the program and the provider host run in the directory of the program's main file", async () => {
    const r = await op("up", "1");
    expect(r.error).toBeUndefined();
    const programDir = path.resolve(__dirname, "programs");
    expect(r.outputs).toMatchObject({ programCwd: programDir, hostCwd: programDir });
    expect(calls().filter((c) => c.m === "create").map((c) => c.cwd)).toEqual(Array(6).fill(programDir));
  });

  it("an explicit deleteBeforeReplace (false) overrides the provider's delete-first; without it the provider's answer holds", async () => {
    const r = await op("up", "2");
    expect(r.error).toBeUndefined();
    expect(steps(r, "dbrFalse")).toEqual(["create-replacement", "delete-replaced"]);
    expect(r.events.find((e) => e.urn.endsWith("::dbrFalse"))!.deleteBeforeReplace).toBe(false);
    expect(steps(r, "dbrProvider")).toEqual(["delete-replaced", "create-replacement"]);
    // replaceOnChanges does nothing when the dynamic provider's diff answers changes: true itself …
    expect(steps(r, "rocExplicit")).toEqual(["update"]);
    // … and replaces when the diff leaves the verdict to the engine, which then diffs the inputs.
    expect(steps(r, "rocUnknown")).toEqual(["create-replacement", "delete-replaced"]);
    expect(r.events.find((e) => e.urn.endsWith("::rocUnknown"))!.replaces).toEqual(["v"]);
    expect(steps(r, "steady")).toEqual(["same"]);
  });

  it("a diff that leaves `changes` unset is no change when the inputs are equal", async () => {
    const r = await op("up", "2");
    expect(r.error).toBeUndefined();
    expect(steps(r, "rocUnknown")).toEqual(["same"]);
  });

  it("refresh: Read, then Diff(refreshed outputs, old inputs) decides whether the resource drifted", async () => {
    const before = calls().length;
    const r = await op("refresh", "2");
    expect(r.error).toBeUndefined();
    const read = (name: string) => r.events.find((e) => e.urn.endsWith(`::${name}`) && e.step === "read")!;
    // `seen` moved on every resource, but only the provider's diff decides: `drifting` changed `v`.
    expect(read("steady").changes).toBe(false);
    expect(read("dbrFalse").changes).toBe(false);
    expect(read("drifting").changes).toBe(true);
    const diff = calls().slice(before).find((c) => c.m === "diff" && c.name === "drifting")!;
    expect(diff.olds).toMatchObject({ v: "fixed-drifted", seen: 1 }); // the refreshed outputs
    expect(diff.news).toMatchObject({ v: "fixed", mode: "update" }); // the old inputs …
    expect(diff.news).not.toHaveProperty("seen"); // … which never held outputs
  });

  it("destroy", async () => {
    const r = await op("destroy", "2");
    expect(r.ok).toBe(true);
    expect(r.events.filter((e) => e.type.startsWith("pulumi-nodejs:dynamic")).map((e) => e.step)).toEqual(Array(6).fill("delete"));
  });
});

describe("harness destroy order (deleteOrder)", () => {
  const res = (urn: string, id: string, extra: Partial<ResourceState> = {}): ResourceState => ({
    urn, id, type: "t", custom: true, parent: "", dependencies: [], inputs: {}, outputs: {}, additionalSecretOutputs: [], replaceOnChanges: [], ...extra,
  });
  it("deletes every entry, also a replacement and the old resource sharing its URN, dependents first", () => {
    const vmNew = res("urn:vm", "vm-new");
    const vmOld = res("urn:vm", "vm-old", { pendingDelete: true });
    const gate = res("urn:gate", "gate-1", { dependencies: ["urn:vm"] });
    const order = deleteOrder([vmOld, vmNew, gate]).map((r) => r.id);
    expect([...order].sort()).toEqual(["gate-1", "vm-new", "vm-old"]);
    expect(order.indexOf("gate-1")).toBeLessThan(Math.min(order.indexOf("vm-new"), order.indexOf("vm-old")));
  });
});

describe("harness ↔ engine parity: StackReference (programs/stackRef.ts)", () => {
  let a: string;
  let b: string;
  beforeAll(async () => {
    [a, b] = [await tempDir("tdxvm-ref-a-"), await tempDir("tdxvm-ref-b-")];
  });
  afterAll(async () => {
    for (const d of [a, b]) await fs.rm(d, { recursive: true, force: true });
  });
  const up = (dir: string, stack: string, config: Record<string, string>) => pulumiOp("up", { program: "tests/provider/programs/stackRef.ts", project: "refs", stack, dir, config, stackRefs: { "org/refs/a": a } });

  it("reads another stack's outputs; a secret output stays secret; an unknown stack fails the update", async () => {
    expect((await up(a, "a", { plain: "from-a", hidden: "s3cret-value" })).error).toBeUndefined();
    const r = await up(b, "b", { ref: "org/refs/a" });
    expect(r.error).toBeUndefined();
    expect(r.outputs.plain).toBe("from-a");
    expect(r.outputs.hidden).toBe("[secret]"); // redacted in the result: marked secret in state
    const state = JSON.parse(await fs.readFile(path.join(b, "state.json"), "utf8")) as { outputs: Record<string, unknown> };
    expect(isSecret(state.outputs.hidden)).toBe(true);
    expect(JSON.stringify(state)).not.toContain("s3cret-value");
    const bad = await up(b, "b", { ref: "org/refs/nope" });
    expect([bad.ok, bad.error]).toEqual([false, expect.stringMatching(/unknown stack "org\/refs\/nope"/)]);
  });
});
