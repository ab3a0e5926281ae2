/**
 * Measurement parsers and formulas: pure functions over Buffers (no IO).
 * - pe: PE/COFF and the Authenticode digest firmware measures for EFI applications.
 * - uki: UKI sections and systemd-stub's PCR 11 events.
 * - gpt: GPT and the EV_EFI_GPT_EVENT data (UEFI_GPT_DATA).
 * - eventlog: TCG2 crypto-agile event logs, TDX CCEL, replay.
 * - quote: TDX quote v4/v5 header and TD report body.
 * - tdvf: TDVF metadata, MRTD, CFV.
 */
export { DIGEST_SIZES, digest, extend, guidToBytes, guidToString, measurementError } from "./bytes";
export type { HashAlg } from "./bytes";
export * from "./pe";
export * from "./uki";
export * from "./gpt";
export * from "./eventlog";
export * from "./quote";
export * from "./tdvf";
export * from "./ledger";
export { bootEvents, loadOptionsBytes, ukiCmdline } from "./boot";
export { stubCombinedInitrd, stubLiteralCpio } from "./initrd";
export { measureBoot, rtmrEvents } from "./backends";
export type { MeasureOptions, FirmwareInput } from "./backends";
export { verify } from "./verify";
export type { VerifyInput, VerifyResult, RegisterVerdict } from "./verify";
export { measureBake, measureArtifacts, readDiskHead } from "./api";
export type { MeasureCallOptions } from "./api";
