/**
 * The secrets contract. A recipe declares which secrets an image needs and where they go at
 * run time; the values are delivered to the booted VM (never baked, never measured, never
 * logged). This file holds the declaration types and the two run-time halves of the
 * contract: validating a delivered payload and materialising it atomically.
 */
import { isUtf8 } from "node:buffer";
import { promises as fs, constants as C } from "node:fs";
import * as path from "node:path";
import * as vm from "node:vm";
import { randomBytes } from "node:crypto";
import { TdxError, label } from "../errors";
import {
  SecretDeclData, SecretSchemaData, SecretSchemaDataT, SecretTargetData, SecretTargetDataT, SecretDecl, parseWith,
  SECRETS_ENV_FILE, unitEnvFile, secretTargetClash,
} from "../recipe/schema";

/** Where env targets land: read through EnvironmentFile= drop-ins the Init module bakes. */
export { SECRETS_ENV_FILE, unitEnvFile };

/** Largest value one secret may have (characters of a string or of base64, or of serialised JSON). */
export const MAX_SECRET_SIZE = 8 * 1024 * 1024;
/** Time a declared pattern may take over one value before the value is refused. */
const PATTERN_BUDGET_MS = 1000;

let patternRunner: { ctx: vm.Context; script: vm.Script } | undefined;

/**
 * Test `value` against the recipe's pattern with a time budget: a pattern with catastrophic
 * backtracking must not stall validation (the guest's receiver runs this on delivered values).
 * V8 interrupts a running regular expression when a vm script's timeout expires.
 */
function patternMatches(pattern: string, value: string): boolean | "timeout" {
  patternRunner ??= { ctx: vm.createContext({}), script: new vm.Script("re.test(v)") };
  const { ctx, script } = patternRunner;
  ctx.re = new RegExp(pattern, "u");
  ctx.v = value;
  try {
    return script.runInContext(ctx, { timeout: PATTERN_BUDGET_MS }) === true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ERR_SCRIPT_EXECUTION_TIMEOUT") return "timeout";
    throw e;
  } finally {
    ctx.re = undefined;
    ctx.v = undefined;
  }
}

export class SecretSchema {
  readonly data: SecretSchemaDataT;
  constructor(data: SecretSchemaDataT) {
    this.data = parseWith(SecretSchemaData, data, "secret schema");
  }
  static string(opts: Omit<SecretSchemaDataT, "kind"> = {}) { return new SecretSchema({ kind: "string", ...opts }); }
  static bytes(opts: Omit<SecretSchemaDataT, "kind" | "pattern"> = {}) { return new SecretSchema({ kind: "bytes", ...opts }); }
  static json(opts: Omit<SecretSchemaDataT, "kind" | "pattern"> = {}) { return new SecretSchema({ kind: "json", ...opts }); }

  /**
   * Problems with `value`, described without ever quoting the value. The size is bounded before
   * any regular expression runs, and the declared length limits are checked before the pattern.
   */
  check(value: unknown): string[] {
    const s = this.data;
    const tooLarge = [`larger than the ${MAX_SECRET_SIZE / 1024 / 1024} MiB limit for one secret`];
    let length: number;
    if (s.kind === "string") {
      if (typeof value !== "string") return [`expected a string, got ${describe(value)}`];
      if (value.length > MAX_SECRET_SIZE) return tooLarge;
      // A lone UTF-16 surrogate (JSON "\ud800" parses to one) has no UTF-8 form: writing it would
      // silently turn it into U+FFFD, i.e. deliver a different secret than the one sent.
      if (/\p{Cs}/u.test(value)) return ["not well-formed Unicode (contains a lone surrogate)"];
      length = 0;
      for (const _ of value) length++;
    } else if (s.kind === "bytes") {
      if (typeof value !== "string") return [`expected base64-encoded bytes`];
      if (value.length > MAX_SECRET_SIZE) return tooLarge;
      if (!/^[A-Za-z0-9+/]*={0,2}$/.test(value) || value.length % 4 !== 0) return [`expected base64-encoded bytes`];
      length = Buffer.from(value, "base64").length;
    } else {
      if (value === undefined) return ["expected a JSON value"];
      try { length = JSON.stringify(value).length; } catch { return ["not serialisable as JSON"]; }
      if (length > MAX_SECRET_SIZE) return tooLarge;
    }
    const errs: string[] = [];
    if (s.minLength !== undefined && length < s.minLength) errs.push(`shorter than minLength ${s.minLength}`);
    if (s.maxLength !== undefined && length > s.maxLength) errs.push(`longer than maxLength ${s.maxLength}`);
    if (errs.length || s.kind !== "string" || s.pattern === undefined) return errs;
    const m = patternMatches(s.pattern, value as string);
    if (m === "timeout") return ["the declared pattern took too long to evaluate"];
    return m ? [] : ["does not match the declared pattern"];
  }
}

function describe(v: unknown): string {
  return v === null ? "null" : Array.isArray(v) ? "an array" : typeof v;
}

export const SecretTarget = {
  file(p: string, opts: { mode?: number; owner?: string } = {}): SecretTargetDataT {
    return parseWith(SecretTargetData, { kind: "file", path: p, mode: opts.mode ?? 0o400, owner: opts.owner ?? "root" }, "secret file target");
  },
  env(name: string, opts: { scope?: "global" | "unit"; unit?: string } = {}): SecretTargetDataT {
    const scope = opts.scope ?? "global";
    if (scope === "unit" && opts.unit === undefined) {
      throw new TdxError("E_VALIDATION", `env target ${name} has scope "unit" but names no unit`, { hint: 'Pass {scope: "unit", unit: "app.service"}.' });
    }
    return parseWith(SecretTargetData, { kind: "env", name, scope, ...(opts.unit ? { unit: opts.unit } : {}) }, "secret env target");
  },
};

export interface SecretOptions {
  required?: boolean;
  schema?: SecretSchema | SecretSchemaDataT;
  targets: SecretTargetDataT[];
}

export function declareSecret(name: string, opts: SecretOptions): SecretDeclData {
  if (opts === null || typeof opts !== "object") throw new TdxError("E_VALIDATION", `secret ${label(name)} needs options {required?, schema?, targets}`, { hint: "secret(name, {targets: [SecretTarget.env(name)]})" });
  const schema = opts.schema instanceof SecretSchema ? opts.schema.data : opts.schema ?? { kind: "string" as const };
  return parseWith(SecretDecl, { name, required: opts.required ?? true, schema, targets: opts.targets }, `secret ${label(name)}`);
}

export interface DeliveryOptions {
  /** "required": ready once every required secret is valid; "all": once every declared one is. */
  completion?: "required" | "all";
  /** Unknown names make the payload not ready (default true). */
  rejectUnknown?: boolean;
}

export interface PayloadReport {
  ready: boolean;
  missing: string[];
  unknown: string[];
  errors: Record<string, string[]>;
}

/** What is wrong with a payload, naming secrets and never values ("missing: A; unknown: B; C: …"). */
export function describePayloadReport(report: PayloadReport, unknownLabel = "unknown"): string {
  return [
    report.missing.length ? `missing: ${report.missing.join(", ")}` : "",
    report.unknown.length ? `${unknownLabel}: ${report.unknown.join(", ")}` : "",
    ...Object.entries(report.errors).map(([k, v]) => `${k}: ${v.join(", ")}`),
  ].filter(Boolean).join("; ");
}

export class SecretsDelivery {
  readonly method = "http_post" as const;
  readonly completion: "required" | "all";
  readonly rejectUnknown: boolean;
  constructor(private readonly decls: ReadonlyArray<SecretDeclData>, opts: DeliveryOptions) {
    this.completion = opts.completion ?? "required";
    this.rejectUnknown = opts.rejectUnknown ?? true;
  }

  /** Check a delivered payload `{name: value}`; the report names secrets, never values. */
  validatePayload(payload: unknown): PayloadReport {
    const report: PayloadReport = { ready: false, missing: [], unknown: [], errors: {} };
    if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
      report.errors["(payload)"] = [`expected an object of secret name to value, got ${describe(payload)}`];
      report.missing = this.decls.filter((d) => d.required || this.completion === "all").map((d) => d.name);
      return report;
    }
    const obj = payload as Record<string, unknown>;
    const declared = new Map(this.decls.map((d) => [d.name, d]));
    for (const key of Object.keys(obj)) if (!declared.has(key)) report.unknown.push(key.length > 64 ? `${key.slice(0, 64)}…` : key);
    const errors: Array<[string, string[]]> = [];
    for (const d of this.decls) {
      if (!Object.prototype.hasOwnProperty.call(obj, d.name)) {
        if (d.required || this.completion === "all") report.missing.push(d.name);
        continue;
      }
      const errs = new SecretSchema(d.schema).check(obj[d.name]);
      // A value an environment target cannot carry is bad input (400 at the agent), found before anything is written.
      if (!errs.length && d.targets.some((t) => t.kind === "env")) {
        const problem = envValueProblem(valueBytes(d.schema.kind, obj[d.name]));
        if (problem) errs.push(`${problem}, so it cannot go into an environment variable (use a file target for such secrets)`);
      }
      if (errs.length) errors.push([d.name, errs]);
    }
    // fromEntries defines own properties: assigning errors["__proto__"] (a valid secret name)
    // would set the prototype instead, hide the errors and make an invalid payload ready.
    report.errors = Object.fromEntries(errors);
    report.ready = report.missing.length === 0 && Object.keys(report.errors).length === 0 && !(this.rejectUnknown && report.unknown.length > 0);
    return report;
  }

  /**
   * Write the secrets of a ready payload below `root` (the guest's `/` at run time): each file
   * target with its mode and owner, global env targets into `run/tdxvm/secrets.env`, unit-scoped
   * ones into `run/tdxvm/env/<unit>.env` (tmpfs: secrets never reach a disk, and a verity root is
   * read-only). All files are written to temporaries first and renamed
   * only when every one was written, so a failure leaves no partial set behind.
   */
  async materializeRuntime(root: string, payload: unknown): Promise<{ files: string[] }> {
    const report = this.validatePayload(payload);
    if (!report.ready) {
      throw new TdxError("E_SECRET", `secret payload is not ready (${describePayloadReport(report)})`);
    }
    const clash = secretTargetClash(this.decls);
    if (clash) throw new TdxError("E_SECRET", `two secret targets collide: ${clash}; nothing was written`, { hint: "Fix the image's secret declarations: each target needs its own path or variable name." });
    const obj = payload as Record<string, unknown>;
    const writes = new Map<string, { data: Buffer; mode: number; owner: string }>();
    const envs = new Map<string, string[]>();
    for (const d of this.decls) {
      // Own properties only, as in validatePayload: `in` would see Object.prototype members, so an
      // absent optional secret named "toString" or "constructor" would be written from a function.
      if (!Object.prototype.hasOwnProperty.call(obj, d.name)) continue;
      const bytes = valueBytes(d.schema.kind, obj[d.name]);
      for (const t of d.targets) {
        if (t.kind === "file") writes.set(t.path, { data: bytes, mode: t.mode, owner: t.owner });
        else {
          const file = t.scope === "global" ? SECRETS_ENV_FILE : unitEnvFile(t.unit!);
          const problem = envValueProblem(bytes);
          if (problem) throw new TdxError("E_SECRET", `secret ${d.name} ${problem} and cannot go into an environment variable`, { hint: "Use a file target for secrets that are not plain UTF-8 text." });
          const list = envs.get(file) ?? [];
          list.push(`${t.name}=${systemdEnvQuote(bytes.toString("utf8"))}`);
          envs.set(file, list);
        }
      }
    }
    for (const [file, lines] of envs) writes.set(file, { data: Buffer.from(lines.sort().join("\n") + "\n"), mode: 0o400, owner: "root" });

    const staged: Staged[] = [];
    try {
      for (const [p, w] of [...writes].sort(([a], [b]) => (a < b ? -1 : 1))) {
        // Every directory on the way is checked to be a real directory inside the root, never a
        // symbolic link (which could lead out of it), and created when missing.
        const parts = p.split("/").filter(Boolean);
        const dirs = await directoriesInRoot(root, parts.slice(0, -1), true);
        const final = path.join(dirs.at(-1)?.path ?? root, parts.at(-1)!);
        // rename() cannot replace a directory; find out now, while nothing has been replaced yet.
        if ((await fs.lstat(final).catch(() => undefined))?.isDirectory()) {
          throw new TdxError("E_SECRET", `cannot write secrets below ${root}: the target ${p} is a directory`, { hint: "Remove the directory or point the secret's file target at another path." });
        }
        const { uid, gid } = await resolveOwner(root, w.owner);
        const tmp = `${final}.tdxvm-${randomBytes(6).toString("hex")}.tmp`;
        const fh = await fs.open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
        staged.push({ tmp, final, dirs });
        try {
          await fh.writeFile(w.data);
          // On the open file, not by name: the name could be swapped for a link in between.
          await fh.chown(uid, gid);
          await fh.chmod(w.mode);
          await fh.sync();
        } finally {
          await fh.close();
        }
      }
    } catch (e) {
      await Promise.all(staged.map((s) => fs.rm(s.tmp, { force: true })));
      if (e instanceof TdxError) throw e;
      throw new TdxError("E_SECRET", `could not write secrets below ${root}: ${(e as NodeJS.ErrnoException).code ?? "error"}`, { hint: "Check that the target directory is writable and owners exist in its /etc/passwd." });
    }
    await commit(root, staged);
    return { files: staged.map((s) => s.final) };
  }
}

/**
 * Rename every staged temporary into place. Staging has ruled out the foreseeable failures; if a
 * rename still fails (the target changed meanwhile), the remaining temporaries are removed so no
 * secret bytes linger, and the error says that the set is now partly replaced.
 */
async function commit(root: string, staged: ReadonlyArray<Staged>): Promise<void> {
  for (const [i, s] of staged.entries()) {
    try {
      // The directories must still be the ones checked while staging (no link swapped in since).
      for (const d of s.dirs) {
        const st = await fs.lstat(d.path);
        if (st.isSymbolicLink() || st.dev !== d.dev || st.ino !== d.ino) throw Object.assign(new Error("changed"), { code: "ECHANGED" });
      }
      await fs.rename(s.tmp, s.final);
    } catch (e) {
      await Promise.all(staged.slice(i).map((r) => fs.rm(r.tmp, { force: true })));
      throw new TdxError("E_SECRET", `could not move ${path.relative(root, s.final)} into place below ${root}: ${(e as NodeJS.ErrnoException).code ?? "error"} (${i} of ${staged.length} files were already replaced)`, {
        hint: "Check what changed at that path during delivery, then deliver the payload again.",
      });
    }
  }
}

function valueBytes(kind: "string" | "bytes" | "json", v: unknown): Buffer {
  if (kind === "string") return Buffer.from(v as string, "utf8");
  if (kind === "bytes") return Buffer.from(v as string, "base64");
  return Buffer.from(JSON.stringify(v), "utf8");
}

/**
 * Why systemd could not take `bytes` as an environment value, or undefined. NUL ends a C string;
 * load_env_file() refuses the whole file unless the value passes utf8_is_valid(), which rejects
 * malformed UTF-8, surrogates and the noncharacters U+FDD0..U+FDEF and U+xFFFE/U+xFFFF. Decoding
 * instead would silently replace such bytes with U+FFFD and deliver a different secret.
 */
function envValueProblem(bytes: Buffer): string | undefined {
  if (bytes.includes(0)) return "contains a NUL byte";
  if (!isUtf8(bytes)) return "is not valid UTF-8";
  for (const ch of bytes.toString("utf8")) {
    const c = ch.codePointAt(0) as number;
    if ((c >= 0xfdd0 && c <= 0xfdef) || (c & 0xfffe) === 0xfffe) return "contains a Unicode noncharacter (which systemd refuses)";
  }
  return undefined;
}

/**
 * Quote for systemd EnvironmentFile=: double quotes, a backslash before \ " $ and `. Newlines
 * stay raw: inside double quotes systemd keeps a raw newline but reads "\n" as a backslash and
 * an 'n' (unknown escapes keep their backslash), as its own env-file writer relies on.
 */
function systemdEnvQuote(v: string): string {
  return `"${v.replace(/[\\"$`]/g, (c) => `\\${c}`)}"`;
}

interface Staged { tmp: string; final: string; dirs: Array<{ path: string; dev: number; ino: number }> }

/**
 * The directories `root/parts[0]`, `root/parts[0]/parts[1]`, … each checked with lstat to be a
 * directory and not a symbolic link (a link could lead out of the root), created (0755) when
 * missing if `create`; undefined when one is missing and not `create`.
 */
async function directoriesInRoot(root: string, parts: ReadonlyArray<string>, create: true): Promise<Staged["dirs"]>;
async function directoriesInRoot(root: string, parts: ReadonlyArray<string>, create: boolean): Promise<Staged["dirs"] | undefined>;
async function directoriesInRoot(root: string, parts: ReadonlyArray<string>, create: boolean): Promise<Staged["dirs"] | undefined> {
  const out: Staged["dirs"] = [];
  let dir = root;
  for (const part of parts) {
    dir = path.join(dir, part);
    let st = await fs.lstat(dir).catch((e: NodeJS.ErrnoException) => (e.code === "ENOENT" ? undefined : Promise.reject(e)));
    if (!st) {
      if (!create) return undefined;
      await fs.mkdir(dir, { mode: 0o755 }).catch((e: NodeJS.ErrnoException) => (e.code === "EEXIST" ? undefined : Promise.reject(e)));
      st = await fs.lstat(dir);
    }
    if (st.isSymbolicLink()) throw new TdxError("E_SECRET", `cannot write secrets below ${root}: ${path.relative(root, dir)} is a symbolic link, which could lead out of the root`, { hint: "Secrets are only written through real directories; replace the link with a directory." });
    if (!st.isDirectory()) throw new TdxError("E_SECRET", `cannot write secrets below ${root}: ${path.relative(root, dir)} is not a directory`, { hint: "Remove the file or point the secret's target elsewhere." });
    out.push({ path: dir, dev: st.dev, ino: st.ino });
  }
  return out;
}

/** A file of the image's own (e.g. etc/passwd), read without following any link out of `root`; undefined when absent. */
async function readInRoot(root: string, rel: string): Promise<string | undefined> {
  const parts = rel.split("/");
  const dirs = await directoriesInRoot(root, parts.slice(0, -1), false);
  if (!dirs) return undefined;
  let fh;
  try {
    fh = await fs.open(path.join(dirs.at(-1)?.path ?? root, parts.at(-1)!), C.O_RDONLY | C.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return undefined;
    if (code === "ELOOP") throw new TdxError("E_SECRET", `cannot read ${rel} below ${root}: it is a symbolic link, which could lead out of the root`, { hint: "The image's user database must be a regular file." });
    throw e;
  }
  try {
    if (!(await fh.stat()).isFile()) return undefined;
    return await fh.readFile("utf8");
  } finally {
    await fh.close();
  }
}

async function resolveOwner(root: string, owner: string): Promise<{ uid: number; gid: number }> {
  const [user, group] = owner.split(":");
  const lookup = async (file: string, name: string): Promise<number> => {
    if (/^[0-9]+$/.test(name)) return Number(name);
    if (name === "root") return 0;
    const text = (await readInRoot(root, file)) ?? "";
    const line = text.split("\n").find((l) => l.split(":")[0] === name);
    if (!line) throw new TdxError("E_SECRET", `owner ${name} is not in ${path.join(root, file)}`, { hint: "Create the user in the image (e.g. a sysusers.d file) or use a numeric uid:gid." });
    return Number(line.split(":")[2]);
  };
  const uid = await lookup("etc/passwd", user);
  const gid = group === undefined ? (user === "root" || /^[0-9]+$/.test(user) ? uid : await lookup("etc/group", user)) : await lookup("etc/group", group);
  return { uid, gid };
}
