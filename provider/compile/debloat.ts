/**
 * Debloat: paths removed from the image (through mkosi's RemoveFiles=, which runs after the
 * post-installation scripts) and, optionally, systemd units disabled unless whitelisted.
 */
import { DebloatData } from "../recipe/schema";
import { shQuote } from "./shell";

/** Paths a server image does not need at run time. */
export const DEBLOAT_DEFAULT_PATHS = [
  "/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/share/locale", "/usr/share/lintian",
  "/usr/share/bash-completion", "/usr/share/zsh", "/usr/share/bug", "/usr/share/menu", "/usr/share/common-licenses",
  "/var/cache/apt", "/var/cache/debconf", "/var/lib/apt/lists", "/var/log/apt", "/var/log/dpkg.log",
];

/** Units a minimal TDX guest keeps enabled; everything else is disabled by systemdMinimize. */
export const DEBLOAT_DEFAULT_UNITS = [
  "dbus.service", "dbus.socket", "getty.target", "serial-getty@.service", "systemd-journald.service",
  "systemd-journald.socket", "systemd-networkd.service", "systemd-networkd.socket", "systemd-resolved.service",
  "systemd-udevd.service", "tdxvm-agent.service", "tdxs.socket", "tdxvm-secrets-ready.target",
];

export function debloatRemovePaths(d: DebloatData): string[] {
  if (!d.enabled) return [];
  const skip = new Set(d.pathsSkip);
  return [...new Set([...DEBLOAT_DEFAULT_PATHS, ...d.pathsRemoveExtra])].filter((p) => !skip.has(p)).sort();
}

/** Finalize-phase lines: remove `*.wants`/`*.requires` links of units not kept. */
export function systemdMinimizeScript(d: DebloatData): string[] {
  const keep = [...new Set([...DEBLOAT_DEFAULT_UNITS, ...d.unitsKeepExtra])].sort();
  return [
    `keep=${shQuote(" " + keep.join(" ") + " ")}`,
    'for link in "$BUILDROOT"/etc/systemd/system/*.wants/* "$BUILDROOT"/etc/systemd/system/*.requires/*; do',
    '  [ -L "$link" ] || continue',
    '  unit=$(basename "$link")',
    '  template=$(printf %s "$unit" | sed -n "s/@[^.]*\\./@./p")',
    '  case "$keep" in *" $unit "*) continue ;; esac',
    '  if [ -n "$template" ]; then case "$keep" in *" $template "*) continue ;; esac; fi',
    '  rm -f "$link"',
    "done",
  ];
}
