/**
 * The agent's HTTPS endpoint (one TLS key per start, see ./tls.ts):
 *   GET  /v1/health   {status, issuer, secrets: "none" | "pending" | "complete"}
 *   GET  /v1/keys     the issuer's long-lived keys (TPM EK/AK, certificates) for the verifier's challenge
 *   POST /v1/attest   {nonce: hex, credential?: {idObject, encSecret}} → Evidence bound to nonce + this TLS key
 *   GET  /v1/challenge {challenge: hex, owner} — single use, for the owner's next delivery
 *   POST /v1/secrets  a sealed delivery (provider/secrets/owner.ts): encrypted to this TLS key, signed by the
 *                     image's owner over it and a challenge → 200 once; 401 (not the owner's, not for this
 *                     key, no open challenge: nothing stored), 400 (bad payload, names only), 409 (already done), 413 (too big)
 * Bounded: request bodies (413), time to send headers and body (408), requests being worked on at
 * once (503) — a request takes one of those slots only once its body has arrived, so clients that
 * trickle bytes cannot starve attestation or delivery — and connections. Only method, path and
 * status are logged — never a body.
 */
import * as https from "node:https";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { IssuerImpl } from "./issuers";
import type { SecretsReceiver } from "./secrets";
import type { TlsIdentity } from "./tls";

export const LIMITS = { attestBody: 16 * 1024, secretsBody: 1024 * 1024, concurrent: 8, requestMs: 120_000, bodyMs: 15_000, connections: 256 };

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** The whole body within LIMITS.bodyMs (408 after), at most `max` bytes (413: the rest is not read). */
function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers["content-length"] ?? 0);
    if (declared > max) return reject(new HttpError(413, `body larger than ${max} bytes`));
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => {
      req.pause();
      reject(new HttpError(408, `the body did not arrive within ${LIMITS.bodyMs / 1000} s`));
    }, LIMITS.bodyMs);
    const fail = (e: Error) => {
      clearTimeout(timer);
      reject(e);
    };
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > max) {
        req.pause();
        req.removeAllListeners("data");
        fail(new HttpError(413, `body larger than ${max} bytes`));
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
    req.on("error", fail);
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
      // A refused body is not read to its end: close the connection after the answer.
      res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), "cache-control": "no-store", ...(status === 408 || status === 413 ? { connection: "close" } : {}) });
      res.end(text);
    };
    const route = `${req.method} ${(req.url ?? "").split("?")[0]}`;
    // Work on a complete request: a slot is taken only here, after its body arrived.
    const slot = async (f: () => Promise<void>) => {
      if (inFlight >= LIMITS.concurrent) throw new HttpError(503, "too many requests at once; retry");
      inFlight++;
      try {
        await f();
      } finally {
        inFlight--;
      }
    };
    try {
      if (route === "GET /v1/health") {
        return await slot(async () => send(200, { status: "ok", issuer: d.issuer.name, secrets: !d.secrets ? "none" : d.secrets.complete ? "complete" : "pending" }));
      }
      if (route === "GET /v1/keys") return await slot(async () => send(200, await d.issuer.keys()));
      if (route === "POST /v1/attest") {
        const body = json(await readBody(req, LIMITS.attestBody));
        const nonce = hex(body.nonce, "nonce", 16, 64);
        const c = body.credential as Record<string, unknown> | undefined;
        const credential = c === undefined ? undefined : { idObject: b64(c?.idObject, "credential.idObject"), encSecret: b64(c?.encSecret, "credential.encSecret") };
        return await slot(async () => send(200, await d.issuer.evidence(nonce, d.tls.spkiSha256, credential)));
      }
      if (route === "GET /v1/challenge") {
        if (!d.secrets) throw new HttpError(404, "this image declares no secrets receiver (Init module)");
        const secrets = d.secrets;
        return await slot(async () => {
          const out = secrets.challenge();
          send(out.status, out.body);
        });
      }
      if (route === "POST /v1/secrets") {
        if (!d.secrets) throw new HttpError(404, "this image declares no secrets receiver (Init module)");
        const secrets = d.secrets;
        const body = json(await readBody(req, LIMITS.secretsBody));
        return await slot(async () => {
          const out = await secrets.receiveSealed(body, d.tls);
          send(out.status, out.body);
        });
      }
      throw new HttpError(404, `no route ${route.slice(0, 80)}`);
    } catch (e) {
      const status = e instanceof HttpError ? e.status : 500;
      send(status, { error: (e as Error).message });
    } finally {
      d.log(`${route.slice(0, 80)} → ${res.statusCode}`);
    }
  };
  const server = https.createServer({ key: d.tls.keyPem, cert: d.tls.certPem, minVersion: "TLSv1.2" }, (req, res) => void handle(req, res));
  server.requestTimeout = LIMITS.requestMs;
  server.headersTimeout = 15_000;
  server.maxHeadersCount = 50;
  server.maxConnections = LIMITS.connections;
  return server;
}
