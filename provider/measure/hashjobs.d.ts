/** Types of ./hashjobs.js (plain JavaScript: it also runs as the worker thread). */
import type { HashAlg } from "./bytes";

/** A byte range [start, end) of the source, a run of zeros, or literal bytes. */
export type HashPiece = { file: [number, number] } | { zeros: number } | { bytes: Uint8Array };

export interface HashJob {
  alg: HashAlg;
  pieces: HashPiece[];
  /** Start from a copy of this (earlier) job's state after all its pieces. */
  from?: number;
}

/**
 * Run the jobs on this thread: a file is read once, front to back, in 256 KiB chunks. `source`: a
 * path, an open file descriptor (positional reads; not closed), or bytes.
 */
export function runJobs(source: string | number | Uint8Array, jobs: ReadonlyArray<HashJob>): Buffer[];
/**
 * The same on two threads: the jobs split by bytes, one share on a worker (files, and bytes in a
 * SharedArrayBuffer), smaller by `workerStartBytes` (default 32 MiB: what this thread
 * hashes while the worker starts; 0 splits evenly).
 */
export function runJobsParallel(source: string | number | Uint8Array, jobs: ReadonlyArray<HashJob>, opts?: { workerStartBytes?: number }): Promise<Buffer[]>;
/** Bytes a job hashes itself (without its `from` prefix). */
export function jobBytes(job: HashJob): number;
/**
 * Start the worker thread the next runJobsParallel uses, ahead of need: it boots on the other
 * core while this one loads code. Serves one call; never keeps the process alive. A worker that
 * ended before it was used is replaced. Returns it (undefined on a worker thread).
 */
export function prewarm(): import("node:worker_threads").Worker | undefined;
/**
 * A whole file's digest and size, hashed on a worker thread of its own (this thread stays free) in
 * constant memory. The size is that of the file as opened.
 */
export function hashFile(file: string, alg?: HashAlg): Promise<{ digest: Buffer; size: number }>;
