/**
 * What the agent proves and how (docs/design.md §7): the contract is shared with the verifier
 * (provider/attest/evidence.ts) — the verifier's nonce and the SHA-256 of the agent's TLS
 * SubjectPublicKeyInfo are bound into what the platform signs (TDX REPORTDATA = the SHA-512 form,
 * the TPM quote's qualifying data = the SHA-256 form). A relay that terminates TLS itself presents
 * another key, so its evidence can never match.
 */
import { createHash } from "node:crypto";

export { attestBinding, ISSUERS, ATTEST_LABEL } from "../provider/attest/evidence";
export type { Issuer, Evidence, TpmEvidence } from "../provider/attest/evidence";

/** tdxs (the quote socket applications use): report data = SHA-256(userData ‖ nonce), zero-padded to 64 bytes. */
export function tdxsReportData(userData: Buffer, nonce: Buffer): Buffer {
  return Buffer.concat([createHash("sha256").update(userData).update(nonce).digest(), Buffer.alloc(32)]);
}
