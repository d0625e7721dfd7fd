/**
 * Pack files: blobs concatenated, then a header that lists them, then a 12-byte trailer:
 *
 *   blob*  header  u32le(header length)  "HSPACK01"
 *
 * Each blob is one encoding byte followed by its payload: 0x00 plain, 0x01 zstd frame.
 * Bit 0x80 is reserved for authenticated encryption (nonce | ciphertext | tag).
 * The header is one encoding byte (0x00 = plain JSON) followed by {"v":1,"blobs":[PackBlob]}.
 * A pack's id is the SHA-256 of its whole content, so a pack is verified by hashing it.
 */
import {createHash} from 'node:crypto'
import {BlobType, PackBlob} from './format.js'
import {compressChunk, decompressChunk} from './zstd.js'

export const PACK_MAGIC = Buffer.from('HSPACK01', 'ascii')
export const ENC_PLAIN = 0x00
export const ENC_ZSTD = 0x01

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex')
}

/**
 * Encode one blob: compress with zstd unless that does not pay, and check that what will
 * be stored decodes back to the blob's hash before it leaves (restic #4523). Returns the
 * encoding byte and the payload (which may be `plain` itself: no copy).
 */
export function encodeBlobParts(plain: Buffer, id: string, level: number): {enc: number; payload: Buffer} {
  const z = plain.length >= 64 ? compressChunk(plain, level) : undefined
  if (z && z.length + 1 < plain.length - plain.length / 32) {
    const back = decompressChunk(z, plain.length, true)
    if (back.length !== plain.length || sha256(back) !== id) {
      throw new Error(`compression self-check failed for blob ${id}: the compressed data does not decode to it`)
    }
    return {enc: ENC_ZSTD, payload: z}
  }
  return {enc: ENC_PLAIN, payload: plain}
}

/** encodeBlobParts as one buffer: the stored form of a blob */
export function encodeBlob(plain: Buffer, id: string, level: number): Buffer {
  const {enc, payload} = encodeBlobParts(plain, id, level)
  return Buffer.concat([Buffer.from([enc]), payload])
}

/** Decode a stored blob and verify its content hash. */
export function decodeBlob(stored: Buffer, id: string, raw: number, where: string): Buffer {
  if (stored.length < 1) throw new CorruptBlobError(id, where, 'empty')
  let plain: Buffer
  const enc = stored[0]
  if (enc === ENC_PLAIN) plain = stored.subarray(1)
  else if (enc === ENC_ZSTD) {
    try {
      plain = decompressChunk(stored.subarray(1), raw)
    } catch (e) {
      throw new CorruptBlobError(id, where, `zstd: ${(e as Error).message}`)
    }
  } else throw new CorruptBlobError(id, where, `unknown encoding 0x${enc.toString(16)}`)
  if (plain.length !== raw || sha256(plain) !== id) throw new CorruptBlobError(id, where, 'content does not match its hash')
  return plain
}

export class CorruptBlobError extends Error {
  constructor(readonly blobId: string, readonly where: string, why: string) {
    super(`blob ${blobId.slice(0, 16)} in ${where} is damaged: ${why}`)
    this.name = 'CorruptBlobError'
  }
}

/**
 * Accumulates encoded blobs into one pack, in one buffer that is reused from pack to pack
 * (no per-blob or per-pack concatenation: big short-lived buffers are what makes V8's
 * garbage collector busy).
 */
export class PackBuilder {
  private buf: Buffer = Buffer.alloc(0)
  private size = 0
  blobs: PackBlob[] = []

  get length(): number {
    return this.size
  }

  get count(): number {
    return this.blobs.length
  }

  private reserve(n: number): void {
    if (this.size + n <= this.buf.length) return
    const next = Buffer.allocUnsafeSlow(Math.max(this.size + n, this.buf.length * 2, 1 << 20))
    this.buf.copy(next, 0, 0, this.size)
    this.buf = next
  }

  /** add a stored blob (encoding byte included) */
  add(id: string, type: BlobType, encoded: Buffer, raw: number): void {
    this.reserve(encoded.length)
    this.blobs.push({id, type, offset: this.size, length: encoded.length, raw})
    encoded.copy(this.buf, this.size)
    this.size += encoded.length
  }

  /** add a blob as its encoding byte and payload */
  addParts(id: string, type: BlobType, enc: number, payload: Buffer, raw: number): void {
    this.reserve(payload.length + 1)
    this.blobs.push({id, type, offset: this.size, length: payload.length + 1, raw})
    this.buf[this.size] = enc
    payload.copy(this.buf, this.size + 1)
    this.size += payload.length + 1
  }

  /**
   * The finished pack and its id. `data` is a view of the builder's buffer: use it before
   * adding to the builder again (reset() starts the next pack).
   */
  finish(): {id: string; data: Buffer; blobs: PackBlob[]} {
    const header = Buffer.concat([Buffer.from([ENC_PLAIN]), Buffer.from(JSON.stringify({v: 1, blobs: this.blobs}))])
    const trailer = Buffer.alloc(4 + PACK_MAGIC.length)
    trailer.writeUInt32LE(header.length, 0)
    PACK_MAGIC.copy(trailer, 4)
    this.reserve(header.length + trailer.length)
    header.copy(this.buf, this.size)
    trailer.copy(this.buf, this.size + header.length)
    const data = this.buf.subarray(0, this.size + header.length + trailer.length)
    return {id: sha256(data), data, blobs: this.blobs}
  }

  reset(): void {
    this.size = 0
    this.blobs = []
  }
}

/** Read the blob list of a whole pack (used by verify and catalogue/index rebuild). */
export function parsePackHeader(pack: Buffer, where: string): PackBlob[] {
  const tl = 4 + PACK_MAGIC.length
  if (pack.length < tl || !pack.subarray(pack.length - PACK_MAGIC.length).equals(PACK_MAGIC)) {
    throw new Error(`${where}: not a holyship pack (bad trailer)`)
  }
  const hlen = pack.readUInt32LE(pack.length - tl)
  if (hlen < 1 || hlen > pack.length - tl) throw new Error(`${where}: bad pack header length ${hlen}`)
  const header = pack.subarray(pack.length - tl - hlen, pack.length - tl)
  if (header[0] !== ENC_PLAIN) throw new Error(`${where}: unknown pack header encoding 0x${header[0].toString(16)}`)
  let parsed: {v: number; blobs: PackBlob[]}
  try {
    parsed = JSON.parse(header.subarray(1).toString('utf8'))
  } catch {
    throw new Error(`${where}: pack header is not valid JSON`)
  }
  if (parsed.v !== 1 || !Array.isArray(parsed.blobs)) throw new Error(`${where}: unknown pack header version`)
  const end = pack.length - tl - hlen
  for (const b of parsed.blobs) {
    if (b.offset < 0 || b.offset + b.length > end) throw new Error(`${where}: blob ${b.id} lies outside the pack`)
  }
  return parsed.blobs
}
