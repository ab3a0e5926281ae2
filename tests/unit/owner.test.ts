/**
 * The image owner (provider/secrets/owner.ts): key forms, the sealed envelope's bindings, bounded
 * single-use challenges, the owner baked into the secrets contract, and a provider that notices a
 * VM which lost its secrets (another TLS key, or "pending" again) through the agent's real server.
 */
import * as https from "node:https";
import * as net from "node:net";
import { generateKeyPairSync } from "node:crypto";
import { Challenges, DeliveryRefused, newOwnerKey, openDelivery, ownerPublicKey, ownerSigningKey, sealDelivery } from "../../provider/secrets/owner";
import { Image } from "../../provider/recipe/image";
import { Init, contractOwner, withOwner, CONTRACT_PATH } from "../../provider/modules/init";
import { SecretTarget } from "../../provider/secrets";
import { newTlsIdentity } from "../../agent/tls";
import { agentServer } from "../../agent/server";
import { SecretsReceiver } from "../../agent/secrets";
import { attestationProvider } from "../../provider/dynamic/attestation";
import { tempDir } from "../helpers";

const syncCode = (f: () => unknown) => {
  try {
    f();
  } catch (e) {
    return (e as { code?: string }).code ?? (e as Error).message;
  }
  return "no error";
};

describe("owner keys", () => {
  it("reads PEM, DER and the canonical form to one canonical key; refuses other key types", () => {
    const { publicKey, privateKey } = generateKeyPairSync("ed25519");
    const canonical = ownerPublicKey(publicKey);
    expect(canonical).toMatch(/^ed25519:[A-Za-z0-9+/]{43}=$/);
    expect(ownerPublicKey(publicKey.export({ type: "spki", format: "pem" }) as string)).toBe(canonical);
    expect(ownerPublicKey((publicKey.export({ type: "spki", format: "der" }) as Buffer).toString("base64"))).toBe(canonical);
    expect(ownerPublicKey(canonical)).toBe(canonical);
    expect(ownerPublicKey(ownerSigningKey(privateKey.export({ type: "pkcs8", format: "pem" }) as string))).toBe(canonical);
    const ec = generateKeyPairSync("ec", { namedCurve: "P-256" });
    expect(syncCode(() => ownerPublicKey(ec.publicKey.export({ type: "spki", format: "pem" }) as string))).toBe("E_VALIDATION");
    expect(syncCode(() => ownerPublicKey("not a key"))).toBe("E_VALIDATION");
    expect(syncCode(() => ownerSigningKey(ec.privateKey.export({ type: "pkcs8", format: "pem" }) as string))).toBe("E_VALIDATION");
  });

  it("an envelope opens only for its agent, its owner and its challenge, once", () => {
    const o = newOwnerKey();
    const key = ownerSigningKey(o.privateKeyPem);
    const agent = newTlsIdentity();
    const challenges = new Challenges();
    const c = challenges.issue();
    const env = sealDelivery({ A: "value" }, { certificatePem: agent.certPem, challenge: c }, key) as unknown as Record<string, unknown>;
    // The value is not readable on the wire.
    expect(JSON.stringify(env)).not.toContain("value");
    const me = { owner: o.publicKey, tlsKey: agent.privateKey, spkiSha256: agent.spkiSha256, takeChallenge: (x: string) => challenges.take(x) };
    const refused = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return e instanceof DeliveryRefused ? e.status : -1;
      }
      return 0;
    };
    expect(refused(() => openDelivery(env, { ...me, owner: newOwnerKey().publicKey }))).toBe(401); // another owner
    expect(refused(() => openDelivery(env, { ...me, owner: null }))).toBe(401); // an image without an owner
    const other = newTlsIdentity();
    expect(refused(() => openDelivery(env, { ...me, tlsKey: other.privateKey, spkiSha256: other.spkiSha256 }))).toBe(401); // another agent
    expect(openDelivery(env, me)).toEqual({ A: "value" });
    expect(refused(() => openDelivery(env, me))).toBe(401); // replay: the challenge is spent
  });

  it("challenges are bounded, single use and expire", () => {
    let now = 0;
    const ch = new Challenges(4, 1000, () => now);
    const issued = Array.from({ length: 6 }, () => ch.issue());
    expect(ch.size).toBe(4);
    expect(ch.take(issued[0])).toBe(false); // evicted, oldest first
    expect(ch.take(issued[5])).toBe(true);
    expect(ch.take(issued[5])).toBe(false);
    now = 1001;
    expect(ch.take(issued[4])).toBe(false); // expired
  });

  it("Init bakes its owner into the contract; withOwner sets it on a recipe that names none", () => {
    const o = newOwnerKey();
    const secrets = { T: { targets: [SecretTarget.env("T")] } };
    const named = new Image({ base: "debian/trixie" }).use(new Init({ secrets, owner: o.publicKey })).recipe;
    expect(contractOwner(named)).toBe(o.publicKey);
    const none = new Image({ base: "debian/trixie" }).use(new Init({ secrets })).recipe;
    expect(contractOwner(none)).toBeNull();
    const given = withOwner(none, o.publicKey);
    expect(contractOwner(given)).toBe(o.publicKey);
    expect(contractOwner(none)).toBeNull(); // not mutated
    const file = given.base_layer.files.find((f) => f.path === CONTRACT_PATH)!;
    expect(JSON.parse((file.source as { data: string }).data).secrets.map((s: { name: string }) => s.name)).toEqual(["T"]);
    expect(contractOwner(new Image({ base: "debian/trixie" }).recipe)).toBeUndefined();
    expect(syncCode(() => new Init({ secrets, owner: "ssh-rsa AAAA" }))).toBe("E_VALIDATION");
  });
});

describe("a VM that lost its secrets is noticed by the attestation provider's diff", () => {
  it("same key and complete: no change; a new key (agent restarted, VM rebooted) or pending again: replace to attest and deliver anew", async () => {
    const root = await tempDir("tdxvm-owner-root-");
    const tls = newTlsIdentity();
    const receiver = new SecretsReceiver({ contractVersion: 1, delivery: { method: "http_post", completion: "required", rejectUnknown: true }, handoff: null, secrets: [] }, { root });
    const issuer = { name: "tpm" as const, keys: async () => ({ issuer: "tpm" as const }), evidence: async () => { throw new Error("unused"); }, document: async (b: Buffer) => b };
    const server: https.Server = agentServer({ issuer, tls, secrets: receiver, log: () => undefined });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const endpoint = `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    try {
      const olds = { target: "vm-1", endpoint, expected: {}, secretsDigest: "d", spkiSha256: tls.spkiSha256.toString("hex") };
      const news = { target: "vm-1", endpoint, expected: {}, secrets: { A: "x" } };
      const { secretsDigest } = await import("../../provider/dynamic/attestation");
      olds.secretsDigest = secretsDigest(news.secrets)!;
      // Pending (a rebooted VM's fresh tmpfs) → replace.
      expect((await attestationProvider.diff("id", olds, news)).replaces).toEqual(["secrets"]);
      // Complete with the attested key → nothing to do.
      await require("node:fs").promises.mkdir(`${root}/run/tdxvm`, { recursive: true });
      await require("node:fs").promises.writeFile(`${root}/run/tdxvm/secrets-ready`, "A\n");
      expect(await attestationProvider.diff("id", olds, news)).toMatchObject({ changes: false, replaces: [] });
      // Complete, but another TLS key than the attested one → replace.
      expect((await attestationProvider.diff("id", { ...olds, spkiSha256: "00".repeat(32) }, news)).replaces).toEqual(["secrets"]);
      // Unreachable: no claim either way.
      expect((await attestationProvider.diff("id", { ...olds, endpoint: "127.0.0.1:1" }, { ...news, endpoint: "127.0.0.1:1" })).replaces).toEqual([]);
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});
