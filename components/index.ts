/** tdxvm's Pulumi components: TdxImage (bake), TdxMeasurement (registers), TdxDeployment (run: qemu, azure, gcp; fleets). */
export { TdxImage, ImageBake } from "./image";
export type { TdxImageArgs, ArtifactOut } from "./image";
export { TdxMeasurement, Measurement, REGISTERS } from "./measurement";
export type { TdxMeasurementArgs } from "./measurement";
export { TdxDeployment, RolloutGate, waveOf } from "./deployment";
export type { TdxDeploymentArgs, RolloutArgs, GateSpec, DeployedVm, ExpectedMeasurement, Promotion } from "./deployment";
export { QemuVm } from "./qemu";
export type { QemuTargetArgs } from "./qemu";
export { AzurePageBlob, UniqueName, imageVersionName, storageAccountPrefix } from "./azure";
export type { AzureTargetArgs } from "./azure";
export type { GcpTargetArgs } from "./gcp";
