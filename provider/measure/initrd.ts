/**
 * The initrd that systemd-stub hands to Linux, which Linux measures into PCR 9 ("Linux initrd").
 *
 * systemd-stub (src/boot/stub.c, v257) concatenates, each padded to a multiple of 4 bytes:
 * .ucode, .initrd, then cpio archives it generates — credentials, global credentials, sysexts,
 * confexts (from the ESP: none for tdxvm images), and literal cpios wrapping the .pcrsig,
 * .pcrpkey, .profile and .osrel sections as /.extra/tpm2-pcr-signature.json,
 * /.extra/tpm2-pcr-public-key.pem, /.extra/profile and /.extra/os-release.
 * Literal cpios (src/boot/cpio.c): "newc" format (magic 070701, 13 eight-digit hex fields),
 * inodes from 1, uid/gid/mtime 0, nlink 1; first the directory ".extra" (mode 040555), then
 * the file (mode 0100444), names NUL-terminated and padded to 4, data padded to 4, then the
 * TRAILER!!! record. Written from the format description; verified against a booted VM.
 */
import { ukiSelectedSections } from "./uki";

const hex8 = (v: number) => v.toString(16).padStart(8, "0");
const pad4 = (n: number) => (4 - (n % 4)) % 4;

/** A cpio "newc" header and name (padded to 4) for a file of `size` bytes: its data and padding follow. */
function cpioHead(inode: number, mode: number, name: string, size: number): Buffer {
  const nameBytes = Buffer.from(`${name}\0`, "latin1");
  const fields = [inode, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, nameBytes.length, 0];
  const head = Buffer.concat([Buffer.from(`070701${fields.map(hex8).join("")}`, "latin1"), nameBytes]);
  return Buffer.concat([head, Buffer.alloc(pad4(head.length))]);
}

const TRAILER = Buffer.concat([Buffer.from(`070701${[0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0].map(hex8).join("").toUpperCase()}TRAILER!!!\0\0\0\0`, "latin1")]);

/** One part of a combined initrd: literal bytes, or a section's loaded bytes (VirtualSize of them). */
export type InitrdPart<T> = Buffer | T;

/** systemd-stub's literal cpio /<dir>/<file> as parts: the file's data is `data` (`size` bytes). */
function literalCpioParts<T>(dir: string, file: string, data: T, size: number): Array<InitrdPart<T>> {
  return [cpioHead(1, 0o40555, dir, 0), cpioHead(2, 0o100444, `${dir}/${file}`, size), data, Buffer.alloc(pad4(size)), TRAILER];
}

/** systemd-stub's literal cpio: /<dir>/<file> holding `data`. */
export function stubLiteralCpio(dir: string, file: string, data: Buffer): Buffer {
  return Buffer.concat(literalCpioParts(dir, file, data, data.length));
}

const LITERAL_SECTIONS: Array<[string, string]> = [
  [".pcrsig", "tpm2-pcr-signature.json"],
  [".pcrpkey", "tpm2-pcr-public-key.pem"],
  [".profile", "profile"],
  [".osrel", "os-release"],
];

/**
 * The combined initrd for the selected sections (ukiSelectedSections, or any selection of
 * sections with a VirtualSize), as literal bytes and sections in order. `skipBase`: leave out
 * .ucode/.initrd but keep the padding after them (for callers that already hashed those bytes).
 */
export function stubCombinedInitrdParts<T extends { readonly virtualSize: number }>(selected: ReadonlyMap<string, T>, opts: { skipBase?: boolean } = {}): Array<InitrdPart<T>> {
  const out: Array<InitrdPart<T>> = [];
  for (const name of [".ucode", ".initrd"]) {
    const sec = selected.get(name);
    if (!sec) continue;
    if (!opts.skipBase) out.push(sec);
    out.push(Buffer.alloc(pad4(sec.virtualSize)));
  }
  for (const [name, file] of LITERAL_SECTIONS) {
    const sec = selected.get(name);
    if (!sec) continue;
    const cpio = literalCpioParts(".extra", file, sec, sec.virtualSize);
    const length = cpio.reduce((n, p) => n + (Buffer.isBuffer(p) ? p.length : sec.virtualSize), 0);
    out.push(...cpio, Buffer.alloc(pad4(length)));
  }
  return out;
}

/**
 * The combined initrd systemd-stub passes to the kernel for this UKI (no ESP extras).
 * `skipBase`: leave out .ucode/.initrd but keep the padding after .initrd (for callers that
 * already hashed those bytes).
 */
export function stubCombinedInitrd(uki: Buffer, opts: { skipBase?: boolean } = {}): Buffer {
  return Buffer.concat(stubCombinedInitrdParts(ukiSelectedSections(uki), opts).map((p) => (Buffer.isBuffer(p) ? p : p.data)));
}
