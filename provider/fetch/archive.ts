/**
 * A content-addressed package archive: the .debs a lock pins, each stored under its SHA-256
 * (`<archive>/sha256/<hex>`, the layout of tdxvm's content store), plus an `index.json` naming
 * them for people. It makes a frozen bake independent of the live Debian mirror, which keeps only
 * the current version of each package: export it from a cache that has the packages (`tdxvm
 * archive export`), keep it as a directory, a tarball, a bucket or an internal web server, and
 * bake with `--archive <dir|url>`. Every file is checked against the lock's SHA-256 before use;
 * an archive is untrusted storage, never a source of truth.
 *
 * At bake time the debs the mirror no longer offers are served to apt as a flat repository on
 * 127.0.0.1 (Debian repository format, "flat repository": a Packages index at the root, `Suites:
 * ./`). That repository is marked trusted: its index is written here from files whose SHA-256 the
 * lock pins (apt checks each download against the index's SHA256 field).
 */
import { promises as fs, existsSync } from "node:fs";
import * as http from "node:http";
import * as path from "node:path";
import { AddressInfo } from "node:net";
import { createHash } from "node:crypto";
import { TdxError } from "../errors";
import { linkOrCopyAtomic, stableJson, writeFileAtomic } from "../lock/files";
import { pinKey, type Lock } from "../lock/schema";
import { ContentStore, fetchInput } from ".";

export type DebPin = NonNullable<Lock["debs"]>[string] & { pin: string };

/** Every pin of the lock (all profiles, image and initrd), as `name=version`, sorted. */
export function allPins(lock: Lock): string[] {
  const all = [...Object.values(lock.packages ?? {}), ...Object.values(lock.initrdPackages ?? {})].flat().map(pinKey);
  return [...new Set(all)].sort();
}

const sri = (hex: string) => `sha256-${Buffer.from(hex, "hex").toString("base64")}`;

/**
 * Put the .debs of `pins` into the local content store, verified by the lock's SHA-256: from the
 * store itself, the bake's package caches (apt's archives/ of both mkosi runs), or `archive` (a
 * directory or an http(s) URL in the archive layout). Returns the store path per pin and the pins
 * found nowhere (or that the lock has no digest for).
 */
export async function gatherDebs(lock: Lock, pins: string[], opts: { cacheDir: string; archive?: string }): Promise<{ found: Map<string, DebPin & { path: string }>; missing: string[] }> {
  const store = new ContentStore(path.join(opts.cacheDir, "content"));
  const caches = ["packages", "packages-initrd"].map((d) => path.join(opts.cacheDir, d, "cache", "apt", "archives"));
  const found = new Map<string, DebPin & { path: string }>();
  const missing: string[] = [];
  for (const pin of pins.map(pinKey)) {
    const d = lock.debs?.[pin];
    if (!d) {
      missing.push(pin);
      continue;
    }
    const refs = [...caches.map((c) => path.join(c, d.file)).filter((f) => existsSync(f)), ...(opts.archive ? [archiveRef(opts.archive, d.sha256)] : [])];
    const maxBytes = Math.max(d.size, 1) * 2 + 1024;
    let got = (await store.verified({ alg: "sha256", b64: Buffer.from(d.sha256, "hex").toString("base64") }, d.file, maxBytes).catch(() => undefined))?.path;
    for (const ref of refs) {
      if (got) break;
      got = await fetchInput(store, ref, { integrity: sri(d.sha256), maxBytes }).then((f) => f.path, (e) => {
        // A wrong file in a cache or an archive is a miss, not a reason to trust it; other errors too.
        if (!(e instanceof TdxError)) throw e;
        return undefined;
      });
    }
    if (got) found.set(pin, { ...d, pin, path: got });
    else missing.push(pin);
  }
  return { found, missing };
}

/** Where an archive keeps the file with this SHA-256. */
export function archiveRef(archive: string, sha256: string): string {
  return /^https?:\/\//i.test(archive) ? `${archive.replace(/\/+$/, "")}/sha256/${sha256}` : path.join(path.resolve(archive), "sha256", sha256);
}

/**
 * Write the pinned .debs of `lock` to the directory `out` (the archive layout): each verified by
 * its SHA-256, hard-linked where it can be. E_PACKAGES when one cannot be found locally.
 */
export async function exportArchive(lock: Lock, out: string, opts: { cacheDir: string; from?: string }): Promise<{ files: number; bytes: number; index: string }> {
  const pins = allPins(lock);
  if (!pins.length) throw new TdxError("E_LOCKFILE", "the lock pins no packages yet", { hint: "Bake the recipe once (it pins the packages it installed), then export." });
  const { found, missing } = await gatherDebs(lock, pins, { cacheDir: opts.cacheDir, archive: opts.from });
  if (missing.length) {
    throw new TdxError("E_PACKAGES", `${missing.length} pinned package(s) are not in this machine's caches${opts.from ? " nor in the archive given" : ""}: ${missing.slice(0, 12).join(" ")}${missing.length > 12 ? " …" : ""}`, {
      hint: "Export from the machine that baked the lock (its cache holds them), or import an archive first (tdxvm archive import).",
      details: { missing },
    });
  }
  await fs.mkdir(path.join(out, "sha256"), { recursive: true });
  let bytes = 0;
  for (const d of found.values()) {
    const dst = path.join(out, "sha256", d.sha256);
    if (!existsSync(dst)) await linkOrCopyAtomic(d.path, dst);
    bytes += d.size;
  }
  const index = path.join(out, "index.json");
  const listing = Object.fromEntries([...found.values()].sort((a, b) => (a.pin < b.pin ? -1 : 1)).map((d) => [d.pin, { file: d.file, sha256: d.sha256, size: d.size }]));
  const prev = await fs.readFile(index, "utf8").then((t) => JSON.parse(t) as { debs?: Record<string, unknown> }, () => ({ debs: {} }));
  await writeFileAtomic(index, stableJson({ archiveVersion: 1, generator: "tdxvm", debs: { ...prev.debs, ...listing } }));
  return { files: found.size, bytes, index };
}

/**
 * Import an archive directory into the local content store: every `sha256/<hex>` file whose
 * content has that digest (others are refused and counted, never stored).
 */
export async function importArchive(dir: string, opts: { cacheDir: string }): Promise<{ imported: number; refused: string[] }> {
  const store = new ContentStore(path.join(opts.cacheDir, "content"));
  const names = await fs.readdir(path.join(dir, "sha256")).catch(() => {
    throw new TdxError("E_VALIDATION", `${dir} is not a tdxvm package archive (no sha256/ directory)`, { hint: "Pass a directory written by `tdxvm archive export`, or a tarball of one." });
  });
  let imported = 0;
  const refused: string[] = [];
  for (const n of names.sort()) {
    // Regular files only: a link would have the store read (and copy) whatever it points at.
    if (!/^[0-9a-f]{64}$/.test(n) || !(await fs.lstat(path.join(dir, "sha256", n))).isFile()) continue;
    const ok = await fetchInput(store, path.join(dir, "sha256", n), { integrity: sri(n) }).then(() => true, (e) => {
      if (!(e instanceof TdxError)) throw e;
      return false;
    });
    if (ok) imported++;
    else refused.push(n);
  }
  return { imported, refused };
}

/**
 * The debs as a flat apt repository served on 127.0.0.1 (an ephemeral port) until `close()`.
 * `control` is each deb's control paragraph (dpkg-deb -f), to which Filename, Size and SHA256
 * are added; only the files named in the index are served.
 */
export async function serveFlatRepository(debs: Array<DebPin & { path: string; control: string }>): Promise<{ url: string; close(): Promise<void> }> {
  const files = new Map(debs.map((d) => [`/${d.file}`, d]));
  const index = debs.map((d) => `${d.control.trim()}\nFilename: ./${d.file}\nSize: ${d.size}\nSHA256: ${d.sha256}\n`).join("\n");
  // A Release file naming the index by SHA-256: apt wants one even for a trusted flat repository.
  const release = ["Origin: tdxvm", "Label: tdxvm package archive", "Date: Thu, 01 Jan 1970 00:00:00 UTC", "SHA256:", ` ${createHash("sha256").update(index).digest("hex")} ${Buffer.byteLength(index)} Packages`, ""].join("\n");
  const texts: Record<string, string> = { "/Packages": index, "/Release": release };
  const server = http.createServer((req, res) => {
    // apt asks for a flat repository's files as "/./Packages", "/./hello_2.10-3_amd64.deb".
    let url: string;
    try {
      url = path.posix.normalize(decodeURIComponent((req.url ?? "/").split("?")[0]));
    } catch {
      return void res.writeHead(400).end();
    }
    if (req.method !== "GET" && req.method !== "HEAD") return void res.writeHead(405).end();
    const text = texts[url];
    if (text !== undefined) return void res.writeHead(200, { "content-type": "text/plain", "content-length": Buffer.byteLength(text) }).end(req.method === "HEAD" ? undefined : text);
    const d = files.get(url);
    if (!d) return void res.writeHead(404).end();
    res.writeHead(200, { "content-type": "application/vnd.debian.binary-package", "content-length": d.size });
    if (req.method === "HEAD") return void res.end();
    const { createReadStream } = require("node:fs") as typeof import("node:fs");
    createReadStream(d.path).on("error", () => res.destroy()).pipe(res);
  });
  server.maxConnections = 32;
  await new Promise<void>((resolve, reject) => server.once("error", reject).listen(0, "127.0.0.1", () => resolve()));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/`,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

/** The deb822 apt source for a flat repository at `url` (trusted: see the file comment). */
export function flatRepositorySource(url: string): string {
  return ["# Generated by tdxvm: pinned packages from a package archive (tdx.lock's SHA-256s), served for this bake only.", "Types: deb", `URIs: ${url}`, "Suites: ./", "Trusted: yes", ""].join("\n");
}
