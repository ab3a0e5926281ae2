/**
 * A fleet's allow-list through rollouts (provider/deploy/allowList.ts and its dynamic provider):
 * add → roll → retire, never a measurement no VM proved (the provider is driven the way
 * TdxDeployment's two resources are: open after the first wave attested, close after the last),
 * bounded, published atomically to the file verifiers read, exported in the formats they take.
 */
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { allowListExports, measurementIdOf, MAX_LIVE, nextAllowList, readAllowList } from "../../provider/deploy/allowList";
import { allowListProvider } from "../../provider/dynamic/allowList";
import { toComputed } from "../../provider/dynamic/measurement";
import { ConstellationSchema, FlashbotsFileSchema } from "../../provider/measure/formats";
import type { Measurements } from "../../provider/measure";
import { tempDir, tdxErrorOf } from "../helpers";

const pcrs = (c: string): Measurements => ({
  measurementsVersion: 1, backend: "azure", inputs: {},
  registers: {
    PCR4: { alg: "sha256", value: c.repeat(64), status: "exact", events: [] },
    PCR8: { alg: "sha256", value: "0".repeat(64), status: "zero", events: [] },
    PCR0: { alg: "sha256", value: null, status: "platform-defined", why: "firmware", waived: "no reference", events: [] },
  },
});
const computed = (m: Measurements) => {
  const { registers, status, ledger, assumptions } = toComputed(m, "k");
  return { backend: m.backend, registers, status, ledger, assumptions };
};

describe("allow-list lifecycle", () => {
  const [A, B, C] = [pcrs("a"), pcrs("b"), pcrs("c")];
  const ids = (l: { id: string }[]) => l.map((x) => x.id);

  it("open adds the incoming measurement in front of what is live; close retires everything else; ids follow values, not ledger wording", async () => {
    const first = nextAllowList("open", A, []);
    expect(ids(first)).toEqual([measurementIdOf(A)]);
    const rolling = nextAllowList("open", B, nextAllowList("close", A, first));
    expect(ids(rolling)).toEqual([measurementIdOf(B), measurementIdOf(A)]);
    expect(ids(nextAllowList("close", B, rolling))).toEqual([measurementIdOf(B)]);
    // A rollout that stopped half-way (no close) and the next one: all three stay until one finishes.
    expect(ids(nextAllowList("open", C, rolling))).toEqual([measurementIdOf(C), measurementIdOf(B), measurementIdOf(A)]);
    expect(ids(nextAllowList("open", A, rolling))).toEqual([measurementIdOf(A), measurementIdOf(B)]); // rolling back: no duplicate
    const reworded = { ...A, registers: { ...A.registers, PCR4: { ...A.registers.PCR4!, events: [{ type: "EV_IPL", description: "other words", origin: "x", digest: "a".repeat(64) }] } } };
    expect(measurementIdOf(reworded)).toBe(measurementIdOf(A));
    expect(measurementIdOf({ ...A, registers: { ...A.registers, PCR0: { ...A.registers.PCR0!, waived: undefined } } })).not.toBe(measurementIdOf(A));
    let live = [A, B, C].reduce((l, m) => nextAllowList("open", m, l), [] as ReturnType<typeof nextAllowList>);
    live = nextAllowList("open", pcrs("d"), live);
    expect(live).toHaveLength(MAX_LIVE);
    expect((await tdxErrorOf(async () => nextAllowList("open", pcrs("e"), live))).message).toMatch(/5 measurements would be live at once \(at most 4\)/);
  });

  it("exports: flashbots an entry per measurement, Constellation a map per measurement, Trustee a list per register; all parse", async () => {
    const l = nextAllowList("open", B, nextAllowList("open", A, []));
    const x = await allowListExports(l);
    // One flashbots entry per measurement: a quote matches one of them as a whole, never a mix.
    const fb = FlashbotsFileSchema.parse(JSON.parse(x.flashbots));
    expect(fb.map((e) => [e.measurement_id, e.measurements?.["4"], e.measurements?.["8"]])).toEqual([
      [measurementIdOf(B), { expected_any: ["b".repeat(64)] }, { expected_any: ["0".repeat(64)] }],
      [measurementIdOf(A), { expected_any: ["a".repeat(64)] }, { expected_any: ["0".repeat(64)] }],
    ]);
    const co = JSON.parse(x.constellation) as Record<string, unknown>;
    expect(Object.keys(co)).toEqual(ids(l));
    for (const v of Object.values(co)) expect(ConstellationSchema.parse(v)["4"]).toBeDefined();
    // Trustee: an RVPS "sample" message, its payload the reference values by the names Trustee's policy reads.
    const rvps = JSON.parse(x.trustee) as { version: string; type: string; payload: string };
    expect([rvps.version, rvps.type]).toEqual(["0.1.0", "sample"]);
    expect(JSON.parse(Buffer.from(rvps.payload, "base64").toString("utf8"))).toEqual({ tdx_pcr04: ["b".repeat(64), "a".repeat(64)], tdx_pcr08: ["0".repeat(64)] });
  });
});

describe("allow-list provider (as TdxDeployment drives it)", () => {
  it("a register the deployment's verifier waives (attest.waive) is waived in the list and left out of its exports; without the waiver the export is refused before the file changes", async () => {
    const dir = await tempDir("tdxvm-allow-waive-");
    const file = path.join(dir, "allow.json");
    // A TD measurement whose RTMR0 nobody pinned: the VMs passed only because the verifier waived it.
    const td: Measurements = {
      measurementsVersion: 1, backend: "rtmr", inputs: {},
      registers: Object.fromEntries(["MRTD", "RTMR0", "RTMR1", "RTMR2", "RTMR3"].map((n, i) => [n, n === "RTMR0"
        ? { alg: "sha384" as const, value: null, status: "platform-defined" as const, why: "host", events: [] }
        : { alg: "sha384" as const, value: String(i).repeat(96), status: "exact" as const, events: [] }])),
    };
    const inputs = { deployment: "fleet", phase: "open", incoming: computed(td), publish: file };
    // The provider hands the engine a plain Error with the code and hint in its text (guarded/userError).
    await expect(allowListProvider.create(inputs)).rejects.toThrow(/^E_POLICY: cannot export RTMR0: not pinned and not waived/);
    await expect(fs.access(file)).rejects.toThrow();
    const r = (await allowListProvider.create({ ...inputs, waive: { RTMR0: "lab host, canary pending" } })).outs as { ids: string[]; flashbots: string; measurements: Array<{ measurement: Measurements }> };
    expect(r.measurements[0].measurement.registers.RTMR0.waived).toBe("lab host, canary pending");
    expect(Object.keys(JSON.parse(r.flashbots)[0].measurements)).toEqual(["0", "2", "3", "4"]);
    expect(await readAllowList(file, "fleet")).toHaveLength(1);
    // A waiver is part of what relying parties accept: another waiver is another measurement id.
    const other = (await allowListProvider.create({ ...inputs, waive: { RTMR0: "another reason" } })).outs as { ids: string[] };
    expect(other.ids[0]).not.toBe(r.ids[0]);
  });

  it("publishes each step atomically to the verifiers' file, keeps a stopped rollout's measurements, never takes up one it did not add, and deletes only its own list", async () => {
    const dir = await tempDir("tdxvm-allow-");
    const file = path.join(dir, "allow.json");
    const step = async (phase: "open" | "close", m: Measurements, olds: Record<string, unknown> = {}) => {
      const inputs = { deployment: "fleet", phase, incoming: computed(m), publish: file };
      const c = await allowListProvider.check(olds, inputs);
      expect(c.failures).toBeUndefined();
      const r = Object.keys(olds).length ? await allowListProvider.update("id", olds, c.inputs) : (await allowListProvider.create(c.inputs));
      return r.outs as Record<string, unknown> & { ids: string[] };
    };
    const onDisk = async () => (await readAllowList(file, "fleet"))!.map((x) => x.id);
    const [A, B] = [pcrs("a"), pcrs("b")];
    const openA = await step("open", A);
    const closeA = await step("close", A);
    expect([openA.ids, closeA.ids, await onDisk()]).toEqual([[measurementIdOf(A)], [measurementIdOf(A)], [measurementIdOf(A)]]);
    // Rollout of B: the first wave proved it → both; the rollout stops before the last wave: both stay.
    const openB = await step("open", B, openA);
    expect(await onDisk()).toEqual([measurementIdOf(B), measurementIdOf(A)]);
    // Someone writes another (validly identified) measurement into the file: it is not taken up.
    const X = pcrs("9");
    const forged = { allowListVersion: 1, deployment: "fleet", updatedAt: "x", measurements: [{ id: measurementIdOf(X), measurement: X }, { id: measurementIdOf(B), measurement: B }, { id: measurementIdOf(A), measurement: A }] };
    await fs.writeFile(file, JSON.stringify(forged));
    expect((await step("open", B, openB)).ids).toEqual([measurementIdOf(B), measurementIdOf(A)]);
    expect(await onDisk()).toEqual([measurementIdOf(B), measurementIdOf(A)]);
    const closeB = await step("close", B, closeA);
    expect([closeB.ids, await onDisk()]).toEqual([[measurementIdOf(B)], [measurementIdOf(B)]]);
    expect(String(closeB.flashbots)).toContain("b".repeat(64));
    expect(openB.ids).toHaveLength(2);
    // Hostile state or file is refused, not trusted.
    await fs.writeFile(file, JSON.stringify({ allowListVersion: 1, deployment: "fleet", updatedAt: "x", measurements: [{ id: "sha256:forged", measurement: A }] }));
    await expect(step("open", B, closeB)).rejects.toThrow(/^E_DEPLOYMENT: .*measurement 1's id does not match its registers/);
    await fs.writeFile(file, JSON.stringify({ allowListVersion: 1, deployment: "other", updatedAt: "x", measurements: [] }));
    await expect(step("open", B, closeB)).rejects.toThrow(/is not the allow-list of deployment fleet/);
    await allowListProvider.delete("id", closeB);
    expect(JSON.parse(await fs.readFile(file, "utf8")).deployment).toBe("other"); // not ours: left alone
    // Nor overwritten: another deployment's file is refused as a target too.
    await expect(step("close", B, {})).rejects.toThrow(/is not the allow-list of deployment fleet/);
    await fs.rm(file);
    await step("close", B, {});
    await allowListProvider.delete("id", { ...closeB, publish: file });
    await expect(fs.stat(file)).rejects.toThrow();
    await fs.rm(dir, { recursive: true, force: true });
  });
});
