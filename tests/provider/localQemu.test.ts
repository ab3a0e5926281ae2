/**
 * The default example (examples/local-qemu, the root Pulumi.yaml's program) through the
 * engine-free harness: the real program, the real @pulumi/pulumi dynamic-provider host, real
 * bakes and real QEMU VMs. up → preview (unchanged) → preview after a recipe change → up →
 * refresh after the VM died → destroy. Slow (two bakes, two boots under TCG) by nature.
 */
import { promises as fs, readFileSync, readdirSync, existsSync } from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { pulumiOp, stepsOf, OpResult } from "../harness";
import { parseGuestReport } from "../../provider";
import { vmRunning } from "../../provider/deploy/qemu";
import { tempDir } from "../helpers";

jest.setTimeout(90 * 60_000);

const PROGRAM = "examples/local-qemu/index.ts";
/** A change inside the root file system only: with the default verity root it must move the registers. */
const CHANGE = { motd: "tdxvm demo image, blue\n" };

/** Host pids of tdxvm VMs' QEMU and swtpm processes (their command lines name the VM's /vm state mount). */
function vmProcesses(): number[] {
  const out: number[] = [];
  for (const p of readdirSync("/proc").filter((n) => /^\d+$/.test(n))) {
    let cmd: string;
    try {
      cmd = readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0").join(" ");
    } catch {
      continue;
    }
    if ((cmd.startsWith("qemu-system") && cmd.includes("unix:/vm/qmp.sock")) || (cmd.startsWith("swtpm") && cmd.includes("dir=/vm/tpm"))) out.push(Number(p));
  }
  return out;
}

const outputs = (r: OpResult) => r.outputs as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

describe("local-qemu program through the real dynamic-provider host", () => {
  let dir: string;
  const token = `tok-${randomBytes(12).toString("hex")}`; // a secret: must never appear in state, outputs or logs
  const cfg = (extra: Record<string, string> = {}) => ({ program: PROGRAM, dir, config: extra, secretConfig: { apiToken: token } });
  let first: OpResult;
  let second: OpResult;
  const before = vmProcesses();

  beforeAll(async () => {
    dir = await tempDir("tdxvm-harness-");
  });

  afterAll(async () => {
    // Never leave VMs behind, even when a test failed half-way.
    if (dir && existsSync(path.join(dir, "state.json"))) await pulumiOp("destroy", cfg()).catch(() => undefined);
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it("up: bakes, measures, boots a VM that becomes ready; the guest's PCRs equal the predicted ones", async () => {
    first = await pulumiOp("up", cfg());
    expect(first.error).toBeUndefined();
    expect(first.ok).toBe(true);
    expect(stepsOf(first, "ImageBake").map((e) => e.step)).toEqual(["create"]);
    expect(stepsOf(first, "Measurement").map((e) => e.step)).toEqual(["create", "create"]);
    expect(stepsOf(first, "QemuVm").map((e) => e.step)).toEqual(["create"]);
    const o = outputs(first);
    expect(o.vmId).toMatch(/^vm-[0-9a-f]{12}$/);
    expect(o.warning).toMatch(/^not a TD: an emulated dev VM/);
    expect(o.forwards).toEqual([{ guest: 22, bind: "127.0.0.1", host: expect.any(Number) }]);
    // The VM is a real, running QEMU; its serial console carries the image's boot report.
    expect(vmProcesses().filter((p) => !before.includes(p)).length).toBe(2); // qemu + swtpm
    const guest = parseGuestReport(readFileSync(o.serialLog, "utf8"));
    for (const pcr of [4, 9, 11]) expect({ pcr, value: o.vtpmRegisters[`PCR${pcr}`] }).toEqual({ pcr, value: guest.pcrs.sha256[pcr] });
    expect(o.tdRegisters.RTMR3).toBe("0".repeat(96));
    expect(o.tdRegisters.MRTD).toMatch(/^[0-9a-f]{96}$/);
    // The secret reached the VM (fw_cfg blob visible in the guest; only its size is printed) …
    const fw = readFileSync(o.serialLog, "utf8").split("\n").find((l) => l.startsWith("TDXVM-FWCFG"))?.trim();
    expect(fw).toBe(`TDXVM-FWCFG secrets:${JSON.stringify({ API_TOKEN: token }).length}`);
    // … and its host-side file is gone.
    expect(existsSync(path.join(path.dirname(o.serialLog), "fwcfg"))).toBe(false);
  });

  it("secrets never appear in state, outputs, events or provider logs", async () => {
    const state = await fs.readFile(path.join(dir, "state.json"), "utf8");
    expect(state).not.toContain(token);
    expect(JSON.stringify(first)).not.toContain(token);
    expect(await fs.readFile(path.join(dir, "host.log"), "utf8")).not.toContain(token);
    const vm = JSON.parse(state).resources.find((r: { type: string }) => r.type.endsWith("QemuVm"));
    expect(vm.outputs.secretNames).toEqual(["API_TOKEN"]);
    expect(vm.outputs.secretsDigest.ciphertext).toEqual(expect.any(String)); // marked secret → encrypted
    expect(vm.inputs.secrets.ciphertext).toEqual(expect.any(String));
    expect(vm.outputs.secrets).toBeUndefined();
  });

  it("preview of an unchanged stack: every resource is the same, nothing is baked or booted", async () => {
    const procs = vmProcesses();
    const r = await pulumiOp("preview", cfg());
    expect(r.ok).toBe(true);
    expect(r.events.filter((e) => e.step !== "same")).toEqual([]);
    expect(r.stdout).not.toContain("baking");
    expect(vmProcesses()).toEqual(procs);
  });

  it("preview after a root-file-system-only change (motd): image update, changed registers old → new in the checked inputs, VM replace", async () => {
    const stateBefore = await fs.readFile(path.join(dir, "state.json"), "utf8");
    const r = await pulumiOp("preview", cfg(CHANGE));
    expect(r.ok).toBe(true);
    const [img] = stepsOf(r, "ImageBake");
    expect(img.step).toBe("update");
    expect(img.checked!.bakeKey).not.toBe(img.old!.bakeKey);
    const [td, vtpm] = ["demo-td", "demo-vtpm"].map((n) => stepsOf(r, "Measurement").find((e) => e.urn.endsWith(`::${n}`))!);
    const changed = (e: typeof td) => Object.keys(e.checked!.registers as object).filter((k) => (e.checked!.registers as Record<string, unknown>)[k] !== (e.old!.registers as Record<string, unknown>)[k]).sort();
    expect(td.step).toBe("update");
    expect(changed(td)).toEqual(["RTMR1", "RTMR2"]);
    expect(vtpm.step).toBe("update");
    expect(changed(vtpm)).toEqual(["PCR11", "PCR4", "PCR9"]);
    expect(vtpm.checked!.diffMarkdown).toContain("| PCR11 |");
    // The verity root hash on the kernel command line is what moved.
    expect(vtpm.checked!.diffMarkdown).toContain("PCR11: root file system changed (verity root hash");
    expect(vtpm.checked!.diffMarkdown).toContain("UKI section .cmdline changed");
    const [vm] = stepsOf(r, "QemuVm");
    expect(vm.step).toBe("replace");
    expect(vm.replaces).toEqual(["image"]);
    expect(vm.deleteBeforeReplace).toBe(false);
    // A preview changes nothing.
    expect(await fs.readFile(path.join(dir, "state.json"), "utf8")).toBe(stateBefore);
  });

  it("up after the change: the new VM is created and ready before the old one is stopped", async () => {
    const oldVm = outputs(first);
    second = await pulumiOp("up", cfg(CHANGE));
    expect(second.error).toBeUndefined();
    const vmSteps = stepsOf(second, "QemuVm");
    expect(vmSteps.map((e) => e.step)).toEqual(["create-replacement", "delete-replaced"]);
    expect(vmSteps[0].at).toBeLessThanOrEqual(vmSteps[1].at);
    const o = outputs(second);
    expect(o.vmId).not.toBe(oldVm.vmId);
    expect(existsSync(path.dirname(oldVm.serialLog))).toBe(false);
    const guest = parseGuestReport(readFileSync(o.serialLog, "utf8"));
    expect(guest.cmdline).toContain(`roothash=${o.rootHash}`);
    expect(o.rootHash).not.toBe(oldVm.rootHash);
    for (const pcr of [4, 9, 11]) expect({ pcr, value: o.vtpmRegisters[`PCR${pcr}`] }).toEqual({ pcr, value: guest.pcrs.sha256[pcr] });
    expect(o.vtpmRegisters.PCR11).not.toBe(oldVm.vtpmRegisters.PCR11);
  });

  it("refresh shows a dead VM as drift, and the next preview replaces it", async () => {
    const state = JSON.parse(await fs.readFile(path.join(dir, "state.json"), "utf8"));
    const vm = state.resources.find((r: { type: string }) => r.type.endsWith("QemuVm")).outputs;
    expect(vmRunning(vm)).toBe(true);
    process.kill(vm.pid, "SIGKILL");
    for (let i = 0; i < 50 && vmRunning(vm); i++) await new Promise((r) => setTimeout(r, 100));
    const r = await pulumiOp("refresh", cfg(CHANGE));
    const read = stepsOf(r, "QemuVm")[0];
    expect(read.changes).toBe(true);
    expect((read.checked as { running: boolean }).running).toBe(false);
    const p = await pulumiOp("preview", cfg(CHANGE));
    expect(stepsOf(p, "QemuVm").map((e) => [e.step, e.replaces])).toEqual([["replace", ["running"]]]);
  });

  it("destroy: every resource deleted, no QEMU or swtpm left, no VM state on disk", async () => {
    const o = outputs(second);
    const r = await pulumiOp("destroy", cfg(CHANGE));
    expect(r.ok).toBe(true);
    expect(r.events.filter((e) => e.type.startsWith("pulumi-nodejs:dynamic")).map((e) => e.step)).toEqual(["delete", "delete", "delete", "delete"]);
    expect(vmProcesses().filter((p) => !before.includes(p))).toEqual([]);
    expect(existsSync(path.dirname(o.serialLog))).toBe(false);
    expect(JSON.parse(await fs.readFile(path.join(dir, "state.json"), "utf8")).resources).toEqual([]);
  });
});
