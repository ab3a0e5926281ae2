/**
 * UKI sections (VirtualSize semantics) and systemd-stub PCR 11 events.
 * Truth for the test UKI (built with ukify, tests/fixtures/testUki.ts): the very input files ukify
 * put into each section, `ukify inspect` (per-section size and sha256), and `systemd-measure
 * calculate` (systemd 257, tools tree) over the sections pefile extracts. Published vectors:
 * flashbots/measured-boot measure/pcr11_test.go and measure/pcr_test.go (digest-only replays).
 * Section selection (first of duplicate names, empty sections, profiles) on synthetic PEs.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { createHash } from "node:crypto";
import { TdxError } from "../../../provider/errors";
import { pcrReplay, ukiPcr11Events, ukiSections, ukiSelectedSections } from "../../../provider/measure";
import { TEST_CUSTOM_SECTION, TEST_UKI_INPUTS, testUki } from "../../fixtures/testUki";
import { inToolsTreeOk } from "../../toolsTree";
import { buildPe } from "./pe-builder";
import { hex, systemdMeasurePcr11, tempDir } from "./fixtures";

const uki = () => fs.readFileSync(testUki().uki);
const sha256 = (b: Buffer | string) => createHash("sha256").update(b).digest();
const kernelPe = buildPe({ plus: true, sections: [{ name: ".text", data: Buffer.alloc(32, 1) }] });

describe("ukiSections", () => {
  it("returns each section's VirtualSize bytes: exactly the file ukify put there", () => {
    const sections = ukiSections(uki());
    const byName = new Map(sections.map((s) => [s.name, s]));
    for (const name of Object.keys(TEST_UKI_INPUTS) as Array<keyof typeof TEST_UKI_INPUTS>) {
      const want = fs.readFileSync(testUki().input(name));
      const got = byName.get(name)?.data;
      expect({ name, length: got?.length, equal: got?.equals(want) }).toEqual({ name, length: want.length, equal: true });
    }
    expect(sections.map((s) => s.index)).toEqual(sections.map((_, i) => i));
  });

  it("agrees with `ukify inspect` (size and sha256 of every section it lists)", () => {
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, "uki.efi"), uki());
    const inspected = JSON.parse(inToolsTreeOk(["ukify", "--json=short", "inspect", "uki.efi"], { cwd: dir })) as Record<string, { size: number; sha256: string }>;
    expect(Object.keys(inspected).length).toBeGreaterThanOrEqual(10);
    const ours = new Map(ukiSections(uki()).map((s) => [s.name, { size: s.data.length, sha256: hex(sha256(s.data)) }]));
    for (const [name, v] of Object.entries(inspected)) expect({ name, ...ours.get(name) }).toEqual({ name, size: v.size, sha256: v.sha256 });
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

describe("ukiSelectedSections (systemd-stub 257 pe.c semantics)", () => {
  it("takes the first of duplicate names, treats VirtualSize 0 as absent, and ignores unknown names", () => {
    const pe = buildPe({
      plus: true,
      sections: [
        { name: ".cmdline", data: Buffer.alloc(0), virtualSize: 0 }, // not set: the next .cmdline is the first real one
        { name: ".linux", data: kernelPe },
        { name: ".cmdline", data: Buffer.from("first") },
        { name: ".cmdline", data: Buffer.from("second") },
        { name: ".osrel", data: Buffer.from("ID=a\n") },
        { name: ".osrel", data: Buffer.from("ID=b\n") },
        { name: ".unknown", data: Buffer.from("x") },
      ],
    });
    const sel = ukiSelectedSections(pe);
    expect([...sel.keys()].sort()).toEqual([".cmdline", ".linux", ".osrel"]);
    expect(sel.get(".cmdline")!.data.toString()).toBe("first");
    expect(sel.get(".cmdline")!.index).toBe(2);
    expect(sel.get(".osrel")!.data.toString()).toBe("ID=a\n");
    const events = ukiPcr11Events(pe);
    expect(events.filter((e) => e.kind === "content").map((e) => e.data.toString("latin1").slice(0, 5))).toEqual([kernelPe.toString("latin1", 0, 5), "ID=a\n", "first"]);
  });

  it("applies a profile's sections over the base ones; profile 0 by default; a missing profile > 0 fails", () => {
    const pe = buildPe({
      plus: true,
      sections: [
        { name: ".linux", data: kernelPe },
        { name: ".cmdline", data: Buffer.from("base") },
        { name: ".dtb", data: Buffer.from("base-dtb") },
        { name: ".profile", data: Buffer.from("ID=default\n") },
        { name: ".profile", data: Buffer.from("ID=debug\n") },
        { name: ".cmdline", data: Buffer.from("debug") },
      ],
    });
    const cmdline = (profile?: number) => ukiPcr11Events(pe, { profile }).find((e) => e.section === ".cmdline" && e.kind === "content")!.data.toString();
    const profileText = (profile?: number) => ukiPcr11Events(pe, { profile }).find((e) => e.section === ".profile" && e.kind === "content")!.data.toString();
    expect([cmdline(), profileText()]).toEqual(["base", "ID=default\n"]);
    expect([cmdline(1), profileText(1)]).toEqual(["debug", "ID=debug\n"]);
    expect(ukiPcr11Events(pe, { profile: 1 }).find((e) => e.section === ".dtb" && e.kind === "content")!.data.toString()).toBe("base-dtb");
    expect(() => ukiPcr11Events(pe, { profile: 2 })).toThrow(/profile 2 does not exist/);
  });
});

describe("ukiPcr11Events", () => {
  it("lists `name\\0` then content for each present section in systemd's fixed order, skipping .pcrsig and unknown sections", () => {
    const events = ukiPcr11Events(uki());
    const order = [".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat", ".pcrpkey"];
    expect(events.map((e) => `${e.section}:${e.kind}`)).toEqual(order.flatMap((n) => [`${n}:name`, `${n}:content`]));
    expect(events.filter((e) => e.kind === "name").map((e) => e.data.toString("latin1"))).toEqual(order.map((n) => `${n}\0`));
    expect(events.map((e) => e.section)).not.toContain(TEST_CUSTOM_SECTION);
    expect(events.every((e) => e.pcr === 11 && e.eventType === 0xd)).toBe(true);
  });

  it("replays to the PCR 11 value systemd-measure calculates from the sections pefile extracts (sha256 and sha384)", () => {
    const events = ukiPcr11Events(uki());
    const want = systemdMeasurePcr11(uki(), [""]);
    expect({ sha256: hex(pcrReplay(events, "sha256")), sha384: hex(pcrReplay(events, "sha384")) }).toEqual({ sha256: want.sha256[""], sha384: want.sha384[""] });
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
