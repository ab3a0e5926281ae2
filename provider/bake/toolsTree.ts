/**
 * The Debian trixie tools tree: mkosi 25 and everything it and our boots need, installed by
 * debootstrap + apt from the Debian archive into the cache (docs/design.md §2, recipe 1).
 *
 * Layout: <cacheDir>/tools/trixie/ (the tree) and <cacheDir>/tools/trixie.json (manifest:
 * package versions, mirror, creation time). Built in a temp dir and renamed into place; a
 * file lock makes concurrent provisioners wait for one another instead of racing.
 */
import { promises as fs, existsSync, readFileSync, realpathSync } from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { TdxError } from "../errors";
import { sandboxArgv, runStreaming, findOnPath } from "./sandbox";
import { withFileLock } from "./filelock";
import { Progress } from "./progress";

/** Packages of the tools tree: mkosi and its helpers, plus QEMU/OVMF/swtpm for dev boots. */
export const TOOLS_PACKAGES = [
  "mkosi", "debian-archive-keyring", "apt", "dpkg", "gnupg", "systemd", "systemd-boot-efi", "systemd-ukify",
  "systemd-repart", "dosfstools", "mtools", "e2fsprogs", "erofs-utils", "squashfs-tools", "cpio", "zstd",
  "xz-utils", "binutils", "python3-lz4", "qemu-system-x86", "qemu-utils", "ovmf", "swtpm", "swtpm-tools", "tpm2-tools",
  // Independent implementations the tests cross-check the measurement code against.
  "pesign", "fdisk", "python3-pefile", "openssl",
];

/** Packages of TOOLS_PACKAGES a tree's manifest does not list (a tree made by an older tdxvm). */
export function missingToolsPackages(tree: Pick<ToolsTree, "versions">): string[] {
  return TOOLS_PACKAGES.filter((p) => !tree.versions[p]);
}

/** Versions that identify the tree for cache keys and reports. */
export const KEY_PACKAGES = ["mkosi", "systemd", "systemd-boot-efi", "qemu-system-x86", "ovmf", "swtpm", "linux-base"];

export interface ToolsTree {
  root: string;
  release: "trixie";
  /** package → version, for every installed package of TOOLS_PACKAGES. */
  versions: Record<string, string>;
  mirror: string;
}

export function toolsTreeDir(cacheDir: string): string {
  return path.join(cacheDir, "tools", "trixie");
}

export function readToolsManifest(cacheDir: string): ToolsTree | undefined {
  const m = `${toolsTreeDir(cacheDir)}.json`;
  if (!existsSync(m) || !existsSync(path.join(toolsTreeDir(cacheDir), "usr/bin/mkosi"))) return undefined;
  try {
    const data = JSON.parse(readFileSync(m, "utf8")) as ToolsTree;
    return { ...data, root: realpathSync(toolsTreeDir(cacheDir)) };
  } catch {
    return undefined;
  }
}

export interface ProvisionOptions { cacheDir: string; mirror: string; progress?: Progress }

/** Host commands provisioning needs, each with its Debian package. */
export interface HostRequirement { command: string; install: string }
const apt = (pkg: string) => `apt-get install -y ${pkg}`;
export const PROVISION_COMMANDS: HostRequirement[] = [
  { command: "debootstrap", install: apt("debootstrap") },
  { command: "unshare", install: apt("util-linux") },
  { command: "setpriv", install: apt("util-linux") },
  { command: "flock", install: apt("util-linux") },
  { command: "mount", install: apt("mount") },
  { command: "chroot", install: apt("coreutils") },
];

export function preflight(commands: ReadonlyArray<HostRequirement>): void {
  const missing = commands.filter((c) => !findOnPath(c.command));
  if (missing.length) {
    throw new TdxError("E_BAKE", `missing host command${missing.length > 1 ? "s" : ""}: ${missing.map((m) => m.command).join(", ")}`, {
      hint: `Install: ${[...new Set(missing.map((m) => `${m.install} (for ${m.command})`))].join("; ")}`,
      details: { phase: "preflight", missing: missing.map((m) => m.command) },
    });
  }
  if (process.getuid?.() !== 0) {
    throw new TdxError("E_BAKE", "baking with the tools tree needs root (mounts, chroot, loop-free repart as root)", {
      hint: "Run as root (sudo), or install mkosi ≥ 25 on the host, or use the lima backend on macOS.",
      details: { phase: "preflight" },
    });
  }
}

/** apt-get install `packages` into the tree at `root`; then every relevant package's version. */
async function installInto(root: string, packages: ReadonlyArray<string>, opts: ProvisionOptions): Promise<{ versions?: Record<string, string>; step: string; tail: string[] }> {
  const apt = ["sh", "-c", `apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${packages.join(" ")} && apt-get clean`];
  let r = await runStreaming(sandboxArgv(root, apt), { onLine: (l) => opts.progress?.line(l) });
  if (r.code !== 0) return { step: "apt-get install", tail: r.tail };
  r = await runStreaming(sandboxArgv(root, ["dpkg-query", "-W", "-f", "${Package}\\t${Version}\\n"]), { tailLines: 10_000 });
  if (r.code !== 0) return { step: "dpkg-query", tail: r.tail };
  const versions: Record<string, string> = {};
  for (const line of r.tail) {
    const [p, v] = line.split("\t");
    if (p && v && (TOOLS_PACKAGES.includes(p) || KEY_PACKAGES.includes(p))) versions[p] = v;
  }
  return { versions, step: "", tail: r.tail };
}

async function writeManifest(cacheDir: string, manifest: Omit<ToolsTree, "root"> & { createdAt: string }): Promise<void> {
  const file = `${toolsTreeDir(cacheDir)}.json`;
  const tmp = `${file}.${randomBytes(4).toString("hex")}.tmp`;
  await fs.writeFile(tmp, JSON.stringify(manifest, null, 2) + "\n");
  await fs.rename(tmp, file);
}

export async function ensureToolsTree(opts: ProvisionOptions): Promise<ToolsTree> {
  const existing = readToolsManifest(opts.cacheDir);
  if (existing && missingToolsPackages(existing).length === 0) return existing;
  preflight(PROVISION_COMMANDS);
  const toolsDir = path.dirname(toolsTreeDir(opts.cacheDir));
  await fs.mkdir(toolsDir, { recursive: true });
  return withFileLock(path.join(toolsDir, "trixie.lock"), async () => {
    const again = readToolsManifest(opts.cacheDir);
    if (again && missingToolsPackages(again).length === 0) return again;
    if (again) {
      // A tree from an older tdxvm: add what this version needs (package versions of the tools
      // already there stay as they are, so cache keys built from KEY_PACKAGES keep holding).
      const missing = missingToolsPackages(again);
      opts.progress?.phase(`tools-tree: apt-get install ${missing.join(" ")}`);
      const r = await installInto(again.root, missing, opts);
      if (!r.versions) {
        throw new TdxError("E_BAKE", `adding ${missing.join(", ")} to the trixie tools tree failed at ${r.step}:\n${r.tail.slice(-15).join("\n")}`, {
          hint: `Check that ${opts.mirror} is reachable, or remove ${again.root} (and its .json) to provision it afresh.`,
          details: { phase: "tools-tree", step: r.step },
        });
      }
      const { root: _root, ...rest } = again;
      const manifest = { ...rest, versions: { ...again.versions, ...r.versions }, createdAt: (again as { createdAt?: string }).createdAt ?? new Date().toISOString() };
      await writeManifest(opts.cacheDir, manifest);
      return { ...manifest, root: again.root };
    }
    const tmp = path.join(toolsDir, `.trixie-${randomBytes(4).toString("hex")}.tmp`);
    const fail = async (step: string, tail: string[]) => {
      await fs.rm(tmp, { recursive: true, force: true });
      return new TdxError("E_BAKE", `provisioning the trixie tools tree failed at ${step}:\n${tail.slice(-15).join("\n")}`, {
        hint: `Check that ${opts.mirror} is reachable and the disk has ~1 GB free in ${toolsDir}.`,
        details: { phase: "tools-tree", step },
      });
    };
    try {
      opts.progress?.phase("tools-tree: debootstrap");
      const r = await runStreaming(["debootstrap", "--variant=minbase", "--include=ca-certificates", "trixie", tmp, opts.mirror], { onLine: (l) => opts.progress?.line(l) });
      if (r.code !== 0) throw await fail("debootstrap", r.tail);
      opts.progress?.phase("tools-tree: apt-get install mkosi & tools");
      const inst = await installInto(tmp, TOOLS_PACKAGES, opts);
      if (!inst.versions) throw await fail(inst.step, inst.tail);
      const versions = inst.versions;
      if (!versions.mkosi || !/^(2[5-9]|[3-9]\d)\./.test(versions.mkosi)) throw await fail(`mkosi version check (got ${versions.mkosi ?? "none"})`, inst.tail);
      const manifest = { release: "trixie" as const, versions, mirror: opts.mirror, createdAt: new Date().toISOString() };
      await fs.rename(tmp, toolsTreeDir(opts.cacheDir));
      await writeManifest(opts.cacheDir, manifest);
      return { ...manifest, root: toolsTreeDir(opts.cacheDir) };
    } catch (e) {
      await fs.rm(tmp, { recursive: true, force: true });
      throw e;
    }
  });
}
