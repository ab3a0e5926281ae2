"use strict";
// One fresh process, as a user runs it (plain `node`, tdxvm loaded through its package entries):
//   node measure.js <backend>                  require("tdxvm"), bake examples/local-qemu/recipe.ts (a cache hit), measure it
//   node measure.js <backend> <uki> <disk>     require("tdxvm/measure"), measure these artifacts (no recipe, no bake)
// Prints the registers as JSON (the benchmark checks them against its own in-process result).
const path = require("node:path");

async function main() {
  const [backend, uki, disk] = process.argv.slice(2);
  const { measureBake } = require(uki ? "tdxvm/measure" : "tdxvm");
  let bake;
  if (uki) {
    const artifact = (target, p) => ({ target, kind: path.extname(p).slice(1), path: p, sha256: "0".repeat(64), size: 0 });
    bake = { profile: "default", systemdStub: null, artifacts: [artifact("uki", uki), artifact("disk", disk)] };
  } else {
    const { recipe } = require("../../../examples/local-qemu/recipe.ts");
    bake = await recipe().bake({ quiet: true });
    if (!bake.cacheHit) throw new Error("the example was not a cache hit: run the benchmark again");
  }
  const m = await measureBake(bake, { backend });
  console.log(JSON.stringify(Object.fromEntries(Object.entries(m.registers).map(([k, v]) => [k, v.value]))));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
