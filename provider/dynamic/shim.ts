/**
 * The provider object Pulumi serializes into every tdxvm dynamic resource's state
 * (`__provider`). It must stay tiny and self-contained (docs/design.md §5: closure serialization
 * breaks on native modules, class instances, ESM and deep paths), so it holds nothing but the
 * provider kind and resolves the runtime when a method runs: `require("tdxvm/dynamic")` from
 * the provider host's working directory — the directory of the program's main file, where the
 * CLI starts the program and its plugins (pulumi/pulumi pkg/engine/project.go getPwdMain).
 * State written by an older tdxvm therefore runs with the installed one, which must handle older
 * state and refuses newer state (each kind keeps a stateVersion: runtime.ts).
 */
import type * as pulumi from "@pulumi/pulumi";
import type { ProviderKind } from "./runtime";

const shims = new Map<ProviderKind, pulumi.dynamic.ResourceProvider>();

/** One shim object per kind: the SDK caches serializations per provider object, so N resources serialize once. */
export function providerShim(kind: ProviderKind): pulumi.dynamic.ResourceProvider {
  let shim = shims.get(kind);
  if (!shim) shims.set(kind, (shim = makeShim(kind)));
  return shim;
}

function makeShim(kind: ProviderKind): pulumi.dynamic.ResourceProvider {
  const load = () => {
    let runtime;
    try {
      runtime = require("module").createRequire(require("path").join(process.cwd(), "package.json"))("tdxvm/dynamic");
    } catch (e) {
      throw new Error(`tdxvm is not installed where Pulumi runs its providers (${process.cwd()}, the directory of the program's main file): the package is not on a registry: run \`npm pack\` in a tdxvm checkout, then \`npm install /path/to/tdxvm-<version>.tgz\` in the Pulumi project (or \`npm install --install-links /path/to/checkout\`) (${String(e)})`, { cause: e });
    }
    const provider = runtime.providers?.[kind];
    if (!provider) throw new Error(`E_STATE: this resource's state names the tdxvm provider "${kind}", which the installed tdxvm does not have (it has ${Object.keys(runtime.providers ?? {}).join(", ")}): the state was written by another tdxvm version; install that version in the Pulumi project`);
    return provider;
  };
  return {
    check: async (olds, news) => load().check(olds, news),
    diff: async (id, olds, news) => load().diff(id, olds, news),
    create: async (inputs) => load().create(inputs),
    read: async (id, props) => load().read(id, props),
    update: async (id, olds, news) => load().update(id, olds, news),
    delete: async (id, props) => load().delete(id, props),
  };
}
