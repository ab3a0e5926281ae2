/**
 * The verifier's client waits correctly: an agent that cannot be asked yet (no listener, 503) is
 * asked again with backoff until the caller's deadline, every other verdict is final at once, and
 * one deadline bounds a whole attestation (an agent trickling bytes cannot stretch it).
 */
import * as https from "node:https";
import * as net from "node:net";
import { newTlsIdentity } from "../../../agent/tls";
import { attest, attestUntil } from "../../../provider/attest/client";
import type { Measurements } from "../../../provider/measure";

const expected: Measurements = { measurementsVersion: 1, backend: "azure", inputs: {}, registers: {} };
const tls = newTlsIdentity();

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

function serve(port: number, handler: import("node:http").RequestListener): Promise<https.Server> {
  const s = https.createServer({ key: tls.keyPem, cert: tls.certPem }, handler);
  return new Promise((r) => s.listen(port, "127.0.0.1", () => r(s)));
}

const close = (s: https.Server) => new Promise((r) => (s.closeAllConnections(), s.close(r)));

describe("attest client: waiting and deadlines", () => {
  it("nobody listening and a 503 are retryable verdicts; a 404 is final", async () => {
    const port = await freePort();
    const none = await attest(`127.0.0.1:${port}`, expected, { timeoutMs: 2000 });
    expect([none.ok, none.retryable, none.checks[0].check]).toEqual([false, true, "connect"]);
    const s = await serve(port, (req, res) => res.writeHead(req.url === "/v1/health" ? 503 : 404).end('{"error":"starting"}'));
    try {
      const busy = await attest(`127.0.0.1:${port}`, expected, { timeoutMs: 2000 });
      expect([busy.retryable, busy.checks[0].check, busy.checks[0].detail]).toEqual([true, "agent", expect.stringMatching(/HTTP 503: starting/)]);
    } finally {
      await close(s);
    }
    const s2 = await serve(port, (_req, res) => res.writeHead(404).end("{}"));
    try {
      const gone = await attest(`127.0.0.1:${port}`, expected, { timeoutMs: 2000 });
      expect([gone.ok, gone.retryable]).toEqual([false, undefined]);
    } finally {
      await close(s2);
    }
  });

  it("attestUntil keeps asking a VM that is still booting, then returns the first real verdict", async () => {
    const port = await freePort();
    let health = 0;
    let server: https.Server | undefined;
    // Nothing listens for 1.2 s; then the agent answers 503 twice (starting); then it answers for real
    // (here: an answer the verifier refuses, which is a final verdict).
    const up = setTimeout(async () => {
      server = await serve(port, (req, res) => {
        if (req.url === "/v1/health" && ++health <= 2) return void res.writeHead(503).end('{"error":"starting"}');
        res.writeHead(200, { "content-type": "application/json" }).end('{"status":"ok","issuer":"nonsense"}');
      });
    }, 1200);
    try {
      const v = await attestUntil(`127.0.0.1:${port}`, expected, { timeoutMs: 2000, waitMs: 20_000, maxDelayMs: 400 });
      expect(v.retryable).toBeUndefined();
      expect(v.ok).toBe(false);
      expect(v.checks[0].check).toMatch(/schema|health|agent/);
      expect(health).toBe(3);
      expect(v.attempts).toBeGreaterThanOrEqual(4); // ≥ 1 refused connection, two 503s, the answer
    } finally {
      clearTimeout(up);
      if (server) await close(server);
    }
  });

  it("gives up waiting at waitMs with the last (retryable) verdict", async () => {
    const port = await freePort();
    const t0 = Date.now();
    const v = await attestUntil(`127.0.0.1:${port}`, expected, { timeoutMs: 1000, waitMs: 1500, maxDelayMs: 300 });
    expect([v.ok, v.retryable, v.checks[0].check]).toEqual([false, true, "connect"]);
    expect(v.attempts).toBeGreaterThanOrEqual(2);
    expect(Date.now() - t0).toBeLessThan(5_000);
  });

  it("one deadline for the whole attestation: an agent trickling a byte every 100 ms is cut off at timeoutMs", async () => {
    const port = await freePort();
    const timers: NodeJS.Timeout[] = [];
    const s = await serve(port, (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      timers.push(setInterval(() => res.write(" "), 100));
    });
    try {
      const t0 = Date.now();
      const v = await attest(`127.0.0.1:${port}`, expected, { timeoutMs: 700 });
      const took = Date.now() - t0;
      expect([v.ok, v.checks[0].check, v.checks[0].detail]).toEqual([false, "connect", expect.stringMatching(/no complete answer within \d+ ms/)]);
      expect(took).toBeLessThan(3_000); // an idle timeout alone would never fire
    } finally {
      for (const t of timers) clearInterval(t);
      await close(s);
    }
  });
});

describe("deliverSecrets: every refusal says why and what to do", () => {
  const { deliverSecrets } = require("../../../provider/attest/client") as typeof import("../../../provider/attest/client");
  const { newOwnerKey } = require("../../../provider/secrets/owner") as typeof import("../../../provider/secrets/owner");
  const { tdxErrorOf } = require("../../helpers") as typeof import("../../helpers");
  const owner = newOwnerKey().privateKeyPem;

  it.each([
    ["an agent without owner-signed delivery (an image baked before it)", 404, "not found", /older tdxvm; bake and deploy it again/],
    ["a VM that already has its secrets", 409, JSON.stringify({ error: "secrets already delivered" }), /already received secrets/],
    ["an image with another owner", 401, JSON.stringify({ error: "not signed by the image's owner" }), /names another owner/],
  ])("%s (HTTP %i)", async (_what, status, body, hint) => {
    const port = await freePort();
    const s = await serve(port, (req, res) => {
      if (req.url === "/v1/challenge" && status !== 404) res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ challenge: "01".repeat(32) }));
      else res.writeHead(status).end(body);
    });
    try {
      const channel = { host: "127.0.0.1", port, spkiSha256: tls.spkiSha256.toString("hex"), certificatePem: tls.certPem };
      const e = await tdxErrorOf(() => deliverSecrets(channel, { API_TOKEN: "x".repeat(20) }, owner));
      expect([e.code, e.message, e.hint]).toEqual(["E_DEPLOYMENT", expect.stringMatching(new RegExp(`^the attested VM refused the secrets \\(HTTP ${status}: `)), expect.stringMatching(hint)]);
    } finally {
      await close(s);
    }
  });
});
