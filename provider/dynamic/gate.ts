/**
 * Dynamic provider: a health gate for rollouts. Its create succeeds only once a new VM answers a
 * health endpoint with the expected status, polling until a timeout; a failing gate fails the
 * `pulumi up`, so VMs of later waves — which depend on this wave's gates — are never touched
 * and the old VMs (whose deletion Pulumi schedules after their replacements) stay.
 * Health is not attestation: attesting gates are VmAttestation resources (./attestation.ts),
 * which verify platform-signed evidence instead of trusting what a VM says about itself.
 */
import * as http from "node:http";
import * as https from "node:https";
import { z } from "zod";
import { TdxError } from "../errors";
import { declared, guarded, log, withTimeout, CheckFailure, omit, pick, checkStart, requireInputs } from "./common";

export const GateArgs = z.object({
  /** What is being gated (e.g. the VM id): a new target gets a new gate. */
  target: z.string().min(1),
  url: z.string().regex(/^https?:\/\//),
  expectStatus: z.number().int().default(200),
  timeoutSeconds: z.number().positive().default(900),
  intervalSeconds: z.number().positive().default(5),
  /** Accept self-signed TLS (a fresh VM's certificate is rarely in a trust store). */
  insecureTls: z.boolean().default(false),
}).loose();
export type GateArgsT = z.infer<typeof GateArgs>;

function get(url: string, insecure: boolean): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const lib = url.startsWith("https:") ? https : http;
    const req = lib.get(url, { timeout: 10_000, ...(url.startsWith("https:") ? { rejectUnauthorized: !insecure } : {}) }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => { if (body.length < 1 << 20) body += c; });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("timeout", () => req.destroy(new Error("timed out after 10 s")));
    req.on("error", reject);
  });
}

/** Why a response does not pass, or undefined when it does. */
export function judge(a: Pick<GateArgsT, "expectStatus">, r: { status: number; body: string }): string | undefined {
  return r.status !== a.expectStatus ? `HTTP ${r.status}, expected ${a.expectStatus}` : undefined;
}

async function pass(a: GateArgsT, name: string): Promise<Record<string, unknown>> {
  const t0 = Date.now();
  let attempts = 0;
  let last = "no answer yet";
  return withTimeout(a.timeoutSeconds * 1000 + 15_000, `gate ${a.url}`, async (signal) => {
    while (!signal.aborted) {
      attempts++;
      try {
        const why = judge(a, await get(a.url, a.insecureTls));
        if (!why) {
          log(name, `gate passed: ${a.url} after ${attempts} attempt(s)`);
          return { passed: true, attempts, seconds: Math.round((Date.now() - t0) / 1000) };
        }
        last = why;
      } catch (e) {
        last = (e as Error).message;
      }
      if (Date.now() - t0 > a.timeoutSeconds * 1000) break;
      await new Promise((r) => setTimeout(r, a.intervalSeconds * 1000));
    }
    throw new TdxError("E_DEPLOYMENT", `rollout gate failed: ${a.url} did not pass within ${a.timeoutSeconds} s (${attempts} attempts; last: ${last})`, {
      hint: "The rollout stopped here: later waves were not touched and the old VMs keep running. Fix the image (or revert the recipe) and run `pulumi up` again.",
    });
  });
}

const OUT = ["passed", "attempts", "seconds"];
const inputsOnly = (o: Record<string, unknown>) => omit(declared(o), OUT);

export const gateProvider = {
  async check(_olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ inputs: Record<string, unknown>; failures?: CheckFailure[] }> {
    const start = checkStart(GateArgs, news, OUT);
    return start.done ?? { inputs: start.inputs };
  },
  async diff(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
    const replaces = ["target", "url", "expectStatus"].filter((k) => JSON.stringify(olds[k] ?? null) !== JSON.stringify(news[k] ?? null));
    return { changes: replaces.length > 0, replaces, deleteBeforeReplace: false };
  },
  async create(inputs: Record<string, unknown>) {
    return guarded(async () => {
      const a = requireInputs(GateArgs, inputsOnly(inputs));
      return { id: `gate-${a.target}`, outs: { ...inputsOnly(inputs), ...(await pass(a, "TdxDeployment/gate")) } };
    });
  },
  async update(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
    return { outs: { ...inputsOnly(news), ...pick(olds, OUT) } };
  },
  async read(id: string, props: Record<string, unknown>) {
    return { id, props: declared(props) };
  },
  async delete(): Promise<void> {
    // A gate is a check that passed; nothing exists outside the state.
  },
};
