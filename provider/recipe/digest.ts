/**
 * Canonical CBOR and digests. The encoding follows the "core deterministic encoding"
 * rules of RFC 8949 §4.2.1: definite lengths, shortest integer heads, map keys sorted by
 * their encoded bytes (for text keys: shorter first, then bytewise). cbor-x does the byte
 * encoding; `canonicalize` fixes key order and rejects values with no single encoding.
 */
import { createHash } from "node:crypto";
import { Encoder } from "cbor-x";
import { TdxError } from "../errors";

const encoder = new Encoder({ useRecords: false, mapsAsObjects: true, variableMapSize: true, tagUint8Array: false });

function compareKeys(a: string, b: string): number {
  const ba = Buffer.from(a, "utf8");
  const bb = Buffer.from(b, "utf8");
  return ba.length - bb.length || Buffer.compare(ba, bb);
}

export function canonicalize(value: unknown, path = "$"): unknown {
  if (value === null || typeof value === "string" || typeof value === "boolean") return value;
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) {
      throw new TdxError("E_VALIDATION", `${path}: only safe integers can be digested, got ${value}`, { hint: "Use integers (modes, sizes) in recipes." });
    }
    return value;
  }
  if (value instanceof Uint8Array) return Buffer.from(value);
  if (Array.isArray(value)) return value.map((v, i) => canonicalize(v, `${path}[${i}]`));
  if (typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(value as object).sort(compareKeys)) {
      const v = (value as Record<string, unknown>)[k];
      if (v !== undefined) out[k] = canonicalize(v, `${path}.${k}`);
    }
    return out;
  }
  throw new TdxError("E_VALIDATION", `${path}: ${typeof value} cannot be digested`, { hint: "Recipes hold plain data only." });
}

export function canonicalCbor(value: unknown): Buffer {
  return Buffer.from(encoder.encode(canonicalize(value)));
}

export function sha256Hex(data: Buffer | string): string {
  return createHash("sha256").update(data).digest("hex");
}

/** `sha256:<hex>` of the canonical CBOR encoding. */
export function digestOf(value: unknown): string {
  return `sha256:${sha256Hex(canonicalCbor(value))}`;
}
