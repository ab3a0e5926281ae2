/**
 * The Azure page-blob upload for real: the AzurePageBlob provider with the real
 * @azure/storage-blob against Azurite (Microsoft's storage emulator, started here on a free port
 * with its own account key), optionally through an HTTP proxy that injects one fault — a
 * connection cut in the middle of a range, a byte flipped in a range on its way up, a byte flipped
 * in what is read back. The file is a sparse, VHD-shaped stand-in (20 MiB: data, a 6 MiB hole, a
 * lone page, a footer) so that every case runs in seconds; cloud.test.ts uploads the real baked VHD
 * through the whole Azure graph.
 */
import * as http from "node:http";
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { promises as fs, readFileSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { BlobServiceClient, StorageSharedKeyCredential } from "@azure/storage-blob";
import { providers } from "../../provider/dynamic/runtime";
import { nonZeroRuns, AZURE_BLOB_STATE_VERSION } from "../../provider/dynamic/azureBlob";
import { UNKNOWN } from "../../provider/dynamic/common";
import { startAzurite, tempDir, Azurite } from "../helpers";
import { pulumiOp, OpResult } from "../harness";
import { loadState, unwrap } from "../harness/engine";
import { storageAccountPrefix } from "../../components/azure";

jest.setTimeout(120_000);

const MiB = 1 << 20;
const repoRoot = path.resolve(__dirname, "../..");
const p = providers.azureBlob;
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** 20 MiB + 3 pages: random data, a 6 MiB hole, more data, one lone page, zeros, a footer page. */
function sparseVhd(): Buffer {
  const b = Buffer.alloc(20 * MiB + 3 * 512);
  randomBytes(3 * MiB).copy(b, 0);
  randomBytes(700 * 512).copy(b, 9 * MiB);
  b.fill(0x5a, 15 * MiB + 512, 15 * MiB + 1024);
  Buffer.concat([Buffer.from("conectix"), randomBytes(504)]).copy(b, b.length - 512);
  return b;
}

/** Put Page requests a file needs: its non-zero runs, per 4 MiB chunk (what the provider sends). */
function putsFor(b: Buffer): Array<{ start: number; end: number }> {
  const out: Array<{ start: number; end: number }> = [];
  for (let o = 0; o < b.length; o += 4 * MiB) for (const r of nonZeroRuns(b.subarray(o, Math.min(b.length, o + 4 * MiB)))) out.push({ start: o + r.start, end: o + r.end });
  return out;
}

/** An HTTP proxy in front of Azurite that injects the faults it is given, each once. */
class FaultProxy {
  server!: http.Server;
  endpoint = "";
  cuts = 0;
  flippedPuts = 0;
  flippedGets = 0;
  pagePuts = 0;
  constructor(readonly target: Azurite, readonly faults: { cutPut?: boolean; flipPut?: boolean; flipGet?: boolean }) {}

  async start(): Promise<string> {
    const to = new URL(this.target.endpoint);
    this.server = http.createServer((req, res) => {
      const pagePut = req.method === "PUT" && /[?&]comp=page\b/.test(req.url ?? "") && Number(req.headers["content-length"]) >= 64 * 1024;
      const blobGet = req.method === "GET" && !/[?&]comp=/.test(req.url ?? "");
      if (pagePut) this.pagePuts++;
      const up = http.request({ host: to.hostname, port: to.port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        if (blobGet && this.faults.flipGet && !this.flippedGets && (ur.statusCode === 200 || ur.statusCode === 206)) {
          this.flippedGets++;
          const parts: Buffer[] = [];
          ur.on("data", (d: Buffer) => parts.push(d));
          ur.on("end", () => {
            const body = Buffer.concat(parts);
            body[body.length >> 1] ^= 0x01;
            res.end(body);
          });
          return;
        }
        ur.pipe(res);
      });
      up.on("error", () => res.destroy());
      if (pagePut && this.faults.cutPut && !this.cuts) {
        // Forward half of the range, then drop both connections: the client sees a reset mid-request.
        this.cuts++;
        const half = Number(req.headers["content-length"]) / 2;
        let n = 0;
        req.on("data", (d: Buffer) => {
          n += d.length;
          if (n < half) up.write(d);
          else {
            up.destroy();
            req.socket.destroy();
          }
        });
        return;
      }
      if (pagePut && this.faults.flipPut && !this.flippedPuts) {
        this.flippedPuts++;
        const parts: Buffer[] = [];
        req.on("data", (d: Buffer) => parts.push(d));
        req.on("end", () => {
          const body = Buffer.concat(parts);
          body[body.length >> 1] ^= 0x80;
          up.end(body);
        });
        return;
      }
      req.pipe(up);
    });
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", () => r()));
    const port = (this.server.address() as { port: number }).port;
    this.endpoint = `http://127.0.0.1:${port}${to.pathname}`;
    return this.endpoint;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}

describe("AzurePageBlob provider against Azurite (real @azure/storage-blob)", () => {
  let dir: string;
  let azurite: Azurite;
  let file: string;
  let vhd: Buffer;
  let container: ReturnType<BlobServiceClient["getContainerClient"]>;
  let logs: string[] = [];
  let n = 0;
  const args = (over: Record<string, unknown> = {}) => ({
    file, sha256: sha256(vhd), size: vhd.length, endpoint: azurite.endpoint, accountKey: azurite.key, containerName: "vhds", blobName: `t-${++n}.vhd`, timeoutMinutes: 5, __provider: "shim", ...over,
  });
  const blob = (name: string) => container.getPageBlobClient(name);
  const exists = (name: string) => blob(name).exists();
  async function content(name: string): Promise<Buffer> {
    return blob(name).downloadToBuffer();
  }
  const create = async (a: Record<string, unknown>) => {
    const c = await p.check({}, a);
    expect(c.failures).toBeUndefined();
    return p.create(c.inputs);
  };

  beforeAll(async () => {
    dir = await tempDir("tdxvm-azurite-");
    azurite = await startAzurite(path.join(dir, "azurite"));
    vhd = sparseVhd();
    file = path.join(dir, "azure.vhd");
    writeFileSync(file, vhd);
    const svc = new BlobServiceClient(azurite.endpoint, new StorageSharedKeyCredential(azurite.account, azurite.key));
    container = svc.getContainerClient("vhds");
    await container.create();
  });
  afterAll(async () => {
    await azurite?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    logs = [];
    jest.spyOn(console, "error").mockImplementation((...a: unknown[]) => void logs.push(a.join(" ")));
  });
  afterEach(() => jest.restoreAllMocks());

  it("create: a PageBlob of the VHD's length, 512-byte-aligned ranges that skip its long zero runs, content verified, progress every 10 %", async () => {
    const a = args();
    const made = await create(a);
    const puts = putsFor(vhd);
    const sent = puts.reduce((s, r) => s + r.end - r.start, 0);
    expect(sent).toBeLessThan(vhd.length / 2); // the hole and the tail are not sent
    expect(made.id).toBe(`${azurite.account}/vhds/${a.blobName}`);
    expect(made.outs).toMatchObject({ url: `${azurite.endpoint}vhds/${a.blobName}`, blobType: "PageBlob", uploadedSize: vhd.length, writtenBytes: sent, exists: true, stateVersion: AZURE_BLOB_STATE_VERSION, sha256: sha256(vhd) });
    const props = await blob(a.blobName).getProperties();
    expect({ type: props.blobType, length: props.contentLength, sha: props.metadata?.tdxvm_sha256 }).toEqual({ type: "PageBlob", length: vhd.length, sha: sha256(vhd) });
    const ranges: Array<{ start: number; end: number }> = [];
    for await (const r of blob(a.blobName).listPageRanges()) ranges.push({ start: r.start, end: r.end });
    for (const r of ranges) expect({ r, aligned: r.start % 512 === 0 && (r.end + 1) % 512 === 0 }).toEqual({ r, aligned: true });
    expect(ranges.reduce((s, r) => s + r.end + 1 - r.start, 0)).toBe(sent);
    // Every non-zero page is in a range; the 6 MiB hole and the long zero tail are not.
    const uncovered: number[] = [];
    for (let o = 0; o < vhd.length; o += 512) if (vhd.subarray(o, o + 512).some((x) => x !== 0) && !ranges.some((r) => r.start <= o && o <= r.end)) uncovered.push(o);
    expect(uncovered).toEqual([]);
    expect(ranges.some((r) => r.end >= 3 * MiB && r.start < 9 * MiB)).toBe(false);
    expect(ranges.some((r) => r.end >= 16 * MiB && r.start < vhd.length - 512)).toBe(false);
    expect(sha256(await content(a.blobName))).toBe(sha256(vhd));
    const pcts = logs.flatMap((l) => /upload (\d+) %/.exec(l)?.[1] ?? []).map(Number);
    expect(pcts.length).toBeGreaterThanOrEqual(5);
    expect(pcts.at(-1)).toBe(100);
    for (let i = 1; i < pcts.length; i++) expect(Math.floor(pcts[i] / 10)).toBeGreaterThan(Math.floor(pcts[i - 1] / 10));
    expect(logs.join("\n")).not.toContain(azurite.key);
  });

  it("a connection dropped in the middle of a range: only that range is sent again, and the blob verifies", async () => {
    const proxy = new FaultProxy(azurite, { cutPut: true });
    const a = args({ endpoint: await proxy.start() });
    try {
      const made = await create(a);
      expect(made.outs).toMatchObject({ blobType: "PageBlob" });
      expect(proxy.cuts).toBe(1);
      // Every range once, plus the one that was cut: the upload resumed, it did not start over.
      expect(proxy.pagePuts).toBe(putsFor(vhd).filter((r) => r.end - r.start >= 64 * 1024).length + 1);
      expect(logs.join("\n")).toMatch(/range \d+\+\d+ failed \([^)]*\); retrying in [\d.]+ s \(attempt 2\/6\)/);
    } finally {
      await proxy.stop();
    }
    expect(sha256(await content(a.blobName))).toBe(sha256(vhd));
  });

  it("a range corrupted on its way up is refused by the service (Content-MD5) and sent again", async () => {
    const proxy = new FaultProxy(azurite, { flipPut: true });
    const a = args({ endpoint: await proxy.start() });
    try {
      await create(a);
      expect(proxy.flippedPuts).toBe(1);
      expect(logs.join("\n")).toMatch(/failed \(400 Md5Mismatch/);
    } finally {
      await proxy.stop();
    }
    expect(sha256(await content(a.blobName))).toBe(sha256(vhd));
  });

  it("a blob that does not read back as the VHD is rejected with E_DEPLOYMENT and deleted", async () => {
    const proxy = new FaultProxy(azurite, { flipGet: true });
    const a = args({ endpoint: await proxy.start() });
    try {
      await expect(create(a)).rejects.toThrow(/^E_DEPLOYMENT: the uploaded blob does not match the VHD: content sha256 read back [0-9a-f]{64}, not [0-9a-f]{64} \(deleted it\)/);
      expect(proxy.flippedGets).toBe(1);
    } finally {
      await proxy.stop();
    }
    expect(await exists(a.blobName)).toBe(false);
  });

  it("a VHD whose bytes changed after the bake (same size, other sha256) is rejected and its blob deleted", async () => {
    const changed = Buffer.from(vhd);
    changed[100] ^= 0xff;
    const other = path.join(dir, "changed.vhd");
    writeFileSync(other, changed);
    const a = args({ file: other });
    const e = await create(a).then(() => undefined, (x: Error) => x);
    expect(e?.message).toMatch(/^E_DEPLOYMENT: the uploaded blob does not match the VHD: /);
    expect(e?.message).toContain(`the file's sha256 is ${sha256(changed)}, not the baked ${sha256(vhd)} (it changed after the bake)`);
    expect(e?.message).toContain(`content sha256 read back ${sha256(changed)}`);
    expect(await exists(a.blobName)).toBe(false);
  });

  it("a key the account refuses: E_DEPLOYMENT about Shared Key access, the key never in the message or the logs", async () => {
    const wrong = randomBytes(64).toString("base64");
    const a = args({ accountKey: wrong });
    const e = await create(a).then(() => undefined, (x: Error) => x);
    expect(e?.message).toMatch(/^E_DEPLOYMENT: the VHD upload to \S+ failed: 403 /);
    expect(e?.message).toContain("allowSharedKeyAccess");
    expect(`${e?.message}\n${logs.join("\n")}`).not.toContain(wrong);
    expect(await exists(a.blobName)).toBe(false);
  });

  it("check: a 512-byte multiple, https (http only on loopback), an endpoint that names the account; unknowns pass", async () => {
    const odd = await p.check({}, args({ size: vhd.length + 1 }));
    // No property: the engine would print that input's value next to the failure (the reason names it).
    expect(odd.failures).toEqual([{ property: "", reason: expect.stringMatching(/^E_VALIDATION: a page blob must be a multiple of 512 bytes/) }]);
    const plain = await p.check({}, args({ endpoint: "http://tdxvmtest.blob.core.windows.net/" }));
    expect(plain.failures?.[0]).toMatchObject({ property: "", reason: expect.stringMatching(/endpoint.*https \(http only for a local emulator/) });
    expect((await p.check({}, args({ endpoint: "https://tdxvmtest.blob.core.windows.net/" }))).failures).toBeUndefined();
    const noAccount = await p.check({}, args({ endpoint: "http://127.0.0.1:1/" }));
    expect(noAccount.failures?.[0]).toMatchObject({ property: "", reason: expect.stringContaining("names no storage account") });
    const unknown = await p.check({}, args({ accountKey: UNKNOWN }));
    expect(unknown.failures).toBeUndefined();
  });

  it("diff: new content or another place replaces (same place: delete first); a rotated key or moved file only updates", async () => {
    const o = { ...args({ blobName: "d.vhd" }), exists: true, url: "u" };
    const same = await p.diff("id", o, args({ blobName: "d.vhd" }));
    expect(same).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
    expect(await p.diff("id", o, args({ blobName: "d2.vhd", sha256: "0".repeat(64) }))).toEqual({ changes: true, replaces: ["sha256", "blobName"], deleteBeforeReplace: false });
    expect(await p.diff("id", { ...o, exists: false }, args({ blobName: "d.vhd" }))).toEqual({ changes: true, replaces: ["exists"], deleteBeforeReplace: true });
    expect(await p.diff("id", o, args({ blobName: "d.vhd", accountKey: "b3RoZXI=" }))).toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
    expect(await p.diff("id", o, args({ blobName: "d.vhd", file: "/elsewhere/azure.vhd" }))).toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
  });

  it("read: the verified blob exists; deleted behind Pulumi's back it is drift, which the refresh diff turns into a replacement", async () => {
    const a = args();
    const made = await create(a);
    expect((await p.read(made.id, made.outs)).props.exists).toBe(true);
    await blob(a.blobName).delete();
    const r = await p.read(made.id, made.outs);
    expect(r.props.exists).toBe(false);
    // The engine's refresh: Diff(refreshed outputs, old inputs).
    expect(await p.diff(made.id, r.props, a)).toEqual({ changes: true, replaces: ["exists"], deleteBeforeReplace: true });
  });

  it("delete removes the blob; deleting it again succeeds; a delete that cannot authenticate fails with E_DEPLOYMENT", async () => {
    const a = args();
    const made = await create(a);
    await p.delete(made.id, made.outs);
    expect(await exists(a.blobName)).toBe(false);
    await expect(p.delete(made.id, made.outs)).resolves.toBeUndefined();
    const again = await create(args({ blobName: a.blobName }));
    await expect(p.delete(again.id, { ...again.outs, accountKey: randomBytes(64).toString("base64") })).rejects.toThrow(/^E_DEPLOYMENT: could not delete the blob .*: 403 /);
    expect(await exists(a.blobName)).toBe(true);
  });

  it("without @azure/storage-blob in the project, create fails with E_DEPLOYMENT naming the npm install", () => {
    // A fresh Node process in which exactly that package does not resolve (as in a project that did not install it).
    const script = `
      const Module = require("node:module");
      const resolve = Module._resolveFilename;
      Module._resolveFilename = function (request, ...rest) {
        if (request === "@azure/storage-blob") throw Object.assign(new Error("Cannot find module '" + request + "'"), { code: "MODULE_NOT_FOUND" });
        return resolve.call(this, request, ...rest);
      };
      require("tdxvm/dynamic").providers.azureBlob.create(${JSON.stringify(args())}).then(() => process.exit(0), (e) => { console.log(e.message); process.exit(3); });`;
    const r = spawnSync(process.execPath, ["-e", script], { cwd: repoRoot, encoding: "utf8", timeout: 60_000 });
    expect(r.status).toBe(3);
    expect(r.stdout).toMatch(/^E_DEPLOYMENT: @azure\/storage-blob is not installed where Pulumi runs tdxvm's providers/);
    const range = JSON.parse(readFileSync(path.join(repoRoot, "package.json"), "utf8")).peerDependencies["@azure/storage-blob"];
    expect(r.stdout).toContain(`npm install @azure/storage-blob@${range}`);
  });
});

describe("the azure target's upload graph through the harness (real provider host, Azurite as the storage data plane)", () => {
  const SIG_KEY = "4dabf18193072939515e22adb298388d";
  const BLOB = "pulumi-nodejs:dynamic/tdxvm:AzurePageBlob";
  const NAME = "pulumi-nodejs:dynamic/tdxvm:UniqueName";
  let dir: string;
  let azurite: Azurite;
  let svc: BlobServiceClient;
  const files: Record<string, Buffer> = {};
  const op = (o: "up" | "preview" | "refresh" | "destroy", which = "a") => pulumiOp(o, {
    program: "tests/provider/programs/azureUpload.ts", project: "tdxvm-azure-upload", dir,
    config: { vhd: path.join(dir, `${which}.vhd`), sha256: sha256(files[which]), size: String(files[which].length) },
    env: { HARNESS_AZURE_BLOB_ENDPOINT: azurite.endpoint, HARNESS_AZURE_ACCOUNT_KEY: azurite.key },
  });
  const steps = (r: OpResult, type: string) => r.events.filter((e) => e.type === type).map((e) => e.step);
  const state = async () => (await loadState(path.join(dir, "state.json"))).resources.filter((r) => !r.pendingDelete);
  /** Every blob in Azurite: "container/name" → type, length, recorded sha256 and the sha256 of its content. */
  async function blobs(): Promise<Record<string, { type?: string; length?: number; recorded?: string; sha256: string }>> {
    const out: Record<string, { type?: string; length?: number; recorded?: string; sha256: string }> = {};
    for await (const c of svc.listContainers()) {
      for await (const b of svc.getContainerClient(c.name).listBlobsFlat({ includeMetadata: true })) {
        const content = await svc.getContainerClient(c.name).getBlobClient(b.name).downloadToBuffer();
        out[`${c.name}/${b.name}`] = { type: b.properties.blobType, length: b.properties.contentLength, recorded: b.metadata?.tdxvm_sha256, sha256: sha256(content) };
      }
    }
    return out;
  }

  beforeAll(async () => {
    dir = await tempDir("tdxvm-azure-graph-");
    azurite = await startAzurite(path.join(dir, "azurite"));
    svc = new BlobServiceClient(azurite.endpoint, new StorageSharedKeyCredential(azurite.account, azurite.key));
    files.a = sparseVhd();
    files.b = sparseVhd();
    for (const [k, b] of Object.entries(files)) writeFileSync(path.join(dir, `${k}.vhd`), b);
  });
  afterAll(async () => {
    await azurite?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("up: a storage account name of its own, the VHD uploaded and verified with the account key, which stays a secret", async () => {
    const r = await op("up");
    expect(r.error).toBeUndefined();
    const rs = await state();
    const name = unwrap(rs.find((x) => x.type === NAME)!.outputs) as { name: string; suffix: string };
    expect(name.name).toMatch(new RegExp(`^${storageAccountPrefix("app")}[a-z0-9]{10}$`));
    const account = rs.find((x) => x.type === "azure-native:storage:StorageAccount")!;
    expect(unwrap(account.inputs)).toMatchObject({ accountName: name.name, allowSharedKeyAccess: true, allowBlobPublicAccess: false });
    expect((unwrap(rs.find((x) => x.type === "azure-native:compute:Gallery")!.inputs) as { galleryName: string }).galleryName).toBe(`app_${name.suffix}`);
    const container = (unwrap(rs.find((x) => x.type === "azure-native:storage:BlobContainer")!.outputs) as { name: string }).name;
    const blobName = `tdxvm-${sha256(files.a).slice(0, 16)}.vhd`;
    expect(r.outputs.url).toBe(`${azurite.endpoint}${container}/${blobName}`);
    expect(await blobs()).toEqual({ [`${container}/${blobName}`]: { type: "PageBlob", length: files.a.length, recorded: sha256(files.a), sha256: sha256(files.a) } });
    const upload = rs.find((x) => x.type === BLOB)!;
    expect(upload.inputs.accountKey).toMatchObject({ [SIG_KEY]: expect.any(String) });
    expect(upload.outputs.accountKey).toMatchObject({ [SIG_KEY]: expect.any(String) });
    expect(readFileSync(path.join(dir, "state.json"), "utf8")).not.toContain(azurite.key);
    expect(readFileSync(path.join(dir, "host.log"), "utf8") + r.stdout).not.toContain(azurite.key);
    expect(readFileSync(path.join(dir, "host.log"), "utf8")).toMatch(/upload 100 %[\s\S]*uploaded and verified/);
  });

  it("a second up changes nothing: the same name, no upload", async () => {
    const before = (unwrap((await state()).find((x) => x.type === NAME)!.outputs) as { name: string }).name;
    const r = await op("up");
    expect(r.error).toBeUndefined();
    expect({ name: steps(r, NAME), blob: steps(r, BLOB) }).toEqual({ name: ["same"], blob: ["same"] });
    expect((unwrap((await state()).find((x) => x.type === NAME)!.outputs) as { name: string }).name).toBe(before);
  });

  it("refresh: a blob deleted behind Pulumi's back is drift, and the next up uploads it again (delete first: same blob name)", async () => {
    const [key] = Object.keys(await blobs());
    await svc.getContainerClient(key.split("/")[0]).deleteBlob(key.split("/")[1]);
    const r = await op("refresh");
    expect(r.error).toBeUndefined();
    expect(r.events.filter((e) => e.step === "read" && e.changes).map((e) => [e.type, e.replaces])).toEqual([[BLOB, ["exists"]]]);
    const p = await op("preview");
    expect(p.events.filter((e) => e.type === BLOB).map((e) => [e.step, e.replaces, e.deleteBeforeReplace])).toEqual([["replace", ["exists"], true]]);
    const u = await op("up");
    expect(u.error).toBeUndefined();
    expect(steps(u, BLOB)).toEqual(["delete-replaced", "create-replacement"]);
    expect(Object.values(await blobs())).toEqual([{ type: "PageBlob", length: files.a.length, recorded: sha256(files.a), sha256: sha256(files.a) }]);
  });

  it("a new VHD: a new blob and image version (create-before-delete), the old blob removed; name and account stay", async () => {
    const r = await op("up", "b");
    expect(r.error).toBeUndefined();
    expect({ name: steps(r, NAME), account: steps(r, "azure-native:storage:StorageAccount") }).toEqual({ name: ["same"], account: ["same"] });
    expect(steps(r, BLOB)).toEqual(["create-replacement", "delete-replaced"]);
    expect(Object.values(await blobs())).toEqual([{ type: "PageBlob", length: files.b.length, recorded: sha256(files.b), sha256: sha256(files.b) }]);
  });

  it("destroy removes the blob", async () => {
    const r = await op("destroy", "b");
    expect(r.ok).toBe(true);
    expect(await blobs()).toEqual({});
  });
});
