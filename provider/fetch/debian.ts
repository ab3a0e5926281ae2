/**
 * Debian archive indices: which package versions a mirror offers, and the .deb behind each
 * (file, SHA-256, size), from its `dists/<suite>/<component>/binary-<arch>/Packages.{gz,xz}`.
 *
 * Used before a frozen bake to tell "the archive dropped a pinned version" (Debian keeps only the
 * current version of each package on its live mirror) from any other failure, and to serve a
 * pinned package set from a content-addressed archive instead. Index format: Debian Policy §5.3
 * and the Debian repository format (wiki.debian.org/DebianRepository/Format): stanzas of
 * `Field: value` lines separated by blank lines; `Filename` is relative to the mirror's root.
 */
import { gunzipSync } from "node:zlib";
import { TdxError } from "../errors";
import { pinKey, type Lock } from "../lock/schema";

export { pinKey };

export interface DebEntry { name: string; version: string; arch: string; filename: string; sha256: string; size: number }

/** Parse a Packages index (the text); entries without a SHA-256 or a file name are skipped. */
export function parsePackagesIndex(text: string): DebEntry[] {
  const out: DebEntry[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const f: Record<string, string> = {};
    for (const line of stanza.split("\n")) {
      const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(line);
      if (m) f[m[1].toLowerCase()] = m[2].trim();
    }
    if (!f.package || !f.version || !f.filename || !/^[0-9a-f]{64}$/.test(f.sha256 ?? "")) continue;
    out.push({ name: f.package, version: f.version, arch: f.architecture ?? "all", filename: f.filename, sha256: f.sha256, size: Number(f.size ?? 0) });
  }
  return out;
}

/** The index URLs of the apt sources a lock's bake installs from (the same as compile's aptSources). */
export function indexUrls(debian: { release: string; mirror: string; securityMirror: string; snapshotMirror: string; snapshot: string | null }, arch = "amd64"): string[] {
  const main = debian.snapshot ? `${debian.snapshotMirror}/archive/debian/${debian.snapshot}` : debian.mirror;
  const security = debian.snapshot ? `${debian.snapshotMirror}/archive/debian-security/${debian.snapshot}` : debian.securityMirror;
  const r = debian.release;
  return [
    `${main}/dists/${r}/main/binary-${arch}/Packages.gz`,
    `${main}/dists/${r}-updates/main/binary-${arch}/Packages.gz`,
    `${security}/dists/${r}-security/main/binary-${arch}/Packages.gz`,
  ];
}

/**
 * Fetch and parse one suite's Packages index: `Packages.gz` where the mirror has it (zlib), else
 * `Packages.xz` (Debian's updates and security suites publish only that) through the host's
 * `xz -dc`. Bounded: 256 MiB compressed, 1 GiB of text, 60 s each. E_FETCH when it cannot.
 */
export async function fetchIndex(url: string, timeoutMs = 60_000, maxBytes = MAX_INDEX): Promise<DebEntry[]> {
  const gz = await download(url, timeoutMs, maxBytes).catch((e: TdxError) => e);
  if (!(gz instanceof TdxError)) return parsePackagesIndex(inflate(gz, url, (b) => gunzipSync(b, { maxOutputLength: MAX_TEXT })));
  const xzUrl = url.replace(/\.gz$/, ".xz");
  const xz = await download(xzUrl, timeoutMs, maxBytes).catch((e: TdxError) => e);
  if (xz instanceof TdxError) throw gz.message.includes("answered 404") ? xz : gz;
  return parsePackagesIndex(inflate(xz, xzUrl, (b) => {
    const { execaSync } = require("execa") as typeof import("execa");
    const r = execaSync("xz", ["-dc"], { input: b, encoding: "buffer", maxBuffer: MAX_TEXT, timeout: timeoutMs, reject: false });
    // shortMessage names the command and why it failed (exit code, signal, timeout, ENOENT); stderr is xz's own.
    if (r.failed) throw new Error(`${r.shortMessage}: ${Buffer.from(r.stderr ?? []).toString("utf8").slice(0, 200)}`);
    return Buffer.from(r.stdout);
  }));
}

const MAX_TEXT = 1024 * 1024 * 1024;

async function download(url: string, timeoutMs: number, maxBytes: number): Promise<Buffer> {
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  } catch (e) {
    throw new TdxError("E_FETCH", `cannot fetch the package index ${url}: ${(e as Error).message}`, { hint: "Check the network and the mirror URL in tdx.lock (debian.mirror)." });
  }
  if (!res.ok) throw new TdxError("E_FETCH", `the package index ${url} answered ${res.status}`, { hint: "Check the mirror URL and release in tdx.lock." });
  const tooBig = () => new TdxError("E_FETCH", `the package index ${url} is larger than ${maxBytes} bytes`, { hint: "Check the mirror URL in tdx.lock: a Packages index is tens of MiB." });
  if (Number(res.headers.get("content-length") ?? 0) > maxBytes) throw tooBig();
  // Counted as it streams: a chunked answer (no Content-Length) cannot make this buffer without bound.
  const chunks: Buffer[] = [];
  let size = 0;
  const reader = res.body?.getReader();
  if (!reader) return Buffer.alloc(0);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > maxBytes) {
        await reader.cancel().catch(() => undefined);
        throw tooBig();
      }
      chunks.push(Buffer.from(value));
    }
  } catch (e) {
    if (e instanceof TdxError) throw e;
    throw new TdxError("E_FETCH", `reading the package index ${url} failed: ${(e as Error).message}`, { hint: "Check the network and the mirror URL in tdx.lock (debian.mirror)." });
  }
  return Buffer.concat(chunks, size);
}

/** The largest compressed index read (trixie's main/binary-amd64 Packages.gz is about 10 MiB). */
export const MAX_INDEX = 256 * 1024 * 1024;

function inflate(body: Buffer, url: string, f: (b: Buffer) => Buffer): string {
  try {
    return f(body).toString("utf8");
  } catch (e) {
    throw new TdxError("E_FETCH", `cannot decompress the package index ${url} (${(e as Error).message})`, { hint: "Check the mirror URL in tdx.lock; an .xz index needs xz (apt-get install xz-utils)." });
  }
}

/** `name=version` (the pin form, without an :arch qualifier) → entry, over several indices. */
export function offered(indices: DebEntry[][]): Map<string, DebEntry> {
  const m = new Map<string, DebEntry>();
  for (const idx of indices) for (const e of idx) m.set(`${e.name}=${e.version}`, e);
  return m;
}

/**
 * The pins no source of the lock offers (the form `name=version`), or undefined when an index
 * could not be fetched (nothing is known then).
 */
export async function unobtainablePins(lock: { debian: Parameters<typeof indexUrls>[0] }, pins: string[]): Promise<string[] | undefined> {
  let indices: DebEntry[][];
  try {
    indices = await Promise.all(indexUrls(lock.debian).map((u) => fetchIndex(u)));
  } catch {
    return undefined;
  }
  const have = offered(indices);
  return pins.filter((p) => !have.has(pinKey(p)));
}

/** E_PACKAGES: pinned package versions no source offers, with the ways out. */
export function pinsUnavailable(lock: Lock, profile: string, missing: string[], archive?: string): TdxError {
  const from = lock.debian.snapshot ? `the snapshot ${lock.debian.snapshot}` : `the Debian mirror ${lock.debian.mirror}`;
  return new TdxError("E_PACKAGES", `${missing.length} package version(s) that tdx.lock pins for profile ${profile} are offered neither by ${from} nor by ${archive ? `the archive ${archive} or ` : ""}this machine's caches: ${missing.slice(0, 12).join(" ")}${missing.length > 12 ? " …" : ""}`, {
    hint: "Two ways out: bake from a package archive that holds them (--archive DIR|URL; `tdxvm archive export` writes one on a machine whose cache has them), or pin a Debian snapshot in tdx.lock (debian.snapshot). Or take Debian's updates on purpose: `tdxvm lock --refresh` re-pins and shows which registers move, for review.",
    details: { missing },
  });
}
