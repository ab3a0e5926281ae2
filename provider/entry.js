"use strict";
// `require("tdxvm")`: the library (recipe → lock → bake → measure), compiled from TypeScript on load.
require("./register")();
module.exports = require("./index.ts");
