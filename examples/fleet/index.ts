/**
 * A fleet rolled out in gated waves: `replicas` confidential VMs on Azure, GCP — or local QEMU VMs
 * (`target: qemu`, the default: runs anywhere tdxvm's tests run) — replaced `batchSize` at a time
 * on every image change. With attesting gates (the default), wave k+1 starts only when every VM of
 * wave k has *proved* with platform-signed evidence, bound to a fresh nonce and its TLS key, that
 * it runs the expected measurement; only then does it get its secrets. See README.md here.
 *
 *   pulumi config set target qemu|azure|gcp ; pulumi config set replicas 2 ; pulumi config set batchSize 1
 */
import * as pulumi from "@pulumi/pulumi";
import { TdxImage, TdxMeasurement, TdxDeployment } from "../../components";
import type { Promotion } from "../../components";
import { recipe } from "../local-qemu/recipe";

const config = new pulumi.Config();
const target = (config.get("target") ?? "qemu") as "qemu" | "azure" | "gcp";
const image = new TdxImage("fleet", {
  recipe: recipe(`${__dirname}/../local-qemu`, { cmdline: config.get("cmdline")?.split(/\s+/).filter(Boolean) }),
  frozen: config.getBoolean("frozen") ?? false,
  // The only key the VMs accept secrets from (config secret ownerKey; unset: generated once, kept in state).
  ownerKey: config.getSecret("ownerKey"),
});
// What the VMs must prove: the vTPM registers on local VMs and Azure, the RTMRs on GCP. Normally
// the measurement of the image being deployed; `expectedCmdline` measures another image instead —
// what a reviewer approved — so a rollout of anything else is refused at its first wave.
const expectedCmdline = config.get("expectedCmdline");
const approved = expectedCmdline === undefined ? image : new TdxImage("fleet-approved", {
  recipe: recipe(`${__dirname}/../local-qemu`, { cmdline: expectedCmdline.split(/\s+/).filter(Boolean) }),
  owner: image.ownerPublicKey, // the same owner: an approved image differs only where the reviewer said
});
const expected = new TdxMeasurement("fleet-expected", { image: approved, backend: target === "gcp" ? "gcp" : "azure" });
// Promotion across stacks: with `promoteFrom` (e.g. my-org/tdxvm-fleet/canary) this stack expects
// exactly what that stack's VMs proved with platform-signed evidence (its `promotion` output), so a
// production stack runs only an image a canary attested; anything else is refused at its first wave.
const promoteFrom = config.get("promoteFrom");
const promoted = promoteFrom === undefined ? undefined : new pulumi.StackReference(promoteFrom).requireOutput("promotion").apply((p) => {
  const promotion = p as Promotion | undefined;
  if (!promotion || promotion.version !== 1 || !promotion.attestedBy?.length) throw new Error(`${promoteFrom} has no promotion: none of its rollouts has been attested yet`);
  return promotion.measurement;
});
const attest = config.getBoolean("gateAttest") ?? true;
const apiToken = config.getSecret("apiToken");

const fleet = new TdxDeployment("fleet", {
  image,
  measurement: promoted ?? expected,
  target,
  qemu: target === "qemu" ? { memoryMiB: config.getNumber("memoryMiB") ?? 2048, readiness: { serial: "TDXVM-AGENT-READY", timeoutSeconds: 900 } } : undefined,
  azure: target === "azure" ? { location: config.get("location") ?? "westeurope", ports: attest ? [] : [config.requireNumber("gatePort")] } : undefined,
  gcp: target === "gcp" ? { zone: config.get("zone") ?? "us-central1-a", ports: attest ? [] : [config.requireNumber("gatePort")] } : undefined,
  // Secrets reach each VM only after it passed attestation (the image's Init module receives them).
  secrets: apiToken?.apply((t) => ({ API_TOKEN: t })),
  replicas: config.getNumber("replicas") ?? 2,
  // Where this fleet's verifiers read the measurements they must accept (optional).
  allowListFile: config.get("allowListFile"),
  rollout: {
    strategy: "waves",
    batchSize: config.getNumber("batchSize") ?? 1,
    gate: attest
      ? { attest: true, timeoutSeconds: config.getNumber("gateTimeoutSeconds") ?? 900, intervalSeconds: config.getNumber("gateIntervalSeconds") ?? 5 }
      : {
          port: config.requireNumber("gatePort"),
          path: config.get("gatePath") ?? "/healthz",
          scheme: (config.get("gateScheme") as "http" | "https" | undefined) ?? "http",
          timeoutSeconds: config.getNumber("gateTimeoutSeconds") ?? 900,
          intervalSeconds: config.getNumber("gateIntervalSeconds") ?? 5,
        },
  },
});

export const instances = fleet.instances;
export const imageRef = fleet.imageRef;
export const expectedRegisters = fleet.expected; // what the VMs must prove: this image's, the approved one's, or the promoted canary's
export const attested = pulumi.all(fleet.vms.map((v) => v.attestation?.checks ?? pulumi.output(undefined)));
// What a production stack promotes from: the measurement every VM here proved, by whom and when.
export const promotion = fleet.promotion;
// What relying parties must accept after this update (ids; flashbots, Constellation, Trustee formats).
export const allowList = fleet.allowList;
