/**
 * What the cloud providers would add to their resources' outputs (the harness cannot reach Azure
 * or GCP): names (autonamed like the providers do: resource name + suffix, unless given), and the
 * computed fields tdxvm reads. Addresses are 127.0.0.1 so that rollout gates can be exercised
 * against a local HTTP server.
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
