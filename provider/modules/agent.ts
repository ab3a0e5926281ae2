/**
 * The Agent module: bakes tdxvm's guest agent (../../agent, bundled; see ./bundle.ts) into the
 * image, where it is measured with everything else (the verity root), and runs it with systemd.
 * Init (secrets receiver) and Tdxs (quote socket) extend the same agent; each adds its part to
 * /etc/tdxvm/agent.json, so any combination and order of the three modules gives one agent.
 *
 * What it adds to the image: Debian's nodejs (the runtime), tpm2-tools (for an operator on the
 * console; the agent's TPM issuers send their commands to /dev/tpmrm0 themselves), the
 * agent bundle (/usr/lib/tdxvm/agent.js), its unit, and DHCP networking through systemd-networkd
 * so a verifier can reach the endpoint.
 */
import { TdxError } from "../errors";
import type { Image, TdxModule } from "../recipe/image";

export const AGENT_PATH = "/usr/lib/tdxvm/agent.js";
export const AGENT_CONFIG_PATH = "/etc/tdxvm/agent.json";
export const AGENT_UNIT = "tdxvm-agent.service";
export const AGENT_PORT = 8443;
/** The console line the agent prints once it listens (a readiness pattern for VMs running it). */
export const AGENT_READY = "TDXVM-AGENT-READY";
export const AGENT_ISSUERS = ["auto", "tdx", "azure", "tpm", "simulator"] as const;
export type AgentIssuer = (typeof AGENT_ISSUERS)[number];

export interface AgentConfigData {
  agentVersion: 1;
  issuer: AgentIssuer;
  listen: { host: string; port: number };
  secretsContract: string | null;
  tdxs: { path: string; group: string; mode: number } | null;
}

export interface AgentOptions {
  /** "auto" (default): a TD quote if the VM is a TD, else the Azure vTPM, else the TPM. "simulator" only by name (never signed). */
  issuer?: AgentIssuer;
  /** TCP port of the HTTPS endpoint (default 8443). */
  port?: number;
}

// After=tdxvm-report.service: when the image has a BootReport, the agent's console line must not
// interleave with the report (ordering against a unit that does not exist is a no-op).
const UNIT = `[Unit]
Description=tdxvm agent: attestation evidence, secrets receiver, tdxs quote socket
After=systemd-networkd.service dev-tpmrm0.device tdxvm-report.service
Wants=dev-tpmrm0.device

[Service]
Type=simple
ExecStart=/usr/bin/node ${AGENT_PATH} ${AGENT_CONFIG_PATH}
Restart=on-failure
RestartSec=2
StandardOutput=journal+console
StandardError=journal
NoNewPrivileges=yes
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
`;

const NETWORK = `# tdxvm: DHCP on the VM's NICs, so the agent's endpoint is reachable.
[Match]
Name=en* eth*

[Network]
DHCP=yes
`;

function readConfig(img: Image): AgentConfigData | undefined {
  const f = img.recipe.base_layer.files.find((x) => x.path === AGENT_CONFIG_PATH);
  if (!f || f.source.kind !== "inline") return undefined;
  return JSON.parse(Buffer.from(f.source.data, f.source.encoding).toString("utf8")) as AgentConfigData;
}

/**
 * Install the agent if the image does not have it yet, then apply `change` to its configuration.
 * Used by Agent, Init and Tdxs.
 */
export function ensureAgent(img: Image, opts: AgentOptions, change: (c: AgentConfigData) => void = () => undefined): void {
  let cfg = readConfig(img);
  if (!cfg) {
    img
      .install("nodejs", "tpm2-tools")
      .file(AGENT_PATH, { builtin: "tdxvm-agent", mode: 0o755 })
      .file(`/etc/systemd/system/${AGENT_UNIT}`, { content: UNIT })
      .file("/etc/systemd/network/80-tdxvm-dhcp.network", { content: NETWORK })
      .run("systemctl", "enable", AGENT_UNIT, "systemd-networkd.service");
    cfg = { agentVersion: 1, issuer: "auto", listen: { host: "0.0.0.0", port: AGENT_PORT }, secretsContract: null, tdxs: null };
  }
  if (opts.issuer !== undefined) cfg.issuer = opts.issuer;
  if (opts.port !== undefined) cfg.listen.port = opts.port;
  change(cfg);
  img.file(AGENT_CONFIG_PATH, { content: JSON.stringify(cfg, null, 2) + "\n", mode: 0o644 });
}

export class Agent implements TdxModule {
  readonly name = "agent";
  readonly version = "1";
  constructor(private readonly opts: AgentOptions = {}) {
    if (opts.issuer !== undefined && !AGENT_ISSUERS.includes(opts.issuer)) throw new TdxError("E_VALIDATION", `unknown agent issuer ${JSON.stringify(opts.issuer)}`, { hint: `Issuers: ${AGENT_ISSUERS.join(", ")}.` });
    if (opts.port !== undefined && (!Number.isInteger(opts.port) || opts.port < 1 || opts.port > 65535)) throw new TdxError("E_VALIDATION", `agent port ${opts.port} is not a TCP port`);
  }

  install(img: Image): void {
    ensureAgent(img, this.opts);
  }
}

/** The issuer a recipe's agent is configured with (undefined: no agent). Read by the bake and the measurement. */
export function agentIssuerOf(files: ReadonlyArray<{ path: string; source: { kind: string; data?: string; encoding?: string } }>): AgentIssuer | undefined {
  const f = files.find((x) => x.path === AGENT_CONFIG_PATH);
  if (!f || f.source.kind !== "inline") return undefined;
  try {
    return (JSON.parse(Buffer.from(f.source.data ?? "", (f.source.encoding ?? "utf8") as BufferEncoding).toString("utf8")) as AgentConfigData).issuer;
  } catch {
    return undefined;
  }
}
