/**
 * Azure and GCP targets and fleet rollouts, through the engine-free harness: the real example
 * programs, real bakes (cache hits after localQemu.test.ts), tdxvm's dynamic resources in the
 * real provider host (the page-blob upload runs the real @azure/storage-blob against Azurite,
 * which the mocked storage accounts point at; the rollout gates poll a local HTTP server), and
 * the cloud providers' resources mocked (their graph, properties, dependencies and replacements
 * are what is asserted). Every stack sets the tests' fixed owner key, as localQemu.test.ts and
 * fleetLocal.test.ts do: the owner's public key is part of the image, so a key generated per stack
 * would make every `up` here bake an image of its own (six bakes a run; secretOutputs.test.ts
 * covers the generated key).
 */
import * as http from "node:http";
import { createHash } from "node:crypto";
import { promises as fs, readFileSync, existsSync } from "node:fs";
import * as path from "node:path";
import { BlobServiceClient, StorageSharedKeyCredential } from "@azure/storage-blob";
import { pulumiOp, OpResult } from "../harness";
import { loadState, ResourceState, unwrap } from "../harness/engine";
import { imageVersionName, storageAccountPrefix } from "../../components/azure";
import { tempDir, startAzurite, Azurite, TEST_OWNER_KEY } from "../helpers";

jest.setTimeout(60 * 60_000);

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
const BLOB = "pulumi-nodejs:dynamic/tdxvm:AzurePageBlob";

/** The mocked Azure storage accounts' data plane: one Azurite account (see tests/harness/mocks.ts). */
function azureEnv(a: Azurite): Record<string, string> {
  return { HARNESS_AZURE_BLOB_ENDPOINT: a.endpoint, HARNESS_AZURE_ACCOUNT_KEY: a.key };
}

/** Every blob in the Azurite account: "container/name" → type, length, recorded sha256, and the sha256 of its content. */
async function blobs(a: Azurite): Promise<Record<string, { type?: string; length?: number; recorded?: string; sha256: string }>> {
  const svc = new BlobServiceClient(a.endpoint, new StorageSharedKeyCredential(a.account, a.key));
  const out: Record<string, { type?: string; length?: number; recorded?: string; sha256: string }> = {};
  for await (const c of svc.listContainers()) {
    for await (const b of svc.getContainerClient(c.name).listBlobsFlat({ includeMetadata: true })) {
      const h = createHash("sha256");
      for await (const chunk of (await svc.getContainerClient(c.name).getBlobClient(b.name).download()).readableStreamBody!) h.update(chunk as Buffer);
      out[`${c.name}/${b.name}`] = { type: b.properties.blobType, length: b.properties.contentLength, recorded: b.metadata?.tdxvm_sha256, sha256: h.digest("hex") };
    }
  }
  return out;
}

describe("azure target", () => {
  let dir: string;
  let azurite: Azurite;
  const op = (o: "up" | "preview" | "refresh" | "destroy", config: Record<string, string> = {}) =>
    pulumiOp(o, { program: "examples/azure-tdx/index.ts", project: "tdxvm-azure", dir, config: { location: "westeurope", ports: "[22]", ...config }, secretConfig: { ownerKey: TEST_OWNER_KEY }, env: azureEnv(azurite) });

  beforeAll(async () => {
    dir = await tempDir("tdxvm-azure-");
    azurite = await startAzurite(path.join(dir, "azurite"));
  });
  afterAll(async () => {
    await azurite?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("up: the exact resource graph, with the real VHD uploaded as a verified page blob", async () => {
    const r = await op("up");
    expect(r.error).toBeUndefined();
    const rs = await resources(dir);
    const image = one(rs, "pulumi-nodejs:dynamic/tdxvm:ImageBake");
    const vhd = outputs(image).artifacts["azure.vhd"];
    expect(sha256File(vhd.path)).toBe(vhd.sha256);

    // A storage account name of its own: drawn once, kept in state, within Azure's rules.
    const name = outputs(one(rs, "pulumi-nodejs:dynamic/tdxvm:UniqueName"));
    const sa = inputs(one(rs, "azure-native:storage:StorageAccount"));
    expect(sa).toMatchObject({ kind: "StorageV2", sku: { name: "Standard_LRS" }, allowBlobPublicAccess: false, allowSharedKeyAccess: true, location: "westeurope", accountName: name.name });
    expect(sa.accountName).toMatch(new RegExp(`^${storageAccountPrefix("app")}[a-z0-9]{10}$`));
    expect(sa.accountName.length).toBeLessThanOrEqual(24);
    expect(inputs(one(rs, "azure-native:compute:Gallery")).galleryName).toBe(`app_${name.suffix}`);
    expect(inputs(one(rs, "azure-native:storage:BlobContainer")).publicAccess).toBe("None");

    // The upload: the real VHD in Azurite as a page blob, its content equal to the bake's.
    const upload = one(rs, BLOB);
    const container = outputs(one(rs, "azure-native:storage:BlobContainer")).name;
    const blobName = `tdxvm-${vhd.sha256.slice(0, 16)}.vhd`;
    expect(outputs(upload)).toMatchObject({ blobType: "PageBlob", uploadedSize: vhd.size, sha256: vhd.sha256, file: vhd.path, endpoint: azurite.endpoint, url: `${azurite.endpoint}${container}/${blobName}` });
    expect(await blobs(azurite)).toEqual({ [`${container}/${blobName}`]: { type: "PageBlob", length: vhd.size, recorded: vhd.sha256, sha256: vhd.sha256 } });
    const hostLog = readFileSync(path.join(dir, "host.log"), "utf8");
    expect(hostLog).toMatch(/upload \d+ %/); // progress on the provider's stderr
    expect(hostLog).toContain("uploaded and verified");
    // The account key (from listStorageAccountKeys) is a secret: encrypted in state, never logged.
    expect(upload.inputs.accountKey).toMatchObject({ [SIG_KEY]: expect.any(String) });
    expect(upload.outputs.accountKey).toMatchObject({ [SIG_KEY]: expect.any(String) });
    expect(readFileSync(path.join(dir, "state.json"), "utf8")).not.toContain(azurite.key);
    expect(hostLog + r.stdout).not.toContain(azurite.key);

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

  it("refresh: a blob deleted behind Pulumi's back is drift (the provider's diff of the refreshed state), and the next preview replaces it", async () => {
    const before = await blobs(azurite);
    const [key] = Object.keys(before);
    const svc = new BlobServiceClient(azurite.endpoint, new StorageSharedKeyCredential(azurite.account, azurite.key));
    await svc.getContainerClient(key.split("/")[0]).deleteBlob(key.split("/")[1]);
    const r = await op("refresh");
    expect(r.error).toBeUndefined();
    const read = r.events.filter((e) => e.step === "read");
    expect(read.filter((e) => e.changes).map((e) => [e.type, e.replaces])).toEqual([[BLOB, ["exists"]]]);
    const p = await op("preview");
    expect(p.events.filter((e) => e.type === BLOB).map((e) => [e.step, e.replaces, e.deleteBeforeReplace])).toEqual([["replace", ["exists"], true]]);
  });

  it("a recipe change replaces the upload, image version and VM (create-before-delete); network, storage, name and gallery stay", async () => {
    const r = await op("up", { cmdline: "tdxvm.role=blue" });
    expect(r.error).toBeUndefined();
    for (const t of ["pulumi-nodejs:dynamic/tdxvm:UniqueName", "azure-native:resources:ResourceGroup", "azure-native:storage:StorageAccount", "azure-native:storage:BlobContainer", "azure-native:compute:Gallery", "azure-native:compute:GalleryImage", "azure-native:network:VirtualNetwork", "azure-native:network:Subnet", "azure-native:network:NetworkSecurityGroup"]) {
      expect({ t, steps: stepsByType(r, t) }).toEqual({ t, steps: ["same"] });
    }
    for (const t of [BLOB, "azure-native:compute:GalleryImageVersion", "azure-native:compute:VirtualMachine", "azure-native:network:NetworkInterface", "azure-native:network:PublicIPAddress"]) {
      expect({ t, steps: stepsByType(r, t) }).toEqual({ t, steps: ["create-replacement", "delete-replaced"] });
    }
    const vm = r.events.filter((e) => e.type === "azure-native:compute:VirtualMachine");
    expect(vm[0].replaces).toEqual(expect.arrayContaining(["storageProfile.imageReference"]));
    expect(vm[0].deleteBeforeReplace).toBe(false);
    // Every creation precedes every deletion.
    const lastCreate = Math.max(...r.events.filter((e) => e.step === "create-replacement").map((e) => r.events.indexOf(e)));
    const firstDelete = Math.min(...r.events.filter((e) => e.step === "delete-replaced").map((e) => r.events.indexOf(e)));
    expect(lastCreate).toBeLessThan(firstDelete);
    // Only the new VHD's blob is there.
    const vhd = outputs(one(await resources(dir), "pulumi-nodejs:dynamic/tdxvm:ImageBake")).artifacts["azure.vhd"];
    expect(Object.values(await blobs(azurite))).toEqual([{ type: "PageBlob", length: vhd.size, recorded: vhd.sha256, sha256: vhd.sha256 }]);
  });

  it("destroy removes the blob", async () => {
    const r = await op("destroy", { cmdline: "tdxvm.role=blue" });
    expect(r.ok).toBe(true);
    expect(await blobs(azurite)).toEqual({});
  });
});

describe("gcp target", () => {
  let dir: string;
  const op = (o: "up" | "destroy", config: Record<string, string> = {}) => pulumiOp(o, { program: "examples/gcp-tdx/index.ts", project: "tdxvm-gcp", dir, config: { zone: "europe-west4-a", ports: "[443]", ...config }, secretConfig: { ownerKey: TEST_OWNER_KEY } });

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
  let azurite: Azurite;
  let server: http.Server;
  let port: number;
  /** What the VMs' health endpoint answers. */
  let status = 503;
  const hits: string[] = [];
  const op = (o: "up" | "preview", config: Record<string, string> = {}) => pulumiOp(o, {
    program: "examples/fleet/index.ts", project: "tdxvm-fleet", dir,
    config: { target: "azure", replicas: "4", batchSize: "2", gateAttest: "false", gatePort: String(port), gatePath: "/healthz", gateTimeoutSeconds: "4", gateIntervalSeconds: "1", ...config },
    secretConfig: { ownerKey: TEST_OWNER_KEY },
    env: azureEnv(azurite),
  });
  const vmUrns = async () => (await resources(dir)).filter((r) => r.type === "azure-native:compute:VirtualMachine");

  beforeAll(async () => {
    dir = await tempDir("tdxvm-fleet-");
    azurite = await startAzurite(path.join(dir, "azurite"));
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
    await azurite?.stop();
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
