/**
 * Files tdxvm builds for its modules. A recipe records each by name and sha256 (FileSource
 * "builtin"); compile regenerates the bytes from the installed tdxvm and refuses a mismatch, so an
 * image is always baked from exactly the agent its recipe (and lock) pinned.
 */
import { createHash } from "node:crypto";
import * as path from "node:path";
import { TdxError } from "../errors";
import type { BuiltinFile } from "../recipe/schema";

const cache = new Map<BuiltinFile, Buffer>();

/** The bytes of a builtin file as this tdxvm builds them (deterministic; computed once per process). */
export function builtinBytes(name: BuiltinFile): Buffer {
  let b = cache.get(name);
  if (!b) {
    if (name !== "tdxvm-agent") throw new TdxError("E_VALIDATION", `unknown builtin file ${JSON.stringify(name)}`);
    const { bundle } = require("./bundle") as typeof import("./bundle");
    b = bundle(path.join(__dirname, "..", "..", "agent", "main.ts"));
    cache.set(name, b);
  }
  return b;
}

export const sha256Hex = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** The bytes of `name`, which must hash to `sha256` (what the recipe pinned). */
export function builtinFile(name: BuiltinFile, sha256: string): Buffer {
  const b = builtinBytes(name);
  const got = sha256Hex(b);
  if (got !== sha256) {
    throw new TdxError("E_LOCKFILE", `the recipe pins ${name} with sha256 ${sha256}, but this tdxvm builds it as ${got}`, {
      hint: "The recipe was made by another tdxvm version than the one baking it: rebuild the recipe (and lock) with the installed tdxvm, review the new agent, and commit the lock.",
    });
  }
  return b;
}
