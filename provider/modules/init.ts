/**
 * Init module: declares the image's secrets and receives them at run time — after a verifier has
 * attested the VM — through the agent's HTTPS endpoint (`POST /v1/secrets`, delivery "http_post").
 * It bakes only the *contract* (names, schemas, targets, delivery settings — never a value) at
 * /etc/tdxvm/secrets-contract.json, the handoff: `tdxvm-secrets-ready.target`, which the agent
 * starts once every required secret is in place and which pulls in the `handoff` unit (conditioned
 * on the delivery, with EnvironmentFile= drop-ins for env targets), and the agent itself.
 * The receiving half of the contract is ../secrets (the same code validates on the host).
 */
import { TdxError } from "../errors";
import type { Image, TdxModule } from "../recipe/image";
import { DeliveryOptions, SecretOptions, SecretsDelivery, declareSecret, SECRETS_ENV_FILE, unitEnvFile } from "../secrets";
import { SecretDeclData, Recipe as RecipeData, FileEntryData } from "../recipe/schema";
import { ownerPublicKey } from "../secrets/owner";
import { ensureAgent, AgentOptions, AGENT_UNIT } from "./agent";

export const CONTRACT_PATH = "/etc/tdxvm/secrets-contract.json";
export const READY_TARGET = "tdxvm-secrets-ready.target";
export const READY_FILE = "/run/tdxvm/secrets-ready";
/** File targets on a verity root must be on a tmpfs: the root is read-only (and secrets never belong on a disk). */
export const TMPFS_PREFIXES = ["/run/", "/var/", "/tmp/", "/dev/shm/"];

export interface InitOptions extends AgentOptions {
  /** Secrets this module declares on the image, by name. */
  secrets?: Record<string, SecretOptions>;
  /** systemd unit started once every required secret is in place (e.g. "app.service"). */
  handoff?: string;
  /**
   * The image's owner: an Ed25519 public key (PEM, or ed25519:<base64>). Only deliveries this key
   * signed are accepted (provider/secrets/owner.ts); it is baked into the contract, so it is
   * measured. Without one the image accepts no secrets — TdxImage fills in its `owner` (or a key
   * it generates) when the recipe names none.
   */
  owner?: string;
}

export class Init implements TdxModule {
  readonly name = "init";
  readonly version = "2";
  readonly decls: SecretDeclData[];
  readonly handoff: string | undefined;
  readonly owner: string | null;
  private delivery: SecretsDelivery | undefined;

  constructor(private readonly opts: InitOptions = {}) {
    this.decls = Object.entries(opts.secrets ?? {}).map(([n, o]) => declareSecret(n, o));
    if (opts.handoff !== undefined && !/^[A-Za-z0-9:_.@-]+\.(service|target)$/.test(opts.handoff)) {
      throw new TdxError("E_VALIDATION", `Init handoff ${JSON.stringify(opts.handoff)} is not a .service or .target unit`, { hint: 'Use e.g. {handoff: "app.service"}.' });
    }
    this.handoff = opts.handoff;
    this.owner = opts.owner === undefined ? null : ownerPublicKey(opts.owner);
  }

  /** Choose how secrets reach the VM. Only "http_post" (a POST of {name: value} JSON) exists today. */
  secretsDelivery(method: "http_post", opts: DeliveryOptions = {}): SecretsDelivery {
    if (method !== "http_post") throw new TdxError("E_VALIDATION", `unknown secrets delivery ${JSON.stringify(method)}`, { hint: 'Use "http_post".' });
    this.delivery = new SecretsDelivery(this.decls, opts);
    return this.delivery;
  }

  setup(img: Image): void {
    for (const d of this.decls) img.secret(d.name, { required: d.required, schema: d.schema, targets: d.targets });
  }

  install(img: Image): void {
    const recipe = img.recipe;
    if (recipe.rootfs === "verity") {
      for (const s of recipe.secrets) for (const t of s.targets) {
        if (t.kind === "file" && !TMPFS_PREFIXES.some((p) => t.path.startsWith(p))) {
          throw new TdxError("E_VALIDATION", `secret ${s.name} targets ${t.path}, on the read-only verity root`, { hint: `Put secret files on a tmpfs: below ${TMPFS_PREFIXES.join(", ")} (e.g. /run/secrets/…).` });
        }
      }
    }
    const contract = {
      contractVersion: 1,
      delivery: { method: "http_post", completion: this.delivery?.completion ?? "required", rejectUnknown: this.delivery?.rejectUnknown ?? true },
      handoff: this.handoff ?? null,
      secrets: recipe.secrets,
      owner: this.owner,
    };
    img.file(CONTRACT_PATH, { content: JSON.stringify(contract, null, 2) + "\n", mode: 0o644 });
    ensureAgent(img, this.opts, (c) => (c.secretsContract = CONTRACT_PATH));

    const wants = this.handoff ? `Wants=${this.handoff}\n` : "";
    img.file(`/etc/systemd/system/${READY_TARGET}`, {
      content: `[Unit]\nDescription=tdxvm: every required secret is in place\nConditionPathExists=${READY_FILE}\nAfter=${AGENT_UNIT}\n${wants}`,
    });
    // EnvironmentFile= drop-ins: the handoff unit reads the global env file, each unit its own.
    const units = new Set(recipe.secrets.flatMap((s) => s.targets.flatMap((t) => (t.kind === "env" && t.scope === "unit" && t.unit ? [t.unit] : []))));
    if (this.handoff?.endsWith(".service")) units.add(this.handoff);
    for (const unit of [...units].sort()) {
      const handoff = unit === this.handoff;
      const lines = [
        "# tdxvm Init: run-time secrets (tmpfs, written by the agent after attestation; never baked)",
        ...(handoff ? ["[Unit]", `ConditionPathExists=${READY_FILE}`, `After=${READY_TARGET}`, ""] : []),
        "[Service]",
        ...(handoff ? [`EnvironmentFile=-${SECRETS_ENV_FILE}`] : []),
        `EnvironmentFile=-${unitEnvFile(unit)}`,
      ];
      img.file(`/etc/systemd/system/${unit}.d/10-tdxvm-secrets.conf`, { content: lines.join("\n") + "\n" });
    }
    if (this.handoff && !this.handoff.endsWith(".service")) {
      img.file(`/etc/systemd/system/${this.handoff}.d/10-tdxvm-secrets.conf`, { content: `[Unit]\nConditionPathExists=${READY_FILE}\nAfter=${READY_TARGET}\n` });
    }
  }
}

/** The owner the recipe's secrets contract names (null: none, undefined: the recipe has no contract). */
export function contractOwner(recipe: RecipeData): string | null | undefined {
  const f = [recipe.base_layer, ...Object.values(recipe.profiles)].flatMap((l) => l.files).find((x) => x.path === CONTRACT_PATH);
  if (!f || f.source.kind !== "inline" || f.source.encoding !== "utf8") return undefined;
  return (JSON.parse(f.source.data) as { owner?: string | null }).owner ?? null;
}

/**
 * The recipe with `owner` written into its secrets contract (every layer that bakes one): how
 * TdxImage names the owner of a recipe that names none. A changed owner is a changed image.
 */
export function withOwner(recipe: RecipeData, owner: string): RecipeData {
  const key = ownerPublicKey(owner);
  const layer = (l: RecipeData["base_layer"]) => ({
    ...l,
    files: l.files.map((f: FileEntryData) => {
      if (f.path !== CONTRACT_PATH || f.source.kind !== "inline" || f.source.encoding !== "utf8") return f;
      const contract = JSON.parse(f.source.data) as Record<string, unknown>;
      return { ...f, source: { ...f.source, data: JSON.stringify({ ...contract, owner: key }, null, 2) + "\n" } };
    }),
  });
  return { ...recipe, base_layer: layer(recipe.base_layer), profiles: Object.fromEntries(Object.entries(recipe.profiles).map(([n, l]) => [n, layer(l)])) };
}
