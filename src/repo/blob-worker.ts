/**
 * A blob worker (worker_threads): the CPU-heavy part of storing and reading a blob, off the
 * main thread, so a snapshot or restore uses every core. The main thread keeps everything
 * that needs shared state (the index, dedup, packs, I/O); a worker only computes. See
 * blob-pool.ts for the protocol; the functions used are the same as on the main thread.
 *
 *   decode    stored, id, raw -> plaintext         (opened, decompressed, verified against id)
 *   write     stored, id, raw, fd, pos -> zero?  (decoded and verified like `decode`, then
 *                                                   written at `pos` of the open file `fd`
 *                                                   (a restore), unless it is all zeros: the
 *                                                   plaintext never crosses to the main thread;
 *                                                   the stored bytes come with the request or
 *                                                   are read here from an open pack file)
 *   compress  memories, items -> stored forms    (chunks the main thread cut and hashed, each
 *                                                   a range of one of the memories it handed
 *                                                   over: zstd when it pays, decoded back and
 *                                                   compared first; sealed with a key. An
 *                                                   unsealed blob stored as it is comes back as
 *                                                   null: its bytes are the chunk's, in the
 *                                                   memory that goes back with the reply.
 *                                                   Progress goes to a shared counter as it
 *                                                   goes, which the pool reads to balance)
 */
import {closeSync, fchmodSync, fchownSync, constants as fsc, ftruncateSync, futimesSync, openSync, readSync, unlinkSync, writeSync} from 'node:fs'
import {parentPort, workerData} from 'node:worker_threads'
import {fsPath} from '../archive/names.js'
import {MasterKey} from './crypto.js'
import {ownedCopy} from './blob-pool.js'
import {MemoryPool} from './memory.js'
import {CorruptBlobError, ENC_PLAIN, compressBlobOfId, decodeBlob, isZero, storedForm} from './pack.js'

export type BlobRequest =
  | {seq: number; op: 'decode'; data: Uint8Array; id: string; raw: number; where: string}
  | {seq: number; op: 'write'; data?: Uint8Array; from?: {fd: number; offset: number; length: number}; id: string; raw: number; where: string; fd: number; pos: number}
  | ({seq: number; op: 'file'} & FileJob)
  | {seq: number; op: 'compress'; data: Uint8Array[]; items: CompressItem[]; level: number}
  | {seq: number; op: 'recycle'; data: Uint8Array[]}

/**
 * Every buffer a request brought is transferred back with the reply (`data`), so no memory
 * is left for this thread's garbage collector, which runs seldom (it allocates little).
 */
export type BlobReply =
  | {seq: number; plain: Uint8Array; data?: Uint8Array}
  | {seq: number; zero: boolean; data?: Uint8Array}
  | {seq: number; kept: (Uint8Array | null)[]; data: Uint8Array[]}
  | {seq: number; written: true}
  | {seq: number; error: string; corrupt?: {why: string}; errno?: {code?: string; errno?: number; syscall?: string}; blob?: number}

/**
 * A chunk for `compress`: where it is (which of the request's memories, at which offset, how
 * long) and its id, computed by the main thread from these very bytes.
 */
export type CompressItem = [memory: number, offset: number, length: number, id: string]

/** one blob of a FileJob: where it is stored (a range of an open pack file) and what it must decode to */
export interface FileJobBlob {
  id: string
  raw: number
  where: string
  fd: number
  offset: number
  length: number
}

/**
 * A whole file of a restore, written by a worker: created new at `path` (O_EXCL, no symlink
 * followed), its blobs read from their packs, decoded, checked and written in order (blobs of
 * zeros left as holes), then its size, owner, mode and times set. On any failure the file is
 * closed and removed again; the error names the blob it failed on (`blob`, an index).
 */
export interface FileJob {
  path: string
  size: number
  mode: number
  /** uid and gid to set (only when running as root) */
  owner?: [number, number]
  /** seconds since the epoch (fractional): atime and mtime */
  mtime: number
  blobs: FileJobBlob[]
}

export interface BlobWorkerData {
  /** the repository's master key material (encrypted repositories), else null */
  key: Uint8Array | null
  /** (shared) bytes compressed for `compress` requests so far, modulo 2^32: the pool reads it to see how far behind this worker is */
  done: Int32Array
}

const data = workerData as BlobWorkerData
const key = data.key ? MasterKey.fromBytes(Buffer.from(data.key)) : undefined

const view = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength)

/**
 * Memory for this worker's results (stored blobs): buffers the main thread hands back once it
 * has copied them (`recycle`), so the same few circulate instead of new ones piling up in this
 * thread's malloc arena until the main thread's garbage collector frees them (which made RSS
 * grow by ~60 MB per worker).
 */
const memory = new MemoryPool(8 * 1024 * 1024)

/** what readRange reads into, grown to the biggest range so far */
let readScratch = Buffer.alloc(0)

/** `length` bytes at `offset` of the open file `fd` (a pack), in a scratch buffer valid until the next call */
function readRange({fd, offset, length}: {fd: number; offset: number; length: number}, where: string): Buffer {
  if (readScratch.length < length) readScratch = Buffer.allocUnsafeSlow(Math.max(length, readScratch.length * 2, 64 * 1024))
  let done = 0
  while (done < length) {
    let n: number
    try {
      n = readSync(fd, readScratch, done, length - done, offset + done)
    } catch (e) {
      // an I/O error reading the pack keeps its code, and says which pack it was
      if (e instanceof Error) e.message = `reading ${where}: ${e.message}`
      throw e
    }
    if (n === 0) throw new Error(`${where}: short read (${done} of ${length} bytes at ${offset})`)
    done += n
  }
  return readScratch.subarray(0, length)
}

const CREATE = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW

/** decode and check a stored blob, and write it at `pos` of `fd` unless it is all zeros; true when it was (nothing written: a hole) */
function writeBlob(stored: Buffer, b: {id: string; raw: number; where: string}, fd: number, pos: number): boolean {
  const plain = decodeBlob(stored, b.id, b.raw, b.where, key, true)
  if (isZero(plain)) return true
  for (let done = 0; done < plain.length; ) done += writeSync(fd, plain, done, plain.length - done, pos + done)
  return false
}

/** FileJob's work (see there) */
function writeFile(job: FileJob): void {
  const name = fsPath(job.path)
  const fd = openSync(name, CREATE, 0o600)
  let at = -1
  try {
    let pos = 0
    let end = 0
    for (at = 0; at < job.blobs.length; at++) {
      const b = job.blobs[at]
      if (!writeBlob(readRange(b, b.where), b, fd, pos)) end = pos + b.raw
      pos += b.raw
    }
    at = -1
    if (end < job.size) ftruncateSync(fd, job.size)
    if (job.owner) fchownSync(fd, job.owner[0], job.owner[1])
    fchmodSync(fd, job.mode)
    futimesSync(fd, job.mtime, job.mtime)
  } catch (e) {
    try {
      closeSync(fd)
    } catch {
      // the error that stopped the job is the one to report
    }
    // this job created it (O_EXCL): nothing of it stays
    try {
      unlinkSync(name)
    } catch {
      // gone already: what matters is the error that stopped the job
    }
    if (at >= 0 && e !== null && typeof e === 'object') Object.assign(e, {blob: at})
    throw e
  }
  closeSync(fd)
}

function handle(req: Exclude<BlobRequest, {op: 'recycle'}>): {reply: BlobReply; transfer: ArrayBuffer[]} {
  if (req.op === 'compress') {
    let left = req.items.reduce((n, it) => n + it[2], 0)
    try {
      const kept = req.items.map(([m, at, n, id]) => {
        const mem = req.data[m]
        // a detached or short memory would compress too few bytes under the chunk's id
        if (mem === undefined || at < 0 || at + n > mem.byteLength) throw new Error(`chunk ${id} (${n} bytes at ${at}) is not in the memory it was sent with`)
        const c = compressBlobOfId(Buffer.from(mem.buffer, mem.byteOffset + at, n), id, req.level)
        Atomics.add(data.done, 0, n)
        left -= n
        // stored as it is, unsealed: the main thread takes the bytes from the memory it gets back
        return c.enc === ENC_PLAIN && !key ? null : storedForm(c, key, (size) => memory.alloc(size))
      })
      const back = req.data.map((d) => d.buffer as ArrayBuffer)
      const results = kept.filter((k): k is Uint8Array => k !== null).map((k) => k.buffer as ArrayBuffer)
      return {reply: {seq: req.seq, kept, data: req.data}, transfer: [...results, ...back]}
    } finally {
      // a failed request is off this worker's backlog too
      if (left > 0) Atomics.add(data.done, 0, left)
    }
  }
  switch (req.op) {
    case 'file':
      writeFile(req)
      return {reply: {seq: req.seq, written: true}, transfer: []}
    case 'decode': {
      const plain = decodeBlob(view(req.data), req.id, req.raw, req.where, key)
      // decodeBlob returns a fresh buffer for a zstd frame, a view of the input for a plain blob
      const out = plain.byteOffset === 0 && plain.buffer.byteLength === plain.length ? plain : ownedCopy(plain)
      // the stored bytes go back too (see BlobReply), unless they are what is returned
      const input = req.data.buffer as ArrayBuffer
      const back = input === out.buffer ? [] : [input]
      return {reply: {seq: req.seq, plain: out, ...(back.length ? {data: req.data} : {})}, transfer: [out.buffer as ArrayBuffer, ...back]}
    }
    case 'write': {
      const zero = writeBlob(req.data ? view(req.data) : readRange(req.from!, req.where), req, req.fd, req.pos)
      return req.data ? {reply: {seq: req.seq, zero, data: req.data}, transfer: [req.data.buffer as ArrayBuffer]} : {reply: {seq: req.seq, zero}, transfer: []}
    }
  }
}

parentPort!.on('message', (req: BlobRequest) => {
  if (req.op === 'recycle') {
    // no reply: the main thread is done with these
    for (const d of req.data) memory.adopt(d.buffer as ArrayBuffer)
    return
  }
  let r: {reply: BlobReply; transfer: ArrayBuffer[]}
  try {
    r = handle(req)
  } catch (e) {
    const {message, code, errno, syscall} = e as NodeJS.ErrnoException
    // an errno error (a failed write) keeps its code, which the main thread maps (ENOSPC...)
    const sys = code === undefined ? {} : {errno: {code, errno, syscall}}
    const blob = (e as {blob?: number}).blob
    r = {reply: {seq: req.seq, error: message, ...(e instanceof CorruptBlobError ? {corrupt: {why: e.why}} : {}), ...sys, ...(blob === undefined ? {} : {blob})}, transfer: []}
  }
  parentPort!.postMessage(r.reply, r.transfer)
})
