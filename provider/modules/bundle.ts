/**
 * A small, deterministic CommonJS bundler for programs tdxvm bakes into images (the agent): it
 * follows `require()`s from an entry file, strips TypeScript with @swc/core (the same transform
 * tdxvm loads itself with), and emits one file whose modules are keyed by package-relative paths
 * ("agent/main.ts", "node_modules/zod/v4/core/core.cjs"). The bytes therefore depend only on
 * tdxvm's sources and the locked versions of the packages it pulls in, never on where tdxvm is
 * installed — they are measured as part of the image, so they must be the same for everyone.
 * Only Node's built-in modules stay outside the bundle.
 *
 * CommonJS only, so the agent's one command (agent/exec.ts: systemctl) runs on
 * node:child_process, not on execa like the host's: execa 9 is ES modules with ~15 packages of
 * its own, which would enter every image's measured agent, for one execFile with a deadline.
 */
import { readFileSync, statSync } from "node:fs";
import { builtinModules, createRequire } from "node:module";
import * as path from "node:path";
import { TdxError } from "../errors";

const ROOT = path.join(__dirname, "..", "..");
const BUILTIN = new Set(builtinModules);

function keyOf(file: string): string {
  const nm = file.lastIndexOf(`${path.sep}node_modules${path.sep}`);
  const rel = nm >= 0 ? `node_modules/${file.slice(nm + "/node_modules/".length)}` : path.relative(ROOT, file);
  if (rel.startsWith("..")) throw new TdxError("E_BAKE", `bundle: ${file} lies outside tdxvm`, { hint: "The agent may only require tdxvm's own files, its dependencies and Node built-ins." });
  return rel.split(path.sep).join("/");
}

function transform(code: string, file: string): string {
  if (!file.endsWith(".ts")) return code;
  // The transform tdxvm loads itself with (and its cache), without source maps: keyed names only.
  return (require("../register") as { transform(code: string, filename: string, opts: { sourceMaps: false }): string }).transform(code, keyOf(file), { sourceMaps: false });
}

/** `require("...")` calls with a literal specifier (after the TypeScript→CommonJS transform). */
function requires(code: string): string[] {
  return [...new Set([...code.matchAll(/\brequire\(\s*(["'])([^"'\n]+)\1\s*\)/g)].map((m) => m[2]))];
}

export function bundle(entry: string): Buffer {
  const modules = new Map<string, { code: string; deps: Record<string, string> }>();
  const visit = (file: string) => {
    const key = keyOf(file);
    if (modules.has(key)) return key;
    const code = transform(readFileSync(file, "utf8"), file);
    const deps: Record<string, string> = {};
    modules.set(key, { code, deps });
    const req = createRequire(file);
    for (const spec of requires(code)) {
      if (spec.startsWith("node:") || BUILTIN.has(spec)) continue;
      let resolved: string;
      try {
        resolved = req.resolve(spec.startsWith(".") ? resolveTs(path.dirname(file), spec) : spec);
      } catch (e) {
        throw new TdxError("E_BAKE", `bundle: ${key} requires ${JSON.stringify(spec)}, which cannot be resolved (${(e as Error).message.split("\n")[0]})`);
      }
      if (resolved.endsWith(".node")) throw new TdxError("E_BAKE", `bundle: ${key} pulls in a native module (${spec})`, { hint: "The agent runs on the image's plain Node.js: native addons cannot be bundled." });
      deps[spec] = visit(resolved);
    }
    return key;
  };
  const main = visit(entry);
  const body = [...modules.keys()].sort().map((k) => {
    const m = modules.get(k)!;
    const deps = Object.fromEntries(Object.entries(m.deps).sort(([a], [b]) => (a < b ? -1 : 1)));
    return `${JSON.stringify(k)}: [function (module, exports, require) {\n${m.code}\n}, ${JSON.stringify(deps)}],`;
  });
  return Buffer.from([
    "#!/usr/bin/env node",
    "\"use strict\";",
    `// Bundled by tdxvm from ${main} (modules keyed by package-relative path; only Node built-ins are external).`,
    "const __modules = {",
    ...body,
    "};",
    "const __cache = {};",
    "function __load(key) {",
    "  if (__cache[key]) return __cache[key].exports;",
    "  const [fn, deps] = __modules[key];",
    "  const module = (__cache[key] = { exports: {} });",
    "  fn.call(module.exports, module, module.exports, (spec) => (spec in deps ? __load(deps[spec]) : require(spec)));",
    "  return module.exports;",
    "}",
    `__load(${JSON.stringify(main)}).run();`,
    "",
  ].join("\n"));
}

/** A relative specifier as a file: TypeScript sources are imported without their extension. */
function resolveTs(dir: string, spec: string): string {
  const base = path.resolve(dir, spec);
  return [base, `${base}.ts`, path.join(base, "index.ts")].find((c) => statSync(c, { throwIfNoEntry: false })?.isFile()) ?? base;
}
