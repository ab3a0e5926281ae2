"""Independent KDFa / KDFe (TPM 2.0 Library Part 1, 11.4.10.2 and 11.4.10.3), written from the
spec with Python's hashlib/hmac only, to cross-check provider/attest/credential.ts.
stdin: JSON list of [kind ("kdfa"|"kdfe"), hash, key-or-Z hex, label, contextU hex, contextV hex, bits];
stdout: JSON list of hex outputs."""
import hashlib, hmac, json, sys

def kdfa(h, key, label, u, v, bits):
    out, i = b"", 1
    while len(out) * 8 < bits:
        out += hmac.new(key, i.to_bytes(4, "big") + label.encode() + b"\0" + u + v + bits.to_bytes(4, "big"), h).digest()
        i += 1
    return out[: (bits + 7) // 8]

def kdfe(h, z, label, u, v, bits):
    out, i = b"", 1
    while len(out) * 8 < bits:
        out += hashlib.new(h, i.to_bytes(4, "big") + z + label.encode() + b"\0" + u + v).digest()
        i += 1
    return out[: (bits + 7) // 8]

out = []
for kind, h, a, label, u, v, bits in json.load(sys.stdin):
    f = kdfa if kind == "kdfa" else kdfe
    out.append(f(h, bytes.fromhex(a), label, bytes.fromhex(u), bytes.fromhex(v), int(bits)).hex())
print(json.dumps(out))
