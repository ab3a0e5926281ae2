/**
 * provider/secrets (schema, targets, payload validation, run-time materialisation) and the Init
 * module that bakes the secrets *contract* into an image.
 *
 * Every materialisation test writes below its own temporary root (fs.mkdtemp), removed after.
 * Ownership is always checked with fs.stat (numeric uid/gid), never trusted from return values.
 *
 * systemd EnvironmentFile= syntax is checked two ways: with `parseSystemdEnvFile` below, a port of
 * the state machine in systemd's src/basic/env-file.c (parse_env_file_internal, which
 * EnvironmentFile= uses through load_env_file), and — where the host has it — with the real
 * systemd parser, reached through systemd-environment-d-generator (same parser; it additionally
 * expands $VAR, so values checked that way contain no '$').
 */
import { execFileSync } from "node:child_process";
import { existsSync, promises as fs } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import fc from "fast-check";
import { TdxError } from "../../provider/errors";
import { Init } from "../../provider/modules/init";
import { Image } from "../../provider/recipe/image";
import { SecretSchema, SecretTarget, SecretsDelivery, declareSecret, SecretOptions, PayloadReport } from "../../provider/secrets";
import { tdxErrorOf, walk as walkFiles } from "../helpers";

const asRoot = process.getuid?.() === 0;
const itRoot = asRoot ? it : it.skip;

function syncTdxErrorOf(fn: () => unknown): TdxError {
  try {
    fn();
  } catch (e) {
    if (e instanceof TdxError) return e;
    throw new Error(`expected a TdxError, got ${String(e)}`, { cause: e });
  }
  throw new Error("expected a TdxError, but nothing was thrown");
}


const delivery = (secrets: Record<string, SecretOptions>, opts: { completion?: "required" | "all"; rejectUnknown?: boolean } = {}): SecretsDelivery =>
  new Init({ secrets }).secretsDelivery("http_post", opts);

// ---------------------------------------------------------------------------------------------
// systemd EnvironmentFile= parsing

/** Port of systemd's parse_env_file_internal (src/basic/env-file.c); last assignment wins. */
function parseSystemdEnvFile(text: string): Map<string, string> {
  const WHITESPACE = " \t\n\r";
  const NEWLINE = "\n\r";
  const COMMENTS = "#;";
  const SHELL_NEED_ESCAPE = "\"\\`$";
  type State = "PRE_KEY" | "KEY" | "PRE_VALUE" | "VALUE" | "VALUE_ESCAPE" | "SQ" | "DQ" | "DQ_ESCAPE" | "COMMENT" | "COMMENT_ESCAPE";
  let state: State = "PRE_KEY";
  let key = "";
  let value = "";
  let lastKeyWs = -1;
  let lastValueWs = -1;
  const out = new Map<string, string>();
  const push = () => {
    out.set(lastKeyWs >= 0 ? key.slice(0, lastKeyWs) : key, value);
    key = "";
    value = "";
  };
  const isIn = (set: string, c: string) => c.length === 1 && set.includes(c);
  for (const c of text) {
    switch (state) {
      case "PRE_KEY":
        if (isIn(COMMENTS, c)) state = "COMMENT";
        else if (!isIn(WHITESPACE, c)) {
          state = "KEY";
          lastKeyWs = -1;
          key += c;
        }
        break;
      case "KEY":
        if (isIn(NEWLINE, c)) {
          state = "PRE_KEY";
          key = "";
        } else if (c === "=") {
          state = "PRE_VALUE";
          lastValueWs = -1;
        } else {
          if (!isIn(WHITESPACE, c)) lastKeyWs = -1;
          else if (lastKeyWs === -1) lastKeyWs = key.length;
          key += c;
        }
        break;
      case "PRE_VALUE":
        if (isIn(NEWLINE, c)) {
          state = "PRE_KEY";
          push();
        } else if (c === "'") state = "SQ";
        else if (c === '"') state = "DQ";
        else if (c === "\\") state = "VALUE_ESCAPE";
        else if (!isIn(WHITESPACE, c)) {
          state = "VALUE";
          value += c;
        }
        break;
      case "VALUE":
        if (isIn(NEWLINE, c)) {
          state = "PRE_KEY";
          if (lastValueWs >= 0) value = value.slice(0, lastValueWs);
          push();
        } else if (c === "\\") {
          state = "VALUE_ESCAPE";
          lastValueWs = -1;
        } else {
          if (!isIn(WHITESPACE, c)) lastValueWs = -1;
          else if (lastValueWs === -1) lastValueWs = value.length;
          value += c;
        }
        break;
      case "VALUE_ESCAPE":
        state = "VALUE";
        if (!isIn(NEWLINE, c)) value += c; // escaped newlines are eaten
        break;
      case "SQ":
        if (c === "'") state = "PRE_VALUE";
        else value += c;
        break;
      case "DQ":
        if (c === '"') state = "PRE_VALUE";
        else if (c === "\\") state = "DQ_ESCAPE";
        else value += c;
        break;
      case "DQ_ESCAPE":
        state = "DQ";
        if (isIn(SHELL_NEED_ESCAPE, c)) value += c;
        else if (c !== "\n") value += `\\${c}`; // any other escape keeps its backslash
        break;
      case "COMMENT":
        if (c === "\\") state = "COMMENT_ESCAPE";
        else if (isIn(NEWLINE, c)) state = "PRE_KEY";
        break;
      case "COMMENT_ESCAPE":
        state = isIn(NEWLINE, c) ? "PRE_KEY" : "COMMENT";
        break;
    }
  }
  if (state === "PRE_VALUE" || state === "VALUE" || state === "VALUE_ESCAPE" || state === "SQ" || state === "DQ" || state === "DQ_ESCAPE") {
    if (state === "VALUE" && lastValueWs >= 0) value = value.slice(0, lastValueWs);
    push();
  }
  return out;
}

/** systemd's utf8_is_valid (unichar_is_valid) refuses surrogates and Unicode noncharacters. */
const systemdAcceptsUnicode = (v: string) =>
  ![...v].some((ch) => {
    const c = ch.codePointAt(0) as number;
    return (c >= 0xd800 && c <= 0xdfff) || (c >= 0xfdd0 && c <= 0xfdef) || (c & 0xfffe) === 0xfffe;
  });

const ENV_D_GENERATOR = "/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator";
const hasEnvGenerator = existsSync(ENV_D_GENERATOR);
const itSystemd = hasEnvGenerator ? it : it.skip;

/** Decode one value as printed by systemd-environment-d-generator (shell_maybe_quote/cescape form). */
function decodeGeneratorValue(raw: Buffer): string {
  if (raw.length < 2 || raw[0] !== 0x22 || raw[raw.length - 1] !== 0x22) return raw.toString("utf8");
  const s = raw.subarray(1, -1);
  const out: number[] = [];
  const simple: Record<string, number> = { a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11, "\\": 92, '"': 34, "'": 39, "`": 96, $: 36 };
  for (let i = 0; i < s.length; i++) {
    if (s[i] !== 0x5c) {
      out.push(s[i]);
      continue;
    }
    const c = String.fromCharCode(s[++i]);
    if (c in simple) out.push(simple[c]);
    else if (c === "x") {
      out.push(parseInt(s.subarray(i + 1, i + 3).toString("latin1"), 16));
      i += 2;
    } else if (/[0-7]/.test(c)) {
      out.push(parseInt(s.subarray(i, i + 3).toString("latin1"), 8));
      i += 2;
    } else throw new Error(`unexpected escape \\${c} in generator output`);
  }
  return Buffer.from(out).toString("utf8");
}

/** Parse an env file with the host's real systemd parser (environment.d generator). */
async function parseWithRealSystemd(text: string | Buffer): Promise<Map<string, string>> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "tdxvm-envd-"));
  try {
    await fs.mkdir(path.join(dir, "environment.d"));
    await fs.writeFile(path.join(dir, "environment.d", "50-tdxvm-test.conf"), text);
    const out = execFileSync(ENV_D_GENERATOR, [], { env: { XDG_CONFIG_HOME: dir }, stdio: ["ignore", "pipe", "pipe"] });
    const m = new Map<string, string>();
    let start = 0;
    for (let i = 0; i <= out.length; i++) {
      if (i === out.length || out[i] === 0x0a) {
        const line = out.subarray(start, i);
        start = i + 1;
        const eq = line.indexOf(0x3d);
        if (eq > 0) m.set(line.subarray(0, eq).toString("utf8"), decodeGeneratorValue(line.subarray(eq + 1)));
      }
    }
    return m;
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Per-test temp root

let root: string;
beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), "tdxvm-secrets-test-"));
});
afterEach(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

async function writeUserDb(r: string) {
  await fs.mkdir(path.join(r, "etc"), { recursive: true });
  await fs.writeFile(
    path.join(r, "etc", "passwd"),
    [
      "root:x:0:0:root:/root:/bin/bash",
      "appx:x:2000:2000:decoy with a longer name:/nonexistent:/usr/sbin/nologin",
      "app:x:1001:1001:App:/home/app:/usr/sbin/nologin",
      "svc:x:1500:100:Service:/var/lib/svc:/usr/sbin/nologin",
      "",
    ].join("\n"),
  );
  await fs.writeFile(path.join(r, "etc", "group"), ["root:x:0:", "users:x:100:", "appx:x:2000:", "app:x:1001:", "staff:x:50:app", ""].join("\n"));
}
const USER_DB_FILES = ["etc/group", "etc/passwd"];

async function statOf(p: string) {
  const st = await fs.stat(p);
  return { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, file: st.isFile() };
}

// ---------------------------------------------------------------------------------------------

describe("SecretSchema.check", () => {
  describe("string", () => {
    it("accepts strings and names the wrong type otherwise", () => {
      const s = SecretSchema.string();
      expect(s.check("anything")).toEqual([]);
      expect(s.check("")).toEqual([]);
      expect(s.check(42)).toEqual(["expected a string, got number"]);
      expect(s.check(null)).toEqual(["expected a string, got null"]);
      expect(s.check(["a"])).toEqual(["expected a string, got an array"]);
      expect(s.check({ a: 1 })).toEqual(["expected a string, got object"]);
      expect(s.check(true)).toEqual(["expected a string, got boolean"]);
      expect(s.check(undefined)).toEqual(["expected a string, got undefined"]);
    });

    it("minLength/maxLength count Unicode code points and are inclusive", () => {
      const s = SecretSchema.string({ minLength: 3, maxLength: 5 });
      expect(s.check("abc")).toEqual([]);
      expect(s.check("abcde")).toEqual([]);
      expect(s.check("ab")).toEqual(["shorter than minLength 3"]);
      expect(s.check("abcdef")).toEqual(["longer than maxLength 5"]);
      // 5 emoji = 5 code points (10 UTF-16 units, 20 UTF-8 bytes)
      expect(s.check("😀😀😀😀😀")).toEqual([]);
      expect(s.check("😀😀")).toEqual(["shorter than minLength 3"]);
    });

    it("pattern is a Unicode regex; a mismatch is reported without the value", () => {
      const s = SecretSchema.string({ pattern: "^\\p{Lu}{2}-[0-9]{4}$" });
      expect(s.check("ÄB-1234")).toEqual([]);
      expect(s.check("ab-1234")).toEqual(["does not match the declared pattern"]);
    });

    it("bounds hold exactly when the code-point length is within them (property)", () => {
      fc.assert(
        fc.property(fc.nat(20), fc.nat(20), fc.string({ unit: "binary", maxLength: 40 }), (a, b, v) => {
          const [min, max] = a <= b ? [a, b] : [b, a];
          const n = [...v].length;
          const errs = SecretSchema.string({ minLength: min, maxLength: max }).check(v);
          expect(errs.length === 0).toBe(n >= min && n <= max);
        }),
      );
    });
  });

  describe("bytes", () => {
    it("accepts padded base64 and bounds the decoded length", () => {
      const s = SecretSchema.bytes({ minLength: 2, maxLength: 3 });
      expect(s.check(Buffer.from([1, 2]).toString("base64"))).toEqual([]);
      expect(s.check(Buffer.from([1, 2, 3]).toString("base64"))).toEqual([]);
      expect(s.check(Buffer.from([1]).toString("base64"))).toEqual(["shorter than minLength 2"]);
      expect(s.check(Buffer.from([1, 2, 3, 4]).toString("base64"))).toEqual(["longer than maxLength 3"]);
      expect(SecretSchema.bytes().check("")).toEqual([]);
    });

    it.each([
      ["not a string", 123],
      ["null", null],
      ["non-base64 characters", "abc!"],
      ["base64url characters", "ab-_"],
      ["unpadded", "AAA"],
      ["too much padding", "A==="],
      ["whitespace", "AAAA AAAA"],
      ["a byte array instead of base64", [1, 2, 3]],
    ])("rejects %s", (_what, v) => {
      expect(SecretSchema.bytes().check(v)).toEqual(["expected base64-encoded bytes"]);
    });

    it("every base64 encoding of ≤ 64 bytes is accepted with its byte length (property)", () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 64 }), (b) => {
          const s = SecretSchema.bytes({ minLength: b.length, maxLength: b.length });
          expect(s.check(Buffer.from(b).toString("base64"))).toEqual([]);
        }),
      );
    });
  });

  describe("json", () => {
    it("accepts any JSON value, rejects undefined, bounds the serialised length", () => {
      const s = SecretSchema.json();
      for (const v of [null, 0, false, "", [], {}, { a: [1, { b: "c" }] }]) expect(s.check(v)).toEqual([]);
      expect(s.check(undefined)).toEqual(["expected a JSON value"]);
      const b = SecretSchema.json({ minLength: 3, maxLength: 7 });
      expect(b.check({ a: 1 })).toEqual([]); // {"a":1} = 7
      expect(b.check({ ab: 1 })).toEqual(["longer than maxLength 7"]);
      expect(b.check(1)).toEqual(["shorter than minLength 3"]);
    });

    it("values JSON cannot serialise are reported, not thrown", () => {
      const s = SecretSchema.json({ maxLength: 100 });
      expect(s.check(10n)).toEqual(["not serialisable as JSON"]);
      const cyclic: Record<string, unknown> = {};
      cyclic.self = cyclic;
      expect(s.check(cyclic)).toEqual(["not serialisable as JSON"]);
    });
  });

  describe("declaration validation", () => {
    it.each([
      ["minLength > maxLength", { kind: "string", minLength: 5, maxLength: 4 }],
      ["negative bound", { kind: "string", minLength: -1 }],
      ["fractional bound", { kind: "bytes", maxLength: 1.5 }],
      ["invalid regex", { kind: "string", pattern: "([a-z" }],
      ["unknown kind", { kind: "number" }],
      ["unknown key", { kind: "string", format: "uuid" }],
    ])("%s → E_VALIDATION", (_what, data) => {
      const e = syncTdxErrorOf(() => new SecretSchema(data as never));
      expect(e.code).toBe("E_VALIDATION");
    });
  });
});

describe("SecretTarget and declareSecret", () => {
  it("file targets default to mode 0400, owner root; env targets to global scope", () => {
    expect(SecretTarget.file("/run/secrets/db")).toEqual({ kind: "file", path: "/run/secrets/db", mode: 0o400, owner: "root" });
    expect(SecretTarget.file("/x/y", { mode: 0o640, owner: "app:staff" })).toEqual({ kind: "file", path: "/x/y", mode: 0o640, owner: "app:staff" });
    expect(SecretTarget.env("DB_PASSWORD")).toEqual({ kind: "env", name: "DB_PASSWORD", scope: "global" });
    expect(SecretTarget.env("T", { scope: "unit", unit: "app.service" })).toEqual({ kind: "env", name: "T", scope: "unit", unit: "app.service" });
  });

  it.each([
    ["relative file path", () => SecretTarget.file("run/x")],
    ["file path with ..", () => SecretTarget.file("/run/../etc/shadow")],
    ["file path ending in /", () => SecretTarget.file("/run/x/")],
    ["mode out of range", () => SecretTarget.file("/run/x", { mode: 0o10000 })],
    ["owner with spaces", () => SecretTarget.file("/run/x", { owner: "a b" })],
    ["owner mixing a name and a numeric gid", () => SecretTarget.file("/run/x", { owner: "svc:1234" })],
    ["env name with a dash", () => SecretTarget.env("DB-PASS")],
    ["env name starting with a digit", () => SecretTarget.env("1X")],
    ["unit scope without unit", () => SecretTarget.env("X", { scope: "unit" })],
    ["unit name with a slash", () => SecretTarget.env("X", { scope: "unit", unit: "../../etc/x.service" })],
    ["unit name without a unit suffix", () => SecretTarget.env("X", { scope: "unit", unit: "app" })],
  ])("%s → E_VALIDATION", (_what, fn) => {
    expect(syncTdxErrorOf(fn).code).toBe("E_VALIDATION");
  });

  it("declareSecret defaults to required and kind string; rejects bad names and empty targets", () => {
    expect(declareSecret("API_KEY", { targets: [SecretTarget.env("API_KEY")] })).toEqual({
      name: "API_KEY",
      required: true,
      schema: { kind: "string" },
      targets: [{ kind: "env", name: "API_KEY", scope: "global" }],
    });
    expect(syncTdxErrorOf(() => declareSecret("bad-name", { targets: [SecretTarget.env("X")] })).code).toBe("E_VALIDATION");
    expect(syncTdxErrorOf(() => declareSecret("X", { targets: [] })).code).toBe("E_VALIDATION");
    expect(syncTdxErrorOf(() => declareSecret("X", null as never)).code).toBe("E_VALIDATION");
  });
});

describe("SecretsDelivery.validatePayload", () => {
  const decls = () => ({
    REQ_A: { schema: SecretSchema.string({ minLength: 4 }), targets: [SecretTarget.env("REQ_A")] },
    REQ_B: { schema: SecretSchema.bytes(), targets: [SecretTarget.file("/run/b")] },
    OPT_C: { required: false, schema: SecretSchema.json(), targets: [SecretTarget.file("/run/c")] },
  });

  it("a complete valid payload is ready", () => {
    const d = delivery(decls());
    expect(d.validatePayload({ REQ_A: "abcd", REQ_B: "AAAA", OPT_C: { x: 1 } })).toEqual({ ready: true, missing: [], unknown: [], errors: {} });
  });

  it("missing required secrets are listed and make it not ready", () => {
    const d = delivery(decls());
    expect(d.validatePayload({ REQ_A: "abcd" })).toEqual({ ready: false, missing: ["REQ_B"], unknown: [], errors: {} });
    expect(d.validatePayload({})).toEqual({ ready: false, missing: ["REQ_A", "REQ_B"], unknown: [], errors: {} });
  });

  it('completion "required": an absent optional secret is not missing', () => {
    const d = delivery(decls(), { completion: "required" });
    expect(d.completion).toBe("required");
    expect(d.validatePayload({ REQ_A: "abcd", REQ_B: "" })).toEqual({ ready: true, missing: [], unknown: [], errors: {} });
  });

  it('completion "all": an absent optional secret is missing and blocks readiness', () => {
    const d = delivery(decls(), { completion: "all" });
    expect(d.validatePayload({ REQ_A: "abcd", REQ_B: "" })).toEqual({ ready: false, missing: ["OPT_C"], unknown: [], errors: {} });
    expect(d.validatePayload({ REQ_A: "abcd", REQ_B: "", OPT_C: null })).toEqual({ ready: true, missing: [], unknown: [], errors: {} });
  });

  it("an optional secret that is present but invalid blocks readiness under either completion", () => {
    for (const completion of ["required", "all"] as const) {
      const d = delivery({ ...decls(), OPT_D: { required: false, schema: SecretSchema.string({ maxLength: 2 }), targets: [SecretTarget.file("/run/d")] } }, { completion });
      const r = d.validatePayload({ REQ_A: "abcd", REQ_B: "", OPT_C: 1, OPT_D: "toolong" });
      expect(r.ready).toBe(false);
      expect(r.errors).toEqual({ OPT_D: ["longer than maxLength 2"] });
    }
  });

  it("unknown names block readiness by default (rejectUnknown true)", () => {
    const d = delivery(decls());
    expect(d.rejectUnknown).toBe(true);
    expect(d.validatePayload({ REQ_A: "abcd", REQ_B: "", EXTRA: "x", other: 1 })).toEqual({ ready: false, missing: [], unknown: ["EXTRA", "other"], errors: {} });
  });

  it("rejectUnknown false: unknown names are reported but the payload is ready", () => {
    const d = delivery(decls(), { rejectUnknown: false });
    expect(d.validatePayload({ REQ_A: "abcd", REQ_B: "", EXTRA: "x" })).toEqual({ ready: true, missing: [], unknown: ["EXTRA"], errors: {} });
  });

  it("long unknown names are truncated in the report", () => {
    const d = delivery(decls(), { rejectUnknown: false });
    const long = "N".repeat(500);
    const r = d.validatePayload({ REQ_A: "abcd", REQ_B: "", [long]: 1 });
    expect(r.unknown).toEqual([`${"N".repeat(64)}…`]);
  });

  it("schema errors are reported per name, together with missing and unknown", () => {
    const d = delivery(decls());
    const r = d.validatePayload({ REQ_A: "abc", OPT_C: undefined, ZZZ: 1 });
    expect(r).toEqual({
      ready: false,
      missing: ["REQ_B"],
      unknown: ["ZZZ"],
      errors: { REQ_A: ["shorter than minLength 4"], OPT_C: ["expected a JSON value"] },
    });
  });

  it('a JSON "__proto__" key is just an unknown name', () => {
    const d = delivery(decls());
    const r = d.validatePayload(JSON.parse('{"REQ_A":"abcd","REQ_B":"","__proto__":{"REQ_A":"x"}}'));
    expect(r.unknown).toEqual(["__proto__"]);
    expect(r.ready).toBe(false);
  });

  it.each([
    ["null", null],
    ["an array", [{ REQ_A: "abcd" }]],
    ["string", '{"REQ_A":"abcd","REQ_B":""}'],
    ["number", 7],
    ["undefined", undefined],
    ["boolean", true],
  ])("a non-object payload (%s) gives a not-ready report", (what, payload) => {
    for (const completion of ["required", "all"] as const) {
      const r = delivery(decls(), { completion }).validatePayload(payload);
      expect(r.ready).toBe(false);
      expect(r.unknown).toEqual([]);
      expect(r.errors).toEqual({ "(payload)": [`expected an object of secret name to value, got ${what}`] });
      expect(r.missing).toEqual(completion === "all" ? ["REQ_A", "REQ_B", "OPT_C"] : ["REQ_A", "REQ_B"]);
    }
  });

  it("never throws, for any payload; materializeRuntime throws only TdxError E_SECRET for not-ready ones (property)", async () => {
    const d = delivery(decls(), { completion: "all" });
    const payloads = fc.oneof(
      fc.anything({ withBigInt: true, withBoxedValues: true, withMap: true, withSet: true, withTypedArray: true, withNullPrototype: true }),
      fc.dictionary(fc.constantFrom("REQ_A", "REQ_B", "OPT_C", "X", "__proto__", "constructor"), fc.anything({ withBigInt: true })),
    );
    fc.assert(
      fc.property(payloads, (p) => {
        const r = d.validatePayload(p);
        expect(typeof r.ready).toBe("boolean");
        expect(Array.isArray(r.missing) && Array.isArray(r.unknown)).toBe(true);
      }),
      { numRuns: 500 },
    );
    await fc.assert(
      fc.asyncProperty(payloads, async (p) => {
        if (d.validatePayload(p).ready) return;
        const e = await tdxErrorOf(() => d.materializeRuntime(root, p));
        expect(e.code).toBe("E_SECRET");
      }),
      { numRuns: 200 },
    );
    expect(await walkFiles(root)).toEqual([]);
  });
});

describe("SecretsDelivery.materializeRuntime", () => {
  itRoot("writes file targets below root with the exact mode and numeric owner", async () => {
    const d = delivery({
      DB: { targets: [SecretTarget.file("/run/secrets/db", { mode: 0o440, owner: "1234:5678" })] },
      TLS: { schema: SecretSchema.bytes(), targets: [SecretTarget.file("/etc/ssl/private/k.bin", { mode: 0o600, owner: "4321" })] },
      CFG: { schema: SecretSchema.json(), targets: [SecretTarget.file("/run/cfg.json")] },
      SUID: { targets: [SecretTarget.file("/opt/x", { mode: 0o6750, owner: "77:88" })] },
      NONE: { targets: [SecretTarget.file("/opt/none", { mode: 0 })] },
    });
    const bin = Buffer.from([0, 1, 2, 0xfe, 0xff, 0x0a, 0x00]);
    const res = await d.materializeRuntime(root, { DB: "pa$$w\"ord\n", TLS: bin.toString("base64"), CFG: { a: [1, "two"] }, SUID: "s", NONE: "n" });
    expect(res.files.map((f) => path.relative(root, f)).sort()).toEqual(["etc/ssl/private/k.bin", "opt/none", "opt/x", "run/cfg.json", "run/secrets/db"]);
    expect(await walkFiles(root)).toEqual(["etc/ssl/private/k.bin", "opt/none", "opt/x", "run/cfg.json", "run/secrets/db"]);

    expect(await fs.readFile(path.join(root, "run/secrets/db"), "utf8")).toBe("pa$$w\"ord\n");
    expect(await statOf(path.join(root, "run/secrets/db"))).toEqual({ mode: 0o440, uid: 1234, gid: 5678, file: true });
    expect((await fs.readFile(path.join(root, "etc/ssl/private/k.bin"))).equals(bin)).toBe(true);
    expect(await statOf(path.join(root, "etc/ssl/private/k.bin"))).toEqual({ mode: 0o600, uid: 4321, gid: 4321, file: true });
    expect(await fs.readFile(path.join(root, "run/cfg.json"), "utf8")).toBe('{"a":[1,"two"]}');
    expect(await statOf(path.join(root, "run/cfg.json"))).toEqual({ mode: 0o400, uid: 0, gid: 0, file: true });
    // chmod after chown: setuid/setgid bits survive.
    expect(await statOf(path.join(root, "opt/x"))).toEqual({ mode: 0o6750, uid: 77, gid: 88, file: true });
    expect(await statOf(path.join(root, "opt/none"))).toEqual({ mode: 0, uid: 0, gid: 0, file: true });
  });

  itRoot("resolves named owners from <root>/etc/passwd and <root>/etc/group", async () => {
    await writeUserDb(root);
    const d = delivery({
      A: { targets: [SecretTarget.file("/run/a", { owner: "app", mode: 0o400 })] },
      B: { targets: [SecretTarget.file("/run/b", { owner: "app:staff", mode: 0o440 })] },
      C: { targets: [SecretTarget.file("/run/c", { owner: "appx:users" })] },
      D: { targets: [SecretTarget.file("/run/d", { owner: "svc:users" })] },
      E: { targets: [SecretTarget.file("/run/e", { owner: "root:staff" })] },
      F: { targets: [SecretTarget.file("/run/f", { owner: "root" })] },
    });
    await d.materializeRuntime(root, { A: "a", B: "b", C: "c", D: "d", E: "e", F: "f" });
    expect(await statOf(path.join(root, "run/a"))).toEqual({ mode: 0o400, uid: 1001, gid: 1001, file: true });
    expect(await statOf(path.join(root, "run/b"))).toEqual({ mode: 0o440, uid: 1001, gid: 50, file: true });
    expect(await statOf(path.join(root, "run/c"))).toEqual({ mode: 0o400, uid: 2000, gid: 100, file: true });
    expect(await statOf(path.join(root, "run/d"))).toEqual({ mode: 0o400, uid: 1500, gid: 100, file: true });
    expect(await statOf(path.join(root, "run/e"))).toEqual({ mode: 0o400, uid: 0, gid: 50, file: true });
    expect(await statOf(path.join(root, "run/f"))).toEqual({ mode: 0o400, uid: 0, gid: 0, file: true });
  });

  itRoot("owner root needs no user database", async () => {
    const d = delivery({ A: { targets: [SecretTarget.file("/run/a")] } });
    await d.materializeRuntime(root, { A: "x" });
    expect(await statOf(path.join(root, "run/a"))).toEqual({ mode: 0o400, uid: 0, gid: 0, file: true });
  });

  it("writes global env targets to run/tdxvm/secrets.env and unit ones to run/tdxvm/env/<unit>.env (0400 root)", async () => {
    const d = delivery({
      DB_PASS: { targets: [SecretTarget.env("DB_PASSWORD"), SecretTarget.env("PGPASSWORD", { scope: "unit", unit: "app.service" })] },
      API: { targets: [SecretTarget.env("API_TOKEN", { scope: "unit", unit: "worker@1.service" })] },
      ALPHA: { targets: [SecretTarget.env("ALPHA")] },
    });
    const res = await d.materializeRuntime(root, { DB_PASS: "hunter2", API: "tok", ALPHA: "a" });
    expect(res.files.map((f) => path.relative(root, f)).sort()).toEqual(["run/tdxvm/env/app.service.env", "run/tdxvm/env/worker@1.service.env", "run/tdxvm/secrets.env"]);
    expect(await walkFiles(root)).toEqual(["run/tdxvm/env/app.service.env", "run/tdxvm/env/worker@1.service.env", "run/tdxvm/secrets.env"]);
    expect(await fs.readFile(path.join(root, "run/tdxvm/secrets.env"), "utf8")).toBe('ALPHA="a"\nDB_PASSWORD="hunter2"\n');
    expect(await fs.readFile(path.join(root, "run/tdxvm/env/app.service.env"), "utf8")).toBe('PGPASSWORD="hunter2"\n');
    expect(await fs.readFile(path.join(root, "run/tdxvm/env/worker@1.service.env"), "utf8")).toBe('API_TOKEN="tok"\n');
    for (const f of res.files) expect(await statOf(f)).toEqual({ mode: 0o400, uid: 0, gid: 0, file: true });
  });

  it("quotes quotes, $, backticks and backslashes for systemd EnvironmentFile=", async () => {
    const value = 'he said "hi" & $HOME ${X} `id` back\\slash \\n \'single\' \t tab';
    const d = delivery({ S: { targets: [SecretTarget.env("S_VAR")] } });
    await d.materializeRuntime(root, { S: value });
    const text = await fs.readFile(path.join(root, "run/tdxvm/secrets.env"), "utf8");
    expect(text).toBe('S_VAR="he said \\"hi\\" & \\$HOME \\${X} \\`id\\` back\\\\slash \\\\n \'single\' \t tab"\n');
    expect(parseSystemdEnvFile(text).get("S_VAR")).toBe(value);
  });

  it("systemd parser port agrees with known systemd behaviour", () => {
    // Reference results observed with systemd 252's own parser (environment.d generator).
    const m = parseSystemdEnvFile('A="x\\"y\\$z\\\\w"\nB="l1\\nl2"\nC="l1\nl2"\n# c\nD=plain  \nE=\'s q\'\nF=""\n');
    expect(m.get("A")).toBe('x"y$z\\w');
    expect(m.get("B")).toBe("l1\\nl2"); // \n inside double quotes is NOT a newline
    expect(m.get("C")).toBe("l1\nl2"); // a raw newline inside double quotes is
    expect(m.get("D")).toBe("plain");
    expect(m.get("E")).toBe("s q");
    expect(m.get("F")).toBe("");
  });

  it("env values without newlines round-trip through systemd's EnvironmentFile= parser (property)", async () => {
    const d = delivery({
      V1: { targets: [SecretTarget.env("V1")] },
      V2: { targets: [SecretTarget.env("V2", { scope: "unit", unit: "u.service" })] },
    });
    await fc.assert(
      fc.asyncProperty(
        fc.string({ unit: "binary", maxLength: 60 }).filter((s) => !s.includes("\0") && !s.includes("\n") && systemdAcceptsUnicode(s)),
        fc.string({ unit: fc.constantFrom('"', "\\", "$", "`", "'", " ", "\t", "#", "=", "a", "\r", ";", "{", "}"), maxLength: 30 }).filter((s) => !s.includes("\n")),
        async (v1, v2) => {
          await d.materializeRuntime(root, { V1: v1, V2: v2 });
          const g = parseSystemdEnvFile(await fs.readFile(path.join(root, "run/tdxvm/secrets.env"), "utf8"));
          const u = parseSystemdEnvFile(await fs.readFile(path.join(root, "run/tdxvm/env/u.service.env"), "utf8"));
          expect(g.get("V1")).toBe(v1);
          expect(u.get("V2")).toBe(v2);
        },
      ),
      { numRuns: 200 },
    );
    expect((await walkFiles(root)).filter((f) => f.endsWith(".tmp"))).toEqual([]);
  });

  itSystemd("the env file is read back exactly by the host's real systemd parser (values without $ or newline)", async () => {
    const d = delivery({
      V1: { targets: [SecretTarget.env("TDXVM_T1")] },
      V2: { targets: [SecretTarget.env("TDXVM_T2")] },
    });
    const fixed = ['quote " back \\ tick ` single \' hash # semi ; eq = tab \t cr \r done', "é😀 ü"];
    await d.materializeRuntime(root, { V1: fixed[0], V2: fixed[1] });
    const real = await parseWithRealSystemd(await fs.readFile(path.join(root, "run/tdxvm/secrets.env")));
    expect(real.get("TDXVM_T1")).toBe(fixed[0]);
    expect(real.get("TDXVM_T2")).toBe(fixed[1]);
    await fc.assert(
      fc.asyncProperty(fc.string({ unit: "binary", minLength: 1, maxLength: 40 }).filter((s) => !/[\0\n$]/.test(s) && systemdAcceptsUnicode(s)), async (v) => {
        await d.materializeRuntime(root, { V1: v, V2: "x" });
        const text = await fs.readFile(path.join(root, "run/tdxvm/secrets.env"), "utf8");
        const realParsed = await parseWithRealSystemd(text);
        expect(realParsed.get("TDXVM_T1")).toBe(Buffer.from(v).toString("utf8"));
        // ...and the port agrees with the real parser on the same file.
        expect(parseSystemdEnvFile(text).get("TDXVM_T1")).toBe(realParsed.get("TDXVM_T1"));
      }),
      { numRuns: 25 },
    );
  });

  it("an env value containing a newline round-trips through EnvironmentFile= (quotes, $ and a newline)", async () => {
    // Writing "\n" as the two characters \n is wrong: inside double quotes systemd keeps unknown
    // escapes verbatim, so the service would see a backslash and an 'n'. A raw newline inside the
    // double quotes is what systemd's parser (and its own writer) use.
    const value = 'first "line" $HOME\nsecond line';
    const d = delivery({ S: { targets: [SecretTarget.env("S_VAR")] } });
    await d.materializeRuntime(root, { S: value });
    const text = await fs.readFile(path.join(root, "run/tdxvm/secrets.env"), "utf8");
    expect(parseSystemdEnvFile(text).get("S_VAR")).toBe(value);
  });

  itSystemd("an env value containing a newline is read back as a newline by the real systemd parser", async () => {
    const d = delivery({ S: { targets: [SecretTarget.env("TDXVM_NL")] } });
    await d.materializeRuntime(root, { S: "a\nb" });
    const real = await parseWithRealSystemd(await fs.readFile(path.join(root, "run/tdxvm/secrets.env")));
    expect(real.get("TDXVM_NL")).toBe("a\nb");
  });

  it("a NUL byte in an env-targeted secret → E_SECRET naming the secret, nothing written", async () => {
    const d = delivery({
      AA: { targets: [SecretTarget.file("/a/first")] },
      BIN: { schema: SecretSchema.bytes(), targets: [SecretTarget.env("BIN")] },
    });
    const e = await tdxErrorOf(() => d.materializeRuntime(root, { AA: "x", BIN: Buffer.from("ab\0cd").toString("base64") }));
    expect(e.code).toBe("E_SECRET");
    expect(e.message).toContain("BIN");
    expect(await walkFiles(root)).toEqual([]);
  });

  it("bytes that are not UTF-8 are rejected for env targets instead of silently replaced by U+FFFD", async () => {
    const d = delivery({ BIN: { schema: SecretSchema.bytes(), targets: [SecretTarget.env("BIN")] } });
    const e = await tdxErrorOf(() => d.materializeRuntime(root, { BIN: Buffer.from([0xff, 0xfe, 0x41]).toString("base64") }));
    expect(e.code).toBe("E_SECRET");
    expect(await walkFiles(root)).toEqual([]);
  });

  it("a string secret with a Unicode noncharacter is rejected for env targets (systemd refuses the whole EnvironmentFile=)", async () => {
    // systemd's load_env_file() fails on values its utf8_is_valid() refuses (U+FDD0..U+FDEF,
    // U+xFFFE/U+xFFFF), and the unit then fails to start; so it is E_SECRET up front.
    const d = delivery({ S: { targets: [SecretTarget.env("S")] } });
    const e = await tdxErrorOf(() => d.materializeRuntime(root, { S: "a\uFFFEb" }));
    expect(e.code).toBe("E_SECRET");
    expect(await walkFiles(root)).toEqual([]);
  });

  it("a string value with a lone surrogate (not representable in UTF-8) is refused, not written as U+FFFD", async () => {
    // JSON.parse('"\\ud800"') yields such a string; Buffer.from(v, "utf8") silently replaces it.
    const d = delivery({ S: { targets: [SecretTarget.file("/run/s")] } });
    const payload = JSON.parse('{"S":"a\\ud800b"}');
    expect(d.validatePayload(payload).ready).toBe(false);
    expect(await walkFiles(root)).toEqual([]);
  });

  itSystemd("(evidence: the real systemd parser refuses a noncharacter in an env file)", async () => {
    // systemd 252's environment.d generator even crashes on this (double free) after logging.
    let parsed: Map<string, string> | undefined;
    let err = "";
    try {
      parsed = await parseWithRealSystemd('TDXVM_NC="a\uFFFEb"\n');
    } catch (e) {
      err = String((e as { stderr?: Buffer }).stderr ?? e);
    }
    expect(parsed?.get("TDXVM_NC")).toBeUndefined();
    if (!parsed) expect(err).toMatch(/invalid UTF-8/);
  });

  it("optional secrets that are absent and unknown names (rejectUnknown false) write nothing", async () => {
    const d = delivery(
      {
        REQ: { targets: [SecretTarget.file("/run/req")] },
        OPT: { required: false, targets: [SecretTarget.file("/run/opt"), SecretTarget.env("OPT")] },
      },
      { rejectUnknown: false },
    );
    const res = await d.materializeRuntime(root, { REQ: "r", UNKNOWN: "u" });
    expect(res.files.map((f) => path.relative(root, f))).toEqual(["run/req"]);
    expect(await walkFiles(root)).toEqual(["run/req"]);
  });

  it("a second delivery replaces files in place and leaves no temporaries", async () => {
    const d = delivery({ A: { targets: [SecretTarget.file("/run/a", { mode: 0o600 }), SecretTarget.env("A")] } });
    await d.materializeRuntime(root, { A: "one" });
    await d.materializeRuntime(root, { A: "two" });
    expect(await fs.readFile(path.join(root, "run/a"), "utf8")).toBe("two");
    expect(await fs.readFile(path.join(root, "run/tdxvm/secrets.env"), "utf8")).toBe('A="two"\n');
    expect(await walkFiles(root)).toEqual(["run/a", "run/tdxvm/secrets.env"]);
  });

  it("a not-ready payload → E_SECRET, nothing written", async () => {
    const d = delivery({ A: { targets: [SecretTarget.file("/run/a")] }, B: { schema: SecretSchema.string({ minLength: 10 }), targets: [SecretTarget.env("B")] } });
    for (const p of [{ A: "a" }, { A: "a", B: "short" }, { A: "a", B: "long enough!", C: "unknown" }, null, [], "A=a"]) {
      const e = await tdxErrorOf(() => d.materializeRuntime(root, p));
      expect(e.code).toBe("E_SECRET");
      expect(e.message).toContain("not ready");
      expect(e.hint.length).toBeGreaterThan(0);
    }
    expect(await walkFiles(root)).toEqual([]);
  });

  describe("atomicity", () => {
    itRoot("an unknown owner for the second file → E_SECRET and not one file written, no temporaries", async () => {
      await writeUserDb(root);
      const d = delivery({
        FIRST: { targets: [SecretTarget.file("/a/first", { owner: "app" })] }, // sorts first, owner exists
        SECOND: { targets: [SecretTarget.file("/z/second", { owner: "ghost" })] },
        ENVV: { targets: [SecretTarget.env("ENVV"), SecretTarget.env("ENVV", { scope: "unit", unit: "x.service" })] },
      });
      const e = await tdxErrorOf(() => d.materializeRuntime(root, { FIRST: "first-value", SECOND: "second-value", ENVV: "env-value" }));
      expect(e.code).toBe("E_SECRET");
      expect(e.message).toContain("ghost");
      expect(e.hint.length).toBeGreaterThan(0);
      expect(await walkFiles(root)).toEqual(USER_DB_FILES);
    });

    itRoot("an unknown group → E_SECRET and nothing written", async () => {
      await writeUserDb(root);
      const d = delivery({ A: { targets: [SecretTarget.file("/a/a", { owner: "app:nogroup" }), SecretTarget.file("/0/first")] } });
      const e = await tdxErrorOf(() => d.materializeRuntime(root, { A: "v" }));
      expect(e.code).toBe("E_SECRET");
      expect(await walkFiles(root)).toEqual(USER_DB_FILES);
    });

    it("a named owner with no user database → E_SECRET and nothing written", async () => {
      const d = delivery({ A: { targets: [SecretTarget.file("/0/a"), SecretTarget.file("/run/a", { owner: "app" })] } });
      const e = await tdxErrorOf(() => d.materializeRuntime(root, { A: "v" }));
      expect(e.code).toBe("E_SECRET");
      expect(await walkFiles(root)).toEqual([]);
    });

    it("an unwritable target (a parent path component is a regular file) → E_SECRET and nothing written", async () => {
      await fs.writeFile(path.join(root, "blocker"), "not a directory");
      const d = delivery({ A: { targets: [SecretTarget.file("/a/first")] }, B: { targets: [SecretTarget.file("/blocker/second")] } });
      const e = await tdxErrorOf(() => d.materializeRuntime(root, { A: "a", B: "b" }));
      expect(e.code).toBe("E_SECRET");
      expect(await walkFiles(root)).toEqual(["blocker"]);
    });

    it("a target that is a directory fails as E_SECRET before anything is renamed, leaving no temporaries", async () => {
      // Staging alone would succeed (the temporary is a sibling) and only the final rename of
      // /z/second fail with EISDIR — after /a/first was replaced, with the secret bytes left in
      // /z/second.tdxvm-*.tmp. Staging must check the target first.
      await fs.mkdir(path.join(root, "z", "second", "sub"), { recursive: true });
      const d = delivery({ A: { targets: [SecretTarget.file("/a/first")] }, B: { targets: [SecretTarget.file("/z/second")] } });
      const e = await tdxErrorOf(() => d.materializeRuntime(root, { A: "a", B: "b" }));
      expect(e.code).toBe("E_SECRET");
      expect(await walkFiles(root)).toEqual([]);
    });
  });

  it("an absent optional secret named like an Object.prototype member is skipped, not a TypeError", async () => {
    // Presence means an own property, as in validatePayload: with `in` (which sees inherited
    // members) `toString` would be "present" and valueBytes() would get a function.
    const d = delivery({ toString: { required: false, targets: [SecretTarget.file("/run/ts")] }, A: { targets: [SecretTarget.file("/run/a")] } });
    expect(d.validatePayload({ A: "a" }).ready).toBe(true);
    await d.materializeRuntime(root, { A: "a" });
    expect(await walkFiles(root)).toEqual(["run/a"]);
  });
});

describe("secret values never appear in reports, errors or logs", () => {
  /** Random secret values: a recognisable marker followed by arbitrary (incl. non-ASCII) text. */
  const MARK = "SeCrEt-";
  const secretValue = (min = 1) => fc.string({ unit: "binary", minLength: min, maxLength: 40 }).map((s) => `${MARK}${s}`);

  let logged: string[];
  let spies: jest.SpyInstance[];
  beforeEach(() => {
    logged = [];
    spies = (["log", "info", "warn", "error", "debug"] as const).map((m) =>
      jest.spyOn(console, m).mockImplementation((...args: unknown[]) => void logged.push(args.map(String).join(" "))),
    );
  });
  afterEach(() => spies.forEach((s) => s.mockRestore()));

  /** Every rendering a user or a log could see. */
  function haystack(x: { report?: PayloadReport; error?: TdxError }): string[] {
    const out = [...logged];
    if (x.report) out.push(JSON.stringify(x.report));
    if (x.error) out.push(x.error.message, x.error.hint, String(x.error), x.error.stack ?? "", JSON.stringify(x.error.details ?? null));
    return out;
  }
  function assertNoLeak(value: string, hay: string[]) {
    const forms = [value, JSON.stringify(value).slice(1, -1), Buffer.from(value).toString("base64"), MARK];
    for (const h of hay) for (const f of forms) if (f.length >= 4) expect(h.includes(f)).toBe(false);
  }

  it("(the leak detector itself catches raw, JSON-escaped, base64 and marker-only leaks)", () => {
    const v = 'SeCrEt-a"b\nc';
    for (const leak of [`x ${v} y`, JSON.stringify({ v }), Buffer.from(v).toString("base64"), "prefix SeCrEt-a…"]) {
      expect(() => assertNoLeak(v, [leak])).toThrow();
    }
    expect(() => assertNoLeak(v, ["TOKEN: does not match the declared pattern"])).not.toThrow();
  });

  const cases: Array<{ what: string; schema: SecretSchema; gen: fc.Arbitrary<unknown>; secretOf: (v: unknown) => string }> = [
    { what: "wrong pattern", schema: SecretSchema.string({ pattern: "^[0-9]{4,}$" }), gen: secretValue(), secretOf: (v) => v as string },
    { what: "too long (string)", schema: SecretSchema.string({ maxLength: 7 }), gen: secretValue(1), secretOf: (v) => v as string },
    { what: "too short (string)", schema: SecretSchema.string({ minLength: 100 }), gen: secretValue(), secretOf: (v) => v as string },
    { what: "wrong kind: non-base64 string for bytes", schema: SecretSchema.bytes(), gen: secretValue(), secretOf: (v) => v as string },
    { what: "wrong kind: object for string", schema: SecretSchema.string(), gen: secretValue().map((s) => ({ password: s })), secretOf: (v) => (v as { password: string }).password },
    { what: "wrong kind: array for string", schema: SecretSchema.string(), gen: secretValue().map((s) => [s]), secretOf: (v) => (v as string[])[0] },
    { what: "too long (json)", schema: SecretSchema.json({ maxLength: 5 }), gen: secretValue().map((s) => ({ k: s })), secretOf: (v) => (v as { k: string }).k },
    {
      what: "too long (bytes)",
      schema: SecretSchema.bytes({ maxLength: 8 }),
      gen: secretValue(3).map((s) => Buffer.from(s).toString("base64")),
      secretOf: (v) => v as string,
    },
  ];

  it.each(cases)("$what: not in the report nor in the E_SECRET error", async ({ schema, gen, secretOf }) => {
    const d = delivery({ TOKEN: { schema, targets: [SecretTarget.env("TOKEN"), SecretTarget.file("/run/token")] } });
    await fc.assert(
      fc.asyncProperty(gen, async (v) => {
        const report = d.validatePayload({ TOKEN: v });
        expect(report.ready).toBe(false);
        expect(Object.keys(report.errors)).toEqual(["TOKEN"]);
        assertNoLeak(secretOf(v), haystack({ report }));
        const error = await tdxErrorOf(() => d.materializeRuntime(root, { TOKEN: v }));
        expect(error.code).toBe("E_SECRET");
        expect(error.message).toContain("TOKEN");
        assertNoLeak(secretOf(v), haystack({ error }));
      }),
      { numRuns: 60 },
    );
    expect(await walkFiles(root)).toEqual([]);
  });

  it("a payload that is itself the secret string is not echoed", async () => {
    const d = delivery({ TOKEN: { targets: [SecretTarget.env("TOKEN")] } });
    await fc.assert(
      fc.asyncProperty(secretValue(), async (v) => {
        const report = d.validatePayload(v);
        assertNoLeak(v, haystack({ report }));
        assertNoLeak(v, haystack({ error: await tdxErrorOf(() => d.materializeRuntime(root, v)) }));
      }),
      { numRuns: 50 },
    );
  });

  it("valid values next to an invalid or unknown entry are not echoed either", async () => {
    const d = delivery({ GOOD: { targets: [SecretTarget.env("GOOD")] }, BAD: { schema: SecretSchema.string({ maxLength: 3 }), targets: [SecretTarget.env("BAD")] } });
    await fc.assert(
      fc.asyncProperty(secretValue(), secretValue(), secretValue(), async (good, bad, unknown) => {
        const payload = { GOOD: good, BAD: bad, EXTRA: unknown };
        const report = d.validatePayload(payload);
        expect(report.unknown).toEqual(["EXTRA"]);
        const error = await tdxErrorOf(() => d.materializeRuntime(root, payload));
        for (const v of [good, bad, unknown]) assertNoLeak(v, haystack({ report, error }));
      }),
      { numRuns: 50 },
    );
  });

  it("the NUL-byte error does not echo the value", async () => {
    const d = delivery({ TOKEN: { targets: [SecretTarget.env("TOKEN")] } });
    await fc.assert(
      fc.asyncProperty(secretValue(), async (v) => {
        const withNul = `${v}\0tail`;
        const error = await tdxErrorOf(() => d.materializeRuntime(root, { TOKEN: withNul }));
        expect(error.code).toBe("E_SECRET");
        assertNoLeak(v, haystack({ error }));
      }),
      { numRuns: 30 },
    );
  });

  itRoot("the unknown-owner error does not echo any value", async () => {
    await writeUserDb(root);
    const d = delivery({ A: { targets: [SecretTarget.file("/a/a")] }, B: { targets: [SecretTarget.file("/b/b", { owner: "ghost" })] } });
    await fc.assert(
      fc.asyncProperty(secretValue(), secretValue(), async (a, b) => {
        const error = await tdxErrorOf(() => d.materializeRuntime(root, { A: a, B: b }));
        expect(error.code).toBe("E_SECRET");
        for (const v of [a, b]) assertNoLeak(v, haystack({ error }));
      }),
      { numRuns: 20 },
    );
    expect(await walkFiles(root)).toEqual(USER_DB_FILES);
  });

  it("nothing is logged while validating or materialising", async () => {
    const d = delivery({ A: { targets: [SecretTarget.env("A"), SecretTarget.file("/run/a")] } });
    d.validatePayload({ A: "SeCrEt-value" });
    await d.materializeRuntime(root, { A: "SeCrEt-value" });
    await tdxErrorOf(() => d.materializeRuntime(root, { A: 5 }));
    expect(logged).toEqual([]);
  });
});

describe("Init module and Image.secret(): the recipe carries the contract, never a value", () => {
  const initOptions = () => ({
    secrets: {
      DB_PASSWORD: { schema: SecretSchema.string({ minLength: 12, pattern: "^[ -~]+$" }), targets: [SecretTarget.env("PGPASSWORD", { scope: "unit" as const, unit: "app.service" })] },
      TLS_KEY: { schema: SecretSchema.bytes({ maxLength: 4096 }), targets: [SecretTarget.file("/run/app/tls.key", { mode: 0o400, owner: "app" })] },
      FEATURE_FLAGS: { required: false, schema: SecretSchema.json(), targets: [SecretTarget.file("/run/app/flags.json", { mode: 0o440 })] },
    },
    handoff: "app.service",
  });

  function contractOf(img: Image) {
    const files = img.recipe.base_layer.files.filter((f) => f.path === "/etc/tdxvm/secrets-contract.json");
    expect(files).toHaveLength(1);
    const [f] = files;
    expect(f.mode).toBe(0o644);
    expect(f.owner).toBe("root");
    expect(f.source.kind).toBe("inline");
    if (f.source.kind !== "inline") throw new Error("unreachable");
    expect(f.source.encoding).toBe("utf8");
    return { text: f.source.data, json: JSON.parse(f.source.data) };
  }

  it("declares the secrets on the image and bakes /etc/tdxvm/secrets-contract.json with names, schemas and targets only", async () => {
    const init = new Init(initOptions());
    const runtime = init.secretsDelivery("http_post", { completion: "all", rejectUnknown: false });
    const img = new Image({ base: "debian/trixie" }).use(init);
    const recipe = img.recipe;
    const recipeJson = JSON.stringify(recipe);
    for (const n of ["DB_PASSWORD", "TLS_KEY", "FEATURE_FLAGS", "PGPASSWORD"]) expect(recipeJson).toContain(n);
    expect(recipe.secrets.map((s) => s.name)).toEqual(["DB_PASSWORD", "TLS_KEY", "FEATURE_FLAGS"]);
    expect(recipe.modules).toEqual([{ name: "init", version: "2" }]);

    const { json } = contractOf(img);
    expect(Object.keys(json).sort()).toEqual(["contractVersion", "delivery", "handoff", "owner", "secrets"]);
    expect(json.contractVersion).toBe(1);
    expect(json.owner).toBeNull(); // none named: the agent accepts no delivery until TdxImage (or Init({owner})) names one
    expect(json.delivery).toEqual({ method: "http_post", completion: "all", rejectUnknown: false });
    expect(json.handoff).toBe("app.service");
    expect(json.secrets).toEqual(recipe.secrets);
    for (const s of json.secrets) {
      expect(Object.keys(s).sort()).toEqual(["name", "required", "schema", "targets"]);
      for (const k of Object.keys(s.schema)) expect(["kind", "minLength", "maxLength", "pattern"]).toContain(k);
      for (const t of s.targets) for (const k of Object.keys(t)) expect(["kind", "path", "mode", "owner", "name", "scope", "unit"]).toContain(k);
    }
    expect(json.secrets[0]).toEqual({
      name: "DB_PASSWORD",
      required: true,
      schema: { kind: "string", minLength: 12, pattern: "^[ -~]+$" },
      targets: [{ kind: "env", name: "PGPASSWORD", scope: "unit", unit: "app.service" }],
    });

    // Deliver real values at "run time"; neither the recipe nor the contract ever sees them.
    await writeUserDb(root);
    await fc.assert(
      fc.asyncProperty(
        fc.string({ unit: fc.constantFrom(..."abcdefghijklmnopqrstuvwxyzXYZ0123456789!#%&()*+,-./:;<=>?@[]^_{|}~"), minLength: 12, maxLength: 40 }),
        fc.uint8Array({ minLength: 16, maxLength: 64 }),
        async (pw, key) => {
          const payload = { DB_PASSWORD: pw, TLS_KEY: Buffer.from(key).toString("base64"), FEATURE_FLAGS: { beta: pw } };
          expect(runtime.validatePayload(payload)).toEqual({ ready: true, missing: [], unknown: [], errors: {} });
          if (asRoot) await runtime.materializeRuntime(root, payload);
          const after = JSON.stringify(img.recipe);
          expect(after).toBe(recipeJson);
          expect(after.includes(pw)).toBe(false);
          expect(after.includes(Buffer.from(key).toString("base64"))).toBe(false);
          expect(contractOf(img).text.includes(pw)).toBe(false);
        },
      ),
      { numRuns: 20 },
    );
  });

  it("without secretsDelivery() the contract records the defaults; without handoff it is null", () => {
    const img = new Image({ base: "debian/trixie" }).use(new Init({ secrets: { A: { targets: [SecretTarget.env("A")] } } }));
    expect(contractOf(img).json).toMatchObject({ delivery: { method: "http_post", completion: "required", rejectUnknown: true }, handoff: null });
  });

  it("an Init with no secrets still bakes an (empty) contract", () => {
    const img = new Image({ base: "debian/trixie" }).use(new Init());
    expect(contractOf(img).json.secrets).toEqual([]);
  });

  it("secrets declared with Image.secret() and through Init share one contract", () => {
    const img = new Image({ base: "debian/trixie" })
      .secret("DIRECT", { targets: [SecretTarget.file("/run/direct")] })
      .use(new Init({ secrets: { VIA_INIT: { targets: [SecretTarget.env("VIA_INIT")] } } }));
    expect(contractOf(img).json.secrets.map((s: { name: string }) => s.name)).toEqual(["DIRECT", "VIA_INIT"]);
  });

  it("a value smuggled into the declaration options never reaches the recipe, and schema defaults are refused without echoing them", () => {
    const smuggled = "SeCrEt-hunter2-" + Math.random().toString(36).slice(2);
    const img = new Image({ base: "debian/trixie" })
      .secret("A", { targets: [SecretTarget.env("A")], value: smuggled } as unknown as SecretOptions)
      .use(new Init({ secrets: { B: { targets: [SecretTarget.env("B")], default: smuggled } as unknown as SecretOptions } }));
    expect(JSON.stringify(img.recipe)).not.toContain(smuggled);
    expect(JSON.stringify(img.recipe)).not.toContain("SeCrEt");

    const e = syncTdxErrorOf(() => new Image({ base: "debian/trixie" }).secret("C", { schema: { kind: "string", default: smuggled } as never, targets: [SecretTarget.env("C")] }));
    expect(e.code).toBe("E_VALIDATION");
    for (const s of [e.message, e.hint, String(e)]) expect(s).not.toContain(smuggled);
  });

  it("rejects duplicate names, bad handoff units and unknown delivery methods", () => {
    const init = new Init({ secrets: { A: { targets: [SecretTarget.env("A")] } } });
    expect(syncTdxErrorOf(() => new Image({ base: "debian/trixie" }).secret("A", { targets: [SecretTarget.env("X")] }).use(init)).code).toBe("E_VALIDATION");
    expect(syncTdxErrorOf(() => new Init({ handoff: "app" })).code).toBe("E_VALIDATION");
    expect(syncTdxErrorOf(() => new Init({ handoff: "../app.service" })).code).toBe("E_VALIDATION");
    expect(syncTdxErrorOf(() => init.secretsDelivery("smtp" as "http_post")).code).toBe("E_VALIDATION");
    expect(syncTdxErrorOf(() => new Image({ base: "debian/trixie" }).profile("dev", (i) => i.secret("P", { targets: [SecretTarget.env("P")] }))).code).toBe("E_VALIDATION");
  });
});

describe("materialisation stays inside its root", () => {
  let root: string;
  let outside: string;
  beforeEach(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), "tdxvm-secrets-root-"));
    outside = await fs.mkdtemp(path.join(os.tmpdir(), "tdxvm-secrets-outside-"));
  });
  afterEach(async () => {
    await fs.rm(root, { recursive: true, force: true });
    await fs.rm(outside, { recursive: true, force: true });
  });
  const fileSecret = (p: string, owner?: string) => new SecretsDelivery([declareSecret("S", { targets: [SecretTarget.file(p, { mode: 0o400, ...(owner ? { owner } : {}) })] })], {});

  it("never follows a symlinked directory out of the root (any component), and writes nothing", async () => {
    for (const [link, target] of [["run", "/run/app/token"], ["run/app", "/run/app/token"], ["var/lib/app", "/var/lib/app/x/token"]] as const) {
      await fs.rm(root, { recursive: true, force: true });
      await fs.mkdir(path.join(root, path.dirname(link)), { recursive: true });
      await fs.symlink(outside, path.join(root, link));
      const e = await tdxErrorOf(() => fileSecret(target).materializeRuntime(root, { S: "the-secret-value" }));
      expect({ link, code: e.code }).toEqual({ link, code: "E_SECRET" });
      expect(e.message).toMatch(/symbolic link/);
      expect(await walkFiles(outside)).toEqual([]);
    }
  });

  it("a symlink as the target file itself is replaced, never written through", async () => {
    await fs.mkdir(path.join(root, "run"), { recursive: true });
    const victim = path.join(outside, "victim");
    await fs.writeFile(victim, "unchanged\n");
    await fs.symlink(victim, path.join(root, "run/token"));
    await fileSecret("/run/token").materializeRuntime(root, { S: "the-secret-value" });
    expect(await fs.readFile(victim, "utf8")).toBe("unchanged\n");
    const st = await fs.lstat(path.join(root, "run/token"));
    expect(st.isFile()).toBe(true);
    expect(await fs.readFile(path.join(root, "run/token"), "utf8")).toBe("the-secret-value");
  });

  it("looks owners up in the image's own passwd/group, never through a link out of the root", async () => {
    await fs.mkdir(path.join(root, "etc"), { recursive: true });
    await fs.writeFile(path.join(outside, "passwd"), "app:x:4242:4242::/:/bin/false\n");
    await fs.symlink(path.join(outside, "passwd"), path.join(root, "etc/passwd"));
    const e = await tdxErrorOf(() => fileSecret("/run/token", "app").materializeRuntime(root, { S: "the-secret-value" }));
    expect(e.code).toBe("E_SECRET");
    expect(e.message).toMatch(/symbolic link/);
    // A symlinked /etc is refused the same way.
    await fs.rm(path.join(root, "etc"), { recursive: true });
    await fs.mkdir(path.join(outside, "etc"));
    await fs.writeFile(path.join(outside, "etc/passwd"), "app:x:4242:4242::/:/bin/false\n");
    await fs.symlink(path.join(outside, "etc"), path.join(root, "etc"));
    expect((await tdxErrorOf(() => fileSecret("/run/token", "app").materializeRuntime(root, { S: "the-secret-value" }))).code).toBe("E_SECRET");
    expect(await walkFiles(path.join(root, "run")).catch(() => [])).toEqual([]);
  });

  it("two secrets may not target the same path: refused at declaration and at materialisation", () => {
    const twice = (a: ReturnType<typeof SecretTarget.file>, b: ReturnType<typeof SecretTarget.file>) => () =>
      new Image({ base: "debian/trixie" }).secret("A", { targets: [a] }).secret("B", { targets: [b] });
    expect(syncTdxErrorOf(twice(SecretTarget.file("/run/app/key"), SecretTarget.file("/run/app/key"))).message).toMatch(/\/run\/app\/key.*A.*B/);
    // Two env targets with one variable name in one file, and a file target on the env file itself.
    expect(syncTdxErrorOf(() => new Image({ base: "debian/trixie" }).secret("A", { targets: [SecretTarget.env("TOKEN")] }).secret("B", { targets: [SecretTarget.env("TOKEN")] })).code).toBe("E_VALIDATION");
    expect(syncTdxErrorOf(() => new Image({ base: "debian/trixie" }).secret("A", { targets: [SecretTarget.env("TOKEN")] }).secret("B", { targets: [SecretTarget.file("/run/tdxvm/secrets.env")] })).code).toBe("E_VALIDATION");
    // One secret with the same target twice.
    expect(syncTdxErrorOf(() => new Image({ base: "debian/trixie" }).secret("A", { targets: [SecretTarget.file("/run/a"), SecretTarget.file("/run/a")] })).code).toBe("E_VALIDATION");
    // A recipe (or contract) that arrives as data is checked too.
    const recipe = new Image({ base: "debian/trixie" }).secret("A", { targets: [SecretTarget.file("/run/k")] }).secret("B", { targets: [SecretTarget.file("/run/j")] }).recipe;
    const clashing = { ...recipe, secrets: recipe.secrets.map((s) => ({ ...s, targets: [{ ...s.targets[0]!, path: "/run/k" }] })) };
    expect(syncTdxErrorOf(() => Image.fromRecipe(clashing, "/tmp")).code).toBe("E_VALIDATION");
    const d = new SecretsDelivery(clashing.secrets, {});
    return expect(d.materializeRuntime(root, { A: "value-of-a", B: "value-of-b" })).rejects.toMatchObject({ code: "E_SECRET", message: expect.stringMatching(/\/run\/k/) });
  });

  it("length limits are checked before the pattern, and no regular expression sees an unbounded value", () => {
    // A pattern with catastrophic backtracking on a non-matching input.
    const s = SecretSchema.string({ maxLength: 16, pattern: "^(a+)+$" });
    const hostile = "a".repeat(40) + "!";
    expect(s.check(hostile)).toEqual(["longer than maxLength 16"]);
    // Within the length limit the same pattern cannot stall validation either: it is given a time budget.
    const unbounded = SecretSchema.string({ pattern: "^(a+)+$" });
    expect(unbounded.check(hostile)).toEqual(["the declared pattern took too long to evaluate"]);
    // A value far beyond any sane secret is refused by size before any expression runs.
    expect(SecretSchema.bytes().check("A".repeat(9 * 1024 * 1024))).toEqual(["larger than the 8 MiB limit for one secret"]);
    expect(SecretSchema.string({ pattern: "^x" }).check("x".repeat(9 * 1024 * 1024))).toEqual(["larger than the 8 MiB limit for one secret"]);
  });
});
