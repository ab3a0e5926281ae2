/**
 * Policy: rules a recipe owner sets so that a build cannot silently depend on moving
 * inputs or on the network. Every violation names the rule that blocked it.
 */
import { PolicyData, PolicyDataT, parseWith } from "../recipe/schema";
import { TdxError } from "../errors";
import { redactRef } from "../fetch";

export type PolicyRule = keyof PolicyDataT;

export const DEFAULT_POLICY: PolicyDataT = {
  requireFrozenLock: false,
  mutableRefPolicy: "warn",
  requireIntegrity: false,
  networkMode: "online",
};

export class Policy {
  readonly data: PolicyDataT;
  constructor(opts: Partial<PolicyDataT> = {}) {
    this.data = parseWith(PolicyData, { ...DEFAULT_POLICY, ...opts }, "policy");
  }
}

export function policyError(rule: PolicyRule, message: string, hint: string): TdxError {
  return new TdxError("E_POLICY", `policy rule ${rule} blocked this: ${message}`, { hint, details: { rule } });
}

/**
 * A reference is mutable when the bytes behind it can change without the reference changing:
 * an http(s) URL without integrity, or a URL that names a branch or tag rather than a commit.
 */
export function mutableReason(ref: string, integrity: string | undefined): string | undefined {
  if (!/^https?:\/\//i.test(ref)) return undefined; // local files are pinned by the lock's integrity
  const branchy = /\/(refs\/heads|refs\/tags|branch|branches|tags?)\/|[?&](ref|branch|tag)=(?![0-9a-f]{40}\b)|\/(latest|main|master|HEAD)(\/|$)/i;
  if (branchy.test(ref)) return `${redactRef(ref)} names a branch, tag or "latest" rather than a fixed version`;
  if (integrity === undefined) return `${redactRef(ref)} has no integrity, so its content can change under the same URL`;
  return undefined;
}

export interface PolicyWarning { rule: PolicyRule; message: string }

/** Check the source references of a recipe against the policy; returns warnings, throws on errors. */
export function checkSources(policy: PolicyDataT, sources: ReadonlyArray<{ ref: string; integrity?: string }>): PolicyWarning[] {
  const warnings: PolicyWarning[] = [];
  for (const s of sources) {
    const remote = /^https?:\/\//i.test(s.ref);
    if (policy.requireIntegrity && s.integrity === undefined) {
      throw policyError("requireIntegrity", `source ${redactRef(s.ref)} has no integrity`, `Add {integrity: "sha256-…"} to the file() call (the lock prints the value it saw).`);
    }
    if (remote && policy.networkMode === "offline" && s.integrity === undefined) {
      throw policyError("networkMode", `source ${redactRef(s.ref)} has no integrity, and offline mode can only serve content-addressed inputs from the cache`, "Pin the source with integrity and lock once online, or switch networkMode to online.");
    }
    const why = mutableReason(s.ref, s.integrity);
    if (why === undefined) continue;
    if (policy.mutableRefPolicy === "error") throw policyError("mutableRefPolicy", why, "Pin the URL to an immutable version and add integrity, or set mutableRefPolicy to warn.");
    if (policy.mutableRefPolicy === "warn") warnings.push({ rule: "mutableRefPolicy", message: why });
  }
  return warnings;
}
