"use strict";
// `require("tdxvm/dynamic")`: the dynamic-provider runtime, loaded by the serialized shim inside
// Pulumi's provider host. The sources are TypeScript; ../register.js compiles them on load.
require("../register")();
module.exports = require("./runtime.ts");
