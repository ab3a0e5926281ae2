/** The simulator issuer: never platform-signed. Accepted only with allowSimulator, and every row says so. */
import { verify as verifyRegisters } from "../../measure";
import { b64, Checks, EvidenceInput, MeasuredVerdict, RegisterVerdict, withStatus } from "./common";

export function verifySimulator(input: EvidenceInput, checks: Checks): RegisterVerdict[] {
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
