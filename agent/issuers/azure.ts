/**
 * Azure TDX confidential VMs (DCesv5/ECesv5) run the image under Microsoft's paravisor: the guest
 * sees a vTPM, not the TDX module. The vTPM's NV index 0x01400001 holds the HCL report: a 32-byte
 * header, the hardware report (a 1024-byte TD report, in a 1184-byte field sized for SNP), then
 * IGVM request data {data_size, version, report_type (4 = TDX), hash_type, variable_data_size} and
 * the runtime-data JSON whose SHA-256 is the TD report's REPORTDATA and whose "HCLAkPub" key is the
 * vTPM AK (layout from kinvolk/azure-cvm-tooling az-cvm-vtpm/src/hcl and Constellation's Azure TDX
 * issuer). Azure's IMDS turns the TD report into a TD quote: POST http://169.254.169.254/acc/tdquote
 * with {"report": base64url(TD report)} → {"quote": base64url}.
 */
import * as http from "node:http";

export const HCL_HW_REPORT_OFFSET = 32;
export const TD_REPORT_SIZE = 1024;
export const HCL_DATA_OFFSET = 32 + 1184;
const TDX_REPORT_TYPE = 4;

export interface HclReport { tdReport: Buffer; runtimeData: Buffer; reportType: number }

export function parseHclReport(buf: Buffer): HclReport {
  if (buf.length < HCL_DATA_OFFSET + 20) throw new Error(`HCL report is ${buf.length} bytes, too short`);
  const reportType = buf.readUInt32LE(HCL_DATA_OFFSET + 8);
  const size = buf.readUInt32LE(HCL_DATA_OFFSET + 16);
  const start = HCL_DATA_OFFSET + 20;
  if (start + size > buf.length) throw new Error(`HCL report runtime data (${size} bytes) runs past the report`);
  return { reportType, tdReport: buf.subarray(HCL_HW_REPORT_OFFSET, HCL_HW_REPORT_OFFSET + TD_REPORT_SIZE), runtimeData: buf.subarray(start, start + size) };
}

/** Ask Azure's IMDS for the TD quote of `tdReport` (bounded response, deadline). */
export function imdsTdQuote(tdReport: Buffer, opts: { host?: string; port?: number; timeoutMs?: number } = {}): Promise<Buffer> {
  const body = JSON.stringify({ report: tdReport.toString("base64url") });
  return new Promise((resolve, reject) => {
    const req = http.request({ host: opts.host ?? "169.254.169.254", port: opts.port ?? 80, path: "/acc/tdquote", method: "POST", headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) }, timeout: opts.timeoutMs ?? 30_000 }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (c: Buffer) => {
        size += c.length;
        if (size > 2 * 1024 * 1024) return req.destroy(new Error("IMDS answer is larger than 2 MiB"));
        chunks.push(c);
      });
      res.on("end", () => {
        if (res.statusCode !== 200) return reject(new Error(`IMDS /acc/tdquote answered HTTP ${res.statusCode}`));
        try {
          const q = (JSON.parse(Buffer.concat(chunks).toString("utf8")) as { quote?: unknown }).quote;
          if (typeof q !== "string" || !q) throw new Error("no quote in the answer");
          resolve(Buffer.from(q, "base64url"));
        } catch (e) {
          reject(new Error(`IMDS /acc/tdquote: ${(e as Error).message}`));
        }
      });
    });
    req.on("timeout", () => req.destroy(new Error("IMDS /acc/tdquote timed out")));
    req.on("error", reject);
    req.end(body);
  });
}

export function isTdxHclReport(r: HclReport): boolean {
  return r.reportType === TDX_REPORT_TYPE;
}
