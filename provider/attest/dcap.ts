/**
 * Intel DCAP verification of a TD quote with @phala/dcap-qvl (Apache-2.0, pure JavaScript; the
 * library named in docs/design.md §7): the PCK certificate chain up to Intel's SGX Root CA (with
 * the collateral's CRLs), the QE report signature and its binding to the attestation key, the QE
 * identity, the quote signature, the TCB level of the platform (TCB info for its FMSPC) and the
 * TD attributes (no debug TD). tdxvm adds the policy: which TCB statuses it accepts.
 *
 * Collateral (TCB info, QE identity, CRLs and their issuer chains) comes from a file (offline), a
 * configured PCCS, or Intel's PCS. It is input from the network or disk: schema-checked and
 * bounded before the library sees it.
 */
import { promises as fs } from "node:fs";
import { z } from "zod";
import { TdxError, formatIssues } from "../errors";
import { attestationError } from "./tpm2";
import { parseTdxQuote } from "../measure/quote";

// The library is CommonJS without an exports map; load it lazily (it is only needed for TDX).
type Dcap = typeof import("@phala/dcap-qvl");
let dcapLib: Dcap | undefined;
const dcap = (): Dcap => (dcapLib ??= require("@phala/dcap-qvl") as Dcap);

/** TCB statuses (Intel PCS API v4) and what tdxvm accepts by default. */
export const TCB_STATUSES = ["UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked"] as const;
export const DEFAULT_ACCEPTED_TCB = ["UpToDate"] as const;

const text = (max: number) => z.string().max(max);
const hexOrBytes = (max: number) => z.union([z.string().max(2 * max).regex(/^[0-9a-fA-F]*$/), z.array(z.number().int().min(0).max(255)).max(max)]);
export const CollateralSchema = z.object({
  pck_crl_issuer_chain: text(64 * 1024),
  root_ca_crl: hexOrBytes(64 * 1024),
  pck_crl: hexOrBytes(1024 * 1024),
  tcb_info_issuer_chain: text(64 * 1024),
  tcb_info: text(256 * 1024),
  tcb_info_signature: hexOrBytes(1024),
  qe_identity_issuer_chain: text(64 * 1024),
  qe_identity: text(64 * 1024),
  qe_identity_signature: hexOrBytes(1024),
});
export type Collateral = z.infer<typeof CollateralSchema>;

export interface DcapOptions {
  /** Collateral given directly, or a JSON file holding it (dcap-qvl's field names). */
  collateral?: Collateral;
  collateralFile?: string;
  /** A PCCS (…/sgx/certification/v4/) to fetch collateral from; default Intel's PCS. */
  pccsUrl?: string;
  /** TCB statuses to accept (default: UpToDate only). */
  acceptedTcbStatuses?: readonly string[];
  /**
   * The lowest TEE_TCB_SVN to accept (16 bytes as 32 hex digits): every component of the quote's
   * TEE_TCB_SVN must be at least the corresponding one here — e.g. a TDX module SVN floor above
   * what Intel still rates UpToDate, after an advisory your policy acts on first.
   */
  minTeeTcbSvn?: string;
  /** Trust anchor (DER); default Intel's SGX Root CA as shipped by the library. Tests use their own. */
  rootCaDer?: Buffer;
  /** Verification time (certificates, CRLs, TCB info and QE identity validity). */
  now?: Date;
  fetchTimeoutMs?: number;
}

export interface DcapResult {
  status: string;
  advisoryIds: string[];
  /** Where the collateral came from (file, PCCS URL, or "given"). */
  collateralSource: string;
}

export function parseCollateral(value: unknown, where: string): Collateral {
  const r = CollateralSchema.safeParse(value);
  if (!r.success) throw attestationError("dcap-collateral", `collateral from ${where} is malformed: ${formatIssues(r.error.issues)}`, "Pass the collateral JSON of the quote's platform (fields as in @phala/dcap-qvl: tcb_info, qe_identity, their signatures and issuer chains, root_ca_crl, pck_crl).");
  return r.data;
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms)))]);
  } finally {
    if (timer) clearTimeout(timer);
  }
}

/** The collateral for `quote`: given, from a file, from a PCCS, or from Intel's PCS. */
export async function loadCollateral(quote: Buffer, opts: DcapOptions): Promise<{ collateral: Collateral; source: string }> {
  if (opts.collateral) return { collateral: parseCollateral(opts.collateral, "the caller"), source: "given" };
  if (opts.collateralFile) {
    const stat = await fs.stat(opts.collateralFile).catch(() => undefined);
    if (!stat?.isFile()) throw attestationError("dcap-collateral", `collateral file ${opts.collateralFile} does not exist`);
    if (stat.size > 4 * 1024 * 1024) throw attestationError("dcap-collateral", `collateral file ${opts.collateralFile} is ${stat.size} bytes (more than 4 MiB)`);
    let json: unknown;
    try {
      json = JSON.parse(await fs.readFile(opts.collateralFile, "utf8"));
    } catch (e) {
      throw attestationError("dcap-collateral", `collateral file ${opts.collateralFile} is not JSON (${(e as Error).message})`);
    }
    return { collateral: parseCollateral(json, opts.collateralFile), source: opts.collateralFile };
  }
  const url = opts.pccsUrl ?? dcap().INTEL_PCS_URL;
  try {
    const fetched = opts.pccsUrl ? dcap().getCollateral(opts.pccsUrl, quote) : dcap().getCollateralFromPcs(quote);
    return { collateral: parseCollateral(await withTimeout(fetched, opts.fetchTimeoutMs ?? 30_000, `fetching collateral from ${url}`), url), source: url };
  } catch (e) {
    if (e instanceof TdxError) throw e;
    throw attestationError("dcap-collateral", `could not get collateral from ${url}: ${(e as Error).message}`, "Check the PCCS URL and network access, or verify offline with a collateral file (--collateral).");
  }
}

/** The check a dcap-qvl failure belongs to, from its message (the message itself is kept as the reason). */
export function dcapFailureCheck(message: string): string {
  const m = message.toLowerCase();
  if (/decode quote|unsupported dcap|must have version|attestation key type|pck cert format/.test(m)) return "quote-format";
  if (/isv enclave report signature/.test(m)) return "quote-signature";
  if (/qe_report|qe report hash/.test(m)) return "qe-report";
  if (/qe (mrsigner|isvprodid|miscselect|attributes|isvsvn)|qe identity id/.test(m)) return "qe-identity";
  if (/tcb level|tcb status|tdx components|sgx components/.test(m)) return "tcb-status";
  if (/certificate|chain|revoked|causedasendentity|crl/.test(m)) return "pck-chain";
  if (/tcb ?info|qe identity|tcb_info|qe_identity|fmspc|issue date|expired/.test(m)) return "dcap-collateral";
  if (/debug|sept_ve|reserved bits|mr service td/.test(m)) return "td-attributes";
  return "dcap";
}

/**
 * Verify `quote` with DCAP at `opts.now`; throws E_ATTESTATION naming the failed check (with the
 * library's reason) or a TCB status outside the accepted set.
 */
export async function verifyDcap(quote: Buffer, opts: DcapOptions = {}): Promise<DcapResult> {
  const { collateral, source } = await loadCollateral(quote, opts);
  const now = (opts.now ?? new Date()).getTime() / 1000;
  let report: { status: string; advisory_ids: string[] };
  try {
    const verifier = opts.rootCaDer ? dcap().QuoteVerifier.newWithRootCa(opts.rootCaDer) : dcap().QuoteVerifier.newProd();
    report = verifier.verify(quote, collateral, now);
  } catch (e) {
    const reason = (e as Error).message + ((e as Error).cause instanceof Error ? ` (${((e as Error).cause as Error).message})` : "");
    const check = dcapFailureCheck(reason);
    throw attestationError(check, `DCAP verification failed: ${reason}`, check === "tcb-status"
      ? "The platform's TCB is not covered by the collateral's TCB levels (or is revoked): update the host's firmware/TDX module, or check the collateral is current."
      : "The TD quote is not genuine Intel TDX evidence for this collateral (or the collateral is stale): check the quote bytes, the collateral source and the verification time.");
  }
  const accepted = opts.acceptedTcbStatuses ?? DEFAULT_ACCEPTED_TCB;
  checkTdxModule(quote, collateral, accepted);
  if (opts.minTeeTcbSvn !== undefined) checkMinTeeTcbSvn(parseTdxQuote(quote).body.teeTcbSvn, opts.minTeeTcbSvn);
  if (!accepted.includes(report.status)) {
    throw attestationError("tcb-status", `the platform's TCB status is ${report.status}${report.advisory_ids.length ? ` (${report.advisory_ids.join(", ")})` : ""}; accepted: ${accepted.join(", ")}`, "Update the host (microcode, TDX module) or accept this status deliberately (acceptedTcbStatuses / --tcb-status).");
  }
  return { status: report.status, advisoryIds: [...report.advisory_ids], collateralSource: source };
}

/** Component-wise floor on TEE_TCB_SVN (Intel's TCB levels compare TDX TCB components the same way, each ≥). */
export function checkMinTeeTcbSvn(svn: Buffer, min: string): void {
  if (!/^[0-9a-fA-F]{32}$/.test(min)) throw new TdxError("E_VALIDATION", `the minimum TEE TCB SVN ${JSON.stringify(min.slice(0, 40))} is not 16 bytes of hex`, { hint: "Give all 16 TEE_TCB_SVN components as 32 hex digits, e.g. 03010700000000000000000000000000 (module SVN 3, major version 1, …)." });
  const floor = Buffer.from(min, "hex");
  const low = [...floor].map((f, i) => (svn[i]! < f ? i : -1)).filter((i) => i >= 0);
  if (low.length) {
    throw attestationError("tcb-svn", `TEE_TCB_SVN ${svn.toString("hex")} is below the policy's minimum ${floor.toString("hex")} at component${low.length > 1 ? "s" : ""} ${low.join(", ")}`, "Update the host's TDX module / firmware, or lower the minimum deliberately (minTeeTcbSvn / --min-tee-tcb-svn).");
  }
}

const TdxModuleIdentity = z.object({
  mrsigner: z.string().regex(/^[0-9a-fA-F]{96}$/),
  attributes: z.string().regex(/^[0-9a-fA-F]{16}$/),
  attributesMask: z.string().regex(/^[0-9a-fA-F]{16}$/),
});
const TcbInfoModules = z.object({
  tdxModule: TdxModuleIdentity.optional(),
  tdxModuleIdentities: z.array(TdxModuleIdentity.extend({
    id: z.string().max(16),
    tcbLevels: z.array(z.object({ tcb: z.object({ isvsvn: z.number().int().min(0).max(255) }), tcbStatus: z.string().max(64) })).max(256),
  })).max(64).optional(),
});

/**
 * The TDX module's identity (dcap-qvl 0.3.9 does not check it): the quote's MRSIGNERSEAM and
 * SEAMATTRIBUTES against the signed TCB info — Intel's TDX module (signer all zeros), no debug
 * module — and the module's own SVN against its identity's TCB levels. Per Intel's TDX TCB Info
 * (v3) and its quote verification rules: a module whose major version (TEE_TCB_SVN[1]) is above 0
 * is matched with `tdxModuleIdentities` entry `TDX_<major, 2 hex digits>` and its isvsvn
 * (TEE_TCB_SVN[0]); major version 0 with `tdxModule`. Runs after dcap-qvl verified the TCB info's
 * signature, so these fields are Intel's.
 */
export function checkTdxModule(quote: Buffer, collateral: Collateral, accepted: readonly string[]): void {
  const body = parseTdxQuote(quote).body;
  let info: z.infer<typeof TcbInfoModules>;
  try {
    info = TcbInfoModules.parse(JSON.parse(collateral.tcb_info));
  } catch (e) {
    throw attestationError("tdx-module", `the TCB info's TDX module identity is malformed (${(e as Error).message.slice(0, 200)})`);
  }
  const major = body.teeTcbSvn[1];
  const id = `TDX_${major.toString(16).toUpperCase().padStart(2, "0")}`;
  const listed = major === 0 ? undefined : info.tdxModuleIdentities?.find((m) => m.id.toUpperCase() === id);
  const identity = major === 0 ? info.tdxModule : listed;
  if (!identity) throw attestationError("tdx-module", `the TCB info names no identity for the quote's TDX module (${major === 0 ? "tdxModule" : id})`, "Use current collateral for this platform (its TCB info lists the TDX module identities Intel supports).");
  const signer = body.mrSignerSeam.toString("hex");
  if (signer !== identity.mrsigner.toLowerCase()) throw attestationError("tdx-module", `MRSIGNERSEAM ${signer.slice(0, 16)}… is not the TDX module signer the TCB info names (${identity.mrsigner.slice(0, 16)}…): not Intel's TDX module`);
  const mask = Buffer.from(identity.attributesMask, "hex");
  const masked = Buffer.from(body.seamAttributes.map((b, i) => b & mask[i]));
  if (!masked.equals(Buffer.from(Buffer.from(identity.attributes, "hex").map((b, i) => b & mask[i])))) {
    throw attestationError("tdx-module", `SEAMATTRIBUTES ${body.seamAttributes.toString("hex")} are not the TDX module attributes the TCB info names (${identity.attributes.toLowerCase()}, mask ${identity.attributesMask.toLowerCase()}): e.g. a debug TDX module`);
  }
  if (listed) {
    const svn = body.teeTcbSvn[0];
    const level = listed.tcbLevels.find((l) => svn >= l.tcb.isvsvn);
    if (!level) throw attestationError("tcb-status", `the TDX module's SVN ${svn} is below every TCB level of ${id}`, "Update the host's TDX module.");
    if (!accepted.includes(level.tcbStatus)) throw attestationError("tcb-status", `the TDX module's TCB status is ${level.tcbStatus} (${id}, SVN ${svn}); accepted: ${accepted.join(", ")}`, "Update the host's TDX module, or accept this status deliberately (acceptedTcbStatuses / --tcb-status).");
  }
}
