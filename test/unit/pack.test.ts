import {randomBytes} from 'node:crypto'
import {describe, expect, it} from 'vitest'
import {CorruptBlobError, ENC_PLAIN, ENC_ZSTD, PackBuilder, decodeBlob, encodeBlob, parsePackHeader, sha256} from '../../src/repo/pack.js'

describe('blob encoding', () => {
  it('compresses what pays and stores the rest plain', () => {
    const text = Buffer.from('the same line again\n'.repeat(5000))
    const z = encodeBlob(text, sha256(text), 3)
    expect(z[0]).toBe(ENC_ZSTD)
    expect(z.length).toBeLessThan(text.length / 10)
    const random = randomBytes(100_000)
    const r = encodeBlob(random, sha256(random), 3)
    expect(r[0]).toBe(ENC_PLAIN)
    expect(r.length).toBe(random.length + 1)
    expect(decodeBlob(z, sha256(text), text.length, 'test').equals(text)).toBe(true)
    expect(decodeBlob(r, sha256(random), random.length, 'test').equals(random)).toBe(true)
  })

  it('detects a flipped bit, a truncation and an unknown encoding', () => {
    const text = Buffer.from('payload '.repeat(1000))
    const id = sha256(text)
    const z = encodeBlob(text, id, 3)
    const flipped = Buffer.from(z)
    flipped[z.length >> 1] ^= 1
    expect(() => decodeBlob(flipped, id, text.length, 'p')).toThrow(CorruptBlobError)
    expect(() => decodeBlob(z.subarray(0, z.length - 5), id, text.length, 'p')).toThrow(CorruptBlobError)
    const bad = Buffer.from(z)
    bad[0] = 0x42
    expect(() => decodeBlob(bad, id, text.length, 'p')).toThrow(/unknown encoding/)
    const plain = encodeBlob(randomBytes(200), 'x'.repeat(64), 3)
    expect(() => decodeBlob(plain, 'x'.repeat(64), 200, 'p')).toThrow(/does not match its hash/)
  })

  it('refuses to store a chunk that does not decode to its hash', () => {
    const text = Buffer.from('abc'.repeat(1000))
    expect(() => encodeBlob(text, sha256('something else'), 3)).toThrow(/self-check failed/)
  })
})

describe('packs', () => {
  it('round-trip blobs through the header, and the id is the hash of the pack', () => {
    const pb = new PackBuilder()
    const blobs = [Buffer.from('a'.repeat(4000)), randomBytes(3000), Buffer.alloc(0)]
    for (const b of blobs) pb.add(sha256(b), 'data', encodeBlob(b, sha256(b), 3), b.length)
    const {id, data, blobs: listed} = pb.finish()
    expect(id).toBe(sha256(data))
    const parsed = parsePackHeader(data, 'pack')
    expect(parsed).toEqual(listed)
    parsed.forEach((p, i) => {
      expect(decodeBlob(data.subarray(p.offset, p.offset + p.length), p.id, p.raw, 'pack').equals(blobs[i])).toBe(true)
    })
  })

  it('rejects a truncated pack and a bad trailer', () => {
    const pb = new PackBuilder()
    const b = Buffer.from('hello')
    pb.add(sha256(b), 'data', encodeBlob(b, sha256(b), 3), b.length)
    const {data} = pb.finish()
    expect(() => parsePackHeader(data.subarray(0, data.length - 3), 'p')).toThrow(/bad trailer/)
    expect(() => parsePackHeader(data.subarray(20), 'p')).toThrow()
  })
})
