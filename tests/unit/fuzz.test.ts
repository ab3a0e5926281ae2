/**
 * Malformed input in, only TdxError out: generated recipes, lockfiles and secret payloads
 * (well over 1,000 cases in all) must never produce a TypeError, RangeError or crash.
 */
import fc from "fast-check";
import { promises as fs } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Image, Init, SecretSchema, SecretTarget, TdxError, parseLock, parseRecipe, stableJson } from "../../provider";
import { SecretsDelivery, declareSecret } from "../../provider/secrets";
import { walk } from "../helpers";
import { sealLock } from "../../provider/lock";
import { fullApiShape } from "../fixtures/full-api-shape";

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
    fc.assert(
      fc.property(fc.array(fc.nat(), { minLength: 1, maxLength: 4 }), weird, (p, v) => {
        counts.locks++;
        let text: string;
        try { text = JSON.stringify(mutate(valid, p, v)) ?? "null"; } catch { text = "{"; }
        onlyTdxErrors(() => parseLock(text));
      }),
      { numRuns: 300 },
    );
    // A tampered lock is always rejected: any change of a sealed lock's content fails with E_LOCKFILE.
    let tampered = 0;
    fc.assert(
      fc.property(fc.array(fc.nat(), { minLength: 1, maxLength: 4 }), fc.oneof(weird, fc.string(), fc.integer()), (p, v) => {
        const changed = mutate(valid, p, v);
        let text: string;
        try { text = stableJson(changed); } catch { return; }
        if (text === stableJson(valid)) return;
        tampered++;
        let code: string | undefined;
        try { parseLock(text); } catch (e) { code = e instanceof TdxError ? e.code : String(e); }
        expect(code).toBe("E_LOCKFILE");
      }),
      { numRuns: 300, seed: 909 },
    );
    expect(tampered).toBeGreaterThan(200);
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
