/**
 * TPM 2.0 structures against real output of tpm2-tools 5.7 with swtpm 0.7 (fixtures/tpm, made as
 * fixtures/README.md says): parsing, names (tpm2-tools computed them independently), attribute
 * checks, quote signatures (ECDSA, RSASSA, RSAPSS), the PCR digest; and refusals of malformed input.
 */
import fc from "fast-check";
import { akAttributeProblems, objectName, parseQuoteAttest, parseSignature, parseTpm2bPublic, pcrSelectionDigest, verifySignature } from "../../../provider/attest/tpm2";
import { TdxError } from "../../../provider/errors";
import { fx, pcrValues } from "./fixtures";

const ALL = Array.from({ length: 16 }, (_, i) => i);
const quotes = [
  { kind: "ecdsa", ak: "tpm/ak-ecc", pcrs: ALL, extra: "5254c982d509893e3f382194c854c68fa08e1a49980d75f1ac684e472c151cfb" },
  { kind: "rsassa", ak: "tpm/ak-rsassa", pcrs: [0, 4, 7], extra: "0102" },
  { kind: "rsapss", ak: "tpm/ak-rsapss", pcrs: [0, 4, 7], extra: "0102" },
] as const;

describe("TPM2B_PUBLIC and names", () => {
  it.each(["tpm/ak-ecc", "tpm/ak-rsassa", "tpm/ak-rsapss"])("%s: name = nameAlg ‖ H(TPMT_PUBLIC) as tpm2_createak computed it; a restricted signing key", (ak) => {
    const pub = parseTpm2bPublic(fx(`${ak}.pub`));
    expect(objectName(pub).toString("hex")).toBe(fx(`${ak}.name`).toString("hex"));
    expect(pub.nameAlg).toBe("sha256");
    expect(akAttributeProblems(pub)).toEqual([]);
  });

  it("reads the EK templates (RSA 2048, ECC P-256): restricted decryption keys with AES-128-CFB, not signing keys", () => {
    const rsa = parseTpm2bPublic(fx("tpm/ek-rsa.pub"));
    expect(rsa).toMatchObject({ type: "rsa", keyBits: 2048, exponent: 65537, symmetric: { alg: 0x0006, keyBits: 128, mode: 0x0043 } });
    expect(rsa.modulus).toHaveLength(256);
    const ecc = parseTpm2bPublic(fx("tpm/ek-ecc.pub"));
    expect(ecc).toMatchObject({ type: "ecc", curveId: 0x0003, symmetric: { alg: 0x0006, keyBits: 128, mode: 0x0043 } });
    expect(akAttributeProblems(rsa)).toEqual(["sign is not set", "decrypt is set (a restricted signing key must not decrypt)"]);
  });

  it("names a changed key differently", () => {
    const raw = Buffer.from(fx("tpm/ak-ecc.pub"));
    raw[raw.length - 1] ^= 1;
    expect(objectName(parseTpm2bPublic(raw)).equals(fx("tpm/ak-ecc.name"))).toBe(false);
  });

  it("flags an AK without the restricted bit", () => {
    const raw = Buffer.from(fx("tpm/ak-ecc.pub"));
    raw.writeUInt32BE(raw.readUInt32BE(6) & ~(1 << 16), 6); // objectAttributes follow size, type, nameAlg
    expect(akAttributeProblems(parseTpm2bPublic(raw))).toEqual(["restricted is not set"]);
  });
});

describe("quotes", () => {
  it.each(quotes)("$kind: the signature verifies with the AK; qualifying data and PCR digest as requested", ({ kind, ak, pcrs, extra }) => {
    const key = parseTpm2bPublic(fx(`${ak}.pub`));
    const msg = fx(`tpm/quote-${kind}.msg`);
    const q = parseQuoteAttest(msg);
    expect(q.magic).toBe(0xff544347);
    expect(q.type).toBe(0x8018);
    expect(q.extraData.toString("hex")).toBe(extra);
    expect(q.pcrSelect).toEqual([{ hash: "sha256", pcrs }]);
    const sig = parseSignature(fx(`tpm/quote-${kind}.sig`));
    expect(sig.alg).toBe(kind);
    expect(verifySignature(key, msg, sig)).toBe(true);
    const values = pcrValues(fx(`tpm/quote-${kind}.pcrs`), [...pcrs]);
    expect(pcrSelectionDigest(sig.hash, q.pcrSelect, { sha256: values }).digest?.equals(q.pcrDigest)).toBe(true);
  });

  it.each(quotes)("$kind: a flipped byte in the quote, the signature or the key fails verification", ({ kind, ak }) => {
    const key = parseTpm2bPublic(fx(`${ak}.pub`));
    const msg = fx(`tpm/quote-${kind}.msg`);
    const sig = parseSignature(fx(`tpm/quote-${kind}.sig`));
    for (const at of [6, 40, msg.length - 1]) {
      const m = Buffer.from(msg);
      m[at] ^= 1;
      expect(verifySignature(key, m, sig)).toBe(false);
    }
    const raw = Buffer.from(fx(`tpm/quote-${kind}.sig`));
    raw[raw.length - 5] ^= 1;
    expect(verifySignature(key, msg, parseSignature(raw))).toBe(false);
    const otherKey = parseTpm2bPublic(fx(kind === "ecdsa" ? "tpm/ek-ecc.pub" : "tpm/ek-rsa.pub"));
    expect(verifySignature(otherKey, msg, sig)).toBe(false);
  });

  it("the PCR digest changes with any PCR value and names missing PCRs", () => {
    const q = parseQuoteAttest(fx("tpm/quote-ecdsa.msg"));
    const values = pcrValues(fx("tpm/quote-ecdsa.pcrs"), ALL);
    const changed = { ...values, "7": "00".repeat(31) + "01" };
    expect(pcrSelectionDigest("sha256", q.pcrSelect, { sha256: changed }).digest?.equals(q.pcrDigest)).toBe(false);
    const { "4": _dropped, ...missing } = values;
    expect(pcrSelectionDigest("sha256", q.pcrSelect, { sha256: missing })).toEqual({ missing: ["sha256:4"] });
  });

  it("refuses a structure that is not a quote", () => {
    const m = Buffer.from(fx("tpm/quote-ecdsa.msg"));
    m.writeUInt32BE(0xdeadbeef, 0);
    expect(() => parseQuoteAttest(m)).toThrow(/quote-structure: magic is 0xdeadbeef/);
    const t = Buffer.from(fx("tpm/quote-ecdsa.msg"));
    t.writeUInt16BE(0x8017, 4); // TPM_ST_ATTEST_CERTIFY
    expect(() => parseQuoteAttest(t)).toThrow(/not TPM_ST_ATTEST_QUOTE/);
  });
});

describe("hostile input", () => {
  it("truncations and size fields that lie are E_ATTESTATION, never a crash", () => {
    const pub = fx("tpm/ak-rsassa.pub");
    expect(() => parseTpm2bPublic(pub.subarray(0, 40))).toThrow(/size field says/);
    const lying = Buffer.from(pub);
    lying.writeUInt16BE(0xffff, 2 + 2 + 2 + 4); // authPolicy.size
    expect(() => parseTpm2bPublic(lying)).toThrow(TdxError);
    expect(() => parseSignature(Buffer.from([0x00, 0x18]))).toThrow(/TPMT_SIGNATURE: hash/);
  });

  it("random bytes and random mutations only ever yield E_ATTESTATION", () => {
    const inputs = [fx("tpm/ak-ecc.pub"), fx("tpm/ek-rsa.pub"), fx("tpm/quote-ecdsa.msg"), fx("tpm/quote-rsassa.sig")];
    fc.assert(fc.property(fc.integer({ min: 0, max: inputs.length - 1 }), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }), fc.nat(), (which, edits, cut) => {
      const b = Buffer.from(inputs[which]!);
      for (const [at, v] of edits) b[at % b.length] = v;
      const input = b.subarray(0, cut % (b.length + 1));
      for (const parse of [parseTpm2bPublic, parseQuoteAttest, parseSignature] as Array<(x: Buffer) => unknown>) {
        try {
          parse(input);
        } catch (e) {
          if (!(e instanceof TdxError) || e.code !== "E_ATTESTATION") throw e;
        }
      }
    }), { numRuns: 500 });
  });
});
