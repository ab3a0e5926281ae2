/**
 * State is hostile until validated: every dynamic-provider method that reads `olds` or `props`
 * validates them with zod and fails with a typed error (E_VALIDATION, as the message the host
 * forwards: "E_VALIDATION: …"), never a TypeError and never an action taken on a malformed value.
 * Measurement inputs that name missing files fail with E_MEASUREMENT, not ENOENT.
 */
import fc from "fast-check";
import { promises as fs } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { imageProvider } from "../../provider/dynamic/image";
import { measurementProvider, fileSha256 } from "../../provider/dynamic/measurement";
import { createHash } from "node:crypto";
import { qemuVmProvider } from "../../provider/dynamic/qemuVm";
import { attestationProvider } from "../../provider/dynamic/attestation";
import { gateProvider } from "../../provider/dynamic/gate";
import { azureBlobProvider } from "../../provider/dynamic/azureBlob";
import { uniqueNameProvider } from "../../provider/dynamic/uniqueName";
import { measureBake } from "../../provider/measure/api";
import { ERROR_CODES, TdxError } from "../../provider/errors";

process.env.TDXVM_PROVIDER_QUIET = "1";

/** The code of what `fn` threw: a TdxError's, or the "E_X:" prefix the host-facing Error carries; else the error's name. */
async function codeOf(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
    return "no error";
  } catch (e) {
    if (e instanceof TdxError) return e.code;
    const code = (e as { code?: unknown }).code;
    const m = /^(E_[A-Z]+):/.exec((e as Error).message ?? "");
    if (typeof code === "string" && code in ERROR_CODES && m?.[1] === code) return code;
    return `${(e as Error).name}: ${(e as Error).message}`;
  }
}

const sha = "0".repeat(64);
// Each provider's state-reading methods, called with `state` as olds/props. None of these can act
// (bake, boot, upload) before it has read the state.
const methods: Record<string, (state: Record<string, unknown>) => Promise<unknown>> = {
  "image.diff": (s) => imageProvider.diff("id", s, { recipe: {}, projectDir: "." }),
  "image.read": (s) => imageProvider.read("id", s),
  "image.update": (s) => imageProvider.update("id", {}, { recipe: {}, projectDir: ".", ...s }),
  "measurement.diff": (s) => measurementProvider.diff("id", s, { measurementKey: "k", registers: {} }),
  "measurement.update": (s) => measurementProvider.update("id", {}, { ...s, measurementKey: "sha256:k", registers: {} }),
  "qemu.diff": (s) => qemuVmProvider.diff("id", s, { image: { artifacts: { "qemu.raw": { path: "/x", sha256: sha, size: 1 } } } }),
  "qemu.update": (s) => qemuVmProvider.update("id", s, {}),
  "qemu.read": (s) => qemuVmProvider.read("id", s),
  "qemu.delete": (s) => qemuVmProvider.delete("id", s),
  "attestation.diff": (s) => attestationProvider.diff("id", s, {}),
  "attestation.update": (s) => attestationProvider.update("id", s, {}),
  "attestation.read": (s) => attestationProvider.read("id", s),
  "gate.diff": (s) => gateProvider.diff("id", s, {}),
  "gate.update": (s) => gateProvider.update("id", s, {}),
  "gate.read": (s) => gateProvider.read("id", s),
  "azureBlob.diff": (s) => azureBlobProvider.diff("id", s, {}),
  "azureBlob.update": (s) => azureBlobProvider.update("id", s, {}),
  "azureBlob.read": (s) => azureBlobProvider.read("a/b/c.vhd", s),
  "azureBlob.delete": (s) => azureBlobProvider.delete("a/b/c.vhd", s),
  "uniqueName.diff": (s) => uniqueNameProvider.diff("id", s, { prefix: "tdx" }),
  "uniqueName.update": (s) => uniqueNameProvider.update("id", s, { prefix: "tdx" }),
  "uniqueName.read": (s) => uniqueNameProvider.read("id", s),
};

describe("dynamic providers validate the state they are handed", () => {
  it("malformed state of each provider is E_VALIDATION (a crash or a silent misuse before)", async () => {
    // Values of the wrong type for fields each provider reads from state.
    const bad: Record<string, Record<string, unknown>> = {
      image: { artifacts: { "uki.efi": { size: 1 } } },
      measurement: { registers: { PCR4: 5 }, ledger: { PCR4: "not a list" } },
      qemu: { pid: "1", startTime: "now", forwards: 5, stateDir: 7 },
      attestation: { secretsDigest: 5, checks: "ok" },
      gate: { attempts: "many" },
      azureBlob: { blobName: "--help", exists: "yes" },
      uniqueName: { name: "Bad Name; rm -rf", randomLength: "ten" },
    };
    const got: Record<string, string> = {};
    for (const [name, call] of Object.entries(methods)) got[name] = await codeOf(() => call(bad[name.split(".")[0]!]!));
    expect(got).toEqual(Object.fromEntries(Object.keys(methods).map((k) => [k, "E_VALIDATION"])));
  });

  it("check with malformed old state reports a typed failure", async () => {
    const r = await measurementProvider.check({ registers: "x" }, { image: { artifacts: { "uki.efi": { path: "/nonexistent/u", sha256: sha, size: 1 }, "disk.raw": { path: "/nonexistent/d", sha256: sha, size: 1 } } }, backend: "azure" });
    expect(r.failures?.map((f) => f.reason.split(":")[0])).toEqual(["E_VALIDATION"]);
  });

  it("fuzz: any state value in any field gives a result or a typed error, never another exception", async () => {
    const keys = ["artifacts", "bakeKey", "missing", "registers", "ledger", "status", "assumptions", "measurementKey", "pid", "startTime", "bootId", "stateDir", "stateRoot", "forwards", "running", "secretsDigest", "checks", "attempts", "accountName", "containerName", "blobName", "exists", "name", "suffix", "prefix", "randomLength"];
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...Object.keys(methods)), fc.dictionary(fc.constantFrom(...keys), fc.anything()), async (name, state) => {
        const code = await codeOf(() => methods[name]!(state));
        expect(code === "no error" || code in ERROR_CODES ? "typed" : `${name}: ${code}`).toBe("typed");
      }),
      { numRuns: 400, seed: 1005 },
    );
  });
});

describe("QemuVm admission (attesting rollouts) never replaces a running VM", () => {
  it("adding, changing or not yet knowing `admission` is an in-place update of the VM's record; the disk still replaces", async () => {
    const image = { artifacts: { "qemu.raw": { path: "/x/disk.raw", sha256: sha, size: 1 } } };
    const olds = { image, memoryMiB: 2048, cpus: 2, ports: [{ guest: 8443 }], readiness: {}, accel: "auto", tdx: "auto", diskSha256: sha, forwards: [{ guest: 8443, host: 40000, bind: "127.0.0.1" }], running: true };
    const expected = { backend: "azure", registers: { PCR11: "1".repeat(64) }, status: { PCR11: "exact" }, ledger: { PCR11: [] }, assumptions: {} };
    const admission = { wave: 0, waves: 2, guestPort: 8443, expected, trust: { allowSimulator: false } };
    const news = { ...olds, admission };
    expect(await qemuVmProvider.diff("id", olds, news)).toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
    expect(await qemuVmProvider.diff("id", { ...olds, admission }, { ...olds, admission: { ...admission, wave: 1 } })).toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
    expect(await qemuVmProvider.diff("id", { ...olds, admission }, news)).toMatchObject({ changes: false, replaces: [] });
    // Preview: the measurement not known yet.
    const unknown = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";
    expect((await qemuVmProvider.diff("id", olds, { ...olds, admission: { ...admission, expected: unknown } })).replaces).toEqual([]);
    // A new disk still replaces, admission or not.
    expect((await qemuVmProvider.diff("id", olds, { ...news, image: { artifacts: { "qemu.raw": { path: "/x/disk.raw", sha256: "1".repeat(64), size: 1 } } } })).replaces).toEqual(["image"]);
  });
});

describe("missing measurement inputs are E_MEASUREMENT", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "tdxvm-measure-missing-"));
    await fs.writeFile(path.join(dir, "uki.efi"), "MZ");
    await fs.writeFile(path.join(dir, "disk.raw"), "not a disk");
    await fs.mkdir(path.join(dir, "firmware-dir"));
  });
  afterAll(() => fs.rm(dir, { recursive: true, force: true }));
  const artifacts = () => ({ "uki.efi": { path: path.join(dir, "uki.efi"), sha256: sha, size: 2 }, "disk.raw": { path: path.join(dir, "disk.raw"), sha256: sha, size: 10 } });

  it("a captured CCEL path that does not exist (measureBake and TdxMeasurement check)", async () => {
    const bake = { profile: "default", systemdStub: null, artifacts: [{ target: "uki" as const, kind: "efi", path: path.join(dir, "uki.efi"), sha256: sha, size: 2 }, { target: "disk" as const, kind: "raw", path: path.join(dir, "disk.raw"), sha256: sha, size: 10 }] };
    expect(await codeOf(() => measureBake(bake, { backend: "rtmr", capturedCcel: path.join(dir, "no-such-ccel.bin"), cacheDir: dir }))).toBe("E_MEASUREMENT");
    const r = await measurementProvider.check({}, { image: { artifacts: artifacts() }, backend: "rtmr", capturedCcel: path.join(dir, "no-such-ccel.bin"), firmware: path.join(dir, "uki.efi"), cacheDir: dir });
    expect(r.failures?.map((f) => f.reason.split(":")[0])).toEqual(["E_MEASUREMENT"]);
  });

  it("a firmware path that is not a readable file", async () => {
    const r = await measurementProvider.check({}, { image: { artifacts: artifacts() }, backend: "rtmr", firmware: path.join(dir, "firmware-dir"), cacheDir: dir });
    expect(r.failures?.map((f) => f.reason.split(":")[0])).toEqual(["E_MEASUREMENT"]);
    expect(r.failures?.[0]?.reason).toMatch(/firmware .*firmware-dir \(it is a directory\)/);
  });
});

describe("digests of files a measurement key covers", () => {
  it("are read once while the file is unchanged, again after any write or replacement, and every time while just written", async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "tdxvm-fwdigest-"));
    const fw = path.join(dir, "OVMF.fd");
    const hex = (s: string) => createHash("sha256").update(s).digest("hex");
    const reads = jest.spyOn(fs, "readFile");
    const readsOfFw = () => reads.mock.calls.filter(([f]) => f === fw).length;
    const settle = () => new Promise((r) => setTimeout(r, 2100)); // older than the coarse-clock window
    try {
      await fs.writeFile(fw, "firmware A");
      expect(await fileSha256(fw, "firmware")).toBe(hex("firmware A"));
      expect(await fileSha256(fw, "firmware")).toBe(hex("firmware A"));
      expect(readsOfFw()).toBe(2); // just written: not remembered
      await settle();
      expect(await fileSha256(fw, "firmware")).toBe(hex("firmware A"));
      expect(await fileSha256(fw, "firmware")).toBe(hex("firmware A"));
      expect(readsOfFw()).toBe(3); // settled: read once
      await fs.writeFile(fw, "firmware B"); // same size, written in place
      expect(await fileSha256(fw, "firmware")).toBe(hex("firmware B"));
      await fs.writeFile(path.join(dir, "new"), "firmware C");
      await fs.rename(path.join(dir, "new"), fw); // replaced by another file
      await settle();
      expect(await fileSha256(fw, "firmware")).toBe(hex("firmware C"));
      expect(await fileSha256(fw, "firmware")).toBe(hex("firmware C"));
      expect(readsOfFw()).toBe(5);
      await fs.rm(fw);
      await expect(fileSha256(fw, "firmware")).rejects.toMatchObject({ code: "E_MEASUREMENT" });
    } finally {
      reads.mockRestore();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
