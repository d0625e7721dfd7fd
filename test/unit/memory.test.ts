/**
 * The recycling memory pool of snapshot content (src/repo/memory.ts): what it hands out is
 * reused only after release, and nothing it did not hand out (or already took back) ever goes
 * into circulation, so a wrong release cannot make two readers share one buffer.
 */
import {describe, expect, it} from 'vitest'
import {MemoryPool, POOLED_MIN} from '../../src/repo/memory.js'
import {Chunker} from '../../src/repo/chunker.js'

const KiB = 1024

describe('MemoryPool', () => {
  it('reuses a released buffer for the next request of its size class, never one still out', () => {
    const pool = new MemoryPool(8 * 1024 * KiB)
    const a = pool.alloc(100 * KiB)
    const b = pool.alloc(100 * KiB)
    expect(a.length).toBe(100 * KiB)
    // one class (128 KiB) for both, but two buffers: neither is handed out twice
    expect(a.buffer).not.toBe(b.buffer)
    expect(a.buffer.byteLength).toBe(128 * KiB)
    pool.release(a.buffer)
    const c = pool.alloc(120 * KiB)
    expect(c.buffer).toBe(a.buffer)
    // another class: a new buffer
    expect(pool.alloc(300 * KiB).buffer).not.toBe(a.buffer)
    expect(pool.allocated).toBe(128 * KiB * 2 + 512 * KiB)
  })

  it('ignores what it does not own: a caller\'s buffer, a second release, a small allocation', () => {
    const pool = new MemoryPool(8 * 1024 * KiB)
    const theirs = Buffer.allocUnsafeSlow(128 * KiB)
    pool.release(theirs.buffer)
    expect(pool.alloc(128 * KiB).buffer).not.toBe(theirs.buffer)
    const a = pool.alloc(128 * KiB)
    pool.release(a.buffer)
    pool.release(a.buffer)
    // released twice, handed out once
    const x = pool.alloc(128 * KiB)
    const y = pool.alloc(128 * KiB)
    expect(x.buffer).toBe(a.buffer)
    expect(y.buffer).not.toBe(a.buffer)
    // below POOLED_MIN: plain memory, never taken back
    const small = pool.alloc(POOLED_MIN - 1)
    expect(pool.owns(small.buffer)).toBe(false)
  })

  it('memory handed to another thread is not the pool\'s until adopted back; the free list is bounded', () => {
    const pool = new MemoryPool(256 * KiB)
    const a = pool.alloc(128 * KiB)
    expect(pool.disown(a.buffer)).toBe(true)
    expect(pool.owns(a.buffer)).toBe(false)
    pool.release(a.buffer)
    expect(pool.alloc(128 * KiB).buffer).not.toBe(a.buffer)
    // what came back (a new ArrayBuffer object over the same kind of memory) circulates again
    const back = new ArrayBuffer(128 * KiB)
    pool.adopt(back)
    expect(pool.alloc(128 * KiB).buffer).toBe(back)
    // not one of the pool's sizes (a detached buffer, an odd size): not kept
    pool.adopt(new ArrayBuffer(0))
    pool.adopt(new ArrayBuffer(100 * KiB))
    // beyond the bound, released buffers are let go
    const many = [pool.alloc(128 * KiB), pool.alloc(128 * KiB), pool.alloc(128 * KiB)]
    for (const m of many) pool.release(m.buffer)
    expect(pool.dropped).toBe(128 * KiB)
  })

  it('the chunker gives back its copy of an unfinished chunk once that is copied on', () => {
    const pool = new MemoryPool(64 * 1024 * KiB)
    const released: ArrayBufferLike[] = []
    const params = {min: 64 * KiB, avg: 256 * KiB, max: 1024 * KiB, seed: 'ab'.repeat(16)}
    const chunker = new Chunker(params, (n) => pool.alloc(n), (b) => released.push(b.buffer))
    const data = Buffer.alloc(3 * 1024 * KiB, 7)
    // zeros-like data never cuts before max: pieces of 700 KiB carry an unfinished chunk
    const out: Buffer[] = []
    for (let at = 0; at < data.length; at += 700 * KiB) {
      out.push(...chunker.push(data.subarray(at, Math.min(data.length, at + 700 * KiB))))
      chunker.ownPending()
    }
    const last = chunker.finish()
    if (last) out.push(last)
    expect(Buffer.concat(out).equals(data)).toBe(true)
    // every copy made was either given back or became a chunk (the caller's then)
    expect(released.length).toBeGreaterThan(0)
    for (const r of released) expect(out.some((c) => c.buffer === r)).toBe(false)
  })
})
