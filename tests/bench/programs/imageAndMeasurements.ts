/**
 * Bench program: the local-qemu image and its two measurements, no VM (previews need no boot),
 * plus a second image resource of the same recipe: the first resource a host checks also pays
 * for loading tdxvm into the host, the second shows the steady per-resource cost. Config
 * `copies` (default 1) declares that set of 4 resources that many times (the marginal cost of a
 * resource is the difference between two stack sizes).
 */
import * as pulumi from "@pulumi/pulumi";
import { TdxImage, TdxMeasurement } from "../../../components";
import { recipe } from "../../../examples/local-qemu/recipe";

const dir = `${__dirname}/../../../examples/local-qemu`;
const copies = new pulumi.Config().getNumber("copies") ?? 1;
export const outputs = Array.from({ length: copies }, (_, i) => {
  const n = i === 0 ? "" : `-${i}`;
  const image = new TdxImage(`bench${n}`, { recipe: recipe(dir) });
  return {
    second: new TdxImage(`bench-b${n}`, { recipe: recipe(dir) }).bakeKey,
    td: new TdxMeasurement(`bench-td${n}`, { image, backend: "rtmr" }).registers,
    vtpm: new TdxMeasurement(`bench-vtpm${n}`, { image, backend: "azure" }).registers,
  };
});
