/**
 * Lima backend (macOS users): the same mkosi invocation, run inside a Lima Linux VM that has
 * mkosi ≥ 25 (e.g. a Debian trixie template) with the project directory shared at the same
 * path (Lima's default home mount). It cannot run on our Linux CI; its argv is unit-tested.
 */
export function limaArgv(instance: string, cmd: string[]): string[] {
  return ["limactl", "shell", "--workdir", "/", instance, "sudo", "--preserve-env=SOURCE_DATE_EPOCH", ...cmd];
}
