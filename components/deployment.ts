/**
 * TdxDeployment: a TdxImage running on a target — "qemu" here (a real local VM); Azure and GCP
 * confidential VMs build on the same component.
 */
import * as pulumi from "@pulumi/pulumi";
import type { TdxImage } from "./image";
import type { TdxMeasurement } from "./measurement";
import { qemuVm, QemuTargetArgs, QemuVm } from "./qemu";

export interface TdxDeploymentArgs {
  image: TdxImage;
  /** The measurement a verifier should expect from this deployment (passed through as `expected`). */
  measurement?: TdxMeasurement;
  target: "qemu";
  qemu?: QemuTargetArgs;
  /** Run-time secrets by name (use pulumi.secret / config secrets); checked against the image's declared secrets. */
  secrets?: pulumi.Input<Record<string, pulumi.Input<string>>>;
}

export class TdxDeployment extends pulumi.ComponentResource {
  readonly target: string;
  /** The register values a verifier should expect (from `measurement`). */
  readonly expected: pulumi.Output<Record<string, string | null> | undefined>;
  readonly vm?: QemuVm;
  readonly vmId?: pulumi.Output<string>;
  readonly forwards?: pulumi.Output<Array<{ guest: number; host: number; bind: string }>>;
  readonly serialLog?: pulumi.Output<string>;
  readonly warning?: pulumi.Output<string | null>;
  readonly isTd?: pulumi.Output<boolean>;

  constructor(name: string, args: TdxDeploymentArgs, opts?: pulumi.ComponentResourceOptions) {
    super("tdxvm:index:TdxDeployment", name, {}, opts);
    this.target = args.target;
    this.expected = args.measurement ? args.measurement.registers : pulumi.output(undefined);
    const image = pulumi.all([args.image.bakeKey, args.image.artifacts]).apply(([bakeKey, artifacts]) => ({ bakeKey, artifacts }));
    if (args.target === "qemu") {
      this.vm = qemuVm(name, { image, qemu: args.qemu ?? {}, secrets: args.secrets, secretDecls: args.image.secretDecls, expected: args.measurement?.registers }, { parent: this });
      this.vmId = this.vm.vmId;
      this.forwards = this.vm.forwards;
      this.serialLog = this.vm.serialLog;
      this.warning = this.vm.warning;
      this.isTd = this.vm.isTd;
      this.registerOutputs({ vmId: this.vmId, forwards: this.forwards, serialLog: this.serialLog, warning: this.warning, isTd: this.isTd, expected: this.expected });
    } else {
      throw new Error(`TdxDeployment ${name}: unknown target ${JSON.stringify(args.target)} (qemu, azure, gcp)`);
    }
  }
}
