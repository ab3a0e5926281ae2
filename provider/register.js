"use strict";
// Load tdxvm's TypeScript sources with @swc-node/register, for this package's own files only
// (wherever it is installed, node_modules included), always as CommonJS and with tdxvm's own
// tsconfig — whatever the host project's tsconfig says. Used by the CLI, the package entry
// points and the dynamic-provider host. Idempotent.
const path = require("node:path");

const root = path.join(__dirname, "..");
let registered = false;

module.exports = function registerTdxvm() {
  if (registered) return;
  registered = true;
  const ours = (file) => file.startsWith(root + path.sep) && !file.slice(root.length).includes(`${path.sep}node_modules${path.sep}`);
  const previous = process.env.SWC_NODE_PROJECT;
  process.env.SWC_NODE_PROJECT = path.join(root, "tsconfig.json");
  try {
    require("@swc-node/register/register").register({}, { ignoreNodeModules: false, matcher: ours });
  } finally {
    if (previous === undefined) delete process.env.SWC_NODE_PROJECT;
    else process.env.SWC_NODE_PROJECT = previous;
  }
};
