/**
 * The default example image: a small Debian trixie TDX guest that prints its measured-boot
 * state on the serial console. Used by the Pulumi program in this folder, by the CLI
 * (`npx tdxvm bake examples/local-qemu/recipe.ts`) and by CI.
 */
import { Image, Policy } from "../../provider";

export function recipe(projectDir = __dirname): Image {
  return new Image({ base: "debian/trixie", hostname: "tdxvm-demo", projectDir })
    .install("tpm2-tools")
    .file("/etc/motd", { content: "tdxvm demo image\n" })
    .outputTargets("qemu", "azure", "gcp")
    .setPolicy(new Policy({ mutableRefPolicy: "error" }));
}

export default recipe;
