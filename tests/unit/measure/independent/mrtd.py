"""Independent MRTD computation for cross-checking provider/measure/tdvf.ts.
Usage: mrtd.py OVMF.fd -> JSON {"single-pass": hex, "two-pass": hex}.
Structured as region/chunk lists (after google/gce-tcb-verifier tdx/measurement.go), not as the
TypeScript per-page loop; record layout per the TDX module spec (MEM.PAGE.ADD / MR.EXTEND)."""
import hashlib, json, struct, sys, uuid

def find_tdvf(fw):
    # footer GUID sits 48 bytes before the end; u16 total length (incl. footer) just before it
    footer = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
    pos = len(fw) - 48
    assert fw[pos:pos + 16] == footer, "no OVMF table footer"
    total = struct.unpack("<H", fw[pos - 2:pos])[0]
    table = fw[pos - 2 - (total - 18):pos - 2]
    want = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le
    while len(table) >= 18:
        g = table[-16:]
        n = struct.unpack("<H", table[-18:-16])[0]
        if g == want:
            off = struct.unpack("<I", table[-n:-n + 4])[0]
            return len(fw) - off
        table = table[:-n]
    raise SystemExit("no TDX metadata")

def sections(fw):
    d = find_tdvf(fw)
    sig, length, ver, count = struct.unpack("<4sIII", fw[d:d + 16])
    assert sig == b"TDVF" and ver == 1
    return [struct.unpack("<IIQQII", fw[d + 16 + 32 * i:d + 48 + 32 * i]) for i in range(count)]

def mrtd(fw, two_pass):
    h = hashlib.sha384()
    def rec(tag, gpa):
        return tag.ljust(16, b"\0") + struct.pack("<Q", gpa) + b"\0" * 104
    for (off, raw, addr, size, typ, attr) in sections(fw):
        extend = attr & 1
        add = not (attr & 2)
        adds = [addr + p for p in range(0, size, 4096)] if add else []
        chunks = []
        if extend:
            for c in range(0, size, 256):
                chunks.append((addr + c, fw[off + c:off + c + 256]))
        if two_pass:
            for g in adds: h.update(rec(b"MEM.PAGE.ADD", g))
            for g, data in chunks: h.update(rec(b"MR.EXTEND", g)); h.update(data)
        else:
            ci = 0
            for p in range(0, size, 4096):
                if add: h.update(rec(b"MEM.PAGE.ADD", addr + p))
                while ci < len(chunks) and chunks[ci][0] < addr + p + 4096:
                    g, data = chunks[ci]; h.update(rec(b"MR.EXTEND", g)); h.update(data); ci += 1
    return h.hexdigest()

fw = open(sys.argv[1], "rb").read()
print(json.dumps({"single-pass": mrtd(fw, False), "two-pass": mrtd(fw, True)}))
