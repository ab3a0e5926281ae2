"use strict";
// Load tdxvm's TypeScript sources on demand: @swc/core strips the types (no type-checking, no
// TypeScript compiler loaded: fast) and pirates hooks `require` for this package's own files
// only — wherever the package is installed, node_modules included — always emitting CommonJS.
// Used by the package entry points (tdxvm, tdxvm/components, tdxvm/dynamic) and the CLI.
// Idempotent; `registerTdxvm({also})` widens the hook (the CLI adds the user's recipe files).
//
// The JavaScript is cached per source file in <cache dir>/js (one entry per file and swc version,
// replaced when the source changes; checked by the source's SHA-256; only entries this user owns
// and nobody else can write are read), so a process whose files
// are all cached never loads @swc/core: a fresh `require("tdxvm")` then costs a fraction of the
// time and memory. An unwritable cache only means compiling on every load.
const path = require("node:path");
const os = require("node:os");
const fs = require("node:fs");
const { createHash, randomBytes } = require("node:crypto");

const root = path.join(__dirname, "..");
const ours = (file) => file.startsWith(root + path.sep) && !file.slice(root.length).includes(`${path.sep}node_modules${path.sep}`);
const extra = [];
let registered = false;

/** tdxvm's cache directory: $TDXVM_CACHE_DIR, else $XDG_CACHE_HOME/tdxvm, else ~/.cache/tdxvm. */
function defaultCacheDir() {
  return process.env.TDXVM_CACHE_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), ".cache"), "tdxvm");
}

const sha256 = (s) => createHash("sha256").update(s).digest("hex");

/**
 * A cache entry is code this process will run: read it only when it and its directory belong to
 * us and nobody else may write them (the stamp proves the source it came from, not who wrote it).
 * Anything else — missing, a link, another owner, group/other-writable — reads as "not cached".
 */
const uid = typeof process.geteuid === "function" ? process.geteuid() : undefined;
const ownedByUs = (st) => uid === undefined || (st.uid === uid && (st.mode & 0o022) === 0);

/** The cache directory is ours: a real directory (not a link), our owner, nobody else may write it. */
function trustedDir(dir) {
  try {
    const d = fs.lstatSync(dir);
    return d.isDirectory() && ownedByUs(d);
  } catch {
    return false;
  }
}

function trustedRead(dir, entry) {
  let fd;
  try {
    if (!trustedDir(dir)) return undefined;
    fd = fs.openSync(entry, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    const st = fs.fstatSync(fd);
    if (!st.isFile() || !ownedByUs(st)) return undefined;
    return fs.readFileSync(fd, "utf8");
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}
let swcVersion;

/**
 * TypeScript → CommonJS JavaScript with @swc/core, through the cache. `filename` names the source
 * in the output (source maps); `sourceMaps`: "inline" or false.
 */
function transform(code, filename, opts = {}) {
  const options = {
    filename,
    jsc: { parser: { syntax: "typescript" }, target: "es2022", keepClassNames: true },
    module: { type: "commonjs" },
    sourceMaps: opts.sourceMaps ?? "inline",
    swcrc: false,
    configFile: false,
  };
  swcVersion ??= JSON.parse(fs.readFileSync(require.resolve("@swc/core/package.json"), "utf8")).version;
  const dir = path.join(defaultCacheDir(), "js");
  const entry = path.join(dir, `${sha256(JSON.stringify([swcVersion, options]))}.js`);
  const stamp = `// tdxvm ${sha256(code)}\n`;
  const cached = trustedRead(dir, entry);
  if (cached !== undefined && cached.startsWith(stamp)) return cached.slice(stamp.length);
  const out = require("@swc/core").transformSync(code, options).code;
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    // Write only where we would read (a directory another user can write is not a cache of ours),
    // through a temp name nobody can guess or pre-place: created exclusively, so never through a link.
    if (trustedDir(dir)) {
      const tmp = `${entry}.${randomBytes(8).toString("hex")}.tmp`;
      try {
        fs.writeFileSync(tmp, stamp + out, { mode: 0o600, flag: "wx" });
        fs.renameSync(tmp, entry);
      } catch (e) {
        fs.rmSync(tmp, { force: true });
        throw e;
      }
    }
  } catch {
    // a read-only or foreign cache: compile again next time
  }
  return out;
}

function registerTdxvm(opts = {}) {
  if (opts.also) extra.push(opts.also);
  if (registered) return;
  registered = true;
  require("pirates").addHook((code, filename) => transform(code, filename), {
    exts: [".ts"],
    ignoreNodeModules: false,
    matcher: (file) => ours(file) || extra.some((f) => f(file)),
  });
}

module.exports = registerTdxvm;
module.exports.transform = transform;
module.exports.defaultCacheDir = defaultCacheDir;
