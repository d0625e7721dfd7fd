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
 *   chunk     data, chunker   -> [{id, offset, length}]   (a whole file read in one piece: cut
 *                                                   and hashed (SHA-256, or HMAC-SHA256 with
 *                                                   the MAC key) here; the data stays here)
 *   hash      data, cuts      -> [{id, offset, length}]   (chunks the main thread cut out of
 *                                                   a piece of a big file: hashed here, kept
 *                                                   here like `chunk`'s)
 *   keep      token, wanted   -> stored bytes of the wanted chunks of a `chunk` or `hash`
 *                                                   request (the main thread dropped the ones it
 *                                                   has): zstd when it pays, decoded back and
 *                                                   compared first; sealed with a key
 */
import {closeSync, fchmodSync, fchownSync, constants as fsc, ftruncateSync, futimesSync, openSync, readSync, unlinkSync, writeSync} from 'node:fs'
import {parentPort, workerData} from 'node:worker_threads'
import {fsPath} from '../archive/names.js'
import {MasterKey} from './crypto.js'
import {ownedCopy} from './blob-pool.js'
import {Chunker, ChunkerParams, cutAll} from './chunker.js'
import {CorruptBlobError, blobIdOf, decodeBlob, encodeBlobOfId, isZero} from './pack.js'

export type BlobRequest =
  | {seq: number; op: 'decode'; data: Uint8Array; id: string; raw: number; where: string}
  | {seq: number; op: 'write'; data?: Uint8Array; from?: {fd: number; offset: number; length: number}; id: string; raw: number; where: string; fd: number; pos: number}
  | ({seq: number; op: 'file'} & FileJob)
  | {seq: number; op: 'chunk'; data: Uint8Array; chunker: ChunkerParams}
  | {seq: number; op: 'hash'; data: Uint8Array; cuts: [number, number][]}
  | {seq: number; op: 'keep'; token: number; wanted: number[]; level: number}
  | {seq: number; op: 'recycle'; data: Uint8Array[]}

/**
 * Every buffer a request brought is transferred back with the reply (`data`), so no memory
 * is left for this thread's garbage collector, which runs seldom (it allocates little).
 */
export type BlobReply =
  | {seq: number; plain: Uint8Array; data?: Uint8Array}
  | {seq: number; zero: boolean; data?: Uint8Array}
  | {seq: number; chunks: {id: string; offset: number; length: number}[]}
  | {seq: number; kept: Uint8Array[]; data: Uint8Array[]}
  | {seq: number; written: true}
  | {seq: number; error: string; corrupt?: {why: string}; errno?: {code?: string; errno?: number; syscall?: string}; blob?: number}

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
}

const data = workerData as BlobWorkerData
const key = data.key ? MasterKey.fromBytes(Buffer.from(data.key)) : undefined

const view = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength)

/**
 * Buffers this worker allocates for its results (stored blobs, chunks made of several pieces)
 * come from buffers the main thread hands back once it has copied them (`recycle`), so the
 * same few circulate instead of new ones piling up in this thread's malloc arena until the
 * main thread's garbage collector frees them (which made RSS grow by ~60 MB per worker).
 */
const free: ArrayBuffer[] = []
let freeBytes = 0
const FREE_MAX = 8 * 1024 * 1024
/** buffers allocated here, not yet sent away (keep() puts them back on the free list itself) */
const mine = new WeakSet<ArrayBuffer>()

function alloc(n: number): Buffer {
  let best = -1
  for (let i = 0; i < free.length; i++) if (free[i].byteLength >= n && (best < 0 || free[i].byteLength < free[best].byteLength)) best = i
  let ab: ArrayBuffer
  if (best >= 0) {
    ab = free[best]
    free.splice(best, 1)
    freeBytes -= ab.byteLength
  } else {
    // powers of two from 64 KiB, so a recycled buffer fits many later needs
    let size = 64 * 1024
    while (size < n) size *= 2
    ab = new ArrayBuffer(size)
  }
  mine.add(ab)
  return Buffer.from(ab, 0, n)
}

function recycle(ab: ArrayBuffer): void {
  if (ab.byteLength < 64 * 1024 || freeBytes + ab.byteLength > FREE_MAX) return
  free.push(ab)
  freeBytes += ab.byteLength
}

/** chunks of `chunk` and `hash` requests waiting for their `keep`, by the request's seq */
const held = new Map<number, {chunks: Buffer[]; ids: string[]}>()

/** hash the chunks cut from one request and keep them for its `keep` */
function cutAndHold(seq: number, chunks: Buffer[]): BlobReply {
  let offset = 0
  const out = chunks.map((c) => {
    const r = {id: blobIdOf(c, key), offset, length: c.length}
    offset += c.length
    return r
  })
  held.set(seq, {chunks, ids: out.map((c) => c.id)})
  return {seq, chunks: out}
}

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

const stored = (plain: Buffer, id: string, level: number): Uint8Array => encodeBlobOfId(plain, id, level, key, alloc)

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
  if (req.op === 'keep') {
    const h = held.get(req.token)
    if (!h) throw new Error(`no chunked data under token ${req.token}`)
    held.delete(req.token)
    const kept = req.wanted.map((i) => stored(h.chunks[i], h.ids[i], req.level))
    // the buffers the chunks live in: this worker's own go back on its free list; the main
    // thread's (a file's content) go back to it (see BlobReply). The session's unfinished
    // chunk was copied out of them (Chunker.ownPending).
    const buffers = [...new Set(h.chunks.map((c) => c.buffer as ArrayBuffer))]
    const theirs = buffers.filter((b) => !mine.has(b))
    for (const b of buffers) if (mine.has(b)) recycle(b)
    return {reply: {seq: req.seq, kept, data: theirs.map((b) => new Uint8Array(b))}, transfer: [...kept.map((k) => k.buffer as ArrayBuffer), ...theirs]}
  }
  if (req.op === 'hash') {
    const all = view(req.data)
    return {reply: cutAndHold(req.seq, req.cuts.map(([at, n]) => all.subarray(at, at + n))), transfer: []}
  }
  switch (req.op) {
    case 'file':
      writeFile(req)
      return {reply: {seq: req.seq, written: true}, transfer: []}
    case 'chunk':
      return {reply: cutAndHold(req.seq, cutAll(new Chunker(req.chunker, alloc), view(req.data))), transfer: []}
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
    for (const d of req.data) recycle(d.buffer as ArrayBuffer)
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
