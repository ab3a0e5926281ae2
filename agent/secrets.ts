/**
 * The secrets receiver (Init module, delivery "http_post"): accepts the payload once, validates it
 * with the very contract code the host uses (provider/secrets: names, schemas, unknown names),
 * writes every target atomically (all or none) and then hands off: it marks completion on the
 * tmpfs and starts `tdxvm-secrets-ready.target`, which the recipe's handoff unit is wanted by and
 * conditioned on. Delivered secrets live on tmpfs: they survive a restart of the agent (the mark
 * is found again) but never a reboot. Values never reach a log line or an error message.
 */
import { promises as fs, existsSync } from "node:fs";
import * as path from "node:path";
import type { KeyObject } from "node:crypto";
import { SecretsDelivery, describePayloadReport } from "../provider/secrets";
import { Challenges, DeliveryRefused, openDelivery } from "../provider/secrets/owner";
import type { SecretDeclData } from "../provider/recipe/schema";
import { Exec, Mutex } from "./exec";

export const SECRETS_READY = "/run/tdxvm/secrets-ready";
export const READY_TARGET = "tdxvm-secrets-ready.target";

export interface Contract {
  contractVersion: 1;
  delivery: { method: "http_post"; completion: "required" | "all"; rejectUnknown: boolean };
  handoff: string | null;
  secrets: SecretDeclData[];
  /** The image's owner ("ed25519:<base64>"): the only key whose sealed deliveries are accepted. Absent or null: none are. */
  owner?: string | null;
}

export type Outcome =
  | { status: 200; body: { status: "complete"; secrets: string[] } }
  | { status: 400; body: { error: string; missing?: string[]; unknown?: string[]; invalid?: Record<string, string[]> } }
  | { status: 401; body: { error: string } }
  | { status: 409; body: { error: string } }
  | { status: 500; body: { error: string } };

export class SecretsReceiver {
  private readonly mutex = new Mutex();
  private readonly delivery: SecretsDelivery;
  private readonly challenges = new Challenges();

  constructor(
    readonly contract: Contract,
    private readonly opts: { root?: string; readyFile?: string; exec?: Exec; log?: (msg: string) => void } = {},
  ) {
    this.delivery = new SecretsDelivery(contract.secrets, contract.delivery);
  }

  private get readyFile(): string {
    return this.opts.readyFile ?? path.join(this.opts.root ?? "/", SECRETS_READY);
  }

  get complete(): boolean {
    return existsSync(this.readyFile);
  }

  /** A fresh single-use challenge for the owner's next delivery (GET /v1/challenge). */
  challenge(): { status: 200; body: { challenge: string; owner: string | null } } | { status: 409; body: { error: string } } {
    if (this.complete) return { status: 409, body: { error: "secrets were already delivered; reboot the VM to start over" } };
    return { status: 200, body: { challenge: this.challenges.issue(), owner: this.contract.owner ?? null } };
  }

  /**
   * Handle one sealed delivery (POST /v1/secrets): only the image's owner, for this agent's TLS key
   * and one of its open challenges (401 otherwise, nothing stored); then as `receive`.
   */
  async receiveSealed(body: Record<string, unknown>, tls: { privateKey: KeyObject; spkiSha256: Buffer }): Promise<Outcome> {
    let payload: unknown;
    try {
      payload = openDelivery(body, { owner: this.contract.owner ?? null, tlsKey: tls.privateKey, spkiSha256: tls.spkiSha256, takeChallenge: (c) => this.challenges.take(c) });
    } catch (e) {
      if (e instanceof DeliveryRefused) return { status: e.status, body: { error: e.message } } as Outcome;
      throw e;
    }
    return this.receive(payload);
  }

  /** Handle one delivery's payload: validate, write everything or nothing, hand off. */
  receive(payload: unknown): Promise<Outcome> {
    return this.mutex.lock(async () => {
      if (this.complete) return { status: 409, body: { error: "secrets were already delivered; a second delivery is refused (reboot the VM to start over)" } };
      const report = this.delivery.validatePayload(payload);
      if (!report.ready) {
        return { status: 400, body: { error: `the payload does not fit the image's secrets contract (${describePayloadReport(report, "not declared by the image")})`, missing: report.missing, unknown: report.unknown, invalid: report.errors } };
      }
      try {
        await this.delivery.materializeRuntime(this.opts.root ?? "/", payload);
      } catch (e) {
        // materializeRuntime's errors name paths and secret names, never values.
        return { status: 500, body: { error: (e as Error).message } };
      }
      const names = Object.keys(payload as object).filter((k) => this.contract.secrets.some((d) => d.name === k)).sort();
      await fs.mkdir(path.dirname(this.readyFile), { recursive: true, mode: 0o755 });
      await fs.writeFile(this.readyFile, `${names.join("\n")}\n`, { mode: 0o644 });
      this.opts.log?.(`secrets delivered (${names.length}: ${names.join(", ")}); starting ${READY_TARGET}`);
      if (this.opts.exec) {
        const r = await this.opts.exec("systemctl", ["start", "--no-block", READY_TARGET]).catch((e: Error) => ({ code: -1, stderr: e.message }));
        if (r.code !== 0) this.opts.log?.(`could not start ${READY_TARGET}: ${r.stderr.trim()}`);
      }
      return { status: 200, body: { status: "complete", secrets: names } };
    });
  }
}
