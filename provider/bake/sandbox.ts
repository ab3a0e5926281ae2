/**
 * Run a command inside the Debian trixie tools tree (docs/design.md §2 mount set).
 *
 * All mounts are made inside a private mount namespace (`unshare --mount --propagation
 * private`) and every process runs in a new PID namespace: when the sandbox ends — normally,
 * on failure, on SIGINT or even SIGKILL — the kernel kills what ran inside and drops the
 * namespace with every mount. Nothing is mounted in the host's namespace, so nothing can be
 * left behind.
 */
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

/**
 * Run a process, streaming lines to onLine and keeping a tail. Never throws for exit codes; a
 * command that cannot start rejects (the spawn error, e.g. ENOENT).
 *
 * On execa (loaded on first use: ~60 ms, only for commands that spawn): it splits stdout and
 * stderr into lines, times out and aborts with SIGTERM then SIGKILL after the grace
 * (`forceKillAfterDelay`), and kills the child if this process exits (`cleanup`). What stays
 * here: the bounded tail, splitting bare carriage returns (progress lines), and forwarding Ctrl-C
 * so that mkosi can clean up before the sandbox's namespace takes its mounts away.
 */
export async function runStreaming(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  const { execa } = require("execa") as typeof import("execa");
  const tail: string[] = [];
  const keep = opts.tailLines ?? 40;
  const child = execa(argv[0]!, argv.slice(1), {
    env: opts.env, stdin: "ignore", buffer: false, reject: false, stripFinalNewline: false,
    timeout: opts.timeoutMs, cancelSignal: opts.signal, killSignal: "SIGTERM", forceKillAfterDelay: opts.killAfterMs ?? 10_000,
  });
  const onSigint = () => child.kill("SIGINT");
  process.once("SIGINT", onSigint);
  // Each stream line by line (a merged byte stream would glue one stream's unfinished line to the other's).
  const lines = async (from: "stdout" | "stderr") => {
    try {
      for await (const line of child.iterable({ from })) {
        for (const part of line.split("\r")) {
          tail.push(part);
          if (tail.length > keep) tail.shift();
          opts.onLine?.(part);
        }
      }
    } catch {
      // The iteration ends with the process's failure (timeout, abort, exit code): the result below says which.
    }
  };
  try {
    await Promise.all([lines("stdout"), lines("stderr")]);
  } finally {
    process.removeListener("SIGINT", onSigint);
  }
  const r = await child;
  // Neither an exit code nor a signal: it never ran (ENOENT, EACCES, …).
  if (r.exitCode === undefined && r.signal === undefined) throw (r as { cause?: unknown }).cause ?? r;
  return { code: r.exitCode ?? null, signal: (r.signal as NodeJS.Signals | undefined) ?? null, tail };
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
