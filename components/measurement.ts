/**
 * TdxMeasurement: the register values a platform will report for a TdxImage, with the event
 * ledger that explains each one and a Markdown diff against the previous state.
 *
 * The values are computed when Pulumi checks the resource, so `pulumi preview` shows each
 * changed register as `~ registers: { ~ RTMR2: "old…" => "new…" }` — the review a pull request
 * needs before a new image is rolled out.
 */
import * as pulumi from "@pulumi/pulumi";
import { providerShim } from "../provider/dynamic/shim";
import type { AlternativeComputed, LedgerRow } from "../provider/dynamic/measurement";
import type { TdxImage } from "./image";

export interface TdxMeasurementArgs {
  image: TdxImage;
  /** "rtmr" (QEMU/bare-metal TDX: MRTD, RTMR0–3), "azure" (vTPM PCRs), "gcp" (RTMRs; MRTD with Google's firmware). */
  backend: pulumi.Input<"rtmr" | "azure" | "gcp">;
  /** TDVF firmware: a path, or {src, integrity} fetched into the content store. rtmr default: Debian trixie OVMF.fd. */
  firmware?: pulumi.Input<string | { src: string; integrity: string }>;
  pageOrder?: pulumi.Input<"single-pass" | "two-pass">;
  /** Path of a CCEL captured on the target host and VM shape: makes RTMR0 exact. */
  capturedCcel?: pulumi.Input<string>;
  /**
   * rtmr: predict RTMR0 for this QEMU TD shape — `{memoryMiB, acpi: {tableLoader, rsdp, tables},
   * boot}` (each ACPI blob a file dumped from the host's QEMU for the shape, or its SHA-384; `boot`
   * "direct-kernel" or the boot variables in BootOrder order), or the path of such a JSON file.
   */
  tdShape?: pulumi.Input<string | { memoryMiB: number; acpi: { tableLoader: string; rsdp: string; tables: string }; boot: "direct-kernel" | { name: string; data: string }[] }>;
  /**
   * The measurement envelope: further host shapes the VMs may run on (two QEMU versions, two
   * memory sizes, Google's current and next firmware), each `{label, tdShape?, endorsement?}`; the
   * base (the other arguments) is labelled `shapeLabel` (default "base"). Verifiers accept any one
   * listed combination and say which matched; `alternatives` lists what differs per shape.
   */
  shapes?: pulumi.Input<Array<{ label: string; tdShape?: string | Record<string, unknown>; endorsement?: string }>>;
  shapeLabel?: pulumi.Input<string>;
  /**
   * gcp: path of Google's launch endorsement of the firmware your VMs boot (the .binarypb from
   * gce_tcb_integrity/ovmf_x64_csm/tdx/<MRTD>.binarypb): verified against Google's pinned root, it
   * pins MRTD (status "endorsed") for `vm.memoryMiB`.
   */
  endorsement?: pulumi.Input<string>;
  /**
   * Platform-defined registers to accept unchecked, each with its reason, e.g.
   * `{ RTMR0: "host shape not captured yet" }`: the status output, the diff markdown, every
   * verifier's table and verdict show `WAIVED (<reason>)`. Without a waiver (or a captured value)
   * a verifier refuses a register the platform signs and nobody pinned.
   */
  waive?: pulumi.Input<Record<string, string>>;
  /** VM shape the values assume (recorded with them). */
  vm?: pulumi.Input<{ memoryMiB?: number; cpus?: number }>;
  cacheDir?: pulumi.Input<string>;
}

const COMPUTED = { stateVersion: undefined, measurementKey: undefined, registers: undefined, status: undefined, ledger: undefined, assumptions: undefined, diffMarkdown: undefined, alternatives: undefined };

/** The dynamic resource that measures (type pulumi-nodejs:dynamic/tdxvm:Measurement). */
export class Measurement extends pulumi.dynamic.Resource {
  declare readonly registers: pulumi.Output<Record<string, string | null>>;
  declare readonly status: pulumi.Output<Record<string, string>>;
  declare readonly ledger: pulumi.Output<Record<string, LedgerRow[]>>;
  declare readonly assumptions: pulumi.Output<Record<string, string | number | null>>;
  declare readonly diffMarkdown: pulumi.Output<string>;
  declare readonly measurementKey: pulumi.Output<string>;
  declare readonly alternatives: pulumi.Output<AlternativeComputed[] | undefined>;

  constructor(name: string, props: Record<string, pulumi.Input<unknown>>, opts?: pulumi.CustomResourceOptions) {
    super(providerShim("measurement"), name, { ...props, ...COMPUTED }, opts, "tdxvm", "Measurement");
  }
}

/** Register names each backend reports (one output each). */
export const REGISTERS = ["MRTD", "RTMR0", "RTMR1", "RTMR2", "RTMR3", "PCR4", "PCR9", "PCR11"] as const;

export class TdxMeasurement extends pulumi.ComponentResource {
  readonly backend: pulumi.Output<string>;
  /** Register → hex value (null: platform-defined; `status` says why). */
  readonly registers: pulumi.Output<Record<string, string | null>>;
  /** Register → how it is pinned: "exact" (predicted), "captured", "endorsed", "zero", "WAIVED (<reason>)", or "platform-defined: <why>" (not pinned: verifiers refuse it). */
  readonly status: pulumi.Output<Record<string, string>>;
  /** Register → the ordered events (type, description, origin of the bytes, digest). */
  readonly ledger: pulumi.Output<Record<string, LedgerRow[]>>;
  readonly assumptions: pulumi.Output<Record<string, string | number | null>>;
  /** Markdown table of the registers that changed against the previous state (for PR comments). */
  readonly diffMarkdown: pulumi.Output<string>;
  /** The envelope (`shapes`): per further host shape, the registers that differ there. */
  readonly alternatives: pulumi.Output<AlternativeComputed[] | undefined>;
  readonly mrtd: pulumi.Output<string | undefined>;
  readonly rtmr0: pulumi.Output<string | undefined>;
  readonly rtmr1: pulumi.Output<string | undefined>;
  readonly rtmr2: pulumi.Output<string | undefined>;
  readonly rtmr3: pulumi.Output<string | undefined>;
  readonly pcr4: pulumi.Output<string | undefined>;
  readonly pcr9: pulumi.Output<string | undefined>;
  readonly pcr11: pulumi.Output<string | undefined>;
  readonly resource: Measurement;

  constructor(name: string, args: TdxMeasurementArgs, opts?: pulumi.ComponentResourceOptions) {
    super("tdxvm:index:TdxMeasurement", name, {}, opts);
    const image = pulumi.all([args.image.bakeKey, args.image.artifacts, args.image.systemdStub, args.image.profile, args.image.rootfs, args.image.bake.packages])
      .apply(([bakeKey, artifacts, systemdStub, profile, rootfs, packages]) => ({ bakeKey, artifacts, systemdStub, profile, rootfs, ...(packages ? { packages } : {}) }));
    this.resource = new Measurement(name, {
      image, backend: args.backend, firmware: args.firmware, pageOrder: args.pageOrder, capturedCcel: args.capturedCcel, tdShape: args.tdShape, shapes: args.shapes, shapeLabel: args.shapeLabel, endorsement: args.endorsement, waive: args.waive, vm: args.vm, cacheDir: args.cacheDir,
    }, { parent: this });
    this.backend = pulumi.output(args.backend);
    this.registers = this.resource.registers;
    this.status = this.resource.status;
    this.ledger = this.resource.ledger;
    this.assumptions = this.resource.assumptions;
    this.diffMarkdown = this.resource.diffMarkdown;
    this.alternatives = this.resource.alternatives;
    const reg = (n: string) => this.registers.apply((r) => r?.[n] ?? undefined);
    this.mrtd = reg("MRTD");
    this.rtmr0 = reg("RTMR0");
    this.rtmr1 = reg("RTMR1");
    this.rtmr2 = reg("RTMR2");
    this.rtmr3 = reg("RTMR3");
    this.pcr4 = reg("PCR4");
    this.pcr9 = reg("PCR9");
    this.pcr11 = reg("PCR11");
    this.registerOutputs({
      registers: this.registers, status: this.status, ledger: this.ledger, assumptions: this.assumptions, diffMarkdown: this.diffMarkdown, alternatives: this.alternatives,
      mrtd: this.mrtd, rtmr0: this.rtmr0, rtmr1: this.rtmr1, rtmr2: this.rtmr2, rtmr3: this.rtmr3, pcr4: this.pcr4, pcr9: this.pcr9, pcr11: this.pcr11,
    });
  }
}
