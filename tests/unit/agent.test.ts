/**
 * The guest agent's parts on the host: its TLS identity, the HTTPS API (with a stand-in issuer),
 * the secrets receiver over a temporary root, the tdxs socket protocol, the tdx issuer against a
 * recording of configfs-tsm, the HCL report parser, and the bundle the modules bake. The real TPM
 * path runs against swtpm in tests/integration/agent.test.ts; the real VM in the harness tests.
 */
import { promises as fs, readFileSync, existsSync } from "node:fs";
import * as https from "node:https";
import * as net from "node:net";
import * as path from "node:path";
import { createHash, randomBytes, X509Certificate } from "node:crypto";
import { newTlsIdentity, spkiSha256Of } from "../../agent/tls";
import { agentServer, LIMITS } from "../../agent/server";
import { SecretsReceiver, Contract } from "../../agent/secrets";
import { handleTdxs, tdxsServer, TDXS_LIMITS } from "../../agent/tdxs";
import { attestBinding, tdxsReportData, Evidence } from "../../agent/protocol";
import { TdxIssuer, TsmOps } from "../../agent/issuers/tdx";
import { chooseIssuer, IssuerImpl } from "../../agent/issuers";
import { parseHclReport, HCL_DATA_OFFSET } from "../../agent/issuers/azure";
import { Tpm2, TpmTransport, TpmResponseError } from "../../agent/tpm2";
import { parseConfig } from "../../agent/main";
import { SecretSchema, SecretTarget, declareSecret } from "../../provider/secrets";
import { newOwnerKey, ownerSigningKey, sealDelivery } from "../../provider/secrets/owner";
import { parseTdxQuote } from "../../provider/measure";
import { tempDir } from "../helpers";

const QUOTE = readFileSync(path.join(__dirname, "measure/fixtures/tdx-quote-cos113.dat"));

/** A stand-in issuer: evidence carries the binding it was asked for, so the API's plumbing is what is tested. */
function fakeIssuer(name: "tpm" | "tdx" = "tpm"): IssuerImpl & { calls: Array<{ nonce: string; spki: string; credential: boolean }> } {
  const calls: Array<{ nonce: string; spki: string; credential: boolean }> = [];
  return {
    name,
    calls,
    keys: async () => ({ issuer: name, tpm: { akPublic: "AAEC" } }),
    async evidence(nonce, spki, credential) {
      calls.push({ nonce: nonce.toString("hex"), spki: spki.toString("hex"), credential: !!credential });
      return { evidenceVersion: 1, issuer: name, nonce: nonce.toString("hex"), spkiSha256: spki.toString("hex"), tdx: { quote: attestBinding("sha512", nonce, spki).toString("base64") }, eventLogs: {} };
    },
    document: async (rd) => rd,
  };
}

function request(port: number, method: string, p: string, body?: unknown, raw?: Buffer): Promise<{ status: number; json: Record<string, unknown>; spki: Buffer }> {
  return new Promise((resolve, reject) => {
    const data = raw ?? (body === undefined ? undefined : Buffer.from(JSON.stringify(body)));
    const req = https.request({ host: "127.0.0.1", port, method, path: p, rejectUnauthorized: false, agent: false, headers: data ? { "content-type": "application/json", "content-length": data.length } : {} }, (res) => {
      const spki = spkiSha256Of(new X509Certificate((res.socket as import("node:tls").TLSSocket).getPeerCertificate().raw));
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString() || "{}"), spki }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(data);
  });
}

const OWNER = newOwnerKey();
const owner = ownerSigningKey(OWNER.privateKeyPem);

/** The owner's delivery: a challenge from the agent, then the payload sealed to `certPem` and signed by `key`. */
async function deliver(port: number, payload: Record<string, unknown>, certPem: string, key = owner) {
  const c = await request(port, "GET", "/v1/challenge");
  if (c.status !== 200) return c;
  return request(port, "POST", "/v1/secrets", sealDelivery(payload, { certificatePem: certPem, challenge: c.json.challenge as string }, key));
}

const contract = (secrets = [
  declareSecret("API_TOKEN", { schema: SecretSchema.string({ minLength: 16 }), targets: [SecretTarget.file("/run/app/token", { mode: 0o440, owner: "root" }), SecretTarget.env("API_TOKEN")] }),
  declareSecret("EXTRA", { required: false, targets: [SecretTarget.file("/run/app/extra")] }),
]): Contract => ({ contractVersion: 1, delivery: { method: "http_post", completion: "required", rejectUnknown: true }, handoff: "app.service", secrets, owner: OWNER.publicKey });

describe("agent TLS identity", () => {
  it("is a valid self-signed P-256 certificate whose SPKI digest the agent reports", () => {
    const id = newTlsIdentity();
    const cert = new X509Certificate(id.certPem);
    expect(cert.verify(cert.publicKey)).toBe(true);
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    expect(spkiSha256Of(cert).equals(id.spkiSha256)).toBe(true);
    expect(newTlsIdentity().spkiSha256.equals(id.spkiSha256)).toBe(false); // a new key per start
  });
});

describe("agent HTTPS API", () => {
  let server: https.Server;
  let port: number;
  let root: string;
  const issuer = fakeIssuer();
  const tls = newTlsIdentity();
  const logs: string[] = [];
  const systemctl: string[][] = [];

  beforeAll(async () => {
    root = await tempDir("tdxvm-agent-root-");
    const secrets = new SecretsReceiver(contract(), { root, exec: async (cmd, args) => (systemctl.push([cmd, ...args]), { code: 0, stdout: Buffer.alloc(0), stderr: "" }), log: (m) => logs.push(m) });
    server = agentServer({ issuer, tls, secrets, log: (m) => logs.push(m) });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as net.AddressInfo).port;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    await fs.rm(root, { recursive: true, force: true });
  });

  it("health and keys", async () => {
    expect((await request(port, "GET", "/v1/health")).json).toEqual({ status: "ok", issuer: "tpm", secrets: "pending" });
    expect((await request(port, "GET", "/v1/keys")).json).toEqual({ issuer: "tpm", tpm: { akPublic: "AAEC" } });
  });

  it("attest binds the verifier's nonce and the TLS key the client saw", async () => {
    const nonce = randomBytes(32);
    const r = await request(port, "POST", "/v1/attest", { nonce: nonce.toString("hex") });
    expect(r.status).toBe(200);
    const ev = r.json as unknown as Evidence;
    expect(r.spki.equals(tls.spkiSha256)).toBe(true);
    expect(issuer.calls.at(-1)).toEqual({ nonce: nonce.toString("hex"), spki: r.spki.toString("hex"), credential: false });
    expect(Buffer.from(ev.tdx!.quote, "base64").equals(attestBinding("sha512", nonce, r.spki))).toBe(true);
    await request(port, "POST", "/v1/attest", { nonce: nonce.toString("hex"), credential: { idObject: "AAIAAA==", encSecret: "AAEA" } });
    expect(issuer.calls.at(-1)!.credential).toBe(true);
  });

  it("refuses malformed attestation requests with 400 and oversized bodies with 413", async () => {
    for (const body of [{}, { nonce: "zz" }, { nonce: "00".repeat(8) }, { nonce: "00".repeat(65) }, { nonce: "00".repeat(32), credential: { idObject: "!!" } }]) {
      expect({ body, status: (await request(port, "POST", "/v1/attest", body)).status }).toEqual({ body, status: 400 });
    }
    expect((await request(port, "POST", "/v1/attest", undefined, Buffer.from("not json"))).status).toBe(400);
    expect((await request(port, "POST", "/v1/attest", undefined, Buffer.alloc(LIMITS.attestBody + 1, 0x20))).status).toBe(413);
    expect((await request(port, "GET", "/v1/nope")).status).toBe(404);
  });

  it("secrets: a bad payload is refused with its problems named (never a value) and changes nothing", async () => {
    const value = "short-secret-value";
    const r = await deliver(port, { API_TOKEN: "x", UNKNOWN_NAME: value }, tls.certPem);
    expect(r.status).toBe(400);
    expect(r.json.error).toMatch(/not declared by the image: UNKNOWN_NAME.*API_TOKEN: shorter than minLength 16/);
    expect(JSON.stringify(r.json)).not.toContain(value);
    expect(existsSync(path.join(root, "run"))).toBe(false);
    expect((await request(port, "POST", "/v1/secrets", undefined, Buffer.alloc(LIMITS.secretsBody + 10, 0x20))).status).toBe(413);
  });

  it("secrets: only the image's owner provisions — unsigned, another key, another agent's key, a replayed or unknown challenge, a tampered envelope: refused, nothing written", async () => {
    const token = `tok-${randomBytes(16).toString("hex")}`;
    // Unsigned (the old first-come POST): 401.
    const plain = await request(port, "POST", "/v1/secrets", { API_TOKEN: token });
    expect(plain.status).toBe(401);
    expect(plain.json.error).toMatch(/sealed and signed by the image's owner/);
    // Signed by someone else: 401.
    const other = ownerSigningKey(newOwnerKey().privateKeyPem);
    expect((await deliver(port, { API_TOKEN: token }, tls.certPem, other)).status).toBe(401);
    // Sealed to another agent's key (a relay asking the owner for its own key): the signature names that key → 401.
    expect((await deliver(port, { API_TOKEN: token }, newTlsIdentity().certPem)).status).toBe(401);
    // A challenge the agent never issued.
    expect((await request(port, "POST", "/v1/secrets", sealDelivery({ API_TOKEN: token }, { certificatePem: tls.certPem, challenge: "ab".repeat(32) }, owner))).status).toBe(401);
    // A tampered ciphertext breaks the signature; a signed envelope with its challenge changed too.
    const c = (await request(port, "GET", "/v1/challenge")).json.challenge as string;
    const env = sealDelivery({ API_TOKEN: token }, { certificatePem: tls.certPem, challenge: c }, owner);
    const ct = Buffer.from(env.ciphertext, "base64");
    ct[0] ^= 1;
    expect((await request(port, "POST", "/v1/secrets", { ...env, ciphertext: ct.toString("base64") })).status).toBe(401);
    expect((await request(port, "POST", "/v1/secrets", { ...env, signature: Buffer.alloc(64).toString("base64") })).status).toBe(401);
    expect((await request(port, "POST", "/v1/secrets", { ...env, sealed: 2 })).status).toBe(401);
    expect(existsSync(path.join(root, "run"))).toBe(false);
    expect((await request(port, "GET", "/v1/health")).json.secrets).toBe("pending");
    // The owner's envelope still works afterwards… once: a replay of it is refused (the challenge was spent).
    // (Shown with a payload the contract refuses, so nothing is written and the next test delivers.)
    const bad = sealDelivery({ API_TOKEN: "short" }, { certificatePem: tls.certPem, challenge: (await request(port, "GET", "/v1/challenge")).json.challenge as string }, owner);
    expect((await request(port, "POST", "/v1/secrets", bad)).status).toBe(400);
    const replay = await request(port, "POST", "/v1/secrets", bad);
    expect(replay.status).toBe(401);
    expect(replay.json.error).toMatch(/challenge/);
    expect(existsSync(path.join(root, "run"))).toBe(false);
  });

  it("secrets: delivered once with the declared modes, handed off, 409 afterwards — also for a restarted agent", async () => {
    const token = `tok-${randomBytes(16).toString("hex")}`;
    const r = await deliver(port, { API_TOKEN: token }, tls.certPem);
    expect(r.status).toBe(200);
    expect(r.json).toEqual({ status: "complete", secrets: ["API_TOKEN"] });
    const st = await fs.stat(path.join(root, "run/app/token"));
    expect((st.mode & 0o7777).toString(8)).toBe("440");
    expect(await fs.readFile(path.join(root, "run/app/token"), "utf8")).toBe(token);
    expect(await fs.readFile(path.join(root, "run/tdxvm/secrets.env"), "utf8")).toBe(`API_TOKEN="${token}"\n`);
    expect(systemctl).toEqual([["systemctl", "start", "--no-block", "tdxvm-secrets-ready.target"]]);
    expect((await request(port, "GET", "/v1/health")).json.secrets).toBe("complete");
    const again = await deliver(port, { API_TOKEN: "y".repeat(20) }, tls.certPem);
    expect(again.status).toBe(409);
    expect(await fs.readFile(path.join(root, "run/app/token"), "utf8")).toBe(token);
    // A restarted agent finds the delivery on the tmpfs and keeps refusing.
    const restarted = new SecretsReceiver(contract(), { root });
    expect(restarted.complete).toBe(true);
    expect((await restarted.receive({ API_TOKEN: "z".repeat(20) })).status).toBe(409);
    expect(logs.join("\n")).not.toContain(token);
  });

  it("bounds concurrency: requests over the limit get 503", async () => {
    const slow: IssuerImpl = { ...fakeIssuer(), keys: () => new Promise((r) => setTimeout(() => r({ issuer: "tpm" }), 300)) };
    const s = agentServer({ issuer: slow, tls, log: () => undefined });
    await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
    const p = (s.address() as net.AddressInfo).port;
    const statuses = await Promise.all(Array.from({ length: LIMITS.concurrent + 3 }, () => request(p, "GET", "/v1/keys").then((x) => x.status)));
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
    expect(statuses.filter((x) => x === 200)).toHaveLength(LIMITS.concurrent);
    expect(statuses.filter((x) => x === 503)).toHaveLength(3);
  });

  it("bad input is 400, not 500: a NUL in an env-targeted secret (nothing written, the value not echoed); an oversized chunked body is 413", async () => {
    const root2 = await tempDir("tdxvm-agent-root-");
    const rec = new SecretsReceiver(contract(), { root: root2, log: () => undefined });
    const s = agentServer({ issuer: fakeIssuer(), tls, secrets: rec, log: () => undefined });
    await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
    const p = (s.address() as net.AddressInfo).port;
    try {
      const value = "a-token-of-16-bytes\u0000tail";
      const r = await deliver(p, { API_TOKEN: value }, tls.certPem);
      expect(r.status).toBe(400);
      expect(JSON.stringify(r.json)).toContain("NUL");
      expect(JSON.stringify(r.json)).not.toContain("a-token-of-16-bytes");
      expect(Object.keys(r.json.invalid as object)).toEqual(["API_TOKEN"]);
      expect(existsSync(path.join(root2, "run"))).toBe(false);
      // No content-length: the body streams in chunks past the 16 KiB attest limit.
      const status = await new Promise<number>((resolve, reject) => {
        const req = https.request({ host: "127.0.0.1", port: p, method: "POST", path: "/v1/attest", rejectUnauthorized: false, agent: false, headers: { "content-type": "application/json", "transfer-encoding": "chunked" } }, (res) => {
          resolve(res.statusCode ?? 0);
          res.resume();
        });
        req.on("error", (e) => (/ECONNRESET|EPIPE/.test(String(e)) ? resolve(-1) : reject(e)));
        for (let i = 0; i < 8; i++) req.write(Buffer.alloc(4096, 0x20));
        req.end();
      });
      expect(status).toBe(413);
    } finally {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
      await fs.rm(root2, { recursive: true, force: true });
    }
  });

  it("slow clients hold no slot: twelve bodies trickling a byte at a time leave /v1/health and /v1/attest answering; a body too slow is 408", async () => {
    const bodyMs = LIMITS.bodyMs;
    LIMITS.bodyMs = 1500;
    const s = agentServer({ issuer: fakeIssuer(), tls, log: () => undefined });
    await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
    const p = (s.address() as net.AddressInfo).port;
    const tricklers: Array<{ req: import("node:http").ClientRequest; status: Promise<number> }> = [];
    const timers: NodeJS.Timeout[] = [];
    try {
      for (let i = 0; i < LIMITS.concurrent + 4; i++) {
        let settle: (n: number) => void = () => undefined;
        const status = new Promise<number>((r) => (settle = r));
        const req = https.request({ host: "127.0.0.1", port: p, method: "POST", path: "/v1/attest", rejectUnauthorized: false, agent: false, headers: { "content-type": "application/json", "content-length": 1000 } }, (res) => {
          settle(res.statusCode ?? 0);
          res.resume();
        });
        req.on("error", () => settle(-1));
        req.write("{");
        timers.push(setInterval(() => req.write(" "), 200));
        tricklers.push({ req, status });
      }
      await new Promise((r) => setTimeout(r, 400));
      expect((await request(p, "GET", "/v1/health")).status).toBe(200);
      const nonce = randomBytes(32).toString("hex");
      const a = await request(p, "POST", "/v1/attest", { nonce });
      expect([a.status, a.json.nonce]).toEqual([200, nonce]);
      // Past the body deadline every trickler gets 408 (and the connection is closed).
      expect(await Promise.all(tricklers.map((t) => t.status))).toEqual(tricklers.map(() => 408));
    } finally {
      LIMITS.bodyMs = bodyMs;
      for (const t of timers) clearInterval(t);
      for (const t of tricklers) t.req.destroy();
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
  });
});

describe("tdxs socket protocol", () => {
  const issuer = fakeIssuer("tdx");
  it("issue: the document's report data is SHA-256(userData ‖ nonce) padded to 64 bytes", async () => {
    const r = await handleTdxs(issuer, JSON.stringify({ method: "issue", data: { userData: "aabb", nonce: "0102" } }));
    expect(r.error).toBeNull();
    const want = Buffer.concat([createHash("sha256").update(Buffer.from("aabb0102", "hex")).digest(), Buffer.alloc(32)]);
    expect((r.data as { document: string }).document).toBe(want.toString("hex"));
    expect(tdxsReportData(Buffer.from("aabb", "hex"), Buffer.from("0102", "hex")).equals(want)).toBe(true);
  });

  it("metadata, validate against a real TD quote, and errors in the protocol's shape", async () => {
    expect(await handleTdxs(issuer, '{"method":"metadata"}')).toEqual({ data: { issuer: "tdx", reportData: "sha256(userData || nonce), zero-padded to 64 bytes", simulated: false }, error: null });
    // The fixture quote's REPORTDATA is whatever Google's test put there: validate must say "not bound" for other data.
    const rd = parseTdxQuote(QUOTE).body.reportData;
    const v = await handleTdxs(issuer, JSON.stringify({ method: "validate", data: { document: QUOTE.toString("hex"), userData: "00", nonce: "" } }));
    expect((v.data as { valid: boolean }).valid).toBe(rd.equals(tdxsReportData(Buffer.from("00", "hex"), Buffer.alloc(0))));
    expect((v.data as { valid: boolean }).valid).toBe(false);
    expect(await handleTdxs(issuer, "nope")).toEqual({ data: null, error: "request is not JSON" });
    expect((await handleTdxs(issuer, '{"method":"steal"}')).error).toMatch(/unknown method/);
    expect((await handleTdxs(issuer, JSON.stringify({ method: "issue", data: { userData: "xyz" } }))).error).toMatch(/userData must be a hex string/);
  });

  it("serves newline-delimited JSON on a Unix socket", async () => {
    const dir = await tempDir("tdxvm-tdxs-");
    const sockPath = path.join(dir, "tdxs.sock");
    const srv = tdxsServer(issuer, () => undefined);
    await new Promise<void>((r) => srv.listen(sockPath, r));
    const lines = await new Promise<string[]>((resolve) => {
      const c = net.connect(sockPath);
      let buf = "";
      c.on("data", (d) => {
        buf += d;
        if (buf.split("\n").length > 2) {
          c.end();
          resolve(buf.trim().split("\n"));
        }
      });
      c.write('{"method":"metadata"}\n{"method":"issue","data":{"userData":"01","nonce":"02"}}\n');
    });
    await new Promise((r) => srv.close(r));
    await fs.rm(dir, { recursive: true, force: true });
    expect(JSON.parse(lines[0]).data.issuer).toBe("tdx");
    expect(JSON.parse(lines[1]).data.document).toHaveLength(128);
  });

  it("never signs the attestation binding's preimage: userData ‖ nonce beginning with the attest label is refused, however it is split", async () => {
    const calls: Buffer[] = [];
    const rec: IssuerImpl = { ...fakeIssuer("tpm"), document: async (rd) => (calls.push(rd), rd) };
    const nonce = randomBytes(32);
    const spki = randomBytes(32);
    const preimage = Buffer.concat([Buffer.from("tdxvm-attest-v1", "utf8"), Buffer.from([0]), nonce, spki]);
    // The relay's request: exactly the bytes /v1/attest has the TPM sign (SHA-256 of the preimage) …
    expect(tdxsReportData(preimage, Buffer.alloc(0)).subarray(0, 32).equals(attestBinding("sha256", nonce, spki))).toBe(true);
    for (const [userData, n] of [[preimage, Buffer.alloc(0)], [preimage.subarray(0, 5), preimage.subarray(5)], [Buffer.alloc(0), preimage], [preimage.subarray(0, 16), Buffer.alloc(0)]]) {
      const r = await handleTdxs(rec, JSON.stringify({ method: "issue", data: { userData: userData.toString("hex"), nonce: n.toString("hex") } }));
      expect([r.data, r.error]).toEqual([null, expect.stringMatching(/must not begin with "tdxvm-attest-v1\\0"/)]);
    }
    expect(calls).toEqual([]);
    // … while the label without its separator, or elsewhere, is ordinary user data.
    for (const u of [Buffer.from("tdxvm-attest-v1"), Buffer.concat([Buffer.from([1]), preimage])]) expect((await handleTdxs(rec, JSON.stringify({ method: "issue", data: { userData: u.toString("hex") } }))).error).toBeNull();
    expect(calls).toHaveLength(2);
  });

  it("JSON that is no request object (null, numbers, arrays, a null data) is an error answer, not a crash", async () => {
    for (const line of ["null", "42", "[]", '"issue"', '{"method":"issue","data":null}', '{"method":"issue","data":[1]}']) {
      const r = await handleTdxs(issuer, line);
      expect(r.data === null || line.includes("data")).toBe(true);
      if (!line.includes('"method"')) expect(r).toEqual({ data: null, error: "request must be a JSON object" });
    }
    // On the socket: the server answers each and keeps serving the next line.
    const dir = await tempDir("tdxvm-tdxs-");
    const sockPath = path.join(dir, "tdxs.sock");
    const srv = tdxsServer(issuer, () => undefined);
    await new Promise<void>((r) => srv.listen(sockPath, r));
    try {
      const lines = await new Promise<string[]>((resolve) => {
        const c = net.connect(sockPath);
        let buf = "";
        c.on("data", (d) => {
          buf += d;
          if (buf.split("\n").length > 3) {
            c.end();
            resolve(buf.trim().split("\n"));
          }
        });
        c.write('null\n[]\n{"method":"metadata"}\n');
      });
      expect(lines.map((l) => JSON.parse(l).error)).toEqual(["request must be a JSON object", "request must be a JSON object", null]);
    } finally {
      await new Promise((r) => srv.close(r));
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("bounded: a flooding client is paused (its requests wait in the socket, not in memory), quotes run at most TDXS_LIMITS.concurrent at once, and a client that leaves drops what it queued", async () => {
    let started = 0;
    let running = 0;
    let maxRunning = 0;
    const gates: Array<() => void> = [];
    const slow: IssuerImpl = {
      ...fakeIssuer("tdx"),
      document: async (rd) => {
        started++;
        maxRunning = Math.max(maxRunning, ++running);
        await new Promise<void>((r) => gates.push(r));
        running--;
        return rd;
      },
    };
    const dir = await tempDir("tdxvm-tdxs-");
    const sockPath = path.join(dir, "tdxs.sock");
    const srv = tdxsServer(slow, () => undefined);
    await new Promise<void>((r) => srv.listen(sockPath, r));
    const until = async (f: () => boolean) => {
      for (let i = 0; i < 200 && !f(); i++) await new Promise((r) => setTimeout(r, 10));
    };
    try {
      // One client floods 20,000 requests (1.2 MB); ten others send one each.
      const flood = net.connect(sockPath);
      const line = '{"method":"issue","data":{"userData":"01"}}\n';
      await new Promise<void>((r) => flood.once("connect", r));
      flood.write(line.repeat(20_000));
      const others = Array.from({ length: 10 }, () => net.connect(sockPath, function (this: net.Socket) { this.write(line); }));
      await until(() => started >= TDXS_LIMITS.concurrent);
      await new Promise((r) => setTimeout(r, 200));
      expect(maxRunning).toBe(TDXS_LIMITS.concurrent);
      // The flooding client's bytes sit unread: most of them are still in its own write buffer.
      expect(flood.writableLength).toBeGreaterThan(line.length * 1000);
      flood.destroy();
      // Let everything run: the flood adds at most what it had queued, the others one each.
      for (let i = 0; i < 400 && (gates.length || running); i++) {
        while (gates.length) gates.shift()!();
        await new Promise((r) => setTimeout(r, 5));
      }
      expect(started).toBeLessThanOrEqual(1 + TDXS_LIMITS.queuedPerClient + 10);
      expect(started).toBeGreaterThanOrEqual(10);
      expect(maxRunning).toBe(TDXS_LIMITS.concurrent);
      for (const o of others) o.destroy();
    } finally {
      while (gates.length) gates.shift()!();
      await new Promise((r) => srv.close(r));
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe("tdx issuer (configfs-tsm)", () => {
  /** A recording of configfs-tsm's behaviour: provider file, generation counter, outblob after inblob. */
  function recording(opts: { provider?: string; concurrent?: boolean } = {}): TsmOps & { written: Buffer[] } {
    const dirs = new Map<string, { gen: number; out?: Buffer }>();
    const written: Buffer[] = [];
    return {
      written,
      mkdir: async (d) => void dirs.set(d, { gen: 0 }),
      rmdir: async (d) => void dirs.delete(d),
      read: async (f) => {
        const d = dirs.get(path.dirname(f));
        if (!d) throw Object.assign(new Error("ENOENT"), { code: "ENOENT" });
        const name = path.basename(f);
        if (name === "provider") return Buffer.from(`${opts.provider ?? "tdx_guest"}\n`);
        if (name === "generation") return Buffer.from(`${d.gen}\n`);
        if (name === "outblob") {
          if (opts.concurrent) d.gen++;
          return d.out!;
        }
        throw new Error(`unexpected read ${name}`);
      },
      write: async (f, b) => {
        const d = dirs.get(path.dirname(f))!;
        written.push(b);
        d.gen++;
        d.out = QUOTE;
      },
    };
  }

  it("writes the 64-byte report data, returns the quote, checks provider and generation", async () => {
    const ops = recording();
    const tdx = new TdxIssuer("/tsm", ops);
    expect(await tdx.available()).toBe(true);
    const rd = randomBytes(64);
    expect((await tdx.quote(rd)).equals(QUOTE)).toBe(true);
    expect(ops.written).toEqual([rd]);
    await expect(tdx.quote(randomBytes(32))).rejects.toThrow(/64 bytes/);
    await expect(new TdxIssuer("/tsm", recording({ provider: "sev_guest" })).quote(rd)).rejects.toThrow(/not tdx_guest/);
    await expect(new TdxIssuer("/tsm", recording({ concurrent: true })).quote(rd)).rejects.toThrow(/concurrently/);
  });

  it("auto-selection picks tdx when configfs-tsm has a TDX provider, and binds nonce + TLS key into REPORTDATA", async () => {
    const ops = recording();
    const issuer = await chooseIssuer("auto", { paths: { tsmReport: "/tsm", tcgLog: "/nonexistent", ccel: "/nonexistent", systemdLog: "/nonexistent" }, tsm: ops });
    expect(issuer.name).toBe("tdx");
    const nonce = randomBytes(32);
    const spki = randomBytes(32);
    const ev = await issuer.evidence(nonce, spki);
    expect(ops.written[0].equals(attestBinding("sha512", nonce, spki))).toBe(true);
    expect(Buffer.from(ev.tdx!.quote, "base64").equals(QUOTE)).toBe(true);
    await expect(issuer.evidence(nonce, spki, { idObject: Buffer.alloc(2), encSecret: Buffer.alloc(2) })).rejects.toThrow(/not to a TD/);
  });

  it("never picks the simulator on its own, and fails clearly with nothing to attest with", async () => {
    const env = { paths: { tsmReport: "/nonexistent-tsm", tpmDevice: "/nonexistent-tpm" } };
    await expect(chooseIssuer("auto", env)).rejects.toThrow(/no attestation platform found/);
    const sim = await chooseIssuer("simulator", env);
    expect(sim.name).toBe("simulator");
    expect((await sim.evidence(randomBytes(32), randomBytes(32))).issuer).toBe("simulator");
  });
});

describe("agent pieces", () => {
  it("parses an HCL report: the TD report at 32, the runtime JSON after the IGVM request data", () => {
    const json = Buffer.from('{"keys":[{"kid":"HCLAkPub"}]}');
    const buf = Buffer.alloc(HCL_DATA_OFFSET + 20 + json.length);
    buf.fill(0xaa, 32, 32 + 1024);
    buf.writeUInt32LE(4, HCL_DATA_OFFSET + 8);
    buf.writeUInt32LE(json.length, HCL_DATA_OFFSET + 16);
    json.copy(buf, HCL_DATA_OFFSET + 20);
    const r = parseHclReport(buf);
    expect(r.reportType).toBe(4);
    expect(r.tdReport.equals(Buffer.alloc(1024, 0xaa))).toBe(true);
    expect(r.runtimeData.equals(json)).toBe(true);
    buf.writeUInt32LE(1 << 20, HCL_DATA_OFFSET + 16);
    expect(() => parseHclReport(buf)).toThrow(/runs past/);
  });

  it("TPM client: refuses a malformed credential before sending anything, and a TPM response that lies about itself", async () => {
    // A scripted TPM: each command gets the next canned response; what was sent is kept.
    const scripted = (responses: Buffer[]): TpmTransport & { sent: Buffer[] } => {
      const sent: Buffer[] = [];
      return { sent, send: async (c) => (sent.push(c), responses.shift() ?? Buffer.alloc(0)), close: async () => undefined };
    };
    const response = (rc: number, body: Buffer = Buffer.alloc(0), size = 10 + body.length) => {
      const h = Buffer.alloc(10);
      h.writeUInt16BE(0x8001, 0);
      h.writeUInt32BE(size, 2);
      h.writeUInt32BE(rc, 6);
      return Buffer.concat([h, body]);
    };
    const t = scripted([]);
    await expect(new Tpm2(t).activateCredential(0x80000001, 0x80000000, Buffer.from([0, 5, 1]), Buffer.from([0, 1, 0xcc]))).rejects.toThrow(/idObject is not a size-prefixed TPM2B/);
    expect(t.sent).toHaveLength(0);
    // An NV index the TPM does not have (TPM_RC_HANDLE on handle 1): undefined, nothing more asked.
    const missing = scripted([response(0x18b)]);
    expect(await new Tpm2(missing).nvRead(0x01400001)).toBeUndefined();
    expect(missing.sent).toHaveLength(1);
    expect(missing.sent[0]!.toString("hex")).toBe("8001" + "0000000e" + "00000169" + "01400001"); // TPM2_NV_ReadPublic(0x01400001)
    // A failure names the command and where the TPM says the fault is.
    const refused = new Tpm2(scripted([response(0x1d5)])).pcrRead([0]);
    await expect(refused).rejects.toThrow(TpmResponseError);
    await expect(new Tpm2(scripted([response(0x1d5)])).pcrRead([0])).rejects.toThrow("TPM2_PCR_Read failed: TPM_RC 0x1d5 (error 0x95 in parameter 1)");
    // A size field that does not match what arrived, and a PCR the TPM was not asked for.
    await expect(new Tpm2(scripted([response(0, Buffer.alloc(4), 99)])).pcrRead([0])).rejects.toThrow(/says 99 bytes, 14 arrived/);
    const pcr7 = Buffer.concat([Buffer.from("00000001" + "00000001" + "000b" + "03" + "800000" + "00000001" + "0020", "hex"), Buffer.alloc(32)]);
    await expect(new Tpm2(scripted([response(0, pcr7)])).pcrRead([0])).rejects.toThrow(/returned PCR 7, which was not asked for/);
    // TPM_RC_RETRY (swtpm answers a quote with it at times): the same command again, then its answer.
    const value = Buffer.alloc(32, 0xab);
    const pcr0 = Buffer.concat([Buffer.from("00000001" + "00000001" + "000b" + "03" + "010000" + "00000001" + "0020", "hex"), value]);
    const retried = scripted([response(0x922), response(0, pcr0)]);
    expect((await new Tpm2(retried).pcrRead([0])).get(0)).toEqual(value);
    expect(retried.sent).toHaveLength(2);
    expect(retried.sent[1]).toEqual(retried.sent[0]);
  });

  it("reads only a well-formed config", () => {
    const ok = { agentVersion: 1, issuer: "auto", listen: { host: "0.0.0.0", port: 8443 }, secretsContract: null, tdxs: null };
    expect(parseConfig(JSON.stringify(ok)).listen.port).toBe(8443);
    expect(() => parseConfig(JSON.stringify({ ...ok, issuer: "fake" }))).toThrow(/unknown issuer/);
    expect(() => parseConfig(JSON.stringify({ ...ok, listen: { port: 0 } }))).toThrow(/port/);
  });
});
