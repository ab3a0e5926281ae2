/** A tiny PE/COFF writer for tests: lays out headers and sections from scratch (no shared code with pe.ts). */

export interface BuildSection {
  name: string;
  data: Buffer;
  /** Defaults to data.length. */
  virtualSize?: number;
}

export function buildPe(opts: { plus: boolean; sections: ReadonlyArray<BuildSection>; fileAlign?: number; trailer?: Buffer }): Buffer {
  const fileAlign = opts.fileAlign ?? 0x200;
  const align = (n: number, a: number) => Math.ceil(n / a) * a;
  const optSize = (opts.plus ? 112 : 96) + 16 * 8;
  const peAt = 0x40;
  const tableAt = peAt + 4 + 20 + optSize;
  const headersSize = align(tableAt + 40 * opts.sections.length, fileAlign);

  let filePos = headersSize;
  let va = 0x1000;
  const placed = opts.sections.map((s) => {
    const raw = align(s.data.length, fileAlign);
    const p = { ...s, ptr: filePos, raw, va, vsize: s.virtualSize ?? s.data.length };
    filePos += raw;
    va += align(Math.max(p.vsize, 1), 0x1000);
    return p;
  });
  const out = Buffer.alloc(filePos);
  out.write("MZ", 0, "latin1");
  out.writeUInt32LE(peAt, 0x3c);
  out.write("PE\0\0", peAt, "latin1");
  const coff = peAt + 4;
  out.writeUInt16LE(0x8664, coff);
  out.writeUInt16LE(opts.sections.length, coff + 2);
  out.writeUInt16LE(optSize, coff + 16);
  out.writeUInt16LE(0x0206, coff + 18);
  const opt = coff + 20;
  out.writeUInt16LE(opts.plus ? 0x20b : 0x10b, opt);
  out.writeUInt32LE(0x1000, opt + 16); // AddressOfEntryPoint
  out.writeUInt32LE(0x1000, opt + 32); // SectionAlignment
  out.writeUInt32LE(fileAlign, opt + 36);
  out.writeUInt32LE(va, opt + 56); // SizeOfImage
  out.writeUInt32LE(headersSize, opt + 60);
  out.writeUInt32LE(0xdeadbeef, opt + 64); // CheckSum (ignored by Authenticode)
  out.writeUInt16LE(10, opt + 68); // EFI application
  out.writeUInt32LE(16, opt + (opts.plus ? 108 : 92));
  placed.forEach((s, i) => {
    const at = tableAt + 40 * i;
    out.write(s.name.slice(0, 8), at, "latin1");
    out.writeUInt32LE(s.vsize, at + 8);
    out.writeUInt32LE(s.va, at + 12);
    out.writeUInt32LE(s.raw, at + 16);
    out.writeUInt32LE(s.ptr, at + 20);
    out.writeUInt32LE(0x40000040, at + 36);
    s.data.copy(out, s.ptr);
  });
  return opts.trailer ? Buffer.concat([out, opts.trailer]) : out;
}

/** Offsets of header fields in a PE (for tests that patch them). */
export function peOffsets(pe: Buffer): { opt: number; dirs: number; table: number; nSections: number } {
  const peAt = pe.readUInt32LE(0x3c);
  const opt = peAt + 24;
  const plus = pe.readUInt16LE(opt) === 0x20b;
  return { opt, dirs: opt + (plus ? 112 : 96), table: opt + pe.readUInt16LE(peAt + 20), nSections: pe.readUInt16LE(peAt + 6) };
}
