import { promises as fs, readFileSync, existsSync } from "node:fs";
import * as path from "node:path";
import { crc32, gunzipSync, inflateRawSync } from "node:zlib";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { growGptDisk, vhdFooter, parseVhdFooter, vhdGeometry, vhdChecksum, rawToVhd, gzipParallel, rawToGceTarball, MiB } from "../../provider/bake/convert";
import { parseGpt } from "../../provider/measure/gpt";
import { limaArgv } from "../../provider/bake/lima";
import { isStepLine, runMkosiBuilds, initrdGate, INITRD_GATE_SCRIPT, seedPackageCache, initrdReuseKey, keepInitrd, reuseInitrd, MAX_KEPT_INITRDS } from "../../provider/bake";
import { treeDigest } from "../../provider/compile";
import { Progress } from "../../provider/bake/progress";
import { sandboxArgv, sandboxScript } from "../../provider/bake/sandbox";
import { acquire, withFileLock } from "../../provider/bake/filelock";
import { tempDir, tdxErrorOf } from "../helpers";

/** A small GPT disk built by the test (protective MBR, 128×128-byte entries, one partition). */
function makeGptDisk(sectors: number): Buffer {
  const disk = Buffer.alloc(sectors * 512);
  const last = sectors - 1;
  disk[446 + 4] = 0xee;
  disk.writeUInt32LE(1, 446 + 8);
  disk.writeUInt32LE(last, 446 + 12);
  disk.writeUInt16LE(0xaa55, 510);
  const entries = Buffer.alloc(128 * 128);
  Buffer.from("28732ac11ff8d211ba4b00a0c93ec93b", "hex").copy(entries, 0); // ESP type
  Buffer.alloc(16, 7).copy(entries, 16);
  entries.writeBigUInt64LE(2048n, 32);
  entries.writeBigUInt64LE(4095n, 40);
  const header = (myLba: number, altLba: number, entriesLba: number) => {
    const h = Buffer.alloc(512);
    h.write("EFI PART", 0, "latin1");
    h.writeUInt32LE(0x00010000, 8);
    h.writeUInt32LE(92, 12);
    h.writeBigUInt64LE(BigInt(myLba), 24);
    h.writeBigUInt64LE(BigInt(altLba), 32);
    h.writeBigUInt64LE(34n, 40);
    h.writeBigUInt64LE(BigInt(last - 33), 48);
    Buffer.alloc(16, 9).copy(h, 56);
    h.writeBigUInt64LE(BigInt(entriesLba), 72);
    h.writeUInt32LE(128, 80);
    h.writeUInt32LE(128, 84);
    h.writeUInt32LE(crc32(entries) >>> 0, 88);
    h.writeUInt32LE(crc32(h.subarray(0, 92)) >>> 0, 16);
    return h;
  };
  header(1, last, 2).copy(disk, 512);
  entries.copy(disk, 2 * 512);
  entries.copy(disk, (last - 32) * 512);
  header(last, 1, last - 32).copy(disk, last * 512);
  return disk;
}

function headerOk(h: Buffer): boolean {
  const z = Buffer.from(h.subarray(0, 92));
  z.writeUInt32LE(0, 16);
  return h.toString("latin1", 0, 8) === "EFI PART" && (crc32(z) >>> 0) === h.readUInt32LE(16);
}

describe("GPT growth (for 1 MiB / 1 GiB alignment)", () => {
  it("moves the backup GPT to the new last LBA, keeps partitions, fixes CRCs and the protective MBR", async () => {
    const dir = await tempDir();
    const file = path.join(dir, "d.raw");
    const original = makeGptDisk(8192 + 7);
    await fs.writeFile(file, original);
    await growGptDisk(file, 16 * MiB);
    const d = readFileSync(file);
    expect(d.length).toBe(16 * MiB);
    const last = d.length / 512 - 1;
    const primary = d.subarray(512, 1024);
    const backup = d.subarray(last * 512, last * 512 + 512);
    expect(headerOk(primary)).toBe(true);
    expect(headerOk(backup)).toBe(true);
    expect(Number(primary.readBigUInt64LE(32))).toBe(last);
    expect(Number(backup.readBigUInt64LE(24))).toBe(last);
    expect(Number(backup.readBigUInt64LE(32))).toBe(1);
    expect(Number(primary.readBigUInt64LE(48))).toBe(last - 33);
    const entriesAt = Number(backup.readBigUInt64LE(72));
    expect(entriesAt).toBe(last - 32);
    expect(d.subarray(entriesAt * 512, entriesAt * 512 + 128 * 128).equals(d.subarray(1024, 1024 + 128 * 128))).toBe(true);
    expect(d.readUInt32LE(446 + 12)).toBe(last);
    // Old backup header sector is cleared.
    expect(d.subarray((8192 + 6) * 512, (8192 + 7) * 512).every((b) => b === 0)).toBe(true);
    // An independent parser (provider/measure/gpt) reads the same partition.
    const gpt = parseGpt(d.subarray(0, 34 * 512));
    expect(gpt.partitions.map((p) => [p.startingLba, p.endingLba])).toEqual([[2048n, 4095n]]);
    expect(gpt.header.alternateLba).toBe(BigInt(last));
  });

  it("rejects a disk without GPT and shrinking", async () => {
    const dir = await tempDir();
    const file = path.join(dir, "x.raw");
    await fs.writeFile(file, Buffer.alloc(4096));
    expect((await tdxErrorOf(() => growGptDisk(file, 8192))).code).toBe("E_BAKE");
    await fs.writeFile(file, makeGptDisk(100));
    expect((await tdxErrorOf(() => growGptDisk(file, 512 * 50))).code).toBe("E_BAKE");
  });
});

describe("fixed VHD", () => {
  it("computes CHS geometry by the spec's algorithm", () => {
    // Values worked by hand from the VHD spec appendix algorithm.
    expect(vhdGeometry(1 * MiB)).toEqual({ cylinders: 30, heads: 4, sectorsPerTrack: 17 }); // 2048 sectors: 120 c*h /4
    expect(vhdGeometry(1024 * MiB)).toEqual({ cylinders: 2080, heads: 16, sectorsPerTrack: 63 }); // 2097152 sectors → 17 then 31 then 63 spt
    expect(vhdGeometry(200 * 1024 * MiB)).toEqual({ cylinders: 65535, heads: 16, sectorsPerTrack: 255 });
  });

  it("writes a footer whose fields and checksum read back", () => {
    const f = vhdFooter(994 * MiB, Buffer.alloc(16, 0xab));
    const p = parseVhdFooter(f);
    expect(p).toMatchObject({ cookie: "conectix", diskType: 2, currentSize: 994 * MiB, originalSize: 994 * MiB, checksumOk: true });
    expect(f.readUInt32BE(8)).toBe(2);
    expect(f.readUInt32BE(12)).toBe(0x00010000);
    expect(f.readBigUInt64BE(16)).toBe(0xffffffffffffffffn);
    expect(f.subarray(68, 84).equals(Buffer.alloc(16, 0xab))).toBe(true);
    f[100] ^= 1;
    expect(parseVhdFooter(f).checksumOk).toBe(false);
    expect(vhdChecksum(f)).not.toBe(f.readUInt32BE(64));
  });

  it("rawToVhd: size a multiple of 1 MiB + 512, GPT intact, no temp file left", async () => {
    const dir = await tempDir();
    const raw = path.join(dir, "d.raw");
    await fs.writeFile(raw, makeGptDisk(3000));
    await rawToVhd(raw, path.join(dir, "d.vhd"), Buffer.alloc(16, 1));
    const v = readFileSync(path.join(dir, "d.vhd"));
    expect((v.length - 512) % MiB).toBe(0);
    expect(parseVhdFooter(v.subarray(v.length - 512))).toMatchObject({ cookie: "conectix", checksumOk: true, currentSize: v.length - 512 });
    const last = (v.length - 512) / 512 - 1;
    expect(headerOk(v.subarray(last * 512, last * 512 + 512))).toBe(true);
    expect((await fs.readdir(dir)).sort()).toEqual(["d.raw", "d.vhd"]);
  });
});

describe("parallel gzip (one standard member)", () => {
  const chunk = 64 * 1024;
  const sizes = [0, 1, chunk - 1, chunk, chunk + 1, Math.floor(3.5 * chunk)];
  async function* pieces(b: Buffer, step: number) {
    for (let i = 0; i < b.length; i += step) yield b.subarray(i, i + step);
  }

  it("round-trips through zlib and the system's gzip for every chunk boundary case, independent of parallelism", async () => {
    const dir = await tempDir();
    try {
      for (const n of sizes) {
        // Half compressible text, half random: back-references across chunk boundaries matter.
        const data = Buffer.concat([Buffer.from("tdxvm ".repeat(Math.ceil(n / 12))).subarray(0, Math.floor(n / 2)), randomBytes(n - Math.floor(n / 2))]);
        const a = path.join(dir, `a${n}.gz`);
        const b = path.join(dir, `b${n}.gz`);
        const ra = await gzipParallel(pieces(data, 10_000), a, { chunk, inFlight: 8 });
        await gzipParallel(pieces(data, 777), b, { chunk, inFlight: 1 });
        const gz = readFileSync(a);
        expect({ n, same: gz.equals(readFileSync(b)) }).toEqual({ n, same: true });
        expect(ra).toEqual({ bytesIn: n, bytesOut: gz.length });
        expect(gz.subarray(0, 4).toString("hex")).toBe("1f8b0800"); // gzip, deflate, no flags
        expect(gz.readUInt32LE(4)).toBe(0); // mtime 0: reproducible
        expect(gunzipSync(gz).equals(data)).toBe(true);
        expect(execFileSync("gzip", ["-dc", a]).equals(data)).toBe(true);
        // One member: inflating the body alone consumes everything up to the 8-byte trailer.
        const inflated = inflateRawSync(gz.subarray(10, gz.length - 8));
        expect(inflated.equals(data)).toBe(true);
      }
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe("GCE tarball (GNU tar through execa, gzip here)", () => {
  it("a sparse GiB disk becomes one member disk.raw; a failing or missing tar is E_BAKE naming it, with its stderr, and leaves no output", async () => {
    const dir = await tempDir();
    try {
      const raw = path.join(dir, "image.raw");
      await fs.writeFile(raw, "");
      await fs.truncate(raw, 1024 * MiB);
      const fh = await fs.open(raw, "r+");
      await fh.write(Buffer.from("tdxvm tarball probe"), 0, 19, 512 * MiB);
      await fh.close();
      const out = path.join(dir, "image.tar.gz");
      await rawToGceTarball(raw, out);
      expect(execFileSync("tar", ["-tvzf", out], { encoding: "utf8" })).toMatch(/^-rw-r--r-- 0\/0 +1073741824 1970-01-01 00:00 disk\.raw\n$/);

      const failing = path.join(dir, "tar");
      await fs.writeFile(failing, "#!/bin/sh\necho 'tar: image.raw: Cannot read: Input/output error' >&2\nexit 2\n", { mode: 0o755 });
      const bad = path.join(dir, "bad.tar.gz");
      const e = await tdxErrorOf(() => rawToGceTarball(raw, bad, failing));
      expect(e.code).toBe("E_BAKE");
      expect(e.message).toMatch(/^tar failed \(exit 2\): tar: image\.raw: Cannot read: Input\/output error$/);
      const missing = await tdxErrorOf(() => rawToGceTarball(raw, bad, path.join(dir, "no-such-tar")));
      expect(missing.message).toMatch(/^tar failed \(ENOENT: \/.*\/no-such-tar\): $/);
      expect(existsSync(bad) || existsSync(`${bad}.tmp`)).toBe(false);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe("backends and sandbox command construction", () => {
  it("lima: runs the same mkosi argv inside the VM via limactl shell", () => {
    expect(limaArgv("tdxvm", ["mkosi", "--directory", "/Users/me/p/build/mkosi", "build"])).toEqual([
      "limactl", "shell", "--workdir", "/", "tdxvm", "sudo", "--preserve-env=SOURCE_DATE_EPOCH", "mkosi", "--directory", "/Users/me/p/build/mkosi", "build",
    ]);
  });

  it("sandbox: mounts only inside a private namespace and quotes every path", () => {
    const argv = sandboxArgv("/cache/tools/trixie", ["mkosi", "build"], [{ host: "/home/u/my proj", inside: "/work/tree", readOnly: true }]);
    expect(argv.slice(0, 11)).toEqual(["setpriv", "--pdeathsig", "SIGKILL", "--", "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child"]);
    expect(sandboxArgv("/r", ["x"], [], {}, { outliveParent: true })[0]).toBe("unshare");
    const script = sandboxScript("/cache/tools/trixie", ["mkosi", "build"], [{ host: "/home/u/my proj", inside: "/work/tree", readOnly: true }]);
    expect(script).toContain("mount --bind '/cache/tools/trixie' '/cache/tools/trixie'");
    expect(script).toContain("mount --bind '/home/u/my proj' '/cache/tools/trixie/work/tree'");
    expect(script).toContain("mount -o remount,bind,ro '/cache/tools/trixie/work/tree'");
    expect(script.trim().split("\n").pop()).toMatch(/^exec chroot '\/cache\/tools\/trixie' \/usr\/bin\/env -i .* 'mkosi' 'build'$/);
  });
});

describe("file lock", () => {
  it("serialises holders and takes over a lock whose owner is dead", async () => {
    const dir = await tempDir();
    const file = path.join(dir, "k.lock");
    const order: string[] = [];
    await Promise.all([
      withFileLock(file, async () => { order.push("a+"); await new Promise((r) => setTimeout(r, 300)); order.push("a-"); }),
      new Promise((r) => setTimeout(r, 50)).then(() => withFileLock(file, async () => { order.push("b+"); order.push("b-"); })),
    ]);
    expect(order).toEqual(["a+", "a-", "b+", "b-"]);
    await fs.writeFile(file, "999999999\n"); // a pid that does not run
    const release = await acquire(file, { timeoutMs: 2000 });
    expect(readFileSync(file, "utf8")).toBe(`${process.pid}\n`);
    await release();
  });
});

describe("mkosi step lines", () => {
  it("tells steps from errors and notices", () => {
    expect(isStepLine("Installing Debian")).toBe(true);
    expect(isStepLine("Running postinstall script /work/tree/mkosi.postinst…")).toBe(true);
    expect(isStepLine('"apt-get -o X install foo" returned non-zero exit code 100.')).toBe(false);
    expect(isStepLine("Could not rename /a to /b as they are located on different devices, falling back to copying")).toBe(false);
    expect(isStepLine("/work/entry/out/tdxvm.raw size is 993.7M, consumes 630.1M.")).toBe(false);
  });
});

describe("mkosi runs: the default initrd beside the image", () => {
  // Stand-ins for the two mkosi runs (shell scripts printing mkosi's step lines). The image's
  // finalize step is the real gate script; its "UKI step" copies whatever initrd it then finds.
  const setup = async () => {
    const dir = await tempDir("tdxvm-runs-");
    const tree = path.join(dir, "tree");
    const gate = initrdGate(tree);
    await fs.mkdir(gate.dir, { recursive: true });
    await fs.writeFile(gate.initrd, ""); // mkosi refuses to start without the file: a placeholder
    await fs.writeFile(gate.script, INITRD_GATE_SCRIPT, { mode: 0o755 });
    const built = path.join(dir, "built.cpio.zst");
    const image = ["sh", "-c", `echo '‣ Installing Debian'; echo '‣ Running finalize script…'; SRCDIR=${tree} ${gate.script} || exit 1; echo '‣ Generating unified kernel image'; cp ${gate.initrd} ${dir}/uki-initrd`];
    const run = (initrd: string, img = image) => runMkosiBuilds({
      argv: (cmd) => cmd, image: img, initrd: { argv: ["sh", "-c", initrd], built, gate },
      logFile: path.join(dir, "log"), progress: new Progress({ quiet: true }), timeoutMs: 60_000,
    });
    return { dir, gate, built, run };
  };
  const alive = (pid: number) => { try { process.kill(pid, 0); return true; } catch { return false; } };

  it("the image's UKI step waits for the initrd and takes the built one, not the placeholder", async () => {
    const { dir, gate, built, run } = await setup();
    const steps = await run(`echo '‣ Installing Debian'; sleep 0.6; printf initrd-bytes > ${built}`);
    expect(readFileSync(path.join(dir, "uki-initrd"), "utf8")).toBe("initrd-bytes");
    expect(readFileSync(gate.initrd, "utf8")).toBe("initrd-bytes");
    expect(Object.keys(steps)).toEqual(expect.arrayContaining(["Installing Debian", "initrd: Installing Debian", "Running finalize script", "Generating unified kernel image"]));
    expect(steps["Running finalize script"]).toBeGreaterThan(0.3); // the image waited at the gate
    expect(readFileSync(path.join(dir, "log"), "utf8")).toContain("initrd: ‣ Installing Debian");
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("a failed initrd fails the bake with its own step and lines, and the image does not wait forever", async () => {
    const { dir, gate, run } = await setup();
    const e = await tdxErrorOf(() => run("echo '‣ Installing Debian'; echo 'E: Unable to locate package nope' >&2; exit 100"));
    expect(e.code).toBe("E_BAKE");
    expect(e.message).toContain('mkosi (default initrd) failed during "initrd: Installing Debian" (exit 100)');
    expect(e.message).toContain("Unable to locate package nope");
    expect(readFileSync(gate.failed, "utf8")).toBe("");
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("an initrd run that succeeds without writing its initrd is an E_BAKE, not a hung image", async () => {
    const { dir, gate, run } = await setup();
    const e = await tdxErrorOf(() => run("echo '‣ Installing Debian'; exit 0"));
    expect(e.code).toBe("E_BAKE");
    expect(e.message).toMatch(/mkosi \(default initrd\) finished but its built\.cpio\.zst could not be put in place \(ENOENT\)/);
    expect(readFileSync(gate.initrd, "utf8")).toBe(""); // the placeholder, never a half-written initrd
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("a failed image stops the initrd run and is the one reported", async () => {
    const { dir, run } = await setup();
    const pidFile = path.join(dir, "initrd.pid");
    const e = await tdxErrorOf(() => run(`echo $$ > ${pidFile}; echo '‣ Installing Debian'; exec sleep 60`, ["sh", "-c", "sleep 0.3; echo '‣ Installing Debian'; echo 'E: broken' >&2; exit 100"]));
    expect(e.message).toContain('mkosi failed during "Installing Debian" (exit 100)');
    expect(e.message).toContain("E: broken");
    expect(alive(Number(readFileSync(pidFile, "utf8")))).toBe(false);
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("an initrd is reused only while its argv, sandbox tree, tools and mkosi's incremental cache are unchanged", async () => {
    const dir = await tempDir("tdxvm-initrdkey-");
    const cache = path.join(dir, "mkosi-initrd-cache");
    await fs.mkdir(path.join(cache, "debian~trixie~x86-64.cache"), { recursive: true });
    await fs.writeFile(path.join(cache, "debian~trixie~x86-64.manifest"), '{"packages": ["a"]}');
    // The emitted tree's mkosi.sandbox/ entries, digested as bake() does.
    const sandbox = new Map([["mkosi.sandbox/etc/apt/sources.list", { mode: 0o644, data: Buffer.from("deb http://deb.debian.org/debian trixie main\n") }]]);
    const inputs = async () => ({ argv: ["mkosi", "--hostname", "vm", "--output-directory", "<tmp>/initrd"], sandbox: treeDigest(sandbox), tools: { mkosi: "25.3" } });
    const key = await initrdReuseKey(cache, await inputs());
    await fs.mkdir(path.join(cache, "outputs"), { recursive: true });
    await fs.writeFile(path.join(cache, "outputs", `${key}.cpio.zst`), "kept"); // the kept outputs are not part of the state
    expect(await initrdReuseKey(cache, await inputs())).toBe(key);
    expect(await initrdReuseKey(cache, { ...(await inputs()), argv: ["mkosi", "--hostname", "other"] })).not.toBe(key);
    expect(await initrdReuseKey(cache, { ...(await inputs()), tools: { mkosi: "25.4" } })).not.toBe(key);
    sandbox.set("mkosi.sandbox/etc/apt/sources.list", { mode: 0o644, data: Buffer.from("deb http://snapshot.debian.org/archive/debian/20261101T000000Z trixie main\n") });
    const moved = await initrdReuseKey(cache, await inputs());
    expect(moved).not.toBe(key);
    // mkosi rebuilt its cache (a new tree renamed into place), or wrote another manifest
    await fs.rename(path.join(cache, "debian~trixie~x86-64.cache"), path.join(dir, "old"));
    await fs.mkdir(path.join(cache, "debian~trixie~x86-64.cache"));
    const rebuilt = await initrdReuseKey(cache, await inputs());
    expect(rebuilt).not.toBe(moved);
    await fs.writeFile(path.join(cache, "debian~trixie~x86-64.manifest"), '{"packages": ["a", "b"]}');
    expect(await initrdReuseKey(cache, await inputs())).not.toBe(rebuilt);
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("built initrds are kept by key (the newest few), and a kept one goes to the gate and opens it", async () => {
    const dir = await tempDir("tdxvm-keep-");
    const cache = path.join(dir, "mkosi-initrd-cache");
    const gate = initrdGate(path.join(dir, "tree"));
    await fs.mkdir(gate.dir, { recursive: true });
    await fs.writeFile(gate.initrd, ""); // the placeholder
    expect(await reuseInitrd(cache, "k0", gate)).toBe(false); // nothing kept yet: a miss, gate shut
    expect(readFileSync(gate.initrd, "utf8")).toBe("");
    await expect(fs.stat(gate.ready)).rejects.toThrow(/ENOENT/);
    // A failure keeps nothing, not even a temp file.
    await expect(keepInitrd(cache, "kx", path.join(dir, "no-such-initrd"))).rejects.toThrow(/ENOENT/);
    expect(await fs.readdir(path.join(cache, "outputs"))).toEqual([]);
    // Each bake's initrd is its own file (kept as a hard link: one inode, one mtime).
    const buildOne = async (k: string) => {
      const f = path.join(dir, `${k}.cpio.zst`);
      await fs.writeFile(f, "initrd bytes");
      await keepInitrd(cache, k, f);
    };
    for (let i = 0; i <= MAX_KEPT_INITRDS; i++) {
      await buildOne(`k${i}`);
      const t = new Date(Date.now() - (MAX_KEPT_INITRDS + 1 - i) * 60_000); // k0 oldest, all older than what follows
      await fs.utimes(path.join(cache, "outputs", `k${i}.cpio.zst`), t, t);
    }
    await buildOne("k9");
    expect((await fs.readdir(path.join(cache, "outputs"))).sort()).toEqual(["k2.cpio.zst", "k3.cpio.zst", "k4.cpio.zst", "k9.cpio.zst"]);
    expect(await reuseInitrd(cache, "k3", gate)).toBe(true);
    expect(readFileSync(gate.initrd, "utf8")).toBe("initrd bytes");
    await fs.stat(gate.ready);
    expect((await fs.readdir(gate.dir)).sort()).toEqual(["initrd.cpio.zst", "ready"]);
    // Reusing refreshes it: k3 is now the newest and outlives the others.
    await buildOne("k10");
    await buildOne("k11");
    expect((await fs.readdir(path.join(cache, "outputs"))).sort()).toEqual(["k10.cpio.zst", "k11.cpio.zst", "k3.cpio.zst", "k9.cpio.zst"]);
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("a kept initrd keeps its package manifest beside it: reuse hands both over, and is a miss when the manifest is wanted but was not kept", async () => {
    const dir = await tempDir("tdxvm-keep-manifest-");
    const cache = path.join(dir, "mkosi-initrd-cache");
    const gate = initrdGate(path.join(dir, "tree"));
    await fs.mkdir(gate.dir, { recursive: true });
    await fs.writeFile(gate.initrd, "");
    const built = path.join(dir, "initrd.cpio.zst");
    const manifest = path.join(dir, "initrd.manifest");
    await fs.writeFile(built, "initrd bytes");
    await fs.writeFile(manifest, '{"packages":[{"name":"kmod","version":"34.2-2"}]}');
    await keepInitrd(cache, "old", built); // kept before manifests were
    await keepInitrd(cache, "new", built, manifest);
    expect((await fs.readdir(path.join(cache, "outputs"))).sort()).toEqual(["new.cpio.zst", "new.manifest", "old.cpio.zst"]);
    const out = path.join(dir, "out", "initrd.manifest");
    await fs.mkdir(path.dirname(out), { recursive: true });
    expect(await reuseInitrd(cache, "old", gate, out)).toBe(false);
    expect(existsSync(out)).toBe(false);
    expect(await reuseInitrd(cache, "new", gate, out)).toBe(true);
    expect(readFileSync(out, "utf8")).toContain("kmod");
    expect(readFileSync(gate.initrd, "utf8")).toBe("initrd bytes");
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("the initrd's package cache is seeded with links to the image's, keeping what it has and skipping partial downloads", async () => {
    const dir = await tempDir("tdxvm-seed-");
    const from = path.join(dir, "packages");
    const to = path.join(dir, "packages-initrd");
    await fs.mkdir(path.join(from, "cache/apt/archives/partial"), { recursive: true });
    await fs.mkdir(path.join(from, "lib/apt/lists"), { recursive: true });
    await fs.mkdir(path.join(to, "cache/apt/archives"), { recursive: true });
    await fs.writeFile(path.join(from, "cache/apt/archives/a.deb"), "a from image");
    await fs.writeFile(path.join(from, "cache/apt/archives/b.deb"), "b");
    await fs.writeFile(path.join(from, "cache/apt/archives/partial/c.deb"), "half");
    await fs.writeFile(path.join(from, "cache/apt/archives/lock"), "");
    await fs.writeFile(path.join(from, "lib/apt/lists/trixie_Packages"), "lists");
    await fs.writeFile(path.join(to, "cache/apt/archives/a.deb"), "a of its own");
    await seedPackageCache(from, to);
    expect(readFileSync(path.join(to, "cache/apt/archives/a.deb"), "utf8")).toBe("a of its own");
    const [src, dst] = await Promise.all([fs.stat(path.join(from, "cache/apt/archives/b.deb")), fs.stat(path.join(to, "cache/apt/archives/b.deb"))]);
    expect(dst.ino).toBe(src.ino); // a link, not a copy
    expect(readFileSync(path.join(to, "lib/apt/lists/trixie_Packages"), "utf8")).toBe("lists");
    await expect(fs.stat(path.join(to, "cache/apt/archives/partial/c.deb"))).rejects.toThrow(/ENOENT/);
    await expect(fs.stat(path.join(to, "cache/apt/archives/lock"))).rejects.toThrow(/ENOENT/);
    await fs.rm(dir, { recursive: true, force: true });
  });
});

describe("progress", () => {
  const fake = (isTTY: boolean) => {
    const out: string[] = [];
    return { out, stream: { isTTY, write: (s: string) => out.push(s) } as unknown as NodeJS.WriteStream };
  };

  it("on a TTY redraws one line with phase, elapsed seconds and mkosi's current step; records durations", () => {
    const { out, stream } = fake(true);
    const p = new Progress({ stream });
    p.phase("mkosi build");
    p.line("‣  Installing Debian");
    p.line("some apt output");
    const d = p.done();
    const clearLine = "\r" + String.fromCharCode(0x1b) + "[2K";
    expect(out.some((l) => l.startsWith(clearLine) && /^tdxvm: mkosi build \[\d+s\] — Installing Debian$/.test(l.slice(clearLine.length)))).toBe(true);
    expect(Object.keys(d)).toEqual(["mkosi build"]);
  });

  it("in a CI log (no TTY): one line when a phase starts, one with its duration when it ends; no redraws, no mkosi steps", () => {
    const { out, stream } = fake(false);
    const p = new Progress({ stream });
    p.phase("mkosi build");
    p.line("‣  Installing Debian");
    p.phase("convert");
    p.done();
    expect(out.map((l) => l.replace(/\d+\.\d s/, "N s"))).toEqual(["tdxvm: mkosi build …\n", "tdxvm: mkosi build: N s\n", "tdxvm: convert …\n", "tdxvm: convert: N s\n"]);
    expect(out.join("")).not.toContain("\r");
  });

  it("is silent when quiet", () => {
    for (const tty of [false, true]) {
      const { out, stream } = fake(tty);
      const p = new Progress({ stream, quiet: true });
      p.phase("x");
      p.line("‣ step");
      p.done();
      expect(out).toEqual([]);
    }
  });
});
