/**
 * While materializeRuntime writes a secret it sits in a temporary file beside its target (renamed
 * into place when every file is written). From the moment it exists that temporary must be readable
 * by its owner only, whatever mode the target gets later and whatever the process umask is. The
 * test watches every file the code opens below its root (fs.promises.open, called through) and
 * reads the new file's mode from the open handle.
 */
import { promises as fsp } from "node:fs";
import * as path from "node:path";
import { Init } from "../../provider/modules/init";
import { SecretSchema, SecretTarget } from "../../provider/secrets";
import { tempDir } from "../helpers";

describe("SecretsDelivery.materializeRuntime staging", () => {
  it("creates every temporary with mode 0600 and no content, before its final mode (even 0644 or 0444) is applied", async () => {
    const root = await tempDir("tdxvm-staging-");
    const d = new Init({
      secrets: {
        A: { targets: [SecretTarget.file("/run/app/a.conf", { mode: 0o644 })] },
        B: { schema: SecretSchema.bytes(), targets: [SecretTarget.file("/run/app/b.bin", { mode: 0o444 })] },
        C: { targets: [SecretTarget.env("C")] },
      },
    }).secretsDelivery("http_post");
    const opened: Array<{ file: string; mode: number; size: number }> = [];
    const realOpen = fsp.open.bind(fsp);
    const spy = jest.spyOn(fsp, "open").mockImplementation(async (...args: Parameters<typeof fsp.open>) => {
      const fh = await realOpen(...args);
      if (String(args[0]).startsWith(root)) {
        const st = await fh.stat();
        opened.push({ file: path.relative(root, String(args[0])), mode: st.mode & 0o7777, size: st.size });
      }
      return fh;
    });
    const umask = process.umask(0); // the staging mode must not rely on the umask
    try {
      await d.materializeRuntime(root, { A: "a", B: Buffer.from("b").toString("base64"), C: "c" });
    } finally {
      process.umask(umask);
      spy.mockRestore();
    }
    const staged = opened.filter((o) => /\.tmp$/.test(o.file));
    expect(staged.map((o) => o.file.replace(/\.tdxvm-[0-9a-f]+\.tmp$/, "")).sort()).toEqual(["run/app/a.conf", "run/app/b.bin", "run/tdxvm/secrets.env"]);
    for (const o of staged) expect({ file: o.file, mode: o.mode, size: o.size }).toEqual({ file: o.file, mode: 0o600, size: 0 });
    const mode = async (p: string) => (await fsp.stat(path.join(root, p))).mode & 0o7777;
    expect([await mode("run/app/a.conf"), await mode("run/app/b.bin"), await mode("run/tdxvm/secrets.env")]).toEqual([0o644, 0o444, 0o400]);
    const left = (await fsp.readdir(path.join(root, "run/app"))).filter((f) => f.endsWith(".tmp"));
    expect(left).toEqual([]);
    await fsp.rm(root, { recursive: true, force: true });
  });
});
