/**
 * The recipe is plain data. Every way into it (the Image builder, JSON files, Pulumi inputs)
 * ends in `RecipeSchema.parse`, so the rest of the pipeline can trust its shape.
 */
import { z } from "zod";
import { TdxError, formatIssues } from "../errors";

export const PHASES = ["prepare", "build", "postinst", "finalize", "postoutput"] as const;
export type Phase = (typeof PHASES)[number];
export const TARGETS = ["qemu", "azure", "gcp"] as const;
export type Target = (typeof TARGETS)[number];
export const BASES = ["debian/trixie"] as const;
/**
 * How the root file system is brought under measurement (docs/design.md §4):
 * - verity: read-only erofs root + dm-verity hash partition; the root hash is on the UKI's kernel
 *   command line, so PCR 11/PCR 9/RTMR2 cover every byte of the root. /var is a tmpfs.
 * - initrd: the whole OS is the UKI's initrd (.initrd → PCR 9/11/RTMR2); the disk holds only an ESP.
 * - none: a writable ext4 root that no register covers (explicit opt-out).
 */
export const ROOTFS_MODES = ["verity", "initrd", "none"] as const;
export type RootFs = (typeof ROOTFS_MODES)[number];
export const ARCHES = ["x86-64"] as const;

const noNul = (s: string) => !s.includes("\0");
const noNewline = (s: string) => !/[\r\n]/.test(s);
/**
 * Values written into mkosi's config files must survive mkosi 25's reader (mkosi/config.py
 * parse_ini): it splits lines with Python's str.splitlines() (also \v \f \x1c–\x1e \x85 \u2028
 * \u2029), cuts each line at the first `#` (a comment anywhere on the line), strips values with
 * str.strip() (any Unicode whitespace) and splits list settings on their delimiter. So such values
 * hold no whitespace, no C0/C1 control character and no `#`; `%` is escaped by the compiler (`%%`).
 */
// eslint-disable-next-line no-control-regex -- the control characters are what is matched
export const MKOSI_UNSAFE = /[\s\x00-\x1f\x7f-\x9f#]/u;
const mkosiSafe = (s: string) => !MKOSI_UNSAFE.test(s);

/** Absolute, normalised path inside the image: no `..`, no `.` segments, no NUL, no empty segment. */
export const ImagePath = z
  .string()
  .min(2)
  .max(4096)
  .refine(noNul, "path contains a NUL byte")
  .refine((p) => p.startsWith("/"), "path must be absolute (start with /)")
  .refine((p) => !p.endsWith("/"), "path must name a file, not end with /")
  .refine((p) => p.split("/").slice(1).every((seg) => seg !== "" && seg !== "." && seg !== ".."), "path must not contain '', '.' or '..' segments (it would escape or alias the image root)")
  .refine(noNewline, "path contains a newline");

/** Debian package name, optionally with `=version` (Debian policy §5.6.1 and §5.6.12). */
export const PackageName = z
  .string()
  .regex(/^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$/, "not a Debian package name (lowercase letters, digits, + - .; optional =version)");

export const Owner = z
  .string()
  .regex(/^[a-z_][a-z0-9_-]{0,31}(:[a-z_][a-z0-9_-]{0,31})?$|^[0-9]{1,10}(:[0-9]{1,10})?$/, "owner must be user[:group] or uid[:gid]");

export const Mode = z.number().int().min(0).max(0o7777);

export const Integrity = z
  .string()
  .regex(/^(sha256|sha384|sha512)-[A-Za-z0-9+/]+={0,2}$/, "integrity must be SRI form: sha256-|sha384-|sha512- followed by base64");

/** Files tdxvm itself generates for its modules (e.g. the agent bundle), pinned by their digest. */
export const BUILTIN_FILES = ["tdxvm-agent"] as const;
export type BuiltinFile = (typeof BUILTIN_FILES)[number];

/**
 * A file's bytes: inline (utf8 or base64), from a source (file path or http(s)/file URL), or
 * built by tdxvm (`builtin`: the recipe records the name and sha256; compile regenerates the bytes
 * and refuses any that differ, so a recipe stays small and its digest still pins the content).
 */
export const FileSource = z.discriminatedUnion("kind", [
  z.object({ kind: z.literal("inline"), encoding: z.enum(["utf8", "base64"]), data: z.string().max(64 * 1024 * 1024) }).strict(),
  z.object({ kind: z.literal("src"), ref: z.string().min(1).max(8192).refine(noNul, "source contains a NUL byte"), integrity: Integrity.optional() }).strict(),
  z.object({ kind: z.literal("builtin"), name: z.enum(BUILTIN_FILES), sha256: z.string().regex(/^[0-9a-f]{64}$/) }).strict(),
]);

export const FileEntry = z.object({ path: ImagePath, source: FileSource, mode: Mode, owner: Owner }).strict();

export const Arg = z.string().max(65536).refine(noNul, "argument contains a NUL byte (cannot be passed to a process)");
export const RunStep = z.object({ phase: z.enum(PHASES), cmd: Arg.pipe(z.string().min(1)), args: z.array(Arg).max(4096) }).strict();

/** A kernel command-line word: it goes into mkosi.conf's KernelCommandLine= (see MKOSI_UNSAFE). */
export const CmdlineWord = Arg.pipe(z.string().regex(/^[^\s"']+$/, "kernel command-line words have no spaces or quotes").refine(mkosiSafe, "kernel command-line words go into mkosi.conf: no control characters, line breaks or '#'"));

/** A path for mkosi's RemoveFiles= (a comma-separated list in mkosi.conf): see MKOSI_UNSAFE. */
const DebloatPath = ImagePath.refine((p) => mkosiSafe(p) && !p.includes(","), "debloat paths go into mkosi's RemoveFiles= list: no whitespace, control characters, ',' or '#'");

const UnitName = z.string().regex(/^[A-Za-z0-9:_.@\\-]+\.(service|socket|timer|target|path|mount|automount|swap|slice|scope|device)$/, "not a systemd unit name");

export const Debloat = z
  .object({
    enabled: z.boolean(),
    pathsRemoveExtra: z.array(DebloatPath),
    pathsSkip: z.array(DebloatPath),
    systemdMinimize: z.boolean(),
    unitsKeepExtra: z.array(UnitName),
  })
  .strict();

export const SecretName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/, "secret names are identifiers: letters, digits, _ (max 64)");
export const EnvName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, "not an environment variable name");

export const SecretSchemaData = z
  .object({
    kind: z.enum(["string", "bytes", "json"]),
    minLength: z.number().int().min(0).optional(),
    maxLength: z.number().int().min(0).optional(),
    pattern: z.string().max(1024).optional(),
  })
  .strict()
  .refine((s) => s.minLength === undefined || s.maxLength === undefined || s.minLength <= s.maxLength, "minLength > maxLength")
  .refine((s) => {
    if (s.pattern === undefined) return true;
    try { new RegExp(s.pattern, "u"); return true; } catch { return false; }
  }, "pattern is not a valid regular expression");

export const SecretTargetData = z.discriminatedUnion("kind", [
  z.object({ kind: z.literal("file"), path: ImagePath, mode: Mode, owner: Owner }).strict(),
  z.object({ kind: z.literal("env"), name: EnvName, scope: z.enum(["global", "unit"]), unit: UnitName.optional() }).strict(),
]);

export const SecretDecl = z
  .object({ name: SecretName, required: z.boolean(), schema: SecretSchemaData, targets: z.array(SecretTargetData).min(1) })
  .strict();

export const PolicyData = z
  .object({
    requireFrozenLock: z.boolean(),
    mutableRefPolicy: z.enum(["error", "warn", "allow"]),
    requireIntegrity: z.boolean(),
    networkMode: z.enum(["online", "offline"]),
  })
  .strict();

export const ProfileName = z.string().regex(/^[a-z][a-z0-9-]{0,31}$/, "profile names: lowercase letters, digits and -, starting with a letter");

/** What a profile adds on top of the base recipe. */
export const Layer = z
  .object({
    packages: z.array(PackageName),
    files: z.array(FileEntry),
    runs: z.array(RunStep),
    cmdline: z.array(CmdlineWord),
  })
  .strict();

export const ModuleRef = z.object({ name: z.string().min(1).max(128), version: z.string().max(64).optional() }).strict();

export const RecipeSchema = z
  .object({
    schemaVersion: z.literal(1),
    base: z.enum(BASES),
    arch: z.enum(ARCHES),
    hostname: z.string().regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, "hostname: lowercase letters, digits, -"),
    /** Recipes written before the choice existed get the secure default. */
    rootfs: z.enum(ROOTFS_MODES).default("verity"),
    base_layer: Layer,
    profiles: z.record(ProfileName, Layer),
    outputTargets: z.array(z.enum(TARGETS)).min(1),
    debloat: Debloat,
    secrets: z.array(SecretDecl),
    modules: z.array(ModuleRef),
    policy: PolicyData,
  })
  .strict();

export type Recipe = z.infer<typeof RecipeSchema>;
export type LayerData = z.infer<typeof Layer>;
export type FileEntryData = z.infer<typeof FileEntry>;
export type RunStepData = z.infer<typeof RunStep>;
export type DebloatData = z.infer<typeof Debloat>;
export type SecretDeclData = z.infer<typeof SecretDecl>;
export type SecretSchemaDataT = z.infer<typeof SecretSchemaData>;
export type SecretTargetDataT = z.infer<typeof SecretTargetData>;
export type PolicyDataT = z.infer<typeof PolicyData>;

/** Parse with a schema; any failure becomes E_VALIDATION naming the field. */
export function parseWith<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const r = schema.safeParse(value);
  if (!r.success) {
    throw new TdxError("E_VALIDATION", `invalid ${what}: ${formatIssues(r.error.issues)}`, {
      hint: `Fix the ${what} field named above; see the recipe reference in README.md.`,
    });
  }
  return r.data;
}

/** Where env targets land at run time (the Init module's EnvironmentFile= drop-ins read them). */
export const SECRETS_ENV_FILE = "/run/tdxvm/secrets.env";
export const unitEnvFile = (unit: string) => `/run/tdxvm/env/${unit}.env`;

/**
 * The first run-time target two secret targets share, described for a message (names, never
 * values): the same file path, a file target on an env file, or one variable name twice in one
 * env file. A second write would silently replace the first.
 */
export function secretTargetClash(decls: ReadonlyArray<SecretDeclData>): string | undefined {
  const files = new Map<string, string>(); // path → secret writing it (file targets and env files)
  const vars = new Map<string, string>(); // env file + variable → secret
  const claim = (map: Map<string, string>, key: string, what: string, name: string, shared: boolean) => {
    const other = map.get(key);
    if (other !== undefined && !(shared && other.startsWith("\0"))) return `${what} is a target of secret ${other.replace(/^\0/, "")} and of secret ${name}`;
    if (other === undefined) map.set(key, shared ? `\0${name}` : name);
    return undefined;
  };
  for (const d of decls) {
    for (const t of d.targets) {
      // Env files are shared by every env target (one line each); a file target may not be one.
      const clash = t.kind === "file"
        ? claim(files, t.path, t.path, d.name, false)
        : claim(files, envFileOf(t), envFileOf(t), d.name, true) ?? claim(vars, `${envFileOf(t)}\0${t.name}`, `variable ${t.name} in ${envFileOf(t)}`, d.name, false);
      if (clash) return clash;
    }
  }
  return undefined;
}

function envFileOf(t: { scope: "global" | "unit"; unit?: string }): string {
  return t.scope === "global" ? SECRETS_ENV_FILE : unitEnvFile(t.unit!);
}

export function parseRecipe(value: unknown): Recipe {
  const r = parseWith(RecipeSchema, value, "recipe");
  // Cross-field rules zod cannot express per field.
  for (const [where, layer] of [["base", r.base_layer] as const, ...Object.entries(r.profiles)]) {
    const seen = new Set<string>();
    for (const f of layer.files) {
      if (seen.has(f.path)) throw new TdxError("E_VALIDATION", `file ${f.path} appears twice in ${where === "base" ? "the base recipe" : `profile ${where}`}`, { hint: "Each path may be written once per layer; a profile may override a base file." });
      seen.add(f.path);
    }
  }
  const names = new Set<string>();
  for (const s of r.secrets) {
    if (names.has(s.name)) throw new TdxError("E_VALIDATION", `secret ${s.name} is declared twice`, { hint: "Declare each secret once; give it several targets instead." });
    names.add(s.name);
  }
  const clash = secretTargetClash(r.secrets);
  if (clash) throw new TdxError("E_VALIDATION", `two secret targets collide: ${clash}`, { hint: "Give each secret target its own file path or variable name." });
  if ("default" in r.profiles) throw new TdxError("E_VALIDATION", `profile name "default" is reserved for the base recipe`, { hint: "Pick another profile name." });
  return r;
}
