/** @type {import('jest').Config} */
const swc = ["@swc/jest", { jsc: { parser: { syntax: "typescript" }, target: "es2022" }, module: { type: "commonjs", ignoreDynamic: false } }];
module.exports = {
  testEnvironment: "node",
  transform: { "^.+\\.ts$": swc },
  testMatch: ["<rootDir>/tests/**/*.test.ts"],
  testTimeout: 30_000,
  setupFiles: ["<rootDir>/tests/setup.ts"],
  // The default output, then a per-suite time table (tests/suiteTimes.js).
  reporters: ["default", "<rootDir>/tests/suiteTimes.js"],
  // Provisions the tools tree (OVMF, ukify, systemd-measure, pesign, sfdisk) and builds the test UKI once per run.
  globalSetup: "<rootDir>/tests/globalSetup.ts",
  globalTeardown: "<rootDir>/tests/globalTeardown.ts",
  // Unit tests and real (bake/boot) tests run in one `npm test`; slow real tests carry their own timeouts.
};
