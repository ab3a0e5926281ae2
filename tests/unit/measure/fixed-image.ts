/**
 * A fixed, fully synthetic boot image for pinned predictions: a UKI written with the test PE writer
 * (no systemd-stub code, so its bytes never change) and a disk head written with the test GPT
 * writer. Its register values are pinned in boot.test.ts (computed by independent/boot_events.py).
 */
import { buildPe } from "./pe-builder";
import { writeGpt } from "./gpt-writer";

export const FIXED_ROOT_HASH = "3c5e7f9a1b2d4c6e8f0a2b4d6e8f1a3c5e7f9b1d3f5a7c9e1b3d5f7a9c1e3b5d";

const pattern = (n: number, salt: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 131 + salt) & 0xff));

/** The kernel: a small PE32+ (Authenticode-measured by the firmware when systemd-stub loads it). */
export function fixedKernel(): Buffer {
  return buildPe({ plus: true, sections: [{ name: ".text", data: pattern(96, 1) }, { name: ".data", data: pattern(17, 2) }] });
}

/**
 * The UKI: a stand-in for the stub's own sections, then the UKI sections in mkosi's order; a
 * .cmdline with a verity roothash= and a trailing newline (the stub drops it), an initrd whose
 * length is not a multiple of 4, .pcrsig and .pcrpkey (packed into the initrd; .pcrsig never
 * measured), and a section systemd-stub does not know. No .ucode.
 */
export function fixedUki(): Buffer {
  return buildPe({
    plus: true,
    sections: [
      { name: ".text", data: pattern(300, 3) },
      { name: ".sbat", data: Buffer.from("sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n") },
      { name: ".osrel", data: Buffer.from('ID=tdxvm-fixed\nNAME="tdxvm fixed"\nVERSION_ID=7\n') },
      { name: ".cmdline", data: Buffer.from(`console=ttyS0,115200n8 roothash=${FIXED_ROOT_HASH} systemd.volatile=state\n`) },
      { name: ".uname", data: Buffer.from("6.12.0-fixed") },
      { name: ".pcrsig", data: Buffer.from('{"sha256":[]}\n') },
      { name: ".pcrpkey", data: Buffer.from("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n") },
      { name: ".tdxtest", data: Buffer.from("unknown to systemd-stub") },
      { name: ".initrd", data: pattern(1001, 4) },
      { name: ".linux", data: fixedKernel() },
    ],
  });
}

/** The disk's head: a GPT with an ESP, a root and a root-verity partition, slot 1 left empty. */
export function fixedDiskHead(): Buffer {
  return writeGpt([
    { slot: 0, type: "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", uuid: "0a1b2c3d-4e5f-4061-8293-a4b5c6d7e8f9", start: 2048, end: 4095, name: "esp" },
    { slot: 2, type: "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", uuid: "3c5e7f9a-1b2d-4c6e-8f0a-2b4d6e8f1a3c", start: 4096, end: 69631, name: "root-x86-64" },
    { slot: 3, type: "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5", uuid: "5e7f9b1d-3f5a-4c9e-9b3d-5f7a9c1e3b5d", start: 69632, end: 73727, name: "root-x86-64-verity" },
  ]);
}
