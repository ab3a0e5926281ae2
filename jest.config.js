/** @type {import('jest').Config} */
const swc = ["@swc/jest", { jsc: { parser: { syntax: "typescript" }, target: "es2022" }, module: { type: "commonjs", ignoreDynamic: false } }];
// ES-module-only packages (execa 9 and its dependencies): Node ≥ 20.19 require()s them natively,
// Jest's module registry does not before Node 24.9, so swc turns them into CommonJS for the tests.
const esmPackages = ["execa", "@sindresorhus/merge-streams", "figures", "is-unicode-supported", "get-stream", "@sec-ant/readable-stream", "is-stream", "human-signals", "is-plain-obj", "npm-run-path", "path-key", "pretty-ms", "parse-ms", "strip-final-newline", "yoctocolors", "unicorn-magic"];
const esm = `/node_modules/(${esmPackages.join("|")})/`;
module.exports = {
  testEnvironment: "node",
  transform: { "^.+\\.ts$": swc, [`${esm}.+\\.js$`]: swc },
  transformIgnorePatterns: [`/node_modules/(?!(${esmPackages.join("|")})/)`],
  // Exported under the "import" condition only, which Jest's resolver (the "require" condition) skips.
  moduleNameMapper: { "^unicorn-magic$": "<rootDir>/node_modules/unicorn-magic/node.js" },
  testMatch: ["<rootDir>/tests/**/*.test.ts"],
  testTimeout: 30_000,
  // Two suites at a time (jest's default is one on 2 cores): a bake or a TCG boot leaves about half
  // of two cores idle (mkosi waits on apt and I/O; measured 48 % idle during a bake), so two heavy
  // suites side by side finish sooner than one after the other (measured on 2 cores: 1595 s vs
  // 2123 s). Suites share the machine: they assert on their own VMs and cache entries only.
  maxWorkers: 2,
  setupFiles: ["<rootDir>/tests/setup.ts"],
  // The default output, then a per-suite time table (tests/suiteTimes.js).
  reporters: ["default", "<rootDir>/tests/suiteTimes.js"],
  // Provisions the tools tree (OVMF, ukify, systemd-measure, pesign, sfdisk) and builds the test UKI once per run.
  globalSetup: "<rootDir>/tests/globalSetup.ts",
  globalTeardown: "<rootDir>/tests/globalTeardown.ts",
  // Unit tests and real (bake/boot) tests run in one `npm test`; slow real tests carry their own timeouts.
};
