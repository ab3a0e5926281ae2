"""Independent Authenticode PE image hash (edk2 MeasurePeImageAndExtend steps), for cross-checking
provider/measure/pe.ts.
Usage: authenticode.py FILE ALG -> hex digest; authenticode.py --json FILE... -> {file: {sha256, sha384}}
(or {file: {"error": ...}} for a file this implementation cannot read)."""
import hashlib
import json
import struct
import sys


def authenticode(data, alg):
    h = hashlib.new(alg)
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    assert data[pe:pe + 4] == b"PE\0\0"
    n_sections, = struct.unpack_from("<H", data, pe + 6)
    opt_size, = struct.unpack_from("<H", data, pe + 20)
    opt = pe + 24
    magic, = struct.unpack_from("<H", data, opt)
    dirs = opt + (96 if magic == 0x10B else 112)
    n_dirs, = struct.unpack_from("<I", data, dirs - 4)
    headers_end, = struct.unpack_from("<I", data, opt + 60)
    checksum = opt + 64

    # Header bytes minus CheckSum and (if present) the certificate-table directory entry.
    skip = [(checksum, checksum + 4)]
    cert_size = 0
    if n_dirs > 4:
        skip.append((dirs + 32, dirs + 40))
        cert_size, = struct.unpack_from("<I", data, dirs + 36)
    pos = 0
    for a, b in skip:
        h.update(data[pos:a])
        pos = b
    h.update(data[pos:headers_end])

    table = opt + opt_size
    secs = []
    for i in range(n_sections):
        size, ptr = struct.unpack_from("<II", data, table + 40 * i + 16)
        secs.append((ptr, i, size))
    hashed = headers_end
    for ptr, _, size in sorted(secs):
        if size:
            h.update(data[ptr:ptr + size])
            hashed += size
    if len(data) > hashed + cert_size:
        h.update(data[hashed:len(data) - cert_size])
    return h.hexdigest()


if __name__ == "__main__":
    if sys.argv[1] == "--json":
        out = {}
        for f in sys.argv[2:]:
            data = open(f, "rb").read()
            try:
                out[f] = {alg: authenticode(data, alg) for alg in ("sha256", "sha384")}
            except (AssertionError, struct.error, ValueError) as e:
                out[f] = {"error": repr(e)}
        print(json.dumps(out))
    else:
        print(authenticode(open(sys.argv[1], "rb").read(), sys.argv[2]))
