/**
 * Measurement files: tdxvm's own (a Measurements object with its ledger: what `measure --out`,
 * `--check`, `diff` and `verify --expected` read), and the files other verifiers read.
 *
 * - flashbots: the measurements file of flashbots' attested-tls / attested-tls-proxy (and
 *   cvm-reverse-proxy's format it follows; crates/attestation/README.md "Measurements File",
 *   src/measurements.rs): a JSON array of `{measurement_id, attestation_type, measurements}`.
 *   DCAP types (`dcap-tdx`, `qemu-tdx`, `gcp-tdx`) key registers "0".."4" = MRTD, RTMR0–3
 *   (48-byte hex); `azure-tdx` keys vTPM PCR indices ("4", "9", "11", …; 32-byte hex). Each
 *   register holds `expected_any: [hex]` (the documented, recommended field).
 * - constellation: Constellation's measurements map (internal/attestation/measurements:
 *   `M map[uint32]Measurement`, JSON `{"<index>": {"expected": "<hex>", "warnOnly": <bool>}}`, all
 *   values of one length: 32 bytes for vTPM PCRs, 48 for TDX, where index 0 = MRTD and 1–4 =
 *   RTMR0–3, TDXIndexClusterID = RTMR index + 1).
 *
 * Only registers with a value can be written: attested-tls checks exactly the registers its file
 * names (check_measurement: "all measurements in our policy must be given and must match"; a
 * register it does not name is accepted as is), and Constellation compares exactly the indices in
 * its map and needs a 32/48-byte `expected` for each — a placeholder marked warnOnly would only
 * print a warning at every attestation. A register left out is therefore accepted with any value
 * by those verifiers, so an export is refused (E_POLICY) while any register the platform signs is
 * neither pinned (exact, zero, endorsed, captured) nor waived by name: a GCP measurement without
 * Google's endorsement would otherwise export a policy that accepts any firmware. A waived register
 * is left out — the waiver is the user's, said out loud in tdxvm's file and tables.
 */
import { promises as fs } from "node:fs";
import { z } from "zod";
import { TdxError, formatIssues } from "../errors";
import { Backend, combinations, Measurements, measurementsToJson } from "./ledger";

export const FORMATS = ["tdxvm", "flashbots", "constellation"] as const;
export type Format = (typeof FORMATS)[number];

const LedgerEventSchema = z.object({
  type: z.string().max(200), description: z.string().max(2000), origin: z.string().max(2000), digest: z.string().regex(/^([0-9a-f]{2}){0,64}$/),
  pcr: z.number().int().min(0).max(31).optional(), log: z.enum(["firmware", "userspace"]).optional(),
});

/** tdxvm's measurements file (measurementsToJson), as read from disk: untrusted until parsed. */
const RegistersSchema = z.record(z.string().regex(/^(MRTD|RTMR[0-3]|PCR([0-9]|1[0-9]|2[0-3]))$/), z.object({
  alg: z.enum(["sha256", "sha384"]),
  value: z.string().regex(/^([0-9a-f]{64}|[0-9a-f]{96})$/).nullable(),
  status: z.enum(["exact", "platform-defined", "zero"]),
  why: z.string().max(2000).optional(),
  basis: z.enum(["predicted", "endorsed", "captured"]).optional(),
  waived: z.string().min(1).max(300).refine((w) => ![...w].some((ch) => ch.charCodeAt(0) < 0x20 || ch.charCodeAt(0) === 0x7f), "one line").optional(),
  events: z.array(LedgerEventSchema).max(10_000),
}).refine((r) => r.status === "platform-defined" || r.value !== null, "an exact or zero register needs its value"));

export const MeasurementsSchema = z.object({
  measurementsVersion: z.literal(1),
  backend: z.enum(["rtmr", "azure", "gcp"]),
  registers: RegistersSchema,
  alternatives: z.array(z.object({ label: z.string().regex(/^[A-Za-z0-9._:@+-]{1,100}$/), registers: RegistersSchema.refine((r) => Object.keys(r).every((n) => n === "MRTD" || n === "RTMR0"), "an envelope's host shapes vary only MRTD and RTMR0") }).strict()).max(16).optional(),
  inputs: z.record(z.string(), z.union([z.string().max(4096), z.number(), z.null()])),
  packages: z.object({
    image: z.array(z.string().regex(/^[a-z0-9][a-z0-9+.-]*(:[a-z0-9]+)?=[A-Za-z0-9.+~:-]+$/)).max(20_000),
    initrd: z.array(z.string().regex(/^[a-z0-9][a-z0-9+.-]*(:[a-z0-9]+)?=[A-Za-z0-9.+~:-]+$/)).max(20_000),
  }).strict().optional(),
});

export function parseMeasurements(text: string, where: string): Measurements {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new TdxError("E_VALIDATION", `${where} is not JSON (${(e as Error).message})`, { hint: "Pass a file written by `tdxvm measure --out F` (the tdxvm format)." });
  }
  const r = MeasurementsSchema.safeParse(raw);
  if (!r.success) throw new TdxError("E_VALIDATION", `${where} is not a tdxvm measurements file: ${formatIssues(r.error.issues)}`, { hint: "Pass a file written by `tdxvm measure --out F` (--format tdxvm, the default); flashbots/constellation files carry no ledger." });
  return r.data as Measurements;
}

/** A tdxvm measurements file from disk (at most 16 MiB); `label` names the option it came from. */
export async function readMeasurements(file: string, label?: string): Promise<Measurements> {
  const where = label ? `${label} ${file}` : file;
  const st = await fs.stat(file).catch(() => undefined);
  if (!st?.isFile() || st.size > 16 * 1024 * 1024) throw new TdxError("E_VALIDATION", `${where} is not a readable measurements file (at most 16 MiB)`, { hint: "Pass the path of a measurements file written by `tdxvm measure --out`." });
  return parseMeasurements(await fs.readFile(file, "utf8"), where);
}

// flashbots attested-tls: attestation types and register keys (crates/attestation/src/measurements.rs).
const DCAP_TYPES = ["dcap-tdx", "qemu-tdx", "gcp-tdx"] as const;
const FlashbotsRegister = z.union([
  z.object({ expected_any: z.array(z.string()).min(1) }).strict(),
  z.object({ expected: z.string() }).strict(),
]);
/** The shape attested-tls accepts: our writer's output and the published examples must both pass it. */
export const FlashbotsFileSchema = z.array(z.object({
  measurement_id: z.string().optional(),
  attestation_type: z.enum(["none", "azure-tdx", ...DCAP_TYPES]),
  measurements: z.record(z.string(), FlashbotsRegister).optional(),
}).strict().superRefine((e, ctx) => {
  for (const [k, v] of Object.entries(e.measurements ?? {})) {
    const values = "expected_any" in v ? v.expected_any : [v.expected];
    const azure = e.attestation_type === "azure-tdx";
    // DCAP keys: "0".."4" or mrtd/rtmr0..3; Azure: a PCR index 0..23, optionally "pcr"-prefixed.
    const keyOk = azure ? /^(pcr)?([0-9]|1[0-9]|2[0-3])$/i.test(k) : /^([0-4]|mrtd|rtmr[0-3])$/i.test(k);
    if (!keyOk) ctx.addIssue({ code: "custom", path: ["measurements", k], message: `not a register key for ${e.attestation_type}` });
    for (const x of values) if (!(azure ? /^[0-9a-fA-F]{64}$/ : /^[0-9a-fA-F]{96}$/).test(x)) ctx.addIssue({ code: "custom", path: ["measurements", k], message: `not a ${azure ? 32 : 48}-byte hex value` });
  }
}));

const FLASHBOTS_TYPE: Record<Backend, string> = { rtmr: "qemu-tdx", gcp: "gcp-tdx", azure: "azure-tdx" };
const TDX_INDEX: Record<string, number> = { MRTD: 0, RTMR0: 1, RTMR1: 2, RTMR2: 3, RTMR3: 4 };

/** Register → the index both formats use: MRTD/RTMRn → 0..4 (TD), PCRn → n (vTPM). */
function indexOf(register: string): number {
  if (register in TDX_INDEX) return TDX_INDEX[register];
  const m = /^PCR(\d+)$/.exec(register);
  if (!m) throw new TdxError("E_MEASUREMENT", `register ${register} has no index in interop formats`);
  return Number(m[1]);
}

/** The registers a TD quote signs: each must be in a TD measurement an export is made of. */
const TD_SIGNED = ["MRTD", "RTMR0", "RTMR1", "RTMR2", "RTMR3"];

/** Refuse to export a measurement with a register that is neither pinned nor waived (see the header). */
export function assertExportable(m: Measurements): void {
  // Left out of an export: anything without a value or labelled platform-defined — only a waiver makes that the user's choice.
  const open = Object.entries(m.registers).filter(([, r]) => (r.value === null || r.status === "platform-defined") && !r.waived).map(([n]) => n);
  if (m.backend !== "azure") open.push(...TD_SIGNED.filter((n) => !(n in m.registers)));
  if (!open.length) return;
  throw new TdxError("E_POLICY", `cannot export ${open.join(", ")}: not pinned and not waived — a verifier reading the export checks only the registers it lists, so it would accept any value there`, {
    hint: "Pin it (MRTD: --endorsement or --firmware; RTMR0: --captured-ccel or --td-shape) or waive it by name (--waive RTMR0:\"reason\", TdxMeasurement waive): a waived register is left out of the export and its verifier does not check it.",
    details: { registers: open },
  });
}

/** Registers with a value (exact or zero), by index. */
function valued(m: Measurements): Array<[number, string]> {
  assertExportable(m);
  return Object.entries(m.registers)
    .filter(([, r]) => r.status !== "platform-defined" && r.value !== null)
    .map(([name, r]): [number, string] => [indexOf(name), r.value!])
    .sort((a, b) => a[0] - b[0]);
}

export function measurementId(m: Measurements): string {
  const uki = typeof m.inputs.ukiSha256 === "string" ? m.inputs.ukiSha256.slice(0, 16) : "unknown";
  return `tdxvm-${m.inputs.profile ?? "default"}-${m.backend}-uki-${uki}`;
}

/**
 * attested-tls's measurements file: a list of entries, a quote accepted when it matches any one
 * entry. An envelope (or an allow-list) becomes one entry per accepted combination, never one
 * entry whose `expected_any` lists every value per register — that would also accept
 * combinations nobody listed (one shape's RTMR0 with another's MRTD).
 */
export function toFlashbots(m: Measurements, id = measurementId(m)): unknown {
  return toFlashbotsEntries(combinations(m).map((c, i) => ({ id: i === 0 && !m.alternatives?.length ? id : `${id}@${c.label}`, m: c.m })));
}

export function toFlashbotsEntries(list: ReadonlyArray<{ id: string; m: Measurements }>): unknown {
  const out = list.map(({ id, m }) => ({
    measurement_id: id,
    attestation_type: FLASHBOTS_TYPE[m.backend],
    measurements: Object.fromEntries(valued(m).map(([i, v]) => [String(i), { expected_any: [v] }])),
  }));
  FlashbotsFileSchema.parse(out);
  return out;
}

/** Constellation's measurements map (internal/attestation/measurements, Measurement MarshalJSON). */
export const ConstellationSchema = z.record(z.string().regex(/^\d+$/), z.object({
  expected: z.string().regex(/^([0-9a-f]{64}|[0-9a-f]{96})$/),
  warnOnly: z.boolean(),
}).strict()).superRefine((m, ctx) => {
  // Constellation's UnmarshalJSON: all measurements of one length.
  if (new Set(Object.values(m).map((x) => x.expected.length)).size > 1) ctx.addIssue({ code: "custom", path: [], message: "measurements of different lengths" });
});

/**
 * Constellation's map holds one value per index. A measurement with an envelope (alternatives)
 * becomes one map per combination, `{"<label>": {map}, …}`: Constellation verifies against one map
 * per attestation config, so each host shape's map is there to be picked.
 */
export function toConstellation(m: Measurements): unknown {
  const map = (c: Measurements) => {
    const out = Object.fromEntries(valued(c).map(([i, v]) => [String(i), { expected: v, warnOnly: false }]));
    ConstellationSchema.parse(out);
    return out;
  };
  if (!m.alternatives?.length) return map(m);
  return Object.fromEntries(combinations(m).map(({ label, m: c }) => [label, map(c)]));
}

/** The file text of `m` in `format` (tdxvm: sorted keys, so committed files diff cleanly). */
export function formatMeasurements(m: Measurements, format: Format): string {
  if (format === "flashbots") return JSON.stringify(toFlashbots(m), null, 2) + "\n";
  if (format === "constellation") return JSON.stringify(toConstellation(m), null, 2) + "\n";
  return measurementsToJson(m);
}

/**
 * Reference values for Confidential Containers' Trustee: a message for its Reference Value
 * Provider Service (`rvps-tool register --path F`, or KBS `POST /kbs/v0/reference-value`), type
 * "sample", whose base64 payload maps each name to the list of accepted values (lowercase hex).
 * Names as Trustee's default policy reads them (attestation-service ear_default_policy_cpu.rego):
 * `mr_td`, `rtmr_<n>` for a TD; `tdx_pcr<nn>` for Azure's vTPM (the policy reads `tdx_pcr11`).
 * Every measurement in `list` contributes its values; waived registers are left out, as in the
 * other exports, and an unpinned, unwaived one refuses the export. A new registration replaces a name's list:
 * send the whole list at every step of a rollout (which is what this is).
 */
export function toTrusteeReferenceValues(list: readonly Measurements[]): { version: "0.1.0"; type: "sample"; payload: string } {
  const values: Record<string, string[]> = {};
  for (const m of list) {
    assertExportable(m);
    for (const [name, r] of Object.entries(m.registers)) {
      if (r.status === "platform-defined" || r.value === null) continue;
      const key = m.backend === "azure" ? `tdx_pcr${name.slice(3).padStart(2, "0")}` : name === "MRTD" ? "mr_td" : `rtmr_${name.slice(4)}`;
      const l = (values[key] ??= []);
      if (!l.includes(r.value)) l.push(r.value);
    }
  }
  return { version: "0.1.0", type: "sample", payload: Buffer.from(JSON.stringify(values), "utf8").toString("base64") };
}
