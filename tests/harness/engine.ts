/**
 * An engine-free Pulumi harness (docs/design.md §5): runs a real Pulumi program with the SDK's mock
 * monitor replaced by one that behaves like the engine for what tdxvm relies on, and forwards
 * every dynamic resource to the real `@pulumi/pulumi/cmd/dynamic-provider` host over gRPC.
 *
 * What it does like the engine:
 * - one provider host process per operation, Configure first (the host refuses secrets, so
 *   secret inputs are unwrapped before they reach it, and outputs whose input key was secret —
 *   plus additionalSecretOutputs — are marked secret again);
 * - registration: Check(old inputs, new inputs) → Diff(id, old outputs, checked inputs) →
 *   same | update | replace | create; preview calls no Create/Update and answers with the
 *   checked inputs as outputs (unknowns stay unknown); replacements are create-before-delete
 *   (deletes of replaced and vanished resources run at the end, in reverse dependency order,
 *   and only when every step succeeded) unless the provider asks delete-first — an explicit
 *   `deleteBeforeReplace` option (true or false) overrides the provider's answer
 *   (pkg/resource/deploy/step_generator.go: `goal.DeleteBeforeReplace` wins when set);
 * - `replaceOnChanges` acts only on keys the provider's diff reports as changed: the Node
 *   dynamic-provider host sends no changed keys and no detailed diff
 *   (sdk/nodejs/cmd/dynamic-provider/index.ts `diff`), so it has no effect on a dynamic resource
 *   whose diff answers `changes: true/false`; only when the diff leaves `changes` unset does the
 *   engine diff the inputs itself and then apply it (step_generator.go diffResource,
 *   applyReplaceOnChanges);
 * - refresh calls Read(id, old outputs, old inputs), then Diff with the refreshed outputs as the
 *   old state and the old inputs as the new ones (pkg/resource/deploy/step.go
 *   RefreshStep.Apply): no changes → same, else the resource drifted; an empty id removes it;
 * - destroy deletes everything in reverse dependency order;
 * - state is kept in a JSON file with secret values encrypted (as the engine encrypts them).
 * Non-dynamic resources (cloud providers we cannot reach) go to a small mock: their id is
 * derived from the URN and a replacement counter, outputs = inputs plus mocked fields, and a
 * change of a property listed in FORCE_NEW (or replaceOnChanges: real providers send detailed
 * diffs) replaces them; invokes go to a mock too (mockCall).
 */
import { spawn, ChildProcess } from "node:child_process";
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { promises as fs, readFileSync, existsSync } from "node:fs";
import * as path from "node:path";
import * as readline from "node:readline";

 
const grpc = require("@grpc/grpc-js");
const structproto = require("google-protobuf/google/protobuf/struct_pb");
const provproto = require("@pulumi/pulumi/proto/provider_pb");
const provrpc = require("@pulumi/pulumi/proto/provider_grpc_pb");
const resproto = require("@pulumi/pulumi/proto/resource_pb");
const emptyproto = require("google-protobuf/google/protobuf/empty_pb");
 

export const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";
export const SECRET_SIG = "4dabf18193072939515e22adb298388d";
export const SECRET_VAL = "1b47061264138c4ac30d75fd1eb44270";
export const DYNAMIC_PREFIX = "pulumi-nodejs:dynamic";

export type Op = "up" | "preview" | "destroy" | "refresh";

export interface ResourceState {
  urn: string;
  type: string;
  custom: boolean;
  id: string;
  parent: string;
  dependencies: string[];
  /** Marked (secrets as {sig, value}) — encrypted on disk. */
  inputs: Record<string, unknown>;
  outputs: Record<string, unknown>;
  additionalSecretOutputs: string[];
  replaceOnChanges: string[];
  /** An old resource whose replacement was created by an update that then failed: deleted by the next successful up. */
  pendingDelete?: boolean;
}

export interface StackState { version: 1; resources: ResourceState[]; outputs: Record<string, unknown> }

export interface StepEvent {
  step: "create" | "update" | "replace" | "same" | "delete" | "read" | "create-replacement" | "delete-replaced";
  urn: string;
  type: string;
  changes?: boolean;
  replaces?: string[];
  deleteBeforeReplace?: boolean;
  /** Checked inputs (secrets redacted) — what `pulumi preview` would draw its diff from. */
  checked?: Record<string, unknown>;
  old?: Record<string, unknown>;
  ms: number;
  at: number;
}

export interface RunResult { ok: boolean; error?: string; events: StepEvent[]; outputs: Record<string, unknown>; hostLog: string }

/** Properties whose change makes a cloud resource a new physical resource (from the provider schemas). */
export const FORCE_NEW: Record<string, string[]> = {
  "azure-native:compute:GalleryImageVersion": ["galleryImageVersionName", "galleryImageName", "galleryName", "resourceGroupName", "location"],
  "azure-native:compute:GalleryImage": ["galleryImageName", "osType", "osState", "hyperVGeneration", "features", "identifier"],
  "azure-native:compute:VirtualMachine": ["vmName", "location"],
  "azure-native:storage:StorageAccount": ["accountName", "kind"],
  "azure-native:storage:BlobContainer": ["containerName", "accountName"],
  "gcp:compute/image:Image": ["name", "rawDisk", "guestOsFeatures", "family"],
  "gcp:storage/bucketObject:BucketObject": ["name", "source", "bucket"],
  "gcp:compute/instance:Instance": ["name", "zone", "confidentialInstanceConfig", "bootDisk"],
};

// ---- secrets -----------------------------------------------------------------------------

export function isSecret(v: unknown): v is { value: unknown } {
  return !!v && typeof v === "object" && (v as Record<string, unknown>)[SECRET_SIG] === SECRET_VAL;
}

export function unwrap(v: unknown): unknown {
  if (isSecret(v)) return unwrap(v.value);
  if (Array.isArray(v)) return v.map(unwrap);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, unwrap(x)]));
  return v;
}

export function hasSecret(v: unknown): boolean {
  if (isSecret(v)) return true;
  if (Array.isArray(v)) return v.some(hasSecret);
  if (v && typeof v === "object") return Object.values(v).some(hasSecret);
  return false;
}

const secret = (value: unknown) => ({ [SECRET_SIG]: SECRET_VAL, value });

/**
 * A check failure as the engine prints it: pulumi/pulumi pkg/resource/deploy/step_generator.go
 * (issueCheckFailures) uses diagnostic 2003 "%v resource '%v's property '%v' value %v has a
 * problem: %v" with `inputs[failure.Property]` — the goal's input, formatted with Go's %v, which
 * shows a secret's plaintext — and 2002 "%v resource '%v' has a problem: %v" without a property
 * (sdk/go/common/diag/errors.go). So a provider that names a property leaks its value here too.
 */
export function checkFailureMessage(type: string, name: string, inputs: Record<string, unknown>, f: { property: string; reason: string }): string {
  if (!f.property) return `${type} resource '${name}' has a problem: ${f.reason}`;
  return `${type} resource '${name}'s property '${f.property}' value ${goValue(inputs[f.property])} has a problem: ${f.reason}`;
}

/** Roughly Go's %v of a resource.PropertyValue ("{…}"; a secret as "{&{{…}}}"): the plaintext is what matters. */
function goValue(v: unknown): string {
  const inner = (x: unknown): string => (isSecret(x) ? `&{${goValue(x.value)}}` : x === undefined ? "<nil>" : typeof x === "string" ? x : Array.isArray(x) ? `[${x.map(goValue).join(" ")}]` : x && typeof x === "object" ? `map[${Object.entries(x).map(([k, y]) => `${k}:${goValue(y)}`).join(" ")}]` : String(x));
  return `{${inner(v)}}`;
}

/** Mark top-level keys secret: those whose input was secret (engine annotateSecrets) and the additional ones. */
function markSecrets(outs: Record<string, unknown>, inputs: Record<string, unknown>, additional: string[]): Record<string, unknown> {
  return Object.fromEntries(Object.entries(outs).map(([k, v]) => [k, (hasSecret(inputs[k]) || additional.includes(k)) && v !== undefined && v !== null && !isSecret(v) ? secret(v) : v]));
}

const KEY = createHash("sha256").update("tdxvm harness state passphrase").digest();

/** Encrypt secret values for the state file (AES-256-GCM), like the engine's passphrase provider. */
function sealSecrets(v: unknown): unknown {
  if (isSecret(v)) {
    const iv = randomBytes(12);
    const c = createCipheriv("aes-256-gcm", KEY, iv);
    const ct = Buffer.concat([c.update(JSON.stringify(unwrap(v.value))), c.final()]);
    return { [SECRET_SIG]: SECRET_VAL, ciphertext: Buffer.concat([iv, c.getAuthTag(), ct]).toString("base64") };
  }
  if (Array.isArray(v)) return v.map(sealSecrets);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, sealSecrets(x)]));
  return v;
}

function openSecrets(v: unknown): unknown {
  if (v && typeof v === "object" && (v as Record<string, unknown>)[SECRET_SIG] === SECRET_VAL && typeof (v as Record<string, unknown>).ciphertext === "string") {
    const raw = Buffer.from((v as { ciphertext: string }).ciphertext, "base64");
    const d = createDecipheriv("aes-256-gcm", KEY, raw.subarray(0, 12));
    d.setAuthTag(raw.subarray(12, 28));
    return secret(JSON.parse(Buffer.concat([d.update(raw.subarray(28)), d.final()]).toString("utf8")));
  }
  if (Array.isArray(v)) return v.map(openSecrets);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, openSecrets(x)]));
  return v;
}

/** Replace secret values by "[secret]" (for event logs). */
export function redact(v: unknown): unknown {
  if (isSecret(v)) return "[secret]";
  if (Array.isArray(v)) return v.map(redact);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, redact(x)]));
  return v;
}

export async function loadState(file: string): Promise<StackState> {
  if (!existsSync(file)) return { version: 1, resources: [], outputs: {} };
  return openSecrets(JSON.parse(await fs.readFile(file, "utf8"))) as StackState;
}

export async function saveState(file: string, s: StackState): Promise<void> {
  const tmp = `${file}.tmp`;
  await fs.writeFile(tmp, JSON.stringify(sealSecrets(s), null, 2));
  await fs.rename(tmp, file);
}

// ---- the provider host -------------------------------------------------------------------

const toStruct = (o: Record<string, unknown>) => structproto.Struct.fromJavaScript(JSON.parse(JSON.stringify(o)));

export class ProviderHost {
  private child!: ChildProcess;
  private client: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  log = "";

  static async start(cwd: string, logFile?: string): Promise<ProviderHost> {
    const h = new ProviderHost();
    const entry = require.resolve("@pulumi/pulumi/cmd/dynamic-provider/index.js", { paths: [cwd] });
    h.child = spawn(process.execPath, [entry, "harness"], { cwd, env: { ...process.env, PULUMI_NODEJS_PROJECT: "tdxvm-harness" }, stdio: ["ignore", "pipe", "pipe"] });
    h.child.stderr!.on("data", (d: Buffer) => {
      h.log += d.toString();
      if (logFile) void fs.appendFile(logFile, d);
      if (process.env.HARNESS_VERBOSE) process.stderr.write(d);
    });
    const port = await new Promise<string>((resolve, reject) => {
      const rl = readline.createInterface({ input: h.child.stdout! });
      rl.once("line", (l) => resolve(l.trim()));
      h.child.once("exit", (c) => reject(new Error(`provider host exited (${c}) before printing its port: ${h.log}`)));
    });
    h.client = new provrpc.ResourceProviderClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), { "grpc.max_receive_message_length": 64 << 20 });
    const req = new provproto.ConfigureRequest();
    req.setArgs(toStruct({}));
    req.setAcceptsecrets(true);
    req.setAcceptresources(true);
    const resp = await h.call("configure", req);
    if (resp.getAcceptsecrets()) throw new Error("the dynamic provider host unexpectedly accepts secrets");
    return h;
  }

  private call(method: string, req: unknown): Promise<any> { // eslint-disable-line @typescript-eslint/no-explicit-any
    return new Promise((resolve, reject) => this.client[method](req, { deadline: Date.now() + 3 * 3600_000 }, (err: Error | null, resp: unknown) => (err ? reject(err) : resolve(resp))));
  }

  async check(urn: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
    const req = new provproto.CheckRequest();
    req.setUrn(urn);
    req.setOlds(toStruct(olds));
    req.setNews(toStruct(news));
    const r = await this.call("check", req);
    return { inputs: r.getInputs().toJavaScript() as Record<string, unknown>, failures: r.getFailuresList().map((f: any) => ({ property: f.getProperty(), reason: f.getReason() })) as Array<{ property: string; reason: string }> }; // eslint-disable-line @typescript-eslint/no-explicit-any
  }

  async diff(urn: string, id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
    const req = new provproto.DiffRequest();
    req.setUrn(urn);
    req.setId(id);
    req.setOlds(toStruct(olds));
    req.setNews(toStruct(news));
    const r = await this.call("diff", req);
    const D = provproto.DiffResponse.DiffChanges;
    return { changes: r.getChanges() === D.DIFF_SOME ? true : r.getChanges() === D.DIFF_NONE ? false : undefined, replaces: r.getReplacesList() as string[], deleteBeforeReplace: r.getDeletebeforereplace() as boolean };
  }

  async create(urn: string, props: Record<string, unknown>) {
    const req = new provproto.CreateRequest();
    req.setUrn(urn);
    req.setProperties(toStruct(props));
    const r = await this.call("create", req);
    return { id: r.getId() as string, outs: r.getProperties().toJavaScript() as Record<string, unknown> };
  }

  async update(urn: string, id: string, olds: Record<string, unknown>, news: Record<string, unknown>) {
    const req = new provproto.UpdateRequest();
    req.setUrn(urn);
    req.setId(id);
    req.setOlds(toStruct(olds));
    req.setNews(toStruct(news));
    const r = await this.call("update", req);
    return { outs: r.getProperties().toJavaScript() as Record<string, unknown> };
  }

  async read(urn: string, id: string, props: Record<string, unknown>, inputs: Record<string, unknown>) {
    const req = new provproto.ReadRequest();
    req.setUrn(urn);
    req.setId(id);
    req.setProperties(toStruct(props));
    req.setInputs(toStruct(inputs));
    const r = await this.call("read", req);
    return { id: r.getId() as string, props: r.getProperties()?.toJavaScript() as Record<string, unknown>, inputs: r.getInputs()?.toJavaScript() as Record<string, unknown> | undefined };
  }

  async delete(urn: string, id: string, props: Record<string, unknown>) {
    const req = new provproto.DeleteRequest();
    req.setUrn(urn);
    req.setId(id);
    req.setProperties(toStruct(props));
    await this.call("delete", req);
  }

  async stop(): Promise<void> {
    this.client?.close();
    if (this.child.exitCode === null) {
      const gone = new Promise((r) => this.child.once("exit", r));
      this.child.kill("SIGTERM");
      await gone;
    }
  }
}

// ---- the engine --------------------------------------------------------------------------

const isDynamic = (type: string) => type.startsWith(DYNAMIC_PREFIX);

/** The value at a property path ("a.b.c") of unwrapped inputs. */
function at(obj: unknown, p: string): unknown {
  let v = unwrap(obj);
  for (const k of p.split(".")) v = v && typeof v === "object" ? (v as Record<string, unknown>)[k] : undefined;
  return v;
}

/** Which of `paths` differ between two input bags (replaceOnChanges / force-new semantics). */
function changedPaths(paths: string[], a: unknown, b: unknown): string[] {
  return paths.filter((p) => JSON.stringify(at(a, p) ?? null) !== JSON.stringify(at(b, p) ?? null));
}

/** The top-level keys whose values differ (secrets unwrapped): the engine's own input diff. */
function changedKeys(a: Record<string, unknown>, b: Record<string, unknown>): string[] {
  return [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((k) => JSON.stringify(unwrap(a[k]) ?? null) !== JSON.stringify(unwrap(b[k]) ?? null));
}
const now = () => Date.now();

/** Reverse topological order over dependencies and parents (dependents first). */
export function deleteOrder(resources: ResourceState[]): ResourceState[] {
  // Each state entry is deleted, dependents first. Entries are not keyed by URN: a replacement and
  // the old resource it replaces (pendingDelete, after a failed up) share one — like the engine,
  // both must go.
  const out: ResourceState[] = [];
  const seen = new Set<ResourceState>();
  const dependents = (urn: string) => resources.filter((r) => r.dependencies.includes(urn) || r.parent === urn);
  const visit = (r: ResourceState) => {
    if (seen.has(r)) return;
    seen.add(r);
    for (const d of dependents(r.urn)) visit(d);
    out.push(r);
  };
  for (const r of [...resources].reverse()) visit(r);
  return out;
}

export interface EngineOptions {
  op: Op;
  stateFile: string;
  cwd: string;
  project: string;
  stack: string;
  hostLog?: string;
  /** Mock for non-dynamic custom resources: extra outputs (e.g. ids, IPs) by type. */
  mockOutputs?: (type: string, name: string, inputs: Record<string, unknown>, id: string) => Record<string, unknown>;
  /** Mock for invokes (data sources) of the cloud providers: the result by token. */
  mockCall?: (token: string, args: Record<string, unknown>) => Record<string, unknown> | undefined;
  /** Called after a mocked resource is created (or its replacement), with its outputs. */
  mockCreated?: (type: string, outputs: Record<string, unknown>) => Promise<void>;
  /** Other stacks a StackReference may read, by the name the program gives: their state files. */
  stackRefs?: Record<string, string>;
}

export class Engine {
  state!: StackState;
  next: StackState = { version: 1, resources: [], outputs: {} };
  events: StepEvent[] = [];
  host!: ProviderHost;
  private pendingDeletes: ResourceState[] = [];
  private failed: Error | undefined;
  private counters = new Map<string, number>();
  private deletedEarly = new Set<string>();

  constructor(readonly o: EngineOptions) {}

  get preview(): boolean {
    return this.o.op === "preview";
  }

  async open(): Promise<void> {
    this.state = await loadState(this.o.stateFile);
    this.host = await ProviderHost.start(this.o.cwd, this.o.hostLog);
  }

  private event(e: Omit<StepEvent, "at">) {
    this.events.push({ ...e, at: now() });
  }

  private old(urn: string): ResourceState | undefined {
    return this.state.resources.find((r) => r.urn === urn && !r.pendingDelete);
  }

  /** The resource monitor's registerResource, engine-style. Returns the outputs (marked) and id. */
  /** `deleteBeforeReplace` is the resource option: undefined when the program did not set it. */
  async register(r: { urn: string; type: string; name: string; custom: boolean; parent: string; dependencies: string[]; inputs: Record<string, unknown>; additionalSecretOutputs: string[]; replaceOnChanges: string[]; deleteBeforeReplace?: boolean }): Promise<{ id: string; outputs: Record<string, unknown> }> {
    if (this.failed) throw this.failed;
    const old = this.old(r.urn);
    const record = (id: string, inputs: Record<string, unknown>, outputs: Record<string, unknown>) => {
      this.next.resources.push({ urn: r.urn, type: r.type, custom: r.custom, id, parent: r.parent, dependencies: r.dependencies, inputs, outputs, additionalSecretOutputs: r.additionalSecretOutputs, replaceOnChanges: r.replaceOnChanges });
      return { id, outputs };
    };
    if (!r.custom) return record("", r.inputs, old?.outputs ?? {});
    const t0 = now();
    try {
      if (isDynamic(r.type)) return await this.registerDynamic(r, old, t0, record);
      const made = this.registerMocked(r, old, t0, record);
      // A new physical resource: let the mock cloud back it where a test provides a real data plane.
      if (made.id && made.id !== old?.id) await this.o.mockCreated?.(r.type, unwrap(made.outputs) as Record<string, unknown>);
      return made;
    } catch (e) {
      this.failed ??= e as Error;
      throw e;
    }
  }

  private async registerDynamic(r: Parameters<Engine["register"]>[0], old: ResourceState | undefined, t0: number, record: (id: string, i: Record<string, unknown>, o: Record<string, unknown>) => { id: string; outputs: Record<string, unknown> }) {
    const news = unwrap(r.inputs) as Record<string, unknown>;
    const check = await this.host.check(r.urn, old ? (unwrap(old.inputs) as Record<string, unknown>) : {}, news);
    if (check.failures.length) throw new Error(check.failures.map((f) => checkFailureMessage(r.type, r.name, r.inputs, f)).join("\n"));
    const checked = markSecrets(check.inputs, r.inputs, []);
    const mark = (outs: Record<string, unknown>) => markSecrets(outs, r.inputs, r.additionalSecretOutputs);
    if (!old) {
      if (this.preview) {
        this.event({ step: "create", urn: r.urn, type: r.type, checked: redact(checked) as Record<string, unknown>, ms: now() - t0 });
        return record("", checked, checked);
      }
      const c = await this.host.create(r.urn, check.inputs);
      this.event({ step: "create", urn: r.urn, type: r.type, checked: redact(checked) as Record<string, unknown>, ms: now() - t0 });
      return record(c.id, checked, mark(c.outs));
    }
    const d = await this.host.diff(r.urn, old.id, unwrap(old.outputs) as Record<string, unknown>, check.inputs);
    let replaces = d.replaces;
    if (d.changes === undefined) {
      // DIFF_UNKNOWN: the engine diffs old and new inputs itself; replaceOnChanges applies to what changed.
      if (!changedKeys(old.inputs, checked).length) {
        this.event({ step: "same", urn: r.urn, type: r.type, changes: false, ms: now() - t0 });
        return record(old.id, checked, old.outputs);
      }
      replaces = [...new Set([...replaces, ...changedPaths(r.replaceOnChanges, old.inputs, checked)])];
    }
    if (d.changes === false) {
      this.event({ step: "same", urn: r.urn, type: r.type, changes: false, ms: now() - t0 });
      return record(old.id, checked, old.outputs);
    }
    const base = { urn: r.urn, type: r.type, changes: true, replaces, checked: redact(checked) as Record<string, unknown>, old: redact(old.inputs) as Record<string, unknown> };
    if (!replaces.length) {
      if (this.preview) {
        this.event({ step: "update", ...base, ms: now() - t0 });
        return record(old.id, checked, checked);
      }
      const u = await this.host.update(r.urn, old.id, unwrap(old.outputs) as Record<string, unknown>, check.inputs);
      this.event({ step: "update", ...base, ms: now() - t0 });
      return record(old.id, checked, mark(u.outs));
    }
    const dbr = r.deleteBeforeReplace ?? d.deleteBeforeReplace;
    if (this.preview) {
      this.event({ step: "replace", ...base, deleteBeforeReplace: dbr, ms: now() - t0 });
      return record("", checked, checked);
    }
    if (dbr) {
      await this.host.delete(old.urn, old.id, unwrap(old.outputs) as Record<string, unknown>);
      this.deletedEarly.add(`${old.urn}#${old.id}`); // gone: never "vanished" later, even if the create fails
      this.event({ step: "delete-replaced", urn: old.urn, type: old.type, ms: now() - t0 });
    }
    const c = await this.host.create(r.urn, check.inputs);
    this.event({ step: "create-replacement", ...base, deleteBeforeReplace: dbr, ms: now() - t0 });
    if (!dbr) this.pendingDeletes.push(old);
    return record(c.id, checked, mark(c.outs));
  }

  private registerMocked(r: Parameters<Engine["register"]>[0], old: ResourceState | undefined, t0: number, record: (id: string, i: Record<string, unknown>, o: Record<string, unknown>) => { id: string; outputs: Record<string, unknown> }) {
    const force = [...(FORCE_NEW[r.type] ?? []), ...r.replaceOnChanges];
    const mint = () => {
      const n = (this.counters.get(r.urn) ?? Number(old?.id.split("#")[1] ?? 0)) + 1;
      this.counters.set(r.urn, n);
      return `${r.name}-${createHash("sha256").update(r.urn).digest("hex").slice(0, 8)}#${n}`;
    };
    // Preview of a new physical resource: only the inputs are known (like the engine with a provider that cannot preview).
    const outputsFor = (id: string) => (this.preview ? { ...r.inputs, id: UNKNOWN } : { ...r.inputs, ...(this.o.mockOutputs?.(r.type, r.name, unwrap(r.inputs) as Record<string, unknown>, id) ?? {}), id });
    if (!old) {
      const id = this.preview ? "" : mint();
      this.event({ step: "create", urn: r.urn, type: r.type, checked: redact(r.inputs) as Record<string, unknown>, ms: now() - t0 });
      return record(id, r.inputs, outputsFor(id));
    }
    const changed = [...new Set([...Object.keys(r.inputs), ...Object.keys(old.inputs)])].filter((k) => JSON.stringify(unwrap(r.inputs[k])) !== JSON.stringify(unwrap(old.inputs[k])));
    if (!changed.length) {
      this.event({ step: "same", urn: r.urn, type: r.type, changes: false, ms: now() - t0 });
      return record(old.id, r.inputs, old.outputs);
    }
    const replaces = changedPaths(force, old.inputs, r.inputs);
    const base = { urn: r.urn, type: r.type, changes: true, replaces, checked: redact(r.inputs) as Record<string, unknown>, old: redact(old.inputs) as Record<string, unknown> };
    if (!replaces.length) {
      this.event({ step: "update", ...base, ms: now() - t0 });
      return record(old.id, r.inputs, this.preview ? { ...old.outputs, ...r.inputs } : { ...outputsFor(old.id), id: old.id });
    }
    const dbr = r.deleteBeforeReplace ?? false; // the mocked providers never ask delete-first
    if (this.preview) {
      this.event({ step: "replace", ...base, deleteBeforeReplace: dbr, ms: now() - t0 });
      return record("", r.inputs, outputsFor(""));
    }
    const id = mint();
    this.event({ step: "create-replacement", ...base, deleteBeforeReplace: dbr, ms: now() - t0 });
    if (dbr) this.event({ step: "delete-replaced", urn: old.urn, type: old.type, ms: 0 });
    else this.pendingDeletes.push(old);
    return record(id, r.inputs, outputsFor(id));
  }

  registerOutputs(urn: string, outputs: Record<string, unknown>): void {
    const r = this.next.resources.find((x) => x.urn === urn);
    if (r && !r.custom) r.outputs = outputs;
    if (urn.includes("::pulumi:pulumi:Stack::")) {
      this.next.outputs = outputs;
      this.stackOutputsRegistered = true;
    }
  }

  private stackOutputsRegistered = false;

  /**
   * A StackReference: the engine reads the named stack's outputs from its backend (here: the state
   * file the test named for it) and answers {name, outputs, secretOutputNames}; secret outputs stay
   * secret (pkg/resource/deploy/builtins.go readStackReference).
   */
  async readStackReference(name: string): Promise<Record<string, unknown>> {
    const file = this.o.stackRefs?.[name];
    if (!file || !existsSync(file)) throw new Error(`unknown stack "${name}" (the harness knows ${Object.keys(this.o.stackRefs ?? {}).join(", ") || "none"})`);
    const outputs = (await loadState(file)).outputs;
    const secretOutputNames = Object.entries(outputs).filter(([, v]) => hasSecret(v)).map(([k]) => k);
    return { name, outputs, secretOutputNames };
  }

  private async deleteOne(r: ResourceState, step: StepEvent["step"]): Promise<void> {
    const t0 = now();
    if (r.custom && isDynamic(r.type)) await this.host.delete(r.urn, r.id, unwrap(r.outputs) as Record<string, unknown>);
    this.event({ step, urn: r.urn, type: r.type, ms: now() - t0 });
  }

  /** After the program: deletes (replaced, then vanished) unless something failed; write state. */
  async finish(programError?: Error): Promise<RunResult> {
    const error = programError ?? this.failed;
    if (this.preview) {
      for (const r of this.state.resources) if (!this.next.resources.some((n) => n.urn === r.urn) && r.custom) this.event({ step: "delete", urn: r.urn, type: r.type, ms: 0 });
      return this.result(error);
    }
    // Resources that were not registered this time, plus those whose replacement was created.
    const vanished = this.state.resources.filter((r) => !r.pendingDelete && !this.deletedEarly.has(`${r.urn}#${r.id}`) && !this.next.resources.some((n) => n.urn === r.urn));
    const earlier = this.state.resources.filter((r) => r.pendingDelete);
    if (error) {
      // Like the engine: the stack keeps its last outputs unless the program registered new ones.
      if (!this.stackOutputsRegistered) this.next.outputs = this.state.outputs;
      // Like the engine: what was not reached stays, and old resources whose replacement exists stay, marked for deletion.
      this.next.resources.push(...vanished, ...earlier, ...this.pendingDeletes.map((p) => ({ ...p, pendingDelete: true })));
    } else {
      for (const r of deleteOrder([...earlier, ...this.pendingDeletes])) await this.deleteOne(r, "delete-replaced");
      for (const r of deleteOrder(vanished)) await this.deleteOne(r, "delete");
    }
    await saveState(this.o.stateFile, this.next);
    return this.result(error);
  }

  async destroy(): Promise<RunResult> {
    for (const r of deleteOrder(this.state.resources)) await this.deleteOne(r, "delete");
    await saveState(this.o.stateFile, { version: 1, resources: [], outputs: {} });
    return this.result();
  }

  async refresh(): Promise<RunResult> {
    const gone = new Set<string>();
    for (const r of this.state.resources) {
      if (!r.custom || !isDynamic(r.type)) continue;
      const t0 = now();
      const got = await this.host.read(r.urn, r.id, unwrap(r.outputs) as Record<string, unknown>, unwrap(r.inputs) as Record<string, unknown>);
      if (!got.id) {
        gone.add(r.urn);
        this.event({ step: "delete", urn: r.urn, type: r.type, ms: now() - t0 });
        continue;
      }
      const outs = markSecrets(got.props, r.inputs, r.additionalSecretOutputs);
      const inputs = got.inputs ? markSecrets(got.inputs, r.inputs, []) : r.inputs;
      // Like the engine: the refreshed state is the "old" side, the old inputs the "new" one.
      const d = await this.host.diff(r.urn, got.id, unwrap(outs) as Record<string, unknown>, unwrap(r.inputs) as Record<string, unknown>);
      const changes = d.changes ?? changedKeys(inputs, r.inputs).length > 0;
      this.event({ step: "read", urn: r.urn, type: r.type, changes, replaces: d.replaces, checked: redact(outs) as Record<string, unknown>, old: redact(r.outputs) as Record<string, unknown>, ms: now() - t0 });
      Object.assign(r, { id: got.id, outputs: outs, inputs });
    }
    this.state.resources = this.state.resources.filter((r) => !gone.has(r.urn));
    await saveState(this.o.stateFile, this.state);
    return this.result();
  }

  private result(error?: Error): RunResult {
    return { ok: !error, error: error ? String(error.message ?? error) : undefined, events: this.events, outputs: redact(this.next.outputs) as Record<string, unknown>, hostLog: this.host?.log ?? "" };
  }

  async close(): Promise<void> {
    await this.host?.stop();
  }
}

// ---- the monitor the SDK talks to ----------------------------------------------------------

/** A MockMonitor whose registerResource goes through the Engine (raw structs: unknowns and secrets intact). */
export function engineMonitor(engine: Engine): unknown {
   
  const { MockMonitor } = require("@pulumi/pulumi/runtime/mocks");
  class EngineMonitor extends MockMonitor {
    constructor() {
      super({
        newResource: () => { throw new Error("unused"); },
        call: (a: { token: string; inputs: Record<string, unknown> }) => {
          const out = engine.o.mockCall?.(a.token, a.inputs);
          if (!out) throw new Error(`the harness has no mock for the invoke ${a.token}`);
          return out;
        },
      });
    }

    async registerResource(req: any, callback: (err: unknown, resp?: unknown) => void) { // eslint-disable-line @typescript-eslint/no-explicit-any
      try {
        const urn = this.newUrn(req.getParent(), req.getType(), req.getName());
        const r = await engine.register({
          urn, type: req.getType(), name: req.getName(), custom: req.getCustom(), parent: req.getParent(), dependencies: req.getDependenciesList(),
          inputs: req.getObject().toJavaScript(), additionalSecretOutputs: req.getAdditionalsecretoutputsList(), replaceOnChanges: req.getReplaceonchangesList(),
          deleteBeforeReplace: req.getDeletebeforereplacedefined() ? req.getDeletebeforereplace() : undefined,
        });
        this.resources.set(urn, { urn, id: r.id, state: r.outputs });
        const resp = new resproto.RegisterResourceResponse();
        resp.setUrn(urn);
        resp.setId(r.id);
        resp.setObject(toStruct(r.outputs));
        callback(null, resp);
      } catch (err) {
        callback(err);
      }
    }

    async readResource(req: any, callback: (err: unknown, resp?: unknown) => void) { // eslint-disable-line @typescript-eslint/no-explicit-any
      try {
        if (req.getType() !== "pulumi:pulumi:StackReference") throw new Error(`the harness reads only StackReferences, not ${req.getType()}`);
        const urn = this.newUrn(req.getParent(), req.getType(), req.getName());
        const props = await engine.readStackReference(String(req.getProperties().toJavaScript().name ?? req.getId()));
        this.resources.set(urn, { urn, id: req.getId(), state: props });
        const resp = new resproto.ReadResourceResponse();
        resp.setUrn(urn);
        resp.setProperties(toStruct(props));
        callback(null, resp);
      } catch (err) {
        callback(err);
      }
    }

    registerResourceOutputs(req: any, callback: (err: unknown, resp?: unknown) => void) { // eslint-disable-line @typescript-eslint/no-explicit-any
      engine.registerOutputs(req.getUrn(), req.getOutputs()?.toJavaScript() ?? {});
      callback(null, new emptyproto.Empty());
    }
  }
  return new EngineMonitor();
}

export function readJson<T>(file: string): T {
  return JSON.parse(readFileSync(file, "utf8")) as T;
}

export const harnessDir = __dirname;
export const repoRoot = path.resolve(__dirname, "..", "..");
