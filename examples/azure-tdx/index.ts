/**
 * Azure: the example image on a DCesv5 Intel TDX confidential VM. See README.md here.
 *
 *   pulumi config set location westeurope        # a region with DCesv5 capacity
 *   pulumi config set ports "[22]" --path        # optional: inbound TCP ports
 *   pulumi config set --secret ownerKey "$(cat owner.key)"   # optional: the image owner's key
 *   az login && pulumi up
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
// On Azure the image is visible in the vTPM (PCR 4, 9, 11); MRTD/RTMRs measure Microsoft's paravisor.
const expected = new TdxMeasurement("app-vtpm", { image, backend: "azure" });

const deployment = new TdxDeployment("app", {
  image,
  measurement: expected,
  target: "azure",
  azure: {
    location: config.get("location") ?? "westeurope",
    vmSize: config.get("vmSize") ?? "Standard_DC2es_v5",
    ports: config.getObject<number[]>("ports") ?? [],
  },
});

export const instances = deployment.instances;
export const imageVersionId = deployment.imageRef;
export const expectedPcrs = expected.registers;
export const measurementDiff = expected.diffMarkdown;
