/**
 * Evidence → verdict (docs/design.md §7). Pure over its inputs apart from fetching DCAP collateral
 * when asked to: the transport (./client.ts) supplies the nonce it sent, the key of the TLS
 * connection it saw, the credential secret it wrapped, and the agent's answers.
 *
 * Every issuer yields named checks ({check, ok, detail}) and per-register verdicts against the
 * expected Measurements; a verdict is ok only when every check and every register is — and a
 * register is ok only when it equals its pinned value or is waived by name (never "replayed, so
 * fine"). The checks
 * common to all issuers are here; each issuer's own are in ./issuers/<issuer>.ts, beside the
 * agent's half in agent/issuers/<issuer>.ts; what they share is ./issuers/common.ts.
 */
import type { Issuer } from "./evidence";
import { combinations } from "../measure/ledger";
import { applyWaivers, Checks, EvidenceInput, EvidenceVerdict, RegisterVerdict, VerifyOptions } from "./issuers/common";
import { verifyTpm } from "./issuers/tpm";
import { verifyAzure } from "./issuers/azure";
import { verifyTdx } from "./issuers/tdx";
import { verifySimulator } from "./issuers/simulator";

export type { Check, RegisterVerdict, EvidenceVerdict, VerifyOptions, EvidenceInput, Pin } from "./issuers/common";

const DEFAULT_ISSUERS: readonly Issuer[] = ["tpm", "tdx", "azure"];

const PCR_BACKENDS = new Set(["azure"]);

/**
 * Judge one piece of evidence. Never throws for bad evidence: every problem is a failed check.
 * With a measurement envelope (expected.alternatives), the evidence passes when it matches any one
 * listed combination; the verdict's `matched` names it, and a check "envelope" says so.
 */
export async function verifyEvidence(input: EvidenceInput, opts: VerifyOptions = {}): Promise<EvidenceVerdict> {
  if (!input.expected.alternatives?.length) return verifyOne(input, opts);
  const all = combinations(input.expected);
  let first: EvidenceVerdict | undefined;
  for (const c of all) {
    const v = await verifyOne({ ...input, expected: c.m }, opts);
    if (v.ok) return { ...v, matched: c.label, checks: [...v.checks, { check: "envelope", ok: true, detail: `matched host shape ${c.label} (one of ${all.length}: ${all.map((x) => x.label).join(", ")})` }] };
    first ??= v;
  }
  return { ...first!, checks: [...first!.checks, { check: "envelope", ok: false, detail: `no listed host shape matches (tried ${all.map((x) => x.label).join(", ")}); the rows above are for ${all[0]!.label}` }] };
}

async function verifyOne(input: EvidenceInput, opts: VerifyOptions): Promise<EvidenceVerdict> {
  const checks = new Checks();
  const issuer = input.evidence.issuer;
  const accepted = opts.issuers ?? DEFAULT_ISSUERS;
  let registers: RegisterVerdict[] = [];
  if (issuer === "simulator") {
    if (!opts.allowSimulator) checks.fail("issuer", "the agent offers simulator evidence, which no platform signed; refused (pass allowSimulator to accept it for development)");
    else {
      checks.pass("issuer", "SIMULATOR evidence accepted because allowSimulator is set: nothing below is platform-signed");
      registers = verifySimulator(input, checks);
    }
    return { ok: checks.list.every((c) => c.ok) && registers.every((r) => r.ok), issuer, checks: checks.list, registers };
  }
  if (!accepted.includes(issuer)) checks.fail("issuer", `issuer ${issuer} is not among the accepted ones (${accepted.join(", ")})`);
  else checks.pass("issuer", issuer === "tpm" ? "tpm: the dev VM's swtpm (not a TD: nothing is confidential)" : issuer);
  if (input.keys && input.keys.issuer !== issuer) checks.fail("issuer", `/v1/keys said ${input.keys.issuer}, the evidence says ${issuer}`);
  const wantsPcrs = issuer === "tpm" || issuer === "azure";
  if (wantsPcrs !== PCR_BACKENDS.has(input.expected.backend)) {
    checks.fail("expected-measurement", `the expected measurement is for the ${input.expected.backend} backend, which does not describe ${issuer} evidence (${wantsPcrs ? "vTPM PCRs: measure with backend \"azure\"" : "MRTD/RTMRs: measure with backend \"rtmr\" or \"gcp\""})`);
  }
  if (input.evidence.nonce.toLowerCase() !== input.nonce.toString("hex")) checks.fail("nonce", "the evidence answers another nonce");
  if (issuer === "tpm") registers = await verifyTpm(input, opts, checks);
  else if (issuer === "azure") registers = await verifyAzure(input, opts, checks);
  else registers = await verifyTdx(input, opts, checks);
  registers = applyWaivers(registers, opts.waive, checks);
  if (!registers.length && checks.list.every((c) => c.ok)) checks.fail("registers", "no register could be compared with the expected measurement");
  return { ok: checks.list.every((c) => c.ok) && registers.every((r) => r.ok), issuer, checks: checks.list, registers };
}
