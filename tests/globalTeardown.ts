/** jest globalTeardown: remove the test UKI directory globalSetup created (and only that). */
import { rmSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { TEST_UKI_ENV } from "./fixtures/testUki";

export default function globalTeardown(): void {
  const dir = process.env[TEST_UKI_ENV];
  if (dir && path.dirname(dir) === os.tmpdir() && path.basename(dir).startsWith("tdxvm-test-uki-")) rmSync(dir, { recursive: true, force: true });
}
