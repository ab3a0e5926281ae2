/**
 * jest globalTeardown: put back the example's committed tdx.lock (saved by globalSetup: tests bake
 * variants of the example in its directory, which rewrites it), then remove the test UKI directory
 * globalSetup created (and only that).
 */
import { existsSync, readFileSync, renameSync, rmSync, copyFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { TEST_UKI_ENV } from "./fixtures/testUki";

export const EXAMPLE_LOCK = path.resolve(__dirname, "../examples/local-qemu/tdx.lock");
export const SAVED_EXAMPLE_LOCK = "example-tdx.lock";

export default function globalTeardown(): void {
  const dir = process.env[TEST_UKI_ENV];
  if (!dir || path.dirname(dir) !== os.tmpdir() || !path.basename(dir).startsWith("tdxvm-test-uki-")) return;
  const saved = path.join(dir, SAVED_EXAMPLE_LOCK);
  if (existsSync(saved) && (!existsSync(EXAMPLE_LOCK) || !readFileSync(saved).equals(readFileSync(EXAMPLE_LOCK)))) {
    const tmp = `${EXAMPLE_LOCK}.${process.pid}.tmp`;
    copyFileSync(saved, tmp);
    renameSync(tmp, EXAMPLE_LOCK);
  }
  rmSync(dir, { recursive: true, force: true });
}
