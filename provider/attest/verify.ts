/**
 * Evidence → verdict, per issuer (docs/design.md §7). Pure over its inputs apart from fetching
 * DCAP collateral when asked to: the transport (./client.ts) supplies the nonce it sent, the key
 * of the TLS connection it saw, the credential secret it wrapped, and the agent's answers.
 *
 * Every issuer yields named checks ({check, ok, detail}) and per-register verdicts against the
 * expected Measurements: exact and zero registers must equal the platform-signed value and be
 * reproduced by the event logs event by event (provider/measure verify()); registers the
 * prediction calls platform-defined are checked by replay only (the logs must reproduce the
 * signed value). A verdict is ok only when every check and every register is.
 */
import { timingSafeEqual, X509Certificate } from "node:crypto";
import { Measurements, parseEventLog, parseCcel, CC_MR_NAMES, verify as verifyRegisters, parseTdxQuote, DIGEST_SIZES, digest, HashAlg } from "../measure";
import type { RegisterVerdict as MeasuredVerdict } from "../measure";
import { parseUserspaceLog } from "../measure/verify";
import { TdxError } from "../errors";
import { attestBinding, Evidence, Issuer, KeysResponse } from "./evidence";
import { akAttributeProblems, objectName, parseQuoteAttest, parseSignature, parseTpm2bPublic, pcrSelectionDigest, spkiOf, TpmPublic, verifySignature } from "./tpm2";
import { verifyDcap, DcapOptions } from "./dcap";
import { AZURE_VTPM_INTERMEDIATES_PEM, AZURE_VTPM_ROOT_CA_PEM, chainProblems, hclAkBindingProblems, parseHclReport, tdQuoteBindingProblems } from "./azure";

export interface Check { check: string; ok: boolean; detail: string }

export interface RegisterVerdict extends MeasuredVerdict {
  status: "exact" | "zero" | "platform-defined";
  /** How the register was judged when that is not obvious (replay only, simulator, not covered). */
  note?: string;
}

export interface EvidenceVerdict { ok: boolean; issuer: Issuer; checks: Check[]; registers: RegisterVerdict[] }

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

const DEFAULT_ISSUERS: readonly Issuer[] = ["tpm", "tdx", "azure"];

class Checks {
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

const b64 = (s: string | undefined) => (s === undefined ? undefined : Buffer.from(s, "base64"));
const sameBytes = (a: Buffer, b: Buffer) => a.length === b.length && timingSafeEqual(a, b);

// ---------------------------------------------------------------------------------------------
// Registers

type Bank = Record<string, string>;

/** Platform-defined registers: the logs must reproduce the signed value (if they log the register at all). */
function replayOnly(expected: Measurements, reported: (name: string) => string | null, logged: (name: string, alg: HashAlg) => string[] | undefined): RegisterVerdict[] {
  const out: RegisterVerdict[] = [];
  for (const [name, reg] of Object.entries(expected.registers)) {
    if (reg.status !== "platform-defined") continue;
    const value = reported(name);
    const digests = logged(name, reg.alg);
    if (value === null) {
      out.push({ register: name, status: reg.status, expected: null, reported: null, replayed: null, ok: true, problems: [], note: "platform-defined; not in the signed evidence" });
      continue;
    }
    if (!digests?.length) {
      out.push({ register: name, status: reg.status, expected: null, reported: value, replayed: null, ok: true, problems: [], note: "platform-defined; no log records it, so it is not checked" });
      continue;
    }
    let r: Buffer = Buffer.alloc(DIGEST_SIZES[reg.alg]);
    for (const d of digests) r = digest(reg.alg, r, Buffer.from(d, "hex"));
    const replayed = r.toString("hex");
    const ok = replayed === value;
    out.push({ register: name, status: reg.status, expected: null, reported: value, replayed, ok, problems: ok ? [] : [`the log does not reproduce the signed value (replayed ${replayed}, signed ${value})`], note: "platform-defined; checked by replay only" });
  }
  return out;
}

function withStatus(expected: Measurements, verdicts: MeasuredVerdict[]): RegisterVerdict[] {
  return verdicts.map((v) => ({ ...v, status: expected.registers[v.register]!.status }));
}

/**
 * A register whose prediction names firmware events is judged event by event, so the log that
 * records them must be there: without it a matching value would pass unexplained.
 */
function requireLog(expected: Measurements, names: RegExp, log: Buffer | undefined, what: string, checks: Checks): void {
  if (log) return;
  const need = Object.entries(expected.registers).filter(([n, r]) => names.test(n) && r.status === "exact" && r.events.some((e) => e.log !== "userspace")).map(([n]) => n);
  if (need.length) checks.fail("event-log", `the evidence carries no ${what}, but the expected measurement predicts firmware events for ${need.join(", ")}: they cannot be checked event by event`);
}

/** PCR registers of a TPM quote (only the values the quote's digest covers). */
function pcrRegisters(expected: Measurements, quoted: Bank, logs: Evidence["eventLogs"], checks: Checks): RegisterVerdict[] {
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
function verifyTpmQuote(tpm: NonNullable<Evidence["tpm"]>, ak: TpmPublic, input: EvidenceInput, checks: Checks): Bank | undefined {
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

function localCaProblems(certDer: Buffer, cas: readonly string[], now: Date): string[] {
  const problems = chainProblems(certDer, [], cas, now);
  if (problems.length) return problems;
  const cert = new X509Certificate(certDer);
  if (!(cert.keyUsage ?? []).includes("2.23.133.8.1")) problems.push("the certificate lacks the TCG EK certificate purpose (2.23.133.8.1)");
  return problems;
}

async function verifyTpm(input: EvidenceInput, opts: VerifyOptions, checks: Checks): Promise<RegisterVerdict[]> {
  const tpm = input.evidence.tpm;
  const keys = input.keys?.tpm;
  if (!tpm || !keys?.ekPublic || !keys.ekCertificate) {
    checks.fail("evidence", "tpm evidence needs the AK and the EK with its certificate (/v1/keys) and a quote");
    return [];
  }
  // The credential was made for the keys the agent announced: the evidence must speak of the same ones.
  if (tpm.akPublic !== keys.akPublic || tpm.ekPublic !== keys.ekPublic) checks.fail("key-consistency", "the evidence names another AK or EK than /v1/keys did");
  const now = opts.now ?? new Date();
  const cas = opts.localCaPem === undefined ? [] : typeof opts.localCaPem === "string" ? [opts.localCaPem] : [...opts.localCaPem];
  const ek = await checks.guard("ek-public", () => parseTpm2bPublic(Buffer.from(keys.ekPublic!, "base64"), "EK TPM2B_PUBLIC"));
  const ak = await checks.guard("ak-public", () => parseTpm2bPublic(Buffer.from(keys.akPublic, "base64"), "AK TPM2B_PUBLIC"));
  if (!ek || !ak) return [];
  const certDer = Buffer.from(keys.ekCertificate, "base64");
  if (!cas.length) checks.fail("ek-certificate", "no local CA certificate to check the EK certificate against");
  else {
    const problems = localCaProblems(certDer, cas, now);
    let sameKey = false;
    try {
      sameKey = new X509Certificate(certDer).publicKey.export({ type: "spki", format: "der" }).equals(spkiOf(ek));
    } catch {
      // reported by localCaProblems
    }
    if (!problems.length && !sameKey) problems.push("the certificate certifies another key than the EK");
    if (problems.length) checks.fail("ek-certificate", problems.join("; "));
    else checks.pass("ek-certificate", `EK certificate issued by the local CA (${new X509Certificate(certDer).issuer.replace(/\n/g, ", ")}) for this EK`);
  }
  const activated = b64(tpm.activatedSecret);
  if (!input.credentialSecret || !activated) checks.fail("credential-activation", "no activated credential: the AK is not proven to live in the EK's TPM");
  else if (!sameBytes(activated, input.credentialSecret)) checks.fail("credential-activation", "the activated secret is not the one wrapped for the EK and this AK's name");
  else checks.pass("credential-activation", "TPM2_ActivateCredential recovered the secret wrapped for the certified EK and this AK's name");
  const quoted = await checks.guard("quote-structure", () => verifyTpmQuote(tpm, ak, input, checks));
  return quoted ? pcrRegisters(input.expected, quoted, input.evidence.eventLogs, checks) : [];
}

async function verifyAzure(input: EvidenceInput, opts: VerifyOptions, checks: Checks): Promise<RegisterVerdict[]> {
  const { tpm, azure } = input.evidence;
  if (!tpm || !tpm.akCertificate || !azure) {
    checks.fail("evidence", "azure evidence needs the AK, its certificate, a quote and the HCL report");
    return [];
  }
  const now = opts.now ?? new Date();
  const ak = await checks.guard("ak-public", () => parseTpm2bPublic(Buffer.from(tpm.akPublic, "base64"), "AK TPM2B_PUBLIC"));
  if (!ak) return [];
  const akSpki = spkiOf(ak);
  const certDer = Buffer.from(tpm.akCertificate, "base64");
  const problems = chainProblems(certDer, opts.azureIntermediatesPem ?? AZURE_VTPM_INTERMEDIATES_PEM, opts.azureRootsPem ?? [AZURE_VTPM_ROOT_CA_PEM], now);
  if (!problems.length && !new X509Certificate(certDer).publicKey.export({ type: "spki", format: "der" }).equals(akSpki)) problems.push("the certificate certifies another key than the AK");
  if (problems.length) checks.fail("ak-certificate", problems.join("; "));
  else checks.pass("ak-certificate", "AK certificate chains to the Azure vTPM root and certifies this AK");
  const hcl = await checks.guard("hcl-report", () => parseHclReport(Buffer.from(azure.hclReport, "base64")));
  if (hcl) {
    const bind = hclAkBindingProblems(hcl, akSpki);
    if (bind.length) checks.fail("hcl-ak-binding", bind.join("; "));
    else checks.pass("hcl-ak-binding", `the TD report's REPORTDATA is the ${hcl.hashAlg} of the runtime data, whose HCLAkPub is this AK`);
    const tdQuote = b64(azure.tdQuote);
    if (!tdQuote) checks.fail("hcl-td-quote-binding", "no TD quote for the HCL report's TD report");
    else {
      const body = await checks.guard("td-quote", () => parseTdxQuote(tdQuote).body);
      if (body) {
        const diff = tdQuoteBindingProblems(hcl.tdReport, body);
        if (diff.length) checks.fail("hcl-td-quote-binding", diff.join("; "));
        else checks.pass("hcl-td-quote-binding", "the TD quote carries the HCL report's TD report (body and REPORTDATA)");
        const dcap = await checks.guard("dcap", () => verifyDcap(tdQuote, { ...opts.dcap, now }));
        if (dcap) checks.pass("dcap", `TD quote verified by DCAP: TCB ${dcap.status}${dcap.advisoryIds.length ? ` (${dcap.advisoryIds.join(", ")})` : ""}, collateral ${dcap.collateralSource}`);
      }
    }
  }
  const quoted = await checks.guard("quote-structure", () => verifyTpmQuote(tpm, ak, input, checks));
  return quoted ? pcrRegisters(input.expected, quoted, input.evidence.eventLogs, checks) : [];
}

// ---------------------------------------------------------------------------------------------
// TDX

async function verifyTdx(input: EvidenceInput, opts: VerifyOptions, checks: Checks): Promise<RegisterVerdict[]> {
  const quoteB64 = input.evidence.tdx?.quote;
  if (!quoteB64) {
    checks.fail("evidence", "tdx evidence needs a TD quote");
    return [];
  }
  const quote = Buffer.from(quoteB64, "base64");
  const now = opts.now ?? new Date();
  const parsed = await checks.guard("quote-format", () => parseTdxQuote(quote));
  if (!parsed) return [];
  const dcap = await checks.guard("dcap", () => verifyDcap(quote, { ...opts.dcap, now }));
  if (dcap) checks.pass("dcap", `PCK chain to Intel's SGX root, QE identity, quote signature; TCB ${dcap.status}${dcap.advisoryIds.length ? ` (${dcap.advisoryIds.join(", ")})` : ""}; collateral ${dcap.collateralSource}`);
  const binding = attestBinding("sha512", input.nonce, input.channelSpkiSha256);
  // Domain separation from tdxs (whose REPORTDATA is SHA-256(…) ‖ 32 zero bytes): a binding that
  // ends in 32 zero bytes is refused even if it matches, so no tdxs quote can ever pass as one.
  if (parsed.body.reportData.subarray(32).every((b) => b === 0)) checks.fail("channel-binding", "REPORTDATA ends in 32 zero bytes, the form of a tdxs application quote: never an attestation binding");
  else if (!sameBytes(parsed.body.reportData, binding)) checks.fail("channel-binding", "REPORTDATA is not H(label ‖ nonce ‖ SHA-256 of this TLS connection's key): a stale quote, another nonce, or a relay with its own TLS key");
  else checks.pass("channel-binding", "REPORTDATA = SHA-512(\"tdxvm-attest-v1\" ‖ 0 ‖ nonce ‖ SPKI hash of this TLS connection)");
  const ccel = b64(input.evidence.eventLogs.ccel);
  requireLog(input.expected, /^RTMR\d$/, ccel, "CCEL (the TD's event log)", checks);
  let measured: MeasuredVerdict[];
  let ccelEvents: ReturnType<typeof parseCcel>["events"] = [];
  try {
    if (ccel) ccelEvents = parseCcel(ccel).events;
    // MRTD is built by the TDX module and never logged in the CCEL: judge it on the quote alone
    // (measure's verify() would replay it from the CCEL as zero).
    const { MRTD, ...logged } = input.expected.registers;
    measured = [
      ...(MRTD ? verifyRegisters({ ...input.expected, registers: { MRTD } }, { quote }).registers : []),
      ...verifyRegisters({ ...input.expected, registers: logged }, { quote, ccel }).registers,
    ];
  } catch (e) {
    checks.fail("event-log", `replaying the CCEL failed: ${(e as Error).message}`);
    return [];
  }
  const body = parsed.body;
  const reported = (name: string) => (name === "MRTD" ? body.mrTd.toString("hex") : /^RTMR[0-3]$/.test(name) ? body.rtmr[Number(name.slice(4))]!.toString("hex") : null);
  const logged = (name: string, alg: HashAlg) => {
    const ds = ccelEvents.filter((e) => CC_MR_NAMES[e.index] === name && e.typeName !== "EV_NO_ACTION").map((e) => e.digests.find((d) => d.alg === alg)?.digest.toString("hex"));
    return ds.some((d) => d === undefined) ? undefined : (ds as string[]);
  };
  return [...withStatus(input.expected, measured), ...replayOnly(input.expected, reported, logged)];
}

// ---------------------------------------------------------------------------------------------
// Simulator (never platform-signed)

function verifySimulator(input: EvidenceInput, checks: Checks): RegisterVerdict[] {
  const ev = input.evidence;
  if (ev.nonce.toLowerCase() !== input.nonce.toString("hex")) checks.fail("nonce", "SIMULATOR: the evidence echoes another nonce");
  else checks.pass("nonce", "SIMULATOR: the evidence echoes the nonce (not signed: proves nothing)");
  let measured: MeasuredVerdict[] = [];
  try {
    measured = verifyRegisters(input.expected, { eventLog: b64(ev.eventLogs.tcg), ccel: b64(ev.eventLogs.ccel), userspaceLog: ev.eventLogs.systemd }).registers;
  } catch (e) {
    checks.fail("event-log", `SIMULATOR: the event logs do not parse: ${(e as Error).message}`);
  }
  return withStatus(input.expected, measured).map((v) => (v.replayed === null
    ? { ...v, ok: false, problems: [...v.problems, "SIMULATOR: no event log records it"], note: "SIMULATOR: nothing observed" }
    : { ...v, note: "SIMULATOR: from unsigned event logs, not platform-signed" }));
}

// ---------------------------------------------------------------------------------------------

const PCR_BACKENDS = new Set(["azure"]);

/** Judge one piece of evidence. Never throws for bad evidence: every problem is a failed check. */
export async function verifyEvidence(input: EvidenceInput, opts: VerifyOptions = {}): Promise<EvidenceVerdict> {
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
  if (!registers.length && checks.list.every((c) => c.ok)) checks.fail("registers", "no register could be compared with the expected measurement");
  return { ok: checks.list.every((c) => c.ok) && registers.every((r) => r.ok), issuer, checks: checks.list, registers };
}
