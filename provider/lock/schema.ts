/** tdx.lock: what a recipe resolved to, so a frozen bake can prove nothing moved. */
import { z } from "zod";

const Digest = z.string().regex(/^sha256:[0-9a-f]{64}$/, "digest must be sha256:<64 hex>");
const Url = z.string().regex(/^https?:\/\/[^\s]+[^/\s]$/, "must be an http(s) URL without a trailing /");
const DIGEST_BYTES = { sha256: 32, sha384: 48, sha512: 64 } as const;
const Sri = (alg: keyof typeof DIGEST_BYTES) => z.string()
  .regex(new RegExp(`^${alg}-[A-Za-z0-9+/]+={0,2}$`), `must be ${alg}-<base64>`)
  .refine((s) => Buffer.from(s.slice(alg.length + 1), "base64").length === DIGEST_BYTES[alg], `must hold a ${DIGEST_BYTES[alg]}-byte ${alg} digest`);

export const LOCK_VERSION = 1 as const;

/** A pinned Debian package, `name=version` (the name may carry an `:arch` qualifier). */
const Pin = z.string().regex(/^[a-z0-9][a-z0-9+.-]*(:[a-z0-9]+)?=[A-Za-z0-9.+~:-]+$/);

/** A pin without its :arch qualifier (`name=version`), as apt and the archive indices name it. */
export function pinKey(pin: string): string {
  const eq = pin.indexOf("=");
  return `${pin.slice(0, eq).replace(/:[a-z0-9]+$/, "")}${pin.slice(eq)}`;
}

export const LockBody = z
  .object({
    lockVersion: z.literal(LOCK_VERSION),
    generator: z.string().max(100),
    recipe: z.object({ profiles: z.record(z.string().regex(/^[a-z][a-z0-9-]{0,31}$/), Digest) }).strict(),
    debian: z
      .object({
        release: z.literal("trixie"),
        mirror: Url,
        securityMirror: Url,
        snapshotMirror: Url,
        /** snapshot.debian.org timestamp; null = live mirror (reproducible only with a retained package cache). */
        snapshot: z.string().regex(/^\d{8}T\d{6}Z$/, "snapshot must look like 20261124T000000Z").nullable(),
      })
      .strict(),
    tools: z
      .object({
        toolsTreeRelease: z.literal("trixie"),
        mkosi: z.string().max(64).nullable(),
        systemdStub: z.string().max(64).nullable(),
      })
      .strict(),
    inputs: z.array(
      z.object({ ref: z.string().min(1).max(8192), size: z.number().int().min(0), sha256: Sri("sha256"), sha384: Sri("sha384"), sha512: Sri("sha512") }).strict(),
    ),
    /**
     * Debian packages each profile resolved to in its last non-frozen bake (from mkosi's manifest).
     * A frozen bake must resolve to exactly these: the live archive moving is then an error.
     */
    packages: z.record(z.string(), z.array(Pin)).optional(),
    /** The same for the default initrd each profile's UKI carries (a separate mkosi image: its packages are measured in .initrd). */
    initrdPackages: z.record(z.string(), z.array(Pin)).optional(),
    /**
     * Each pinned package's .deb by content, `name=version` → file name, SHA-256 and size: what a
     * content-addressed package archive serves (tdxvm archive) and what a bake checks it against.
     */
    debs: z.record(Pin, z.object({
      file: z.string().regex(/^[a-z0-9][a-z0-9+.-]*_[A-Za-z0-9.+~%-]+_[a-z0-9]+\.deb$/, "must be a Debian package file name"),
      sha256: z.string().regex(/^[0-9a-f]{64}$/),
      size: z.number().int().min(0),
    }).strict()).optional(),
  })
  .strict();

export const LockSchema = LockBody.extend({ integrity: Digest }).strict();

export type LockBodyT = z.infer<typeof LockBody>;
export type Lock = z.infer<typeof LockSchema>;
export type LockInput = Lock["inputs"][number];
