/**
 * TdxImage: a recipe locked and baked by mkosi into a UKI, a GPT disk and per-target artifacts.
 *
 * By default the bake happens when Pulumi checks the resource — in `pulumi preview` too (a
 * cache hit after the first time), like pulumi-docker-build's build-on-preview — so previews
 * know the artifact digests and every TdxMeasurement downstream can show register changes.
 * `bakeOnPreview: false` defers the bake to `pulumi up`; previews then say the values will be
 * recomputed.
 */
import * as pulumi from "@pulumi/pulumi";
import { Image } from "../provider/recipe/image";
import type { SecretDeclData, Target } from "../provider/recipe/schema";
import { providerShim } from "../provider/dynamic/shim";
import { contractOwner, withOwner } from "../provider/modules/init";
import { ownerPublicKey, ownerSigningKey } from "../provider/secrets/owner";
import type { ArtifactOut } from "../provider/dynamic/image";

export type { ArtifactOut };

export interface TdxImageArgs {
  /** The recipe (`new Image({...})...`). Its data and project directory become the resource's inputs. */
  recipe: Image;
  /** Profile to bake (default "default"). */
  profile?: pulumi.Input<string>;
  /** Override the recipe's outputTargets. */
  targets?: pulumi.Input<pulumi.Input<Target>[]>;
  /** Bake against the committed tdx.lock beside the recipe only (CI): a stale lock, or pinned packages no source offers, fail the preview. */
  frozen?: pulumi.Input<boolean>;
  /** Bake during preview so that digests and registers are known there (default true). */
  bakeOnPreview?: pulumi.Input<boolean>;
  /** tdxvm cache (tools tree, packages, artifacts); default $TDXVM_CACHE_DIR or ~/.cache/tdxvm. */
  cacheDir?: pulumi.Input<string>;
  /** Give up on a bake after this long (default 120). */
  timeoutMinutes?: pulumi.Input<number>;
  /**
   * The image's owner — the only key whose secrets deliveries its VMs accept — when the recipe
   * names none (Init({owner})): an Ed25519 public key (PEM or ed25519:<base64>). It is baked into
   * the image, so changing it changes the measurement (a preview says so).
   */
  owner?: pulumi.Input<string>;
  /**
   * The owner's private key (PKCS#8 PEM; pass a config secret). Without `owner` its public half
   * is the owner. Without either, TdxImage generates an owner key once per stack and keeps it in
   * state as a Pulumi secret (output `ownerKey`), for TdxDeployment to sign deliveries with.
   */
  ownerKey?: pulumi.Input<string>;
}

/** A generated image owner key (pulumi-nodejs:dynamic/tdxvm:OwnerKey); the private half is secret in state. */
export class OwnerKey extends pulumi.dynamic.Resource {
  declare readonly publicKey: pulumi.Output<string>;
  declare readonly privateKey: pulumi.Output<string>;
  constructor(name: string, opts?: pulumi.CustomResourceOptions) {
    super(providerShim("ownerKey"), name, { stateVersion: undefined, publicKey: undefined, privateKey: undefined }, { ...opts, additionalSecretOutputs: ["privateKey"] }, "tdxvm", "OwnerKey");
  }
}

const COMPUTED = { stateVersion: undefined, recipeDigest: undefined, bakeKey: undefined, lockDigest: undefined, artifacts: undefined, reportPath: undefined, systemdStub: undefined, rootfs: undefined, rootHash: undefined, packages: undefined };

/** The dynamic resource that bakes (type pulumi-nodejs:dynamic/tdxvm:ImageBake). */
export class ImageBake extends pulumi.dynamic.Resource {
  declare readonly recipeDigest: pulumi.Output<string>;
  declare readonly bakeKey: pulumi.Output<string>;
  declare readonly lockDigest: pulumi.Output<string>;
  declare readonly artifacts: pulumi.Output<Record<string, ArtifactOut>>;
  declare readonly reportPath: pulumi.Output<string>;
  declare readonly systemdStub: pulumi.Output<string | null>;
  declare readonly rootfs: pulumi.Output<"verity" | "initrd" | "none">;
  declare readonly rootHash: pulumi.Output<string | null>;
  declare readonly profile: pulumi.Output<string>;
  /** The Debian packages (name=version) the image and its initrd were baked from; undefined before tdxvm recorded them. */
  declare readonly packages: pulumi.Output<{ image: string[]; initrd: string[] } | undefined>;

  constructor(name: string, props: Record<string, pulumi.Input<unknown>>, opts?: pulumi.CustomResourceOptions) {
    super(providerShim("image"), name, { ...props, ...COMPUTED }, opts, "tdxvm", "ImageBake");
  }
}

export class TdxImage extends pulumi.ComponentResource {
  readonly recipeDigest: pulumi.Output<string>;
  readonly bakeKey: pulumi.Output<string>;
  readonly lockDigest: pulumi.Output<string>;
  /** Per target and kind ("uki.efi", "disk.raw", "qemu.raw", "qemu.qcow2", "azure.vhd", "gcp.tar.gz"): path, sha256, size. */
  readonly artifacts: pulumi.Output<Record<string, ArtifactOut>>;
  readonly reportPath: pulumi.Output<string>;
  readonly systemdStub: pulumi.Output<string | null>;
  /** How the root file system is measured ("verity", "initrd", "none") and the verity root hash (null otherwise). */
  readonly rootfs: pulumi.Output<"verity" | "initrd" | "none">;
  readonly rootHash: pulumi.Output<string | null>;
  readonly profile: pulumi.Output<string>;
  /** The recipe's declared run-time secrets (names, schemas, targets; never values). */
  readonly secretDecls: SecretDeclData[];
  /** The output targets this image is baked for. */
  readonly targets: pulumi.Output<Target[]>;
  readonly bake: ImageBake;
  /** The owner baked into the image ("ed25519:<base64>"); undefined when the recipe has no secrets contract. */
  readonly ownerPublicKey?: pulumi.Output<string>;
  /** The owner's private key (secret), when TdxImage generated it or was given it; TdxDeployment signs deliveries with it. */
  readonly ownerKey?: pulumi.Output<string>;
  /** The generated owner key resource, when the recipe and the arguments named no owner. */
  readonly generatedOwner?: OwnerKey;

  constructor(name: string, args: TdxImageArgs, opts?: pulumi.ComponentResourceOptions) {
    super("tdxvm:index:TdxImage", name, {}, opts);
    if (!(args.recipe instanceof Image)) throw new Error(`TdxImage ${name}: recipe must be an Image (new Image({...}))`);
    const recipe = args.recipe.recipe;
    this.secretDecls = recipe.secrets;
    // Who may provision the image's VMs: the recipe's owner, else the one given here, else a generated one.
    const named = contractOwner(recipe);
    let baked: pulumi.Input<typeof recipe> = recipe;
    if (named !== undefined) {
      if (named !== null) {
        if (args.owner !== undefined) throw new Error(`TdxImage ${name}: the recipe already names its owner (Init({owner})); do not pass owner as well`);
        this.ownerPublicKey = pulumi.output(named);
        this.ownerKey = args.ownerKey === undefined ? undefined : pulumi.secret(args.ownerKey);
      } else {
        let owner: pulumi.Output<string>;
        if (args.owner !== undefined) owner = pulumi.output(args.owner).apply((o) => ownerPublicKey(o));
        else if (args.ownerKey !== undefined) owner = pulumi.secret(args.ownerKey).apply((k) => ownerPublicKey(ownerSigningKey(k)));
        else {
          this.generatedOwner = new OwnerKey(`${name}-owner`, { parent: this });
          owner = this.generatedOwner.publicKey;
        }
        // The public key is not secret (it is in the image); unsecret it so the recipe stays readable in state.
        owner = pulumi.unsecret(owner);
        this.ownerPublicKey = owner;
        this.ownerKey = args.ownerKey !== undefined ? pulumi.secret(args.ownerKey) : this.generatedOwner?.privateKey;
        // (Under mocks a generated key has no value: the recipe then keeps owner null, which accepts no delivery.)
        baked = owner.apply((o) => (o ? withOwner(recipe, o) : recipe));
      }
    }
    const projectDir = args.recipe.projectDir; // absolute: the program and the provider host may run in different directories
    this.bake = new ImageBake(name, {
      recipe: baked, projectDir, profile: args.profile ?? "default", targets: args.targets, frozen: args.frozen ?? false,
      bakeOnPreview: args.bakeOnPreview ?? true, cacheDir: args.cacheDir, timeoutMinutes: args.timeoutMinutes ?? 120,
    }, { parent: this });
    this.recipeDigest = this.bake.recipeDigest;
    this.bakeKey = this.bake.bakeKey;
    this.lockDigest = this.bake.lockDigest;
    this.artifacts = this.bake.artifacts;
    this.reportPath = this.bake.reportPath;
    this.systemdStub = this.bake.systemdStub;
    this.rootfs = this.bake.rootfs;
    this.rootHash = this.bake.rootHash;
    this.profile = this.bake.profile;
    this.targets = pulumi.output(args.targets ?? recipe.outputTargets) as pulumi.Output<Target[]>;
    this.registerOutputs({
      recipeDigest: this.recipeDigest, bakeKey: this.bakeKey, lockDigest: this.lockDigest, artifacts: this.artifacts,
      reportPath: this.reportPath, systemdStub: this.systemdStub, rootfs: this.rootfs, rootHash: this.rootHash,
      ...(this.ownerPublicKey ? { ownerPublicKey: this.ownerPublicKey } : {}),
    });
  }

  /** The artifact of a target ("qemu", "azure", "gcp", "uki", "disk") and kind, e.g. artifact("azure", "vhd"). */
  artifact(target: string, kind: string): pulumi.Output<ArtifactOut> {
    return this.artifacts.apply((a) => {
      const x = a?.[`${target}.${kind}`];
      if (!x) throw new Error(`image has no ${target}.${kind} artifact (baked: ${Object.keys(a ?? {}).join(", ")}); add "${target}" to outputTargets`);
      return x;
    });
  }
}
