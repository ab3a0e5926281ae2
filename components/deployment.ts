/**
 * TdxDeployment: a TdxImage running on a target — "qemu" (a real local VM), "azure" (DCesv5
 * confidential VMs) or "gcp" (C3 TDX instances) — as one VM or a fleet.
 *
 * Fleets: `replicas` VMs share the image, image version and network. A recipe change replaces
 * every VM create-before-delete (Pulumi's default; autonamed resources never collide), so
 * all-at-once needs quota for 2 × replicas while it rolls. With `rollout: {strategy: "waves",
 * batchSize, gate}`, wave k+1's VMs depend on wave k's gates: each gate waits until its new VM
 * answers a health/attestation endpoint; a failing gate fails the update, later waves are not
 * touched and old VMs keep running. With an attesting gate on the qemu target, a refused VM is also
 * removed in its own create (admission) and the VM it was to replace stays as it was; VMs of the
 * same wave that were admitted stay (beside their old VMs, pending deletion), and the next `up`
 * after a fix resumes at that wave. On azure/gcp the refused VM stays in state until that next `up`
 * replaces it (their VMs are the cloud providers' resources; tdxvm cannot fail their create).
 */
import * as pulumi from "@pulumi/pulumi";
import { providerShim } from "../provider/dynamic/shim";
import type { TdxImage } from "./image";
import type { TdxMeasurement } from "./measurement";
import { qemuVm, QemuTargetArgs } from "./qemu";
import { azureShared, azureReplica, AzureTargetArgs } from "./azure";
import { gcpShared, gcpReplica, GcpTargetArgs } from "./gcp";

export interface GateSpec {
  /** TCP port of the health endpoint on the VM (attesting gates use the agent's port). */
  port?: number;
  path?: string;
  scheme?: "http" | "https";
  expectStatus?: number;
  /**
   * Gate on attestation instead of health: the VM's agent must prove, with platform-signed evidence
   * bound to a fresh nonce, that it runs the deployment's `measurement` (see TdxDeployment.attest).
   */
  attest?: boolean;
  timeoutSeconds?: number;
  intervalSeconds?: number;
  insecureTls?: boolean;
}

export interface AttestArgs {
  port?: number;
  timeoutSeconds?: number;
  /**
   * Registers this deployment's verifier accepts unchecked, each with its reason (e.g.
   * `{ RTMR0: "new host shape, canary CCEL pending" }`): the attestation's `waived` output, its
   * log line and every failure message name them. Prefer pinning (TdxMeasurement's capturedCcel).
   */
  waive?: Record<string, string>;
  trust?: { pccsUrl?: string; collateral?: string; acceptedTcbStatuses?: string[]; minTeeTcbSvn?: string; allowSimulator?: boolean };
}

/** A deployment's allow-list at one step of a rollout: pulumi-nodejs:dynamic/tdxvm:AllowList. */
export class AllowList extends pulumi.dynamic.Resource {
  declare readonly ids: pulumi.Output<string[]>;
  declare readonly flashbots: pulumi.Output<string>;
  declare readonly constellation: pulumi.Output<string>;
  declare readonly trustee: pulumi.Output<string>;
  constructor(name: string, props: Record<string, pulumi.Input<unknown>>, opts?: pulumi.CustomResourceOptions) {
    super(providerShim("allowList"), name, { ...props, stateVersion: undefined, ids: undefined, measurements: undefined, flashbots: undefined, constellation: undefined, trustee: undefined, updatedAt: undefined }, opts, "tdxvm", "AllowList");
  }
}

/** Per-VM attestation (and secrets delivery): pulumi-nodejs:dynamic/tdxvm:VmAttestation. */
export class VmAttestation extends pulumi.dynamic.Resource {
  declare readonly attested: pulumi.Output<boolean>;
  declare readonly issuer: pulumi.Output<string>;
  declare readonly checks: pulumi.Output<string[]>;
  declare readonly spkiSha256: pulumi.Output<string>;
  declare readonly secretNames: pulumi.Output<string[]>;
  declare readonly attestedAt: pulumi.Output<string>;
  /** With a measurement envelope: the host shape whose values the VM matched. */
  declare readonly matchedShape: pulumi.Output<string | null>;
  /** "REG: reason" for every register the verdict accepted unchecked (from the measurement or `attest.waive`). */
  declare readonly waived: pulumi.Output<string[]>;
  constructor(name: string, props: Record<string, pulumi.Input<unknown>>, opts?: pulumi.CustomResourceOptions) {
    const computed = { attested: undefined, issuer: undefined, checks: undefined, waived: undefined, matchedShape: undefined, spkiSha256: undefined, attestedAt: undefined, attestSeconds: undefined, secretNames: undefined, secretsDigest: undefined };
    // Secret values never come back in outputs; the digest that detects their change is kept encrypted.
    // The secrets input is secret in state even when a program passes a plain value.
    const secrets = props.secrets === undefined ? undefined : pulumi.secret(props.secrets);
    const ownerKey = props.ownerKey === undefined ? undefined : pulumi.secret(props.ownerKey);
    super(providerShim("attestation"), name, { ...props, secrets, ownerKey, ...computed }, { ...opts, additionalSecretOutputs: ["secrets", "ownerKey", "secretsDigest"] }, "tdxvm", "VmAttestation");
  }
}

export const AGENT_PORT = 8443;

export interface RolloutArgs {
  /** "all-at-once" (default): every VM replaced in parallel. "waves": batchSize VMs at a time, each wave gated. */
  strategy?: "all-at-once" | "waves";
  batchSize?: number;
  gate?: GateSpec;
}

export interface TdxDeploymentArgs {
  image: TdxImage;
  /**
   * The measurement a verifier should expect from this deployment (exported as `expected`; used by
   * attesting gates): a TdxMeasurement, or a measurement another stack's VMs proved — a canary
   * stack's `promotion.measurement`, read with a StackReference (see `promotion`).
   */
  measurement?: TdxMeasurement | pulumi.Input<ExpectedMeasurement>;
  target: "qemu" | "azure" | "gcp";
  qemu?: QemuTargetArgs;
  azure?: AzureTargetArgs;
  gcp?: GcpTargetArgs;
  /**
   * Run-time secrets by name (use config secrets), checked against the image's declared secrets.
   * Each VM gets them only after it passed attestation against `measurement`, over the TLS key its
   * evidence is bound to (the image needs the Init module, which runs the agent).
   */
  secrets?: pulumi.Input<Record<string, pulumi.Input<string>>>;
  /**
   * The private key (PKCS#8 PEM, a Pulumi secret) of the image's owner, which signs every delivery
   * (the VM accepts secrets from no one else). Default: the image's own `ownerKey` — the key
   * TdxImage generated or was given. Needed with `secrets` when the image's owner is external.
   */
  ownerKey?: pulumi.Input<string>;
  /**
   * Where the fleet's verifiers read the measurements they must accept (a file path; tdxvm
   * allow-list format, written atomically): during a rollout the incoming and the outgoing
   * measurement (from the moment the first wave proved the incoming one), after its last wave the
   * incoming one alone. Needs attested VMs. The `allowList` output carries the same list. The file
   * is also the lifecycle's memory (what a close retired): without it there is no allow-list.
   */
  allowListFile?: pulumi.Input<string>;
  /**
   * Attest every VM against `measurement` (implied by `secrets` and by attesting gates): its agent
   * (Agent/Init/Tdxs module) must answer on `port` (default 8443). `trust` sets the anchors:
   * `pccsUrl`/`collateral` for DCAP, `allowSimulator` for the simulator issuer (never in production).
   * Local VMs trust the per-host EK CA of their swtpm automatically.
   */
  attest?: boolean | AttestArgs;
  /** Number of VMs (default 1). */
  replicas?: number;
  rollout?: RolloutArgs;
}

export class RolloutGate extends pulumi.dynamic.Resource {
  declare readonly passed: pulumi.Output<boolean>;
  declare readonly attempts: pulumi.Output<number>;
  constructor(name: string, props: Record<string, pulumi.Input<unknown>>, opts?: pulumi.CustomResourceOptions) {
    super(providerShim("gate"), name, { ...props, passed: undefined, attempts: undefined, seconds: undefined }, opts, "tdxvm", "RolloutGate");
  }
}

export interface DeployedVm {
  name: string; wave: number; id: pulumi.Output<string>; privateIp: pulumi.Output<string>; ip: pulumi.Output<string>; resource: pulumi.CustomResource;
  /** What later waves wait for: the attestation (attesting gates) or the health gate. */
  gate?: pulumi.CustomResource;
  attestation?: VmAttestation;
  /** "host:port" at which this VM's guest TCP port is reachable from where Pulumi runs. */
  endpoint: (guestPort: number) => pulumi.Output<string>;
}

/** A target's inbound ports plus the agent's. */
function withPort<T extends { ports?: number[] }>(t: T, port: number): T {
  return { ...t, ports: [...new Set([...(t.ports ?? []), port])] };
}

/** Wave of replica i. */
export function waveOf(i: number, rollout: RolloutArgs | undefined, replicas: number): number {
  if (rollout?.strategy !== "waves") return 0;
  const size = Math.max(1, Math.min(rollout.batchSize ?? 1, replicas));
  return Math.floor(i / size);
}

/** A measurement as a verifier needs it (TdxMeasurement's outputs): what a promotion carries. */
export interface ExpectedMeasurement {
  backend: "rtmr" | "azure" | "gcp";
  registers: Record<string, string | null>;
  status: Record<string, string>;
  ledger: Record<string, unknown[]>;
  assumptions: Record<string, string | number | null>;
  alternatives?: unknown[];
}

/**
 * What a stack exports for another stack to promote from (`promotion`, version 1): the image, the
 * measurement its VMs proved, and which VMs proved it with platform-signed evidence, when. Present
 * only when every VM of the deployment attested; a failed rollout leaves the previous one.
 */
export interface Promotion {
  version: 1;
  stack: string;
  image: { bakeKey: string | null };
  measurement: ExpectedMeasurement;
  /** Per VM: its attested TLS key, when, the host shape it matched (with an envelope), and what its verifier waived. */
  attestedBy: Array<{ vm: string; issuer: string; spkiSha256: string; attestedAt: string; matchedShape?: string; waived: string[] }>;
}

const isTdxMeasurement = (m: unknown): m is TdxMeasurement => pulumi.ComponentResource.isInstance(m as pulumi.Resource) && (m as { registers?: unknown }).registers !== undefined;

/** Any accepted `measurement` as one output of the verifier's view. */
function expectedOf(m: TdxMeasurement | pulumi.Input<ExpectedMeasurement>): pulumi.Output<ExpectedMeasurement> {
  if (!isTdxMeasurement(m)) return pulumi.output(m as pulumi.Input<ExpectedMeasurement>) as pulumi.Output<ExpectedMeasurement>;
  return pulumi.all([m.backend, m.registers, m.status, m.ledger, m.assumptions, m.alternatives])
    .apply(([backend, registers, status, ledger, assumptions, alternatives]) => ({ backend: backend as ExpectedMeasurement["backend"], registers, status, ledger, assumptions, ...(alternatives?.length ? { alternatives } : {}) }));
}

export class TdxDeployment extends pulumi.ComponentResource {
  readonly target: string;
  /** The register values a verifier should expect (from `measurement`). */
  readonly expected: pulumi.Output<Record<string, string | null> | undefined>;
  readonly vms: DeployedVm[] = [];
  /** Per VM: name, wave, id, private and public address. */
  readonly instances: pulumi.Output<Array<{ name: string; wave: number; id: string; privateIp: string; ip: string }>>;
  /** qemu target (first VM): forwarded ports, serial log, TD or dev-VM warning. */
  readonly vmId?: pulumi.Output<string>;
  readonly forwards?: pulumi.Output<Array<{ guest: number; host: number; bind: string }>>;
  readonly serialLog?: pulumi.Output<string>;
  readonly warning?: pulumi.Output<string | null>;
  readonly isTd?: pulumi.Output<boolean>;
  /** azure: the gallery image version id; gcp: the image self link. */
  readonly imageRef?: pulumi.Output<string>;
  /**
   * For stacks that promote from this one (examples/fleet `promoteFrom`): the measurement every VM
   * of this deployment proved, with who proved it and when; undefined unless VMs are attested.
   */
  readonly promotion: pulumi.Output<Promotion | undefined>;
  /**
   * The measurements relying parties must accept after this update (ids, and the list in flashbots,
   * Constellation and Trustee formats); the mid-rollout list is published to `allowListFile`.
   * Undefined unless VMs are attested.
   */
  readonly allowList: pulumi.Output<{ ids: string[]; flashbots: string; constellation: string; trustee: string } | undefined>;

  constructor(name: string, args: TdxDeploymentArgs, opts?: pulumi.ComponentResourceOptions) {
    super("tdxvm:index:TdxDeployment", name, {}, opts);
    this.target = args.target;
    const replicas = args.replicas ?? 1;
    if (!Number.isInteger(replicas) || replicas < 1) throw new Error(`TdxDeployment ${name}: replicas must be a positive integer`);
    if (args.rollout?.strategy === "waves" && !args.rollout.gate) throw new Error(`TdxDeployment ${name}: a "waves" rollout needs a gate (rollout.gate) to decide when a wave is healthy`);
    const expected = args.measurement === undefined ? undefined : expectedOf(args.measurement);
    this.expected = expected ? expected.registers : pulumi.output(undefined);
    const vmName = (i: number) => (replicas === 1 ? name : `${name}-${i}`);
    // Attestation: asked for, implied by secrets (they go only to attested VMs), or by attesting gates.
    const attestOpts: AttestArgs | undefined = args.attest || args.secrets !== undefined || args.rollout?.gate?.attest
      ? { ...(typeof args.attest === "object" ? args.attest : {}) } : undefined;
    if (attestOpts && !args.measurement) throw new Error(`TdxDeployment ${name}: attesting VMs (secrets, attest, or an attesting gate) needs the expected measurement (measurement: a TdxMeasurement)`);
    const agentPort = attestOpts?.port ?? AGENT_PORT;

    // Replica factory per target; the shared part is built once.
    let replica: (i: number, o: pulumi.CustomResourceOptions) => Omit<DeployedVm, "name" | "wave" | "endpoint"> & { endpoint?: DeployedVm["endpoint"] };
    if (args.target === "qemu") {
      const image = pulumi.all([args.image.bakeKey, args.image.artifacts]).apply(([bakeKey, artifacts]) => ({ bakeKey, artifacts }));
      replica = (i, o) => {
        // The agent's port is forwarded when VMs are attested.
        const ports = attestOpts ? pulumi.output(args.qemu?.ports ?? []).apply((p) => (p.some((x) => x.guest === agentPort) ? p : [...p, { guest: agentPort }])) : args.qemu?.ports;
        // An attesting rollout admits each new local VM in its own create: a refused one is stopped
        // and removed there, so the VM it replaces stays exactly as it was (no human cleans up).
        const admission = args.rollout?.gate?.attest && expected ? {
          wave: waveOf(i, args.rollout, replicas), waves: waveOf(replicas - 1, args.rollout, replicas) + 1, guestPort: agentPort, expected,
          trust: { cacheDir: args.qemu?.cacheDir, ...attestOpts?.trust }, ...(attestOpts?.waive ? { waive: attestOpts.waive } : {}),
          timeoutSeconds: attestOpts?.timeoutSeconds ?? args.rollout.gate.timeoutSeconds ?? 900, intervalSeconds: args.rollout.gate.intervalSeconds ?? 5,
        } : undefined;
        const vm = qemuVm(vmName(i), { image, qemu: { ...args.qemu, ports }, expected: expected?.registers, admission }, o);
        const host = vm.forwards.apply((f) => (f?.length ? f[0].bind : "127.0.0.1"));
        // A local VM's guest ports are reachable only through their host forwards.
        const endpoint = (guestPort: number) => vm.forwards.apply((f) => {
          const fwd = f?.find((x) => x.guest === guestPort);
          if (!fwd) throw new Error(`TdxDeployment ${name}: the gate's guest port ${guestPort} is not forwarded (add it to qemu.ports)`);
          return `${fwd.bind === "0.0.0.0" ? "127.0.0.1" : fwd.bind}:${fwd.host}`;
        });
        return { id: vm.vmId, privateIp: host, ip: host, resource: vm, endpoint };
      };
    } else if (args.target === "azure") {
      if (!args.azure) throw new Error(`TdxDeployment ${name}: target "azure" needs azure: {location, ...}`);
      const shared = azureShared(name, args.image.artifact("azure", "vhd"), attestOpts ? withPort(args.azure, agentPort) : args.azure, this);
      this.imageRef = shared.imageVersion.id;
      replica = (i, o) => {
        const r = azureReplica(vmName(i), shared, args.azure!, o);
        return { id: r.vm.vmId, privateIp: r.privateIp, ip: r.ip, resource: r.vm };
      };
    } else if (args.target === "gcp") {
      if (!args.gcp) throw new Error(`TdxDeployment ${name}: target "gcp" needs gcp: {zone, ...}`);
      const shared = gcpShared(name, args.image.artifact("gcp", "tar.gz"), args.image.artifact("disk", "raw"), attestOpts ? withPort(args.gcp, agentPort) : args.gcp, this);
      this.imageRef = shared.image.selfLink;
      replica = (i, o) => {
        const r = gcpReplica(vmName(i), shared, args.gcp!, o);
        return { id: r.vm.instanceId, privateIp: r.privateIp, ip: r.ip, resource: r.vm };
      };
    } else {
      throw new Error(`TdxDeployment ${name}: unknown target ${JSON.stringify(args.target)} (qemu, azure, gcp)`);
    }

    const gates: pulumi.CustomResource[][] = [];
    const g = args.rollout?.gate;
    for (let i = 0; i < replicas; i++) {
      const wave = waveOf(i, args.rollout, replicas);
      const dependsOn = wave > 0 ? gates[wave - 1] : [];
      const r = replica(i, { parent: this, dependsOn });
      const d: DeployedVm = { name: vmName(i), wave, ...r, endpoint: r.endpoint ?? ((p) => pulumi.interpolate`${r.ip}:${p}`) };
      if (attestOpts) {
        d.attestation = new VmAttestation(`${vmName(i)}-attest`, {
          target: r.id, endpoint: d.endpoint(agentPort),
          expected: expected!,
          trust: { cacheDir: args.qemu?.cacheDir, ...attestOpts.trust },
          ...(attestOpts.waive ? { waive: attestOpts.waive } : {}),
          secrets: args.secrets === undefined ? undefined : pulumi.secret(args.secrets), secretDecls: args.image.secretDecls,
          ownerKey: args.secrets === undefined ? undefined : pulumi.secret(args.ownerKey ?? args.image.ownerKey),
          timeoutSeconds: attestOpts.timeoutSeconds ?? g?.timeoutSeconds ?? 900, intervalSeconds: g?.intervalSeconds ?? 5,
        }, { parent: this, dependsOn: [r.resource] });
      }
      if (g?.attest) d.gate = d.attestation;
      else if (g) {
        if (g.port === undefined) throw new Error(`TdxDeployment ${name}: a health gate needs a port (or set attest: true)`);
        const url = pulumi.interpolate`${g.scheme ?? "http"}://${d.endpoint(g.port)}${g.path ?? "/"}`;
        d.gate = new RolloutGate(`${vmName(i)}-gate`, {
          target: r.id, url, expectStatus: g.expectStatus ?? 200, timeoutSeconds: g.timeoutSeconds ?? 900, intervalSeconds: g.intervalSeconds ?? 5, insecureTls: g.insecureTls ?? false,
        }, { parent: this, dependsOn: [r.resource] });
      }
      if (d.gate) (gates[wave] ??= []).push(d.gate);
      this.vms.push(d);
    }
    this.instances = pulumi.all(this.vms.map((v) => pulumi.all([v.id, v.privateIp, v.ip]).apply(([id, privateIp, ip]) => ({ name: v.name, wave: v.wave, id, privateIp, ip }))));
    const attestations = this.vms.map((v) => v.attestation);
    if (args.allowListFile !== undefined && expected && attestations.every((a) => a !== undefined) && attestations.length) {
      // add → roll → retire: open after the first wave proved the incoming measurement, close after the last.
      const first = this.vms.filter((v) => v.wave === 0).map((v) => v.attestation!);
      const incoming = expected;
      const waive = attestOpts?.waive ? { waive: attestOpts.waive } : {};
      const open = new AllowList(`${name}-allow-open`, { deployment: name, phase: "open", incoming, publish: args.allowListFile, ...waive }, { parent: this, dependsOn: first });
      const close = new AllowList(`${name}-allow-close`, { deployment: name, phase: "close", incoming, publish: args.allowListFile, ...waive }, { parent: this, dependsOn: [...attestations.map((a) => a!), open] });
      this.allowList = pulumi.all([close.ids, close.flashbots, close.constellation, close.trustee]).apply(([ids, flashbots, constellation, trustee]) => ({ ids, flashbots, constellation, trustee }));
    } else this.allowList = pulumi.output(undefined);
    this.promotion = expected && attestations.every((a) => a !== undefined)
      ? pulumi.all([expected, args.image.bakeKey, pulumi.all(attestations.map((a) => pulumi.all([a!.attested, a!.issuer, a!.spkiSha256, a!.attestedAt, a!.matchedShape, a!.waived])))]).apply(([m, bakeKey, proofs]): Promotion | undefined => {
        if (!proofs.every(([ok]) => ok === true)) return undefined;
        // Only host shapes some VM actually matched travel on (the base always: it is the measurement).
        const matched = new Set(proofs.map((p) => p[4]).filter((x): x is string => typeof x === "string"));
        const alternatives = (m.alternatives as Array<{ label?: unknown }> | undefined)?.filter((x) => typeof x.label === "string" && matched.has(x.label));
        const { alternatives: _all, ...base } = m;
        void _all;
        return {
          version: 1, stack: pulumi.getStack(), image: { bakeKey: bakeKey ?? null }, measurement: { ...base, ...(alternatives?.length ? { alternatives } : {}) },
          attestedBy: proofs.map(([, issuer, spkiSha256, attestedAt, shape, waived], i) => ({ vm: this.vms[i]!.name, issuer, spkiSha256, attestedAt, ...(shape ? { matchedShape: shape } : {}), waived: waived ?? [] })),
        };
      })
      : pulumi.output(undefined);
    if (args.target === "qemu") {
      const vm = this.vms[0].resource as import("./qemu").QemuVm;
      this.vmId = vm.vmId;
      this.forwards = vm.forwards;
      this.serialLog = vm.serialLog;
      this.warning = vm.warning;
      this.isTd = vm.isTd;
    }
    this.registerOutputs({ instances: this.instances, expected: this.expected, promotion: this.promotion, allowList: this.allowList, imageRef: this.imageRef, vmId: this.vmId, forwards: this.forwards, serialLog: this.serialLog, warning: this.warning, isTd: this.isTd });
  }
}
