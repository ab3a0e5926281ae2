/**
 * The ledger diff a pull request shows: which registers changed, in which order, and the sentence
 * explaining each (diffMeasurements), and the Markdown table (diffToMarkdown). Hand-written
 * measurements, so every label is checked against text, not against the code's own output.
 */
import { diffMeasurements, diffToMarkdown, LedgerEvent, Measurements, RegisterValue } from "../../../provider/measure";

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
