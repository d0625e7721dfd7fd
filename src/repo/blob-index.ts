/**
 * The in-memory blob index: where every blob of the repository is (pack, offset, stored and
 * plain length, type), keyed by the blob's id. A repository of small files has a blob per
 * file, so this is the one structure that grows with the data: a JavaScript Map of hex strings
 * to objects cost ~200 bytes a blob (a million small files: ~200 MB). Here ids are kept as
 * 32 binary bytes and the fields in typed arrays, in segments of 65,536 entries (growing never
 * copies them), found through an open-addressing table: ~60 bytes a blob.
 *
 * Ids are SHA-256 or HMAC-SHA256 outputs, so their first bytes are already a uniform hash.
 */
import type {BlobType} from './format.js'

export interface BlobLocation {
  pack: string
  type: BlobType
  offset: number
  length: number
  raw: number
}

/** a blob's or pack's id as holyship writes it: 64 lowercase hex digits */
export const isObjectId = (id: unknown): boolean => typeof id === 'string' && /^[0-9a-f]{64}$/.test(id)
const isU32 = (n: unknown): boolean => Number.isInteger(n) && (n as number) >= 0 && (n as number) <= 0xffffffff

/** a blob entry that can be real (and fits the index): an id, a type, 32-bit offset and lengths */
export function validBlob(id: unknown, type: unknown, offset: unknown, length: unknown, raw: unknown): boolean {
  return isObjectId(id) && validPlace(type, offset, length, raw)
}

/** validBlob's rule for all but the id (which decode() checks where it is decoded) */
function validPlace(type: unknown, offset: unknown, length: unknown, raw: unknown): boolean {
  return (type === 'data' || type === 'tree') && isU32(offset) && isU32(length) && isU32(raw)
}

const ID_BYTES = 32
const TYPES: BlobType[] = ['data', 'tree']
/** entries are kept in segments of this many, so growing never copies them (nor needs twice the memory) */
const SEG_BITS = 16
const SEG = 1 << SEG_BITS
const SEG_MASK = SEG - 1

interface Segment {
  ids: Buffer
  packNo: Uint32Array
  offsets: Uint32Array
  lengths: Uint32Array
  raws: Uint32Array
  types: Uint8Array
}

export class BlobIndex {
  private count = 0
  /** entry e lives in segs[e >> SEG_BITS] at (e & SEG_MASK); its id at 32 times that */
  private readonly segs: Segment[] = []
  /** open addressing: entry index + 1, 0 = empty; its size is a power of two, at most half full */
  private table = new Uint32Array(0)
  private readonly packIds: string[] = []
  private readonly packNos = new Map<string, number>()
  /** where a looked-up id is decoded (no allocation per look-up) */
  private readonly key = Buffer.alloc(ID_BYTES)

  get size(): number {
    return this.count
  }

  has(id: string): boolean {
    return this.find(id) >= 0
  }

  get(id: string): BlobLocation | undefined {
    const e = this.find(id)
    return e < 0 ? undefined : this.location(e)
  }

  /** add a blob's location, or replace the one it has */
  set(id: string, loc: BlobLocation): void {
    this.put(id, loc, true)
  }

  /** add a blob's location unless the index has one for it; false when it had */
  addIfAbsent(id: string, loc: BlobLocation): boolean {
    return this.put(id, loc, false)
  }

  /**
   * addIfAbsent for entries of a cache that may hold what cannot be real (validBlob false):
   * those are left out, not thrown. 'invalid', or whether it was added.
   */
  addValid(id: string, loc: BlobLocation): boolean | 'invalid' {
    if (!this.decode(id) || !validPlace(loc.type, loc.offset, loc.length, loc.raw)) return 'invalid'
    return this.putKey(loc, false)
  }

  private put(id: string, loc: BlobLocation, replace: boolean): boolean {
    if (!this.decode(id)) throw new Error(`not a blob id: ${JSON.stringify(id)}`)
    if (!validPlace(loc.type, loc.offset, loc.length, loc.raw)) throw new Error(`blob ${id}: location out of range: ${JSON.stringify(loc)}`)
    return this.putKey(loc, replace)
  }

  /** put() of the id decode() left in this.key */
  private putKey(loc: BlobLocation, replace: boolean): boolean {
    let e = this.slotOfKey()
    if (e >= 0 && !replace) return false
    if (e < 0) {
      if ((this.count + 1) * 2 > this.table.length) this.grow()
      e = this.count++
      if ((e & SEG_MASK) === 0) this.segs.push(newSegment())
      this.key.copy(this.segs[e >>> SEG_BITS].ids, (e & SEG_MASK) * ID_BYTES)
      this.insert(e)
    }
    let pack = this.packNos.get(loc.pack)
    if (pack === undefined) {
      pack = this.packIds.push(loc.pack) - 1
      this.packNos.set(loc.pack, pack)
    }
    const seg = this.segs[e >>> SEG_BITS]
    const i = e & SEG_MASK
    seg.packNo[i] = pack
    seg.offsets[i] = loc.offset
    seg.lengths[i] = loc.length
    seg.raws[i] = loc.raw
    seg.types[i] = loc.type === 'tree' ? 1 : 0
    return true
  }

  *entries(): IterableIterator<[string, BlobLocation]> {
    for (let e = 0; e < this.count; e++) {
      const at = (e & SEG_MASK) * ID_BYTES
      yield [this.segs[e >>> SEG_BITS].ids.toString('hex', at, at + ID_BYTES), this.location(e)]
    }
  }

  [Symbol.iterator](): IterableIterator<[string, BlobLocation]> {
    return this.entries()
  }

  private location(e: number): BlobLocation {
    const seg = this.segs[e >>> SEG_BITS]
    const i = e & SEG_MASK
    return {pack: this.packIds[seg.packNo[i]], type: TYPES[seg.types[i]], offset: seg.offsets[i], length: seg.lengths[i], raw: seg.raws[i]}
  }

  /** the entry of `id`, or -1 (also for what is not a 64-digit lowercase hex id: no blob has it) */
  private find(id: string): number {
    if (this.count === 0 || !this.decode(id)) return -1
    return this.slotOfKey()
  }

  /** `id` into this.key; false when it is not 64 lowercase hex digits */
  private decode(id: string): boolean {
    return isObjectId(id) && this.key.write(id, 'hex') === ID_BYTES
  }

  /** the entry whose id is this.key, or -1 */
  private slotOfKey(): number {
    const mask = this.table.length - 1
    if (mask < 0) return -1
    for (let s = this.key.readUInt32LE(0) & mask; ; s = (s + 1) & mask) {
      const v = this.table[s]
      if (v === 0) return -1
      const e = v - 1
      const at = (e & SEG_MASK) * ID_BYTES
      if (this.key.compare(this.segs[e >>> SEG_BITS].ids, at, at + ID_BYTES) === 0) return e
    }
  }

  private insert(e: number): void {
    const mask = this.table.length - 1
    let s = this.segs[e >>> SEG_BITS].ids.readUInt32LE((e & SEG_MASK) * ID_BYTES) & mask
    while (this.table[s] !== 0) s = (s + 1) & mask
    this.table[s] = e + 1
  }

  /** a table twice the size, the entries placed in it again */
  private grow(): void {
    this.table = new Uint32Array(Math.max(2048, this.table.length * 2))
    for (let e = 0; e < this.count; e++) this.insert(e)
  }
}

function newSegment(): Segment {
  return {
    ids: Buffer.alloc(SEG * ID_BYTES),
    packNo: new Uint32Array(SEG),
    offsets: new Uint32Array(SEG),
    lengths: new Uint32Array(SEG),
    raws: new Uint32Array(SEG),
    types: new Uint8Array(SEG),
  }
}
