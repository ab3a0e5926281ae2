/**
 * Dynamic provider: a name with a random suffix, drawn once when the resource is created and kept
 * in the stack's state — for cloud names that must be globally unique (Azure storage accounts:
 * 3–24 lowercase letters and digits, unique across all of Azure), without a provider plugin
 * (such as pulumi-random) that would have to be installed next to the Pulumi CLI. Every stack
 * gets its own name; the same stack keeps it across updates; a new prefix or length draws anew.
 */
import { randomInt } from "node:crypto";
import { z } from "zod";
import { TdxError } from "../errors";
import { declared, isUnknown, failureOf, CheckFailure, omit, pick, checkStart, requireInputs, guarded, guardedSync, parseState } from "./common";

export const UNIQUE_NAME_STATE_VERSION = 1;

const ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";
const DEFAULTS = { randomLength: 10, maxLength: 24 };

export const UniqueNameArgs = z.object({
  /** Lowercase letters and digits, starting with a letter. */
  prefix: z.string().regex(/^[a-z][a-z0-9]*$/, "lowercase letters and digits, starting with a letter"),
  /** Random characters after the prefix (≥ 8: 36^8 ≈ 2.8·10^12 names). */
  randomLength: z.number().int().min(8).max(32).default(DEFAULTS.randomLength),
  /** The longest name allowed (24 for storage accounts). */
  maxLength: z.number().int().min(3).max(63).default(DEFAULTS.maxLength),
}).loose();

const OUT = ["stateVersion", "name", "suffix"];

/** State as diff/update/read receive it: the name becomes a cloud resource's name, so it is checked. */
const UniqueNameState = z.object({
  prefix: z.string().regex(/^[a-z][a-z0-9]*$/).optional(),
  randomLength: z.number().int().min(8).max(32).optional(),
  maxLength: z.number().int().min(3).max(63).optional(),
  name: z.string().regex(/^[a-z][a-z0-9]{2,62}$/).optional(),
  suffix: z.string().regex(/^[a-z0-9]{8,32}$/).optional(),
}).loose();
const state = (o: Record<string, unknown>) => guardedSync(() => parseState(UniqueNameState, declared(o), "unique name")) as Record<string, unknown>;

/** `length` random characters from [a-z0-9] (crypto-random, unbiased). */
export function randomSuffix(length: number): string {
  let s = "";
  for (let i = 0; i < length; i++) s += ALPHABET[randomInt(ALPHABET.length)];
  return s;
}

export const uniqueNameProvider = {
  async check(_olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ inputs: Record<string, unknown>; failures?: CheckFailure[] }> {
    const start = checkStart(UniqueNameArgs, news, OUT);
    if (start.done) return start.done;
    const { inputs, value } = start;
    if (value.prefix.length + value.randomLength > value.maxLength) {
      return { inputs, failures: [failureOf(new TdxError("E_VALIDATION", `prefix (${value.prefix.length} characters) + ${value.randomLength} random ones exceed ${value.maxLength}`, { details: { property: "prefix" } }))] };
    }
    return { inputs };
  },
  async diff(_id: string, oldState: Record<string, unknown>, news: Record<string, unknown>) {
    const olds = state(oldState);
    // Key by key, defaults applied: the name changes only when what it is drawn from does.
    const value = (o: Record<string, unknown>, k: keyof typeof DEFAULTS | "prefix") => o[k] ?? (k === "prefix" ? undefined : DEFAULTS[k]);
    const replaces = (["prefix", "randomLength", "maxLength"] as const).filter((k) => isUnknown(news[k]) || value(olds, k) !== value(news, k));
    return { changes: replaces.length > 0, replaces, deleteBeforeReplace: false };
  },
  async create(inputs: Record<string, unknown>) {
    return guarded(async () => {
      const a = requireInputs(UniqueNameArgs, omit(declared(inputs), OUT));
      const suffix = randomSuffix(a.randomLength);
      const name = `${a.prefix}${suffix}`;
      return { id: name, outs: { ...omit(declared(inputs), OUT), stateVersion: UNIQUE_NAME_STATE_VERSION, name, suffix } };
    });
  },
  async update(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
    return { outs: { ...omit(declared(news), OUT), ...pick(state(olds), OUT) } };
  },
  async read(id: string, props: Record<string, unknown>) {
    return { id, props: state(props) };
  },
  async delete(): Promise<void> {
    // A name: nothing exists outside the state.
  },
};
