/**
 * GPT parsing and UEFI_GPT_DATA (EV_EFI_GPT_EVENT data).
 * Vectors: the EV_EFI_GPT_EVENT of two real firmware logs — a TDX CCEL from COS 113
 * (google/go-tdx-guest testing/testdata/ccel) and a TPM log from an Arch Linux workstation
 * (google/go-eventlog testdata/eventlogs/tpm) — rebuilt into a disk and re-encoded byte for byte;
 * CRC32 against zlib's; partition tables against util-linux `sfdisk --json` (tools tree).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as zlib from "node:zlib";
import { randomBytes } from "node:crypto";
import { TdxError } from "../../../provider/errors";
import { EventType, crc32, digest, parseCcel, parseEventLog, parseGpt, parseGptEventData, uefiGptEventData } from "../../../provider/measure";
import { inToolsTreeOk } from "../../toolsTree";
import { fixture, tempDir } from "./fixtures";
import { writeGpt } from "./gpt-writer";

/** Lay a logged UEFI_GPT_DATA back onto a blank disk: header at LBA 1, entries from PartitionEntryLBA in order. */
function diskFromEventData(data: Buffer): Buffer {
  const { headerBytes, header, entries } = parseGptEventData(data);
  const arrayAt = Number(header.partitionEntryLba) * 512;
  const disk = Buffer.alloc(arrayAt + header.numberOfPartitionEntries * header.sizeOfPartitionEntry);
  headerBytes.copy(disk, 512);
  entries.forEach((e, i) => e.copy(disk, arrayAt + i * header.sizeOfPartitionEntry));
  return disk;
}

describe("crc32", () => {
  it("is CRC-32/IEEE (check value and zlib agreement)", () => {
    expect(crc32(Buffer.from("123456789"))).toBe(0xcbf43926);
    for (const n of [0, 1, 92, 511, 16384]) {
      const b = randomBytes(n);
      expect(crc32(b)).toBe(zlib.crc32(b));
    }
    const [a, b] = [randomBytes(100), randomBytes(37)];
    expect(crc32(b, crc32(a))).toBe(crc32(Buffer.concat([a, b]))); // a seed continues a CRC
  });
});

describe("uefiGptEventData", () => {
  const cases = [
    { name: "TDX CCEL (COS 113, 12 partitions)", log: () => parseCcel(fixture("ccel-cos113.bin")), alg: "sha384" as const, partitions: 12 },
    { name: "TPM log (Arch Linux workstation, 3 partitions)", log: () => parseEventLog(fixture("tpm-eventlog-arch-linux.bin")), alg: "sha256" as const, partitions: 3 },
  ];
  for (const c of cases) {
    it(`re-creates the firmware's EV_EFI_GPT_EVENT byte for byte: ${c.name}`, () => {
      const ev = c.log().events.find((e) => e.type === EventType.EV_EFI_GPT_EVENT)!;
      // The logged digest covers exactly the event data (so the data is what firmware hashed).
      expect(digest(c.alg, ev.data)).toEqual(ev.digests.find((d) => d.alg === c.alg)!.digest);
      const disk = diskFromEventData(ev.data); // CRCs must verify for parseGpt to accept it
      const gpt = parseGpt(disk);
      expect(gpt.partitions).toHaveLength(c.partitions);
      expect(uefiGptEventData(disk)).toEqual(ev.data);
    });
  }

  it("skips empty entries and keeps array order", () => {
    const ev = parseCcel(fixture("ccel-cos113.bin")).events.find((e) => e.type === EventType.EV_EFI_GPT_EVENT)!;
    const { headerBytes, header, entries } = parseGptEventData(ev.data);
    // Shift every entry one slot up, leaving slot 0 empty, and fix both CRCs.
    const size = header.sizeOfPartitionEntry;
    const arrayAt = Number(header.partitionEntryLba) * 512;
    const disk = Buffer.alloc(arrayAt + header.numberOfPartitionEntries * size);
    headerBytes.copy(disk, 512);
    entries.forEach((e, i) => e.copy(disk, arrayAt + (i + 1) * size));
    const array = disk.subarray(arrayAt, arrayAt + header.numberOfPartitionEntries * size);
    disk.writeUInt32LE(zlib.crc32(array), 512 + 88);
    disk.writeUInt32LE(0, 512 + 16);
    disk.writeUInt32LE(zlib.crc32(disk.subarray(512, 512 + 92)), 512 + 16);
    const gpt = parseGpt(disk);
    expect(gpt.partitions.map((p) => p.index)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    const out = uefiGptEventData(disk);
    expect(out.readBigUInt64LE(92)).toBe(12n);
    expect(out.subarray(100)).toEqual(Buffer.concat(entries));
  });
});

describe("parseGpt", () => {
  it("reads header and entries written by an independent writer", () => {
    const esp = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
    const disk = writeGpt([
      { slot: 0, type: esp, uuid: "11111111-2222-3333-4444-555555555555", start: 2048, end: 4095, name: "esp" },
      { slot: 2, type: "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", uuid: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", start: 4096, end: 9999, name: "root-x86-64" },
    ]);
    const gpt = parseGpt(disk);
    expect(gpt.header).toMatchObject({ myLba: 1n, alternateLba: 100000n, firstUsableLba: 34n, lastUsableLba: 99966n, partitionEntryLba: 2n, numberOfPartitionEntries: 128, sizeOfPartitionEntry: 128 });
    expect(gpt.header.diskGuid).toBe("01234567-89ab-cdef-0123-456789abcdef");
    expect(gpt.partitions.map((p) => [p.index, p.typeGuid, p.uniqueGuid, p.startingLba, p.endingLba, p.name])).toEqual([
      [0, esp, "11111111-2222-3333-4444-555555555555", 2048n, 4095n, "esp"],
      [2, "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", 4096n, 9999n, "root-x86-64"],
    ]);
    expect(uefiGptEventData(disk).length).toBe(92 + 8 + 2 * 128);
  });

  it("agrees with sfdisk --json on a disk sfdisk partitioned", () => {
    const dir = tempDir();
    const img = path.join(dir, "disk.img");
    fs.writeFileSync(img, Buffer.alloc(16 * 1024 * 1024));
    const script = [
      "label: gpt",
      "label-id: 6E1A3A3B-7C4F-4B52-9D0A-6F5F2A9A1C11",
      `disk.img1 : start=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="esp"`,
      `disk.img3 : start=10240, size=20480, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=9A1B2C3D-4E5F-4061-8273-94A5B6C7D8E9, name="root"`,
      "",
    ].join("\n");
    inToolsTreeOk(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", "disk.img"], { cwd: dir, input: script });
    const json = JSON.parse(inToolsTreeOk(["sfdisk", "--json", "disk.img"], { cwd: dir })).partitiontable;
    const gpt = parseGpt(fs.readFileSync(img));
    expect(json.partitions).toHaveLength(2);
    expect(gpt.header.diskGuid).toBe(String(json.id).toLowerCase());
    expect(Number(gpt.header.firstUsableLba)).toBe(json.firstlba);
    expect(Number(gpt.header.lastUsableLba)).toBe(json.lastlba);
    expect(
      gpt.partitions.map((p) => ({ n: p.index + 1, start: Number(p.startingLba), size: Number(p.endingLba - p.startingLba + 1n), type: p.typeGuid, uuid: p.uniqueGuid, name: p.name })),
    ).toEqual(
      json.partitions.map((p: { node: string; start: number; size: number; type: string; uuid: string; name: string }) => ({
        n: Number(/(\d+)$/.exec(p.node)![1]),
        start: p.start,
        size: p.size,
        type: p.type.toLowerCase(),
        uuid: p.uuid.toLowerCase(),
        name: p.name,
      })),
    );
  });

  it("rejects bad signatures and CRCs with E_MEASUREMENT", () => {
    const ev = parseCcel(fixture("ccel-cos113.bin")).events.find((e) => e.type === EventType.EV_EFI_GPT_EVENT)!;
    const good = diskFromEventData(ev.data);
    const badHeaderCrc = Buffer.from(good);
    badHeaderCrc[512 + 40] ^= 1;
    expect(() => parseGpt(badHeaderCrc)).toThrow(/header CRC32/);
    const badArray = Buffer.from(good);
    badArray[1024 + 56] ^= 1;
    expect(() => parseGpt(badArray)).toThrow(/array CRC32/);
    const noSig = Buffer.from(good);
    noSig.write("NOT PART", 512, "latin1");
    expect(() => parseGpt(noSig)).toThrow(TdxError);
    expect(() => parseGpt(good.subarray(0, 1500))).toThrow(/outside/);
  });
});
