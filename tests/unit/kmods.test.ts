/**
 * The kernel-modules initrd kept between bakes (provider/bake/kmods.ts): what its key covers, the
 * handshake with the image's finalize script (the real gate script, run by sh), and keeping it
 * from a UKI's .initrd section. The real bake holds a reused one byte-identical to what mkosi
 * builds (tests/integration/bake.test.ts).
 */
import { spawn } from "node:child_process";
import { existsSync, promises as fs, readFileSync } from "node:fs";
import * as path from "node:path";
import { initrdGate, INITRD_GATE_SCRIPT } from "../../provider/bake";
import { keepKmods, kmodsSettings, KMODS_MARKER, MAX_KEPT_KMODS, modulesDigest, watchKmods } from "../../provider/bake/kmods";
import type { MkosiTree } from "../../provider/compile";
import { buildPe } from "./measure/pe-builder";
import { tempDir } from "../helpers";

const conf = (text: string): MkosiTree => new Map([["mkosi.conf", { mode: 0o644, data: Buffer.from(text) }], ["mkosi.extra/etc/motd", { mode: 0o644, data: Buffer.from("hi\n") }]]);

/** A workspace as mkosi 25 lays it out: root/usr/lib/modules/<kver>/..., and staging/. */
async function workspace(dir: string, kvers = ["6.12.1-amd64"]): Promise<string> {
  const ws = path.join(dir, "mkosi-workspace-abc123");
  for (const k of kvers) {
    await fs.mkdir(path.join(ws, "root/usr/lib/modules", k, "kernel/drivers"), { recursive: true });
    await fs.writeFile(path.join(ws, "root/usr/lib/modules", k, "kernel/drivers/virtio.ko.xz"), `virtio for ${k}`);
    await fs.writeFile(path.join(ws, "root/usr/lib/modules", k, "modules.dep"), "kernel/drivers/virtio.ko.xz:\n");
  }
  await fs.mkdir(path.join(ws, "root/usr/lib/firmware"), { recursive: true });
  await fs.mkdir(path.join(ws, "staging"), { recursive: true });
  return ws;
}

const until = async (cond: () => boolean, ms = 10_000) => {
  for (const t0 = Date.now(); !cond(); ) {
    if (Date.now() - t0 > ms) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe("kernel-modules initrd: its key", () => {
  it("settings: the module selection, distribution, release, architecture and time stamp count; the repart seed and the rest do not", () => {
    const base = "[Distribution]\nDistribution=debian\nRelease=trixie\nArchitecture=x86-64\n[Output]\nSeed=1111\n[Content]\nSourceDateEpoch=0\nHostname=a\nEnvironment=X=1\n";
    const s = kmodsSettings(conf(base));
    expect(s).toEqual(["mkosi.conf: Distribution=debian", "mkosi.conf: Release=trixie", "mkosi.conf: Architecture=x86-64", "mkosi.conf: SourceDateEpoch=0"]);
    expect(kmodsSettings(conf(base.replace("Seed=1111", "Seed=2222").replace("Hostname=a", "Hostname=b").replace("X=1", "X=2")))).toEqual(s);
    expect(kmodsSettings(conf(base + "KernelModulesInitrdExclude=.*\n"))).not.toEqual(s);
    expect(kmodsSettings(conf(base.replace("Release=trixie", "Release=sid")))).not.toEqual(s);
    // a drop-in or a profile counts too
    const t = conf(base);
    t.set("mkosi.profiles/small/mkosi.conf", { mode: 0o644, data: Buffer.from("[Content]\nKernelModulesInitrdInclude=virtio\n") });
    expect(kmodsSettings(t)).toContain("mkosi.profiles/small/mkosi.conf: KernelModulesInitrdInclude=virtio");
    // initrds of its own: no reuse (the kept one is cut from the UKI as what follows the default initrd)
    expect(kmodsSettings(conf(base + "Initrds=/work/extra.cpio\n"))).toBeUndefined();
  });

  it("modules: every file's content, mode and link under usr/lib/modules and usr/lib/firmware; one kernel only", async () => {
    const dir = await tempDir("tdxvm-kmods-digest-");
    const ws = await workspace(dir);
    const root = path.join(ws, "root");
    const d0 = await modulesDigest(root);
    expect(d0?.kver).toBe("6.12.1-amd64");
    expect(await modulesDigest(root)).toEqual(d0);
    await fs.writeFile(path.join(root, "etc-motd"), "not a module"); // elsewhere: no change
    expect(await modulesDigest(root)).toEqual(d0);
    const ko = path.join(root, "usr/lib/modules/6.12.1-amd64/kernel/drivers/virtio.ko.xz");
    await fs.writeFile(ko, "virtio, rebuilt");
    const d1 = await modulesDigest(root);
    expect(d1!.digest).not.toBe(d0!.digest);
    await fs.chmod(ko, 0o600);
    const d2 = await modulesDigest(root);
    expect(d2!.digest).not.toBe(d1!.digest);
    await fs.writeFile(path.join(root, "usr/lib/firmware/fw.bin"), "firmware");
    const d3 = await modulesDigest(root);
    expect(d3!.digest).not.toBe(d2!.digest);
    // a large file is read in pieces: one byte changed at its end still counts
    const big = Buffer.alloc(3 * 1024 * 1024 + 7, 1);
    await fs.writeFile(path.join(root, "usr/lib/firmware/big.bin"), big);
    const withBig = await modulesDigest(root);
    big[big.length - 1] = 2;
    await fs.writeFile(path.join(root, "usr/lib/firmware/big.bin"), big);
    expect((await modulesDigest(root))!.digest).not.toBe(withBig!.digest);
    await fs.rm(path.join(root, "usr/lib/firmware/big.bin"));
    expect(await modulesDigest(root)).toEqual(d3);
    await fs.symlink("fw.bin", path.join(root, "usr/lib/firmware/alias.bin"));
    const d4 = await modulesDigest(root);
    expect(d4!.digest).not.toBe(d3!.digest);
    await fs.rm(path.join(root, "usr/lib/firmware/alias.bin"));
    await fs.symlink("other.bin", path.join(root, "usr/lib/firmware/alias.bin"));
    expect((await modulesDigest(root))!.digest).not.toBe(d4!.digest);
    // two kernels (or none): no reuse
    await fs.mkdir(path.join(root, "usr/lib/modules/6.13.0-amd64"));
    expect(await modulesDigest(root)).toBeUndefined();
    await fs.rm(dir, { recursive: true, force: true });
  });
});

describe("kernel-modules initrd: the handshake with the finalize script", () => {
  /** The real gate script under sh, as mkosi runs it ($SRCDIR: the tree, $OUTPUTDIR: staging). */
  const runScript = (tree: string, staging: string) => {
    const gate = initrdGate(tree);
    const p = spawn("sh", [gate.script], { env: { ...process.env, SRCDIR: tree, OUTPUTDIR: staging }, stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    p.stderr.on("data", (d) => (stderr += d));
    const done = new Promise<number | null>((r) => p.on("close", (code) => r(code)));
    return { done, stderr: () => stderr, exited: () => p.exitCode !== null };
  };
  const setup = async () => {
    const dir = await tempDir("tdxvm-kmods-gate-");
    const tree = path.join(dir, "tree");
    const gate = initrdGate(tree);
    await fs.mkdir(gate.dir, { recursive: true });
    await fs.writeFile(gate.script, INITRD_GATE_SCRIPT, { mode: 0o755 });
    const ws = path.join(dir, "ws");
    const space = await workspace(ws);
    return { dir, tree, gate, ws, space, kept: path.join(dir, "kept") };
  };

  it("announces itself, waits for tdxvm, which puts the kept initrd in the workspace; then goes on and takes its marker away", async () => {
    const { dir, tree, gate, ws, space, kept } = await setup();
    await fs.writeFile(gate.kmodsWanted, "");
    await fs.writeFile(gate.ready, ""); // the default initrd is in place already
    // A first bake: nothing kept; the key is known once the script announced itself.
    const first = watchKmods(ws, kept, gate.kmods, { settings: ["a"] }, 20);
    let script = runScript(tree, path.join(space, "staging"));
    expect(await script.done).toBe(0);
    await first.stop();
    expect(first.reused).toBe(false);
    expect(first.key).toMatch(/^[0-9a-f]{64}$/);
    expect(existsSync(path.join(space, "kernel-modules-6.12.1-amd64.initrd"))).toBe(false);
    expect(existsSync(path.join(space, "staging", KMODS_MARKER))).toBe(false);
    // A kept initrd under that key is put in place before the script goes on.
    await fs.mkdir(kept, { recursive: true });
    await fs.writeFile(path.join(kept, `${first.key}.initrd`), "kept kernel modules");
    await fs.rm(gate.kmods);
    const second = watchKmods(ws, kept, gate.kmods, { settings: ["a"] }, 20);
    script = runScript(tree, path.join(space, "staging"));
    expect(await script.done).toBe(0);
    await second.stop();
    expect({ key: second.key, reused: second.reused }).toEqual({ key: first.key, reused: true });
    expect(readFileSync(path.join(space, "kernel-modules-6.12.1-amd64.initrd"), "utf8")).toBe("kept kernel modules");
    // Other settings: another key, nothing put in place.
    await fs.rm(gate.kmods);
    await fs.rm(path.join(space, "kernel-modules-6.12.1-amd64.initrd"));
    const third = watchKmods(ws, kept, gate.kmods, { settings: ["b"] }, 20);
    expect(await runScript(tree, path.join(space, "staging")).done).toBe(0);
    await third.stop();
    expect(third.key).not.toBe(first.key);
    expect(third.reused).toBe(false);
    expect(existsSync(path.join(space, "kernel-modules-6.12.1-amd64.initrd"))).toBe(false);
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("the script waits for both the default initrd and tdxvm's answer, and for neither more than it must", async () => {
    const { dir, tree, gate, ws, space, kept } = await setup();
    // Not watched (no kmods-wanted): no marker, done as soon as the initrd is ready.
    let script = runScript(tree, path.join(space, "staging"));
    await new Promise((r) => setTimeout(r, 500));
    expect(script.exited()).toBe(false);
    await fs.writeFile(gate.ready, "");
    expect(await script.done).toBe(0);
    expect(existsSync(path.join(space, "staging", KMODS_MARKER))).toBe(false);
    // Watched, but tdxvm has not answered yet: the script waits at its marker.
    await fs.writeFile(gate.kmodsWanted, "");
    script = runScript(tree, path.join(space, "staging"));
    await until(() => existsSync(path.join(space, "staging", KMODS_MARKER)));
    await new Promise((r) => setTimeout(r, 500));
    expect(script.exited()).toBe(false);
    const w = watchKmods(ws, kept, gate.kmods, {}, 20);
    expect(await script.done).toBe(0);
    await w.stop();
    // A failed default initrd ends the wait with an error, answered or not.
    await fs.rm(gate.ready);
    await fs.rm(gate.kmods);
    await fs.writeFile(gate.failed, "");
    script = runScript(tree, path.join(space, "staging"));
    expect(await script.done).toBe(1);
    expect(script.stderr()).toContain("the default initrd build failed");
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("a marker nobody claims is taken back after a minute's wait, and mkosi goes on; a claimed one never is", async () => {
    const { dir, tree, gate, space } = await setup();
    await fs.writeFile(gate.kmodsWanted, "");
    await fs.writeFile(gate.ready, "");
    // A `sleep` that returns at once: the script's minute (300 turns) passes in a moment.
    const bin = path.join(dir, "bin");
    await fs.mkdir(bin);
    const turns = path.join(dir, "turns");
    await fs.writeFile(path.join(bin, "sleep"), `#!/bin/sh\necho >> ${turns}\n`, { mode: 0o755 });
    const turnsTaken = () => (existsSync(turns) ? readFileSync(turns, "utf8").length : 0);
    const PATH = `${bin}:${process.env.PATH}`;
    const staging = path.join(space, "staging");
    const start = () => {
      const p = spawn("sh", [gate.script], { env: { ...process.env, PATH, SRCDIR: tree, OUTPUTDIR: staging }, stdio: "ignore" });
      return { done: new Promise<number | null>((r) => p.on("close", (code) => r(code))), exited: () => p.exitCode !== null };
    };
    expect(await start().done).toBe(0); // nobody watching: taken back, done
    expect(await fs.readdir(staging)).toEqual([]);
    // Claimed (renamed by tdxvm) before the minute is up: the script waits for the answer, however long it takes.
    const script = start();
    await until(() => existsSync(path.join(staging, KMODS_MARKER)));
    await fs.rename(path.join(staging, KMODS_MARKER), path.join(staging, `${KMODS_MARKER}.claimed`));
    await fs.rm(turns, { force: true });
    await until(() => turnsTaken() > 400, 60_000); // well past the 300 turns it waits for an unclaimed marker
    expect(script.exited()).toBe(false);
    await fs.writeFile(gate.kmods, "");
    expect(await script.done).toBe(0);
    expect(await fs.readdir(staging)).toEqual([]);
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("a tree it cannot use (two kernels) is answered all the same, with no key and nothing put in place", async () => {
    const dir = await tempDir("tdxvm-kmods-two-");
    const tree = path.join(dir, "tree");
    const gate = initrdGate(tree);
    await fs.mkdir(gate.dir, { recursive: true });
    await fs.writeFile(gate.script, INITRD_GATE_SCRIPT, { mode: 0o755 });
    await fs.writeFile(gate.kmodsWanted, "");
    await fs.writeFile(gate.ready, "");
    const ws = path.join(dir, "ws");
    const space = await workspace(ws, ["6.12.1-amd64", "6.13.0-amd64"]);
    const w = watchKmods(ws, path.join(dir, "kept"), gate.kmods, {}, 20);
    expect(await runScript(tree, path.join(space, "staging")).done).toBe(0);
    await w.stop();
    expect({ key: w.key, reused: w.reused }).toEqual({ key: undefined, reused: false });
    await fs.rm(dir, { recursive: true, force: true });
  });
});

describe("kernel-modules initrd: kept from the UKI", () => {
  const uki = (initrd: Buffer) => buildPe({ plus: true, sections: [{ name: ".linux", data: Buffer.from("kernel") }, { name: ".initrd", data: initrd }, { name: ".cmdline", data: Buffer.from("console=ttyS0") }] });

  it("takes what follows the default initrd (padded to 4 bytes) in .initrd; refuses a section that does not begin with it; keeps the newest", async () => {
    const dir = await tempDir("tdxvm-kmods-keep-");
    const kept = path.join(dir, "kept");
    const defaultInitrd = path.join(dir, "initrd.cpio.zst");
    const base = Buffer.from("default initrd, 31 bytes long.."); // 31: one byte of padding
    expect(base.length % 4).not.toBe(0);
    await fs.writeFile(defaultInitrd, base);
    const kmods = Buffer.concat([Buffer.from("kernel modules initrd!"), Buffer.alloc(2)]);
    const file = path.join(dir, "tdxvm.efi");
    await fs.writeFile(file, uki(Buffer.concat([base, Buffer.alloc(1), kmods])));
    await keepKmods(kept, "k1", file, defaultInitrd);
    expect(readFileSync(path.join(kept, "k1.initrd"))).toEqual(kmods);

    await fs.writeFile(file, uki(Buffer.concat([Buffer.from("another initrd first.........."), Buffer.alloc(1), kmods])));
    await expect(keepKmods(kept, "k2", file, defaultInitrd)).rejects.toThrow(/does not begin with the default initrd/);
    await fs.writeFile(file, uki(Buffer.concat([base, Buffer.alloc(1)])));
    await expect(keepKmods(kept, "k3", file, defaultInitrd)).rejects.toThrow(/nothing after the default initrd/);
    expect((await fs.readdir(kept)).sort()).toEqual(["k1.initrd"]); // nothing half-written

    await fs.writeFile(file, uki(Buffer.concat([base, Buffer.alloc(1), kmods])));
    for (let i = 2; i <= MAX_KEPT_KMODS + 2; i++) {
      await new Promise((r) => setTimeout(r, 15));
      await keepKmods(kept, `k${i}`, file, defaultInitrd);
    }
    const names = (await fs.readdir(kept)).sort();
    expect(names).toHaveLength(MAX_KEPT_KMODS);
    expect(names).not.toContain("k1.initrd");
    expect(names).toContain(`k${MAX_KEPT_KMODS + 2}.initrd`);
    await fs.rm(dir, { recursive: true, force: true });
  });
});
