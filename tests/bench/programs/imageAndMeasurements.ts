/** Bench program: the local-qemu image and its two measurements, no VM (previews need no boot). */
import { TdxImage, TdxMeasurement } from "../../../components";
import { recipe } from "../../../examples/local-qemu/recipe";

const image = new TdxImage("bench", { recipe: recipe(`${__dirname}/../../../examples/local-qemu`) });
export const td = new TdxMeasurement("bench-td", { image, backend: "rtmr" }).registers;
export const vtpm = new TdxMeasurement("bench-vtpm", { image, backend: "azure" }).registers;
