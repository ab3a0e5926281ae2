/**
 * A real TPM for tests: swtpm (from the project's trixie tools tree) on a Unix socket, and an Exec
 * that runs tpm2-tools inside the tools tree against it — the same commands the agent runs in a
 * VM, against the same TPM emulator the dev VM uses, without booting anything.
 */
import { spawn, ChildProcess } from "node:child_process";
import { promises as fs, existsSync, realpathSync } from "node:fs";
import * as path from "node:path";
import { sandboxArgv, runStreaming } from "../../provider/bake/sandbox";
import { ensureToolsTree } from "../../provider/bake/toolsTree";
import { defaultCacheDir } from "../../provider";
import { DEFAULT_DEBIAN } from "../../provider/lock";
import type { Exec } from "../../agent/exec";

export interface Swtpm { dir: string; toolsRoot: string; env: Record<string, string>; exec: Exec; stop(): Promise<void> }

/** Start swtpm with its state below `dir` (created; bound at the same path inside the tools tree). */
export async function startSwtpm(dir: string): Promise<Swtpm> {
  const tools = await ensureToolsTree({ cacheDir: defaultCacheDir(), mirror: DEFAULT_DEBIAN.mirror });
  const toolsRoot = realpathSync(tools.root);
  await fs.mkdir(path.join(dir, "state"), { recursive: true });
  const binds = [{ host: dir, inside: dir }];
  const sock = path.join(dir, "tpm.sock");
  const argv = sandboxArgv(toolsRoot, ["swtpm", "socket", "--tpm2", "--tpmstate", `dir=${dir}/state`, "--server", `type=unixio,path=${sock}`, "--ctrl", `type=unixio,path=${sock}.ctrl`, "--flags", "startup-clear", "--log", `file=${dir}/swtpm.log`], binds);
  const child: ChildProcess = spawn(argv[0], argv.slice(1), { stdio: "ignore" });
  for (let i = 0; i < 100 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 100));
  if (!existsSync(sock)) throw new Error(`swtpm did not start (see ${dir}/swtpm.log)`);
  const env = { TPM2TOOLS_TCTI: `swtpm:path=${sock}` };
  // In a VM, tpm2-tools talk to the kernel's resource manager (/dev/tpmrm0), which flushes a
  // process's transient objects when it exits; here they talk to swtpm directly, so the wrapper
  // does that flush (saved contexts and sessions stay, as with the kernel's).
  const exec: Exec = async (cmd, args, opts = {}) => {
    const script = `"$@"; rc=$?; tpm2_flushcontext -t >/dev/null 2>&1; exit $rc`;
    const r = await runStreaming(sandboxArgv(toolsRoot, ["/bin/sh", "-c", script, "sh", cmd, ...args], binds, { ...env, ...opts.env }), { tailLines: 200, timeoutMs: opts.timeoutMs ?? 60_000 });
    return { code: r.code ?? -1, stdout: Buffer.from(r.tail.join("\n")), stderr: r.tail.join("\n") };
  };
  return {
    dir, toolsRoot, env, exec,
    stop: async () => {
      child.kill("SIGKILL"); // unshare --kill-child takes swtpm with it
      await new Promise((r) => (child.exitCode !== null ? r(null) : child.once("exit", r)));
    },
  };
}
