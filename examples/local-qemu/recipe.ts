/**
 * The default example image: a small Debian trixie TDX guest that prints its measured-boot
 * state (TPM PCRs, the firmware's TCG2 event log, systemd's measurement log) on the serial
 * console at every boot, so a host can compare it with tdxvm's predictions. Used by the Pulumi
 * program in this folder (index.ts, the root Pulumi.yaml's program), by the CLI
 * (`npx tdxvm run examples/local-qemu/recipe.ts`) and by CI.
 */
import { Image, Policy, BootReport, SecretSchema, SecretTarget } from "../../provider";

/**
 * `motd` lands in the root file system, a dm-verity protected erofs (rootfs "verity", the default)
 * whose root hash is on the UKI's kernel command line: changing it changes PCR 4/9/11 and RTMR1/2.
 * `cmdline` words land in the UKI directly.
 */
export function recipe(projectDir = __dirname, opts: { motd?: string; cmdline?: string[] } = {}): Image {
  const img = new Image({ base: "debian/trixie", hostname: "tdxvm-demo", projectDir })
    .file("/etc/motd", { content: opts.motd ?? "tdxvm demo image\n" })
    .outputTargets("qemu", "azure", "gcp")
    .setPolicy(new Policy({ mutableRefPolicy: "error" }))
    // A run-time secret (never baked): delivered by the deployment, e.g. `pulumi config set --secret apiToken …`.
    .secret("API_TOKEN", { required: false, schema: SecretSchema.string({ minLength: 16 }), targets: [SecretTarget.file("/run/tdxvm/api-token", { mode: 0o400 })] })
    .use(new BootReport());
  if (opts.cmdline?.length) img.cmdline(...opts.cmdline);
  return img;
}

export default recipe;
