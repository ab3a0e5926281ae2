/**
 * jest globalSetup: what every test may rely on, made once per run by the project itself —
 * the Debian trixie tools tree (as the first bake would provision it: OVMF, ukify,
 * systemd-measure, pesign, sfdisk, python3 live there) and the test UKI built with it
 * (tests/fixtures/testUki.ts). Nothing is taken from the host beyond the README's set-up.
 */
import { copyFileSync, existsSync, mkdtempSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { defaultCacheDir } from "../provider/pipeline";
import { ensureToolsTree, missingToolsPackages, readToolsManifest } from "../provider/bake/toolsTree";
import { Progress } from "../provider/bake/progress";
import { DEFAULT_DEBIAN } from "../provider/lock";
import { buildTestUki, TEST_UKI_ENV } from "./fixtures/testUki";
import { EXAMPLE_LOCK, SAVED_EXAMPLE_LOCK } from "./globalTeardown";

/** Progress as plain lines (jest's output is rarely a TTY the status line could redraw). */
class LineProgress extends Progress {
  constructor() {
    super({ quiet: true });
  }
  override phase(name: string): void {
    super.phase(name);
    process.stderr.write(`tdxvm tests: ${name}\n`);
  }
}

export default async function globalSetup(): Promise<void> {
  if (process.getuid?.() !== 0) {
    throw new Error(
      "tdxvm's tests need root: they use the Debian trixie tools tree the project provisions (debootstrap, mounts, chroot) " +
        "and bake and boot real images. Run `sudo npm test` (see README, Tests).",
    );
  }
  const cacheDir = defaultCacheDir();
  const t0 = Date.now();
  const existing = readToolsManifest(cacheDir);
  if (!existing || missingToolsPackages(existing).length) {
    process.stderr.write(existing
      ? `\ntdxvm tests: adding ${missingToolsPackages(existing).join(", ")} to the tools tree in ${cacheDir}\n`
      : `\ntdxvm tests: provisioning the Debian trixie tools tree into ${cacheDir} (first run only: debootstrap and apt, about 600 MB)\n`);
    await ensureToolsTree({ cacheDir, mirror: DEFAULT_DEBIAN.mirror, progress: new LineProgress() });
    process.stderr.write(`tdxvm tests: tools tree ready after ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), "tdxvm-test-uki-"));
  buildTestUki(dir);
  process.env[TEST_UKI_ENV] = dir; // inherited by the test workers, which start after this
  // Tests bake variants of the example in its own directory (a config change, as a pull request
  // makes), and a non-frozen bake rewrites its lock: globalTeardown puts the committed one back.
  if (existsSync(EXAMPLE_LOCK)) copyFileSync(EXAMPLE_LOCK, path.join(dir, SAVED_EXAMPLE_LOCK));
}
