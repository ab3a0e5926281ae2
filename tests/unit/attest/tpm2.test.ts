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

/**
 * Each refusal of the parsers and of verifySignature on its own, on structures built here from
 * Part 2's layouts (big-endian; TPM2B = u16 size ‖ bytes): the check that fires and its reason.
 */
describe("each structural check refuses on its own", () => {
  const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
  const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(n >>> 0); return b; };
  const tpm2b = (b: Buffer) => Buffer.concat([u16(b.length), b]);
  const AK_ATTRS = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 16) | (1 << 18);
  const modulus = (bytes: number, first = 0xc5, last = 0x01) => { const m = Buffer.alloc(bytes, 0x5a); m[0] = first; m[bytes - 1] = last; return m; };
  /** TPM2B_PUBLIC of an RSA key: type, nameAlg, attributes, authPolicy, symmetric NULL, scheme NULL, keyBits, exponent, modulus. */
  const rsaPublic = (o: { nameAlg?: number; keyBits?: number; exponent?: number; modulus?: Buffer; type?: number } = {}) =>
    tpm2b(Buffer.concat([u16(o.type ?? 0x0001), u16(o.nameAlg ?? 0x000b), u32(AK_ATTRS), tpm2b(Buffer.alloc(0)), u16(0x0010), u16(0x0010), u16(o.keyBits ?? 2048), u32(o.exponent ?? 0), tpm2b(o.modulus ?? modulus(256))]));
  /** TPM2B_PUBLIC of an ECC key: ..., symmetric NULL, scheme ECDSA/SHA-256, curve, kdf NULL, x, y. */
  const eccPublic = (curve: number, x: Buffer, y: Buffer) =>
    tpm2b(Buffer.concat([u16(0x0023), u16(0x000b), u32(AK_ATTRS), tpm2b(Buffer.alloc(0)), u16(0x0010), u16(0x0018), u16(0x000b), u16(curve), u16(0x0010), tpm2b(x), tpm2b(y)]));
  const attestHead = (extra = Buffer.alloc(32)) => Buffer.concat([u32(0xff544347), u16(0x8018), tpm2b(Buffer.concat([u16(0x000b), Buffer.alloc(32, 1)])), tpm2b(extra), Buffer.alloc(17), Buffer.alloc(8)]);
  const message = (e: unknown) => (e instanceof TdxError ? [e.code, e.details, e.message] : e);
  const thrown = (f: () => unknown) => {
    try {
      f();
    } catch (e) {
      return message(e);
    }
    return "nothing thrown";
  };
  const refused = (check: string, re: RegExp) => ["E_ATTESTATION", { check }, expect.stringMatching(re)];

  it("accepts the structures built here when nothing is wrong (the control)", () => {
    expect(parseTpm2bPublic(rsaPublic())).toMatchObject({ type: "rsa", keyBits: 2048, exponent: 65537 });
    expect(parseTpm2bPublic(rsaPublic({ exponent: 3 }))).toMatchObject({ exponent: 3 });
    expect(parseTpm2bPublic(eccPublic(0x0003, Buffer.alloc(32, 1), Buffer.alloc(32, 2)))).toMatchObject({ type: "ecc", curveId: 3 });
    const q = parseQuoteAttest(Buffer.concat([attestHead(Buffer.alloc(64)), u32(1), u16(0x0004), Buffer.from([4, 0xff, 0xff, 0xff, 0xff]), tpm2b(Buffer.alloc(32))]));
    expect(q.pcrSelect).toEqual([{ hash: "sha1", pcrs: Array.from({ length: 32 }, (_, i) => i) }]); // SHA-1 banks may be quoted
  });

  it.each([
    ["a key of 1024 bits", () => rsaPublic({ keyBits: 1024, modulus: modulus(128) }), /RSA key of 1024 bits with a 128-byte modulus$/],
    ["a key of 8192 bits", () => rsaPublic({ keyBits: 8192, modulus: modulus(512) }), /RSA key of 8192 bits with a 512-byte modulus$/],
    ["a modulus shorter than keyBits says", () => rsaPublic({ keyBits: 2048, modulus: modulus(255) }), /RSA key of 2048 bits with a 255-byte modulus$/],
    ["a modulus without its top bit", () => rsaPublic({ modulus: modulus(256, 0x45) }), /the RSA modulus is not a 2048-bit odd number$/],
    ["an even modulus", () => rsaPublic({ modulus: modulus(256, 0xc5, 0x02) }), /the RSA modulus is not a 2048-bit odd number$/],
    ["exponent 1", () => rsaPublic({ exponent: 1 }), /RSA exponent 1 is not an odd number above 1$/],
    ["exponent 2", () => rsaPublic({ exponent: 2 }), /RSA exponent 2 is not an odd number above 1$/],
    ["an even exponent", () => rsaPublic({ exponent: 65536 }), /RSA exponent 65536 is not an odd number above 1$/],
    ["a SHA-1 name algorithm", () => rsaPublic({ nameAlg: 0x0004 }), /nameAlg: hash algorithm 0x4 is not supported/],
    ["an unknown name algorithm", () => rsaPublic({ nameAlg: 0x0099 }), /nameAlg: hash algorithm 0x99 is not supported/],
    ["a keyed-hash object", () => rsaPublic({ type: 0x0008 }), /object type 0x8 is not an RSA or ECC key$/],
    ["an unsupported ECC curve (BN-256)", () => eccPublic(0x0010, Buffer.alloc(32, 1), Buffer.alloc(32, 2)), /ECC curve 0x10 is not supported/],
    ["an ECC coordinate longer than the curve's", () => eccPublic(0x0003, Buffer.alloc(33, 1), Buffer.alloc(32, 2)), /ECC point coordinates longer than the curve's 32 bytes$/],
    ["an authPolicy over 64 bytes", () => tpm2b(Buffer.concat([u16(0x0001), u16(0x000b), u32(AK_ATTRS), tpm2b(Buffer.alloc(65))])), /authPolicy is 65 bytes, more than the 64 allowed$/],
    ["a trailing byte", () => { const p = rsaPublic(); const b = Buffer.concat([p, Buffer.from([0])]); b.writeUInt16BE(b.length - 2, 0); return b; }, /1 trailing bytes after the structure$/],
  ] as const)("TPM2B_PUBLIC: refuses %s", (_what, make, re) => {
    expect(thrown(() => parseTpm2bPublic(make()))).toEqual(refused("tpm-structure", re));
  });

  it.each([
    ["extraData over 64 bytes", () => attestHead(Buffer.alloc(65)), "tpm-structure", /extraData is 65 bytes, more than the 64 allowed$/],
    ["17 PCR banks", () => Buffer.concat([attestHead(), u32(17)]), "quote-structure", /TPML_PCR_SELECTION has 17 banks \(at most 16\)$/],
    ["a 5-byte PCR bitmap", () => Buffer.concat([attestHead(), u32(1), u16(0x000b), Buffer.from([5, 1, 1, 1, 1, 1]), tpm2b(Buffer.alloc(32))]), "quote-structure", /PCR selection 0 has a 5-byte bitmap \(at most 4\)$/],
    ["a trailing byte", () => Buffer.concat([fx("tpm/quote-ecdsa.msg"), Buffer.from([0])]), "tpm-structure", /TPMS_ATTEST: 1 trailing bytes after the structure$/],
    ["a truncation", () => fx("tpm/quote-ecdsa.msg").subarray(0, 20), "tpm-structure", /runs past the 20-byte input$/],
  ] as const)("TPMS_ATTEST: refuses %s", (_what, make, check, re) => {
    expect(thrown(() => parseQuoteAttest(make()))).toEqual(refused(check, re));
  });

  it("TPMT_SIGNATURE: refuses another algorithm (HMAC), a SHA-1 hash, a trailing byte", () => {
    expect(thrown(() => parseSignature(Buffer.concat([u16(0x0005), u16(0x000b), tpm2b(Buffer.alloc(32))])))).toEqual(refused("quote-signature", /signature algorithm 0x5 is not RSASSA, RSAPSS or ECDSA$/));
    expect(thrown(() => parseSignature(Buffer.concat([u16(0x0014), u16(0x0004), tpm2b(Buffer.alloc(256))])))).toEqual(refused("tpm-structure", /signature hash: hash algorithm 0x4 is not supported/));
    expect(thrown(() => parseSignature(Buffer.concat([fx("tpm/quote-rsassa.sig"), Buffer.from([0])])))).toEqual(refused("tpm-structure", /TPMT_SIGNATURE: 1 trailing bytes/));
  });

  it("verifySignature: refuses a signature outside the key's own scheme, and one of the wrong kind of key", () => {
    const rsassa = parseTpm2bPublic(fx("tpm/ak-rsassa.pub"));
    const msg = fx("tpm/quote-rsassa.msg");
    const sig = parseSignature(fx("tpm/quote-rsassa.sig"));
    expect(verifySignature(rsassa, msg, sig)).toBe(true);
    expect(thrown(() => verifySignature(rsassa, msg, { ...sig, alg: "rsapss" }))).toEqual(refused("quote-signature", /the signature \(rsapss\/sha256\) does not use the key's own scheme$/));
    expect(thrown(() => verifySignature(rsassa, msg, { ...sig, hash: "sha384" }))).toEqual(refused("quote-signature", /the signature \(rsassa\/sha384\) does not use the key's own scheme$/));
    const ecdsa = parseSignature(fx("tpm/quote-ecdsa.sig"));
    // The EKs have no scheme of their own (NULL): the kind of key decides.
    expect(thrown(() => verifySignature(parseTpm2bPublic(fx("tpm/ek-rsa.pub")), msg, ecdsa))).toEqual(refused("quote-signature", /an ECDSA signature from a key that is not ECC$/));
    expect(thrown(() => verifySignature(parseTpm2bPublic(fx("tpm/ek-ecc.pub")), msg, sig))).toEqual(refused("quote-signature", /an RSASSA signature from a key that is not RSA$/));
  });

  it("verifySignature: an ECDSA r or s longer than the curve's size is a wrong signature, not an error", () => {
    const ak = parseTpm2bPublic(fx("tpm/ak-ecc.pub"));
    const msg = fx("tpm/quote-ecdsa.msg");
    const sig = parseSignature(fx("tpm/quote-ecdsa.sig"));
    expect(verifySignature(ak, msg, sig)).toBe(true);
    expect(verifySignature(ak, msg, { ...sig, r: Buffer.concat([Buffer.alloc(1), sig.r!]) })).toBe(false);
    expect(verifySignature(ak, msg, { ...sig, s: Buffer.concat([Buffer.alloc(2), sig.s!]) })).toBe(false);
  });

  it("the PCR digest names a value of the wrong size as missing", () => {
    const q = parseQuoteAttest(fx("tpm/quote-ecdsa.msg"));
    const values = pcrValues(fx("tpm/quote-ecdsa.pcrs"), ALL);
    expect(pcrSelectionDigest("sha256", q.pcrSelect, { sha256: { ...values, "3": "00".repeat(31) } })).toEqual({ missing: ["sha256:3"] });
  });
});
