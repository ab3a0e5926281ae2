/**
 * Host-side attestation (docs/design.md §7): challenge a VM's agent, verify its platform-signed
 * evidence against the expected Measurements, and talk to it only over the attested TLS key.
 */
export * from "./evidence";
export { attest, attestUntil, assertAttested, pinnedRequest, deliverSecrets, probeAgent, parseEndpoint } from "./client";
export type { AttestOptions, Channel, Verdict } from "./client";
export { verifyEvidence } from "./verify";
export type { Check, RegisterVerdict, EvidenceVerdict, VerifyOptions, EvidenceInput } from "./verify";
export { makeCredential, kdfa, kdfe } from "./credential";
export type { Credential } from "./credential";
export { ensureLocalCa, localCaCertificate, localCaDir, swtpmEkCertSetup } from "./localca";
export { verifyDcap, loadCollateral, DEFAULT_ACCEPTED_TCB, TCB_STATUSES } from "./dcap";
export type { Collateral, DcapOptions, DcapResult } from "./dcap";
export { AZURE_VTPM_ROOT_CA_PEM } from "./issuers/azure";
export { parseTpm2bPublic, parseQuoteAttest, parseSignature, objectName, verifySignature, pcrSelectionDigest } from "./tpm2";
export { formatVerdict, readExpected } from "./cli";
