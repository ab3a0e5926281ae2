/**
 * Which resource properties the Pulumi engine is told to keep secret: a VmAttestation's `secrets`
 * input (even when the program passed a plain value) and its `secrets`/`secretsDigest` outputs. Recorded from the
 * register-resource requests the SDK sends (an in-process monitor, no engine): what the engine
 * encrypts in state is exactly what these requests mark.
 */
import * as pulumi from "@pulumi/pulumi";
import { VmAttestation } from "../../components/deployment";

interface Registration { type: string; name: string; additionalSecretOutputs: string[]; inputs: Record<string, unknown> }

// How the SDK marks a secret value in a struct (@pulumi/pulumi runtime/rpc specialSigKey, specialSecretSig).
const SIG_KEY = "4dabf18193072939515e22adb298388d";
const SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270";
const registrations: Registration[] = [];

beforeAll(() => {
  const settings = require("@pulumi/pulumi/runtime/settings");
  const state = require("@pulumi/pulumi/runtime/state");
  const { MockMonitor } = require("@pulumi/pulumi/runtime/mocks");
  class RecordingMonitor extends MockMonitor {
    constructor() {
      super({ newResource: (a: { name: string; inputs: unknown }) => ({ id: `${a.name}-id`, state: a.inputs }), call: () => ({}) });
    }
    registerResource(req: any, callback: (err: unknown, resp?: unknown) => void) { // eslint-disable-line @typescript-eslint/no-explicit-any
      registrations.push({ type: req.getType(), name: req.getName(), additionalSecretOutputs: req.getAdditionalsecretoutputsList(), inputs: req.getObject().toJavaScript() });
      return super.registerResource(req, callback);
    }
  }
  settings.setMockOptions(new RecordingMonitor(), "tdxvm-test", "dev", false);
  Object.assign(state.getStore(), { supportsSecrets: true, supportsResourceReferences: true });
});

const registered = (vm: pulumi.Resource) => new Promise<void>((r) => vm.urn.apply(() => r()));

describe("VmAttestation secrets", () => {
  it("marks the secrets input secret, and the secrets and secretsDigest outputs", async () => {
    const vm = new VmAttestation("app-0", {
      target: "vm-id", endpoint: "127.0.0.1:8443", expected: { backend: "azure", registers: {} },
      secrets: { API_TOKEN: "plain-value-from-the-program" },
      secretDecls: [],
    });
    await registered(vm);
    const r = registrations.find((x) => x.name === "app-0")!;
    expect(r.type).toBe("pulumi-nodejs:dynamic/tdxvm:VmAttestation");
    expect([...r.additionalSecretOutputs].sort()).toEqual(["secrets", "secretsDigest"]);
    expect(r.inputs.secrets).toEqual({ [SIG_KEY]: SECRET_SIG, value: { API_TOKEN: "plain-value-from-the-program" } });
    // Nothing else carries the value in clear.
    const { secrets: _s, ...rest } = r.inputs;
    void _s;
    expect(JSON.stringify(rest)).not.toContain("plain-value-from-the-program");
  });

  it("without secrets nothing is marked but the outputs that could hold them", async () => {
    const vm = new VmAttestation("app-1", { target: "vm-id", endpoint: "127.0.0.1:8443", expected: { backend: "azure", registers: {} }, secretDecls: [] });
    await registered(vm);
    const r = registrations.find((x) => x.name === "app-1")!;
    expect([...r.additionalSecretOutputs].sort()).toEqual(["secrets", "secretsDigest"]);
    expect(r.inputs.secrets).toBeUndefined();
  });
});
