/**
 * Pinned Debian packages that outlive the mirror: archive indices, the package-level causes of a
 * register change, the content-addressed package archive (export, import, the flat repository a
 * bake installs from) and the CLI's frozen default under CI.
 */
import { promises as fs, existsSync, readFileSync } from "node:fs";
import * as http from "node:http";
import * as path from "node:path";
import { AddressInfo } from "node:net";
import { createHash } from "node:crypto";
import { gzipSync } from "node:zlib";
import { execFileSync } from "node:child_process";
import { Image } from "../../provider";
import { pinPackages, readLock, chooseSnapshot } from "../../provider/lock";
import { parsePackagesIndex, unobtainablePins, indexUrls, pinsUnavailable, fetchIndex } from "../../provider/fetch/debian";
import { exportArchive, importArchive, gatherDebs, serveFlatRepository, flatRepositorySource, allPins } from "../../provider/fetch/archive";
import { diffMeasurements, pinDiff, Measurements } from "../../provider/measure/ledger";
import { resolveFrozen, main as run } from "../../provider/cli";
import { tempDir, tdxErrorOf } from "../helpers";

const stanza = (name: string, version: string, sha = "a".repeat(64)) =>
  `Package: ${name}\nVersion: ${version}\nArchitecture: amd64\nDepends: libc6 (>= 2.34)\nDescription: x\n long text\n .\n more\nFilename: pool/main/${name[0]}/${name}/${name}_${version}_amd64.deb\nSize: 123\nSHA256: ${sha}\n`;

/** A mirror on 127.0.0.1 serving a Packages.gz per suite (the three sources of a lock). */
async function mirror(suites: Record<string, string>, xzOnly: string[] = []): Promise<{ url: string; close(): Promise<void>; hits: string[] }> {
  const hits: string[] = [];
  const server = http.createServer((req, res) => {
    hits.push(req.url ?? "");
    const m = /\/dists\/([^/]+)\/main\/binary-amd64\/Packages\.(gz|xz)$/.exec(req.url ?? "");
    if (!m || suites[m[1]] === undefined || (m[2] === "xz") !== xzOnly.includes(m[1])) return void res.writeHead(404).end();
    res.writeHead(200).end(m[2] === "gz" ? gzipSync(suites[m[1]]) : execFileSync("xz", ["-c"], { input: suites[m[1]] }));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, hits, close: () => new Promise((r) => server.close(() => r())) };
}

async function project(mirrorUrl = "http://deb.debian.org/debian") {
  const dir = await tempDir();
  const img = () => new Image({ base: "debian/trixie", projectDir: dir }).install("hello");
  await img().lock({ cacheDir: dir, debian: { mirror: mirrorUrl, securityMirror: `${mirrorUrl}-security` } });
  return { dir, img, lockFile: path.join(dir, "tdx.lock") };
}

describe("Debian package indices", () => {
  it("parses Packages stanzas (multi-line fields, skips entries without SHA-256) and names the index URLs of a lock's sources", () => {
    const idx = parsePackagesIndex(`${stanza("hello", "2.10-5")}\n${stanza("base-files", "13.8+deb13u8", "b".repeat(64))}\nPackage: broken\nVersion: 1\n`);
    expect(idx.map((e) => [e.name, e.version, e.arch, e.size, e.sha256.slice(0, 2)])).toEqual([["hello", "2.10-5", "amd64", 123, "aa"], ["base-files", "13.8+deb13u8", "amd64", 123, "bb"]]);
    expect(indexUrls({ release: "trixie", mirror: "http://m/debian", securityMirror: "http://m/debian-security", snapshotMirror: "https://s", snapshot: null })).toEqual([
      "http://m/debian/dists/trixie/main/binary-amd64/Packages.gz",
      "http://m/debian/dists/trixie-updates/main/binary-amd64/Packages.gz",
      "http://m/debian-security/dists/trixie-security/main/binary-amd64/Packages.gz",
    ]);
    expect(indexUrls({ release: "trixie", mirror: "http://m", securityMirror: "http://m", snapshotMirror: "https://s", snapshot: "20261201T000000Z" })[2]).toBe("https://s/archive/debian-security/20261201T000000Z/dists/trixie-security/main/binary-amd64/Packages.gz");
  });

  it("a pin is obtainable when any of the three suites offers that version; a mirror that dropped it makes it unobtainable; an unreachable index proves nothing", async () => {
    // As Debian publishes them: trixie as .gz (and .xz), the updates and security suites as .xz only.
    const m = await mirror({ trixie: stanza("hello", "2.10-5") + "\n" + stanza("libc6", "2.41-12"), "trixie-updates": "", "trixie-security": stanza("libc6", "2.41-12+deb13u1") }, ["trixie-updates", "trixie-security"]);
    try {
      const debian = { release: "trixie" as const, mirror: m.url, securityMirror: m.url, snapshotMirror: "https://s", snapshot: null };
      expect(await unobtainablePins({ debian }, ["hello=2.10-5", "libc6:amd64=2.41-12+deb13u1"])).toEqual([]);
      expect(m.hits.filter((h) => h.includes("security"))).toEqual(["/dists/trixie-security/main/binary-amd64/Packages.gz", "/dists/trixie-security/main/binary-amd64/Packages.xz"]);
      expect(await unobtainablePins({ debian }, ["hello=2.10-3", "libc6=2.41-12"])).toEqual(["hello=2.10-3"]);
      expect(await unobtainablePins({ debian: { ...debian, securityMirror: "http://127.0.0.1:9" } }, ["hello=2.10-3"])).toBeUndefined();
    } finally {
      await m.close();
    }
  });

  it("an index is read with a bound, also when it streams without a Content-Length (chunked)", async () => {
    const server = http.createServer((_req, res) => {
      res.writeHead(200); // no content-length: chunked
      for (let i = 0; i < 8; i++) res.write(Buffer.alloc(1024, 0x41));
      res.end();
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/dists/trixie/main/binary-amd64/Packages.gz`;
      const e = await tdxErrorOf(() => fetchIndex(url, 10_000, 4096));
      expect([e.code, e.message]).toEqual(["E_FETCH", expect.stringMatching(/Packages\.gz is larger than 4096 bytes/)]);
      // Within the bound the same answer is read (and then found not to be gzip).
      expect((await tdxErrorOf(() => fetchIndex(url, 10_000, 64 * 1024))).message).toMatch(/cannot decompress/);
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  it("E_PACKAGES names the missing pins and both ways out", () => {
    const e = pinsUnavailable({ debian: { mirror: "http://deb.debian.org/debian", snapshot: null } } as never, "default", ["hello=2.10-3"], "/srv/archive");
    expect(e.code).toBe("E_PACKAGES");
    expect(e.message).toContain("hello=2.10-3");
    expect(e.message).toContain("/srv/archive");
    expect(e.hint).toMatch(/--archive/);
    expect(e.hint).toMatch(/snapshot/);
    expect(e.details).toEqual({ missing: ["hello=2.10-3"] });
  });
});

describe("snapshot pin at lock time", () => {
  it("auto pins now where the snapshot service serves the release, else none and says why; a timestamp or none as given; an existing pin is kept", async () => {
    let status = 200;
    const seen: string[] = [];
    const server = http.createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      res.writeHead(status).end();
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const debian = { release: "trixie" as const, mirror: "http://m", securityMirror: "http://m", snapshotMirror: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, snapshot: null };
    const log: string[] = [];
    const now = new Date("2026-12-07T04:43:12.345Z");
    try {
      expect(await chooseSnapshot("auto", debian, (m) => log.push(m), now)).toBe("20261207T044312Z");
      expect(seen).toEqual(["HEAD /archive/debian/20261207T044312Z/dists/trixie/InRelease"]);
      status = 404;
      expect(await chooseSnapshot("auto", debian, (m) => log.push(m), now)).toBeNull();
      expect(log[1]).toMatch(/no Debian snapshot pinned: .* answered 404/);
      expect(await chooseSnapshot("auto", { ...debian, snapshotMirror: "http://127.0.0.1:9" }, (m) => log.push(m), now)).toBeNull();
      expect(await chooseSnapshot("auto", { ...debian, snapshot: "20261101T000000Z" }, () => undefined, now)).toBe("20261101T000000Z");
      expect(await chooseSnapshot("20261201T000000Z", debian, () => undefined, now)).toBe("20261201T000000Z");
      expect(await chooseSnapshot("none", { ...debian, snapshot: "20261101T000000Z" }, () => undefined, now)).toBeNull();
      expect((await tdxErrorOf(() => chooseSnapshot("yesterday", debian, () => undefined, now))).code).toBe("E_VALIDATION");
      expect(seen.length).toBe(2); // explicit choices and kept pins ask nothing
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});

describe("package causes of register changes", () => {
  const reg = (events: Array<[string, string]>) => ({ alg: "sha384" as const, value: createHash("sha384").update(JSON.stringify(events)).digest("hex"), status: "exact" as const, events: events.map(([description, digest]) => ({ type: "EV_IPL", description, origin: "x", digest })) });
  const m = (initrd: string, cmdline: string, linux: string, pkgs: Measurements["packages"]): Measurements => ({
    measurementsVersion: 1, backend: "rtmr", inputs: {}, packages: pkgs,
    registers: { RTMR1: reg([["UKI (EFI/BOOT/BOOTX64.EFI)", initrd + cmdline + linux], ["kernel (.linux, loaded by systemd-stub)", linux]]), RTMR2: reg([["kernel command line (LOADED_IMAGE::LoadOptions)", cmdline], ["Linux initrd", initrd]]) },
  });

  it("pinDiff lists version changes, additions and removals by package name", () => {
    expect(pinDiff(["a=1", "b=2", "c=3"], ["a=1", "b=3", "d=1"])).toEqual([{ name: "b", old: "2", new: "3" }, { name: "c", old: "3", new: null }, { name: "d", old: null, new: "1" }]);
  });

  it("an initrd change names the initrd's packages; a root file system change the image's; the kernel its package", () => {
    const a = m("i1", "c1", "k1", { image: ["base-files=13.8+deb13u7", "linux-image-6.12.0-1-amd64=6.12.1-1", "systemd=257.1"], initrd: ["base-files=13.8+deb13u7", "kmod=34"] });
    const onlyInitrd = diffMeasurements(a, m("i2", "c1", "k1", { image: a.packages!.image, initrd: ["base-files=13.8+deb13u8", "kmod=34"] }));
    expect(onlyInitrd.find((d) => d.register === "RTMR2")!.changes).toEqual(["RTMR2: Linux initrd changed — base-files 13.8+deb13u7 → 13.8+deb13u8 (in the initrd)"]);
    const rootfs = diffMeasurements(a, m("i1", "c2", "k1", { image: ["base-files=13.8+deb13u7", "linux-image-6.12.0-1-amd64=6.12.1-1", "systemd=257.2"], initrd: a.packages!.initrd }));
    expect(rootfs.find((d) => d.register === "RTMR2")!.changes).toEqual(["RTMR2: kernel command line (LOADED_IMAGE::LoadOptions) changed — systemd 257.1 → 257.2 (in the root file system)"]);
    const kernel = diffMeasurements(a, m("i1", "c1", "k2", { image: ["base-files=13.8+deb13u7", "linux-image-6.12.0-1-amd64=6.12.2-1", "systemd=257.1"], initrd: a.packages!.initrd }));
    expect(kernel.find((d) => d.register === "RTMR1")!.changes).toEqual([
      "RTMR1: UKI (EFI/BOOT/BOOTX64.EFI) changed — linux-image-6.12.0-1-amd64 6.12.1-1 → 6.12.2-1 (the kernel)",
      "RTMR1: kernel (.linux, loaded by systemd-stub) changed — linux-image-6.12.0-1-amd64 6.12.1-1 → 6.12.2-1 (the kernel)",
    ]);
    // Without package lists (files from before tdxvm 0.2) the reasons stay as they were.
    expect(diffMeasurements({ ...a, packages: undefined }, m("i2", "c1", "k1", undefined)).find((d) => d.register === "RTMR2")!.changes).toEqual(["RTMR2: Linux initrd changed"]);
  });
});

describe("content-addressed package archive", () => {
  /** A pinned "package": bytes whose SHA-256 the lock records. */
  const debBytes = (name: string) => Buffer.from(`not really a deb: ${name}\n`);
  async function pinned(names: string[]) {
    const p = await project();
    const debs = Object.fromEntries(names.map((n) => [`${n}=1.0`, { file: `${n}_1.0_amd64.deb`, sha256: createHash("sha256").update(debBytes(n)).digest("hex"), size: debBytes(n).length }]));
    const lock = await pinPackages(p.lockFile, "default", names.map((n) => `${n}=1.0`), undefined, debs);
    return { ...p, lock };
  }

  it("export takes the pinned debs from the package cache (checked by SHA-256), import checks every file against its name, gather finds them in the store", async () => {
    const p = await pinned(["hello", "zlib1g"]);
    const cache = path.join(p.dir, "cache-a");
    const apt = path.join(cache, "packages", "cache", "apt", "archives");
    await fs.mkdir(apt, { recursive: true });
    await fs.writeFile(path.join(apt, "hello_1.0_amd64.deb"), debBytes("hello"));
    // A cached file with the right name but other bytes is not the pinned package.
    await fs.writeFile(path.join(apt, "zlib1g_1.0_amd64.deb"), "tampered");
    const e = await tdxErrorOf(() => exportArchive(p.lock, path.join(p.dir, "out"), { cacheDir: cache }));
    expect([e.code, e.details]).toEqual(["E_PACKAGES", { missing: ["zlib1g=1.0"] }]);
    await fs.writeFile(path.join(apt, "zlib1g_1.0_amd64.deb"), debBytes("zlib1g"));
    const out = path.join(p.dir, "out");
    const r = await exportArchive(p.lock, out, { cacheDir: cache });
    expect([r.files, r.bytes]).toEqual([2, debBytes("hello").length + debBytes("zlib1g").length]);
    expect(JSON.parse(readFileSync(r.index, "utf8")).debs["hello=1.0"]).toEqual(p.lock.debs!["hello=1.0"]);
    expect(readFileSync(path.join(out, "sha256", p.lock.debs!["hello=1.0"].sha256))).toEqual(debBytes("hello"));
    // Another machine (empty cache): an import refuses a file whose content is not its name.
    const bad = createHash("sha256").update("x").digest("hex");
    await fs.writeFile(path.join(out, "sha256", bad), "y");
    const cacheB = path.join(p.dir, "cache-b");
    expect(await importArchive(out, { cacheDir: cacheB })).toEqual({ imported: 2, refused: [bad] });
    const g = await gatherDebs(p.lock, allPins(p.lock), { cacheDir: cacheB });
    expect([[...g.found.keys()], g.missing]).toEqual([["hello=1.0", "zlib1g=1.0"], []]);
    expect(readFileSync(g.found.get("hello=1.0")!.path)).toEqual(debBytes("hello"));
  });

  it("gather fetches from an archive URL (a bucket, an internal web server) and refuses bytes that are not the pinned ones", async () => {
    const p = await pinned(["hello", "zlib1g"]);
    const served: Record<string, Buffer> = {
      [`/pkgs/sha256/${p.lock.debs!["hello=1.0"].sha256}`]: debBytes("hello"),
      [`/pkgs/sha256/${p.lock.debs!["zlib1g=1.0"].sha256}`]: Buffer.from("evil"),
    };
    const server = http.createServer((req, res) => (served[req.url ?? ""] ? res.writeHead(200).end(served[req.url!]) : res.writeHead(404).end()));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    try {
      const cache = path.join(p.dir, "cache");
      const g = await gatherDebs(p.lock, allPins(p.lock), { cacheDir: cache, archive: `http://127.0.0.1:${(server.address() as AddressInfo).port}/pkgs/` });
      expect([[...g.found.keys()], g.missing]).toEqual([["hello=1.0"], ["zlib1g=1.0"]]);
      expect(existsSync(path.join(cache, "content", "sha256", p.lock.debs!["zlib1g=1.0"].sha256))).toBe(false);
    } finally {
      await new Promise((r) => server.close(r));
    }
  });

  it("the flat repository serves a Release, an index with each deb's control fields and checksums, and only the indexed files", async () => {
    const p = await pinned(["hello"]);
    const file = path.join(p.dir, "hello.deb");
    await fs.writeFile(file, debBytes("hello"));
    const d = { ...p.lock.debs!["hello=1.0"], pin: "hello=1.0", path: file, control: "Package: hello\nVersion: 1.0\nArchitecture: amd64\nDescription: hi\n" };
    const repo = await serveFlatRepository([d]);
    try {
      expect(repo.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
      const index = await (await fetch(`${repo.url}Packages`)).text();
      expect(index).toBe(`Package: hello\nVersion: 1.0\nArchitecture: amd64\nDescription: hi\nFilename: ./hello_1.0_amd64.deb\nSize: ${d.size}\nSHA256: ${d.sha256}\n`);
      const release = await (await fetch(`${repo.url}Release`)).text();
      expect(release).toContain(` ${createHash("sha256").update(index).digest("hex")} ${index.length} Packages`);
      expect(Buffer.from(await (await fetch(`${repo.url}hello_1.0_amd64.deb`)).arrayBuffer())).toEqual(debBytes("hello"));
      expect((await fetch(`${repo.url}..%2Fhello.deb`)).status).toBe(404);
      expect((await fetch(`${repo.url}./Packages`)).status).toBe(200); // apt asks for "./Packages"
      expect((await fetch(`${repo.url}%E0%A4%A`)).status).toBe(400);
      expect((await fetch(`${repo.url}Packages`, { method: "POST" })).status).toBe(405);
    } finally {
      await repo.close();
    }
    expect(flatRepositorySource("http://127.0.0.1:1/")).toContain("Suites: ./\nTrusted: yes");
  });
});

describe("frozen by default in CI", () => {
  const env = process.env.CI;
  afterEach(() => void (env === undefined ? delete process.env.CI : (process.env.CI = env)));

  it("CI=true or CI=1 with a tdx.lock means frozen; --frozen/--no-frozen decide when given", async () => {
    const p = await project();
    const empty = await tempDir();
    for (const [ci, dir, given, want] of [["true", p.dir, undefined, true], ["1", p.dir, undefined, true], ["true", empty, undefined, false], [undefined, p.dir, undefined, false], ["false", p.dir, undefined, false], ["true", p.dir, false, false], [undefined, p.dir, true, true]] as const) {
      if (ci === undefined) delete process.env.CI;
      else process.env.CI = ci;
      expect([ci, dir === p.dir, given, resolveFrozen(given, dir)]).toEqual([ci, dir === p.dir, given, want]);
    }
  });

  it("the CLI under CI=true refuses a stale lock (emit is frozen) unless --no-frozen; E_PACKAGES exits 4", async () => {
    const p = await project();
    const recipe = path.join(p.dir, "recipe.js");
    await fs.writeFile(recipe, `const { Image } = require(${JSON.stringify(path.resolve(__dirname, "../../provider"))});\nmodule.exports = () => new Image({ base: "debian/trixie", projectDir: __dirname }).install("hello", "jq");\n`);
    process.env.CI = "true";
    const logs: string[] = [];
    const spy = jest.spyOn(console, "error").mockImplementation((m: unknown) => void logs.push(String(m)));
    try {
      expect(await run(["--cache-dir", p.dir, "emit", recipe])).toBe(2);
      expect(logs.join("\n")).toContain("E_LOCKFILE: tdx.lock is stale");
      expect(await run(["--cache-dir", p.dir, "emit", recipe, "--no-frozen"])).toBe(0);
      expect((await readLock(p.lockFile)).recipe.profiles.default).toBe((require(recipe) as () => Image)().digests().default);
      logs.length = 0;
      expect(await run(["--cache-dir", p.dir, "archive", "export", recipe, path.join(p.dir, "out")])).toBe(2); // nothing pinned: E_LOCKFILE
      await pinPackages(p.lockFile, "default", ["hello=2.10-3"], undefined, { "hello=2.10-3": { file: "hello_2.10-3_amd64.deb", sha256: "cd".repeat(32), size: 5 } });
      expect(await run(["--cache-dir", p.dir, "archive", "export", recipe, path.join(p.dir, "out")])).toBe(4);
      expect(logs.join("\n")).toContain("E_PACKAGES");
      // A hostile tarball: a link in sha256/ (it would have the store copy what it points at), a path outside; and not a tarball at all.
      const evil = path.join(p.dir, "evil");
      await fs.mkdir(path.join(evil, "sha256"), { recursive: true });
      await fs.symlink("/etc/hostname", path.join(evil, "sha256", createHash("sha256").update(readFileSync("/etc/hostname")).digest("hex")));
      execFileSync("tar", ["-cf", path.join(p.dir, "evil.tar"), "-C", evil, "sha256"]);
      execFileSync("tar", ["-cf", path.join(p.dir, "evil2.tar"), "-C", p.dir, "tdx.lock"]);
      await fs.writeFile(path.join(p.dir, "evil3.tar"), "not a tarball");
      for (const t of ["evil.tar", "evil2.tar", "evil3.tar"]) {
        logs.length = 0;
        expect(await run(["--cache-dir", path.join(p.dir, "c2"), "archive", "import", path.join(p.dir, t)])).toBe(2);
        expect(logs.join("\n")).toMatch(/E_VALIDATION: .*(not a tdxvm package archive|cannot list)/);
      }
      expect(existsSync(path.join(p.dir, "c2", "content"))).toBe(false);
      // As a directory, the link is skipped (regular files only).
      expect(await importArchive(evil, { cacheDir: path.join(p.dir, "c3") })).toEqual({ imported: 0, refused: [] });
    } finally {
      spy.mockRestore();
    }
  });
});
