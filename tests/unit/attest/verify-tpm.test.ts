/**
 * The dev-VM (tpm) verifier on real evidence: fixtures/tpm is one swtpm manufactured with an EK
 * certificate from a local CA, an AK under its EK that activated a credential made by
 * makeCredential, and a quote over PCR 0–15 whose qualifying data is the binding of nonce 0..31
 * and TLS key hash 0xaa×32 (fixtures/make-tpm.ts). Each negative changes one thing.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { verifyEvidence, EvidenceInput, VerifyOptions } from "../../../provider/attest/verify";
import { parseTpm2bPublic, spkiOf } from "../../../provider/attest/tpm2";
import type { Evidence, KeysResponse } from "../../../provider/attest/evidence";
import { parseEventLog, replayLog, Measurements } from "../../../provider/measure";
import { fx, fxText, pcrValues } from "./fixtures";
import { CertSpec, makeCa, makeCert, TCG_EK_PURPOSE } from "./x509Test";

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
    PCR0: { alg: "sha256", value: null, status: "platform-defined", why: "firmware", waived: "firmware: no reference value", events: [] },
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
      expect.objectContaining({ register: "PCR0", status: "platform-defined", pin: "waived", waiver: "firmware: no reference value", reported: "00".repeat(32), replayed: null, ok: true, note: "WAIVED (firmware: no reference value)" }),
    ]);
    expect(v.ok).toBe(true);
  });

  it("refuses a quoted PCR that nobody pinned or waived, naming it", async () => {
    const exp = expected();
    delete exp.registers.PCR0!.waived;
    const v = await verifyEvidence(input({ expected: exp }), opts);
    expect(failed(v)).toEqual([]);
    expect(v.registers.find((r) => r.register === "PCR0")).toMatchObject({ pin: "unpinned", ok: false, problems: [expect.stringMatching(/^not pinned: the platform signed a value nobody vouches for \(firmware\)/)] });
    expect(v.ok).toBe(false);
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

/**
 * Each check of the tpm issuer on its own: one change to the real evidence (or to what the
 * verifier was given), the one check that must fail, and its reason. EK certificates other than
 * the fixture's are made here (x509Test.ts) under a CA generated for the test, for the chain rules
 * the swtpm fixture cannot reach.
 */
describe("tpm issuer: each check refuses on its own", () => {
  const NOW = new Date("2027-01-01T00:00:00Z");
  const ekSpki = spkiOf(parseTpm2bPublic(fx("tpm/ek-rsa.pub")));
  const ca = makeCa("tdxvm test local EK CA");
  const ekCert = (over: Partial<CertSpec> = {}) => makeCert({ subject: "tdxvm test EK", publicKey: ekSpki, issuer: { cert: ca }, extKeyUsage: [TCG_EK_PURPOSE], serial: 7, ...over });
  const withEkCert = (der: Buffer) => {
    const i = input();
    i.keys!.tpm!.ekCertificate = der.toString("base64");
    i.evidence.tpm!.ekCertificate = der.toString("base64");
    return i;
  };
  const check = (v: { checks: Array<{ check: string; ok: boolean; detail: string }> }, name: string) => v.checks.filter((c) => c.check === name);
  const refusedBy = async (i: EvidenceInput, o: VerifyOptions, name: string, detail: RegExp) => {
    const v = await verifyEvidence(i, o);
    expect(v.ok).toBe(false);
    expect(failed(v)).toEqual([name]);
    expect(check(v, name).filter((c) => !c.ok)).toEqual([{ check: name, ok: false, detail: expect.stringMatching(detail) }]);
    return v;
  };

  it("accepts an EK certificate made by a generated local CA (the control for the cases below)", async () => {
    const v = await verifyEvidence(withEkCert(ekCert().der), { localCaPem: ca.pem, now: NOW });
    expect(failed(v)).toEqual([]);
    expect(check(v, "ek-certificate")).toEqual([{ check: "ek-certificate", ok: true, detail: "EK certificate issued by the local CA (CN=tdxvm test local EK CA) for this EK" }]);
    expect(v.ok).toBe(true);
  });

  it("refuses an EK certificate without the TCG EK certificate purpose", async () => {
    await refusedBy(withEkCert(ekCert({ extKeyUsage: undefined }).der), { localCaPem: ca.pem, now: NOW }, "ek-certificate", /^the certificate lacks the TCG EK certificate purpose \(2\.23\.133\.8\.1\)$/);
    await refusedBy(withEkCert(ekCert({ extKeyUsage: ["1.3.6.1.5.5.7.3.1"] }).der), { localCaPem: ca.pem, now: NOW }, "ek-certificate", /lacks the TCG EK certificate purpose/);
  });

  it("refuses an EK certificate outside its validity while the CA is valid (expired, not yet valid)", async () => {
    await refusedBy(withEkCert(ekCert({ notAfter: new Date("2026-12-01T00:00:00Z") }).der), { localCaPem: ca.pem, now: NOW }, "ek-certificate", /^CN=tdxvm test EK is not valid at 2027-01-01T00:00:00\.000Z/);
    await refusedBy(withEkCert(ekCert({ notBefore: new Date("2027-06-01T00:00:00Z") }).der), { localCaPem: ca.pem, now: NOW }, "ek-certificate", /^CN=tdxvm test EK is not valid at 2027-01-01/);
  });

  it("refuses a valid EK certificate under a CA outside its own validity", async () => {
    const old = makeCa("tdxvm expired EK CA", { notAfter: new Date("2026-12-01T00:00:00Z") });
    const cert = ekCert({ issuer: { cert: old } });
    await refusedBy(withEkCert(cert.der), { localCaPem: old.pem, now: NOW }, "ek-certificate", /^the root CN=tdxvm expired EK CA is not valid at 2027-01-01T00:00:00\.000Z$/);
  });

  it("refuses an EK certificate that names the CA but is signed by another key", async () => {
    const impostor = makeCa("tdxvm test local EK CA"); // same name, another key
    await refusedBy(withEkCert(ekCert({ issuer: { cert: impostor } }).der), { localCaPem: ca.pem, now: NOW }, "ek-certificate", /^no trusted issuer for CN=tdxvm test EK \(issuer CN=tdxvm test local EK CA\)$/);
  });

  it("refuses an EK certificate that does not parse", async () => {
    await refusedBy(withEkCert(Buffer.from("not a certificate")), opts, "ek-certificate", /^the certificate does not parse/);
  });

  it("refuses when no local CA is given", async () => {
    await refusedBy(input(), {}, "ek-certificate", /^no local CA certificate to check the EK certificate against$/);
  });

  it("refuses keys or evidence lacking a part: no EK certificate, no EK, no /v1/keys, no quote", async () => {
    const noCert = input();
    delete noCert.keys!.tpm!.ekCertificate;
    const noEk = input();
    delete noEk.keys!.tpm!.ekPublic;
    const noQuote = input();
    delete noQuote.evidence.tpm;
    for (const i of [noCert, noEk, input({ keys: undefined }), noQuote]) {
      const v = await refusedBy(i, opts, "evidence", /^tpm evidence needs the AK and the EK with its certificate \(\/v1\/keys\) and a quote$/);
      expect(v.registers).toEqual([]);
    }
  });

  it("refuses evidence naming another EK than /v1/keys", async () => {
    const i = input();
    i.evidence.tpm!.ekPublic = b64("tpm/ek-ecc.pub");
    await refusedBy(i, opts, "key-consistency", /^the evidence names another AK or EK than \/v1\/keys did$/);
  });

  it("refuses when the verifier wrapped no secret (nothing to compare the activated one with)", async () => {
    await refusedBy(input({ credentialSecret: undefined }), opts, "credential-activation", /^no activated credential: the AK is not proven to live in the EK's TPM$/);
  });

  it("refuses an AK that is not a restricted signing key, naming the attribute", async () => {
    const withAttrs = (change: (a: number) => number) => {
      const raw = Buffer.from(fx("tpm/ak-ecc.pub"));
      raw.writeUInt32BE(change(raw.readUInt32BE(6)) >>> 0, 6);
      const i = input();
      i.keys!.tpm!.akPublic = raw.toString("base64");
      i.evidence.tpm!.akPublic = raw.toString("base64");
      return i;
    };
    for (const [bit, attr] of [[1, "fixedTPM"], [4, "fixedParent"], [5, "sensitiveDataOrigin"], [16, "restricted"], [18, "sign"]] as const) {
      await refusedBy(withAttrs((a) => a & ~(1 << bit)), opts, "ak-attributes", new RegExp(`^the AK is not a restricted signing key held by the TPM: ${attr} is not set$`));
    }
    await refusedBy(withAttrs((a) => a | (1 << 17)), opts, "ak-attributes", /: decrypt is set \(a restricted signing key must not decrypt\)$/);
  });

  it("refuses a quoted PCR value of the wrong size as missing, not hashed", async () => {
    const i = input();
    i.evidence.tpm!.pcrs.sha256!["4"] = "ab";
    await refusedBy(i, opts, "pcr-digest", /^the evidence lacks values for quoted PCRs sha256:4$/);
  });

  it("refuses a TCG event log that does not parse", async () => {
    const i = input();
    i.evidence.eventLogs = { tcg: Buffer.from("not a TCG event log at all").toString("base64") };
    const v = await refusedBy(i, opts, "event-log", /^the TCG event log does not parse: /);
    expect(v.registers).toEqual([]);
  });

  it("refuses a prediction for a PCR the quote does not cover", async () => {
    const exp = expected();
    exp.registers.PCR16 = { alg: "sha256", value: "00".repeat(32), status: "zero", events: [] };
    const v = await refusedBy(input({ expected: exp }), opts, "quote-coverage", /^the quote does not cover PCR16, which the expected measurement predicts$/);
    expect(v.registers.map((r) => r.register)).toEqual(["PCR4", "PCR8", "PCR16", "PCR0"]);
  });

  it("refuses /v1/keys of another issuer, and an issuer the caller does not accept", async () => {
    const i = input();
    i.keys!.issuer = "azure";
    await refusedBy(i, opts, "issuer", /^\/v1\/keys said azure, the evidence says tpm$/);
    const v = await refusedBy(input(), { ...opts, issuers: ["tdx", "azure"] }, "issuer", /^issuer tpm is not among the accepted ones \(tdx, azure\)$/);
    expect(check(v, "issuer")).toHaveLength(1);
  });

  it("refuses a prediction with no register at all (nothing compared is no verdict)", async () => {
    const v = await refusedBy(input({ expected: { ...expected(), registers: {} } }), opts, "registers", /^no register could be compared with the expected measurement$/);
    expect(v.registers).toEqual([]);
  });

  it("refuses evidence answering another nonce even when the quote is bound to this one", async () => {
    const i = input();
    i.evidence.nonce = "ff".repeat(32);
    await refusedBy(i, opts, "nonce", /^the evidence answers another nonce$/);
  });
});

/** The simulator issuer: nothing platform-signed, refused unless allowed; its own nonce and log checks. */
describe("simulator issuer", () => {
  const tcg = readFileSync(path.join(__dirname, "..", "measure", "fixtures", "tpm-eventlog-arch-linux.bin"));
  const log = parseEventLog(tcg);
  const pcr4Events = log.events.filter((e) => e.index === 4 && e.typeName !== "EV_NO_ACTION");
  const simExpected = (pcr4Value = replayLog(log.events).get(4)!.get("sha256")!.toString("hex")): Measurements => ({
    measurementsVersion: 1, backend: "azure", inputs: {},
    registers: {
      PCR4: { alg: "sha256", value: pcr4Value, status: "exact", events: pcr4Events.map((e, i) => ({ type: e.typeName, description: `event ${i + 1}`, origin: "arch-linux log", digest: e.digests.find((d) => d.alg === "sha256")!.digest.toString("hex") })) },
    },
  });
  const sim = (over: Partial<Evidence> = {}, expectedM = simExpected()): EvidenceInput => ({
    evidence: { evidenceVersion: 1, issuer: "simulator", nonce: nonce.toString("hex"), spkiSha256: spki.toString("hex"), eventLogs: { tcg: tcg.toString("base64") }, ...over },
    nonce, channelSpkiSha256: spki, expected: expectedM,
  });
  const allow = { allowSimulator: true };

  it("is accepted only with allowSimulator, and every verdict says SIMULATOR", async () => {
    const v = await verifyEvidence(sim(), allow);
    expect(v.checks).toEqual([
      { check: "issuer", ok: true, detail: expect.stringMatching(/^SIMULATOR evidence accepted because allowSimulator is set/) },
      { check: "nonce", ok: true, detail: expect.stringMatching(/^SIMULATOR: the evidence echoes the nonce/) },
    ]);
    expect(v.registers).toEqual([expect.objectContaining({ register: "PCR4", ok: true, note: "SIMULATOR: from unsigned event logs, not platform-signed" })]);
    expect(v.ok).toBe(true);
    const refused = await verifyEvidence(sim(), {});
    expect(refused.checks).toEqual([{ check: "issuer", ok: false, detail: expect.stringMatching(/^the agent offers simulator evidence, which no platform signed; refused/) }]);
    expect(refused.registers).toEqual([]);
    expect(refused.ok).toBe(false);
  });

  it("refuses another nonce", async () => {
    const v = await verifyEvidence(sim({ nonce: "ab".repeat(32) }), allow);
    expect(failed(v)).toEqual(["nonce"]);
    expect(v.checks.find((c) => c.check === "nonce")!.detail).toBe("SIMULATOR: the evidence echoes another nonce");
    expect(v.ok).toBe(false);
  });

  it("refuses event logs that do not parse", async () => {
    const v = await verifyEvidence(sim({ eventLogs: { tcg: Buffer.from("garbage, not a log").toString("base64") } }), allow);
    expect(failed(v)).toEqual(["event-log"]);
    expect(v.checks.find((c) => c.check === "event-log")!.detail).toMatch(/^SIMULATOR: the event logs do not parse: /);
    expect(v.ok).toBe(false);
  });

  it("refuses a register no log records, and a register that is not the prediction (every check passing)", async () => {
    const none = await verifyEvidence(sim({ eventLogs: {} }), allow);
    expect(failed(none)).toEqual([]);
    expect(none.registers).toEqual([expect.objectContaining({ register: "PCR4", ok: false, problems: expect.arrayContaining(["SIMULATOR: no event log records it"]), note: "SIMULATOR: nothing observed" })]);
    expect(none.ok).toBe(false);
    const other = await verifyEvidence(sim({}, simExpected("33".repeat(32))), allow);
    expect(failed(other)).toEqual([]);
    expect(other.registers).toEqual([expect.objectContaining({ register: "PCR4", ok: false })]);
    expect(other.ok).toBe(false);
  });
});
