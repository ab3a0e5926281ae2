/**
 * The contract between the guest agent and the host-side verifier (docs/design.md §7): the
 * binding of a verifier's nonce and the agent's TLS key into what the platform signs, the
 * agent's endpoints and the evidence it returns. Everything here is parsed with zod on the
 * verifier's side: the evidence comes from the network and is hostile until checked.
 *
 * - The agent serves HTTPS with an ECDSA P-256 key made at each boot; `spkiSha256` is SHA-256 of
 *   the DER SubjectPublicKeyInfo of that key.
 * - `attestBinding(alg, nonce, spkiSha256)` = H_alg("tdxvm-attest-v1" ‖ 0x00 ‖ nonce ‖ spkiSha256):
 *   the SHA-512 form is the TDX REPORTDATA (64 bytes), the SHA-256 form the TPM quote's
 *   qualifyingData (extraData).
 * - `GET /v1/health` → HealthResponse; `GET /v1/keys` → KeysResponse; `POST /v1/attest`
 *   AttestRequest → Evidence.
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import { TdxError, formatIssues } from "../errors";

export const ATTEST_LABEL = "tdxvm-attest-v1";
export const EVIDENCE_VERSION = 1;
export const ISSUERS = ["tpm", "tdx", "azure", "simulator"] as const;
export type Issuer = (typeof ISSUERS)[number];

/** Nonces are 32 random bytes; 16–64 are accepted. */
export const NONCE_MIN_BYTES = 16;
export const NONCE_MAX_BYTES = 64;
export const NONCE_BYTES = 32;

export function attestBinding(alg: "sha256" | "sha512", nonce: Buffer, spkiSha256: Buffer): Buffer {
  return createHash(alg).update(Buffer.from(ATTEST_LABEL, "utf8")).update(Buffer.from([0])).update(nonce).update(spkiSha256).digest();
}

// Size bounds (characters of the encoded string): generous for real evidence, small enough that
// a hostile agent cannot make the verifier parse or hash without end.
const KiB = 1024;
const MiB = 1024 * KiB;
const LIMITS = {
  tpmStructure: 8 * KiB, // TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE: a few hundred bytes each
  certificate: 32 * KiB,
  tdxQuote: 256 * KiB, // quote + QE report + PCK chain: ≈ 5–10 KiB
  hclReport: 64 * KiB, // the HCL report NV index: ≈ 2.6 KiB
  eventLog: 8 * MiB, // binary_bios_measurements / CCEL: tens of KiB in practice
} as const;

const b64 = (max: number) => z.base64().max(max);
const hexBytes = (min: number, max = min) =>
  z.string().max(2 * max).regex(/^(?:[0-9a-fA-F]{2})*$/, "not an even-length hex string").refine((s) => s.length >= 2 * min, { message: min === max ? `must be ${min} bytes of hex` : `must be ${min}–${max} bytes of hex` });

export const NonceHex = hexBytes(NONCE_MIN_BYTES, NONCE_MAX_BYTES);
export const IssuerSchema = z.enum(ISSUERS);

/** PCR index ("0"–"23") → register value of the bank's digest size. */
const pcrBank = (bytes: number) => z.record(z.string().regex(/^(?:[0-9]|1[0-9]|2[0-3])$/, "PCR index 0–23"), hexBytes(bytes));

export const TpmKeysSchema = z.object({
  akPublic: b64(LIMITS.tpmStructure),
  ekPublic: b64(LIMITS.tpmStructure).optional(),
  ekCertificate: b64(LIMITS.certificate).optional(),
  akCertificate: b64(LIMITS.certificate).optional(),
});

export const TpmEvidenceSchema = TpmKeysSchema.extend({
  /** TPMS_ATTEST as `tpm2_quote -m` writes it. */
  quote: b64(LIMITS.tpmStructure),
  /** TPMT_SIGNATURE as `tpm2_quote -s` writes it. */
  signature: b64(LIMITS.tpmStructure),
  pcrs: z.object({ sha256: pcrBank(32).optional(), sha384: pcrBank(48).optional() }),
  /** The secret TPM2_ActivateCredential recovered (dev VM). */
  activatedSecret: b64(LIMITS.tpmStructure).optional(),
});

export const EvidenceSchema = z.object({
  evidenceVersion: z.literal(EVIDENCE_VERSION),
  issuer: IssuerSchema,
  nonce: NonceHex,
  /** Informational: a verifier uses the key of the TLS connection it saw, never this field. */
  spkiSha256: hexBytes(32),
  tpm: TpmEvidenceSchema.optional(),
  tdx: z.object({ quote: b64(LIMITS.tdxQuote) }).optional(),
  azure: z.object({ hclReport: b64(LIMITS.hclReport), tdQuote: b64(LIMITS.tdxQuote).optional() }).optional(),
  eventLogs: z.object({
    tcg: b64(LIMITS.eventLog).optional(),
    ccel: b64(LIMITS.eventLog).optional(),
    /** systemd's tpm2-measure.log (JSON-SEQ text). */
    systemd: z.string().max(LIMITS.eventLog).optional(),
  }),
});

export const HealthResponseSchema = z.object({ status: z.literal("ok"), issuer: IssuerSchema, secrets: z.enum(["none", "pending", "complete"]).default("none") });
export const KeysResponseSchema = z.object({ issuer: IssuerSchema, tpm: TpmKeysSchema.optional() });
export const AttestRequestSchema = z.object({
  nonce: NonceHex,
  /** Marshalled TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET of TPM2_MakeCredential (size-prefixed). */
  credential: z.object({ idObject: b64(LIMITS.tpmStructure), encSecret: b64(LIMITS.tpmStructure) }).optional(),
});

export type TpmKeys = z.infer<typeof TpmKeysSchema>;
export type TpmEvidence = z.infer<typeof TpmEvidenceSchema>;
export type Evidence = z.infer<typeof EvidenceSchema>;
export type HealthResponse = z.infer<typeof HealthResponseSchema>;
export type KeysResponse = z.infer<typeof KeysResponseSchema>;
export type AttestRequest = z.infer<typeof AttestRequestSchema>;

/** Largest encoded evidence a verifier reads (every optional part at its bound, with slack). */
export const MAX_EVIDENCE_BYTES = 3 * LIMITS.eventLog + 2 * LIMITS.tdxQuote + LIMITS.hclReport + 16 * LIMITS.tpmStructure + 4 * LIMITS.certificate + 64 * KiB;

function parseWith<T>(schema: z.ZodType<T>, what: string, value: unknown): T {
  const r = schema.safeParse(value);
  if (!r.success) {
    throw new TdxError("E_ATTESTATION", `${what} is malformed: ${formatIssues(r.error.issues)}`, {
      hint: "The agent's answer does not follow the evidence contract (provider/attest/evidence.ts): check that the VM runs a tdxvm agent of this version and that nothing in between rewrites its answers.",
      details: { check: "evidence-schema" },
    });
  }
  return r.data;
}

export const parseEvidence = (value: unknown): Evidence => parseWith(EvidenceSchema, "the agent's evidence", value);
export const parseKeysResponse = (value: unknown): KeysResponse => parseWith(KeysResponseSchema, "the agent's /v1/keys answer", value);
export const parseHealthResponse = (value: unknown): HealthResponse => parseWith(HealthResponseSchema, "the agent's /v1/health answer", value);
export const parseAttestRequest = (value: unknown): AttestRequest => parseWith(AttestRequestSchema, "the /v1/attest request", value);
