/**
 * tdxvm CLI (for CI and machines without Pulumi):
 *   tdxvm lock  <recipe.ts>                       write build/tdx.lock
 *   tdxvm emit  <recipe.ts> [--frozen]            write the mkosi tree to build/mkosi
 *   tdxvm bake  <recipe.ts> [--frozen] [--profile P] [--no-cache] [--quiet]
 *   tdxvm run   <recipe.ts> [--frozen] [--profile P] [--keep]   bake, measure, boot a local VM, compare registers
 *   tdxvm attest <host:port> --expected <measurements.json> [--json] [--ca PEM] [--collateral FILE] [--pccs-url URL]
 *                                                  verify a running VM's agent (provider/attest/cli.ts)
 * A recipe module exports an Image, or a function returning one, as default or `recipe`.
 * Common flags: --cache-dir DIR (default $TDXVM_CACHE_DIR or ~/.cache/tdxvm).
 */
import * as path from "node:path";
import { TdxError } from "./errors";
import { Image } from "./recipe/image";

interface Args { cmd: string; recipe: string; flags: Record<string, string | boolean> }

const USAGE = `usage: tdxvm attest <host:port> --expected <measurements.json> …, or tdxvm <lock|emit|bake|run> <recipe.ts> [--frozen] [--profile NAME] [--cache-dir DIR] [--no-cache] [--quiet] [--json] [--keep]`;

export function parseArgs(argv: string[]): Args {
  const [cmd, recipe, ...rest] = argv;
  if (!cmd || !["lock", "emit", "bake", "run"].includes(cmd) || !recipe) throw new TdxError("E_VALIDATION", `bad command line`, { hint: USAGE });
  const flags: Record<string, string | boolean> = {};
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (["--frozen", "--no-cache", "--quiet", "--json", "--keep"].includes(a)) flags[a.slice(2)] = true;
    else if (["--profile", "--cache-dir"].includes(a) && rest[i + 1] !== undefined) flags[a.slice(2)] = rest[++i];
    else throw new TdxError("E_VALIDATION", `unknown argument ${JSON.stringify(a)}`, { hint: USAGE });
  }
  return { cmd, recipe, flags };
}

export function loadRecipe(file: string): Image {
  const abs = path.resolve(file);
  let mod: Record<string, unknown>;
  try {
    mod = require(abs);
  } catch (e) {
    throw new TdxError("E_VALIDATION", `cannot load recipe ${file}: ${(e as Error).message.split("\n")[0]}`, { hint: "Pass a .ts/.js module that exports an Image (default or `recipe`)." });
  }
  const candidate = mod.default ?? mod.recipe;
  const value = typeof candidate === "function" ? (candidate as () => unknown)() : candidate;
  if (!(value instanceof Image)) throw new TdxError("E_VALIDATION", `${file} exports no Image`, { hint: "export default function recipe() { return new Image({...}) }" });
  return value;
}

export async function main(argv: string[]): Promise<number> {
  if (argv[0] === "attest") return (await import("./attest/cli")).attestCommand(argv.slice(1));
  try {
    const a = parseArgs(argv);
    const img = loadRecipe(a.recipe);
    const cacheDir = a.flags["cache-dir"] as string | undefined;
    if (a.cmd === "lock") {
      const lock = await img.lock({ cacheDir });
      console.log(`wrote ${path.join(img.projectDir, "build", "tdx.lock")} (${Object.keys(lock.recipe.profiles).length} profile(s))`);
    } else if (a.cmd === "emit") {
      const r = await img.emit({ cacheDir, frozen: a.flags.frozen === true });
      console.log(`wrote mkosi tree to ${r.dir} (${r.tree.size} files)`);
    } else if (a.cmd === "run") {
      const { bootAndCompare, formatRunReport } = await import("./deploy/run");
      const { defaultCacheDir } = await import("./pipeline");
      const r = await img.bake({ cacheDir, frozen: a.flags.frozen === true, profile: a.flags.profile as string | undefined, quiet: a.flags.quiet === true });
      console.error(`tdxvm: baked profile ${r.profile}${r.cacheHit ? " (cache hit)" : ""}`);
      const report = await bootAndCompare(r, { cacheDir: cacheDir ?? defaultCacheDir(), keep: a.flags.keep === true, onProgress: (m) => console.error(`tdxvm: ${m}`) });
      console.log(a.flags.json ? JSON.stringify(report, null, 2) : formatRunReport(report));
      return report.ok ? 0 : 4;
    } else {
      const r = await img.bake({ cacheDir, frozen: a.flags.frozen === true, profile: a.flags.profile as string | undefined, useCache: a.flags["no-cache"] !== true, quiet: a.flags.quiet === true });
      if (a.flags.json) console.log(JSON.stringify(r, null, 2));
      else {
        console.log(`baked profile ${r.profile}${r.cacheHit ? " (cache hit)" : ""}; systemd-stub ${r.systemdStub ?? "unknown"}; report: ${path.join(img.projectDir, "build", "report.json")}`);
        for (const x of r.artifacts) console.log(`  ${x.target.padEnd(5)} ${x.kind.padEnd(7)} ${(x.size / 1048576).toFixed(1).padStart(8)} MiB  sha256:${x.sha256}  ${x.path}`);
      }
    }
    return 0;
  } catch (e) {
    if (e instanceof TdxError) {
      console.error(String(e));
      return 2;
    }
    console.error(e);
    return 1;
  }
}
