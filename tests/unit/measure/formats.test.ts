/**
 * Measurement files: tdxvm's own (read back as hostile input), and the interop exports held to the
 * shapes their readers accept — the same checks applied to the formats' published examples.
 */
import { FlashbotsFileSchema, ConstellationSchema, toFlashbots, toConstellation, toTrusteeReferenceValues, parseMeasurements, formatMeasurements, measurementId } from "../../../provider/measure/formats";
import { Measurements, RegisterValue } from "../../../provider/measure/ledger";
import { tdxErrorOf } from "../../helpers";

const h = (c: string, bytes: number) => c.repeat(bytes * 2);
const reg = (alg: "sha256" | "sha384", status: RegisterValue["status"], value: string | null): RegisterValue =>
  ({ alg, status, value, events: value && status === "exact" ? [{ type: "EV_EFI_BOOT_SERVICES_APPLICATION", description: "UKI", origin: "uki", digest: value }] : [], ...(status === "platform-defined" ? { why: "the platform's" } : {}) });

const td: Measurements = {
  measurementsVersion: 1, backend: "rtmr",
  registers: { MRTD: reg("sha384", "exact", h("a", 48)), RTMR0: { ...reg("sha384", "platform-defined", null), waived: "lab host" }, RTMR1: reg("sha384", "exact", h("b", 48)), RTMR2: reg("sha384", "exact", h("c", 48)), RTMR3: reg("sha384", "zero", h("0", 48)) },
  inputs: { profile: "default", ukiSha256: h("d", 32) },
};
const vtpm: Measurements = {
  measurementsVersion: 1, backend: "azure",
  registers: { PCR0: { ...reg("sha256", "platform-defined", null), waived: "Azure's firmware" }, PCR4: reg("sha256", "exact", h("1", 32)), PCR8: reg("sha256", "zero", h("0", 32)), PCR9: reg("sha256", "exact", h("2", 32)), PCR11: reg("sha256", "exact", h("3", 32)), PCR15: { ...reg("sha256", "platform-defined", null), waived: "per instance" } },
  inputs: { profile: "dev", ukiSha256: h("e", 32) },
};

describe("exports refuse what no one pinned or waived", () => {
  it("a register without a value and without a waiver (or a TD register missing) refuses every export with E_POLICY, naming it", async () => {
    const open: Measurements = { ...td, registers: { ...td.registers, RTMR0: reg("sha384", "platform-defined", null) } };
    for (const f of ["flashbots", "constellation"] as const) {
      const e = await tdxErrorOf(() => formatMeasurements(open, f));
      expect([e.code, e.details?.registers]).toEqual(["E_POLICY", ["RTMR0"]]);
      expect(e.hint).toMatch(/--waive RTMR0/);
    }
    expect((await tdxErrorOf(() => toTrusteeReferenceValues([vtpm, open]))).code).toBe("E_POLICY");
    const { MRTD: _m, ...noMrtd } = td.registers;
    void _m;
    expect((await tdxErrorOf(() => toFlashbots({ ...td, registers: noMrtd }))).details?.registers).toEqual(["MRTD"]);
    // Waived: left out of the export (the verifier does not check it), as the user said.
    expect(Object.keys((toFlashbots(td) as Array<{ measurements: object }>)[0].measurements)).toEqual(["0", "2", "3", "4"]);
  });
});

describe("flashbots attested-tls measurements file", () => {
  // Shapes published by flashbots/attested-tls: crates/attestation/README.md "Measurements File"
  // (an expected_any entry, a legacy `expected` entry) and test-assets/buildernet_measurements.json
  // (its azure-tdx entry "buildernet-v1.2.0-…" with PCR 4/9/11, and a dcap-tdx entry with "0".."3").
  // Values shortened to their published first bytes + padding: the structure is what is checked.
  const pad = (prefix: string, bytes: number) => prefix + "0".repeat(bytes * 2 - prefix.length);
  const published = [
    { measurement_id: "dcap-tdx-example", attestation_type: "dcap-tdx", measurements: { 0: { expected_any: [pad("47a1cc074b914df8", 48)] }, 4: { expected_any: [h("0", 48)] } } },
    { measurement_id: "dcap-tdx-example", attestation_type: "dcap-tdx", measurements: { 0: { expected: pad("47a1cc074b914df8", 48) } } },
    { measurement_id: "buildernet-v1.2.0-azure-tdx", attestation_type: "azure-tdx", measurements: { 11: { expected: pad("6b167b23e7a2c3a9", 32) }, 4: { expected: pad("9e7b567b6d5f045a", 32) }, 9: { expected: pad("f6cb55baf22e8e49", 32) } } },
    { measurement_id: "buildernet-gcp_2.2.0-9818c3f0.efi", attestation_type: "dcap-tdx", measurements: { 0: { expected: pad("a5844e88897b70c3", 48) }, 1: { expected: pad("01aff01b3e5d0964", 48) }, 2: { expected: pad("2590268eb61ea67d", 48) }, 3: { expected: pad("d6090c37a9bf3cd6", 48) } } },
  ];

  it("the published examples pass the shape check our writer's output must pass", () => {
    expect(FlashbotsFileSchema.safeParse(published).success).toBe(true);
  });

  it("the shape check rejects what attested-tls rejects: a 6th DCAP register, short values, both fields, unknown types", () => {
    const bad = [
      [{ attestation_type: "dcap-tdx", measurements: { 5: { expected: h("a", 48) } } }],
      [{ attestation_type: "dcap-tdx", measurements: { 0: { expected: h("a", 32) } } }],
      [{ attestation_type: "azure-tdx", measurements: { 24: { expected: h("a", 32) } } }],
      [{ attestation_type: "dcap-tdx", measurements: { 0: { expected: h("a", 48), expected_any: [h("a", 48)] } } }],
      [{ attestation_type: "sev-snp" }],
    ];
    for (const b of bad) expect(FlashbotsFileSchema.safeParse(b).success).toBe(false);
  });

  it("a TD image: qemu-tdx, registers 0..4 = MRTD, RTMR0–3, the platform-defined RTMR0 omitted", () => {
    const f = toFlashbots(td) as Array<{ measurement_id: string; attestation_type: string; measurements: Record<string, { expected_any: string[] }> }>;
    expect(FlashbotsFileSchema.safeParse(f).success).toBe(true);
    expect(f).toHaveLength(1);
    expect(f[0].attestation_type).toBe("qemu-tdx");
    expect(f[0].measurement_id).toBe(`tdxvm-default-rtmr-uki-${h("d", 8)}`);
    expect(f[0].measurements).toEqual({ 0: { expected_any: [h("a", 48)] }, 2: { expected_any: [h("b", 48)] }, 3: { expected_any: [h("c", 48)] }, 4: { expected_any: [h("0", 48)] } });
    expect((toFlashbots({ ...td, backend: "gcp" }) as Array<{ attestation_type: string }>)[0].attestation_type).toBe("gcp-tdx");
  });

  it("an Azure image: azure-tdx with its PCR indices; platform-defined PCRs omitted", () => {
    const f = toFlashbots(vtpm) as Array<{ attestation_type: string; measurements: Record<string, unknown> }>;
    expect(f[0].attestation_type).toBe("azure-tdx");
    expect(Object.keys(f[0].measurements)).toEqual(["4", "8", "9", "11"]);
    expect(f[0].measurements["11"]).toEqual({ expected_any: [h("3", 32)] });
  });
});

describe("Constellation measurements map", () => {
  // The JSON Constellation's measurements.Measurement marshals to (edgelesssys/constellation
  // internal/attestation/measurements: {"expected": hex, "warnOnly": bool}); the value of index 0 is
  // the GCP PCR 0 of its older default measurements (measurements.go gcpPCRs), index 11 its zero.
  const published = { 0: { expected: "0f35c214608d93c7a6e68ae7359b4a8be5a0e99eea9107ece427c4dea4e439cf", warnOnly: true }, 11: { expected: h("0", 32), warnOnly: false } };

  it("the published shape passes the check our output must pass; mixed lengths, bad hex or extra fields do not", () => {
    expect(ConstellationSchema.safeParse(published).success).toBe(true);
    expect(ConstellationSchema.safeParse({ 0: { expected: h("a", 48), warnOnly: false }, 11: { expected: h("0", 32), warnOnly: false } }).success).toBe(false);
    expect(ConstellationSchema.safeParse({ 0: { expected: h("a", 20), warnOnly: false } }).success).toBe(false);
    expect(ConstellationSchema.safeParse({ 0: { expected: h("a", 32), warnOnly: false, extra: 1 } }).success).toBe(false);
    expect(ConstellationSchema.safeParse({ x: { expected: h("a", 32), warnOnly: false } }).success).toBe(false);
  });

  it("TDX: index 0 = MRTD, 1–4 = RTMR0–3 (RTMR0 omitted: platform-defined), all enforced", () => {
    expect(toConstellation(td)).toEqual({ 0: { expected: h("a", 48), warnOnly: false }, 2: { expected: h("b", 48), warnOnly: false }, 3: { expected: h("c", 48), warnOnly: false }, 4: { expected: h("0", 48), warnOnly: false } });
  });

  it("vTPM: PCR indices, 32-byte values", () => {
    expect(Object.keys(toConstellation(vtpm) as object)).toEqual(["4", "8", "9", "11"]);
  });
});

describe("tdxvm measurements file", () => {
  it("round-trips through formatMeasurements and parseMeasurements", () => {
    expect(parseMeasurements(formatMeasurements(td, "tdxvm"), "td.json")).toEqual(td);
    expect(JSON.parse(formatMeasurements(td, "flashbots"))).toEqual(toFlashbots(td));
    expect(measurementId(vtpm)).toBe(`tdxvm-dev-azure-uki-${h("e", 8)}`);
  });

  it("is hostile input: malformed JSON, other formats, odd registers and bad digests are E_VALIDATION", async () => {
    const text = formatMeasurements(td, "tdxvm");
    const mutate = (f: (j: Record<string, any>) => void) => { // eslint-disable-line @typescript-eslint/no-explicit-any
      const j = JSON.parse(text);
      f(j);
      return JSON.stringify(j);
    };
    for (const bad of [
      "{",
      formatMeasurements(td, "flashbots"),
      mutate((j) => (j.registers.RTMR9 = j.registers.RTMR1)),
      mutate((j) => (j.registers.RTMR1.value = "zz")),
      mutate((j) => (j.registers.RTMR1.events[0].digest = "not hex")),
      mutate((j) => (j.backend = "sev")),
      mutate((j) => (j.measurementsVersion = 2)),
    ]) {
      const e = await tdxErrorOf(() => parseMeasurements(bad, "m.json"));
      expect(e.code).toBe("E_VALIDATION");
      expect(e.message).toMatch(/^m\.json /);
    }
  });
});
