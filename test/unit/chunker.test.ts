import {createHash, randomBytes} from 'node:crypto'
import {describe, expect, it} from 'vitest'
import {Chunker, DEFAULT_CHUNKER, gearTable} from '../../src/repo/chunker.js'

const params = {...DEFAULT_CHUNKER, seed: '00112233445566778899aabbccddeeff'}

function chunkAll(data: Buffer, pieceSize: number, p = params): Buffer[] {
  const c = new Chunker(p)
  const out: Buffer[] = []
  for (let i = 0; i < data.length; i += pieceSize) out.push(...c.push(data.subarray(i, i + pieceSize)))
  const last = c.finish()
  if (last) out.push(last)
  return out
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

describe('FastCDC chunker', () => {
  const data = randomBytes(24 * 1024 * 1024)

  it('reassembles to the input and respects min/max', () => {
    const chunks = chunkAll(data, 1 << 20)
    expect(Buffer.concat(chunks).equals(data)).toBe(true)
    for (const c of chunks.slice(0, -1)) {
      expect(c.length).toBeGreaterThanOrEqual(params.min)
      expect(c.length).toBeLessThanOrEqual(params.max)
    }
    const avg = data.length / chunks.length
    expect(avg).toBeGreaterThan(params.avg * 0.6)
    expect(avg).toBeLessThan(params.avg * 1.6)
  })

  it('cuts at the same places whatever the read sizes', () => {
    const a = chunkAll(data, 1 << 20).map(sha)
    const b = chunkAll(data, 65_537).map(sha)
    const c = chunkAll(data, 7_000_001).map(sha)
    expect(b).toEqual(a)
    expect(c).toEqual(a)
  })

  it('re-synchronises after an insertion: only chunks near the edit change', () => {
    const edited = Buffer.concat([data.subarray(0, 10_000_000), Buffer.from('inserted bytes'), data.subarray(10_000_000)])
    const before = new Set(chunkAll(data, 1 << 20).map(sha))
    const after = chunkAll(edited, 1 << 20).map(sha)
    const fresh = after.filter((h) => !before.has(h))
    expect(fresh.length).toBeGreaterThanOrEqual(1)
    expect(fresh.length).toBeLessThanOrEqual(2)
  })

  it('cuts zeros into identical max-size chunks (one stored chunk for a sparse file)', () => {
    const zeros = Buffer.alloc(20 * 1024 * 1024)
    const chunks = chunkAll(zeros, 1 << 20)
    expect(new Set(chunks.slice(0, -1).map(sha)).size).toBe(1)
    expect(chunks[0].length).toBe(params.max)
  })

  it('depends on the seed', () => {
    expect(gearTable('a')).not.toEqual(gearTable('b'))
    const other = chunkAll(data, 1 << 20, {...params, seed: 'ffeeddccbbaa99887766554433221100'}).map(sha)
    const mine = new Set(chunkAll(data, 1 << 20).map(sha))
    expect(other.filter((h) => mine.has(h)).length).toBeLessThan(3)
  })

  it('handles empty and tiny inputs', () => {
    expect(chunkAll(Buffer.alloc(0), 10)).toEqual([])
    const tiny = Buffer.from('x')
    expect(chunkAll(tiny, 10)).toEqual([tiny])
  })

  it('cuts exactly where a byte-at-a-time FastCDC does, at any alignment and piece size (the repository\'s chunks depend on it)', () => {
    // the reference: the algorithm as specified, one byte at a time over the whole input
    const reference = (input: Buffer, p: typeof params): number[] => {
      const gear = gearTable(p.seed)
      const bits = Math.round(Math.log2(p.avg))
      const maskS = (0xffffffff << (32 - (bits + 2))) | 0
      const maskL = (0xffffffff << (32 - (bits - 2))) | 0
      const sizes: number[] = []
      let start = 0
      while (start < input.length) {
        let h = 0
        let i = start + p.min
        let cut = -1
        for (; i < input.length && i - start < p.max; i++) {
          h = ((h << 1) + gear[input[i]]) | 0
          if ((h & (i - start < p.avg ? maskS : maskL)) === 0) {
            cut = i + 1
            break
          }
        }
        if (cut < 0) cut = Math.min(input.length, start + p.max)
        sizes.push(cut - start)
        start = cut
      }
      return sizes
    }
    const small = {min: 1024, avg: 4096, max: 16384, seed: params.seed}
    // deterministic content (so a failure reproduces), with runs of zeros that hit max
    const input = Buffer.alloc(3 * 1024 * 1024 + 7)
    for (let i = 0, x = 12345; i < input.length; i++) {
      x = (Math.imul(x, 1103515245) + 12345) | 0
      input[i] = (i >> 16) % 5 === 4 ? 0 : x >>> 24
    }
    // and content like a binary's: short runs of zeros (1 to 40 bytes) everywhere, where the hash
    // has not settled yet when a run ends
    const sparse = Buffer.alloc(2 * 1024 * 1024 + 3)
    for (let i = 0, x = 777; i < sparse.length; ) {
      x = (Math.imul(x, 1103515245) + 12345) | 0
      if ((x >>> 28) < 5) i += 1 + ((x >>> 8) % 40)
      else sparse[i++] = x >>> 24
    }
    for (const [p, data] of [[small, input], [params, input], [small, sparse], [params, sparse]] as const) {
      const want = reference(data, p)
      for (const offset of [0, 1, 2, 3]) {
        // the same bytes at every offset from a 4-byte boundary of their memory
        const mem = Buffer.alloc(data.length + offset)
        data.copy(mem, offset)
        const at = mem.subarray(offset)
        for (const pieces of [at.length, 65_536, 4099, 1]) {
          if (pieces === 1 && p === params) continue
          const sizes = chunkAll(at, pieces, p).map((c) => c.length)
          expect(sizes, `offset ${offset}, pieces of ${pieces}`).toEqual(want)
        }
      }
    }
  })

  it('rejects nonsense parameters', () => {
    expect(() => new Chunker({...params, min: 10, avg: 5})).toThrow(/invalid chunker/)
  })
})
