/**
 * `tdxvm attest <host:port> --expected <measurements.json> [--json] [--ca <pem>] [--collateral <file>]
 *  [--pccs-url <url>] [--tcb-status <s,…>] [--waive REG:reason]… [--allow-simulator]` (global `--cache-dir`)
 *
 * Challenges the agent at host:port, prints one row per check and per register, and exits 0 only
 * when everything matched (3 on any mismatch, 2 on bad arguments): see provider/cli.ts.
 */
import { Measurements } from "../measure";
import { readMeasurements } from "../measure/formats";
import type { Verdict } from "./client";

/** Read the expected Measurements (the tdxvm measurements file `tdxvm measure --out` writes), validated. */
export async function readExpected(file: string): Promise<Measurements> {
  return readMeasurements(file, "--expected");
}

const short = (v: string | null) => (v === null ? "—" : v.length > 32 ? `${v.slice(0, 16)}…${v.slice(-8)}` : v);

/** The verdict as a table: checks, then registers. */
export function formatVerdict(v: Verdict): string {
  const rows: string[] = [];
  rows.push(`${"check".padEnd(24)} ${"result".padEnd(8)} detail`);
  for (const c of v.checks) rows.push(`${c.check.padEnd(24)} ${(c.ok ? "ok" : "FAIL").padEnd(8)} ${c.detail}`);
  if (v.registers.length) {
    rows.push("", `${"register".padEnd(9)} ${"pinned".padEnd(10)} ${"expected".padEnd(26)} ${"signed".padEnd(26)} ${"replayed".padEnd(26)} verdict`);
    for (const r of v.registers) {
      const verdict = !r.ok ? `${r.pin === "unpinned" ? "NOT PINNED" : "MISMATCH"}: ${r.problems.join("; ")}`
        : r.pin === "waived" ? r.note ?? `WAIVED (${r.waiver})` : r.note ? `ok (${r.note})` : "match";
      rows.push(`${r.register.padEnd(9)} ${r.pin.padEnd(10)} ${short(r.expected).padEnd(26)} ${short(r.reported).padEnd(26)} ${short(r.replayed).padEnd(26)} ${verdict}`);
    }
  }
  const waived = v.registers.filter((r) => r.pin === "waived");
  const who = v.channel ? `${v.channel.host}:${v.channel.port} (TLS key SPKI SHA-256 ${v.channel.spkiSha256})` : "the agent";
  rows.push("", `${v.ok ? "OK" : "FAILED"}: ${who}, issuer ${v.issuer}${v.matched ? `, host shape ${v.matched}` : ""}, ${v.checks.filter((c) => c.ok).length}/${v.checks.length} checks, ${v.registers.filter((r) => r.ok).length}/${v.registers.length} registers${waived.length ? ` (WAIVED: ${waived.map((r) => r.register).join(", ")})` : ""}, ${(v.durationMs / 1000).toFixed(2)} s`);
  return rows.join("\n");
}
