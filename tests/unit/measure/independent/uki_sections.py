"""Extract a UKI's sections with the pefile library (python3-pefile, in the tools tree): each
section's VirtualSize bytes (what systemd-stub sees in memory; pefile pads past SizeOfRawData with
zeros) go to OUTDIR/<name without the dot>, the first of duplicate names winning.
Usage: uki_sections.py UKI OUTDIR -> JSON [{name, virtualSize, sha256}] in table order."""
import hashlib
import json
import os
import sys

import pefile

pe = pefile.PE(sys.argv[1], fast_load=True)
out = sys.argv[2]
os.makedirs(out, exist_ok=True)
listing = []
for s in pe.sections:
    name = s.Name.split(b"\0", 1)[0].decode("latin1")
    data = s.get_data(length=s.Misc_VirtualSize)
    data += b"\0" * (s.Misc_VirtualSize - len(data))
    listing.append({"name": name, "virtualSize": s.Misc_VirtualSize, "sha256": hashlib.sha256(data).hexdigest()})
    path = os.path.join(out, name.lstrip("."))
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(data)
print(json.dumps(listing))
