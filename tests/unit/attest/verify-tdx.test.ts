/**
 * TDX: DCAP with @phala/dcap-qvl on real Intel data (fixtures/dcap-real, see its README for what
 * this does and does not prove) and, for the paths real data cannot reach offline (a full pass,
 * TCB policy, the binding, registers), on quotes built and signed by the test PKI
 * (dcapTest.ts). Verification times are pinned.
 */
import { readFileSync } from "node:fs";
import { rm, truncate, writeFile } from "node:fs/promises";
import { createHash } from "node:crypto";
import * as path from "node:path";
import { verifyDcap, Collateral } from "../../../provider/attest/dcap";
import { verifyEvidence, EvidenceInput } from "../../../provider/attest/verify";
import { attestBinding } from "../../../provider/attest/evidence";
import { parseCcel, replayCcel, CC_MR_NAMES, Measurements, measureBoot } from "../../../provider/measure";
import { writeTcgLog } from "../measure/tcg-log-writer";
import { withAlternatives } from "../../../provider/measure/ledger";
import { fixedDiskHead, fixedUki } from "../measure/fixed-image";
import { ovmfPath } from "../measure/fixtures";
import { tempDir, tdxErrorOf } from "../../helpers";
import { buildCollateral, buildTdQuote, tdBody, TdBody, TDX_MODULE, TEST_NOW, TEST_ROOT_DER } from "./dcapTest";
import { fxText } from "./fixtures";

const measureFixture = (n: string) => readFileSync(path.join(__dirname, "..", "measure", "fixtures", n));
const REAL_NOW = new Date("2025-03-14T00:00:00Z");
const realCollateral = (): Collateral => JSON.parse(fxText("dcap-real/collateral-b0c06f-2025-03.json"));
const cos113 = () => Buffer.from(measureFixture("tdx-quote-cos113.dat"));
const dcapQvlQuote = () => Buffer.from(fxText("dcap-real/dcap-qvl-tdx-quote.hex").trim().replace(/^0x/, ""), "hex");

/** Offsets in a v4 quote: body at 48, signature data after the u32 length at 632. */
const SIG = 48 + 584 + 4;
const QE_REPORT = SIG + 64 + 64 + 6;
const flip = (q: Buffer, at: number) => {
  const b = Buffer.from(q);
  b[at] ^= 1;
  return b;
};
const real = (quote: Buffer, over: Partial<Parameters<typeof verifyDcap>[1]> = {}) => verifyDcap(quote, { collateral: realCollateral(), now: REAL_NOW, ...over });

describe("DCAP on real quotes and Intel-signed collateral", () => {
  it("GCP quote: PCK chain, QE report, QE identity and quote signature verify; no Intel TCB info for its FMSPC here", async () => {
    const e = await tdxErrorOf(() => real(cos113()));
    expect(e.details).toEqual({ check: "dcap-collateral" });
    expect(e.message).toMatch(/Fmspc mismatch/); // reached only after every signature above verified
  });

  it("dcap-qvl's sample quote: every signature verifies and the collateral is its platform's; its TCB is below every level Intel lists", async () => {
    const e = await tdxErrorOf(() => real(dcapQvlQuote()));
    expect(e.details).toEqual({ check: "tcb-status" });
    expect(e.message).toMatch(/No matching TCB level found/);
  });

  it.each([
    ["the TD report body (MRTD)", 48 + 136 + 5, "quote-signature", /ISV enclave report signature is invalid/],
    ["the header", 20, "quote-signature", /ISV enclave report signature is invalid/],
    ["the quote signature", SIG + 10, "quote-signature", /ISV enclave report signature is invalid/],
    ["the QE report", QE_REPORT + 100, "qe-report", /Signature is invalid for qe_report/],
    ["the QE report signature", QE_REPORT + 384 + 7, "qe-report", /Signature is invalid for qe_report/],
  ] as const)("a flipped byte in %s fails with a precise reason", async (_what, at, check, reason) => {
    for (const q of [cos113(), dcapQvlQuote()]) {
      const e = await tdxErrorOf(() => real(flip(q, at)));
      expect(e.details).toEqual({ check });
      expect(e.message).toMatch(reason);
    }
  });

  it("a flipped byte in the PCK certificate chain fails the chain", async () => {
    const q = cos113();
    const leaf = q.indexOf("-----BEGIN CERTIFICATE-----") + 28 + 600; // inside the leaf's base64
    const b = Buffer.from(q);
    b[leaf] = b[leaf] === 0x41 ? 0x42 : 0x41;
    const e = await tdxErrorOf(() => real(b));
    expect(e.details).toEqual({ check: "pck-chain" });
    expect(e.message).toMatch(/certificate|chain/i);
  });

  it("tampered collateral and a time outside its window are refused", async () => {
    const c = realCollateral();
    c.tcb_info = c.tcb_info.replace('"tcbStatus":"OutOfDate"', '"tcbStatus":"UpToDate"');
    expect((await tdxErrorOf(() => real(cos113(), { collateral: c }))).message).toMatch(/Signature is invalid for tcb_info/);
    expect((await tdxErrorOf(() => real(cos113(), { now: new Date("2025-05-01T00:00:00Z") }))).message).toMatch(/TCBInfo expired/);
  });

  it("reads collateral from a file and refuses a malformed one", async () => {
    const file = path.join(__dirname, "fixtures", "dcap-real", "collateral-b0c06f-2025-03.json");
    expect((await tdxErrorOf(() => verifyDcap(dcapQvlQuote(), { collateralFile: file, now: REAL_NOW }))).message).toMatch(/No matching TCB level/);
    const e = await tdxErrorOf(() => verifyDcap(dcapQvlQuote(), { collateral: { tcb_info: 5 } as never, now: REAL_NOW }));
    expect(e.details).toEqual({ check: "dcap-collateral" });
  });
});

describe("DCAP on quotes signed by the test PKI", () => {
  const opts = (collateral = buildCollateral(), over = {}) => ({ collateral, rootCaDer: TEST_ROOT_DER, now: TEST_NOW, ...over });

  it("passes UpToDate", async () => {
    expect(await verifyDcap(buildTdQuote(tdBody()), opts())).toEqual({ status: "UpToDate", advisoryIds: [], collateralSource: "given" });
  });

  it("is not trusted under Intel's real root", async () => {
    expect((await tdxErrorOf(() => verifyDcap(buildTdQuote(tdBody()), { collateral: buildCollateral(), now: TEST_NOW }))).details).toEqual({ check: "pck-chain" });
  });

  it("applies the TCB policy: OutOfDate is refused unless accepted", async () => {
    const q = buildTdQuote(tdBody());
    const e = await tdxErrorOf(() => verifyDcap(q, opts(buildCollateral({ status: "OutOfDate" }))));
    expect(e.details).toEqual({ check: "tcb-status" });
    expect(e.message).toMatch(/TCB status is OutOfDate \(INTEL-SA-TEST\); accepted: UpToDate/);
    expect((await verifyDcap(q, opts(buildCollateral({ status: "OutOfDate" }), { acceptedTcbStatuses: ["UpToDate", "OutOfDate"] }))).status).toBe("OutOfDate");
  });

  it("refuses a debug TD, a TDX module below every TCB level, a revoked-status level", async () => {
    const debug = tdBody({ tdAttributes: Buffer.from("0100001000000000", "hex") });
    expect((await tdxErrorOf(() => verifyDcap(buildTdQuote(debug), opts()))).details).toEqual({ check: "td-attributes" });
    expect((await tdxErrorOf(() => verifyDcap(buildTdQuote(tdBody()), opts(buildCollateral({ tdxSvn: [9, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] }))))).details).toEqual({ check: "tcb-status" });
    expect((await tdxErrorOf(() => verifyDcap(buildTdQuote(tdBody()), opts(buildCollateral({ status: "Revoked" }))))).details).toEqual({ check: "tcb-status" });
  });
});

describe("the TDX module's identity (checked by tdxvm: dcap-qvl 0.3.9 does not)", () => {
  const opts = (c = buildCollateral()) => ({ collateral: c, rootCaDer: TEST_ROOT_DER, now: TEST_NOW });
  it("refuses a module not signed by Intel, a debug module, a module version the TCB info does not list, a module SVN below its levels", async () => {
    await expect(verifyDcap(buildTdQuote(tdBody()), opts())).resolves.toMatchObject({ status: "UpToDate" });
    const cases: Array<[string, Buffer, ReturnType<typeof buildCollateral> | undefined, string, RegExp]> = [
      ["another signer", buildTdQuote(tdBody({ mrSignerSeam: Buffer.alloc(48, 0xab) })), undefined, "tdx-module", /MRSIGNERSEAM abababab.* not Intel's TDX module/],
      ["debug SEAM attributes", buildTdQuote(tdBody({ seamAttributes: Buffer.from("0100000000000000", "hex") })), undefined, "tdx-module", /SEAMATTRIBUTES 0100000000000000 .*debug TDX module/],
      ["major version 2, unlisted", buildTdQuote(tdBody({ teeTcbSvn: Buffer.from("04020700000000000000000000000000", "hex") })), undefined, "tdx-module", /no identity for the quote's TDX module \(TDX_02\)/],
      ["module SVN 1 below every level", buildTdQuote(tdBody({ teeTcbSvn: Buffer.from("01010700000000000000000000000000", "hex") })), buildCollateral({ tdxSvn: [1, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] }), "tcb-status", /TDX module's SVN 1 is below every TCB level of TDX_01/],
      ["module SVN 3: OutOfDate", buildTdQuote(tdBody({ teeTcbSvn: Buffer.from("03010700000000000000000000000000", "hex") })), buildCollateral({ tdxSvn: [3, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] }), "tcb-status", /TDX module's TCB status is OutOfDate \(TDX_01, SVN 3\)/],
      ["no identities in the TCB info", buildTdQuote(tdBody()), buildCollateral({ tdxModuleIdentities: [] }), "tdx-module", /no identity .*TDX_01/],
    ];
    for (const [what, q, c, check, reason] of cases) {
      const e = await tdxErrorOf(() => verifyDcap(q, opts(c)));
      expect([what, e.details, e.message]).toEqual([what, { check }, expect.stringMatching(reason)]);
    }
  });
});

describe("a minimum TEE TCB SVN (your policy, on top of Intel's statuses)", () => {
  const opts = (min?: string) => ({ collateral: buildCollateral(), rootCaDer: TEST_ROOT_DER, now: TEST_NOW, ...(min ? { minTeeTcbSvn: min } : {}) });
  it("accepts a quote at or above the floor in every component and refuses one below it in any, naming the component", async () => {
    const svn = tdBody().teeTcbSvn.toString("hex");
    await expect(verifyDcap(buildTdQuote(tdBody()), opts(svn))).resolves.toMatchObject({ status: "UpToDate" });
    await expect(verifyDcap(buildTdQuote(tdBody()), opts("00".repeat(16)))).resolves.toMatchObject({ status: "UpToDate" });
    const higher = Buffer.from(svn, "hex");
    higher[0] += 1; // the module's SVN one above this quote's
    const e = await tdxErrorOf(() => verifyDcap(buildTdQuote(tdBody()), opts(higher.toString("hex"))));
    expect([e.details, e.message]).toEqual([{ check: "tcb-svn" }, expect.stringMatching(/below the policy's minimum .* at component 0$/)]);
    expect((await tdxErrorOf(() => verifyDcap(buildTdQuote(tdBody()), opts("zz")))).code).toBe("E_VALIDATION");
  });
});

describe("the TDX module's identity, each rule on its own", () => {
  const opts = (c = buildCollateral(), over = {}) => ({ collateral: c, rootCaDer: TEST_ROOT_DER, now: TEST_NOW, ...over });
  const svn = (hex: string) => Buffer.from(hex.padEnd(32, "0"), "hex");
  /** Major version 0: judged against the TCB info's tdxModule (the collateral's TDX TCB component 1 is 0 to match). */
  const major0 = (over: Partial<TdBody> = {}) => buildTdQuote(tdBody({ teeTcbSvn: svn("040007"), ...over }));
  const major0Collateral = (tdxModule?: Record<string, unknown> | null) => buildCollateral({ tdxSvn: [4, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], tdxModule });

  it("major version 0: accepted against tdxModule; refused for another signer, other attributes, or no tdxModule", async () => {
    await expect(verifyDcap(major0(), opts(major0Collateral()))).resolves.toMatchObject({ status: "UpToDate" });
    const cases: Array<[string, Buffer, Collateral, RegExp]> = [
      ["another signer", major0({ mrSignerSeam: Buffer.alloc(48, 0xcd) }), major0Collateral(), /^tdx-module: MRSIGNERSEAM cdcdcdcdcdcdcdcd… is not the TDX module signer the TCB info names \(0000000000000000…\): not Intel's TDX module$/],
      ["a tdxModule of another signer", major0(), major0Collateral({ ...TDX_MODULE, mrsigner: "ef".repeat(48) }), /^tdx-module: MRSIGNERSEAM 0000000000000000… is not the TDX module signer the TCB info names \(efefefefefefefef…\)/],
      ["debug attributes", major0({ seamAttributes: svn("0100000000000000").subarray(0, 8) }), major0Collateral(), /^tdx-module: SEAMATTRIBUTES 0100000000000000 are not the TDX module attributes the TCB info names \(0000000000000000, mask ffffffffffffffff\)/],
    ];
    for (const [what, q, c, reason] of cases) {
      const e = await tdxErrorOf(() => verifyDcap(q, opts(c)));
      expect([what, e.details, e.message]).toEqual([what, { check: "tdx-module" }, expect.stringMatching(reason)]);
    }
    const e = await tdxErrorOf(() => verifyDcap(major0(), opts(major0Collateral(null))));
    expect([e.details, e.message]).toEqual([{ check: "tdx-module" }, expect.stringMatching(/no identity for the quote's TDX module \(tdxModule\)/)]);
  });

  it("attributes outside the mask do not matter; inside it they do", async () => {
    const masked = { ...TDX_MODULE, attributesMask: "FFFFFFFFFFFFFFFE" };
    await expect(verifyDcap(major0({ seamAttributes: Buffer.from("0000000000000001", "hex") }), opts(major0Collateral(masked)))).resolves.toMatchObject({ status: "UpToDate" });
    expect((await tdxErrorOf(() => verifyDcap(major0({ seamAttributes: Buffer.from("0000000000000002", "hex") }), opts(major0Collateral(masked))))).details).toEqual({ check: "tdx-module" });
  });

  it("the module SVN picks the first TCB level it reaches: SVN 4 is UpToDate, SVN 2 and 3 OutOfDate (accepted only when asked)", async () => {
    const q = (s: number) => buildTdQuote(tdBody({ teeTcbSvn: svn(`0${s}0107`) }));
    const c = (s: number) => buildCollateral({ tdxSvn: [s, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] });
    await expect(verifyDcap(q(5), opts(c(5)))).resolves.toMatchObject({ status: "UpToDate" });
    const e = await tdxErrorOf(() => verifyDcap(q(2), opts(c(2))));
    expect([e.details, e.message]).toEqual([{ check: "tcb-status" }, "tcb-status: the TDX module's TCB status is OutOfDate (TDX_01, SVN 2); accepted: UpToDate"]);
    await expect(verifyDcap(q(3), opts(c(3), { acceptedTcbStatuses: ["UpToDate", "OutOfDate"] }))).resolves.toMatchObject({ status: "UpToDate" });
  });

  it("refuses a TCB info whose TDX module identities are malformed", async () => {
    const e = await tdxErrorOf(() => verifyDcap(buildTdQuote(tdBody()), opts(buildCollateral({ tdxModuleIdentities: [{ id: "TDX_01", mrsigner: "zz", attributes: "00", attributesMask: "00", tcbLevels: [] }] }))));
    expect([e.details, e.message]).toEqual([{ check: "tdx-module" }, expect.stringMatching(/^tdx-module: the TCB info's TDX module identity is malformed/)]);
  });
});

describe("DCAP collateral from a file", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await tempDir("tdxvm-dcap-collateral-");
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));
  const load = (file: string) => tdxErrorOf(() => verifyDcap(buildTdQuote(tdBody()), { collateralFile: file, rootCaDer: TEST_ROOT_DER, now: TEST_NOW }));

  it("reads a good file", async () => {
    const file = path.join(dir, "good.json");
    await writeFile(file, JSON.stringify(buildCollateral()));
    await expect(verifyDcap(buildTdQuote(tdBody()), { collateralFile: file, rootCaDer: TEST_ROOT_DER, now: TEST_NOW })).resolves.toEqual({ status: "UpToDate", advisoryIds: [], collateralSource: file });
  });

  it("refuses a missing file, a directory, a file over 4 MiB, a file that is not JSON, JSON that is not collateral", async () => {
    const big = path.join(dir, "big.json");
    await writeFile(big, "");
    await truncate(big, 4 * 1024 * 1024 + 1);
    const notJson = path.join(dir, "not.json");
    await writeFile(notJson, "{ not json");
    const other = path.join(dir, "other.json");
    await writeFile(other, JSON.stringify({ tcb_info: "{}" }));
    const cases: Array<[string, RegExp]> = [
      [path.join(dir, "missing.json"), /^dcap-collateral: collateral file .*missing\.json does not exist$/],
      [dir, /^dcap-collateral: collateral file .* does not exist$/],
      [big, /^dcap-collateral: collateral file .*big\.json is 4194305 bytes \(more than 4 MiB\)$/],
      [notJson, /^dcap-collateral: collateral file .*not\.json is not JSON \(/],
      [other, /^dcap-collateral: collateral from .*other\.json is malformed: /],
    ];
    for (const [file, reason] of cases) {
      const e = await load(file);
      expect([file, e.details, e.message]).toEqual([file, { check: "dcap-collateral" }, expect.stringMatching(reason)]);
    }
  });

  it("refuses given collateral that is not collateral before the library sees it", async () => {
    const e = await tdxErrorOf(() => verifyDcap(buildTdQuote(tdBody()), { collateral: { ...buildCollateral(), tcb_info_signature: "not hex" }, rootCaDer: TEST_ROOT_DER, now: TEST_NOW }));
    expect([e.details, e.message]).toEqual([{ check: "dcap-collateral" }, expect.stringMatching(/^dcap-collateral: collateral from the caller is malformed: .*tcb_info_signature/)]);
  });
});

describe("tdx issuer", () => {
  const nonce = Buffer.alloc(32, 3);
  const spki = Buffer.alloc(32, 4);
  const ccel = measureFixture("ccel-cos113.bin");
  const events = parseCcel(ccel).events.filter((e) => e.typeName !== "EV_NO_ACTION");
  const rtmrs = replayCcel(parseCcel(ccel).events);
  const ledger = (name: string) => events.filter((e) => CC_MR_NAMES[e.index] === name).map((e, i) => ({ type: e.typeName, description: `event ${i + 1}`, origin: "CCEL of a COS 113 boot", digest: e.digests.find((d) => d.alg === "sha384")!.digest.toString("hex") }));
  const body = tdBody({ reportData: attestBinding("sha512", nonce, spki), rtmr: [rtmrs.RTMR0, rtmrs.RTMR1, rtmrs.RTMR2, Buffer.alloc(48)] });
  const quote = buildTdQuote(body);
  const expected = (): Measurements => ({
    measurementsVersion: 1, backend: "rtmr", inputs: {},
    registers: {
      MRTD: { alg: "sha384", value: body.mrTd.toString("hex"), status: "exact", events: [] },
      RTMR0: { alg: "sha384", value: null, status: "platform-defined", why: "VM shape", events: [] },
      RTMR1: { alg: "sha384", value: rtmrs.RTMR1.toString("hex"), status: "exact", events: ledger("RTMR1") },
      RTMR2: { alg: "sha384", value: rtmrs.RTMR2.toString("hex"), status: "exact", events: ledger("RTMR2") },
      RTMR3: { alg: "sha384", value: "00".repeat(48), status: "zero", events: [] },
    },
  });
  const input = (over: Partial<EvidenceInput> = {}, q = quote, log = ccel): EvidenceInput => ({
    evidence: { evidenceVersion: 1, issuer: "tdx", nonce: nonce.toString("hex"), spkiSha256: spki.toString("hex"), tdx: { quote: q.toString("base64") }, eventLogs: { ccel: log.toString("base64") } },
    nonce, channelSpkiSha256: spki, expected: expected(), ...over,
  });
  const vopts = { dcap: { collateral: buildCollateral(), rootCaDer: TEST_ROOT_DER }, now: TEST_NOW };
  const failed = (v: { checks: Array<{ check: string; ok: boolean }> }) => v.checks.filter((c) => !c.ok).map((c) => c.check);

  it("refuses an RTMR0 nobody pinned although its CCEL replays honestly: replay is not a pin", async () => {
    const v = await verifyEvidence(input(), vopts);
    expect(failed(v)).toEqual([]);
    expect(v.registers.map((r) => [r.register, r.pin, r.ok])).toEqual([["MRTD", "predicted", true], ["RTMR1", "predicted", true], ["RTMR2", "predicted", true], ["RTMR3", "zero", true], ["RTMR0", "unpinned", false]]);
    expect(v.registers.find((r) => r.register === "RTMR0")).toMatchObject({ reported: rtmrs.RTMR0.toString("hex"), replayed: rtmrs.RTMR0.toString("hex"), problems: [expect.stringMatching(/^not pinned: .*VM shape.*--waive RTMR0:/)] });
    expect(v.ok).toBe(false);
  });

  it("accepts: DCAP, REPORTDATA = binding, MRTD and RTMR1/2 event by event, RTMR3 zero, RTMR0 WAIVED by the measurement with its reason", async () => {
    const exp = expected();
    exp.registers.RTMR0!.waived = "canary CCEL not captured yet";
    const v = await verifyEvidence(input({ expected: exp }), vopts);
    expect(failed(v)).toEqual([]);
    expect(v.registers.find((r) => r.register === "RTMR0")).toMatchObject({ pin: "waived", waiver: "canary CCEL not captured yet", ok: true, replayed: rtmrs.RTMR0.toString("hex"), note: "WAIVED (canary CCEL not captured yet)" });
    expect(v.ok).toBe(true);
  });

  it("accepts an RTMR0 waived by the verifier, and refuses a waiver for a register the evidence lacks", async () => {
    const v = await verifyEvidence(input(), { ...vopts, waive: { RTMR0: "lab host" } });
    expect(v.ok).toBe(true);
    expect(v.checks.find((c) => c.check === "waivers")).toEqual({ check: "waivers", ok: true, detail: "WAIVED by the verifier: RTMR0 (lab host)" });
    expect(v.registers.find((r) => r.register === "RTMR0")).toMatchObject({ pin: "waived", waiver: "lab host", ok: true, problems: [], note: expect.stringMatching(/^WAIVED \(lab host\); unwaived it would fail: not pinned/) });
    const stray = await verifyEvidence(input(), { ...vopts, waive: { RTMR0: "lab host", PCR0: "typo" } });
    expect(failed(stray)).toEqual(["waivers"]);
    expect(stray.checks.find((c) => c.check === "waivers")!.detail).toMatch(/^waived PCR0, which this evidence does not carry/);
    expect(stray.ok).toBe(false);
  });

  it("a verifier's waiver also covers a predicted register that differs, and says what it hides", async () => {
    const exp = expected();
    exp.registers.RTMR0!.waived = "lab";
    exp.registers.RTMR1!.value = "ab".repeat(48);
    const refused = await verifyEvidence(input({ expected: exp }), vopts);
    expect(refused.registers.find((r) => r.register === "RTMR1")!.ok).toBe(false);
    const v = await verifyEvidence(input({ expected: exp }), { ...vopts, waive: { RTMR1: "known drift" } });
    expect(v.registers.find((r) => r.register === "RTMR1")).toMatchObject({ pin: "waived", ok: true, note: expect.stringMatching(/^WAIVED \(known drift\); unwaived it would fail: /) });
    expect(v.ok).toBe(true);
  });

  it("RTMR0 pinned by a canary's CCEL: an ACPI table blob that differs by one byte is refused, and the row names the ACPI tables", async () => {
    const captured = await measureBoot({ uki: fixedUki(), diskHead: fixedDiskHead() }, { backend: "rtmr", capturedCcel: ccel });
    const exp = expected();
    exp.registers.RTMR0 = captured.registers.RTMR0!;
    const same = await verifyEvidence(input({ expected: exp }), vopts);
    expect(same.registers.find((r) => r.register === "RTMR0")).toMatchObject({ pin: "captured", ok: true });
    expect(same.ok).toBe(true);
    // The host hands the firmware other ACPI tables (one table edited): the "ACPI DATA" event for
    // etc/acpi/tables gets another digest, the log replays honestly to the quoted RTMR0.
    const parsed = parseCcel(ccel);
    let acpi = 0;
    const edited = writeTcgLog(["sha384"], parsed.events.map((e) => {
      const isTables = e.index === 1 && e.data.toString("latin1") === "ACPI DATA" && acpi++ === 2;
      return { index: e.index, type: e.type, digests: { sha384: isTables ? createHash("sha384").update("tables with an edited SSDT").digest("hex") : e.digests.find((d) => d.alg === "sha384")!.digest.toString("hex") }, data: e.data };
    }));
    const r = replayCcel(parseCcel(edited).events);
    const q = buildTdQuote(tdBody({ reportData: body.reportData, rtmr: [r.RTMR0, r.RTMR1, r.RTMR2, Buffer.alloc(48)] }));
    const v = await verifyEvidence(input({ expected: exp }, q, Buffer.from(edited)), vopts);
    expect(v.ok).toBe(false);
    expect(v.registers.find((r0) => r0.register === "RTMR0")).toMatchObject({ pin: "captured", ok: false, problems: [expect.stringMatching(/^event 11 \(ACPI tables \(etc\/acpi\/tables: .*\)\) differs: expected /), expect.stringMatching(/^reported value /), expect.stringMatching(/^replayed value /)] });
  });

  it("RTMR0 predicted for a QEMU shape: a TD whose host hands it ACPI tables that differ in one table is refused, and the row names the tables", async () => {
    const table = (sig: string, len: number, fill = 0) => {
      const b = Buffer.alloc(len, fill);
      b.write(sig, 0, "latin1");
      b.writeUInt32LE(len, 4);
      return b;
    };
    const blobs = (ssdtFill: number) => ({ tableLoader: Buffer.alloc(4096, 1), rsdp: Buffer.from("RSD PTR \0BOCHS \0\0\0\0\0"), tables: Buffer.concat([table("FACS", 64), table("DSDT", 300), table("FACP", 244), table("SSDT", 80, ssdtFill), table("RSDT", 48)]) });
    const shape = (fill: number) => ({ memoryMiB: 2048, boot: "direct-kernel" as const, acpi: blobs(fill) });
    const fw = { bytes: readFileSync(ovmfPath()), name: "OVMF.fd" };
    const predicted = (await measureBoot({ uki: fixedUki(), diskHead: fixedDiskHead() }, { backend: "rtmr", firmware: fw, tdShape: shape(0) })).registers.RTMR0!;
    // What a TD on a host with one edited table (the SSDT) logs: the same events, its own tables blob.
    const onHost = (await measureBoot({ uki: fixedUki(), diskHead: fixedDiskHead() }, { backend: "rtmr", firmware: fw, tdShape: shape(0x5a) })).registers.RTMR0!;
    const typeCode: Record<string, number> = { EV_EFI_HANDOFF_TABLES2: 0x8000000b, EV_EFI_PLATFORM_FIRMWARE_BLOB2: 0x8000000a, EV_EFI_VARIABLE_DRIVER_CONFIG: 0x80000001, EV_SEPARATOR: 4, EV_PLATFORM_CONFIG_FLAGS: 0xa, EV_EFI_VARIABLE_BOOT: 0x80000002 };
    const logFor = (rtmr0: typeof onHost) => Buffer.from(writeTcgLog(["sha384"], [
      ...rtmr0.events.map((e) => ({ index: 1, type: typeCode[e.type]!, digests: { sha384: e.digest }, data: Buffer.from(e.description) })),
      ...parseCcel(ccel).events.filter((e) => e.index > 1).map((e) => ({ index: e.index, type: e.type, digests: { sha384: e.digests.find((d) => d.alg === "sha384")!.digest.toString("hex") }, data: e.data })),
    ]));
    const quoteFor = (log: Buffer) => {
      const r = replayCcel(parseCcel(log).events);
      return buildTdQuote(tdBody({ reportData: body.reportData, rtmr: [r.RTMR0, r.RTMR1, r.RTMR2, Buffer.alloc(48)] }));
    };
    const exp = expected();
    exp.registers.RTMR0 = predicted;
    const good = await verifyEvidence(input({ expected: exp }, quoteFor(logFor(predicted)), logFor(predicted)), vopts);
    expect([good.ok, good.registers.find((r) => r.register === "RTMR0")!.pin]).toEqual([true, "predicted"]);
    const edited = await verifyEvidence(input({ expected: exp }, quoteFor(logFor(onHost)), logFor(onHost)), vopts);
    expect(edited.ok).toBe(false);
    expect(edited.registers.find((r) => r.register === "RTMR0")!.problems[0]).toMatch(/^event 11 \(ACPI tables \(etc\/acpi\/tables: FACS, DSDT, FACP, SSDT, RSDT\)\) differs: expected /);
  });

  it("a measurement envelope: a TD on either listed host shape passes and the verdict names the shape; one on neither is refused", async () => {
    const captured = (log: Buffer) => measureBoot({ uki: fixedUki(), diskHead: fixedDiskHead() }, { backend: "rtmr", capturedCcel: log });
    const parsed = parseCcel(ccel);
    const withTables = (label: string) => Buffer.from(writeTcgLog(["sha384"], parsed.events.map((e) => {
      const acpiTables = e.index === 1 && e.data.toString("latin1") === "ACPI DATA" && e === parsed.events.filter((x) => x.index === 1 && x.data.toString("latin1") === "ACPI DATA")[2];
      return { index: e.index, type: e.type, digests: { sha384: acpiTables ? createHash("sha384").update(label).digest("hex") : e.digests.find((d) => d.alg === "sha384")!.digest.toString("hex") }, data: e.data };
    })));
    const [hostA, hostB, hostC] = [ccel, withTables("qemu 10.1 tables"), withTables("someone else's tables")];
    const base = expected();
    base.registers.RTMR0 = (await captured(hostA)).registers.RTMR0!;
    const other = expected();
    other.registers.RTMR0 = (await captured(hostB)).registers.RTMR0!;
    const env = withAlternatives(base, "qemu-10.0", [{ label: "qemu-10.1", m: other }]);
    expect(env.alternatives!.map((a) => [a.label, Object.keys(a.registers)])).toEqual([["qemu-10.1", ["RTMR0"]]]);
    const quoteFor = (log: Buffer) => {
      const r = replayCcel(parseCcel(log).events);
      return buildTdQuote(tdBody({ reportData: body.reportData, rtmr: [r.RTMR0, r.RTMR1, r.RTMR2, Buffer.alloc(48)] }));
    };
    const onA = await verifyEvidence(input({ expected: env }, quoteFor(hostA), hostA), vopts);
    expect([onA.ok, onA.matched]).toEqual([true, "qemu-10.0"]);
    const onB = await verifyEvidence(input({ expected: env }, quoteFor(hostB), hostB), vopts);
    expect([onB.ok, onB.matched]).toEqual([true, "qemu-10.1"]);
    expect(onB.checks.at(-1)).toEqual({ check: "envelope", ok: true, detail: "matched host shape qemu-10.1 (one of 2: qemu-10.0, qemu-10.1)" });
    const onC = await verifyEvidence(input({ expected: env }, quoteFor(hostC), hostC), vopts);
    expect([onC.ok, onC.matched]).toEqual([false, undefined]);
    expect(onC.checks.at(-1)).toMatchObject({ check: "envelope", ok: false, detail: expect.stringMatching(/^no listed host shape matches \(tried qemu-10.0, qemu-10.1\)/) });
    expect(onC.registers.find((r) => r.register === "RTMR0")!.problems[0]).toMatch(/ACPI tables/);
  });

  it("refuses another nonce and another TLS key (relay)", async () => {
    expect(failed(await verifyEvidence(input({ channelSpkiSha256: Buffer.alloc(32, 5) }), vopts))).toEqual(["channel-binding"]);
    const other = Buffer.alloc(32, 9);
    const v = await verifyEvidence(input({ nonce: other, evidence: { ...input().evidence, nonce: other.toString("hex") } }), vopts);
    expect(failed(v)).toEqual(["channel-binding"]);
  });

  it("refuses a tdxs application quote (REPORTDATA = SHA-256(…) ‖ 32 zero bytes) as a binding, by its form", async () => {
    // What a relay could get from tdxs in the VM: even over the binding's preimage it has tdxs's form.
    const preimage = Buffer.concat([Buffer.from("tdxvm-attest-v1"), Buffer.from([0]), nonce, spki]);
    const tdxs = Buffer.concat([createHash("sha256").update(preimage).digest(), Buffer.alloc(32)]);
    const v = await verifyEvidence(input({}, buildTdQuote(tdBody({ ...body, reportData: tdxs }))), vopts);
    expect(failed(v)).toEqual(["channel-binding"]);
    expect(v.checks.find((c) => c.check === "channel-binding")!.detail).toMatch(/ends in 32 zero bytes, the form of a tdxs application quote/);
  });

  it("refuses evidence without a CCEL when RTMR1/2 are predicted event by event", async () => {
    const i = input();
    i.evidence.eventLogs = {};
    const v = await verifyEvidence(i, vopts);
    expect(failed(v)).toContain("event-log");
    expect(v.checks.find((c) => c.check === "event-log")!.detail).toMatch(/no CCEL .* firmware events for RTMR1, RTMR2/);
    expect(v.ok).toBe(false);
  });

  it("refuses an image whose RTMR2 differs, naming the event", async () => {
    const exp = expected();
    exp.registers.RTMR2!.events[3] = { ...exp.registers.RTMR2!.events[3]!, digest: "ab".repeat(48), description: "UKI section .cmdline" };
    const v = await verifyEvidence(input({ expected: exp }), vopts);
    expect(v.ok).toBe(false);
    expect(v.registers.find((r) => r.register === "RTMR2")!.problems).toEqual([expect.stringMatching(/^event 4 \(UKI section \.cmdline\) differs: expected abab/)]);
  });

  it("refuses a CCEL that does not reproduce the quoted RTMR0 even when RTMR0 is waived (a waived register's log must still be honest)", async () => {
    const q = buildTdQuote(tdBody({ reportData: body.reportData, rtmr: [Buffer.alloc(48, 0xee), rtmrs.RTMR1, rtmrs.RTMR2, Buffer.alloc(48)] }));
    const exp = expected();
    exp.registers.RTMR0!.waived = "lab";
    const v = await verifyEvidence(input({ expected: exp }, q), vopts);
    expect(v.registers.find((r) => r.register === "RTMR0")).toMatchObject({ pin: "waived", ok: false, problems: [expect.stringMatching(/the log does not reproduce the signed value/)] });
    expect(v.ok).toBe(false);
  });

  it("refuses a quote that DCAP rejects, and a PCR measurement for TD evidence", async () => {
    const v0 = await verifyEvidence(input({}, flip(quote, 48 + 300)), vopts); // inside MROWNERCONFIG: signed, not bound
    expect(failed(v0)).toEqual(["quote-signature"]);
    expect(v0.checks.find((c) => c.check === "quote-signature")!.detail).toMatch(/ISV enclave report signature is invalid/);
    const v = await verifyEvidence(input({ expected: { ...expected(), backend: "azure" } }), vopts);
    expect(failed(v)).toEqual(["expected-measurement"]);
  });

  it("refuses evidence without a TD quote, and a quote that does not parse", async () => {
    const none = input();
    delete none.evidence.tdx;
    const v = await verifyEvidence(none, vopts);
    expect(failed(v)).toEqual(["evidence"]);
    expect(v.checks.find((c) => !c.ok)!.detail).toBe("tdx evidence needs a TD quote");
    expect(v.registers).toEqual([]);
    const bad = await verifyEvidence(input({}, Buffer.from("not a TD quote")), vopts);
    expect(failed(bad)).toEqual(["quote-format"]);
    expect(bad.checks.find((c) => !c.ok)!.detail).toBe("TDX quote: header at offset 0 (+48 bytes) lies outside the 14-byte input");
    expect(bad.registers).toEqual([]);
  });

  it("refuses a CCEL that does not parse", async () => {
    const v = await verifyEvidence(input({}, quote, Buffer.from("not a CCEL")), vopts);
    expect(failed(v)).toEqual(["event-log"]);
    expect(v.checks.find((c) => c.check === "event-log")!.detail).toMatch(/^replaying the CCEL failed: /);
    expect(v.registers).toEqual([]);
    expect(v.ok).toBe(false);
  });

  it("refuses by form only a REPORTDATA whose whole second half is zero", async () => {
    // One non-zero byte right after the first half: not the tdxs form, so the binding decides (and it does not match).
    const almost = Buffer.concat([attestBinding("sha512", nonce, spki).subarray(0, 32), Buffer.from([1]), Buffer.alloc(31)]);
    const v = await verifyEvidence(input({}, buildTdQuote(tdBody({ ...body, reportData: almost }))), vopts);
    expect(failed(v)).toEqual(["channel-binding"]);
    expect(v.checks.find((c) => c.check === "channel-binding")!.detail).toMatch(/^REPORTDATA is not H\(label ‖ nonce ‖ SHA-256 of this TLS connection's key\)/);
  });

  it("refuses a quote whose MRTD is not the prediction's, judged on the quote alone", async () => {
    const exp = expected();
    exp.registers.MRTD!.value = "44".repeat(48);
    const v = await verifyEvidence(input({ expected: exp }), vopts);
    expect(failed(v)).toEqual([]);
    expect(v.registers.find((r) => r.register === "MRTD")).toMatchObject({ ok: false, reported: body.mrTd.toString("hex"), expected: "44".repeat(48) });
    expect(v.ok).toBe(false);
  });

  it("refuses a DCAP failure as the check DCAP names, with its reason (TCB status, another root)", async () => {
    const v = await verifyEvidence(input(), { ...vopts, dcap: { collateral: buildCollateral({ status: "OutOfDate" }), rootCaDer: TEST_ROOT_DER } });
    expect(v.checks.filter((c) => !c.ok)).toEqual([{ check: "tcb-status", ok: false, detail: "the platform's TCB status is OutOfDate (INTEL-SA-TEST); accepted: UpToDate" }]);
    expect(v.checks.map((c) => c.check)).not.toContain("dcap");
    const root = await verifyEvidence(input(), { ...vopts, dcap: { collateral: buildCollateral() } });
    expect(failed(root)).toEqual(["pck-chain"]);
    expect(root.ok).toBe(false);
  });
});

describe("DCAP verification time (printed, not asserted)", () => {
  it("per quote", async () => {
    const q = buildTdQuote(tdBody());
    const collateral = buildCollateral();
    const runs = 20;
    const t0 = performance.now();
    const statuses = new Set<string>();
    for (let i = 0; i < runs; i++) statuses.add((await verifyDcap(q, { collateral, rootCaDer: TEST_ROOT_DER, now: TEST_NOW })).status);
    const full = (performance.now() - t0) / runs;
    const t1 = performance.now();
    for (let i = 0; i < runs; i++) await real(cos113()).catch(() => undefined);
    const realMs = (performance.now() - t1) / runs;
    console.log(`DCAP verification: ${full.toFixed(1)} ms per quote (full pass, test PKI); ${realMs.toFixed(1)} ms per real GCP quote (every signature, stops at the FMSPC check)`);
    expect([...statuses]).toEqual(["UpToDate"]);
  });
});
