/**
 * Every `tdxvm` command as a user or CI runs it: the real binary (`node bin/tdxvm.js`) as a child
 * process, on real bakes of the example image (examples/local-qemu/recipe.ts) and of the same image
 * with one more kernel command-line word — cache hits once baked (the provider tests bake both).
 * `run` and `verify` on a booted guest's evidence are in run.test.ts (one boot for both).
 */
import { promises as fs, existsSync, statSync, readFileSync } from "node:fs";
import { createHash } from "node:crypto";
import * as path from "node:path";
import { spawn, ChildProcess } from "node:child_process";
import * as net from "node:net";
import { runTdxvm, tempDir } from "../helpers";
import { FlashbotsFileSchema, ConstellationSchema, parseMeasurements } from "../../provider/measure/formats";
import type { BakeResult } from "../../provider/bake";
import type { RegisterDiff } from "../../provider/measure/ledger";
import type { CacheListing, PruneResult } from "../../provider/bake/cache";
import { COMMANDS, commandNamed } from "../../provider/cli";

jest.setTimeout(40 * 60_000);

const repo = path.resolve(__dirname, "../..");
const EXAMPLE = "examples/local-qemu/recipe.ts";
let dir: string;
let blue: string;

beforeAll(async () => {
  dir = await tempDir("tdxvm-cli-");
  // The example with one more kernel command-line word (the change a pull request makes).
  blue = path.join(dir, "blue", "recipe.js");
  await fs.mkdir(path.dirname(blue), { recursive: true });
  await fs.writeFile(blue, `module.exports = () => require(${JSON.stringify(path.join(repo, "examples/local-qemu/recipe"))}).recipe(__dirname, { cmdline: ["tdxvm.role=blue"] });\n`);
  // A pull request changes the recipe, not the lock: the variant bakes with the example's pinned packages.
  await fs.copyFile(path.join(repo, "examples/local-qemu/tdx.lock"), path.join(dir, "blue", "tdx.lock"));
});
afterAll(() => fs.rm(dir, { recursive: true, force: true }));

describe("usage", () => {
  it("--version, help per command, typo suggestions; usage errors exit 2", async () => {
    const v = await runTdxvm(["--version"]);
    expect([v.code, v.stdout.trim()]).toEqual([0, JSON.parse(await fs.readFile(path.join(repo, "package.json"), "utf8")).version]);
    const h = await runTdxvm(["cache", "prune", "--help"]);
    expect(h.code).toBe(0);
    for (const o of ["--keep <n>", "--older-than <duration>", "--max-size <size>", "--dry-run"]) expect(h.stdout).toContain(o);
    // Only the command argv names is built; help without one lists them all.
    const all = await runTdxvm(["--help"]);
    for (const c of Object.keys(COMMANDS)) expect(all.stdout).toMatch(new RegExp(`^  ${c} `, "m"));
    expect(Object.keys(COMMANDS).sort()).toEqual(["archive", "attest", "bake", "cache", "diff", "emit", "lock", "measure", "owner-key", "provision", "rebuild", "rollout", "run", "verify", "vm"]);
    const mh = await runTdxvm(["--cache-dir", dir, "-q", "measure", "--help"]);
    expect([mh.code, mh.stdout]).toEqual([0, expect.stringContaining("Usage: tdxvm measure [options] [recipe]")]);
    expect([commandNamed(["--cache-dir", "bake", "measure"]), commandNamed(["--cache-dir=/c", "-q", "cache", "ls"]), commandNamed(["--help"]), commandNamed(["mesure"]), commandNamed(["help", "bake"])])
      .toEqual(["measure", "cache", undefined, undefined, undefined]);
    // rollout: stack names are checked first; then the Pulumi CLI (not on this PATH) is asked for, before any stack.
    const env = { ...process.env, CI: undefined, PATH: path.dirname(process.execPath) };
    const badStacks = await runTdxvm(["rollout", "--stacks", "canary,,prod"], { env });
    expect([badStacks.code, badStacks.stderr]).toEqual([2, expect.stringMatching(/^E_VALIDATION: --stacks: "" is not a stack name/m)]);
    const noPulumi = await runTdxvm(["rollout", "--stacks", "canary,prod-eu"], { env });
    expect([noPulumi.code, noPulumi.stdout]).toEqual([2, ""]);
    expect(noPulumi.stderr).toMatch(/^E_DEPLOYMENT: tdxvm rollout drives the Pulumi CLI, and `pulumi version` did not run here \(no pulumi on PATH\)/m);
    expect(noPulumi.stderr).toMatch(/hint: Install the Pulumi CLI/);
    const typo = await runTdxvm(["mesure", EXAMPLE]);
    expect(typo.code).toBe(2);
    expect(typo.stderr).toContain("Did you mean measure?");
    const noBackend = await runTdxvm(["measure", EXAMPLE]);
    expect(noBackend.code).toBe(2);
    expect(noBackend.stderr).toContain("required option '--backend <backend>' not specified");
    const badBackend = await runTdxvm(["measure", EXAMPLE, "--backend", "sev"]);
    expect(badBackend.code).toBe(2);
    expect(badBackend.stderr).toContain("Allowed choices are rtmr, azure, gcp");
  });

  it("a TdxError exits 2 with its code and hint", async () => {
    const r = await runTdxvm(["diff", "package.json", "package.json"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^E_VALIDATION: package\.json is not a tdxvm measurements file/m);
    expect(r.stderr).toContain("hint:");
  });
});

describe("lock, emit, bake", () => {
  it("lock writes tdx.lock beside the recipe, emit the mkosi tree, bake lists the artifacts (a cache hit)", async () => {
    const lock = await runTdxvm(["lock", EXAMPLE]);
    expect(lock.code).toBe(0);
    expect(lock.stdout).toContain(path.join(repo, "examples/local-qemu/tdx.lock"));
    const emit = await runTdxvm(["emit", EXAMPLE, "--frozen"]);
    expect(emit.code).toBe(0);
    expect(existsSync(path.join(repo, "examples/local-qemu/build/mkosi/mkosi.conf"))).toBe(true);
    const bake = await runTdxvm(["--quiet", "bake", EXAMPLE, "--json"]);
    expect(bake.code).toBe(0);
    const r = JSON.parse(bake.stdout) as BakeResult;
    expect(r.artifacts.map((a) => `${a.target}.${a.kind}`)).toEqual(expect.arrayContaining(["uki.efi", "disk.raw", "azure.vhd", "gcp.tar.gz"]));
    for (const a of r.artifacts) expect(statSync(a.path).size).toBe(a.size);
  });
});

describe("rebuild, archive", () => {
  it("rebuild confirms measurements files (frozen from the lock: UKI, disk and every register the same); a file that differs is exit 3 naming the row", async () => {
    // Files as a release would publish them (the gate in .ci/run checks the committed ones).
    const files = ["rtmr", "azure"].map((b) => path.join(dir, `published.${b}.json`));
    for (const [i, b] of ["rtmr", "azure"].entries()) expect((await runTdxvm(["--quiet", "measure", EXAMPLE, "--backend", b, "--out", files[i]])).code).toBe(0);
    const ok = await runTdxvm(["--quiet", "rebuild", EXAMPLE, "--expect", ...files, "--json"]);
    expect(ok.code).toBe(0);
    const rows = (JSON.parse(ok.stdout) as { ok: boolean; rows: Array<{ what: string; ok: boolean }> }).rows;
    expect(rows.map((r) => r.what)).toEqual(expect.arrayContaining(["UKI sha256", "disk sha256", "rtmr RTMR1", "rtmr RTMR2", "azure PCR11"]));
    expect(rows.every((r) => r.ok)).toBe(true);
    // A published file whose RTMR2 is not this image's.
    const m = JSON.parse(await fs.readFile(files[0], "utf8")) as { registers: Record<string, { value: string }> };
    m.registers.RTMR2.value = "00".repeat(48);
    const other = path.join(dir, "other.rtmr.json");
    await fs.writeFile(other, JSON.stringify(m));
    const bad = await runTdxvm(["--quiet", "rebuild", EXAMPLE, "--expect", other]);
    expect(bad.code).toBe(3);
    expect(bad.stdout).toMatch(/^other\.rtmr\.json\s+rtmr RTMR2\s+0{16}…\s+[0-9a-f]{16}…\s+DIFFERENT$/m);
    expect(bad.stdout).toMatch(/^other\.rtmr\.json\s+rtmr RTMR0\s+platform-defined\s+platform-defined\s+same$/m);
    expect(bad.stdout).toMatch(/MISMATCH: 1 of \d+ differ/);
  });

  it("archive export writes the lock's pinned .debs as a tarball; import into an empty cache takes each one, checked against its name", async () => {
    const tar = path.join(dir, "archive.tar");
    const exp = await runTdxvm(["archive", "export", EXAMPLE, tar]);
    expect(exp.code).toBe(0);
    const lock = JSON.parse(await fs.readFile(path.join(repo, "examples/local-qemu/tdx.lock"), "utf8")) as { debs: Record<string, { sha256: string }> };
    const n = Object.keys(lock.debs).length;
    expect(exp.stdout).toContain(`${tar}: ${n} package(s)`);
    const cache = await tempDir("tdxvm-import-");
    const imp = await runTdxvm(["--cache-dir", cache, "archive", "import", tar]);
    expect([imp.code, imp.stdout.trim()]).toEqual([0, `imported ${n} package(s) into ${path.join(cache, "content")}`]);
    for (const d of Object.values(lock.debs).slice(0, 5)) expect(createHash("sha256").update(readFileSync(path.join(cache, "content", "sha256", d.sha256))).digest("hex")).toBe(d.sha256);
    await fs.rm(cache, { recursive: true, force: true });
  });
});

describe("measure, diff", () => {
  const file = (n: string) => path.join(dir, n);

  it("writes the tdxvm file and the flashbots and Constellation exports of the same registers", async () => {
    for (const backend of ["rtmr", "azure"]) {
      const r = await runTdxvm(["--quiet", "measure", EXAMPLE, "--backend", backend, "--out", file(`${backend}.json`)]);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(backend === "rtmr" ? /^RTMR1\s+predicted\s+[0-9a-f]{96}$/m : /^PCR11\s+predicted\s+[0-9a-f]{64}$/m);
    }
    const td = parseMeasurements(await fs.readFile(file("rtmr.json"), "utf8"), "rtmr.json");
    // RTMR0 is neither pinned nor waived here: an export (whose verifier checks only what it lists) is refused.
    const open = await runTdxvm(["--quiet", "measure", EXAMPLE, "--backend", "rtmr", "--format", "flashbots", "--json"]);
    expect([open.code, open.stderr]).toEqual([2, expect.stringMatching(/E_POLICY: cannot export RTMR0: not pinned and not waived/)]);
    const fb = await runTdxvm(["--quiet", "measure", EXAMPLE, "--backend", "rtmr", "--format", "flashbots", "--json", "--waive", 'RTMR0:"lab host"']);
    expect(fb.code).toBe(0);
    const flashbots = FlashbotsFileSchema.parse(JSON.parse(fb.stdout));
    expect(flashbots[0].attestation_type).toBe("qemu-tdx");
    expect(flashbots[0].measurements).toEqual({
      0: { expected_any: [td.registers.MRTD.value] }, 2: { expected_any: [td.registers.RTMR1.value] },
      3: { expected_any: [td.registers.RTMR2.value] }, 4: { expected_any: ["0".repeat(96)] },
    });
    const md = await runTdxvm(["--quiet", "measure", EXAMPLE, "--backend", "rtmr", "--markdown"]);
    expect(md.stdout).toContain("### Measurements (rtmr)\n\n| register | pinned | value | events |\n|---|---|---|---|\n");
    expect(md.stdout).toMatch(/^\| RTMR0 \| NOT PINNED \| — \| TD HOB, CFV, ACPI tables/m);
    expect(md.stdout).toContain(`| RTMR2 | predicted | \`${td.registers.RTMR2.value}\` | ${td.registers.RTMR2.events.length} event(s) |`);
    // A waiver named on the command line is in the file and in the table, with its reason.
    const waived = await runTdxvm(["--quiet", "measure", EXAMPLE, "--backend", "rtmr", "--markdown", "--waive", 'RTMR0:"lab host, canary pending"']);
    expect(waived.stdout).toMatch(/^\| RTMR0 \| WAIVED \(lab host, canary pending\) \| — \|/m);
    const badWaiver = await runTdxvm(["--quiet", "measure", EXAMPLE, "--backend", "rtmr", "--waive", "RTMR1:predicted anyway"]);
    expect([badWaiver.code, badWaiver.stderr]).toEqual([2, expect.stringMatching(/E_VALIDATION.*cannot waive RTMR1: it is predicted/)]);
    const co = await runTdxvm(["--quiet", "measure", EXAMPLE, "--backend", "azure", "--format", "constellation", "--out", file("constellation.json")]);
    expect(co.code).toBe(0);
    const vtpm = parseMeasurements(await fs.readFile(file("azure.json"), "utf8"), "azure.json");
    const constellation = ConstellationSchema.parse(JSON.parse(await fs.readFile(file("constellation.json"), "utf8")));
    expect(Object.keys(constellation)).toEqual(["4", "8", "9", "11", "12", "13"]);
    expect(constellation["11"]).toEqual({ expected: vtpm.registers.PCR11.value, warnOnly: false });
  });

  it("--uki and --disk measure the bake's files without the recipe: the same registers; a recipe and files together, or half of the files, are usage errors", async () => {
    const bake = JSON.parse((await runTdxvm(["--quiet", "bake", EXAMPLE, "--json"])).stdout) as BakeResult;
    const [uki, disk] = ["uki", "disk"].map((t) => bake.artifacts.find((a) => a.target === t)!.path);
    for (const backend of ["rtmr", "azure"]) {
      const r = await runTdxvm(["--quiet", "measure", "--uki", uki!, "--disk", disk!, "--backend", backend, "--out", file(`${backend}-files.json`)]);
      expect(r.code).toBe(0);
      const [fromRecipe, fromFiles] = await Promise.all([`${backend}.json`, `${backend}-files.json`].map(async (n) => parseMeasurements(await fs.readFile(file(n), "utf8"), n)));
      expect(fromFiles.registers).toEqual(fromRecipe!.registers);
      expect(fromFiles.inputs).toMatchObject({ uki: path.basename(uki!), disk: path.basename(disk!), rootfs: fromRecipe!.inputs.rootfs });
      expect((await runTdxvm(["--quiet", "measure", "--uki", uki!, "--disk", disk!, "--backend", backend, "--check", file(`${backend}.json`)])).code).toBe(0);
    }
    for (const args of [[EXAMPLE, "--uki", uki!, "--disk", disk!], ["--uki", uki!], ["--uki", uki!, "--disk", disk!, "--profile", "default"], [EXAMPLE, "--rootfs", "none"]]) {
      const r = await runTdxvm(["measure", ...args, "--backend", "azure"]);
      expect({ code: r.code, error: r.stderr.match(/^E_VALIDATION: .*/m)?.[0] }).toEqual({ code: 2, error: expect.stringMatching(/measure needs a recipe, or --uki and --disk|do not go with --uki|--rootfs goes with --uki/) });
    }
    // Measuring files loads the measurement code only: no recipe, lock or bake code, and no zod.
    const hook = path.join(dir, "loaded.js");
    await fs.writeFile(hook, `process.on("exit", () => require("fs").writeFileSync(${JSON.stringify(path.join(dir, "loaded.json"))}, JSON.stringify(Object.keys(require.cache))));\n`);
    const lean = await runTdxvm(["--quiet", "measure", "--uki", uki!, "--disk", disk!, "--backend", "azure", "--json"], { env: { ...process.env, NODE_OPTIONS: `--require ${hook}` } });
    expect(lean.code).toBe(0);
    const loaded = (JSON.parse(await fs.readFile(path.join(dir, "loaded.json"), "utf8")) as string[]).map((f) => path.relative(repo, f));
    expect(loaded).toContain("provider/measure/hashjobs.js");
    expect(loaded.filter((f) => f.startsWith("node_modules/zod/") || /^provider\/(recipe\/(image|schema)|lock\/(index|schema|policy)|bake\/index|fetch|deploy)\b/.test(f))).toEqual([]);
    const missing = await runTdxvm(["measure", "--uki", path.join(dir, "nothing.efi"), "--disk", disk!, "--backend", "azure"]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/^E_MEASUREMENT: the UKI .*nothing\.efi does not exist/m);
    const notFile = await runTdxvm(["measure", "--uki", uki!, "--disk", dir, "--backend", "azure"]);
    expect({ code: notFile.code, error: notFile.stderr.match(/^E_MEASUREMENT: .*/m)?.[0] }).toEqual({ code: 2, error: `E_MEASUREMENT: the disk ${dir} is not a regular file` });
  });

  it("--check passes on the committed file and fails with exit 3 and the markdown diff after a cmdline change; --update accepts it", async () => {
    const ok = await runTdxvm(["measure", EXAMPLE, "--backend", "azure", "--check", file("azure.json")]);
    expect(ok.code).toBe(0);
    expect(ok.stderr).toContain("all 15 registers match");
    const committed = await fs.readFile(file("azure.json"), "utf8");
    const drift = await runTdxvm(["--quiet", "measure", blue, "--backend", "azure", "--check", file("azure.json")]);
    expect(drift.code).toBe(3);
    expect(drift.stdout).toContain(`### Measurement changes (azure): ${file("azure.json")} → this image`);
    for (const pcr of ["PCR4", "PCR9", "PCR11"]) expect(drift.stdout).toContain(`| ${pcr} |`);
    expect(drift.stdout).toContain("PCR11: UKI section .cmdline changed");
    expect(drift.stderr).toContain("--update");
    expect(await fs.readFile(file("azure.json"), "utf8")).toBe(committed);

    await fs.copyFile(file("azure.json"), file("azure-committed.json"));
    const upd = await runTdxvm(["measure", blue, "--backend", "azure", "--check", file("azure-committed.json"), "--update"]);
    expect(upd.code).toBe(0);
    expect(upd.stderr).toContain("3 register(s) changed");
    const again = await runTdxvm(["measure", blue, "--backend", "azure", "--check", file("azure-committed.json")]);
    expect(again.code).toBe(0);
    // Another backend's file is refused, not compared.
    const wrong = await runTdxvm(["--quiet", "measure", EXAMPLE, "--backend", "rtmr", "--check", file("azure.json")]);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain("holds azure measurements, not rtmr");
  });

  it("diff names the registers a cmdline change moves and why, as text, markdown (the PR comment) and JSON", async () => {
    const r = await runTdxvm(["--quiet", "measure", blue, "--backend", "rtmr", "--out", file("rtmr-blue.json")]);
    expect(r.code).toBe(0);
    const json = await runTdxvm(["diff", file("rtmr.json"), file("rtmr-blue.json"), "--json"]);
    expect(json.code).toBe(0);
    const diffs = JSON.parse(json.stdout) as RegisterDiff[];
    expect(diffs.map((d) => d.register)).toEqual(["RTMR1", "RTMR2"]);
    expect(diffs.find((d) => d.register === "RTMR2")!.changes).toEqual(expect.arrayContaining(["RTMR2: UKI section .cmdline changed", "RTMR2: kernel command line (LOADED_IMAGE::LoadOptions) changed"]));
    const md = await runTdxvm(["diff", "--markdown", file("rtmr.json"), file("rtmr-blue.json")]);
    expect(md.stdout).toMatch(/^### Measurement changes \(rtmr\)\n\n\| register \| old \| new \| why \|\n\|---\|---\|---\|---\|\n\| RTMR1 \| `[0-9a-f]{16}…` \| `[0-9a-f]{16}…` \| .*UKI \(EFI\/BOOT\/BOOTX64\.EFI\) changed.* \|\n\| RTMR2 \| .*RTMR2: UKI section \.cmdline changed.* \|\n\nRegisters without an expected value:\n\n\| register \| pinned \| reason \|\n\|---\|---\|---\|\n\| RTMR0 \| NOT PINNED: a verifier refuses it \| TD HOB.*\|\n$/);
    const text = await runTdxvm(["diff", file("rtmr.json"), file("rtmr.json")]);
    expect([text.code, text.stdout.trim()]).toEqual([0, "No register changes."]);
  });

  it("the pull-request comment of examples/ci: one marker line, then each backend's changes and why", async () => {
    const [base, pr] = [file("base"), file("pr")];
    for (const d of [base, pr]) await fs.mkdir(d, { recursive: true });
    await fs.copyFile(file("rtmr.json"), path.join(base, "measurements.rtmr.json"));
    await fs.copyFile(file("azure.json"), path.join(base, "measurements.azure.json"));
    await fs.copyFile(file("rtmr-blue.json"), path.join(pr, "measurements.rtmr.json"));
    await fs.copyFile(file("azure-committed.json"), path.join(pr, "measurements.azure.json")); // --update wrote the blue image's
    const out = file("comment.md");
    const r = await new Promise<number | null>((resolve) => spawn("bash", ["examples/ci/measurements-comment.sh", out, base, pr, "rtmr", "azure", "gcp"], { cwd: repo, stdio: "inherit" }).on("exit", resolve));
    expect(r).toBe(0);
    const md = await fs.readFile(out, "utf8");
    expect(md.split("\n").slice(0, 2)).toEqual(["<!-- tdxvm-measurements -->", "## Image measurements"]);
    expect(md).toMatch(/### Measurement changes \(rtmr\)\n\n\| register \| old \| new \| why \|\n\|---\|---\|---\|---\|\n\| RTMR1 \|.*\n\| RTMR2 \|.*UKI section \.cmdline changed/);
    expect(md).toMatch(/### Measurement changes \(azure\)\n\n\| register \| old \| new \| why \|\n\|---\|---\|---\|---\|\n\| PCR4 \|.*\n\| PCR9 \|.*\n\| PCR11 \|.*PCR11: UKI section \.cmdline changed/);
    expect(md).toContain("### Measurement changes (gcp)\n\nThe base branch has no measurements.gcp.json: nothing to compare with.");
    // Every comment shows what is not pinned by a value, with the reason: a reviewer sees waivers on every change.
    expect(md).toMatch(/Registers without an expected value:\n\n\| register \| pinned \| reason \|\n\|---\|---\|---\|\n\| RTMR0 \| NOT PINNED: a verifier refuses it \| TD HOB/);
    expect(md).toMatch(/\| PCR0 \| WAIVED \| Azure's firmware: no published reference value/);
  });

  it("verify on another image's captured TD quote reports a mismatch with exit 3", async () => {
    // A real quote of a different image (COS 113 on GCP; tests/unit/measure/fixtures/README.md).
    const r = await runTdxvm(["verify", "--expected", file("rtmr.json"), "--quote", "tests/unit/measure/fixtures/tdx-quote-cos113.dat", "--json"]);
    expect(r.code).toBe(3);
    const v = JSON.parse(r.stdout) as { ok: boolean; registers: Array<{ register: string; ok: boolean; reported: string }> };
    expect(v.ok).toBe(false);
    expect(v.registers.map((x) => [x.register, x.ok])).toEqual([["MRTD", false], ["RTMR1", false], ["RTMR2", false], ["RTMR3", true]]);
    expect(v.registers[0].reported).toBe("dae67181d3d65e073ad8f95b7907d5e927bfe9761c9ff3e9b89734a45d8954dba41394c7717cb2735396c1d04231f94a");
    const none = await runTdxvm(["verify", "--expected", file("rtmr.json")]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain("verify needs evidence");
    const both = await runTdxvm(["verify", "--expected", file("rtmr.json"), "--event-log", "package.json", "--quote", "package.json"]);
    expect(both.code).toBe(2);
  });
});

describe("attest", () => {
  it("an agent nobody serves: a failed verdict naming the connection, exit 3", async () => {
    const free = await new Promise<number>((resolve) => {
      const srv = net.createServer().listen(0, "127.0.0.1", () => {
        const port = (srv.address() as net.AddressInfo).port;
        srv.close(() => resolve(port));
      });
    });
    const r = await runTdxvm(["attest", `127.0.0.1:${free}`, "--expected", path.join(dir, "rtmr.json")]);
    expect(r.code).toBe(3);
    expect(r.stdout).toMatch(/^connect\s+FAIL\s+GET https:\/\/127\.0\.0\.1:\d+\/v1\/health/m);
    const noExpected = await runTdxvm(["attest", `127.0.0.1:${free}`]);
    expect(noExpected.code).toBe(2);
    expect(noExpected.stderr).toContain("required option '--expected <file>' not specified");
  });
});

describe("vm up, ls, down", () => {
  it("starts a VM that outlives tdxvm, lists it with its forwarded port, stops it; refuses ids it did not start", async () => {
    const cache = path.join(dir, "vm-cache");
    await fs.mkdir(cache, { recursive: true });
    // Its own cache (VMs live under <cache>/vms), the machine's tools tree.
    await fs.symlink(path.join(process.env.TDXVM_CACHE_DIR ?? path.join(require("node:os").homedir(), ".cache", "tdxvm"), "tools"), path.join(cache, "tools"));
    const disk = path.join(dir, "empty.raw");
    await fs.writeFile(disk, Buffer.alloc(1024 * 1024)); // no OS: only the VM's lifecycle matters here
    const g = ["--cache-dir", cache];
    const up = await runTdxvm([...g, "vm", "up", "--disk", disk, "--ready", "none", "--memory", "256", "--cpus", "1", "--json"]);
    expect([up.code, up.stderr]).toEqual([0, expect.stringContaining("starting a VM from empty.raw")]);
    const vm = JSON.parse(up.stdout) as { vmId: string; pid: number; ports: Array<{ guest: number; host: number; bind: string }> };
    expect(vm.vmId).toMatch(/^vm-[0-9a-f]{12}$/);
    expect(vm.ports).toEqual([{ guest: 8443, bind: "127.0.0.1", host: expect.any(Number) }]);
    try {
      // tdxvm has exited; the VM runs on.
      expect(readFileSync(`/proc/${vm.pid}/cmdline`, "utf8")).toMatch(/^qemu-system/);
      const ls = await runTdxvm([...g, "vm", "ls", "--json"]);
      expect(JSON.parse(ls.stdout)).toEqual([expect.objectContaining({ vmId: vm.vmId, running: true, pid: vm.pid })]);
      expect((await runTdxvm([...g, "vm", "down", "vm-000000000000"])).stderr).toMatch(/E_DEPLOYMENT: tdxvm started no VM vm-000000000000/);
      expect((await runTdxvm([...g, "vm", "down", "../x"])).code).toBe(2);
    } finally {
      const down = await runTdxvm([...g, "vm", "down", vm.vmId]);
      expect([down.code, down.stdout.trim()]).toEqual([0, `${vm.vmId} stopped; its state is removed`]);
    }
    expect(existsSync(`/proc/${vm.pid}`)).toBe(false);
    expect((await runTdxvm([...g, "vm", "ls"])).stdout.trim()).toBe("no VMs");
    // A recipe and --disk together, or neither, are usage errors.
    expect((await runTdxvm([...g, "vm", "up"])).stderr).toMatch(/E_VALIDATION: vm up takes a recipe or --disk/);
  });
});

describe("cache ls, cache prune", () => {
  let live: ChildProcess | undefined;
  afterAll(() => live?.kill());

  it("list the real cache; prune a copy of it: old entries go, the held one and the newest of each recipe stay", async () => {
    const bake = JSON.parse((await runTdxvm(["--quiet", "bake", EXAMPLE, "--json"])).stdout) as BakeResult;
    const real = await runTdxvm(["cache", "ls", "--json"]);
    expect(real.code).toBe(0);
    expect((JSON.parse(real.stdout) as CacheListing).entries.map((e) => e.key)).toContain(bake.key);

    // A cache of our own: the real entry (hard links: no copy, and removing them frees nothing of
    // the shared cache) as the newest, plus three older entries of the same recipe.
    const cache = path.join(dir, "cache");
    const artifacts = path.join(cache, "artifacts");
    const realEntry = path.dirname(path.dirname(bake.artifacts[0].cachePath!)); // <entry>/out/<file>
    const link = async (src: string, dst: string) => {
      for (const e of await fs.readdir(src, { withFileTypes: true })) {
        if (e.isDirectory()) {
          await fs.mkdir(path.join(dst, e.name), { recursive: true });
          await link(path.join(src, e.name), path.join(dst, e.name));
        } else await fs.link(path.join(src, e.name), path.join(dst, e.name));
      }
    };
    await fs.mkdir(path.join(artifacts, bake.key), { recursive: true });
    await link(realEntry, path.join(artifacts, bake.key));
    const result = JSON.parse(await fs.readFile(path.join(realEntry, "result.json"), "utf8")) as BakeResult;
    const old = ["1", "2", "3"].map((c) => c.repeat(64));
    for (const [i, k] of old.entries()) {
      await fs.mkdir(path.join(artifacts, k, "out"), { recursive: true });
      await fs.writeFile(path.join(artifacts, k, "out", "tdxvm.efi"), Buffer.alloc(1 << 20, 7));
      await fs.writeFile(path.join(artifacts, k, "result.json"), JSON.stringify({ ...result, key: k }));
      const t = new Date(Date.now() - (i + 2) * 86400_000);
      await fs.utimes(path.join(artifacts, k, "result.json"), t, t);
    }
    // A running bake holds the oldest entry's key.
    live = spawn("sleep", ["600"], { stdio: "ignore" });
    await fs.writeFile(path.join(artifacts, `${old[2]}.lock`), `${live.pid}\n`);

    const ls = await runTdxvm(["--cache-dir", cache, "cache", "ls"]);
    expect(ls.code).toBe(0);
    expect(ls.stdout.split("\n")[1]).toMatch(new RegExp(`^${bake.key.slice(0, 12)}\\s+default\\s+\\d+ min ago\\s+\\d+\\.\\d GiB\\s+${bake.recipeDigest.slice(7, 19)}\\s+${path.dirname(result.mkosiLog)} \\(default\\)$`));
    expect(ls.stdout).toContain(`[held by pid ${live.pid}]`);
    expect(ls.stdout).toMatch(/^4 entries, /m);

    const dry = await runTdxvm(["--cache-dir", cache, "cache", "prune", "--older-than", "1d", "--dry-run"]);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toContain(`would remove ${old[0].slice(0, 12)}`);
    expect(dry.stdout).toContain(`would remove ${old[1].slice(0, 12)}`);
    expect(dry.stdout).toContain(`kept ${old[2].slice(0, 12)}  ${path.dirname(result.mkosiLog)} (default): held by a running bake (pid ${live.pid})`);
    expect(dry.stdout).toContain(`kept ${bake.key.slice(0, 12)}  ${path.dirname(result.mkosiLog)} (default): newest entry of its recipe`);
    expect(dry.stdout).toMatch(/^would free 2\.\d MiB$/m);
    for (const k of old) expect(existsSync(path.join(artifacts, k))).toBe(true);

    // A byte budget overrides "newest entry of its recipe"; it still keeps a running bake's entry, and
    // the real entry, whose files the project's build/artifacts links too (removing it would free nothing).
    const tight = await runTdxvm(["--cache-dir", cache, "cache", "prune", "--max-size", "0", "--dry-run", "--json"]);
    expect(tight.code).toBe(0);
    const t = JSON.parse(tight.stdout) as PruneResult;
    expect(t.removed.map((e) => e.key).sort()).toEqual([old[0], old[1]].sort());
    expect(t.plan.keep.map((k) => k.entry.key).sort()).toEqual([old[2], bake.key].sort());
    expect(t.plan.keep.find((k) => k.entry.key === bake.key)!.entry.exclusiveBytes).toBe(0);
    expect((await runTdxvm(["--cache-dir", cache, "cache", "prune", "--max-size", "lots"])).code).not.toBe(0);

    const prune = await runTdxvm(["--cache-dir", cache, "cache", "prune", "--older-than", "1d", "--json"]);
    expect(prune.code).toBe(0);
    const r = JSON.parse(prune.stdout) as PruneResult;
    expect(r.removed.map((e) => e.key).sort()).toEqual([old[0], old[1]]);
    expect(r.freedBytes).toBe(r.removed.reduce((n, e) => n + e.exclusiveBytes, 0));
    expect(r.freedBytes).toBeGreaterThan(2 << 20);
    // Removed entries leave their lock files, free (empty): a flock file is never deleted (bake/filelock.ts).
    expect((await fs.readdir(artifacts)).sort()).toEqual([`${old[0]}.lock`, `${old[1]}.lock`, old[2], `${old[2]}.lock`, bake.key].sort());
    for (const k of [old[0], old[1]]) expect(await fs.readFile(path.join(artifacts, `${k}.lock`), "utf8")).toBe("");
    // The real entry is untouched: its files are still the shared cache's.
    expect(statSync(bake.artifacts[0].cachePath!).nlink).toBeGreaterThanOrEqual(2);
  });
});
