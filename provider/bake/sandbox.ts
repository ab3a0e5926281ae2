/**
 * Run a command inside the Debian trixie tools tree (docs/design.md §2 mount set).
 *
 * All mounts are made inside a private mount namespace (`unshare --mount --propagation
 * private`) and every process runs in a new PID namespace: when the sandbox ends — normally,
 * on failure, on SIGINT or even SIGKILL — the kernel kills what ran inside and drops the
 * namespace with every mount. Nothing is mounted in the host's namespace, so nothing can be
 * left behind.
 */
import { spawn } from "node:child_process";
import { statSync } from "node:fs";
import * as path from "node:path";
import { shQuote } from "../compile/shell";

export interface Bind { host: string; inside: string; readOnly?: boolean }

export interface RunOptions {
  binds?: Bind[];
  env?: Record<string, string>;
  /** Called with each complete output line (stdout and stderr merged). */
  onLine?: (line: string) => void;
  /** Keep this many trailing lines for error reports (default 40). */
  tailLines?: number;
  /** Kill after this many ms (default: none): SIGTERM, then SIGKILL `killAfterMs` later. */
  timeoutMs?: number;
  /** Grace between SIGTERM and SIGKILL, on timeout and abort (default 10 s). */
  killAfterMs?: number;
  signal?: AbortSignal;
}

export interface RunResult { code: number | null; signal: NodeJS.Signals | null; tail: string[] }

/** The shell script that sets up the mounts and execs the command under chroot. */
export function sandboxScript(root: string, argv: string[], binds: Bind[] = [], env: Record<string, string> = {}): string {
  const r = shQuote(root);
  const lines = [
    "set -eu",
    `mount --bind ${r} ${r}`, // mkosi-sandbox's pivot_root needs the root to be a mount point
    `mount -t proc proc ${r}/proc`,
    `mount --rbind /sys ${r}/sys`, `mount --make-rslave ${r}/sys`,
    `mount --rbind /dev ${r}/dev`, `mount --make-rslave ${r}/dev`,
    `mount -t tmpfs tmpfs ${r}/tmp`,
    `cp -L /etc/resolv.conf ${r}/etc/resolv.conf 2>/dev/null || true`,
  ];
  for (const b of binds) {
    const target = `${root}${b.inside}`;
    lines.push(`mkdir -p ${shQuote(target)}`, `mount --bind ${shQuote(b.host)} ${shQuote(target)}`);
    if (b.readOnly) lines.push(`mount -o remount,bind,ro ${shQuote(target)}`);
  }
  const envArgs = Object.entries(env).map(([k, v]) => shQuote(`${k}=${v}`));
  lines.push(`exec chroot ${r} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 ${envArgs.join(" ")} ${argv.map(shQuote).join(" ")}`);
  return lines.join("\n");
}

/**
 * Argv that runs `argv` inside `root` with the mount set, in a private mount namespace. The
 * sandbox dies with the calling process (`setpriv --pdeathsig SIGKILL` on unshare, whose
 * --kill-child takes the PID namespace along) unless `outliveParent` (a detached VM).
 */
export function sandboxArgv(root: string, argv: string[], binds: Bind[] = [], env: Record<string, string> = {}, opts: { outliveParent?: boolean } = {}): string[] {
  // --pid: every process started inside (daemons included) dies with the sandbox.
  const unshare = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "/bin/sh", "-c", sandboxScript(root, argv, binds, env)];
  return opts.outliveParent ? unshare : ["setpriv", "--pdeathsig", "SIGKILL", "--", ...unshare];
}

/** Run a process, streaming lines to onLine and keeping a tail. Never throws for exit codes. */
export function runStreaming(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...opts.env } });
    const tail: string[] = [];
    const keep = opts.tailLines ?? 40;
    const feed = (() => {
      const partial: Record<string, string> = { out: "", err: "" };
      return (which: "out" | "err", chunk: Buffer) => {
        const text = partial[which] + chunk.toString("utf8");
        const parts = text.split(/\r?\n|\r/);
        partial[which] = parts.pop() ?? "";
        for (const line of parts) {
          tail.push(line);
          if (tail.length > keep) tail.shift();
          opts.onLine?.(line);
        }
      };
    })();
    child.stdout.on("data", (c: Buffer) => feed("out", c));
    child.stderr.on("data", (c: Buffer) => feed("err", c));
    let timer: NodeJS.Timeout | undefined;
    let killer: NodeJS.Timeout | undefined;
    // TERM first (mkosi cleans up), KILL if it is still there after the grace period.
    const stop = () => {
      child.kill("SIGTERM");
      killer ??= setTimeout(() => child.kill("SIGKILL"), opts.killAfterMs ?? 10_000);
    };
    if (opts.timeoutMs) timer = setTimeout(stop, opts.timeoutMs);
    const onAbort = stop;
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    // Forward Ctrl-C to the child so it can stop cleanly; the namespace takes the mounts with it.
    const onSigint = () => child.kill("SIGINT");
    process.once("SIGINT", onSigint);
    child.on("error", (e) => {
      if (timer) clearTimeout(timer);
      if (killer) clearTimeout(killer);
      process.removeListener("SIGINT", onSigint);
      reject(e);
    });
    child.on("close", (code, signal) => {
      if (timer) clearTimeout(timer);
      if (killer) clearTimeout(killer);
      process.removeListener("SIGINT", onSigint);
      opts.signal?.removeEventListener("abort", onAbort);
      resolve({ code, signal, tail });
    });
  });
}

/** The executable `command` resolves to on PATH (a path containing "/" is taken as is), or undefined. */
export function findOnPath(command: string, envPath = process.env.PATH ?? ""): string | undefined {
  if (command.includes("/")) return isExecutable(command) ? command : undefined;
  for (const dir of envPath.split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, command);
    if (isExecutable(candidate)) return candidate;
  }
  return undefined;
}

function isExecutable(p: string): boolean {
  try {
    const st = statSync(p);
    return st.isFile() && (st.mode & 0o111) !== 0;
  } catch {
    return false;
  }
}
