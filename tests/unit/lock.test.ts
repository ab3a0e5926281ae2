import { promises as fs, readFileSync } from "node:fs";
import * as path from "node:path";
import { Image, Policy, parseLock, readLock, stableJson } from "../../provider";
import { tempDir, tdxErrorOf, walk } from "../helpers";
import { createHash } from "node:crypto";

async function project() {
  const dir = await tempDir();
  await fs.writeFile(path.join(dir, "app.conf"), "listen 80\n");
  const cacheDir = path.join(dir, ".cache");
  const img = () => new Image({ base: "debian/trixie", projectDir: dir }).install("curl").file("/etc/app.conf", { src: "app.conf" });
  return { dir, cacheDir, img, lockFile: path.join(dir, "tdx.lock") };
}

describe("tdx.lock", () => {
  it("img.lock() writes tdx.lock beside the recipe as stable, sealed JSON with profile digests, mirror pin, tools and input integrity", async () => {
    const p = await project();
    const lock = await p.img().lock({ cacheDir: p.cacheDir });
    const text = readFileSync(p.lockFile, "utf8");
    expect(text).toBe(stableJson(lock));
    expect(lock.lockVersion).toBe(1);
    expect(lock.recipe.profiles).toEqual(p.img().digests());
    expect(lock.debian).toMatchObject({ release: "trixie", mirror: "http://deb.debian.org/debian", snapshot: null });
    expect(lock.tools).toEqual({ toolsTreeRelease: "trixie", mkosi: null, systemdStub: null });
    const bytes = Buffer.from("listen 80\n");
    expect(lock.inputs).toEqual([{
      ref: "app.conf",
      size: bytes.length,
      sha256: `sha256-${createHash("sha256").update(bytes).digest("base64")}`,
      sha384: `sha384-${createHash("sha384").update(bytes).digest("base64")}`,
      sha512: `sha512-${createHash("sha512").update(bytes).digest("base64")}`,
    }]);
    // Locking again without changes gives the same bytes.
    await p.img().lock({ cacheDir: p.cacheDir });
    expect(readFileSync(p.lockFile, "utf8")).toBe(text);
    expect((await walk(path.join(p.dir, "build"))).filter((f) => f.endsWith(".tmp"))).toEqual([]);
  });

  it("keeps the previous lock's mirror pin when relocking", async () => {
    const p = await project();
    await p.img().lock({ cacheDir: p.cacheDir, debian: { snapshot: "20261101T000000Z" } });
    const again = await p.img().install("jq").lock({ cacheDir: p.cacheDir });
    expect(again.debian.snapshot).toBe("20261101T000000Z");
  });

  it("frozen emit without a lock is E_LOCKFILE with the fix", async () => {
    const p = await project();
    const e = await tdxErrorOf(() => p.img().emit({ frozen: true, cacheDir: p.cacheDir }));
    expect(e.code).toBe("E_LOCKFILE");
    expect(e.message).toContain("no lock file");
    expect(e.hint).toContain("img.lock()");
  });

  it("frozen emit with a stale lock (recipe changed) is E_LOCKFILE naming the profile", async () => {
    const p = await project();
    await p.img().lock({ cacheDir: p.cacheDir });
    await expect(p.img().emit({ frozen: true, cacheDir: p.cacheDir })).resolves.toBeDefined();
    const e = await tdxErrorOf(() => p.img().install("jq").emit({ frozen: true, cacheDir: p.cacheDir }));
    expect(e.code).toBe("E_LOCKFILE");
    expect(e.message).toContain("stale");
    expect(e.message).toContain("profile default");
    expect(e.hint).toMatch(/img\.lock\(\)/);
    const e2 = await tdxErrorOf(() => p.img().profile("dev", (x) => x.install("strace")).emit({ frozen: true, cacheDir: p.cacheDir }));
    expect(e2.message).toContain("profile dev");
  });

  it("frozen emit with a lock naming a profile the recipe no longer has is stale (E_LOCKFILE naming it)", async () => {
    const p = await project();
    const withDev = await p.img().profile("dev", (x) => x.install("strace")).lock({ cacheDir: p.cacheDir });
    expect(Object.keys(withDev.recipe.profiles).sort()).toEqual(["default", "dev"]);
    const e = await tdxErrorOf(() => p.img().emit({ frozen: true, cacheDir: p.cacheDir }));
    expect(e.code).toBe("E_LOCKFILE");
    expect(e.details).toEqual({ stale: [`profile dev: recipe (absent) vs lock ${withDev.recipe.profiles.dev}`] });
  });

  it("frozen emit notices an edited source file", async () => {
    const p = await project();
    await p.img().lock({ cacheDir: p.cacheDir });
    await fs.writeFile(path.join(p.dir, "app.conf"), "listen 81\n");
    const e = await tdxErrorOf(() => p.img().emit({ frozen: true, cacheDir: p.cacheDir }));
    expect(e.code).toBe("E_LOCKFILE");
    expect(e.message).toContain("app.conf changed on disk");
  });

  it("compares integrity by digest bytes: an unpadded or non-canonical SRI pin is the same pin (frozen check, lock entries)", async () => {
    const p = await project();
    const bytes = Buffer.from("listen 80\n");
    for (const alg of ["sha256", "sha384", "sha512"] as const) {
      const b64 = createHash(alg).update(bytes).digest("base64");
      // The same digest spelled three ways: canonical, without '=' padding, and (sha256: one pad)
      // with non-zero trailing bits in the last character, which base64 decoders ignore.
      const spellings = [b64, b64.replace(/=+$/, "")];
      if (alg === "sha256") {
        const A = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const last = A[A.indexOf(b64[42]!) | 1]!;
        spellings.push(`${b64.slice(0, 42)}${last}=`);
      }
      for (const b of spellings) {
        const integrity = `${alg}-${b}`;
        const img = () => new Image({ base: "debian/trixie", projectDir: p.dir }).file("/etc/app.conf", { src: "app.conf", integrity });
        await img().lock({ cacheDir: p.cacheDir });
        const r = await img().emit({ frozen: true, cacheDir: p.cacheDir });
        expect({ alg, integrity, data: r.tree.get("mkosi.extra/etc/app.conf")!.data.toString() }).toEqual({ alg, integrity, data: "listen 80\n" });
      }
    }
    // A lock whose entry is spelled unpadded (sealed, so not tampered) still matches the recipe and the file.
    const canonical = `sha256-${createHash("sha256").update(bytes).digest("base64")}`;
    const img = () => new Image({ base: "debian/trixie", projectDir: p.dir }).file("/etc/app.conf", { src: "app.conf", integrity: canonical });
    const lock = await img().lock({ cacheDir: p.cacheDir });
    const { integrity: _i, ...body } = lock;
    void _i;
    const { sealLock, writeLock } = await import("../../provider/lock");
    await writeLock(p.lockFile, sealLock({ ...body, inputs: body.inputs.map((x) => ({ ...x, sha256: x.sha256.replace(/=+$/, "") })) }));
    await expect(img().emit({ frozen: true, cacheDir: p.cacheDir })).resolves.toBeDefined();
    // An entry that is not a whole digest is a malformed lock, whatever its seal says.
    const short = sealLock({ ...body, inputs: body.inputs.map((x) => ({ ...x, sha256: "sha256-AAAA" })) });
    expect((await tdxErrorOf(() => parseLock(stableJson(short)))).message).toMatch(/malformed: inputs\.0\.sha256: must hold a 32-byte sha256 digest/);
    // A different digest is still stale.
    const other = `sha256-${createHash("sha256").update("listen 81\n").digest("base64").replace(/=+$/, "")}`;
    const e = await tdxErrorOf(() => new Image({ base: "debian/trixie", projectDir: p.dir }).file("/etc/app.conf", { src: "app.conf", integrity: other }).emit({ frozen: true, cacheDir: p.cacheDir }));
    expect(e.code).toBe("E_LOCKFILE");
  });

  it("keeps URL credentials out of the lock, its warnings and its errors; sources that differ only in credentials must agree", async () => {
    const http = await import("node:http");
    const bodies: Record<string, Buffer> = { "/a": Buffer.from("agent 1.2.3\n"), "/b": Buffer.from("other bytes\n") };
    const server = http.createServer((req, res) => {
      const b = bodies[(req.url ?? "").split("?")[0]!];
      res.writeHead(b ? 200 : 404);
      res.end(b);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as import("node:net").AddressInfo).port;
    const url = (p: string, user: string, sig: string) => `http://${user}:pw-${user}@127.0.0.1:${port}${p}?X-Amz-Signature=${sig}&v=1`;
    try {
      const p = await project();
      const warnings: string[] = [];
      const img = () => new Image({ base: "debian/trixie", projectDir: p.dir }).file("/opt/agent", { src: url("/a", "ci", "SIGci") });
      const lock = await img().lock({ cacheDir: p.cacheDir, onWarning: (w) => warnings.push(w.message) });
      const text = readFileSync(p.lockFile, "utf8");
      for (const leaked of ["pw-ci", "SIGci"]) expect([text, ...warnings].filter((t) => t.includes(leaked))).toEqual([]);
      expect(lock.inputs.map((i) => i.ref)).toEqual([`http://***@127.0.0.1:${port}/a?X-Amz-Signature=***&v=1`]);
      expect(warnings).toEqual([`http://***@127.0.0.1:${port}/a?X-Amz-Signature=***&v=1 has no integrity, so its content can change under the same URL`]);
      // The frozen check and compile find the source under its lock name and serve the locked bytes.
      const r = await img().emit({ frozen: true, cacheDir: p.cacheDir });
      expect(r.tree.get("mkosi.extra/opt/agent")!.data.toString()).toBe("agent 1.2.3\n");
      // Two sources that differ only in credentials but serve different bytes cannot share a lock entry.
      const both = new Image({ base: "debian/trixie", projectDir: p.dir })
        .file("/opt/one", { src: url("/b", "ci", "SIGci") })
        .file("/opt/two", { src: url("/b", "dev", "SIGdev") });
      await expect(both.lock({ cacheDir: p.cacheDir })).resolves.toBeDefined(); // same bytes: one entry
      expect((await readLock(p.lockFile)).inputs).toHaveLength(1);
      let n = 0;
      bodies["/c"] = Buffer.from("first\n");
      server.removeAllListeners("request");
      server.on("request", (req, res) => {
        const b = (req.url ?? "").startsWith("/c") ? Buffer.from(`answer ${n++}\n`) : bodies[(req.url ?? "").split("?")[0]!];
        res.writeHead(b ? 200 : 404);
        res.end(b);
      });
      const clash = new Image({ base: "debian/trixie", projectDir: p.dir })
        .file("/opt/one", { src: url("/c", "ci", "SIGci") })
        .file("/opt/two", { src: url("/c", "dev", "SIGdev") });
      const e = await tdxErrorOf(() => clash.lock({ cacheDir: p.cacheDir }));
      expect(e.code).toBe("E_LOCKFILE");
      expect(e.message).toContain(`http://***@127.0.0.1:${port}/c?X-Amz-Signature=***&v=1`);
      expect(`${e.message} ${e.hint}`).not.toMatch(/pw-|SIG(ci|dev)/);
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  it("detects a hand-edited lock (tampered digest)", async () => {
    const p = await project();
    await p.img().lock({ cacheDir: p.cacheDir });
    const text = readFileSync(p.lockFile, "utf8");
    const forged = text.replace(/"default": "sha256:([0-9a-f])/, (_m, c: string) => `"default": "sha256:${c === "0" ? "1" : "0"}`);
    expect(forged).not.toBe(text);
    await fs.writeFile(p.lockFile, forged);
    const e = await tdxErrorOf(() => readLock(p.lockFile));
    expect(e.code).toBe("E_LOCKFILE");
    expect(e.message).toContain("modified by hand");
    expect(e.hint).toContain("git checkout tdx.lock");
  });

  it("rejects malformed locks and other lock versions with E_LOCKFILE", async () => {
    for (const text of ["", "{", "[]", "null", '{"lockVersion": 2}', '{"lockVersion": 1}']) {
      const e = await tdxErrorOf(() => parseLock(text));
      expect(e.code).toBe("E_LOCKFILE");
    }
    expect((await tdxErrorOf(() => parseLock('{"lockVersion": 2}'))).message).toContain("lockVersion 2");
  });

  it("non-frozen emit relocks and writes the mkosi tree", async () => {
    const p = await project();
    const r = await p.img().emit({ cacheDir: p.cacheDir });
    expect(readFileSync(path.join(r.dir, "mkosi.extra/etc/app.conf"), "utf8")).toBe("listen 80\n");
    expect(readFileSync(p.lockFile, "utf8")).toBe(stableJson(r.lock));
  });

  it("frozen emit serves sources from the content store by their locked digest", async () => {
    const p = await project();
    await p.img().lock({ cacheDir: p.cacheDir });
    const r = await p.img().setPolicy(new Policy({ requireFrozenLock: true })).emit({ frozen: true, cacheDir: p.cacheDir });
    expect(r.tree.get("mkosi.extra/etc/app.conf")!.data.toString()).toBe("listen 80\n");
  });
});

describe("package pins", () => {
  it("packageDrift lists removed and added pins (image and initrd); a relock keeps every profile's pins, even after a recipe change; refresh drops them", async () => {
    const { packageDrift, packagePins, pinPackages } = await import("../../provider/lock");
    const p = await project();
    const lock = await p.img().profile("dev", (x) => x.install("strace")).lock({ cacheDir: p.cacheDir });
    expect(packageDrift(lock, "default", ["a=1"])).toEqual([]); // nothing pinned yet
    await pinPackages(p.lockFile, "default", packagePins([{ name: "b", version: "2" }, { name: "a", version: "1" }]), ["c=1"]);
    await pinPackages(p.lockFile, "dev", ["a=1"]);
    const pinned = await readLock(p.lockFile); // still sealed: readLock checks the integrity
    expect(pinned.packages).toEqual({ default: ["a=1", "b=2"], dev: ["a=1"] });
    expect(pinned.initrdPackages).toEqual({ default: ["c=1"] });
    expect(packageDrift(pinned, "default", ["a=1", "b=3"])).toEqual(["-b=2", "+b=3"]);
    expect(packageDrift(pinned, "default", ["a=1", "b=2"], ["c=2"])).toEqual(["-c=1 (initrd)", "+c=2 (initrd)"]);
    // A recipe change keeps the pins (the bake installs the pinned versions of what it still needs);
    // a profile the recipe no longer has loses them.
    const relocked = await p.img().install("jq").profile("dev", (x) => x.install("strace", "gdb")).lock({ cacheDir: p.cacheDir });
    expect(relocked.packages).toEqual({ default: ["a=1", "b=2"], dev: ["a=1"] });
    expect((await p.img().lock({ cacheDir: p.cacheDir })).packages).toEqual({ default: ["a=1", "b=2"] });
    const refreshed = await p.img().lock({ cacheDir: p.cacheDir, refresh: true });
    expect([refreshed.packages, refreshed.initrdPackages, refreshed.debs]).toEqual([undefined, undefined, undefined]);
  });

  it("pinPackages keeps the .deb digests of pinned packages only", async () => {
    const { pinPackages } = await import("../../provider/lock");
    const p = await project();
    await p.img().lock({ cacheDir: p.cacheDir });
    const deb = (n: string) => ({ file: `${n.replace("=", "_")}_amd64.deb`, sha256: createHash("sha256").update(n).digest("hex"), size: 10 });
    await pinPackages(p.lockFile, "default", ["a=1", "b=2"], ["c=1"], { "a=1": deb("a=1"), "b=2": deb("b=2"), "c=1": deb("c=1") });
    const l = await pinPackages(p.lockFile, "default", ["a=1", "b=3"], ["c=1"], { "b=3": deb("b=3") });
    expect(Object.keys(l.debs!)).toEqual(["a=1", "b=3", "c=1"]);
    expect(l.debs!["b=3"]).toEqual(deb("b=3"));
  });

  it("the lock is tdx.lock beside the recipe; a legacy build/tdx.lock is read (and its pins kept) when no tdx.lock exists", async () => {
    const { lockFileOf, pinPackages } = await import("../../provider/lock");
    const p = await project();
    await p.img().lock({ cacheDir: p.cacheDir });
    await pinPackages(p.lockFile, "default", ["a=1"]);
    expect(lockFileOf(p.dir)).toBe(p.lockFile);
    await fs.mkdir(path.join(p.dir, "build"), { recursive: true });
    await fs.rename(p.lockFile, path.join(p.dir, "build", "tdx.lock"));
    expect(lockFileOf(p.dir)).toBe(path.join(p.dir, "build", "tdx.lock"));
    await expect(p.img().emit({ frozen: true, cacheDir: p.cacheDir })).resolves.toBeDefined();
    const moved = await p.img().lock({ cacheDir: p.cacheDir });
    expect(moved.packages).toEqual({ default: ["a=1"] });
    expect(readFileSync(p.lockFile, "utf8")).toBe(stableJson(moved));
    expect(lockFileOf(p.dir)).toBe(p.lockFile);
  });

  it("the pins reach apt as preferences in the sandbox tree (so they are in the bake's cache key); none without pins", async () => {
    const { pinPackages } = await import("../../provider/lock");
    const { treeDigest } = await import("../../provider/compile");
    const p = await project();
    const bare = await p.img().emit({ cacheDir: p.cacheDir });
    expect(bare.tree.has("mkosi.sandbox/etc/apt/preferences.d/tdxvm-pins.pref")).toBe(false);
    await pinPackages(p.lockFile, "default", ["libc6:amd64=2.41-12", "zlib1g=1:1.3.dfsg+really1.3.1-1+b1"], ["kmod=34.2-2", "zlib1g=1:0"]);
    const pinned = await p.img().emit({ cacheDir: p.cacheDir, frozen: true });
    const pref = pinned.tree.get("mkosi.sandbox/etc/apt/preferences.d/tdxvm-pins.pref")!.data.toString();
    // One stanza per package name (arch qualifier dropped; the image's pin wins over the initrd's), priority over 1000.
    expect(pref.split("\n\n").slice(1).map((x) => x.trim())).toEqual([
      "Package: kmod\nPin: version 34.2-2\nPin-Priority: 1001",
      "Package: libc6\nPin: version 2.41-12\nPin-Priority: 1001",
      "Package: zlib1g\nPin: version 1:1.3.dfsg+really1.3.1-1+b1\nPin-Priority: 1001",
    ]);
    expect(treeDigest(pinned.tree)).not.toBe(treeDigest(bare.tree));
  });
});
