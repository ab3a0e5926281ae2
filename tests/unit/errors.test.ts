/**
 * Every error code has a trigger from the user-facing API here, and every trigger checks
 * the hint. A new code without a trigger fails the first test.
 */
import * as http from "node:http";
import { AddressInfo } from "node:net";
import { ERROR_CODES, ErrorCode, Image, Init, Policy, SecretSchema, SecretTarget, TdxError, ContentStore, fetchInput, bootBakedDisk } from "../../provider";
import { parsePe } from "../../provider/measure";
import { parseEvidence } from "../../provider/attest/evidence";
import { refuseNewerState } from "../../provider/dynamic/runtime";
import { tempDir, tdxErrorOf } from "../helpers";
import * as path from "node:path";
import { pinPackages } from "../../provider/lock";
import { exportArchive } from "../../provider/fetch/archive";

const triggers: Record<ErrorCode, { run: () => Promise<unknown>; hint: RegExp }> = {
  E_VALIDATION: { run: async () => new Image({ base: "debian/trixie" }).file("../etc/shadow", { content: "x" }), hint: /Fix the file/ },
  E_LOCKFILE: { run: async () => new Image({ base: "debian/trixie", projectDir: await tempDir() }).emit({ frozen: true }), hint: /img\.lock\(\)/ },
  E_POLICY: { run: async () => new Image({ base: "debian/trixie", projectDir: await tempDir() }).setPolicy(new Policy({ requireFrozenLock: true })).emit(), hint: /frozen: true/ },
  E_FETCH: {
    run: async () => {
      const dir = await tempDir();
      return new Image({ base: "debian/trixie", projectDir: dir }).file("/etc/x", { src: "does-not-exist.conf" }).lock({ cacheDir: dir });
    },
    hint: /exists/,
  },
  E_BAKE: {
    // The lima backend needs limactl on PATH; preflight names it and how to get it.
    run: async () => {
      const path = process.env.PATH;
      process.env.PATH = "/nonexistent";
      try {
        return await new Image({ base: "debian/trixie", projectDir: await tempDir() }).bake({ backend: "lima", cacheDir: await tempDir(), quiet: true });
      } finally {
        process.env.PATH = path;
      }
    },
    hint: /Install: brew install lima .*\(for limactl\)/,
  },
  // A lock pinning a package that neither this machine's caches nor an archive hold: exporting an archive names it.
  E_PACKAGES: {
    run: async () => {
      const dir = await tempDir();
      await new Image({ base: "debian/trixie", projectDir: dir }).install("hello").lock({ cacheDir: dir });
      const lock = await pinPackages(path.join(dir, "tdx.lock"), "default", ["hello=2.10-3"], undefined, { "hello=2.10-3": { file: "hello_2.10-3_amd64.deb", sha256: "ab".repeat(32), size: 1 } });
      return exportArchive(lock, path.join(dir, "archive"), { cacheDir: dir });
    },
    hint: /tdxvm archive import/,
  },
  E_ATTESTATION: { run: async () => parseEvidence({ evidenceVersion: 1, issuer: "tpm", nonce: "00" }), hint: /evidence contract/ },
  // A Pulumi stack whose state a newer tdxvm wrote, met by this one's providers.
  E_STATE: { run: async () => refuseNewerState("image", { stateVersion: 1_000 }), hint: /Install the tdxvm version that wrote/ },
  E_MEASUREMENT: { run: async () => parsePe(Buffer.from("MZ not really a PE file")), hint: /Bake first/ },
  E_DEPLOYMENT: {
    run: async () => bootBakedDisk({ artifacts: [{ target: "disk", kind: "raw", path: "/nonexistent/tdxvm.raw" }] }, { toolsRoot: "/nonexistent", workDir: await tempDir() }),
    hint: /Bake the image again/,
  },
  E_SECRET: {
    run: async () => {
      const init = new Init({ secrets: { TOKEN: { schema: SecretSchema.string({ minLength: 8 }), targets: [SecretTarget.env("TOKEN")] } } });
      return init.secretsDelivery("http_post").materializeRuntime(await tempDir(), { TOKEN: "short" });
    },
    hint: /SecretSchema/,
  },
};

describe("error codes", () => {
  it("each code has a trigger in this file", () => {
    expect(Object.keys(triggers).sort()).toEqual(Object.keys(ERROR_CODES).sort());
  });

  for (const [code, t] of Object.entries(triggers)) {
    it(`${code} comes from the user-facing API with a hint`, async () => {
      const e = await tdxErrorOf(t.run);
      expect(e).toBeInstanceOf(TdxError);
      expect(e.code).toBe(code);
      expect(e.hint).toMatch(t.hint);
      expect(String(e)).toContain(`${code}: `);
      expect(String(e)).toContain("hint: ");
    });
  }

  it("E_FETCH for an integrity mismatch over http carries expected and actual digests", async () => {
    const server = http.createServer((_q, r) => r.end("payload"));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const dir = await tempDir();
      const e = await tdxErrorOf(() => fetchInput(new ContentStore(dir), `http://127.0.0.1:${(server.address() as AddressInfo).port}/x`, { integrity: `sha256-${Buffer.alloc(32).toString("base64")}` }));
      expect(e.code).toBe("E_FETCH");
      expect(e.message).toContain("integrity mismatch");
      expect(e.hint).toContain("Nothing was stored");
    } finally {
      server.close();
    }
  });
});
