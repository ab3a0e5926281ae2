/** Outputs the cloud providers would add to their resources (the harness cannot reach Azure or GCP). */
export function harnessMockOutputs(type: string, name: string, _inputs: Record<string, unknown>): Record<string, unknown> {
  void _inputs;
  const n = (s: string) => `${name}-${s}`;
  switch (type) {
    case "azure-native:compute:VirtualMachine":
      return { vmId: n("vmid") };
    case "azure-native:network:NetworkInterface":
      return { ipConfigurations: [{ privateIPAddress: "10.0.0.4" }] };
    case "azure-native:network:PublicIPAddress":
      return { ipAddress: "203.0.113.10" };
    case "gcp:compute/image:Image":
      return { selfLink: `https://www.googleapis.com/compute/v1/projects/p/global/images/${name}` };
    case "gcp:compute/instance:Instance":
      return { instanceId: n("id"), networkInterfaces: [{ networkIp: "10.128.0.2", accessConfigs: [{ natIp: "203.0.113.20" }] }] };
    default:
      return {};
  }
}
