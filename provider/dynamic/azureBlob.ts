/**
 * Dynamic provider: upload the baked fixed VHD to an Azure **page** blob (docs/design.md §6 —
 * azure-native's storage.Blob cannot create page blobs, pulumi-azure-native #2151) with the Azure
 * SDK for JavaScript (`@azure/storage-blob`, an optional peer dependency loaded on first use; no
 * `az` needed), then prove what landed.
 *
 * Credentials: the storage account's key, which the component reads with listStorageAccountKeys
 * and passes as a Pulumi secret (encrypted in state; it is kept in the outputs because delete
 * needs it). Not a data-plane role assignment: Contributor (which creating the account needs
 * anyway) may list keys, while `Storage Blob Data Contributor` on an account created in the same
 * `up` would need Owner/User Access Administrator to grant and minutes to propagate. The key
 * signs each request (Shared Key); it never travels and is never logged.
 *
 * Upload: the blob is created at the VHD's size (all zeros), then every 512-byte-aligned run of
 * non-zero pages is written with Put Page (≤ 4 MiB each, a few in parallel) — VHDs are sparse:
 * zero runs of 64 KiB and more are skipped. Each Put Page carries the MD5 of its bytes (the
 * service rejects a range corrupted in transit); a range that fails with a network error, a
 * timeout, 408/429/5xx or an MD5 mismatch is sent again (the ranges already written stay), so a
 * dropped connection resumes where it stopped. Progress goes to stderr every 10 %.
 *
 * Verification: blob type PageBlob, length = the VHD's size, and the content — the sha256
 * recomputed by reading the blob back (only its page ranges are downloaded; the gaps are zeros by
 * definition) must equal the bake's sha256, as must the file's sha256 read during the upload. Only
 * then is the sha256 recorded in the blob's metadata (`tdxvm_sha256`, what `read` checks). A blob
 * that fails any check is deleted and the create fails with E_DEPLOYMENT.
 */
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import { isIP } from "node:net";
import { z } from "zod";
import type * as StorageBlob from "@azure/storage-blob";
import { TdxError } from "../errors";
import { declared, failureOf, guarded, guardedSync, log, loadPath, withTimeout, CheckFailure, omit, pick, checkStart, requireInputs, requireOptional, parseState } from "./common";

/** 2: the SDK upload (endpoint + key). 1 (no stateVersion): the `az` upload of tdxvm ≤ 0.1.0. */
export const AZURE_BLOB_STATE_VERSION = 2;

const PAGE = 512;
/** Put Page takes at most 4 MiB per request. */
const MAX_RANGE = 4 << 20;
/**
 * Zero runs shorter than this are sent rather than skipped: a baked VHD's data is scattered over
 * ~13 000 runs, which 64 KiB gaps merge into a dozen (7 % more bytes, 100× fewer requests).
 */
const MIN_GAP = 64 << 10;
const PARALLEL = 4;
const ATTEMPTS = 6;

/** A blob service endpoint: https, or http for a local emulator (Azurite) only. */
const Endpoint = z.string().url().refine((u) => {
  const { protocol, hostname } = new URL(u);
  return protocol === "https:" || (protocol === "http:" && isLoopback(hostname));
}, "https (http only for a local emulator on a loopback address)");

export const AzureBlobArgs = z.object({
  file: z.string().min(1),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  size: z.number().int().positive(),
  /** The account's blob endpoint (its primaryEndpoints.blob), e.g. https://<account>.blob.core.windows.net/. */
  endpoint: Endpoint,
  accountKey: z.string().min(1),
  containerName: z.string().regex(/^[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])$/),
  // Path segments only of name characters: no "", "." or ".." (the blob URL is built from the name:
  // "../other-container/x.vhd" would write, and on destroy delete, outside the container).
  blobName: z.string().regex(/^[A-Za-z0-9._/-]{1,1024}\.vhd$/, "a .vhd name").refine((n) => n.split("/").every((seg) => seg !== "" && seg !== "." && seg !== ".."), "a .vhd name without empty, \".\" or \"..\" path segments"),
  timeoutMinutes: z.number().positive().default(180),
}).loose();
export type AzureBlobArgsT = z.infer<typeof AzureBlobArgs>;

function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || /^127\./.test(h);
}

/**
 * The account an endpoint belongs to: the first DNS label (https://<account>.blob.core.windows.net/),
 * or for an IP or localhost endpoint (an emulator) the first path segment (http://127.0.0.1:10000/<account>/).
 */
export function accountOf(endpoint: string): string {
  const u = new URL(endpoint);
  const host = u.hostname.replace(/^\[|\]$/g, "");
  const name = isIP(host) || host === "localhost" ? u.pathname.split("/").filter(Boolean)[0] ?? "" : host.split(".")[0];
  if (!/^[a-z0-9]{3,24}$/.test(name)) throw new TdxError("E_VALIDATION", `the blob endpoint ${endpoint} names no storage account`, { hint: "Pass the storage account's primaryEndpoints.blob.", details: { property: "endpoint" } });
  return name;
}

export function blobUrl(a: Pick<AzureBlobArgsT, "endpoint" | "containerName" | "blobName">): string {
  return `${a.endpoint.replace(/\/+$/, "")}/${a.containerName}/${a.blobName}`;
}

type Sdk = typeof StorageBlob;
const sdk = (): Sdk => requireOptional<Sdk>("@azure/storage-blob", "the azure target uploads the VHD with it");

function client(a: Pick<AzureBlobArgsT, "endpoint" | "accountKey" | "containerName" | "blobName">): StorageBlob.PageBlobClient {
  const s = sdk();
  // Retries are ours (retrying below): they resume at the failed range and say so on stderr.
  return new s.PageBlobClient(blobUrl(a), new s.StorageSharedKeyCredential(accountOf(a.endpoint), a.accountKey), { retryOptions: { maxTries: 1, tryTimeoutInMs: 120_000 } });
}

interface RestErrorLike { statusCode?: number; code?: string; name?: string; message?: string }
const statusOf = (e: unknown) => (e as RestErrorLike)?.statusCode;

/** Worth another try: the network, a timeout, throttling, a server error, or bytes corrupted in transit. */
function transient(e: unknown): boolean {
  const err = e as RestErrorLike;
  if (err?.name === "AbortError") return false;
  const s = err?.statusCode;
  return s === undefined || s === 408 || s === 429 || s >= 500 || err.code === "Md5Mismatch";
}

/** A short, key-free description of an SDK error (never the request: its headers carry the signature). */
function why(e: unknown): string {
  const err = e as RestErrorLike;
  return [err?.statusCode, err?.code, String(err?.message ?? e).split("\n")[0].slice(0, 200)].filter((x) => x !== undefined && x !== "").join(" ");
}

async function retrying<T>(what: string, name: string, signal: AbortSignal, fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      if (signal.aborted || attempt >= ATTEMPTS || !transient(e)) throw e;
      const ms = Math.min(8000, 500 * 2 ** (attempt - 1));
      log(name, `${what} failed (${why(e)}); retrying in ${ms / 1000} s (attempt ${attempt + 1}/${ATTEMPTS})`);
      await new Promise((r) => setTimeout(r, ms));
    }
  }
}

/** Join ranges (sorted, [start, end)) whose gap is shorter than `gap`. */
function coalesce(runs: Array<{ start: number; end: number }>, gap: number): Array<{ start: number; end: number }> {
  const out: Array<{ start: number; end: number }> = [];
  for (const r of runs) {
    const last = out.at(-1);
    if (last && r.start - last.end < gap) last.end = r.end;
    else out.push({ ...r });
  }
  return out;
}

/**
 * The 512-byte-aligned runs of `buf` (a multiple of 512 bytes) to write: every page holding a
 * non-zero byte, with zero gaps shorter than MIN_GAP written too.
 */
export function nonZeroRuns(buf: Buffer): Array<{ start: number; end: number }> {
  const runs: Array<{ start: number; end: number }> = [];
  const zero = Buffer.alloc(PAGE);
  let start = -1;
  for (let o = 0; o < buf.length; o += PAGE) {
    const isZero = buf.subarray(o, o + PAGE).equals(zero);
    if (!isZero && start < 0) start = o;
    if (isZero && start >= 0) {
      runs.push({ start, end: o });
      start = -1;
    }
  }
  if (start >= 0) runs.push({ start, end: buf.length });
  return coalesce(runs, MIN_GAP);
}

function progress(name: string, total: number): (n: number) => void {
  let done = 0;
  let next = 10;
  return (n) => {
    done += n;
    const pct = Math.floor((done / total) * 100);
    if (pct >= next) {
      log(name, `upload ${pct} %`);
      next = Math.floor(pct / 10) * 10 + 10;
    }
  };
}

/** Write the non-zero runs of the file, a few ranges in flight; returns the file's sha256 as read. */
async function writePages(pb: StorageBlob.PageBlobClient, file: string, size: number, name: string, signal: AbortSignal): Promise<{ sha256: string; written: number }> {
  const fh = await fs.open(file, "r");
  const hash = createHash("sha256");
  const advance = progress(name, size);
  // The first range that fails for good stops the others.
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  signal.addEventListener("abort", onAbort);
  const inflight = new Set<Promise<void>>();
  let failed: unknown;
  let written = 0;
  const put = (at: number, bytes: Buffer) => {
    const p: Promise<void> = retrying(`range ${at}+${bytes.length}`, name, stop.signal, () => pb.uploadPages(bytes, at, bytes.length, {
      abortSignal: stop.signal, transactionalContentMD5: createHash("md5").update(bytes).digest(),
    })).then(() => {
      written += bytes.length;
      advance(bytes.length);
    }, (e) => {
      failed ??= e;
      stop.abort();
    }).finally(() => inflight.delete(p));
    inflight.add(p);
  };
  try {
    // Reads are sequential (the hash needs order); only the uploads overlap.
    for (let offset = 0; offset < size && failed === undefined; offset += MAX_RANGE) {
      const n = Math.min(MAX_RANGE, size - offset);
      const buf = Buffer.alloc(n);
      const { bytesRead } = await fh.read(buf, 0, n, offset);
      if (bytesRead !== n) throw new TdxError("E_DEPLOYMENT", `${file} ended at ${offset + bytesRead} bytes while uploading (expected ${size})`, { hint: "The VHD changed during the upload: bake again and run `pulumi up`." });
      hash.update(buf);
      let zeros = n;
      for (const r of nonZeroRuns(buf)) {
        zeros -= r.end - r.start;
        while (inflight.size >= PARALLEL) await Promise.race(inflight);
        if (failed !== undefined) break;
        put(offset + r.start, buf.subarray(r.start, r.end));
      }
      advance(zeros);
    }
  } catch (e) {
    failed ??= e;
    stop.abort();
  } finally {
    await Promise.allSettled(inflight);
    signal.removeEventListener("abort", onAbort);
    await fh.close();
  }
  if (failed !== undefined) throw failed;
  return { sha256: hash.digest("hex"), written };
}

/** The sha256 of the blob as stored: its page ranges downloaded in order, the gaps hashed as zeros. */
async function storedSha256(pb: StorageBlob.PageBlobClient, size: number, name: string, signal: AbortSignal): Promise<string> {
  const ranges: Array<{ start: number; end: number }> = [];
  for await (const r of pb.listPageRanges(0, size, { abortSignal: signal })) {
    if (r.start < (ranges.at(-1)?.end ?? 0) || r.end >= size || r.start % PAGE || (r.end + 1) % PAGE) throw new TdxError("E_DEPLOYMENT", `the blob reports an impossible page range ${r.start}–${r.end}`, { hint: "Run `pulumi up` again." });
    ranges.push({ start: r.start, end: r.end + 1 });
  }
  // Short gaps are read (they read as zeros) rather than costing a request each.
  const pieces: Array<{ at: number; n: number; zero: boolean }> = [];
  let pos = 0;
  for (const r of coalesce(ranges, 1 << 20)) {
    if (r.start > pos) pieces.push({ at: pos, n: r.start - pos, zero: true });
    for (let at = r.start; at < r.end; at += MAX_RANGE) pieces.push({ at, n: Math.min(MAX_RANGE, r.end - at), zero: false });
    pos = r.end;
  }
  if (pos < size) pieces.push({ at: pos, n: size - pos, zero: true });
  const fetch = (p: { at: number; n: number }) => retrying(`reading back ${p.at}+${p.n}`, name, signal, async () => {
    const d = await pb.download(p.at, p.n, { abortSignal: signal });
    const chunks: Buffer[] = [];
    for await (const c of d.readableStreamBody!) chunks.push(c as Buffer);
    const b = Buffer.concat(chunks);
    if (b.length !== p.n) throw Object.assign(new Error(`short read: ${b.length} of ${p.n} bytes`), { statusCode: undefined });
    return b;
  });
  // Download a few pieces ahead, hash strictly in order.
  const hash = createHash("sha256");
  const zeros = Buffer.alloc(MAX_RANGE);
  const ahead: Array<Promise<Buffer> | undefined> = [];
  const start = (i: number) => {
    if (i < pieces.length && !pieces[i].zero) (ahead[i] = fetch(pieces[i])).catch(() => undefined);
  };
  for (let i = 0; i < PARALLEL; i++) start(i);
  for (let i = 0; i < pieces.length; i++) {
    start(i + PARALLEL);
    const p = pieces[i];
    if (p.zero) for (let left = p.n; left > 0; left -= zeros.length) hash.update(zeros.subarray(0, Math.min(left, zeros.length)));
    else hash.update(await ahead[i]!);
    ahead[i] = undefined;
  }
  return hash.digest("hex");
}

async function deleteBlob(pb: StorageBlob.PageBlobClient, name: string): Promise<void> {
  const ac = new AbortController();
  await retrying("deleting the blob", name, ac.signal, () => pb.deleteIfExists({ deleteSnapshots: "include" }));
}

async function upload(a: AzureBlobArgsT, name: string): Promise<Record<string, unknown>> {
  const file = loadPath(a.file);
  const st = await fs.stat(file).catch(() => undefined);
  if (!st || st.size !== a.size) throw new TdxError("E_DEPLOYMENT", `the VHD ${file} is ${st ? `${st.size} bytes, not the baked ${a.size}` : "gone"}`, { hint: "Bake again (the artifact cache may have been cleaned): `pulumi up` re-bakes." });
  if (a.size % PAGE !== 0) throw new TdxError("E_DEPLOYMENT", `a page blob must be a multiple of 512 bytes; ${file} is ${a.size}`, { hint: "Use the fixed VHD tdxvm bakes for the azure target." });
  const pb = client(a);
  const url = blobUrl(a);
  const t0 = Date.now();
  log(name, `uploading ${file} (${(a.size / 2 ** 30).toFixed(2)} GiB) to ${url} as a page blob…`);
  let created = false;
  try {
    return await withTimeout(a.timeoutMinutes * 60_000, "the VHD upload", async (signal) => {
      await retrying("creating the page blob", name, signal, () => pb.create(a.size, { abortSignal: signal }));
      created = true;
      const sent = await writePages(pb, file, a.size, name, signal);
      const uploadSeconds = (Date.now() - t0) / 1000;
      log(name, `wrote ${(sent.written / 2 ** 20).toFixed(0)} MiB of ${(a.size / 2 ** 20).toFixed(0)} MiB (zero pages skipped) in ${uploadSeconds.toFixed(0)} s; reading it back to verify…`);
      const props = await retrying("reading the blob's properties", name, signal, () => pb.getProperties({ abortSignal: signal }));
      const stored = await storedSha256(pb, a.size, name, signal);
      const problems = [
        ...(sent.sha256 !== a.sha256 ? [`the file's sha256 is ${sent.sha256}, not the baked ${a.sha256} (it changed after the bake)`] : []),
        ...(props.blobType !== "PageBlob" ? [`blob type ${props.blobType}, not PageBlob`] : []),
        ...(props.contentLength !== a.size ? [`length ${props.contentLength}, not ${a.size}`] : []),
        ...(stored !== a.sha256 ? [`content sha256 read back ${stored}, not ${a.sha256}`] : []),
      ];
      if (problems.length) throw new TdxError("E_DEPLOYMENT", `the uploaded blob does not match the VHD: ${problems.join("; ")} (deleted it)`, { hint: "Run `pulumi up` again; if it repeats, check the VHD (bake again) and the account for policies that rewrite blobs." });
      await retrying("recording the verified sha256", name, signal, () => pb.setMetadata({ tdxvm_sha256: a.sha256 }, { abortSignal: signal }));
      const seconds = (Date.now() - t0) / 1000;
      log(name, `uploaded and verified in ${seconds.toFixed(0)} s`);
      return { url, blobType: "PageBlob", uploadedSize: a.size, writtenBytes: sent.written, uploadSeconds: Math.round(seconds) };
    });
  } catch (e) {
    // Nothing half-written: a blob that did not verify is removed.
    if (created) await deleteBlob(pb, name).catch((d) => log(name, `could not delete the unverified blob ${url}: ${why(d)}`));
    if (e instanceof TdxError) throw e;
    throw new TdxError("E_DEPLOYMENT", `the VHD upload to ${url} failed: ${why(e)}${created ? " (deleted the partial blob)" : ""}`, {
      hint: statusOf(e) === 403 ? "The account key was refused: check that the account allows Shared Key access (allowSharedKeyAccess) and that its keys were not rotated during the run." : "Check the network path to the storage account (firewall rules, private endpoints) and run `pulumi up` again.",
    });
  }
}

/** What `read` sees: the blob verified by this provider (its recorded sha256), at the expected length. */
async function verifiedBlobExists(a: AzureBlobArgsT): Promise<boolean> {
  const pb = client(a);
  try {
    const p = await retrying("reading the blob's properties", "TdxDeployment/azure", new AbortController().signal, () => pb.getProperties());
    return p.blobType === "PageBlob" && p.contentLength === a.size && p.metadata?.tdxvm_sha256 === a.sha256;
  } catch (e) {
    if (statusOf(e) === 404) return false;
    throw new TdxError("E_DEPLOYMENT", `could not read the blob ${blobUrl(a)}: ${why(e)}`, { hint: "Check the network path to the storage account and that its key is still valid (a rotated key is picked up by the next `pulumi up`)." });
  }
}

const OUT = ["stateVersion", "url", "blobType", "uploadedSize", "writtenBytes", "uploadSeconds", "exists"];

/**
 * State as diff/update/read/delete receive it: hostile until validated. Fields may be missing
 * (state of the az-based tdxvm ≤ 0.1.0 has no endpoint or key), but a present one must be well formed.
 */
const AzureBlobState = AzureBlobArgs.partial().extend({
  exists: z.boolean().optional(),
  url: z.string().optional(),
  blobType: z.string().optional(),
  uploadedSize: z.number().optional(),
  writtenBytes: z.number().optional(),
  uploadSeconds: z.number().optional(),
}).loose();
const state = (o: unknown) => guardedSync(() => parseState(AzureBlobState, declared(o as Record<string, unknown>), "Azure page blob")) as Record<string, unknown>;
const inputsOnly = (o: Record<string, unknown>) => omit(declared(o), OUT);
const PLACE = ["endpoint", "containerName", "blobName"];

export const azureBlobProvider = {
  async check(_olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ inputs: Record<string, unknown>; failures?: CheckFailure[] }> {
    const start = checkStart(AzureBlobArgs, news, OUT);
    if (start.done) return start.done;
    const { inputs, value } = start;
    try {
      if (value.size % PAGE !== 0) throw new TdxError("E_VALIDATION", `a page blob must be a multiple of 512 bytes (got ${value.size})`, { details: { property: "size" } });
      accountOf(value.endpoint);
    } catch (e) {
      return { inputs, failures: [failureOf(e)] };
    }
    return { inputs };
  },
  async diff(_id: string, oldState: Record<string, unknown>, news: Record<string, unknown>) {
    const olds = state(oldState);
    const differs = (k: string) => JSON.stringify(olds[k] ?? null) !== JSON.stringify(news[k] ?? null);
    const replaces = ["sha256", ...PLACE].filter(differs);
    if (olds.exists === false) replaces.push("exists");
    // A replacement at the same blob name must delete first: create-before-delete would upload,
    // then delete the very blob it just wrote.
    const samePlace = !PLACE.some(differs);
    // A new key or file path (same bytes) is recorded, nothing is uploaded.
    const changes = replaces.length > 0 || ["accountKey", "file", "size", "timeoutMinutes"].some(differs);
    return { changes, replaces, deleteBeforeReplace: replaces.length > 0 && samePlace };
  },
  async create(inputs: Record<string, unknown>) {
    return guarded(async () => {
      const a = requireInputs(AzureBlobArgs, inputsOnly(inputs));
      const outs = await upload(a, "TdxDeployment/azure");
      return { id: `${accountOf(a.endpoint)}/${a.containerName}/${a.blobName}`, outs: { ...inputsOnly(inputs), ...outs, stateVersion: AZURE_BLOB_STATE_VERSION, exists: true } };
    });
  },
  async update(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
    return { outs: { ...inputsOnly(news), ...pick(state(olds), OUT) } };
  },
  async read(id: string, props: Record<string, unknown>) {
    state(props);
    return guarded(async () => {
      const p = AzureBlobArgs.safeParse(inputsOnly(props));
      if (!p.success) return { id, props: declared(props) }; // state of the az-based tdxvm: nothing to read it with
      return { id, props: { ...declared(props), exists: await verifiedBlobExists(p.data) } };
    });
  },
  async delete(id: string, props: Record<string, unknown>) {
    state(props);
    await guarded(async () => {
      const p = AzureBlobArgs.safeParse(inputsOnly(props));
      if (!p.success) {
        // Written by the az-based tdxvm ≤ 0.1.0: no endpoint or key in state to delete it with.
        log("TdxDeployment/azure", `cannot delete the blob ${id} (state of an older tdxvm, without credentials): remove it with \`az storage blob delete\` or with its storage account`);
        return;
      }
      const pb = client(p.data);
      try {
        await deleteBlob(pb, "TdxDeployment/azure");
      } catch (e) {
        throw new TdxError("E_DEPLOYMENT", `could not delete the blob ${blobUrl(p.data)}: ${why(e)}`, { hint: "Delete it by hand (or with its storage account) and run `pulumi destroy` again." });
      }
    });
  },
};
