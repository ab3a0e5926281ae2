/**
 * Azure and GCP targets and fleet rollouts, through the engine-free harness: the real example
 * programs, real bakes (cache hits after localQemu.test.ts), tdxvm's dynamic resources in the
 * real provider host (the page-blob upload runs a stub `az` that reads the real baked VHD; the
 * rollout gates poll a local HTTP server), and the cloud providers' resources mocked (their
 * graph, properties, dependencies and replacements are what is asserted).
 */
import * as http from "node:http";
import { createHash } from "node:crypto";
import { promises as fs, readFileSync, existsSync } from "node:fs";
import * as path from "node:path";
import { pulumiOp, OpResult } from "../harness";
import { loadState, ResourceState, unwrap } from "../harness/engine";
import { imageVersionName } from "../../components/azure";
import { tempDir } from "../helpers";

jest.setTimeout(60 * 60_000);

const FAKES = path.join(__dirname, "fakes");
const SIG_KEY = "4dabf18193072939515e22adb298388d";
const FILE_ASSET_SIG = "c44067f5952c0a294b673a41bacd8c17";

async function resources(dir: string): Promise<ResourceState[]> {
  return (await loadState(path.join(dir, "state.json"))).resources.filter((r) => !r.pendingDelete);
}
const byType = (rs: ResourceState[], t: string) => rs.filter((r) => r.type === t);
const one = (rs: ResourceState[], t: string) => {
  const x = byType(rs, t);
  expect({ t, n: x.length }).toEqual({ t, n: 1 });
  return x[0];
};
const inputs = (r: ResourceState) => unwrap(r.inputs) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
const outputs = (r: ResourceState) => unwrap(r.outputs) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
const sha256File = (f: string) => createHash("sha256").update(readFileSync(f)).digest("hex");
const stepsByType = (r: OpResult, t: string) => r.events.filter((e) => e.type === t).map((e) => e.step);

describe("azure target", () => {
  let dir: string;
  let stub: string;
  const op = (o: "up" | "preview" | "destroy", config: Record<string, string> = {}) =>
    pulumiOp(o, { program: "examples/azure-tdx/index.ts", project: "tdxvm-azure", dir, config: { location: "westeurope", ports: "[22]", ...config }, env: { PATH: `${FAKES}:${process.env.PATH}`, AZ_STUB_DIR: stub } });

  beforeAll(async () => {
    dir = await tempDir("tdxvm-azure-");
    stub = path.join(dir, "az");
    await fs.mkdir(stub);
  });
  afterAll(() => fs.rm(dir, { recursive: true, force: true }));

  it("up: the exact resource graph, with the real VHD uploaded as a verified page blob", async () => {
    const r = await op("up");
    expect(r.error).toBeUndefined();
    const rs = await resources(dir);
    const image = one(rs, "pulumi-nodejs:dynamic/tdxvm:ImageBake");
    const vhd = outputs(image).artifacts["azure.vhd"];
    expect(sha256File(vhd.path)).toBe(vhd.sha256);

    const sa = inputs(one(rs, "azure-native:storage:StorageAccount"));
    expect(sa).toMatchObject({ kind: "StorageV2", sku: { name: "Standard_LRS" }, allowBlobPublicAccess: false, location: "westeurope" });
    expect(sa.accountName).toMatch(/^[a-z0-9]{3,24}$/);
    expect(inputs(one(rs, "azure-native:storage:BlobContainer")).publicAccess).toBe("None");

    // The upload: az was really run on the baked VHD, as a page blob, and its content matched.
    const upload = one(rs, "pulumi-nodejs:dynamic/tdxvm:AzurePageBlob");
    expect(outputs(upload)).toMatchObject({ blobType: "PageBlob", uploadedSize: vhd.size, sha256: vhd.sha256, file: vhd.path });
    const calls = readFileSync(path.join(stub, "calls.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as string[]);
    const up = calls.find((c) => c[2] === "upload")!;
    expect(up).toEqual(expect.arrayContaining(["--type", "page", "--file", vhd.path, "--auth-mode", "login"]));
    const blobs = JSON.parse(readFileSync(path.join(stub, "blobs.json"), "utf8"));
    const stored = Object.values(blobs)[0] as { contentSha256: string; length: number; type: string };
    expect(stored).toMatchObject({ contentSha256: vhd.sha256, length: vhd.size, type: "PageBlob" });
    expect(readFileSync(path.join(dir, "host.log"), "utf8")).toMatch(/upload \d+ %/); // progress on the provider's stderr

    const gi = inputs(one(rs, "azure-native:compute:GalleryImage"));
    expect(gi).toMatchObject({ osType: "Linux", osState: "Specialized", hyperVGeneration: "V2", features: [{ name: "SecurityType", value: "ConfidentialVMSupported" }] });
    const version = one(rs, "azure-native:compute:GalleryImageVersion");
    expect(inputs(version).galleryImageVersionName).toBe(imageVersionName(vhd.sha256));
    expect(inputs(version).storageProfile.osDiskImage.source.uri).toBe(outputs(upload).url);
    expect(version.dependencies).toContain(upload.urn);

    const nsg = inputs(one(rs, "azure-native:network:NetworkSecurityGroup"));
    expect(nsg.securityRules.map((x: { destinationPortRange: string; direction: string; access: string }) => [x.destinationPortRange, x.direction, x.access])).toEqual([["22", "Inbound", "Allow"]]);
    const vm = one(rs, "azure-native:compute:VirtualMachine");
    const v = inputs(vm);
    expect(v.hardwareProfile.vmSize).toBe("Standard_DC2es_v5");
    expect(v.securityProfile).toEqual({ securityType: "ConfidentialVM", uefiSettings: { secureBootEnabled: false, vTpmEnabled: true } });
    expect(v.storageProfile.osDisk.managedDisk.securityProfile.securityEncryptionType).toBe("VMGuestStateOnly");
    expect(v.storageProfile.imageReference.id).toBe(outputs(version).id);
    expect(v.osProfile).toBeUndefined(); // Specialized image: no provisioning
    expect(v.vmName).toBeUndefined(); // autonamed
    expect(vm.replaceOnChanges).toEqual(expect.arrayContaining(["storageProfile.imageReference"]));
    expect(vm.dependencies).toEqual(expect.arrayContaining([one(rs, "azure-native:network:NetworkInterface").urn, version.urn]));
    // The stack exports what a verifier needs: the expected vTPM registers.
    expect(r.outputs.expectedPcrs).toMatchObject({ PCR4: expect.stringMatching(/^[0-9a-f]{64}$/), PCR11: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect((r.outputs.instances as Array<{ id: string }>)[0].id).toMatch(/^vmid-/);
  });

  it("a recipe change replaces the upload, image version and VM (create-before-delete); network, storage and gallery stay", async () => {
    const r = await op("up", { cmdline: "tdxvm.role=blue" });
    expect(r.error).toBeUndefined();
    for (const t of ["azure-native:resources:ResourceGroup", "azure-native:storage:StorageAccount", "azure-native:storage:BlobContainer", "azure-native:compute:Gallery", "azure-native:compute:GalleryImage", "azure-native:network:VirtualNetwork", "azure-native:network:Subnet", "azure-native:network:NetworkSecurityGroup"]) {
      expect({ t, steps: stepsByType(r, t) }).toEqual({ t, steps: ["same"] });
    }
    for (const t of ["pulumi-nodejs:dynamic/tdxvm:AzurePageBlob", "azure-native:compute:GalleryImageVersion", "azure-native:compute:VirtualMachine", "azure-native:network:NetworkInterface", "azure-native:network:PublicIPAddress"]) {
      expect({ t, steps: stepsByType(r, t) }).toEqual({ t, steps: ["create-replacement", "delete-replaced"] });
    }
    const vm = r.events.filter((e) => e.type === "azure-native:compute:VirtualMachine");
    expect(vm[0].replaces).toEqual(expect.arrayContaining(["storageProfile.imageReference"]));
    expect(vm[0].deleteBeforeReplace).toBe(false);
    // Every creation precedes every deletion.
    const lastCreate = Math.max(...r.events.filter((e) => e.step === "create-replacement").map((e) => r.events.indexOf(e)));
    const firstDelete = Math.min(...r.events.filter((e) => e.step === "delete-replaced").map((e) => r.events.indexOf(e)));
    expect(lastCreate).toBeLessThan(firstDelete);
    // The old blob was deleted, the new one is there.
    expect(Object.keys(JSON.parse(readFileSync(path.join(stub, "blobs.json"), "utf8")))).toHaveLength(1);
  });

  it("a blob that does not verify after upload fails the update with E_DEPLOYMENT and is removed", async () => {
    const r = await pulumiOp("up", { program: "examples/azure-tdx/index.ts", project: "tdxvm-azure-bad", dir: await tempDir("tdxvm-azure-bad-"), config: { location: "westeurope" }, env: { PATH: `${FAKES}:${process.env.PATH}`, AZ_STUB_DIR: stub, AZ_STUB_MODE: "corrupt" } });
    expect(r.ok).toBe(false);
    expect(r.error).toMatch(/E_DEPLOYMENT: the uploaded blob does not match the VHD: length \d+, not \d+/);
    expect(stepsByType(r, "azure-native:compute:VirtualMachine")).toEqual([]);
  });

  it("destroy removes the blob through az", async () => {
    const r = await op("destroy", { cmdline: "tdxvm.role=blue" });
    expect(r.ok).toBe(true);
    expect(JSON.parse(readFileSync(path.join(stub, "blobs.json"), "utf8"))).toEqual({});
  });
});

describe("gcp target", () => {
  let dir: string;
  const op = (o: "up" | "destroy", config: Record<string, string> = {}) => pulumiOp(o, { program: "examples/gcp-tdx/index.ts", project: "tdxvm-gcp", dir, config: { zone: "europe-west4-a", ports: "[443]", ...config } });

  beforeAll(async () => {
    dir = await tempDir("tdxvm-gcp-");
  });
  afterAll(() => fs.rm(dir, { recursive: true, force: true }));

  it("up: bucket object from the real tar.gz, a TDX-capable image, a C3 TDX instance", async () => {
    const r = await op("up");
    expect(r.error).toBeUndefined();
    const rs = await resources(dir);
    const tgz = outputs(one(rs, "pulumi-nodejs:dynamic/tdxvm:ImageBake")).artifacts["gcp.tar.gz"];
    const obj = inputs(one(rs, "gcp:storage/bucketObject:BucketObject"));
    expect(obj.source[SIG_KEY]).toBe(FILE_ASSET_SIG); // a FileAsset: Pulumi uploads this very file
    expect(obj.source.path).toBe(tgz.path);
    expect(sha256File(tgz.path)).toBe(tgz.sha256);
    expect(obj.name).toBe(`tdxvm-${tgz.sha256.slice(0, 16)}.tar.gz`);
    expect(inputs(one(rs, "gcp:storage/bucket:Bucket"))).toMatchObject({ location: "EUROPE-WEST4", uniformBucketLevelAccess: true, publicAccessPrevention: "enforced" });
    const img = one(rs, "gcp:compute/image:Image");
    expect(inputs(img).guestOsFeatures).toEqual([{ type: "UEFI_COMPATIBLE" }, { type: "TDX_CAPABLE" }, { type: "GVNIC" }]);
    expect(inputs(img).rawDisk.source).toMatch(new RegExp(`^https://storage\\.googleapis\\.com/[^/]+/tdxvm-${tgz.sha256.slice(0, 16)}\\.tar\\.gz$`));
    const vm = one(rs, "gcp:compute/instance:Instance");
    const v = inputs(vm);
    expect(v).toMatchObject({
      machineType: "c3-standard-4", zone: "europe-west4-a",
      confidentialInstanceConfig: { confidentialInstanceType: "TDX" }, scheduling: { onHostMaintenance: "TERMINATE" },
      shieldedInstanceConfig: { enableVtpm: true, enableSecureBoot: false },
      bootDisk: { initializeParams: { image: outputs(img).selfLink, type: "pd-balanced" } },
    });
    expect(v.networkInterfaces[0].nicType).toBe("GVNIC");
    expect(v.name).toBeUndefined(); // autonamed
    expect(vm.dependencies).toContain(img.urn);
    expect(inputs(one(rs, "gcp:compute/firewall:Firewall")).allows).toEqual([{ protocol: "tcp", ports: ["443"] }]);
    expect(r.outputs.expectedRtmrs).toMatchObject({ RTMR1: expect.stringMatching(/^[0-9a-f]{96}$/), RTMR2: expect.stringMatching(/^[0-9a-f]{96}$/), MRTD: null });
  });

  it("a recipe change replaces object, image and instance create-before-delete; the network stays", async () => {
    const r = await op("up", { cmdline: "tdxvm.role=blue" });
    expect(r.error).toBeUndefined();
    for (const t of ["gcp:storage/bucket:Bucket", "gcp:compute/network:Network", "gcp:compute/subnetwork:Subnetwork", "gcp:compute/firewall:Firewall"]) expect({ t, steps: stepsByType(r, t) }).toEqual({ t, steps: ["same"] });
    for (const t of ["gcp:storage/bucketObject:BucketObject", "gcp:compute/image:Image", "gcp:compute/instance:Instance"]) expect({ t, steps: stepsByType(r, t) }).toEqual({ t, steps: ["create-replacement", "delete-replaced"] });
    expect(r.events.find((e) => e.type === "gcp:compute/instance:Instance")!.deleteBeforeReplace).toBe(false);
    await op("destroy", { cmdline: "tdxvm.role=blue" });
  });
});

describe("fleet: 4 replicas in gated waves of 2 (health gates; attesting gates run on local VMs in fleetLocal.test.ts)", () => {
  let dir: string;
  let server: http.Server;
  let port: number;
  /** What the VMs' health endpoint answers. */
  let status = 503;
  const hits: string[] = [];
  const op = (o: "up" | "preview", config: Record<string, string> = {}) => pulumiOp(o, {
    program: "examples/fleet/index.ts", project: "tdxvm-fleet", dir,
    config: { target: "azure", replicas: "4", batchSize: "2", gateAttest: "false", gatePort: String(port), gatePath: "/healthz", gateTimeoutSeconds: "4", gateIntervalSeconds: "1", ...config },
    env: { PATH: `${FAKES}:${process.env.PATH}`, AZ_STUB_DIR: dir },
  });
  const vmUrns = async () => (await resources(dir)).filter((r) => r.type === "azure-native:compute:VirtualMachine");

  beforeAll(async () => {
    dir = await tempDir("tdxvm-fleet-");
    server = http.createServer((req, res) => {
      hits.push(req.url ?? "");
      res.writeHead(status, { "content-type": "text/plain" });
      res.end(status === 200 ? "ok" : "not yet");
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    port = (server.address() as { port: number }).port;
  });
  afterAll(async () => {
    server.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("first up: wave 2's VMs depend on wave 1's gates and are created after them", async () => {
    status = 200;
    const r = await op("up");
    expect(r.error).toBeUndefined();
    const rs = await resources(dir);
    const gates = byType(rs, "pulumi-nodejs:dynamic/tdxvm:RolloutGate");
    expect(gates).toHaveLength(4);
    expect(byType(rs, "pulumi-nodejs:dynamic/tdxvm:VmAttestation")).toHaveLength(0);
    const vms = await vmUrns();
    expect(vms.map((v) => v.urn.split("::").pop())).toEqual(["fleet-0-vm", "fleet-1-vm", "fleet-2-vm", "fleet-3-vm"]);
    const gateOf = (i: number) => gates.find((g) => g.urn.endsWith(`::fleet-${i}-gate`))!.urn;
    for (const i of [2, 3]) expect(vms[i].dependencies).toEqual(expect.arrayContaining([gateOf(0), gateOf(1)]));
    for (const i of [0, 1]) expect(vms[i].dependencies).not.toContain(gateOf(0));
    const order = (name: string) => r.events.findIndex((e) => e.urn.endsWith(`::${name}`) && e.step === "create");
    expect(order("fleet-2-vm")).toBeGreaterThan(Math.max(order("fleet-0-gate"), order("fleet-1-gate")));
    expect(hits.length).toBeGreaterThanOrEqual(4);
    expect(hits.every((h) => h === "/healthz")).toBe(true);
  });

  it("a recipe change rolls wave by wave: all gates pass, old VMs deleted only after all new ones exist", async () => {
    const before = (await vmUrns()).map((v) => v.id);
    const r = await op("up", { cmdline: "tdxvm.role=blue" });
    expect(r.error).toBeUndefined();
    const created = (name: string) => r.events.findIndex((e) => e.urn.endsWith(`::${name}`) && e.step === "create-replacement");
    for (const i of [2, 3]) expect(created(`fleet-${i}-vm`)).toBeGreaterThan(Math.max(created("fleet-0-gate"), created("fleet-1-gate")));
    const after = (await vmUrns()).map((v) => v.id);
    expect(after.filter((id) => before.includes(id))).toEqual([]);
    expect(stepsByType(r, "azure-native:compute:VirtualMachine")).toEqual(["create-replacement", "create-replacement", "create-replacement", "create-replacement", "delete-replaced", "delete-replaced", "delete-replaced", "delete-replaced"]);
  });

  it("a failing gate stops the rollout: wave 2 is not touched, the old VMs stay", async () => {
    const blue = await vmUrns();
    status = 503; // the new VMs never become healthy
    const r = await op("up"); // roll back to the default recipe
    expect(r.ok).toBe(false);
    expect(r.error).toMatch(/rollout gate failed: .* HTTP 503, expected 200/);
    expect(r.events.filter((e) => e.type === "azure-native:compute:VirtualMachine").map((e) => [e.urn.split("::").pop(), e.step])).toEqual([
      ["fleet-0-vm", "create-replacement"], ["fleet-1-vm", "create-replacement"],
    ]);
    expect(r.events.filter((e) => e.step.startsWith("delete"))).toEqual([]);
    const state = await loadState(path.join(dir, "state.json"));
    const old = state.resources.filter((x) => x.type === "azure-native:compute:VirtualMachine");
    // Wave 2 still runs the blue image, and wave 1's blue VMs are kept (pending deletion) next to the new ones.
    for (const i of [2, 3]) expect(old.find((x) => x.urn.endsWith(`fleet-${i}-vm`))!.id).toBe(blue[i].id);
    for (const i of [0, 1]) expect(old.filter((x) => x.urn.endsWith(`fleet-${i}-vm`)).map((x) => x.id)).toContain(blue[i].id);
  });

  it("rolling back succeeds once the gates pass; pending old VMs are deleted then", async () => {
    status = 200;
    const r = await op("up");
    expect(r.error).toBeUndefined();
    expect(r.events.filter((e) => e.type === "azure-native:compute:VirtualMachine" && e.step === "delete-replaced").length).toBeGreaterThanOrEqual(4);
    expect((await vmUrns())).toHaveLength(4);
    expect(existsSync(path.join(dir, "state.json"))).toBe(true);
  });
});
