/**
 * Shared plumbing of tdxvm's dynamic providers (docs/design.md §5): unknown values, check failures,
 * errors that keep their code and hint across the gRPC boundary, logging to stderr.
 */
import * as path from "node:path";
import { z } from "zod";
import { TdxError, formatIssues } from "../errors";

/** How the engine sends a value that is not known yet (preview). */
export const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

export function isUnknown(v: unknown): boolean {
  if (v === UNKNOWN) return true;
  if (Array.isArray(v)) return v.some(isUnknown);
  if (v && typeof v === "object") return Object.values(v).some(isUnknown);
  return false;
}

/** Inputs without the serialized provider (never part of a comparison). */
export function declared(inputs: Record<string, unknown>): Record<string, unknown> {
  const { __provider: _p, ...rest } = inputs;
  void _p;
  return rest;
}

/** `o` without `keys` (a provider's inputs without the fields it computes). */
export function omit(o: Record<string, unknown>, keys: ReadonlyArray<string>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).filter(([k]) => !keys.includes(k)));
}

/** The `keys` of `o` that are set (a provider's computed fields, to carry over). */
export function pick(o: Record<string, unknown>, keys: ReadonlyArray<string>): Record<string, unknown> {
  return Object.fromEntries(keys.filter((k) => o[k] !== undefined).map((k) => [k, o[k]]));
}

/**
 * A check failure. `property` is always empty: the engine prints `inputs[property]` verbatim next
 * to a failure that names one (pulumi/pulumi pkg/resource/deploy/step_generator.go,
 * issueCheckFailures, diagnostic 2003 "… property '%v' value %v has a problem: %v"), secret inputs
 * included. The input concerned is named in the reason instead.
 */
export interface CheckFailure { property: ""; reason: string }

/** A check failure for a TdxError (code and hint stay visible in `pulumi preview`); `input` is named in the reason. */
export function failureOf(e: unknown, input = ""): CheckFailure {
  if (e instanceof TdxError) {
    const about = String(e.details?.property ?? input);
    return { property: "", reason: `${e.code}: ${e.message}${about ? ` (input ${about})` : ""} (hint: ${e.hint})` };
  }
  throw e;
}

export function parseInputs<T>(schema: z.ZodType<T>, inputs: unknown): { ok: true; value: T } | { ok: false; failures: CheckFailure[] } {
  const r = schema.safeParse(inputs);
  if (r.success) return { ok: true, value: r.data };
  // formatIssues names the path (never the value); no property, see CheckFailure.
  return { ok: false, failures: r.error.issues.map((i) => ({ property: "", reason: `E_VALIDATION: ${formatIssues([i])}` })) };
}

/**
 * What the engine hands back from state (`olds`, `props`), validated: state can be edited, come
 * from another version or be hostile, so a provider reads it only through a schema. Fails with
 * E_VALIDATION naming the fields (never their values).
 */
export function parseState<T>(schema: z.ZodType<T>, value: unknown, resource: string): T {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  throw new TdxError("E_VALIDATION", `the ${resource} state is malformed: ${formatIssues(r.error.issues)}`, {
    hint: "The state was edited or written by an incompatible version: `pulumi refresh`, or remove the resource from the state (`pulumi state delete <urn>`) and deploy again.",
  });
}

/** Validated inputs for create/update (check already reported failures; this is the backstop). */
export function requireInputs<T>(schema: z.ZodType<T>, inputs: unknown): T {
  const p = parseInputs(schema, inputs);
  if (!p.ok) throw new TdxError("E_VALIDATION", p.failures.map((f) => f.reason.replace(/^E_VALIDATION: /, "")).join("; "));
  return p.value;
}

export type CheckStart<T> = { done: { inputs: Record<string, unknown>; failures?: CheckFailure[] } } | { done?: undefined; inputs: Record<string, unknown>; value: T };

/**
 * The start of every provider's check: drop the fields the provider computes, pass inputs with
 * unknown values through untouched (preview: nothing to compute yet), validate the rest.
 */
export function checkStart<T>(schema: z.ZodType<T>, news: Record<string, unknown>, computed: ReadonlyArray<string>): CheckStart<T> {
  const inputs = omit(news, computed);
  if (isUnknown(declared(inputs))) return { done: { inputs } };
  const p = parseInputs(schema, declared(inputs));
  return p.ok ? { inputs, value: p.value } : { done: { inputs, failures: p.failures } };
}

/**
 * Errors from create/update/delete reach the user as a plain message (the host keeps only
 * `message`): fold the code and the hint into it.
 */
export function userError(e: unknown): Error {
  if (e instanceof TdxError) {
    const err = new Error(`${e.code}: ${e.message}\n  hint: ${e.hint}`);
    (err as Error & { code?: string }).code = e.code;
    return err;
  }
  return e instanceof Error ? e : new Error(String(e));
}

export function guardedSync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw userError(e);
  }
}

export async function guarded<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw userError(e);
  }
}

/**
 * An optional peer dependency (needed by one target only), loaded when first used: from where
 * tdxvm is installed, so the Pulumi project's node_modules. Missing → E_DEPLOYMENT naming the
 * `npm install` (the version range is tdxvm's peerDependencies entry).
 */
export function requireOptional<T>(name: string, why: string): T {
  try {
    return require(name) as T;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "MODULE_NOT_FOUND" || !String((e as Error).message).includes(`'${name}'`)) throw e;
    const range = (require("../../package.json") as { peerDependencies?: Record<string, string> }).peerDependencies?.[name];
    throw new TdxError("E_DEPLOYMENT", `${name} is not installed where Pulumi runs tdxvm's providers (${process.cwd()}); ${why}`, {
      hint: `Install it in the Pulumi project: \`npm install ${range ? `${name}@${range}` : name}\` (an optional peer dependency of tdxvm, needed only for this target).`,
    });
  }
}

/** Progress for long provider work: the engine shows a plugin's stderr (pulumi.log is not wired in providers). */
export function log(resource: string, msg: string): void {
  if (process.env.TDXVM_PROVIDER_QUIET === "1") return;
  console.error(`tdxvm: [${resource}] ${msg}`);
}

/** Paths are stored relative to the provider host's cwd (the directory of the program's main file, like the program's own) when they lie below it, so state moves between machines. */
export function storePath(p: string): string {
  const rel = path.relative(process.cwd(), p);
  return rel && !rel.startsWith("..") && !path.isAbsolute(rel) ? rel : p;
}

export function loadPath(p: string): string {
  return path.resolve(process.cwd(), p);
}

/** Run `fn` with a deadline: the engine has none for dynamic providers (docs/design.md §5). */
export async function withTimeout<T>(ms: number, what: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      ac.abort();
      reject(new TdxError("E_DEPLOYMENT", `${what} did not finish within ${Math.round(ms / 1000)} s`, { hint: "Raise the resource's timeout option, or look at the logs named above." }));
    }, ms);
    timer.unref?.();
  });
  try {
    return await Promise.race([fn(ac.signal), deadline]);
  } finally {
    if (timer) clearTimeout(timer);
  }
}
