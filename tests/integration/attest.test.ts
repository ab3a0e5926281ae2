/**
 * attest() end to end against real parts: swtpm manufactured with an EK certificate from the
 * per-host local CA (as a dev VM's), the guest agent's own code (agent/issuers, agent/server,
 * agent/tls) serving HTTPS on the host, its TPM commands sent to swtpm's socket, and the verifier
 * talking to it over TLS. Proves: credential activation by the agent in the real TPM (and by
 * tpm2_activatecredential for an ECC P-256 EK), the verdict, the channel binding against a TLS-terminating relay, the
 * pinned channel, and that startVm manufactures the dev VM's TPM with a local-CA EK certificate.
 */
import { promises as fs, existsSync, realpathSync } from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import * as tls from "node:tls";
import { createHash, randomBytes, X509Certificate } from "node:crypto";
import { chooseIssuer } from "../../agent/issuers";
import { agentServer } from "../../agent/server";
import { tdxsServer, ATTEST_PREFIX } from "../../agent/tdxs";
import { attestBinding, Evidence } from "../../agent/protocol";
import * as https from "node:https";
import { newTlsIdentity } from "../../agent/tls";
import { attest, pinnedRequest, Verdict } from "../../provider/attest/client";
import { ensureLocalCa, LocalCa } from "../../provider/attest/localca";
import { makeCredential } from "../../provider/attest/credential";
import { objectName, parseTpm2bPublic } from "../../provider/attest/tpm2";
import { formatVerdict } from "../../provider/attest/cli";
import type { Measurements } from "../../provider/measure";
import { startVm, stopVm } from "../../provider/deploy/qemu";
import { ensureToolsTree } from "../../provider/bake/toolsTree";
import { defaultCacheDir } from "../../provider";
import { DEFAULT_DEBIAN } from "../../provider/lock";
import { startSwtpm, Swtpm } from "./swtpm";
import { tempDir } from "../helpers";

jest.setTimeout(10 * 60_000);

const EVENT = createHash("sha256").update("tdxvm attest test").digest();
const PCR4 = createHash("sha256").update(Buffer.concat([Buffer.alloc(32), EVENT])).digest("hex");
const expected = (pcr4 = PCR4): Measurements => ({
  measurementsVersion: 1, backend: "azure", inputs: {},
  registers: {
    PCR4: { alg: "sha256", value: pcr4, status: "exact", events: [] },
    PCR9: { alg: "sha256", value: "00".repeat(32), status: "zero", events: [] },
    PCR11: { alg: "sha256", value: "00".repeat(32), status: "zero", events: [] },
  },
});

/** A TLS-terminating relay with its own key: what a man in the middle would have to run. */
async function relay(to: number) {
  const id = newTlsIdentity("relay");
  let appBytes = 0;
  const server = tls.createServer({ key: id.keyPem, cert: id.certPem }, (client) => {
    // Error handlers first: a client that hangs up on the relay's certificate (the pinned channel
    // does) resets both sides, and an unhandled 'error' would fail the test process.
    const upstream = tls.connect({ host: "127.0.0.1", port: to, rejectUnauthorized: false });
    const end = () => { client.destroy(); upstream.destroy(); };
    client.on("error", end);
    upstream.on("error", end);
    client.on("close", end);
    upstream.on("close", end);
    client.on("data", (d: Buffer) => (appBytes += d.length));
    client.pipe(upstream).pipe(client);
  });
  server.on("tlsClientError", () => undefined);
  server.on("error", () => undefined);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { port: (server.address() as net.AddressInfo).port, appBytes: () => appBytes, close: () => new Promise((r) => server.close(r)) };
}

describe("attest() against the agent on a real TPM", () => {
  let dir: string;
  let toolsRoot: string;
  let ca: LocalCa;
  let tpm: Swtpm;
  let port: number;
  let close: () => Promise<unknown>;
  let first: Verdict;
  let tdxsPath: string;
  let issuerOf: (flavour: "tpm" | "azure") => ReturnType<typeof chooseIssuer>;

  beforeAll(async () => {
    dir = await tempDir("tdxvm-attest-");
    toolsRoot = realpathSync((await ensureToolsTree({ cacheDir: defaultCacheDir(), mirror: DEFAULT_DEBIAN.mirror })).root);
    ca = await ensureLocalCa(path.join(dir, "cache"), toolsRoot);
    tpm = await startSwtpm(path.join(dir, "tpm"), { ekCa: ca });
    expect((await tpm.exec("tpm2_pcrextend", [`4:sha256=${EVENT.toString("hex")}`])).code).toBe(0);
    issuerOf = (flavour) => chooseIssuer(flavour, { tpmSocket: tpm.socket, paths: { tcgLog: path.join(dir, "none"), systemdLog: path.join(dir, "none") } });
    const issuer = await issuerOf("tpm");
    const server = agentServer({ issuer, tls: newTlsIdentity(), log: () => undefined });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as net.AddressInfo).port;
    // The same agent's tdxs socket, as any process in group tdx (e.g. the demo app) reaches it.
    tdxsPath = path.join(dir, "tdxs.sock");
    const sock = tdxsServer(issuer, () => undefined);
    await new Promise<void>((r) => sock.listen(tdxsPath, r));
    close = async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      await new Promise((r) => sock.close(r));
    };
  });

  afterAll(async () => {
    await close?.();
    await tpm?.stop();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it("verifies: EK certificate from the local CA, credential activated, quote signed and bound to this TLS key, PCRs as predicted", async () => {
    first = await attest(`127.0.0.1:${port}`, expected(), { localCaPem: ca.certificatePem });
    console.log(formatVerdict(first));
    expect(first.checks.filter((c) => !c.ok)).toEqual([]);
    expect(first.checks.map((c) => c.check)).toEqual(["issuer", "ek-certificate", "credential-activation", "ak-attributes", "quote-structure", "quote-signature", "channel-binding", "pcr-digest"]);
    expect(first.registers.map((r) => [r.register, r.ok, r.reported])).toEqual([["PCR4", true, PCR4], ["PCR9", true, "00".repeat(32)], ["PCR11", true, "00".repeat(32)]]);
    expect(first.ok).toBe(true);
    expect(first.channel!.spkiSha256).toBe(createHash("sha256").update(new X509Certificate(first.channel!.certificatePem).publicKey.export({ type: "spki", format: "der" })).digest("hex"));
  });

  it("measures one attestation (nonce → verdict) with the agent's keys already made", async () => {
    const times: number[] = [];
    for (let i = 0; i < 3; i++) {
      const v = await attest(`127.0.0.1:${port}`, expected(), { localCaPem: ca.certificatePem });
      expect(v.ok).toBe(true);
      times.push(v.durationMs);
    }
    console.log(`attestation against swtpm: first ${(first.durationMs / 1000).toFixed(2)} s (agent creates EK/AK), then ${times.map((t) => (t / 1000).toFixed(2)).join(" / ")} s`);
  });

  it("refuses a VM whose PCRs are not the expected measurement's, naming the register", async () => {
    const v = await attest(`127.0.0.1:${port}`, expected("ab".repeat(32)), { localCaPem: ca.certificatePem });
    expect(v.ok).toBe(false);
    expect(v.checks.every((c) => c.ok)).toBe(true);
    expect(v.registers.find((r) => r.register === "PCR4")).toMatchObject({ ok: false, problems: [expect.stringMatching(/≠ expected abab/)] });
  });

  it("refuses an EK certificate from another CA", async () => {
    const other = await ensureLocalCa(path.join(dir, "other-cache"), toolsRoot);
    const v = await attest(`127.0.0.1:${port}`, expected(), { localCaPem: other.certificatePem });
    expect(v.checks.filter((c) => !c.ok).map((c) => c.check)).toEqual(["ek-certificate"]);
  });

  it("refuses a relay that terminates TLS with its own key, and the pinned channel never talks to it", async () => {
    const r = await relay(port);
    try {
      const v = await attest(`127.0.0.1:${r.port}`, expected(), { localCaPem: ca.certificatePem });
      expect(v.ok).toBe(false);
      expect(v.checks.filter((c) => !c.ok).map((c) => c.check)).toEqual(["channel-binding"]);
      const before = r.appBytes();
      const pinned = { ...first.channel!, port: r.port };
      await expect(pinnedRequest(pinned, { method: "POST", path: "/v1/secrets", body: { TOKEN: "must never reach the relay" } })).rejects.toMatchObject({ code: "E_ATTESTATION" });
      expect(r.appBytes()).toBe(before);
      const direct = await pinnedRequest(first.channel!, { method: "GET", path: "/v1/health" });
      expect(direct.status).toBe(200);
    } finally {
      await r.close();
    }
  });

  it("refuses the tdxs relay: a relay with its own TLS key has the agent's tdxs quote its binding while the honest agent activates the credential — no document, a failed verdict, nothing reaches its /v1/secrets", async () => {
    const id = newTlsIdentity("relay");
    const relaySpki = createHash("sha256").update(new X509Certificate(id.certPem).publicKey.export({ type: "spki", format: "der" })).digest();
    const tdxsAnswers: Array<string | null> = [];
    let secretsRequests = 0;
    const issue = (userData: Buffer, nonce: Buffer) => new Promise<{ data: { document: string } | null; error: string | null }>((resolve, reject) => {
      const c = net.connect(tdxsPath);
      let buf = "";
      c.on("data", (d) => {
        buf += d;
        if (buf.includes("\n")) {
          c.end();
          resolve(JSON.parse(buf.slice(0, buf.indexOf("\n"))));
        }
      });
      c.on("error", reject);
      c.write(JSON.stringify({ method: "issue", data: { userData: userData.toString("hex"), nonce: nonce.toString("hex") } }) + "\n");
    });
    const upstream = (method: string, p: string, body?: Buffer) => new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
      const req = https.request({ host: "127.0.0.1", port, method, path: p, rejectUnauthorized: false, agent: false, headers: body ? { "content-type": "application/json", "content-length": body.length } : {} }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (x: Buffer) => chunks.push(x));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
      });
      req.on("error", reject);
      req.end(body);
    });
    const relayServer = https.createServer({ key: id.keyPem, cert: id.certPem }, (req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (x: Buffer) => chunks.push(x));
      req.on("end", async () => {
        const body = Buffer.concat(chunks);
        if (req.url === "/v1/secrets") secretsRequests++;
        if (req.method === "POST" && req.url === "/v1/attest") {
          // The honest agent activates the credential (it activates anyone's) and quotes for ITS key …
          const honest = await upstream("POST", "/v1/attest", body);
          const ev = JSON.parse(honest.body.toString("utf8")) as Evidence;
          // … and the relay asks tdxs for the bytes /v1/attest signs, bound to the RELAY's key, split every way.
          const preimage = Buffer.concat([ATTEST_PREFIX, Buffer.from(ev.nonce, "hex"), relaySpki]);
          for (const cut of [preimage.length, 0, 1, ATTEST_PREFIX.length, ATTEST_PREFIX.length + 5]) {
            const a = await issue(preimage.subarray(0, cut), preimage.subarray(cut));
            tdxsAnswers.push(a.error);
            if (a.data) {
              const doc = JSON.parse(Buffer.from(a.data.document, "hex").toString("utf8"));
              ev.tpm = { ...ev.tpm!, quote: doc.quote, signature: doc.signature };
              ev.spkiSha256 = relaySpki.toString("hex");
              break;
            }
          }
          res.writeHead(200, { "content-type": "application/json" });
          return res.end(JSON.stringify(ev));
        }
        const r = await upstream(req.method!, req.url!, body.length ? body : undefined);
        res.writeHead(r.status, { "content-type": "application/json" });
        res.end(r.body);
      });
    });
    await new Promise<void>((r) => relayServer.listen(0, "127.0.0.1", r));
    try {
      const v = await attest(`127.0.0.1:${(relayServer.address() as net.AddressInfo).port}`, expected(), { localCaPem: ca.certificatePem });
      // tdxs refused every split; without that guard the first would have yielded a quote over exactly the binding.
      expect(tdxsAnswers).toHaveLength(5);
      expect(tdxsAnswers.every((e) => /must not begin with "tdxvm-attest-v1\\0"/.test(e ?? ""))).toBe(true);
      expect(v.ok).toBe(false);
      expect(v.checks.filter((c) => !c.ok).map((c) => c.check)).toEqual(["channel-binding"]);
      expect(secretsRequests).toBe(0); // the provider sends nothing after a failed verdict
    } finally {
      relayServer.closeAllConnections();
      await new Promise((r) => relayServer.close(r));
    }
  });

  it("the guard is what stops it, for the tpm and the azure issuer alike: the same issuer's document over the binding's preimage would be a quote over exactly the bytes /v1/attest signs", async () => {
    const nonce = randomBytes(32);
    const spki = randomBytes(32);
    const preimage = Buffer.concat([ATTEST_PREFIX, nonce, spki]);
    const { tdxsReportData } = await import("../../agent/protocol");
    const { handleTdxs } = await import("../../agent/tdxs");
    // Azure's vTPM keeps its AK persistent at 0x81000003: give this swtpm one there.
    const d = path.join(dir, "tpm");
    const persisted = await tpm.exec("/bin/sh", ["-c", `cd ${d} && tpm2_flushcontext -t && tpm2_createek -c az-ek.ctx -G rsa -u az-ek.pub >/dev/null && tpm2_createak -C az-ek.ctx -c az-ak.ctx -G ecc -g sha256 -s ecdsa -u az-ak.pub -n az-ak.name >/dev/null && tpm2_flushcontext -t && tpm2_evictcontrol -C o -c az-ak.ctx 0x81000003 >/dev/null && tpm2_flushcontext -t`]);
    expect(persisted.stderr).toBe("");
    for (const flavour of ["tpm", "azure"] as const) {
      const issuer = await issuerOf(flavour);
      await issuer.keys(); // as the agent does at start
      // Through tdxs: refused, whichever issuer serves it.
      const viaSocket = await handleTdxs(issuer, JSON.stringify({ method: "issue", data: { userData: preimage.toString("hex"), nonce: "" } }));
      expect({ flavour, error: viaSocket.error }).toEqual({ flavour, error: expect.stringMatching(/attestation binding/) });
      // Without the guard (the issuer asked directly): the TPM quote's qualifying data is the binding itself.
      const doc = JSON.parse((await issuer.document(tdxsReportData(preimage, Buffer.alloc(0)))).toString("utf8"));
      const q = Buffer.from(doc.quote, "base64");
      const signer = q.readUInt16BE(6);
      const extra = q.subarray(10 + signer, 10 + signer + q.readUInt16BE(8 + signer));
      expect({ flavour, extra: extra.toString("hex") }).toEqual({ flavour, extra: attestBinding("sha256", nonce, spki).toString("hex") });
    }
  });

  it("makeCredential for an ECC P-256 EK is activated by the real TPM (and not for another name)", async () => {
    const d = path.join(dir, "tpm");
    const sh = (s: string) => tpm.exec("/bin/sh", ["-c", `cd ${d} && ${s}`]);
    expect((await sh("tpm2_createek -c ekecc.ctx -G ecc -u ekecc.pub >/dev/null && tpm2_createak -C ekecc.ctx -c akecc.ctx -G ecc -g sha256 -s ecdsa -u akecc.pub -n akecc.name >/dev/null")).code).toBe(0);
    const ek = parseTpm2bPublic(await fs.readFile(path.join(d, "ekecc.pub")));
    const name = objectName(parseTpm2bPublic(await fs.readFile(path.join(d, "akecc.pub"))));
    const head = Buffer.from("badcc0de00000001", "hex");
    const activate = async (n: Buffer) => {
      const secret = randomBytes(32);
      const c = makeCredential(ek, n, secret);
      await fs.writeFile(path.join(d, "cred.in"), Buffer.concat([head, c.idObject, c.encSecret]));
      const r = await sh("tpm2_startauthsession --policy-session -S s.ctx && tpm2_policysecret -S s.ctx -c e >/dev/null && tpm2_activatecredential -c akecc.ctx -C ekecc.ctx -i cred.in -o cred.out -P session:s.ctx >/dev/null; rc=$?; tpm2_flushcontext s.ctx; exit $rc");
      return r.code === 0 && (await fs.readFile(path.join(d, "cred.out"))).equals(secret);
    };
    expect(await activate(name)).toBe(true);
    const other = Buffer.from(name);
    other[10] ^= 1;
    expect(await activate(other)).toBe(false);
  });
});

describe("startVm manufactures the dev VM's TPM with a local-CA EK certificate", () => {
  it("swtpm_setup issues RSA and ECC EK certificates signed by the per-host CA, which the running VM's sandbox never sees", async () => {
    const dir = await tempDir("tdxvm-ekvm-");
    try {
      const toolsRoot = realpathSync((await ensureToolsTree({ cacheDir: defaultCacheDir(), mirror: DEFAULT_DEBIAN.mirror })).root);
      const disk = path.join(dir, "empty.raw");
      await fs.writeFile(disk, Buffer.alloc(1024 * 1024)); // no OS: OVMF finds nothing to boot; only the TPM matters here
      const cacheDir = path.join(dir, "cache");
      const vm = await startVm({ toolsRoot, disk, stateDir: path.join(dir, "vm"), accel: "tcg", cacheDir, memoryMiB: 256, cpus: 1, pcrBanks: ["sha256"] });
      // QEMU's (and swtpm's) view of the file system: the VM state and the disk, not the CA's signing key.
      expect(existsSync(`/proc/${vm.pid}/root/vm`)).toBe(true);
      expect(existsSync(`/proc/${vm.pid}/root/localca/signkey.pem`)).toBe(false);
      await stopVm(vm, { keepState: true });
      const log = await fs.readFile(path.join(dir, "vm", "swtpm_setup.log"), "utf8");
      expect(log).toMatch(/Successfully created NVRAM area 0x1c00002 for RSA 2048 EK certificate/);
      expect(log).toMatch(/Successfully created NVRAM area 0x1c00016 for ECC EK certificate/);
      // Read the certificate back from the VM's TPM state and check it against the CA.
      await fs.cp(path.join(dir, "vm", "tpm"), path.join(dir, "tpm", "state"), { recursive: true });
      const again = await startSwtpm(path.join(dir, "tpm"));
      try {
        const out = path.join(dir, "tpm", "ek.der");
        expect((await again.exec("tpm2_nvread", ["0x01c00002", "-C", "o", "-o", out])).code).toBe(0);
        const cert = new X509Certificate(await fs.readFile(out));
        const ca = new X509Certificate(await fs.readFile(path.join(cacheDir, "localca", "issuercert.pem")));
        expect(cert.checkIssued(ca) && cert.verify(ca.publicKey)).toBe(true);
        expect(cert.keyUsage).toContain("2.23.133.8.1");
      } finally {
        await again.stop();
      }
      expect((await fs.stat(path.join(cacheDir, "localca"))).mode & 0o777).toBe(0o700);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
