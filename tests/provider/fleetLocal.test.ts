/**
 * examples/fleet on local VMs through the engine-free harness: 2 replicas in waves of 1, gated by
 * real attestation (each VM's agent proves its image with a swtpm quote bound to a fresh nonce and
 * its TLS key). A good image rolls out wave by wave; an image whose expected measurement is not the
 * deployed one is refused at the first wave — nothing sent, the second wave untouched, the old VMs
 * still running.
 */
import { promises as fs, existsSync } from "node:fs";
import * as path from "node:path";
import { pulumiOp, OpResult } from "../harness";
import { loadState } from "../harness/engine";
import { vmRunning } from "../../provider/deploy/qemu";
import { tempDir, TEST_OWNER_KEY } from "../helpers";

jest.setTimeout(90 * 60_000);

describe("fleet on local VMs: waves gated by attestation", () => {
  let dir: string;
  const token = "fleet-api-token-0123456789";
  const op = (o: "up" | "destroy", config: Record<string, string> = {}) => pulumiOp(o, {
    program: "examples/fleet/index.ts", project: "tdxvm-fleet", dir,
    config: { target: "qemu", replicas: "2", batchSize: "1", gateIntervalSeconds: "2", ...config }, secretConfig: { apiToken: token, ownerKey: TEST_OWNER_KEY },
  });
  const vms = async () => (await loadState(path.join(dir, "state.json"))).resources.filter((r) => r.type.endsWith("tdxvm:QemuVm"));
  const at = (r: OpResult, urnEnd: string, step: string) => r.events.find((e) => e.urn.endsWith(`::${urnEnd}`) && e.step === step)?.at ?? -1;

  beforeAll(async () => {
    dir = await tempDir("tdxvm-fleet-local-");
  });
  afterAll(async () => {
    if (dir && existsSync(path.join(dir, "state.json"))) await op("destroy").catch(() => undefined);
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it("first up: wave 2's VM is created only after wave 1's VM passed attestation (and got its secret)", async () => {
    const r = await op("up");
    expect(r.error).toBeUndefined();
    expect(r.events.filter((e) => e.type.endsWith("VmAttestation")).map((e) => e.step)).toEqual(["create", "create"]);
    expect(at(r, "fleet-1", "create")).toBeGreaterThan(at(r, "fleet-0-attest", "create"));
    const state = await loadState(path.join(dir, "state.json"));
    const vm1 = state.resources.find((x) => x.urn.endsWith("::fleet-1"))!;
    expect(vm1.dependencies).toContain(state.resources.find((x) => x.urn.endsWith("::fleet-0-attest"))!.urn);
    expect((await vms()).map((v) => vmRunning(v.outputs as never))).toEqual([true, true]);
  });

  it("an image whose expected measurement is another image's stops at the first wave: refused, nothing sent, old VMs running", async () => {
    const old = await vms();
    const r = await op("up", { cmdline: "tdxvm.role=canary", expectedCmdline: "tdxvm.role=approved" });
    expect(r.ok).toBe(false);
    expect(r.error).toMatch(/E_ATTESTATION: the VM at .* failed attestation \(tpm\); nothing was sent/);
    expect(r.error).toMatch(/PCR11/);
    // Only wave 1 was touched; wave 2 and the deletions never ran.
    expect(r.events.filter((e) => e.type.endsWith("tdxvm:QemuVm")).map((e) => [e.urn.split("::").pop(), e.step])).toEqual([["fleet-0", "create-replacement"]]);
    expect(r.events.filter((e) => e.step.startsWith("delete"))).toEqual([]);
    for (const v of old) expect(vmRunning(v.outputs as never)).toBe(true);
    expect(r.stdout).not.toContain("delivered");
  });

  it("destroy stops every VM, also the refused wave's replacement kept in state beside the VM it replaces", async () => {
    const before = await vms();
    expect(before.length).toBe(3); // fleet-0 (new, refused) + fleet-0 (old, pendingDelete) + fleet-1
    const r = await op("destroy");
    expect(r.error).toBeUndefined();
    for (const v of before) expect(vmRunning(v.outputs as never)).toBe(false);
    expect((await loadState(path.join(dir, "state.json"))).resources).toEqual([]);
  });
});
