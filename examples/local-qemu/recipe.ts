/**
 * The default example image: a small Debian trixie TDX guest that
 * - runs tdxvm's agent: an attestation endpoint (HTTPS :8443; evidence bound to a verifier's nonce
 *   and the agent's TLS key), the secrets receiver (Init) and the tdxs quote socket (Tdxs);
 * - hands the delivered API_TOKEN to `tdxvm-demo.service`, which starts only once the secret is in
 *   place and reports, on the console, that it got it (length, mode and a 32-bit fingerprint —
 *   never the value);
 * - runs `tdxvm-demo-quote.service`, an application asking the tdxs socket for a quote over its
 *   own user data;
 * - prints its measured-boot state (TPM PCRs, TCG2 event log, systemd's log) on the serial
 *   console at every boot (BootReport), so a host can compare it with tdxvm's predictions.
 * Used by the Pulumi program in this folder (index.ts, the root Pulumi.yaml's program), by the CLI
 * (`npx tdxvm run examples/local-qemu/recipe.ts`), by examples/fleet and by CI.
 */
import { Image, Policy, BootReport, Init, Tdxs, SecretSchema, SecretTarget } from "../../provider";

/** The console line the demo service prints once it has its secret. */
export const DEMO_SECRET_LINE = "TDXVM-DEMO-SECRET";
/** The console line the demo application prints after asking the tdxs socket for a quote. */
export const DEMO_QUOTE_LINE = "TDXVM-DEMO-QUOTE";
/** The user data the demo application binds into its quote (hex). */
export const DEMO_USER_DATA = Buffer.from("tdxvm demo application").toString("hex");

const DEMO_SERVICE = `[Unit]
Description=tdxvm demo: an application that needs API_TOKEN (started by the secrets handoff)

[Service]
Type=oneshot
RemainAfterExit=yes
StandardOutput=journal+console
ExecStart=/usr/local/bin/tdxvm-demo
`;

// Prints facts about the secret, never the secret: its length, its file mode and a 32-bit fingerprint.
const DEMO_SCRIPT = `#!/bin/sh
set -eu
f=/run/tdxvm/api-token
echo "${DEMO_SECRET_LINE} env-length=\${#API_TOKEN} file-mode=$(stat -c %a "$f") file-owner=$(stat -c %U "$f") fingerprint=$(sha256sum "$f" | cut -c1-8)"
`;

const DEMO_QUOTE_SERVICE = `[Unit]
Description=tdxvm demo: an application asking the tdxs socket for a quote
After=tdxs.socket tdxvm-agent.service
Requires=tdxs.socket

[Service]
Type=oneshot
DynamicUser=yes
SupplementaryGroups=tdx
StandardOutput=journal+console
ExecStart=/usr/bin/node /usr/local/lib/tdxvm-demo-quote.js

[Install]
WantedBy=multi-user.target
`;

// An application's view of tdxs: one JSON request per line on /var/tdxs.sock.
const DEMO_QUOTE_JS = `"use strict";
const net = require("net");
const { createHash } = require("crypto");
const s = net.connect("/var/tdxs.sock");
let buf = "";
s.on("data", (d) => {
  buf += d;
  if (!buf.includes("\\n")) return;
  const r = JSON.parse(buf.slice(0, buf.indexOf("\\n")));
  if (r.error) { console.log("${DEMO_QUOTE_LINE} error=" + JSON.stringify(r.error)); process.exit(1); }
  const doc = Buffer.from(r.data.document, "hex");
  console.log("${DEMO_QUOTE_LINE} userData=${DEMO_USER_DATA} sha256=" + createHash("sha256").update(doc).digest("hex") + " document=" + r.data.document);
  s.end();
});
s.on("error", (e) => { console.log("${DEMO_QUOTE_LINE} error=" + JSON.stringify(e.message)); process.exit(1); });
s.write(JSON.stringify({ method: "issue", data: { userData: "${DEMO_USER_DATA}", nonce: "" } }) + "\\n");
`;

/**
 * `motd` lands in the root file system, a dm-verity protected erofs (rootfs "verity", the default)
 * whose root hash is on the UKI's kernel command line: changing it changes PCR 4/9/11 and RTMR1/2.
 * `cmdline` words land in the UKI directly.
 */
export function recipe(projectDir = __dirname, opts: { motd?: string; cmdline?: string[] } = {}): Image {
  const img = new Image({ base: "debian/trixie", hostname: "tdxvm-demo", projectDir })
    .file("/etc/motd", { content: opts.motd ?? "tdxvm demo image\n" })
    .outputTargets("qemu", "azure", "gcp")
    .setPolicy(new Policy({ mutableRefPolicy: "error" }))
    .file("/usr/local/bin/tdxvm-demo", { content: DEMO_SCRIPT, mode: 0o755 })
    .file("/etc/systemd/system/tdxvm-demo.service", { content: DEMO_SERVICE })
    .file("/usr/local/lib/tdxvm-demo-quote.js", { content: DEMO_QUOTE_JS })
    .file("/etc/systemd/system/tdxvm-demo-quote.service", { content: DEMO_QUOTE_SERVICE })
    .run("systemctl", "enable", "tdxvm-demo-quote.service")
    .use(
      // A run-time secret (never baked): delivered after attestation, e.g. `pulumi config set --secret apiToken …`.
      new Init({
        secrets: { API_TOKEN: { required: true, schema: SecretSchema.string({ minLength: 16 }), targets: [SecretTarget.file("/run/tdxvm/api-token", { mode: 0o400 }), SecretTarget.env("API_TOKEN")] } },
        handoff: "tdxvm-demo.service",
      }),
      new Tdxs(),
      new BootReport(),
    );
  if (opts.cmdline?.length) img.cmdline(...opts.cmdline);
  return img;
}

export default recipe;
