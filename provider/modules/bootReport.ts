/**
 * BootReport module: a oneshot service that prints the guest's TPM PCRs (sha256 and sha384
 * banks), the firmware's TCG2 event log and systemd's measurement log on the serial console
 * between markers, at every boot. `tdxvm run` and the ground-truth tests read it
 * (parseGuestReport) to hold tdxvm's predictions against what the booted VM reports.
 *
 * It runs after systemd-pcrphase.service has extended PCR 11 with the "ready" phase: ordered only
 * after sysinit.target, it raced that extension and read PCR 11 with or without it (a ground-truth
 * boot under load reported the value without "ready", 2026-11-28).
 *
 * The console must carry nothing else while the report prints, or lines interleave: systemd's
 * status output is switched off (ShowStatus=no) and the report runs before the serial getty.
 * The report is for development and CI images: it reveals nothing secret (PCRs and event logs
 * are public measurement data), but it keeps a TPM tool in the image.
 */
import type { Image, TdxModule } from "../recipe/image";

/** The last line the report prints (a readiness pattern for VMs running such an image). */
export const REPORT_DONE = "TDXVM-REPORT-DONE";

export function reportScript(opts: { powerOff?: boolean } = {}): string {
  return `#!/bin/sh
# Print measured-boot state on the serial console for tdxvm.
exec > /dev/ttyS0 2>&1
dmesg -n 1
echo TDXVM-PCRS-BEGIN
tpm2_pcrread sha256:all+sha384:all
echo TDXVM-PCRS-END
echo TDXVM-LOG-BEGIN
base64 -w 76 /sys/kernel/security/tpm0/binary_bios_measurements
echo TDXVM-LOG-END
echo TDXVM-ULOG-BEGIN
base64 -w 76 /run/log/systemd/tpm2-measure.log
echo TDXVM-ULOG-END
echo TDXVM-CMDLINE "$(cat /proc/cmdline)"
echo ${REPORT_DONE}
${opts.powerOff ? "systemctl poweroff --no-block\n" : ""}`;
}

export const REPORT_UNIT = `[Unit]
Description=Print measured-boot state on the serial console
After=sysinit.target dev-tpmrm0.device systemd-pcrphase.service
Wants=dev-tpmrm0.device
Before=getty.target serial-getty@ttyS0.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/tdxvm-report

[Install]
WantedBy=multi-user.target
`;

export class BootReport implements TdxModule {
  readonly name = "boot-report";
  readonly version = "2";
  constructor(private readonly opts: { powerOff?: boolean } = {}) {}

  install(img: Image): void {
    img
      .install("tpm2-tools")
      .file("/usr/local/sbin/tdxvm-report", { content: reportScript(this.opts), mode: 0o755 })
      .file("/etc/systemd/system/tdxvm-report.service", { content: REPORT_UNIT })
      .file("/etc/systemd/system.conf.d/10-tdxvm-quiet-console.conf", { content: "[Manager]\nShowStatus=no\n" })
      .run("systemctl", "enable", "tdxvm-report.service");
  }
}
