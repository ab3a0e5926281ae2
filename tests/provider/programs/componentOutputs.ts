/**
 * Test program: one of each tdxvm component (every deployment target), recording the output
 * names each component registers (registerOutputs) as the stack output `registered`
 * (componentOutputs.test.ts compares them with the README's table). Run as a preview with
 * bakeOnPreview: false: nothing is baked, booted or uploaded.
 */
import * as pulumi from "@pulumi/pulumi";
import { TdxImage, TdxMeasurement, TdxDeployment } from "../../../components";
import { recipe } from "../../../examples/local-qemu/recipe";

const registered: Record<string, string[]> = {};
// registerOutputs is protected: reach it through the prototype.
const proto = pulumi.ComponentResource.prototype as unknown as { registerOutputs(outputs?: unknown): void };
const original = proto.registerOutputs;
proto.registerOutputs = function (this: pulumi.ComponentResource & { __pulumiType: string }, outputs?: unknown) {
  const target = (this as { target?: string }).target;
  // The first call counts (the SDK calls it again, empty, after the constructor; only the first registers).
  registered[target ? `${this.__pulumiType}:${target}` : this.__pulumiType] ??= Object.keys((outputs ?? {}) as object).sort();
  return original.call(this, outputs);
};

const image = new TdxImage("img", { recipe: recipe(`${__dirname}/../../../examples/local-qemu`), bakeOnPreview: false });
const measurement = new TdxMeasurement("m", { image, backend: "rtmr" });
new TdxDeployment("q", { image, measurement, target: "qemu", secrets: { API_TOKEN: pulumi.secret("a-test-token-of-some-length") } });
new TdxDeployment("a", { image, measurement, target: "azure", azure: { location: "westeurope" } });
new TdxDeployment("g", { image, measurement, target: "gcp", gcp: { zone: "europe-west4-a" } });

export { registered };
