/**
 * GCP: the example image on a C3 Intel TDX confidential instance. See README.md here.
 *
 *   pulumi config set gcp:project my-project
 *   pulumi config set zone us-central1-a          # a zone with C3 TDX capacity
 *   pulumi config set --secret ownerKey "$(cat owner.key)"   # optional: the image owner's key
 *   gcloud auth application-default login && pulumi up
 */
import * as pulumi from "@pulumi/pulumi";
import { TdxImage, TdxMeasurement, TdxDeployment } from "../../components";
import { recipe } from "../local-qemu/recipe";

const config = new pulumi.Config();
const image = new TdxImage("app", {
  recipe: recipe(`${__dirname}/../local-qemu`, { cmdline: config.get("cmdline")?.split(/\s+/).filter(Boolean) }),
  frozen: config.getBoolean("frozen") ?? false,
  // (secret) the image owner's Ed25519 private key (`tdxvm owner-key new owner`); unset: generated and kept in state.
  ownerKey: config.getSecret("ownerKey"),
});
// RTMR1/RTMR2 come from the image. MRTD is Google's firmware: pinned by Google's launch endorsement
// (config endorsement: the .binarypb for the firmware your VMs boot) or its TDVF binary (config
// firmware). RTMR0 is the machine shape: pinned by a canary's CCEL (config capturedCcel), or waived
// out loud (config waiveRtmr0: the reason) — verifiers refuse it otherwise.
const waiveRtmr0 = config.get("waiveRtmr0");
const expected = new TdxMeasurement("app-td", {
  image, backend: "gcp", firmware: config.get("firmware"), endorsement: config.get("endorsement"), capturedCcel: config.get("capturedCcel"),
  ...(waiveRtmr0 ? { waive: { RTMR0: waiveRtmr0 } } : {}),
  vm: { memoryMiB: 16 * 1024 }, // c3-standard-4
});

const deployment = new TdxDeployment("app", {
  image,
  measurement: expected,
  target: "gcp",
  gcp: {
    zone: config.get("zone") ?? "us-central1-a",
    machineType: config.get("machineType") ?? "c3-standard-4",
    ports: config.getObject<number[]>("ports") ?? [],
  },
});

export const instances = deployment.instances;
export const imageSelfLink = deployment.imageRef;
export const expectedRtmrs = expected.registers;
export const measurementDiff = expected.diffMarkdown;
