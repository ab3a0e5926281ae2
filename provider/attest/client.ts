/**
 * attest(endpoint, expected): talk to a VM's agent over HTTPS, challenge it with a fresh nonce and
 * judge its evidence (./verify.ts). The agent's certificate is self-signed and made at boot, so
 * nothing vouches for it by name; what matters is its key. The verifier takes the SPKI from the
 * TLS connection it saw (never from the evidence), checks that the platform signed a commitment
 * to that key and the nonce, and afterwards talks to the agent only over connections pinned to
 * that exact certificate: `pinnedRequest(verdict.channel, …)` refuses any server presenting
 * another key during the TLS handshake, before a byte of the request leaves (a relay that
 * terminates TLS cannot pass).
 */
import * as https from "node:https";
import type { TLSSocket, PeerCertificate } from "node:tls";
import { createHash, randomBytes, X509Certificate } from "node:crypto";
import { Measurements } from "../measure";
import { TdxError } from "../errors";
import { defaultCacheDir } from "../pipeline";
import { Evidence, KeysResponse, MAX_EVIDENCE_BYTES, NONCE_BYTES, parseEvidence, parseHealthResponse, parseKeysResponse } from "./evidence";
import { attestationError, objectName, parseTpm2bPublic } from "./tpm2";
import { makeCredential } from "./credential";
import { localCaCertificate } from "./localca";
import { Check, EvidenceVerdict, verifyEvidence, VerifyOptions } from "./verify";

export interface Channel {
  host: string;
  port: number;
  /** SHA-256 (hex) of the DER SubjectPublicKeyInfo of the certificate the agent presented. */
  spkiSha256: string;
  certificatePem: string;
}

export interface Verdict extends Omit<EvidenceVerdict, "issuer"> {
  /** "unknown" when the agent could not be asked or its answers did not parse. */
  issuer: EvidenceVerdict["issuer"] | "unknown";
  channel?: Channel;
  evidence?: Evidence;
  /** Nonce → verdict, milliseconds. */
  durationMs: number;
  /**
   * The agent could not be asked yet: no connection, or it answered 503 (busy or starting) before
   * any evidence. Worth asking again until the caller's deadline; any other failed verdict is final.
   */
  retryable?: boolean;
}

export interface AttestOptions extends VerifyOptions {
  /**
   * One deadline for the whole attestation, every request included (the agent creates TPM keys on
   * first use: slow under emulation). Default 120 s. A trickling agent cannot stretch it.
   */
  timeoutMs?: number;
  /** With `attestUntil`: how long to keep asking an agent that cannot be asked yet (default 10 min). */
  waitMs?: number;
  /** With `attestUntil`: the longest pause between two asks (default 5 s). */
  maxDelayMs?: number;
  /** Where the local EK CA lives when `localCaPem` is not given (default: the tdxvm cache). */
  cacheDir?: string;
}

export function parseEndpoint(endpoint: string): { host: string; port: number } {
  const m = /^(?:https:\/\/)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})\/?$/.exec(endpoint.trim());
  const port = m ? Number(m[2]) : NaN;
  if (!m || port < 1 || port > 65535) throw new TdxError("E_VALIDATION", `attest endpoint ${JSON.stringify(endpoint)} is not host:port`, { hint: "Give the agent's address as host:port (e.g. 127.0.0.1:8443), optionally prefixed with https://." });
  return { host: m[1]!.replace(/^\[|\]$/g, ""), port };
}

const spkiHash = (cert: X509Certificate) => createHash("sha256").update(cert.publicKey.export({ type: "spki", format: "der" })).digest("hex");

interface RequestSpec { method: "GET" | "POST"; path: string; body?: unknown; timeoutMs?: number; maxBytes?: number }

function request(host: string, port: number, spec: RequestSpec, tls: https.RequestOptions, onPeer?: (cert: X509Certificate) => void): Promise<{ status: number; body: Buffer }> {
  const payload = spec.body === undefined ? undefined : Buffer.from(JSON.stringify(spec.body), "utf8");
  const max = spec.maxBytes ?? MAX_EVIDENCE_BYTES;
  const timeoutMs = spec.timeoutMs ?? 120_000;
  return new Promise((resolve, reject) => {
    const fail = (e: Error) => reject(e instanceof TdxError ? e : attestationError("connect", `${spec.method} https://${host}:${port}${spec.path}: ${e.message}`, "Is the VM up and its agent listening on that port? A changed TLS key (agent restart, or someone else answering) also ends here."));
    const req = https.request({
      host, port, path: spec.path, method: spec.method, agent: false,
      headers: { accept: "application/json", ...(payload ? { "content-type": "application/json", "content-length": payload.length } : {}) },
      ...tls,
    }, (res) => {
      if (onPeer) {
        try {
          onPeer((res.socket as TLSSocket).getPeerX509Certificate()!);
        } catch (e) {
          res.destroy();
          return fail(e as Error);
        }
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (c: Buffer) => {
        size += c.length;
        if (size > max) {
          res.destroy();
          return fail(attestationError("response-size", `the agent's answer to ${spec.path} exceeds ${max} bytes`));
        }
        chunks.push(c);
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
      res.on("error", fail);
    });
    // Idle and absolute: an agent that trickles a byte now and then is cut off at the deadline too.
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    const deadline = setTimeout(() => req.destroy(new Error(`no complete answer within ${timeoutMs} ms`)), timeoutMs);
    req.on("close", () => clearTimeout(deadline));
    req.on("error", fail);
    req.end(payload);
  });
}

/**
 * A request to the agent over a connection pinned to `channel`'s certificate: the TLS handshake
 * fails unless the server proves possession of exactly that key, so nothing is sent to anyone
 * else. Use it to deliver secrets after `attest()` returned an ok verdict.
 */
export function pinnedRequest(channel: Channel, spec: RequestSpec): Promise<{ status: number; body: Buffer }> {
  const checkServerIdentity = (_host: string, cert: PeerCertificate): Error | undefined => {
    const got = spkiHash(new X509Certificate(cert.raw));
    return got === channel.spkiSha256 ? undefined : attestationError("channel-pin", `the server's TLS key (SPKI SHA-256 ${got}) is not the attested one (${channel.spkiSha256})`);
  };
  return request(channel.host, channel.port, spec, { ca: [channel.certificatePem], rejectUnauthorized: true, checkServerIdentity }, (peer) => {
    if (spkiHash(peer) !== channel.spkiSha256) throw attestationError("channel-pin", "the connection's TLS key is not the attested one");
  });
}

async function json<T>(r: { status: number; body: Buffer }, path: string, parse: (v: unknown) => T): Promise<T> {
  if (r.status !== 200) {
    let why = "";
    try {
      const e = (JSON.parse(r.body.toString("utf8")) as { error?: unknown }).error;
      if (typeof e === "string") why = `: ${e.slice(0, 200)}`;
    } catch {
      // not JSON
    }
    const e = attestationError("agent", `the agent answered ${path} with HTTP ${r.status}${why}`);
    if (r.status === 503) (e.details as Record<string, unknown>).status = 503;
    throw e;
  }
  let v: unknown;
  try {
    v = JSON.parse(r.body.toString("utf8"));
  } catch {
    throw attestationError("evidence-schema", `the agent's answer to ${path} is not JSON`);
  }
  return parse(v);
}

/**
 * Challenge the agent at `endpoint` and judge its evidence against `expected`. Returns a verdict
 * (ok or not) whenever the agent could be asked; failed checks name what failed. Throws only for
 * invalid arguments.
 */
export async function attest(endpoint: string, expected: Measurements, opts: AttestOptions = {}): Promise<Verdict> {
  const { host, port } = parseEndpoint(endpoint);
  const t0 = performance.now();
  const extra: Check[] = [];
  let channel: Channel | undefined;
  let evidence: Evidence | undefined;
  const end = Date.now() + (opts.timeoutMs ?? 120_000);
  const left = () => {
    const ms = end - Date.now();
    if (ms <= 0) throw attestationError("timeout", `no verdict within ${opts.timeoutMs ?? 120_000} ms`, "Raise the timeout (--timeout) for a slow agent, or check that the VM is up.");
    return ms;
  };
  try {
    // 1. Learn the agent's certificate (no secret travels on this connection).
    let peer: X509Certificate | undefined;
    const health = await request(host, port, { method: "GET", path: "/v1/health", timeoutMs: left(), maxBytes: 64 * 1024 }, { rejectUnauthorized: false }, (c) => (peer = c));
    await json(health, "/v1/health", parseHealthResponse);
    channel = { host, port, spkiSha256: spkiHash(peer!), certificatePem: peer!.toString() };
    // 2. Everything else on connections pinned to that key.
    const keys: KeysResponse = await json(await pinnedRequest(channel, { method: "GET", path: "/v1/keys", timeoutMs: left(), maxBytes: 256 * 1024 }), "/v1/keys", parseKeysResponse);
    const nonce = randomBytes(NONCE_BYTES);
    let secret: Buffer | undefined;
    let credential: { idObject: string; encSecret: string } | undefined;
    if (keys.issuer === "tpm" && keys.tpm?.ekPublic) {
      secret = randomBytes(32);
      const c = makeCredential(parseTpm2bPublic(Buffer.from(keys.tpm.ekPublic, "base64"), "EK TPM2B_PUBLIC"), objectName(parseTpm2bPublic(Buffer.from(keys.tpm.akPublic, "base64"), "AK TPM2B_PUBLIC")), secret);
      credential = { idObject: c.idObject.toString("base64"), encSecret: c.encSecret.toString("base64") };
    }
    evidence = await json(await pinnedRequest(channel, { method: "POST", path: "/v1/attest", body: { nonce: nonce.toString("hex"), ...(credential ? { credential } : {}) }, timeoutMs: left() }), "/v1/attest", parseEvidence);
    const localCaPem = opts.localCaPem ?? (keys.issuer === "tpm" ? localCaCertificate(opts.cacheDir ?? defaultCacheDir()) : undefined);
    const verdict = await verifyEvidence({ evidence, keys, nonce, channelSpkiSha256: Buffer.from(channel.spkiSha256, "hex"), credentialSecret: secret, expected }, { ...opts, localCaPem });
    return { ...verdict, channel, evidence, durationMs: performance.now() - t0 };
  } catch (e) {
    if (!(e instanceof TdxError) || e.code !== "E_ATTESTATION") throw e;
    const check = typeof e.details?.check === "string" ? e.details.check : "attest";
    extra.push({ check, ok: false, detail: e.message.startsWith(`${check}: `) ? e.message.slice(check.length + 2) : e.message });
    const retryable = !evidence && (check === "connect" || (check === "agent" && e.details?.status === 503));
    return { ok: false, issuer: evidence?.issuer ?? "unknown", checks: extra, registers: [], ...(channel ? { channel } : {}), ...(evidence ? { evidence } : {}), durationMs: performance.now() - t0, ...(retryable ? { retryable } : {}) };
  }
}

/**
 * attest(), asked again with backoff (0.5 s doubling to `maxDelayMs`, default 5 s) while the agent cannot be asked yet —
 * the VM still booting, its agent starting or busy — until `waitMs` (default 10 min) has passed.
 * Every other verdict, ok or not, is returned at once: a VM that proved the wrong thing does not
 * get better by waiting.
 */
export async function attestUntil(endpoint: string, expected: Measurements, opts: AttestOptions = {}): Promise<Verdict & { attempts: number }> {
  const until = Date.now() + (opts.waitMs ?? 600_000);
  let delay = 500;
  for (let attempts = 1; ; attempts++) {
    const v = await attest(endpoint, expected, opts);
    if (!v.retryable || Date.now() + delay >= until) return { ...v, attempts };
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, opts.maxDelayMs ?? 5_000);
  }
}

/** Throw E_ATTESTATION naming every failed check and register unless the verdict is ok. */
export function assertAttested(v: Verdict, what = "the VM"): void {
  if (v.ok) return;
  const failed = [...v.checks.filter((c) => !c.ok).map((c) => `${c.check}: ${c.detail}`), ...v.registers.filter((r) => !r.ok).map((r) => `${r.register}: ${r.problems.join("; ")}`)];
  throw new TdxError("E_ATTESTATION", `${what} failed attestation (${v.issuer}): ${failed.join(" | ")}`, {
    hint: "Nothing was sent to it. A register mismatch means it runs another image than the expected measurement (compare the measurement's ledger); a signature, certificate or binding failure means the evidence is not genuine or was relayed.",
    details: { check: v.checks.find((c) => !c.ok)?.check ?? "registers", failed: failed.slice(0, 20) },
  });
}

/** A field of the agent's JSON answer; undefined when the answer is not a JSON object. */
function jsonField(body: Buffer, name: string): unknown {
  try {
    const v: unknown = JSON.parse(body.toString("utf8"));
    return v && typeof v === "object" ? (v as Record<string, unknown>)[name] : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Provision an attested VM: ask its agent for a fresh challenge and POST `payload` sealed to the
 * attested TLS key and signed by the image's owner (provider/secrets/owner.ts) — both over
 * connections pinned to that key. A challenge lost to a busy agent (evicted by others' requests)
 * is asked for once more. Throws E_DEPLOYMENT with the agent's answer when it refuses.
 */
export async function deliverSecrets(channel: Channel, payload: Record<string, unknown>, ownerKeyPem: string, opts: { timeoutMs?: number } = {}): Promise<{ secrets: string[] }> {
  const { sealDelivery, ownerSigningKey } = await import("../secrets/owner");
  const key = ownerSigningKey(ownerKeyPem);
  let last: { status: number; body: Buffer } | undefined;
  for (let attempt = 0; attempt < 2; attempt++) {
    const c = await pinnedRequest(channel, { method: "GET", path: "/v1/challenge", timeoutMs: opts.timeoutMs ?? 30_000, maxBytes: 4096 });
    if (c.status === 200) {
      const challenge = jsonField(c.body, "challenge");
      if (typeof challenge !== "string") throw new TdxError("E_DEPLOYMENT", "the agent's challenge answer has no challenge");
      last = await pinnedRequest(channel, { method: "POST", path: "/v1/secrets", body: sealDelivery(payload, { certificatePem: channel.certificatePem, challenge }, key), timeoutMs: opts.timeoutMs ?? 30_000, maxBytes: 64 * 1024 });
    } else last = c;
    if (last.status === 200) {
      const names = jsonField(last.body, "secrets");
      return { secrets: Array.isArray(names) ? names.filter((n): n is string => typeof n === "string") : [] };
    }
    if (!(last.status === 401 && /challenge/.test(last.body.toString("utf8")))) break;
  }
  const errorField = jsonField(last!.body, "error");
  const why = typeof errorField === "string" ? errorField.slice(0, 300) : "";
  const status = last!.status;
  throw new TdxError("E_DEPLOYMENT", `the attested VM refused the secrets (HTTP ${status}: ${why})`, {
    hint: status === 409 ? "The VM already received secrets (they are delivered once per boot): replace or reboot the VM to deliver new ones."
      : status === 401 ? "The VM's image names another owner: deliver with the private key whose public half the image was baked with (TdxImage's ownerKey, or the key you passed as its owner)."
      : status === 404 || status === 405 ? "The VM's agent has no owner-signed delivery (GET /v1/challenge): the image was baked with an older tdxvm; bake and deploy it again."
      : "Check the secrets against the image's declared schemas.",
    details: { status },
  });
}

/**
 * What the agent at `endpoint` says about itself now (GET /v1/health, not pinned — nothing is sent):
 * its TLS key and whether it still waits for secrets; undefined when it cannot be asked within
 * `timeoutMs`. A provider compares this with its state to notice a rebooted VM (new key, secrets
 * pending on its fresh tmpfs).
 */
export async function probeAgent(endpoint: string, timeoutMs = 3_000): Promise<{ spkiSha256: string; secrets: "none" | "pending" | "complete" } | undefined> {
  const { host, port } = parseEndpoint(endpoint);
  let peer: X509Certificate | undefined;
  try {
    const r = await request(host, port, { method: "GET", path: "/v1/health", timeoutMs, maxBytes: 64 * 1024 }, { rejectUnauthorized: false }, (c) => (peer = c));
    const h = await json(r, "/v1/health", parseHealthResponse);
    return { spkiSha256: spkiHash(peer!), secrets: h.secrets };
  } catch {
    return undefined;
  }
}
