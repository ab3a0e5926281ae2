"use strict";
/* global __filename */
/**
 * Hash jobs over one file (or one Buffer) in constant memory, on one or two threads.
 *
 * A job is a hash algorithm and a list of pieces hashed in order: a byte range of the source
 * ({file: [start, end]}), zeros ({zeros: n}) or literal bytes ({bytes}). `from: k` starts a job
 * from a copy of job k's state once job k has hashed all its pieces (a shared prefix is hashed
 * once). A file is read front to back, once per thread, in 256 KiB chunks, and every job takes
 * what it needs from each chunk as it passes; a job whose next range has already passed (its
 * ranges are not in file order) finishes afterwards with positioned reads. Memory does not
 * depend on the file's size.
 *
 * Plain JavaScript (no TypeScript loader) because the second thread runs this very file as a
 * worker. The callers (stream.ts, parallel.ts) turn its plain Errors into TdxErrors.
 */
const { Buffer } = require("node:buffer");
const { createHash } = require("node:crypto");
const { openSync, readSync, closeSync, fstatSync } = require("node:fs");
const { Worker, isMainThread, parentPort, workerData } = require("node:worker_threads");

const CHUNK = 256 * 1024;
const ZEROS = Buffer.alloc(64 * 1024);
/** About what this thread hashes while a worker starts (tens of ms). */
const WORKER_START_BYTES = 32 * 1024 * 1024;

function pieceLength(p) {
  return p.file ? p.file[1] - p.file[0] : p.zeros !== undefined ? p.zeros : p.bytes.length;
}

/** Bytes a job hashes itself (without its `from` prefix). */
function jobBytes(job) {
  return job.pieces.reduce((n, p) => n + pieceLength(p), 0);
}

function check(jobs) {
  jobs.forEach((job, k) => {
    if (job.from !== undefined && !(Number.isInteger(job.from) && job.from >= 0 && job.from < k)) throw new Error(`hash job ${k}: from must name an earlier job`);
    for (const p of job.pieces) {
      if (p.file && !(Number.isSafeInteger(p.file[0]) && Number.isSafeInteger(p.file[1]) && p.file[0] >= 0 && p.file[1] >= p.file[0])) throw new Error(`hash job ${k}: bad file range ${p.file}`);
      if (p.zeros !== undefined && !(Number.isSafeInteger(p.zeros) && p.zeros >= 0)) throw new Error(`hash job ${k}: bad zero count ${p.zeros}`);
    }
  });
}

/**
 * Run `jobs` against `source` on this thread; returns each job's digest. `source`: a file path, an
 * open file descriptor (positional reads only: threads can share it, and it stays one file even
 * if the path is replaced meanwhile; not closed here), or bytes. A file shorter than a range
 * fails (never hashes less).
 */
function runJobs(source, jobs) {
  check(jobs);
  const inMemory = typeof source !== "string" && typeof source !== "number";
  const bytes = inMemory ? Buffer.from(source.buffer, source.byteOffset, source.byteLength) : undefined;
  const fd = typeof source === "string" ? openSync(source, "r") : typeof source === "number" ? source : undefined;
  const chunk = inMemory ? undefined : Buffer.allocUnsafe(CHUNK);
  const state = jobs.map((job) => ({ job, hash: job.from === undefined ? createHash(job.alg) : undefined, i: 0, done: 0, complete: false, behind: false, dependents: [] }));
  state.forEach((s) => s.job.from !== undefined && state[s.job.from].dependents.push(s));

  const readAt = (buf, len, pos) => {
    let off = 0;
    while (off < len) {
      const n = readSync(fd, buf, off, len - off, pos + off);
      if (n === 0) throw new Error(`the file ended at byte ${pos + off}, before byte ${pos + len} that a measurement covers (was it truncated?)`);
      off += n;
    }
  };
  const complete = (s) => {
    s.complete = true;
    for (const d of s.dependents) d.hash = s.hash.copy();
  };
  const feedInline = (s, p) => {
    if (p.bytes) s.hash.update(p.bytes);
    else for (let left = p.zeros; left > 0; left -= ZEROS.length) s.hash.update(left >= ZEROS.length ? ZEROS : ZEROS.subarray(0, left));
  };
  /** Advance a job through the chunk [c0, c0 + data.length); false when its next range has passed. */
  const advance = (s, data, c0) => {
    const c1 = c0 + data.length;
    while (!s.complete && s.hash) {
      const p = s.job.pieces[s.i];
      if (!p) {
        complete(s);
        break;
      }
      if (!p.file) {
        feedInline(s, p);
        s.i++;
        continue;
      }
      const pos = p.file[0] + s.done;
      if (pos === p.file[1]) {
        s.i++;
        s.done = 0;
        continue;
      }
      if (pos < c0) return false;
      if (pos >= c1) break;
      const end = Math.min(p.file[1], c1);
      // The whole chunk as is: no view object per chunk (a GiB is 4096 chunks per job, and
      // the garbage grew the young generation, i.e. peak RSS, with the file's size).
      s.hash.update(pos === c0 && end === c1 ? data : data.subarray(pos - c0, end - c0));
      s.done += end - pos;
    }
    return true;
  };
  /** Finish a job with positioned reads (or from memory). */
  const finish = (s) => {
    if (s.complete) return;
    if (!s.hash) finish(state[s.job.from]);
    for (; s.i < s.job.pieces.length; s.i++, s.done = 0) {
      const p = s.job.pieces[s.i];
      if (!p.file) {
        feedInline(s, p);
        continue;
      }
      if (inMemory) {
        if (p.file[1] > bytes.length) throw new Error(`a measured range (${p.file[0]}–${p.file[1]}) lies outside the ${bytes.length}-byte input`);
        s.hash.update(bytes.subarray(p.file[0] + s.done, p.file[1]));
        continue;
      }
      for (let pos = p.file[0] + s.done; pos < p.file[1]; ) {
        const n = Math.min(CHUNK, p.file[1] - pos);
        readAt(chunk, n, pos);
        s.hash.update(n === CHUNK ? chunk : chunk.subarray(0, n));
        pos += n;
      }
    }
    complete(s);
  };

  try {
    if (!inMemory) {
      // One front-to-back pass over the ranges any job needs (merged), feeding every job that waits there.
      const ranges = jobs.flatMap((j) => j.pieces.filter((p) => p.file && p.file[1] > p.file[0]).map((p) => p.file)).sort((a, b) => a[0] - b[0]);
      const merged = [];
      for (const [a, b] of ranges) {
        const last = merged[merged.length - 1];
        if (last && a <= last[1]) last[1] = Math.max(last[1], b);
        else merged.push([a, b]);
      }
      let active = state.filter((s) => !s.complete);
      for (const [a, b] of merged) {
        for (let c0 = a; c0 < b && active.length; c0 += CHUNK) {
          const n = Math.min(CHUNK, b - c0);
          readAt(chunk, n, c0);
          const data = n === CHUNK ? chunk : chunk.subarray(0, n);
          // In job order: a job that starts `from` an earlier one can take from this chunk as soon as that one completes.
          for (const s of active) if (s.hash && !advance(s, data, c0)) s.behind = true;
          active = active.filter((s) => !s.complete && !s.behind);
        }
      }
    }
    for (const s of state) finish(s);
  } finally {
    if (typeof source === "string") closeSync(fd);
  }
  return state.map((s) => s.hash.digest());
}

/**
 * A worker started ahead of need (prewarm): it boots (tens of ms) on the other core while this
 * thread loads code and reads headers, and serves the next runJobsParallel. `ready` turns 1 once
 * it listens (readable without a turn of the event loop). It serves one call, then exits; unref'd,
 * it never keeps the process alive.
 */
let warm;

function startWorker() {
  const ready = new Int32Array(new SharedArrayBuffer(4));
  // execArgv: [] — the worker needs none of the parent's loader hooks (this file is plain JavaScript).
  // A small heap: it holds a job list and one 256 KiB chunk; V8's default young generation alone
  // cost ~1.4 MiB of peak RSS (measured: 1 GiB UKI, 64.7 → 63.4 MiB).
  const limits = { maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 32, stackSizeMb: 1 };
  const worker = new Worker(__filename, { execArgv: [], workerData: { tdxvmHashJobs: true, ready }, resourceLimits: limits });
  const w = { worker, ready, dead: false };
  // Always listened to: a worker that fails or ends while it waits must not crash the process
  // (an unheard "error" would) and is replaced; one that fails during a job rejects that job.
  worker.on("error", () => (w.dead = true)).on("exit", () => (w.dead = true));
  worker.unref();
  return w;
}

/** Start the worker the next runJobsParallel will use (no-op if one is waiting, or on a worker thread); returns it. */
function prewarm() {
  if (!isMainThread) return undefined;
  if (!warm || warm.dead) warm = startWorker();
  return warm.worker;
}

/** Run jobs on a worker: the warm one if there is one, else a new one. Resolves with its digests. */
function onWorker(w, source, jobs) {
  return new Promise((resolve, reject) => {
    const done = (f) => (v) => {
      w.worker.off("message", onMessage).off("error", onError).off("exit", onExit);
      w.worker.unref();
      f(v);
    };
    const onMessage = done((m) => (m.error ? reject(new Error(m.error)) : resolve(m.digests.map((d) => Buffer.from(d.buffer, d.byteOffset, d.byteLength)))));
    const onError = done(reject);
    const onExit = done((code) => reject(new Error(`hash worker exited with code ${code}`)));
    w.worker.on("message", onMessage).on("error", onError).on("exit", onExit);
    w.worker.ref(); // a job in flight keeps the process alive
    w.worker.postMessage({ source, jobs });
  });
}

/**
 * Split jobs in two groups of about equal bytes (a job stays with the job it starts `from`), run
 * one on a worker thread and one here. The worker's share is smaller by `workerStartBytes`
 * (default: 0 when a prewarmed worker is ready, else about what this thread hashes while a worker
 * starts). Only for a file (path or descriptor), or bytes in a SharedArrayBuffer (the worker
 * reads them without a copy); otherwise everything runs here.
 */
async function runJobsParallel(source, jobs, opts = {}) {
  check(jobs);
  const file = typeof source === "string" || typeof source === "number";
  if (jobs.length < 2 || (!file && !(source.buffer instanceof SharedArrayBuffer))) return runJobs(source, jobs);
  const w = warm && !warm.dead ? warm : startWorker();
  warm = undefined;
  // Groups: a job and everything that starts from it, transitively.
  const root = jobs.map((j, k) => k);
  jobs.forEach((j, k) => j.from !== undefined && (root[k] = root[j.from]));
  const groups = new Map();
  jobs.forEach((j, k) => {
    const g = groups.get(root[k]) || { jobs: [], bytes: 0 };
    g.jobs.push(k);
    g.bytes += jobBytes(j);
    groups.set(root[k], g);
  });
  const sorted = [...groups.values()].sort((a, b) => b.bytes - a.bytes);
  // A worker still starting begins hashing later than this thread: it gets that much less.
  const sides = [{ jobs: [], bytes: 0 }, { jobs: [], bytes: opts.workerStartBytes ?? (Atomics.load(w.ready, 0) ? 0 : WORKER_START_BYTES) }];
  for (const g of sorted) {
    const side = sides[0].bytes <= sides[1].bytes ? sides[0] : sides[1];
    side.jobs.push(...g.jobs);
    side.bytes += g.bytes;
  }
  const [here, there] = sides.map((s) => s.jobs.sort((a, b) => a - b));
  if (there.length === 0) {
    void w.worker.terminate();
    return runJobs(source, jobs);
  }
  const subset = (ks) => ks.map((k) => ({ ...jobs[k], from: jobs[k].from === undefined ? undefined : ks.indexOf(jobs[k].from) }));
  const worker = onWorker(w, source, subset(there));
  let mine;
  try {
    mine = runJobs(source, subset(here));
  } catch (e) {
    await worker.catch(() => undefined);
    throw e;
  }
  const theirs = await worker;
  const out = new Array(jobs.length);
  here.forEach((k, i) => (out[k] = mine[i]));
  there.forEach((k, i) => (out[k] = theirs[i]));
  return out;
}

/**
 * A whole file's digest and size, computed on a worker thread of its own: this thread stays free
 * (a bake hashes GiB-sized disks while its event loop serves qemu-img, progress and other
 * resources), and the file is read into one reused 256 KiB buffer (a stream allocating a fresh
 * buffer per chunk spent more time in page faults and GC than hashing: 2.8 s vs 0.75 s per GiB,
 * measured here). The file is opened once; its size is that of the open file.
 */
async function hashFile(file, alg = "sha256") {
  const fd = openSync(file, "r");
  try {
    const size = fstatSync(fd).size;
    const [digest] = await onWorker(startWorker(), fd, [{ alg, pieces: [{ file: [0, size] }] }]);
    return { digest, size };
  } finally {
    closeSync(fd);
  }
}

if (!isMainThread && workerData && workerData.tdxvmHashJobs) {
  // One call, then exit (closing the port ends the thread once the reply is sent).
  parentPort.once("message", (m) => {
    let reply;
    try {
      reply = { digests: runJobs(m.source, m.jobs) };
    } catch (e) {
      reply = { error: e instanceof Error ? e.message : String(e) };
    }
    parentPort.postMessage(reply);
    parentPort.close();
  });
  Atomics.store(workerData.ready, 0, 1);
}

module.exports = { runJobs, runJobsParallel, jobBytes, prewarm, hashFile };
