/**
 * Hashing on a second core without copying: the bytes live in a SharedArrayBuffer, a worker
 * thread hashes the given ranges of it while the main thread hashes others.
 */
import { Worker } from "node:worker_threads";
import { openSync, readSync, fstatSync, closeSync } from "node:fs";
import { HashAlg } from "./bytes";

const WORKER = `
const { parentPort, workerData: w } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const buf = Buffer.from(w.sab, w.offset, w.length);
const h = createHash(w.alg);
for (const [a, b] of w.ranges) h.update(buf.subarray(a, b));
parentPort.postMessage(h.digest());
`;

/** Read a whole file into a Buffer backed by a SharedArrayBuffer. */
export function readFileShared(file: string): Buffer {
  const fd = openSync(file, "r");
  try {
    const size = fstatSync(fd).size;
    const buf = Buffer.from(new SharedArrayBuffer(size));
    let off = 0;
    while (off < size) {
      const n = readSync(fd, buf, off, Math.min(16 * 1024 * 1024, size - off), off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off);
  } finally {
    closeSync(fd);
  }
}

export function isShared(buf: Buffer): boolean {
  return buf.buffer instanceof SharedArrayBuffer;
}

/** Digest of the concatenation of `ranges` of a SharedArrayBuffer-backed buffer, on a worker thread. */
export function hashRangesInWorker(buf: Buffer, ranges: Array<[number, number]>, alg: HashAlg): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // execArgv: [] — the worker needs no loader hooks (e.g. a TypeScript register) of the parent.
    const w = new Worker(WORKER, { eval: true, execArgv: [], workerData: { sab: buf.buffer, offset: buf.byteOffset, length: buf.length, ranges, alg } });
    w.once("message", (d: Uint8Array) => {
      resolve(Buffer.from(d));
      void w.terminate();
    });
    w.once("error", reject);
  });
}
