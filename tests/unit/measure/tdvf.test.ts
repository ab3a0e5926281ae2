/**
 * TDVF metadata, MRTD and CFV over Debian trixie's OVMF.fd from the project's tools tree (the
 * firmware the rtmr backend uses by default; see fixtures.ts).
 * Second path: independent/mrtd.py, written separately (region/chunk-list structure modelled on
 * google/gce-tcb-verifier's measurement loop rather than on our per-page loop), run on the same
 * file. Known Debian builds also have pinned values (computed by both implementations).
 */
import * as fs from "node:fs";
import { createHash } from "node:crypto";
import { TdxError } from "../../../provider/errors";
import { computeMrtd, guidToString, ovmfGuidTable, parseTdvf, tdvfCfv } from "../../../provider/measure";
import { hex, independent, ovmfPath } from "./fixtures";

/** sha256 of OVMF.fd -> MRTD by page order, for Debian builds we have seen. */
const KNOWN_BUILDS: Record<string, { build: string; "single-pass": string; "two-pass": string }> = {
  "7b456907dd0786d415999e801a1ac4637b8ed4d7cf5378cfc6edbe5e574dd773": {
    build: "Debian bookworm ovmf 2022.11-6+deb12u2",
    "single-pass": "4c7206f0f483c524f12c366c711e9049030a8d47c471ee5aa9c4999a08de4057fb887fed0744d5631a212967fb231c47",
    "two-pass": "acccbcc870a381adab0d3919d90a7f268ac3b0364771f202ed4bb4e892d045b33db3b32e6924cba830a724eed443f7e1",
  },
  "14954040cc754ade0c625ac3470ea46d4c14318b5b1396de4ef77090203d76db": {
    build: "Debian trixie ovmf 2025.02",
    "single-pass": "bdc6fb145880f06f30c8b346b8dce2a99d9351b56892df22f80fcf6574caa9f9c31df8e8576d53b4d0cd1c3f28910e11",
    "two-pass": "456f07902150d008bb913c3e1e84e9297f735a6c83cd2a957a1f0a8bbedb06df188e3837ae48d32c73d473d097dc0db2",
  },
};

let firmware: Buffer;
let firmwarePath: string;
beforeAll(() => {
  firmwarePath = ovmfPath();
  firmware = fs.readFileSync(firmwarePath);
});

describe("TDVF metadata", () => {
  it("finds the GUIDed table and the TDX metadata offset entry", () => {
    const guids = ovmfGuidTable(firmware).map((e) => e.guid);
    expect(guids).toContain("e47a6535-984a-4798-865e-4685a7bf8ec2");
  });

  it("parses the TDVF descriptor: BFV (MR.EXTEND), CFV, TD_HOB and TempMem sections", () => {
    const meta = parseTdvf(firmware);
    expect(meta.version).toBe(1);
    expect(meta.length).toBe(16 + 32 * meta.sections.length);
    const types = meta.sections.map((s) => s.typeName);
    expect(types).toEqual(expect.arrayContaining(["BFV", "CFV", "TD_HOB", "TEMP_MEM"]));
    const bfv = meta.sections.find((s) => s.typeName === "BFV")!;
    expect(bfv.mrExtend).toBe(true);
    expect(bfv.memoryAddress + bfv.memoryDataSize).toBe(1n << 32n); // the boot FV ends at 4 GiB (reset vector)
    expect(bfv.dataOffset + bfv.rawDataSize).toBe(firmware.length);
    for (const s of meta.sections) expect(s.memoryAddress % 4096n).toBe(0n);
  });

  it("extracts the CFV: the UEFI variable store firmware volume", () => {
    const cfv = tdvfCfv(firmware);
    const section = parseTdvf(firmware).sections.find((s) => s.typeName === "CFV")!;
    expect(cfv.length).toBe(section.rawDataSize);
    // EFI_FIRMWARE_VOLUME_HEADER: FileSystemGuid at 16 (EFI_SYSTEM_NV_DATA_FV_GUID), "_FVH" at 40.
    expect(guidToString(cfv.subarray(16, 32))).toBe("fff12b8d-7696-4c8b-a985-2747075b4f50");
    expect(cfv.toString("latin1", 40, 44)).toBe("_FVH");
  });
});

describe("computeMrtd", () => {
  it("agrees with the independent Python implementation for both page orders", () => {
    // The same file, as the tools tree sees it.
    const py = JSON.parse(independent("mrtd.py", ["/usr/share/ovmf/OVMF.fd"])) as Record<string, string>;
    const single = hex(computeMrtd(firmware, { pageOrder: "single-pass" }));
    const two = hex(computeMrtd(firmware, { pageOrder: "two-pass" }));
    expect({ "single-pass": single, "two-pass": two }).toEqual(py);
    expect(single).not.toBe(two);
  });

  it("is a pinned Debian trixie build, and its MRTD is the pinned value", () => {
    const sha = createHash("sha256").update(firmware).digest("hex");
    const known = KNOWN_BUILDS[sha];
    if (!known) {
      throw new Error(
        `${firmwarePath} (sha256 ${sha}) is not a pinned build: Debian has shipped a new trixie ovmf. MRTD predictions for the rtmr backend change with it. ` +
          "Once the Python cross-check passes, add its values to KNOWN_BUILDS (with the package version).",
      );
    }
    expect(known.build).toMatch(/^Debian trixie/);
    expect(hex(computeMrtd(firmware, { pageOrder: "single-pass" }))).toBe(known["single-pass"]);
    expect(hex(computeMrtd(firmware, { pageOrder: "two-pass" }))).toBe(known["two-pass"]);
  });

  it("changes when a byte of the boot FV changes, not when the CFV does", () => {
    const meta = parseTdvf(firmware);
    const bfv = meta.sections.find((s) => s.typeName === "BFV")!;
    const cfv = meta.sections.find((s) => s.typeName === "CFV")!;
    const base = hex(computeMrtd(firmware, { pageOrder: "single-pass" }));
    const a = Buffer.from(firmware);
    a[bfv.dataOffset + 100] ^= 1;
    expect(hex(computeMrtd(a, { pageOrder: "single-pass" }))).not.toBe(base);
    if (!cfv.mrExtend) {
      const b = Buffer.from(firmware);
      b[cfv.dataOffset + 100] ^= 1;
      expect(hex(computeMrtd(b, { pageOrder: "single-pass" }))).toBe(base);
    }
  });

  it("rejects images without TDVF metadata and bad page orders with E_MEASUREMENT", () => {
    expect(() => computeMrtd(Buffer.alloc(1 << 20), { pageOrder: "single-pass" })).toThrow(/GUIDed table footer/);
    expect(() => computeMrtd(firmware, { pageOrder: "both" as never })).toThrow(TdxError);
  });
});
