/**
 * Issuers: what the VM can have the platform sign, chosen at run time by what the VM has (or by
 * name in the agent's config). Order for "auto": a TD quote (configfs-tsm) beats an Azure vTPM
 * (HCL report) beats a plain TPM. The simulator is never chosen automatically: only a recipe that
 * names it gets it, and its evidence says "simulator" (a verifier refuses it unless told not to).
 */
import { promises as fs, existsSync } from "node:fs";
import { attestBinding, Evidence, Issuer } from "../protocol";
import { TpmIssuer, AZURE_HCL_REPORT_NV } from "./tpm";
import { openTpmDevice, openTpmSocket, TpmTransport } from "../tpm2";
import { TdxIssuer, readCcel, TsmOps } from "./tdx";
import { parseHclReport, imdsTdQuote, isTdxHclReport } from "./azure";

export const TCG_LOG = "/sys/kernel/security/tpm0/binary_bios_measurements";
export const SYSTEMD_LOG = "/run/log/systemd/tpm2-measure.log";

export interface KeysAnswer { issuer: Issuer; tpm?: { akPublic: string; ekPublic?: string; ekCertificate?: string; akCertificate?: string } }

export interface IssuerImpl {
  readonly name: Issuer;
  keys(): Promise<KeysAnswer>;
  /** Evidence bound to nonce and TLS key; `credential` (dev TPM only) is activated and its secret returned. */
  evidence(nonce: Buffer, spkiSha256: Buffer, credential?: { idObject: Buffer; encSecret: Buffer }): Promise<Evidence>;
  /** A platform document over 64 bytes of report data (the tdxs socket's "issue"). */
  document(reportData: Buffer): Promise<Buffer>;
}

export interface IssuerEnv {
  /** Overridable paths (tests). */
  paths?: { tsmReport?: string; tcgLog?: string; systemdLog?: string; ccel?: string; tpmDevice?: string };
  /** configfs operations (tests pass a recording of the kernel's behaviour). */
  tsm?: TsmOps;
  /** A TPM on a socket (swtpm's data socket, in tests) instead of the device. */
  tpmSocket?: string;
  imds?: { host?: string; port?: number };
}

async function eventLogs(env: IssuerEnv, withCcel: boolean): Promise<Evidence["eventLogs"]> {
  const tcg = await fs.readFile(env.paths?.tcgLog ?? TCG_LOG).catch(() => undefined);
  const systemd = await fs.readFile(env.paths?.systemdLog ?? SYSTEMD_LOG, "utf8").catch(() => undefined);
  const ccel = withCcel ? await readCcel(env.paths?.ccel) : undefined;
  return { ...(tcg ? { tcg: tcg.toString("base64") } : {}), ...(ccel ? { ccel: ccel.toString("base64") } : {}), ...(systemd !== undefined ? { systemd } : {}) };
}

const b64 = (b: Buffer | undefined) => (b ? b.toString("base64") : undefined);

/** The TPM: the socket when one is given, else the kernel's resource manager (/dev/tpmrm0). */
function tpmOpener(env: IssuerEnv): () => Promise<TpmTransport> {
  const socket = env.tpmSocket;
  return socket ? () => openTpmSocket(socket) : () => openTpmDevice(env.paths?.tpmDevice ?? "/dev/tpmrm0");
}

function tpmIssuer(env: IssuerEnv, flavour: "tpm" | "azure"): IssuerImpl {
  const tpm = new TpmIssuer(tpmOpener(env), flavour);
  const keys = async (): Promise<KeysAnswer> => {
    const k = await tpm.init();
    return { issuer: flavour, tpm: { akPublic: k.akPublic.toString("base64"), ekPublic: b64(k.ekPublic), ekCertificate: b64(k.ekCertificate), akCertificate: b64(k.akCertificate) } };
  };
  return {
    name: flavour,
    keys,
    async evidence(nonce, spki, credential) {
      const k = (await keys()).tpm!;
      const activatedSecret = credential ? (await tpm.activate(credential.idObject, credential.encSecret)).toString("base64") : undefined;
      const q = await tpm.quote(attestBinding("sha256", nonce, spki));
      const ev: Evidence = {
        evidenceVersion: 1, issuer: flavour, nonce: nonce.toString("hex"), spkiSha256: spki.toString("hex"),
        tpm: { ...k, ...q, ...(activatedSecret ? { activatedSecret } : {}) },
        eventLogs: await eventLogs(env, false),
      };
      if (flavour === "azure") {
        const hcl = await tpm.nvRead(AZURE_HCL_REPORT_NV);
        if (!hcl) throw new Error(`the vTPM has no HCL report at NV ${AZURE_HCL_REPORT_NV}`);
        const report = parseHclReport(hcl);
        ev.azure = { hclReport: hcl.toString("base64"), ...(isTdxHclReport(report) ? { tdQuote: (await imdsTdQuote(report.tdReport, env.imds)).toString("base64") } : {}) };
      }
      return ev;
    },
    async document(reportData) {
      const q = await tpm.quote(reportData.subarray(0, 32));
      const k = (await keys()).tpm!;
      return Buffer.from(JSON.stringify({ issuer: flavour, akPublic: k.akPublic, ...q }), "utf8");
    },
  };
}

function tdxIssuer(env: IssuerEnv): IssuerImpl {
  const tdx = new TdxIssuer(env.paths?.tsmReport, env.tsm);
  return {
    name: "tdx",
    keys: async () => ({ issuer: "tdx" }),
    async evidence(nonce, spki, credential) {
      if (credential) throw new Error("credential activation applies to the dev VM's TPM, not to a TD");
      const quote = await tdx.quote(attestBinding("sha512", nonce, spki));
      return { evidenceVersion: 1, issuer: "tdx", nonce: nonce.toString("hex"), spkiSha256: spki.toString("hex"), tdx: { quote: quote.toString("base64") }, eventLogs: await eventLogs(env, true) };
    },
    document: (reportData) => tdx.quote(reportData),
  };
}

/** NOT platform-signed: a stand-in for development, only when a recipe names it. */
function simulatorIssuer(env: IssuerEnv): IssuerImpl {
  return {
    name: "simulator",
    keys: async () => ({ issuer: "simulator" }),
    async evidence(nonce, spki) {
      return { evidenceVersion: 1, issuer: "simulator", nonce: nonce.toString("hex"), spkiSha256: spki.toString("hex"), eventLogs: await eventLogs(env, false) };
    },
    document: async (reportData) => Buffer.from(JSON.stringify({ issuer: "simulator", signed: false, reportData: reportData.toString("hex") })),
  };
}

/** The issuer named in the config, or the best one this VM has ("auto"). */
export async function chooseIssuer(wanted: Issuer | "auto", env: IssuerEnv): Promise<IssuerImpl> {
  if (wanted === "simulator") return simulatorIssuer(env);
  if (wanted === "tdx") return tdxIssuer(env);
  if (wanted === "tpm" || wanted === "azure") return tpmIssuer(env, wanted);
  if (await new TdxIssuer(env.paths?.tsmReport, env.tsm).available()) return tdxIssuer(env);
  const device = env.paths?.tpmDevice ?? "/dev/tpmrm0";
  if (existsSync(device) || env.tpmSocket) {
    const probe = new TpmIssuer(tpmOpener(env), "azure");
    const hcl = await probe.nvRead(AZURE_HCL_REPORT_NV).catch(() => undefined);
    if (hcl) {
      try {
        if (isTdxHclReport(parseHclReport(hcl))) return tpmIssuer(env, "azure");
      } catch {
        // not an HCL report: a plain TPM
      }
    }
    return tpmIssuer(env, "tpm");
  }
  throw new Error("no attestation platform found: no configfs-tsm TDX provider, no TPM (set issuer in /etc/tdxvm/agent.json to choose one)");
}
