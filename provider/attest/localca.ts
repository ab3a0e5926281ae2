/**
 * The per-host local CA that certifies the dev VM's swtpm endorsement keys (docs/design.md §7).
 *
 * A dev VM's TPM is swtpm: no manufacturer certifies its EK. tdxvm therefore keeps one CA per
 * host under the cache directory (`<cacheDir>/localca/`, mode 0700, created once and atomically:
 * built in a temporary directory, then renamed), and every dev VM's `swtpm_setup` asks
 * swtpm-tools' `swtpm_localca` to issue the EK certificates with it (written by swtpm_setup into
 * the TPM's NV indices 0x01c00002 (RSA) and 0x01c00016 (ECC), TCG EK Credential Profile §2.2.1).
 * A verifier on the same host trusts exactly this CA (`localCaCertificate`). The CA key is
 * generated with GnuTLS' certtool from the tools tree and never leaves the directory; only the
 * short-lived sandbox that runs `swtpm_setup` sees it (read-only), never a running VM's.
 *
 * The directory is a trust anchor: whoever can write it can make the verifier trust their EK
 * certificates. It is used only when it is a real directory (not a link) owned by this user with
 * no access for group or others, its files likewise.
 */
import { promises as fs, existsSync, lstatSync, readFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { randomBytes, X509Certificate } from "node:crypto";
import { TdxError } from "../errors";
import { runStreaming, sandboxArgv } from "../bake/sandbox";

export const LOCAL_CA_DIR = "localca";
const KEY = "signkey.pem";
const CERT = "issuercert.pem";

export interface LocalCa {
  /** `<cacheDir>/localca`: signkey.pem (0600) and issuercert.pem. */
  dir: string;
  certificatePem: string;
}

export function localCaDir(cacheDir: string): string {
  return path.join(path.resolve(cacheDir), LOCAL_CA_DIR);
}

/** E_ATTESTATION unless `dir` and its files are this user's alone (no link, no group/other access). */
function checkPrivate(dir: string): void {
  const problems: string[] = [];
  const uid = process.getuid?.();
  for (const [p, kind] of [[dir, "directory"], [path.join(dir, CERT), "file"], [path.join(dir, KEY), "file"]] as const) {
    let st;
    try {
      st = lstatSync(p);
    } catch {
      continue; // absence is reported by the caller
    }
    if (st.isSymbolicLink()) problems.push(`${p} is a symbolic link`);
    else if (kind === "directory" ? !st.isDirectory() : !st.isFile()) problems.push(`${p} is not a ${kind}`);
    else {
      if (uid !== undefined && st.uid !== uid) problems.push(`${p} belongs to uid ${st.uid}, not to this user (${uid})`);
      if (st.mode & 0o077) problems.push(`${p} has mode ${(st.mode & 0o777).toString(8)} (group or others have access)`);
    }
  }
  if (problems.length) {
    throw new TdxError("E_ATTESTATION", `ek-certificate: the local EK CA at ${dir} is not private to this user, so it is not trusted: ${problems.join("; ")}`, {
      hint: `Someone else could have planted or read it. Remove ${dir} (tdxvm creates a new CA; running dev VMs then need a restart to be attested) or fix its owner and mode (0700 directory, 0600 files).`,
      details: { check: "ek-certificate" },
    });
  }
}

/** The CA certificate a verifier trusts for dev-VM EK certificates (PEM). */
export function localCaCertificate(cacheDir: string): string {
  const file = path.join(localCaDir(cacheDir), CERT);
  checkPrivate(localCaDir(cacheDir));
  if (!existsSync(file)) {
    throw new TdxError("E_ATTESTATION", `ek-certificate: there is no local EK CA at ${localCaDir(cacheDir)}`, {
      hint: "The CA is created when tdxvm starts its first dev VM on this host; verify on the host that started the VM (or pass its CA certificate with --ca).",
      details: { check: "ek-certificate" },
    });
  }
  return readFileSync(file, "utf8");
}

/** Create the CA once (key + self-signed certificate, via certtool in the tools tree) and return it. */
export async function ensureLocalCa(cacheDir: string, toolsRoot: string): Promise<LocalCa> {
  const dir = localCaDir(cacheDir);
  checkPrivate(dir);
  if (existsSync(path.join(dir, CERT)) && existsSync(path.join(dir, KEY))) return { dir, certificatePem: await fs.readFile(path.join(dir, CERT), "utf8") };
  await fs.mkdir(path.dirname(dir), { recursive: true });
  const tmp = `${dir}.tmp-${randomBytes(6).toString("hex")}`;
  await fs.mkdir(tmp, { mode: 0o700 });
  try {
    const template = [`cn = "tdxvm local EK CA (${os.hostname().replace(/[^A-Za-z0-9.-]/g, "_").slice(0, 64)})"`, 'organization = "tdxvm"', `serial = ${parseInt(randomBytes(6).toString("hex"), 16)}`, "expiration_days = 3650", "ca", "cert_signing_key", "crl_signing_key", ""].join("\n");
    await fs.writeFile(path.join(tmp, "ca.tmpl"), template, { mode: 0o600 });
    const script = [
      "set -eu",
      "umask 077",
      `certtool --generate-privkey --key-type=ecdsa --curve=secp384r1 --outfile /localca/${KEY}`,
      `certtool --generate-self-signed --load-privkey /localca/${KEY} --template /localca/ca.tmpl --outfile /localca/${CERT}`,
    ].join("\n");
    const r = await runStreaming(sandboxArgv(toolsRoot, ["/bin/sh", "-c", script], [{ host: tmp, inside: "/localca" }]), { tailLines: 20, timeoutMs: 60_000 });
    if (r.code !== 0) throw new TdxError("E_DEPLOYMENT", `creating the local EK CA failed (certtool exit ${r.code ?? r.signal}):\n${r.tail.join("\n")}`, { hint: "certtool comes with the tools tree (gnutls-bin); re-provision it by removing ~/.cache/tdxvm/tools and starting again." });
    await fs.rm(path.join(tmp, "ca.tmpl"));
    new X509Certificate(await fs.readFile(path.join(tmp, CERT))); // refuse to publish something unreadable
    try {
      await fs.rename(tmp, dir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== "ENOTEMPTY" && code !== "EEXIST") throw e;
      // Another process created it first: use theirs.
    }
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
  checkPrivate(dir); // also when another process won the race
  return { dir, certificatePem: await fs.readFile(path.join(dir, CERT), "utf8") };
}

/**
 * Files and arguments that make `swtpm_setup` create EK certificates with the local CA, for a
 * sandbox in which the CA directory is bound at `caInside` (read-only is enough) and a writable
 * per-VM directory at `stateInside` (where swtpm_localca keeps its serial counter and lock).
 */
export function swtpmEkCertSetup(caInside: string, stateInside: string): { files: Record<string, string>; args: string[] } {
  const files = {
    "swtpm_setup.conf": [
      "create_certs_tool = /usr/bin/swtpm_localca",
      `create_certs_tool_config = ${stateInside}/swtpm-localca.conf`,
      `create_certs_tool_options = ${stateInside}/swtpm-localca.options`,
      "",
    ].join("\n"),
    "swtpm-localca.conf": [`statedir = ${stateInside}`, `signingkey = ${caInside}/${KEY}`, `issuercert = ${caInside}/${CERT}`, `certserial = ${stateInside}/certserial`, ""].join("\n"),
    "swtpm-localca.options": ["--platform-manufacturer tdxvm", "--platform-version 1", "--platform-model qemu-dev-vm", ""].join("\n"),
    // A random starting serial: EK certificates of different VMs must not share serial numbers.
    certserial: String(parseInt(randomBytes(6).toString("hex"), 16)),
  };
  return { files, args: ["--create-ek-cert", "--config", `${stateInside}/swtpm_setup.conf`] };
}
