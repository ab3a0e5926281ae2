/**
 * What the agent proves and how (docs/design.md §7). The verifier's nonce and the SHA-256 of the
 * agent's TLS SubjectPublicKeyInfo are bound into what the platform signs: TDX REPORTDATA (64
 * bytes) = SHA-512(label ‖ 0 ‖ nonce ‖ spki), the TPM quote's qualifying data = SHA-256 of the same.
 * A relay that terminates TLS itself presents another key, so its evidence can never match.
 */
import { createHash } from "node:crypto";

export const ATTEST_LABEL = "tdxvm-attest-v1";
export const ISSUERS = ["tdx", "azure", "tpm", "simulator"] as const;
export type Issuer = (typeof ISSUERS)[number];

export function attestBinding(alg: "sha256" | "sha512", nonce: Buffer, spkiSha256: Buffer): Buffer {
  return createHash(alg).update(Buffer.from(ATTEST_LABEL, "utf8")).update(Buffer.from([0])).update(nonce).update(spkiSha256).digest();
}

/** tdxs (the quote socket applications use): report data = SHA-256(userData ‖ nonce), zero-padded to 64 bytes. */
export function tdxsReportData(userData: Buffer, nonce: Buffer): Buffer {
  return Buffer.concat([createHash("sha256").update(userData).update(nonce).digest(), Buffer.alloc(32)]);
}

export interface TpmEvidence {
  akPublic: string;
  ekPublic?: string;
  ekCertificate?: string;
  akCertificate?: string;
  quote: string;
  signature: string;
  pcrs: Record<string, Record<string, string>>;
  activatedSecret?: string;
}

export interface Evidence {
  evidenceVersion: 1;
  issuer: Issuer;
  nonce: string;
  spkiSha256: string;
  tpm?: TpmEvidence;
  tdx?: { quote: string };
  azure?: { hclReport: string; tdQuote?: string };
  eventLogs: { tcg?: string; ccel?: string; systemd?: string };
}
