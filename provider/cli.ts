/**
 * The tdxvm CLI (CI and machines without Pulumi), on commander: `tdxvm <command> --help` for
 * each command. Results go to stdout, progress to stderr (`--quiet` silences it).
 *
 * Exit codes: 0 ok · 1 unexpected error · 2 usage error or a TdxError (code and hint printed) ·
 * 3 measurements do not match (measure --check, verify, attest, run).
 *
 * A command is one function that registers itself on the program (COMMANDS at the end); its
 * action returns the exit code. A recipe module exports an Image, or a function returning one,
 * as default, as `recipe` or as module.exports.
 */
import * as path from "node:path";
import { promises as fs, existsSync } from "node:fs";
import { Command, CommanderError, Option } from "commander";
import { TdxError } from "./errors";
import type { Image } from "./recipe/image";
import { writeFileAtomic } from "./lock/files";
import type { BakeOptions } from "./bake";
import type { Backend, Measurements, RegisterDiff, RegisterValue } from "./measure/ledger";
import { pinOf } from "./measure/ledger";
import type { Format } from "./measure/formats";

export const EXIT = { OK: 0, UNEXPECTED: 1, USAGE: 2, MISMATCH: 3, PACKAGES: 4 } as const;

export interface Ctx {
  cacheDir: string;
  quiet: boolean;
  /** Progress on stderr (silent with --quiet). */
  log(msg: string): void;
}

/** Wraps a command's handler: it gets the global context and returns its exit code. */
type Act = <A extends unknown[]>(fn: (ctx: Ctx, ...args: A) => Promise<number | void>) => (...args: A) => Promise<void>;

export function loadRecipe(file: string): Image {
  const { Image } = require("./recipe/image") as typeof import("./recipe/image");
  const abs = path.resolve(file);
  let mod: Record<string, unknown> | (() => unknown);
  try {
    mod = require(abs);
  } catch (e) {
    throw new TdxError("E_VALIDATION", `cannot load recipe ${file}: ${(e as Error).message.split("\n")[0]}`, { hint: "Pass a .ts/.js module that exports an Image (default, `recipe` or module.exports)." });
  }
  const candidate = typeof mod === "function" ? mod : mod.default ?? mod.recipe;
  const value = typeof candidate === "function" ? (candidate as () => unknown)() : candidate;
  if (!(value instanceof Image)) throw new TdxError("E_VALIDATION", `${file} exports no Image`, { hint: "export default function recipe() { return new Image({...}) }" });
  return value;
}

/** A file from the command line, bounded (evidence and measurement files are small). */
async function readInput(file: string, what: string, maxBytes = 64 * 1024 * 1024): Promise<Buffer> {
  const st = await fs.stat(file).catch(() => undefined);
  if (!st?.isFile()) throw new TdxError("E_VALIDATION", `${what} ${file} is not a readable file`, { hint: "Check the path." });
  if (st.size > maxBytes) throw new TdxError("E_VALIDATION", `${what} ${file} is ${st.size} bytes (limit ${maxBytes})`, { hint: "Pass the captured file itself." });
  return fs.readFile(file);
}

function fmtBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function fmtAge(ms: number): string {
  const s = Math.max(0, ms / 1000);
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

const short = (v: string | null) => (v === null ? "—" : `${v.slice(0, 16)}…`);

function table(rows: string[][]): string {
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) => r.map((c, i) => (i < r.length - 1 ? c.padEnd(w[i]) : c)).join("  ")).join("\n");
}

const frozenOptions = (c: Command) => c
  .option("--frozen", "bake only against the committed tdx.lock (default where CI=true and the lock exists)")
  .option("--no-frozen", "re-resolve and rewrite tdx.lock even where CI=true");

const recipeOptions = (c: Command) => frozenOptions(c)
  .option("--profile <name>", "recipe profile (default: default)")
  .option("--archive <dir-or-url>", "a package archive (tdxvm archive export) to install pinned packages from that the Debian mirror no longer offers");

/** CI=true (GitHub Actions, GitLab, most CI systems) or CI=1. */
export const isCi = (env: NodeJS.ProcessEnv = process.env) => env.CI === "true" || env.CI === "1";

/**
 * --frozen / --no-frozen as given; otherwise frozen where CI=true and the project has a committed
 * lock (the way `npm ci` installs exactly package-lock.json): CI bakes what was reviewed.
 */
export function resolveFrozen(given: boolean | undefined, projectDir: string, ctx?: Pick<Ctx, "log">): boolean {
  if (given !== undefined) return given;
  const { lockFileOf } = require("./lock") as typeof import("./lock");
  const { existsSync } = require("node:fs") as typeof import("node:fs");
  const frozen = isCi() && existsSync(lockFileOf(projectDir));
  if (frozen) ctx?.log("CI is set and the project has a tdx.lock: baking frozen against it (--no-frozen re-resolves)");
  return frozen;
}

function bakeOpts(ctx: Ctx, o: { frozen?: boolean; profile?: string; archive?: string }, img: Image): BakeOptions {
  return { cacheDir: ctx.cacheDir, frozen: resolveFrozen(o.frozen, img.projectDir, ctx), profile: o.profile, quiet: ctx.quiet, archive: o.archive };
}

// ── lock, emit, bake, run ────────────────────────────────────────────────────────────────────

function lockCommand(program: Command, act: Act): void {
  program.command("lock").description("write tdx.lock beside the recipe (commit it); --refresh re-resolves its Debian packages and shows what moves").argument("<recipe>", "recipe module (.ts/.js)")
    .option("--refresh", "drop the package pins, bake, and print the package changes and the registers they move")
    .option("--profile <name>", "with --refresh: the profile to bake (default: default)")
    .option("--against <files...>", "with --refresh: tdxvm measurements files (e.g. the committed ones) to show register changes against; default: the current lock's bake, when the cache has it")
    .option("--archive <dir-or-url>", "with --refresh: a package archive for the current lock's bake")
    .option("--json", "with --refresh: print the changes as JSON")
    .option("--snapshot <ts>", "pin a Debian snapshot: a timestamp (20261201T000000Z), none (the live mirror), or auto: keep the lock's, else pin now where snapshot.debian.org answers", "auto")
    .action(act(async (ctx, recipe: string, o: { refresh?: boolean; profile?: string; against?: string[]; archive?: string; json?: boolean; snapshot: string }) => {
      const img = loadRecipe(recipe);
      const { chooseSnapshot, lockFileOf, readLock, DEFAULT_DEBIAN } = await import("./lock");
      const current = await readLock(lockFileOf(img.projectDir)).catch(() => undefined);
      // A refresh moves a pinned snapshot forward too.
      const snapshot = await chooseSnapshot(o.snapshot, { ...DEFAULT_DEBIAN, ...current?.debian, ...(o.refresh ? { snapshot: null } : {}) }, ctx.log);
      if (!o.refresh) {
        if (o.against || o.json || o.profile) throw new TdxError("E_VALIDATION", "--against, --profile and --json go with --refresh", { hint: "tdxvm lock <recipe> --refresh --against measurements.rtmr.json" });
        const lock = await img.lock({ cacheDir: ctx.cacheDir, debian: { snapshot } });
        console.log(`wrote ${path.join(img.projectDir, "tdx.lock")} (${Object.keys(lock.recipe.profiles).length} profile(s); bake once to pin its Debian packages)`);
        return;
      }
      const { refreshLock, formatRefresh } = await import("./lock/refresh");
      const r = await refreshLock(img, { cacheDir: ctx.cacheDir, profile: o.profile, against: o.against, archive: o.archive, quiet: ctx.quiet, log: ctx.log, snapshot });
      console.log(o.json ? JSON.stringify(r, null, 2) : formatRefresh(r));
    }));
}

function emitCommand(program: Command, act: Act): void {
  frozenOptions(program.command("emit").description("write the recipe's mkosi tree to build/mkosi").argument("<recipe>", "recipe module (.ts/.js)"))
    .action(act(async (ctx, recipe: string, o: { frozen?: boolean }) => {
      const img = loadRecipe(recipe);
      const r = await img.emit({ cacheDir: ctx.cacheDir, frozen: resolveFrozen(o.frozen, img.projectDir, ctx) });
      console.log(`wrote mkosi tree to ${r.dir} (${r.tree.size} files)`);
    }));
}

function bakeCommand(program: Command, act: Act): void {
  recipeOptions(program.command("bake").description("bake the image with mkosi (cached) and list its artifacts").argument("<recipe>", "recipe module (.ts/.js)"))
    .option("--no-cache", "build again even when the artifact cache has this image")
    .option("--json", "print the bake result as JSON")
    .action(act(async (ctx, recipe: string, o: { frozen?: boolean; profile?: string; archive?: string; cache: boolean; json?: boolean }) => {
      const img = loadRecipe(recipe);
      const r = await img.bake({ ...bakeOpts(ctx, o, img), useCache: o.cache });
      if (o.json) return void console.log(JSON.stringify(r, null, 2));
      console.log(`baked profile ${r.profile}${r.cacheHit ? " (cache hit)" : ""}; systemd-stub ${r.systemdStub ?? "unknown"}; report: ${path.join(img.projectDir, "build", "report.json")}`);
      for (const x of r.artifacts) console.log(`  ${x.target.padEnd(5)} ${x.kind.padEnd(7)} ${(x.size / 1048576).toFixed(1).padStart(8)} MiB  sha256:${x.sha256}  ${x.path}`);
    }));
}

function runCommand(program: Command, act: Act): void {
  recipeOptions(program.command("run").description("bake, measure, boot a local VM and compare every register with the guest (exit 3 on a mismatch)").argument("<recipe>", "recipe module (.ts/.js)"))
    .option("--keep", "keep the VM's state directory (serial log)")
    .option("--json", "print the report as JSON")
    .action(act(async (ctx, recipe: string, o: { frozen?: boolean; profile?: string; archive?: string; keep?: boolean; json?: boolean }) => {
      const { bootAndCompare, formatRunReport } = await import("./deploy/run");
      const img = loadRecipe(recipe);
      const r = await img.bake(bakeOpts(ctx, o, img));
      ctx.log(`baked profile ${r.profile}${r.cacheHit ? " (cache hit)" : ""}`);
      const report = await bootAndCompare(r, { cacheDir: ctx.cacheDir, keep: o.keep === true, onProgress: ctx.log });
      console.log(o.json ? JSON.stringify(report, null, 2) : formatRunReport(report));
      return report.ok ? EXIT.OK : EXIT.MISMATCH;
    }));
}

// ── measure, diff, verify ────────────────────────────────────────────────────────────────────

/** How a register is pinned, as the tables print it: WAIVED and NOT PINNED stand out. */
function pinLabel(r: RegisterValue): string {
  const pin = pinOf(r);
  return pin === "waived" ? `WAIVED (${r.waived})` : pin === "unpinned" ? "NOT PINNED" : pin;
}

function registersTable(m: Measurements): string {
  return table([["register", "pinned", "value"], ...Object.entries(m.registers).map(([n, r]) => [n, pinLabel(r), r.value ?? `— ${r.why ?? ""}`])]);
}

function registersMarkdown(m: Measurements): string {
  const rows = Object.entries(m.registers).map(([n, r]) => `| ${n} | ${pinLabel(r).replace(/\|/g, "\\|")} | ${r.value === null ? "—" : `\`${r.value}\``} | ${r.value === null ? (r.why ?? "").replace(/\|/g, "\\|") : `${r.events.length} event(s)`} |`);
  return [`### Measurements (${m.backend})`, "", "| register | pinned | value | events |", "|---|---|---|---|", ...rows].join("\n");
}

interface MeasureOpts {
  backend: Backend; frozen?: boolean; profile?: string; archive?: string; firmware?: string; pageOrder?: "single-pass" | "two-pass"; capturedCcel?: string;
  json?: boolean; markdown?: boolean; format: Format; out?: string; check?: string; update?: boolean;
  uki?: string; disk?: string; rootfs?: "verity" | "initrd" | "none"; waive?: string[]; endorsement?: string[]; ramGib?: number; tdShape?: string[];
}

function measureCommand(program: Command, act: Act): void {
  recipeOptions(program.command("measure")
    .description("bake (cached) and compute the registers a platform will report; --check guards a committed file (exit 3 on drift). With --uki and --disk instead of a recipe: measure those files")
    .argument("[recipe]", "recipe module (.ts/.js)"))
    .option("--uki <file>", "measure this UKI (with --disk) instead of baking a recipe: artifacts built or published elsewhere")
    .option("--disk <file>", "the GPT disk image that goes with --uki")
    .addOption(new Option("--rootfs <mode>", "with --uki: how the image's root file system is measured (default: verity when the UKI's command line names a roothash=, else none)").choices(["verity", "initrd", "none"]))
    .addOption(new Option("--backend <backend>", "rtmr (TD on QEMU/KVM), azure (vTPM PCRs) or gcp").choices(["rtmr", "azure", "gcp"]).makeOptionMandatory())
    .option("--firmware <file>", "TDVF firmware for MRTD (rtmr default: Debian trixie's OVMF.fd; gcp: Google's)")
    .addOption(new Option("--page-order <order>", "MRTD page order of the host stack").choices(["single-pass", "two-pass"]))
    .option("--captured-ccel <file>", "a CCEL captured on the target host and VM shape: makes RTMR0 exact")
    .option("--td-shape <file.json>", "rtmr: predict RTMR0 for this QEMU TD shape (memory, ACPI blobs, boot variables; see README); repeat for an envelope of host shapes", collect)
    .option("--waive <REG:reason>", "accept a platform-defined register unchecked, shown as WAIVED (<reason>) to every verifier; repeatable", collect)
    .option("--endorsement <file>", "gcp: Google's launch endorsement of the firmware (.binarypb): pins MRTD (endorsed); repeat for an envelope (current and next firmware)", collect)
    .option("--ram-gib <n>", "gcp with --endorsement: the VM's memory in GiB", count("--ram-gib", 65_536))
    .addOption(new Option("--json", "print the measurements file (in --format) instead of a table").conflicts("markdown"))
    .option("--markdown", "print a markdown table")
    .addOption(new Option("--format <format>", "file format of --out and --json").choices(["tdxvm", "flashbots", "constellation"]).default("tdxvm"))
    .option("--out <file>", "write the measurements file (atomically)")
    .option("--check <file>", "compare with a committed tdxvm measurements file: exit 3 and a markdown diff when registers drifted")
    .option("--update", "with --check: rewrite the file with the new measurements instead of failing")
    .action(act(async (ctx, recipe: string | undefined, o: MeasureOpts) => {
      if (o.update && !o.check) throw new TdxError("E_VALIDATION", "--update needs --check <file>", { hint: "tdxvm measure <recipe> --backend … --check measurements.json --update" });
      const given = o.uki !== undefined || o.disk !== undefined;
      if (given === (recipe !== undefined) || (given && !(o.uki && o.disk))) throw new TdxError("E_VALIDATION", "measure needs a recipe, or --uki and --disk (not both)", { hint: "tdxvm measure recipe.ts --backend azure, or tdxvm measure --uki tdxvm.efi --disk tdxvm.raw --backend azure" });
      if (given && (o.frozen !== undefined || o.profile || o.archive)) throw new TdxError("E_VALIDATION", "--frozen, --profile and --archive choose what a recipe bakes: they do not go with --uki", { hint: "Drop them, or measure the recipe instead." });
      if (!given && o.rootfs) throw new TdxError("E_VALIDATION", "--rootfs goes with --uki: a recipe's bake knows its root file system", { hint: "Drop --rootfs." });
      if ((o.tdShape?.length ?? 0) > 1 && (o.endorsement?.length ?? 0) > 1) throw new TdxError("E_VALIDATION", "an envelope varies one thing: several --td-shape or several --endorsement, not both", { hint: "Measure each firmware's envelope separately." });
      const measureOpts = { backend: o.backend, firmware: o.firmware, pageOrder: o.pageOrder, capturedCcel: o.capturedCcel, tdShape: o.tdShape?.[0], cacheDir: ctx.cacheDir };
      const what = given ? `--uki ${o.uki} --disk ${o.disk}${o.rootfs ? ` --rootfs ${o.rootfs}` : ""}` : recipe!;
      const { diffMeasurements, diffToMarkdown, measurementsToJson, parseWaivers, waiveRegisters } = await import("./measure/ledger");
      const waive = parseWaivers(o.waive ?? [], "--waive");
      const img = given ? undefined : loadRecipe(recipe!);
      const measureWith = async (tdShape: string | undefined) => (img
        ? img.measure({ ...measureOpts, tdShape, bake: bakeOpts(ctx, o, img) })
        : (await import("./measure/api")).measureArtifacts({ uki: o.uki!, disk: o.disk!, rootfs: o.rootfs }, { ...measureOpts, tdShape }));
      const endorse = async (x: Measurements, file: string) => (await import("./attest/gcpEndorsement")).withEndorsedMrtd(x, await readInput(file, "--endorsement", 256 * 1024), { ramGib: o.ramGib });
      // The first --td-shape / --endorsement is the base; each further one joins the envelope under its file name.
      const label = (f: string) => path.basename(f).replace(/\.(json|binarypb)$/, "").replace(/[^A-Za-z0-9._:@+-]/g, "_").slice(0, 100);
      let measured = await measureWith(o.tdShape?.[0]);
      if (o.endorsement?.length) measured = await endorse(measured, o.endorsement[0]!);
      const others = o.tdShape && o.tdShape.length > 1 ? o.tdShape : o.endorsement && o.endorsement.length > 1 ? o.endorsement : [];
      if (others.length) {
        const { withAlternatives } = await import("./measure/ledger");
        const rest = [];
        for (const f of others.slice(1)) rest.push({ label: label(f), m: o.tdShape && o.tdShape.length > 1 ? await measureWith(f) : await endorse(measured, f) });
        measured = withAlternatives(measured, label(others[0]!), rest);
      }
      const m = Object.keys(waive).length ? waiveRegisters(measured, waive) : measured;
      // The interop formats and the reader of committed files (zod) are loaded only when used.
      const formatted = async (f: Format) => (f === "tdxvm" ? measurementsToJson(m) : (await import("./measure/formats")).formatMeasurements(m, f));
      if (o.out) {
        await writeFileAtomic(o.out, await formatted(o.format));
        ctx.log(`wrote ${o.out} (${o.format})`);
      }
      if (o.json) console.log((await formatted(o.format)).trimEnd());
      else if (o.markdown) console.log(registersMarkdown(m));
      else if (!o.check) console.log(registersTable(m));
      if (!o.check) return;
      const exists = await fs.stat(o.check).then(() => true, () => false);
      if (!exists && !o.update) throw new TdxError("E_VALIDATION", `${o.check} does not exist`, { hint: `Create it: tdxvm measure ${what} --backend ${o.backend} --check ${o.check} --update (then review and commit it).` });
      const committed = exists ? await (await import("./measure/formats")).readMeasurements(o.check) : undefined;
      if (committed && committed.backend !== o.backend) throw new TdxError("E_VALIDATION", `${o.check} holds ${committed.backend} measurements, not ${o.backend}`, { hint: "Check each backend against its own file." });
      const diffs = committed ? diffMeasurements(committed, m) : [];
      // With --json, stdout stays one JSON document: the diff goes to stderr.
      if (diffs.length) (o.json ? console.error : console.log)(diffToMarkdown(diffs, `Measurement changes (${o.backend}): ${o.check} → this image`).trimEnd());
      if (o.update) {
        const text = measurementsToJson(m);
        if (!exists || (await fs.readFile(o.check, "utf8")) !== text) {
          await writeFileAtomic(o.check, text);
          ctx.log(`updated ${o.check} (${exists ? `${diffs.length} register(s) changed` : "new file"})`);
        } else ctx.log(`${o.check} is up to date`);
        return EXIT.OK;
      }
      if (!diffs.length) {
        ctx.log(`${o.check}: all ${Object.keys(m.registers).length} registers match`);
        return EXIT.OK;
      }
      console.error(`tdxvm: ${o.check}: ${diffs.length} register(s) drifted from the committed file. If the change is intended: tdxvm measure ${what} --backend ${o.backend} --check ${o.check} --update`);
      return EXIT.MISMATCH;
    }));
}

function diffText(diffs: RegisterDiff[]): string {
  if (!diffs.length) return "No register changes.";
  return diffs.map((d) => [`${d.register}: ${short(d.old)} → ${short(d.new)}`, ...d.changes.map((c) => `  - ${c}`)].join("\n")).join("\n");
}

function diffCommand(program: Command, act: Act): void {
  program.command("diff").description("which registers changed between two measurements files, and why (from their ledgers)")
    .argument("<old>", "tdxvm measurements file").argument("<new>", "tdxvm measurements file")
    .addOption(new Option("--markdown", "a markdown table (for a pull-request comment)").conflicts("json"))
    .option("--json", "the changes as JSON")
    .action(act(async (_ctx, oldFile: string, newFile: string, o: { markdown?: boolean; json?: boolean }) => {
      const { readMeasurements } = await import("./measure/formats");
      const { diffMeasurements, diffToMarkdown } = await import("./measure/ledger");
      const [a, b] = [await readMeasurements(oldFile), await readMeasurements(newFile)];
      if (a.backend !== b.backend) throw new TdxError("E_VALIDATION", `${oldFile} holds ${a.backend} and ${newFile} ${b.backend} measurements`, { hint: "Compare files of the same backend." });
      const diffs = diffMeasurements(a, b);
      console.log(o.json ? JSON.stringify(diffs, null, 2) : o.markdown ? diffToMarkdown(diffs, `Measurement changes (${a.backend})`, b).trimEnd() : diffText(diffs));
    }));
}

/** PCR values: JSON {"sha256": {"4": "<hex>"}} or tpm2_pcrread's output. */
async function readPcrs(file: string): Promise<Record<string, Record<number, string>>> {
  const text = (await readInput(file, "--pcrs", 1024 * 1024)).toString("utf8");
  const { z } = await import("zod");
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    const { parsePcrRead } = await import("./deploy/devboot");
    const pcrs = parsePcrRead(text.split(/\r?\n/));
    if (!Object.keys(pcrs).length) throw new TdxError("E_VALIDATION", `--pcrs ${file} is neither JSON nor tpm2_pcrread output`, { hint: 'Pass {"sha256": {"4": "<hex>", …}} or the output of `tpm2_pcrread sha256:0-23`.' });
    return pcrs;
  }
  const r = z.record(z.enum(["sha1", "sha256", "sha384", "sha512"]), z.record(z.string().regex(/^\d{1,2}$/), z.string().regex(/^(0x)?[0-9a-fA-F]{40,128}$/))).safeParse(json);
  if (!r.success) throw new TdxError("E_VALIDATION", `--pcrs ${file}: expected {"<bank>": {"<index>": "<hex>"}}`, { hint: 'e.g. {"sha256": {"4": "…", "9": "…", "11": "…"}}' });
  return Object.fromEntries(Object.entries(r.data).map(([bank, v]) => [bank, Object.fromEntries(Object.entries(v).map(([i, h]) => [Number(i), h.replace(/^0x/, "").toLowerCase()]))]));
}

interface VerifyOpts { expected: string; eventLog?: string; pcrs?: string; userspaceLog?: string; quote?: string; ccel?: string; json?: boolean }

function verifyCommand(program: Command, act: Act): void {
  program.command("verify")
    .description("check captured evidence offline against expected measurements: replay the logs, compare events and values (exit 3 on a mismatch; signatures are not checked)")
    .requiredOption("--expected <file>", "tdxvm measurements file (tdxvm measure --out)")
    .addOption(new Option("--event-log <file>", "TCG2 event log (binary_bios_measurements)").conflicts(["quote", "ccel"]))
    .option("--pcrs <file>", "PCR values read from the guest (JSON or tpm2_pcrread output)")
    .option("--userspace-log <file>", "systemd's /run/log/systemd/tpm2-measure.log")
    .addOption(new Option("--quote <file>", "TDX quote (its MRTD and RTMRs)").conflicts(["pcrs", "userspaceLog"]))
    .option("--ccel <file>", "TDX CCEL event log")
    .option("--json", "the verdicts as JSON")
    .action(act(async (_ctx, o: VerifyOpts) => {
      if (!o.eventLog && !o.quote && !o.ccel) throw new TdxError("E_VALIDATION", "verify needs evidence: --event-log F [--pcrs F] [--userspace-log F], or --quote F [--ccel F]", { hint: "Capture them from the guest (/sys/kernel/security/tpm0/binary_bios_measurements, tpm2_pcrread, the TD quote or CCEL)." });
      const { readMeasurements } = await import("./measure/formats");
      const { verify } = await import("./measure/verify");
      const expected = await readMeasurements(o.expected);
      const r = verify(expected, {
        eventLog: o.eventLog ? await readInput(o.eventLog, "--event-log") : undefined,
        pcrs: o.pcrs ? await readPcrs(o.pcrs) : undefined,
        userspaceLog: o.userspaceLog ? (await readInput(o.userspaceLog, "--userspace-log")).toString("utf8") : undefined,
        quote: o.quote ? await readInput(o.quote, "--quote", 1024 * 1024) : undefined,
        ccel: o.ccel ? await readInput(o.ccel, "--ccel") : undefined,
      });
      if (o.json) console.log(JSON.stringify(r, null, 2));
      else {
        console.log(table([["register", "verdict", "expected", "replayed", "reported"], ...r.registers.map((v) => [v.register, v.ok ? "ok" : "MISMATCH", short(v.expected), short(v.replayed), short(v.reported)])]));
        for (const v of r.registers) for (const p of v.problems) console.log(`  ${v.register}: ${p}`);
        console.log(`${r.ok ? "OK" : "MISMATCH"}: ${r.registers.length} register(s) of ${expected.backend} judged (platform-defined ones are not); offline, the evidence's signature is not checked.`);
      }
      return r.ok ? EXIT.OK : EXIT.MISMATCH;
    }));
}

interface AttestOpts {
  expected: string; json?: boolean; ca?: string; collateral?: string; pccsUrl?: string; tcbStatus?: string; minTeeTcbSvn?: string; allowSimulator?: boolean; waive?: string[];
  endorsement?: string; ramGib?: number; minFirmwareSvn?: number;
}

/** A commander parser for a non-negative integer up to `max`. */
const count = (flag: string, max: number) => (v: string): number => {
  if (!/^\d{1,10}$/.test(v) || Number(v) > max) throw new TdxError("E_VALIDATION", `${flag} takes a whole number from 0 to ${max}, not ${JSON.stringify(v.slice(0, 20))}`);
  return Number(v);
};

/** A repeatable option's collector. */
const collect = (v: string, prev: string[] | undefined): string[] => [...(prev ?? []), v];

/** A commander parser for a positive number of seconds (at most a day). */
const seconds = (flag: string) => (v: string): number => {
  const n = Number(v);
  if (!/^\d+(\.\d+)?$/.test(v) || !(n > 0) || n > 86_400) throw new TdxError("E_VALIDATION", `${flag} takes seconds (0 < n ≤ 86400), not ${JSON.stringify(v.slice(0, 20))}`);
  return n;
};

function attestCommand(program: Command, act: Act): void {
  const attestOptions = (c: Command) => c
    .requiredOption("--expected <file>", "tdxvm measurements file (tdxvm measure --out)")
    .option("--json", "the verdict as JSON")
    .option("--ca <pem>", "the local EK CA of dev VMs (default: the one in the cache)")
    .option("--collateral <file>", "DCAP collateral for offline TDX verification")
    .option("--pccs-url <url>", "PCCS to fetch DCAP collateral from")
    .option("--tcb-status <list>", "accepted TCB statuses, comma-separated (default UpToDate)")
    .option("--min-tee-tcb-svn <hex>", "lowest TEE_TCB_SVN to accept, 32 hex digits, each component ≥ (TD quotes)")
    .option("--allow-simulator", "accept the agent's simulator issuer (labelled SIMULATOR in every row)")
    .option("--waive <REG:reason>", "accept a register unchecked, shown as WAIVED (<reason>) in every output; repeatable", collect)
    .option("--endorsement <file|fetch>", "GCP: Google's launch endorsement (.binarypb) that pins MRTD, or \"fetch\" to get it by the quote's MRTD from Google's bucket")
    .option("--ram-gib <n>", "GCP: the VM's memory in GiB (endorsement entries for other sizes do not match)", count("--ram-gib", 65_536))
    .option("--min-firmware-svn <n>", "GCP: lowest firmware SVN (from the endorsement) to accept", count("--min-firmware-svn", 0xffffffff))
    .option("--timeout <seconds>", "one deadline for the whole attestation, every request included (default 120)", seconds("--timeout"))
    .option("--wait <seconds>", "keep asking an agent that cannot be asked yet (no connection, 503: still booting) this long (default 0: ask once)", seconds("--wait"));
  const attestNow = async (ctx: Ctx, endpoint: string, o: AttestOpts & { timeout?: number; wait?: number }) => {
    const { attestUntil } = await import("./attest/client");
    const { readExpected, formatVerdict } = await import("./attest/cli");
    const expected = await readExpected(o.expected);
    const { parseWaivers } = await import("./measure/ledger");
    const waive = parseWaivers(o.waive ?? [], "--waive");
    const gcp = o.endorsement === undefined ? undefined : {
      ...(o.endorsement === "fetch" ? { fetch: true } : { endorsement: await readInput(o.endorsement, "--endorsement", 256 * 1024) }),
      ramGib: o.ramGib, minSvn: o.minFirmwareSvn,
    };
    if (!gcp && (o.ramGib !== undefined || o.minFirmwareSvn !== undefined)) throw new TdxError("E_VALIDATION", "--ram-gib and --min-firmware-svn qualify an endorsement", { hint: "Add --endorsement F (or --endorsement fetch)." });
    const v = await attestUntil(endpoint, expected, {
      waive, gcp,
      timeoutMs: (o.timeout ?? 120) * 1000,
      waitMs: (o.wait ?? 0) * 1000,
      allowSimulator: o.allowSimulator === true,
      cacheDir: ctx.cacheDir,
      ...(o.ca ? { localCaPem: (await readInput(o.ca, "--ca", 1024 * 1024)).toString("utf8") } : {}),
      dcap: {
        ...(o.collateral ? { collateralFile: o.collateral } : {}),
        ...(o.pccsUrl ? { pccsUrl: o.pccsUrl } : {}),
        ...(o.tcbStatus ? { acceptedTcbStatuses: o.tcbStatus.split(",").map((x) => x.trim()).filter(Boolean) } : {}),
        ...(o.minTeeTcbSvn ? { minTeeTcbSvn: o.minTeeTcbSvn } : {}),
      },
    });
    console.log(o.json ? JSON.stringify({ ...v, evidence: undefined }, null, 2) : formatVerdict(v));
    return v;
  };
  attestOptions(program.command("attest").description("challenge a running VM's agent and verify its signed evidence against expected measurements (exit 3 unless everything matches)")
    .argument("<endpoint>", "the agent's host:port"))
    .action(act(async (ctx, endpoint: string, o: AttestOpts & { timeout?: number; wait?: number }) => ((await attestNow(ctx, endpoint, o)).ok ? EXIT.OK : EXIT.MISMATCH)));
  attestOptions(program.command("provision").description("attest a running VM, then deliver its secrets sealed to the attested key and signed by the image's owner (exit 3, nothing sent, unless the attestation passes)")
    .argument("<endpoint>", "the agent's host:port")
    .requiredOption("--owner-key <file>", "the image owner's private key (tdxvm owner-key new)")
    .requiredOption("--secrets <file>", "JSON object of secret name → value (never printed)"))
    .action(act(async (ctx, endpoint: string, o: AttestOpts & { timeout?: number; wait?: number; ownerKey: string; secrets: string }) => {
      const ownerKey = (await readInput(o.ownerKey, "--owner-key", 64 * 1024)).toString("utf8");
      let payload: unknown;
      try {
        payload = JSON.parse((await readInput(o.secrets, "--secrets", 16 * 1024 * 1024)).toString("utf8"));
      } catch (e) {
        if (e instanceof TdxError) throw e;
        throw new TdxError("E_VALIDATION", `--secrets ${o.secrets} is not JSON`, { hint: 'Write the secrets as {"NAME": "value", …}.' });
      }
      if (!payload || typeof payload !== "object" || Array.isArray(payload)) throw new TdxError("E_VALIDATION", `--secrets ${o.secrets} must hold a JSON object of name → value`, { hint: 'Write the secrets as {"NAME": "value", …}.' });
      const { ownerSigningKey } = await import("./secrets/owner");
      ownerSigningKey(ownerKey); // a bad key fails before anything is asked
      const v = await attestNow(ctx, endpoint, o);
      if (!v.ok) {
        console.error("not provisioned: the VM failed attestation; nothing was sent");
        return EXIT.MISMATCH;
      }
      const { deliverSecrets } = await import("./attest/client");
      const r = await deliverSecrets(v.channel!, payload as Record<string, unknown>, ownerKey);
      console.error(`provisioned: ${r.secrets.length} secret(s) (${r.secrets.join(", ")}) sealed to ${v.channel!.spkiSha256.slice(0, 16)}…`);
      return EXIT.OK;
    }));
}

// ── archive, rebuild ─────────────────────────────────────────────────────────────────────────

/** A .tar/.tar.gz path (by its name) or a directory. */
const isTarball = (p: string) => /\.(tar|tar\.gz|tgz)$/i.test(p);

async function runTar(args: string[]): Promise<void> {
  const { runStreaming } = await import("./bake/sandbox");
  const r = await runStreaming(["tar", ...args], { tailLines: 10, timeoutMs: 30 * 60_000 });
  if (r.code !== 0) throw new TdxError("E_VALIDATION", `tar ${args[0]} failed (exit ${r.code ?? r.signal}): ${r.tail.join(" ").slice(0, 400)}`, { hint: "Check the path and the free space." });
}

function archiveCommand(program: Command, act: Act): void {
  const archive = program.command("archive").description("a content-addressed archive of the .debs a lock pins (by SHA-256): bakes from it outlive the Debian mirror");
  archive.command("export").description("write the lock's pinned .debs (from this machine's caches, checked against the lock) to a directory or a .tar/.tar.gz")
    .argument("<recipe>", "recipe module (.ts/.js) whose tdx.lock names the packages").argument("<out>", "directory, or a file ending in .tar, .tar.gz or .tgz")
    .option("--from <dir-or-url>", "also take packages from this archive")
    .action(act(async (ctx, recipe: string, out: string, o: { from?: string }) => {
      const { lockFileOf, readLock } = await import("./lock");
      const { exportArchive } = await import("./fetch/archive");
      const img = loadRecipe(recipe);
      const lock = await readLock(lockFileOf(img.projectDir));
      const dir = isTarball(out) ? await fs.mkdtemp(path.join(path.dirname(path.resolve(out)), ".tdxvm-archive-")) : out;
      try {
        const r = await exportArchive(lock, dir, { cacheDir: ctx.cacheDir, from: o.from });
        if (isTarball(out)) {
          const tmp = `${out}.${process.pid}.tmp`;
          await runTar([/gz$/i.test(out) ? "-czf" : "-cf", tmp, "-C", dir, "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "index.json", "sha256"]).catch(async (e) => {
            await fs.rm(tmp, { force: true });
            throw e;
          });
          await fs.rename(tmp, out);
        }
        console.log(`${out}: ${r.files} package(s), ${fmtBytes(r.bytes)} (serve it over HTTP or keep it as is; bake with --archive ${out.replace(/\.(tar|tar\.gz|tgz)$/i, "")} once imported or unpacked)`);
      } finally {
        if (dir !== out) await fs.rm(dir, { recursive: true, force: true });
      }
    }));
  archive.command("import").description("add an archive (directory or .tar/.tar.gz) to this machine's content store: each file checked against its SHA-256 name")
    .argument("<in>", "directory or .tar/.tar.gz written by `tdxvm archive export`")
    .action(act(async (ctx, input: string) => {
      const { importArchive } = await import("./fetch/archive");
      let dir = input;
      if (isTarball(input)) {
        // An archive from elsewhere is hostile until checked: only regular files named sha256/<hex>
        // (and index.json) are extracted — no links, devices or other paths — into a fresh directory.
        const { execaSync } = require("execa") as typeof import("execa");
        const list = (flags: string) => {
          const r = execaSync("tar", [flags, input], { maxBuffer: 64 * 1024 * 1024, stdin: "ignore", timeout: 10 * 60_000, reject: false });
          if (r.failed) throw new TdxError("E_VALIDATION", `cannot list ${input} as a tar archive: ${(r.stderr || r.shortMessage || "").trim().slice(0, 200)}`, { hint: "Pass a .tar/.tar.gz written by `tdxvm archive export`, or its unpacked directory." });
          return r.stdout.split("\n").filter(Boolean);
        };
        const listing = list("-tvf");
        const names = list("-tf");
        const bad = names.filter((n, i) => !/^(\.\/)?(sha256\/?|index\.json|sha256\/[0-9a-f]{64})$/.test(n) || !/^[-d]/.test(listing[i] ?? ""));
        if (bad.length || listing.length !== names.length) throw new TdxError("E_VALIDATION", `${input} is not a tdxvm package archive: unexpected member(s) ${bad.slice(0, 3).map((b) => JSON.stringify(b.slice(0, 80))).join(", ")}`, { hint: "Import a tarball written by `tdxvm archive export` (regular files sha256/<hex> and index.json only)." });
        await fs.mkdir(ctx.cacheDir, { recursive: true });
        dir = await fs.mkdtemp(path.join(ctx.cacheDir, ".tdxvm-import-"));
        await runTar(["-xf", input, "-C", dir, "--no-same-owner", "--no-same-permissions"]);
      }
      try {
        const r = await importArchive(dir, { cacheDir: ctx.cacheDir });
        console.log(`imported ${r.imported} package(s) into ${path.join(ctx.cacheDir, "content")}${r.refused.length ? `; refused ${r.refused.length} whose content does not match its name: ${r.refused.slice(0, 5).join(" ")}` : ""}`);
        return r.refused.length ? EXIT.MISMATCH : EXIT.OK;
      } finally {
        if (dir !== input) await fs.rm(dir, { recursive: true, force: true });
      }
    }));
}

function rebuildCommand(program: Command, act: Act): void {
  program.command("rebuild").description("rebuild from the committed tdx.lock (frozen, as a third party would) and confirm the UKI and disk digests and every register of measurements files")
    .argument("<recipe>", "recipe module (.ts/.js) with its tdx.lock")
    .requiredOption("--expect <files...>", "tdxvm measurements files to confirm (e.g. measurements.rtmr.json measurements.azure.json)")
    .option("--profile <name>", "recipe profile (default: default)")
    .option("--archive <dir-or-url>", "a package archive for pinned packages the Debian mirror dropped")
    .option("--no-cache", "bake again even when this machine's artifact cache has the image")
    .option("--json", "the comparison as JSON")
    .action(act(async (ctx, recipe: string, o: { expect: string[]; profile?: string; archive?: string; cache: boolean; json?: boolean }) => {
      const { readMeasurements } = await import("./measure/formats");
      const { measureBake } = await import("./measure/api");
      const expected = [];
      for (const f of o.expect) expected.push({ file: f, m: await readMeasurements(f) });
      const img = loadRecipe(recipe);
      const baked = await img.bake({ cacheDir: ctx.cacheDir, frozen: true, profile: o.profile, quiet: ctx.quiet, archive: o.archive, useCache: o.cache });
      const rows: Array<{ file: string; what: string; expected: string | null; rebuilt: string | null; ok: boolean }> = [];
      for (const e of expected) {
        const now = await measureBake(baked, { backend: e.m.backend, cacheDir: ctx.cacheDir });
        for (const k of ["ukiSha256", "diskSha256"] as const) {
          const want = typeof e.m.inputs[k] === "string" ? (e.m.inputs[k] as string) : null;
          rows.push({ file: e.file, what: k === "ukiSha256" ? "UKI sha256" : "disk sha256", expected: want, rebuilt: String(now.inputs[k] ?? ""), ok: want !== null && want === now.inputs[k] });
        }
        for (const name of Object.keys({ ...e.m.registers, ...now.registers })) {
          const a = e.m.registers[name];
          const b = now.registers[name];
          rows.push({ file: e.file, what: `${e.m.backend} ${name}`, expected: a?.value ?? (a ? a.status : null), rebuilt: b?.value ?? (b ? b.status : null), ok: a?.value === b?.value && a?.status === b?.status });
        }
      }
      const ok = rows.every((r) => r.ok);
      if (o.json) console.log(JSON.stringify({ ok, rows }, null, 2));
      else {
        // Values shortened; a register's status (no value) as it is.
        const cell = (v: string | null) => (v === null ? "—" : /^[0-9a-f]{17,}$/.test(v) ? `${v.slice(0, 16)}…` : v);
        console.log(table([["file", "what", "expected", "rebuilt", "verdict"], ...rows.map((r) => [path.basename(r.file), r.what, cell(r.expected), cell(r.rebuilt), r.ok ? "same" : "DIFFERENT"])]));
        console.log(ok ? `OK: rebuilt from ${path.join(img.projectDir, "tdx.lock")}: every digest and register is the same` : `MISMATCH: ${rows.filter((r) => !r.ok).length} of ${rows.length} differ`);
      }
      return ok ? EXIT.OK : EXIT.MISMATCH;
    }));
}

// ── cache ────────────────────────────────────────────────────────────────────────────────────

function cacheCommand(program: Command, act: Act): void {
  const cache = program.command("cache").description("list and prune the artifact cache (<cache-dir>/artifacts)");
  cache.command("ls").description("list cache entries: size, last use, profile, recipe").option("--json", "as JSON")
    .action(act(async (ctx, o: { json?: boolean }) => {
      const { listCache } = await import("./bake/cache");
      const l = await listCache(ctx.cacheDir);
      if (o.json) return void console.log(JSON.stringify(l, null, 2));
      const now = Date.now();
      console.log(table([["key", "profile", "last used", "size", "recipe digest", "recipe"], ...l.entries.map((e) => [e.key.slice(0, 12), e.profile, `${fmtAge(now - e.usedMs)} ago`, fmtBytes(e.bytes), e.recipeDigest.replace(/^sha256:/, "").slice(0, 12), `${e.recipe}${e.heldBy ? ` [held by pid ${e.heldBy}]` : ""}`])]));
      for (const x of l.leftovers) console.log(`leftover of a dead bake: ${x.name} (${fmtBytes(x.bytes)})`);
      console.log(`${l.entries.length} entries, ${fmtBytes(l.entries.reduce((s, e) => s + e.bytes, 0))} in ${path.join(ctx.cacheDir, "artifacts")}`);
    }));
  cache.command("prune").description("remove cache entries; never one a running bake holds, nor the newest entry of each recipe")
    .option("--keep <n>", "keep the N most recently used entries", (v) => {
      if (!/^\d+$/.test(v)) throw new TdxError("E_VALIDATION", `--keep takes a whole number, not ${JSON.stringify(v)}`);
      return Number(v);
    })
    .option("--older-than <duration>", "remove only entries last used longer ago (45s, 90m, 12h, 30d, 2w)")
    .option("--max-size <size>", "then remove the least recently used artifact entries until they take at most this much (30G, 512M); overrides the rules above, except for a running bake's entry")
    .option("--dry-run", "print what would be removed; remove nothing")
    .option("--json", "as JSON")
    .action(act(async (ctx, o: { keep?: number; olderThan?: string; maxSize?: string; dryRun?: boolean; json?: boolean }) => {
      const { pruneCache, parseDuration, parseSize } = await import("./bake/cache");
      const r = await pruneCache(ctx.cacheDir, { keep: o.keep, olderThanMs: o.olderThan ? parseDuration(o.olderThan) : undefined, maxBytes: o.maxSize ? parseSize(o.maxSize) : undefined, dryRun: o.dryRun === true });
      if (o.json) return void console.log(JSON.stringify(r, null, 2));
      const verb = r.dryRun ? "would remove" : "removed";
      for (const e of r.removed) console.log(`${verb} ${e.key.slice(0, 12)}  ${fmtBytes(e.exclusiveBytes).padStart(10)}  ${e.recipe}`);
      for (const l of r.leftovers) console.log(`${verb} ${l.name}  ${fmtBytes(l.bytes)} (left by a dead bake)`);
      for (const { entry, why } of [...r.plan.keep, ...r.skipped]) console.log(`kept ${entry.key.slice(0, 12)}  ${entry.recipe}: ${why}`);
      console.log(`${r.dryRun ? "would free" : "freed"} ${fmtBytes(r.freedBytes)}`);
    }));
}

// ── owner keys, local VMs ────────────────────────────────────────────────────────────────────

function ownerKeyCommand(program: Command, act: Act): void {
  const ownerKey = program.command("owner-key").description("the image owner's key: the only key whose secrets deliveries the image's VMs accept");
  ownerKey.command("new").description("write a new Ed25519 owner key: <prefix>.key (private, 0600; keep it secret) and <prefix>.pub (bake it: Init({owner}) or TdxImage's owner)")
    .argument("<prefix>", "path prefix, e.g. owner → owner.key, owner.pub")
    .action(act(async (_ctx, prefix: string) => {
      const { newOwnerKey } = await import("./secrets/owner");
      const k = newOwnerKey();
      const [keyFile, pubFile] = [`${prefix}.key`, `${prefix}.pub`];
      for (const f of [keyFile, pubFile]) {
        if (existsSync(f)) throw new TdxError("E_VALIDATION", `${f} exists; an owner key is never overwritten`, { hint: "Choose another prefix, or remove the old key knowingly: images baked with it accept secrets only from it." });
      }
      // Exclusive creation, private from the first byte (no window with a wider mode).
      const fh = await fs.open(keyFile, "wx", 0o600);
      try {
        await fh.writeFile(k.privateKeyPem);
      } finally {
        await fh.close();
      }
      await fs.writeFile(pubFile, `${k.publicKey}\n`, { flag: "wx", mode: 0o644 });
      console.log(`${keyFile}: private owner key (0600; keep it secret, e.g. pulumi config set --secret ownerKey "$(cat ${keyFile})")`);
      console.log(`${pubFile}: ${k.publicKey}`);
    }));
}

function vmCommand(program: Command, act: Act): void {
  const vm = program.command("vm").description("local VMs that keep running after tdxvm exits (the single-VM loop without Pulumi): up, ls, down");
  recipeOptions(vm.command("up").description("bake the recipe (cached) and start its disk as a local VM that keeps running; prints its id and forwarded ports (attest it with tdxvm attest, provision it with tdxvm provision)")
    .argument("[recipe]", "recipe module (.ts/.js); or --disk"))
    .option("--disk <file>", "start this raw disk instead of baking a recipe")
    .option("--port <guest[:host]...>", "forward a guest TCP port to 127.0.0.1 (default: 8443, the agent)")
    .option("--memory <MiB>", "memory (default 2048)", (v: string) => positiveInt("--memory", v))
    .option("--cpus <n>", "vCPUs (default 2)", (v: string) => positiveInt("--cpus", v))
    .option("--ready <what>", "wait for: agent (the agent's ready line; default), login, none")
    .option("--json", "print the VM as JSON")
    .action(act(async (ctx, recipe: string | undefined, o: { frozen?: boolean; profile?: string; archive?: string; disk?: string; port?: string[]; memory?: number; cpus?: number; ready?: string; json?: boolean }) => {
      const { vmUp } = await import("./deploy/vms");
      const { AGENT_READY } = await import("./modules/agent");
      if (!recipe === !o.disk) throw new TdxError("E_VALIDATION", "vm up takes a recipe or --disk, one of the two", { hint: "tdxvm vm up examples/local-qemu/recipe.ts (or --disk image.raw)" });
      const ready = o.ready ?? "agent";
      if (!["agent", "login", "none"].includes(ready)) throw new TdxError("E_VALIDATION", `--ready ${JSON.stringify(ready.slice(0, 20))} is not agent, login or none`, { hint: "--ready agent waits for tdxvm's agent (images with Agent/Init/Tdxs); login for a login prompt; none only for QEMU." });
      const ports = (o.port ?? ["8443"]).map((p) => {
        const m = /^(\d{1,5})(?::(\d{1,5}))?$/.exec(p);
        if (!m || Number(m[1]) < 1 || Number(m[1]) > 65535 || (m[2] !== undefined && (Number(m[2]) < 1 || Number(m[2]) > 65535))) throw new TdxError("E_VALIDATION", `--port ${JSON.stringify(p.slice(0, 20))} is not guest[:host]`, { hint: "e.g. --port 8443 or --port 8443:18443" });
        return { guest: Number(m[1]), ...(m[2] ? { host: Number(m[2]) } : {}) };
      });
      let disk = o.disk;
      if (recipe) {
        const img = loadRecipe(recipe);
        const r = await img.bake(bakeOpts(ctx, o, img));
        const raw = r.artifacts.find((a) => a.target === "qemu" && a.kind === "raw") ?? r.artifacts.find((a) => a.target === "disk");
        if (!raw) throw new TdxError("E_DEPLOYMENT", "the image has no raw disk to start", { hint: 'Add "qemu" to the recipe\'s outputTargets (it is the default).' });
        disk = raw.path;
      }
      ctx.log(`starting a VM from ${path.basename(disk!)}${ready === "none" ? "" : ` and waiting for ${ready === "agent" ? "its agent" : "a login prompt"}`} …`);
      const v = await vmUp({ disk: disk!, cacheDir: ctx.cacheDir, memoryMiB: o.memory, cpus: o.cpus, ports, readiness: ready === "none" ? null : { serial: ready === "agent" ? AGENT_READY : undefined, timeoutSeconds: 900 }, onProgress: ctx.log });
      if (v.warning) ctx.log(`warning: ${v.warning}`);
      if (o.json) console.log(JSON.stringify({ vmId: v.vmId, pid: v.pid, ports: v.ports, serialLog: v.serialLog, tdx: v.tdx, warning: v.warning }, null, 2));
      else {
        console.log(`${v.vmId} running (pid ${v.pid}; serial log ${v.serialLog})`);
        for (const p of v.ports) console.log(`  guest port ${p.guest} → ${p.bind}:${p.host}`);
        const agent = v.ports.find((p) => p.guest === 8443);
        if (agent) console.log(`attest:    tdxvm attest ${agent.bind}:${agent.host} --expected measurements.azure.json\nprovision: tdxvm provision ${agent.bind}:${agent.host} --expected measurements.azure.json --owner-key owner.key --secrets secrets.json`);
        console.log(`stop:      tdxvm vm down ${v.vmId}`);
      }
    }));
  vm.command("ls").description("the VMs tdxvm started under the cache directory").option("--json", "as JSON")
    .action(act(async (ctx, o: { json?: boolean }) => {
      const { vmList } = await import("./deploy/vms");
      const vms = await vmList(ctx.cacheDir);
      if (o.json) return void console.log(JSON.stringify(vms.map((v) => ({ vmId: v.vmId, running: v.running, pid: v.pid, ports: v.ports, serialLog: v.serialLog, tdx: v.tdx })), null, 2));
      if (!vms.length) return void console.log("no VMs");
      for (const v of vms) console.log(`${v.vmId}  ${v.running ? "running" : "stopped"}  ${v.tdx ? "TD" : "dev VM"}  ${v.ports.map((p) => `${p.guest}→${p.bind}:${p.host}`).join(" ") || "no ports"}  ${v.serialLog}`);
    }));
  vm.command("down").description("stop a VM tdxvm started and remove its state").argument("<vm-id>", "as tdxvm vm ls lists it")
    .action(act(async (ctx, id: string) => {
      const { vmDown } = await import("./deploy/vms");
      const r = await vmDown(ctx.cacheDir, id);
      console.log(`${id} ${r.wasRunning ? (r.killed ? "killed (it ignored SIGTERM)" : "stopped") : "was not running"}; its state is removed`);
    }));
}

// ── rollout across stacks ────────────────────────────────────────────────────────────────────

function rolloutCommand(program: Command, act: Act): void {
  program.command("rollout").description("pulumi up stack after stack (canary first) through Pulumi's Automation API; stops at the first stack that fails or is refused; prints stack, image, waves, verdict, duration")
    .requiredOption("--stacks <list>", "stacks in rollout order, comma-separated: canary,prod-eu,prod-us")
    .option("--cwd <dir>", "the Pulumi project directory (default: the current one)")
    .option("--json", "the report as JSON")
    .action(act(async (ctx, o: { stacks: string; cwd?: string; json?: boolean }) => {
      const { parseStacks, rolloutStacks, rolloutTable, automationUp } = await import("./deploy/rollout");
      const stacks = parseStacks(o.stacks);
      const up = await automationUp(path.resolve(o.cwd ?? "."));
      const report = await rolloutStacks(stacks, up, ctx.log);
      console.log(o.json ? JSON.stringify(report, null, 2) : rolloutTable(report));
      if (!report.ok) throw new TdxError("E_DEPLOYMENT", `the rollout stopped at ${report.stoppedAt}; later stacks were not run`, { hint: "Read that stack's error above; fix the recipe (or revert it) and run tdxvm rollout again: stacks already up are unchanged and pass quickly." });
    }));
}

const positiveInt = (flag: string, v: string): number => {
  if (!/^\d{1,6}$/.test(v) || Number(v) < 1) throw new TdxError("E_VALIDATION", `${flag} takes a positive whole number, not ${JSON.stringify(v.slice(0, 20))}`);
  return Number(v);
};

/** Every command by name; adding one is one function here. */
export const COMMANDS: Record<string, (program: Command, act: Act) => void> = {
  lock: lockCommand, emit: emitCommand, bake: bakeCommand, run: runCommand, measure: measureCommand,
  diff: diffCommand, verify: verifyCommand, attest: attestCommand, provision: attestCommand, archive: archiveCommand, rebuild: rebuildCommand, cache: cacheCommand,
  "owner-key": ownerKeyCommand, vm: vmCommand, rollout: rolloutCommand,
};

/**
 * The command argv runs, when it names one: only that one is built (commander's objects for every
 * option of every command cost ~12 ms, a tenth of a short `measure`). Help, --version and an
 * unknown command get them all, so usage and suggestions list everything.
 */
export function commandNamed(argv: string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--cache-dir") i++; // the global option that takes a separate value
    else if (!argv[i].startsWith("-")) return Object.hasOwn(COMMANDS, argv[i]) ? argv[i] : undefined;
  }
  return undefined;
}

export async function main(argv: string[]): Promise<number> {
  let code: number = EXIT.OK;
  const program = new Command("tdxvm")
    .description("Declarative Intel TDX confidential-VM images: lock, bake, measure, verify.\nExit codes: 0 ok, 1 unexpected error, 2 usage error or a tdxvm error (code and hint printed), 3 measurements do not match.")
    .version(require("../package.json").version as string, "-V, --version")
    .option("--cache-dir <dir>", "tools tree, packages and artifacts (default $TDXVM_CACHE_DIR or ~/.cache/tdxvm)")
    .option("-q, --quiet", "no progress on stderr")
    .exitOverride()
    // Through console (not process.stdout/stderr directly), like every other line the CLI prints.
    .configureOutput({ writeOut: (t) => console.log(t.trimEnd()), writeErr: (t) => console.error(t.trimEnd()) })
    .showHelpAfterError("(add --help for usage)");
  const act: Act = (fn) => async (...args) => {
    const g = program.opts<{ cacheDir?: string; quiet?: boolean }>();
    const quiet = g.quiet === true;
    code = (await fn({ cacheDir: g.cacheDir ? path.resolve(g.cacheDir) : (require("./register") as { defaultCacheDir(): string }).defaultCacheDir(), quiet, log: (m) => void (quiet || console.error(`tdxvm: ${m}`)) }, ...args)) ?? EXIT.OK;
  };
  const named = commandNamed(argv);
  // One function may register several commands (attest and provision): each function once.
  for (const add of new Set(named ? [COMMANDS[named]!] : Object.values(COMMANDS))) add(program, act);
  try {
    await program.parseAsync(argv, { from: "user" });
    return code;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
    if (e instanceof TdxError) {
      console.error(String(e));
      // Pinned packages no source offers: its own exit code, so a CI gate can tell it from drift.
      return e.code === "E_PACKAGES" ? EXIT.PACKAGES : EXIT.USAGE;
    }
    console.error(e);
    return EXIT.UNEXPECTED;
  }
}
