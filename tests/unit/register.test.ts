/**
 * provider/register.js: tdxvm's TypeScript is compiled once and then loaded from <cache>/js, so
 * a fresh process that finds everything cached never loads @swc/core; a changed source is
 * compiled again (never a stale entry), and an unusable cache only costs the compile.
 * Each case is a fresh `node` with its own TDXVM_CACHE_DIR.
 */
import { execFileSync } from "node:child_process";
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { tempDir } from "../helpers";

const REGISTER = path.resolve(__dirname, "../../provider/register.js");

/** Load `file` in a fresh node with tdxvm's hook widened to it; its export and whether swc was loaded. */
function load(file: string, cacheDir: string): { value: unknown; swcLoaded: boolean } {
  const script = `
    require(${JSON.stringify(REGISTER)})({ also: (f) => f === ${JSON.stringify(file)} });
    const value = require(${JSON.stringify(file)}).value;
    const swcLoaded = Object.keys(require.cache).some((k) => k.includes("/@swc/core/"));
    console.log(JSON.stringify({ value, swcLoaded }));`;
  return JSON.parse(execFileSync(process.execPath, ["-e", script], { env: { ...process.env, TDXVM_CACHE_DIR: cacheDir }, encoding: "utf8" }));
}

/** A module exporting "real", compiled once into a fresh cache: the paths, and its cache entry `p`. */
async function compiledOnce() {
  const dir = await tempDir("tdxvm-register-");
  const cache = path.join(dir, "cache");
  const file = path.join(dir, "mod.ts");
  await fs.writeFile(file, "export const value: string = \"real\";\n");
  load(file, cache);
  const [entry] = await fs.readdir(path.join(cache, "js"));
  return { dir, cache, file, p: path.join(cache, "js", entry!) };
}

describe("compiled TypeScript cache (register.js)", () => {
  it("compiles once, then loads without @swc/core; a changed source is compiled again", async () => {
    const dir = await tempDir("tdxvm-register-");
    const cache = path.join(dir, "cache");
    const file = path.join(dir, "mod.ts");
    await fs.writeFile(file, "const n: number = 41;\nexport const value = n + 1;\n");

    expect(load(file, cache)).toEqual({ value: 42, swcLoaded: true });
    const entries = await fs.readdir(path.join(cache, "js"));
    expect(entries).toHaveLength(1);
    expect((await fs.stat(path.join(cache, "js"))).mode & 0o777).toBe(0o700);

    expect(load(file, cache)).toEqual({ value: 42, swcLoaded: false });

    await fs.writeFile(file, "const n: number = 6;\nexport const value = n * 7 + 1;\n");
    expect(load(file, cache)).toEqual({ value: 43, swcLoaded: true });
    expect(await fs.readdir(path.join(cache, "js"))).toEqual(entries); // replaced, not added
    expect(load(file, cache)).toEqual({ value: 43, swcLoaded: false });
  });

  it("an entry whose stamp does not match the source is not run", async () => {
    const { cache, file, p } = await compiledOnce();
    const text = await fs.readFile(p, "utf8");
    await fs.writeFile(p, text.replace(/^\/\/ tdxvm [0-9a-f]{64}/, `// tdxvm ${"0".repeat(64)}`).replace("\"real\"", "\"planted\""));
    expect(load(file, cache)).toEqual({ value: "real", swcLoaded: true });
  });

  it("an entry (or its directory) that someone else could have written is not run", async () => {
    const { dir, cache, file, p } = await compiledOnce();
    // A planted entry with the right stamp: run only if it is trusted.
    await fs.writeFile(p, (await fs.readFile(p, "utf8")).replace("\"real\"", "\"planted\""));
    expect(load(file, cache).value).toBe("planted"); // ours, 0600: trusted (the stamp is all that is checked)
    const planted = await fs.readFile(p, "utf8");
    await fs.chmod(p, 0o666);
    expect(load(file, cache)).toEqual({ value: "real", swcLoaded: true }); // world-writable: ignored (and replaced)
    await fs.writeFile(p, planted, { mode: 0o600 });
    await fs.chmod(p, 0o600);
    await fs.chown(p, 65534, 65534);
    expect(load(file, cache)).toEqual({ value: "real", swcLoaded: true }); // another owner: ignored
    await fs.writeFile(path.join(dir, "planted.js"), planted);
    await fs.rm(p, { force: true });
    await fs.symlink(path.join(dir, "planted.js"), p);
    expect(load(file, cache)).toEqual({ value: "real", swcLoaded: true }); // a link: ignored
    await fs.chmod(path.join(cache, "js"), 0o777);
    expect(load(file, cache)).toEqual({ value: "real", swcLoaded: true }); // a world-writable directory: nothing read
  });

  it("writes only where it would read: nothing into a directory others may write", async () => {
    const { cache, file, p } = await compiledOnce();
    const js = path.join(cache, "js");
    await fs.rm(p);
    await fs.chmod(js, 0o777);
    expect(load(file, cache)).toEqual({ value: "real", swcLoaded: true });
    expect(await fs.readdir(js)).toEqual([]); // it would never be read back: no entry, no temp file
    await fs.chmod(js, 0o700);
    expect(load(file, cache)).toEqual({ value: "real", swcLoaded: true });
    expect(await fs.readdir(js)).toEqual([path.basename(p)]);
  });

  it("works (compiling every time) when the cache cannot be written", async () => {
    const dir = await tempDir("tdxvm-register-");
    const notADir = path.join(dir, "file");
    await fs.writeFile(notADir, "");
    const file = path.join(dir, "mod.ts");
    await fs.writeFile(file, "export const value: number[] = [1, 2];\n");
    expect(load(file, path.join(notADir, "cache"))).toEqual({ value: [1, 2], swcLoaded: true });
    expect(load(file, path.join(notADir, "cache"))).toEqual({ value: [1, 2], swcLoaded: true });
  });
});

describe("package entries", () => {
  const repo = path.resolve(__dirname, "../..");
  const inFreshNode = (body: string) =>
    JSON.parse(execFileSync(process.execPath, ["-e", `const req = require("module").createRequire(${JSON.stringify(path.join(repo, "package.json"))});\n(async () => { ${body} })().catch((e) => { console.error(e); process.exit(1); });`], { cwd: repo, encoding: "utf8" }));
  const loaded = `Object.keys(require.cache).map((k) => k.slice(${JSON.stringify(repo.length + 1)}))`;

  it("tdxvm/measure measures a UKI file without loading the recipe, lock, fetch or deploy code (or zod)", async () => {
    const { buildPe } = await import("./measure/pe-builder");
    const dir = await tempDir("tdxvm-entry-");
    const kernel = buildPe({ plus: true, sections: [{ name: ".text", data: Buffer.alloc(4096, 1) }] });
    const uki = path.join(dir, "uki.efi");
    await fs.writeFile(uki, buildPe({ plus: true, sections: [{ name: ".linux", data: kernel }, { name: ".cmdline", data: Buffer.from("console=ttyS0") }, { name: ".initrd", data: Buffer.alloc(100, 7) }] }));
    const r = inFreshNode(`
      const m = req("tdxvm/measure");
      const before = ${loaded};
      const result = await m.measureBoot({ ukiPath: ${JSON.stringify(uki)} }, { backend: "azure" });
      console.log(JSON.stringify({ before, after: ${loaded}, pcr4: result.registers.PCR4.value, exports: ["measureBake", "measureBoot", "verify", "bootEvents", "authenticodeDigest"].map((k) => typeof m[k]) }));`);
    expect(r.exports).toEqual(["function", "function", "function", "function", "function"]);
    expect(r.pcr4).toMatch(/^[0-9a-f]{64}$/);
    for (const files of [r.before, r.after] as string[][]) {
      expect(files.filter((f) => f.includes("node_modules/zod/") || /^provider\/(recipe\/(image|schema)|lock\/(index|schema|policy)|fetch|deploy)\b/.test(f))).toEqual([]);
    }
  });

  it("tdxvm/dynamic still loads the providers (what the serialized shim requires in Pulumi's host)", () => {
    const r = inFreshNode(`const d = req("tdxvm/dynamic"); console.log(JSON.stringify(Object.keys(d.providers).sort()));`);
    expect(r).toEqual(expect.arrayContaining(["image", "measurement"]));
  });
});
