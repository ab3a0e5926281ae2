/**
 * PE parsing and the Authenticode digest, on the test UKI the project builds with ukify
 * (tests/fixtures/testUki.ts) and on synthetic PEs (pe-builder.ts).
 * Second paths: the pefile library (independent/pe_dump.py) for headers and section tables; for the
 * digest an independent Python implementation (independent/authenticode.py), pesign -h (tools tree)
 * and osslsigncode extract-data / sign (host, the README's test set-up).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { TdxError } from "../../../provider/errors";
import { authenticodeDigest, parsePe } from "../../../provider/measure";
import { testUki } from "../../fixtures/testUki";
import { inToolsTreeOk } from "../../toolsTree";
import { buildPe, peOffsets } from "./pe-builder";
import { hex, hostTool, independent, run, runOk, tempDir } from "./fixtures";

const uki = () => fs.readFileSync(testUki().uki);

/** Remove the unhashed gap between SizeOfHeaders and the first section, shifting PointerToRawData. */
function withoutGap(pe: Buffer): Buffer {
  const { opt, table, nSections } = peOffsets(pe);
  const soh = pe.readUInt32LE(opt + 60);
  let first = Infinity;
  for (let i = 0; i < nSections; i++) first = Math.min(first, pe.readUInt32LE(table + 40 * i + 20));
  const gap = first - soh;
  const out = Buffer.concat([pe.subarray(0, soh), pe.subarray(first)]);
  for (let i = 0; i < nSections; i++) out.writeUInt32LE(out.readUInt32LE(table + 40 * i + 20) - gap, table + 40 * i + 20);
  return out;
}

/** The same PE with the section table's entries i and j swapped (the file layout is unchanged). */
function swapSectionHeaders(pe: Buffer, i: number, j: number): Buffer {
  const { table } = peOffsets(pe);
  const out = Buffer.from(pe);
  pe.copy(out, table + 40 * i, table + 40 * j, table + 40 * j + 40);
  pe.copy(out, table + 40 * j, table + 40 * i, table + 40 * i + 40);
  return out;
}

/** Pull the DigestInfo digest for `alg` out of DER (SpcIndirectDataContent): OID, NULL params, OCTET STRING. */
function digestFromDer(der: Buffer, alg: "sha256" | "sha384"): string {
  const oid = Buffer.from(alg === "sha256" ? "0609608648016503040201" : "0609608648016503040202", "hex");
  const size = alg === "sha256" ? 32 : 48;
  const marker = Buffer.concat([oid, Buffer.from([0x05, 0x00, 0x04, size])]);
  const at = der.indexOf(marker);
  if (at < 0) throw new Error(`no ${alg} DigestInfo in DER`);
  return hex(der.subarray(at + marker.length, at + marker.length + size));
}

/** Write each buffer into a fresh directory; returns it. */
function files(bufs: Record<string, Buffer>): string {
  const dir = tempDir();
  for (const [name, b] of Object.entries(bufs)) fs.writeFileSync(path.join(dir, name), b);
  return dir;
}

describe("parsePe", () => {
  it("reads the headers and section table of the test UKI exactly as pefile does", () => {
    const dir = files({ "uki.efi": uki() });
    const want = JSON.parse(independent("pe_dump.py", ["uki.efi"], dir));
    const pe = parsePe(uki());
    const { format, sizeOfHeaders, sizeOfImage, subsystem, checkSum, numberOfRvaAndSizes, dataDirectories, machine } = pe;
    expect({ format, machine, sizeOfHeaders, sizeOfImage, subsystem, checkSum, numberOfRvaAndSizes, dataDirectories }).toEqual({ ...want, sections: undefined });
    expect(pe.sections).toEqual(want.sections);
    // ukify appended the UKI sections after the stub's own, in the order it writes them.
    expect(pe.sections.map((s) => s.name)).toEqual(expect.arrayContaining([".text", ".sbat", ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".pcrsig", ".tdxtest"]));
  });

  it("parses PE32 as well as PE32+", () => {
    const pe = parsePe(buildPe({ plus: false, sections: [{ name: ".text", data: Buffer.from("hello") }] }));
    expect(pe.format).toBe("PE32");
    expect(pe.subsystem).toBe(10);
    expect(pe.sections[0]).toMatchObject({ name: ".text", virtualSize: 5, sizeOfRawData: 0x200 });
  });

  it("keeps the section table's order and every entry, also out of file order and with duplicate names", () => {
    const base = buildPe({ plus: true, sections: [{ name: ".a", data: Buffer.alloc(10, 1) }, { name: ".dup", data: Buffer.alloc(20, 2) }, { name: ".dup", data: Buffer.alloc(30, 3) }] });
    const pe = parsePe(swapSectionHeaders(base, 0, 2));
    expect(pe.sections.map((s) => [s.name, s.virtualSize])).toEqual([[".dup", 30], [".dup", 20], [".a", 10]]);
    expect(pe.sections[0]!.pointerToRawData).toBeGreaterThan(pe.sections[2]!.pointerToRawData);
  });

  it("rejects non-PE input with E_MEASUREMENT", () => {
    for (const bad of [Buffer.alloc(0), Buffer.from("not a PE file"), Buffer.alloc(4096)]) {
      expect(() => parsePe(bad)).toThrow(TdxError);
      try {
        parsePe(bad);
      } catch (e) {
        expect((e as TdxError).code).toBe("E_MEASUREMENT");
      }
    }
  });
});

describe("authenticodeDigest", () => {
  it("agrees with the independent Python implementation (test UKI, its kernel, gapless, PE32, section table out of file order)", () => {
    const kernel = fs.readFileSync(testUki().input(".linux"));
    const synthetic = buildPe({ plus: true, sections: [{ name: ".text", data: Buffer.alloc(700, 7) }, { name: ".data", data: Buffer.from("x") }, { name: ".rest", data: Buffer.alloc(513, 9) }] });
    const bufs: Record<string, Buffer> = {
      "uki.efi": uki(),
      "kernel.efi": kernel,
      "gapless.efi": withoutGap(uki()),
      "pe32.efi": buildPe({ plus: false, sections: [{ name: ".text", data: Buffer.alloc(700, 7) }, { name: ".data", data: Buffer.from("x") }], trailer: Buffer.from("trailing") }),
      // Hashed in file order (edk2 sorts by PointerToRawData), not in table order.
      "shuffled.efi": swapSectionHeaders(swapSectionHeaders(synthetic, 0, 2), 0, 1),
    };
    const dir = files(bufs);
    const want = JSON.parse(independent("authenticode.py", ["--json", ...Object.keys(bufs)], dir)) as Record<string, Record<string, string>>;
    for (const [name, buf] of Object.entries(bufs)) {
      for (const alg of ["sha256", "sha384"] as const) expect(`${name} ${alg} ${hex(authenticodeDigest(buf, alg))}`).toBe(`${name} ${alg} ${want[name]![alg]}`);
    }
  });

  it("agrees with pesign -h from the tools tree (it follows edk2, gap included)", () => {
    const dir = files({ "uki.efi": uki(), "kernel.efi": fs.readFileSync(testUki().input(".linux")) });
    for (const f of ["uki.efi", "kernel.efi"]) {
      // pesign prints "<hex> <file>" (older versions: "hash: <hex>")
      const got = /\b([0-9a-f]{64})\b/.exec(inToolsTreeOk(["pesign", "-h", "-d", "sha256", "-i", f], { cwd: dir }))?.[1];
      expect(`${f} ${got}`).toBe(`${f} ${hex(authenticodeDigest(fs.readFileSync(path.join(dir, f)), "sha256"))}`);
    }
  });

  it("agrees with osslsigncode on a gapless image, unsigned and signed", () => {
    const tool = hostTool("osslsigncode");
    // osslsigncode hashes the file linearly, which equals the edk2 procedure only without gaps
    // between SizeOfHeaders and the sections; the test UKI has one, so we remove it.
    const gapless = withoutGap(uki());
    const dir = files({ "gapless.efi": gapless });
    const f = path.join(dir, "gapless.efi");
    for (const alg of ["sha256", "sha384"] as const) {
      const out = path.join(dir, `data-${alg}.der`);
      runOk(tool, ["extract-data", "-h", alg, "-in", f, "-out", out]);
      expect(digestFromDer(fs.readFileSync(out), alg)).toBe(hex(authenticodeDigest(gapless, alg)));
    }
    inToolsTreeOk(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem", "-out", "c.pem", "-subj", "/CN=tdxvm-test", "-days", "1"], { cwd: dir });
    const signed = path.join(dir, "signed.efi");
    runOk(tool, ["sign", "-certs", path.join(dir, "c.pem"), "-key", path.join(dir, "k.pem"), "-h", "sha256", "-in", f, "-out", signed]);
    const sig = path.join(dir, "sig.der");
    runOk(tool, ["extract-signature", "-in", signed, "-out", sig]);
    const signedBuf = fs.readFileSync(signed);
    // The certificate table is excluded: the digest inside the signature is the signed file's Authenticode digest.
    expect(digestFromDer(fs.readFileSync(sig), "sha256")).toBe(hex(authenticodeDigest(signedBuf, "sha256")));
    expect(run(tool, ["verify", "-in", signed]).stdout).toMatch(/Message digest\s*:\s*[0-9A-F]+/i);
  });

  it("ignores CheckSum and the certificate table, and covers every section byte", () => {
    const base = withoutGap(uki());
    const d = hex(authenticodeDigest(base, "sha256"));
    const { opt, dirs } = peOffsets(base);

    const patched = Buffer.from(base);
    patched.writeUInt32LE(0x12345678, opt + 64); // CheckSum
    expect(hex(authenticodeDigest(patched, "sha256"))).toBe(d);

    // Append a WIN_CERTIFICATE and point the Security directory at it.
    const cert = Buffer.alloc(64, 0xaa);
    cert.writeUInt32LE(cert.length, 0);
    cert.writeUInt16LE(0x0200, 4);
    cert.writeUInt16LE(0x0002, 6);
    const signed = Buffer.concat([base, cert]);
    signed.writeUInt32LE(base.length, dirs + 32);
    signed.writeUInt32LE(cert.length, dirs + 36);
    expect(hex(authenticodeDigest(signed, "sha256"))).toBe(d);

    const flipped = Buffer.from(base);
    const linux = parsePe(base).sections.find((s) => s.name === ".linux")!;
    flipped[linux.pointerToRawData + 3] ^= 1;
    expect(hex(authenticodeDigest(flipped, "sha256"))).not.toBe(d);
  });

  it("fails with E_MEASUREMENT when a section or the certificate table lies outside the file", () => {
    const base = withoutGap(uki());
    const { dirs, table } = peOffsets(base);
    const badSection = Buffer.from(base);
    badSection.writeUInt32LE(base.length, table + 20); // PointerToRawData of the first section past the end
    expect(() => authenticodeDigest(badSection, "sha256")).toThrow(/lies outside/);
    // Trailing data shorter than the declared certificate table (edk2 only checks when data trails the sections).
    const badCert = Buffer.concat([base, Buffer.alloc(16)]);
    badCert.writeUInt32LE(base.length, dirs + 32);
    badCert.writeUInt32LE(1000, dirs + 36);
    expect(() => authenticodeDigest(badCert, "sha256")).toThrow(/certificate table/);
  });
});
