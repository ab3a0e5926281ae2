/**
 * verify(expected, {eventLog | ccel, quote | pcrs}): replay an observed log, check that it
 * reproduces the observed register values (from a quote or a PCR read), and compare it event by
 * event with the expectation. Only registers the expectation claims as exact are judged.
 */
import { HashAlg, DIGEST_SIZES, digest } from "./bytes";
import { parseEventLog, parseCcel, TcgEvent, CC_MR_NAMES } from "./eventlog";
import { parseTdxQuote } from "./quote";
import { Measurements } from "./ledger";
import { TdxError } from "../errors";

export interface VerifyInput {
  /** TCG2 TPM event log (binary_bios_measurements): for the azure backend and dev boots. */
  eventLog?: Buffer;
  /** TDX CCEL (the ACPI CCEL log area): for the rtmr and gcp backends. */
  ccel?: Buffer;
  /** Observed PCR values, bank → index → hex (e.g. from tpm2_pcrread). */
  pcrs?: Record<string, Record<number, string>>;
  /** TDX quote: supplies the observed MRTD and RTMRs. */
  quote?: Buffer;
  /** systemd's userspace measurement log (/run/log/systemd/tpm2-measure.log, JSON-SEQ). */
  userspaceLog?: string;
}

interface ObservedEvent { type: string; digests: Map<string, string>; log: "firmware" | "userspace" }

/** Records of systemd's tpm2-measure.log: RS-separated JSON objects {pcr, digests:[{hashAlg, digest}], content}. */
export function parseUserspaceLog(text: string): Array<{ pcr: number; event: ObservedEvent }> {
  const out: Array<{ pcr: number; event: ObservedEvent }> = [];
  const RS = String.fromCharCode(0x1e); // JSON-SEQ record separator (RFC 7464)
  for (const rec of text.split(RS).flatMap((r) => r.split("\n"))) {
    if (!rec.trim()) continue;
    let j: unknown;
    try {
      j = JSON.parse(rec);
    } catch {
      continue;
    }
    // Guest-written: every field is checked for its type before use.
    const { pcr, digests } = (j !== null && typeof j === "object" ? j : {}) as { pcr?: unknown; digests?: unknown };
    if (!Number.isInteger(pcr) || !Array.isArray(digests)) continue;
    const pairs = digests.flatMap((d: unknown) => {
      const { hashAlg, digest: value } = (d !== null && typeof d === "object" ? d : {}) as { hashAlg?: unknown; digest?: unknown };
      return typeof hashAlg === "string" && hashAlg && typeof value === "string" && value ? [[hashAlg, value.toLowerCase()] as [string, string]] : [];
    });
    out.push({ pcr: pcr as number, event: { type: "systemd", log: "userspace", digests: new Map(pairs) } });
  }
  return out;
}

export interface RegisterVerdict {
  register: string;
  expected: string | null;
  /** Value replayed from the observed log. */
  replayed: string | null;
  /** Value reported by the platform (quote / PCR read), when given. */
  reported: string | null;
  ok: boolean;
  problems: string[];
}

export interface VerifyResult { ok: boolean; registers: RegisterVerdict[] }

function observedEvents(input: VerifyInput): Map<string, ObservedEvent[]> {
  const byRegister = new Map<string, ObservedEvent[]>();
  const add = (name: string, e: ObservedEvent) => {
    const list = byRegister.get(name);
    if (list) list.push(e);
    else byRegister.set(name, [e]);
  };
  const fromTcg = (e: TcgEvent): ObservedEvent => ({ type: e.typeName, log: "firmware", digests: new Map(e.digests.filter((d) => d.alg).map((d) => [d.alg!, d.digest.toString("hex")])) });
  if (input.eventLog) for (const e of parseEventLog(input.eventLog).events) if (e.typeName !== "EV_NO_ACTION") add(`PCR${e.index}`, fromTcg(e));
  if (input.ccel) for (const e of parseCcel(input.ccel).events) if (e.typeName !== "EV_NO_ACTION") add(CC_MR_NAMES[e.index] ?? `MR${e.index}`, fromTcg(e));
  if (input.userspaceLog) for (const { pcr, event } of parseUserspaceLog(input.userspaceLog)) add(`PCR${pcr}`, event);
  return byRegister;
}

function replay(alg: HashAlg, digests: string[]): string {
  let r: Buffer = Buffer.alloc(DIGEST_SIZES[alg]);
  for (const d of digests) r = digest(alg, r, Buffer.from(d, "hex"));
  return r.toString("hex");
}

function reportedValue(input: VerifyInput, register: string, alg: HashAlg): string | null {
  const pcr = /^PCR(\d+)$/.exec(register);
  const bank: unknown = input.pcrs && typeof input.pcrs === "object" ? input.pcrs[alg] : undefined;
  const v: unknown = pcr && bank && typeof bank === "object" ? (bank as Record<number, unknown>)[Number(pcr[1])] : undefined;
  if (typeof v === "string" && v) return v.toLowerCase();
  if (input.quote && /^(MRTD|RTMR[0-3])$/.test(register)) {
    const b = parseTdxQuote(input.quote).body;
    return (register === "MRTD" ? b.mrTd : b.rtmr[Number(register.slice(4))]).toString("hex");
  }
  return null;
}

/**
 * Everything in `input` comes from the guest (or a host that relays it): malformed data of any
 * shape fails with E_MEASUREMENT, never with another exception.
 */
export function verify(expected: Measurements, input: VerifyInput): VerifyResult {
  const bad = (what: string) => new TdxError("E_MEASUREMENT", `cannot verify: ${what}`, { hint: "The guest supplied malformed evidence; collect it again from the VM (and trust it only once it verifies)." });
  if (input === null || typeof input !== "object") throw bad("no evidence given");
  for (const k of ["eventLog", "ccel", "quote"] as const) if (input[k] !== undefined && !Buffer.isBuffer(input[k])) throw bad(`${k} is not binary data`);
  if (input.userspaceLog !== undefined && typeof input.userspaceLog !== "string") throw bad("the userspace log is not text");
  try {
    return verifyChecked(expected, input);
  } catch (e) {
    if (e instanceof TdxError) throw e;
    // A backstop: a guest must not be able to crash the verifier with a shape nobody foresaw.
    throw bad(`malformed evidence (${(e as Error)?.name ?? "error"})`);
  }
}

function verifyChecked(expected: Measurements, input: VerifyInput): VerifyResult {
  const byRegister = observedEvents(input);
  const haveUserspace = input.userspaceLog !== undefined;
  // Events are compared when a firmware log is given; a quote or PCR read alone is compared by value.
  const haveLog = input.eventLog !== undefined || input.ccel !== undefined;
  const verdicts: RegisterVerdict[] = [];
  for (const [name, reg] of Object.entries(expected.registers)) {
    if (reg.status === "platform-defined") continue;
    const problems: string[] = [];
    const observed = byRegister.get(name) ?? [];
    // Without systemd's userspace log, its expected events stand in for the observed ones.
    const want = haveUserspace ? reg.events : reg.events.filter((e) => (e.log ?? "firmware") === "firmware");
    const assumed = haveUserspace ? [] : reg.events.filter((e) => e.log === "userspace").map((e) => e.digest);
    // MRTD is built by the TDX module from the firmware's pages, not extended from a log: by value only.
    const fromLog = haveLog && name !== "MRTD";
    const n = fromLog ? Math.max(want.length, observed.length) : 0;
    for (let i = 0; i < n; i++) {
      const w = want[i];
      const got = observed[i];
      const d = got?.digests.get(reg.alg);
      if (w && !got) problems.push(`missing event ${i + 1}: ${w.description}`);
      else if (!w && got) problems.push(`unexpected event ${i + 1}: ${got.type} ${d ?? ""}`);
      else if (w && got && w.digest !== d) problems.push(`event ${i + 1} (${w.description}) differs: expected ${w.digest}, log has ${d ?? "no " + reg.alg + " digest"}`);
    }
    const loggedDigests = observed.map((e) => e.digests.get(reg.alg)).filter((x): x is string => x !== undefined);
    const replayed = fromLog ? replay(reg.alg, [...loggedDigests, ...assumed]) : null;
    const reported = reportedValue(input, name, reg.alg);
    if (replayed !== null && reported !== null && replayed !== reported) problems.push(`the log does not reproduce the reported value (replayed ${replayed}, reported ${reported})`);
    if (reg.value !== null && reported !== null && reg.value !== reported) problems.push(`reported value ${reported} ≠ expected ${reg.value}`);
    if (reg.value !== null && replayed !== null && reg.value !== replayed) problems.push(`replayed value ${replayed} ≠ expected ${reg.value}`);
    verdicts.push({ register: name, expected: reg.value, replayed, reported, ok: problems.length === 0, problems });
  }
  return { ok: verdicts.every((v) => v.ok), registers: verdicts };
}
