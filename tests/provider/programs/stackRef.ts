/** Harness parity: a stack that exports plain and secret values, or reads another stack's (config ref). */
import * as pulumi from "@pulumi/pulumi";

const config = new pulumi.Config();
const ref = config.get("ref");
export const plain = ref ? new pulumi.StackReference(ref).requireOutput("plain") : config.require("plain");
export const hidden = ref ? new pulumi.StackReference(ref).getOutput("hidden") : pulumi.secret(config.require("hidden"));
