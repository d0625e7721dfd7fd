/**
 * Pack files: blobs concatenated, then a header that lists them, then a 12-byte trailer:
 *
 *   blob*  header  u32le(header length)  "HSPACK01"
 *
 * Each blob is one encoding byte followed by its payload: 0x00 plain, 0x01 zstd frame; with
 * bit 0x80 set (encrypted repositories) the payload is nonce | AES-256-GCM(the above) | tag.
 * The header is one encoding byte (0x00 = plain JSON, 0x80 = sealed JSON) followed by
 * {"v":1,"blobs":[PackBlob]}. A pack's id is the SHA-256 of its whole (stored) content, so a
 * pack is verified by hashing it, with or without the key.
 *
 * Index files and manifests are JSON (plain repositories) or an encrypted envelope: see
 * sealJson / openJson. FORMAT.md has the byte layouts.
 */
import {createHash} from 'node:crypto'
import {decompress as zstdDecompress} from 'zstd-napi'
import {AuthenticationError, MasterKey, SEAL_OVERHEAD} from './crypto.js'
import {BlobType, PackBlob} from './format.js'
import {compressChunk, decompressChunk} from './zstd.js'

export const PACK_MAGIC = Buffer.from('HSPACK01', 'ascii')
export const ENC_PLAIN = 0x00
export const ENC_ZSTD = 0x01
/** bit of the encoding byte: the payload is sealed (nonce | ciphertext | tag) */
export const ENC_ENCRYPTED = 0x80

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex')
}

/** a blob's id: SHA-256 of its plaintext, or HMAC-SHA256 with the MAC key in an encrypted repository */
export function blobIdOf(plain: Buffer, key?: MasterKey): string {
  return key ? key.blobId(plain) : sha256(plain)
}

/**
 * Compress one blob with zstd unless that does not pay, and check that what will be stored
 * decodes back to the blob's id before it leaves (restic #4523). Returns the (unsealed)
 * encoding byte and payload, which may be `plain` itself (no copy) or a view of zstd's scratch
 * buffer (valid until the next compression).
 */
export function compressBlob(plain: Buffer, id: string, level: number, key?: MasterKey): {enc: number; payload: Buffer} {
  return compressChecked(plain, level, id, (back) => blobIdOf(back, key) === id)
}

/**
 * compressBlob for a blob whose id was computed from these very bytes (by blobIdOf, in this
 * thread or a blob worker, from memory nobody writes to afterwards): the decoded frame is
 * compared with `plain` byte for byte, which proves the same as hashing it again (it decodes
 * to the bytes that have the id) at a fraction of the cost.
 */
export function compressBlobOfId(plain: Buffer, id: string, level: number): {enc: number; payload: Buffer} {
  return compressChecked(plain, level, id, (back) => back.equals(plain))
}

function compressChecked(plain: Buffer, level: number, id: string, decodesToId: (back: Buffer) => boolean): {enc: number; payload: Buffer} {
  const z = plain.length >= 64 ? compressChunk(plain, level) : undefined
  if (z && z.length + 1 < plain.length - plain.length / 32) {
    const back = decompressChunk(z, plain.length, true)
    if (back.length !== plain.length || !decodesToId(back)) {
      throw new Error(`compression self-check failed for blob ${id}: the compressed data does not decode to it`)
    }
    return {enc: ENC_ZSTD, payload: z}
  }
  return {enc: ENC_PLAIN, payload: plain}
}

/** The stored form of a blob (encoding byte | payload, sealed with a key): compressBlob, then seal. */
export function encodeBlob(plain: Buffer, id: string, level: number, key?: MasterKey): Buffer {
  return storedForm(compressBlob(plain, id, level, key), key, (n) => Buffer.allocUnsafe(n)) as Buffer
}

/** a blob's stored form from compressBlob's result: encoding byte | payload, sealed with a key, in memory from `alloc` */
export function storedForm({enc, payload}: {enc: number; payload: Buffer}, key: MasterKey | undefined, alloc: (n: number) => Uint8Array): Uint8Array {
  const e = key ? enc | ENC_ENCRYPTED : enc
  const body = key ? key.seal(e, 'blob', payload) : payload
  const out = alloc(1 + body.length)
  out[0] = e
  out.set(body, 1)
  return out
}

/**
 * Decode a stored blob and verify it against its id. An encrypted repository (a key) accepts
 * only sealed blobs; a plain one only unsealed ones. With `scratch` a zstd blob is decoded into
 * zstd.ts's scratch buffer: the result is valid until the next decode (a blob worker writes
 * it out at once and allocates nothing a blob).
 */
export function decodeBlob(stored: Buffer, id: string, raw: number, where: string, key?: MasterKey, scratch = false): Buffer {
  if (stored.length < 1) throw new CorruptBlobError(id, where, 'empty')
  let enc = stored[0]
  let body = stored.subarray(1)
  if (enc & ENC_ENCRYPTED) {
    if (!key) throw new CorruptBlobError(id, where, 'it is encrypted, but the repository is not')
    try {
      body = key.open(enc, 'blob', body)
    } catch (e) {
      if (e instanceof AuthenticationError) throw new CorruptBlobError(id, where, 'authentication failed (modified, or not written with this repository\'s key)')
      throw e
    }
    enc &= ~ENC_ENCRYPTED
  } else if (key) throw new CorruptBlobError(id, where, 'it is not encrypted, but the repository is')
  let plain: Buffer
  if (enc === ENC_PLAIN) plain = body
  else if (enc === ENC_ZSTD) {
    try {
      plain = decompressChunk(body, raw, scratch)
    } catch (e) {
      throw new CorruptBlobError(id, where, `zstd: ${(e as Error).message}`)
    }
  } else throw new CorruptBlobError(id, where, `unknown encoding 0x${stored[0].toString(16)}`)
  if (plain.length !== raw || blobIdOf(plain, key) !== id) throw new CorruptBlobError(id, where, 'content does not match its hash')
  return plain
}

const ZEROS = Buffer.alloc(64 * 1024)

/** true when every byte of `buf` is 0 (a restore leaves such a blob as a hole) */
export function isZero(buf: Uint8Array): boolean {
  const n = buf.length
  if (n > 0 && (buf[0] !== 0 || buf[n - 1] !== 0)) return false
  for (let i = 0; i < n; i += ZEROS.length) {
    const end = Math.min(n, i + ZEROS.length)
    if (ZEROS.compare(buf, i, end, 0, end - i) !== 0) return false
  }
  return true
}

export class CorruptBlobError extends Error {
  constructor(readonly blobId: string, readonly where: string, readonly why: string) {
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

  /**
   * With a key, the header is sealed (blobs are added already encoded, sealed or not).
   * `capacity`: the size to allocate at once (a pack's target size plus one blob), so that a
   * full pack does not end in a buffer grown to twice that.
   */
  constructor(private readonly key?: MasterKey, private readonly capacity = 0) {}

  get length(): number {
    return this.size
  }

  get count(): number {
    return this.blobs.length
  }

  private reserve(n: number): void {
    if (this.size + n <= this.buf.length) return
    const want = this.size + n
    const next = Buffer.allocUnsafeSlow(want <= this.capacity ? this.capacity : Math.max(want, this.buf.length * 2, 1 << 20))
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
   * Add a blob as its unsealed encoding byte and payload, sealing it straight into the pack
   * (encoding byte | nonce | ciphertext | tag): no intermediate copy. Returns the stored length.
   */
  addSealed(id: string, type: BlobType, enc: number, payload: Buffer, raw: number, key: MasterKey): number {
    const length = 1 + payload.length + SEAL_OVERHEAD
    this.reserve(length)
    const e = enc | ENC_ENCRYPTED
    this.buf[this.size] = e
    const n = key.sealInto(e, 'blob', payload, this.buf, this.size + 1)
    if (n + 1 !== length) throw new Error(`sealed blob ${id} has ${n + 1} bytes, expected ${length}`)
    this.blobs.push({id, type, offset: this.size, length, raw})
    this.size += length
    return length
  }

  /**
   * The finished pack and its id. `data` is a view of the builder's buffer: use it before
   * adding to the builder again (reset() starts the next pack).
   */
  finish(): {id: string; data: Buffer; blobs: PackBlob[]} {
    const json = Buffer.from(JSON.stringify({v: 1, blobs: this.blobs}))
    const header = this.key
      ? Buffer.concat([Buffer.from([ENC_ENCRYPTED]), this.key.seal(ENC_ENCRYPTED, 'pack-header', json)])
      : Buffer.concat([Buffer.from([ENC_PLAIN]), json])
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

/**
 * Read the blob list of a whole pack (used by verify, transfers and index rebuild). An
 * encrypted repository's packs need its key.
 */
export function parsePackHeader(pack: Buffer, where: string, key?: MasterKey): PackBlob[] {
  const tl = 4 + PACK_MAGIC.length
  if (pack.length < tl || !pack.subarray(pack.length - PACK_MAGIC.length).equals(PACK_MAGIC)) {
    throw new Error(`${where}: not a holyship pack (bad trailer)`)
  }
  const hlen = pack.readUInt32LE(pack.length - tl)
  if (hlen < 1 || hlen > pack.length - tl) throw new Error(`${where}: bad pack header length ${hlen}`)
  const header = pack.subarray(pack.length - tl - hlen, pack.length - tl)
  let json: Buffer
  if (header[0] === ENC_ENCRYPTED) {
    if (!key) throw new Error(`${where}: the pack header is encrypted, but the repository is not`)
    try {
      json = key.open(ENC_ENCRYPTED, 'pack-header', header.subarray(1))
    } catch (e) {
      if (e instanceof AuthenticationError) throw new Error(`${where}: pack header authentication failed (modified, or not written with this repository's key)`)
      throw e
    }
  } else if (header[0] === ENC_PLAIN) {
    if (key) throw new Error(`${where}: the pack header is not encrypted, but the repository is`)
    json = header.subarray(1)
  } else throw new Error(`${where}: unknown pack header encoding 0x${header[0].toString(16)}`)
  let parsed: {v: number; blobs: PackBlob[]}
  try {
    parsed = JSON.parse(json.toString('utf8'))
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

// ------------------------------------------------------------------------------ JSON objects

/** what a JSON object of the repository is (part of its authenticated data when sealed) */
export type JsonObjectKind = 'index' | 'snapshot'

/** An index file or manifest that is damaged: not JSON, or (encrypted) not authentic. */
export class CorruptObjectError extends Error {
  constructor(readonly where: string, readonly why: string) {
    super(`${where} is damaged: ${why}`)
    this.name = 'CorruptObjectError'
  }
}

/**
 * The stored bytes of an index file or manifest: its JSON (plain repository), or one encoding
 * byte (0x80: JSON, 0x81: a zstd frame of the JSON) followed by nonce | ciphertext | tag.
 */
export function sealJson(kind: JsonObjectKind, value: unknown, key?: MasterKey): Buffer {
  const json = Buffer.from(JSON.stringify(value))
  if (!key) return json
  let enc = ENC_ENCRYPTED | ENC_PLAIN
  let payload: Buffer = json
  if (json.length >= 256) {
    const z = compressChunk(json, 3)
    if (z.length < json.length - json.length / 32) {
      enc = ENC_ENCRYPTED | ENC_ZSTD
      payload = z
    }
  }
  return Buffer.concat([Buffer.from([enc]), key.seal(enc, kind, payload)])
}

/** Inverse of sealJson. `where` names the object in messages. Throws CorruptObjectError. */
export function openJson<T>(kind: JsonObjectKind, data: Buffer, where: string, key?: MasterKey): T {
  let json: Buffer
  const enc = data.length > 0 ? data[0] : -1
  if (key) {
    if (enc !== (ENC_ENCRYPTED | ENC_PLAIN) && enc !== (ENC_ENCRYPTED | ENC_ZSTD)) {
      throw new CorruptObjectError(where, enc === 0x7b ? 'it is not encrypted, but the repository is' : 'not an encrypted object')
    }
    let body: Buffer
    try {
      body = key.open(enc, kind, data.subarray(1))
    } catch (e) {
      if (e instanceof AuthenticationError) throw new CorruptObjectError(where, "authentication failed (modified, or not written with this repository's key)")
      throw e
    }
    if (enc & ENC_ZSTD) {
      try {
        json = zstdDecompress(body)
      } catch (e) {
        throw new CorruptObjectError(where, `zstd: ${(e as Error).message}`)
      }
    } else json = body
  } else {
    if (enc >= 0 && enc & ENC_ENCRYPTED) throw new CorruptObjectError(where, 'it is encrypted, but the repository is not')
    json = data
  }
  try {
    return JSON.parse(json.toString('utf8')) as T
  } catch {
    throw new CorruptObjectError(where, 'not valid JSON')
  }
}
