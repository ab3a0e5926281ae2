/**
 * The attestation bench's fleet (tests/bench/attest.ts): `n` agents on their own swtpm in this
 * process, so that the bench's process measures the verifier's CPU alone. Prints {"ports": [...]}
 * once they listen; stops them and exits when its stdin ends.
 */
import { startAgents } from "./attest";

async function main() {
  const [dir, n] = process.argv.slice(2);
  if (!dir || !/^\d+$/.test(n ?? "")) throw new Error("usage: attestAgents.ts <dir> <n>");
  const agents = await startAgents(dir, Number(n), 1); // tpm-1 … tpm-n: the bench's own agent is tpm-0
  process.stdout.write(`${JSON.stringify({ ports: agents.map((a) => a.port) })}\n`);
  process.stdin.resume();
  process.stdin.once("end", () => void Promise.all(agents.map((a) => a.close())).then(() => process.exit(0)));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
