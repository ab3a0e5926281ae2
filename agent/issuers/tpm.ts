/**
 * The TPM issuers, through tpm2-tools (Debian's tpm2-tools 5.7 in the image; formats are its
 * defaults: TPM2B_PUBLIC for `-u`, TPMS_ATTEST for `tpm2_quote -m`, TPMT_SIGNATURE for `-s`).
 *
 * - tpm (dev VM under swtpm): the EK is recreated from the endorsement hierarchy's default RSA
 *   template, its certificate read from NV 0x01c00002 (TCG EK Credential Profile §2.2.1.4, where
 *   swtpm_setup --create-ek-cert stores it); an ECDSA P-256 AK is created under the EK. A verifier
 *   proves the AK lives in the same TPM by credential activation (TPM2_ActivateCredential).
 * - azure (DCesv5 vTPM): the platform's AK at persistent handle 0x81000003, its certificate in NV
 *   0x01C101D0 and the HCL report in NV 0x01400001 (Azure confidential VM guest attestation
 *   documentation). The TD quote comes from IMDS (./azure.ts).
 */
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { Exec, Mutex, run } from "../exec";
import type { TpmEvidence } from "../protocol";

/** PCRs quoted: the sha256 bank, 0–15 (16–23 are resettable/debug). */
export const QUOTE_PCRS = Array.from({ length: 16 }, (_, i) => i);
export const EK_CERT_NV_RSA = "0x01c00002";
export const AZURE_AK_HANDLE = "0x81000003";
export const AZURE_AK_CERT_NV = "0x01C101D0";
export const AZURE_HCL_REPORT_NV = "0x01400001";

/** tpm2-tools' credential file: magic 0xBADCC0DE, version 1, then TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET (tpm2-tools lib/files.c). */
export function credentialFile(idObject: Buffer, encSecret: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(0xbadcc0de, 0);
  head.writeUInt32BE(1, 4);
  for (const [what, b] of [["idObject", idObject], ["encSecret", encSecret]] as const) {
    if (b.length < 2 || b.readUInt16BE(0) !== b.length - 2) throw new Error(`credential ${what} is not a size-prefixed TPM2B`);
  }
  return Buffer.concat([head, idObject, encSecret]);
}

export interface TpmKeys { akPublic: Buffer; ekPublic?: Buffer; ekCertificate?: Buffer; akCertificate?: Buffer }

export class TpmIssuer {
  private readonly mutex = new Mutex();
  private keys?: TpmKeys;

  constructor(
    private readonly exec: Exec,
    /** A private directory for context files (tmpfs: /run/tdxvm-agent/tpm). */
    private readonly dir: string,
    readonly flavour: "tpm" | "azure",
    private readonly env: Record<string, string> = {},
  ) {}

  private f(name: string): string {
    return path.join(this.dir, name);
  }

  private tool(cmd: string, args: string[]): Promise<Buffer> {
    return run(this.exec, cmd, args, { env: this.env, timeoutMs: 60_000 });
  }

  private get ak(): string {
    return this.flavour === "azure" ? AZURE_AK_HANDLE : `${this.f("ak.ctx")}`;
  }

  /** Create (tpm) or read (azure) the keys once; later calls return them. */
  init(): Promise<TpmKeys> {
    return this.mutex.lock(async () => {
      if (this.keys) return this.keys;
      await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
      if (this.flavour === "azure") {
        await this.tool("tpm2_readpublic", ["-c", AZURE_AK_HANDLE, "-o", this.f("ak.pub")]);
        this.keys = { akPublic: await fs.readFile(this.f("ak.pub")), akCertificate: await this.nvRead(AZURE_AK_CERT_NV) };
        return this.keys;
      }
      await this.tool("tpm2_createek", ["-c", this.f("ek.ctx"), "-G", "rsa", "-u", this.f("ek.pub")]);
      await this.tool("tpm2_createak", ["-C", this.f("ek.ctx"), "-c", this.f("ak.ctx"), "-G", "ecc", "-g", "sha256", "-s", "ecdsa", "-u", this.f("ak.pub"), "-n", this.f("ak.name")]);
      this.keys = {
        akPublic: await fs.readFile(this.f("ak.pub")),
        ekPublic: await fs.readFile(this.f("ek.pub")),
        ekCertificate: await this.nvRead(EK_CERT_NV_RSA),
      };
      return this.keys;
    });
  }

  /** An NV index's contents, or undefined when it is not defined. */
  async nvRead(index: string): Promise<Buffer | undefined> {
    const out = this.f(`nv-${index}.bin`);
    const r = await this.exec("tpm2_nvread", [index, "-C", "o", "-o", out], { env: this.env });
    if (r.code !== 0) return undefined;
    return fs.readFile(out);
  }

  /** A quote over QUOTE_PCRS with `qualifyingData` (≤ 32 bytes here), plus the PCR values it covers. */
  quote(qualifyingData: Buffer): Promise<Pick<TpmEvidence, "quote" | "signature" | "pcrs">> {
    return this.mutex.lock(async () => {
      await this.tool("tpm2_quote", [
        "-c", this.ak, "-l", `sha256:${QUOTE_PCRS.join(",")}`, "-q", qualifyingData.toString("hex"), "-g", "sha256",
        "-m", this.f("quote.msg"), "-s", this.f("quote.sig"), "-o", this.f("quote.pcrs"), "-F", "values",
      ]);
      const values = await fs.readFile(this.f("quote.pcrs"));
      if (values.length !== 32 * QUOTE_PCRS.length) throw new Error(`tpm2_quote wrote ${values.length} bytes of PCR values, expected ${32 * QUOTE_PCRS.length}`);
      const sha256: Record<string, string> = {};
      QUOTE_PCRS.forEach((pcr, i) => (sha256[String(pcr)] = values.subarray(32 * i, 32 * i + 32).toString("hex")));
      return {
        quote: (await fs.readFile(this.f("quote.msg"))).toString("base64"),
        signature: (await fs.readFile(this.f("quote.sig"))).toString("base64"),
        pcrs: { sha256 },
      };
    });
  }

  /** TPM2_ActivateCredential with the AK and the EK (EK auth via a PolicySecret(endorsement) session). */
  activate(idObject: Buffer, encSecret: Buffer): Promise<Buffer> {
    if (this.flavour !== "tpm") return Promise.reject(new Error("credential activation is for the dev VM's TPM (the Azure AK is certified by Azure)"));
    return this.mutex.lock(async () => {
      await fs.writeFile(this.f("cred.in"), credentialFile(idObject, encSecret), { mode: 0o600 });
      const session = this.f("session.ctx");
      await this.tool("tpm2_startauthsession", ["--policy-session", "-S", session]);
      try {
        await this.tool("tpm2_policysecret", ["-S", session, "-c", "e"]);
        await this.tool("tpm2_activatecredential", ["-c", this.f("ak.ctx"), "-C", this.f("ek.ctx"), "-i", this.f("cred.in"), "-o", this.f("cred.out"), "-P", `session:${session}`]);
      } finally {
        await this.exec("tpm2_flushcontext", [session], { env: this.env }).catch(() => undefined);
        await fs.rm(this.f("cred.in"), { force: true });
      }
      const secret = await fs.readFile(this.f("cred.out"));
      await fs.rm(this.f("cred.out"), { force: true });
      return secret;
    });
  }
}
