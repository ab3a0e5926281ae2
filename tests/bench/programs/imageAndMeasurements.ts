/**
 * Bench program: the local-qemu image and its two measurements, no VM (previews need no boot),
 * plus a second image resource of the same recipe: the first resource a host checks also pays
 * for loading tdxvm into the host, the second shows the steady per-resource cost.
 */
import { TdxImage, TdxMeasurement } from "../../../components";
import { recipe } from "../../../examples/local-qemu/recipe";

const dir = `${__dirname}/../../../examples/local-qemu`;
const image = new TdxImage("bench", { recipe: recipe(dir) });
export const second = new TdxImage("bench-b", { recipe: recipe(dir) }).bakeKey;
export const td = new TdxMeasurement("bench-td", { image, backend: "rtmr" }).registers;
export const vtpm = new TdxMeasurement("bench-vtpm", { image, backend: "azure" }).registers;
