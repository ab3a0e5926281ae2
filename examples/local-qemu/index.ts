/**
 * The default tdxvm Pulumi program (the root Pulumi.yaml points here): bake the example image,
 * compute what a TD (RTMRs) and a vTPM (PCRs) will report for it, and run it as a local QEMU VM.
 * Local file backend, no cloud credentials:
 *
 *   npm ci && npx pulumi login --local && npx pulumi up
 *
 * Config (pulumi config set …):
 *   cmdline   extra kernel command-line words (in the UKI: `pulumi preview` lists the registers that change)
 *   motd      /etc/motd (in the root file system: its verity root hash, and so PCR 9/11 and RTMR2, change)
 *   frozen    bake only against the committed tdx.lock (beside recipe.ts)
 *   memoryMiB VM memory
 *   readySerial  the serial line after which the VM counts as started (default: the agent's ready line)
 *   apiToken  (secret) the image's API_TOKEN: delivered to the VM only after it proved, with a swtpm quote
 *             bound to a fresh nonce and its agent's TLS key, that it runs this image; never baked.
 *             Sealed to that key and signed by the image's owner: the VM accepts it from no one else
 *   ownerKey  (secret) the image owner's Ed25519 private key (`tdxvm owner-key new owner`); its public
 *             half is baked into the image. Unset: TdxImage generates one and keeps it in the stack's state
 */
import * as pulumi from "@pulumi/pulumi";
import { TdxImage, TdxMeasurement, TdxDeployment } from "../../components";
import { AGENT_READY } from "../../provider";
import { recipe } from "./recipe";

const config = new pulumi.Config();

const image = new TdxImage("demo", {
  recipe: recipe(__dirname, { motd: config.get("motd"), cmdline: config.get("cmdline")?.split(/\s+/).filter(Boolean) }),
  frozen: config.getBoolean("frozen") ?? false,
  ownerKey: config.getSecret("ownerKey"),
});

// What a TD on QEMU/KVM with Debian's OVMF reports (MRTD, RTMR0–3) …
const td = new TdxMeasurement("demo-td", { image, backend: "rtmr" });
// … and what a vTPM reports (PCR 4, 9, 11): the local dev VM's swtpm, or an Azure CVM.
const vtpm = new TdxMeasurement("demo-vtpm", { image, backend: "azure" });

const vm = new TdxDeployment("demo", {
  image,
  // The dev VM has a (swtpm) vTPM: it must prove PCR 4/9/11 of this image before it gets secrets.
  measurement: vtpm,
  target: "qemu",
  attest: true,
  secrets: config.getSecret("apiToken")?.apply((t) => ({ API_TOKEN: t })),
  qemu: {
    memoryMiB: config.getNumber("memoryMiB") ?? 2048,
    // Ready once the agent listens (it starts after the boot report; its port, 8443, is forwarded for attestation).
    // (readySerial: another serial line to call the VM started — e.g. the firmware's — and let the attestation wait for the agent.)
    readiness: { serial: config.get("readySerial") ?? AGENT_READY, timeoutSeconds: 900 },
  },
});

export const artifacts = image.artifacts;
export const systemdStub = image.systemdStub;
export const rootfs = image.rootfs;
export const rootHash = image.rootHash;
export const tdRegisters = td.registers;
export const vtpmRegisters = vtpm.registers;
export const measurementDiff = td.diffMarkdown;
export const vmId = vm.vmId;
export const forwards = vm.forwards;
export const serialLog = vm.serialLog;
export const warning = vm.warning;
export const attestation = vm.vms[0].attestation?.checks;
export const agentEndpoint = vm.vms[0].endpoint(8443);
export const owner = image.ownerPublicKey;
