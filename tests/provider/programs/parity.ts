/**
 * Test program for harness ↔ engine parity (harnessParity.test.ts): a small dynamic provider,
 * run by the real dynamic-provider host, that appends every diff/create/read it gets to the file
 * named by its `log` input, so a test can see what the engine-like harness asked for.
 *   mode "replace": diff asks for a replacement, delete-first, when `v` changes
 *   mode "update":  diff answers changes: true/false, never a replacement
 *   mode "unknown": diff leaves `changes` unset (the engine then diffs the inputs itself)
 * Read bumps `seen` (an output no diff looks at) and, with `drift`, changes `v` (drift a diff sees).
 */
import * as pulumi from "@pulumi/pulumi";

const config = new pulumi.Config();
const v = config.require("v");
const log = config.require("log");

const provider: pulumi.dynamic.ResourceProvider = {
  async check(_olds, news) {
    return { inputs: news };
  },
  async diff(_id, olds, news) {
    const strip = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).filter(([k]) => k !== "__provider"));
    require("fs").appendFileSync(news.log, JSON.stringify({ m: "diff", name: news.name, olds: strip(olds), news: strip(news) }) + "\n");
    if (news.mode === "unknown") return {};
    const changed = olds.v !== news.v;
    return { changes: changed, replaces: changed && news.mode === "replace" ? ["v"] : [], deleteBeforeReplace: changed && news.mode === "replace" };
  },
  async create(inputs) {
    require("fs").appendFileSync(inputs.log, JSON.stringify({ m: "create", name: inputs.name, cwd: process.cwd() }) + "\n");
    return { id: `${inputs.name}-${inputs.v}`, outs: { ...inputs, hostCwd: process.cwd(), seen: 0 } };
  },
  async update(_id, olds, news) {
    return { outs: { ...news, hostCwd: olds.hostCwd, seen: olds.seen } };
  },
  async read(id, props) {
    return { id, props: { ...props, seen: props.seen + 1, v: props.drift ? `${props.v}-drifted` : props.v } };
  },
  async delete() {},
};

class Probe extends pulumi.dynamic.Resource {
  declare readonly hostCwd: pulumi.Output<string>;
  constructor(name: string, props: Record<string, unknown>, opts?: pulumi.CustomResourceOptions) {
    super(provider, name, { name, log, hostCwd: undefined, seen: undefined, ...props }, opts);
  }
}

new Probe("dbrFalse", { mode: "replace", v }, { deleteBeforeReplace: false });
new Probe("dbrProvider", { mode: "replace", v });
new Probe("rocExplicit", { mode: "update", v }, { replaceOnChanges: ["v"] });
new Probe("rocUnknown", { mode: "unknown", v }, { replaceOnChanges: ["v"] });
const steady = new Probe("steady", { mode: "update", v: "fixed" });
new Probe("drifting", { mode: "update", v: "fixed", drift: true });

export const programCwd = process.cwd();
export const hostCwd = steady.hostCwd;
