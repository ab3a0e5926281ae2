/**
 * The rollout driver's order logic and report (provider/deploy/rollout.ts). Real stacks through
 * it: tests/provider/fleetLocal.test.ts (canary → production on local VMs, a refused rollout).
 */
// The library entry's exports (what the README offers as `rolloutStacks` with your own `up`).
import { parseStacks, rolloutStacks, rolloutTable, UpStack } from "../../provider";
import { rowOf } from "../../provider/deploy/rollout";
import { tdxErrorOf } from "../helpers";

describe("parseStacks", () => {
  it("takes stack names in order, org/project/stack too", () => {
    expect(parseStacks("canary, prod-eu,my-org/fleet/prod-us")).toEqual(["canary", "prod-eu", "my-org/fleet/prod-us"]);
  });
  it("refuses empty names, odd characters and a stack named twice, with E_VALIDATION", async () => {
    for (const bad of ["", "a,,b", "a;rm -rf", "../x", "a,a"]) expect((await tdxErrorOf(() => parseStacks(bad))).code).toBe("E_VALIDATION");
  });
});

describe("rolloutStacks", () => {
  const outputs = (bakeKey: string, waves: number[], by: number) => ({ promotion: { image: { bakeKey }, attestedBy: Array.from({ length: by }, () => ({})) }, instances: waves.map((wave) => ({ wave })) });
  const refusal = "E_ATTESTATION: rollout refused at wave 2 of 3 (new VM vm-0123456789ab): the VM at 127.0.0.1:1 failed attestation (tpm); the new VM was stopped and removed, nothing was sent. Failed: PCR11: differs | PCR4: differs. The VM it was to replace keeps running";

  it("runs the stacks in order and stops at the first that fails; later ones are not run", async () => {
    const ran: string[] = [];
    const up: UpStack = async (stack) => {
      ran.push(stack);
      return stack === "prod-eu" ? { ok: false, outputs: {}, error: `failed to register new resource fleet-0 [pulumi-nodejs:dynamic/tdxvm:QemuVm]: 2 UNKNOWN: ${refusal}`, seconds: 12.4 } : { ok: true, outputs: outputs("ab".repeat(32), [0, 1, 1], 3), seconds: 3 };
    };
    const r = await rolloutStacks(["canary", "prod-eu", "prod-us"], up);
    expect(ran).toEqual(["canary", "prod-eu"]);
    expect(r).toMatchObject({ ok: false, stoppedAt: "prod-eu" });
    expect(r.rows.map((x) => [x.stack, x.image, x.waves, x.verdict, x.seconds])).toEqual([
      ["canary", "abababababab", "2/2", "attested by 3 VMs", 3],
      ["prod-eu", "—", "refused at 2/3", "REFUSED: PCR11, PCR4", 12],
      ["prod-us", "—", "—", "not run (stopped at prod-eu)", null],
    ]);
    const t = rolloutTable(r).split("\n");
    expect(t[0]).toMatch(/^stack\s+image\s+waves\s+verdict\s+duration$/);
    expect(t[3]).toMatch(/^prod-eu\s+—\s+refused at 2\/3\s+REFUSED: PCR11, PCR4\s+12 s$/);
    expect(t.at(-1)).toBe(`prod-eu: ${refusal}`);
  });

  it("an up that throws (no Pulumi CLI, a crashed host) is a failed row, not an exception; other failures keep their code", async () => {
    const r = await rolloutStacks(["a", "b"], async () => { throw new Error("E_DEPLOYMENT: pulumi not found"); });
    expect(r.rows.map((x) => [x.stack, x.verdict])).toEqual([["a", "FAILED (E_DEPLOYMENT)"], ["b", "not run (stopped at a)"]]);
    expect(rowOf("x", { ok: true, outputs: {}, seconds: 1 })).toMatchObject({ image: "—", waves: "—", verdict: "up (no attested VMs)" });
  });
});
