/**
 * Dynamic provider behind TdxDeployment's per-VM attestation (and secrets delivery): verify, then
 * provision. create attests the VM's agent against the deployment's expected Measurements with a
 * fresh nonce (provider/attest: platform-signed evidence, nonce and TLS-key binding, registers,
 * event-log replay) and only when every check passes POSTs the secrets — over a TLS connection
 * pinned to the very key the evidence is bound to, so a relay can receive nothing. A failed
 * attestation fails the `up` with E_ATTESTATION naming the failed checks; nothing is sent.
 *
 * State keeps the verdict summary, the secret names and a digest marked secret — never a value.
 * Deliveries are sealed to the attested key and signed with the image owner's key (ownerKey, secret
 * in state). Any change of the VM, the expected registers or the secrets replaces the resource
 * (attest and deliver again), and so does a VM that lost its secrets — diff asks the agent's health:
 * another TLS key or "pending" again means it rebooted; delete has nothing to undo (the VM holds the secrets on tmpfs and goes with it).
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import { TdxError } from "../errors";
import { SecretDecl } from "../recipe/schema";
import { SecretsDelivery, describePayloadReport } from "../secrets";
import { ExpectedMeasurementSchema, fromComputed } from "./measurement";
import { parseWaivers } from "../measure/ledger";
import { declared, failureOf, guarded, guardedSync, log, withTimeout, CheckFailure, omit, pick, checkStart, requireInputs, isUnknown, loadPath, parseState } from "./common";

export const AttestationArgs = z.object({
  /** What is attested (the VM id): a new VM gets a new attestation. */
  target: z.string().min(1),
  /** host:port of the VM's agent as seen from where Pulumi runs. */
  endpoint: z.string().regex(/^[A-Za-z0-9.:[\]-]+:\d{1,5}$/, "host:port"),
  /** The TdxMeasurement outputs the VM must match (backend, registers, status, ledger, assumptions). */
  expected: ExpectedMeasurementSchema,
  /**
   * Trust anchors: the dev VM's per-host EK CA lives in the tdxvm cache (`cacheDir`); DCAP
   * collateral from a PCCS or a file; consent to the (never platform-signed) simulator.
   */
  trust: z.object({
    cacheDir: z.string().optional(),
    pccsUrl: z.string().url().optional(),
    collateral: z.string().optional(),
    acceptedTcbStatuses: z.array(z.string()).optional(),
    minTeeTcbSvn: z.string().regex(/^[0-9a-fA-F]{32}$/, "32 hex digits").optional(),
    allowSimulator: z.boolean().default(false),
  }).default({ allowSimulator: false }),
  /** Registers the verifier accepts unchecked, each with its reason (VerifyOptions.waive). */
  waive: z.record(z.string(), z.string()).optional(),
  secrets: z.record(z.string(), z.string()).optional(),
  /** The image owner's private key (PKCS#8 PEM; secret in state): deliveries are signed with it. */
  ownerKey: z.string().min(1).optional(),
  secretDecls: z.array(SecretDecl).default([]),
  timeoutSeconds: z.number().positive().default(300),
  intervalSeconds: z.number().positive().default(5),
}).loose();
export type AttestationArgsT = z.infer<typeof AttestationArgs>;

/** The outputs as state holds them (olds, props): typed wherever present. */
export const AttestationState = z.object({
  attested: z.boolean().optional(),
  issuer: z.string().optional(),
  checks: z.array(z.string()).optional(),
  waived: z.array(z.string()).optional(),
  matchedShape: z.string().nullable().optional(),
  spkiSha256: z.string().optional(),
  attestedAt: z.string().optional(),
  attestSeconds: z.number().optional(),
  secretNames: z.array(z.string()).optional(),
  secretsDigest: z.string().nullable().optional(),
}).loose();
const state = (o: unknown) => guardedSync(() => parseState(AttestationState, o, "VmAttestation"));

const OUT = ["attested", "issuer", "checks", "waived", "matchedShape", "spkiSha256", "attestedAt", "attestSeconds", "secretNames", "secretsDigest"];
const inputsOnly = (o: Record<string, unknown>) => omit(declared(o), OUT);

export function secretsDigest(secrets: Record<string, string> | undefined): string | null {
  if (!secrets || !Object.keys(secrets).length) return null;
  const sorted = Object.fromEntries(Object.keys(secrets).sort().map((k) => [k, secrets[k]]));
  return createHash("sha256").update(JSON.stringify(sorted)).digest("hex");
}

/** The payload must fit the image's declared secrets; the error names secrets, never values. */
function checkSecrets(a: AttestationArgsT): void {
  if (!a.secrets) return;
  const report = new SecretsDelivery(a.secretDecls, {}).validatePayload(a.secrets);
  if (!report.ready) {
    throw new TdxError("E_SECRET", `secrets for the VM are not ready (${describePayloadReport(report, "not declared by the image")})`, { hint: "Pass every required secret (pulumi config set --secret …) in the shape the image declares; values are never shown." });
  }
  if (a.ownerKey === undefined) {
    throw new TdxError("E_VALIDATION", "secrets for the VM need the image owner's key to sign the delivery", { hint: "TdxDeployment passes the image's ownerKey (TdxImage generates one, or takes yours with {owner, ownerKey}); the VM accepts secrets only from its owner." });
  }
}

/** What verifying a VM's agent needs (VmAttestation's inputs, and a QemuVm's admission). */
export type VerifyArgs = Pick<AttestationArgsT, "endpoint" | "expected" | "trust" | "waive" | "timeoutSeconds" | "intervalSeconds">;

/**
 * Attest the agent at `a.endpoint` against `a.expected` with a fresh nonce: the verdict when every
 * check passed, else E_ATTESTATION naming the failed checks and registers (in `details`). `refused`
 * words the message (what happens because of the refusal).
 */
export async function verifyAgent(a: VerifyArgs, refused = "nothing was sent"): Promise<{ verdict: import("../attest").Verdict & { attempts: number }; seconds: number }> {
  const { attestUntil } = await import("../attest");
  const expected = fromComputed(a.expected, a.expected.backend)!;
  const t = a.trust;
  const opts = {
    cacheDir: t.cacheDir ? loadPath(t.cacheDir) : undefined,
    allowSimulator: t.allowSimulator,
    dcap: { pccsUrl: t.pccsUrl, collateralFile: t.collateral ? loadPath(t.collateral) : undefined, acceptedTcbStatuses: t.acceptedTcbStatuses, minTeeTcbSvn: t.minTeeTcbSvn },
    waive: a.waive ? parseWaivers(a.waive, "attest.waive") : undefined,
  };
  const t0 = Date.now();
  // The agent may still be starting: ask again while it cannot be asked (no connection, 503) until
  // the deadline. A verdict that says "no" is final: a VM that proved the wrong thing does not get
  // better by waiting.
  // Asking stops at the deadline; an attempt under way may take its own deadline (at most 120 s) more.
  const perAttempt = Math.min(120_000, a.timeoutSeconds * 1000);
  const verdict = await withTimeout(a.timeoutSeconds * 1000 + perAttempt + 5_000, `attestation of ${a.endpoint}`, () => attestUntil(a.endpoint, expected, { ...opts, timeoutMs: perAttempt, waitMs: a.timeoutSeconds * 1000, maxDelayMs: a.intervalSeconds * 1000 }));
  const failed = verdict.checks.filter((c) => !c.ok).map((c) => `${c.check}: ${c.detail}`);
  const registers = verdict.registers.filter((r) => !r.ok).map((r) => `${r.register}: ${r.problems.join("; ")}`);
  if (!verdict.ok) {
    throw new TdxError("E_ATTESTATION", `the VM at ${a.endpoint} failed attestation (${verdict.issuer}); ${refused}. Failed: ${[...failed, ...registers].join(" | ")}`, {
      hint: "The VM does not run the expected image (or the evidence is not genuine). Compare the registers with TdxMeasurement's outputs and ledger; redeploy the right image.",
      details: { checks: failed, registers },
    });
  }
  return { verdict, seconds: (Date.now() - t0) / 1000 };
}

async function attestAndDeliver(a: AttestationArgsT, name: string): Promise<Record<string, unknown>> {
  const t0 = Date.now();
  const { verdict } = await verifyAgent(a);
  const waived = verdict.registers.filter((r) => r.pin === "waived").map((r) => `${r.register}: ${r.waiver}`);
  log(name, `${a.endpoint}: attested (${verdict.issuer}; ${verdict.checks.length} checks, ${verdict.registers.length} registers${waived.length ? `, WAIVED ${waived.join("; ")}` : ""}) in ${((Date.now() - t0) / 1000).toFixed(1)} s, ${verdict.attempts} attempt(s)`);
  const channel = verdict.channel!;
  const names = Object.keys(a.secrets ?? {}).sort();
  if (names.length) {
    // Sealed to the attested key and signed by the owner, over connections pinned to that key:
    // a relay, a TLS terminator or a restarted agent gets nothing it can use.
    const { deliverSecrets } = await import("../attest");
    await deliverSecrets(channel, a.secrets!, a.ownerKey!);
    log(name, `${a.endpoint}: delivered ${names.length} secret(s) (${names.join(", ")}) over the attested TLS key`);
  }
  return {
    attested: true, issuer: verdict.issuer, checks: verdict.checks.map((c) => `${c.ok ? "ok" : "FAIL"} ${c.check}`), waived, matchedShape: verdict.matched ?? null, spkiSha256: channel.spkiSha256,
    attestedAt: new Date().toISOString(), attestSeconds: Math.round((Date.now() - t0) / 100) / 10, secretNames: names, secretsDigest: secretsDigest(a.secrets),
  };
}

/** The agent now has another TLS key than the one attested, or waits for secrets again: it lost what was delivered. */
async function agentLostSecrets(endpoint: string, attestedSpki: string | undefined): Promise<boolean> {
  const { probeAgent } = await import("../attest");
  const now = await probeAgent(endpoint);
  return !!now && (now.secrets === "pending" || (attestedSpki !== undefined && now.spkiSha256 !== attestedSpki));
}

export const attestationProvider = {
  async check(_olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ inputs: Record<string, unknown>; failures?: CheckFailure[] }> {
    const start = checkStart(AttestationArgs, news, OUT);
    if (start.done) return start.done;
    try {
      checkSecrets(start.value);
    } catch (e) {
      // No property: the engine would print that input's value next to the failure (a secret).
      return { inputs: start.inputs, failures: [failureOf(e)] };
    }
    return { inputs: start.inputs };
  },

  async diff(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ changes: boolean; replaces: string[]; deleteBeforeReplace: boolean }> {
    const n = declared(news);
    const old = state(olds);
    const same = (k: string) => JSON.stringify(old[k] ?? null) === JSON.stringify(n[k] ?? null);
    const replaces = ["target", "endpoint", "expected", "trust", "waive"].filter((k) => isUnknown(n[k]) || !same(k));
    const secrets = n.secrets as Record<string, string> | undefined;
    if (isUnknown(secrets) || (old.secretsDigest ?? null) !== secretsDigest(secrets)) replaces.push("secrets");
    else if (!replaces.length && old.secretsDigest && typeof n.endpoint === "string" && (await agentLostSecrets(n.endpoint, old.spkiSha256))) {
      // The VM rebooted (secrets live on tmpfs) or its agent restarted: attest again, then deliver again.
      replaces.push("secrets");
    }
    return { changes: replaces.length > 0 || !same("timeoutSeconds"), replaces, deleteBeforeReplace: false };
  },

  async create(inputs: Record<string, unknown>): Promise<{ id: string; outs: Record<string, unknown> }> {
    return guarded(async () => {
      const a = requireInputs(AttestationArgs, inputsOnly(inputs));
      checkSecrets(a);
      return { id: `attest-${a.target}`, outs: { ...publicInputs(inputs), ...(await attestAndDeliver(a, "TdxDeployment/attest")) } };
    });
  },

  async update(_id: string, olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ outs: Record<string, unknown> }> {
    return { outs: { ...publicInputs(news), ...pick(state(olds), OUT) } };
  },

  async read(id: string, props: Record<string, unknown>): Promise<{ id: string; props: Record<string, unknown> }> {
    return { id, props: declared(state(props)) };
  },

  async delete(_id: string, props: Record<string, unknown>): Promise<void> {
    state(props);
    // Secrets live on the VM's tmpfs and go with the VM; an attestation is a check that passed.
  },
};

/** Inputs carried into the outputs: never the secret values. */
function publicInputs(inputs: Record<string, unknown>): Record<string, unknown> {
  const { secrets: _s, ownerKey: _k, ...rest } = inputsOnly(inputs);
  void _s;
  void _k;
  return rest;
}
