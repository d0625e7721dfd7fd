/**
 * FastCDC content-defined chunking (Xia et al., 2016) with normalized chunking.
 *
 * A gear hash rolls over the data; a cut point is where the hash has `bits` low zero bits.
 * Before the average size a harder mask (more bits) is used, after it an easier one, which
 * pulls chunk sizes towards the average. The gear table comes from a per-repository seed
 * (stored in the repository config) so every host of one repository cuts identically.
 */
import {createHash} from 'node:crypto'
import * as os from 'node:os'

export interface ChunkerParams {
  min: number
  avg: number
  max: number
  /** hex seed for the gear table; identical seeds give identical cut points */
  seed: string
}

export const DEFAULT_CHUNKER: Omit<ChunkerParams, 'seed'> = {
  min: 256 * 1024,
  avg: 1024 * 1024,
  max: 4 * 1024 * 1024,
}

const gearCache = new Map<string, Int32Array>()

/** the byte order of Uint32Array reads here (roll() reads words only where they are little-endian) */
const LITTLE_ENDIAN = os.endianness() === 'LE'

export function gearTable(seed: string): Int32Array {
  let t = gearCache.get(seed)
  if (t) return t
  t = new Int32Array(256)
  // expand the seed with SHA-256 in counter mode: 256 x 32-bit values
  let filled = 0
  for (let counter = 0; filled < 256; counter++) {
    const block = createHash('sha256').update(`holyship-gear:${seed}:${counter}`).digest()
    for (let i = 0; i + 4 <= block.length && filled < 256; i += 4) t[filled++] = block.readInt32LE(i)
  }
  gearCache.set(seed, t)
  return t
}

/**
 * The top `bits` bits of the 32-bit gear hash: with h = (h << 1) + gear[b], the high bits
 * depend on the last 32 bytes, the low ones only on the last few, so cut on the high ones.
 */
function maskOf(bits: number): number {
  return (0xffffffff << (32 - bits)) | 0
}

/** A streaming chunker: push() buffers of any size, finish() at the end. */
export class Chunker {
  private readonly gear: Int32Array
  private readonly maskS: number
  private readonly maskL: number
  private pending: Buffer[] = []
  private pendingLen = 0
  private hash = 0

  /** the buffer ownPending() copied the unfinished chunk's start into, while it is part of it */
  private own?: Buffer

  /**
   * `alloc`: where buffers for chunks made of several pieces come from; `release`: where one
   * that ownPending() made goes once it is copied into a chunk (both: a recycling pool)
   */
  constructor(
    readonly params: ChunkerParams,
    private readonly alloc: (n: number) => Buffer = Buffer.allocUnsafeSlow,
    private readonly release: (b: Buffer) => void = () => {},
  ) {
    if (!(params.min > 0 && params.min <= params.avg && params.avg <= params.max)) {
      throw new Error(`invalid chunker parameters ${JSON.stringify(params)}`)
    }
    this.gear = gearTable(params.seed)
    const bits = Math.round(Math.log2(params.avg))
    this.maskS = maskOf(bits + 2)
    this.maskL = maskOf(bits - 2)
  }

  /** Feed data (buffers the caller will not reuse); returns the chunks it completes. */
  push(data: Buffer): Buffer[] {
    const out: Buffer[] = []
    let pos = 0
    while (pos < data.length) {
      const cut = this.scan(data, pos)
      if (cut < 0) {
        // no cut in the rest of this buffer: keep it
        this.pending.push(data.subarray(pos))
        this.pendingLen += data.length - pos
        break
      }
      this.pending.push(data.subarray(pos, cut))
      this.pendingLen += cut - pos
      out.push(this.take())
      pos = cut
    }
    return out
  }

  /**
   * Copy the start of the unfinished chunk (views of buffers pushed so far) into a buffer of
   * the chunker's own, so the caller may hand those buffers on (to a blob worker, or back to
   * the memory pool they came from).
   */
  ownPending(): void {
    if (this.pendingLen === 0 || (this.pending.length === 1 && this.pending[0] === this.own)) return
    const own = this.alloc(this.pendingLen)
    let at = 0
    for (const p of this.pending) at += p.copy(own, at)
    this.drop()
    this.pending = [own]
    this.own = own
  }

  /** let go of ownPending()'s copy: its bytes were copied on */
  private drop(): void {
    if (this.own) this.release(this.own)
    this.own = undefined
  }

  /** End of stream: the last (possibly short) chunk, if any bytes remain. */
  finish(): Buffer | undefined {
    if (this.pendingLen === 0) return undefined
    return this.take()
  }

  private take(): Buffer {
    // a chunk inside one input buffer is a view of it (the caller hands us fresh buffers); one
    // made of several gets a buffer of its own from `alloc`, never a slice of Node's shared
    // pool (its memory may be transferred to a blob worker)
    let chunk: Buffer
    if (this.pending.length === 1) {
      // ownPending()'s copy, if it is that, is the chunk's now: the caller's to let go of
      chunk = this.pending[0]
      this.own = undefined
    } else {
      chunk = this.alloc(this.pendingLen)
      let at = 0
      for (const p of this.pending) at += p.copy(chunk, at)
      this.drop()
    }
    this.pending = []
    this.pendingLen = 0
    this.hash = 0
    return chunk
  }

  /** Scan data from pos; returns the absolute index just after the cut, or -1. */
  private scan(data: Buffer, pos: number): number {
    const {min, avg, max} = this.params
    let len = this.pendingLen
    let i = pos
    const end = data.length
    // skip the minimum size: no cut can happen there (FastCDC's cut-point skipping)
    if (len < min) {
      const skip = Math.min(min - len, end - i)
      i += skip
      len += skip
      if (len < min) return -1
    }
    // before the average size: the harder mask
    let limit = Math.min(end, i + Math.max(0, avg - len))
    const cut = this.roll(data, i, limit, this.maskS)
    if (cut >= 0) return cut
    i = limit
    len = this.pendingLen + (i - pos)
    if (len < avg) return -1
    limit = Math.min(end, i + Math.max(0, max - len))
    const late = this.roll(data, i, limit, this.maskL)
    if (late >= 0) return late
    i = limit
    len = this.pendingLen + (i - pos)
    if (len >= max) return i
    return -1
  }

  /**
   * Roll the gear hash (from this.hash) over data[i, limit): the index just after the first
   * byte where its masked bits are all zero, or -1; this.hash is the hash after the last byte
   * rolled. The same cut points as one byte at a time, but most of the bytes are read four at a
   * time, as little-endian 32-bit words of the buffer's memory (about twice as fast in V8), and
   * runs of zeros are skipped once the hash has settled on them.
   */
  private roll(data: Buffer, i: number, limit: number, mask: number): number {
    const gear = this.gear
    let h = this.hash
    const base = data.byteOffset
    // single bytes up to a 4-byte boundary of the memory (or all of them on a big-endian host)
    let words = 0
    let aligned = limit
    if (LITTLE_ENDIAN) {
      const first = i + ((4 - ((base + i) & 3)) & 3)
      if (first < limit) {
        aligned = first
        words = (limit - first) >> 2
      }
    }
    for (; i < aligned; i++) {
      h = ((h << 1) + gear[data[i]]) | 0
      if ((h & mask) === 0) {
        this.hash = h
        return i + 1
      }
    }
    if (words > 0) {
      const w = new Uint32Array(data.buffer, base + i, words)
      // over zeros the hash settles at -gear[0] (h = 2h + gear[0]) within 32 bytes: once there,
      // and when that value is no cut, a run of zero words changes nothing and cuts nowhere
      const settled = -gear[0] | 0
      const skipZeros = (settled & mask) !== 0
      for (let k = 0; k < words; k++) {
        const x = w[k]
        if (x === 0 && h === settled && skipZeros) continue
        h = ((h << 1) + gear[x & 255]) | 0
        if ((h & mask) === 0) {
          this.hash = h
          return i + 4 * k + 1
        }
        h = ((h << 1) + gear[(x >>> 8) & 255]) | 0
        if ((h & mask) === 0) {
          this.hash = h
          return i + 4 * k + 2
        }
        h = ((h << 1) + gear[(x >>> 16) & 255]) | 0
        if ((h & mask) === 0) {
          this.hash = h
          return i + 4 * k + 3
        }
        h = ((h << 1) + gear[x >>> 24]) | 0
        if ((h & mask) === 0) {
          this.hash = h
          return i + 4 * k + 4
        }
      }
      i += words * 4
    }
    for (; i < limit; i++) {
      h = ((h << 1) + gear[data[i]]) | 0
      if ((h & mask) === 0) {
        this.hash = h
        return i + 1
      }
    }
    this.hash = h
    return -1
  }
}

/** every chunk of `data` taken as a whole stream (push, then finish) */
export function cutAll(chunker: Chunker, data: Buffer): Buffer[] {
  const parts = chunker.push(data)
  const last = chunker.finish()
  if (last) parts.push(last)
  return parts
}
