import { execFileSync } from "node:child_process";
import { promises as fs, readFileSync, existsSync, mkdirSync, writeFileSync, rmSync } from "node:fs";
import * as path from "node:path";
import fc from "fast-check";
import { Image, compile, createLock, treeDigest, writeTree } from "../../provider";
import { MkosiTree } from "../../provider/compile";
import { fullApiShape } from "../fixtures/full-api-shape";
import { tempDir, walk } from "../helpers";

const GOLDEN = path.join(__dirname, "..", "golden", "full-api-shape");

async function compileImage(img: Image, cacheDir: string): Promise<MkosiTree> {
  const { lock } = await createLock(img.recipe, { projectDir: img.projectDir, cacheDir });
  const store = path.join(cacheDir, "content", "sha256");
  const byRef = new Map(lock.inputs.map((i) => [i.ref, Buffer.from(i.sha256.slice(7), "base64").toString("hex")]));
  return compile({ recipe: img.recipe, lock, source: (ref) => readFileSync(path.join(store, byRef.get(ref)!)) });
}

function modesManifest(tree: MkosiTree): string {
  return [...tree].map(([p, e]) => `${e.mode.toString(8).padStart(4, "0")} ${p}`).join("\n") + "\n";
}

describe("mkosi emission", () => {
  let cache: string;
  beforeAll(async () => {
    cache = await tempDir();
  });
  afterAll(async () => {
    await fs.rm(cache, { recursive: true, force: true });
  });

  it("matches the golden tree for the full API shape example (UPDATE_GOLDEN=1 rewrites it)", async () => {
    const { img } = fullApiShape();
    const full = await compileImage(img, cache);
    // Files tdxvm builds itself (the agent bundle) are pinned by their digest in the recipe, and
    // tested on their own (tests/unit/modules.test.ts): the golden tree leaves them out, and masks
    // what derives from the recipe digest (the profile digests and the seeds derived from them),
    // which every change of the agent moves. Digests are pinned by tests/unit/recipe.test.ts.
    const builtins = new Set(img.recipe.base_layer.files.filter((f) => f.source.kind === "builtin").map((f) => `mkosi.extra${f.path}`));
    expect([...builtins]).toEqual(["mkosi.extra/usr/lib/tdxvm/agent.js"]);
    const digests = Object.values(img.digests()).map((d) => d.slice("sha256:".length));
    const mask = (t: string) => t.replace(/^Seed=[0-9a-f-]{36}$/m, "Seed=<derived from the recipe digest>").replace(/sha256:([0-9a-f]{64})/g, (m, h: string) => (digests.includes(h) ? "sha256:<recipe digest>" : m));
    const tree: MkosiTree = new Map([...full].filter(([p]) => !builtins.has(p)).map(([p, e]) => [p, { ...e, data: p === "mkosi.conf" || p === "tdxvm.json" ? Buffer.from(mask(e.data.toString("utf8"))) : e.data }]));
    if (process.env.UPDATE_GOLDEN === "1") {
      rmSync(GOLDEN, { recursive: true, force: true });
      for (const [p, e] of tree) {
        mkdirSync(path.dirname(path.join(GOLDEN, "tree", p)), { recursive: true });
        writeFileSync(path.join(GOLDEN, "tree", p), e.data);
      }
      writeFileSync(path.join(GOLDEN, "MODES"), modesManifest(tree));
    }
    expect(await walk(path.join(GOLDEN, "tree"))).toEqual([...tree.keys()]);
    for (const [p, e] of tree) expect({ p, text: e.data.toString("latin1") }).toEqual({ p, text: readFileSync(path.join(GOLDEN, "tree", p), "latin1") });
    expect(modesManifest(tree)).toBe(readFileSync(path.join(GOLDEN, "MODES"), "utf8"));
  });

  it("is byte-identical for equal recipes built independently", async () => {
    const a = await compileImage(fullApiShape().img, cache);
    const b = await compileImage(fullApiShape().img, cache);
    expect(treeDigest(b)).toBe(treeDigest(a));
  });

  it("carries the docs/design.md §2 reproducibility and first-boot settings", async () => {
    const conf = (await compileImage(new Image({ base: "debian/trixie", projectDir: cache }), cache)).get("mkosi.conf")!.data.toString();
    for (const line of ["SourceDateEpoch=0", "Locale=C.UTF-8", "Keymap=us", "Timezone=UTC", "ManifestFormat=json", "Bootloader=uki", "MinimumVersion=25"]) expect(conf).toContain(line);
    expect(conf).toMatch(/^Seed=[0-9a-f-]{36}$/m);
    expect(conf).toMatch(/RemoveFiles=.*\/var\/log\/alternatives\.log.*\/var\/cache\/ldconfig\/aux-cache/);
    expect(conf).toMatch(/^KernelCommandLine=console=ttyS0,115200n8 systemd.firstboot=no systemd.volatile=state$/m);
  });

  describe("root file system modes", () => {
    const emit = async (rootfs?: "verity" | "initrd" | "none") => compileImage(new Image({ base: "debian/trixie", projectDir: cache, ...(rootfs ? { rootfs } : {}) }).cmdline("x=1"), cache);
    const files = (t: MkosiTree) => [...t.keys()].filter((k) => k.startsWith("mkosi.repart/"));
    const conf = (t: MkosiTree) => t.get("mkosi.conf")!.data.toString();

    it("defaults to a verity root: erofs data + hash partitions matched by one key, /var volatile, no ext4 seed", async () => {
      const t = await emit();
      expect(t).toEqual(await emit("verity"));
      expect(files(t)).toEqual(["mkosi.repart/00-esp.conf", "mkosi.repart/10-root.conf", "mkosi.repart/11-root-verity.conf"]);
      expect(t.get("mkosi.repart/10-root.conf")!.data.toString()).toBe("[Partition]\nType=root\nFormat=erofs\nCopyFiles=/\nVerity=data\nVerityMatchKey=root\nMinimize=best\n");
      expect(t.get("mkosi.repart/11-root-verity.conf")!.data.toString()).toBe("[Partition]\nType=root-verity\nVerity=hash\nVerityMatchKey=root\nMinimize=best\n");
      expect(conf(t)).toMatch(/^Format=disk$/m);
      expect(conf(t)).toMatch(/^KernelCommandLine=console=ttyS0,115200n8 systemd.firstboot=no systemd.volatile=state x=1$/m);
      expect(conf(t)).not.toContain("SYSTEMD_REPART_MKFS_OPTIONS_EXT4");
      expect(JSON.parse(t.get("tdxvm.json")!.data.toString()).rootfs).toBe("verity");
    });

    it("none: today's writable ext4 root with the fixed ext4 hash seed, nothing volatile", async () => {
      const t = await emit("none");
      expect(files(t)).toEqual(["mkosi.repart/00-esp.conf", "mkosi.repart/10-root.conf"]);
      expect(t.get("mkosi.repart/10-root.conf")!.data.toString()).toContain("Format=ext4");
      expect(conf(t)).toMatch(/^Environment=SYSTEMD_REPART_MKFS_OPTIONS_EXT4="-E hash_seed=[0-9a-f-]{36},lazy_itable_init=1,nodiscard"$/m);
      expect(conf(t)).toMatch(/^KernelCommandLine=console=ttyS0,115200n8 systemd.firstboot=no x=1$/m);
    });

    it("initrd: Format=esp (the OS becomes the UKI's initrd, the disk only an ESP), no repart definitions", async () => {
      const t = await emit("initrd");
      expect(files(t)).toEqual([]);
      expect(conf(t)).toMatch(/^Format=esp$/m);
      expect(conf(t)).not.toContain("systemd.volatile");
    });

    it("each mode is its own recipe digest; the builder rejects unknown modes", async () => {
      const d = (m: "verity" | "initrd" | "none") => new Image({ base: "debian/trixie", projectDir: cache, rootfs: m }).digests().default;
      expect(new Set([d("verity"), d("initrd"), d("none")]).size).toBe(3);
      expect(new Image({ base: "debian/trixie", projectDir: cache }).rootFs("none").digests().default).toBe(d("none"));
      expect(() => new Image({ base: "debian/trixie", projectDir: cache }).rootFs("ext4" as "none")).toThrow(/unknown root file system mode/);
    });
  });

  it("writes the apt sources from the lock's mirror pin (snapshot when set)", async () => {
    const img = new Image({ base: "debian/trixie", projectDir: cache });
    const { lock } = await createLock(img.recipe, { projectDir: cache, cacheDir: cache, debian: { snapshot: "20261124T000000Z" } });
    const src = compile({ recipe: img.recipe, lock, source: () => Buffer.alloc(0) }).get("mkosi.sandbox/etc/apt/sources.list.d/mkosi.sources")!.data.toString();
    expect(src).toContain("URIs: https://snapshot.debian.org/archive/debian/20261124T000000Z\nSuites: trixie trixie-updates");
    expect(src).toContain("URIs: https://snapshot.debian.org/archive/debian-security/20261124T000000Z\nSuites: trixie-security");
    expect(src).not.toMatch(/^(URIs|Suites):.*debug/m);
  });

  it("refuses a lock made for another recipe", async () => {
    const a = new Image({ base: "debian/trixie", projectDir: cache });
    const { lock } = await createLock(a.recipe, { projectDir: cache, cacheDir: cache });
    const b = new Image({ base: "debian/trixie", projectDir: cache }).install("curl");
    expect(() => compile({ recipe: b.recipe, lock, source: () => Buffer.alloc(0) })).toThrow(expect.objectContaining({ code: "E_LOCKFILE" }));
  });

  it("writes files with their modes, replacing the previous tree atomically", async () => {
    const dir = path.join(cache, "out");
    const tree = await compileImage(fullApiShape().img, cache);
    await fs.mkdir(dir, { recursive: true });
    await fs.writeFile(path.join(dir, "stale-file"), "x");
    await writeTree(tree, dir);
    expect(existsSync(path.join(dir, "stale-file"))).toBe(false);
    for (const [p, e] of tree) expect({ p, mode: (await fs.stat(path.join(dir, p))).mode & 0o7777 }).toEqual({ p, mode: e.mode });
    expect((await fs.readdir(cache)).filter((n) => n.includes(".tmp"))).toEqual([]);
  });

  describe("run() arguments arrive literally through the emitted scripts", () => {
    let bin: string;
    let record: string;
    beforeAll(async () => {
      bin = path.join(cache, "bin");
      record = path.join(cache, "argv.bin");
      await fs.mkdir(bin, { recursive: true });
      // Stand-ins for the build-time environment: mkosi-chroot runs its argv (in the real build,
      // inside the image); `rec` writes each argv word NUL-terminated.
      await fs.writeFile(path.join(bin, "mkosi-chroot"), '#!/bin/sh\nexec "$@"\n', { mode: 0o755 });
      await fs.writeFile(path.join(bin, "rec"), `#!/bin/sh\n: > "$REC"\nfor a in "$@"; do printf '%s\\0' "$a" >> "$REC"; done\n`, { mode: 0o755 });
    });

    async function argvThrough(phase: "postinst" | "postoutput" | "prepare", args: string[]): Promise<string[]> {
      const img = new Image({ base: "debian/trixie", projectDir: cache }).run("rec", ...args, { phase });
      const tree = await compileImage(img, cache);
      const file = path.join(cache, `script-${phase}`);
      await fs.writeFile(file, tree.get(`mkosi.${phase}`)!.data, { mode: 0o755 });
      execFileSync("/bin/sh", [file, "final"], { env: { PATH: `${bin}:/usr/bin:/bin`, REC: record, BUILDROOT: "/nonexistent" } });
      const raw = readFileSync(record, "utf8");
      return raw === "" ? [] : raw.slice(0, -1).split("\0");
    }

    it("for hostile shell metacharacters", async () => {
      const hostile = ["$(touch /tmp/tdxvm-pwned)", "`id`", "a'b", "'", "\"", "\\", "; rm -rf /", "&& echo", "| cat", "$HOME", "${PATH}", "*", "?", "[a]", "~", "a\nb", " lead", "trail ", "", "#c", "!x", "%s\n"];
      expect(await argvThrough("postinst", hostile)).toEqual(hostile);
      expect(await argvThrough("postoutput", hostile)).toEqual(hostile);
      expect(existsSync("/tmp/tdxvm-pwned")).toBe(false);
    });

    it("for arbitrary strings (property)", async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(fc.string({ unit: "binary", maxLength: 30 }).filter((s) => !s.includes("\0")), { maxLength: 5 }), async (args) => {
          expect(await argvThrough("prepare", args)).toEqual(args);
        }),
        { numRuns: 40 },
      );
    });
  });
});

describe("recipe values in mkosi.conf, read back with mkosi's own parser", () => {
  // mkosi 25's reader (mkosi/config.py in the tools tree): parse_ini, specifier expansion and
  // each setting's own list parser, exactly as `mkosi build` applies them to tdxvm's files.
  const READER = [
    "import json, sys",
    "from pathlib import Path",
    "from mkosi.config import parse_ini, ParseContext, SETTINGS_LOOKUP_BY_NAME",
    "out = []",
    "for f in sys.argv[1:]:",
    "    ctx = ParseContext()",
    "    got = []",
    "    for section, k, v in parse_ini(Path(f)):",
    "        if not k:",
    "            continue",
    "        v = ctx.expand_specifiers(v, Path(f))",
    "        if k in ('KernelCommandLine', 'RemoveFiles', 'Packages'):",
    "            v = SETTINGS_LOOKUP_BY_NAME[k].parse(v, None)",
    "        got.append([section, k, v])",
    "    out.append(got)",
    "print('TDXVM-PARSED ' + json.dumps(out))",
  ].join("\n");
  let cache: string;
  beforeAll(async () => { cache = await tempDir(); });
  afterAll(() => fs.rm(cache, { recursive: true, force: true }));

  async function mkosiRead(confs: string[]): Promise<Array<Array<[string, string, unknown]>>> {
    const { runStreaming, sandboxArgv } = await import("../../provider/bake/sandbox");
    const { toolsTreeDir } = await import("../../provider/bake/toolsTree");
    const { defaultCacheDir } = await import("../../provider/pipeline");
    const tools = toolsTreeDir(defaultCacheDir());
    expect(existsSync(path.join(tools, "usr/lib/python3/dist-packages/mkosi/config.py"))).toBe(true);
    const dir = await tempDir();
    try {
      confs.forEach((c, i) => writeFileSync(path.join(dir, `${i}.conf`), c));
      let parsed: string | undefined;
      const r = await runStreaming(sandboxArgv(tools, ["python3", "-c", READER, ...confs.map((_, i) => `/work/conf/${i}.conf`)], [{ host: dir, inside: "/work/conf", readOnly: true }]), {
        onLine: (l) => { if (l.startsWith("TDXVM-PARSED ")) parsed = l.slice("TDXVM-PARSED ".length); },
      });
      if (r.code !== 0 || !parsed) throw new Error(`mkosi's reader failed (${r.code}): ${r.tail.join("\n")}`);
      return JSON.parse(parsed);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  }

  it("refuses values mkosi's reader would split, cut or re-read (E_VALIDATION naming the field)", () => {
    for (const w of ["a\x1cDistribution=fedora", "a\x85b", "a\u2028b", "a\x0bb", "x#y", "a\x1eb"]) {
      const e = (() => { try { new Image({ base: "debian/trixie" }).cmdline(w); } catch (x) { return x as { code?: string; message: string }; } })();
      expect({ w, code: e?.code, field: /cmdline/.test(e?.message ?? "") }).toEqual({ w, code: "E_VALIDATION", field: true });
    }
    for (const p of ["/usr/share/a,/etc", "/usr/share/a b", "/x#y", "/a\x1cb", "/a\u2029b"]) {
      const e = (() => { try { new Image({ base: "debian/trixie" }).debloat({ enabled: true, pathsRemoveExtra: [p] }); } catch (x) { return x as { code?: string; message: string }; } })();
      expect({ p, code: e?.code, field: /pathsRemoveExtra/.test(e?.message ?? "") }).toEqual({ p, code: "E_VALIDATION", field: true });
    }
  });

  it("property: whatever hostile values a recipe carries, mkosi parses exactly the recipe's settings (fixed seed)", async () => {
    const { BASE_CMDLINE, ROOTFS_CMDLINE, BASE_PACKAGES } = await import("../../provider/compile");
    const { debloatRemovePaths } = await import("../../provider/compile/debloat");
    // Characters mkosi's reader acts on (line breaks of str.splitlines(), str.strip() whitespace,
    // comments, specifiers, list delimiters), mixed into otherwise ordinary values.
    const hostile = ["#", ",", " ", "\t", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\u00a0", "\u3000"];
    const harmless = ["a", "b", "=", "%", "%%", "%d", "%C", "[", "]", "/", "\\", "|", "!", "é", "-", "."];
    const char = fc.oneof({ arbitrary: fc.constantFrom(...harmless), weight: 12 }, { arbitrary: fc.constantFrom(...hostile), weight: 1 });
    const word = fc.array(char, { minLength: 1, maxLength: 6 }).map((a) => a.join(""));
    const cases = fc.sample(fc.record({ words: fc.array(word, { maxLength: 3 }), paths: fc.array(word.map((w) => `/opt/${w}`), { maxLength: 2 }) }), { numRuns: 80, seed: 20261128 });
    const emitted: Array<{ conf: string; words: string[]; remove: string[]; packages: string[] }> = [];
    let refused = 0;
    for (const c of cases) {
      let img: Image;
      try {
        img = new Image({ base: "debian/trixie" }).cmdline(...c.words).debloat({ enabled: true, pathsRemoveExtra: c.paths });
      } catch (e) {
        expect((e as { code?: string }).code).toBe("E_VALIDATION");
        refused++;
        continue;
      }
      const tree = await compileImage(img, cache);
      emitted.push({
        conf: tree.get("mkosi.conf")!.data.toString("utf8"),
        words: [...BASE_CMDLINE, ...ROOTFS_CMDLINE[img.recipe.rootfs], ...c.words],
        remove: (await import("../../provider/compile")).NONDETERMINISTIC_FILES.concat(debloatRemovePaths(img.recipe.debloat)),
        packages: [...new Set([...BASE_PACKAGES, ...img.recipe.base_layer.packages])].sort(),
      });
    }
    // Some values are refused, many pass (e.g. % and = and brackets, which are escaped or harmless).
    expect(refused).toBeGreaterThan(0);
    expect(emitted.length).toBeGreaterThan(10);
    const parsed = await mkosiRead(emitted.map((e) => e.conf));
    parsed.forEach((settings, i) => {
      const e = emitted[i]!;
      const get = (k: string) => settings.filter(([, key]) => key === k).map(([, , v]) => v);
      expect(settings.map(([s, k]) => `${s}.${k}`)).toEqual([
        "Config.MinimumVersion", "Distribution.Distribution", "Distribution.Release", "Distribution.Architecture",
        "Output.Format", "Output.ImageId", "Output.Output", "Output.ManifestFormat", "Output.SplitArtifacts", "Output.Seed",
        "Content.Bootable", "Content.Bootloader", "Content.Packages", "Content.KernelCommandLine", "Content.Hostname", "Content.Locale", "Content.Keymap", "Content.Timezone", "Content.SourceDateEpoch", "Content.RemoveFiles",
      ]);
      expect(get("KernelCommandLine")).toEqual([e.words]);
      expect(get("RemoveFiles")).toEqual([e.remove]);
      expect(get("Packages")).toEqual([e.packages]);
    });
  }, 300_000);
});
