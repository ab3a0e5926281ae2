/**
 * verify(): replaying an observed log against a prediction. The "guest" logs are written with the
 * independent TCG log writer (tcg-log-writer.ts) from the events independent/boot_events.py predicts
 * for the fixed synthetic image, so an accepted log also means two implementations agree; each
 * tampered log must be refused with the problem named.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { measureBoot, verify, parseTdxQuote, Measurements, VerifyResult } from "../../../provider/measure";
import { fixedDiskHead, fixedUki } from "./fixed-image";
import { EV, LogEvent, writeTcgLog, writeUserspaceLog } from "./tcg-log-writer";
import { fixture, hex, independent, tempDir } from "./fixtures";

interface PyEvent { pcr: number; type: string; digest: string }
interface Prediction { tpm: Record<"sha256" | "sha384", PyEvent[]>; pcr: Record<"sha256" | "sha384", Record<string, string>>; td: { rtmr1: PyEvent[]; rtmr2: PyEvent[]; RTMR1: string; RTMR2: string } }

let py: Prediction;
let azure: Measurements;
let rtmr: Measurements;

beforeAll(async () => {
  const dir = tempDir();
  fs.writeFileSync(path.join(dir, "uki.efi"), fixedUki());
  fs.writeFileSync(path.join(dir, "disk.img"), fixedDiskHead());
  py = JSON.parse(independent("boot_events.py", ["uki.efi", "disk.img"], dir)) as Prediction;
  azure = await measureBoot({ uki: fixedUki(), diskHead: fixedDiskHead() }, { backend: "azure" });
  rtmr = await measureBoot({ uki: fixedUki(), diskHead: fixedDiskHead() }, { backend: "rtmr" });
});

/** A dev VM's firmware log (both banks) of the predicted events, optionally edited; plus the userspace log and the PCRs. */
function guest(edit: (events: LogEvent[]) => LogEvent[] = (e) => e) {
  const fw = py.tpm.sha256.map((e, i): LogEvent & { pyType: string } => ({
    index: e.pcr,
    type: EV[e.type as keyof typeof EV] ?? 0,
    pyType: e.type,
    digests: { sha256: e.digest, sha384: py.tpm.sha384[i]!.digest },
  }));
  const firmware = edit(fw.filter((e) => e.pyType !== "systemd-pcrphase"));
  const phases = fw.filter((e) => e.pyType === "systemd-pcrphase");
  return {
    eventLog: writeTcgLog(["sha256", "sha384"], firmware),
    userspaceLog: writeUserspaceLog(phases.map((p) => ({ pcr: p.index, digests: p.digests }))),
    pcrs: { sha256: Object.fromEntries(Object.entries(py.pcr.sha256).map(([k, v]) => [Number(k), v])) },
  };
}

const verdict = (r: VerifyResult, reg: string) => r.registers.find((v) => v.register === reg)!;
const failed = (r: VerifyResult) => r.registers.filter((v) => !v.ok).map((v) => v.register);

describe("verify: a dev VM's TCG log against the azure prediction", () => {
  it("accepts the log, the userspace phases and the PCRs of a matching boot; judges exact and zero registers only", () => {
    const r = verify(azure, guest());
    expect(r.registers.map((v) => v.register).sort()).toEqual(["PCR11", "PCR12", "PCR13", "PCR4", "PCR8", "PCR9"]);
    expect(r.registers.filter((v) => !v.ok)).toEqual([]);
    expect(r.ok).toBe(true);
    expect(verdict(r, "PCR11")).toMatchObject({ expected: py.pcr.sha256["11"], replayed: py.pcr.sha256["11"], reported: py.pcr.sha256["11"], problems: [] });
    expect(verdict(r, "PCR8")).toMatchObject({ expected: "0".repeat(64), replayed: "0".repeat(64), reported: null });
  });

  it("without systemd's userspace log, the predicted phases stand in for it (and still have to reproduce the PCR)", () => {
    const { eventLog, pcrs } = guest();
    expect(verify(azure, { eventLog, pcrs }).ok).toBe(true);
    const wrong = { sha256: { ...pcrs.sha256, 11: "ab".repeat(32) } };
    const r = verify(azure, { eventLog, pcrs: wrong });
    expect(failed(r)).toEqual(["PCR11"]);
    expect(verdict(r, "PCR11").problems).toEqual([
      `the log does not reproduce the reported value (replayed ${py.pcr.sha256["11"]}, reported ${"ab".repeat(32)})`,
      `reported value ${"ab".repeat(32)} ≠ expected ${py.pcr.sha256["11"]}`,
    ]);
  });

  it("names an event the log has in another order, and the value it leads to", () => {
    const g = guest((ev) => {
      const i = ev.findIndex((e) => e.index === 9);
      [ev[i], ev[i + 1]] = [ev[i + 1]!, ev[i]!]; // initrd before the command line
      return ev;
    });
    const r = verify(azure, { eventLog: g.eventLog, userspaceLog: g.userspaceLog });
    expect(failed(r)).toEqual(["PCR9"]);
    const [cmdline, initrd] = azure.registers.PCR9!.events;
    const p = verdict(r, "PCR9").problems;
    expect(p[0]).toBe(`event 1 (${cmdline!.description}) differs: expected ${cmdline!.digest}, log has ${initrd!.digest}`);
    expect(p[1]).toBe(`event 2 (${initrd!.description}) differs: expected ${initrd!.digest}, log has ${cmdline!.digest}`);
    expect(p[2]).toMatch(/^replayed value [0-9a-f]{64} ≠ expected [0-9a-f]{64}$/);
    expect(p).toHaveLength(3);
  });

  it("names a missing event and an unexpected one", () => {
    const missing = guest((ev) => ev.filter((e, i) => !(e.index === 4 && i === ev.findLastIndex((x) => x.index === 4))));
    const r1 = verify(azure, missing);
    expect(failed(r1)).toEqual(["PCR4"]);
    expect(verdict(r1, "PCR4").problems[0]).toBe("missing event 4: kernel (.linux, loaded by systemd-stub)");

    const extra = "cd".repeat(32);
    const more = guest((ev) => [...ev, { index: 11, type: EV.EV_IPL, digests: { sha256: extra, sha384: "cd".repeat(48) } }]);
    const r2 = verify(azure, { eventLog: more.eventLog, userspaceLog: more.userspaceLog });
    expect(failed(r2)).toEqual(["PCR11"]);
    // Firmware events first, then systemd's: the extra firmware event sits before the four phases.
    const n = azure.registers.PCR11!.events.filter((e) => e.log !== "userspace").length;
    expect(verdict(r2, "PCR11").problems[0]).toBe(`event ${n + 1} (boot phase "enter-initrd") differs: expected ${azure.registers.PCR11!.events[n]!.digest}, log has ${extra}`);
    expect(verdict(r2, "PCR11").problems).toContain(`unexpected event ${n + 5}: systemd ${azure.registers.PCR11!.events[n + 3]!.digest}`);
  });

  it("a register predicted zero that the log extends is refused", () => {
    const g = guest((ev) => [...ev, { index: 8, type: EV.EV_IPL, digests: { sha256: "ee".repeat(32), sha384: "ee".repeat(48) } }]);
    const r = verify(azure, { eventLog: g.eventLog, userspaceLog: g.userspaceLog });
    expect(failed(r)).toEqual(["PCR8"]);
    expect(verdict(r, "PCR8").problems[0]).toBe(`unexpected event 1: EV_IPL ${"ee".repeat(32)}`);
  });

  it("ignores EV_NO_ACTION records in the log (they are never extended)", () => {
    const noAction = (index: number): LogEvent => ({ index, type: EV.EV_NO_ACTION, digests: { sha256: "11".repeat(32), sha384: "11".repeat(48) }, data: Buffer.from("StartupLocality\0\x03") });
    const g = guest((ev) => [noAction(0), ...ev.slice(0, 3), noAction(4), ...ev.slice(3), noAction(11)]);
    const r = verify(azure, g);
    expect(r.registers.filter((v) => !v.ok)).toEqual([]);
  });
});

describe("verify: a TD's CCEL and quote against the rtmr prediction", () => {
  /** A CCEL of the predicted RTMR1/RTMR2 events (MR index 2, 3), some RTMR0 events and EV_NO_ACTION noise. */
  function tdLog(edit: (rtmr2: LogEvent[]) => LogEvent[] = (e) => e): Buffer {
    const ev = (mr: number) => (e: PyEvent): LogEvent => ({ index: mr, type: EV[e.type as keyof typeof EV] ?? 0, digests: { sha384: e.digest } });
    return writeTcgLog(["sha384"], [
      { index: 1, type: EV.EV_SEPARATOR, digests: { sha384: "00".repeat(48) } },
      { index: 2, type: EV.EV_NO_ACTION, digests: { sha384: "22".repeat(48) } },
      ...py.td.rtmr1.map(ev(2)),
      ...edit(py.td.rtmr2.map(ev(3))),
    ]);
  }

  /** The COS 113 quote with RTMR1/RTMR2 replaced (the body is not signed-checked here). */
  function quoteWith(rtmr1: string, rtmr2: string): Buffer {
    const q = Buffer.from(fixture("tdx-quote-cos113.dat"));
    const body = parseTdxQuote(q).body;
    q.write(rtmr1, q.indexOf(body.rtmr[1]!), "hex");
    q.write(rtmr2, q.indexOf(body.rtmr[2]!), "hex");
    return q;
  }

  it("accepts matching RTMR1/RTMR2 and a zero RTMR3; skips the platform-defined MRTD and RTMR0", () => {
    const quote = quoteWith(py.td.RTMR1, py.td.RTMR2);
    expect(hex(parseTdxQuote(quote).body.rtmr[1]!)).toBe(py.td.RTMR1);
    const r = verify(rtmr, { ccel: tdLog(), quote });
    expect(r.registers.map((v) => v.register)).toEqual(["RTMR1", "RTMR2", "RTMR3"]);
    expect(r.ok).toBe(true);
    expect(verdict(r, "RTMR2")).toMatchObject({ replayed: py.td.RTMR2, reported: py.td.RTMR2 });
  });

  it("refuses a quote whose RTMR2 differs, and a log with an RTMR2 event changed", () => {
    const badQuote = verify(rtmr, { ccel: tdLog(), quote: quoteWith(py.td.RTMR1, "77".repeat(48)) });
    expect(failed(badQuote)).toEqual(["RTMR2"]);
    expect(verdict(badQuote, "RTMR2").problems).toEqual([
      `the log does not reproduce the reported value (replayed ${py.td.RTMR2}, reported ${"77".repeat(48)})`,
      `reported value ${"77".repeat(48)} ≠ expected ${py.td.RTMR2}`,
    ]);
    const badLog = verify(rtmr, { ccel: tdLog((ev) => ev.map((e, i) => (i === 5 ? { ...e, digests: { sha384: "99".repeat(48) } } : e))) });
    expect(failed(badLog)).toEqual(["RTMR2"]);
    expect(verdict(badLog, "RTMR2").problems[0]).toBe(`event 6 (${rtmr.registers.RTMR2!.events[5]!.description}) differs: expected ${rtmr.registers.RTMR2!.events[5]!.digest}, log has ${"99".repeat(48)}`);
  });
});
