/** tdxvm's Pulumi components: TdxImage (bake), TdxMeasurement (registers), TdxDeployment (run). */
export { TdxImage, ImageBake } from "./image";
export type { TdxImageArgs, ArtifactOut } from "./image";
export { TdxMeasurement, Measurement, REGISTERS } from "./measurement";
export type { TdxMeasurementArgs } from "./measurement";
export { TdxDeployment } from "./deployment";
export type { TdxDeploymentArgs } from "./deployment";
export { QemuVm } from "./qemu";
export type { QemuTargetArgs } from "./qemu";
