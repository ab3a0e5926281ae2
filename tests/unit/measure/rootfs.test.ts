/**
 * How the root file system shows in a measurement: the verity root hash is named in the ledger and
 * the assumptions, a root-only change is explained as such, and the boot phases follow the mode
 * (no initrd phases when the whole OS is the initrd). Synthetic UKIs built with the test PE writer.
 */
import { createHash } from "node:crypto";
import { measureBoot, diffMeasurements, diffToMarkdown } from "../../../provider/measure";
import { rootHashOf } from "../../../provider/measure/boot";
import { buildPe } from "./pe-builder";
import { tdxErrorOf } from "../../helpers";

const HASH_A = "6c4bd9155c528c38cebb0cc8a4708c4179023c323473e45b852987bdcc803a69";
const HASH_B = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

function uki(cmdline: string): Buffer {
  return buildPe({
    plus: true,
    sections: [
      { name: ".osrel", data: Buffer.from("ID=debian\n") },
      { name: ".cmdline", data: Buffer.from(cmdline) },
      { name: ".initrd", data: Buffer.alloc(64, 7) },
      { name: ".linux", data: buildPe({ plus: true, sections: [{ name: ".text", data: Buffer.alloc(32, 1) }] }) },
    ],
  });
}

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

describe("rootHashOf", () => {
  it("reads the last well-formed roothash= word and ignores malformed ones", () => {
    expect(rootHashOf(`console=ttyS0 roothash=${HASH_A} quiet`)).toBe(HASH_A);
    expect(rootHashOf(`roothash=${HASH_B} roothash=${HASH_A.toUpperCase()}`)).toBe(HASH_A);
    expect(rootHashOf("console=ttyS0")).toBeNull();
    expect(rootHashOf("roothash=xyz")).toBeNull();
    expect(rootHashOf("roothash=abcd")).toBeNull();
  });
});

describe("root file system in measurements", () => {
  it("verity: the assumptions and the cmdline events name the root hash", async () => {
    const m = await measureBoot({ uki: uki(`roothash=${HASH_A} console=ttyS0`) }, { backend: "azure", rootfs: "verity" });
    expect(m.inputs.rootHash).toBe(HASH_A);
    expect(String(m.inputs.rootfs)).toMatch(new RegExp(`^verity: .*root hash ${HASH_A}`));
    const cmdlineEvents = [...m.registers.PCR9.events, ...m.registers.PCR11.events].filter((e) => /\.cmdline/.test(e.origin) && !e.origin.startsWith("constant"));
    expect(cmdlineEvents).toHaveLength(2);
    for (const e of cmdlineEvents) expect(e.origin).toContain(`roothash=${HASH_A}: the root file system`);
  });

  it("a verity image without roothash= is refused (it would boot an unverified root)", async () => {
    const e = await tdxErrorOf(() => measureBoot({ uki: uki("console=ttyS0") }, { backend: "azure", rootfs: "verity" }));
    expect(e.code).toBe("E_MEASUREMENT");
  });

  it("none: the assumptions say plainly that the root is not measured; inferred when the UKI has no roothash", async () => {
    const m = await measureBoot({ uki: uki("console=ttyS0") }, { backend: "azure" });
    expect(m.inputs.rootHash).toBeNull();
    expect(String(m.inputs.rootfs)).toMatch(/^none: .*NOT measured/);
    const inferred = await measureBoot({ uki: uki(`roothash=${HASH_A}`) }, { backend: "rtmr" });
    expect(String(inferred.inputs.rootfs)).toMatch(/^verity/);
  });

  it("PCR 11 ends with the four systemd-pcrphase phases, or with sysinit and ready when the OS is the initrd", async () => {
    const phases = (m: Awaited<ReturnType<typeof measureBoot>>) => m.registers.PCR11.events.filter((e) => e.log === "userspace").map((e) => e.digest);
    const withInitrd = await measureBoot({ uki: uki(`roothash=${HASH_A}`) }, { backend: "azure" });
    expect(phases(withInitrd)).toEqual(["enter-initrd", "leave-initrd", "sysinit", "ready"].map(sha256));
    const osInInitrd = await measureBoot({ uki: uki("console=ttyS0") }, { backend: "azure", rootfs: "initrd" });
    expect(phases(osInInitrd)).toEqual(["sysinit", "ready"].map(sha256));
    expect(String(osInInitrd.inputs.rootfs)).toMatch(/^initrd: the whole OS/);
    expect(osInInitrd.registers.PCR9.events.find((e) => e.description === "Linux initrd")!.origin).toContain("(the whole OS)");
    // The section events are the same; only the phases differ.
    expect(osInInitrd.registers.PCR11.value).not.toBe((await measureBoot({ uki: uki("console=ttyS0") }, { backend: "azure", rootfs: "none" })).registers.PCR11.value);
  });

  it("a root-only change is explained as a root file system change in each register it moves", async () => {
    const a = await measureBoot({ uki: uki(`roothash=${HASH_A} console=ttyS0`) }, { backend: "azure" });
    const b = await measureBoot({ uki: uki(`roothash=${HASH_B} console=ttyS0`) }, { backend: "azure" });
    const diff = diffMeasurements(a, b);
    expect(diff.map((d) => d.register)).toEqual(["PCR4", "PCR9", "PCR11"]);
    for (const d of diff) expect(d.changes[0]).toBe(`${d.register}: root file system changed (verity root hash ${HASH_A.slice(0, 16)}… → ${HASH_B.slice(0, 16)}…)`);
    expect(diff.find((d) => d.register === "PCR11")!.changes).toContain("PCR11: UKI section .cmdline changed");
    expect(diffToMarkdown(diff)).toContain("root file system changed (verity root hash");
    // No root change, no such sentence.
    const c = await measureBoot({ uki: uki(`roothash=${HASH_A} console=ttyS1`) }, { backend: "azure" });
    expect(diffMeasurements(a, c).flatMap((d) => d.changes).join("\n")).not.toContain("root file system");
  });
});
