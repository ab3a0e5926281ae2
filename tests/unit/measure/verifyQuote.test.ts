/**
 * verify() on captured TDX evidence (the COS 113 boot of fixtures/README.md: its quote and its
 * CCEL): a quote alone is judged by value, a quote with its CCEL event by event as well.
 */
import { verify, parseCcel, parseTdxQuote, Measurements, RegisterValue } from "../../../provider/measure";
import { fixture, hex } from "./fixtures";

const quote = fixture("tdx-quote-cos113.dat");
const ccel = fixture("ccel-cos113.bin");
const body = parseTdxQuote(quote).body;

/** Expected measurements as a verifier would hold them: the registers' values and the CCEL's events. */
function expected(): Measurements {
  const events = parseCcel(ccel).events.filter((e) => e.typeName !== "EV_NO_ACTION");
  const rtmr = (i: number): RegisterValue => ({
    alg: "sha384", status: "exact", value: hex(body.rtmr[i]),
    events: events.filter((e) => e.register === `RTMR${i}`).map((e) => ({ type: e.typeName, description: e.typeName, origin: "ccel", digest: hex(e.digests.find((d) => d.alg === "sha384")!.digest) })),
  });
  return { measurementsVersion: 1, backend: "gcp", registers: { MRTD: { alg: "sha384", status: "exact", value: hex(body.mrTd), events: [] }, RTMR0: rtmr(0), RTMR1: rtmr(1), RTMR2: rtmr(2) }, inputs: {} };
}

describe("verify with a TDX quote", () => {
  it("a quote alone is compared by value: no event is reported missing", () => {
    const r = verify(expected(), { quote });
    expect(r.registers.map((v) => [v.register, v.ok, v.problems])).toEqual([["MRTD", true, []], ["RTMR0", true, []], ["RTMR1", true, []], ["RTMR2", true, []]]);
    expect(r.registers.find((v) => v.register === "RTMR1")!.reported).toBe(hex(body.rtmr[1]));
    expect(r.ok).toBe(true);
  });

  it("a quote with its CCEL: RTMRs replayed and compared event by event, MRTD (not logged) by value", () => {
    const r = verify(expected(), { quote, ccel });
    expect(r.registers.map((v) => [v.register, v.problems])).toEqual([["MRTD", []], ["RTMR0", []], ["RTMR1", []], ["RTMR2", []]]);
    expect(r.registers.find((v) => v.register === "MRTD")!.replayed).toBeNull();
    expect(r.registers.find((v) => v.register === "RTMR2")!.replayed).toBe(hex(body.rtmr[2]));
  });

  it("a register the quote contradicts fails, naming both values", () => {
    const m = expected();
    m.registers.RTMR2.value = "00".repeat(48);
    const r = verify(m, { quote });
    expect(r.ok).toBe(false);
    expect(r.registers.find((v) => v.register === "RTMR2")!.problems).toEqual([`reported value ${hex(body.rtmr[2])} ≠ expected ${"00".repeat(48)}`]);
  });

  it("an event the CCEL does not have fails event by event", () => {
    const m = expected();
    m.registers.RTMR1.events[2] = { ...m.registers.RTMR1.events[2], digest: "11".repeat(48), description: "GPT of the boot disk" };
    const r = verify(m, { quote, ccel });
    const p = r.registers.find((v) => v.register === "RTMR1")!.problems;
    expect(p[0]).toMatch(/^event 3 \(GPT of the boot disk\) differs: expected 1{96}, log has [0-9a-f]{96}$/);
    expect(r.ok).toBe(false);
  });
});
