/**
 * A tdxs-compatible quote socket for applications in the VM: a Unix stream socket (systemd socket
 * unit `tdxs.socket`, /var/tdxs.sock, mode 0660, group tdx) speaking newline-delimited JSON:
 *   {"method":"issue","data":{"userData":"<hex>","nonce":"<hex>"}}  → {"data":{"document":"<hex>"},"error":null}
 *   {"method":"metadata"}                                          → {"data":{issuer, reportData, …},"error":null}
 *   {"method":"validate","data":{"document":"<hex>","userData":"<hex>","nonce":"<hex>"}} → {"data":{"valid":…},"error":null}
 * errors as {"data":null,"error":"…"}. Report data = SHA-256(userData ‖ nonce), zero-padded to 64
 * bytes (the TPM issuers put its first 32 bytes into the quote's qualifying data). The protocol is
 * the one tdxs users know (flashbots tdxs); this is our own implementation of it.
 */
import * as net from "node:net";

import { tdxsReportData, Issuer } from "./protocol";
import type { IssuerImpl } from "./issuers";

const MAX_LINE = 128 * 1024;
/** Hex characters per field: user data and nonces are small; a document (a TD quote with its certificate chain) is not. */
const MAX_FIELD: Record<string, number> = { userData: 4096, nonce: 4096, document: 96 * 1024 };
/** TDX quote v4/v5: REPORTDATA sits at the end of the TD report body (header 48 bytes + body offset 520; v5 adds a 6-byte body descriptor). */
const reportDataInQuote = (q: Buffer): Buffer | undefined => {
  if (q.length < 48) return undefined;
  const v = q.readUInt16LE(0);
  const at = v === 5 ? 48 + 6 + 520 : v === 4 ? 48 + 520 : -1;
  return at > 0 && q.length >= at + 64 ? q.subarray(at, at + 64) : undefined;
};

function hexField(data: Record<string, unknown>, name: string, required: boolean): Buffer {
  const v = data[name];
  if (v === undefined && !required) return Buffer.alloc(0);
  const max = MAX_FIELD[name] ?? 4096;
  if (typeof v !== "string" || v.length > max || !/^([0-9a-fA-F]{2})*$/.test(v)) throw new Error(`data.${name} must be a hex string of at most ${max / 2} bytes`);
  return Buffer.from(v, "hex");
}

export async function handleTdxs(issuer: IssuerImpl, line: string): Promise<{ data: unknown; error: string | null }> {
  let req: { method?: unknown; data?: unknown };
  try {
    req = JSON.parse(line);
  } catch {
    return { data: null, error: "request is not JSON" };
  }
  const data = (req.data && typeof req.data === "object" ? req.data : {}) as Record<string, unknown>;
  try {
    if (req.method === "issue") {
      const rd = tdxsReportData(hexField(data, "userData", false), hexField(data, "nonce", false));
      return { data: { document: (await issuer.document(rd)).toString("hex") }, error: null };
    }
    if (req.method === "metadata") {
      return { data: { issuer: issuer.name as Issuer, reportData: "sha256(userData || nonce), zero-padded to 64 bytes", simulated: issuer.name === "simulator" }, error: null };
    }
    if (req.method === "validate") {
      const doc = hexField(data, "document", true);
      const want = tdxsReportData(hexField(data, "userData", false), hexField(data, "nonce", false));
      let bound: boolean;
      if (issuer.name === "tdx") bound = reportDataInQuote(doc)?.equals(want) ?? false;
      else {
        const j = JSON.parse(doc.toString("utf8")) as { quote?: string; reportData?: string };
        // TPMS_ATTEST: magic, type, qualifiedSigner (TPM2B_NAME), extraData (TPM2B_DATA) — Part 2 §10.12.12.
        if (j.quote) {
          const q = Buffer.from(j.quote, "base64");
          const signer = q.readUInt16BE(6);
          const extra = q.subarray(10 + signer, 10 + signer + q.readUInt16BE(8 + signer));
          bound = extra.equals(want.subarray(0, 32));
        } else bound = j.reportData === want.toString("hex");
      }
      return { data: { valid: bound, checked: "report data binding only: verify the platform signature and measurements on the verifier side (tdxvm attest)" }, error: null };
    }
    return { data: null, error: `unknown method ${JSON.stringify(String(req.method).slice(0, 32))} (issue, metadata, validate)` };
  } catch (e) {
    return { data: null, error: (e as Error).message };
  }
}

/** Serve the protocol on a listening socket (from systemd socket activation or our own). */
export function tdxsServer(issuer: IssuerImpl, log: (m: string) => void): net.Server {
  return net.createServer((sock) => {
    let buf = "";
    let busy = Promise.resolve();
    sock.setTimeout(60_000, () => sock.destroy());
    sock.on("data", (chunk) => {
      buf += chunk.toString("utf8");
      if (buf.length > MAX_LINE) {
        sock.end(JSON.stringify({ data: null, error: `request line longer than ${MAX_LINE} bytes` }) + "\n");
        return;
      }
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line.trim()) continue;
        busy = busy.then(async () => {
          const res = await handleTdxs(issuer, line);
          if (res.error) log(`tdxs: ${res.error}`);
          if (!sock.destroyed) sock.write(JSON.stringify(res) + "\n");
        });
      }
    });
    sock.on("error", () => undefined);
  });
}

