/**
 * The TPM issuers, speaking TPM 2.0 commands directly (../tpm2.ts). What they return keeps the
 * formats tpm2-tools writes (TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE), which the verifier reads.
 *
 * - tpm (dev VM under swtpm): the EK is recreated from the endorsement hierarchy's default RSA
 *   template, its certificate read from NV 0x01c00002 (TCG EK Credential Profile §2.2.1.4, where
 *   swtpm_setup --create-ek-cert stores it); an ECDSA P-256 AK is created under the EK. A verifier
 *   proves the AK lives in the same TPM by credential activation (TPM2_ActivateCredential).
 * - azure (DCesv5 vTPM): the platform's AK at persistent handle 0x81000003, its certificate in NV
 *   0x01C101D0 and the HCL report in NV 0x01400001 (Azure confidential VM guest attestation
 *   documentation). The TD quote comes from IMDS (./azure.ts).
 */
import { Mutex } from "../exec";
import type { TpmEvidence } from "../protocol";
import { parseTpm2bPublic, TPM_ALG } from "../../provider/attest/tpm2";
import { Tpm2, TpmTransport } from "../tpm2";

/** PCRs quoted: the sha256 bank, 0–15 (16–23 are resettable/debug). */
export const QUOTE_PCRS = Array.from({ length: 16 }, (_, i) => i);
export const EK_CERT_NV_RSA = 0x01c00002;
export const AZURE_AK_HANDLE = 0x81000003;
export const AZURE_AK_CERT_NV = 0x01c101d0;
export const AZURE_HCL_REPORT_NV = 0x01400001;

export interface TpmKeys { akPublic: Buffer; ekPublic?: Buffer; ekCertificate?: Buffer; akCertificate?: Buffer }

export class TpmIssuer {
  private readonly mutex = new Mutex();
  private keys?: TpmKeys;
  /** The dev TPM's EK and AK as context blobs (TPM2_ContextSave), loaded for each operation and flushed after it. */
  private contexts?: { ek: Buffer; ak: Buffer };
  /** The Azure AK's signing scheme when its public area names none (TPM2_Quote then needs one). */
  private azureScheme?: { alg: number; hashAlg: number };

  constructor(
    /** Opens the TPM for one operation (/dev/tpmrm0, or swtpm's socket in tests). */
    private readonly open: () => Promise<TpmTransport>,
    readonly flavour: "tpm" | "azure",
  ) {}

  /** One operation at a time, on its own connection; transient objects it loads are flushed at the end. */
  private session<T>(fn: (tpm: Tpm2, loaded: number[]) => Promise<T>): Promise<T> {
    return this.mutex.lock(async () => {
      const t = await this.open();
      const tpm = new Tpm2(t);
      const loaded: number[] = [];
      try {
        return await fn(tpm, loaded);
      } finally {
        for (const h of loaded) await tpm.flush(h).catch(() => undefined);
        await t.close().catch(() => undefined);
      }
    });
  }

  /** Create (tpm) or read (azure) the keys once; later calls return them. */
  async init(): Promise<TpmKeys> {
    if (this.keys) return this.keys;
    return this.session(async (tpm, loaded) => {
      if (this.keys) return this.keys;
      if (this.flavour === "azure") {
        const akPublic = await tpm.readPublic(AZURE_AK_HANDLE);
        const pub = parseTpm2bPublic(akPublic, "Azure AK public area");
        if (pub.scheme.scheme === TPM_ALG.NULL) this.azureScheme = { alg: pub.type === "rsa" ? TPM_ALG.RSASSA : TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 };
        this.keys = { akPublic, akCertificate: await tpm.nvRead(AZURE_AK_CERT_NV) };
        return this.keys;
      }
      const ek = await tpm.createEk();
      loaded.push(ek.handle);
      const ak = await tpm.createAk(ek.handle);
      loaded.push(ak.handle);
      this.contexts = { ek: await tpm.contextSave(ek.handle), ak: await tpm.contextSave(ak.handle) };
      this.keys = { akPublic: ak.public2b, ekPublic: ek.public2b, ekCertificate: await tpm.nvRead(EK_CERT_NV_RSA) };
      return this.keys;
    });
  }

  /** An NV index's contents (owner auth), or undefined when it is not defined. */
  nvRead(index: number): Promise<Buffer | undefined> {
    return this.session((tpm) => tpm.nvRead(index));
  }

  /** A quote over QUOTE_PCRS with `qualifyingData` (≤ 32 bytes here), plus the PCR values it covers. */
  async quote(qualifyingData: Buffer): Promise<Pick<TpmEvidence, "quote" | "signature" | "pcrs">> {
    await this.init();
    return this.session(async (tpm, loaded) => {
      let ak = AZURE_AK_HANDLE;
      if (this.flavour === "tpm") loaded.push((ak = await tpm.contextLoad(this.contexts!.ak)));
      const q = await tpm.quote(ak, qualifyingData, QUOTE_PCRS, this.azureScheme);
      const values = await tpm.pcrRead(QUOTE_PCRS);
      const sha256: Record<string, string> = {};
      for (const pcr of QUOTE_PCRS) sha256[String(pcr)] = values.get(pcr)!.toString("hex");
      return { quote: q.attest.toString("base64"), signature: q.signature.toString("base64"), pcrs: { sha256 } };
    });
  }

  /** TPM2_ActivateCredential with the AK and the EK (EK auth via a PolicySecret(endorsement) session). */
  async activate(idObject: Buffer, encSecret: Buffer): Promise<Buffer> {
    if (this.flavour !== "tpm") throw new Error("credential activation is for the dev VM's TPM (the Azure AK is certified by Azure)");
    await this.init();
    return this.session(async (tpm, loaded) => {
      const ek = await tpm.contextLoad(this.contexts!.ek);
      loaded.push(ek);
      const ak = await tpm.contextLoad(this.contexts!.ak);
      loaded.push(ak);
      return tpm.activateCredential(ak, ek, idObject, encSecret);
    });
  }
}
