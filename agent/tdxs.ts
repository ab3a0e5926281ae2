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

import { tdxsReportData, Issuer, ATTEST_LABEL } from "./protocol";
import type { IssuerImpl } from "./issuers";

const MAX_LINE = 128 * 1024;
/** Requests one client may have waiting (then its socket is paused: backpressure), and quotes in progress for all clients together. */
export const TDXS_LIMITS = { queuedPerClient: 8, concurrent: 4 };

/**
 * Domain separation (docs/design.md §7): the attestation binding the agent has the platform sign
 * for tdxvm attest is a hash over ATTEST_LABEL ‖ 0x00 ‖ nonce ‖ SHA-256(SPKI). tdxs signs
 * SHA-256(userData ‖ nonce) with the same key, so userData ‖ nonce = that preimage would give the
 * very same signed bytes — a relay's way to attest with its own TLS key. No tdxs request may start
 * with that prefix; SHA-256's collision resistance does the rest.
 */
export const ATTEST_PREFIX = Buffer.concat([Buffer.from(ATTEST_LABEL, "utf8"), Buffer.from([0])]);
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
    const v: unknown = JSON.parse(line);
    // `null`, a number or an array is JSON but no request.
    if (!v || typeof v !== "object" || Array.isArray(v)) return { data: null, error: "request must be a JSON object" };
    req = v as { method?: unknown; data?: unknown };
  } catch {
    return { data: null, error: "request is not JSON" };
  }
  const data = (req.data && typeof req.data === "object" && !Array.isArray(req.data) ? req.data : {}) as Record<string, unknown>;
  try {
    if (req.method === "issue") {
      const userData = hexField(data, "userData", false);
      const nonce = hexField(data, "nonce", false);
      if (Buffer.concat([userData, nonce]).subarray(0, ATTEST_PREFIX.length).equals(ATTEST_PREFIX)) {
        return { data: null, error: `userData ‖ nonce must not begin with "${ATTEST_LABEL}\\0": that is the agent's attestation binding` };
      }
      const rd = tdxsReportData(userData, nonce);
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

/**
 * Serve the protocol on a listening socket (from systemd socket activation or our own). Bounded:
 * a client's requests are answered in order, at most TDXS_LIMITS.queuedPerClient waiting — past
 * that its socket is paused (the kernel's buffer, then the client, wait) — and at most
 * TDXS_LIMITS.concurrent quotes run at once for all clients; a client that leaves drops its
 * waiting requests. Nothing a client sends can end the process.
 */
export function tdxsServer(issuer: IssuerImpl, log: (m: string) => void): net.Server {
  let running = 0;
  const waiting: Array<() => void> = [];
  const slot = async <T>(f: () => Promise<T>): Promise<T> => {
    if (running >= TDXS_LIMITS.concurrent) await new Promise<void>((r) => waiting.push(r));
    running++;
    try {
      return await f();
    } finally {
      running--;
      waiting.shift()?.();
    }
  };
  return net.createServer((sock) => {
    let buf = "";
    const queue: string[] = [];
    let draining = false;
    // Move complete lines from the buffer to the queue while it has room; pause reading while it has none.
    const fill = () => {
      let nl: number;
      while (queue.length < TDXS_LIMITS.queuedPerClient && (nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.trim()) queue.push(line);
      }
      const full = queue.length >= TDXS_LIMITS.queuedPerClient;
      if (!full && buf.length > MAX_LINE) {
        sock.end(JSON.stringify({ data: null, error: `request line longer than ${MAX_LINE} bytes` }) + "\n");
        queue.length = 0;
        buf = "";
        return;
      }
      if (full) sock.pause();
      else if (sock.isPaused()) sock.resume();
    };
    const drain = async () => {
      if (draining) return;
      draining = true;
      while (queue.length && !sock.destroyed) {
        const line = queue.shift()!;
        fill();
        const res = await slot(() => handleTdxs(issuer, line)).catch((e: Error) => ({ data: null, error: `internal error: ${e.message}` }));
        if (res.error) log(`tdxs: ${res.error.slice(0, 200)}`);
        if (!sock.destroyed) sock.write(JSON.stringify(res) + "\n");
      }
      draining = false;
    };
    sock.setTimeout(60_000, () => sock.destroy());
    sock.on("data", (chunk) => {
      buf += chunk.toString("utf8");
      fill();
      void drain();
    });
    sock.on("close", () => {
      queue.length = 0;
      buf = "";
    });
    sock.on("error", () => undefined);
  });
}

