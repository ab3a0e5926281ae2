/**
 * Verifier half of the tpm issuer (the dev VM's swtpm; agent half: agent/issuers/tpm.ts): the EK
 * certificate from the per-host local CA and for that EK, the AK proven by credential activation
 * to live in the EK's TPM, then the shared TPM quote checks (./common.ts).
 */
import { X509Certificate } from "node:crypto";
import { parseTpm2bPublic, spkiOf } from "../tpm2";
import { b64, chainProblems, Checks, EvidenceInput, pcrRegisters, RegisterVerdict, sameBytes, verifyTpmQuote, VerifyOptions } from "./common";

function localCaProblems(certDer: Buffer, cas: readonly string[], now: Date): string[] {
  const problems = chainProblems(certDer, [], cas, now);
  if (problems.length) return problems;
  const cert = new X509Certificate(certDer);
  if (!(cert.keyUsage ?? []).includes("2.23.133.8.1")) problems.push("the certificate lacks the TCG EK certificate purpose (2.23.133.8.1)");
  return problems;
}

export async function verifyTpm(input: EvidenceInput, opts: VerifyOptions, checks: Checks): Promise<RegisterVerdict[]> {
  const tpm = input.evidence.tpm;
  const keys = input.keys?.tpm;
  if (!tpm || !keys?.ekPublic || !keys.ekCertificate) {
    checks.fail("evidence", "tpm evidence needs the AK and the EK with its certificate (/v1/keys) and a quote");
    return [];
  }
  // The credential was made for the keys the agent announced: the evidence must speak of the same ones.
  if (tpm.akPublic !== keys.akPublic || tpm.ekPublic !== keys.ekPublic) checks.fail("key-consistency", "the evidence names another AK or EK than /v1/keys did");
  const now = opts.now ?? new Date();
  const cas = opts.localCaPem === undefined ? [] : typeof opts.localCaPem === "string" ? [opts.localCaPem] : [...opts.localCaPem];
  const ek = await checks.guard("ek-public", () => parseTpm2bPublic(Buffer.from(keys.ekPublic!, "base64"), "EK TPM2B_PUBLIC"));
  const ak = await checks.guard("ak-public", () => parseTpm2bPublic(Buffer.from(keys.akPublic, "base64"), "AK TPM2B_PUBLIC"));
  if (!ek || !ak) return [];
  const certDer = Buffer.from(keys.ekCertificate, "base64");
  if (!cas.length) checks.fail("ek-certificate", "no local CA certificate to check the EK certificate against");
  else {
    const problems = localCaProblems(certDer, cas, now);
    let sameKey = false;
    try {
      sameKey = new X509Certificate(certDer).publicKey.export({ type: "spki", format: "der" }).equals(spkiOf(ek));
    } catch {
      // reported by localCaProblems
    }
    if (!problems.length && !sameKey) problems.push("the certificate certifies another key than the EK");
    if (problems.length) checks.fail("ek-certificate", problems.join("; "));
    else checks.pass("ek-certificate", `EK certificate issued by the local CA (${new X509Certificate(certDer).issuer.replace(/\n/g, ", ")}) for this EK`);
  }
  const activated = b64(tpm.activatedSecret);
  if (!input.credentialSecret || !activated) checks.fail("credential-activation", "no activated credential: the AK is not proven to live in the EK's TPM");
  else if (!sameBytes(activated, input.credentialSecret)) checks.fail("credential-activation", "the activated secret is not the one wrapped for the EK and this AK's name");
  else checks.pass("credential-activation", "TPM2_ActivateCredential recovered the secret wrapped for the certified EK and this AK's name");
  const quoted = await checks.guard("quote-structure", () => verifyTpmQuote(tpm, ak, input, checks));
  return quoted ? pcrRegisters(input.expected, quoted, input.evidence.eventLogs, checks) : [];
}
