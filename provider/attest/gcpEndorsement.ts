/**
 * Google's launch endorsement of a GCP confidential-VM firmware build: what pins MRTD on GCP.
 *
 * Facts (google/gce-tcb-verifier, Apache-2.0: proto/endorsement.proto, verify/verify.go,
 * endorse/endorse.go, tdx/endorsement.go; read, not copied):
 * - `VMLaunchEndorsement { bytes serialized_uefi_golden = 1; bytes signature = 2; }`; the signed
 *   bytes are exactly `serialized_uefi_golden` as stored (never re-encoded).
 * - `VMGoldenMeasurement { Timestamp timestamp = 1; uint64 cl_spec = 2; bytes commit = 3;
 *   bytes cert = 4 (DER, the signing key's certificate); bytes digest = 5 (SHA-384 of the
 *   firmware); bytes ca_bundle = 6 (PEM); VMSevSnp sev_snp = 7; VMTdx tdx = 8; }`
 * - `VMTdx { uint32 svn = 1; repeated Measurement measurements = 2; }`,
 *   `Measurement { uint32 ram_gib = 1; bool early_accept = 2; bytes mrtd = 3; }`: one MRTD per VM
 *   configuration; ram_gib 0 is the generic entry (Google's VMM no longer lets memory size change
 *   MRTD since October 2024), per-size entries are older.
 * - Signature: RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32 bytes, by `cert`, which Google's root
 *   "GCE-cc-tcb-root" signs directly (no intermediate). The root is published at
 *   https://pki.goog/cloud_integrity/GCE-cc-tcb-root_1.crt and travels in every endorsement's
 *   `ca_bundle`; tdxvm pins it by the SHA-256 of its DER, as published by independent verifiers
 *   (GOOGLE_TCB_ROOT_SHA256): a bundle root with another digest is not trusted.
 * - Fetched by MRTD from Google's public bucket:
 *   https://storage.googleapis.com/gce_tcb_integrity/ovmf_x64_csm/tdx/<mrtd hex>.binarypb
 *
 * The protobuf reader below knows exactly these messages; unknown fields are skipped as the wire
 * format allows, malformed bytes are refused (bounded: the whole document is at most 256 KiB).
 */
import { constants, createHash, verify as verifySignature, X509Certificate } from "node:crypto";
import * as https from "node:https";
import * as http from "node:http";
import { TdxError } from "../errors";
import type { Measurements, RegisterValue } from "../measure/ledger";
import { attestationError } from "./tpm2";
import { chainProblems } from "./issuers/common";

/** SHA-256 of the DER of Google's GCE-cc-tcb-root_1 (RSA-4096, valid 2023–2048). */
export const GOOGLE_TCB_ROOT_SHA256: readonly string[] = ["e876bc6978bf4f3da445f98a0a82363c8c0bae5a1fc033c6df65846a6cb0f18c"];
export const GCE_TCB_BUCKET = "https://storage.googleapis.com/gce_tcb_integrity";
export const MAX_ENDORSEMENT_BYTES = 256 * 1024;

export interface TdxEndorsedMeasurement { ramGib: number; earlyAccept: boolean; mrtd: string }

export interface GcpEndorsement {
  /** The signed bytes (serialized VMGoldenMeasurement). */
  golden: Buffer;
  signature: Buffer;
  timestamp: Date | null;
  clSpec: bigint;
  commit: string;
  /** DER of the signing certificate. */
  cert: Buffer;
  /** SHA-384 of the firmware binary (hex). */
  firmwareSha384: string;
  caBundlePem: string;
  tdx: { svn: number; measurements: TdxEndorsedMeasurement[] } | null;
}

const fail = (why: string, hint?: string) => attestationError("gcp-endorsement", why, hint);

// ---------------------------------------------------------------------------------------------
// Protobuf wire format (the subset these messages use: varint and length-delimited fields).

type Field = { n: number; wire: number; varint?: bigint; bytes?: Buffer };

function fields(buf: Buffer, what: string): Field[] {
  const out: Field[] = [];
  let at = 0;
  const varint = (): bigint => {
    let v = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (at >= buf.length) throw fail(`${what}: truncated varint`);
      const b = buf[at++]!;
      v |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    throw fail(`${what}: varint longer than 10 bytes`);
  };
  while (at < buf.length) {
    const key = varint();
    const n = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (n < 1 || n > 536_870_911) throw fail(`${what}: field number ${n} out of range`);
    if (wire === 0) out.push({ n, wire, varint: varint() });
    else if (wire === 2) {
      const len = varint();
      if (len > BigInt(buf.length - at)) throw fail(`${what}: field ${n} runs past the end (${len} bytes, ${buf.length - at} left)`);
      out.push({ n, wire, bytes: buf.subarray(at, at + Number(len)) });
      at += Number(len);
    } else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else throw fail(`${what}: unsupported wire type ${wire} (field ${n})`);
    if (at > buf.length) throw fail(`${what}: truncated fixed-width field`);
  }
  return out;
}

function one(fs: Field[], n: number, wire: number, what: string): Field | undefined {
  const got = fs.filter((f) => f.n === n);
  if (got.some((f) => f.wire !== wire)) throw fail(`${what}: field ${n} has wire type ${got[0]!.wire}, expected ${wire}`);
  return got[got.length - 1]; // proto3: the last value of a repeated scalar field wins
}

const u32 = (v: bigint | undefined, what: string): number => {
  if (v === undefined) return 0;
  if (v > 0xffffffffn) throw fail(`${what} exceeds 32 bits`);
  return Number(v);
};

/** Decode a VMLaunchEndorsement (structure only: nothing is trusted yet). */
export function parseEndorsement(bytes: Buffer): GcpEndorsement {
  if (bytes.length > MAX_ENDORSEMENT_BYTES) throw fail(`the endorsement is ${bytes.length} bytes, more than ${MAX_ENDORSEMENT_BYTES}`);
  const top = fields(bytes, "VMLaunchEndorsement");
  const golden = one(top, 1, 2, "VMLaunchEndorsement")?.bytes;
  const signature = one(top, 2, 2, "VMLaunchEndorsement")?.bytes;
  if (!golden?.length || !signature?.length) throw fail("the endorsement lacks its signed golden measurement or its signature", "Pass the .binarypb Google publishes for the firmware (gce_tcb_integrity/ovmf_x64_csm/tdx/<MRTD>.binarypb).");
  const g = fields(golden, "VMGoldenMeasurement");
  const ts = one(g, 1, 2, "VMGoldenMeasurement")?.bytes;
  let timestamp: Date | null = null;
  if (ts) {
    const t = fields(ts, "Timestamp");
    const seconds = one(t, 1, 0, "Timestamp")?.varint ?? 0n;
    if (seconds > 253_402_300_799n) throw fail("the endorsement's timestamp is out of range");
    timestamp = new Date(Number(seconds) * 1000);
  }
  const cert = one(g, 4, 2, "VMGoldenMeasurement")?.bytes;
  const digest = one(g, 5, 2, "VMGoldenMeasurement")?.bytes;
  if (!cert?.length) throw fail("the golden measurement carries no signing certificate");
  if (digest?.length !== 48) throw fail(`the golden measurement's firmware digest is ${digest?.length ?? 0} bytes, not a SHA-384`);
  const tdxBytes = one(g, 8, 2, "VMGoldenMeasurement")?.bytes;
  let tdx: GcpEndorsement["tdx"] = null;
  if (tdxBytes) {
    const t = fields(tdxBytes, "VMTdx");
    const measurements = t.filter((f) => f.n === 2).map((f, i) => {
      if (f.wire !== 2) throw fail(`VMTdx: measurement ${i + 1} is not a message`);
      const m = fields(f.bytes!, "VMTdx.Measurement");
      const mrtd = one(m, 3, 2, "VMTdx.Measurement")?.bytes;
      if (mrtd?.length !== 48) throw fail(`VMTdx: measurement ${i + 1} has a ${mrtd?.length ?? 0}-byte MRTD, not 48`);
      return { ramGib: u32(one(m, 1, 0, "VMTdx.Measurement")?.varint, "ram_gib"), earlyAccept: (one(m, 2, 0, "VMTdx.Measurement")?.varint ?? 0n) !== 0n, mrtd: mrtd.toString("hex") };
    });
    if (measurements.length > 4096) throw fail("VMTdx lists more than 4096 measurements");
    tdx = { svn: u32(one(t, 1, 0, "VMTdx")?.varint, "svn"), measurements };
  }
  return {
    golden, signature, timestamp,
    clSpec: one(g, 2, 0, "VMGoldenMeasurement")?.varint ?? 0n,
    commit: (one(g, 3, 2, "VMGoldenMeasurement")?.bytes ?? Buffer.alloc(0)).toString("hex"),
    cert, firmwareSha384: digest.toString("hex"),
    caBundlePem: (one(g, 6, 2, "VMGoldenMeasurement")?.bytes ?? Buffer.alloc(0)).toString("utf8"),
    tdx,
  };
}

function pemCertificates(pem: string): X509Certificate[] {
  const out: X509Certificate[] = [];
  for (const m of pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)) {
    try {
      out.push(new X509Certificate(m[0]));
    } catch {
      // not a certificate: ignored (it cannot become a root either)
    }
    if (out.length >= 16) break;
  }
  return out;
}

export interface EndorsementOptions {
  now?: Date;
  /**
   * Trusted roots (PEM) instead of Google's pinned root — for tests with test keys only. Default:
   * the certificate in the endorsement's CA bundle whose DER hashes to GOOGLE_TCB_ROOT_SHA256.
   */
  rootsPem?: readonly string[];
  /** The VM's memory in GiB: per-size entries for other sizes do not match (generic entries always do). */
  ramGib?: number;
  /** Lowest firmware SVN (VMTdx.svn) accepted. */
  minSvn?: number;
}

export interface EndorsedMrtd { endorsement: GcpEndorsement & { tdx: NonNullable<GcpEndorsement["tdx"]> }; entry: TdxEndorsedMeasurement; signer: string; detail: string }

/** Check that Google signed `bytes`: the signing certificate chains to the trusted root, the RSA-PSS signature verifies, a TDX section is there, its SVN meets the floor. */
export function verifyEndorsement(bytes: Buffer, opts: EndorsementOptions = {}): { endorsement: GcpEndorsement & { tdx: NonNullable<GcpEndorsement["tdx"]> }; signer: string } {
  const now = opts.now ?? new Date();
  const e = parseEndorsement(bytes);
  let signer: X509Certificate;
  try {
    signer = new X509Certificate(e.cert);
  } catch (err) {
    throw fail(`the signing certificate does not parse (${(err as Error).message})`);
  }
  const roots = opts.rootsPem ?? pemCertificates(e.caBundlePem)
    .filter((c) => GOOGLE_TCB_ROOT_SHA256.includes(createHash("sha256").update(c.raw).digest("hex")))
    .map((c) => c.toString());
  if (!roots.length) throw fail(`the endorsement's CA bundle holds no root tdxvm trusts (Google's GCE-cc-tcb-root_1, DER SHA-256 ${GOOGLE_TCB_ROOT_SHA256[0]})`, "Use the endorsement Google publishes; one signed under another root is not Google's.");
  const problems = chainProblems(e.cert, [], roots, now);
  if (problems.length) throw fail(`the signing certificate does not chain to the trusted root: ${problems.join("; ")}`);
  if (signer.ca) throw fail("the signing certificate is a CA certificate, not a signing key's");
  if (signer.publicKey.asymmetricKeyType !== "rsa" && signer.publicKey.asymmetricKeyType !== "rsa-pss") throw fail(`the signing key is ${signer.publicKey.asymmetricKeyType}, not RSA`);
  if ((signer.publicKey.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) throw fail("the signing key is shorter than 2048 bits");
  const good = verifySignature("sha256", e.golden, { key: signer.publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, e.signature);
  if (!good) throw fail("the RSA-PSS/SHA-256 signature over the golden measurement does not verify with the signing certificate's key");
  if (!e.tdx) throw fail("the endorsement has no TDX section (an SEV-SNP-only firmware?)");
  if (opts.minSvn !== undefined && e.tdx.svn < opts.minSvn) throw fail(`the firmware's SVN is ${e.tdx.svn}, below the floor ${opts.minSvn}`, "The VM runs an older firmware than the policy accepts: restart it on current firmware, or lower the floor deliberately.");
  return { endorsement: e as GcpEndorsement & { tdx: NonNullable<GcpEndorsement["tdx"]> }, signer: /CN=([^,]*)/.exec(signer.subject.replace(/\n/g, ","))?.[1] ?? "the signing key" };
}

/** The entry an endorsement gives a VM of `ramGib` GiB (any size: the generic entry); undefined when none. */
function entryFor(list: TdxEndorsedMeasurement[], ramGib: number | undefined): TdxEndorsedMeasurement | undefined {
  const fits = (m: TdxEndorsedMeasurement) => m.ramGib === 0 || ramGib === undefined || m.ramGib === ramGib;
  // The generic entry first, then entries for this memory size; early-accept ones last.
  return list.find((m) => m.ramGib === 0 && !m.earlyAccept) ?? list.find((m) => fits(m) && !m.earlyAccept) ?? list.find(fits);
}

function describe(e: GcpEndorsement & { tdx: NonNullable<GcpEndorsement["tdx"]> }, entry: TdxEndorsedMeasurement, signer: string, minSvn?: number): string {
  const shape = entry.ramGib === 0 ? "any memory size" : `${entry.ramGib} GiB`;
  return `Google's launch endorsement lists this MRTD (${shape}${entry.earlyAccept ? ", early accept" : ""}) for firmware SHA-384 ${e.firmwareSha384.slice(0, 16)}…, SVN ${e.tdx.svn}${minSvn !== undefined ? ` ≥ ${minSvn}` : ""}, signed ${e.timestamp?.toISOString() ?? "(no time)"} by ${signer}`;
}

/**
 * Check that Google signed `bytes` (verifyEndorsement) and that it lists `mrtd` for the VM's
 * configuration. Throws E_ATTESTATION with check "gcp-endorsement" and the reason otherwise.
 */
export function verifyEndorsedMrtd(bytes: Buffer, mrtd: string, opts: EndorsementOptions = {}): EndorsedMrtd {
  const { endorsement: e, signer } = verifyEndorsement(bytes, opts);
  const want = mrtd.toLowerCase();
  const listed = e.tdx.measurements.filter((m) => m.mrtd === want);
  if (!listed.length) throw fail(`the quote's MRTD ${want.slice(0, 16)}… is not among the ${e.tdx.measurements.length} MRTD(s) the endorsement lists for firmware ${e.firmwareSha384.slice(0, 16)}…`);
  const entry = entryFor(listed, opts.ramGib);
  if (!entry) throw fail(`the quote's MRTD is endorsed only for ${listed.map((m) => `${m.ramGib} GiB`).join(", ")}, not for this VM's ${opts.ramGib} GiB`);
  return { endorsement: e, entry, signer, detail: describe(e, entry, signer, opts.minSvn) };
}

/** For a measurement (no quote yet): the MRTD Google endorses for a VM of `opts.ramGib` GiB. */
export function endorsedMrtdFor(bytes: Buffer, opts: EndorsementOptions = {}): EndorsedMrtd {
  const { endorsement: e, signer } = verifyEndorsement(bytes, opts);
  const entry = entryFor(e.tdx.measurements, opts.ramGib);
  if (!entry) throw fail(`the endorsement lists MRTDs only for ${[...new Set(e.tdx.measurements.map((m) => `${m.ramGib} GiB`))].join(", ")}, not for ${opts.ramGib} GiB`, "Declare the VM's memory (vm.memoryMiB) as one the firmware was endorsed for.");
  return { endorsement: e, entry, signer, detail: describe(e, entry, signer, opts.minSvn) };
}

/** MRTD as Google's endorsement pins it: exact, basis "endorsed", one ledger row naming the firmware. */
export function endorsedMrtd(e: EndorsedMrtd): RegisterValue {
  return {
    alg: "sha384", value: e.entry.mrtd, status: "exact", basis: "endorsed",
    events: [{ type: "TDVF", description: `Google's firmware, SVN ${e.endorsement.tdx!.svn}${e.entry.ramGib ? `, ${e.entry.ramGib} GiB` : ""}`, origin: `launch endorsement signed ${e.endorsement.timestamp?.toISOString() ?? "(no time)"} for firmware SHA-384 ${e.endorsement.firmwareSha384}`, digest: e.entry.mrtd }],
  };
}

/**
 * Fetch the endorsement for `mrtd` from Google's bucket (or `baseUrl`, e.g. a mirror), bounded in
 * size and time. Nothing is trusted because of where it came from: verifyEndorsedMrtd decides.
 */
export function fetchEndorsement(mrtd: string, opts: { baseUrl?: string; timeoutMs?: number } = {}): Promise<Buffer> {
  if (!/^[0-9a-f]{96}$/.test(mrtd)) return Promise.reject(new TdxError("E_VALIDATION", "an MRTD is 96 hex digits"));
  const url = `${(opts.baseUrl ?? GCE_TCB_BUCKET).replace(/\/+$/, "")}/ovmf_x64_csm/tdx/${mrtd}.binarypb`;
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    const err = (why: string) => reject(new TdxError("E_FETCH", `fetching Google's launch endorsement ${url}: ${why}`, { hint: "Without network access, download it elsewhere and pass it as a file (--endorsement F, TdxMeasurement endorsement)." }));
    const get = url.startsWith("https:") ? https.get : url.startsWith("http:") ? http.get : undefined;
    if (!get) return err("only http(s) URLs");
    const req = get(url, { timeout: timeoutMs }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        return err(res.statusCode === 404 ? "HTTP 404: Google endorses no firmware with this MRTD" : `HTTP ${res.statusCode}`);
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (c: Buffer) => {
        size += c.length;
        if (size > MAX_ENDORSEMENT_BYTES) {
          res.destroy();
          return err(`more than ${MAX_ENDORSEMENT_BYTES} bytes`);
        }
        chunks.push(c);
      });
      res.on("end", () => resolve(Buffer.concat(chunks)));
      res.on("error", (e) => err(e.message));
    });
    const deadline = setTimeout(() => req.destroy(new Error(`no complete answer within ${timeoutMs} ms`)), timeoutMs);
    req.on("close", () => clearTimeout(deadline));
    req.on("timeout", () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on("error", (e) => err(e.message));
  });
}

/**
 * A gcp measurement whose MRTD is pinned by Google's endorsement (TdxMeasurement `endorsement`,
 * `tdxvm measure --endorsement F`): verified now, MRTD exact with basis "endorsed" for the VM's
 * memory size (the generic entry when there is one).
 */
export function withEndorsedMrtd(m: Measurements, bytes: Buffer, opts: EndorsementOptions = {}): Measurements {
  if (m.backend !== "gcp") throw new TdxError("E_VALIDATION", `a launch endorsement pins GCP's firmware; this is a ${m.backend} measurement`, { hint: "Pass the endorsement with backend gcp only." });
  let e: EndorsedMrtd;
  try {
    e = endorsedMrtdFor(bytes, opts);
  } catch (err) {
    if (err instanceof TdxError) throw new TdxError("E_MEASUREMENT", `the launch endorsement is not usable: ${err.message}`, { hint: err.hint ?? "Pass the .binarypb Google publishes for the firmware your VMs boot." });
    throw err;
  }
  return {
    ...m,
    registers: { ...m.registers, MRTD: endorsedMrtd(e) },
    inputs: { ...m.inputs, firmware: `Google TDVF, SHA-384 ${e.endorsement.firmwareSha384}`, firmwareSvn: e.endorsement.tdx.svn, endorsementSigned: e.endorsement.timestamp?.toISOString() ?? null },
  };
}
