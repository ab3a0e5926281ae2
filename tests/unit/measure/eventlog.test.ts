/**
 * TCG2 event logs and the TDX CCEL.
 * Vectors: google/go-eventlog tpmeventlog/extract_test.go `ArchLinuxWorkstation` (PCR 0-8 in the
 * SHA-1 and SHA-256 banks of testdata/eventlogs/tpm/arch-linux-workstation.bin), and
 * google/go-tdx-guest testing/testdata/ccel (a COS 113 TDX guest's CCEL, CCEL table and the TD
 * quote taken in the same boot): replaying the CCEL must give the quote's RTMR0-2.
 */
import { createHash } from "node:crypto";
import { TdxError } from "../../../provider/errors";
import {
  EventType,
  eventTypeName,
  parseCcel,
  parseCcelTable,
  parseEventLog,
  parseTdxQuote,
  pcrToCcMrIndex,
  replayCcel,
  replayLog,
} from "../../../provider/measure";
import { fixture, hex } from "./fixtures";

// google/go-eventlog tpmeventlog/extract_test.go, var ArchLinuxWorkstation.
const ARCH_PCRS = {
  sha1: [
    "a0487b0d95387d4a30560edf5f041307bf4a1dcc",
    "56b71c334a5b67d3b7b3343e3241dff5a1ad87bf",
    "01098a68e44e4fbd0af3b9a836b1b79e78c4f6f5",
    "b2a83b0ebf2f8374299a5b2bdfc31ea955ad7236",
    "4c8b6f359b5e5cb9d09e825009a98e1281165b01",
    "0dfa5ca60508ac5214515b20ed3e66289514fcb6",
    "b2a83b0ebf2f8374299a5b2bdfc31ea955ad7236",
    "029c700c2fa2bc83cbf3ce4ee501ad4d984ec5ae",
    "aa99fc93faa0777f42da6e1ae77a0653b5005619",
  ],
  sha256: [
    "758b773d94feabf52ef5a4c00a7ad2c80d8d6e6d9d58756150be9bc973da9087",
    "bfda688a5d320123fddb3fc70b746bc17647e2e7f2f96e130d429542bf4622d5",
    "65dee4a48cde677aa89fa83c5c35e883fda658f743853e3ebad504ca6702f7c5",
    "3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969",
    "925d453d3dfef4ac0c72c957402163d45fa95d05e6d53f047263a3a60b598325",
    "202522f005ef625588bb7c9e21335ba96a63c5086306138885b3bb2c381730ca",
    "3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969",
    "3b4a4db44b7a872524055364e62e897ae678e0d47ab0809f65c3a4ed77f66ab9",
    "47591b43af431963eaeb5238a5c42eda1eb0014c27f7de7ae483066a2d2a2e61",
  ],
};

describe("parseEventLog / replayLog (TPM)", () => {
  const log = () => parseEventLog(fixture("tpm-eventlog-arch-linux.bin"));

  it("parses the Spec ID event and every TCG_PCR_EVENT2", () => {
    const l = log();
    expect(l.specId.algorithms).toEqual([
      { algId: 0x0004, digestSize: 20, alg: "sha1" },
      { algId: 0x000b, digestSize: 32, alg: "sha256" },
    ]);
    expect(l.specId).toMatchObject({ specVersionMajor: 2, specVersionMinor: 0, uintnSize: 2 });
    expect(l.length).toBe(15579);
    expect(l.events).toHaveLength(24);
    expect(l.events.filter((e) => e.typeName === "EV_SEPARATOR").map((e) => e.index)).toEqual([7, 0, 1, 2, 3, 4, 5, 6]);
    const names = new Set(l.events.map((e) => e.typeName));
    for (const n of ["EV_S_CRTM_VERSION", "EV_POST_CODE", "EV_EFI_VARIABLE_DRIVER_CONFIG", "EV_EFI_GPT_EVENT", "EV_EFI_VARIABLE_BOOT", "EV_EFI_BOOT_SERVICES_APPLICATION", "EV_IPL"]) {
      expect(names).toContain(n);
    }
  });

  it("replays to the PCR values published for this log (SHA-1 and SHA-256 banks, PCR 0-8)", () => {
    const banks = replayLog(log().events);
    for (const alg of ["sha1", "sha256"] as const) {
      ARCH_PCRS[alg].forEach((want, pcr) => expect(`${alg} PCR${pcr} ${hex(banks.get(pcr)!.get(alg)!)}`).toBe(`${alg} PCR${pcr} ${want}`));
    }
  });

  it("honours a StartupLocality event for PCR 0", () => {
    const l = log();
    const startup = { ...l.events[0]!, type: EventType.EV_NO_ACTION, index: 0, digests: [], data: Buffer.concat([Buffer.from("StartupLocality\0"), Buffer.from([3])]) };
    const banks = replayLog([startup, l.events[0]!]);
    const d = l.events[0]!.digests.find((x) => x.alg === "sha256")!.digest;
    const init = Buffer.alloc(32);
    init[31] = 3;
    expect(banks.get(0)!.get("sha256")).toEqual(createHash("sha256").update(init).update(d).digest());
  });

  it("names event types", () => {
    expect(eventTypeName(0x80000006)).toBe("EV_EFI_GPT_EVENT");
    expect(eventTypeName(0x0000000d)).toBe("EV_IPL");
    expect(eventTypeName(0x12345678)).toBe("0x12345678");
  });

  it("rejects logs without a Spec ID event, and truncated events, with E_MEASUREMENT", () => {
    const raw = fixture("tpm-eventlog-arch-linux.bin");
    const noSpec = Buffer.from(raw);
    noSpec.write("Spec ID Event02", 32, "latin1");
    expect(() => parseEventLog(noSpec)).toThrow(/Spec ID Event03/);
    expect(() => parseEventLog(raw.subarray(0, raw.length - 7))).toThrow(TdxError);
  });
});

describe("parseCcel / replayCcel (TDX)", () => {
  it("maps MR indexes to registers and replays to the RTMRs in the TD quote of the same boot", () => {
    const ccel = parseCcel(fixture("ccel-cos113.bin"));
    expect(ccel.specId.algorithms).toEqual([{ algId: 0x000c, digestSize: 48, alg: "sha384" }]);
    expect(ccel.length).toBe(18101); // the 0xFF-filled rest of the log area is not parsed
    expect(ccel.events).toHaveLength(43);
    const byRegister = (r: string) => ccel.events.filter((e) => e.register === r).length;
    expect([byRegister("MRTD"), byRegister("RTMR0"), byRegister("RTMR1"), byRegister("RTMR2"), byRegister("RTMR3")]).toEqual([0, 16, 7, 20, 0]);
    // UEFI 2.10 38.4.1: the GPT (PCR 5) and the boot application (PCR 4) land in MR index 2 = RTMR1.
    expect(ccel.events.find((e) => e.typeName === "EV_EFI_GPT_EVENT")!.register).toBe("RTMR1");

    const quote = parseTdxQuote(fixture("tdx-quote-cos113.dat"));
    const rtmr = replayCcel(ccel.events);
    expect(hex(rtmr.RTMR0)).toBe(hex(quote.body.rtmr[0]));
    expect(hex(rtmr.RTMR1)).toBe(hex(quote.body.rtmr[1]));
    expect(hex(rtmr.RTMR2)).toBe(hex(quote.body.rtmr[2]));
    expect(hex(rtmr.RTMR3)).toBe(hex(quote.body.rtmr[3]));
    expect(hex(rtmr.RTMR0)).toBe("3fa2f61f395b7f5feefb4ec2df61297f109ad8abcd6410c1b7df60f21f37b19297fc35e544039c7e1edece752afd17f6");
  });

  it("parses the CCEL ACPI table", () => {
    const t = parseCcelTable(fixture("ccel-table-cos113.bin"));
    expect(t).toMatchObject({ revision: 1, oemId: "INTEL ", ccType: 2, ccSubType: 0, logAreaMinimumLength: 0x40000n, logAreaStartAddress: 0xbedbf000n });
    const bad = Buffer.from(fixture("ccel-table-cos113.bin"));
    bad[20] ^= 1;
    expect(() => parseCcelTable(bad)).toThrow(/checksum/);
  });

  it("maps PCRs to CC MR indexes like edk2 MapPcrToMrIndex", () => {
    expect([0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 15].map(pcrToCcMrIndex)).toEqual([0, 1, 2, 2, 2, 2, 2, 1, 3, 3, 3]);
    expect(() => pcrToCcMrIndex(16)).toThrow(TdxError);
  });
});
