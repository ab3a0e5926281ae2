/** The kernel command line systemd-stub makes of a UKI's .cmdline bytes (shared by the in-memory and the streamed measurement). */

/** What systemd-stub 257 makes of the bytes of a .cmdline section (rules: boot.ts ukiCmdline). */
export function stubCmdline(b: Buffer): string {
  let text = "";
  for (let i = 0; i < b.length && b[i] !== 0; ) {
    const lead = b[i]!;
    const n = lead < 0x80 ? 1 : (lead & 0xe0) === 0xc0 ? 2 : (lead & 0xf0) === 0xe0 ? 3 : (lead & 0xf8) === 0xf0 ? 4 : (lead & 0xfc) === 0xf8 ? 5 : (lead & 0xfe) === 0xfc ? 6 : 0;
    if (n === 0) {
      i++;
      continue;
    }
    let cp = n === 1 ? lead : lead & (0x7f >> n);
    let ok = i + n <= b.length;
    for (let k = 1; ok && k < n; k++) {
      ok = (b[i + k]! & 0xc0) === 0x80;
      cp = cp * 64 + (b[i + k]! & 0x3f);
    }
    i += n;
    if (ok && (cp <= 0xd7ff || (cp >= 0xe000 && cp <= 0xffff))) text += String.fromCharCode(cp);
  }
  const blank = (c: string) => c <= " " || c === "\x7f";
  let start = 0;
  while (start < text.length && blank(text[start]!)) start++;
  return [...text.slice(start)].map((c) => (blank(c) ? " " : c)).join("").replace(/ +$/, "");
}
