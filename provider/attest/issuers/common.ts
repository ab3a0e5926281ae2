/**
 * The parts of evidence → verdict that several issuers share (docs/design.md §7): the verdict
 * types, named checks, register judgement (exact and zero registers event by event through
 * provider/measure verify(); platform-defined ones by replay only), and the TPM quote checks the
 * dev VM's TPM and Azure's vTPM have in common. Each issuer's own checks sit in ./<issuer>.ts,
 * beside its agent half in agent/issuers/<issuer>.ts.
 */
import { timingSafeEqual, X509Certificate } from "node:crypto";
import { Measurements, parseEventLog, verify as verifyRegisters, DIGEST_SIZES, digest, HashAlg } from "../../measure";
import type { RegisterVerdict as MeasuredVerdict } from "../../measure";
import { parseUserspaceLog } from "../../measure/verify";
import { TdxError } from "../../errors";
import { attestBinding, Evidence, Issuer, KeysResponse } from "../evidence";
import { akAttributeProblems, objectName, parseQuoteAttest, parseSignature, pcrSelectionDigest, TpmPublic, verifySignature } from "../tpm2";
import type { DcapOptions } from "../dcap";

export type { MeasuredVerdict };

export interface Check { check: string; ok: boolean; detail: string }

/**
 * How a register was pinned in this verdict: equal to a value (predicted from the artifacts,
 * endorsed by the platform's vendor, captured from a trusted canary, or zero), waived by name
 * with a reason, unpinned (a signed value nobody vouches for: the verdict fails), or not in the
 * signed evidence at all.
 */
export type Pin = "predicted" | "endorsed" | "captured" | "zero" | "waived" | "unpinned" | "unsigned";

export interface RegisterVerdict extends MeasuredVerdict {
  status: "exact" | "zero" | "platform-defined";
  pin: Pin;
  /** Why the register is accepted unchecked (pin "waived"): from the expected measurement or the verifier's options. */
  waiver?: string;
  /** How the register was judged when that is not obvious (replay only, simulator, not covered). */
  note?: string;
}

export interface EvidenceVerdict {
  ok: boolean; issuer: Issuer; checks: Check[]; registers: RegisterVerdict[];
  /** With a measurement envelope: the label of the host shape whose values matched. */
  matched?: string;
}

export interface VerifyOptions {
  /** Verification time (certificates, collateral). Default: now. */
  now?: Date;
  /** Issuers accepted (default tpm, tdx, azure). The simulator needs allowSimulator as well. */
  issuers?: readonly Issuer[];
  /** Accept the simulator issuer (NOT platform-signed); every verdict then says so. */
  allowSimulator?: boolean;
  /** tpm (dev VM): the per-host local CA certificate(s) that issue swtpm EK certificates (PEM). */
  localCaPem?: string | readonly string[];
  /** azure: trust anchors and intermediates for the AK certificate (default: Azure's vTPM root and bundled intermediates). */
  azureRootsPem?: readonly string[];
  azureIntermediatesPem?: readonly string[];
  /** tdx and azure: DCAP verification of the TD quote. */
  dcap?: Omit<DcapOptions, "now">;
  /**
   * Registers accepted without a value, by name, each with the reason every output shows
   * (`WAIVED (<reason>)`): e.g. `{ RTMR0: "host shape not captured yet" }`. Waiving a register
   * the evidence does not carry fails the "waivers" check (a typo must not pass silently).
   */
  waive?: Readonly<Record<string, string>>;
  /**
   * gcp (tdx issuer): pin MRTD with Google's launch endorsement of the firmware when the expected
   * measurement leaves MRTD to the platform: the signed .binarypb (`endorsement`), or fetched by
   * the quote's MRTD from Google's bucket (`fetch`; `baseUrl` for a mirror).
   */
  gcp?: { endorsement?: Buffer; fetch?: boolean; baseUrl?: string; ramGib?: number; minSvn?: number; rootsPem?: readonly string[] };
}

export interface EvidenceInput {
  evidence: Evidence;
  /** The agent's /v1/keys answer the credential was made for (tpm). */
  keys?: KeysResponse;
  /** The nonce the verifier sent. */
  nonce: Buffer;
  /** SHA-256 of the SPKI of the TLS connection the evidence arrived on (never the evidence's own field). */
  channelSpkiSha256: Buffer;
  /** The secret wrapped with MakeCredential (tpm). */
  credentialSecret?: Buffer;
  expected: Measurements;
}

export class Checks {
  readonly list: Check[] = [];
  pass(check: string, detail: string): void {
    this.list.push({ check, ok: true, detail });
  }
  fail(check: string, detail: string): void {
    this.list.push({ check, ok: false, detail });
  }
  /** Run `fn`; a thrown E_ATTESTATION / E_MEASUREMENT becomes a failed check (hostile input never escapes as a crash). */
  async guard<T>(check: string, fn: () => T | Promise<T>): Promise<T | undefined> {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof TdxError && (e.code === "E_ATTESTATION" || e.code === "E_MEASUREMENT")) {
        const c = typeof e.details?.check === "string" && e.details.check !== "tpm-structure" ? e.details.check : check;
        this.fail(c, e.message.startsWith(`${c}: `) ? e.message.slice(c.length + 2) : e.message);
        return undefined;
      }
      throw e;
    }
  }
}


/** Verify `leafDer` up to one of `roots` through `intermediates` at `now`; returns problems (empty = trusted). */
export function chainProblems(leafDer: Buffer, intermediatesPem: readonly string[], rootsPem: readonly string[], now: Date): string[] {
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(leafDer);
  } catch (e) {
    return [`the certificate does not parse (${(e as Error).message})`];
  }
  const pool = intermediatesPem.map((p) => new X509Certificate(p));
  const roots = rootsPem.map((p) => new X509Certificate(p));
  const valid = (c: X509Certificate) => new Date(c.validFrom) <= now && now <= new Date(c.validTo);
  let cur = leaf;
  for (let depth = 0; depth < 6; depth++) {
    if (!valid(cur)) return [`${cur.subject.replace(/\n/g, ", ")} is not valid at ${now.toISOString()} (${cur.validFrom} – ${cur.validTo})`];
    const root = roots.find((r) => cur.checkIssued(r) && cur.verify(r.publicKey));
    if (root) return valid(root) ? [] : [`the root ${root.subject.replace(/\n/g, ", ")} is not valid at ${now.toISOString()}`];
    const next = pool.find((c) => c.ca && cur.checkIssued(c) && cur.verify(c.publicKey));
    if (!next) return [`no trusted issuer for ${cur.subject.replace(/\n/g, ", ")} (issuer ${cur.issuer.replace(/\n/g, ", ")})`];
    cur = next;
  }
  return ["the certificate chain is too long"];
}

export const b64 = (s: string | undefined) => (s === undefined ? undefined : Buffer.from(s, "base64"));
export const sameBytes = (a: Buffer, b: Buffer) => a.length === b.length && timingSafeEqual(a, b);

// ---------------------------------------------------------------------------------------------
// Registers

export type Bank = Record<string, string>;

/**
 * Platform-defined registers: a signed value with no expected value is refused unless the expected
 * measurement waives it by name (then its log, where one records it, must still reproduce it: an
 * honest log is the least a waived register owes). A log that replays to the signed value proves
 * only that the log is honest, not that the value is good — so replay alone never pins.
 */
export function replayOnly(expected: Measurements, reported: (name: string) => string | null, logged: (name: string, alg: HashAlg) => string[] | undefined): RegisterVerdict[] {
  const out: RegisterVerdict[] = [];
  for (const [name, reg] of Object.entries(expected.registers)) {
    if (reg.status !== "platform-defined") continue;
    const value = reported(name);
    if (value === null) {
      out.push({ register: name, status: reg.status, pin: "unsigned", expected: null, reported: null, replayed: null, ok: true, problems: [], note: "not in the signed evidence" });
      continue;
    }
    const digests = logged(name, reg.alg);
    let replayed: string | null = null;
    const problems: string[] = [];
    if (digests?.length) {
      let r: Buffer = Buffer.alloc(DIGEST_SIZES[reg.alg]);
      for (const d of digests) r = digest(reg.alg, r, Buffer.from(d, "hex"));
      replayed = r.toString("hex");
      if (replayed !== value) problems.push(`the log does not reproduce the signed value (replayed ${replayed}, signed ${value})`);
    }
    if (reg.waived !== undefined) {
      out.push({ register: name, status: reg.status, pin: "waived", waiver: reg.waived, expected: null, reported: value, replayed, ok: !problems.length, problems, note: `WAIVED (${reg.waived})` });
      continue;
    }
    problems.unshift(`not pinned: the platform signed a value nobody vouches for (${reg.why ?? "platform-defined"}); pin it (an endorsement, a prediction for the host shape, or a CCEL captured from a trusted canary) or waive it by name with a reason (--waive ${name}:"reason")`);
    out.push({ register: name, status: reg.status, pin: "unpinned", expected: null, reported: value, replayed, ok: false, problems });
  }
  return out;
}

export function withStatus(expected: Measurements, verdicts: MeasuredVerdict[]): RegisterVerdict[] {
  return verdicts.map((v) => {
    const reg = expected.registers[v.register]!;
    // An "exact" register without a value pins nothing (a malformed file or state): refused as unpinned.
    if (reg.value === null) return { ...v, status: reg.status, pin: "unpinned", ok: false, problems: [`not pinned: the expected measurement calls ${v.register} ${reg.status} but gives no value`] };
    return { ...v, status: reg.status, pin: reg.status === "zero" ? "zero" : reg.basis ?? "predicted" };
  });
}

/**
 * Registers the evidence always signs (a TD quote: MRTD, RTMR0–3) that the expected measurement
 * does not list: each is a row that fails as unpinned — leaving a register out of a measurement
 * must not be a way around pin-or-waive.
 */
export function unlisted(expected: Measurements, signed: Record<string, string>, already: RegisterVerdict[]): RegisterVerdict[] {
  const seen = new Set(already.map((r) => r.register));
  return Object.entries(signed).filter(([n]) => !seen.has(n) && !expected.registers[n]).map(([register, reported]) => ({
    register, status: "platform-defined" as const, pin: "unpinned" as const, expected: null, reported, replayed: null, ok: false,
    problems: [`not pinned: the platform signs ${register} but the expected measurement does not name it; pin it or waive it by name (--waive ${register}:"reason")`],
  }));
}

/**
 * The verifier's own waivers (VerifyOptions.waive): each named register is accepted whatever its
 * value, and says so; a waiver for a register the evidence does not carry fails the "waivers"
 * check, so a misspelt or misplaced waiver cannot pass unnoticed.
 */
export function applyWaivers(registers: RegisterVerdict[], waive: Readonly<Record<string, string>> | undefined, checks: Checks): RegisterVerdict[] {
  const names = Object.keys(waive ?? {});
  if (!names.length) return registers;
  const present = new Set(registers.filter((r) => r.pin !== "unsigned").map((r) => r.register));
  const stray = names.filter((n) => !present.has(n));
  if (stray.length) checks.fail("waivers", `waived ${stray.join(", ")}, which this evidence does not carry (it has ${[...present].join(", ") || "no register"})`);
  else checks.pass("waivers", `WAIVED by the verifier: ${names.map((n) => `${n} (${waive![n]})`).join("; ")}`);
  return registers.map((r) => {
    const reason = waive![r.register];
    if (reason === undefined || r.pin === "unsigned") return r;
    // The value is not judged any more; the log still must be honest (a waived register's events
    // must reproduce its signed value, as for waivers in the measurement).
    const dishonest = r.problems.filter((p) => /log does not reproduce/.test(p));
    const was = r.ok ? "" : `; unwaived it would fail: ${r.problems.join("; ")}`;
    return { ...r, pin: "waived", waiver: reason, ok: !dishonest.length, problems: dishonest, note: `WAIVED (${reason})${was}` };
  });
}

/**
 * A register whose prediction names firmware events is judged event by event, so the log that
 * records them must be there: without it a matching value would pass unexplained.
 */
export function requireLog(expected: Measurements, names: RegExp, log: Buffer | undefined, what: string, checks: Checks): void {
  if (log) return;
  const need = Object.entries(expected.registers).filter(([n, r]) => names.test(n) && r.status === "exact" && r.events.some((e) => e.log !== "userspace")).map(([n]) => n);
  if (need.length) checks.fail("event-log", `the evidence carries no ${what}, but the expected measurement predicts firmware events for ${need.join(", ")}: they cannot be checked event by event`);
}

/** PCR registers of a TPM quote (only the values the quote's digest covers). */
export function pcrRegisters(expected: Measurements, quoted: Bank, logs: Evidence["eventLogs"], checks: Checks): RegisterVerdict[] {
  const eventLog = b64(logs.tcg);
  let tcgEvents: ReturnType<typeof parseEventLog>["events"] = [];
  let userspace: ReturnType<typeof parseUserspaceLog> = [];
  try {
    if (eventLog) tcgEvents = parseEventLog(eventLog).events;
    if (logs.systemd !== undefined) userspace = parseUserspaceLog(logs.systemd);
  } catch (e) {
    checks.fail("event-log", `the TCG event log does not parse: ${(e as Error).message}`);
    return [];
  }
  requireLog(expected, /^PCR\d+$/, eventLog, "TCG event log", checks);
  const missing = Object.entries(expected.registers).filter(([n, r]) => r.status !== "platform-defined" && /^PCR\d+$/.test(n) && quoted[n.slice(3)] === undefined).map(([n]) => n);
  if (missing.length) checks.fail("quote-coverage", `the quote does not cover ${missing.join(", ")}, which the expected measurement predicts`);
  const pcrs: Record<string, Record<number, string>> = { sha256: Object.fromEntries(Object.entries(quoted).map(([k, v]) => [Number(k), v])) };
  let measured: MeasuredVerdict[];
  try {
    measured = verifyRegisters(expected, { eventLog, pcrs, userspaceLog: logs.systemd }).registers;
  } catch (e) {
    checks.fail("event-log", `replaying the event logs failed: ${(e as Error).message}`);
    return [];
  }
  const exact = withStatus(expected, measured);
  const logged = (name: string, alg: HashAlg) => {
    const pcr = Number(name.slice(3));
    const fw = tcgEvents.filter((e) => e.index === pcr && e.typeName !== "EV_NO_ACTION").map((e) => e.digests.find((d) => d.alg === alg)?.digest.toString("hex"));
    const us = userspace.filter((u) => u.pcr === pcr).map((u) => u.event.digests.get(alg));
    const all = [...fw, ...us];
    return all.some((d) => d === undefined) ? undefined : (all as string[]);
  };
  return [...exact, ...replayOnly(expected, (n) => quoted[n.slice(3)] ?? null, logged)];
}

// ---------------------------------------------------------------------------------------------
// TPM quotes (dev VM and Azure vTPM)

/** Quote checks shared by tpm and azure; returns the PCR values the signed digest covers. */
export function verifyTpmQuote(tpm: NonNullable<Evidence["tpm"]>, ak: TpmPublic, input: EvidenceInput, checks: Checks): Bank | undefined {
  const problems = akAttributeProblems(ak);
  if (problems.length) checks.fail("ak-attributes", `the AK is not a restricted signing key held by the TPM: ${problems.join(", ")}`);
  else checks.pass("ak-attributes", "restricted signing key: fixedTPM, fixedParent, sensitiveDataOrigin, restricted, sign");
  const msg = Buffer.from(tpm.quote, "base64");
  const attest = parseQuoteAttest(msg);
  checks.pass("quote-structure", "TPMS_ATTEST with magic TPM_GENERATED_VALUE, type TPM_ST_ATTEST_QUOTE");
  const sig = parseSignature(Buffer.from(tpm.signature, "base64"));
  if (!verifySignature(ak, msg, sig)) {
    checks.fail("quote-signature", `the ${sig.alg}/${sig.hash} signature does not verify with the AK`);
    return undefined;
  }
  checks.pass("quote-signature", `${sig.alg}/${sig.hash} signature by the AK (name ${objectName(ak).toString("hex").slice(0, 20)}…)`);
  const binding = attestBinding("sha256", input.nonce, input.channelSpkiSha256);
  if (!sameBytes(attest.extraData, binding)) checks.fail("channel-binding", "the quote's qualifying data is not H(label ‖ nonce ‖ SHA-256 of this TLS connection's key): a stale quote, another nonce, or a relay with its own TLS key");
  else checks.pass("channel-binding", "qualifying data = SHA-256(\"tdxvm-attest-v1\" ‖ 0 ‖ nonce ‖ SPKI hash of this TLS connection)");
  const { digest: d, missing } = pcrSelectionDigest(sig.hash, attest.pcrSelect, tpm.pcrs);
  if (!d) {
    checks.fail("pcr-digest", `the evidence lacks values for quoted PCRs ${missing.join(", ")}`);
    return undefined;
  }
  if (!sameBytes(d, attest.pcrDigest)) {
    checks.fail("pcr-digest", "the PCR values in the evidence do not hash to the quote's signed PCR digest");
    return undefined;
  }
  const sel = attest.pcrSelect.filter((s) => s.hash === "sha256");
  checks.pass("pcr-digest", `signed digest covers ${attest.pcrSelect.map((s) => `${s.hash}:${s.pcrs.join(",")}`).join(" ")}`);
  const quoted: Bank = {};
  for (const s of sel) for (const p of s.pcrs) quoted[String(p)] = tpm.pcrs.sha256![String(p)]!.toLowerCase();
  return quoted;
}
