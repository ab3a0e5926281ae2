/** tdxvm library entry: recipe → lock → mkosi tree (→ bake → measure → deploy). */
export { TdxError, ERROR_CODES, isTdxError } from "./errors";
export type { ErrorCode } from "./errors";
export { Image } from "./recipe/image";
export { findOnPath } from "./bake/sandbox";
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
export { newOwnerKey, ownerPublicKey, sealDelivery, openDelivery } from "./secrets/owner";
export type { SealedDelivery } from "./secrets/owner";
export { Init, withOwner, contractOwner } from "./modules/init";
export { Agent, AGENT_READY, AGENT_PORT } from "./modules/agent";
export type { AgentOptions, AgentIssuer } from "./modules/agent";
export { Tdxs } from "./modules/tdxs";
export type { TdxsOptions } from "./modules/tdxs";
export { BootReport, REPORT_DONE } from "./modules/bootReport";
export { lockRecipe, emitRecipe, defaultCacheDir } from "./pipeline";
export { bake, artifact, stubVersion } from "./bake";
export type { BakeOptions, BakeResult, Artifact } from "./bake";
export { devBoot, bootBakedDisk, parseGuestReport } from "./deploy/devboot";
// Rollouts across stacks (tdxvm rollout): the order logic with your own `up`, or the Automation API adapter.
export { rolloutStacks, rolloutTable, parseStacks, automationUp } from "./deploy/rollout";
export type { UpStack, StackOutcome, RolloutReport, RolloutRow } from "./deploy/rollout";
export { measureBake, measureArtifacts, measureBoot, verify, diffMeasurements, diffToMarkdown, measurementsToJson, measurementsToCbor } from "./measure";
export type { Measurements, RegisterValue, LedgerEvent, RegisterDiff, VerifyResult } from "./measure";
// The verifier loads on first use (its TLS client and evidence schemas cost ~0.1 s at start-up,
// which every recipe/bake/measure process would otherwise pay).
type Attest = typeof import("./attest");
const lazyAttest = (): Attest => require("./attest") as Attest;
export const attest: Attest["attest"] = (...a) => lazyAttest().attest(...a);
export const assertAttested: Attest["assertAttested"] = (...a) => lazyAttest().assertAttested(...a);
export const pinnedRequest: Attest["pinnedRequest"] = (...a) => lazyAttest().pinnedRequest(...a);
export const deliverSecrets: Attest["deliverSecrets"] = (...a) => lazyAttest().deliverSecrets(...a);
export const verifyEvidence: Attest["verifyEvidence"] = (...a) => lazyAttest().verifyEvidence(...a);
export const attestBinding: Attest["attestBinding"] = (...a) => lazyAttest().attestBinding(...a);
export const makeCredential: Attest["makeCredential"] = (...a) => lazyAttest().makeCredential(...a);
export const ensureLocalCa: Attest["ensureLocalCa"] = (...a) => lazyAttest().ensureLocalCa(...a);
export const localCaCertificate: Attest["localCaCertificate"] = (...a) => lazyAttest().localCaCertificate(...a);
export const verifyDcap: Attest["verifyDcap"] = (...a) => lazyAttest().verifyDcap(...a);
export type { Verdict, Channel, AttestOptions, Check, Evidence, VerifyOptions } from "./attest";
