/**
 * examples/fleet as stacks on local VMs through the engine-free harness: a canary stack (one VM)
 * and a production stack (2 replicas in waves of 1) that promotes from it — it expects exactly the
 * measurement the canary's VM proved (its `promotion` output, read with a StackReference). Every
 * gate is real attestation (each VM's agent proves its image with a swtpm quote bound to a fresh
 * nonce and its TLS key). A production rollout of an image the canary never attested is refused
 * at its first wave — nothing sent, the second wave untouched, the old VMs still running and still
 * passing attestation.
 */
import { promises as fs, existsSync } from "node:fs";
import * as path from "node:path";
import { pulumiOp, OpResult } from "../harness";
import { loadState, unwrap } from "../harness/engine";
import { vmRunning } from "../../provider/deploy/qemu";
import { attest } from "../../provider/attest";
import { fromComputed } from "../../provider/dynamic/measurement";
import { tempDir, TEST_OWNER_KEY } from "../helpers";
import type { Promotion } from "../../components";
import { measurementIdOf, readAllowList } from "../../provider/deploy/allowList";

jest.setTimeout(90 * 60_000);

const CANARY = "my-org/tdxvm-fleet/canary";

describe("fleet as stacks on local VMs: canary → production promotion, waves gated by attestation", () => {
  let canaryDir: string;
  let prodDir: string;
  const token = "fleet-api-token-0123456789";
  const op = (dir: string, stack: string, o: "up" | "destroy", config: Record<string, string> = {}) => pulumiOp(o, {
    program: "examples/fleet/index.ts", project: "tdxvm-fleet", stack, dir, stackRefs: { [CANARY]: canaryDir },
    config: { target: "qemu", gateIntervalSeconds: "2", ...config }, secretConfig: { apiToken: token, ownerKey: TEST_OWNER_KEY },
  });
  const canary = (o: "up" | "destroy", config: Record<string, string> = {}) => op(canaryDir, "canary", o, { replicas: "1", allowListFile: path.join(canaryDir, "allow.json"), ...config });
  const prod = (o: "up" | "destroy", config: Record<string, string> = {}) => op(prodDir, "prod-eu", o, { replicas: "2", batchSize: "1", promoteFrom: CANARY, allowListFile: path.join(prodDir, "allow.json"), ...config });
  /** What the verifiers of a stack read: the ids in its published allow-list. */
  const published = async (dir: string) => ((await readAllowList(path.join(dir, "allow.json"), "fleet")) ?? []).map((x) => x.id);
  const vms = async (dir: string) => (await loadState(path.join(dir, "state.json"))).resources.filter((r) => r.type.endsWith("tdxvm:QemuVm"));
  const at = (r: OpResult, urnEnd: string, step: string) => r.events.find((e) => e.urn.endsWith(`::${urnEnd}`) && e.step === step)?.at ?? -1;
  let promotion: Promotion;

  beforeAll(async () => {
    canaryDir = await tempDir("tdxvm-fleet-canary-");
    prodDir = await tempDir("tdxvm-fleet-prod-");
  });
  afterAll(async () => {
    for (const [dir, run] of [[prodDir, prod], [canaryDir, canary]] as const) {
      if (dir && existsSync(path.join(dir, "state.json"))) await run("destroy").catch(() => undefined);
      if (dir) await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("production cannot promote from a canary that has not proved anything", async () => {
    const r = await prod("up");
    expect(r.ok).toBe(false);
    expect(r.error).toMatch(/unknown stack "my-org\/tdxvm-fleet\/canary"|has no promotion/);
    expect(await vms(prodDir)).toEqual([]);
  });

  it("canary up: its VM attests, and the stack exports the promotion (image, measurement, which VM proved it, when)", async () => {
    const r = await canary("up");
    expect(r.error).toBeUndefined();
    promotion = unwrap(r.outputs.promotion) as Promotion;
    expect(promotion).toMatchObject({ version: 1, stack: "canary", image: { bakeKey: expect.stringMatching(/^[0-9a-f]{64}$/) }, measurement: { backend: "azure" } });
    expect(promotion.attestedBy).toEqual([{ vm: "fleet", issuer: "tpm", spkiSha256: expect.stringMatching(/^[0-9a-f]{64}$/), attestedAt: expect.any(String), waived: expect.arrayContaining([expect.stringMatching(/^PCR0: /)]) }]);
    expect(promotion.measurement.registers.PCR11).toMatch(/^[0-9a-f]{64}$/);
    // Its verifiers accept exactly what its VM proved, published and exported.
    const id = measurementIdOf(fromComputed(promotion.measurement as never, "azure")!);
    expect(await published(canaryDir)).toEqual([id]);
    const allow = unwrap(r.outputs.allowList) as { ids: string[]; flashbots: string; constellation: string; trustee: string };
    expect(allow.ids).toEqual([id]);
    expect(JSON.parse(allow.flashbots)[0].measurements["11"].expected_any).toEqual([promotion.measurement.registers.PCR11]);
  });

  it("production promoted from the canary: expects exactly the canary's proved registers; wave 2 starts only after wave 1 attested", async () => {
    const r = await prod("up");
    expect(r.error).toBeUndefined();
    expect(unwrap(r.outputs.expectedRegisters)).toEqual(promotion.measurement.registers);
    expect(r.events.filter((e) => e.type.endsWith("VmAttestation")).map((e) => e.step)).toEqual(["create", "create"]);
    expect(at(r, "fleet-1", "create")).toBeGreaterThan(at(r, "fleet-0-attest", "create"));
    const state = await loadState(path.join(prodDir, "state.json"));
    const vm1 = state.resources.find((x) => x.urn.endsWith("::fleet-1"))!;
    expect(vm1.dependencies).toContain(state.resources.find((x) => x.urn.endsWith("::fleet-0-attest"))!.urn);
    expect((await vms(prodDir)).map((v) => vmRunning(v.outputs as never))).toEqual([true, true]);
    expect((unwrap(r.outputs.promotion) as Promotion).attestedBy.map((a) => a.vm)).toEqual(["fleet-0", "fleet-1"]);
    expect(await published(prodDir)).toEqual(await published(canaryDir));
  });

  it("a production rollout of an image the canary never attested stops at the first wave: refused, nothing sent, old VMs running and attesting", async () => {
    const old = await vms(prodDir);
    const r = await prod("up", { cmdline: "tdxvm.role=unreviewed" });
    expect(r.ok).toBe(false);
    expect(r.error).toMatch(/E_ATTESTATION: the VM at .* failed attestation \(tpm\); nothing was sent/);
    expect(r.error).toMatch(/PCR11/);
    // Only wave 1 was touched; wave 2 and the deletions never ran.
    expect(r.events.filter((e) => e.type.endsWith("tdxvm:QemuVm")).map((e) => [e.urn.split("::").pop(), e.step])).toEqual([["fleet-0", "create-replacement"]]);
    expect(r.events.filter((e) => e.step.startsWith("delete"))).toEqual([]);
    expect(r.stdout).not.toContain("delivered");
    for (const v of old) expect(vmRunning(v.outputs as never)).toBe(true);
    // The VMs it would have replaced still prove the promoted measurement, and the stack still exports the last good promotion.
    const st = await loadState(path.join(prodDir, "state.json"));
    const atts = st.resources.filter((x) => x.type.endsWith("VmAttestation") && !x.pendingDelete).map((x) => unwrap(x.outputs) as { endpoint: string; expected: never; target: string });
    const oldIds = old.map((v) => v.id);
    const olds = atts.filter((a) => oldIds.includes(a.target));
    expect(olds).toHaveLength(2);
    for (const a of olds) expect((await attest(a.endpoint, fromComputed(a.expected, "azure")!)).ok).toBe(true);
    expect((unwrap(st.outputs.promotion) as Promotion).attestedBy.map((a) => a.vm)).toEqual(["fleet-0", "fleet-1"]);
    // No VM proved the new image: its verifiers were never told to accept it.
    expect(await published(prodDir)).toEqual(await published(canaryDir));
  });

  it("destroy stops every VM of both stacks, also the refused wave's replacement kept in state beside the VM it replaces", async () => {
    const before = [...(await vms(prodDir)), ...(await vms(canaryDir))];
    expect(before.length).toBe(4); // prod: fleet-0 (new, refused) + fleet-0 (old, pendingDelete) + fleet-1; canary: fleet
    for (const run of [prod, canary]) expect((await run("destroy")).error).toBeUndefined();
    for (const v of before) expect(vmRunning(v.outputs as never)).toBe(false);
    for (const dir of [prodDir, canaryDir]) expect((await loadState(path.join(dir, "state.json"))).resources).toEqual([]);
    for (const dir of [prodDir, canaryDir]) expect(existsSync(path.join(dir, "allow.json"))).toBe(false); // the deployment's list went with it
  });
});
