"""Independent prediction of the events a tdxvm image causes at boot, for cross-checking
provider/measure/boot.ts and backends.ts. Written from the sources below, not from the TypeScript
(it shares no code with it and is organised as a timeline of who measures what, not as a list):

- edk2 (OvmfPkg; SecurityPkg Tcg2Dxe, TdTcg2Dxe, DxeTpm2MeasureBootLib) and the TCG PC Client
  Platform Firmware Profile (event types, separators = four zero bytes): at ReadyToBoot the
  EV_EFI_ACTION "Calling EFI Application from Boot Option" into PCR 4, then a separator into
  PCR 0..7 — on a TD one separator per CC measurement register (RTMR0, RTMR1; the COS 113 CCEL in
  fixtures/ shows exactly one in RTMR1). Loading the first image from a GPT disk logs
  EV_EFI_GPT_EVENT into PCR 5 (UEFI_PARTITION_TABLE_HEADER, a UINT64 count, the entries whose type
  GUID is not zero, in array order), then every EFI application its Authenticode digest
  (EV_EFI_BOOT_SERVICES_APPLICATION, PCR 4). ExitBootServices logs two EV_EFI_ACTION strings into
  PCR 5. No string carries a NUL.
- systemd-stub 257 (src/boot/stub.c, src/boot/pe.c, src/fundamental/uki.h): for each section in
  the order .linux .osrel .cmdline .initrd .ucode .splash .dtb .uname .sbat .pcrsig .pcrpkey
  .profile (.pcrsig excluded) that is present — first section of a name wins, VirtualSize 0 is
  absent, a profile's sections replace the base ones — EV_IPL of "name\\0" then EV_IPL of the
  section's VirtualSize bytes, into PCR 11; then LoadImage() of .linux (firmware: PCR 4). It passes
  the command line as LoadOptions: the .cmdline bytes as UCS-2, control characters turned into
  spaces, trailing spaces dropped, NUL-terminated; and one initrd: .ucode, .initrd, then newc cpio
  archives of .pcrsig, .pcrpkey, .profile, .osrel (as /.extra/<file>), each piece padded to 4.
- Linux efistub (drivers/firmware/efi/libstub): EV_EVENT_TAG of the LoadOptions, then of the
  initrd it receives, into PCR 9.
- systemd-pcrphase (systemd 257): "enter-initrd", "leave-initrd", "sysinit", "ready" into PCR 11
  from userspace (no initrd phases when the OS itself is the initrd).
- UEFI 2.10 38.4.1 / edk2 MapPcrToMrIndex: PCR 1,7 -> RTMR0, 2-6 -> RTMR1, 8-15 -> RTMR2.

Usage: boot_events.py UKI [DISK] [--rootfs=verity|initrd|none] [--profile=N] -> JSON on stdout:
{"tpm": {"sha256": [...], "sha384": [...]},                        the vTPM log of PCR 4, 5, 9, 11
 "pcr": {"sha256": {"4": hex, ...}, "sha384": {...}},              those PCRs after the boot phases
 "td": {"rtmr1": [...], "rtmr2": [...], "RTMR1": hex, "RTMR2": hex}} (sha384)
with events as {pcr, type, digest}; the userspace phases have type "systemd-pcrphase".
"""
import hashlib
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authenticode import authenticode  # noqa: E402

STUB_ORDER = [".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat", ".pcrsig", ".pcrpkey", ".profile"]
CPIO_SECTIONS = [(".pcrsig", "tpm2-pcr-signature.json"), (".pcrpkey", "tpm2-pcr-public-key.pem"), (".profile", "profile"), (".osrel", "os-release")]


def pe_sections(data):
    """(name, bytes as loaded: VirtualSize, file bytes then zeros) in section-table order."""
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    n, = struct.unpack_from("<H", data, pe + 6)
    opt_size, = struct.unpack_from("<H", data, pe + 20)
    table = pe + 24 + opt_size
    out = []
    for i in range(n):
        raw_name, vsize, _va, raw_size, ptr = struct.unpack_from("<8sIIII", data, table + 40 * i)
        name = raw_name.split(b"\0", 1)[0].decode("latin1")
        body = data[ptr:ptr + min(vsize, raw_size)]
        out.append((name, body + b"\0" * (vsize - len(body))))
    return out


def stub_sections(data, profile):
    """What systemd-stub uses: base sections (before the first .profile), overridden by the chosen profile's."""
    secs = pe_sections(data)
    starts = [i for i, (name, _) in enumerate(secs) if name == ".profile"]

    def first_of_each(run):
        chosen = {}
        for name, body in run:
            if name in STUB_ORDER and len(body) > 0 and name not in chosen:
                chosen[name] = body
        return chosen

    chosen = first_of_each(secs[:starts[0]] if starts else secs)
    if profile < len(starts):
        end = starts[profile + 1] if profile + 1 < len(starts) else len(secs)
        chosen.update(first_of_each(secs[starts[profile]:end]))
    elif profile > 0:
        raise SystemExit("no such profile")
    return chosen


def newc(ino, mode, name, body):
    """One record of a "newc" cpio archive, name and body padded to 4."""
    name_b = name.encode() + b"\0"
    head = b"070701" + b"".join(b"%08x" % v for v in (ino, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(name_b), 0)) + name_b
    head += b"\0" * (-len(head) % 4)
    return head + body + b"\0" * (-len(body) % 4)


def stub_cpio(filename, body):
    trailer = b"070701" + b"".join(b"%08X" % v for v in (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0)) + b"TRAILER!!!\0" + b"\0\0\0"
    return newc(1, 0o40555, ".extra", b"") + newc(2, 0o100444, ".extra/" + filename, body) + trailer


def padded(b):
    return b + b"\0" * (-len(b) % 4)


def stub_initrd(chosen):
    parts = [padded(chosen[n]) for n in (".ucode", ".initrd") if n in chosen]
    parts += [padded(stub_cpio(f, chosen[n])) for n, f in CPIO_SECTIONS if n in chosen]
    return b"".join(parts)


def stub_ucs2(raw):
    """systemd-stub's UTF-8 -> UCS-2 (src/boot/efi-string.c xstrn8_to_16): up to the first NUL; a bad
    lead byte is skipped, a sequence with a bad continuation byte is dropped whole, and code points
    that UCS-2 cannot hold (surrogates, beyond U+FFFF) are dropped."""
    out, i = [], 0
    while i < len(raw) and raw[i] != 0:
        b = raw[i]
        n = next((k for k, (mask, val) in enumerate(((0x80, 0), (0xE0, 0xC0), (0xF0, 0xE0), (0xF8, 0xF0), (0xFC, 0xF8), (0xFE, 0xFC)), 1) if b & mask == val), 0)
        if n == 0:
            i += 1
            continue
        seq = raw[i:i + n]
        i += n
        if len(seq) < n or any(x & 0xC0 != 0x80 for x in seq[1:]):
            continue
        cp = b & (0x7F >> n if n > 1 else 0x7F)
        for x in seq[1:]:
            cp = (cp << 6) | (x & 0x3F)
        if cp <= 0xD7FF or 0xE000 <= cp <= 0xFFFF:
            out.append(chr(cp))
    return "".join(out)


def load_options(chosen):
    """The .cmdline as the stub passes it (src/boot/util.c mangle_stub_cmdline): leading blanks
    (control characters, space, DEL) skipped, the others turned into spaces, trailing ones cut;
    UCS-2 with a NUL."""
    text = stub_ucs2(chosen.get(".cmdline", b""))
    blank = lambda c: ord(c) <= 0x20 or ord(c) == 0x7F  # noqa: E731
    text = "".join(" " if blank(c) else c for c in text.lstrip("".join(map(chr, list(range(0x21)) + [0x7F]))))
    text = text.rstrip(" ")
    return (text + "\0").encode("utf-16-le")


def gpt_event(disk):
    """UEFI_GPT_DATA: the primary header (92 bytes, edk2's sizeof(EFI_PARTITION_TABLE_HEADER)), count, non-empty entries."""
    hdr = disk[512:512 + 92]
    assert hdr[:8] == b"EFI PART"
    entries_lba, = struct.unpack_from("<Q", hdr, 72)
    n_entries, entry_size = struct.unpack_from("<II", hdr, 80)
    base = entries_lba * 512
    used = [disk[base + i * entry_size: base + (i + 1) * entry_size] for i in range(n_entries)]
    used = [e for e in used if e[:16] != b"\0" * 16]
    return hdr + struct.pack("<Q", len(used)) + b"".join(used)


def timeline(uki, disk, rootfs, profile):
    """(pcr, event type, measured bytes or ("digest", alg -> hex)) in the order they happen."""
    chosen = stub_sections(uki, profile)
    t = [(4, "EV_EFI_ACTION", b"Calling EFI Application from Boot Option")]
    t += [(pcr, "EV_SEPARATOR", b"\0\0\0\0") for pcr in range(8)]  # ReadyToBoot, PCR 0-7
    if disk is not None:
        t.append((5, "EV_EFI_GPT_EVENT", gpt_event(disk)))
    t.append((4, "EV_EFI_BOOT_SERVICES_APPLICATION", ("pe", uki)))
    for name in STUB_ORDER:
        if name == ".pcrsig" or name not in chosen:
            continue
        t.append((11, "EV_IPL", name.encode() + b"\0"))
        t.append((11, "EV_IPL", chosen[name]))
    t.append((4, "EV_EFI_BOOT_SERVICES_APPLICATION", ("pe", chosen[".linux"])))
    t.append((9, "EV_EVENT_TAG", load_options(chosen)))
    t.append((9, "EV_EVENT_TAG", stub_initrd(chosen)))
    t.append((5, "EV_EFI_ACTION", b"Exit Boot Services Invocation"))
    t.append((5, "EV_EFI_ACTION", b"Exit Boot Services Returned with Success"))
    phases = ["sysinit", "ready"] if rootfs == "initrd" else ["enter-initrd", "leave-initrd", "sysinit", "ready"]
    t += [(11, "systemd-pcrphase", p.encode()) for p in phases]
    return t


def digest(what, alg):
    if isinstance(what, tuple):
        return authenticode(what[1], alg)
    return hashlib.new(alg, what).hexdigest()


def extend(events, alg):
    r = b"\0" * hashlib.new(alg).digest_size
    for e in events:
        r = hashlib.new(alg, r + bytes.fromhex(e["digest"])).digest()
    return r.hex()


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    uki = open(args[0], "rb").read()
    disk = open(args[1], "rb").read(64 * 1024) if len(args) > 1 else None
    t = timeline(uki, disk, opts.get("rootfs", "verity"), int(opts.get("profile", "0")))

    def events(alg, keep):
        return [{"pcr": pcr, "type": typ, "digest": digest(what, alg)} for pcr, typ, what in t if keep(pcr, typ)]

    # vTPM: the registers an image determines, all of their events.
    tpm = {alg: events(alg, lambda pcr, typ: pcr in (4, 5, 9, 11)) for alg in ("sha256", "sha384")}
    # TD: firmware events per CC MR; one separator per RTMR; systemd 257 measures no phases without a TPM.
    seen_sep = set()

    def td(pcr, typ):
        mr = 1 if pcr in (1, 7) else 2 if 2 <= pcr <= 6 else 3 if 8 <= pcr <= 15 else 0
        if typ == "systemd-pcrphase" or mr == 0:
            return None
        if typ == "EV_SEPARATOR":
            if mr in seen_sep:
                return None
            seen_sep.add(mr)
        return mr

    rtmr = {1: [], 2: [], 3: []}
    for pcr, typ, what in t:
        mr = td(pcr, typ)
        if mr is not None:
            rtmr[mr].append({"pcr": pcr, "type": typ, "digest": digest(what, "sha384")})
    print(json.dumps({
        "tpm": tpm,
        "pcr": {alg: {str(p): extend([e for e in tpm[alg] if e["pcr"] == p], alg) for p in (4, 5, 9, 11)} for alg in tpm},
        "td": {"rtmr1": rtmr[2], "rtmr2": rtmr[3], "RTMR1": extend(rtmr[2], "sha384"), "RTMR2": extend(rtmr[3], "sha384")},
    }))


main()
