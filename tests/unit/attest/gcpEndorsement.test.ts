/**
 * GCP: MRTD pinned by Google's launch endorsement. No Google-signed endorsement is public as a file
 * (see fixtures/README.md), so the endorsements here are made by this test's own protobuf writer
 * and signed with the test keys Google publishes for gce-tcb-verifier (fixtures/gcp-devkeys): the
 * same certificate shapes, algorithm (RSA-PSS/SHA-256, salt 32) and message layout as Google's.
 * The real GCP quote (measure fixtures, a COS 113 boot) provides the MRTD.
 */
import { constants, createPrivateKey, sign } from "node:crypto";
import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as path from "node:path";
import { AddressInfo } from "node:net";
import { fetchEndorsement, GOOGLE_TCB_ROOT_SHA256, parseEndorsement, verifyEndorsedMrtd, withEndorsedMrtd } from "../../../provider/attest/gcpEndorsement";
import { verifyEvidence } from "../../../provider/attest/verify";
import { attestBinding } from "../../../provider/attest/evidence";
import { parseTdxQuote, Measurements, parseCcel, replayCcel, CC_MR_NAMES } from "../../../provider/measure";
import { pinOf } from "../../../provider/measure/ledger";
import { tdxErrorOf } from "../../helpers";
import { buildCollateral, buildTdQuote, tdBody, TEST_NOW, TEST_ROOT_DER } from "./dcapTest";

const fx = (f: string) => readFileSync(path.join(__dirname, "fixtures", f));
const ROOT = fx("gcp-devkeys/root.crt").toString("utf8");
const SIGNER_DER = fx("gcp-devkeys/primarySigningKey.crt");
const SIGNER_KEY = createPrivateKey(fx("gcp-devkeys/primarySigningKey.pem"));
const OTHER_ROOT = fx("tpm/ca.pem").toString("utf8");
const REAL_QUOTE = readFileSync(path.join(__dirname, "../measure/fixtures/tdx-quote-cos113.dat"));
const REAL_MRTD = parseTdxQuote(REAL_QUOTE).body.mrTd.toString("hex");
const NOW = new Date("2026-06-01T00:00:00Z");

// ---- protobuf writer (varint and length-delimited fields only), independent of the reader ----
const varint = (n: number | bigint): Buffer => {
  const out: number[] = [];
  let v = BigInt(n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v) b |= 0x80;
    out.push(b);
  } while (v);
  return Buffer.from(out);
};
const vField = (n: number, v: number | bigint) => (BigInt(v) === 0n ? Buffer.alloc(0) : Buffer.concat([varint(n << 3), varint(v)]));
const bField = (n: number, b: Buffer) => Buffer.concat([varint((n << 3) | 2), varint(b.length), b]);

interface Made { ramGib?: number; earlyAccept?: boolean; mrtd: string }
function golden(o: { measurements: Made[]; svn?: number; cert?: Buffer; caBundle?: string; seconds?: number }): Buffer {
  const tdx = Buffer.concat([vField(1, o.svn ?? 2), ...o.measurements.map((m) => bField(2, Buffer.concat([vField(1, m.ramGib ?? 0), vField(2, m.earlyAccept ? 1 : 0), bField(3, Buffer.from(m.mrtd, "hex"))])))]);
  return Buffer.concat([
    bField(1, vField(1, o.seconds ?? 1_767_225_600)), // 2026-01-01
    vField(2, 123456), bField(3, Buffer.alloc(20, 7)), bField(4, o.cert ?? SIGNER_DER), bField(5, Buffer.alloc(48, 0x5a)),
    bField(6, Buffer.from(o.caBundle ?? ROOT)), bField(8, tdx),
  ]);
}
const pss = (data: Buffer) => sign("sha256", data, { key: SIGNER_KEY, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
function endorsement(o: Parameters<typeof golden>[0], tamper?: (g: Buffer, sig: Buffer) => void): Buffer {
  const g = golden(o);
  const sig = pss(g);
  tamper?.(g, sig);
  return Buffer.concat([bField(1, g), bField(2, sig)]);
}
const valid = () => endorsement({ measurements: [{ mrtd: REAL_MRTD }] });
const opts = { now: NOW, rootsPem: [ROOT] };
const reason = async (f: () => unknown) => {
  const e = await tdxErrorOf(async () => f());
  expect([e.code, e.details?.check]).toEqual(["E_ATTESTATION", "gcp-endorsement"]);
  return e.message;
};

describe("Google's launch endorsement (test keys)", () => {
  it("decodes the message Google signs and accepts the real quote's MRTD when it is listed", () => {
    const e = parseEndorsement(valid());
    expect({ ts: e.timestamp?.toISOString(), svn: e.tdx?.svn, n: e.tdx?.measurements.length, fw: e.firmwareSha384, commit: e.commit, cl: e.clSpec })
      .toEqual({ ts: "2026-01-01T00:00:00.000Z", svn: 2, n: 1, fw: "5a".repeat(48), commit: "07".repeat(20), cl: 123456n });
    const r = verifyEndorsedMrtd(valid(), REAL_MRTD, opts);
    expect(r.entry).toEqual({ ramGib: 0, earlyAccept: false, mrtd: REAL_MRTD });
    expect(r.detail).toMatch(/^Google's launch endorsement lists this MRTD \(any memory size\) for firmware SHA-384 5a5a.*SVN 2, signed 2026-01-01T00:00:00.000Z by GCE-uefi-signer$/);
  });

  it("refuses each bad endorsement with its reason", async () => {
    expect(await reason(() => verifyEndorsedMrtd(endorsement({ measurements: [{ mrtd: REAL_MRTD }] }, (_g, sig) => { sig[100] ^= 1; }), REAL_MRTD, opts))).toMatch(/signature over the golden measurement does not verify/);
    // The signed bytes changed after signing (another MRTD slipped in): same refusal.
    const swapped = Buffer.concat([bField(1, golden({ measurements: [{ mrtd: "ab".repeat(48) }] })), bField(2, pss(golden({ measurements: [{ mrtd: REAL_MRTD }] })))]);
    expect(await reason(() => verifyEndorsedMrtd(swapped, "ab".repeat(48), opts))).toMatch(/does not verify/);
    expect(await reason(() => verifyEndorsedMrtd(valid(), REAL_MRTD, { now: NOW, rootsPem: [OTHER_ROOT] }))).toMatch(/does not chain to the trusted root: no trusted issuer for .*GCE-uefi-signer/);
    // By default only Google's pinned root is trusted: the test root in the bundle has Google's name, not its key.
    expect(await reason(() => verifyEndorsedMrtd(valid(), REAL_MRTD, { now: NOW }))).toContain(`holds no root tdxvm trusts (Google's GCE-cc-tcb-root_1, DER SHA-256 ${GOOGLE_TCB_ROOT_SHA256[0]})`);
    expect(await reason(() => verifyEndorsedMrtd(valid(), "cd".repeat(48), opts))).toMatch(/the quote's MRTD cdcdcdcdcdcdcdcd… is not among the 1 MRTD\(s\) the endorsement lists/);
    const sized = endorsement({ measurements: [{ ramGib: 16, mrtd: REAL_MRTD }, { ramGib: 16, earlyAccept: true, mrtd: "ee".repeat(48) }] });
    expect(verifyEndorsedMrtd(sized, REAL_MRTD, { ...opts, ramGib: 16 }).entry.ramGib).toBe(16);
    expect(await reason(() => verifyEndorsedMrtd(sized, REAL_MRTD, { ...opts, ramGib: 32 }))).toMatch(/endorsed only for 16 GiB, not for this VM's 32 GiB/);
    expect(await reason(() => verifyEndorsedMrtd(endorsement({ measurements: [{ mrtd: REAL_MRTD }], svn: 1 }), REAL_MRTD, { ...opts, minSvn: 2 }))).toMatch(/SVN is 1, below the floor 2/);
    expect(await reason(() => verifyEndorsedMrtd(valid(), REAL_MRTD, { ...opts, now: new Date("2030-01-01T00:00:00Z") }))).toMatch(/GCE-uefi-signer.* is not valid at 2030-01-01/);
    expect(await reason(() => verifyEndorsedMrtd(endorsement({ measurements: [{ mrtd: REAL_MRTD }], cert: Buffer.from(ROOT.replace(/-----[^-]+-----|\s/g, ""), "base64") }), REAL_MRTD, opts))).toMatch(/signature .* does not verify|CA certificate/);
  });

  it("refuses malformed bytes as such, never a crash", async () => {
    const good = valid();
    for (const cut of [1, 7, 100, good.length - 1]) expect(await reason(() => parseEndorsement(good.subarray(0, cut)))).toMatch(/truncated|runs past the end|lacks/);
    expect(await reason(() => parseEndorsement(Buffer.concat([bField(1, Buffer.from([0x0b])), bField(2, Buffer.alloc(4))])))).toMatch(/unsupported wire type 3/);
    expect(await reason(() => parseEndorsement(Buffer.alloc(300 * 1024)))).toMatch(/is 307200 bytes, more than 262144$/);
    const noDigest = Buffer.concat([bField(1, bField(4, SIGNER_DER)), bField(2, Buffer.alloc(4))]);
    expect(await reason(() => parseEndorsement(noDigest))).toMatch(/firmware digest is 0 bytes, not a SHA-384/);
  });

  it("fetches by MRTD from the bucket layout (a local stand-in), bounded; a 404 says Google endorses no such firmware", async () => {
    const served = valid(); // RSA-PSS salts are random: one signed copy
    const seen: string[] = [];
    const server = http.createServer((req, res) => {
      seen.push(req.url ?? "");
      if (req.url === `/b/ovmf_x64_csm/tdx/${REAL_MRTD}.binarypb`) res.end(served);
      else if (req.url?.includes("ffff")) res.end(Buffer.alloc(300 * 1024));
      else res.writeHead(404).end();
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/b`;
    try {
      expect((await fetchEndorsement(REAL_MRTD, { baseUrl: base })).equals(served)).toBe(true);
      const missing = await tdxErrorOf(() => fetchEndorsement("ab".repeat(48), { baseUrl: base }));
      expect([missing.code, missing.message]).toEqual(["E_FETCH", expect.stringMatching(/HTTP 404: Google endorses no firmware with this MRTD/)]);
      expect((await tdxErrorOf(() => fetchEndorsement("ff".repeat(48), { baseUrl: base }))).message).toMatch(/more than 262144 bytes/);
      expect((await tdxErrorOf(() => fetchEndorsement("../etc/passwd", { baseUrl: base }))).code).toBe("E_VALIDATION");
      expect(seen[0]).toBe(`/b/ovmf_x64_csm/tdx/${REAL_MRTD}.binarypb`);
    } finally {
      server.close();
    }
  });
});

describe("GCP quotes: MRTD is endorsed, or the verdict fails naming it", () => {
  const gcpExpected = (): Measurements => ({
    measurementsVersion: 1, backend: "gcp", inputs: {},
    registers: {
      MRTD: { alg: "sha384", value: null, status: "platform-defined", why: "Google's TDVF firmware", events: [] },
      RTMR0: { alg: "sha384", value: null, status: "platform-defined", why: "VM shape", waived: "test: not the subject here", events: [] },
    },
  });
  const mrtdRow = (v: Awaited<ReturnType<typeof verifyEvidence>>) => v.registers.find((r) => r.register === "MRTD")!;

  it("the real COS 113 quote: without an endorsement MRTD is NOT PINNED; with one listing it, MRTD is endorsed", async () => {
    // Its REPORTDATA is not our binding and no TCB info exists for its platform here: those checks
    // fail on their own; what is judged here is the MRTD row.
    const ccel = readFileSync(path.join(__dirname, "../measure/fixtures/ccel-cos113.bin"));
    const input = (expected: Measurements) => ({
      evidence: { evidenceVersion: 1 as const, issuer: "tdx" as const, nonce: "00".repeat(32), spkiSha256: "00".repeat(32), tdx: { quote: REAL_QUOTE.toString("base64") }, eventLogs: { ccel: ccel.toString("base64") } },
      nonce: Buffer.alloc(32), channelSpkiSha256: Buffer.alloc(32), expected,
    });
    const without = await verifyEvidence(input(gcpExpected()), { now: TEST_NOW });
    expect(mrtdRow(without)).toMatchObject({ pin: "unpinned", ok: false, reported: REAL_MRTD, problems: [expect.stringMatching(/^not pinned: .*Google's TDVF firmware/)] });
    const withIt = await verifyEvidence(input(gcpExpected()), { now: NOW, gcp: { endorsement: valid(), rootsPem: [ROOT] } });
    expect(mrtdRow(withIt)).toMatchObject({ pin: "endorsed", ok: true, expected: REAL_MRTD, reported: REAL_MRTD });
    expect(withIt.checks.find((c) => c.check === "gcp-endorsement")).toMatchObject({ ok: true, detail: expect.stringMatching(/lists this MRTD/) });
    const bad = await verifyEvidence(input(gcpExpected()), { now: NOW, gcp: { endorsement: valid() } }); // Google's root only
    expect(bad.checks.find((c) => c.check === "gcp-endorsement")).toMatchObject({ ok: false, detail: expect.stringMatching(/holds no root tdxvm trusts/) });
    expect(mrtdRow(bad)).toMatchObject({ pin: "unpinned", ok: false });
  });

  it("a test-key quote passes only with its endorsement; a measurement made with the endorsement pins MRTD ahead of time", async () => {
    const nonce = Buffer.alloc(32, 1);
    const spki = Buffer.alloc(32, 2);
    const ccel = readFileSync(path.join(__dirname, "../measure/fixtures/ccel-cos113.bin"));
    const rtmrs = replayCcel(parseCcel(ccel).events);
    const body = tdBody({ reportData: attestBinding("sha512", nonce, spki), rtmr: [rtmrs.RTMR0, rtmrs.RTMR1, rtmrs.RTMR2, Buffer.alloc(48)] });
    const mrtd = body.mrTd.toString("hex");
    const input = (expected: Measurements) => ({
      evidence: { evidenceVersion: 1 as const, issuer: "tdx" as const, nonce: nonce.toString("hex"), spkiSha256: spki.toString("hex"), tdx: { quote: buildTdQuote(body).toString("base64") }, eventLogs: { ccel: ccel.toString("base64") } },
      nonce, channelSpkiSha256: spki, expected,
    });
    const dcap = { collateral: buildCollateral(), rootCaDer: TEST_ROOT_DER };
    const e = endorsement({ measurements: [{ mrtd }] });
    const refused = await verifyEvidence(input(gcpExpected()), { now: TEST_NOW, dcap });
    expect([refused.ok, mrtdRow(refused).pin]).toEqual([false, "unpinned"]);
    // An expectation that leaves RTMR1–3 out is refused for them too (unlisted is unpinned).
    expect(refused.registers.filter((r) => !r.ok).map((r) => [r.register, r.pin])).toEqual([["MRTD", "unpinned"], ["RTMR1", "unpinned"], ["RTMR2", "unpinned"], ["RTMR3", "unpinned"]]);
    expect(refused.registers.find((r) => r.register === "RTMR1")!.problems[0]).toMatch(/the platform signs RTMR1 but the expected measurement does not name it/);
    // With the image's registers pinned (the CCEL's events), only MRTD is left to the endorsement.
    const ledger = (name: string) => parseCcel(ccel).events.filter((x) => CC_MR_NAMES[x.index] === name && x.typeName !== "EV_NO_ACTION").map((x) => ({ type: x.typeName, description: x.typeName, origin: "CCEL", digest: x.digests.find((d) => d.alg === "sha384")!.digest.toString("hex") }));
    const full = (): Measurements => ({ ...gcpExpected(), registers: { ...gcpExpected().registers,
      RTMR1: { alg: "sha384", value: rtmrs.RTMR1.toString("hex"), status: "exact", events: ledger("RTMR1") },
      RTMR2: { alg: "sha384", value: rtmrs.RTMR2.toString("hex"), status: "exact", events: ledger("RTMR2") },
      RTMR3: { alg: "sha384", value: "00".repeat(48), status: "zero", events: [] } } });
    const onlyMrtd = await verifyEvidence(input(full()), { now: TEST_NOW, dcap });
    expect(onlyMrtd.registers.filter((r) => !r.ok).map((r) => r.register)).toEqual(["MRTD"]);
    // TEST_NOW (2025-03) is inside the test signer's validity.
    const ok = await verifyEvidence(input(full()), { now: TEST_NOW, dcap, gcp: { endorsement: e, rootsPem: [ROOT] } });
    expect([ok.ok, mrtdRow(ok).pin]).toEqual([true, "endorsed"]);
    // Ahead of time: TdxMeasurement / measure --endorsement put the endorsed MRTD into the measurement.
    const m = withEndorsedMrtd(full(), e, { now: TEST_NOW, rootsPem: [ROOT] });
    expect([pinOf(m.registers.MRTD!), m.registers.MRTD!.value, m.inputs.firmwareSvn]).toEqual(["endorsed", mrtd, 2]);
    expect(m.registers.MRTD!.events[0]!.origin).toMatch(/^launch endorsement signed 2026-01-01T00:00:00.000Z for firmware SHA-384 5a5a/);
    const pinned = await verifyEvidence(input(m), { now: TEST_NOW, dcap });
    expect([pinned.ok, mrtdRow(pinned).pin]).toEqual([true, "endorsed"]);
    const other = withEndorsedMrtd(full(), endorsement({ measurements: [{ mrtd: "ab".repeat(48) }] }), { now: TEST_NOW, rootsPem: [ROOT] });
    const mismatch = await verifyEvidence(input(other), { now: TEST_NOW, dcap });
    expect([mismatch.ok, mrtdRow(mismatch).ok]).toEqual([false, false]);
    expect((await tdxErrorOf(async () => withEndorsedMrtd({ ...gcpExpected(), backend: "rtmr" }, e, { now: TEST_NOW, rootsPem: [ROOT] }))).code).toBe("E_VALIDATION");
    expect((await tdxErrorOf(async () => withEndorsedMrtd(full(), e, { now: TEST_NOW }))).code).toBe("E_MEASUREMENT");
  });
});
