/**
 * Real bakes: mkosi 25 from the Debian trixie tools tree (provisioned into the cache on first
 * use), real artifacts read back. Slow (minutes) by nature; the tools tree and package cache
 * are reused across runs through TDXVM_CACHE_DIR (default ~/.cache/tdxvm).
 */
import { spawn, execFileSync } from "node:child_process";
import * as http from "node:http";
import { AddressInfo } from "node:net";
import { promises as fs, existsSync, readFileSync, openSync, readSync, closeSync, statSync } from "node:fs";
import * as path from "node:path";
import { crc32, gunzipSync } from "node:zlib";
import { Image, BakeResult, artifact, defaultCacheDir } from "../../provider";
import { parseVhdFooter, MiB, GiB } from "../../provider/bake/convert";
import { createHash } from "node:crypto";
import { measureBake, readDiskHead, uefiGptEventData, ukiCmdline } from "../../provider/measure";
import { toolsTreeDir } from "../../provider/bake/toolsTree";
import { readLock, pinPackages, packagePins } from "../../provider/lock";
import { fetchIndex, DebEntry } from "../../provider/fetch/debian";
import { tempDir, tdxErrorOf } from "../helpers";

jest.setTimeout(30 * 60_000);

const cacheDir = defaultCacheDir();

/** A small image: the base packages plus one file, all three targets. */
function small(projectDir: string, marker = "1"): Image {
  return new Image({ base: "debian/trixie", hostname: "tdxvm-ci", projectDir })
    .file("/etc/tdxvm-ci", { content: `ci image ${marker}\n` })
    .outputTargets("qemu", "azure", "gcp");
}

function readAt(file: string, pos: number, len: number): Buffer {
  const fd = openSync(file, "r");
  try {
    const b = Buffer.alloc(len);
    readSync(fd, b, 0, len, pos);
    return b;
  } finally {
    closeSync(fd);
  }
}

/** Check a GPT disk: both headers valid (CRCs), backup at the last LBA, entries CRC; return partition type GUIDs. */
function checkGpt(file: string, size = statSync(file).size): string[] {
  const lastLba = size / 512 - 1;
  const hdr = (lba: number) => {
    const h = readAt(file, lba * 512, 512);
    expect(h.toString("latin1", 0, 8)).toBe("EFI PART");
    const n = h.readUInt32LE(12);
    const z = Buffer.from(h.subarray(0, n));
    z.writeUInt32LE(0, 16);
    expect(crc32(z) >>> 0).toBe(h.readUInt32LE(16));
    return h;
  };
  const p = hdr(1);
  expect(Number(p.readBigUInt64LE(32))).toBe(lastLba);
  const b = hdr(lastLba);
  expect(Number(b.readBigUInt64LE(24))).toBe(lastLba);
  const count = p.readUInt32LE(80);
  const esize = p.readUInt32LE(84);
  const entries = readAt(file, Number(p.readBigUInt64LE(72)) * 512, count * esize);
  expect(crc32(entries) >>> 0).toBe(p.readUInt32LE(88));
  expect(readAt(file, Number(b.readBigUInt64LE(72)) * 512, count * esize).equals(entries)).toBe(true);
  const types: string[] = [];
  for (let i = 0; i < count; i++) {
    const t = entries.subarray(i * esize, i * esize + 16);
    if (!t.every((x) => x === 0)) types.push(t.toString("hex"));
  }
  return types;
}

/** Mounts below the tools tree that are visible in our namespace (there must be none). */
function toolsTreeMounts(): string[] {
  const root = toolsTreeDir(cacheDir);
  return readFileSync("/proc/self/mountinfo", "utf8").split("\n").filter((l) => l.split(" ")[4]?.startsWith(root));
}

/**
 * What bakes of `dir` (a project directory) or by `pid` left in the shared artifact cache: entries
 * whose report names a log under `dir`, and temporary entries (.<key>.<pid>.tmp) of `pid`. Other
 * suites bake into the same cache meanwhile, so a test asks about its own bakes only.
 */
async function leftovers(dir: string, pid?: number): Promise<string[]> {
  const artifacts = path.join(cacheDir, "artifacts");
  const out: string[] = [];
  for (const n of await fs.readdir(artifacts)) {
    if (pid !== undefined && n.startsWith(".") && n.endsWith(`.${pid}.tmp`)) out.push(n);
    if (n.startsWith(".") || n.endsWith(".lock")) continue;
    const report = await fs.readFile(path.join(artifacts, n, "result.json"), "utf8").then((t) => JSON.parse(t) as { mkosiLog?: unknown }, () => undefined);
    if (typeof report?.mkosiLog === "string" && report.mkosiLog.startsWith(`${dir}${path.sep}`)) out.push(n);
  }
  return out;
}

describe("real bake (mkosi 25, trixie tools tree)", () => {
  let project: string;
  let first: BakeResult;
  let second: BakeResult;
  // A marker unique to this run makes the image (and its cache key) new, so "cold" really is.
  const run = `${Date.now()}`;
  // A firmware file no module asks for: the kernel-modules initrd's bytes stay as ever, but its
  // reuse key is this run's own, so the first bake builds it and the second reuses what it kept.
  const img = () => small(project, run).file(`/usr/lib/firmware/tdxvm-ci-${run}.bin`, { content: run });

  beforeAll(async () => {
    project = await tempDir("tdxvm-bake-");
  });

  afterAll(async () => {
    // Artifact entries are GBs; drop the ones this run made (tools tree and package cache stay).
    for (const r of [first, second]) if (r) await fs.rm(path.join(cacheDir, "artifacts", r.key), { recursive: true, force: true });
    await fs.rm(project, { recursive: true, force: true });
  });

  it("two concurrent cold bakes of one image build once; both succeed with the same artifacts", async () => {
    const [a, b] = await Promise.all([img().bake({ cacheDir, quiet: true }), img().bake({ cacheDir, quiet: true })]);
    expect([a.cacheHit, b.cacheHit].sort()).toEqual([false, true]);
    expect(b.artifacts.map((x) => x.sha256)).toEqual(a.artifacts.map((x) => x.sha256));
    first = a.cacheHit ? b : a;
    expect(first.tools.source === "tools-tree" || first.tools.source === "host").toBe(true);
    expect(toolsTreeMounts()).toEqual([]);
  });

  it("two different images of one project baked concurrently each get their own image (build/mkosi is shared)", async () => {
    // A project of their own: its build/ is rewritten by these bakes (the other tests read this run's).
    const own = await tempDir("tdxvm-bake-two-");
    const mk = (m: string) => small(own, `${run}-${m}`).outputTargets("qemu");
    const [a, b] = await Promise.all([mk("a").bake({ cacheDir, quiet: true }), mk("b").bake({ cacheDir, quiet: true })]);
    try {
      expect(a.key).not.toBe(b.key);
      const uki = (r: BakeResult) => artifact(r, "uki")!;
      // Each UKI names its own root (the marker file is in the verity root): built from its own tree.
      expect(uki(a).sha256).not.toBe(uki(b).sha256);
      expect(ukiCmdline(readFileSync(uki(a).cachePath ?? uki(a).path))).toContain(`roothash=${a.rootHash}`);
      expect(a.rootHash).not.toBe(b.rootHash);
    } finally {
      for (const r of [a, b]) await fs.rm(path.join(cacheDir, "artifacts", r.key), { recursive: true, force: true });
      await fs.rm(own, { recursive: true, force: true });
    }
  });

  it("produces a real UKI, a GPT disk with an ESP holding the UKI as BOOTX64.EFI, and reports versions", async () => {
    const uki = artifact(first, "uki")!;
    const head = readAt(uki.path, 0, 4096);
    expect(head.toString("latin1", 0, 2)).toBe("MZ");
    expect(first.systemdStub).toMatch(/^25[5-9]|^2[6-9]\d/);
    const disk = artifact(first, "disk")!;
    const types = checkGpt(disk.path);
    expect(types).toContain("28732ac11ff8d211ba4b00a0c93ec93b"); // ESP c12a7328-f81f-11d2-ba4b-00a0c93ec93b (mixed-endian)
    expect(types).toContain("e3bc684fcde8b14d96e7fbcaf984b709"); // root x86-64 4f68bce3-e8cd-4db1-96e7-fbcaf984b709
    expect(types).toContain("ed57732cd2ebd946aec123d437ec2bf5"); // root-verity x86-64 2c7357ed-ebd2-46d9-aec1-23d437ec2bf5 (the default rootfs)
    expect(first.rootfs).toBe("verity");
    expect(first.rootHash).toMatch(/^[0-9a-f]{64}$/);
    // The ESP's BOOTX64.EFI is byte-identical to the split-out UKI: find its bytes in the disk.
    const ukiBytes = readFileSync(uki.path);
    const diskBytes = readFileSync(disk.path);
    expect(diskBytes.indexOf(ukiBytes.subarray(0, 64 * 1024))).toBeGreaterThan(0);
    expect(first.packages.find((p) => p.name === "systemd")?.version).toMatch(/^25[7-9]/);
    expect(first.packages.length).toBeGreaterThan(50);
    const report = JSON.parse(readFileSync(path.join(project, "build", "report.json"), "utf8"));
    expect(report.reportVersion).toBe(1);
    expect(report.bakes.default.artifacts.map((x: { sha256: string }) => x.sha256)).toEqual(first.artifacts.map((x) => x.sha256));
    expect(report.bakes.default.tools.versions.mkosi).toMatch(/^2[5-9]\./);
  });

  it("azure: a fixed VHD with a valid conectix footer, 1 MiB-aligned size, GPT intact", async () => {
    const vhd = artifact(first, "azure", "vhd")!;
    const size = statSync(vhd.path).size;
    const footer = parseVhdFooter(readAt(vhd.path, size - 512, 512));
    expect(footer).toMatchObject({ cookie: "conectix", diskType: 2, checksumOk: true });
    expect(footer.currentSize).toBe(size - 512);
    expect(footer.currentSize % MiB).toBe(0);
    expect(footer.currentSize).toBeGreaterThanOrEqual(artifact(first, "disk")!.size);
    checkGpt(vhd.path, footer.currentSize);
  });

  it("gcp: tar.gz with one oldgnu sparse member disk.raw of whole GiB holding the GPT disk", async () => {
    const tgz = artifact(first, "gcp", "tar.gz")!;
    const tar = gunzipSync(readFileSync(tgz.path));
    const h = tar.subarray(0, 512);
    expect(h.toString("latin1", 0, 8)).toBe("disk.raw");
    expect(h.toString("latin1", 257, 265)).toBe("ustar  \0"); // GNU oldgnu magic + version
    expect(String.fromCharCode(h[156])).toBe("S"); // GNU sparse member
    const realSize = parseInt(h.toString("latin1", 483, 495).replace(/\0.*$/, "").trim(), 8); // oldgnu realsize field
    expect(realSize % GiB).toBe(0);
    expect(realSize).toBeGreaterThanOrEqual(artifact(first, "disk")!.size);
    expect(parseInt(h.toString("latin1", 136, 148).trim(), 8)).toBe(0); // mtime 0: reproducible
  });

  it("every target boots one disk: the raw disk is a whole GiB, the tarball's disk.raw is it byte for byte, and gcp/rtmr measure the same GPT", async () => {
    const raw = artifact(first, "disk")!;
    expect(raw.size % GiB).toBe(0);
    const tar = gunzipSync(readFileSync(artifact(first, "gcp", "tar.gz")!.path));
    // oldgnu sparse member: the data blocks follow the header; the first one is LBA 0..n of the disk.
    const head = readAt(raw.path, 0, 8192);
    expect(tar.indexOf(head.subarray(512, 1024))).toBeGreaterThan(0); // the primary GPT header sector
    const gptDigest = (m: Awaited<ReturnType<typeof measureBake>>) => m.registers.RTMR1.events.find((e) => e.type === "EV_EFI_GPT_EVENT")!.digest;
    const gcp = await measureBake(first, { backend: "gcp", cacheDir });
    const rtmr = await measureBake(first, { backend: "rtmr", cacheDir });
    expect(gptDigest(gcp)).toBe(gptDigest(rtmr));
    expect(gptDigest(rtmr)).toBe(createHash("sha384").update(uefiGptEventData(await readDiskHead(raw.path))).digest("hex"));
  });

  it("qemu: qcow2 converted from the raw disk", async () => {
    const q = artifact(first, "qemu", "qcow2");
    expect(q).toBeDefined();
    expect(readAt(q!.path, 0, 4).toString("latin1")).toBe("QFI\xfb");
    expect(readAt(q!.path, 24, 8).readBigUInt64BE(0)).toBe(BigInt(artifact(first, "disk")!.size)); // virtual size
  });

  it("is reproducible: a second bake from clean outputs gives the same UKI and disk bytes", async () => {
    second = await img().bake({ cacheDir, quiet: true, useCache: false });
    expect(second.cacheHit).toBe(false);
    for (const t of ["uki", "disk"] as const) expect(artifact(second, t)!.sha256).toBe(artifact(first, t)!.sha256);
    // ... with the kernel-modules initrd the first bake built and kept (bake/kmods.ts): the same UKI.
    const steps = (r: BakeResult) => Object.keys(r.mkosiSteps ?? {});
    const reusedKmods = "kernel-modules initrd: reused a previous bake's";
    expect(steps(first).filter((k) => /Running modinfo/.test(k))).toHaveLength(1);
    expect(steps(first)).not.toContain(reusedKmods);
    expect(steps(second)).toContain(reusedKmods);
    expect(steps(second).filter((k) => /modinfo|kernel module/.test(k))).toEqual([]);
    expect(artifact(second, "azure")!.sha256).toBe(artifact(first, "azure")!.sha256);
    expect(artifact(second, "gcp")!.sha256).toBe(artifact(first, "gcp")!.sha256);
  });

  it("a cache hit returns without starting mkosi", async () => {
    const log = path.join(project, "build", "bake-default.log");
    const before = statSync(log).mtimeMs;
    const r = await img().bake({ cacheDir, quiet: true });
    expect(r.cacheHit).toBe(true);
    expect(r.durations.mkosi).toBe(second.durations.mkosi); // stored result; no new mkosi run
    expect(statSync(log).mtimeMs).toBe(before);
    expect(r.artifacts.map((a) => a.sha256)).toEqual(second.artifacts.map((a) => a.sha256));
  });

  it("pins the resolved packages (image and initrd, with each .deb's SHA-256) in tdx.lock; a frozen bake whose pins no source offers fails with E_PACKAGES before building", async () => {
    const lockFile = path.join(project, "tdx.lock");
    const lock = await readLock(lockFile);
    expect(lock.packages?.default).toEqual(first.packages.map((p) => `${p.name}=${p.version}`).sort());
    expect(lock.initrdPackages?.default).toEqual(first.initrdPackages!.map((p) => `${p.name}=${p.version}`).sort());
    expect(lock.initrdPackages?.default).toEqual(expect.arrayContaining([expect.stringMatching(/^systemd=/), expect.stringMatching(/^kmod=/)]));
    // Every pin has its .deb's digest (the package caches hold them after a bake), as sha256sum computes it.
    const systemd = lock.packages!.default.find((p) => p.startsWith("systemd="))!;
    const deb = lock.debs![systemd];
    const cached = path.join(cacheDir, "packages", "cache", "apt", "archives", deb.file);
    expect(createHash("sha256").update(readFileSync(cached)).digest("hex")).toBe(deb.sha256);
    const frozen = await img().bake({ cacheDir, quiet: true, frozen: true });
    expect(frozen.cacheHit).toBe(true);
    // The archive has moved on: the locked systemd version is offered by no source and held by no cache or archive.
    const moved = (p: string) => (p.startsWith("systemd=") ? "systemd=0.0-tdxvm" : p);
    await pinPackages(lockFile, "default", lock.packages!.default.map(moved), lock.initrdPackages!.default.map(moved));
    const log = path.join(project, "build", "bake-default.log");
    const logBefore = statSync(log).mtimeMs;
    const e = await tdxErrorOf(() => img().bake({ cacheDir, quiet: true, frozen: true }));
    expect(e.code).toBe("E_PACKAGES");
    expect(e.details).toEqual({ missing: ["systemd=0.0-tdxvm"] });
    expect(e.hint).toMatch(/--archive DIR\|URL.*snapshot/s);
    expect(statSync(log).mtimeMs).toBe(logBefore); // refused before mkosi ran
    await pinPackages(lockFile, "default", lock.packages!.default, lock.initrdPackages!.default);
  });

  it("mkosi failure (unknown package) → E_BAKE with the phase and log tail, no cache entry, no mounts", async () => {
    const dir = await tempDir("tdxvm-bakefail-");
    const e = await tdxErrorOf(() => small(dir, "fail").install("tdxvm-no-such-package").bake({ cacheDir, quiet: true }));
    expect(e.code).toBe("E_BAKE");
    expect(e.message).toMatch(/mkosi failed during "/);
    expect(e.message).toContain("tdxvm-no-such-package");
    expect(String(e.details?.phase)).toMatch(/Installing|Building|Syncing|Copying/);
    expect(e.hint).toContain(path.join(dir, "build", "bake-default.log"));
    // No entry and no temporary entry of its own (the bake's emptied <key>.lock file may stay).
    expect(await leftovers(dir, process.pid)).toEqual([]);
    expect(toolsTreeMounts()).toEqual([]);
  });

  it("a killed bake (SIGKILL to its process group mid-build) leaves no cache entry and no mounts", async () => {
    const dir = await tempDir("tdxvm-bakekill-");
    const script = `require("@swc-node/register"); const {Image}=require(${JSON.stringify(path.resolve(__dirname, "../../provider"))});
      new Image({base:"debian/trixie",projectDir:${JSON.stringify(dir)}}).file("/etc/k",{content:"killed\\n"}).bake({cacheDir:${JSON.stringify(cacheDir)},quiet:true}).then(()=>process.exit(0),(e)=>{console.error(String(e));process.exit(3)});`;
    const child = spawn(process.execPath, ["-e", script], { cwd: path.resolve(__dirname, "../.."), detached: true, stdio: "ignore" });
    const log = path.join(dir, "build", "bake-default.log");
    const deadline = Date.now() + 5 * 60_000;
    while (Date.now() < deadline && !(existsSync(log) && /Installing Debian|Building tdxvm image/.test(readFileSync(log, "utf8")))) await new Promise((r) => setTimeout(r, 500));
    expect(existsSync(log)).toBe(true);
    process.kill(-child.pid!, "SIGKILL");
    await new Promise((r) => child.once("exit", r));
    await new Promise((r) => setTimeout(r, 2000));
    expect(await leftovers(dir)).toEqual([]); // no entry (its temporary one may stay: the next bake of that key replaces it)
    // A SIGKILLed holder cannot remove its lock; the lock names a dead pid, so the next bake takes it over.
    const locks = (await fs.readdir(path.join(cacheDir, "artifacts"))).filter((n) => n.endsWith(".lock"));
    const holders = locks.map((l) => Number(readFileSync(path.join(cacheDir, "artifacts", l), "utf8").trim()));
    expect(holders).toContain(child.pid); // (other suites' bakes may hold locks of their own meanwhile)
    expect(() => process.kill(child.pid!, 0)).toThrow();
    expect(toolsTreeMounts()).toEqual([]);
    // The next bake of the same image succeeds: stale lock taken over, torn mkosi caches dropped.
    const again = await new Image({ base: "debian/trixie", projectDir: dir }).file("/etc/k", { content: "killed\n" }).bake({ cacheDir, quiet: true });
    expect(again.cacheHit).toBe(false);
    expect(artifact(again, "uki")!.size).toBeGreaterThan(1024 * 1024);
    await fs.rm(path.join(cacheDir, "artifacts", again.key), { recursive: true, force: true });
    await fs.rm(dir, { recursive: true, force: true }); // its build/artifacts: a GiB of disk per run
  });
});

/**
 * Measurements that survive time. The live mirror keeps only current versions; these pins are of
 * versions no trixie source offers — bookworm's hello (in the image) and less (in the default
 * initrd) — exactly the state of a lock after Debian moved on. They come from a content-addressed
 * archive served on 127.0.0.1, downloaded here from Debian's bookworm pool and checked by SHA-256.
 */
describe("pinned packages that outlive the mirror (archive, rebuild in another cache, refresh)", () => {
  let dir: string;
  let cache2: string;
  let server: http.Server;
  let archiveUrl: string;
  const pins: Record<string, DebEntry> = {};
  const img = () => new Image({ base: "debian/trixie", hostname: "tdxvm-ci", projectDir: dir }).install("hello").file("/etc/tdxvm-ci", { content: "pinned\n" }).outputTargets("qemu");
  const pin = (name: string) => `${name}=${pins[name].version}`;

  beforeAll(async () => {
    dir = await tempDir("tdxvm-pinned-");
    cache2 = await tempDir("tdxvm-cache2-");
    const bookworm = await fetchIndex("http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/Packages.gz");
    const archive = path.join(dir, "archive");
    await fs.mkdir(path.join(archive, "sha256"), { recursive: true });
    for (const name of ["hello", "less"]) {
      pins[name] = bookworm.find((e) => e.name === name)!;
      const deb = Buffer.from(await (await fetch(`http://deb.debian.org/debian/${pins[name].filename}`)).arrayBuffer());
      expect(createHash("sha256").update(deb).digest("hex")).toBe(pins[name].sha256);
      await fs.writeFile(path.join(archive, "sha256", pins[name].sha256), deb);
    }
    // The archive as a bucket or an internal web server would serve it: static files, nothing else.
    server = http.createServer((req, res) => {
      const m = /^\/pkgs\/sha256\/([0-9a-f]{64})$/.exec(req.url ?? "");
      if (!m || !existsSync(path.join(archive, "sha256", m[1]))) return void res.writeHead(404).end();
      res.writeHead(200).end(readFileSync(path.join(archive, "sha256", m[1])));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    archiveUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/pkgs`;
    await img().lock({ cacheDir });
    const deb = (e: DebEntry) => ({ file: path.basename(e.filename), sha256: e.sha256, size: e.size });
    await pinPackages(path.join(dir, "tdx.lock"), "default", [pin("hello")], [pin("less")], { [pin("hello")]: deb(pins.hello), [pin("less")]: deb(pins.less) });
    // Another machine: its own cache directory; only the tools tree is shared (hard links), so its bake is cold.
    await fs.mkdir(path.join(cache2, "tools"), { recursive: true });
    execFileSync("cp", ["-al", path.join(cacheDir, "tools", "trixie"), path.join(cache2, "tools", "trixie")]);
    await fs.copyFile(path.join(cacheDir, "tools", "trixie.json"), path.join(cache2, "tools", "trixie.json"));
  });

  afterAll(async () => {
    await new Promise((r) => server?.close(r));
    // Every entry this project's bakes made (aliases under their pinned keys included): their logs are in its build/.
    for (const n of await leftovers(dir)) await fs.rm(path.join(cacheDir, "artifacts", n), { recursive: true, force: true });
    await fs.rm(cache2, { recursive: true, force: true });
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("installs the pins from the archive, pins everything; then, nowhere to be had, a frozen bake is E_PACKAGES; another cache directory rebuilds it byte-identical from the lock and the archive; lock --refresh names the initrd package beside the register it moves", async () => {
    // 1. A bake given the archive installs the pinned versions (image and initrd) and pins the rest.
    const a = await img().bake({ cacheDir, quiet: true, archive: archiveUrl });
    expect(a.packages).toContainEqual(expect.objectContaining({ name: "hello", version: pins.hello.version }));
    expect(a.initrdPackages).toContainEqual(expect.objectContaining({ name: "less", version: pins.less.version }));
    const lock = await readLock(path.join(dir, "tdx.lock"));
    expect(lock.packages!.default).toContain(pin("hello"));
    expect(lock.initrdPackages!.default).toContain(pin("less"));
    expect(lock.debs![pin("less")]).toEqual({ file: path.basename(pins.less.filename), sha256: pins.less.sha256, size: pins.less.size });
    expect(lock.packages!.default.length).toBeGreaterThan(50); // every package of the image, not only the two pins

    // 2. Without the archive and with this machine's copies gone (apt's caches, the content store): refused before building.
    for (const name of ["hello", "less"]) {
      for (const c of ["packages", "packages-initrd"]) await fs.rm(path.join(cacheDir, c, "cache", "apt", "archives", path.basename(pins[name].filename)), { force: true });
      const digests = { sha256: pins[name].sha256, sha384: "", sha512: "" };
      const deb = readFileSync(path.join(dir, "archive", "sha256", pins[name].sha256));
      digests.sha384 = createHash("sha384").update(deb).digest("hex");
      digests.sha512 = createHash("sha512").update(deb).digest("hex");
      for (const [alg, hex] of Object.entries(digests)) await fs.rm(path.join(cacheDir, "content", alg, hex), { force: true });
    }
    const e = await tdxErrorOf(() => img().bake({ cacheDir, quiet: true, frozen: true, useCache: false }));
    expect(e.code).toBe("E_PACKAGES");
    expect(e.details).toEqual({ missing: [pin("hello"), pin("less")].sort() });
    expect(e.hint).toMatch(/--archive DIR\|URL.*snapshot/s);

    // 3. A third party: another cache directory, frozen from the lock and the archive: the same UKI and disk.
    const b = await img().bake({ cacheDir: cache2, quiet: true, frozen: true, archive: archiveUrl });
    expect(b.cacheHit).toBe(false);
    for (const t of ["uki", "disk"] as const) expect(artifact(b, t)!.sha256).toBe(artifact(a, t)!.sha256);
    expect(packagePins(b.initrdPackages!)).toEqual(lock.initrdPackages!.default);

    // 4. Taking Debian's updates: the refresh names each package change and the registers it moves.
    const { refreshLock } = await import("../../provider/lock/refresh");
    const r = await refreshLock(img(), { cacheDir, quiet: true });
    expect(r.packages.image).toContainEqual({ name: "hello", old: pins.hello.version, new: expect.not.stringMatching(pins.hello.version) });
    expect(r.packages.initrd).toContainEqual({ name: "less", old: pins.less.version, new: expect.any(String) });
    const newLess = r.packages.initrd.find((c) => c.name === "less")!.new!;
    const rtmr2 = r.registers.find((g) => g.backend === "rtmr")!.diffs.find((d) => d.register === "RTMR2")!;
    expect(rtmr2.changes).toContainEqual(expect.stringMatching(new RegExp(`^RTMR2: Linux initrd changed — .*less ${escape(pins.less.version)} → ${escape(newLess)} \\(in the initrd\\)`)));
    expect(rtmr2.changes).toContainEqual(expect.stringMatching(new RegExp(`root file system changed .* — .*hello ${escape(pins.hello.version)} → `)));
    const pcr9 = r.registers.find((g) => g.backend === "azure")!.diffs.find((d) => d.register === "PCR9")!;
    expect(pcr9.changes.join("\n")).toContain(`less ${pins.less.version} → ${newLess} (in the initrd)`);
  });
});

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

