/** Test program: a resource whose check fails on an input that came from secret config. */
import * as pulumi from "@pulumi/pulumi";
import { RolloutGate } from "../../../components/deployment";

const config = new pulumi.Config();
// Not a URL: the gate's check refuses it. The value is a secret and must not be printed.
export const gate = new RolloutGate("gate", { target: "vm-1", url: config.requireSecret("url") }).id;
