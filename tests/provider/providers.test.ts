/**
 * The dynamic providers' methods, called directly and through the serialized shim (the exact
 * object Pulumi stores in state), plus the shim's own contract: small, no absolute path, runs
 * in a fresh Node process. The full program runs (preview/up/destroy through the real provider
 * host) are in localQemu.test.ts.
 */
import { spawnSync } from "node:child_process";
import { promises as fs, writeFileSync, existsSync, readFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import { providerShim } from "../../provider/dynamic/shim";
import { providers, STATE_VERSIONS, ProviderKind } from "../../provider/dynamic/runtime";
import { UNKNOWN } from "../../provider/dynamic/common";
import { measureBake } from "../../provider/measure";
import { writeGpt } from "../unit/measure/gpt-writer";
import { newOwnerKey, ownerPublicKey, ownerSigningKey } from "../../provider/secrets/owner";
import { secretsDigest } from "../../provider/dynamic/attestation";
import { Image, SecretSchema, SecretTarget, defaultCacheDir } from "../../provider";
import { toolsTreeDir } from "../../provider/bake/toolsTree";
import { buildPe } from "../unit/measure/pe-builder";
import { tempDir } from "../helpers";
import { ovmfPath } from "../unit/measure/fixtures";
import { markVmDir } from "../../provider/deploy/qemu";

const repoRoot = path.resolve(__dirname, "../..");

/** A GPT disk (header + entries, ESP and root) of 1 MiB: enough for the GPT event. */
function gptDisk(file: string): void {
  writeFileSync(file, writeGpt([
    { slot: 0, type: "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", uuid: "11111111-2222-3333-4444-555555555555", start: 2048, end: 2111, name: "esp" },
    { slot: 1, type: "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", uuid: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", start: 2112, end: 2047, name: "root-x86-64" },
  ], { size: 1024 * 1024 }));
}

const sha256 = (b: Buffer) => require("node:crypto").createHash("sha256").update(b).digest("hex");  

describe("serialized provider shim", () => {
  let text: string;
  beforeAll(async () => {
    // Exactly what pulumi.dynamic.Resource serializes: a function returning the provider object.
    const shim = providerShim("measurement");
    text = (await pulumi.runtime.serializeFunction(() => shim)).text;
  });

  it("is one object per kind, so the SDK serializes it once however many resources use it", () => {
    expect(providerShim("image")).toBe(providerShim("image"));
    expect(providerShim("image")).not.toBe(providerShim("measurement"));
  });

  it("is tiny and carries no absolute path", () => {
    expect(text.length).toBeLessThan(4096);
    expect(text).not.toContain(repoRoot);
    expect(text).not.toContain(os.homedir());
    expect(text).not.toMatch(/["'`]\/(?:work|root|home|tmp|usr|opt|var)\//);
    expect(text).toContain('"measurement"');
  });

  it("runs in a fresh Node process: loads tdxvm from the project root and answers check", () => {
    const dir = os.tmpdir();
    const f = path.join(dir, `tdxvm-shim-${process.pid}.js`);
    writeFileSync(f, text);
    const script = `const p = require(${JSON.stringify(f)}).handler();
      p.check({}, {backend: "nonsense", image: {artifacts: {}}}).then((r) => console.log(JSON.stringify(r)), (e) => { console.error(e); process.exit(3); });`;
    const r = spawnSync(process.execPath, ["-e", script], { cwd: repoRoot, encoding: "utf8", timeout: 60_000 });
    expect(r.stderr).toBe("");
    const out = JSON.parse(r.stdout);
    expect(out.failures[0].property).toBe(""); // the engine would print the named input's value
    expect(out.failures[0].reason).toMatch(/^E_VALIDATION: backend: /);
    // Outside a project that has tdxvm installed, the shim says what to do — with a source that
    // exists (the package is private: a checkout or a tarball, not the registry).
    const elsewhere = spawnSync(process.execPath, ["-e", script], { cwd: os.tmpdir(), encoding: "utf8", timeout: 60_000 });
    expect(elsewhere.status).toBe(3);
    expect(elsewhere.stderr).toContain(`tdxvm is not installed where Pulumi runs its providers (${os.tmpdir()}, the directory of the program's main file)`);
    expect(elsewhere.stderr).toContain("run `npm pack` in a tdxvm checkout, then `npm install /path/to/tdxvm-<version>.tgz` in the Pulumi project (or `npm install --install-links /path/to/checkout`)");
    expect(elsewhere.stderr).not.toMatch(/npm install tdxvm\b/);
  });

  it("state naming a provider kind the installed tdxvm lacks fails with a clear error, not a TypeError", async () => {
    const shim = providerShim("fromTheFuture" as ProviderKind);
    const t = (await pulumi.runtime.serializeFunction(() => shim)).text;
    const f = path.join(os.tmpdir(), `tdxvm-shim-future-${process.pid}.js`);
    writeFileSync(f, t);
    const script = `require(${JSON.stringify(f)}).handler().read("id", {}).then(() => process.exit(0), (e) => { console.error(e.name + ": " + e.message); process.exit(3); });`;
    const r = spawnSync(process.execPath, ["-e", script], { cwd: repoRoot, encoding: "utf8", timeout: 60_000 });
    expect(r.status).toBe(3);
    expect(r.stderr).toContain(`Error: E_STATE: this resource's state names the tdxvm provider "fromTheFuture", which the installed tdxvm does not have (it has ${Object.keys(providers).join(", ")})`);
    expect(r.stderr).not.toContain("TypeError");
  });
});

describe.each(Object.keys(STATE_VERSIONS) as ProviderKind[])("state versions: %s", (kind) => {
  const newer = { stateVersion: STATE_VERSIONS[kind] + 1 };
  it("state written by a newer tdxvm is refused with E_STATE by every method that reads state", async () => {
    const p = providers[kind];
    const why = new RegExp(`^E_STATE: this ${kind} resource's state was written by a newer tdxvm \\(state version ${newer.stateVersion}; the installed tdxvm reads up to ${STATE_VERSIONS[kind]}\\)\n  hint: Install the tdxvm version`);
    await expect(p.read("id", newer)).rejects.toThrow(why);
    await expect(p.diff("id", newer, {})).rejects.toThrow(why);
    await expect(p.update("id", newer, {})).rejects.toThrow(why);
    await expect(p.delete("id", newer)).rejects.toThrow(why);
    const c = await p.check(newer, { a: 1 });
    expect(c.failures).toEqual([{ property: "", reason: expect.stringMatching(/^E_STATE: /) }]);
    // The current version is read as usual.
    await expect(p.read("id", { stateVersion: STATE_VERSIONS[kind] })).resolves.toMatchObject({ id: "id" });
  });
});

/** Each provider directly, and through a shim loaded from its serialized text (as the host does). */
const via: Array<[string, (kind: keyof typeof providers) => Promise<any>]> = [ // eslint-disable-line @typescript-eslint/no-explicit-any
  ["direct", async (kind) => providers[kind]],
  ["serialized shim", async (kind) => {
    const shim = providerShim(kind);
    const t = (await pulumi.runtime.serializeFunction(() => shim)).text;
    const Module = require("node:module");  
    const m = new Module(path.join(repoRoot, "shim.js"));
    m.paths = Module._nodeModulePaths(repoRoot);
    m._compile(t, path.join(repoRoot, "shim.js"));
    return m.exports.handler();
  }],
];

/** A small but complete UKI: a PE whose .linux section is itself a PE (the kernel), plus .osrel, .cmdline and an .initrd of `initrdByte`. */
function writeUki(file: string, initrdByte: number): void {
  const kernel = buildPe({ plus: true, sections: [{ name: ".text", data: Buffer.alloc(3000, 0x90) }] });
  writeFileSync(file, buildPe({ plus: true, sections: [
    { name: ".osrel", data: Buffer.from("ID=debian\n") },
    { name: ".cmdline", data: Buffer.from("console=ttyS0 quiet") },
    { name: ".linux", data: kernel },
    { name: ".initrd", data: Buffer.alloc(5000, initrdByte) },
  ] }));
}

describe.each(via)("measurement provider (%s)", (_how, get) => {
  let dir: string;
  let args: Record<string, unknown>;
  beforeAll(async () => {
    dir = await tempDir("tdxvm-prov-");
    const uki = path.join(dir, "uki.efi");
    writeUki(uki, 7);
    const disk = path.join(dir, "disk.raw");
    gptDisk(disk);
    const art = (p: string) => ({ path: p, sha256: sha256(readFileSync(p)), size: readFileSync(p).length });
    args = { image: { bakeKey: "k1", systemdStub: "257.13-1~deb13u1", profile: "default", artifacts: { "uki.efi": art(uki), "disk.raw": art(disk) } }, backend: "azure" };
  });
  afterAll(() => fs.rm(dir, { recursive: true, force: true }));

  it("check computes the registers of the library (same values, ledger, status)", async () => {
    const p = await get("measurement");
    const r = await p.check({}, { ...args, __provider: "x" });
    expect(r.failures).toBeUndefined();
    const a = (args.image as { artifacts: Record<string, { path: string; sha256: string; size: number }> }).artifacts;
    const lib = await measureBake({ profile: "default", systemdStub: "257.13-1~deb13u1", artifacts: [
      { target: "uki", kind: "efi", ...a["uki.efi"] }, { target: "disk", kind: "raw", ...a["disk.raw"] },
    ] }, { backend: "azure" });
    expect(r.inputs.registers.PCR4).toBe(lib.registers.PCR4.value);
    expect(r.inputs.registers.PCR11).toBe(lib.registers.PCR11.value);
    expect(r.inputs.registers.PCR0).toBeNull();
    expect(r.inputs.status.PCR0).toMatch(/^WAIVED \(Azure's firmware: no published reference value/);
    expect(r.inputs.status.PCR4).toBe("exact");
    expect(r.inputs.diffMarkdown).toMatch(/^\| PCR0 \| WAIVED \| Azure's firmware/m);
    expect(r.inputs.ledger.PCR4.map((e: { digest: string }) => e.digest)).toEqual(lib.registers.PCR4.events.map((e) => e.digest));
    expect(r.inputs.diffMarkdown).toContain("First measurement");
    expect(r.inputs.measurementKey).toMatch(/^sha256:/);
  });

  it("rtmr with a TD shape and an envelope: RTMR0 predicted per host shape, the alternatives in the outputs; waivers show as WAIVED and are checked", async () => {
    const p = await get("measurement");
    const acpi = { tableLoader: "11".repeat(48), rsdp: "22".repeat(48), tables: "33".repeat(48) };
    const td = { ...args, backend: "rtmr", firmware: ovmfPath() };
    const r = await p.check({}, { ...td, tdShape: { memoryMiB: 2048, acpi, boot: "direct-kernel" }, shapeLabel: "2g", shapes: [{ label: "4g", tdShape: { memoryMiB: 4096, acpi, boot: "direct-kernel" } }] });
    expect(r.failures).toBeUndefined();
    expect([r.inputs.status.RTMR0, r.inputs.ledger.RTMR0.length, r.inputs.assumptions.shape]).toEqual(["exact", 13, "2g"]);
    expect(r.inputs.alternatives).toEqual([{ label: "4g", registers: { RTMR0: expect.stringMatching(/^[0-9a-f]{96}$/) }, status: { RTMR0: "exact" }, ledger: { RTMR0: expect.any(Array) } }]);
    expect(r.inputs.alternatives[0].registers.RTMR0).not.toBe(r.inputs.registers.RTMR0);
    const w = await p.check({}, { ...td, waive: { RTMR0: "lab host" } });
    expect([w.inputs.status.RTMR0, w.inputs.diffMarkdown]).toEqual(["WAIVED (lab host)", expect.stringContaining("| RTMR0 | WAIVED | lab host |")]);
    const bad = await p.check({}, { ...td, waive: { RTMR1: "x" } });
    expect(bad.failures[0].reason).toMatch(/^E_VALIDATION: cannot waive RTMR1: it is predicted/);
  });

  it("check reuses the previous values when the image did not change (no file is read)", async () => {
    const p = await get("measurement");
    const first = (await p.check({}, args)).inputs;
    const moved = { ...args, image: { ...(args.image as object), artifacts: Object.fromEntries(Object.entries((args.image as { artifacts: Record<string, { path: string }> }).artifacts).map(([k, v]) => [k, { ...v, path: "/nonexistent/" + k }])) } };
    const again = await p.check(first, moved);
    expect(again.failures).toBeUndefined();
    expect(again.inputs.registers).toEqual(first.registers);
    // Another image (other digest) is measured, and its files must exist.
    const other = { ...moved, image: { ...moved.image, artifacts: { ...moved.image.artifacts, "uki.efi": { ...moved.image.artifacts["uki.efi"], sha256: "0".repeat(64) } } } };
    const bad = await p.check(first, other);
    expect(bad.failures[0].reason).toMatch(/^E_MEASUREMENT: /);
  });

  it("a changed image's diff names the packages behind the registers that moved (kept in state for the next diff)", async () => {
    const p = await get("measurement");
    const pins = (hello: string) => ({ image: ["base-files=13.8", "hello=1.0-1"], initrd: ["base-files=13.8", `hello=${hello}`] });
    const first = (await p.check({}, { ...args, image: { ...(args.image as object), packages: pins("1.0-1") } })).inputs;
    expect(first.packages).toEqual(pins("1.0-1"));
    // Another initrd (its package updated): a new UKI.
    const uki2 = path.join(dir, "uki2.efi");
    writeUki(uki2, 8);
    const img = args.image as { artifacts: Record<string, { path: string; sha256: string; size: number }> };
    const next = { ...args, image: { ...img, bakeKey: "k2", packages: pins("1.0-2"), artifacts: { ...img.artifacts, "uki.efi": { path: uki2, sha256: sha256(readFileSync(uki2)), size: readFileSync(uki2).length } } } };
    const second = (await p.check(first, next)).inputs;
    expect(second.diffMarkdown).toMatch(/initrd[^|]*hello 1\.0-1 → 1\.0-2 \(in the initrd\)/);
    expect(second.packages).toEqual(pins("1.0-2"));
  });

  it("check passes unknown image outputs through (registers will be recomputed)", async () => {
    const p = await get("measurement");
    const r = await p.check({}, { image: UNKNOWN, backend: "azure" });
    expect(r.failures).toBeUndefined();
    expect(r.inputs).toEqual({ image: UNKNOWN, backend: "azure" });
  });

  it("diff: changes only when the measurement key or values change; never replaces", async () => {
    const p = await get("measurement");
    const c = (await p.check({}, args)).inputs;
    expect(await p.diff("id", c, c)).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
    expect(await p.diff("id", c, { ...c, measurementKey: "sha256:other" })).toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
    expect((await p.diff("id", c, { ...args, image: UNKNOWN })).changes).toBe(true);
  });

  it("create/update return the checked values; the id is content-addressed; delete and read are no-ops", async () => {
    const p = await get("measurement");
    const c = (await p.check({}, args)).inputs;
    const made = await p.create(c);
    expect(made.id).toBe(c.measurementKey.slice(7, 39));
    expect(made.outs.registers).toEqual(c.registers);
    const made2 = await p.create(c);
    expect(made2.id).toBe(made.id);
    const u = await p.update(made.id, made.outs, c);
    expect(u.outs.registers).toEqual(c.registers);
    expect((await p.read(made.id, made.outs)).props.registers).toEqual(c.registers);
    await expect(p.delete(made.id, made.outs)).resolves.toBeUndefined();
  });
});

describe.each(via)("image provider (%s)", (_how, get) => {
  let dir: string;
  const recipe = (motd: string) => new Image({ base: "debian/trixie", projectDir: dir }).file("/etc/motd", { content: motd });
  beforeAll(async () => {
    dir = await tempDir("tdxvm-prov-img-");
  });
  afterAll(() => fs.rm(dir, { recursive: true, force: true }));

  it("check validates the recipe and the options (E_VALIDATION, the input named in the reason, no property)", async () => {
    const p = await get("image");
    const bad = await p.check({}, { recipe: { base: "debian/bookworm" }, projectDir: dir });
    expect(bad.failures[0].property).toBe("");
    expect(bad.failures[0].reason).toMatch(/^E_VALIDATION: .*\(input recipe\)/);
    const badProfile = await p.check({}, { recipe: recipe("x").recipe, projectDir: dir, profile: "nope", bakeOnPreview: false });
    expect(badProfile.failures[0].reason).toMatch(/^E_VALIDATION: unknown profile "nope"/);
  });

  it("check without bakeOnPreview plans (recipe digest, bake key) without baking or writing", async () => {
    const p = await get("image");
    const img = recipe("plan only");
    const r = await p.check({}, { recipe: img.recipe, projectDir: dir, bakeOnPreview: false });
    expect(r.failures).toBeUndefined();
    expect(r.inputs.recipeDigest).toBe(img.digests().default);
    expect(r.inputs.artifacts).toBeUndefined();
    if (existsSync(toolsTreeDir(defaultCacheDir()))) expect(r.inputs.bakeKey).toMatch(/^[0-9a-f]{64}$/);
    expect(existsSync(path.join(dir, "build"))).toBe(false); // nothing written: no lock, no tree
  });

  it("check passes unknown inputs through; a frozen check without a lock fails with E_LOCKFILE", async () => {
    const p = await get("image");
    expect((await p.check({}, { recipe: UNKNOWN, projectDir: dir })).inputs).toEqual({ recipe: UNKNOWN, projectDir: dir });
    const r = await p.check({}, { recipe: recipe("frozen").recipe, projectDir: dir, frozen: true, bakeOnPreview: false });
    expect(r.failures[0].reason).toMatch(/^E_LOCKFILE: no lock file/);
    expect(r.failures[0].reason).toContain("hint:");
  });

  it("diff follows the bake key (content), not where the project lives", async () => {
    const p = await get("image");
    const a = (await p.check({}, { recipe: recipe("a").recipe, projectDir: dir, bakeOnPreview: false })).inputs;
    const b = (await p.check({}, { recipe: recipe("b").recipe, projectDir: dir, bakeOnPreview: false })).inputs;
    expect(await p.diff("k", a, a)).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
    expect(await p.diff("k", a, { ...a, projectDir: "/elsewhere" })).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
    expect(await p.diff("k", a, b)).toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
    // Refresh found the artifacts gone: bake again.
    expect((await p.diff("k", { ...a, missing: ["uki.efi"] }, a)).changes).toBe(true);
  });

  it("read reports artifacts that disappeared as drift", async () => {
    const p = await get("image");
    const f = path.join(dir, "a.efi");
    writeFileSync(f, "x");
    const props = { bakeKey: "k", artifacts: { "uki.efi": { path: f, sha256: "0".repeat(64), size: 1 }, "disk.raw": { path: path.join(dir, "gone.raw"), sha256: "0".repeat(64), size: 9 } } };
    const r = await p.read("k", props);
    expect(r.props.missing).toEqual(["disk.raw"]);
  });
});

describe.each(via)("qemu VM provider (%s)", (_how, get) => {
  const image = { bakeKey: "k", artifacts: { "qemu.raw": { path: "/x/disk.raw", sha256: "a".repeat(64), size: 1 } } };

  it("check validates the shape (disk, ports)", async () => {
    const p = await get("qemuVm");
    const noDisk = await p.check({}, { image: { artifacts: {} } });
    expect(noDisk.failures[0].reason).toMatch(/^E_DEPLOYMENT: the image has no raw disk/);
    const ports = await p.check({}, { image, ports: [{ guest: 22, host: 2222 }, { guest: 80, host: 2222 }] });
    expect(ports.failures[0].reason).toMatch(/^E_VALIDATION: two port forwards/);
    expect((await p.check({}, { image: UNKNOWN })).failures).toBeUndefined();
  });

  it("diff: a new disk or shape replaces (create-before-delete); pinned host ports delete first; readiness updates in place", async () => {
    const p = await get("qemuVm");
    const news = { image, memoryMiB: 2048, cpus: 2, ports: [{ guest: 22 }], readiness: { serial: "x" }, accel: "auto", tdx: "auto" };
    const olds = { ...news, diskSha256: "a".repeat(64), forwards: [{ guest: 22, host: 40022, bind: "127.0.0.1" }], running: true };
    expect(await p.diff("vm", olds, news)).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
    expect(await p.diff("vm", olds, { ...news, readiness: { serial: "y" } })).toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
    const newDisk = { ...news, image: { ...image, artifacts: { "qemu.raw": { ...image.artifacts["qemu.raw"], sha256: "b".repeat(64) } } } };
    expect(await p.diff("vm", olds, newDisk)).toEqual({ changes: true, replaces: ["image"], deleteBeforeReplace: false });
    expect((await p.diff("vm", olds, { ...news, memoryMiB: 4096 })).replaces).toEqual(["memoryMiB"]);
    expect(await p.diff("vm", olds, { ...newDisk, ports: [{ guest: 22, host: 40022 }] })).toEqual({ changes: true, replaces: ["image"], deleteBeforeReplace: true });
    expect((await p.diff("vm", { ...olds, running: false }, news)).replaces).toEqual(["running"]);
  });

  it("read shows a VM whose QEMU is gone as not running; delete of a gone VM removes its (marked) state directory and nothing else", async () => {
    const p = await get("qemuVm");
    const root = await tempDir("tdxvm-vms-");
    const dir = path.join(root, "vm-0123456789ab");
    await fs.mkdir(dir);
    await markVmDir(dir);
    const r = await p.read("vm", { pid: 999_999_999, startTime: 1, stateDir: dir, stateRoot: root });
    expect(r.props.running).toBe(false);
    const foreign = await tempDir("tdxvm-not-a-vm-");
    await p.delete("vm", { pid: 999_999_999, startTime: 1, stateDir: foreign, stateRoot: root });
    expect(existsSync(foreign)).toBe(true);
    await p.delete("vm", { pid: 999_999_999, startTime: 1, stateDir: dir, stateRoot: root });
    expect(existsSync(dir)).toBe(false);
    await fs.rm(foreign, { recursive: true, force: true });
  });
});

describe.each(via)("unique name provider (%s)", (_how, get) => {
  it("draws prefix + random [a-z0-9] once; a second resource gets another name", async () => {
    const p = await get("uniqueName");
    const args = { prefix: "tdxapp", randomLength: 10, maxLength: 24 };
    expect((await p.check({}, args)).failures).toBeUndefined();
    const a = await p.create(args);
    const b = await p.create(args);
    expect(a.outs.name).toMatch(/^tdxapp[a-z0-9]{10}$/);
    expect(a.outs.name).toBe(`tdxapp${a.outs.suffix}`);
    expect(a.id).toBe(a.outs.name);
    expect(b.outs.name).not.toBe(a.outs.name);
    // Crypto-random: 200 draws of 10 characters use (nearly) the whole alphabet, each position varies.
    const draws = await Promise.all(Array.from({ length: 200 }, () => p.create(args)));
    expect(new Set(draws.map((d: { outs: { suffix: string } }) => d.outs.suffix)).size).toBe(200);
    expect(new Set(draws.flatMap((d: { outs: { suffix: string } }) => [...d.outs.suffix])).size).toBeGreaterThanOrEqual(34);
  });

  it("keeps the name across updates; a new prefix or length draws a new one (replace)", async () => {
    const p = await get("uniqueName");
    const made = await p.create({ prefix: "tdxapp", randomLength: 10, maxLength: 24 });
    expect(await p.diff(made.id, made.outs, { prefix: "tdxapp", randomLength: 10, maxLength: 24, __provider: "x" })).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
    expect(await p.diff(made.id, made.outs, { prefix: "tdxapp" })).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false }); // defaults
    expect(await p.diff(made.id, made.outs, { prefix: "tdxother", randomLength: 10, maxLength: 24 })).toEqual({ changes: true, replaces: ["prefix"], deleteBeforeReplace: false });
    expect((await p.diff(made.id, made.outs, { prefix: UNKNOWN, randomLength: 10, maxLength: 24 })).replaces).toEqual(["prefix"]);
    expect((await p.update(made.id, made.outs, { prefix: "tdxapp", randomLength: 10, maxLength: 24 })).outs.name).toBe(made.outs.name);
    expect((await p.read(made.id, made.outs)).props.name).toBe(made.outs.name);
  });

  it("check: a prefix Azure accepts, and room for the random part", async () => {
    const p = await get("uniqueName");
    expect((await p.check({}, { prefix: "Tdx-app" })).failures[0]).toMatchObject({ property: "", reason: expect.stringMatching(/^E_VALIDATION: prefix: lowercase letters and digits/) });
    expect((await p.check({}, { prefix: "tdxaverylongprefix", randomLength: 10, maxLength: 24 })).failures[0]).toMatchObject({ property: "", reason: expect.stringMatching(/^E_VALIDATION: prefix \(18 characters\) \+ 10 random ones exceed 24/) });
    expect((await p.check({}, { prefix: "tdxapp", randomLength: 4 })).failures[0].reason).toMatch(/randomLength/);
  });
});

describe.each(via)("owner key provider (%s)", (_how, get) => {
  it("draws an Ed25519 key once; never changes it by itself; refuses state whose public key is not its private key's", async () => {
    const p = await get("ownerKey");
    const a = await p.create({});
    const b = await p.create({});
    expect(a.outs.publicKey).toMatch(/^ed25519:[A-Za-z0-9+/]{43}=$/);
    expect(a.outs.publicKey).toBe(ownerPublicKey(ownerSigningKey(a.outs.privateKey)));
    expect(b.outs.publicKey).not.toBe(a.outs.publicKey);
    expect(await p.diff(a.id, a.outs, {})).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
    expect((await p.read(a.id, a.outs)).props.publicKey).toBe(a.outs.publicKey);
    await expect(p.read(a.id, { ...a.outs, publicKey: b.outs.publicKey })).rejects.toThrow(/not its private key's/);
  });
});

describe.each(via)("VM attestation provider (%s)", (_how, get) => {
  const decls = new Image({ base: "debian/trixie" }).secret("API_TOKEN", { schema: SecretSchema.string({ minLength: 16 }), targets: [SecretTarget.env("API_TOKEN")] }).recipe.secrets;
  const expected = { backend: "azure", registers: { PCR4: "a".repeat(64) }, status: { PCR4: "exact" }, ledger: { PCR4: [] }, assumptions: {} };
  const base = { target: "vm-1", endpoint: "127.0.0.1:8443", expected, secretDecls: decls };

  it("check validates the secrets against the image's declarations without echoing a value, and names no property", async () => {
    const p = await get("attestation");
    const short = "short-secret-value";
    const r = await p.check({}, { ...base, secrets: { API_TOKEN: "tooshort", OTHER: short } });
    expect(r.failures[0].reason).toMatch(/^E_SECRET: /);
    expect(r.failures[0].reason).toContain("OTHER");
    expect(r.failures[0].property).toBe("");
    expect(JSON.stringify(r.failures)).not.toContain("tooshort");
    expect(JSON.stringify(r.failures)).not.toContain(short);
    expect((await p.check({}, { ...base, secrets: {} })).failures[0].reason).toContain("missing: API_TOKEN");
    expect((await p.check({}, { ...base, endpoint: "no port" })).failures[0]).toEqual({ property: "", reason: expect.stringMatching(/^E_VALIDATION: endpoint: /) });
    // A fitting payload still needs the owner's key: the VM accepts secrets from no one else.
    expect((await p.check({}, { ...base, secrets: { API_TOKEN: "0123456789abcdef" } })).failures[0].reason).toMatch(/^E_VALIDATION: secrets for the VM need the image owner's key/);
    expect((await p.check({}, { ...base, secrets: { API_TOKEN: "0123456789abcdef" }, ownerKey: newOwnerKey().privateKeyPem })).failures).toBeUndefined();
  });

  it("diff: a new VM, expectation or secret replaces (attest and deliver again)", async () => {
    const p = await get("attestation");
    const news = { ...base, secrets: { API_TOKEN: "0123456789abcdef" }, timeoutSeconds: 300 };
    const olds = { ...news, secrets: undefined, secretsDigest: secretsDigest(news.secrets), attested: true };
    expect(await p.diff("a", olds, news)).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
    expect((await p.diff("a", olds, { ...news, target: "vm-2" })).replaces).toEqual(["target"]);
    expect((await p.diff("a", olds, { ...news, expected: { ...expected, registers: { PCR4: "b".repeat(64) } } })).replaces).toEqual(["expected"]);
    expect((await p.diff("a", olds, { ...news, secrets: { API_TOKEN: "fedcba9876543210" } })).replaces).toEqual(["secrets"]);
    expect(await p.diff("a", olds, { ...news, timeoutSeconds: 600 })).toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
  });
});

describe("check failures through the engine-like harness", () => {
  it("are printed the way the engine prints them, and a secret input never appears next to one", async () => {
    const { pulumiOp } = await import("../harness");
    const { checkFailureMessage } = await import("../harness/engine");
    // The harness prints like the engine: a named property shows that input's value, secret or not.
    const marked = { url: { "4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", value: "s3cr3t" } };
    expect(checkFailureMessage("tdxvm:index:RolloutGate", "gate", marked, { property: "url", reason: "bad" })).toBe("tdxvm:index:RolloutGate resource 'gate's property 'url' value {&{{s3cr3t}}} has a problem: bad");
    expect(checkFailureMessage("tdxvm:index:RolloutGate", "gate", marked, { property: "", reason: "bad" })).toBe("tdxvm:index:RolloutGate resource 'gate' has a problem: bad");
    const dir = await tempDir("tdxvm-checkfail-");
    const token = `not-a-url-${Date.now().toString(36)}-tok`;
    const r = await pulumiOp("preview", { program: "tests/provider/programs/checkFailure.ts", project: "tdxvm-checkfail", dir, secretConfig: { url: token } });
    const printed = JSON.stringify(r) + r.stdout + (await fs.readFile(path.join(dir, "host.log"), "utf8").catch(() => ""));
    expect(r.ok).toBe(false);
    expect(printed).toMatch(/resource 'gate' has a problem: E_VALIDATION: url: /);
    expect(printed).not.toContain(token);
    await fs.rm(dir, { recursive: true, force: true });
  }, 120_000);
});
