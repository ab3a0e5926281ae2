/** tdxvm library entry: recipe → lock → mkosi tree (→ bake → measure → deploy). */
export { TdxError, ERROR_CODES, isTdxError } from "./errors";
export type { ErrorCode } from "./errors";
export { Image, findOnPath } from "./recipe/image";
export type { ImageOptions, FileOptions, RunOptions, TdxModule, HostCommand } from "./recipe/image";
export { parseRecipe, PHASES, TARGETS } from "./recipe/schema";
export type { Recipe, Phase, Target } from "./recipe/schema";
export { canonicalCbor, digestOf } from "./recipe/digest";
export { resolveProfile, profileDigest, allProfileDigests } from "./recipe/resolve";
export { Policy } from "./lock/policy";
export { createLock, readLock, parseLock, writeLock, checkFrozen, stableJson } from "./lock";
export type { Lock } from "./lock";
export { ContentStore, fetchInput, parseSri } from "./fetch";
export { compile, treeDigest, shQuote } from "./compile";
export { writeTree } from "./compile/write";
export { SecretSchema, SecretTarget, SecretsDelivery } from "./secrets";
export { Init } from "./modules/init";
export { lockRecipe, emitRecipe, defaultCacheDir } from "./pipeline";
