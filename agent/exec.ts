/** Running the platform tools the agent needs (systemctl): argv only, bounded output, a deadline. */
import { execFile } from "node:child_process";

export interface ExecResult { code: number; stdout: Buffer; stderr: string }
export type Exec = (cmd: string, args: string[], opts?: { timeoutMs?: number; env?: Record<string, string> }) => Promise<ExecResult>;

export const execTool: Exec = (cmd, args, opts = {}) =>
  new Promise((resolve, reject) => {
    execFile(cmd, args, { encoding: "buffer", maxBuffer: 16 * 1024 * 1024, timeout: opts.timeoutMs ?? 60_000, killSignal: "SIGKILL", env: { ...process.env, ...opts.env } }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as NodeJS.ErrnoException & { code?: unknown }).code === "number" ? ((err as unknown as { code: number }).code) : -1) : 0;
      if (err && (err as NodeJS.ErrnoException).code === "ENOENT") return reject(new Error(`${cmd} is not installed`));
      resolve({ code, stdout: Buffer.from(stdout), stderr: Buffer.from(stderr).toString("utf8").slice(-4000) });
    });
  });

/** One operation at a time (the TPM has few object slots; configfs-tsm reports are per request). */
export class Mutex {
  private last: Promise<unknown> = Promise.resolve();
  lock<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.last.then(fn, fn);
    this.last = next.catch(() => undefined);
    return next;
  }
}
