/**
 * Test program: the azure target's shared graph (components/azure.ts azureShared: unique storage
 * account name, account, container, account key, page-blob upload, gallery, image version,
 * network) for a VHD given by config (`vhd`, `sha256`, `size`) instead of a bake, so that
 * azureBlob.test.ts can run it through the harness against Azurite in seconds.
 */
import * as pulumi from "@pulumi/pulumi";
import { azureShared } from "../../../components/azure";

const config = new pulumi.Config();
const parent = new pulumi.ComponentResource("tdxvm:test:AzureUpload", "app");
const vhd = pulumi.output({ path: config.require("vhd"), sha256: config.require("sha256"), size: config.requireNumber("size") });
const shared = azureShared("app", vhd, { location: "westeurope" }, parent);

export const url = shared.upload.url;
export const imageVersion = shared.imageVersion.name;
