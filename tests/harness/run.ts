/**
 * One Pulumi operation on a program, engine-free (see engine.ts):
 *   node -r @swc-node/register tests/harness/run.ts <up|preview|refresh|destroy> --program P --state S.json --result R.json
 *        [--stack dev] [--project NAME] [--config key=value]... [--secret-config key=value]... [--host-log F]
 *        [--stack-ref org/project/stack=STATE.json]...   (what a StackReference of that name reads)
 * Like `pulumi <op>`: a fresh process with a fresh SDK per operation. Writes the run's events,
 * stack outputs and errors to R.json; exits 0 when the operation succeeded.
 */
import * as path from "node:path";
import { promises as fs, statSync } from "node:fs";
import { Engine, engineMonitor, Op } from "./engine";
import { harnessMockOutputs, harnessMockCall, harnessMockCreated } from "./mocks";

/**
 * Where the CLI runs a program and its plugins (the dynamic-provider host included): the
 * directory of the project's `main` — the program file's directory, or `main` itself when it is
 * a directory (pulumi/pulumi pkg/engine/project.go getPwdMain; the Node language host and
 * plugin.go start their processes there). Here the program is `main`.
 */
function programDir(program: string): string {
  return statSync(program).isDirectory() ? program : path.dirname(program);
}

async function main(): Promise<number> {
  const [op, ...rest] = process.argv.slice(2) as [Op, ...string[]];
  const flags: Record<string, string[]> = {};
  for (let i = 0; i < rest.length; i += 2) (flags[rest[i].replace(/^--/, "")] ??= []).push(rest[i + 1]);
  const one = (k: string, d?: string) => flags[k]?.[0] ?? d;
  const project = one("project", "tdxvm-local-qemu")!;
  const stack = one("stack", "dev")!;
  const resultFile = path.resolve(one("result")!);
  // Like the CLI: the program and the provider host run in the directory of the program's main file.
  const program = path.resolve(one("program")!);
  const cwd = programDir(program);
  const stackRefs = Object.fromEntries((flags["stack-ref"] ?? []).map((kv) => [kv.slice(0, kv.indexOf("=")), path.resolve(kv.slice(kv.indexOf("=") + 1))]));
  const engine = new Engine({ op, stateFile: path.resolve(one("state")!), cwd, project, stack, hostLog: one("host-log") && path.resolve(one("host-log")!), mockOutputs: harnessMockOutputs, mockCall: harnessMockCall, mockCreated: harnessMockCreated, stackRefs });
  await engine.open();
  let result;
  try {
    if (op === "destroy") result = await engine.destroy();
    else if (op === "refresh") result = await engine.refresh();
    else {
      // Config like the CLI passes it: PULUMI_CONFIG (JSON of "project:key" → string) and the secret keys.
      const config: Record<string, string> = {};
      const secretKeys: string[] = [];
      for (const kv of [...(flags.config ?? []), ...(flags["secret-config"] ?? [])]) {
        const [k, ...v] = kv.split("=");
        config[`${project}:${k}`] = v.join("=");
      }
      for (const kv of flags["secret-config"] ?? []) secretKeys.push(`${project}:${kv.split("=")[0]}`);
      process.env.PULUMI_CONFIG = JSON.stringify(config);
      process.env.PULUMI_CONFIG_SECRET_KEYS = JSON.stringify(secretKeys);
       
      const settings = require("@pulumi/pulumi/runtime/settings");
      const state = require("@pulumi/pulumi/runtime/state");
      const { runInPulumiStack } = require("@pulumi/pulumi/runtime/stack");
       
      settings.setMockOptions(engineMonitor(engine), project, stack, op === "preview");
      const store = state.getStore();
      Object.assign(store, { supportsSecrets: true, supportsResourceReferences: true, supportsOutputValues: false, supportsDeletedWith: true, supportsAliasSpecs: true, supportsTransforms: false });
      let programError: Error | undefined;
      const onErr = (e: unknown) => { programError ??= e instanceof Error ? e : new Error(String(e)); };
      process.on("unhandledRejection", onErr);
      process.on("uncaughtException", onErr);
      process.chdir(cwd);
      try {
        await runInPulumiStack(async () => require(program));
        await settings.waitForRPCs();
      } catch (e) {
        onErr(e);
      }
      result = await engine.finish(programError);
    }
  } finally {
    await engine.close();
  }
  await fs.writeFile(resultFile, JSON.stringify(result, null, 2));
  return result.ok ? 0 : 1;
}

main().then((c) => process.exit(c), (e) => {
  console.error(e);
  process.exit(2);
});
