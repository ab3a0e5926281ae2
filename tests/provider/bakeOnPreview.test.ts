/**
 * bakeOnPreview: false — a preview of a recipe change does not bake; it plans (new bake key)
 * and shows the registers as values that will be recomputed (unknown), through the real
 * provider host. (With the default, localQemu.test.ts shows the new register values.)
 */
import { promises as fs } from "node:fs";
import { pulumiOp, stepsOf } from "../harness";
import { UNKNOWN } from "../harness/engine";
import { tempDir } from "../helpers";

jest.setTimeout(30 * 60_000);

describe("bakeOnPreview: false", () => {
  let dir: string;
  const op = (o: "up" | "preview", config: Record<string, string> = {}) => pulumiOp(o, { program: "tests/provider/programs/imageAndMeasurement.ts", project: "tdxvm-bop", dir, config: { bakeOnPreview: "false", ...config } });
  beforeAll(async () => {
    dir = await tempDir("tdxvm-bop-");
  });
  afterAll(() => fs.rm(dir, { recursive: true, force: true }));

  it("up: the image is baked (here a cache hit) and measured", async () => {
    const r = await op("up");
    expect(r.error).toBeUndefined();
    expect((r.outputs.registers as Record<string, string>).PCR11).toMatch(/^[0-9a-f]{64}$/);
  });

  it("a preview of a recipe change does not bake and says the registers will be recomputed", async () => {
    const r = await op("preview", { cmdline: "tdxvm.role=never-baked" });
    expect(r.error).toBeUndefined();
    expect(r.stdout).not.toContain("baking");
    const [img] = stepsOf(r, "ImageBake");
    expect(img.step).toBe("update");
    expect(img.checked!.bakeKey).not.toBe(img.old!.bakeKey);
    expect(img.checked!.artifacts).toBeUndefined();
    const [m] = stepsOf(r, "Measurement");
    expect(m.step).toBe("update");
    expect(m.checked!.image).toBe(UNKNOWN);
    expect(m.checked!.registers).toBeUndefined();
  });
});
