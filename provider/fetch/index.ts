/**
 * Integrity-aware fetch into a content-addressed store.
 *
 * - Sources: http(s) URLs, file:// URLs and local paths (relative to the project directory).
 * - Integrity: SRI strings (sha256-/sha384-/sha512- + base64). Every fetch computes all three
 *   digests while streaming, so one read serves the check and the store key.
 * - Store: `<dir>/sha256/<hex>` holds the bytes; `<dir>/sha384/<hex>` and `<dir>/sha512/<hex>`
 *   are hard links to it, so an input pinned with any algorithm is found offline.
 * - Writes go to a temporary file in the store and are renamed only after the size limit and
 *   the integrity check pass; on any failure the temporary is removed (nothing half-written).
 */
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, promises as fs } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import * as path from "node:path";
import { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { TdxError } from "../errors";

export const ALGORITHMS = ["sha256", "sha384", "sha512"] as const;
export type Algorithm = (typeof ALGORITHMS)[number];

export interface Sri { alg: Algorithm; b64: string }

export function parseSri(s: string): Sri {
  const m = /^(sha256|sha384|sha512)-([A-Za-z0-9+/]+={0,2})$/.exec(s);
  const expectLen = { sha256: 32, sha384: 48, sha512: 64 } as const;
  if (!m || Buffer.from(m[2], "base64").length !== expectLen[m[1] as Algorithm]) {
    throw new TdxError("E_VALIDATION", `not a valid integrity string: ${JSON.stringify(s.slice(0, 120))}`, { hint: "Use SRI form, e.g. sha256-<base64 of the 32-byte digest> (openssl dgst -sha256 -binary FILE | base64)." });
  }
  return { alg: m[1] as Algorithm, b64: m[2] };
}

export const sriToHex = (s: Sri) => Buffer.from(s.b64, "base64").toString("hex");

export interface Fetched {
  /** Path of the stored bytes (read-only by convention). */
  path: string;
  size: number;
  /** SRI strings for every algorithm. */
  integrity: Record<Algorithm, string>;
  fromCache: boolean;
}

export interface FetchOptions {
  integrity?: string;
  /** Refuse inputs larger than this (default 4 GiB). */
  maxBytes?: number;
  /** Serve only from the store; never touch the network. */
  offline?: boolean;
  /** Directory relative paths are resolved against. */
  baseDir?: string;
  /** Per-request timeout for http(s), ms (default 60 s of inactivity). */
  timeoutMs?: number;
}

export class ContentStore {
  constructor(readonly dir: string) {}

  entryPath(alg: Algorithm, hex: string): string {
    return path.join(this.dir, alg, hex);
  }

  async lookup(sri: Sri): Promise<string | undefined> {
    const p = this.entryPath(sri.alg, sriToHex(sri));
    try {
      await fs.access(p);
      return p;
    } catch {
      return undefined;
    }
  }

  /** Stream `source` into the store, checking size and integrity on the way. */
  async put(source: Readable, ref: string, opts: { integrity?: Sri; maxBytes: number }): Promise<Fetched> {
    await Promise.all(ALGORITHMS.map((a) => fs.mkdir(path.join(this.dir, a), { recursive: true })));
    const tmp = path.join(this.dir, "sha256", `.tmp-${process.pid}-${randomBytes(6).toString("hex")}`);
    const hashes = Object.fromEntries(ALGORITHMS.map((a) => [a, createHash(a)])) as Record<Algorithm, ReturnType<typeof createHash>>;
    let size = 0;
    const fh = await fs.open(tmp, "wx", 0o644);
    try {
      for await (const chunk of source) {
        const buf = chunk as Buffer;
        size += buf.length;
        if (size > opts.maxBytes) {
          source.destroy();
          throw new TdxError("E_FETCH", `${ref} is larger than the limit of ${opts.maxBytes} bytes`, { hint: "Raise maxBytes if this input is really that large, or check that the URL is the one you meant." });
        }
        for (const a of ALGORITHMS) hashes[a].update(buf);
        await fh.write(buf);
      }
      await fh.sync();
    } catch (e) {
      await fh.close().catch(() => undefined);
      await fs.rm(tmp, { force: true });
      if (e instanceof TdxError) throw e;
      throw new TdxError("E_FETCH", `reading ${ref} failed: ${(e as Error).message}`, { hint: "Check that the source exists and is reachable; nothing was stored." });
    }
    await fh.close();
    const digests = Object.fromEntries(ALGORITHMS.map((a) => [a, hashes[a].digest()])) as Record<Algorithm, Buffer>;
    const integrity = Object.fromEntries(ALGORITHMS.map((a) => [a, `${a}-${digests[a].toString("base64")}`])) as Record<Algorithm, string>;
    if (opts.integrity && integrity[opts.integrity.alg] !== `${opts.integrity.alg}-${opts.integrity.b64}`) {
      await fs.rm(tmp, { force: true });
      throw new TdxError("E_FETCH", `integrity mismatch for ${ref}: expected ${opts.integrity.alg}-${opts.integrity.b64}, got ${integrity[opts.integrity.alg]}`, {
        hint: "The content changed or the pin is wrong. Nothing was stored. Re-pin only if the new content is trusted.",
        details: { ref, expected: `${opts.integrity.alg}-${opts.integrity.b64}`, actual: integrity[opts.integrity.alg] },
      });
    }
    const final = this.entryPath("sha256", digests.sha256.toString("hex"));
    await fs.rename(tmp, final);
    for (const a of ["sha384", "sha512"] as const) {
      const alias = this.entryPath(a, digests[a].toString("hex"));
      await fs.link(final, alias).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== "EEXIST") throw e;
      });
    }
    return { path: final, size, integrity, fromCache: false };
  }
}

function isRemote(ref: string): boolean {
  return /^https?:\/\//i.test(ref);
}

/** Open a source as a stream; http(s) with redirects (max 5) and an inactivity timeout. */
function open(ref: string, opts: FetchOptions, redirects = 0): Promise<Readable> {
  if (!isRemote(ref)) {
    let file: string;
    if (/^file:/i.test(ref)) {
      try { file = fileURLToPath(ref); } catch { return Promise.reject(new TdxError("E_FETCH", `not a valid file URL: ${ref}`)); }
    } else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(ref)) {
      return Promise.reject(new TdxError("E_FETCH", `unsupported URL scheme in ${ref}`, { hint: "Use http(s)://, file:// or a path." }));
    } else {
      file = path.resolve(opts.baseDir ?? process.cwd(), ref);
    }
    return fs.stat(file).then(
      (st) => {
        if (!st.isFile()) throw new TdxError("E_FETCH", `${ref} is not a regular file`, { hint: "Point src at a file." });
        return createReadStream(file);
      },
      (e: NodeJS.ErrnoException) => {
        throw new TdxError("E_FETCH", `cannot read ${ref}: ${e.code}`, { hint: `Check that ${file} exists.` });
      },
    );
  }
  return new Promise((resolve, reject) => {
    const lib = ref.toLowerCase().startsWith("https:") ? https : http;
    const req = lib.get(ref, { timeout: opts.timeoutMs ?? 60_000, headers: { "user-agent": "tdxvm" } }, (res) => {
      const status = res.statusCode ?? 0;
      if (status >= 300 && status < 400 && res.headers.location) {
        res.resume();
        if (redirects >= 5) return reject(new TdxError("E_FETCH", `too many redirects for ${ref}`));
        return resolve(open(new URL(res.headers.location, ref).toString(), opts, redirects + 1));
      }
      if (status !== 200) {
        res.resume();
        return reject(new TdxError("E_FETCH", `GET ${ref} answered HTTP ${status}`, { hint: "Check the URL; nothing was stored." }));
      }
      resolve(res);
    });
    req.on("timeout", () => req.destroy(new Error(`no data for ${opts.timeoutMs ?? 60_000} ms`)));
    req.on("error", (e) => reject(new TdxError("E_FETCH", `GET ${ref} failed: ${e.message}`, { hint: "Check the network and the URL; nothing was stored." })));
  });
}

/** Fetch `ref` into `store`, verifying `integrity` when given. */
export async function fetchInput(store: ContentStore, ref: string, opts: FetchOptions = {}): Promise<Fetched> {
  const sri = opts.integrity !== undefined ? parseSri(opts.integrity) : undefined;
  if (sri) {
    const cached = await store.lookup(sri);
    if (cached) {
      const st = await fs.stat(cached);
      if (st.size <= (opts.maxBytes ?? 4 * 1024 ** 3)) {
        return { ...(await store.put(createReadStream(cached), ref, { integrity: sri, maxBytes: Number.MAX_SAFE_INTEGER })), fromCache: true };
      }
    }
  }
  if (opts.offline && isRemote(ref)) {
    throw new TdxError("E_POLICY", `policy rule networkMode blocked this: ${ref} is not in the content store and the network mode is offline`, {
      hint: "Lock once in online mode (it fills the cache), or copy the cache directory to this machine.",
      details: { rule: "networkMode" },
    });
  }
  return store.put(await open(ref, opts), ref, { integrity: sri, maxBytes: opts.maxBytes ?? 4 * 1024 ** 3 });
}
