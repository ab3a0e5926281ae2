/**
 * Bench baseline program: an empty program as `pulumi new typescript` writes it — it imports the
 * SDK, as every Pulumi program does, and declares no resources (the cost of a preview itself:
 * process, SDK, stack).
 */
import * as pulumi from "@pulumi/pulumi";

export const nothing = pulumi.output(1);
