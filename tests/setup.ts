import fc from "fast-check";
// Property and fuzz tests explore new cases on every developer run; CI uses one seed so a red
// build is reproducible (`FC_SEED=<n> npm test` replays any run).
const seed = process.env.FC_SEED ?? (process.env.CI ? "20261124" : undefined);
if (seed !== undefined) fc.configureGlobal({ seed: Number(seed) });
