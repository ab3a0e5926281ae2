/**
 * The local EK CA is a trust anchor: a verifier trusts it, and a dev VM's TPM is certified with it.
 * It is used only when it is this user's alone — a planted, linked or shared directory is refused.
 * (Creating it runs certtool in the tools tree: tests/integration/attest.test.ts.)
 */
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { ensureLocalCa, localCaCertificate } from "../../../provider/attest/localca";
import { tempDir, tdxErrorOf } from "../../helpers";

const CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

async function fakeCa(cache: string, dirMode = 0o700, fileMode = 0o600): Promise<string> {
  const dir = path.join(cache, "localca");
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(path.join(dir, "issuercert.pem"), CERT, { mode: fileMode });
  await fs.writeFile(path.join(dir, "signkey.pem"), "key", { mode: fileMode });
  await fs.chmod(path.join(dir, "issuercert.pem"), fileMode);
  await fs.chmod(path.join(dir, "signkey.pem"), fileMode);
  await fs.chmod(dir, dirMode);
  return dir;
}

describe("local EK CA", () => {
  it("a private CA (0700 directory, 0600 files, this user's) is used as it is", async () => {
    const cache = await tempDir("tdxvm-ca-");
    await fakeCa(cache);
    expect(localCaCertificate(cache)).toBe(CERT);
    expect((await ensureLocalCa(cache, "/nonexistent-tools")).certificatePem).toBe(CERT); // no certtool run: it exists
  });

  it("refuses a CA directory others can reach, a readable signing key, or a link planted in its place", async () => {
    const open = await tempDir("tdxvm-ca-");
    await fakeCa(open, 0o755);
    let e = await tdxErrorOf(() => localCaCertificate(open));
    expect([e.code, e.details]).toEqual(["E_ATTESTATION", { check: "ek-certificate" }]);
    expect(e.message).toMatch(/localca has mode 755 \(group or others have access\)/);
    expect((await tdxErrorOf(() => ensureLocalCa(open, "/nonexistent-tools"))).message).toMatch(/not private to this user/);

    const readable = await tempDir("tdxvm-ca-");
    await fakeCa(readable, 0o700, 0o644);
    e = await tdxErrorOf(() => localCaCertificate(readable));
    expect(e.message).toMatch(/signkey\.pem has mode 644/);

    const linked = await tempDir("tdxvm-ca-");
    const elsewhere = await fakeCa(await tempDir("tdxvm-ca-planted-"));
    await fs.symlink(elsewhere, path.join(linked, "localca"));
    e = await tdxErrorOf(() => localCaCertificate(linked));
    expect(e.message).toMatch(/localca is a symbolic link/);
  });
});
