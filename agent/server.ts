/**
 * The agent's HTTPS endpoint (one TLS key per start, see ./tls.ts):
 *   GET  /v1/health   {status, issuer, secrets: "none" | "pending" | "complete"}
 *   GET  /v1/keys     the issuer's long-lived keys (TPM EK/AK, certificates) for the verifier's challenge
 *   POST /v1/attest   {nonce: hex, credential?: {idObject, encSecret}} → Evidence bound to nonce + this TLS key
 *   POST /v1/secrets  {NAME: value, …} → 200 once; 400 (bad payload, names only), 409 (already done), 413 (too big)
 * Bounded: request bodies (413), concurrent requests (503), time per request; only method, path and
 * status are logged — never a body.
 */
import * as https from "node:https";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { IssuerImpl } from "./issuers";
import type { SecretsReceiver } from "./secrets";
import type { TlsIdentity } from "./tls";

export const LIMITS = { attestBody: 16 * 1024, secretsBody: 1024 * 1024, concurrent: 8, requestMs: 120_000 };

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers["content-length"] ?? 0);
    if (declared > max) return reject(new HttpError(413, `body larger than ${max} bytes`));
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > max) {
        reject(new HttpError(413, `body larger than ${max} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function json(body: Buffer): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(body.toString("utf8"));
  } catch {
    throw new HttpError(400, "the body is not JSON");
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) throw new HttpError(400, "the body must be a JSON object");
  return v as Record<string, unknown>;
}

function hex(v: unknown, what: string, min: number, max: number): Buffer {
  if (typeof v !== "string" || !/^([0-9a-fA-F]{2})+$/.test(v) || v.length / 2 < min || v.length / 2 > max) throw new HttpError(400, `${what} must be ${min}–${max} bytes of hex`);
  return Buffer.from(v, "hex");
}

function b64(v: unknown, what: string): Buffer {
  if (typeof v !== "string" || v.length > 8192 || !/^[A-Za-z0-9+/]*={0,2}$/.test(v)) throw new HttpError(400, `${what} must be base64`);
  return Buffer.from(v, "base64");
}

export interface ServerDeps { issuer: IssuerImpl; tls: TlsIdentity; secrets?: SecretsReceiver; log: (m: string) => void }

export function agentServer(d: ServerDeps): https.Server {
  let inFlight = 0;
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const send = (status: number, body: unknown) => {
      const text = JSON.stringify(body);
      res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), "cache-control": "no-store" });
      res.end(text);
    };
    const route = `${req.method} ${(req.url ?? "").split("?")[0]}`;
    try {
      if (inFlight >= LIMITS.concurrent) throw new HttpError(503, "too many requests at once; retry");
      inFlight++;
      try {
        if (route === "GET /v1/health") {
          return send(200, { status: "ok", issuer: d.issuer.name, secrets: !d.secrets ? "none" : d.secrets.complete ? "complete" : "pending" });
        }
        if (route === "GET /v1/keys") return send(200, await d.issuer.keys());
        if (route === "POST /v1/attest") {
          const body = json(await readBody(req, LIMITS.attestBody));
          const nonce = hex(body.nonce, "nonce", 16, 64);
          const c = body.credential as Record<string, unknown> | undefined;
          const credential = c === undefined ? undefined : { idObject: b64(c?.idObject, "credential.idObject"), encSecret: b64(c?.encSecret, "credential.encSecret") };
          return send(200, await d.issuer.evidence(nonce, d.tls.spkiSha256, credential));
        }
        if (route === "POST /v1/secrets") {
          if (!d.secrets) throw new HttpError(404, "this image declares no secrets receiver (Init module)");
          const out = await d.secrets.receive(json(await readBody(req, LIMITS.secretsBody)));
          return send(out.status, out.body);
        }
        throw new HttpError(404, `no route ${route.slice(0, 80)}`);
      } finally {
        inFlight--;
      }
    } catch (e) {
      const status = e instanceof HttpError ? e.status : 500;
      send(status, { error: (e as Error).message });
    } finally {
      d.log(`${route.slice(0, 80)} → ${res.statusCode}`);
    }
  };
  const server = https.createServer({ key: d.tls.keyPem, cert: d.tls.certPem, minVersion: "TLSv1.2" }, (req, res) => void handle(req, res));
  server.requestTimeout = LIMITS.requestMs;
  server.headersTimeout = 30_000;
  server.maxHeadersCount = 50;
  return server;
}
