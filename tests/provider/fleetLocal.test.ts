/**
 * examples/fleet as stacks on local VMs through the engine-free harness, driven the way
 * `tdxvm rollout --stacks canary,prod-eu` drives them (provider/deploy/rollout.ts, with the harness
 * in place of the Automation API): a canary stack (one VM) and a production stack (2 replicas in
 * waves of 1) that promotes from it — it expects exactly the measurement the canary's VM proved
 * (its `promotion` output, read with a StackReference). Every gate is real attestation (each VM's
 * agent proves its image with a swtpm quote bound to a fresh nonce and its TLS key). A production
 * rollout of an image the canary never attested is refused at its first wave and rolled back
 * without a human: the refused VM is stopped and removed in its own create, nothing is sent, the
 * second wave is untouched, the old VMs stay exactly as they were and still pass attestation, and
 * the driver stops before the next stack. 5 boots.
 */
import { promises as fs, existsSync } from "node:fs";
import * as path from "node:path";
import { pulumiOp, harnessUp, OpResult } from "../harness";
import { loadState, unwrap } from "../harness/engine";
import { vmRunning } from "../../provider/deploy/qemu";
import { attest } from "../../provider/attest";
import { fromComputed } from "../../provider/dynamic/measurement";
import { tempDir, TEST_OWNER_KEY } from "../helpers";
import type { Promotion } from "../../components";
import { measurementIdOf, readAllowList } from "../../provider/deploy/allowList";
import { rolloutStacks, rolloutTable } from "../../provider/deploy/rollout";
import { defaultCacheDir } from "../../provider/pipeline";

jest.setTimeout(90 * 60_000);

const CANARY = "my-org/tdxvm-fleet/canary";

describe("fleet as stacks on local VMs: canary → production promotion, waves gated by attestation", () => {
  let canaryDir: string;
  let prodDir: string;
  const token = "fleet-api-token-0123456789";
  const opts = (dir: string, stack: string, config: Record<string, string> = {}) => ({
    program: "examples/fleet/index.ts", project: "tdxvm-fleet", stack, dir, stackRefs: { [CANARY]: canaryDir },
    config: { target: "qemu", gateIntervalSeconds: "2", ...config }, secretConfig: { apiToken: token, ownerKey: TEST_OWNER_KEY },
  });
  const canaryOpts = (config: Record<string, string> = {}) => opts(canaryDir, "canary", { replicas: "1", allowListFile: path.join(canaryDir, "allow.json"), ...config });
  const prodOpts = (config: Record<string, string> = {}) => opts(prodDir, "prod-eu", { replicas: "2", batchSize: "1", promoteFrom: CANARY, allowListFile: path.join(prodDir, "allow.json"), ...config });
  const canary = (o: "up" | "destroy", config: Record<string, string> = {}) => pulumiOp(o, canaryOpts(config));
  const prod = (o: "up" | "destroy", config: Record<string, string> = {}) => pulumiOp(o, prodOpts(config));
  /** What the verifiers of a stack read: the ids in its published allow-list. */
  const published = async (dir: string) => ((await readAllowList(path.join(dir, "allow.json"), "fleet")) ?? []).map((x) => x.id);
  const vms = async (dir: string) => (await loadState(path.join(dir, "state.json"))).resources.filter((r) => r.type.endsWith("tdxvm:QemuVm"));
  const at = (r: OpResult, urnEnd: string, step: string) => r.events.find((e) => e.urn.endsWith(`::${urnEnd}`) && e.step === step)?.at ?? -1;
  /** Processes whose command line names a VM's state directory (QEMU, swtpm). */
  const processesOf = async (vmId: string) => {
    const out: number[] = [];
    for (const pid of (await fs.readdir("/proc")).filter((x) => /^\d+$/.test(x))) {
      const cmd = await fs.readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
      if (cmd.includes(vmId)) out.push(Number(pid));
    }
    return out;
  };
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

  it("tdxvm rollout canary,prod-eu: the canary's VM attests and exports the promotion; production, promoted from it, expects exactly its proved registers; wave 2 starts only after wave 1 attested", async () => {
    const runs: Record<string, OpResult> = {};
    const log: string[] = [];
    const report = await rolloutStacks(["canary", "prod-eu"], harnessUp((stack) => (stack === "canary" ? canaryOpts() : prodOpts()), runs), (l) => log.push(l));
    expect(runs.canary.error).toBeUndefined();
    expect(runs["prod-eu"].error).toBeUndefined();
    expect(report.ok).toBe(true);
    expect(log).toContain("== canary: up");
    expect(log.some((l) => l.startsWith("[prod-eu] "))).toBe(true);

    // The canary: its VM proved the image; the promotion names the image, the measurement, who proved it, when.
    const r = runs.canary;
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

    // Production: promoted from the canary, in waves.
    const p = runs["prod-eu"];
    expect(unwrap(p.outputs.expectedRegisters)).toEqual(promotion.measurement.registers);
    expect(p.events.filter((e) => e.type.endsWith("VmAttestation")).map((e) => e.step)).toEqual(["create", "create"]);
    expect(at(p, "fleet-1", "create")).toBeGreaterThan(at(p, "fleet-0-attest", "create"));
    const state = await loadState(path.join(prodDir, "state.json"));
    const vm1 = state.resources.find((x) => x.urn.endsWith("::fleet-1"))!;
    expect(vm1.dependencies).toContain(state.resources.find((x) => x.urn.endsWith("::fleet-0-attest"))!.urn);
    expect((await vms(prodDir)).map((v) => vmRunning(v.outputs as never))).toEqual([true, true]);
    expect((unwrap(p.outputs.promotion) as Promotion).attestedBy.map((a) => a.vm)).toEqual(["fleet-0", "fleet-1"]);
    expect(await published(prodDir)).toEqual(await published(canaryDir));
    // Every new local VM was admitted in its own create before its attestation resource ran.
    expect(p.hostLog).toMatch(/admitted to wave 1 of 2: attested \(tpm\)/);
    expect(p.hostLog).toMatch(/admitted to wave 2 of 2: attested \(tpm\)/);

    // The driver's report: one row per stack, the same image, waves done, who attested.
    const image = promotion.image.bakeKey!.slice(0, 12);
    expect(report.rows.map((x) => [x.stack, x.image, x.waves, x.verdict])).toEqual([["canary", image, "1/1", "attested by 1 VM"], ["prod-eu", image, "2/2", "attested by 2 VMs"]]);
    expect(rolloutTable(report).split("\n")[0]).toMatch(/^stack\s+image\s+waves\s+verdict\s+duration$/);
  });

  it("a production rollout of an image the canary never attested is refused at its first wave and rolled back without a human; the driver stops; a second up has nothing left to clean", async () => {
    const old = await vms(prodDir);
    const oldState = await loadState(path.join(prodDir, "state.json"));
    const runs: Record<string, OpResult> = {};
    const report = await rolloutStacks(["prod-eu", "prod-us"], harnessUp(() => prodOpts({ cmdline: "tdxvm.role=unreviewed" }), runs));
    const r = runs["prod-eu"];
    expect(r.ok).toBe(false);
    expect(r.error).toMatch(/E_ATTESTATION: rollout refused at wave 1 of 2 \(new VM vm-[0-9a-f]{12}\): the VM at .* failed attestation \(tpm\); the new VM is stopped and removed, nothing was sent/);
    expect(r.error).toMatch(/PCR11/);
    // The driver: prod-eu refused at its first wave, with the failing register; prod-us never run.
    expect(report).toMatchObject({ ok: false, stoppedAt: "prod-eu" });
    expect(report.rows.map((x) => [x.stack, x.waves, x.verdict])).toEqual([["prod-eu", "refused at 1/2", expect.stringMatching(/^REFUSED: .*PCR11/)], ["prod-us", "—", "not run (stopped at prod-eu)"]]);
    expect(runs["prod-us"]).toBeUndefined();
    // Under the table, the failing stack's error from its code on (the engine's "failed to register …" wrapping dropped).
    expect(rolloutTable(report)).toMatch(/\nprod-eu: E_ATTESTATION: rollout refused at wave 1 of 2 /);

    // Rolled back: the refused VM is gone — no process, no state directory — and nothing of it is in the stack's state.
    const refused = /new VM (vm-[0-9a-f]{12})/.exec(r.error!)![1];
    expect(await processesOf(refused)).toEqual([]);
    expect(existsSync(path.join(defaultCacheDir(), "vms", refused))).toBe(false);
    expect(r.events.filter((e) => e.type.endsWith("tdxvm:QemuVm") || e.step.startsWith("delete"))).toEqual([]);
    expect(r.stdout).not.toContain("delivered");
    // The old VMs stay exactly as they were: same resources, none scheduled for deletion, still running, still proving the promoted measurement.
    const st = await loadState(path.join(prodDir, "state.json"));
    expect(st.resources.filter((x) => x.pendingDelete)).toEqual([]);
    expect((await vms(prodDir)).map((v) => v.id)).toEqual(old.map((v) => v.id));
    for (const v of old) expect(vmRunning(v.outputs as never)).toBe(true);
    const atts = st.resources.filter((x) => x.type.endsWith("VmAttestation")).map((x) => unwrap(x.outputs) as { endpoint: string; expected: never; target: string });
    expect(atts.map((a) => a.target).sort()).toEqual(old.map((v) => v.id).sort());
    for (const a of atts) expect((await attest(a.endpoint, fromComputed(a.expected, "azure")!)).ok).toBe(true);
    expect((unwrap(st.outputs.promotion) as Promotion).attestedBy.map((a) => a.vm)).toEqual(["fleet-0", "fleet-1"]);
    expect(st.resources.map((x) => x.urn)).toEqual(oldState.resources.map((x) => x.urn));
    // No VM proved the new image: its verifiers were never told to accept it.
    expect(await published(prodDir)).toEqual(await published(canaryDir));

    // With the recipe reverted, the next up finds nothing to undo: the image and its measurement go
    // back to the reviewed recipe (a cache hit; the refused up had recorded the new one), no VM,
    // attestation or allow-list step runs, nothing is created or deleted.
    const again = await prod("up");
    expect(again.error).toBeUndefined();
    expect(again.events.filter((e) => e.step !== "same" && e.type.startsWith("pulumi-nodejs:dynamic/tdxvm:")).map((e) => [e.urn.split("::").pop(), e.step])).toEqual([["fleet", "update"], ["fleet-expected", "update"]]);
    expect(again.events.filter((e) => /tdxvm:(QemuVm|VmAttestation)$/.test(e.type)).map((e) => e.step)).toEqual(["same", "same", "same", "same"]);
    expect((await vms(prodDir)).map((v) => v.id)).toEqual(old.map((v) => v.id));
  });

  it("destroy stops every VM of both stacks", async () => {
    const before = [...(await vms(prodDir)), ...(await vms(canaryDir))];
    expect(before.length).toBe(3); // prod: fleet-0 and fleet-1 (the refused replacement left nothing); canary: fleet
    for (const run of [prod, canary]) expect((await run("destroy")).error).toBeUndefined();
    for (const v of before) expect(vmRunning(v.outputs as never)).toBe(false);
    for (const dir of [prodDir, canaryDir]) expect((await loadState(path.join(dir, "state.json"))).resources).toEqual([]);
    for (const dir of [prodDir, canaryDir]) expect(existsSync(path.join(dir, "allow.json"))).toBe(false); // the deployment's list went with it
  });
});
