/**
 * A blob worker (worker_threads): the CPU-heavy part of storing and reading a blob, off the
 * main thread, so a snapshot or restore uses every core. The main thread keeps everything
 * that needs shared state (the index, dedup, packs, I/O); a worker only computes. See
 * blob-pool.ts for the protocol; the functions used are the same as on the main thread.
 *
 *   hash      data            -> id                (SHA-256, or HMAC-SHA256 with the MAC key)
 *   compress  data, id, level -> stored bytes      (zstd when it pays, decoded back and compared
 *                                                   before it is returned; sealed with a key)
 *   decode    stored, id, raw -> plaintext         (opened, decompressed, verified against id)
 *   chunk     data, chunker   -> [{id, offset, length}]   (a whole file read in one piece: cut
 *                                                   and hashed here; the data stays here)
 *   keep      token, wanted   -> stored bytes of the wanted chunks of a `chunk` request
 *                                                   (the main thread dropped the ones it has)
 */
import {parentPort, workerData} from 'node:worker_threads'
import {MasterKey} from './crypto.js'
import {Chunker, ChunkerParams} from './chunker.js'
import {CorruptBlobError, blobIdOf, decodeBlob, encodeBlobOfId} from './pack.js'

export type BlobRequest =
  | {seq: number; op: 'hash'; data: Uint8Array}
  | {seq: number; op: 'compress'; data: Uint8Array; id: string; level: number}
  | {seq: number; op: 'decode'; data: Uint8Array; id: string; raw: number; where: string}
  | {seq: number; op: 'chunk'; data: Uint8Array; chunker: ChunkerParams}
  | {seq: number; op: 'keep'; token: number; wanted: number[]; level: number}

/**
 * Every buffer a request brought is transferred back with the reply (`data`), so no memory
 * is left for this thread's garbage collector, which runs seldom (it allocates little).
 */
export type BlobReply =
  | {seq: number; id: string; data: Uint8Array}
  | {seq: number; stored: Uint8Array; data: Uint8Array}
  | {seq: number; plain: Uint8Array}
  | {seq: number; chunks: {id: string; offset: number; length: number}[]}
  | {seq: number; kept: Uint8Array[]; data: Uint8Array}
  | {seq: number; error: string; corrupt?: {why: string}}

export interface BlobWorkerData {
  /** the repository's master key material (encrypted repositories), else null */
  key: Uint8Array | null
}

const data = workerData as BlobWorkerData
const key = data.key ? MasterKey.fromBytes(Buffer.from(data.key)) : undefined

const view = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength)

/** a buffer of its own (transferable, not a view of scratch memory) holding `b` */
function owned(b: Buffer): Uint8Array {
  const out = new Uint8Array(b.length)
  out.set(b)
  return out
}

/** data of `chunk` requests waiting for their `keep`, by the chunk request's seq */
const held = new Map<number, {data: Uint8Array; chunks: {offset: number; length: number; id: string}[]}>()

const stored = (plain: Buffer, id: string, level: number): Uint8Array => encodeBlobOfId(plain, id, level, key)

function handle(req: BlobRequest): {reply: BlobReply; transfer: ArrayBuffer[]} {
  if (req.op === 'keep') {
    const h = held.get(req.token)
    if (!h) throw new Error(`no chunked data under token ${req.token}`)
    held.delete(req.token)
    const buf = view(h.data)
    const kept = req.wanted.map((i) => {
      const c = h.chunks[i]
      return stored(buf.subarray(c.offset, c.offset + c.length), c.id, req.level)
    })
    return {reply: {seq: req.seq, kept, data: h.data}, transfer: [...kept.map((k) => k.buffer as ArrayBuffer), h.data.buffer as ArrayBuffer]}
  }
  const back = [req.data.buffer as ArrayBuffer]
  switch (req.op) {
    case 'chunk': {
      const buf = view(req.data)
      const chunker = new Chunker(req.chunker)
      const chunks: {id: string; offset: number; length: number}[] = []
      let offset = 0
      const cut = (c: Buffer): void => {
        chunks.push({id: blobIdOf(c, key), offset, length: c.length})
        offset += c.length
      }
      for (const c of chunker.push(buf)) cut(c)
      const last = chunker.finish()
      if (last) cut(last)
      held.set(req.seq, {data: req.data, chunks})
      return {reply: {seq: req.seq, chunks}, transfer: []}
    }
    case 'hash':
      return {reply: {seq: req.seq, id: blobIdOf(view(req.data), key), data: req.data}, transfer: back}
    case 'compress': {
      const out = stored(view(req.data), req.id, req.level)
      return {reply: {seq: req.seq, stored: out, data: req.data}, transfer: [out.buffer as ArrayBuffer, ...back]}
    }
    case 'decode': {
      const plain = decodeBlob(view(req.data), req.id, req.raw, req.where, key)
      // decodeBlob returns a fresh buffer for a zstd frame, a view of the input for a plain blob
      const out = plain.byteOffset === 0 && plain.buffer.byteLength === plain.length ? plain : owned(plain)
      return {reply: {seq: req.seq, plain: out}, transfer: [out.buffer as ArrayBuffer]}
    }
  }
}

parentPort!.on('message', (req: BlobRequest) => {
  let r: {reply: BlobReply; transfer: ArrayBuffer[]}
  try {
    r = handle(req)
  } catch (e) {
    const err = e as Error
    r = {reply: {seq: req.seq, error: err.message, ...(e instanceof CorruptBlobError ? {corrupt: {why: (e as CorruptBlobError).why}} : {})}, transfer: []}
  }
  parentPort!.postMessage(r.reply, r.transfer)
})
