/**
 * A real TPM for tests: swtpm (from the project's trixie tools tree) on a Unix socket — the same
 * TPM emulator the dev VM uses, without booting anything. The agent's issuers speak TPM 2.0 to the
 * socket as they do to /dev/tpmrm0 in a VM; `exec` runs tpm2-tools inside the tools tree against
 * it, for what a test sets up or checks independently of the agent.
 */
import { spawn, ChildProcess } from "node:child_process";
import { promises as fs, existsSync, realpathSync } from "node:fs";
import * as path from "node:path";
import { sandboxArgv, runStreaming } from "../../provider/bake/sandbox";
import { ensureToolsTree } from "../../provider/bake/toolsTree";
import { defaultCacheDir } from "../../provider";
import { DEFAULT_DEBIAN } from "../../provider/lock";
import type { Exec } from "../../agent/exec";
import { swtpmEkCertSetup, LocalCa } from "../../provider/attest/localca";

/** `socket`: swtpm's data socket (the agent's issuers talk to it); `exec`: tpm2-tools against it, for a test's own set-up. */
export interface Swtpm { dir: string; socket: string; toolsRoot: string; env: Record<string, string>; exec: Exec; stop(): Promise<void> }

/**
 * Start swtpm with its state below `dir` (created; bound at the same path inside the tools tree).
 * With `ekCa`, the TPM is manufactured first as the dev VM's is (swtpm_setup with EK certificates
 * from that local CA, provider/deploy/qemu.ts).
 */
export async function startSwtpm(dir: string, opts: { ekCa?: LocalCa } = {}): Promise<Swtpm> {
  const tools = await ensureToolsTree({ cacheDir: defaultCacheDir(), mirror: DEFAULT_DEBIAN.mirror });
  const toolsRoot = realpathSync(tools.root);
  await fs.mkdir(path.join(dir, "state"), { recursive: true });
  const binds = [{ host: dir, inside: dir }];
  if (opts.ekCa) {
    const ek = swtpmEkCertSetup("/localca", `${dir}/ekca`);
    await fs.mkdir(path.join(dir, "ekca"), { recursive: true, mode: 0o700 });
    for (const [name, text] of Object.entries(ek.files)) await fs.writeFile(path.join(dir, "ekca", name), text, { mode: 0o600 });
    const setup = ["swtpm_setup", "--tpm2", "--tpmstate", `${dir}/state`, "--pcr-banks", "sha256", ...ek.args, "--overwrite", "--logfile", `${dir}/swtpm_setup.log`];
    const r = await runStreaming(sandboxArgv(toolsRoot, setup, [...binds, { host: opts.ekCa.dir, inside: "/localca", readOnly: true }]), { tailLines: 40, timeoutMs: 120_000 });
    if (r.code !== 0) throw new Error(`swtpm_setup failed (see ${dir}/swtpm_setup.log): ${r.tail.join("\n")}`);
  }
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
    dir, socket: sock, toolsRoot, env, exec,
    stop: async () => {
      child.kill("SIGKILL"); // unshare --kill-child takes swtpm with it
      await new Promise((r) => (child.exitCode !== null ? r(null) : child.once("exit", r)));
    },
  };
}
