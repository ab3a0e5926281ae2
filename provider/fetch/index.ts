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
 * - A cache hit is verified in place (read and hashed, never rewritten), so the three entries
 *   stay links to one inode.
 */
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, promises as fs } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import * as path from "node:path";
import { Readable, addAbortSignal } from "node:stream";
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

/**
 * Do two SRI strings pin the same digest? Compared by algorithm and digest bytes, never as text:
 * parseSri accepts base64 without '=' padding or with non-zero trailing bits, all spellings of
 * one digest. A malformed string pins nothing.
 */
export function sameDigest(a: string, b: string): boolean {
  const parse = (s: string) => { try { return parseSri(s); } catch { return undefined; } };
  const x = parse(a);
  const y = parse(b);
  return !!x && !!y && x.alg === y.alg && Buffer.from(x.b64, "base64").equals(Buffer.from(y.b64, "base64"));
}

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
  /** Deadline for the whole fetch — connecting, redirects and the body — in ms (default 30 min). */
  deadlineMs?: number;
}

/** Query (and fragment) parameters that carry credentials: S3/GCS presigned URLs, Azure SAS, OAuth, API keys. */
const CREDENTIAL_PARAM = /^(x-amz-(credential|signature|security-token)|x-goog-(credential|signature)|sig|signature|token|access_token|id_token|refresh_token|auth|authorization|api[-_]?key|apikey|key|secret|client_secret|password|passwd|pwd|credentials?|session(id)?)$/i;

/** A parameter value that looks like a bearer token: a JWT, or a long random-looking string (not a hex digest). */
function looksLikeToken(v: string): boolean {
  if (/^eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+/.test(v)) return true;
  return v.length >= 32 && /^[A-Za-z0-9+/=_%-]+$/.test(v) && !/^[0-9a-f]+$/i.test(v) && /[0-9]/.test(v) && /[A-Z]/.test(v) && /[a-z]/.test(v);
}

/**
 * `ref` as it may appear in a message or the lock: URL userinfo (`user:password@`) and the values
 * of credential-like query/fragment parameters become `***`. Everything else is kept byte for byte
 * (a ref without credentials comes back unchanged), so the result still says which source it was.
 */
export function redactRef(ref: string): string {
  const m = /^([a-z][a-z0-9+.-]*:\/\/)([^/?#]*@)?([^?#]*)(\?[^#]*)?(#.*)?$/is.exec(ref);
  if (!m) return ref;
  const params = (part: string | undefined, lead: string) => part === undefined ? "" : lead + part.slice(1).split("&").map((kv) => {
    const eq = kv.indexOf("=");
    if (eq < 0) return kv;
    let name: string;
    let value: string;
    try { name = decodeURIComponent(kv.slice(0, eq)); value = decodeURIComponent(kv.slice(eq + 1)); } catch { name = kv.slice(0, eq); value = kv.slice(eq + 1); }
    return CREDENTIAL_PARAM.test(name) || looksLikeToken(value) ? `${kv.slice(0, eq)}=***` : kv;
  }).join("&");
  return `${m[1]}${m[2] ? "***@" : ""}${m[3]}${params(m[4], "?")}${params(m[5], "#")}`;
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
    await this.removeDeadTemporaries();
    const tmp = this.tmpPath(path.join(this.dir, "sha256"));
    let hashed: Hashed;
    const fh = await fs.open(tmp, "wx", 0o644);
    try {
      hashed = await hashStream(source, ref, opts.maxBytes, (buf) => fh.write(buf));
      await fh.sync();
      await fh.close();
      checkIntegrity(ref, hashed, opts.integrity, "The content changed or the pin is wrong. Nothing was stored. Re-pin only if the new content is trusted.");
    } catch (e) {
      await fh.close().catch(() => undefined);
      await fs.rm(tmp, { force: true });
      if (e instanceof TdxError) throw e;
      throw new TdxError("E_FETCH", `storing ${ref} failed: ${(e as Error).message}`, { hint: "Check that the cache directory is writable; nothing was stored." });
    }
    // The fresh bytes replace whatever sha256/<hex> held (an old entry may have been damaged), so
    // the aliases are re-pointed at the new inode; merely creating them would keep stale ones.
    const final = this.entryPath("sha256", hashed.digests.sha256.toString("hex"));
    await fs.rename(tmp, final);
    for (const a of ["sha384", "sha512"] as const) await this.linkEntry(final, this.entryPath(a, hashed.digests[a].toString("hex")));
    return { path: final, size: hashed.size, integrity: sriStrings(hashed.digests), fromCache: false };
  }

  /**
   * Serve `sri` from the store if it holds an entry of at most maxBytes. The entry is hashed in
   * place, never copied: putting it again would rename a new inode over sha256/<hex> and leave
   * the sha384/sha512 links on the old one. A damaged entry is an E_FETCH, never a result.
   */
  async verified(sri: Sri, ref: string, maxBytes: number): Promise<Fetched | undefined> {
    const cached = await this.lookup(sri);
    const st = cached === undefined ? undefined : await fs.stat(cached).catch(() => undefined);
    if (cached === undefined || !st?.isFile() || st.size > maxBytes) return undefined;
    const hashed = await hashStream(createReadStream(cached), ref, maxBytes);
    checkIntegrity(ref, hashed, sri, `The store entry ${cached} no longer holds the bytes it is named after; delete it and fetch again.`);
    // Entries written by older versions (or half-linked when a process died) may sit on another
    // inode or be missing: re-point them at the verified one. Best effort, so a read-only store
    // still serves the verified entry itself.
    let main = cached;
    for (const a of ALGORITHMS) {
      const entry = this.entryPath(a, hashed.digests[a].toString("hex"));
      const linked = (await sameFile(entry, st)) || (await this.linkEntry(cached, entry).then(() => true, () => false));
      if (a === "sha256" && linked) main = entry;
    }
    return { path: main, size: hashed.size, integrity: sriStrings(hashed.digests), fromCache: true };
  }

  private tmpPath(dir: string): string {
    return path.join(dir, `.tmp-${process.pid}-${randomBytes(6).toString("hex")}`);
  }

  /** Temporaries of fetches whose process died (killed mid-download): named `.tmp-<pid>-<hex>` by tmpPath. */
  private async removeDeadTemporaries(): Promise<void> {
    for (const a of ALGORITHMS) {
      const dir = path.join(this.dir, a);
      for (const n of await fs.readdir(dir).catch(() => [] as string[])) {
        const m = /^\.tmp-(\d+)-[0-9a-f]{12}$/.exec(n);
        if (m && !processAlive(Number(m[1]))) await fs.rm(path.join(dir, n), { force: true });
      }
    }
  }

  /**
   * Make `entry` a hard link to `file`, atomically replacing whatever it was (link to a temporary,
   * rename over). rename() between two links of one inode does nothing and keeps the source name,
   * hence the unconditional removal of the temporary.
   */
  private async linkEntry(file: string, entry: string): Promise<void> {
    const tmp = this.tmpPath(path.dirname(entry));
    await fs.link(file, tmp);
    try {
      await fs.rename(tmp, entry);
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

async function sameFile(p: string, st: { ino: number; dev: number }): Promise<boolean> {
  const other = await fs.stat(p).catch(() => undefined);
  return other !== undefined && other.ino === st.ino && other.dev === st.dev;
}

interface Hashed { size: number; digests: Record<Algorithm, Buffer> }

/** Hash `source` with every algorithm, handing each chunk to `sink`; refuses more than maxBytes. */
async function hashStream(source: Readable, ref: string, maxBytes: number, sink?: (buf: Buffer) => Promise<unknown>): Promise<Hashed> {
  const hashes = Object.fromEntries(ALGORITHMS.map((a) => [a, createHash(a)])) as Record<Algorithm, ReturnType<typeof createHash>>;
  let size = 0;
  try {
    for await (const chunk of source) {
      const buf = chunk as Buffer;
      size += buf.length;
      if (size > maxBytes) {
        source.destroy();
        throw new TdxError("E_FETCH", `${ref} is larger than the limit of ${maxBytes} bytes`, { hint: "Raise maxBytes if this input is really that large, or check that the URL is the one you meant." });
      }
      for (const a of ALGORITHMS) hashes[a].update(buf);
      if (sink) await sink(buf);
    }
  } catch (e) {
    if (e instanceof TdxError) throw e;
    throw new TdxError("E_FETCH", `reading ${ref} failed: ${(e as Error).message}`, { hint: "Check that the source exists and is reachable; nothing was stored." });
  }
  return { size, digests: Object.fromEntries(ALGORITHMS.map((a) => [a, hashes[a].digest()])) as Record<Algorithm, Buffer> };
}

const sriStrings = (digests: Record<Algorithm, Buffer>) =>
  Object.fromEntries(ALGORITHMS.map((a) => [a, `${a}-${digests[a].toString("base64")}`])) as Record<Algorithm, string>;

/**
 * E_FETCH unless the digest matches the pin. Compares digest bytes, not SRI strings: parseSri
 * accepts base64 without '=' padding (or with non-zero trailing bits), which names the same
 * digest as the canonical form Node prints.
 */
function checkIntegrity(ref: string, hashed: Hashed, pin: Sri | undefined, hint: string): void {
  if (!pin || Buffer.from(pin.b64, "base64").equals(hashed.digests[pin.alg])) return;
  const expected = `${pin.alg}-${pin.b64}`;
  const actual = `${pin.alg}-${hashed.digests[pin.alg].toString("base64")}`;
  throw new TdxError("E_FETCH", `integrity mismatch for ${ref}: expected ${expected}, got ${actual}`, { hint, details: { ref, expected, actual } });
}

function isRemote(ref: string): boolean {
  return /^https?:\/\//i.test(ref);
}

/** Open a source as a stream; http(s) with redirects (max 5), an inactivity timeout and the caller's deadline. */
function open(ref: string, opts: FetchOptions, signal: AbortSignal, redirects = 0): Promise<Readable> {
  const shown = redactRef(ref);
  if (!isRemote(ref)) {
    let file: string;
    if (/^file:/i.test(ref)) {
      try { file = fileURLToPath(ref); } catch { return Promise.reject(new TdxError("E_FETCH", `not a valid file URL: ${shown}`)); }
    } else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(ref)) {
      return Promise.reject(new TdxError("E_FETCH", `unsupported URL scheme in ${shown}`, { hint: "Use http(s)://, file:// or a path." }));
    } else {
      file = path.resolve(opts.baseDir ?? process.cwd(), ref);
    }
    return fs.stat(file).then(
      (st) => {
        if (!st.isFile()) throw new TdxError("E_FETCH", `${shown} is not a regular file`, { hint: "Point src at a file." });
        return createReadStream(file);
      },
      (e: NodeJS.ErrnoException) => {
        throw new TdxError("E_FETCH", `cannot read ${shown}: ${e.code}`, { hint: `Check that ${redactRef(file)} exists.` });
      },
    );
  }
  return new Promise((resolve, reject) => {
    const lib = ref.toLowerCase().startsWith("https:") ? https : http;
    const req = lib.get(ref, { timeout: opts.timeoutMs ?? 60_000, headers: { "user-agent": "tdxvm" }, signal }, (res) => {
      const status = res.statusCode ?? 0;
      if (status >= 300 && status < 400 && res.headers.location) {
        res.resume();
        if (redirects >= 5) return reject(new TdxError("E_FETCH", `too many redirects for ${shown}`));
        const next = redirectTarget(ref, res.headers.location);
        return next instanceof TdxError ? reject(next) : resolve(open(next, opts, signal, redirects + 1));
      }
      if (status !== 200) {
        res.resume();
        return reject(new TdxError("E_FETCH", `GET ${shown} answered HTTP ${status}`, { hint: "Check the URL; nothing was stored." }));
      }
      resolve(res);
    });
    req.on("timeout", () => req.destroy(new Error(`no data for ${opts.timeoutMs ?? 60_000} ms`)));
    req.on("error", (e) => reject(new TdxError("E_FETCH", `GET ${shown} failed: ${e.message}`, { hint: "Check the network and the URL; nothing was stored." })));
  });
}

/**
 * Where a redirect from `ref` leads, or why it is refused. Only http(s) targets are followed: the
 * server is not trusted, and a Location of file:///etc/shadow would otherwise be read from this
 * machine into the store (and reported back with its digests) as if it were the download.
 */
function redirectTarget(ref: string, location: string): string | TdxError {
  const shown = redactRef(ref);
  let next: URL;
  try {
    next = new URL(location, ref);
  } catch {
    return new TdxError("E_FETCH", `${shown} redirected to an invalid URL: ${JSON.stringify(redactRef(location).slice(0, 200))}`, { hint: "Check the URL; nothing was stored." });
  }
  if (next.protocol !== "http:" && next.protocol !== "https:") {
    return new TdxError("E_FETCH", `${shown} redirected to a ${next.protocol} URL; only http(s) redirects are followed`, {
      hint: "A server may only redirect to another http(s) URL. Point src at the final location if it is really meant.",
    });
  }
  // A downgrade would hand the rest of the transfer (and any credentials in the URL) to anyone on the path.
  if (/^https:/i.test(ref) && next.protocol === "http:") {
    return new TdxError("E_FETCH", `${shown} redirected from https to http (${redactRef(next.toString())}); downgrades are refused`, {
      hint: "Point src at an https URL that does not redirect to plain http.",
    });
  }
  return next.toString();
}

/** Fetch `ref` into `store`, verifying `integrity` when given. */
export async function fetchInput(store: ContentStore, ref: string, opts: FetchOptions = {}): Promise<Fetched> {
  const sri = opts.integrity !== undefined ? parseSri(opts.integrity) : undefined;
  const maxBytes = opts.maxBytes ?? 4 * 1024 ** 3;
  const shown = redactRef(ref);
  const cached = sri && (await store.verified(sri, shown, maxBytes));
  if (cached) return cached;
  if (opts.offline && isRemote(ref)) {
    throw new TdxError("E_POLICY", `policy rule networkMode blocked this: ${shown} is not in the content store and the network mode is offline`, {
      hint: "Lock once in online mode (it fills the cache), or copy the cache directory to this machine.",
      details: { rule: "networkMode" },
    });
  }
  // One deadline for everything (connect, redirects, body): the inactivity timeout alone lets a
  // server that sends a byte now and then hold the fetch forever.
  const deadlineMs = opts.deadlineMs ?? 30 * 60_000;
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), deadlineMs);
  try {
    return await store.put(addAbortSignal(ac.signal, await open(ref, opts, ac.signal)), shown, { integrity: sri, maxBytes });
  } catch (e) {
    if (!ac.signal.aborted) throw e;
    throw new TdxError("E_FETCH", `fetching ${shown} did not finish within ${deadlineMs / 1000} s`, { hint: "Check the network and the server, or raise the deadline; nothing was stored." });
  } finally {
    clearTimeout(timer);
  }
}
