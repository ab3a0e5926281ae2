#!/usr/bin/env node
// tdxvm CLI shim: tdxvm's TypeScript and the user's recipe (.ts outside node_modules) are compiled on load.
"use strict";
// `measure` hashes the UKI on two threads: boot the second one now, while this one loads tdxvm and the recipe.
if (process.argv.slice(2).includes("measure")) require("../provider/measure/hashjobs.js").prewarm();
require("../provider/register")({ also: (file) => !file.includes("/node_modules/") });
require("../provider/cli.ts")
  .main(process.argv.slice(2))
  .then((code) => process.exit(code));
