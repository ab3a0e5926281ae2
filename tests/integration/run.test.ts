/**
 * The README's no-Pulumi main job, as a user runs it: `tdxvm run examples/local-qemu/recipe.ts`
 * bakes (a cache hit after the provider tests), measures, boots the disk as a local VM and
 * compares every predicted register with what the guest reports.
 */
import { spawn } from "node:child_process";
import * as path from "node:path";
import type { RunReport } from "../../provider/deploy/run";

jest.setTimeout(40 * 60_000);

const repo = path.resolve(__dirname, "../..");

function tdxvm(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [path.join(repo, "bin/tdxvm.js"), ...args], { cwd: repo, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("exit", (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

describe("tdxvm run (bake → measure → boot → register table)", () => {
  it("boots the example and every predicted register matches the guest", async () => {
    const r = await tdxvm(["run", "examples/local-qemu/recipe.ts", "--json"]);
    expect(r.stderr).toContain("waiting for the boot report");
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as RunReport;
    expect(report.ok).toBe(true);
    const row = (b: string, reg: string) => report.rows.find((x) => x.backend.startsWith(b) && x.register === reg)!;
    for (const pcr of ["PCR4", "PCR9", "PCR11"]) {
      expect(row("azure", pcr).verdict).toBe("match");
      expect(row("azure", pcr).predicted).toMatch(/^[0-9a-f]{64}$/);
      expect(row("azure", pcr).observed).toBe(row("azure", pcr).predicted);
    }
    expect(row("azure", "PCR0").verdict).toBe("platform-defined");
    for (const reg of ["RTMR1", "RTMR2"]) {
      expect(row("rtmr", reg).verdict).toBe("match");
      expect(row("rtmr", reg).observed).toMatch(/^(\d+)\/\1 events in the guest's sha384 log$/);
    }
    expect(row("rtmr", "MRTD").predicted).toMatch(/^[0-9a-f]{96}$/);
    expect(report.vm.bootSeconds).toBeGreaterThan(0);
  });

  it("a recipe file that exports no Image fails with E_VALIDATION and a hint", async () => {
    const r = await tdxvm(["run", "package.json"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^E_VALIDATION: package\.json exports no Image/m);
    expect(r.stderr).toContain("hint:");
  });
});
