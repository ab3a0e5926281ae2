/**
 * A fleet rolled out in gated waves: `replicas` confidential VMs on Azure (or GCP with
 * `target: gcp`), replaced `batchSize` at a time on every image change; wave k+1 starts only
 * when each VM of wave k answers its attestation endpoint with the expected vTPM registers.
 * See README.md here (quota, rollback, how the gate works).
 *
 *   pulumi config set target azure|gcp ; pulumi config set replicas 4 ; pulumi config set batchSize 2
 */
import * as pulumi from "@pulumi/pulumi";
import { TdxImage, TdxMeasurement, TdxDeployment } from "../../components";
import { recipe } from "../local-qemu/recipe";

const config = new pulumi.Config();
const target = (config.get("target") ?? "azure") as "azure" | "gcp";
const image = new TdxImage("fleet", {
  recipe: recipe(`${__dirname}/../local-qemu`, { cmdline: config.get("cmdline")?.split(/\s+/).filter(Boolean) }),
  frozen: config.getBoolean("frozen") ?? false,
});
const expected = new TdxMeasurement("fleet-expected", { image, backend: target === "azure" ? "azure" : "gcp" });
const port = config.getNumber("gatePort") ?? 8443;

const fleet = new TdxDeployment("fleet", {
  image,
  measurement: expected,
  target,
  azure: target === "azure" ? { location: config.get("location") ?? "westeurope", ports: [port] } : undefined,
  gcp: target === "gcp" ? { zone: config.get("zone") ?? "us-central1-a", ports: [port] } : undefined,
  replicas: config.getNumber("replicas") ?? 4,
  rollout: {
    strategy: "waves",
    batchSize: config.getNumber("batchSize") ?? 2,
    gate: {
      port,
      path: config.get("gatePath") ?? "/attestation",
      scheme: (config.get("gateScheme") as "http" | "https" | undefined) ?? "http",
      attest: config.getBoolean("gateAttest") ?? true,
      timeoutSeconds: config.getNumber("gateTimeoutSeconds") ?? 900,
      intervalSeconds: config.getNumber("gateIntervalSeconds") ?? 5,
    },
  },
});

export const instances = fleet.instances;
export const imageRef = fleet.imageRef;
export const expectedRegisters = expected.registers;
