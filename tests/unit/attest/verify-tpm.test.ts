/**
 * The dev-VM (tpm) verifier on real evidence: fixtures/tpm is one swtpm manufactured with an EK
 * certificate from a local CA, an AK under its EK that activated a credential made by
 * makeCredential, and a quote over PCR 0–15 whose qualifying data is the binding of nonce 0..31
 * and TLS key hash 0xaa×32 (fixtures/make-tpm.ts). Each negative changes one thing.
 */
import { createHash } from "node:crypto";
import { verifyEvidence, EvidenceInput } from "../../../provider/attest/verify";
import type { Evidence, KeysResponse } from "../../../provider/attest/evidence";
import type { Measurements } from "../../../provider/measure";
import { fx, fxText, pcrValues } from "./fixtures";

const nonce = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
const spki = Buffer.alloc(32, 0xaa);
const secret = fx("tpm/activated.bin");
const b64 = (name: string) => fx(name).toString("base64");
const pcr4 = createHash("sha256").update(Buffer.concat([Buffer.alloc(32), createHash("sha256").update("tdxvm test").digest()])).digest("hex");

const keys = (): KeysResponse => ({ issuer: "tpm", tpm: { akPublic: b64("tpm/ak-ecc.pub"), ekPublic: b64("tpm/ek-rsa.pub"), ekCertificate: b64("tpm/ek-rsa.der") } });
const evidence = (): Evidence => ({
  evidenceVersion: 1, issuer: "tpm", nonce: nonce.toString("hex"), spkiSha256: spki.toString("hex"),
  tpm: { ...keys().tpm!, quote: b64("tpm/quote-ecdsa.msg"), signature: b64("tpm/quote-ecdsa.sig"), pcrs: { sha256: pcrValues(fx("tpm/quote-ecdsa.pcrs"), Array.from({ length: 16 }, (_, i) => i)) }, activatedSecret: secret.toString("base64") },
  eventLogs: {},
});
/** What a dev VM's prediction looks like for this TPM (no boot: only PCR 4 was extended). */
const expected = (pcr4Value = pcr4): Measurements => ({
  measurementsVersion: 1, backend: "azure", inputs: {},
  registers: {
    PCR4: { alg: "sha256", value: pcr4Value, status: "exact", events: [] },
    PCR8: { alg: "sha256", value: "00".repeat(32), status: "zero", events: [] },
    PCR0: { alg: "sha256", value: null, status: "platform-defined", why: "firmware", events: [] },
  },
});
const input = (over: Partial<EvidenceInput> = {}): EvidenceInput => ({ evidence: evidence(), keys: keys(), nonce, channelSpkiSha256: spki, credentialSecret: secret, expected: expected(), ...over });
const opts = { localCaPem: fxText("tpm/ca.pem") };
const flip = (b64s: string, at: number) => {
  const b = Buffer.from(b64s, "base64");
  b[at < 0 ? b.length + at : at] ^= 1;
  return b.toString("base64");
};
const failed = (v: { checks: Array<{ check: string; ok: boolean; detail: string }> }) => v.checks.filter((c) => !c.ok).map((c) => c.check);

describe("tpm issuer (dev VM)", () => {
  it("accepts the real evidence: every check passes and PCR 4 matches the prediction", async () => {
    const v = await verifyEvidence(input(), opts);
    expect(failed(v)).toEqual([]);
    expect(v.checks.map((c) => c.check)).toEqual(["issuer", "ek-certificate", "credential-activation", "ak-attributes", "quote-structure", "quote-signature", "channel-binding", "pcr-digest"]);
    expect(v.registers).toEqual([
      expect.objectContaining({ register: "PCR4", status: "exact", expected: pcr4, reported: pcr4, ok: true }),
      expect.objectContaining({ register: "PCR8", status: "zero", reported: "00".repeat(32), ok: true }),
      expect.objectContaining({ register: "PCR0", status: "platform-defined", reported: "00".repeat(32), ok: true, note: expect.stringMatching(/no log records it/) }),
    ]);
    expect(v.ok).toBe(true);
  });

  const cases: Array<[string, () => EvidenceInput, string[]]> = [
    ["another nonce", () => input({ nonce: Buffer.alloc(32, 1) }), ["nonce", "channel-binding"]],
    ["another TLS key (a relay)", () => input({ channelSpkiSha256: Buffer.alloc(32, 0xbb) }), ["channel-binding"]],
    ["a flipped byte in the quote", () => { const i = input(); i.evidence.tpm!.quote = flip(i.evidence.tpm!.quote, 80); return i; }, ["quote-signature"]], // clockInfo
    ["a flipped byte in the signature", () => { const i = input(); i.evidence.tpm!.signature = flip(i.evidence.tpm!.signature, -3); return i; }, ["quote-signature"]],
    ["a flipped byte in the AK public key", () => { const i = input(); const ak = flip(i.keys!.tpm!.akPublic, -2); i.keys!.tpm!.akPublic = ak; i.evidence.tpm!.akPublic = ak; return i; }, ["ak-public"]], // its point leaves the curve
    ["an AK that differs from /v1/keys", () => { const i = input(); i.evidence.tpm!.akPublic = b64("tpm/ak-rsassa.pub"); return i; }, ["key-consistency"]],
    ["a flipped byte in the EK certificate", () => { const i = input(); i.keys!.tpm!.ekCertificate = flip(i.keys!.tpm!.ekCertificate!, -10); return i; }, ["ek-certificate"]],
    ["an EK certificate for another EK", () => { const i = input(); const other = b64("tpm/ek-ecc.pub"); i.keys!.tpm!.ekPublic = other; i.evidence.tpm!.ekPublic = other; return i; }, ["ek-certificate"]],
    ["a wrong activated secret", () => { const i = input(); i.evidence.tpm!.activatedSecret = Buffer.from("another secret").toString("base64"); return i; }, ["credential-activation"]],
    ["no activated secret", () => { const i = input(); delete i.evidence.tpm!.activatedSecret; return i; }, ["credential-activation"]],
    ["PCR values that do not match the signed digest", () => { const i = input(); i.evidence.tpm!.pcrs.sha256!["4"] = "11".repeat(32); return i; }, ["pcr-digest"]],
    ["a PCR the quote does not cover", () => { const i = input(); delete i.evidence.tpm!.pcrs.sha256!["9"]; return i; }, ["pcr-digest"]],
    ["simulator evidence", () => { const i = input(); i.evidence.issuer = "simulator"; return i; }, ["issuer"]],
    ["a measurement of the rtmr backend", () => input({ expected: { ...expected(), backend: "rtmr" } }), ["expected-measurement"]],
  ];
  it.each(cases)("refuses %s", async (_what, make, checks) => {
    const v = await verifyEvidence(make(), opts);
    expect(v.ok).toBe(false);
    expect(failed(v)).toEqual(checks);
  });

  it("refuses an EK certificate issued by another CA", async () => {
    const v = await verifyEvidence(input(), { localCaPem: fxText("tpm/other-ca.pem") });
    expect(failed(v)).toEqual(["ek-certificate"]);
    expect(v.checks.find((c) => c.check === "ek-certificate")!.detail).toMatch(/no trusted issuer/);
  });

  it("refuses an expired CA window (verification time after the EK certificate's)", async () => {
    const v = await verifyEvidence(input(), { ...opts, now: new Date("2099-01-01T00:00:00Z") });
    expect(failed(v)).toEqual(["ek-certificate"]);
  });

  it("refuses PCRs that do not match the prediction, naming the register", async () => {
    const v = await verifyEvidence(input({ expected: expected("22".repeat(32)) }), opts);
    expect(failed(v)).toEqual([]);
    expect(v.ok).toBe(false);
    expect(v.registers.find((r) => r.register === "PCR4")).toMatchObject({ ok: false, problems: [`reported value ${pcr4} ≠ expected ${"22".repeat(32)}`] });
  });

  it("refuses evidence without the TCG log when the prediction names firmware events (the value alone would pass unexplained)", async () => {
    const withEvents = expected();
    withEvents.registers.PCR4.events = [{ type: "EV_EFI_ACTION", description: "test event", origin: "fixture", digest: createHash("sha256").update("tdxvm test").digest("hex") }];
    const v = await verifyEvidence(input({ expected: withEvents }), opts);
    expect(failed(v)).toEqual(["event-log"]);
    expect(v.checks.find((c) => c.check === "event-log")!.detail).toMatch(/no TCG event log, but the expected measurement predicts firmware events for PCR4/);
    expect(v.ok).toBe(false);
  });

  it("never throws on garbage: a malformed AK is a failed check", async () => {
    const i = input();
    i.keys!.tpm!.akPublic = Buffer.from("not a key").toString("base64");
    const v = await verifyEvidence(i, opts);
    expect(v.ok).toBe(false);
    expect(failed(v)).toContain("ak-public");
  });
});
