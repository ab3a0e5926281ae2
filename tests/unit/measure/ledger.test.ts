/**
 * The ledger diff a pull request shows: which registers changed, in which order, and the sentence
 * explaining each (diffMeasurements), and the Markdown table (diffToMarkdown). Hand-written
 * measurements, so every label is checked against text, not against the code's own output.
 */
import { diffMeasurements, diffToMarkdown, LedgerEvent, Measurements, RegisterValue } from "../../../provider/measure";
import { combinations, parseWaivers, pinOf, waiveRegisters, withAlternatives } from "../../../provider/measure/ledger";
import { formatMeasurements, parseMeasurements } from "../../../provider/measure/formats";
import { tdxErrorOf } from "../../helpers";

const ev = (description: string, digest: string): LedgerEvent => ({ type: "EV_IPL", description, origin: "test", digest });
const exact = (value: string, events: LedgerEvent[]): RegisterValue => ({ alg: "sha256", value, status: "exact", events });
const platform = (): RegisterValue => ({ alg: "sha256", value: null, status: "platform-defined", why: "firmware", events: [] });
const m = (registers: Record<string, RegisterValue>, inputs: Measurements["inputs"] = {}): Measurements => ({ measurementsVersion: 1, backend: "azure", registers, inputs });

const A = "a".repeat(64);
const B = "b".repeat(64);

describe("diffMeasurements", () => {
  it("lists nothing when every register has the same value and status", () => {
    const x = m({ PCR4: exact(A, [ev("UKI", "1")]), PCR0: platform() });
    expect(diffMeasurements(x, structuredClone(x))).toEqual([]);
  });

  it("explains a changed digest by the event's description, and names added, removed and replaced events", () => {
    const before = m({ PCR11: exact(A, [ev("UKI section .linux", "1"), ev("UKI section .cmdline", "2"), ev("UKI section .initrd", "3"), ev("UKI section .uname", "4")]) });
    const after = m({ PCR11: exact(B, [ev("UKI section .linux", "1"), ev("UKI section .cmdline", "9"), ev("UKI section .dtb", "5"), ev("UKI section .uname", "4"), ev("UKI section .sbat", "6")]) });
    expect(diffMeasurements(before, after)).toEqual([
      {
        register: "PCR11",
        old: A,
        new: B,
        changes: [
          "PCR11: UKI section .cmdline changed",
          'PCR11: event 3 is now "UKI section .dtb" (was "UKI section .initrd")',
          "PCR11: UKI section .sbat added",
        ],
      },
    ]);
    expect(diffMeasurements(after, before)[0]!.changes).toEqual([
      "PCR11: UKI section .cmdline changed",
      'PCR11: event 3 is now "UKI section .initrd" (was "UKI section .dtb")',
      "PCR11: UKI section .sbat removed",
    ]);
  });

  it("orders registers MRTD first, then by kind and number (PCR4 before PCR11), and covers registers on one side only", () => {
    const before = m({ PCR11: exact(A, []), RTMR2: exact(A, []), PCR4: exact(A, []), MRTD: exact(A, []), PCR9: exact(A, []) });
    const after = m({ PCR11: exact(B, []), RTMR2: exact(B, []), PCR4: exact(B, []), MRTD: exact(B, []), RTMR10: exact(B, []) });
    expect(diffMeasurements(before, after).map((d) => d.register)).toEqual(["MRTD", "PCR4", "PCR9", "PCR11", "RTMR2", "RTMR10"]);
    const gone = diffMeasurements(before, after).find((d) => d.register === "PCR9")!;
    expect(gone).toEqual({ register: "PCR9", old: A, new: null, changes: ["PCR9: value changed"] });
  });

  it("says a value changed when no event explains it, and names platform-defined changes as such", () => {
    expect(diffMeasurements(m({ PCR4: exact(A, [ev("UKI", "1")]) }), m({ PCR4: exact(B, [ev("UKI", "1")]) }))[0]!.changes).toEqual(["PCR4: value changed"]);
    const d = diffMeasurements(m({ PCR5: exact(A, []) }), m({ PCR5: platform() }));
    expect(d).toEqual([{ register: "PCR5", old: A, new: null, changes: ["PCR5: platform-defined value changed"] }]);
  });

  it("puts a root file system change first in every exact register it moves", () => {
    const H1 = "1".repeat(64);
    const H2 = "2".repeat(64);
    const before = m({ PCR9: exact(A, [ev("kernel command line", "1")]), PCR0: platform() }, { rootHash: H1, rootfs: "verity: …" });
    const after = m({ PCR9: exact(B, [ev("kernel command line", "2")]), PCR0: platform() }, { rootHash: H2, rootfs: "verity: …" });
    expect(diffMeasurements(before, after)[0]!.changes).toEqual([
      `PCR9: root file system changed (verity root hash ${"1".repeat(16)}… → ${"2".repeat(16)}…)`,
      "PCR9: kernel command line changed",
    ]);
    const none = m({ PCR9: exact(B, [ev("kernel command line", "2")]), PCR0: platform() }, { rootHash: null, rootfs: "none: NOT measured" });
    expect(diffMeasurements(before, none)[0]!.changes[0]).toBe("PCR9: root file system mode changed (verity → none)");
  });
});

describe("diffToMarkdown", () => {
  it("renders one row per register with shortened values, escaped pipes and the sentences joined by <br>", () => {
    const md = diffToMarkdown([
      { register: "PCR11", old: A, new: B, changes: ["PCR11: UKI section .cmdline changed", "PCR11: a | b added"] },
      { register: "PCR9", old: A, new: null, changes: ["PCR9: value changed"] },
    ], "Image changes");
    expect(md).toBe(
      [
        "### Image changes",
        "",
        "| register | old | new | why |",
        "|---|---|---|---|",
        `| PCR11 | \`${"a".repeat(16)}…\` | \`${"b".repeat(16)}…\` | PCR11: UKI section .cmdline changed<br>PCR11: a \\| b added |`,
        `| PCR9 | \`${"a".repeat(16)}…\` | — | PCR9: value changed |`,
        "",
      ].join("\n"),
    );
  });

  it("says so when nothing changed", () => {
    expect(diffToMarkdown([])).toBe("### Measurement changes\n\nNo register changes.\n");
  });
});

describe("pin or waive", () => {
  it("pinOf names how each register is pinned", () => {
    expect([pinOf(exact(A, [])), pinOf({ ...exact(A, []), basis: "captured" }), pinOf({ ...exact(A, []), basis: "endorsed" }), pinOf({ alg: "sha256", value: "0".repeat(64), status: "zero", events: [] }), pinOf(platform()), pinOf({ ...platform(), waived: "r" })])
      .toEqual(["predicted", "captured", "endorsed", "zero", "unpinned", "waived"]);
  });

  it("parseWaivers takes REG:reason strings and maps; refuses bad names, empty or multi-line reasons, duplicates", async () => {
    expect(parseWaivers(['RTMR0:"canary pending"', "PCR15: per instance"])).toEqual({ RTMR0: "canary pending", PCR15: "per instance" });
    expect(parseWaivers({ MRTD: "lab" })).toEqual({ MRTD: "lab" });
    for (const bad of [["RTMRO:x"], ["RTMR0"], ["RTMR0:"], ["RTMR0:a\nb"], ["RTMR0:a", "RTMR0:b"], [`RTMR0:${"x".repeat(301)}`], ["PCR24:x"]]) {
      const e = await tdxErrorOf(async () => parseWaivers(bad, "--waive"));
      expect([e.code, e.message.startsWith("--waive: ")]).toEqual(["E_VALIDATION", true]);
    }
  });

  it("waiveRegisters waives platform-defined registers only, and the diff and its markdown say so", async () => {
    const before = m({ PCR4: exact(A, []), PCR0: platform(), PCR7: platform() });
    const after = waiveRegisters(before, { PCR0: "firmware: no reference" });
    expect(after.registers.PCR0!.waived).toBe("firmware: no reference");
    expect(before.registers.PCR0!.waived).toBeUndefined(); // a copy
    expect(diffMeasurements(before, after)).toEqual([{ register: "PCR0", old: null, new: null, changes: ["PCR0: now WAIVED (firmware: no reference)"] }]);
    expect(diffMeasurements(after, before)[0]!.changes).toEqual(["PCR0: no longer waived (unpinned)"]);
    const md = diffToMarkdown(diffMeasurements(before, after), "t", after);
    expect(md).toContain("| PCR0 | WAIVED | firmware: no reference |");
    expect(md).toContain("| PCR7 | NOT PINNED: a verifier refuses it | firmware |");
    expect(md).not.toMatch(/\| PCR4 \| (WAIVED|NOT PINNED)/);
    expect((await tdxErrorOf(async () => waiveRegisters(before, { PCR4: "x" }))).message).toMatch(/cannot waive PCR4: it is predicted/);
    expect((await tdxErrorOf(async () => waiveRegisters(before, { RTMR0: "x" }))).message).toMatch(/azure backend has no such register/);
  });
});

describe("how Pulumi state carries pins (toComputed / fromComputed)", () => {
  it("round-trips predicted, captured, endorsed, zero, waived and unpinned registers", () => {
    const { toComputed, fromComputed } = require("../../../provider/dynamic/measurement") as typeof import("../../../provider/dynamic/measurement");
    const H = "c".repeat(96);
    const x: Measurements = {
      measurementsVersion: 1, backend: "gcp", inputs: {},
      registers: {
        MRTD: { alg: "sha384", value: H, status: "exact", basis: "endorsed", events: [] },
        RTMR0: { alg: "sha384", value: H, status: "exact", basis: "captured", events: [] },
        RTMR1: { alg: "sha384", value: H, status: "exact", events: [] },
        RTMR2: { alg: "sha384", value: null, status: "platform-defined", why: "w", waived: "lab (no canary)", events: [] },
        RTMR3: { alg: "sha384", value: null, status: "platform-defined", why: "host shape", events: [] },
      },
    };
    const c = toComputed(x, "k");
    expect(c.status).toEqual({ MRTD: "endorsed", RTMR0: "captured", RTMR1: "exact", RTMR2: "WAIVED (lab (no canary))", RTMR3: "platform-defined: host shape" });
    const back = fromComputed(c, "gcp")!;
    expect(Object.fromEntries(Object.entries(back.registers).map(([n, r]) => [n, pinOf(r)]))).toEqual({ MRTD: "endorsed", RTMR0: "captured", RTMR1: "predicted", RTMR2: "waived", RTMR3: "unpinned" });
    expect(back.registers.RTMR2!.waived).toBe("lab (no canary)");
  });
});

describe("the measurement envelope", () => {
  const H = (c: string) => c.repeat(96);
  const td = (rtmr0: string, mrtd = H("a")): Measurements => ({
    measurementsVersion: 1, backend: "rtmr", inputs: {},
    registers: {
      MRTD: { alg: "sha384", value: mrtd, status: "exact", events: [] },
      RTMR0: { alg: "sha384", value: rtmr0, status: "exact", events: [] },
      RTMR1: { alg: "sha384", value: H("c"), status: "exact", events: [] },
      RTMR2: { alg: "sha384", value: H("e"), status: "exact", events: [] },
      RTMR3: { alg: "sha384", value: H("0"), status: "zero", events: [] },
    },
  });

  it("keeps per shape only what differs; combinations rebuild each; a shape that differs nowhere adds nothing; bad labels refused", async () => {
    const env = withAlternatives(td(H("1")), "qemu-10.0", [{ label: "qemu-10.1", m: td(H("2")) }, { label: "same", m: td(H("1")) }, { label: "fw-next", m: td(H("1"), H("b")) }]);
    expect(env.alternatives!.map((a) => [a.label, Object.keys(a.registers)])).toEqual([["qemu-10.1", ["RTMR0"]], ["fw-next", ["MRTD"]]]);
    expect(combinations(env).map((c) => [c.label, c.m.registers.MRTD!.value![0], c.m.registers.RTMR0!.value![0], c.m.alternatives])).toEqual([
      ["qemu-10.0", "a", "1", undefined], ["qemu-10.1", "a", "2", undefined], ["fw-next", "b", "1", undefined],
    ]);
    expect((await tdxErrorOf(async () => withAlternatives(td(H("1")), "x", [{ label: "x", m: td(H("2")) }]))).message).toMatch(/distinct names/);
    expect((await tdxErrorOf(async () => withAlternatives(td(H("1")), "x", [{ label: "y", m: { ...td(H("2")), backend: "gcp" } }]))).message).toMatch(/is a gcp measurement/);
    // Another image is not a host shape: an envelope that would differ in RTMR1 is refused, and such a file does not parse.
    const otherImage = { ...td(H("1")), registers: { ...td(H("1")).registers, RTMR1: { alg: "sha384" as const, value: H("d"), status: "exact" as const, events: [] } } };
    expect((await tdxErrorOf(async () => withAlternatives(td(H("1")), "x", [{ label: "y", m: otherImage }]))).message).toMatch(/differs from x in RTMR1, which the image determines/);
    expect(() => parseMeasurements(JSON.stringify({ ...td(H("1")), alternatives: [{ label: "y", registers: { RTMR1: otherImage.registers.RTMR1 } }] }), "f")).toThrow(/vary only MRTD and RTMR0/);
    // And the envelope is part of every diff (measure --check, the PR comment).
    expect(diffMeasurements(td(H("1")), env).map((d) => [d.register, d.changes])).toEqual([
      ["MRTD@fw-next", ["MRTD: host shape fw-next added to the envelope"]], ["RTMR0@qemu-10.1", ["RTMR0: host shape qemu-10.1 added to the envelope"]],
    ]);
    // The tdxvm file keeps the envelope; flashbots lists every value per index; Constellation one map per shape.
    expect(parseMeasurements(formatMeasurements(env, "tdxvm"), "f").alternatives).toEqual(env.alternatives);
    // flashbots: one entry per combination (a union per register would accept fw-next's MRTD with qemu-10.1's RTMR0, which nobody listed).
    const fb = JSON.parse(formatMeasurements(env, "flashbots")) as Array<{ measurement_id: string; measurements: Record<string, { expected_any: string[] }> }>;
    expect(fb.map((e) => [e.measurement_id.split("@")[1], e.measurements["0"]!.expected_any, e.measurements["1"]!.expected_any])).toEqual([
      ["qemu-10.0", [H("a")], [H("1")]], ["qemu-10.1", [H("a")], [H("2")]], ["fw-next", [H("b")], [H("1")]],
    ]);
    const co = JSON.parse(formatMeasurements(env, "constellation")) as Record<string, Record<string, { expected: string }>>;
    expect(Object.keys(co)).toEqual(["qemu-10.0", "qemu-10.1", "fw-next"]);
    expect([co["qemu-10.1"]!["1"]!.expected, co["fw-next"]!["0"]!.expected]).toEqual([H("2"), H("b")]);
  });

  it("Pulumi state carries the envelope: toComputed / fromComputed round trip", () => {
    const { toComputed, fromComputed } = require("../../../provider/dynamic/measurement") as typeof import("../../../provider/dynamic/measurement");
    const env = withAlternatives(td(H("1")), "a", [{ label: "b", m: td(H("2")) }]);
    const c = toComputed(env, "k");
    expect(c.alternatives).toEqual([{ label: "b", registers: { RTMR0: H("2") }, status: { RTMR0: "exact" }, ledger: { RTMR0: [] } }]);
    expect(fromComputed(c, "rtmr")!.alternatives).toEqual(env.alternatives);
  });
});
