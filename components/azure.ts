/**
 * The azure target's resource graph (docs/design.md §6): the baked fixed VHD, uploaded as a page
 * blob, published as a Compute Gallery image version that supports confidential VMs, and
 * booted on DCesv5-class Intel TDX confidential VMs with a vTPM.
 *
 *   UniqueName (a random suffix kept in state) → ResourceGroup (or yours) → StorageAccount
 *   (StorageV2, globally unique name) → BlobContainer → AzurePageBlob (SDK upload with the
 *   account key, a Pulumi secret; verified by reading it back)
 *   → Gallery → GalleryImage (Linux, Specialized, V2, SecurityType=ConfidentialVMSupported)
 *   → GalleryImageVersion (version derived from the VHD digest: known at preview)
 *   VNet → Subnet, NSG (only the ports you open) — shared, they stay across image changes
 *   per VM: PublicIP? → NIC → VirtualMachine (ConfidentialVM, vTPM on, Secure Boot off,
 *   VMGuestStateOnly; no osProfile: the image is Specialized). All autonamed; a new image
 *   version replaces each VM (and its NIC/IP) create-before-delete.
 *
 * Azure's MRTD/RTMRs measure Microsoft's paravisor; what identifies the image is the vTPM
 * (TdxMeasurement backend "azure": PCR 4, 9, 11).
 */
import * as pulumi from "@pulumi/pulumi";
import type * as resourcesT from "@pulumi/azure-native/resources";
import type * as storageT from "@pulumi/azure-native/storage";
import type * as computeT from "@pulumi/azure-native/compute";
import type * as networkT from "@pulumi/azure-native/network";
import { providerShim } from "../provider/dynamic/shim";
import type { ArtifactOut } from "./image";

export interface AzureTargetArgs {
  /** Azure region with DCesv5/ECesv5 capacity (e.g. "westeurope", "northeurope", "eastus2", "centralus"). */
  location: pulumi.Input<string>;
  /** Deploy into this existing resource group instead of creating one. */
  resourceGroupName?: pulumi.Input<string>;
  /** A DCesv5/ECesv5 size (Intel TDX). Default Standard_DC2es_v5. */
  vmSize?: pulumi.Input<string>;
  /** Inbound TCP ports the NSG opens (default: none). */
  ports?: number[];
  /** Where inbound traffic may come from (default "*"). */
  sourceAddressPrefix?: pulumi.Input<string>;
  /** Give each VM a public IP (default true). */
  publicIp?: boolean;
  osDiskType?: pulumi.Input<string>;
  /** Upload timeout (default 180 min). */
  uploadTimeoutMinutes?: number;
}

/** A gallery image version ("Major.Minor.Patch", each < 2^31) derived from the VHD's sha256. */
export function imageVersionName(sha256: string): string {
  return `1.${parseInt(sha256.slice(0, 6), 16)}.${parseInt(sha256.slice(6, 12), 16)}`;
}

/**
 * A name drawn once per stack and kept in its state (type pulumi-nodejs:dynamic/tdxvm:UniqueName):
 * `prefix` + random [a-z0-9] characters. Storage account names are global across Azure, so a
 * name derived from the stack and resource names alone would collide between users of the same
 * example; this one does not, and it stays the same across updates.
 */
export class UniqueName extends pulumi.dynamic.Resource {
  declare readonly name: pulumi.Output<string>;
  declare readonly suffix: pulumi.Output<string>;
  constructor(name: string, props: { prefix: string; randomLength?: number; maxLength?: number }, opts?: pulumi.CustomResourceOptions) {
    super(providerShim("uniqueName"), name, { ...props, stateVersion: undefined, name: undefined, suffix: undefined }, opts, "tdxvm", "UniqueName");
  }
}

/** The fixed part of a storage account name: "tdx" + the resource name's letters and digits (room for 10 random characters). */
export function storageAccountPrefix(name: string): string {
  return `tdx${name.toLowerCase().replace(/[^a-z0-9]/g, "")}`.slice(0, 14);
}

export class AzurePageBlob extends pulumi.dynamic.Resource {
  declare readonly url: pulumi.Output<string>;
  declare readonly uploadedSize: pulumi.Output<number>;
  constructor(name: string, props: Record<string, pulumi.Input<unknown>>, opts?: pulumi.CustomResourceOptions) {
    // The account key is an input (a secret) and stays in the outputs (delete needs it): encrypted in state either way.
    super(providerShim("azureBlob"), name, {
      ...props, stateVersion: undefined, url: undefined, blobType: undefined, uploadedSize: undefined, writtenBytes: undefined, uploadSeconds: undefined, exists: undefined,
    }, { ...opts, additionalSecretOutputs: ["accountKey"] }, "tdxvm", "AzurePageBlob");
  }
}

export interface AzureShared {
  resourceGroupName: pulumi.Output<string>;
  imageVersion: computeT.GalleryImageVersion;
  upload: AzurePageBlob;
  subnet: networkT.Subnet;
  nsg: networkT.NetworkSecurityGroup;
}

export interface AzureReplica { vm: computeT.VirtualMachine; nic: networkT.NetworkInterface; publicIp?: networkT.PublicIPAddress; privateIp: pulumi.Output<string>; ip: pulumi.Output<string> }

/** The shared part: storage, upload, gallery, image version, network. */
export function azureShared(name: string, vhd: pulumi.Output<ArtifactOut>, a: AzureTargetArgs, parent: pulumi.Resource): AzureShared {
   
  const resources: typeof resourcesT = require("@pulumi/azure-native/resources");
  const storage: typeof storageT = require("@pulumi/azure-native/storage");
  const compute: typeof computeT = require("@pulumi/azure-native/compute");
  const network: typeof networkT = require("@pulumi/azure-native/network");
   
  const o = { parent };
  const location = a.location;
  const resourceGroupName = a.resourceGroupName ? pulumi.output(a.resourceGroupName) : new resources.ResourceGroup(`${name}-rg`, { location }, o).name;
  const unique = new UniqueName(`${name}-name`, { prefix: storageAccountPrefix(name), randomLength: 10, maxLength: 24 }, o);
  const account = new storage.StorageAccount(`${name}-sa`, {
    resourceGroupName, location, accountName: unique.name, kind: storage.Kind.StorageV2, sku: { name: storage.SkuName.Standard_LRS },
    allowBlobPublicAccess: false, allowSharedKeyAccess: true, minimumTlsVersion: storage.MinimumTlsVersion.TLS1_2, enableHttpsTrafficOnly: true,
  }, o);
  const container = new storage.BlobContainer(`${name}-vhds`, { resourceGroupName, accountName: account.name, publicAccess: storage.PublicAccess.None }, o);
  // The upload signs its requests with the account key (Contributor may list keys; a data-plane
  // role would have to be granted by an Owner and propagate first — see azureBlob.ts).
  const accountKey = pulumi.secret(storage.listStorageAccountKeysOutput({ resourceGroupName, accountName: account.name }, o).keys.apply((k) => {
    const key = k.find((x) => x.permissions?.toUpperCase() === "FULL") ?? k[0];
    if (!key) throw new Error(`storage account of ${name}: no account key to upload with (is Shared Key access disabled?)`);
    return key.value;
  }));
  const upload = new AzurePageBlob(`${name}-vhd`, {
    file: vhd.path, sha256: vhd.sha256, size: vhd.size, endpoint: account.primaryEndpoints.blob, accountKey, containerName: container.name,
    blobName: vhd.sha256.apply((s) => `tdxvm-${s.slice(0, 16)}.vhd`), timeoutMinutes: a.uploadTimeoutMinutes ?? 180,
  }, o);
  // Gallery names allow letters, digits, "." and "_" only, and are unique per subscription.
  const gallery = new compute.Gallery(`${name}-gallery`, { resourceGroupName, location, galleryName: pulumi.interpolate`${name.replace(/[^A-Za-z0-9]/g, "_")}_${unique.suffix}`, description: "tdxvm images" }, o);
  const image = new compute.GalleryImage(`${name}-image`, {
    resourceGroupName, location, galleryName: gallery.name,
    osType: compute.OperatingSystemTypes.Linux, osState: compute.OperatingSystemStateTypes.Specialized, hyperVGeneration: compute.HyperVGeneration.V2,
    features: [{ name: "SecurityType", value: "ConfidentialVMSupported" }],
    identifier: { publisher: "tdxvm", offer: name, sku: "tdx" },
  }, o);
  const imageVersion = new compute.GalleryImageVersion(`${name}-version`, {
    resourceGroupName, location, galleryName: gallery.name, galleryImageName: image.name,
    galleryImageVersionName: vhd.sha256.apply(imageVersionName),
    storageProfile: { osDiskImage: { hostCaching: compute.HostCaching.ReadOnly, source: { storageAccountId: account.id, uri: upload.url } } },
    publishingProfile: { targetRegions: [{ name: location, regionalReplicaCount: 1 }], replicaCount: 1, excludeFromLatest: false },
  }, o);
  const vnet = new network.VirtualNetwork(`${name}-vnet`, { resourceGroupName, location, addressSpace: { addressPrefixes: ["10.42.0.0/16"] } }, { ...o, ignoreChanges: ["subnets"] });
  const nsg = new network.NetworkSecurityGroup(`${name}-nsg`, {
    resourceGroupName, location,
    securityRules: (a.ports ?? []).map((port, i) => ({
      name: `allow-tcp-${port}`, priority: 1000 + i, direction: network.SecurityRuleDirection.Inbound, access: network.SecurityRuleAccess.Allow,
      protocol: network.SecurityRuleProtocol.Tcp, sourceAddressPrefix: a.sourceAddressPrefix ?? "*", sourcePortRange: "*", destinationAddressPrefix: "*", destinationPortRange: String(port),
    })),
  }, o);
  const subnet = new network.Subnet(`${name}-subnet`, { resourceGroupName, virtualNetworkName: vnet.name, addressPrefix: "10.42.1.0/24", networkSecurityGroup: { id: nsg.id } }, o);
  return { resourceGroupName, imageVersion, upload, subnet, nsg };
}

/** One confidential VM (with its NIC and optional public IP) from the shared image version. */
export function azureReplica(name: string, s: AzureShared, a: AzureTargetArgs, opts: pulumi.CustomResourceOptions): AzureReplica {
   
  const compute: typeof computeT = require("@pulumi/azure-native/compute");
  const network: typeof networkT = require("@pulumi/azure-native/network");
   
  const { resourceGroupName } = s;
  const location = a.location;
  // NIC and IP belong to one VM: they are replaced with it (tagged with the image version, which
  // replaceOnChanges watches), so a create-before-delete VM never fights its predecessor for a NIC.
  const tags = { tdxvmImageVersion: s.imageVersion.name };
  const perVm = { ...opts, replaceOnChanges: ["tags"] };
  const publicIp = a.publicIp === false ? undefined : new network.PublicIPAddress(`${name}-ip`, {
    resourceGroupName, location, sku: { name: network.PublicIPAddressSkuName.Standard }, publicIPAllocationMethod: network.IPAllocationMethod.Static, tags,
  }, perVm);
  const nic = new network.NetworkInterface(`${name}-nic`, {
    resourceGroupName, location, tags,
    ipConfigurations: [{ name: "primary", primary: true, subnet: { id: s.subnet.id }, privateIPAllocationMethod: network.IPAllocationMethod.Dynamic, ...(publicIp ? { publicIPAddress: { id: publicIp.id } } : {}) }],
  }, perVm);
  const vm = new compute.VirtualMachine(`${name}-vm`, {
    resourceGroupName, location,
    hardwareProfile: { vmSize: a.vmSize ?? "Standard_DC2es_v5" },
    securityProfile: { securityType: compute.SecurityTypes.ConfidentialVM, uefiSettings: { secureBootEnabled: false, vTpmEnabled: true } },
    storageProfile: {
      imageReference: { id: s.imageVersion.id },
      osDisk: {
        createOption: compute.DiskCreateOptionTypes.FromImage, deleteOption: compute.DiskDeleteOptionTypes.Delete,
        managedDisk: { storageAccountType: a.osDiskType ?? "Premium_LRS", securityProfile: { securityEncryptionType: compute.SecurityEncryptionTypes.VMGuestStateOnly } },
      },
    },
    networkProfile: { networkInterfaces: [{ id: nic.id, primary: true, deleteOption: compute.DeleteOptions.Detach }] },
    diagnosticsProfile: { bootDiagnostics: { enabled: true } },
    tags,
  }, { ...opts, replaceOnChanges: ["storageProfile.imageReference", "tags"], deleteBeforeReplace: false });
  const privateIp = nic.ipConfigurations.apply((c) => c?.[0]?.privateIPAddress ?? "");
  return { vm, nic, publicIp, privateIp, ip: publicIp ? publicIp.ipAddress.apply((x) => x ?? "") : privateIp };
}
