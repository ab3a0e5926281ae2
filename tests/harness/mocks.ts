/**
 * What the cloud providers would add to their resources' outputs (the harness cannot reach Azure
 * or GCP): names (autonamed like the providers do: resource name + suffix, unless given), and the
 * computed fields tdxvm reads. Addresses are 127.0.0.1 so that rollout gates can be exercised
 * against a local HTTP server.
 *
 * Azure Storage's data plane is real when a test provides one (Azurite): every mocked storage
 * account's blob endpoint is $HARNESS_AZURE_BLOB_ENDPOINT, listStorageAccountKeys answers
 * $HARNESS_AZURE_ACCOUNT_KEY, and a mocked blob container is created there too.
 */
import { createHash } from "node:crypto";

const NAME_PROP: Record<string, string> = {
  "azure-native:storage:StorageAccount": "accountName",
  "azure-native:compute:Gallery": "galleryName",
  "azure-native:compute:GalleryImageVersion": "galleryImageVersionName",
};

export const MOCK_IP = "127.0.0.1";

export function harnessMockOutputs(type: string, name: string, inputs: Record<string, unknown>, id: string): Record<string, unknown> {
  // A new physical resource (new id: created or replaced) gets a new autoname, as with the real providers' random suffixes.
  const suffix = createHash("sha256").update(`${type}/${name}/${id}`).digest("hex").slice(0, 7);
  const given = NAME_PROP[type] ? inputs[NAME_PROP[type]] : undefined;
  const out: Record<string, unknown> = {};
  if (type.startsWith("azure-native:") || type.startsWith("gcp:")) out.name = given ?? inputs.name ?? `${name}${type.startsWith("azure") ? "" : "-"}${suffix}`;
  switch (type) {
    case "azure-native:storage:StorageAccount":
      out.primaryEndpoints = { blob: process.env.HARNESS_AZURE_BLOB_ENDPOINT ?? `https://${String(out.name)}.blob.core.windows.net/` };
      break;
    case "azure-native:compute:VirtualMachine":
      out.vmId = `vmid-${suffix}`;
      break;
    case "azure-native:network:NetworkInterface":
      out.ipConfigurations = [{ ...((inputs.ipConfigurations as object[] | undefined)?.[0] ?? {}), privateIPAddress: MOCK_IP }];
      break;
    case "azure-native:network:PublicIPAddress":
      out.ipAddress = MOCK_IP;
      break;
    case "gcp:compute/image:Image":
      out.selfLink = `https://www.googleapis.com/compute/v1/projects/mock/global/images/${String(out.name)}`;
      break;
    case "gcp:compute/instance:Instance":
      out.instanceId = `iid-${suffix}`;
      out.networkInterfaces = [{ ...((inputs.networkInterfaces as object[] | undefined)?.[0] ?? {}), networkIp: MOCK_IP, accessConfigs: [{ natIp: MOCK_IP }] }];
      break;
  }
  return out;
}

/** Invokes (data sources) tdxvm's graphs call. */
export function harnessMockCall(token: string, args: Record<string, unknown>): Record<string, unknown> | undefined {
  switch (token) {
    case "azure-native:storage:listStorageAccountKeys":
      if (typeof args.accountName !== "string") throw new Error(`${token}: accountName ${String(args.accountName)}`);
      return { keys: [{ keyName: "key1", permissions: "FULL", value: process.env.HARNESS_AZURE_ACCOUNT_KEY ?? "bm90LWEta2V5" }] };
  }
  return undefined;
}

/** Back mocked resources by a real data plane where a test provides one: blob containers in Azurite. */
export async function harnessMockCreated(type: string, outputs: Record<string, unknown>): Promise<void> {
  const endpoint = process.env.HARNESS_AZURE_BLOB_ENDPOINT;
  const key = process.env.HARNESS_AZURE_ACCOUNT_KEY;
  if (type !== "azure-native:storage:BlobContainer" || !endpoint || !key) return;
  const { BlobServiceClient, StorageSharedKeyCredential } = await import("@azure/storage-blob");
  const account = new URL(endpoint).pathname.split("/").filter(Boolean)[0];
  await new BlobServiceClient(endpoint, new StorageSharedKeyCredential(account, key)).getContainerClient(String(outputs.name)).createIfNotExists();
}
