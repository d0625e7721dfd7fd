/**
 * A pool of blob workers (blob-worker.ts): compressing (with its decode-and-compare check)
 * and decoding blobs on every core while the main thread reads, chunks, hashes, deduplicates
 * and writes packs.
 *
 * Buffers cross the thread boundary by transfer, not copy: the memory of new chunks (a file's
 * content, or a piece of a big one) goes to a worker with the chunks' places and ids, and comes
 * back with their stored forms. Nothing writes to the memory in between, so the ids the main
 * thread computed still name the bytes the worker compresses. How far behind each worker is
 * it writes to a shared counter as it goes, so the main thread sees it at once (replies wait
 * in its event loop) and compresses chunks itself when the workers have enough to do.
 * (SharedArrayBuffers for the data were tried first: their memory lives until every
 * thread's garbage collector lets go, and a worker's seldom runs; RSS went to 650 MB.)
 *
 * Workers are referenced only while they have work, so an idle pool never keeps the process
 * alive, and a worker that dies fails every request it had (and the pool, from then on) with
 * an error instead of leaving a promise that never settles.
 */
import * as os from 'node:os'
import {Worker} from 'node:worker_threads'
import debugFactory from 'debug'
import {MasterKey} from './crypto.js'
import {CorruptBlobError} from './pack.js'
import type {BlobReply, BlobRequest, BlobWorkerData, CompressItem, FileJob} from './blob-worker.js'

const debug = debugFactory('holyship:workers')

/** blobs smaller than this are handled on the main thread: a round trip costs more than the work */
export const POOL_MIN_BLOB = 16 * 1024

/** what a pool is for: storing blobs (a snapshot) or writing them out (a restore) */
export type PoolUse = 'store' | 'restore'

/**
 * Workers to start: HOLYSHIP_WORKERS (a number; `auto` = one per core the process may use, at
 * most 4). Without it, where the process may use two cores or more: one for a snapshot
 * ('store'), which compresses there while the main thread reads, hashes and packs (README,
 * Performance; a second worker on two cores was not faster: three threads for two cores), and two
 * for a restore, whose main thread walks the trees and creates
 * the files while they decode, check and write the data (on two cores, one worker made a
 * restore of the bench's data 10% faster, two 20%). One core: none.
 */
export function poolSize(env: NodeJS.ProcessEnv = process.env, use: PoolUse = 'store'): number {
  const v = env.HOLYSHIP_WORKERS
  if (v === 'auto') return Math.min(4, Math.max(1, os.availableParallelism()))
  if (v !== undefined && v !== '') {
    const n = Number(v)
    if (Number.isInteger(n) && n >= 0 && n <= 64) return n
  }
  if (os.availableParallelism() < 2) return 0
  return use === 'restore' ? 2 : 1
}

/** a request without its sequence number (which call() assigns) */
type RequestBody = BlobRequest extends infer R ? (R extends {seq: number} ? Omit<R, 'seq'> : never) : never

interface Pending {
  resolve: (r: BlobReply) => void
  reject: (e: Error) => void
  slot: Slot
}

interface Slot {
  worker: Worker
  busy: number
  /** bytes sent to compress, and (written by the worker as it goes) compressed, both modulo 2^32 */
  sent: number
  done: Int32Array
}

/**
 * bytes a worker has yet to compress, as of now: read from the counter it advances, not from
 * its replies, which wait in this thread's event loop until it next polls
 */
const backlog = (s: Slot): number => (s.sent - Atomics.load(s.done, 0)) >>> 0

/** which worker a result came from (for recycle()) */
export type WorkerRef = unknown

/**
 * `buf` as a buffer that owns its whole ArrayBuffer (so it can be transferred to a worker
 * without detaching anything else): `buf` itself when it does, else ownedCopy(buf).
 */
export function owned(buf: Buffer): Buffer {
  if (buf.byteOffset === 0 && buf.buffer.byteLength === buf.length && !(buf.buffer instanceof SharedArrayBuffer)) return buf
  return ownedCopy(buf)
}

/** a copy of `buf` in memory of its own (never a slice of Node's shared buffer pool, which cannot be transferred) */
export function ownedCopy(buf: Uint8Array): Buffer {
  const out = Buffer.allocUnsafeSlow(buf.length)
  out.set(buf)
  return out
}

export class BlobPool {
  private readonly slots: Slot[] = []
  private readonly pending = new Map<number, Pending>()
  private seq = 0
  private broken?: Error
  private closed = false

  constructor(readonly size: number, key?: MasterKey) {
    if (size < 1) throw new Error(`a blob pool needs at least one worker, not ${size}`)
    const material = key ? new Uint8Array(key.toBytes()) : null
    for (let i = 0; i < size; i++) {
      const done = new Int32Array(new SharedArrayBuffer(4))
      const worker = startWorker({key: material, done})
      const slot: Slot = {worker, busy: 0, sent: 0, done}
      worker.unref()
      worker.on('message', (r: BlobReply) => this.settle(r))
      worker.on('error', (e) => this.fail(slot, e))
      worker.on('exit', (code) => {
        if (!this.closed) this.fail(slot, new Error(`blob worker exited with code ${code}`))
      })
      this.slots.push(slot)
    }
    debug('started %d blob workers%s', size, key ? ' (encrypted repository)' : '')
  }

  /** true once a worker died: the pool refuses work (a new one can be started) */
  get failed(): boolean {
    return this.broken !== undefined
  }

  /**
   * Hand results (stored blobs from compress()) back to the worker they came from
   * once they are copied: it reuses their memory for its next results. They are unusable after.
   */
  recycle(from: WorkerRef, buffers: Buffer[]): void {
    const slot = from as Slot
    if (this.broken || this.closed || !this.slots.includes(slot)) return
    const abs = [...new Set(buffers.map((b) => b.buffer as ArrayBuffer))].filter((ab) => !(ab instanceof SharedArrayBuffer) && ab.byteLength > 0)
    slot.worker.postMessage({op: 'recycle', seq: 0, data: abs.map((ab) => new Uint8Array(ab))} as BlobRequest, abs)
  }

  /** decodeBlob in a worker (`stored` is handed over when it owns its memory). Throws CorruptBlobError like decodeBlob. */
  async decode(stored: Buffer, id: string, raw: number, where: string): Promise<Buffer> {
    const data = owned(stored)
    const r = await this.call({op: 'decode', data: transferable(data), id, raw, where}, [data.buffer as ArrayBuffer])
    if ('corrupt' in r && r.corrupt) throw new CorruptBlobError(id, where, r.corrupt.why)
    return asBuffer((r as {plain: Uint8Array}).plain)
  }

  /**
   * Decode and check a stored blob like decode(), and write its plaintext at `pos` of the open
   * file `fd` in the worker, unless it is all zeros (then nothing is written: a hole). Returns
   * whether it was. `stored` is handed over when it owns its memory; or it is a range of an
   * open file (a pack), which the worker reads itself (a short read fails). Throws CorruptBlobError
   * like decodeBlob, and a failed write's errno error (its code kept).
   */
  async write(stored: Buffer | {fd: number; offset: number; length: number}, id: string, raw: number, where: string, fd: number, pos: number): Promise<{zero: boolean}> {
    let r: BlobReply
    if (Buffer.isBuffer(stored)) {
      const data = owned(stored)
      r = await this.call({op: 'write', data: transferable(data), id, raw, where, fd, pos}, [data.buffer as ArrayBuffer])
    } else r = await this.call({op: 'write', from: stored, id, raw, where, fd, pos}, [])
    if ('corrupt' in r && r.corrupt) throw new CorruptBlobError(id, where, r.corrupt.why)
    return {zero: (r as {zero: boolean}).zero}
  }

  /**
   * Write a whole file in a worker (see FileJob). A damaged blob throws CorruptBlobError, any
   * other failure its error (an errno error keeps its code); either carries `blob`, the index
   * of the blob it failed on, when it failed on one. Nothing of the file is left then.
   */
  async file(job: FileJob): Promise<void> {
    const r = await this.callOn(this.leastBusy(), {op: 'file', ...job}, [])
    if ('corrupt' in r.reply && r.reply.corrupt) {
      const b = job.blobs[r.reply.blob ?? 0]
      throw Object.assign(new CorruptBlobError(b.id, b.where, r.reply.corrupt.why), {blob: r.reply.blob})
    }
  }

  /** bytes handed to compress() that the workers have not compressed yet: how far behind they are */
  get queued(): number {
    let n = 0
    for (const s of this.slots) n += backlog(s)
    return n
  }

  /**
   * The stored form of chunks (CompressItem: a memory, offset, length and the id the caller
   * computed from those bytes), compressed when it pays and checked by decoding, in the worker
   * with the fewest bytes queued; null for a chunk stored as it is, unsealed (its stored form
   * is ENC_PLAIN and its bytes). `memories` are handed over (transferred) whole: every view of
   * them is unusable from now on. They come back in `memories` of the result, with the worker
   * to recycle() the stored forms to once they are copied.
   */
  async compress(memories: ArrayBuffer[], items: CompressItem[], level: number): Promise<{stored: (Buffer | null)[]; memories: ArrayBuffer[]; from: WorkerRef}> {
    let slot = this.slots[0]
    for (const s of this.slots) if (backlog(s) < backlog(slot)) slot = s
    const bytes = items.reduce((n, it) => n + it[2], 0)
    const data = memories.map((m) => new Uint8Array(m))
    const {reply} = await this.callOn(slot, {op: 'compress', data, items, level}, memories, bytes)
    const r = reply as {kept: (Uint8Array | null)[]; data: Uint8Array[]}
    return {stored: r.kept.map((k) => (k ? asBuffer(k) : null)), memories: r.data.map((d) => d.buffer as ArrayBuffer), from: slot}
  }

  /**
   * Stop the workers; requests still running fail, once the workers are gone: a worker may be
   * writing to a file or reading a pack by descriptor, which must stay open until it has stopped.
   */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await Promise.all(this.slots.map((s) => s.worker.terminate()))
    this.failAll(new Error('the blob pool was closed'))
  }

  private async call(req: RequestBody, transfer: ArrayBuffer[]): Promise<BlobReply> {
    return (await this.callOn(this.leastBusy(), req, transfer)).reply
  }

  private leastBusy(): Slot {
    let slot = this.slots[0]
    for (const s of this.slots) if (s.busy < slot.busy) slot = s
    return slot
  }

  private callOn(slot: Slot, req: RequestBody, transfer: ArrayBuffer[], bytes = 0): Promise<{reply: BlobReply; seq: number}> {
    if (this.broken) return Promise.reject(this.broken)
    if (this.closed) return Promise.reject(new Error('the blob pool was closed'))
    const seq = ++this.seq
    return new Promise<BlobReply>((resolve, reject) => {
      this.pending.set(seq, {resolve, reject, slot})
      if (slot.busy++ === 0) slot.worker.ref()
      try {
        debug('-> %d %s slot %d busy %d', seq, req.op, this.slots.indexOf(slot), slot.busy)
        slot.worker.postMessage({...req, seq} as BlobRequest, transfer)
        // on the backlog once the worker has it (a message that was not sent never will be)
        slot.sent = (slot.sent + bytes) | 0
      } catch (e) {
        // not sent (a buffer that cannot be transferred): nothing will answer this request
        this.settle({seq, error: (e as Error).message})
      }
    }).then((reply) => {
      if ('error' in reply && !('corrupt' in reply && reply.corrupt)) {
        throw Object.assign(new Error(reply.error), reply.errno ?? {}, reply.blob === undefined ? {} : {blob: reply.blob})
      }
      return {reply, seq}
    })
  }

  private settle(r: BlobReply): void {
    debug('<- %d %s', r.seq, 'error' in r ? r.error : 'ok')
    const p = this.pending.get(r.seq)
    if (!p) return
    this.pending.delete(r.seq)
    if (--p.slot.busy === 0) p.slot.worker.unref()
    p.resolve(r)
  }

  private fail(slot: Slot, e: Error): void {
    if (this.closed) return
    this.broken ??= new Error(`a blob worker failed: ${e.message}`, {cause: e})
    debug('blob worker failed: %s', e.message)
    for (const [seq, p] of this.pending) {
      if (p.slot !== slot) continue
      this.pending.delete(seq)
      p.reject(this.broken)
    }
    slot.busy = 0
    slot.worker.unref()
  }

  private failAll(e: Error): void {
    for (const [seq, p] of this.pending) {
      this.pending.delete(seq)
      p.reject(e)
    }
    for (const s of this.slots) {
      s.busy = 0
      s.worker.unref()
    }
  }
}

const sharedPools = new Map<string, BlobPool>()

/**
 * The process's pool for repositories with this key (or none): started on first use with
 * poolSize() workers, undefined when that is 0. Repositories share it, so a process that opens
 * many never starts more workers than cores.
 */
export function sharedPool(key?: MasterKey, use: PoolUse = 'store'): BlobPool | undefined {
  const size = poolSize(process.env, use)
  if (size === 0) return undefined
  const name = `${key ? key.blobId(Buffer.from('holyship-pool')) : 'plain'}:${size}`
  let pool = sharedPools.get(name)
  if (!pool || pool.failed) {
    pool = new BlobPool(size, key)
    sharedPools.set(name, pool)
  }
  return pool
}

/** stop every shared pool (the end of a command); the next sharedPool() starts a new one */
export async function closeSharedPools(): Promise<void> {
  const pools = [...sharedPools.values()]
  sharedPools.clear()
  await Promise.all(pools.map((p) => p.close()))
}

function transferable(b: Buffer): Uint8Array {
  if (b.byteOffset !== 0 || b.buffer.byteLength !== b.length || b.buffer instanceof SharedArrayBuffer) {
    throw new Error('blob pool data must own its memory (owned() it first)')
  }
  return new Uint8Array(b.buffer, 0, b.length)
}

const asBuffer = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength)

/**
 * The worker runs the compiled blob-worker.js next to this module; when this module is the
 * TypeScript source (tests run it through tsx or vitest), the worker loads the source through
 * tsx's loader instead.
 */
function startWorker(workerData: BlobWorkerData): Worker {
  const self = import.meta.url
  // a worker's JS heap holds next to nothing (the data is in ArrayBuffers): a small young
  // generation keeps each worker's resident memory small
  const resourceLimits = {maxYoungGenerationSizeMb: 4}
  if (self.endsWith('.ts')) {
    const src = new URL('./blob-worker.ts', self).href
    return new Worker(`import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(src)}) })`, {eval: true, workerData, resourceLimits})
  }
  return new Worker(new URL('./blob-worker.js', self), {workerData, resourceLimits})
}
