/**
 * zstd through zstd-napi's low-level binding, compressing and decompressing into scratch
 * buffers that are reused from chunk to chunk: no allocation per chunk, so the garbage
 * collector stays out of the hot path. Results are views of the scratch buffers, valid until
 * the next call: copy them (into a pack) before compressing again.
 */
import {createRequire} from 'node:module'
import {DEFAULT_CHUNKER} from './chunker.js'

interface CCtx {
  setParameter(param: number, value: number): void
  compress2(dst: Uint8Array, src: Uint8Array): number
}
interface DCtx {
  decompress(dst: Uint8Array, src: Uint8Array): number
}
interface Binding {
  CCtx: new () => CCtx
  DCtx: new () => DCtx
  CParameter: Record<string, number>
  compressBound(n: number): number
}

const binding = createRequire(import.meta.url)('zstd-napi/binding') as Binding

const contexts = new Map<number, CCtx>()
let dctx: DCtx | undefined
let cScratch = Buffer.alloc(0)
let dScratch = Buffer.alloc(0)

function cctx(level: number): CCtx {
  let c = contexts.get(level)
  if (!c) {
    c = new binding.CCtx()
    c.setParameter(binding.CParameter.compressionLevel, level)
    c.setParameter(binding.CParameter.checksumFlag, 1)
    contexts.set(level, c)
  }
  return c
}

/**
 * the new size of a scratch buffer that must hold `need` bytes: doubled (so a thread whose
 * blobs grow does not reallocate at each), but not past `usual`, the most a chunk of the
 * default chunker needs, unless `need` is more: each scratch buffer stays resident
 */
function grown(need: number, had: number, usual: number): number {
  return Math.max(need, Math.min(Math.max(had * 2, 64 * 1024), usual))
}

/** Compress; the result is a view of a scratch buffer, valid until the next compressChunk(). */
export function compressChunk(plain: Buffer, level: number): Buffer {
  const bound = binding.compressBound(plain.length)
  // grown to what the biggest chunk so far needed (a thread that only ever compresses small
  // blobs and trees keeps a small one)
  if (cScratch.length < bound) cScratch = Buffer.allocUnsafeSlow(grown(bound, cScratch.length, binding.compressBound(DEFAULT_CHUNKER.max)))
  const n = cctx(level).compress2(cScratch, plain)
  return cScratch.subarray(0, n)
}

/**
 * Decompress a frame of known plaintext length. With `scratch` the result is a view of a
 * scratch buffer, valid until the next call (for checks); otherwise a fresh buffer.
 */
export function decompressChunk(z: Buffer, expectedLength: number, scratch = false): Buffer {
  dctx ??= new binding.DCtx()
  let out: Buffer
  if (scratch) {
    if (dScratch.length < expectedLength) dScratch = Buffer.allocUnsafeSlow(grown(expectedLength, dScratch.length, DEFAULT_CHUNKER.max))
    out = dScratch
  } else out = Buffer.allocUnsafe(expectedLength)
  // a frame that decodes to more than expected fails here (the output buffer is too small)
  const n = dctx.decompress(out.subarray(0, expectedLength), z)
  if (n !== expectedLength) throw new Error(`decompressed to ${n} bytes, expected ${expectedLength}`)
  return out.subarray(0, n)
}
