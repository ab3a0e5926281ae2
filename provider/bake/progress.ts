/**
 * Progress for long work on stderr. On a TTY: phase, elapsed time, and mkosi's current step (its
 * "‣ …" lines), as one status line redrawn in place. Elsewhere (CI logs): a line when a phase
 * starts and one with its duration when it ends — no redraws, no mkosi chatter (the full mkosi log
 * is in build/bake-<profile>.log). Nothing when `quiet` is set.
 */
export class Progress {
  private started = Date.now();
  private phaseStarted = Date.now();
  private current = "";
  private step = "";
  private timer: NodeJS.Timeout | undefined;
  readonly durations: Record<string, number> = {};

  constructor(private readonly opts: { quiet?: boolean; stream?: NodeJS.WriteStream } = {}) {}

  private get stream(): NodeJS.WriteStream {
    return this.opts.stream ?? process.stderr;
  }

  private get tty(): boolean {
    return !this.opts.quiet && Boolean(this.stream.isTTY);
  }

  phase(name: string): void {
    this.endPhase();
    this.current = name;
    this.step = "";
    this.phaseStarted = Date.now();
    if (this.opts.quiet) return;
    if (this.tty) {
      this.timer ??= setInterval(() => this.draw(), 1000);
      this.timer.unref?.();
      this.draw();
    } else this.stream.write(`tdxvm: ${name} …\n`);
  }

  /** A line of tool output; mkosi's step lines start with "‣". */
  line(text: string): void {
    const m = /^‣\s+(.*)$/.exec(text.trim());
    if (m) {
      this.step = m[1].slice(0, 80);
      if (this.tty) this.draw();
    }
  }

  private draw(): void {
    const s = ((Date.now() - this.started) / 1000).toFixed(0);
    this.stream.write(`\r\x1b[2Ktdxvm: ${this.current} [${s}s]${this.step ? ` — ${this.step}` : ""}`);
  }

  private endPhase(): void {
    if (!this.current) return;
    const took = (Date.now() - this.phaseStarted) / 1000;
    this.durations[this.current] = (this.durations[this.current] ?? 0) + took;
    if (!this.opts.quiet && !this.tty) this.stream.write(`tdxvm: ${this.current}: ${took.toFixed(1)} s\n`);
  }

  done(): Record<string, number> {
    this.endPhase();
    this.current = "";
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.tty) this.stream.write("\r\x1b[2K");
    return this.durations;
  }
}
