/**
 * The README's no-Pulumi main job, as a user runs it: `tdxvm run examples/local-qemu/recipe.ts`
 * bakes (a cache hit after the provider tests), measures, boots the disk as a local VM and
 * compares every predicted register with what the guest reports (exit 0; 3 on a mismatch).
 */
import { promises as fs } from "node:fs";
import * as path from "node:path";
import type { RunReport } from "../../provider/deploy/run";
import { parseGuestReport } from "../../provider/deploy/devboot";
import { defaultCacheDir } from "../../provider/pipeline";
import { runTdxvm as tdxvm, tempDir } from "../helpers";

jest.setTimeout(40 * 60_000);

describe("tdxvm run (bake → measure → boot → register table)", () => {
  it("boots the example and every predicted register matches the guest; its captured evidence verifies offline (tdxvm verify)", async () => {
    const r = await tdxvm(["run", "examples/local-qemu/recipe.ts", "--json", "--keep"]);
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

    // The guest's evidence, as a user captures it: the TCG2 event log, tpm2_pcrread's output and
    // systemd's measurement log (here from the serial console of the VM `--keep` left).
    const vmDir = path.dirname(report.vm.serialLog!);
    expect(path.dirname(vmDir)).toBe(path.join(defaultCacheDir(), "vms"));
    const serial = await fs.readFile(report.vm.serialLog!, "utf8");
    const dir = await tempDir("tdxvm-verify-");
    try {
      const guest = parseGuestReport(serial);
      const lines = serial.split(/\r?\n/);
      const pcrread = lines.slice(lines.findIndex((l) => l.includes("TDXVM-PCRS-BEGIN")) + 1, lines.findIndex((l) => l.includes("TDXVM-PCRS-END")));
      await fs.writeFile(path.join(dir, "eventlog.bin"), guest.eventLog);
      await fs.writeFile(path.join(dir, "pcrs.txt"), pcrread.join("\n"));
      await fs.writeFile(path.join(dir, "tpm2-measure.log"), guest.userspaceLog);
      expect((await tdxvm(["--quiet", "measure", "examples/local-qemu/recipe.ts", "--backend", "azure", "--out", path.join(dir, "azure.json")])).code).toBe(0);
      const evidence = ["--event-log", path.join(dir, "eventlog.bin"), "--pcrs", path.join(dir, "pcrs.txt"), "--userspace-log", path.join(dir, "tpm2-measure.log")];
      const v = await tdxvm(["verify", "--expected", path.join(dir, "azure.json"), ...evidence, "--json"]);
      expect(v.code).toBe(0);
      const verdicts = JSON.parse(v.stdout) as { ok: boolean; registers: Array<{ register: string; ok: boolean; reported: string | null; replayed: string | null }> };
      expect(verdicts.ok).toBe(true);
      for (const pcr of ["PCR4", "PCR9", "PCR11"]) {
        const x = verdicts.registers.find((y) => y.register === pcr)!;
        expect([x.ok, x.reported, x.replayed]).toEqual([true, row("azure", pcr).predicted, row("azure", pcr).predicted]);
      }
      // An expectation with one event changed: exit 3, naming the event.
      const expected = JSON.parse(await fs.readFile(path.join(dir, "azure.json"), "utf8"));
      expected.registers.PCR4.events[2].digest = "00".repeat(32);
      await fs.writeFile(path.join(dir, "tampered.json"), JSON.stringify(expected));
      const bad = await tdxvm(["verify", "--expected", path.join(dir, "tampered.json"), ...evidence]);
      expect(bad.code).toBe(3);
      expect(bad.stdout).toMatch(/^PCR4\s+MISMATCH/m);
      expect(bad.stdout).toContain(`PCR4: event 3 (${expected.registers.PCR4.events[2].description}) differs: expected ${"00".repeat(32)}`);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
      await fs.rm(vmDir, { recursive: true, force: true });
    }
  });

  it("a recipe file that exports no Image fails with E_VALIDATION and a hint", async () => {
    const r = await tdxvm(["run", "package.json"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^E_VALIDATION: package\.json exports no Image/m);
    expect(r.stderr).toContain("hint:");
  });
});
