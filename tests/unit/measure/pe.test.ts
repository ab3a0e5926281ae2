/**
 * PE parsing and the Authenticode digest.
 * Vectors: flashbots/measured-boot measure/authentihash_test.go (sha256 of fixtures/uki.efi);
 * second paths: an independent Python implementation (always), pesign -h and osslsigncode
 * extract-data / sign (when installed).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { TdxError } from "../../../provider/errors";
import { authenticodeDigest, parsePe } from "../../../provider/measure";
import { buildPe, peOffsets } from "./pe-builder";
import { hex, python3, run, runOk, tempDir, ukiFixturePath, which } from "./fixtures";

const AUTHENTICODE_PY = path.join(__dirname, "independent", "authenticode.py");
const uki = () => fs.readFileSync(ukiFixturePath());

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

/** Pull the DigestInfo digest for `alg` out of DER (SpcIndirectDataContent): OID, NULL params, OCTET STRING. */
function digestFromDer(der: Buffer, alg: "sha256" | "sha384"): string {
  const oid = Buffer.from(alg === "sha256" ? "0609608648016503040201" : "0609608648016503040202", "hex");
  const size = alg === "sha256" ? 32 : 48;
  const marker = Buffer.concat([oid, Buffer.from([0x05, 0x00, 0x04, size])]);
  const at = der.indexOf(marker);
  if (at < 0) throw new Error(`no ${alg} DigestInfo in DER`);
  return hex(der.subarray(at + marker.length, at + marker.length + size));
}

function independentDigest(file: string, alg: string): string {
  return runOk(python3(), [AUTHENTICODE_PY, file, alg]).trim();
}

describe("parsePe", () => {
  it("reads headers and the section table of the measured-boot test UKI", () => {
    const pe = parsePe(uki());
    expect(pe.format).toBe("PE32+");
    expect(pe.sizeOfHeaders).toBe(0x600);
    expect(pe.numberOfRvaAndSizes).toBe(16);
    expect(pe.dataDirectories[5]).toEqual({ virtualAddress: 77824, size: 18 });
    expect(pe.sections.map((s) => s.name)).toEqual([
      ".text", ".reloc", ".data", ".dynamic", ".rela", ".dynsym", ".sbat", ".sdmagic",
      ".osrel", ".cmdline", ".uname", ".initrd", ".linux", ".splash", ".dtb", ".pcrsig", ".pcrkey",
    ]);
    const linux = pe.sections.find((s) => s.name === ".linux")!;
    expect(linux).toMatchObject({ virtualSize: 0x1f8, virtualAddress: 0xf000, sizeOfRawData: 0x200, pointerToRawData: 0x3c00 });
  });

  it("parses PE32 as well as PE32+", () => {
    const pe = parsePe(buildPe({ plus: false, sections: [{ name: ".text", data: Buffer.from("hello") }] }));
    expect(pe.format).toBe("PE32");
    expect(pe.subsystem).toBe(10);
    expect(pe.sections[0]).toMatchObject({ name: ".text", virtualSize: 5, sizeOfRawData: 0x200 });
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
  it("matches the published sha256 of the measured-boot test UKI (flashbots/measured-boot authentihash_test.go)", () => {
    expect(hex(authenticodeDigest(uki(), "sha256"))).toBe("d343be6265eb3e23f78b0ae096bff334e37a760ae830736283f9b0268ecedcf2");
  });

  it("agrees with the independent Python implementation (sha256, sha384; PE32+ with a gap, PE32, gapless)", () => {
    const dir = tempDir();
    const files: Record<string, Buffer> = {
      "uki.efi": uki(),
      "gapless.efi": withoutGap(uki()),
      "pe32.efi": buildPe({ plus: false, sections: [{ name: ".text", data: Buffer.alloc(700, 7) }, { name: ".data", data: Buffer.from("x") }], trailer: Buffer.from("trailing") }),
    };
    for (const [name, buf] of Object.entries(files)) {
      const f = path.join(dir, name);
      fs.writeFileSync(f, buf);
      for (const alg of ["sha256", "sha384"] as const) expect(`${name} ${alg} ${hex(authenticodeDigest(buf, alg))}`).toBe(`${name} ${alg} ${independentDigest(f, alg)}`);
    }
  });

  // Tools the CI installs (.ci/run); a developer without them sees these tests as skipped, never as passed.
  const pesign = which("pesign");
  (pesign ? it : it.skip)("agrees with pesign -h (it follows edk2, gap included)", () => {
    const dir = tempDir();
    const f = path.join(dir, "uki.efi");
    fs.writeFileSync(f, uki());
    // pesign prints "hash: <hex>"
    expect(/hash:\s*([0-9a-f]{64})/.exec(runOk(pesign!, ["-h", "-d", "sha256", "-i", f]))?.[1]).toBe(hex(authenticodeDigest(uki(), "sha256")));
  });

  const osslsigncode = which("osslsigncode");
  (osslsigncode && which("openssl") ? it : it.skip)("agrees with osslsigncode on a gapless image, unsigned and signed", () => {
    const tool = osslsigncode!;
    const openssl = which("openssl")!;
    // osslsigncode hashes the file linearly, which equals the edk2 procedure only without gaps
    // between SizeOfHeaders and the sections; the test UKI has one, so we remove it.
    const dir = tempDir();
    const gapless = withoutGap(uki());
    const f = path.join(dir, "gapless.efi");
    fs.writeFileSync(f, gapless);
    for (const alg of ["sha256", "sha384"] as const) {
      const out = path.join(dir, `data-${alg}.der`);
      runOk(tool, ["extract-data", "-h", alg, "-in", f, "-out", out]);
      expect(digestFromDer(fs.readFileSync(out), alg)).toBe(hex(authenticodeDigest(gapless, alg)));
    }
    runOk(openssl, ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", path.join(dir, "k.pem"), "-out", path.join(dir, "c.pem"), "-subj", "/CN=tdxvm-test", "-days", "1"]);
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
    badSection.writeUInt32LE(base.length, table + 20); // PointerToRawData of .text past the end
    expect(() => authenticodeDigest(badSection, "sha256")).toThrow(/lies outside/);
    // Trailing data shorter than the declared certificate table (edk2 only checks when data trails the sections).
    const badCert = Buffer.concat([base, Buffer.alloc(16)]);
    badCert.writeUInt32LE(base.length, dirs + 32);
    badCert.writeUInt32LE(1000, dirs + 36);
    expect(() => authenticodeDigest(badCert, "sha256")).toThrow(/certificate table/);
  });
});
