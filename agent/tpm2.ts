/**
 * A TPM 2.0 client that speaks the command protocol itself: to the kernel's resource manager
 * (/dev/tpmrm0) in a VM, or to swtpm's socket in tests. No tpm2-tools processes: an attestation
 * is a handful of writes and reads instead of a handful of process starts.
 *
 * Wire formats follow the TCG "TPM 2.0 Library" specification: Part 1 §18 (command and response
 * structure, authorization area), Part 2 (TPM_CC §6.5, TPM_RH/TPM_RS §7, TPMA_SESSION §8.4,
 * TPMT_PUBLIC §12.2, TPML_PCR_SELECTION §10.9), Part 3 for each command's parameters (sections
 * named at each command below). The EK template is the TCG EK Credential Profile 2.0 §B.3.3
 * template L-1 (RSA 2048), the one `tpm2_createek -G rsa` and `swtpm_setup` use; the AK template
 * is what `tpm2_createak -G ecc -g sha256 -s ecdsa` creates, so evidence keeps its shape.
 *
 * Every response is read with a bounds-checked reader; a response larger than 4 KiB (the kernel's
 * TPM_BUFSIZE) is refused.
 */
import { promises as fs } from "node:fs";
import * as net from "node:net";
import { randomBytes } from "node:crypto";
import { TpmReader, u8, u16, u32, tpm2b } from "../provider/attest/tpm2";

const ST_NO_SESSIONS = 0x8001;
const ST_SESSIONS = 0x8002;
const RS_PW = 0x40000009;
export const RH_OWNER = 0x40000001;
export const RH_ENDORSEMENT = 0x4000000b;
const RH_NULL = 0x40000007;
const ALG_NULL = 0x0010;
const ALG_SHA256 = 0x000b;
const MAX_RESPONSE = 4096;
const RETRYABLE = new Set([0x922, 0x908, 0x90a]); // TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING
const MAX_ATTEMPTS = 20;
const SOCKET_TIMEOUT_MS = 60_000;

/** TPM_CC (Part 2 §6.5.2). */
const CC = {
  NV_Read: 0x14e,
  ActivateCredential: 0x147,
  PolicySecret: 0x151,
  Create: 0x153,
  Load: 0x157,
  Quote: 0x158,
  CreatePrimary: 0x131,
  ContextLoad: 0x161,
  ContextSave: 0x162,
  FlushContext: 0x165,
  NV_ReadPublic: 0x169,
  ReadPublic: 0x173,
  StartAuthSession: 0x176,
  GetCapability: 0x17a,
  PCR_Read: 0x17e,
} as const;
type Command = keyof typeof CC;

/** One command out, one response back. */
export interface TpmTransport {
  send(command: Buffer): Promise<Buffer>;
  close(): Promise<void>;
}

/** A TPM character device (/dev/tpmrm0): write a command, read its whole response. */
export async function openTpmDevice(device: string): Promise<TpmTransport> {
  const fh = await fs.open(device, "r+");
  return {
    async send(command) {
      const { bytesWritten } = await fh.write(command, 0, command.length, null);
      if (bytesWritten !== command.length) throw new Error(`${device}: wrote ${bytesWritten} of ${command.length} bytes`);
      const buf = Buffer.alloc(MAX_RESPONSE);
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      return buf.subarray(0, bytesRead);
    },
    close: () => fh.close(),
  };
}

/** swtpm's data socket (`swtpm socket --server type=unixio`): raw commands, responses framed by their size field. */
export function openTpmSocket(socketPath: string): Promise<TpmTransport> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(socketPath);
    let pending = Buffer.alloc(0);
    let waiter: { resolve(b: Buffer): void; reject(e: Error): void } | undefined;
    let failure: Error | undefined;
    const settle = () => {
      if (!waiter) return;
      const size = pending.length >= 10 ? pending.readUInt32BE(2) : undefined;
      if (!failure && size !== undefined && (size < 10 || size > MAX_RESPONSE)) failure = new Error(`${socketPath}: response size ${size} is outside 10–${MAX_RESPONSE}`);
      if (!failure && (size === undefined || pending.length < size)) return;
      const w = waiter;
      waiter = undefined;
      if (failure) return w.reject(failure);
      const out = pending.subarray(0, size);
      pending = pending.subarray(size);
      w.resolve(out);
    };
    sock.on("data", (d: Buffer) => {
      pending = Buffer.concat([pending, d]);
      if (pending.length > 2 * MAX_RESPONSE) failure = new Error(`${socketPath}: more response bytes than any command returns`);
      settle();
    });
    sock.on("error", (e) => {
      failure = new Error(`${socketPath}: ${e.message}`);
      settle();
    });
    sock.on("close", () => {
      failure ??= new Error(`${socketPath}: the TPM closed the connection`);
      settle();
    });
    sock.once("connect", () =>
      resolve({
        send: (command) =>
          new Promise<Buffer>((res, rej) => {
            if (waiter) return rej(new Error("one TPM command at a time"));
            const timer = setTimeout(() => {
              waiter = undefined;
              rej(new Error(`${socketPath}: no response in ${SOCKET_TIMEOUT_MS / 1000} s`));
              sock.destroy();
            }, SOCKET_TIMEOUT_MS);
            waiter = { resolve: (b) => (clearTimeout(timer), res(b)), reject: (e) => (clearTimeout(timer), rej(e)) };
            sock.write(command);
            settle();
          }),
        close: () => new Promise<void>((res) => (sock.destroyed ? res() : sock.end(res))),
      }),
    );
    sock.once("error", reject);
  });
}

/** A TPM response code that is not success (Part 2 §6.6): the command it answers and the code. */
export class TpmResponseError extends Error {
  constructor(
    readonly command: string,
    readonly rc: number,
  ) {
    super(`TPM2_${command} failed: ${describeRc(rc)}`);
  }
}

const WARNINGS: Record<number, string> = { 0x902: "TPM_RC_OBJECT_MEMORY: no free object slot", 0x903: "TPM_RC_SESSION_MEMORY: no free session slot", 0x921: "TPM_RC_LOCKOUT: dictionary-attack lockout", 0x922: "TPM_RC_RETRY" };

/** Part 2 §6.6: format-one codes carry the parameter, handle or session they are about. */
function describeRc(rc: number): string {
  const hex = `TPM_RC 0x${rc.toString(16).padStart(3, "0")}`;
  if (!(rc & 0x80)) return WARNINGS[rc] ? `${hex} (${WARNINGS[rc]})` : hex;
  const n = (rc >> 8) & 0xf;
  const base = `0x${(0x80 | (rc & 0x3f)).toString(16)}`;
  if (rc & 0x40) return `${hex} (error ${base} in parameter ${n})`;
  return n === 0 ? hex : n & 0x8 ? `${hex} (error ${base} in session ${n & 0x7})` : `${hex} (error ${base} in handle ${n})`;
}


/** An authorization: the password session (empty auth) or a policy session the caller set up. */
interface Auth {
  handle: number;
  nonce?: Buffer;
  attributes?: number;
}
const PASSWORD: Auth = { handle: RS_PW };

/** TPML_PCR_SELECTION with one bank: `pcrs` of `hashAlg` (3-byte bitmap: PCRs 0–23). */
function pcrSelection(hashAlg: number, pcrs: number[]): Buffer {
  const bits = Buffer.alloc(3);
  for (const p of pcrs) bits[p >> 3]! |= 1 << (p & 7);
  return Buffer.concat([u32(1), u16(hashAlg), u8(3), bits]);
}

/** Template L-1 (EK Credential Profile 2.0 §B.3.3): RSA 2048, AES-128-CFB, PolicySecret(endorsement) policy. */
const EK_RSA_TEMPLATE = Buffer.concat([
  u16(0x0001), u16(ALG_SHA256), u32(0x000300b2),
  tpm2b(Buffer.from("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa", "hex")),
  u16(0x0006), u16(128), u16(0x0043), u16(ALG_NULL), u16(2048), u32(0), tpm2b(Buffer.alloc(256)),
]);

/** The AK: restricted ECDSA P-256 / SHA-256 signing key, user auth empty (fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|restricted|sign). */
const AK_ECC_TEMPLATE = Buffer.concat([
  u16(0x0023), u16(ALG_SHA256), u32(0x00050072), tpm2b(),
  u16(ALG_NULL), u16(0x0018), u16(ALG_SHA256), u16(0x0003), u16(ALG_NULL), tpm2b(), tpm2b(),
]);

/** The commands the issuers need, over one open transport. */
export class Tpm2 {
  constructor(private readonly t: TpmTransport) {}

  /** Part 1 §18: header, handles, authorization area, parameters; the response's handles and parameters. */
  private async run(name: Command, handles: number[], auths: Auth[] | undefined, params: Buffer, responseHandles = 0): Promise<{ handles: number[]; r: TpmReader }> {
    const authArea = auths
      ? Buffer.concat(auths.map((a) => Buffer.concat([u32(a.handle), tpm2b(a.nonce), u8(a.attributes ?? 0), tpm2b()])))
      : undefined;
    const body = Buffer.concat([...handles.map(u32), ...(authArea ? [u32(authArea.length), authArea] : []), params]);
    const command = Buffer.concat([u16(auths ? ST_SESSIONS : ST_NO_SESSIONS), u32(10 + body.length), u32(CC[name]), body]);
    let response: Buffer;
    let r: TpmReader;
    let tag: number;
    for (let attempt = 1; ; attempt++) {
      response = await this.t.send(command);
      r = new TpmReader(response, `TPM2_${name} response`);
      tag = r.u16("tag");
      const size = r.u32("responseSize");
      const rc = r.u32("responseCode");
      if (size !== response.length) throw new Error(`TPM2_${name}: the response says ${size} bytes, ${response.length} arrived`);
      if (rc === 0) break;
      // Part 2 §6.6.3: RETRY, YIELDED and TESTING ask the caller to send the same command again.
      if (!RETRYABLE.has(rc) || attempt >= MAX_ATTEMPTS) throw new TpmResponseError(name, rc);
      await new Promise((res) => setTimeout(res, 5 * attempt));
    }
    const out = Array.from({ length: responseHandles }, () => r.u32("handle"));
    if (tag === ST_SESSIONS) {
      const paramSize = r.u32("parameterSize");
      return { handles: out, r: new TpmReader(r.bytes(paramSize, "parameters"), `TPM2_${name} parameters`) };
    }
    return { handles: out, r };
  }

  /** TPM2B_PUBLIC as it came (size field included): what tpm2-tools writes with `-u`/`-o`. */
  private static public2b(r: TpmReader): Buffer {
    const start = r.pos;
    r.tpm2b("outPublic");
    return Buffer.from(r.buf.subarray(start, r.pos));
  }

  /** Part 3 §24.1 TPM2_CreatePrimary: the RSA EK under the endorsement hierarchy. */
  async createEk(): Promise<{ handle: number; public2b: Buffer }> {
    const params = Buffer.concat([tpm2b(Buffer.alloc(4)), tpm2b(EK_RSA_TEMPLATE), tpm2b(), u32(0)]);
    const { handles, r } = await this.run("CreatePrimary", [RH_ENDORSEMENT], [PASSWORD], params, 1);
    return { handle: handles[0]!, public2b: Tpm2.public2b(r) };
  }

  /** Part 3 §11.1 + §23.4: a policy session satisfied by PolicySecret(endorsement) — the EK's policy. Used once. */
  private async ekPolicySession(): Promise<Auth> {
    const start = Buffer.concat([tpm2b(randomBytes(16)), tpm2b(), u8(0x01), u16(ALG_NULL), u16(ALG_SHA256)]);
    const { handles } = await this.run("StartAuthSession", [RH_NULL, RH_NULL], undefined, start, 1);
    const session = handles[0]!;
    try {
      await this.run("PolicySecret", [RH_ENDORSEMENT, session], [PASSWORD], Buffer.concat([tpm2b(), tpm2b(), tpm2b(), u32(0)]));
    } catch (e) {
      await this.flush(session).catch(() => undefined);
      throw e;
    }
    // continueSession clear: the TPM ends the session after the command it authorizes.
    return { handle: session, nonce: randomBytes(16), attributes: 0 };
  }

  /** Run `fn` with a fresh EK policy session; the session is flushed if the command fails (success ends it). */
  private async withEkPolicy<T>(fn: (session: Auth) => Promise<T>): Promise<T> {
    const session = await this.ekPolicySession();
    try {
      return await fn(session);
    } catch (e) {
      await this.flush(session.handle).catch(() => undefined);
      throw e;
    }
  }

  /** Part 3 §12.1 + §12.2 TPM2_Create and TPM2_Load: the AK under the EK; returns its handle and TPM2B_PUBLIC. */
  async createAk(ek: number): Promise<{ handle: number; public2b: Buffer }> {
    const sensitive = Buffer.concat([tpm2b(Buffer.alloc(4)), tpm2b(AK_ECC_TEMPLATE), tpm2b(), u32(0)]);
    const created = await this.withEkPolicy((s) => this.run("Create", [ek], [s], sensitive));
    const priv = created.r.tpm2b("outPrivate");
    const public2b = Tpm2.public2b(created.r);
    const { handles } = await this.withEkPolicy((s) => this.run("Load", [ek], [s], Buffer.concat([tpm2b(priv), public2b]), 1));
    return { handle: handles[0]!, public2b };
  }

  /** Part 3 §12.4 TPM2_ReadPublic. */
  async readPublic(handle: number): Promise<Buffer> {
    const { r } = await this.run("ReadPublic", [handle], undefined, Buffer.alloc(0));
    return Tpm2.public2b(r);
  }

  /** Part 3 §28.2 / §28.3: a transient object out to a context blob and back. */
  async contextSave(handle: number): Promise<Buffer> {
    const { r } = await this.run("ContextSave", [handle], undefined, Buffer.alloc(0));
    return Buffer.from(r.buf.subarray(r.pos));
  }
  async contextLoad(context: Buffer): Promise<number> {
    return (await this.run("ContextLoad", [], undefined, context, 1)).handles[0]!;
  }
  /** Part 3 §28.4 (the handle is a parameter, not a handle-area entry). */
  async flush(handle: number): Promise<void> {
    await this.run("FlushContext", [], undefined, u32(handle));
  }

  /** Part 3 §30.2 TPM2_GetCapability(TPM_PT_NV_BUFFER_MAX): the largest NV read; 512 when the TPM does not say. */
  private async nvBufferMax(): Promise<number> {
    try {
      const { r } = await this.run("GetCapability", [], undefined, Buffer.concat([u32(6), u32(0x12c), u32(1)]));
      r.u8("moreData");
      if (r.u32("capability") !== 6 || r.u32("count") < 1 || r.u32("property") !== 0x12c) return 512;
      return Math.max(64, Math.min(r.u32("value"), 2048));
    } catch {
      return 512;
    }
  }

  /** Part 3 §31.6 + §31.13: an NV index's whole contents with owner auth; undefined when the TPM refuses (no such index). */
  async nvRead(index: number): Promise<Buffer | undefined> {
    let size: number;
    try {
      const { r } = await this.run("NV_ReadPublic", [index], undefined, Buffer.alloc(0));
      const pub = new TpmReader(r.tpm2b("nvPublic"), "TPMS_NV_PUBLIC");
      pub.u32("nvIndex");
      pub.u16("nameAlg");
      pub.u32("attributes");
      pub.tpm2b("authPolicy", 64);
      size = pub.u16("dataSize");
    } catch (e) {
      if (e instanceof TpmResponseError) return undefined;
      throw e;
    }
    const chunk = await this.nvBufferMax();
    const parts: Buffer[] = [];
    for (let off = 0; off < size; off += chunk) {
      const n = Math.min(chunk, size - off);
      const { r } = await this.run("NV_Read", [RH_OWNER, index], [PASSWORD], Buffer.concat([u16(n), u16(off)]));
      const data = r.tpm2b("data");
      if (data.length !== n) throw new Error(`TPM2_NV_Read of 0x${index.toString(16)} returned ${data.length} bytes at offset ${off}, asked for ${n}`);
      parts.push(Buffer.from(data));
    }
    return Buffer.concat(parts);
  }

  /**
   * Part 3 §18.4 TPM2_Quote over sha256 `pcrs`, signed with the key's own scheme (or `scheme`
   * when the key has none): TPMS_ATTEST (the TPM2B_ATTEST's contents) and TPMT_SIGNATURE.
   */
  async quote(key: number, qualifyingData: Buffer, pcrs: number[], scheme?: { alg: number; hashAlg: number }): Promise<{ attest: Buffer; signature: Buffer }> {
    const inScheme = scheme ? Buffer.concat([u16(scheme.alg), u16(scheme.hashAlg)]) : u16(ALG_NULL);
    const { r } = await this.run("Quote", [key], [PASSWORD], Buffer.concat([tpm2b(qualifyingData), inScheme, pcrSelection(ALG_SHA256, pcrs)]));
    const attest = Buffer.from(r.tpm2b("quoted"));
    const signature = Buffer.from(r.buf.subarray(r.pos));
    if (signature.length < 4) throw new Error("TPM2_Quote returned no signature");
    return { attest, signature };
  }

  /** Part 3 §22.4 TPM2_PCR_Read of sha256 `pcrs`, asked again for what a response left out (a TPM returns at most 8). */
  async pcrRead(pcrs: number[]): Promise<Map<number, Buffer>> {
    const values = new Map<number, Buffer>();
    let left = [...pcrs];
    while (left.length) {
      const { r } = await this.run("PCR_Read", [], undefined, pcrSelection(ALG_SHA256, left));
      r.u32("pcrUpdateCounter");
      const returned: number[] = [];
      const banks = r.u32("pcrSelectionOut.count");
      for (let b = 0; b < banks; b++) {
        const hash = r.u16("hash");
        const bits = r.bytes(r.u8("sizeofSelect"), "pcrSelect");
        for (let i = 0; i < bits.length * 8; i++) if (hash === ALG_SHA256 && bits[i >> 3]! & (1 << (i & 7))) returned.push(i);
      }
      const count = r.u32("pcrValues.count");
      if (count !== returned.length) throw new Error(`TPM2_PCR_Read returned ${count} values for ${returned.length} selected PCRs`);
      for (const pcr of returned) {
        if (!left.includes(pcr)) throw new Error(`TPM2_PCR_Read returned PCR ${pcr}, which was not asked for`);
        const v = r.tpm2b("digest", 64);
        if (v.length !== 32) throw new Error(`TPM2_PCR_Read returned a ${v.length}-byte sha256 value for PCR ${pcr}`);
        values.set(pcr, Buffer.from(v));
      }
      if (!returned.length) throw new Error(`the TPM has no sha256 value for PCR ${left.join(", ")}`);
      left = left.filter((p) => !values.has(p));
    }
    return values;
  }

  /**
   * Part 3 §12.5 TPM2_ActivateCredential: `ak` (empty auth) certified under `ek` (its policy
   * session); `idObject` and `encSecret` are the size-prefixed TPM2B_ID_OBJECT and
   * TPM2B_ENCRYPTED_SECRET a verifier made. Returns the secret.
   */
  async activateCredential(ak: number, ek: number, idObject: Buffer, encSecret: Buffer): Promise<Buffer> {
    for (const [what, b] of [["idObject", idObject], ["encSecret", encSecret]] as const) {
      if (b.length < 2 || b.readUInt16BE(0) !== b.length - 2) throw new Error(`credential ${what} is not a size-prefixed TPM2B`);
    }
    const { r } = await this.withEkPolicy((s) => this.run("ActivateCredential", [ak, ek], [PASSWORD, s], Buffer.concat([idObject, encSecret])));
    return Buffer.from(r.tpm2b("certInfo", 64));
  }
}
