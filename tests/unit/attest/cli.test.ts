/**
 * `tdxvm attest` and attest() against the guest agent's own HTTPS server (agent/server.ts) with its
 * simulator issuer: argument handling, exit codes, the table and --json, the simulator refused
 * unless allowed (and then labelled), a malformed --expected file, an endpoint nobody serves.
 */
import { promises as fs } from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { chooseIssuer } from "../../../agent/issuers";
import { agentServer } from "../../../agent/server";
import { newTlsIdentity } from "../../../agent/tls";
import { main } from "../../../provider/cli";
import { SecretsReceiver } from "../../../agent/secrets";
import { SecretTarget, declareSecret } from "../../../provider/secrets";
import { attest, assertAttested, parseEndpoint } from "../../../provider/attest/client";
import { measurementsToJson, Measurements, parseEventLog, replayLog } from "../../../provider/measure";
import { tempDir, tdxErrorOf } from "../../helpers";

const attestCommand = (argv: string[]) => main(["attest", ...argv]);

/** The simulator serves a real TCG event log (measure fixture, google/go-eventlog); PCR 4 as it replays. */
const TCG_LOG = path.join(__dirname, "..", "measure", "fixtures", "tpm-eventlog-arch-linux.bin");
const log = parseEventLog(require("node:fs").readFileSync(TCG_LOG) as Buffer);
const pcr4Events = log.events.filter((e) => e.index === 4 && e.typeName !== "EV_NO_ACTION");
const expected: Measurements = {
  measurementsVersion: 1, backend: "azure", inputs: {},
  registers: {
    PCR4: {
      alg: "sha256", value: replayLog(log.events).get(4)!.get("sha256")!.toString("hex"), status: "exact",
      events: pcr4Events.map((e, i) => ({ type: e.typeName, description: `event ${i + 1}`, origin: "arch-linux log", digest: e.digests.find((d) => d.alg === "sha256")!.digest.toString("hex") })),
    },
    PCR13: { alg: "sha256", value: "00".repeat(32), status: "zero", events: [] },
  },
};

let dir: string;
let secretsRoot: string;
let port: number;
let stop: () => Promise<unknown>;
let out: string[];
let err: string[];

beforeAll(async () => {
  dir = await tempDir("tdxvm-attest-cli-");
  const issuer = await chooseIssuer("simulator", { paths: { tcgLog: TCG_LOG, systemdLog: path.join(dir, "none") } });
  // The owner: a key written by `tdxvm owner-key new`, as a user would make it.
  expect(await main(["owner-key", "new", path.join(dir, "owner")])).toBe(0);
  const owner = (await fs.readFile(path.join(dir, "owner.pub"), "utf8")).trim();
  secretsRoot = path.join(dir, "root");
  await fs.mkdir(secretsRoot);
  const secrets = new SecretsReceiver({ contractVersion: 1, delivery: { method: "http_post", completion: "required", rejectUnknown: true }, handoff: null, owner, secrets: [declareSecret("TOKEN", { targets: [SecretTarget.file("/run/app/token")] })] }, { root: secretsRoot });
  const server = agentServer({ issuer, tls: newTlsIdentity(), secrets, log: () => undefined });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  port = (server.address() as net.AddressInfo).port;
  stop = async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  };
  await fs.writeFile(path.join(dir, "m.json"), measurementsToJson(expected));
});
afterAll(async () => {
  await stop?.();
  await fs.rm(dir, { recursive: true, force: true });
});
beforeEach(() => {
  out = [];
  err = [];
  jest.spyOn(console, "log").mockImplementation((m: unknown) => void out.push(String(m)));
  jest.spyOn(console, "error").mockImplementation((m: unknown) => void err.push(String(m)));
});
afterEach(() => jest.restoreAllMocks());

describe("tdxvm attest", () => {
  it("refuses the simulator (exit 3) and says why in the table", async () => {
    expect(await attestCommand([`127.0.0.1:${port}`, "--expected", path.join(dir, "m.json")])).toBe(3);
    const table = out.join("\n");
    expect(table).toMatch(/^issuer\s+FAIL\s+the agent offers simulator evidence, which no platform signed; refused/m);
    expect(table).toMatch(/FAILED: 127\.0\.0\.1:\d+ \(TLS key SPKI SHA-256 [0-9a-f]{64}\), issuer simulator, 0\/1 checks/);
  });

  it("accepts it only with --allow-simulator, and every row says SIMULATOR (--json)", async () => {
    const code = await attestCommand([`127.0.0.1:${port}`, "--expected", path.join(dir, "m.json"), "--allow-simulator", "--json"]);
    expect(code).toBe(0);
    const v = JSON.parse(out.join("\n"));
    expect(v.issuer).toBe("simulator");
    expect(v.checks.map((c: { detail: string }) => c.detail)).toEqual([expect.stringMatching(/^SIMULATOR/), expect.stringMatching(/^SIMULATOR/)]);
    expect(v.registers).toHaveLength(2);
    expect(v.registers).toEqual(expect.arrayContaining([
      expect.objectContaining({ register: "PCR4", ok: true, replayed: expected.registers.PCR4!.value, reported: null, note: "SIMULATOR: from unsigned event logs, not platform-signed" }),
      expect.objectContaining({ register: "PCR13", ok: true, note: "SIMULATOR: from unsigned event logs, not platform-signed" }),
    ]));
    expect(v.evidence).toBeUndefined();
  });

  it("bad arguments exit 2 with the usage", async () => {
    expect(await attestCommand([])).toBe(2);
    expect(await attestCommand([`127.0.0.1:${port}`])).toBe(2);
    expect(err.join("\n")).toMatch(/required option '--expected <file>' not specified/);
    expect(await attestCommand([`127.0.0.1:${port}`, "--expected", path.join(dir, "m.json"), "--frobnicate"])).toBe(2);
    expect(await attestCommand(["not an endpoint", "--expected", path.join(dir, "m.json")])).toBe(2);
  });

  it("refuses a malformed measurements file, naming the field", async () => {
    await fs.writeFile(path.join(dir, "bad.json"), JSON.stringify({ ...expected, registers: { PCR4: { ...expected.registers.PCR4, value: "XYZ" } } }));
    expect(await attestCommand([`127.0.0.1:${port}`, "--expected", path.join(dir, "bad.json")])).toBe(2);
    expect(err.join("\n")).toMatch(/E_VALIDATION: --expected .*registers\.PCR4\.value/);
  });
});

describe("tdxvm owner-key and provision", () => {
  it("owner-key new writes a 0600 private key and its public key, and never overwrites one", async () => {
    expect(((await fs.stat(path.join(dir, "owner.key"))).mode & 0o777).toString(8)).toBe("600");
    expect(await fs.readFile(path.join(dir, "owner.pub"), "utf8")).toMatch(/^ed25519:[A-Za-z0-9+/]{43}=\n$/);
    const before = await fs.readFile(path.join(dir, "owner.key"), "utf8");
    expect(await main(["owner-key", "new", path.join(dir, "owner")])).toBe(2);
    expect(err.join("\n")).toMatch(/E_VALIDATION: .*owner\.key exists/);
    expect(await fs.readFile(path.join(dir, "owner.key"), "utf8")).toBe(before);
  });

  it("provision sends nothing to a VM that fails attestation, refuses another owner's key, and delivers with the owner's", async () => {
    const token = "provisioned-token-value";
    await fs.writeFile(path.join(dir, "secrets.json"), JSON.stringify({ TOKEN: token }));
    const args = (key: string, ...extra: string[]) => ["provision", `127.0.0.1:${port}`, "--expected", path.join(dir, "m.json"), "--owner-key", key, "--secrets", path.join(dir, "secrets.json"), ...extra];
    // The simulator is refused: exit 3, nothing sent.
    expect(await main(args(path.join(dir, "owner.key")))).toBe(3);
    expect(err.join("\n")).toMatch(/nothing was sent/);
    // Attested (simulator allowed), but signed by another key: the VM refuses it (401), nothing stored.
    expect(await main(["owner-key", "new", path.join(dir, "intruder")])).toBe(0);
    expect(await main(args(path.join(dir, "intruder.key"), "--allow-simulator"))).toBe(2);
    expect(err.join("\n")).toMatch(/E_DEPLOYMENT: the attested VM refused the secrets \(HTTP 401/);
    await expect(fs.stat(path.join(secretsRoot, "run/app/token"))).rejects.toMatchObject({ code: "ENOENT" });
    // The owner's key: delivered.
    const code = await main(args(path.join(dir, "owner.key"), "--allow-simulator"));
    expect(code).toBe(0);
    expect(await fs.readFile(path.join(secretsRoot, "run/app/token"), "utf8")).toBe(token);
    expect([...out, ...err].join("\n")).not.toContain(token);
  });
});

describe("attest()", () => {
  it("an endpoint nobody serves is a failed verdict naming the connection, and assertAttested throws E_ATTESTATION", async () => {
    const free = await new Promise<number>((r) => { const s = net.createServer().listen(0, "127.0.0.1", () => { const p = (s.address() as net.AddressInfo).port; s.close(() => r(p)); }); });
    const v = await attest(`127.0.0.1:${free}`, expected, { timeoutMs: 5_000 });
    expect(v).toMatchObject({ ok: false, issuer: "unknown", checks: [{ check: "connect", ok: false }] });
    const e = await tdxErrorOf(() => assertAttested(v));
    expect(e.code).toBe("E_ATTESTATION");
    expect(e.message).toMatch(/connect: GET https:\/\/127\.0\.0\.1:\d+\/v1\/health/);
    expect(e.hint).toMatch(/Nothing was sent/);
  });

  it("parses endpoints", () => {
    expect(parseEndpoint("10.0.0.5:8443")).toEqual({ host: "10.0.0.5", port: 8443 });
    expect(parseEndpoint("https://vm.example:443/")).toEqual({ host: "vm.example", port: 443 });
    expect(parseEndpoint("[::1]:8443")).toEqual({ host: "::1", port: 8443 });
    expect(() => parseEndpoint("vm.example")).toThrow(/not host:port/);
    expect(() => parseEndpoint("vm:99999")).toThrow(/not host:port/);
  });
});

describe("the verdict table says how each register is pinned", () => {
  it("WAIVED rows carry their reason, NOT PINNED rows fail, the summary names waivers and the matched host shape", async () => {
    const { formatVerdict } = await import("../../../provider/attest/cli");
    const row = (register: string, pin: string, ok: boolean, extra: Record<string, unknown> = {}) => ({ register, status: "platform-defined" as const, pin: pin as never, expected: null, reported: "ab".repeat(48), replayed: null, ok, problems: ok ? [] : ["not pinned: the platform signed a value nobody vouches for (VM shape)"], ...extra });
    const text = formatVerdict({
      ok: false, issuer: "tdx", matched: "qemu-10.1", durationMs: 1200, checks: [{ check: "issuer", ok: true, detail: "tdx" }],
      registers: [row("RTMR0", "waived", true, { waiver: "lab host", note: "WAIVED (lab host)" }), row("MRTD", "unpinned", false)],
    });
    expect(text).toMatch(/^RTMR0\s+waived\s+—\s+abababababababab…abababab\s+—\s+WAIVED \(lab host\)$/m);
    expect(text).toMatch(/^MRTD\s+unpinned\s+.*NOT PINNED: not pinned: the platform signed a value nobody vouches for \(VM shape\)$/m);
    expect(text).toMatch(/^FAILED: the agent, issuer tdx, host shape qemu-10.1, 1\/1 checks, 1\/2 registers \(WAIVED: RTMR0\), 1\.20 s$/m);
  });

  it("--waive takes REG:reason (repeatable); a bad one is a usage error before anything is asked", async () => {
    const file = path.join(dir, "expected-waive.json");
    await fs.writeFile(file, measurementsToJson(expected));
    const code = await attestCommand(["127.0.0.1:1", "--expected", file, "--waive", "RTMRO:typo"]);
    expect(code).toBe(2);
    expect(err.join("\n")).toMatch(/E_VALIDATION: --waive: "RTMRO" is not a register name/);
  });
});
