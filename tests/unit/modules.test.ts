/**
 * tdxvm's own modules as recipe content: the agent (bundled, pinned by sha256), Init's contract
 * and handoff units, Tdxs's socket, in any combination and order — and the bundle itself.
 */
import { createHash } from "node:crypto";
import * as path from "node:path";
import { Image, Agent, Init, Tdxs, SecretSchema, SecretTarget } from "../../provider";
import { bundle } from "../../provider/modules/bundle";
import { builtinBytes, builtinFile } from "../../provider/modules/builtin";
import { AGENT_CONFIG_PATH, AGENT_PATH, agentIssuerOf } from "../../provider/modules/agent";
import { tdxErrorOf } from "../helpers";

const img = () => new Image({ base: "debian/trixie", projectDir: "/nonexistent" });
const file = (i: Image, p: string) => i.recipe.base_layer.files.find((f) => f.path === p);
const text = (i: Image, p: string) => {
  const f = file(i, p);
  if (!f || f.source.kind !== "inline") throw new Error(`no inline ${p}`);
  return Buffer.from(f.source.data, f.source.encoding).toString("utf8");
};
const config = (i: Image) => JSON.parse(text(i, AGENT_CONFIG_PATH));
const init = () => new Init({ secrets: { TOKEN: { schema: SecretSchema.string({ minLength: 8 }), targets: [SecretTarget.file("/run/app/token"), SecretTarget.env("TOKEN", { scope: "unit", unit: "worker.service" })] } }, handoff: "app.service" });

describe("agent bundle", () => {
  it("is deterministic, keyed by package-relative paths, with only Node built-ins outside", () => {
    const entry = path.join(__dirname, "../../agent/main.ts");
    const a = bundle(entry);
    expect(bundle(entry).equals(a)).toBe(true);
    const src = a.toString("utf8");
    expect(src).not.toContain(path.join(__dirname, "..", ".."));
    const keys = [...src.matchAll(/^"([^"]+)": \[function/gm)].map((m) => m[1]);
    expect(keys).toContain("agent/main.ts");
    expect(keys).toContain("provider/secrets/index.ts");
    expect(keys.every((k) => !k.startsWith("/") && !k.includes(".."))).toBe(true);
    expect(src.trimEnd().endsWith('__load("agent/main.ts").run();')).toBe(true);
  });

  it("a recipe pins the bundle by sha256; a different agent fails the bake with E_LOCKFILE", async () => {
    const i = img().use(new Agent());
    const f = file(i, AGENT_PATH)!;
    expect(f.source).toEqual({ kind: "builtin", name: "tdxvm-agent", sha256: createHash("sha256").update(builtinBytes("tdxvm-agent")).digest("hex") });
    expect(f.mode).toBe(0o755);
    expect(builtinFile("tdxvm-agent", (f.source as { sha256: string }).sha256).length).toBeGreaterThan(10_000);
    expect((await tdxErrorOf(() => builtinFile("tdxvm-agent", "0".repeat(64)))).code).toBe("E_LOCKFILE");
  });
});

describe("Agent, Init, Tdxs", () => {
  it("Agent: the runtime, the unit, networking and a default config", () => {
    const i = img().use(new Agent({ port: 9443 }));
    const r = i.recipe;
    expect(r.base_layer.packages).toEqual(expect.arrayContaining(["nodejs", "tpm2-tools"]));
    expect(config(i)).toEqual({ agentVersion: 1, issuer: "auto", listen: { host: "0.0.0.0", port: 9443 }, secretsContract: null, tdxs: null });
    expect(text(i, "/etc/systemd/system/tdxvm-agent.service")).toContain(`ExecStart=/usr/bin/node ${AGENT_PATH} ${AGENT_CONFIG_PATH}`);
    expect(r.base_layer.runs).toContainEqual({ phase: "postinst", cmd: "systemctl", args: ["enable", "tdxvm-agent.service", "systemd-networkd.service"] });
    expect(agentIssuerOf(r.base_layer.files)).toBe("auto");
    expect(() => new Agent({ issuer: "fake" as "tpm" })).toThrow(/unknown agent issuer/);
  });

  it("Init + Tdxs in either order give one agent with both parts, installed once", () => {
    for (const mods of [[init(), new Tdxs()], [new Tdxs(), init()]]) {
      const i = img().use(...mods);
      const c = config(i);
      expect(c.secretsContract).toBe("/etc/tdxvm/secrets-contract.json");
      expect(c.tdxs).toEqual({ path: "/var/tdxs.sock", group: "tdx", mode: 0o660 });
      expect(i.recipe.base_layer.files.filter((f) => f.path === AGENT_PATH)).toHaveLength(1);
      expect(i.recipe.base_layer.runs.filter((x) => x.args.includes("tdxvm-agent.service"))).toHaveLength(1);
    }
  });

  it("Init: the handoff unit is wanted by the ready target and conditioned on the delivery; env targets get EnvironmentFile= drop-ins", () => {
    const i = img().use(init());
    expect(text(i, "/etc/systemd/system/tdxvm-secrets-ready.target")).toMatch(/ConditionPathExists=\/run\/tdxvm\/secrets-ready[\s\S]*Wants=app.service/);
    const handoff = text(i, "/etc/systemd/system/app.service.d/10-tdxvm-secrets.conf");
    expect(handoff).toContain("ConditionPathExists=/run/tdxvm/secrets-ready");
    expect(handoff).toContain("EnvironmentFile=-/run/tdxvm/secrets.env");
    expect(text(i, "/etc/systemd/system/worker.service.d/10-tdxvm-secrets.conf")).toContain("EnvironmentFile=-/run/tdxvm/env/worker.service.env");
    const contract = JSON.parse(text(i, "/etc/tdxvm/secrets-contract.json"));
    expect(contract.handoff).toBe("app.service");
    expect(JSON.stringify(contract)).not.toMatch(/value/i);
  });

  it("Init refuses secret files on the read-only verity root, and allows them with rootfs none", async () => {
    const onRoot = () => new Init({ secrets: { K: { targets: [SecretTarget.file("/etc/app/key")] } } });
    expect((await tdxErrorOf(() => img().use(onRoot()))).message).toMatch(/read-only verity root/);
    expect(() => img().rootFs("none").use(onRoot())).not.toThrow();
  });

  it("Tdxs: a socket unit in group tdx served by the agent; with a pinned binary, by tdxs itself", () => {
    const i = img().use(new Tdxs());
    expect(text(i, "/etc/systemd/system/tdxs.socket")).toMatch(/ListenStream=\/var\/tdxs.sock[\s\S]*SocketMode=0660[\s\S]*SocketGroup=tdx[\s\S]*Service=tdxvm-agent.service/);
    expect(text(i, "/usr/lib/sysusers.d/tdxvm-tdxs.conf")).toBe("g tdx -\n");
    expect(JSON.parse(text(i, "/etc/tdxs/config.yaml"))).toEqual({ transport: { type: "socket", config: { systemd: true } }, issuer: { type: "auto" } });
    const b = img().use(new Tdxs({ binary: { src: "https://example.org/tdxs-1.0", integrity: "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" } }));
    expect(file(b, "/usr/local/bin/tdxs")!.source).toMatchObject({ kind: "src", ref: "https://example.org/tdxs-1.0" });
    expect(text(b, "/etc/systemd/system/tdxs.socket")).toContain("Service=tdxs.service");
    expect(config(b).tdxs).toBeNull();
  });
});
