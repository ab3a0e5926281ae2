/** Test program: the example image (config cmdline, bakeOnPreview) and its vTPM measurement. */
import * as pulumi from "@pulumi/pulumi";
import { TdxImage, TdxMeasurement } from "../../../components";
import { recipe } from "../../../examples/local-qemu/recipe";

const config = new pulumi.Config();
const image = new TdxImage("img", {
  recipe: recipe(`${__dirname}/../../../examples/local-qemu`, { cmdline: config.get("cmdline")?.split(/\s+/).filter(Boolean) }),
  bakeOnPreview: config.getBoolean("bakeOnPreview") ?? true,
});
export const registers = new TdxMeasurement("img-vtpm", { image, backend: "azure" }).registers;
