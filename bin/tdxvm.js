#!/usr/bin/env node
// tdxvm CLI shim: load TypeScript sources (ours and the user's recipe) through @swc-node/register.
"use strict";
require("@swc-node/register");
require("../provider/cli.ts")
  .main(process.argv.slice(2))
  .then((code) => process.exit(code));
