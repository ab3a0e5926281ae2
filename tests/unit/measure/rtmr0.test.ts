/**
 * RTMR0 predicted from a declared TD shape, against two real TDs: dstack's verifier fixtures
 * (Dstack-TEE/dstack, Apache-2.0; see fixtures/README.md) carry a TD quote, its event log and the
 * VM configuration (memory, the TDVF sections of the OVMF it booted). Every RTMR0 event but the
 * three QEMU ACPI blobs is computed here from first principles and must equal the logged digest;
 * the ACPI blobs are a shape input (their digests from the same log: the 128 KiB tables blob of
 * those VMs is not published), and the replay must equal the quote's RTMR0 exactly.
 */
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { createHash } from "node:crypto";
import { decode } from "cbor-x";
import { promises as fs } from "node:fs";
import { acpiTableNames, predictRtmr0, tdHob, uefiVariableData } from "../../../provider/measure/rtmr0";
import { readTdShape } from "../../../provider/measure/api";
import { measureBoot, parseTdvf, parseTdxQuote } from "../../../provider/measure";
import { ovmfPath, fixture } from "./fixtures";
import { fixedDiskHead, fixedUki } from "./fixed-image";
import { tempDir, tdxErrorOf } from "../../helpers";

interface Vector { quote: string; event_log: string | Array<{ imr: number; event_type: number; digest: string }>; vm_config: string }
const load = (f: string) => JSON.parse(readFileSync(path.join(__dirname, "fixtures", f), "utf8")) as Vector;
const events = (v: Vector) => (typeof v.event_log === "string" ? JSON.parse(v.event_log) : v.event_log) as Array<{ imr: number; event_type: number; digest: string }>;
const OVMF = readFileSync(ovmfPath());

/** dstack's record of its OVMF's TDVF RAM sections (vm_config.tdx_measurement → tdvf.td_hob): LEB128 page numbers. */
function dstackSections(v: Vector): { accepted: { start: bigint; length: bigint }[]; hobAddress: bigint } {
  const m = decode(Buffer.from((JSON.parse(v.vm_config) as { tdx_measurement: { measurement: string } }).tdx_measurement.measurement, "base64")) as { tdvf: { td_hob: Uint8Array } };
  const w: number[] = [];
  let val = 0;
  let shift = 0;
  for (const b of m.tdvf.td_hob) {
    val += (b & 0x7f) * 2 ** shift;
    shift += 7;
    if (!(b & 0x80)) {
      w.push(val);
      val = 0;
      shift = 0;
    }
  }
  const [base, hob, n] = w as [number, number, number];
  const page = (p: number) => BigInt(p) * 4096n;
  return { hobAddress: page(base + hob), accepted: Array.from({ length: n }, (_, i) => ({ start: page(base + w[3 + 2 * i]!), length: page(w[4 + 2 * i]!) })) };
}

const replay = (digests: string[]) => digests.reduce((r, d) => createHash("sha384").update(Buffer.concat([r, Buffer.from(d, "hex")])).digest(), Buffer.alloc(48)).toString("hex");

describe("RTMR0 predicted for a QEMU TD shape (dstack's public vectors)", () => {
  const sections = dstackSections(load("dstack-tdx-lite-getquote.json")); // both VMs booted this OVMF layout

  it.each([
    ["dstack-tdx-lite-getquote.json", "2 vCPU, 2 GiB, QEMU 8.2.2"],
    ["dstack-quote-report.json", "16 vCPU, 64 GiB, 1 GPU, QEMU 9.2.1"],
  ])("%s (%s): every computed event equals the TD's log, and the replay equals the quote's RTMR0", (file) => {
    const v = load(file);
    const logged = events(v).filter((e) => e.imr === 0).map((e) => e.digest.toLowerCase());
    const memoryMiB = (JSON.parse(v.vm_config) as { memory_size: number }).memory_size / 2 ** 20;
    const predicted = predictRtmr0(OVMF, { memoryMiB, boot: "direct-kernel", acpi: { tableLoader: logged[8]!, rsdp: logged[9]!, tables: logged[10]! } }, sections);
    expect(predicted.map((e) => e.description)).toEqual([
      "TD HOB (TdxTable: memory layout of the VM)", "configuration firmware volume (CFV)", "EFI variable SecureBoot", "EFI variable PK", "EFI variable KEK",
      "EFI variable db", "EFI variable dbx", "separator", "ACPI table loader (etc/table-loader)", "ACPI RSDP (etc/acpi/rsdp)",
      "ACPI tables (etc/acpi/tables: DSDT, FACP, APIC, … as the host built them)", "EFI variable BootOrder", "EFI variable Boot0000",
    ]);
    // Computed, not given: the TD HOB (memory), the CFV (Debian trixie's OVMF has dstack's variable-store template), variables, separator, boot.
    expect(predicted.map((e) => e.digest)).toEqual(logged);
    const quoteRtmr0 = parseTdxQuote(Buffer.from(v.quote, "hex")).body.rtmr[0]!.toString("hex");
    expect(replay(predicted.map((e) => e.digest))).toBe(quoteRtmr0);
  });

  it("the TD HOB follows the memory size: below 0xB0000000 one unaccepted range to the top; above, split at 2 GiB and moved to 4 GiB", () => {
    const hob = (mib: number) => tdHob(BigInt(mib) * 2n ** 20n, sections.accepted, sections.hobAddress);
    const ranges = (b: Buffer) => Array.from({ length: (b.length - 56) / 48 }, (_, i) => [b.readUInt8(56 + i * 48 + 24), b.readBigUInt64LE(56 + i * 48 + 32), b.readBigUInt64LE(56 + i * 48 + 40)]);
    expect(hob(2048)).toHaveLength(440);
    expect(ranges(hob(2048)).at(-1)).toEqual([7, 0x820000n, 0x8000_0000n - 0x820000n]);
    expect(ranges(hob(65536)).slice(-2)).toEqual([[7, 0x820000n, 0x8000_0000n - 0x820000n], [7, 0x1_0000_0000n, 64n * 2n ** 30n - 0x8000_0000n]]);
    expect(hob(65536).readBigUInt64LE(48)).toBe(sections.hobAddress + BigInt(hob(65536).length) + 8n); // EfiEndOfHobList
    expect(createHash("sha384").update(hob(2048)).digest("hex")).not.toBe(createHash("sha384").update(hob(4096)).digest("hex"));
  });

  it("Debian trixie's OVMF: the TD HOB from its own TDVF sections (its TEMP_MEM layout differs from dstack's build)", () => {
    const own = parseTdvf(OVMF).sections.filter((s) => s.typeName === "TD_HOB" || s.typeName === "TEMP_MEM").map((s) => [s.memoryAddress, s.memoryDataSize]);
    expect(own).toEqual([[0x811000n, 0xf000n], [0x80b000n, 0x2000n], [0x809000n, 0x2000n], [0x800000n, 0x6000n]]);
    const acpi = { tableLoader: "11".repeat(48), rsdp: "22".repeat(48), tables: "33".repeat(48) };
    const mine = predictRtmr0(OVMF, { memoryMiB: 2048, boot: "direct-kernel", acpi });
    const theirs = predictRtmr0(OVMF, { memoryMiB: 2048, boot: "direct-kernel", acpi }, sections);
    expect(mine[0]!.digest).not.toBe(theirs[0]!.digest); // 0x810000–0x811000 is unaccepted here
    expect(mine.slice(1).map((e) => e.digest)).toEqual(theirs.slice(1).map((e) => e.digest));
  });

  it("ACPI blobs given as files: digests of the raw blobs, and the ledger names the tables inside", () => {
    const table = (sig: string, len: number) => {
      const b = Buffer.alloc(len);
      b.write(sig, 0, "latin1");
      b.writeUInt32LE(len, 4);
      return b;
    };
    const tables = Buffer.concat([table("FACS", 64), table("DSDT", 300), table("FACP", 244), table("APIC", 120), table("RSDT", 48), Buffer.alloc(1000)]);
    expect(acpiTableNames(tables)).toEqual(["FACS", "DSDT", "FACP", "APIC", "RSDT"]);
    const loader = Buffer.alloc(4096, 1);
    const rsdp = Buffer.from("RSD PTR \0BOCHS \0\0\0\0\0");
    const p = predictRtmr0(OVMF, { memoryMiB: 1024, boot: "direct-kernel", acpi: { tableLoader: loader, rsdp, tables } });
    const sha = (b: Buffer) => createHash("sha384").update(b).digest("hex");
    expect(p.slice(8, 11).map((e) => [e.description, e.digest])).toEqual([
      ["ACPI table loader (etc/table-loader)", sha(loader)], ["ACPI RSDP (etc/acpi/rsdp)", sha(rsdp)], ["ACPI tables (etc/acpi/tables: FACS, DSDT, FACP, APIC, RSDT)", sha(tables)],
    ]);
  });

  it("a disk boot takes its boot variables as given (BootOrder, then Boot#### in order); bad shapes are refused by name", async () => {
    const acpi = { tableLoader: "11".repeat(48), rsdp: "22".repeat(48), tables: "33".repeat(48) };
    const order = Buffer.from([1, 0, 0, 0]);
    const p = predictRtmr0(OVMF, { memoryMiB: 2048, acpi, boot: [{ name: "BootOrder", data: order }, { name: "Boot0001", data: "ab".repeat(48) }, { name: "Boot0000", data: Buffer.from("x") }] });
    expect(p.slice(11).map((e) => [e.description, e.digest])).toEqual([
      ["EFI variable BootOrder", createHash("sha384").update(order).digest("hex")], ["EFI variable Boot0001", "ab".repeat(48)], ["EFI variable Boot0000", createHash("sha384").update("x").digest("hex")],
    ]);
    for (const [shape, re] of [
      [{ memoryMiB: 2048, acpi, boot: [] }, /needs its boot variables/],
      [{ memoryMiB: 2048, acpi, boot: [{ name: "Boot0001", data: "ab".repeat(48) }] }, /BootOrder then Boot####/],
      [{ memoryMiB: 2048, acpi: { ...acpi, rsdp: "xyz" }, boot: "direct-kernel" }, /acpi\.rsdp: a SHA-384 digest is 96 lowercase hex digits/],
      [{ memoryMiB: 10, acpi, boot: "direct-kernel" }, /not a plausible TD memory size/],
      [{ memoryMiB: 2048, acpi, boot: "direct-kernel", ovmfLayout: "202505" }, /not modelled/],
    ] as const) expect((await tdxErrorOf(async () => predictRtmr0(OVMF, shape as never))).message).toMatch(re);
  });

  it("UEFI_VARIABLE_DATA: GUID in EFI byte order, lengths in characters and bytes, UTF-16LE name", () => {
    expect(uefiVariableData("8be4df61-93ca-11d2-aa0d-00e098032b8c", "PK").toString("hex")).toBe("61dfe48bca93d211aa0d00e098032b8c" + "0200000000000000" + "0000000000000000" + "50004b00");
  });
});

describe("a TD shape in a measurement", () => {
  it("rtmr: RTMR0 predicted (13 named events) from the shape and the firmware; captured and predicted together, or a shape on gcp, are refused", async () => {
    const firmware = { bytes: OVMF, name: "OVMF.fd" };
    const acpi = { tableLoader: "11".repeat(48), rsdp: "22".repeat(48), tables: "33".repeat(48) };
    const img = { uki: fixedUki(), diskHead: fixedDiskHead() };
    const m = await measureBoot(img, { backend: "rtmr", firmware, tdShape: { memoryMiB: 4096, acpi, boot: "direct-kernel" } });
    expect(m.registers.RTMR0).toMatchObject({ status: "exact", value: replay(m.registers.RTMR0!.events.map((e) => e.digest)) });
    expect([m.registers.RTMR0!.basis, m.registers.RTMR0!.events.length, m.inputs.tdShapeMemoryMiB]).toEqual([undefined, 13, 4096]);
    const bigger = await measureBoot(img, { backend: "rtmr", firmware, tdShape: { memoryMiB: 8192, acpi, boot: "direct-kernel" } });
    expect(bigger.registers.RTMR0!.value).not.toBe(m.registers.RTMR0!.value);
    expect(bigger.registers.RTMR1!.value).toBe(m.registers.RTMR1!.value);
    expect((await tdxErrorOf(() => measureBoot(img, { backend: "rtmr", firmware, capturedCcel: fixture("ccel-cos113.bin"), tdShape: { memoryMiB: 4096, acpi, boot: "direct-kernel" } }))).message).toMatch(/either captured .* or predicted/);
    expect((await tdxErrorOf(() => measureBoot(img, { backend: "gcp", firmware, tdShape: { memoryMiB: 4096, acpi, boot: "direct-kernel" } }))).message).toMatch(/QEMU\/KVM hosts/);
  });

  it("reads a shape file: blobs relative to the file, digests as given; refuses unknown fields, bad blobs and missing files", async () => {
    const dir = await tempDir("tdxvm-shape-");
    await fs.writeFile(path.join(dir, "loader.bin"), Buffer.alloc(4096, 1));
    await fs.writeFile(path.join(dir, "shape.json"), JSON.stringify({ memoryMiB: 2048, acpi: { tableLoader: "loader.bin", rsdp: "22".repeat(48), tables: "33".repeat(48) }, boot: "direct-kernel" }));
    const t = await readTdShape(path.join(dir, "shape.json"));
    expect([Buffer.isBuffer(t.acpi.tableLoader), t.acpi.rsdp, t.boot]).toEqual([true, "22".repeat(48), "direct-kernel"]);
    const bad = async (spec: unknown) => (await tdxErrorOf(() => readTdShape(spec as never))).message;
    expect(await bad({ memoryMiB: 1, acpi: {}, boot: "direct-kernel", extra: 1 })).toMatch(/unknown field\(s\) extra/);
    expect(await bad({ memoryMiB: 2048, acpi: { tableLoader: 5, rsdp: "x", tables: "y" }, boot: "direct-kernel" })).toMatch(/acpi.tableLoader must be a file path or a SHA-384 digest/);
    expect(await bad({ memoryMiB: 2048, acpi: { tableLoader: path.join(dir, "nope.bin"), rsdp: "22".repeat(48), tables: "33".repeat(48) }, boot: "direct-kernel" })).toMatch(/nope\.bin/);
    expect(await bad({ memoryMiB: 2048, acpi: { tableLoader: "11".repeat(48), rsdp: "22".repeat(48), tables: "33".repeat(48) }, boot: "pxe" })).toMatch(/boot must be "direct-kernel" or a list/);
    await fs.writeFile(path.join(dir, "broken.json"), "{");
    expect((await tdxErrorOf(() => readTdShape(path.join(dir, "broken.json")))).message).toMatch(/is not JSON/);
  });
});
