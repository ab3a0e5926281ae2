/**
 * What Pulumi's dynamic-provider host loads (through ./entry.js) when a tdxvm resource is
 * checked, diffed, created, updated, read or deleted. The serialized shim in each resource's
 * state names one of these by kind; everything else lives here, outside the state.
 */
import { imageProvider } from "./image";
import { measurementProvider } from "./measurement";
import { qemuVmProvider } from "./qemuVm";
import { azureBlobProvider } from "./azureBlob";
import { gateProvider } from "./gate";
import { uniqueNameProvider } from "./uniqueName";

export const providers = {
  image: imageProvider,
  measurement: measurementProvider,
  qemuVm: qemuVmProvider,
  azureBlob: azureBlobProvider,
  gate: gateProvider,
  uniqueName: uniqueNameProvider,
};

export type ProviderKind = keyof typeof providers;
