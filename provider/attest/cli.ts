/**
 * `tdxvm attest <host:port> --expected <measurements.json> [--json] [--ca <pem>] [--collateral <file>]
 *  [--pccs-url <url>] [--tcb-status <s,…>] [--allow-simulator] [--cache-dir DIR]`
 *
 * Challenges the agent at host:port, prints one row per check and per register, and exits 0 only
 * when everything matched (4 on any mismatch, 2 on bad arguments).
 */
import { promises as fs } from "node:fs";
import { z } from "zod";
import { TdxError, formatIssues } from "../errors";
import { Measurements } from "../measure";
import { attest, AttestOptions, Verdict } from "./client";

const USAGE = "usage: tdxvm attest <host:port> --expected <measurements.json> [--json] [--ca <pem>] [--collateral <file>] [--pccs-url <url>] [--tcb-status <s,…>] [--allow-simulator] [--cache-dir DIR]";

const hex = (max: number) => z.string().max(max).regex(/^[0-9a-f]*$/);
const MeasurementsSchema = z.object({
  measurementsVersion: z.literal(1),
  backend: z.enum(["rtmr", "azure", "gcp"]),
  registers: z.record(z.string().regex(/^(MRTD|RTMR[0-3]|PCR(?:[0-9]|1[0-9]|2[0-3]))$/), z.object({
    alg: z.enum(["sha1", "sha256", "sha384", "sha512"]),
    value: hex(128).nullable(),
    status: z.enum(["exact", "platform-defined", "zero"]),
    why: z.string().max(4096).optional(),
    events: z.array(z.object({
      type: z.string().max(256),
      description: z.string().max(4096),
      origin: z.string().max(4096),
      digest: hex(128),
      pcr: z.number().int().min(0).max(23).optional(),
      log: z.enum(["firmware", "userspace"]).optional(),
    })).max(4096),
  })),
  inputs: z.record(z.string(), z.union([z.string().max(4096), z.number(), z.null()])),
});

/** Read a Measurements JSON (as `measurementsToJson` writes it), validated. */
export async function readExpected(file: string): Promise<Measurements> {
  const stat = await fs.stat(file).catch(() => undefined);
  if (!stat?.isFile() || stat.size > 16 * 1024 * 1024) throw new TdxError("E_VALIDATION", `--expected ${file} is not a readable measurements file (at most 16 MiB)`, { hint: "Write it with measurementsToJson(await img.measure({backend})) or take the TdxMeasurement's registers." });
  let raw: unknown;
  try {
    raw = JSON.parse(await fs.readFile(file, "utf8"));
  } catch (e) {
    throw new TdxError("E_VALIDATION", `--expected ${file} is not JSON (${(e as Error).message})`);
  }
  const r = MeasurementsSchema.safeParse(raw);
  if (!r.success) throw new TdxError("E_VALIDATION", `--expected ${file} is not a Measurements document: ${formatIssues(r.error.issues)}`, { hint: "Write it with measurementsToJson(await img.measure({backend}))." });
  return r.data as Measurements;
}

const short = (v: string | null) => (v === null ? "—" : v.length > 32 ? `${v.slice(0, 16)}…${v.slice(-8)}` : v);

/** The verdict as a table: checks, then registers. */
export function formatVerdict(v: Verdict): string {
  const rows: string[] = [];
  rows.push(`${"check".padEnd(24)} ${"result".padEnd(8)} detail`);
  for (const c of v.checks) rows.push(`${c.check.padEnd(24)} ${(c.ok ? "ok" : "FAIL").padEnd(8)} ${c.detail}`);
  if (v.registers.length) {
    rows.push("", `${"register".padEnd(9)} ${"status".padEnd(17)} ${"expected".padEnd(26)} ${"signed".padEnd(26)} ${"replayed".padEnd(26)} verdict`);
    for (const r of v.registers) {
      const verdict = r.ok ? (r.note ? `ok (${r.note})` : "match") : `MISMATCH: ${r.problems.join("; ")}`;
      rows.push(`${r.register.padEnd(9)} ${r.status.padEnd(17)} ${short(r.expected).padEnd(26)} ${short(r.reported).padEnd(26)} ${short(r.replayed).padEnd(26)} ${verdict}`);
    }
  }
  const who = v.channel ? `${v.channel.host}:${v.channel.port} (TLS key SPKI SHA-256 ${v.channel.spkiSha256})` : "the agent";
  rows.push("", `${v.ok ? "OK" : "FAILED"}: ${who}, issuer ${v.issuer}, ${v.checks.filter((c) => c.ok).length}/${v.checks.length} checks, ${v.registers.filter((r) => r.ok).length}/${v.registers.length} registers, ${(v.durationMs / 1000).toFixed(2)} s`);
  return rows.join("\n");
}

export async function attestCommand(argv: string[]): Promise<number> {
  try {
    const [endpoint, ...rest] = argv;
    if (!endpoint || endpoint.startsWith("--")) throw new TdxError("E_VALIDATION", "tdxvm attest needs the agent's host:port", { hint: USAGE });
    const flags: Record<string, string | boolean> = {};
    for (let i = 0; i < rest.length; i++) {
      const a = rest[i]!;
      if (a === "--json" || a === "--allow-simulator") flags[a.slice(2)] = true;
      else if (["--expected", "--ca", "--collateral", "--pccs-url", "--tcb-status", "--cache-dir"].includes(a) && rest[i + 1] !== undefined) flags[a.slice(2)] = rest[++i]!;
      else throw new TdxError("E_VALIDATION", `unknown argument ${JSON.stringify(a)}`, { hint: USAGE });
    }
    if (typeof flags.expected !== "string") throw new TdxError("E_VALIDATION", "tdxvm attest needs --expected <measurements.json>", { hint: USAGE });
    const expected = await readExpected(flags.expected);
    const opts: AttestOptions = {
      allowSimulator: flags["allow-simulator"] === true,
      ...(typeof flags["cache-dir"] === "string" ? { cacheDir: flags["cache-dir"] } : {}),
      ...(typeof flags.ca === "string" ? { localCaPem: await fs.readFile(flags.ca, "utf8") } : {}),
      dcap: {
        ...(typeof flags.collateral === "string" ? { collateralFile: flags.collateral } : {}),
        ...(typeof flags["pccs-url"] === "string" ? { pccsUrl: flags["pccs-url"] } : {}),
        ...(typeof flags["tcb-status"] === "string" ? { acceptedTcbStatuses: flags["tcb-status"].split(",").map((s) => s.trim()).filter(Boolean) } : {}),
      },
    };
    const v = await attest(endpoint, expected, opts);
    console.log(flags.json ? JSON.stringify({ ...v, evidence: undefined }, null, 2) : formatVerdict(v));
    return v.ok ? 0 : 4;
  } catch (e) {
    if (e instanceof TdxError) {
      console.error(String(e));
      return 2;
    }
    throw e;
  }
}
