/**
 * Owner-signed, end-to-end encrypted secrets delivery (docs/design.md §7).
 *
 * An image names its owner: an Ed25519 public key baked into the secrets contract (so it is
 * measured with the image — a different owner is a different image). The agent accepts a delivery
 * only as a sealed envelope that
 *   - is encrypted to the agent's attested TLS key: ECDH on P-256 between a fresh sender key and
 *     the agent's key, HKDF-SHA256 (RFC 5869) to an AES-256-GCM key — a TLS terminator in front of
 *     the VM, or anything else that sees the bytes, learns nothing;
 *   - is signed by the owner over a message that names its purpose, the agent's TLS key (SPKI
 *     SHA-256), a challenge the agent issued moments before (single use) and the ciphertext, so it
 *     cannot be replayed to another VM, to a restarted agent, or later.
 *
 * Signed message (fixed-length fields, so unambiguous):
 *   "tdxvm-secrets-v1" ‖ 0x00 ‖ spkiSha256 (32) ‖ challenge (32) ‖ sender point (65) ‖ iv (12) ‖ SHA-256(ciphertext ‖ tag) (32)
 * The owner key signs nothing else in tdxvm, and the label keeps it apart from any other use.
 * AES-GCM's additional data is the same label, spkiSha256 and challenge.
 */
import { createCipheriv, createDecipheriv, createECDH, createHash, createPrivateKey, createPublicKey, generateKeyPairSync, hkdfSync, KeyObject, randomBytes, sign, verify, X509Certificate } from "node:crypto";
import { TdxError } from "../errors";

export const DELIVERY_LABEL = "tdxvm-secrets-v1";
export const CHALLENGE_BYTES = 32;
const POINT_BYTES = 65; // uncompressed P-256 point (SEC 1 §2.3.3)
const IV_BYTES = 12;
const TAG_BYTES = 16;

/** What a delivery carries on the wire (POST /v1/secrets). */
export interface SealedDelivery {
  sealed: 1;
  challenge: string; // hex, from GET /v1/challenge
  sender: string; // base64 uncompressed P-256 point
  iv: string; // base64
  ciphertext: string; // base64, GCM tag appended
  signature: string; // base64 Ed25519 signature by the image's owner
}

const ownerError = (message: string, hint: string) => new TdxError("E_VALIDATION", message, { hint });
const KEY_HINT = "Give the owner as an Ed25519 public key: a PEM (`tdxvm owner-key new owner` writes owner.pub) or ed25519:<base64 of the 32 raw bytes>.";

/** The canonical form of an owner public key ("ed25519:<base64 raw 32 bytes>") from PEM, DER SPKI or that form. */
export function ownerPublicKey(input: string | KeyObject): string {
  let key: KeyObject;
  try {
    if (input instanceof KeyObject) key = input.type === "private" ? createPublicKey(input) : input;
    else {
      const s = input.trim();
      const m = /^ed25519:([A-Za-z0-9+/]{43}=)$/.exec(s);
      if (m) return `ed25519:${m[1]}`;
      key = createPublicKey(s.startsWith("-----BEGIN") ? s : { key: Buffer.from(s, "base64"), format: "der", type: "spki" });
    }
  } catch {
    throw ownerError("the owner key is not a public key tdxvm can read", KEY_HINT);
  }
  if (key.asymmetricKeyType !== "ed25519") throw ownerError(`the owner key is ${key.asymmetricKeyType ?? "not an asymmetric key"}, not Ed25519`, KEY_HINT);
  return `ed25519:${Buffer.from(key.export({ format: "jwk" }).x!, "base64url").toString("base64")}`;
}

function ownerVerifyKey(canonical: string): KeyObject {
  return createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(canonical.slice("ed25519:".length), "base64").toString("base64url") }, format: "jwk" });
}

/** The owner's signing key from a PKCS#8 PEM (what `tdxvm owner-key new` and TdxImage's generated key hold). */
export function ownerSigningKey(pem: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch {
    throw new TdxError("E_VALIDATION", "the owner's private key is not a PEM private key", { hint: "Pass the PKCS#8 PEM written by `tdxvm owner-key new` (or TdxImage's ownerKey output)." });
  }
  if (key.asymmetricKeyType !== "ed25519") throw new TdxError("E_VALIDATION", `the owner's private key is ${key.asymmetricKeyType}, not Ed25519`, { hint: "Create one with `tdxvm owner-key new owner`." });
  return key;
}

/** A new owner key pair: PKCS#8 PEM private key and its canonical public key. */
export function newOwnerKey(): { privateKeyPem: string; publicKey: string } {
  const { privateKey } = generateKeyPairSync("ed25519");
  return { privateKeyPem: privateKey.export({ type: "pkcs8", format: "pem" }) as string, publicKey: ownerPublicKey(privateKey) };
}

function signedMessage(spkiSha256: Buffer, challenge: Buffer, sender: Buffer, iv: Buffer, ciphertext: Buffer): Buffer {
  return Buffer.concat([Buffer.from(DELIVERY_LABEL, "utf8"), Buffer.from([0]), spkiSha256, challenge, sender, iv, createHash("sha256").update(ciphertext).digest()]);
}

function aeadKey(shared: Buffer, spkiSha256: Buffer, challenge: Buffer, sender: Buffer): Buffer {
  const info = Buffer.concat([Buffer.from(`${DELIVERY_LABEL}\0aes-256-gcm`, "utf8"), spkiSha256, sender]);
  return Buffer.from(hkdfSync("sha256", shared, challenge, info, 32));
}

const aad = (spkiSha256: Buffer, challenge: Buffer) => Buffer.concat([Buffer.from(DELIVERY_LABEL, "utf8"), Buffer.from([0]), spkiSha256, challenge]);

/** The uncompressed P-256 point of a certificate's (or key's) EC public key. */
function p256Point(key: KeyObject): Buffer {
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") throw new TdxError("E_ATTESTATION", "the agent's TLS key is not a P-256 key; secrets cannot be sealed to it");
  const j = key.export({ format: "jwk" });
  return Buffer.concat([Buffer.from([4]), Buffer.from(j.x!, "base64url"), Buffer.from(j.y!, "base64url")]);
}

/**
 * Seal `payload` ({name: value}) for the agent whose attested certificate is `agentCertificatePem`,
 * answering its `challenge`, signed by the owner. Runs on the owner's side (the Pulumi provider, the CLI).
 */
export function sealDelivery(payload: Record<string, unknown>, to: { certificatePem: string; challenge: string }, ownerKey: KeyObject): SealedDelivery {
  const cert = new X509Certificate(to.certificatePem);
  const spkiSha256 = createHash("sha256").update(cert.publicKey.export({ type: "spki", format: "der" })).digest();
  if (!/^[0-9a-f]{64}$/.test(to.challenge)) throw new TdxError("E_ATTESTATION", "the agent's challenge is not 32 bytes of hex");
  const challenge = Buffer.from(to.challenge, "hex");
  const ecdh = createECDH("prime256v1");
  const sender = ecdh.generateKeys();
  const key = aeadKey(ecdh.computeSecret(p256Point(cert.publicKey)), spkiSha256, challenge, sender);
  const iv = randomBytes(IV_BYTES);
  const c = createCipheriv("aes-256-gcm", key, iv);
  c.setAAD(aad(spkiSha256, challenge));
  const ciphertext = Buffer.concat([c.update(Buffer.from(JSON.stringify(payload), "utf8")), c.final(), c.getAuthTag()]);
  const signature = sign(null, signedMessage(spkiSha256, challenge, sender, iv, ciphertext), ownerKey);
  return { sealed: 1, challenge: to.challenge, sender: sender.toString("base64"), iv: iv.toString("base64"), ciphertext: ciphertext.toString("base64"), signature: signature.toString("base64") };
}

/** Why a delivery was refused: 401 (not the owner's, or not for this agent now) or 400 (malformed). */
export class DeliveryRefused extends Error {
  constructor(readonly status: 400 | 401, message: string) {
    super(message);
  }
}

const B64 = /^[A-Za-z0-9+/]*={0,2}$/;
function field(body: Record<string, unknown>, name: keyof SealedDelivery, bytes?: number, max = 12 * 1024 * 1024): Buffer {
  const v = body[name];
  if (typeof v !== "string" || v.length > max || !B64.test(v)) throw new DeliveryRefused(400, `sealed delivery: ${name} must be base64`);
  const b = Buffer.from(v, "base64");
  if (bytes !== undefined && b.length !== bytes) throw new DeliveryRefused(400, `sealed delivery: ${name} must be ${bytes} bytes`);
  return b;
}

/**
 * The agent's side: check that `body` is a sealed delivery signed by `owner` for this agent's TLS
 * key and the challenge `takeChallenge` accepts (single use), then decrypt it. Throws
 * DeliveryRefused; never echoes a value.
 */
export function openDelivery(body: Record<string, unknown>, me: { owner: string | null; tlsKey: KeyObject; spkiSha256: Buffer; takeChallenge: (hex: string) => boolean }): unknown {
  if (!me.owner) throw new DeliveryRefused(401, "this image names no owner, so it accepts no secrets; bake it with an owner key (Init({owner}) or TdxImage's owner)");
  if (body.sealed !== 1) throw new DeliveryRefused(401, "a delivery must be sealed and signed by the image's owner (GET /v1/challenge, then POST the sealed envelope); nothing was stored");
  if (typeof body.challenge !== "string" || !/^[0-9a-f]{64}$/.test(body.challenge)) throw new DeliveryRefused(400, "sealed delivery: challenge must be 32 bytes of lowercase hex");
  const challenge = Buffer.from(body.challenge, "hex");
  const sender = field(body, "sender", POINT_BYTES);
  const iv = field(body, "iv", IV_BYTES);
  const signature = field(body, "signature", 64);
  const ciphertext = field(body, "ciphertext");
  if (ciphertext.length < TAG_BYTES) throw new DeliveryRefused(400, "sealed delivery: ciphertext too short");
  let signed: boolean;
  try {
    signed = verify(null, signedMessage(me.spkiSha256, challenge, sender, iv, ciphertext), ownerVerifyKey(me.owner), signature);
  } catch {
    signed = false;
  }
  if (!signed) throw new DeliveryRefused(401, "the delivery is not signed by this image's owner for this agent's key; nothing was stored");
  // Only a correctly signed delivery spends a challenge (no one else can burn the owner's).
  if (!me.takeChallenge(body.challenge)) throw new DeliveryRefused(401, "the challenge is unknown, expired or already used; ask GET /v1/challenge again");
  let shared: Buffer;
  try {
    const ecdh = createECDH("prime256v1");
    ecdh.setPrivateKey(Buffer.from(me.tlsKey.export({ format: "jwk" }).d!, "base64url"));
    shared = ecdh.computeSecret(sender); // refuses a point that is not on the curve
  } catch {
    throw new DeliveryRefused(400, "sealed delivery: the sender key is not a P-256 point");
  }
  let plain: Buffer;
  try {
    const d = createDecipheriv("aes-256-gcm", aeadKey(shared, me.spkiSha256, challenge, sender), iv);
    d.setAAD(aad(me.spkiSha256, challenge));
    d.setAuthTag(ciphertext.subarray(ciphertext.length - TAG_BYTES));
    plain = Buffer.concat([d.update(ciphertext.subarray(0, ciphertext.length - TAG_BYTES)), d.final()]);
  } catch {
    throw new DeliveryRefused(400, "sealed delivery: it does not decrypt with this agent's key");
  }
  try {
    return JSON.parse(plain.toString("utf8"));
  } catch {
    throw new DeliveryRefused(400, "sealed delivery: the decrypted payload is not JSON");
  } finally {
    plain.fill(0);
  }
}

/** Outstanding challenges: single use, short-lived, at most `max` (the oldest goes first). */
export class Challenges {
  private readonly open = new Map<string, number>();
  constructor(private readonly max = 16, private readonly ttlMs = 5 * 60_000, private readonly now = () => Date.now()) {}
  issue(): string {
    const c = randomBytes(CHALLENGE_BYTES).toString("hex");
    for (const [k, exp] of this.open) if (exp <= this.now()) this.open.delete(k);
    while (this.open.size >= this.max) this.open.delete(this.open.keys().next().value!);
    this.open.set(c, this.now() + this.ttlMs);
    return c;
  }
  take(c: string): boolean {
    const exp = this.open.get(c);
    this.open.delete(c);
    return exp !== undefined && exp > this.now();
  }
  get size(): number {
    return this.open.size;
  }
}
