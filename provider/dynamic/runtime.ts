/**
 * What Pulumi's dynamic-provider host loads (through ./entry.js) when a tdxvm resource is
 * checked, diffed, created, updated, read or deleted. The serialized shim in each resource's
 * state names one of these by kind; everything else lives here, outside the state.
 *
 * Each kind writes a `stateVersion` into its outputs. The installed tdxvm handles state of its
 * own and older versions; state written by a newer tdxvm is refused (E_STATE) before a provider
 * method sees it, so an older tdxvm never misreads — or deletes on the strength of — a layout
 * it does not know.
 */
import { imageProvider, IMAGE_STATE_VERSION } from "./image";
import { measurementProvider, MEASUREMENT_STATE_VERSION } from "./measurement";
import { qemuVmProvider } from "./qemuVm";
import { VM_STATE_VERSION } from "../deploy/qemu";
import { azureBlobProvider, AZURE_BLOB_STATE_VERSION } from "./azureBlob";
import { gateProvider } from "./gate";
import { attestationProvider } from "./attestation";
import { uniqueNameProvider, UNIQUE_NAME_STATE_VERSION } from "./uniqueName";
import { ownerKeyProvider, OWNER_KEY_STATE_VERSION } from "./ownerKey";
import { allowListProvider, ALLOW_LIST_STATE_VERSION } from "./allowList";
import { TdxError } from "../errors";
import { failureOf, userError } from "./common";

type Bag = Record<string, unknown>;
interface DynamicProvider {
  check(olds: Bag, news: Bag): Promise<{ inputs: Bag; failures?: Array<{ property: string; reason: string }> }>;
  diff(id: string, olds: Bag, news: Bag): Promise<{ changes?: boolean; replaces?: string[]; deleteBeforeReplace?: boolean }>;
  create(inputs: Bag): Promise<{ id: string; outs: Bag }>;
  update(id: string, olds: Bag, news: Bag): Promise<{ outs: Bag }>;
  read(id: string, props: Bag): Promise<{ id: string; props: Bag }>;
  delete(id: string, props: Bag): Promise<void>;
}

/** The newest state layout each kind reads and writes (a kind that writes none is at 1). */
export const STATE_VERSIONS = {
  image: IMAGE_STATE_VERSION,
  measurement: MEASUREMENT_STATE_VERSION,
  qemuVm: VM_STATE_VERSION,
  azureBlob: AZURE_BLOB_STATE_VERSION,
  gate: 1,
  attestation: 1,
  uniqueName: UNIQUE_NAME_STATE_VERSION,
  ownerKey: OWNER_KEY_STATE_VERSION,
  allowList: ALLOW_LIST_STATE_VERSION,
};

/** E_STATE when `state` was written by a newer tdxvm than this one. */
export function refuseNewerState(kind: keyof typeof STATE_VERSIONS, state: Bag | undefined): void {
  const v = state?.stateVersion;
  const mine = STATE_VERSIONS[kind];
  if (typeof v === "number" && v > mine) {
    throw new TdxError("E_STATE", `this ${kind} resource's state was written by a newer tdxvm (state version ${v}; the installed tdxvm reads up to ${mine})`, {
      hint: "Install the tdxvm version that wrote this stack's state (or a newer one) in the Pulumi project; an older tdxvm does not touch state it cannot read.",
    });
  }
}

function versionGuard(kind: keyof typeof STATE_VERSIONS, p: DynamicProvider): DynamicProvider {
  const refuse = (state: Bag | undefined) => {
    try {
      refuseNewerState(kind, state);
    } catch (e) {
      throw userError(e);
    }
  };
  return {
    async check(olds, news) {
      try {
        refuseNewerState(kind, olds);
      } catch (e) {
        return { inputs: news, failures: [failureOf(e)] };
      }
      return p.check(olds, news);
    },
    async diff(id, olds, news) {
      refuse(olds);
      return p.diff(id, olds, news);
    },
    create: (inputs) => p.create(inputs),
    async update(id, olds, news) {
      refuse(olds);
      return p.update(id, olds, news);
    },
    async read(id, props) {
      refuse(props);
      return p.read(id, props);
    },
    async delete(id, props) {
      refuse(props);
      return p.delete(id, props);
    },
  };
}

export const providers = {
  image: versionGuard("image", imageProvider),
  measurement: versionGuard("measurement", measurementProvider),
  qemuVm: versionGuard("qemuVm", qemuVmProvider),
  azureBlob: versionGuard("azureBlob", azureBlobProvider),
  gate: versionGuard("gate", gateProvider),
  uniqueName: versionGuard("uniqueName", uniqueNameProvider),
  attestation: versionGuard("attestation", attestationProvider),
  ownerKey: versionGuard("ownerKey", ownerKeyProvider),
  allowList: versionGuard("allowList", allowListProvider),
};

export type ProviderKind = keyof typeof providers;
