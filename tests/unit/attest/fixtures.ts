/** Test inputs of the attestation tests (see fixtures/README.md for how each was made). */
import * as fs from "node:fs";
import * as path from "node:path";

export const FIXTURES = path.join(__dirname, "fixtures");
export const fx = (name: string): Buffer => fs.readFileSync(path.join(FIXTURES, name));
export const fxText = (name: string): string => fs.readFileSync(path.join(FIXTURES, name), "utf8");

/** PCR values as tpm2_quote -o -F values writes them (selected PCRs in order) → bank object. */
export function pcrValues(raw: Buffer, pcrs: number[]): Record<string, string> {
  return Object.fromEntries(pcrs.map((p, i) => [String(p), raw.subarray(32 * i, 32 * i + 32).toString("hex")]));
}
