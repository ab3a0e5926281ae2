"use strict";
// `require("tdxvm/measure")`: the measurement code only (formulas, measureBake, measureBoot, verify),
// without the recipe, lock, bake and deploy code or zod: for processes that only measure or verify.
// The sources are TypeScript; ../register.js compiles them on load.
require("../register")();
module.exports = require("./index.ts");
