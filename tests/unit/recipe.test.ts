import fc from "fast-check";
import { Image, Policy, TdxError, parseRecipe } from "../../provider";
import { canonicalCbor, digestOf } from "../../provider/recipe/digest";
import { resolveProfile } from "../../provider/recipe/resolve";

const base = () => new Image({ base: "debian/trixie", projectDir: "/tmp" });

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    if (e instanceof TdxError) return e.code;
    throw e;
  }
  return undefined;
}

describe("canonical CBOR", () => {
  it("encodes maps with keys sorted by length then bytes, minimal heads (RFC 8949 §4.2.1)", () => {
    // Hand-encoded: a5 (map 5) "a":[1,"x",true] "b":1 "n":-500 "aa":{} "big":70000
    expect(canonicalCbor({ b: 1, a: [1, "x", true], aa: {}, n: -500, big: 70000 }).toString("hex")).toBe(
      "a5" + "6161" + "83" + "01" + "6178" + "f5" + "6162" + "01" + "616e" + "3901f3" + "626161" + "a0" + "63626967" + "1a00011170",
    );
  });
  it("does not depend on object key insertion order", () => {
    expect(digestOf({ x: 1, y: { p: 1, q: 2 } })).toBe(digestOf({ y: { q: 2, p: 1 }, x: 1 }));
  });
  it("rejects values without one encoding", () => {
    expect(codeOf(() => digestOf({ a: 1.5 }))).toBe("E_VALIDATION");
    expect(codeOf(() => digestOf({ a: () => 1 }))).toBe("E_VALIDATION");
  });
});

describe("recipe digest", () => {
  const pkgs = fc.uniqueArray(fc.stringMatching(/^[a-z][a-z0-9-]{1,12}$/), { minLength: 2, maxLength: 30 });

  it("is independent of package order (property)", () => {
    fc.assert(
      fc.property(pkgs, fc.integer(), (list, seed) => {
        const shuffled = [...list].sort((a, b) => ((a.charCodeAt(0) * 31 + seed) % 7) - ((b.charCodeAt(0) * 31 + seed) % 7) || (a < b ? 1 : -1));
        const a = base().install(...list).digests();
        const b = base().install(...shuffled).digests();
        const c = base().install(...[...list].reverse()).digests();
        expect(b).toEqual(a);
        expect(c).toEqual(a);
      }),
      { numRuns: 200 },
    );
  });

  it("is independent of the order files are declared in", () => {
    const a = base().file("/etc/a", { content: "1" }).file("/etc/b", { content: "2" }).digests();
    const b = base().file("/etc/b", { content: "2" }).file("/etc/a", { content: "1" }).digests();
    expect(b).toEqual(a);
  });

  it("changes when any run step changes: command, an argument, argument order, phase, or step order", () => {
    const mk = (steps: Array<[string, string[], string]>) => {
      const img = base();
      for (const [cmd, args, phase] of steps) img.run(cmd, ...args, { phase: phase as "postinst" });
      return img.digests().default;
    };
    const ref: Array<[string, string[], string]> = [["useradd", ["-m", "app"], "postinst"], ["systemctl", ["enable", "app.service"], "postinst"]];
    const variants: Array<Array<[string, string[], string]>> = [
      [["useradd", ["-m", "app2"], "postinst"], ref[1]],
      [["useradd", ["app", "-m"], "postinst"], ref[1]],
      [["adduser", ["-m", "app"], "postinst"], ref[1]],
      [["useradd", ["-m", "app"], "finalize"], ref[1]],
      [ref[1], ref[0]],
      [ref[0]],
      [...ref, ["true", [], "postinst"]],
    ];
    const digests = new Set([mk(ref), ...variants.map(mk)]);
    expect(digests.size).toBe(variants.length + 1);
  });

  it("changes with each run-step argument (property)", () => {
    fc.assert(
      fc.property(fc.array(fc.string({ minLength: 0, maxLength: 20 }).filter((s) => !s.includes("\0")), { minLength: 1, maxLength: 6 }), fc.nat(), (args, i) => {
        const k = i % args.length;
        const changed = [...args];
        changed[k] = changed[k] + "x";
        expect(base().run("echo", ...changed).digests()).not.toEqual(base().run("echo", ...args).digests());
      }),
      { numRuns: 200 },
    );
  });

  it("ignores policy (it governs how to build, not what)", () => {
    expect(base().setPolicy(new Policy({ requireFrozenLock: true })).digests()).toEqual(base().digests());
  });
});

describe("Image builder", () => {
  it("rejects file paths that escape or alias the root", () => {
    for (const p of ["etc/passwd", "../etc/x", "/etc/../x", "/etc/./x", "/etc//x", "/etc/x\0y", "/", "/etc/dir/", "/a/..", ""]) {
      expect({ p, code: codeOf(() => base().file(p, { content: "x" })) }).toEqual({ p, code: "E_VALIDATION" });
    }
  });

  it("needs exactly one of content or src, and integrity only with src", () => {
    expect(codeOf(() => base().file("/etc/x", {}))).toBe("E_VALIDATION");
    expect(codeOf(() => base().file("/etc/x", { content: "a", src: "b" }))).toBe("E_VALIDATION");
    expect(codeOf(() => base().file("/etc/x", { content: "a", integrity: "sha256-AAAA" }))).toBe("E_VALIDATION");
  });

  it("validates modes, owners, packages, phases, targets", () => {
    expect(codeOf(() => base().file("/etc/x", { content: "a", mode: 0o10000 }))).toBe("E_VALIDATION");
    expect(codeOf(() => base().file("/etc/x", { content: "a", owner: "bad owner" }))).toBe("E_VALIDATION");
    expect(codeOf(() => base().install("Bad_Name"))).toBe("E_VALIDATION");
    expect(codeOf(() => base().install("curl; rm -rf /"))).toBe("E_VALIDATION");
    expect(codeOf(() => base().run("x", { phase: "boot" as "build" }))).toBe("E_VALIDATION");
    expect(codeOf(() => base().run("x", "a\0b"))).toBe("E_VALIDATION");
    expect(codeOf(() => base().outputTargets("aws" as "gcp"))).toBe("E_VALIDATION");
    expect(codeOf(() => new Image({ base: "ubuntu/noble" as "debian/trixie" }))).toBe("E_VALIDATION");
  });

  it("scopes profile calls to the profile and merges them over the base", () => {
    const img = base()
      .install("curl")
      .file("/etc/motd", { content: "base\n" })
      .run("echo", "base")
      .profile("dev", (p) => {
        p.install("strace");
        p.file("/etc/motd", { content: "dev\n" });
        p.run("echo", "dev");
      });
    expect(img.allProfiles()).toEqual(["default", "dev"]);
    const def = resolveProfile(img.recipe, "default");
    const dev = resolveProfile(img.recipe, "dev");
    expect(def.packages).toEqual(["curl"]);
    expect(dev.packages).toEqual(["curl", "strace"]);
    expect(def.files.map((f) => f.source)).toEqual([{ kind: "inline", encoding: "utf8", data: "base\n" }]);
    expect(dev.files.map((f) => f.source)).toEqual([{ kind: "inline", encoding: "utf8", data: "dev\n" }]);
    expect(dev.runs.map((r) => r.args[0])).toEqual(["base", "dev"]);
    const d = img.digests();
    expect(d.default).not.toBe(d.dev);
    // After the callback, calls go to the base again.
    img.install("jq");
    expect(resolveProfile(img.recipe, "default").packages).toEqual(["curl", "jq"]);
  });

  it("refuses whole-image calls and nesting inside a profile", () => {
    expect(codeOf(() => base().profile("dev", (p) => p.outputTargets("gcp")))).toBe("E_VALIDATION");
    expect(codeOf(() => base().profile("dev", (p) => p.profile("x", () => undefined)))).toBe("E_VALIDATION");
    expect(codeOf(() => base().profile("default", () => undefined))).toBe("E_VALIDATION");
    expect(codeOf(() => resolveProfile(base().recipe, "nope"))).toBe("E_VALIDATION");
  });

  it("use(): a missing host command is E_VALIDATION naming the command and its package", () => {
    let err: TdxError | undefined;
    try {
      base().use({ name: "needs-tool", requiredHostCommands: () => [{ command: "tdxvm-no-such-tool", package: "tdxvm-tools" }] });
    } catch (e) {
      err = e as TdxError;
    }
    expect(err).toBeInstanceOf(TdxError);
    expect(err!.code).toBe("E_VALIDATION");
    expect(err!.message).toContain("tdxvm-no-such-tool");
    expect(err!.hint).toContain("apt-get install tdxvm-tools");
  });

  it("use(): runs setup for all modules, then install, and records them", () => {
    const order: string[] = [];
    const m = (name: string) => ({
      name,
      requiredHostCommands: () => ["sh"],
      setup: () => order.push(`setup:${name}`),
      install: (img: Image) => {
        order.push(`install:${name}`);
        img.install(`pkg-${name}`);
      },
    });
    const img = base().use(m("a"), m("b"));
    expect(order).toEqual(["setup:a", "setup:b", "install:a", "install:b"]);
    expect(img.recipe.modules).toEqual([{ name: "a" }, { name: "b" }]);
    expect(img.recipe.base_layer.packages).toEqual(["pkg-a", "pkg-b"]);
  });

  it("round-trips through recipe data", () => {
    const img = base().install("curl").file("/etc/x", { content: new Uint8Array([0, 255]) }).profile("p", (p) => p.install("jq"));
    const again = Image.fromRecipe(JSON.parse(JSON.stringify(img.recipe)), "/tmp");
    expect(again.digests()).toEqual(img.digests());
    expect(codeOf(() => parseRecipe({ ...img.recipe, extra: 1 }))).toBe("E_VALIDATION");
  });
});
