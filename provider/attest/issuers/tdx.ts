/**
 * Verifier half of the tdx issuer (a TD quote from configfs-tsm; agent half: agent/issuers/tdx.ts):
 * DCAP, the binding in REPORTDATA (never the zero-padded tdxs form), MRTD from the quote alone,
 * RTMRs event by event from the CCEL.
 */
import { parseCcel, CC_MR_NAMES, verify as verifyRegisters, parseTdxQuote, HashAlg, Measurements } from "../../measure";
import { attestationError } from "../tpm2";
import { endorsedMrtd, fetchEndorsement, verifyEndorsedMrtd } from "../gcpEndorsement";
import { attestBinding } from "../evidence";
import { verifyDcap } from "../dcap";
import { b64, Checks, EvidenceInput, MeasuredVerdict, RegisterVerdict, replayOnly, requireLog, sameBytes, unlisted, VerifyOptions, withStatus } from "./common";

export async function verifyTdx(input: EvidenceInput, opts: VerifyOptions, checks: Checks): Promise<RegisterVerdict[]> {
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
  const expected = await endorsedExpectation(input.expected, parsed.body.mrTd.toString("hex"), opts, now, checks);
  const ccel = b64(input.evidence.eventLogs.ccel);
  requireLog(expected, /^RTMR\d$/, ccel, "CCEL (the TD's event log)", checks);
  let measured: MeasuredVerdict[];
  let ccelEvents: ReturnType<typeof parseCcel>["events"] = [];
  try {
    if (ccel) ccelEvents = parseCcel(ccel).events;
    // MRTD is built by the TDX module and never logged in the CCEL: judge it on the quote alone
    // (measure's verify() would replay it from the CCEL as zero).
    const { MRTD, ...logged } = expected.registers;
    measured = [
      ...(MRTD ? verifyRegisters({ ...expected, registers: { MRTD } }, { quote }).registers : []),
      ...verifyRegisters({ ...expected, registers: logged }, { quote, ccel }).registers,
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
  const rows = [...withStatus(expected, measured), ...replayOnly(expected, reported, logged)];
  const signed = Object.fromEntries(["MRTD", "RTMR0", "RTMR1", "RTMR2", "RTMR3"].map((n) => [n, reported(n)!]));
  return [...rows, ...unlisted(expected, signed, rows)];
}

/**
 * GCP: MRTD is Google's firmware. When the expected measurement leaves it to the platform and the
 * verifier holds (or may fetch) Google's launch endorsement, a verified endorsement that lists the
 * quote's MRTD for the VM's configuration pins it ("endorsed"); a bad one fails "gcp-endorsement"
 * and MRTD stays unpinned.
 */
async function endorsedExpectation(expected: Measurements, mrtd: string, opts: VerifyOptions, now: Date, checks: Checks): Promise<Measurements> {
  const reg = expected.registers.MRTD;
  const g = opts.gcp;
  if (expected.backend !== "gcp" || !reg || reg.status !== "platform-defined" || reg.waived !== undefined || !g || (!g.endorsement && !g.fetch)) return expected;
  const endorsed = await checks.guard("gcp-endorsement", async () => {
    const bytes = g.endorsement ?? (await fetchEndorsement(mrtd, { baseUrl: g.baseUrl }).catch((e: Error) => {
      throw attestationError("gcp-endorsement", e.message);
    }));
    return verifyEndorsedMrtd(bytes, mrtd, { now, ramGib: g.ramGib, minSvn: g.minSvn, rootsPem: g.rootsPem });
  });
  if (!endorsed) return expected;
  checks.pass("gcp-endorsement", endorsed.detail);
  return { ...expected, registers: { ...expected.registers, MRTD: endorsedMrtd(endorsed) } };
}
