/**
 * Dynamic provider: upload the baked fixed VHD to an Azure **page** blob (docs/design.md §6 —
 * azure-native's storage.Blob cannot create page blobs, pulumi-azure-native #2151) with the
 * Azure CLI, then check what landed: blob type PageBlob and length = the file's size (the
 * VHD's sha256 is recorded in the blob's metadata for later audits; the service computes no
 * content digest of page blobs that could be compared).
 *
 * Credentials are the Azure CLI's own (`az login`, a service principal or a managed identity:
 * --auth-mode login, no account keys in state). Progress goes to stderr every 10 %.
 */
import { spawn } from "node:child_process";
import { statSync } from "node:fs";
import { z } from "zod";
import { TdxError } from "../errors";
import { findOnPath } from "../recipe/image";
import { declared, failureOf, guarded, guardedSync, log, loadPath, withTimeout, CheckFailure, omit, pick, checkStart, requireInputs, parseState } from "./common";

export const AzureBlobArgs = z.object({
  file: z.string().min(1),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  size: z.number().int().positive(),
  accountName: z.string().regex(/^[a-z0-9]{3,24}$/, "3–24 lowercase letters and digits"),
  containerName: z.string().regex(/^[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])$/),
  blobName: z.string().regex(/^[A-Za-z0-9._/-]{1,1024}\.vhd$/, "a .vhd name"),
  timeoutMinutes: z.number().positive().default(180),
}).loose();
export type AzureBlobArgsT = z.infer<typeof AzureBlobArgs>;

interface AzResult { code: number; stdout: string; stderr: string }

/** Run the Azure CLI (found on PATH at call time), reporting upload progress. */
export function az(args: string[], opts: { onProgress?: (pct: number) => void; signal?: AbortSignal } = {}): Promise<AzResult> {
  const bin = findOnPath("az");
  if (!bin) {
    return Promise.reject(new TdxError("E_DEPLOYMENT", "the Azure CLI (az) is not on PATH; it uploads the VHD as a page blob", {
      hint: "Install it (https://learn.microsoft.com/cli/azure/install-azure-cli, or `apt-get install azure-cli` from Microsoft's repository) and run `az login`.",
    }));
  }
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"], signal: opts.signal });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => {
      const t = d.toString();
      stderr += t;
      if (stderr.length > 1 << 20) stderr = stderr.slice(-(1 << 19));
      for (const m of t.matchAll(/(\d{1,3}(?:\.\d+)?)\s*%/g)) opts.onProgress?.(Number(m[1]));
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

const where = (a: AzureBlobArgsT) => ["--auth-mode", "login", "--account-name", a.accountName, "--container-name", a.containerName, "--name", a.blobName];

export function blobUrl(a: Pick<AzureBlobArgsT, "accountName" | "containerName" | "blobName">): string {
  return `https://${a.accountName}.blob.core.windows.net/${a.containerName}/${a.blobName}`;
}

async function show(a: AzureBlobArgsT): Promise<{ length: number; type: string; sha256?: string } | undefined> {
  const r = await az(["storage", "blob", "show", ...where(a), "--query", "{length: properties.contentLength, type: properties.blobType, sha256: metadata.tdxvm_sha256}", "-o", "json"]);
  if (r.code !== 0) {
    if (/BlobNotFound|ContainerNotFound|does not exist/i.test(r.stderr)) return undefined;
    throw new TdxError("E_DEPLOYMENT", `az storage blob show failed (exit ${r.code}): ${r.stderr.trim().split("\n").slice(-3).join(" ")}`, { hint: "Check `az login` and that your identity has Storage Blob Data Contributor on the account." });
  }
  return JSON.parse(r.stdout);
}

async function upload(a: AzureBlobArgsT, name: string): Promise<Record<string, unknown>> {
  const file = loadPath(a.file);
  const st = statSync(file, { throwIfNoEntry: false });
  if (!st || st.size !== a.size) throw new TdxError("E_DEPLOYMENT", `the VHD ${file} is ${st ? `${st.size} bytes, not the baked ${a.size}` : "gone"}`, { hint: "Bake again (the artifact cache may have been cleaned): `pulumi up` re-bakes." });
  if (a.size % 512 !== 0) throw new TdxError("E_DEPLOYMENT", `a page blob must be a multiple of 512 bytes; ${file} is ${a.size}`, { hint: "Use the fixed VHD tdxvm bakes for the azure target." });
  const t0 = Date.now();
  let next = 10;
  log(name, `uploading ${file} (${(a.size / 2 ** 30).toFixed(2)} GiB) to ${blobUrl(a)} as a page blob…`);
  const r = await withTimeout(a.timeoutMinutes * 60_000, "the VHD upload", (signal) => az(
    ["storage", "blob", "upload", ...where(a), "--file", file, "--type", "page", "--overwrite", "true", "--metadata", `tdxvm_sha256=${a.sha256}`],
    { signal, onProgress: (p) => { if (p >= next) { log(name, `upload ${Math.floor(p)} %`); next = Math.floor(p / 10) * 10 + 10; } } },
  ));
  if (r.code !== 0) throw new TdxError("E_DEPLOYMENT", `az storage blob upload failed (exit ${r.code}): ${r.stderr.trim().split("\n").slice(-3).join(" ")}`, { hint: "Check `az login`, the storage account's network rules, and your Storage Blob Data Contributor role." });
  const got = await show(a);
  const problems = !got ? ["the blob is not there after the upload"] : [
    ...(got.type !== "PageBlob" ? [`blob type ${got.type}, not PageBlob`] : []),
    ...(Number(got.length) !== a.size ? [`length ${got.length}, not ${a.size}`] : []),
    ...(got.sha256 !== a.sha256 ? [`metadata sha256 ${got.sha256 ?? "(none)"}, not ${a.sha256}`] : []),
  ];
  if (problems.length) {
    await az(["storage", "blob", "delete", ...where(a)]).catch(() => undefined);
    throw new TdxError("E_DEPLOYMENT", `the uploaded blob does not match the VHD: ${problems.join("; ")} (deleted it)`, { hint: "Run `pulumi up` again; if it repeats, check the account for policies that rewrite blobs." });
  }
  const seconds = (Date.now() - t0) / 1000;
  log(name, `uploaded and verified in ${seconds.toFixed(0)} s`);
  return { url: blobUrl(a), blobType: "PageBlob", uploadedSize: a.size, uploadSeconds: Math.round(seconds) };
}

const OUT = ["url", "blobType", "uploadedSize", "uploadSeconds", "exists"];
/** Inputs and outputs as state holds them (olds, props): typed wherever present (the names reach az's argv). */
export const AzureBlobState = AzureBlobArgs.partial().extend({
  url: z.string().optional(), blobType: z.string().optional(), uploadedSize: z.number().optional(), uploadSeconds: z.number().optional(), exists: z.boolean().optional(),
}).loose();
const state = (o: unknown) => guardedSync(() => parseState(AzureBlobState, o, "Azure page blob"));
const inputsOnly = (o: Record<string, unknown>) => omit(declared(o), OUT);

export const azureBlobProvider = {
  async check(_olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ inputs: Record<string, unknown>; failures?: CheckFailure[] }> {
    const start = checkStart(AzureBlobArgs, news, OUT);
    if (start.done) return start.done;
    const { inputs, value } = start;
    if (value.size % 512 !== 0) return { inputs, failures: [failureOf(new TdxError("E_VALIDATION", `a page blob must be a multiple of 512 bytes (got ${value.size})`, { details: { property: "size" } }))] };
    return { inputs };
  },
  async diff(_id: string, oldState: Record<string, unknown>, news: Record<string, unknown>) {
    const olds: Record<string, unknown> = state(oldState);
    const where = ["accountName", "containerName", "blobName"];
    const replaces = ["sha256", ...where].filter((k) => olds[k] !== news[k]);
    if (olds.exists === false) replaces.push("exists");
    // A replacement at the same blob name must delete first: create-before-delete would upload,
    // then delete the very blob it just wrote.
    const samePlace = where.every((k) => olds[k] === news[k]);
    return { changes: replaces.length > 0 || olds.timeoutMinutes !== news.timeoutMinutes, replaces, deleteBeforeReplace: replaces.length > 0 && samePlace };
  },
  async create(inputs: Record<string, unknown>) {
    return guarded(async () => {
      const a = requireInputs(AzureBlobArgs, inputsOnly(inputs));
      const outs = await upload(a, "TdxDeployment/azure");
      return { id: `${a.accountName}/${a.containerName}/${a.blobName}`, outs: { ...inputsOnly(inputs), ...outs, exists: true } };
    });
  },
  async update(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
    return { outs: { ...inputsOnly(news), ...pick(state(olds), OUT) } };
  },
  async read(id: string, props: Record<string, unknown>) {
    state(props);
    return guarded(async () => {
      const p = AzureBlobArgs.safeParse(inputsOnly(props));
      if (!p.success) return { id, props: declared(props) };
      const got = await show(p.data);
      return { id, props: { ...declared(props), exists: !!got && Number(got.length) === p.data.size && got.sha256 === p.data.sha256 } };
    });
  },
  async delete(id: string, props: Record<string, unknown>) {
    await guarded(async () => {
      // The id is "account/container/blob" in every state version: no schema needed to clean up.
      const [accountName, containerName, ...blob] = id.split("/");
      const s = state(props);
      const at = parseState(AzureBlobArgs.pick({ accountName: true, containerName: true, blobName: true }), { accountName: s.accountName ?? accountName, containerName: s.containerName ?? containerName, blobName: s.blobName ?? blob.join("/") }, "Azure page blob");
      const r = await az(["storage", "blob", "delete", "--auth-mode", "login", "--account-name", at.accountName, "--container-name", at.containerName, "--name", at.blobName]);
      if (r.code !== 0 && !/BlobNotFound|ContainerNotFound/i.test(r.stderr)) throw new TdxError("E_DEPLOYMENT", `az storage blob delete failed: ${r.stderr.trim().split("\n").slice(-2).join(" ")}`, { hint: "Delete the blob by hand or rerun `pulumi destroy`." });
    });
  },
};
