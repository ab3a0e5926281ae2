/**
 * The gcp target's resource graph (docs/design.md §6): the baked `tar.gz` (disk.raw, whole GiB,
 * oldgnu sparse) in a bucket, a compute.Image that is TDX-capable, and C3 Intel TDX
 * confidential instances booting from it.
 *
 *   Bucket → BucketObject (FileAsset: the baked tar.gz, uploaded by the engine)
 *   → Image (rawDisk.source, guestOsFeatures UEFI_COMPATIBLE, TDX_CAPABLE, GVNIC)
 *   Network → Subnetwork, Firewall (only the ports you open) — shared, they stay
 *   per VM: Instance (c3-standard-*, confidentialInstanceType TDX, onHostMaintenance
 *   TERMINATE, vTPM on, gVNIC, pd-balanced boot disk from image.selfLink). All autonamed; a new
 *   image replaces each instance create-before-delete.
 *
 * Measurements: TdxMeasurement backend "gcp" — RTMR1/RTMR2 from the image; MRTD and RTMR0
 * need Google's firmware and the machine shape.
 */
import * as pulumi from "@pulumi/pulumi";
import type * as storageT from "@pulumi/gcp/storage";
import type * as computeT from "@pulumi/gcp/compute";
import type { ArtifactOut } from "./image";

export interface GcpTargetArgs {
  /** A zone with C3 TDX capacity, e.g. "us-central1-a", "europe-west4-a", "asia-southeast1-a". */
  zone: pulumi.Input<string>;
  /** Bucket location (default: the zone's region, upper-case multi-regions work too). */
  bucketLocation?: pulumi.Input<string>;
  /** A c3-standard-* machine type (Intel TDX). Default c3-standard-4. */
  machineType?: pulumi.Input<string>;
  /** Inbound TCP ports the firewall opens (default: none). */
  ports?: number[];
  sourceRanges?: pulumi.Input<pulumi.Input<string>[]>;
  /** Give each instance an external IP (default true). */
  publicIp?: boolean;
  bootDiskGb?: pulumi.Input<number>;
}

export interface GcpShared {
  image: computeT.Image; object: storageT.BucketObject; subnet: computeT.Subnetwork; firewall?: computeT.Firewall;
  /** Smallest boot disk that holds the image (whole GiB, at least 10). */
  minDiskGb: pulumi.Output<number>;
}
export interface GcpReplica { vm: computeT.Instance; privateIp: pulumi.Output<string>; ip: pulumi.Output<string> }

export const regionOf = (zone: string) => zone.replace(/-[a-z]$/, "");

export function gcpShared(name: string, tarball: pulumi.Output<ArtifactOut>, disk: pulumi.Output<ArtifactOut>, a: GcpTargetArgs, parent: pulumi.Resource): GcpShared {
   
  const storage: typeof storageT = require("@pulumi/gcp/storage");
  const compute: typeof computeT = require("@pulumi/gcp/compute");
   
  const o = { parent };
  const region = pulumi.output(a.zone).apply(regionOf);
  const bucket = new storage.Bucket(`${name}-images`, {
    location: a.bucketLocation ?? region.apply((r) => r.toUpperCase()), uniformBucketLevelAccess: true, publicAccessPrevention: "enforced", forceDestroy: false,
  }, o);
  const object = new storage.BucketObject(`${name}-disk`, {
    bucket: bucket.name,
    name: tarball.sha256.apply((s) => `tdxvm-${s.slice(0, 16)}.tar.gz`),
    source: tarball.path.apply((p) => new pulumi.asset.FileAsset(p)),
    contentType: "application/gzip",
    metadata: { tdxvm_sha256: tarball.sha256 },
  }, o);
  const image = new compute.Image(`${name}-image`, {
    rawDisk: { source: pulumi.interpolate`https://storage.googleapis.com/${bucket.name}/${object.name}` },
    guestOsFeatures: [{ type: "UEFI_COMPATIBLE" }, { type: "TDX_CAPABLE" }, { type: "GVNIC" }],
    description: pulumi.interpolate`tdxvm image, tar.gz sha256 ${tarball.sha256}`,
  }, o);
  const net = new compute.Network(`${name}-net`, { autoCreateSubnetworks: false }, o);
  const subnet = new compute.Subnetwork(`${name}-subnet`, { network: net.id, region, ipCidrRange: "10.42.1.0/24" }, o);
  const firewall = a.ports?.length ? new compute.Firewall(`${name}-fw`, {
    network: net.id, direction: "INGRESS", allows: [{ protocol: "tcp", ports: a.ports.map(String) }], sourceRanges: a.sourceRanges ?? ["0.0.0.0/0"],
  }, o) : undefined;
  return { image, object, subnet, firewall, minDiskGb: disk.size.apply((b) => Math.max(10, Math.ceil(b / 2 ** 30))) };
}

export function gcpReplica(name: string, s: GcpShared, a: GcpTargetArgs, opts: pulumi.CustomResourceOptions): GcpReplica {
  const compute: typeof computeT = require("@pulumi/gcp/compute");  
  const vm = new compute.Instance(`${name}-vm`, {
    zone: a.zone,
    machineType: a.machineType ?? "c3-standard-4",
    confidentialInstanceConfig: { confidentialInstanceType: "TDX" },
    scheduling: { onHostMaintenance: "TERMINATE", automaticRestart: true },
    shieldedInstanceConfig: { enableVtpm: true, enableIntegrityMonitoring: true, enableSecureBoot: false },
    bootDisk: { initializeParams: { image: s.image.selfLink, type: "pd-balanced", size: a.bootDiskGb ?? s.minDiskGb }, autoDelete: true },
    networkInterfaces: [{ subnetwork: s.subnet.id, nicType: "GVNIC", accessConfigs: a.publicIp === false ? [] : [{}] }],
    allowStoppingForUpdate: false,
  }, {
    ...opts,
    // An immutable VM: changes the provider could only apply by stopping it replace it instead (create-before-delete).
    replaceOnChanges: ["machineType", "scheduling", "shieldedInstanceConfig", "confidentialInstanceConfig"], deleteBeforeReplace: false,
  });
  const privateIp = vm.networkInterfaces.apply((n) => n?.[0]?.networkIp ?? "");
  const ip = a.publicIp === false ? privateIp : vm.networkInterfaces.apply((n) => n?.[0]?.accessConfigs?.[0]?.natIp ?? "");
  return { vm, privateIp, ip };
}
