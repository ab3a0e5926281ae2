/**
 * Malformed input in, only TdxError out: generated recipes, lockfiles and secret payloads
 * (well over 1,000 cases in all) must never produce a TypeError, RangeError or crash. And what
 * passes means what it should: a changed lock is always refused as E_LOCKFILE, a ready payload is
 * materialised as exactly the declared files, modes and bytes below the root.
 */
import { promises as fsp } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import fc from "fast-check";
import { Image, Init, SecretSchema, SecretTarget, TdxError, parseLock, parseRecipe, stableJson } from "../../provider";
import { SecretsDelivery, declareSecret } from "../../provider/secrets";
import { sealLock } from "../../provider/lock";
import { fullApiShape } from "../fixtures/full-api-shape";
import { tempDir, walk } from "../helpers";
const fs = fsp;

const counts = { recipes: 0, locks: 0, payloads: 0 };

function onlyTdxErrors(fn: () => unknown): void {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof TdxError)) throw new Error(`non-TdxError escaped: ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`, { cause: e });
  }
}

/** Replace the value at a random path of `obj` (deep copy) with `value`. */
function mutate(obj: unknown, pathSeed: number[], value: unknown): unknown {
  const copy = structuredClone(obj);
  let node: unknown = copy;
  for (let i = 0; i < pathSeed.length; i++) {
    if (node === null || typeof node !== "object") break;
    const keys = Object.keys(node as object);
    if (!keys.length) break;
    const k = keys[pathSeed[i] % keys.length];
    const child = (node as Record<string, unknown>)[k];
    if (i === pathSeed.length - 1 || child === null || typeof child !== "object") {
      (node as Record<string, unknown>)[k] = value;
      break;
    }
    node = child;
  }
  return copy;
}

const validRecipe = fullApiShape().img.recipe;
const weird = fc.oneof(
  fc.anything(),
  fc.constantFrom("", "../x", "/a/../b", "\0", "-1", "NaN", "__proto__", "constructor", "a".repeat(70000)),
  fc.constantFrom(-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 60, 0o10000),
  fc.constant(null),
);

describe("fuzz: only TdxError comes out", () => {
  afterAll(() => {
    // Printed so the count is visible in CI logs.
    console.log(`fuzz cases: recipes ${counts.recipes}, lockfiles ${counts.locks}, secret payloads ${counts.payloads}`);
    expect(counts.recipes + counts.locks + counts.payloads).toBeGreaterThanOrEqual(1000);
  });

  it("recipes: arbitrary values and mutations of a valid recipe", () => {
    fc.assert(fc.property(fc.anything(), (v) => { counts.recipes++; onlyTdxErrors(() => parseRecipe(v)); }), { numRuns: 300 });
    fc.assert(
      fc.property(fc.array(fc.nat(), { minLength: 1, maxLength: 6 }), weird, (p, v) => {
        counts.recipes++;
        onlyTdxErrors(() => Image.fromRecipe(mutate(validRecipe, p, v), "/tmp").digests());
      }),
      { numRuns: 600 },
    );
  });

  it("builder calls with hostile arguments", () => {
    fc.assert(
      fc.property(fc.anything(), fc.anything(), (a, b) => {
        counts.recipes++;
        const img = new Image({ base: "debian/trixie", projectDir: "/tmp" });
        onlyTdxErrors(() => img.file(a as string, b as object));
        onlyTdxErrors(() => img.install(a as string));
        onlyTdxErrors(() => img.run(a as string, b as string));
        onlyTdxErrors(() => img.secret(a as string, b as never));
        onlyTdxErrors(() => img.debloat(b as object));
        onlyTdxErrors(() => img.profile(a as string, () => img.install(b as string)));
      }),
      { numRuns: 300 },
    );
  });

  it("lockfiles: arbitrary text, arbitrary JSON, mutations of a valid sealed lock", () => {
    const valid = sealLock({
      lockVersion: 1, generator: "tdxvm 0.1", recipe: { profiles: fullApiShape().img.digests() },
      debian: { release: "trixie", mirror: "http://deb.debian.org/debian", securityMirror: "http://deb.debian.org/debian-security", snapshotMirror: "https://snapshot.debian.org", snapshot: null },
      tools: { toolsTreeRelease: "trixie", mkosi: null, systemdStub: null }, inputs: [],
    });
    expect(parseLock(stableJson(valid))).toEqual(valid);
    fc.assert(fc.property(fc.string(), (t) => { counts.locks++; onlyTdxErrors(() => parseLock(t)); }), { numRuns: 200 });
    fc.assert(fc.property(fc.jsonValue(), (v) => { counts.locks++; onlyTdxErrors(() => parseLock(JSON.stringify(v))); }), { numRuns: 200 });
    // A mutation that changes the lock's content is always refused; one that changes nothing is the same lock.
    const same = stableJson(valid);
    let refused = 0;
    fc.assert(
      fc.property(fc.array(fc.nat(), { minLength: 1, maxLength: 4 }), fc.oneof(weird, fc.string(), fc.nat(), fc.boolean()), (p, v) => {
        counts.locks++;
        let text: string;
        try { text = JSON.stringify(mutate(valid, p, v)) ?? "null"; } catch { text = "{"; }
        if (stableJson(JSON.parse(text)) === same) {
          expect(parseLock(text)).toEqual(valid);
          return;
        }
        let code: string | undefined;
        try {
          parseLock(text);
        } catch (e) {
          if (!(e instanceof TdxError)) throw e;
          code = e.code;
        }
        expect({ text, code }).toEqual({ text, code: "E_LOCKFILE" });
        refused++;
      }),
      { numRuns: 400 },
    );
    expect(refused).toBeGreaterThan(300);
  });

  it("secret payloads: validatePayload never throws; materializeRuntime only TdxError", async () => {
    const init = new Init({
      secrets: {
        A: { schema: SecretSchema.string({ minLength: 2, maxLength: 10, pattern: "^[a-z]+$" }), targets: [SecretTarget.env("A")] },
        B: { required: false, schema: SecretSchema.bytes({ maxLength: 4 }), targets: [SecretTarget.file("/run/b")] },
        C: { schema: SecretSchema.json(), targets: [SecretTarget.env("C", { scope: "unit", unit: "x.service" })] },
      },
    });
    const d = init.secretsDelivery("http_post", { completion: "all" });
    fc.assert(
      fc.property(fc.oneof(fc.anything(), fc.dictionary(fc.constantFrom("A", "B", "C", "D", "__proto__"), fc.anything())), (payload) => {
        counts.payloads++;
        const r = d.validatePayload(payload);
        expect(typeof r.ready).toBe("boolean");
      }),
      { numRuns: 400 },
    );
    await fc.assert(
      fc.asyncProperty(fc.anything(), async (payload) => {
        counts.payloads++;
        try {
          await d.materializeRuntime("/nonexistent-tdxvm-root", payload);
        } catch (e) {
          if (!(e instanceof TdxError)) throw e;
        }
      }),
      { numRuns: 100 },
    );
  });

  it("ready secret payloads: materialised as exactly the declared files, modes and bytes, below the root (property)", async () => {
    const root = await tempDir("tdxvm-fuzz-secrets-");
    const d = new Init({
      secrets: {
        A: { schema: SecretSchema.string({ minLength: 1, maxLength: 64 }), targets: [SecretTarget.file("/run/app/a", { mode: 0o640 })] },
        B: { required: false, schema: SecretSchema.bytes({ maxLength: 64 }), targets: [SecretTarget.file("/run/app/keys/b.bin", { mode: 0o400 })] },
        C: { schema: SecretSchema.json(), targets: [SecretTarget.file("/etc/app/c.json", { mode: 0o444 })] },
      },
    }).secretsDelivery("http_post");
    const text = fc.string({ minLength: 1, maxLength: 64, unit: "grapheme" }).filter((x) => d.validatePayload({ A: x, C: 1 }).ready);
    let n = 0;
    await fc.assert(
      fc.asyncProperty(text, fc.option(fc.uint8Array({ maxLength: 64 })), fc.jsonValue({ maxDepth: 2 }), async (a, b, c) => {
        counts.payloads++;
        const dir = path.join(root, String(n++));
        await fsp.mkdir(dir);
        const payload: Record<string, unknown> = { A: a, C: c };
        if (b) payload.B = Buffer.from(b).toString("base64");
        const res = await d.materializeRuntime(dir, payload);
        const want: Record<string, [number, Buffer]> = { "run/app/a": [0o640, Buffer.from(a, "utf8")], "etc/app/c.json": [0o444, Buffer.from(JSON.stringify(c), "utf8")] };
        if (b) want["run/app/keys/b.bin"] = [0o400, Buffer.from(b)];
        expect((await walk(dir)).sort()).toEqual(Object.keys(want).sort());
        expect(res.files.map((f) => path.relative(dir, f)).sort()).toEqual(Object.keys(want).sort());
        for (const [f, [mode, bytes]] of Object.entries(want)) {
          const st = await fsp.lstat(path.join(dir, f));
          expect({ f, file: st.isFile(), mode: st.mode & 0o7777, bytes: (await fsp.readFile(path.join(dir, f))).equals(bytes) }).toEqual({ f, file: true, mode, bytes: true });
        }
      }),
      { numRuns: 60 },
    );
    await fsp.rm(root, { recursive: true, force: true });
  });

  it("materialised secrets: every file lands inside the root with its declared mode, or nothing is written", async () => {
    const base = await fs.mkdtemp(path.join(os.tmpdir(), "tdxvm-fuzz-secrets-"));
    const seg = fc.constantFrom("run", "app", "etc", "x", "..", ".", "tdxvm");
    const target = fc.record({ segs: fc.array(seg, { minLength: 1, maxLength: 4 }), mode: fc.constantFrom(0o400, 0o440, 0o600, 0o640, 0o444) });
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(target, { minLength: 1, maxLength: 4 }), fc.array(fc.array(seg, { minLength: 1, maxLength: 3 }), { maxLength: 2 }), fc.array(fc.string({ minLength: 1, maxLength: 8 }), { minLength: 4, maxLength: 4 }), async (targets, links, values) => {
          counts.payloads++;
          await fs.rm(base, { recursive: true, force: true });
          const root = path.join(base, "root");
          const outside = path.join(base, "outside");
          await fs.mkdir(root, { recursive: true });
          await fs.mkdir(outside, { recursive: true });
          // Hostile image trees: directories on the way replaced by links out of the root.
          for (const l of links) {
            const at = path.join(root, ...l);
            if (!at.startsWith(root + "/")) continue;
            await fs.mkdir(path.dirname(at), { recursive: true }).catch(() => undefined);
            await fs.symlink(outside, at).catch(() => undefined);
          }
          let decls;
          try {
            decls = targets.map((t, i) => declareSecret(`S${i}`, { targets: [SecretTarget.file("/" + t.segs.join("/"), { mode: t.mode })] }));
            new SecretsDelivery(decls, {}).validatePayload({}); // the declarations themselves are accepted
          } catch (e) {
            if (!(e instanceof TdxError)) throw e;
            return;
          }
          const payload = Object.fromEntries(decls.map((d, i) => [d.name, values[i]]));
          const before = await walk(outside);
          let written = true;
          try {
            await new SecretsDelivery(decls, {}).materializeRuntime(root, payload);
          } catch (e) {
            if (!(e instanceof TdxError)) throw e;
            written = false;
          }
          expect(await walk(outside)).toEqual(before);
          if (!written) return;
          for (const [i, d] of decls.entries()) {
            const t = d.targets[0]!;
            if (t.kind !== "file") throw new Error("unreachable");
            const p = path.join(root, t.path);
            const real = await fs.realpath(p);
            expect(real.startsWith((await fs.realpath(root)) + "/")).toBe(true);
            expect((await fs.lstat(p)).mode & 0o7777).toBe(t.mode);
            expect(await fs.readFile(p, "utf8")).toBe(values[i]);
          }
        }),
        { numRuns: 150, seed: 1010 },
      );
    } finally {
      await fs.rm(base, { recursive: true, force: true });
    }
  });
});
