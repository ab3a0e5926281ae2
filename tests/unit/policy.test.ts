import * as http from "node:http";
import { AddressInfo } from "node:net";
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { Image, Policy } from "../../provider";
import { mutableReason } from "../../provider/lock/policy";
import { tempDir, tdxErrorOf } from "../helpers";
import { createHash } from "node:crypto";

describe("policy", () => {
  let server: http.Server;
  let url: string;
  let hits = 0;
  const body = Buffer.from("#!/bin/sh\necho agent\n");
  const sri = `sha256-${createHash("sha256").update(body).digest("base64")}`;
  beforeAll(async () => {
    server = http.createServer((_req, res) => {
      hits++;
      res.end(body);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  const img = (dir: string, policy: ConstructorParameters<typeof Policy>[0]) =>
    new Image({ base: "debian/trixie", projectDir: dir }).setPolicy(new Policy(policy));

  it("requireFrozenLock: a non-frozen emit is E_POLICY naming the rule", async () => {
    const dir = await tempDir();
    const e = await tdxErrorOf(() => img(dir, { requireFrozenLock: true }).emit({ cacheDir: dir }));
    expect(e.code).toBe("E_POLICY");
    expect(e.details).toEqual({ rule: "requireFrozenLock" });
    expect(e.message).toContain("requireFrozenLock");
    expect(e.hint).toContain("frozen: true");
  });

  it("mutableRefPolicy: error blocks an unpinned URL, warn reports it, allow is silent", async () => {
    const dir = await tempDir();
    const withUrl = (mode: "error" | "warn" | "allow") => img(dir, { mutableRefPolicy: mode }).file("/usr/local/bin/agent", { src: `${url}/agent`, mode: 0o755 });
    const e = await tdxErrorOf(() => withUrl("error").lock({ cacheDir: dir }));
    expect(e.code).toBe("E_POLICY");
    expect(e.details).toEqual({ rule: "mutableRefPolicy" });
    const warnings: string[] = [];
    await withUrl("warn").lock({ cacheDir: dir, onWarning: (w) => warnings.push(`${w.rule}: ${w.message}`) });
    expect(warnings).toEqual([`mutableRefPolicy: ${url}/agent has no integrity, so its content can change under the same URL`]);
    const none: string[] = [];
    await withUrl("allow").lock({ cacheDir: dir, onWarning: (w) => none.push(w.message) });
    expect(none).toEqual([]);
    // Pinned: fine even under "error".
    await expect(img(dir, { mutableRefPolicy: "error" }).file("/a", { src: `${url}/agent`, integrity: sri }).lock({ cacheDir: dir })).resolves.toBeDefined();
  });

  it("classifies branch/tag/latest URLs as mutable even with integrity", () => {
    expect(mutableReason("https://x.example/repo/archive/refs/heads/main.tar.gz", sri)).toContain("branch");
    expect(mutableReason("https://x.example/releases/latest/download/a", sri)).toContain("latest");
    expect(mutableReason("https://x.example/a?ref=v1.2", sri)).toBeDefined();
    expect(mutableReason("https://x.example/a?ref=0123456789abcdef0123456789abcdef01234567", sri)).toBeUndefined();
    expect(mutableReason("https://x.example/v1.2.3/a.tar.gz", sri)).toBeUndefined();
    expect(mutableReason("./local/file", undefined)).toBeUndefined();
  });

  it("requireIntegrity: a source without integrity is E_POLICY", async () => {
    const dir = await tempDir();
    await fs.writeFile(path.join(dir, "f"), "x");
    const e = await tdxErrorOf(() => img(dir, { requireIntegrity: true }).file("/f", { src: "f" }).lock({ cacheDir: dir }));
    expect(e.code).toBe("E_POLICY");
    expect(e.details).toEqual({ rule: "requireIntegrity" });
  });

  it("networkMode offline: never touches the network; cached pinned inputs still lock", async () => {
    const dir = await tempDir();
    const pinned = (mode: "online" | "offline") => img(dir, { networkMode: mode }).file("/a", { src: `${url}/agent`, integrity: sri });
    const before = hits;
    const e = await tdxErrorOf(() => pinned("offline").lock({ cacheDir: dir }));
    expect(e.code).toBe("E_POLICY");
    expect(e.details).toEqual({ rule: "networkMode" });
    expect(hits).toBe(before);
    await pinned("online").lock({ cacheDir: dir }); // fills the cache
    const afterOnline = hits;
    await expect(pinned("offline").lock({ cacheDir: dir })).resolves.toBeDefined();
    expect(hits).toBe(afterOnline);
    const unpinned = await tdxErrorOf(() => img(dir, { networkMode: "offline", mutableRefPolicy: "allow" }).file("/b", { src: `${url}/agent` }).lock({ cacheDir: dir }));
    expect(unpinned.details).toEqual({ rule: "networkMode" });
  });

  it("rejects unknown policy values", async () => {
    const e = await tdxErrorOf(() => new Policy({ networkMode: "sometimes" as "online" }));
    expect(e.code).toBe("E_VALIDATION");
  });
});
