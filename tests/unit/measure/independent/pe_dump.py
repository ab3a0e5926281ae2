"""A PE's headers and section table as the pefile library (python3-pefile, in the tools tree) reads
them, for cross-checking provider/measure/pe.ts against a parser we did not write.
Usage: pe_dump.py FILE -> JSON on stdout."""
import json
import sys

import pefile

pe = pefile.PE(sys.argv[1], fast_load=True)
opt = pe.OPTIONAL_HEADER
print(json.dumps({
    "format": "PE32+" if opt.Magic == 0x20B else "PE32",
    "machine": pe.FILE_HEADER.Machine,
    "sizeOfHeaders": opt.SizeOfHeaders,
    "sizeOfImage": opt.SizeOfImage,
    "subsystem": opt.Subsystem,
    "checkSum": opt.CheckSum,
    "numberOfRvaAndSizes": opt.NumberOfRvaAndSizes,
    "dataDirectories": [{"virtualAddress": d.VirtualAddress, "size": d.Size} for d in opt.DATA_DIRECTORY],
    "sections": [{
        "name": s.Name.split(b"\0", 1)[0].decode("latin1"),
        "virtualSize": s.Misc_VirtualSize,
        "virtualAddress": s.VirtualAddress,
        "sizeOfRawData": s.SizeOfRawData,
        "pointerToRawData": s.PointerToRawData,
        "characteristics": s.Characteristics,
    } for s in pe.sections],
}))
