/**
 * One error type for everything tdxvm reports to a user: a stable `code`, a message that
 * says what went wrong, and a `hint` that says what to do about it. Secret values are never
 * put into any of these fields (callers pass names, not values).
 */
export const ERROR_CODES = {
  E_VALIDATION: "Fix the recipe or argument named in the message; the schema path says which field is wrong.",
  E_LOCKFILE: "Run `img.lock()` (or `npx tdxvm lock`) to regenerate tdx.lock (beside the recipe), review the diff, and commit it.",
  E_PACKAGES: "The lock pins Debian packages that no source offers any more: bake from a package archive that holds them (`--archive DIR|URL`; `tdxvm archive export` makes one), pin a Debian snapshot (`tdxvm lock --snapshot`), or refresh the lock (`tdxvm lock --refresh`) and review which registers move.",
  E_POLICY: "The recipe's Policy forbids this; change the input (pin it, add integrity, lock first) or relax the named rule deliberately.",
  E_FETCH: "Check the URL and the integrity string; a mismatch means the remote content changed — re-pin it only if the new content is trusted.",
  E_BAKE: "Read the failing phase and the last log lines in the message (the full log is build/bake-<profile>.log); fix the recipe or the host and bake again.",
  E_DEPLOYMENT: "Make sure the image was baked for this target (outputTargets) and the host meets the listed requirements; the serial log path is in the message.",
  E_SECRET: "Check the secret payload against the declared SecretSchema; values are never echoed, only the secret's name.",
  E_ATTESTATION: "The VM's evidence did not verify: the message names the failed check (signature, nonce/TLS binding, certificate chain, TCB status, a register); compare the VM's image with the expected measurement, and trust only a VM that passes every check.",
  E_STATE: "The stack's state was written by a newer tdxvm: install that version (or a newer one) in the Pulumi project; an older tdxvm leaves such state alone.",
  E_MEASUREMENT: "Bake first (measurements need real artifacts), and check that the firmware and artifacts are the ones you locked.",
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class TdxError extends Error {
  readonly code: ErrorCode;
  readonly hint: string;
  readonly details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, opts: { hint?: string; details?: Record<string, unknown>; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "TdxError";
    this.code = code;
    this.hint = opts.hint ?? ERROR_CODES[code];
    this.details = opts.details;
  }

  /** `E_CODE: message (hint: ...)`, the form printed by the CLI. */
  override toString(): string {
    return `${this.code}: ${this.message}\n  hint: ${this.hint}`;
  }
}

export function isTdxError(e: unknown, code?: ErrorCode): e is TdxError {
  return e instanceof TdxError && (code === undefined || e.code === code);
}

/** Turn a zod error into a readable one-line list of `path: problem`. */
export function formatIssues(issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string }>): string {
  return issues
    .slice(0, 8)
    .map((i) => `${i.path.length ? i.path.map(String).join(".") : "(root)"}: ${i.message}`)
    .join("; ") + (issues.length > 8 ? `; and ${issues.length - 8} more` : "");
}

/** A short, safe rendering of a user-supplied value for messages (never calls its methods). */
export function label(v: unknown, max = 200): string {
  return typeof v === "string" ? JSON.stringify(v.length > max ? `${v.slice(0, max)}…` : v) : `<${v === null ? "null" : Array.isArray(v) ? "array" : typeof v}>`;
}
