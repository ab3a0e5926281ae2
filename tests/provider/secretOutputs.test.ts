/**
 * Which resource properties the Pulumi engine is told to keep secret: a VmAttestation's `secrets`
 * input (even when the program passed a plain value) and its `secrets`/`secretsDigest` outputs. Recorded from the
 * register-resource requests the SDK sends (an in-process monitor, no engine): what the engine
 * encrypts in state is exactly what these requests mark.
 */
import * as pulumi from "@pulumi/pulumi";
import { VmAttestation } from "../../components/deployment";
import { TdxImage } from "../../components/image";
import { Image, Init, SecretTarget } from "../../provider";
import { CONTRACT_PATH } from "../../provider/modules/init";
import { newOwnerKey } from "../../provider/secrets/owner";

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
  it("marks the secrets and owner key inputs secret, and the secrets, ownerKey and secretsDigest outputs", async () => {
    const vm = new VmAttestation("app-0", {
      target: "vm-id", endpoint: "127.0.0.1:8443", expected: { backend: "azure", registers: {} },
      secrets: { API_TOKEN: "plain-value-from-the-program" },
      ownerKey: "plain-owner-key-from-the-program",
      secretDecls: [],
    });
    await registered(vm);
    const r = registrations.find((x) => x.name === "app-0")!;
    expect(r.type).toBe("pulumi-nodejs:dynamic/tdxvm:VmAttestation");
    expect([...r.additionalSecretOutputs].sort()).toEqual(["ownerKey", "secrets", "secretsDigest"]);
    expect(r.inputs.secrets).toEqual({ [SIG_KEY]: SECRET_SIG, value: { API_TOKEN: "plain-value-from-the-program" } });
    expect(r.inputs.ownerKey).toEqual({ [SIG_KEY]: SECRET_SIG, value: "plain-owner-key-from-the-program" });
    // Nothing else carries the values in clear.
    const { secrets: _s, ownerKey: _k, ...rest } = r.inputs;
    void _s;
    void _k;
    expect(JSON.stringify(rest)).not.toContain("plain-value-from-the-program");
    expect(JSON.stringify(rest)).not.toContain("plain-owner-key");
  });

  it("without secrets nothing is marked but the outputs that could hold them", async () => {
    const vm = new VmAttestation("app-1", { target: "vm-id", endpoint: "127.0.0.1:8443", expected: { backend: "azure", registers: {} }, secretDecls: [] });
    await registered(vm);
    const r = registrations.find((x) => x.name === "app-1")!;
    expect([...r.additionalSecretOutputs].sort()).toEqual(["ownerKey", "secrets", "secretsDigest"]);
    expect(r.inputs.secrets).toBeUndefined();
  });
});

describe("the image owner", () => {
  const recipe = () => new Image({ base: "debian/trixie", projectDir: __dirname }).use(new Init({ secrets: { T: { targets: [SecretTarget.env("T")] } } }));
  const contractOf = (inputs: Record<string, unknown>) => {
    const r = inputs.recipe as { base_layer: { files: Array<{ path: string; source: { data: string } }> } };
    return JSON.parse(r.base_layer.files.find((f) => f.path === CONTRACT_PATH)!.source.data);
  };

  it("a recipe without an owner gets a generated OwnerKey whose private half is a secret output", async () => {
    const img = new TdxImage("gen", { recipe: recipe(), bakeOnPreview: false });
    await registered(img.bake);
    const k = registrations.find((x) => x.name === "gen-owner")!;
    expect(k.type).toBe("pulumi-nodejs:dynamic/tdxvm:OwnerKey");
    expect([...k.additionalSecretOutputs]).toEqual(["privateKey"]);
    expect(img.generatedOwner).toBeDefined();
  });

  it("an ownerKey from config: its public half is baked into the contract, the private half goes nowhere but where it signs", async () => {
    const key = newOwnerKey();
    const img = new TdxImage("given", { recipe: recipe(), bakeOnPreview: false, ownerKey: pulumi.secret(key.privateKeyPem) });
    await registered(img.bake);
    const bake = registrations.find((x) => x.name === "given" && x.type.endsWith("ImageBake"))!;
    expect(contractOf(bake.inputs).owner).toBe(key.publicKey);
    expect(JSON.stringify(bake.inputs)).not.toContain(key.privateKeyPem.split("\n")[1]);
    expect(registrations.find((x) => x.name === "given-owner")).toBeUndefined();
  });
});
