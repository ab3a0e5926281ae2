/**
 * tdxvm-agent: the program tdxvm bakes into images that use the Agent, Init or Tdxs modules, run
 * by systemd (tdxvm-agent.service) with Debian's nodejs. It proves what the VM runs (platform-
 * signed evidence bound to a verifier's nonce and this process's TLS key), receives the secrets
 * once a verifier is satisfied, and serves the tdxs quote socket to applications.
 * Configuration: /etc/tdxvm/agent.json (written by the modules; part of the measured image).
 */
import { readFileSync, existsSync, promises as fs } from "node:fs";

import { execTool } from "./exec";
import { chooseIssuer } from "./issuers";
import { newTlsIdentity } from "./tls";
import { agentServer } from "./server";
import { SecretsReceiver, Contract } from "./secrets";
import { tdxsServer } from "./tdxs";
import { ISSUERS, Issuer } from "./protocol";

export const AGENT_CONFIG = "/etc/tdxvm/agent.json";
export const READY_MARKER = "TDXVM-AGENT-READY"; // provider/modules/agent.ts AGENT_READY

export interface AgentConfig {
  agentVersion: 1;
  issuer: Issuer | "auto";
  listen: { host: string; port: number };
  /** The Init module's contract; null: no secrets receiver. */
  secretsContract: string | null;
  /** The Tdxs module's socket: served from systemd's socket (LISTEN_FDS) or created at `path`. */
  tdxs: { path: string; group: string; mode: number } | null;
}

export function parseConfig(text: string): AgentConfig {
  const c = JSON.parse(text) as AgentConfig;
  if (c.agentVersion !== 1) throw new Error(`agent config version ${String(c.agentVersion)} is not 1`);
  if (c.issuer !== "auto" && !ISSUERS.includes(c.issuer)) throw new Error(`unknown issuer ${JSON.stringify(c.issuer)}`);
  if (!Number.isInteger(c.listen?.port) || c.listen.port < 1 || c.listen.port > 65535) throw new Error("listen.port must be a TCP port");
  return c;
}

const log = (m: string) => console.error(`tdxvm-agent: ${m}`);

async function main(configFile: string): Promise<void> {
  const cfg = parseConfig(readFileSync(configFile, "utf8"));
  const issuer = await chooseIssuer(cfg.issuer, {});
  await issuer.keys(); // create the TPM keys now: fail at start, not at the first verifier
  const tls = newTlsIdentity();
  const secrets = cfg.secretsContract && existsSync(cfg.secretsContract)
    ? new SecretsReceiver(JSON.parse(readFileSync(cfg.secretsContract, "utf8")) as Contract, { exec: execTool, log })
    : undefined;
  const server = agentServer({ issuer, tls, secrets, log });
  await new Promise<void>((resolve, reject) => server.once("error", reject).listen(cfg.listen.port, cfg.listen.host, resolve));
  if (cfg.tdxs) {
    const sock = tdxsServer(issuer, log);
    if (process.env.LISTEN_FDS === "1" && process.env.LISTEN_PID === String(process.pid)) sock.listen({ fd: 3 });
    else {
      await fs.rm(cfg.tdxs.path, { force: true });
      await new Promise<void>((resolve) => sock.listen(cfg.tdxs!.path, resolve));
      await fs.chmod(cfg.tdxs.path, cfg.tdxs.mode);
    }
  }
  // One line on the console (StandardOutput=journal+console): hosts wait for it, verifiers can log it.
  console.log(`${READY_MARKER} issuer=${issuer.name} port=${cfg.listen.port} spki-sha256=${tls.spkiSha256.toString("hex")} secrets=${secrets ? (secrets.complete ? "complete" : "pending") : "none"}`);
  const stop = () => server.close(() => process.exit(0));
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);
}

/** Entry point (the bundle calls it; `node agent/main.ts [config]` in development). */
export function run(configFile = process.argv[2] ?? AGENT_CONFIG): void {
  main(configFile).catch((e: Error) => {
    log(`fatal: ${e.message}`);
    process.exit(1);
  });
}

if (require.main === module) run();


