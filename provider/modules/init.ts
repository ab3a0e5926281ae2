/**
 * Init module: declares the image's secrets and how they are delivered at run time.
 * It bakes only the *contract* (names, schemas, targets, delivery settings) into the image at
 * /etc/tdxvm/secrets-contract.json — never a value. The validation and materialisation halves
 * of the contract live in ../secrets and are what the in-guest receiver runs.
 */
import { TdxError } from "../errors";
import type { Image, TdxModule } from "../recipe/image";
import { DeliveryOptions, SecretOptions, SecretsDelivery, declareSecret } from "../secrets";
import { SecretDeclData } from "../recipe/schema";

export interface InitOptions {
  /** Secrets this module declares on the image, by name. */
  secrets?: Record<string, SecretOptions>;
  /** systemd unit started once every required secret is in place (e.g. "app.service"). */
  handoff?: string;
}

export class Init implements TdxModule {
  readonly name = "init";
  readonly version = "1";
  readonly decls: SecretDeclData[];
  readonly handoff: string | undefined;
  private delivery: SecretsDelivery | undefined;

  constructor(opts: InitOptions = {}) {
    this.decls = Object.entries(opts.secrets ?? {}).map(([n, o]) => declareSecret(n, o));
    if (opts.handoff !== undefined && !/^[A-Za-z0-9:_.@-]+\.(service|target)$/.test(opts.handoff)) {
      throw new TdxError("E_VALIDATION", `Init handoff ${JSON.stringify(opts.handoff)} is not a .service or .target unit`, { hint: 'Use e.g. {handoff: "app.service"}.' });
    }
    this.handoff = opts.handoff;
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
    const contract = {
      contractVersion: 1,
      delivery: { method: "http_post", completion: this.delivery?.completion ?? "required", rejectUnknown: this.delivery?.rejectUnknown ?? true },
      handoff: this.handoff ?? null,
      secrets: img.recipe.secrets,
    };
    img.file("/etc/tdxvm/secrets-contract.json", { content: JSON.stringify(contract, null, 2) + "\n", mode: 0o644 });
  }
}
