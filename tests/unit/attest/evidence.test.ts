/**
 * The agent ↔ verifier contract: the binding's bytes (vector computed with coreutils, not with this
 * code: `(printf 'tdxvm-attest-v1\0'; <nonce>; <spki>) | sha256sum` / sha512sum) and the schemas'
 * refusals of malformed or oversized evidence.
 */
import { attestBinding, parseEvidence, parseKeysResponse, parseAttestRequest, MAX_EVIDENCE_BYTES } from "../../../provider/attest/evidence";
import { tdxErrorOf } from "../../helpers";

const nonce = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
const spki = Buffer.alloc(32, 0xaa);

const good = () => ({
  evidenceVersion: 1,
  issuer: "tpm",
  nonce: nonce.toString("hex"),
  spkiSha256: spki.toString("hex"),
  tpm: { akPublic: "AAEC", quote: "/1RDR4AYAA==", signature: "ABgACw==", pcrs: { sha256: { "0": "00".repeat(32), "23": "ff".repeat(32) } } },
  eventLogs: { systemd: "" },
});

describe("attestBinding", () => {
  it("hashes label ‖ 0 ‖ nonce ‖ spkiSha256 with SHA-256 (TPM extraData) and SHA-512 (TDX REPORTDATA)", () => {
    expect(attestBinding("sha256", nonce, spki).toString("hex")).toBe("5254c982d509893e3f382194c854c68fa08e1a49980d75f1ac684e472c151cfb");
    expect(attestBinding("sha512", nonce, spki).toString("hex")).toBe(
      "e968cccde3527f84554a5925bea822cf76f6ab36a8ddbfbac2694cb0a8ba66b65651eaab58a38ae774b4c9f439e9ea7a75e47636a87bd4c2225c7dea10ccb0be",
    );
    expect(attestBinding("sha512", nonce, spki)).toHaveLength(64);
  });

  it("changes with every input byte", () => {
    const base = attestBinding("sha256", nonce, spki);
    const n2 = Buffer.from(nonce);
    n2[31] ^= 1;
    const s2 = Buffer.from(spki);
    s2[0] ^= 1;
    expect(attestBinding("sha256", n2, spki).equals(base)).toBe(false);
    expect(attestBinding("sha256", nonce, s2).equals(base)).toBe(false);
  });
});

describe("evidence schema", () => {
  it("accepts well-formed evidence and keeps its values", () => {
    const e = parseEvidence(good());
    expect(e.issuer).toBe("tpm");
    expect(e.tpm?.pcrs.sha256?.["23"]).toBe("ff".repeat(32));
  });

  const bad: Array<[string, (e: ReturnType<typeof good>) => unknown, RegExp]> = [
    ["another version", (e) => ({ ...e, evidenceVersion: 2 }), /evidenceVersion/],
    ["an unknown issuer", (e) => ({ ...e, issuer: "sev" }), /issuer/],
    ["a short nonce", (e) => ({ ...e, nonce: "00".repeat(15) }), /nonce: must be 16–64 bytes/],
    ["a long nonce", (e) => ({ ...e, nonce: "00".repeat(65) }), /nonce/],
    ["odd-length hex", (e) => ({ ...e, nonce: "0".repeat(33) }), /nonce: not an even-length hex/],
    ["a short spki hash", (e) => ({ ...e, spkiSha256: "00".repeat(31) }), /spkiSha256/],
    ["non-base64 quote", (e) => ({ ...e, tpm: { ...e.tpm, quote: "not base64!" } }), /tpm\.quote/],
    ["an oversized quote", (e) => ({ ...e, tpm: { ...e.tpm, quote: "A".repeat(16 * 1024) } }), /tpm\.quote/],
    ["a PCR index out of range", (e) => ({ ...e, tpm: { ...e.tpm, pcrs: { sha256: { "24": "00".repeat(32) } } } }), /tpm\.pcrs\.sha256/],
    ["a PCR of the wrong size", (e) => ({ ...e, tpm: { ...e.tpm, pcrs: { sha384: { "0": "00".repeat(32) } } } }), /tpm\.pcrs\.sha384\.0/],
    ["missing eventLogs", (e) => ({ ...e, eventLogs: undefined }), /eventLogs/],
    ["not an object", () => "evidence", /\(root\)/],
  ];
  for (const [what, mutate, message] of bad) {
    it(`refuses ${what} with E_ATTESTATION naming the field`, async () => {
      const e = await tdxErrorOf(() => parseEvidence(mutate(good())));
      expect(e.code).toBe("E_ATTESTATION");
      expect(e.message).toMatch(message);
      expect(e.details).toEqual({ check: "evidence-schema" });
    });
  }

  it("bounds the whole evidence: every part at its limit fits MAX_EVIDENCE_BYTES", () => {
    const big = { ...good(), eventLogs: { tcg: "A".repeat(8 * 1024 * 1024), ccel: "A".repeat(8 * 1024 * 1024), systemd: "x".repeat(8 * 1024 * 1024) } };
    expect(JSON.stringify(parseEvidence(big)).length).toBeLessThan(MAX_EVIDENCE_BYTES);
    const over = { ...good(), eventLogs: { tcg: "A".repeat(8 * 1024 * 1024 + 4) } };
    expect(() => parseEvidence(over)).toThrow(/eventLogs\.tcg/);
  });

  // Every encoded field has its own bound (KiB of base64 text): one character over it is refused, naming the field.
  const KiB = 1024;
  const over = (n: number) => "A".repeat(n + 4); // valid base64, 4 characters past the bound
  const bounded: Array<[string, number, (e: ReturnType<typeof good>, v: string) => unknown, RegExp]> = [
    ["tpm.akPublic", 8 * KiB, (e, v) => ({ ...e, tpm: { ...e.tpm, akPublic: v } }), /tpm\.akPublic/],
    ["tpm.ekPublic", 8 * KiB, (e, v) => ({ ...e, tpm: { ...e.tpm, ekPublic: v } }), /tpm\.ekPublic/],
    ["tpm.signature", 8 * KiB, (e, v) => ({ ...e, tpm: { ...e.tpm, signature: v } }), /tpm\.signature/],
    ["tpm.activatedSecret", 8 * KiB, (e, v) => ({ ...e, tpm: { ...e.tpm, activatedSecret: v } }), /tpm\.activatedSecret/],
    ["tpm.ekCertificate", 32 * KiB, (e, v) => ({ ...e, tpm: { ...e.tpm, ekCertificate: v } }), /tpm\.ekCertificate/],
    ["tpm.akCertificate", 32 * KiB, (e, v) => ({ ...e, tpm: { ...e.tpm, akCertificate: v } }), /tpm\.akCertificate/],
    ["tdx.quote", 256 * KiB, (e, v) => ({ ...e, tdx: { quote: v } }), /tdx\.quote/],
    ["azure.hclReport", 64 * KiB, (e, v) => ({ ...e, azure: { hclReport: v } }), /azure\.hclReport/],
    ["azure.tdQuote", 256 * KiB, (e, v) => ({ ...e, azure: { hclReport: "AAAA", tdQuote: v } }), /azure\.tdQuote/],
    ["eventLogs.ccel", 8 * KiB * KiB, (e, v) => ({ ...e, eventLogs: { ccel: v } }), /eventLogs\.ccel/],
    ["eventLogs.systemd", 8 * KiB * KiB, (e, v) => ({ ...e, eventLogs: { systemd: v } }), /eventLogs\.systemd/],
  ];
  it.each(bounded)("bounds %s: at its limit accepted, over it refused", async (_field, limit, put, message) => {
    expect(() => parseEvidence(put(good(), "A".repeat(limit)))).not.toThrow();
    const e = await tdxErrorOf(() => parseEvidence(put(good(), over(limit))));
    expect([e.code, e.details, e.message]).toEqual(["E_ATTESTATION", { check: "evidence-schema" }, expect.stringMatching(message)]);
  });

  it("bounds the keys answer and the credential of an attest request", async () => {
    expect((await tdxErrorOf(() => parseKeysResponse({ issuer: "tpm", tpm: { akPublic: "AAAA", ekCertificate: over(32 * KiB) } }))).message).toMatch(/tpm\.ekCertificate/);
    const req = (idObject: string) => parseAttestRequest({ nonce: nonce.toString("hex"), credential: { idObject, encSecret: "AAAA" } });
    expect(req("A".repeat(8 * KiB)).credential?.idObject).toHaveLength(8 * KiB);
    expect((await tdxErrorOf(() => req(over(8 * KiB)))).message).toMatch(/credential\.idObject/);
  });

  it("refuses a certificate that is not base64", async () => {
    const e = await tdxErrorOf(() => parseEvidence({ ...good(), tpm: { ...good().tpm, akCertificate: "MII*" } }));
    expect([e.details, e.message]).toEqual([{ check: "evidence-schema" }, expect.stringMatching(/tpm\.akCertificate/)]);
  });

  it("MAX_EVIDENCE_BYTES stays the sum of the bounds: under 25 MiB", () => {
    expect(MAX_EVIDENCE_BYTES).toBe(3 * 8 * KiB * KiB + 2 * 256 * KiB + 64 * KiB + 16 * 8 * KiB + 4 * 32 * KiB + 64 * KiB);
    expect(MAX_EVIDENCE_BYTES).toBeLessThan(25 * KiB * KiB);
  });

  it("parses the keys answer and the attest request", async () => {
    expect(parseKeysResponse({ issuer: "tdx" })).toEqual({ issuer: "tdx" });
    expect(parseAttestRequest({ nonce: nonce.toString("hex"), credential: { idObject: "AAA=", encSecret: "AAA=" } }).credential?.idObject).toBe("AAA=");
    expect((await tdxErrorOf(() => parseKeysResponse({ issuer: "tpm", tpm: {} }))).message).toMatch(/tpm\.akPublic/);
  });
});
