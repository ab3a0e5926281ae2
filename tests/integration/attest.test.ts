/**
 * attest() end to end against real parts: swtpm manufactured with an EK certificate from the
 * per-host local CA (as a dev VM's), the guest agent's own code (agent/issuers, agent/server,
 * agent/tls) serving HTTPS on the host with tpm2-tools inside the tools tree, and the verifier
 * talking to it over TLS. Proves: credential activation by the real tpm2_activatecredential
 * (RSA and ECC P-256 EKs), the verdict, the channel binding against a TLS-terminating relay, the
 * pinned channel, and that startVm manufactures the dev VM's TPM with a local-CA EK certificate.
 */
import { promises as fs, realpathSync } from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import * as tls from "node:tls";
import { createHash, randomBytes, X509Certificate } from "node:crypto";
import { chooseIssuer } from "../../agent/issuers";
import { agentServer } from "../../agent/server";
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
    const upstream = tls.connect({ host: "127.0.0.1", port: to, rejectUnauthorized: false });
    client.on("data", (d: Buffer) => (appBytes += d.length));
    client.pipe(upstream).pipe(client);
    const end = () => { client.destroy(); upstream.destroy(); };
    client.on("error", end);
    upstream.on("error", end);
  });
  server.on("tlsClientError", () => undefined);
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

  beforeAll(async () => {
    dir = await tempDir("tdxvm-attest-");
    toolsRoot = realpathSync((await ensureToolsTree({ cacheDir: defaultCacheDir(), mirror: DEFAULT_DEBIAN.mirror })).root);
    ca = await ensureLocalCa(path.join(dir, "cache"), toolsRoot);
    tpm = await startSwtpm(path.join(dir, "tpm"), { ekCa: ca });
    expect((await tpm.exec("tpm2_pcrextend", [`4:sha256=${EVENT.toString("hex")}`])).code).toBe(0);
    const issuer = await chooseIssuer("tpm", { exec: tpm.exec, workDir: path.join(dir, "tpm", "agent"), tpmEnv: tpm.env, paths: { tcgLog: path.join(dir, "none"), systemdLog: path.join(dir, "none") } });
    const server = agentServer({ issuer, tls: newTlsIdentity(), log: () => undefined });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as net.AddressInfo).port;
    close = async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
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
  it("swtpm_setup issues RSA and ECC EK certificates signed by the per-host CA (CA bound read-only)", async () => {
    const dir = await tempDir("tdxvm-ekvm-");
    try {
      const toolsRoot = realpathSync((await ensureToolsTree({ cacheDir: defaultCacheDir(), mirror: DEFAULT_DEBIAN.mirror })).root);
      const disk = path.join(dir, "empty.raw");
      await fs.writeFile(disk, Buffer.alloc(1024 * 1024)); // no OS: OVMF finds nothing to boot; only the TPM matters here
      const cacheDir = path.join(dir, "cache");
      const vm = await startVm({ toolsRoot, disk, stateDir: path.join(dir, "vm"), accel: "tcg", cacheDir, memoryMiB: 256, cpus: 1, pcrBanks: ["sha256"] });
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
