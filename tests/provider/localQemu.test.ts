/**
 * The default example (examples/local-qemu, the root Pulumi.yaml's program) through the
 * engine-free harness: the real program, the real @pulumi/pulumi dynamic-provider host, real
 * bakes, real QEMU VMs running tdxvm's agent under swtpm. up without the secret (bake → measure →
 * boot → attest with a real TPM quote; the VM waits for its owner) → unsigned and foreign deliveries
 * refused by the booted VM → up with the secret (the owner's sealed delivery; the handoff unit runs
 * with it) → a relay and a wrong
 * expectation refused → preview (unchanged) → preview after a root-file-system change → up →
 * refresh after the VM died → destroy. Slow (two bakes, two boots under TCG) by nature.
 */
import { promises as fs, readFileSync, readdirSync, existsSync } from "node:fs";
import * as path from "node:path";
import * as tls from "node:tls";
import * as net from "node:net";
import { createHash, randomBytes } from "node:crypto";
import { pulumiOp, stepsOf, OpResult } from "../harness";
import { loadState, unwrap } from "../harness/engine";
import { parseGuestReport } from "../../provider";
import { vmRunning } from "../../provider/deploy/qemu";
import { attest, pinnedRequest } from "../../provider/attest";
import { fromComputed } from "../../provider/dynamic/measurement";
import { newTlsIdentity } from "../../agent/tls";
import { DEMO_QUOTE_LINE, DEMO_SECRET_LINE, DEMO_USER_DATA } from "../../examples/local-qemu/recipe";
import { tempDir, TEST_OWNER_KEY } from "../helpers";
import { newOwnerKey, ownerPublicKey, ownerSigningKey, sealDelivery } from "../../provider/secrets/owner";

jest.setTimeout(90 * 60_000);

const PROGRAM = "examples/local-qemu/index.ts";
/** A change inside the root file system only: with the default verity root it must move the registers. */
const CHANGE = { motd: "tdxvm demo image, blue\n" };

/**
 * Host pids of tdxvm VMs' QEMU and swtpm processes, each with the VM id whose state directory its
 * sandbox mounts at /vm (their mountinfo names it): other suites' VMs may run beside this one.
 */
function vmProcesses(): Map<number, string> {
  const out = new Map<number, string>();
  for (const p of readdirSync("/proc").filter((n) => /^\d+$/.test(n))) {
    let cmd: string;
    let mounts: string;
    try {
      cmd = readFileSync(`/proc/${p}/cmdline`, "utf8").split("\0").join(" ");
      if (!((cmd.startsWith("qemu-system") && cmd.includes("unix:/vm/qmp.sock")) || (cmd.startsWith("swtpm") && cmd.includes("dir=/vm/tpm")))) continue;
      mounts = readFileSync(`/proc/${p}/mountinfo`, "utf8");
    } catch {
      continue;
    }
    const vm = mounts.split("\n").map((l) => l.split(" ")).find((f) => f[4] === "/vm")?.[3];
    if (vm) out.set(Number(p), path.basename(vm));
  }
  return out;
}

/** The pids of `vmIds`' processes. */
const processesOf = (vmIds: string[]) => [...vmProcesses()].filter(([, id]) => vmIds.includes(id)).map(([pid]) => pid).sort();

const outputs = (r: OpResult) => r.outputs as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** The demo service's line: facts about the delivered secret, never the secret. */
function demoSecretLine(serial: string): Record<string, string> | undefined {
  const line = serial.split(/\r?\n/).find((l) => l.includes(`${DEMO_SECRET_LINE} `));
  return line ? Object.fromEntries(line.slice(line.indexOf(DEMO_SECRET_LINE) + DEMO_SECRET_LINE.length + 1).trim().split(/\s+/).map((kv) => kv.split("=") as [string, string])) : undefined;
}

/** A TLS relay: terminates TLS with its own key and forwards the bytes to the agent over TLS. */
async function relay(target: string): Promise<{ endpoint: string; close: () => void }> {
  const id = newTlsIdentity("relay");
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  const server = tls.createServer({ key: id.keyPem, cert: id.certPem }, (client) => {
    const upstream = tls.connect({ host, port, rejectUnauthorized: false });
    client.pipe(upstream).pipe(client);
    const end = () => { client.destroy(); upstream.destroy(); };
    client.on("error", end);
    upstream.on("error", end);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { endpoint: `127.0.0.1:${(server.address() as net.AddressInfo).port}`, close: () => server.close() };
}

const ownerPublicKeyOf = (pem: string) => ownerPublicKey(ownerSigningKey(pem));

describe("local-qemu program through the real dynamic-provider host", () => {
  let dir: string;
  const token = `tok-${randomBytes(12).toString("hex")}`; // a secret: must never appear in state, outputs or logs
  // The image's owner: the test-only key, so that the baked image (and its cache entry) is the same every run.
  // The VM counts as started at the firmware's boot line, so the attestation begins while it boots and must wait for the agent.
  const cfg = (extra: Record<string, string> = {}, withToken = true) => ({ program: PROGRAM, dir, config: { readySerial: "BdsDxe: starting", ...extra }, secretConfig: { ownerKey: TEST_OWNER_KEY, ...(withToken ? { apiToken: token } : {}) } });
  let waiting: OpResult;
  let first: OpResult;
  let second: OpResult;

  beforeAll(async () => {
    dir = await tempDir("tdxvm-harness-");
  });

  afterAll(async () => {
    // Never leave VMs behind, even when a test failed half-way.
    if (dir && existsSync(path.join(dir, "state.json"))) await pulumiOp("destroy", cfg()).catch(() => undefined);
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it("up without the secret: bakes, measures, boots; the attestation, begun while the VM still boots, waits for the agent and passes; the VM waits for its owner", async () => {
    waiting = await pulumiOp("up", cfg({}, false));
    expect(waiting.error).toBeUndefined();
    expect(waiting.ok).toBe(true);
    expect(stepsOf(waiting, "ImageBake").map((e) => e.step)).toEqual(["create"]);
    expect(stepsOf(waiting, "Measurement").map((e) => e.step)).toEqual(["create", "create"]);
    expect(stepsOf(waiting, "QemuVm").map((e) => e.step)).toEqual(["create"]);
    expect(stepsOf(waiting, "VmAttestation").map((e) => e.step)).toEqual(["create"]);
    expect(outputs(waiting).owner).toBe(ownerPublicKeyOf(TEST_OWNER_KEY));
    // The attestation started while the VM was still booting, asked again until the agent answered, and passed.
    const attempts = Number(/attested \(tpm;[^\n]*, (\d+) attempt\(s\)/.exec(waiting.hostLog)?.[1]);
    expect(attempts).toBeGreaterThan(1);
  });

  it("the booted VM refuses an unsigned delivery and one signed by another key (401, nothing stored, still pending)", async () => {
    const st = await loadState(path.join(dir, "state.json"));
    const att = unwrap(st.resources.find((r) => r.type.endsWith("VmAttestation"))!.outputs) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
    const verdict = await attest(att.endpoint, fromComputed(att.expected, att.expected.backend)!);
    expect(verdict.ok).toBe(true);
    const channel = verdict.channel!;
    const post = async (body: unknown) => {
      const r = await pinnedRequest(channel, { method: "POST", path: "/v1/secrets", body });
      return { status: r.status, error: String(JSON.parse(r.body.toString("utf8")).error ?? "") };
    };
    // The first-come POST of old: refused.
    expect(await post({ API_TOKEN: "x".repeat(32) })).toEqual({ status: 401, error: expect.stringMatching(/signed by the image's owner/) });
    // Sealed correctly to the attested key, but signed by someone who is not the owner: refused.
    const c = await pinnedRequest(channel, { method: "GET", path: "/v1/challenge" });
    const challenge = JSON.parse(c.body.toString("utf8"));
    expect(challenge.owner).toBe(ownerPublicKeyOf(TEST_OWNER_KEY));
    const intruder = sealDelivery({ API_TOKEN: "y".repeat(32) }, { certificatePem: channel.certificatePem, challenge: challenge.challenge }, ownerSigningKey(newOwnerKey().privateKeyPem));
    expect((await post(intruder)).status).toBe(401);
    const health = JSON.parse((await pinnedRequest(channel, { method: "GET", path: "/v1/health" })).body.toString("utf8"));
    expect(health.secrets).toBe("pending");
    expect(demoSecretLine(readFileSync(outputs(waiting).serialLog, "utf8"))).toBeUndefined(); // the handoff unit has not run
  });

  it("up with the secret: the same VM is attested again and the owner's sealed delivery is accepted; the handoff unit runs with it", async () => {
    first = await pulumiOp("up", cfg());
    expect(first.error).toBeUndefined();
    expect(first.ok).toBe(true);
    expect(stepsOf(first, "ImageBake").map((e) => e.step)).toEqual(["same"]);
    expect(stepsOf(first, "QemuVm").map((e) => e.step)).toEqual(["same"]);
    expect(stepsOf(first, "VmAttestation").map((e) => e.step)).toEqual(["create-replacement", "delete-replaced"]);
    // The attestation ran after the VM was up.
    const at = (r: OpResult, t: string, step: string) => r.events.find((e) => e.type.endsWith(t) && e.step === step)!.at;
    expect(at(waiting, "VmAttestation", "create")).toBeGreaterThan(at(waiting, "QemuVm", "create"));
    const o = outputs(first);
    expect(o.vmId).toMatch(/^vm-[0-9a-f]{12}$/);
    expect(o.warning).toMatch(/^not a TD: an emulated dev VM/);
    expect(o.forwards).toEqual([{ guest: 8443, bind: "127.0.0.1", host: expect.any(Number) }]);
    expect(o.attestation.length).toBeGreaterThan(3);
    expect(o.attestation.filter((c: string) => !c.startsWith("ok "))).toEqual([]);
    // The VM is a real, running QEMU (+ swtpm); its serial console carries the image's boot report.
    expect(processesOf([o.vmId]).length).toBe(2);
    const serial = readFileSync(o.serialLog, "utf8");
    const guest = parseGuestReport(serial);
    for (const pcr of [4, 9, 11]) expect({ pcr, value: o.vtpmRegisters[`PCR${pcr}`] }).toEqual({ pcr, value: guest.pcrs.sha256[pcr] });
    expect(o.tdRegisters.RTMR3).toBe("0".repeat(96));
    // The handoff unit started only with its secret: the env file and the 0400 file target, as declared.
    let demo: Record<string, string> | undefined;
    for (let i = 0; i < 60 && !(demo = demoSecretLine(readFileSync(o.serialLog, "utf8"))); i++) await new Promise((r) => setTimeout(r, 1000));
    expect(demo).toEqual({ "env-length": String(token.length), "file-mode": "400", "file-owner": "root", fingerprint: createHash("sha256").update(token).digest("hex").slice(0, 8) });
  });

  it("an application in the VM got a quote over the tdxs socket, bound to its own user data", () => {
    const serial = readFileSync(outputs(first).serialLog, "utf8");
    const line = serial.split(/\r?\n/).find((l) => l.includes(`${DEMO_QUOTE_LINE} `))!;
    expect(line).toContain(`userData=${DEMO_USER_DATA}`);
    const doc = JSON.parse(Buffer.from(/document=([0-9a-f]+)/.exec(line)![1], "hex").toString("utf8"));
    expect(doc.issuer).toBe("tpm");
    // TPMS_ATTEST.extraData = the first 32 bytes of SHA-256(userData ‖ nonce) (nonce empty here).
    const q = Buffer.from(doc.quote, "base64");
    const signer = q.readUInt16BE(6);
    const extra = q.subarray(10 + signer, 10 + signer + q.readUInt16BE(8 + signer));
    expect(extra.toString("hex")).toBe(createHash("sha256").update(Buffer.from(DEMO_USER_DATA, "hex")).digest("hex"));
  });

  it("secrets never appear in state, outputs, events or provider logs", async () => {
    const state = await fs.readFile(path.join(dir, "state.json"), "utf8");
    expect(state).not.toContain(token);
    expect(JSON.stringify(first)).not.toContain(token);
    expect(await fs.readFile(path.join(dir, "host.log"), "utf8")).not.toContain(token);
    const att = JSON.parse(state).resources.find((r: { type: string }) => r.type.endsWith("VmAttestation"));
    expect(att.outputs.secretNames).toEqual(["API_TOKEN"]);
    expect(att.outputs.secretsDigest.ciphertext).toEqual(expect.any(String)); // marked secret → encrypted
    expect(att.inputs.secrets.ciphertext).toEqual(expect.any(String));
    // The owner's private key is as secret as the secrets it signs for.
    expect(state).not.toContain(TEST_OWNER_KEY.split("\n")[1]);
    expect(att.inputs.ownerKey.ciphertext).toEqual(expect.any(String));
    expect(att.outputs.secrets).toBeUndefined();
  });

  it("the verifier refuses a relay presenting another TLS key, and an expectation of another image", async () => {
    const st = await loadState(path.join(dir, "state.json"));
    const att = unwrap(st.resources.find((r) => r.type.endsWith("VmAttestation"))!.outputs) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
    const expected = fromComputed(att.expected, att.expected.backend)!;
    const ok = await attest(att.endpoint, expected);
    expect(ok.ok).toBe(true);
    const r = await relay(att.endpoint);
    try {
      const viaRelay = await attest(r.endpoint, expected).catch((e: Error) => ({ ok: false, checks: [{ check: "error", ok: false, detail: e.message }] }));
      expect(viaRelay.ok).toBe(false);
      expect(JSON.stringify(viaRelay.checks)).toMatch(/bind|channel|TLS/i);
    } finally {
      r.close();
    }
    // One PCR 11 event of another image (e.g. a command-line word changed) in the expectation.
    const wrong = structuredClone(expected);
    wrong.registers.PCR11.value = "ab".repeat(32);
    const refused = await attest(att.endpoint, wrong);
    expect(refused.ok).toBe(false);
    expect(refused.registers.find((x) => x.register === "PCR11")!.ok).toBe(false);
  });

  it("preview of an unchanged stack: every resource is the same, nothing is baked or booted", async () => {
    const vmIds = [outputs(first).vmId as string];
    const procs = processesOf(vmIds);
    expect(procs).toHaveLength(2);
    const r = await pulumiOp("preview", cfg());
    expect(r.ok).toBe(true);
    expect(r.events.filter((e) => e.step !== "same")).toEqual([]);
    expect(r.stdout).not.toContain("baking");
    expect(processesOf(vmIds)).toEqual(procs);
  });

  it("preview after a root-file-system-only change (motd): image update, changed registers old → new, VM and attestation replaced", async () => {
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
    expect(stepsOf(r, "VmAttestation").map((e) => e.step)).toEqual(["replace"]);
    // A preview changes nothing.
    expect(await fs.readFile(path.join(dir, "state.json"), "utf8")).toBe(stateBefore);
  });

  it("up after the change: the new VM is created, attested and given its secret before the old one is stopped", async () => {
    const oldVm = outputs(first);
    second = await pulumiOp("up", cfg(CHANGE));
    expect(second.error).toBeUndefined();
    const vmSteps = stepsOf(second, "QemuVm");
    expect(vmSteps.map((e) => e.step)).toEqual(["create-replacement", "delete-replaced"]);
    const attested = stepsOf(second, "VmAttestation").find((e) => e.step === "create-replacement")!;
    expect(attested.at).toBeLessThanOrEqual(vmSteps[1].at);
    const o = outputs(second);
    expect(o.vmId).not.toBe(oldVm.vmId);
    expect(existsSync(path.dirname(oldVm.serialLog))).toBe(false);
    const guest = parseGuestReport(readFileSync(o.serialLog, "utf8"));
    expect(guest.cmdline).toContain(`roothash=${o.rootHash}`);
    expect(o.rootHash).not.toBe(oldVm.rootHash);
    for (const pcr of [4, 9, 11]) expect({ pcr, value: o.vtpmRegisters[`PCR${pcr}`] }).toEqual({ pcr, value: guest.pcrs.sha256[pcr] });
    expect(o.vtpmRegisters.PCR11).not.toBe(oldVm.vtpmRegisters.PCR11);
    let demo: Record<string, string> | undefined;
    for (let i = 0; i < 60 && !(demo = demoSecretLine(readFileSync(o.serialLog, "utf8"))); i++) await new Promise((r) => setTimeout(r, 1000));
    expect(demo?.["env-length"]).toBe(String(token.length));
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
    expect(r.events.filter((e) => e.type.startsWith("pulumi-nodejs:dynamic")).map((e) => e.step)).toEqual(["delete", "delete", "delete", "delete", "delete"]);
    expect(processesOf([outputs(first).vmId, o.vmId])).toEqual([]);
    expect(existsSync(path.dirname(o.serialLog))).toBe(false);
    expect(JSON.parse(await fs.readFile(path.join(dir, "state.json"), "utf8")).resources).toEqual([]);
  });
});
