/**
 * Dynamic provider: the owner key of an image whose recipe names none (TdxImage creates it). An
 * Ed25519 key pair drawn once when the resource is created and kept in the stack's state — the
 * private half only as a Pulumi secret (VmAttestation signs deliveries with it), the public half
 * baked into the image's secrets contract, so it is part of the measurement. It never changes by
 * itself: a new key means a new image; replace the resource (`pulumi up --replace`) to rotate.
 */
import { z } from "zod";
import { newOwnerKey, ownerPublicKey, ownerSigningKey } from "../secrets/owner";
import { declared, CheckFailure, checkStart, guarded, guardedSync, parseState } from "./common";

export const OWNER_KEY_STATE_VERSION = 1;

const OUT = ["stateVersion", "publicKey", "privateKey"];

const OwnerKeyState = z.object({
  publicKey: z.string().regex(/^ed25519:[A-Za-z0-9+/]{43}=$/).optional(),
  privateKey: z.string().optional(),
}).loose();

const state = (o: Record<string, unknown>) => guardedSync(() => {
  const s = parseState(OwnerKeyState, declared(o), "owner key");
  // The public key in state must be the private key's: state is hostile until checked.
  if (s.privateKey !== undefined && s.publicKey !== undefined && ownerPublicKey(ownerSigningKey(s.privateKey)) !== s.publicKey) {
    throw new Error("the owner key's state holds a public key that is not its private key's");
  }
  return s;
});

export const ownerKeyProvider = {
  async check(_olds: Record<string, unknown>, news: Record<string, unknown>): Promise<{ inputs: Record<string, unknown>; failures?: CheckFailure[] }> {
    const start = checkStart(z.object({}).loose(), news, OUT);
    if (start.done) return start.done;
    return { inputs: start.inputs };
  },
  async diff(_id: string, olds: Record<string, unknown>) {
    state(olds);
    return { changes: false, replaces: [], deleteBeforeReplace: false };
  },
  async create(): Promise<{ id: string; outs: Record<string, unknown> }> {
    return guarded(async () => {
      const k = newOwnerKey();
      return { id: `owner-${k.publicKey.slice(8, 24).replace(/[+/]/g, "_")}`, outs: { stateVersion: OWNER_KEY_STATE_VERSION, publicKey: k.publicKey, privateKey: k.privateKeyPem } };
    });
  },
  async update(_id: string, olds: Record<string, unknown>): Promise<{ outs: Record<string, unknown> }> {
    return { outs: state(olds) };
  },
  async read(id: string, props: Record<string, unknown>): Promise<{ id: string; props: Record<string, unknown> }> {
    return { id, props: state(props) };
  },
  async delete(_id: string, props: Record<string, unknown>): Promise<void> {
    state(props);
  },
};
