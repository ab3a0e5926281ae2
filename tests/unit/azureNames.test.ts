/** Azure names the azure target derives: storage accounts must fit Azure's rules whatever the resource name. */
import fc from "fast-check";
import { storageAccountPrefix, imageVersionName } from "../../components/azure";
import { randomSuffix } from "../../provider/dynamic/uniqueName";
import { AzureBlobArgs } from "../../provider/dynamic/azureBlob";

describe("azure names", () => {
  it("storage account: 'tdx' + the name's letters and digits, cut so that 10 random characters still fit 3–24 [a-z0-9]", () => {
    expect(storageAccountPrefix("app")).toBe("tdxapp");
    expect(storageAccountPrefix("My-Fleet_Name.2026")).toBe("tdxmyfleetname");
    fc.assert(fc.property(fc.string({ maxLength: 80 }), (name) => {
      expect(`${storageAccountPrefix(name)}${randomSuffix(10)}`).toMatch(/^[a-z][a-z0-9]{2,23}$/);
    }));
  });

  it("gallery image version: Major.Minor.Patch from the VHD digest, each part < 2^31", () => {
    expect(imageVersionName("ffffff" + "000001" + "0".repeat(52))).toBe("1.16777215.1");
  });

  it("a VHD blob name stays inside its container: no empty, '.' or '..' path segments", () => {
    const args = (blobName: string) => ({ file: "/x.vhd", sha256: "a".repeat(64), size: 512, endpoint: "https://acct.blob.core.windows.net/", accountKey: "k", containerName: "vhds", blobName });
    for (const ok of ["tdxvm.vhd", "images/2026/tdxvm-1.vhd", "a..b.vhd", ".hidden.vhd"]) expect([ok, AzureBlobArgs.safeParse(args(ok)).success]).toEqual([ok, true]);
    for (const bad of ["../other-container/x.vhd", "a/../../x.vhd", "./x.vhd", "a//x.vhd", "/x.vhd", "a/./x.vhd", "x.vhd/.."]) expect([bad, AzureBlobArgs.safeParse(args(bad)).success]).toEqual([bad, false]);
  });
});
