/**
 * UKI sections (VirtualSize semantics) and systemd-stub PCR 11 events.
 * Vectors: flashbots/measured-boot extract/extract_test.go (per-section sha256 over VirtualSize
 * bytes of fixtures/uki.efi) and measure/pcr11_test.go, measure/pcr_test.go (replay);
 * `systemd-measure calculate --phase=` from systemd 257.13 (Debian trixie) over this UKI's sections
 * (recorded below), and live systemd-measure when installed (any version: only the sections it
 * knows are passed).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { createHash } from "node:crypto";
import { TdxError } from "../../../provider/errors";
import { pcrReplay, ukiPcr11Events, ukiSections } from "../../../provider/measure";
import { buildPe, peOffsets } from "./pe-builder";
import { hex, runOk, tempDir, ukiFixturePath, which } from "./fixtures";

const uki = () => fs.readFileSync(ukiFixturePath());
const sha256 = (b: Buffer | string) => createHash("sha256").update(b).digest();

// flashbots/measured-boot extract/extract_test.go TestPeFileSectionDigests.
const PUBLISHED_SECTION_DIGESTS: Record<string, [number, string]> = {
  ".linux": [0x1f8, "01e5cee2d18eaace36b5bc394f7031aae1668e4a7f7cc0e949525ea65c40f795"],
  ".osrel": [0x2b0, "6583801da29b3b740f0eb0c427d5b8520bfbf7ff6369c22ef2f4c480f0ea99fc"],
  ".cmdline": [0x94, "f047d03a36f0de1f77916c2aab8877a9d880acf917683cc77b7c01df18b131c7"],
  ".initrd": [0x12, "4e50306a0784471f02de7e54d90fdca10e8e12eccc2d7a9d9702f6e738e1c2ca"],
  ".splash": [0x12, "36b5f482372e5049839d176cf4d14acbfdfedac1bf77ea0ea4b172a876ae2d2e"],
  ".dtb": [0xf, "46a00153cad99d194af11448305c8ca1872abae920ee423c193501050f36e78d"],
  ".uname": [0x22, "32d59d990e9c1f7da554cb888e3238ac6193e5e7230f99b197138dd723c0ebb6"],
  ".sbat": [0x10, "6630fb7d5baf9d6cd51c9ac95410e68aa3fedb4addd42b340e4711e23cccd4b2"],
  ".pcrkey": [0x12, "354b67d5a3ef2affdadb3dfc1f8bd0f669d086a6d67d5fee88db2190c4a70726"],
  ".data": [0x10, "c3de14ca1645875e3bb0ddab9f609146f21cc0ebd0ea9b4f22d39840c0ea29c5"],
  ".dynamic": [0x13, "2b7529c83a74bcb0ac631518a11495101a8d8e406993ed05ed8acc2d88ec1379"],
  ".dynsym": [0x12, "b60a7d6569eba3d99eec1332572b6119320b571b43c19675375a8576daf78124"],
  ".rela": [0x10, "1cd6fb4fb874fdb2f3b7f53dc18c5b8e5ba14d006c56415e9b8e221dbf59dd9d"],
  ".reloc": [0xa, "4ffadb1dbde92dce2137ae1e2474ad09f27b62e4bba5ccc6490ab0da45fa45c3"],
  ".sdmagic": [0x2d, "c102120de9fa6243f216ddb45828e2a2b64a658230d0cae6c2f2983967babe95"],
  ".text": [0x10, "af54419a3fbe760cf7d36a8637f01d13d44bb5f39215e22ead521551fae42f2d"],
  ".pcrsig": [0x216, "cc41a548bd0203174939f50c3df17759b813b531b0563e9120556cf72501a326"],
};

// systemd-measure 257.13 (Debian trixie) `calculate --phase= --bank=sha256 --bank=sha384` with
// --linux --osrel --cmdline --initrd --splash --dtb --uname --sbat = this UKI's sections (VirtualSize bytes).
const SYSTEMD_MEASURE_257_PCR11 = {
  sha256: "bf838b59ced0e5b9e9d5c31ad4ad2ad5c18572b16a39ba6986408bdcee1b3769",
  sha384: "8d40be83e8b1741a0315430b1bc946148861d684793f09511d9ed4dfc54416206bbb498f3c60d07f74133aa084b95c8a",
};

describe("ukiSections", () => {
  it("returns every section's VirtualSize bytes, matching the published digests", () => {
    const sections = ukiSections(uki());
    expect(sections).toHaveLength(17);
    for (const s of sections) {
      const [size, digest] = PUBLISHED_SECTION_DIGESTS[s.name]!;
      expect([s.name, s.data.length, hex(sha256(s.data))]).toEqual([s.name, size, digest]);
    }
    expect(sections.find((s) => s.name === ".uname")!.data.toString()).toBe("0.0.0-100.constellation.fc0.x86_64");
  });

  it("truncates to VirtualSize and zero-fills beyond SizeOfRawData", () => {
    const pe = buildPe({
      plus: true,
      sections: [
        { name: ".linux", data: Buffer.alloc(0x300, 0x11), virtualSize: 0x100 },
        { name: ".cmdline", data: Buffer.from("console=ttyS0"), virtualSize: 0x400 },
      ],
    });
    const [linux, cmdline] = ukiSections(pe);
    expect(linux!.data).toEqual(Buffer.alloc(0x100, 0x11));
    expect(cmdline!.data.length).toBe(0x400);
    // File bytes are min(SizeOfRawData, VirtualSize): the 0x200-byte raw block (text + zero padding), then zero fill.
    expect(cmdline!.data.subarray(0, 13).toString()).toBe("console=ttyS0");
    expect(cmdline!.data.subarray(13).equals(Buffer.alloc(0x400 - 13))).toBe(true);
  });
});

describe("ukiPcr11Events", () => {
  it("lists name and content events in systemd's fixed order, skipping .pcrsig and unknown sections", () => {
    const events = ukiPcr11Events(uki());
    expect(events.map((e) => `${e.section}:${e.kind}`)).toEqual(
      [".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".uname", ".sbat"].flatMap((n) => [`${n}:name`, `${n}:content`]),
    );
    expect(events[0]!.data).toEqual(Buffer.from(".linux\0"));
    expect(events.every((e) => e.pcr === 11 && e.eventType === 0xd)).toBe(true);
  });

  it("replays to the PCR 11 value systemd-measure 257 computes for this UKI", () => {
    const events = ukiPcr11Events(uki());
    expect(hex(pcrReplay(events, "sha256"))).toBe(SYSTEMD_MEASURE_257_PCR11.sha256);
    expect(hex(pcrReplay(events, "sha384"))).toBe(SYSTEMD_MEASURE_257_PCR11.sha384);
  });

  const measureTool = which("systemd-measure", ["/usr/lib/systemd", "/lib/systemd"]);
  (measureTool ? it : it.skip)("agrees with the installed systemd-measure", () => {
    const tool = measureTool!;
    const help = runOk(tool, ["--help"]);
    const known = new Set([...help.matchAll(/--([a-z]+)=PATH/g)].map((m) => `.${m[1]}`));
    const dir = tempDir();
    const events = ukiPcr11Events(uki()).filter((e) => known.has(e.section));
    const args = ["calculate", "--phase=", "--bank=sha256"];
    for (const e of events.filter((x) => x.kind === "content")) {
      const f = path.join(dir, e.section.slice(1));
      fs.writeFileSync(f, e.data);
      args.push(`--${e.section.slice(1)}=${f}`);
    }
    const out = runOk(tool, args);
    const m = /11:sha256=([0-9a-f]{64})/.exec(out);
    expect(m?.[1]).toBe(hex(pcrReplay(events, "sha256")));
  });

  it("applies profile sections over the base ones (stub 257 semantics)", () => {
    // Rename .splash -> .profile and .pcrsig -> .cmdline: profile 0 is then [.profile, .dtb, .cmdline, .pcrkey].
    const pe = Buffer.from(uki());
    const { table, nSections } = peOffsets(pe);
    for (let i = 0; i < nSections; i++) {
      const name = pe.toString("latin1", table + 40 * i, table + 40 * i + 8).replace(/\0+$/, "");
      const rename = name === ".splash" ? ".profile" : name === ".pcrsig" ? ".cmdline" : undefined;
      if (rename) pe.write(rename.padEnd(8, "\0"), table + 40 * i, "latin1");
    }
    const byName = new Map(ukiSections(pe).map((s) => [`${s.name}@${s.index}`, s]));
    const events = ukiPcr11Events(pe);
    const cmdline = events.find((e) => e.section === ".cmdline" && e.kind === "content")!;
    expect(cmdline.data).toEqual(byName.get(".cmdline@15")!.data); // the profile's, not the base's (index 9)
    expect(events.map((e) => e.section)).toContain(".profile");
    expect(() => ukiPcr11Events(pe, { profile: 1 })).toThrow(/profile 1 does not exist/);
  });

  it("refuses images without .linux and hardware-selected sections", () => {
    const noLinux = buildPe({ plus: true, sections: [{ name: ".cmdline", data: Buffer.from("x") }] });
    expect(() => ukiPcr11Events(noLinux)).toThrow(TdxError);
    const dtbauto = buildPe({ plus: true, sections: [{ name: ".linux", data: Buffer.from("k") }, { name: ".dtbauto", data: Buffer.from("d") }] });
    expect(() => ukiPcr11Events(dtbauto)).toThrow(/hardware IDs/);
  });
});

describe("pcrReplay", () => {
  it("reproduces flashbots/measured-boot pcr11_test.go (digest-only events)", () => {
    expect(hex(sha256(".linux\0"))).toBe("0da293e37ad5511c59be47993769aacb91b243f7d010288e118dc90e95aaef5a");
    const events = [{ data: Buffer.from(".linux\0") }, { digest: Buffer.alloc(32) }, { data: Buffer.from(".initrd\0") }, { digest: Buffer.alloc(32, 1) }];
    expect(hex(pcrReplay(events, "sha256"))).toBe("9dfe399fcd4432639f0e20f49df823aa66b095f0664f0a4b9fbdc11ea64683e2");
  });

  it("reproduces flashbots/measured-boot pcr_test.go (separator, then EFI action)", () => {
    const sep = { data: Buffer.alloc(4) };
    expect(hex(pcrReplay([sep], "sha256"))).toBe("3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969");
    expect(hex(pcrReplay([sep, { data: Buffer.from("Calling EFI Application from Boot Option") }], "sha256"))).toBe(
      "dd50c8da0f899f655b4305d2438663c1b3da6d1922a0c8226533ac417abcd523",
    );
  });

  it("starts from zeros and rejects digests of the wrong size", () => {
    expect(pcrReplay([], "sha384")).toEqual(Buffer.alloc(48));
    expect(() => pcrReplay([{ digest: Buffer.alloc(20) }], "sha256")).toThrow(TdxError);
  });
});
