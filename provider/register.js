"use strict";
// Load tdxvm's TypeScript sources on demand: @swc/core strips the types (no type-checking, no
// TypeScript compiler loaded: fast) and pirates hooks `require` for this package's own files
// only — wherever the package is installed, node_modules included — always emitting CommonJS.
// Used by the package entry points (tdxvm, tdxvm/components, tdxvm/dynamic) and the CLI.
// Idempotent; `registerTdxvm({also})` widens the hook (the CLI adds the user's recipe files).
const path = require("node:path");

const root = path.join(__dirname, "..");
const ours = (file) => file.startsWith(root + path.sep) && !file.slice(root.length).includes(`${path.sep}node_modules${path.sep}`);
const extra = [];
let registered = false;

function transform(code, filename) {
  return require("@swc/core").transformSync(code, {
    filename,
    jsc: { parser: { syntax: "typescript" }, target: "es2022", keepClassNames: true },
    module: { type: "commonjs" },
    sourceMaps: "inline",
    swcrc: false,
    configFile: false,
  }).code;
}

module.exports = function registerTdxvm(opts = {}) {
  if (opts.also) extra.push(opts.also);
  if (registered) return;
  registered = true;
  require("pirates").addHook(transform, {
    exts: [".ts"],
    ignoreNodeModules: false,
    matcher: (file) => ours(file) || extra.some((f) => f(file)),
  });
};
