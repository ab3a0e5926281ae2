/**
 * Attestation benchmarks on the swtpm path (the agent's own code on the host against swtpm from the
 * tools tree, as tests/integration/attest.test.ts runs it), each row next to a baseline measured in
 * the same run:
 * - one attestation, nonce → verdict, in process (target ≤ 1 s) vs one bare TPM2_Quote + PCR_Read
 *   on a connection of its own (the TPM's own floor);
 * - `tdxvm attest` as a process (target ≤ 2 s) vs the in-process attestation and `node -e 0`;
 * - 16 agents (16 swtpm) attested concurrently by one verifier (target ≤ 2× one).
 */
import { execFile, execFileSync, spawn } from "node:child_process";
import { promisify } from "node:util";
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { chooseIssuer } from "../../agent/issuers";
import { QUOTE_PCRS } from "../../agent/issuers/tpm";
import { openTpmSocket, Tpm2 } from "../../agent/tpm2";
import { agentServer } from "../../agent/server";
import { newTlsIdentity } from "../../agent/tls";
import { attest } from "../../provider/attest/client";
import { ensureLocalCa, LocalCa } from "../../provider/attest/localca";
import { ensureToolsTree } from "../../provider/bake/toolsTree";
import { defaultCacheDir, measurementsToJson } from "../../provider";
import { DEFAULT_DEBIAN } from "../../provider/lock";
import type { Measurements } from "../../provider/measure";
import { startSwtpm, Swtpm } from "../integration/swtpm";

const execFileAsync = promisify(execFile);
const CLI = path.join(__dirname, "..", "..", "bin", "tdxvm.js");
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const secs = (s: number) => `${s.toFixed(3)} s`;
const EVENT = createHash("sha256").update("tdxvm attest bench").digest();
const expected: Measurements = {
  measurementsVersion: 1, backend: "azure", inputs: {},
  registers: {
    PCR4: { alg: "sha256", value: createHash("sha256").update(Buffer.concat([Buffer.alloc(32), EVENT])).digest("hex"), status: "exact", events: [] },
    PCR9: { alg: "sha256", value: "00".repeat(32), status: "zero", events: [] },
  },
};

async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t0 = process.hrtime.bigint();
  const v = await fn();
  return [Number(process.hrtime.bigint() - t0) / 1e9, v];
}

type Agent = { tpm: Swtpm; port: number; ca: LocalCa; close: () => Promise<unknown> };

/**
 * `n` agents, each on its own swtpm (manufactured with the local CA in `dir`/cache, as the dev VM's
 * TPM is), with PCR 4 extended by EVENT and the agent's keys made, listening on 127.0.0.1.
 */
export async function startAgents(dir: string, n: number, first = 0): Promise<Agent[]> {
  process.setMaxListeners(64); // swtpm sandboxes, each with its signal forwarding
  const toolsRoot = (await ensureToolsTree({ cacheDir: defaultCacheDir(), mirror: DEFAULT_DEBIAN.mirror })).root;
  const ca = await ensureLocalCa(path.join(dir, "cache"), toolsRoot);
  return Promise.all(Array.from({ length: n }, async (_, k) => {
    const i = first + k;
    const tpm = await startSwtpm(path.join(dir, `tpm-${i}`), { ekCa: ca });
    if ((await tpm.exec("tpm2_pcrextend", [`4:sha256=${EVENT.toString("hex")}`])).code !== 0) throw new Error("tpm2_pcrextend failed");
    const issuer = await chooseIssuer("tpm", { tpmSocket: tpm.socket, paths: { tcgLog: path.join(dir, "none"), systemdLog: path.join(dir, "none") } });
    await issuer.keys(); // the agent makes its keys at start
    const server = agentServer({ issuer, tls: newTlsIdentity(), log: () => undefined });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    return { tpm, port: (server.address() as net.AddressInfo).port, ca, close: async () => { server.closeAllConnections(); await new Promise((r) => server.close(r)); await tpm.stop(); } };
  }));
}

/** `fn` on a connection of its own to the swtpm at `socket`. */
async function onTpm<T>(socket: string, fn: (tpm: Tpm2) => Promise<T>): Promise<T> {
  const t = await openTpmSocket(socket);
  try {
    return await fn(new Tpm2(t));
  } finally {
    await t.close();
  }
}

/** CPU time the whole machine spent busy so far (all cores, seconds), from /proc/stat. */
async function machineBusy(): Promise<number> {
  const f = (await fs.readFile("/proc/stat", "utf8")).split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  return (f.reduce((a, b) => a + b, 0) - f[3]! - f[4]!) / 100; // all but idle and iowait, in USER_HZ (100)
}

/** The fleet's agents in a process of their own (tests/bench/attestAgents.ts): this process's CPU is then the verifier's alone. */
async function agentsProcess(dir: string, n: number): Promise<{ ports: number[]; stop: () => Promise<void> }> {
  const child = spawn(process.execPath, ["-r", "@swc-node/register", path.join(__dirname, "attestAgents.ts"), dir, String(n)], { cwd: path.join(__dirname, "..", ".."), stdio: ["pipe", "pipe", "inherit"] });
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  const ports = await new Promise<number[]>((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const line = out.split("\n").find((l) => l.startsWith("{"));
      if (line) resolve((JSON.parse(line) as { ports: number[] }).ports);
    });
    void exited.then(() => reject(new Error(`the agents' process exited before it was ready: ${out}`)));
  });
  return { ports, stop: async () => { child.stdin!.end(); await exited; } };
}

export async function attestBench(table: (t: string, h: string[], r: string[][]) => string): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "tdxvm-bench-attest-"));
  const agents: Agent[] = [];
  let fleetAgents: Awaited<ReturnType<typeof agentsProcess>> | undefined;
  try {
    agents.push(...(await startAgents(dir, 1)));
    fleetAgents = await agentsProcess(dir, 16);
    const one = agents[0]!;
    const ca = one.ca;
    const opts = { localCaPem: ca.certificatePem };
    const ok = async (port: number) => {
      const v = await attest(`127.0.0.1:${port}`, expected, opts);
      if (!v.ok) throw new Error(`attestation failed: ${JSON.stringify(v.checks.filter((c) => !c.ok))}`);
    };
    await ok(one.port); // warm
    // The baseline's own AK in agent 0's TPM, kept as a saved context as the agent keeps its own.
    const akContext = await onTpm(one.tpm.socket, async (tpm) => {
      const ek = await tpm.createEk();
      const ak = await tpm.createAk(ek.handle);
      const saved = await tpm.contextSave(ak.handle);
      await tpm.flush(ak.handle);
      await tpm.flush(ek.handle);
      return saved;
    });
    const quote: number[] = [];
    const single: number[] = [];
    const fleet: number[] = [];
    for (let i = 0; i < 5; i++) {
      quote.push((await timed(async () => {
        // What the TPM itself does for one attestation: load the AK, quote the PCRs the agent quotes, read them.
        await onTpm(one.tpm.socket, async (tpm) => {
          const ak = await tpm.contextLoad(akContext);
          await tpm.quote(ak, Buffer.alloc(32), QUOTE_PCRS);
          await tpm.pcrRead(QUOTE_PCRS);
          await tpm.flush(ak);
        });
      }))[0]);
      single.push((await timed(() => ok(one.port)))[0]);
    }
    await Promise.all(fleetAgents.ports.map((p) => ok(p))); // warm
    const cpu0 = process.cpuUsage();
    const busy0 = await machineBusy();
    for (let i = 0; i < 3; i++) fleet.push((await timed(() => Promise.all(fleetAgents!.ports.map((p) => ok(p)))))[0]);
    const busy = (await machineBusy()) - busy0;
    const used = process.cpuUsage(cpu0);
    const verifierCpu = (used.user + used.system) / 1e6 / 3; // per round of 16
    // The CLI as a process.
    const m = path.join(dir, "m.json");
    const caPem = path.join(dir, "ca.pem");
    await fs.writeFile(m, measurementsToJson(expected));
    await fs.writeFile(caPem, ca.certificatePem);
    const proc: number[] = [];
    const node: number[] = [];
    for (let i = 0; i < 3; i++) {
      proc.push((await timed(async () => {
        try {
          // Asynchronously: the agent answering it lives in this process.
          await execFileAsync(process.execPath, [CLI, "--quiet", "attest", `127.0.0.1:${one.port}`, "--expected", m, "--ca", caPem], { encoding: "utf8" });
        } catch (e) {
          throw new Error(`tdxvm attest failed:\n${(e as { stdout?: string }).stdout ?? ""}${(e as { stderr?: string }).stderr ?? ""}`, { cause: e });
        }
      }))[0]);
      node.push((await timed(async () => execFileSync(process.execPath, ["-e", "0"], { stdio: "ignore" })))[0]);
    }
    const [q, s, f, p, n] = [median(quote), median(single), median(fleet), median(proc), median(node)];
    const cores = os.cpus().length;
    console.log(table("Attestation on the swtpm path (the agent's code on the host; median of 5, fleet and process of 3)", ["operation", "time", "baseline", "baseline time", "ratio", "target", "meets target"], [
      ["one attestation, nonce → verdict (in process)", secs(s), "one bare TPM2_Quote + PCR_Read", secs(q), `${(s / q).toFixed(2)}×`, "≤ 1 s", s <= 1 ? "yes" : "NO"],
      ["`tdxvm attest` as a process", secs(p), "the in-process attestation + node -e 0", secs(s + n), `${(p / (s + n)).toFixed(2)}×`, "≤ 2 s", p <= 2 ? "yes" : "NO"],
      // The 16 agents (each a VM in a fleet) and their swtpm share this machine's cores with the verifier here.
      ["16 agents (16 swtpm, another process, same cores) attested at once by one verifier", secs(f), "one attestation", secs(s), `${(f / s).toFixed(2)}×`, "≤ 2×", f / s <= 2 ? "yes" : "NO"],
      // Where those seconds go: the verifier's own CPU (this process) against everything the machine did meanwhile.
      [`  the verifier's CPU in those 16 (${secs(verifierCpu / 16)} per attestation)`, secs(verifierCpu), `the machine's busy CPU in the same time (${cores} cores)`, secs(busy / 3), `${((100 * verifierCpu) / (busy / 3)).toFixed(0)} %`, "—", "—"],
      // The lower bound for the row above on this machine: that CPU (agents, swtpm, verifier) spread perfectly over every core.
      [`  the floor here: that busy CPU over ${cores} cores`, secs(busy / 3 / cores), "one attestation", secs(s), `${(busy / 3 / cores / s).toFixed(2)}×`, "—", "—"],
    ]));
  } finally {
    await fleetAgents?.stop();
    await Promise.all(agents.map((a) => a.close()));
    await fs.rm(dir, { recursive: true, force: true });
  }
}
