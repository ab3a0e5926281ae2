/**
 * Tdxs module: a tdxs-compatible quote socket for applications in the VM (docs/design.md §7):
 * systemd's `tdxs.socket` at /var/tdxs.sock (mode 0660, group tdx), served by the tdxvm agent with
 * the same issuers as its attestation endpoint, configured by /etc/tdxs/config.yaml. Applications
 * in group `tdx` ask for quotes with their own user data.
 *
 * `binary: {src, integrity}` installs an upstream tdxs binary instead (fetched with its integrity,
 * pinned by the lock) and runs it on the same socket; the agent then serves only HTTPS.
 */
import { TdxError } from "../errors";
import type { Image, TdxModule } from "../recipe/image";
import { ensureAgent, AgentOptions, AgentIssuer, AGENT_UNIT } from "./agent";

export const TDXS_SOCKET = "/var/tdxs.sock";
export const TDXS_CONFIG = "/etc/tdxs/config.yaml";
export const TDXS_GROUP = "tdx";

export interface TdxsOptions extends AgentOptions {
  /** Install this upstream tdxs binary (pinned by integrity) and let it serve the socket. */
  binary?: { src: string; integrity: string };
}

const socketUnit = (service: string) => `[Unit]
Description=tdxs quote socket

[Socket]
ListenStream=${TDXS_SOCKET}
SocketMode=0660
SocketUser=root
SocketGroup=${TDXS_GROUP}
Service=${service}

[Install]
WantedBy=sockets.target
`;

const TDXS_SERVICE = `[Unit]
Description=tdxs (upstream binary) quote service
Requires=tdxs.socket
After=tdxs.socket

[Service]
ExecStart=/usr/local/bin/tdxs --config ${TDXS_CONFIG}
NoNewPrivileges=yes
`;

export class Tdxs implements TdxModule {
  readonly name = "tdxs";
  readonly version = "1";
  constructor(private readonly opts: TdxsOptions = {}) {
    if (opts.binary && (typeof opts.binary.src !== "string" || typeof opts.binary.integrity !== "string")) {
      throw new TdxError("E_VALIDATION", "Tdxs binary needs {src, integrity}", { hint: 'new Tdxs({binary: {src: "https://…/tdxs", integrity: "sha256-…"}})' });
    }
  }

  install(img: Image): void {
    const issuer: AgentIssuer = this.opts.issuer ?? "auto";
    // YAML that is also JSON: the agent reads it with JSON.parse, tdxs with its YAML parser.
    const config = { transport: { type: "socket", config: { systemd: true } }, issuer: { type: issuer } };
    img
      .file("/usr/lib/sysusers.d/tdxvm-tdxs.conf", { content: `g ${TDXS_GROUP} -\n` })
      .file(TDXS_CONFIG, { content: JSON.stringify(config, null, 2) + "\n", mode: 0o644 });
    if (this.opts.binary) {
      ensureAgent(img, this.opts);
      img
        .file("/usr/local/bin/tdxs", { src: this.opts.binary.src, integrity: this.opts.binary.integrity, mode: 0o755 })
        .file("/etc/systemd/system/tdxs.service", { content: TDXS_SERVICE })
        .file("/etc/systemd/system/tdxs.socket", { content: socketUnit("tdxs.service") });
    } else {
      ensureAgent(img, this.opts, (c) => (c.tdxs = { path: TDXS_SOCKET, group: TDXS_GROUP, mode: 0o660 }));
      img
        .file("/etc/systemd/system/tdxs.socket", { content: socketUnit(AGENT_UNIT) })
        .file(`/etc/systemd/system/${AGENT_UNIT}.d/20-tdxs-socket.conf`, { content: "[Unit]\nRequires=tdxs.socket\nAfter=tdxs.socket\n\n[Service]\nSockets=tdxs.socket\n" });
    }
    img.run("systemctl", "enable", "tdxs.socket");
  }
}
