"use strict";
// `require("tdxvm/components")`: the Pulumi components, compiled from TypeScript on load.
require("../provider/register")();
module.exports = require("./index.ts");
