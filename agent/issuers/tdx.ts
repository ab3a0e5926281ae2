/**
 * The tdx issuer: a TD quote through configfs-tsm (Linux ≥ 6.7, Documentation/ABI/testing/
 * configfs-tsm-report): create a report directory, write 64 bytes of report data to `inblob`,
 * read the quote from `outblob`; `provider` names the backend (`tdx_guest`) and `generation`
 * counts writes, so a concurrent writer to the same directory is detected (the ABI's own rule:
 * generation must be the expected value after reading outblob). The CCEL (ACPI "CCEL" table data)
 * goes alongside for RTMR replay.
 */
import { promises as fs } from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { Mutex } from "../exec";

export const TSM_REPORT_DIR = "/sys/kernel/config/tsm/report";
export const CCEL_PATH = "/sys/firmware/acpi/tables/data/CCEL";

/** The configfs operations the issuer needs (real configfs by default; tests pass a recording). */
export interface TsmOps {
  mkdir(dir: string): Promise<void>;
  read(file: string): Promise<Buffer>;
  write(file: string, data: Buffer): Promise<void>;
  rmdir(dir: string): Promise<void>;
}

export const configfs: TsmOps = {
  mkdir: async (d) => void (await fs.mkdir(d)),
  read: (f) => fs.readFile(f),
  write: (f, b) => fs.writeFile(f, b),
  rmdir: (d) => fs.rmdir(d),
};

export class TdxIssuer {
  private readonly mutex = new Mutex();
  constructor(private readonly reportRoot = TSM_REPORT_DIR, private readonly ops: TsmOps = configfs) {}

  /** Is configfs-tsm there with a TDX provider? (Creates and removes one report directory.) */
  async available(): Promise<boolean> {
    const dir = path.join(this.reportRoot, `tdxvm-probe-${randomBytes(4).toString("hex")}`);
    try {
      await this.ops.mkdir(dir);
    } catch {
      return false;
    }
    try {
      return (await this.ops.read(path.join(dir, "provider"))).toString("utf8").trim() === "tdx_guest";
    } catch {
      return false;
    } finally {
      await this.ops.rmdir(dir).catch(() => undefined);
    }
  }

  /** A TD quote whose REPORTDATA is `reportData` (exactly 64 bytes). */
  quote(reportData: Buffer): Promise<Buffer> {
    if (reportData.length !== 64) return Promise.reject(new Error(`TDX report data must be 64 bytes, got ${reportData.length}`));
    return this.mutex.lock(async () => {
      const dir = path.join(this.reportRoot, `tdxvm-${randomBytes(6).toString("hex")}`);
      await this.ops.mkdir(dir);
      try {
        const text = async (f: string) => (await this.ops.read(path.join(dir, f))).toString("utf8").trim();
        const provider = await text("provider");
        if (provider !== "tdx_guest") throw new Error(`configfs-tsm provider is ${JSON.stringify(provider)}, not tdx_guest`);
        const before = Number(await text("generation"));
        await this.ops.write(path.join(dir, "inblob"), reportData);
        const quote = await this.ops.read(path.join(dir, "outblob"));
        const after = Number(await text("generation"));
        if (after !== before + 1) throw new Error(`configfs-tsm report was written concurrently (generation ${before} → ${after})`);
        if (quote.length < 48) throw new Error(`configfs-tsm returned a ${quote.length}-byte quote`);
        return quote;
      } finally {
        await this.ops.rmdir(dir).catch(() => undefined);
      }
    });
  }
}

export async function readCcel(file = CCEL_PATH): Promise<Buffer | undefined> {
  return fs.readFile(file).catch(() => undefined);
}
