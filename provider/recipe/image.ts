/**
 * The recipe builder users write: `new Image({base: "debian/trixie"}).install(...).file(...)`.
 * Every call validates its arguments at once (E_VALIDATION names the call), and the whole
 * state is plain data (`img.recipe`) that JSON, the lock and the compiler consume.
 */
import * as path from "node:path";
import { TdxError, label } from "../errors";
import { findOnPath } from "../bake/sandbox";
import {
  Recipe, LayerData, Phase, Target, PHASES, TARGETS, parseRecipe, parseWith, FileEntry, RunStep, PackageName,
  ProfileName, Debloat, DebloatData, CmdlineWord, ROOTFS_MODES, RootFs, BUILTIN_FILES, BuiltinFile, secretTargetClash,
} from "./schema";
import { builtinBytes, sha256Hex } from "../modules/builtin";
import { z } from "zod";
import { Policy, DEFAULT_POLICY } from "../lock/policy";
import { declareSecret, SecretOptions } from "../secrets";
import { allProfileDigests, profileNames, DEFAULT_PROFILE } from "./resolve";
import type { Lock } from "../lock/schema";
import type { LockCallOptions, EmitOptions, EmitResult } from "../pipeline";
import type { BakeOptions, BakeResult } from "../bake";
import type { MeasureCallOptions } from "../measure/api";
import type { Measurements } from "../measure/ledger";

export interface ImageOptions {
  base: "debian/trixie";
  arch?: "x86-64";
  hostname?: string;
  /** How the root file system is measured: "verity" (default), "initrd" or "none" (unmeasured ext4). */
  rootfs?: RootFs;
  /** Directory that relative `src` paths and `build/` are resolved against (default: process.cwd()). */
  projectDir?: string;
}

export interface FileOptions {
  content?: string | Uint8Array;
  src?: string;
  /** A file tdxvm builds itself (for modules: "tdxvm-agent"); the recipe pins its sha256. */
  builtin?: BuiltinFile;
  integrity?: string;
  mode?: number;
  owner?: string;
}

export interface RunOptions { phase?: Phase }

export type HostCommand = string | { command: string; package?: string };

/** The module protocol: check the host, then declare (setup) and add content (install). */
export interface TdxModule {
  readonly name: string;
  readonly version?: string;
  requiredHostCommands?(): HostCommand[];
  setup?(img: Image): void;
  install?(img: Image): void;
}

export const DEFAULT_DEBLOAT: DebloatData = { enabled: false, pathsRemoveExtra: [], pathsSkip: [], systemdMinimize: false, unitsKeepExtra: [] };

const emptyLayer = (): LayerData => ({ packages: [], files: [], runs: [], cmdline: [] });

export class Image {
  private state: Recipe;
  private scope: string = DEFAULT_PROFILE;
  readonly projectDir: string;

  constructor(opts: ImageOptions) {
    const o = parseWith(
      z.object({ base: z.literal("debian/trixie"), arch: z.literal("x86-64").optional(), hostname: z.string().optional(), rootfs: z.enum(ROOTFS_MODES).optional(), projectDir: z.string().optional() }).strict(),
      opts, "Image options",
    );
    this.projectDir = path.resolve(o.projectDir ?? process.cwd());
    this.state = {
      schemaVersion: 1,
      base: o.base,
      arch: o.arch ?? "x86-64",
      hostname: o.hostname ?? "tdxvm",
      rootfs: o.rootfs ?? "verity",
      base_layer: emptyLayer(),
      profiles: {},
      outputTargets: ["qemu"],
      debloat: { ...DEFAULT_DEBLOAT },
      secrets: [],
      modules: [],
      policy: { ...DEFAULT_POLICY },
    };
    parseRecipe(this.state);
  }

  /** Build an Image from recipe data (e.g. a JSON file); validated as a whole. */
  static fromRecipe(data: unknown, projectDir?: string): Image {
    const recipe = parseRecipe(data);
    const img = new Image({ base: recipe.base, arch: recipe.arch, hostname: recipe.hostname, projectDir });
    img.state = recipe;
    return img;
  }

  /** The validated recipe data (a deep copy). */
  get recipe(): Recipe {
    return parseRecipe(structuredClone(this.state));
  }

  private layer(): LayerData {
    return this.scope === DEFAULT_PROFILE ? this.state.base_layer : this.state.profiles[this.scope];
  }

  install(...packages: string[]): this {
    const pkgs = packages.map((p, i) => parseWith(PackageName, p, `install() argument ${i + 1}`));
    const layer = this.layer();
    for (const p of pkgs) if (!layer.packages.includes(p)) layer.packages.push(p);
    return this;
  }

  file(p: string, opts: FileOptions): this {
    parseWith(z.object({}).loose(), opts, `file(${label(p)}) options`);
    const given = ["content", "src", "builtin"].filter((k) => (opts as Record<string, unknown>)?.[k] !== undefined);
    if (given.length !== 1) {
      throw new TdxError("E_VALIDATION", `file(${label(p)}) needs exactly one of content or src`, { hint: 'Use file("/etc/x", {content: "..."}) or file("/etc/x", {src: "./x"}).' });
    }
    if (opts.builtin !== undefined && !BUILTIN_FILES.includes(opts.builtin)) throw new TdxError("E_VALIDATION", `file(${label(p)}): unknown builtin ${label(opts.builtin)}`, { hint: `Builtins: ${BUILTIN_FILES.join(", ")}.` });
    if (opts.integrity !== undefined && opts.src === undefined) {
      throw new TdxError("E_VALIDATION", `file(${JSON.stringify(p)}): integrity applies to src only`, { hint: "Drop integrity for inline content; its digest is part of the recipe." });
    }
    const source = opts.builtin !== undefined
      ? { kind: "builtin" as const, name: opts.builtin, sha256: sha256Hex(builtinBytes(opts.builtin)) }
      : opts.content !== undefined
      ? typeof opts.content === "string"
        ? { kind: "inline" as const, encoding: "utf8" as const, data: opts.content }
        : { kind: "inline" as const, encoding: "base64" as const, data: Buffer.from(opts.content).toString("base64") }
      : { kind: "src" as const, ref: opts.src as string, ...(opts.integrity !== undefined ? { integrity: opts.integrity } : {}) };
    const entry = parseWith(FileEntry, { path: p, source, mode: opts.mode ?? 0o644, owner: opts.owner ?? "root" }, `file(${label(p)})`);
    const layer = this.layer();
    layer.files = layer.files.filter((f) => f.path !== entry.path);
    layer.files.push(entry);
    return this;
  }

  /** `run(cmd, ...args, {phase})`: the command is run with exactly these argv words, never through a shell. */
  run(cmd: string, ...rest: Array<string | RunOptions>): this {
    const last = rest[rest.length - 1];
    const opts: RunOptions = last !== null && typeof last === "object" ? (rest.pop() as RunOptions) : {};
    const phase = opts.phase ?? "postinst";
    if (!PHASES.includes(phase)) throw new TdxError("E_VALIDATION", `run(): unknown phase ${JSON.stringify(phase)}`, { hint: `Phases: ${PHASES.join(", ")}.` });
    const step = parseWith(RunStep, { phase, cmd, args: rest }, `run(${label(cmd)})`);
    this.layer().runs.push(step);
    return this;
  }

  /** Extra kernel command-line words (measured: they land in the UKI's .cmdline). */
  cmdline(...words: string[]): this {
    const layer = this.layer();
    layer.cmdline.push(...words.map((w, i) => parseWith(CmdlineWord, w, `cmdline() word ${i + 1}`)));
    return this;
  }

  /** Choose how the root file system is measured (see ImageOptions.rootfs). */
  rootFs(mode: RootFs): this {
    this.assertBase("rootFs");
    if (!ROOTFS_MODES.includes(mode)) throw new TdxError("E_VALIDATION", `unknown root file system mode ${label(mode)}`, { hint: `Modes: ${ROOTFS_MODES.join(", ")} ("verity" measures the whole root; "none" leaves it unmeasured).` });
    this.state.rootfs = mode;
    return this;
  }

  outputTargets(...targets: Target[]): this {
    this.assertBase("outputTargets");
    for (const t of targets) if (!TARGETS.includes(t)) throw new TdxError("E_VALIDATION", `unknown output target ${JSON.stringify(t)}`, { hint: `Targets: ${TARGETS.join(", ")}.` });
    if (targets.length === 0) throw new TdxError("E_VALIDATION", "outputTargets() needs at least one target", { hint: `Targets: ${TARGETS.join(", ")}.` });
    this.state.outputTargets = [...new Set(targets)];
    return this;
  }

  debloat(opts: Partial<DebloatData> = {}): this {
    this.assertBase("debloat");
    parseWith(z.object({}).loose(), opts, "debloat() options");
    this.state.debloat = parseWith(Debloat, { ...DEFAULT_DEBLOAT, enabled: true, ...opts }, "debloat() options");
    return this;
  }

  /** Run `fn` with this image scoped to profile `name`: its install/file/run/cmdline calls land in that profile only. */
  profile(name: string, fn: (img: this) => void): this {
    if (typeof fn !== "function") throw new TdxError("E_VALIDATION", "profile() needs a callback", { hint: 'profile("dev", (img) => img.install("strace"))' });
    if (this.scope !== DEFAULT_PROFILE) throw new TdxError("E_VALIDATION", `profile(${name}) inside profile(${this.scope})`, { hint: "Profiles do not nest; declare them side by side." });
    parseWith(ProfileName, name, "profile name");
    if (name === DEFAULT_PROFILE) throw new TdxError("E_VALIDATION", `profile name "default" is reserved for the base recipe`, { hint: "Pick another profile name." });
    this.state.profiles[name] ??= emptyLayer();
    this.scope = name;
    try {
      fn(this);
    } finally {
      this.scope = DEFAULT_PROFILE;
    }
    return this;
  }

  /** Every profile a bake produces: "default" (the base recipe) and each named profile. */
  allProfiles(): string[] {
    return profileNames(this.state);
  }

  secret(name: string, opts: SecretOptions): this {
    this.assertBase("secret");
    const decl = declareSecret(name, opts);
    if (this.state.secrets.some((s) => s.name === decl.name)) throw new TdxError("E_VALIDATION", `secret ${decl.name} is declared twice`, { hint: "Declare each secret once; give it several targets instead." });
    const clash = secretTargetClash([...this.state.secrets, decl]);
    if (clash) throw new TdxError("E_VALIDATION", `two secret targets collide: ${clash}`, { hint: "Give each secret target its own file path or variable name." });
    this.state.secrets.push(decl);
    return this;
  }

  use(...modules: TdxModule[]): this {
    this.assertBase("use");
    for (const m of modules) {
      if (!m || typeof m.name !== "string") throw new TdxError("E_VALIDATION", "use() got something that is not a module", { hint: "A module is {name, requiredHostCommands?(), setup?(img), install?(img)}." });
      for (const c of m.requiredHostCommands?.() ?? []) {
        const { command, package: pkg } = typeof c === "string" ? { command: c, package: undefined } : c;
        if (!findOnPath(command)) {
          throw new TdxError("E_VALIDATION", `module ${m.name} needs the host command "${command}", which is not on PATH`, {
            hint: `Install it on the build host${pkg ? ` (apt-get install ${pkg})` : ""} and run again.`,
            details: { module: m.name, command },
          });
        }
      }
    }
    for (const m of modules) m.setup?.(this);
    for (const m of modules) {
      m.install?.(this);
      this.state.modules.push({ name: m.name, ...(m.version ? { version: m.version } : {}) });
    }
    return this;
  }

  setPolicy(policy: Policy): this {
    if (!(policy instanceof Policy)) throw new TdxError("E_VALIDATION", "setPolicy() needs a Policy", { hint: "setPolicy(new Policy({requireFrozenLock: true}))" });
    this.state.policy = { ...policy.data };
    return this;
  }

  get policy(): Policy {
    return new Policy(this.state.policy);
  }

  /** `{profile: "sha256:…"}` for every profile. */
  digests(): Record<string, string> {
    return allProfileDigests(this.recipe);
  }

  /** Resolve sources and write tdx.lock beside the recipe (atomically); `refresh` drops the package pins. */
  async lock(opts: LockCallOptions = {}): Promise<Lock> {
    const { lockRecipe } = await import("../pipeline");
    return lockRecipe({ recipe: this.recipe, projectDir: this.projectDir }, opts);
  }

  /** Check policy and lock (frozen: the committed lock must match), compile, write the mkosi tree. */
  async emit(opts: EmitOptions = {}): Promise<EmitResult> {
    const { emitRecipe } = await import("../pipeline");
    return emitRecipe({ recipe: this.recipe, projectDir: this.projectDir }, opts);
  }

  /** Lock (or check the lock when frozen), emit, run mkosi 25 and convert per target; cached by content. */
  async bake(opts: BakeOptions = {}): Promise<BakeResult> {
    const { bake } = await import("../bake");
    return bake({ recipe: this.recipe, projectDir: this.projectDir }, opts);
  }

  /** Bake (cached) and compute the measurements a platform will report for this image. */
  async measure(opts: MeasureCallOptions & { bake?: BakeOptions }): Promise<Measurements> {
    const baked = await this.bake({ cacheDir: opts.cacheDir, ...opts.bake });
    const { measureBake } = await import("../measure/api");
    return measureBake(baked, opts);
  }

  private assertBase(call: string) {
    if (this.scope !== DEFAULT_PROFILE) throw new TdxError("E_VALIDATION", `${call}() applies to the whole image and cannot be called inside profile(${this.scope})`, { hint: `Call ${call}() outside the profile callback.` });
  }
}

