/**
 * Recycled memory for a snapshot's file content: the pieces a source reads files into, the
 * chunks the chunker assembles across pieces and the stored forms compressed on the main
 * thread. A snapshot streams its whole data through such buffers; left to V8, each dies as
 * garbage that only a full collection frees, and collecting often enough to keep resident
 * memory near the working set cost more than a second of CPU per 650 MiB (both cores: V8
 * marks on helper threads). Handed back with release() once nothing reads them any more, the
 * same few buffers circulate instead.
 *
 * Only memory this pool handed out, and not handed back yet, is taken back: release() of any
 * other buffer (a caller's own, one released already) does nothing. adopt() cannot check
 * (the memory comes back from another thread as a new object): its caller adopts each memory
 * that came back once, after the last read of it.
 */

import {collectGarbage} from './gc.js'

/** smaller requests are plain allocations (their garbage is small, and a rounded-up buffer would waste most of itself) */
export const POOLED_MIN = 64 * 1024

/** memory on the free lists, at most (beyond it released buffers are left to the garbage collector) */
const FREE_MAX = 32 * 1024 * 1024

export class MemoryPool {
  /** free buffers by size (a power of two from POOLED_MIN) */
  private readonly free = new Map<number, ArrayBuffer[]>()
  private freeBytes = 0
  private readonly out = new WeakSet<ArrayBuffer>()
  /** bytes allocated new and bytes let go of (full free lists), for tests and measurements */
  allocated = 0
  dropped = 0

  constructor(private readonly freeMax = FREE_MAX) {}

  /**
   * `n` bytes (not zeroed) in memory of their own: from the free list of n's size class when it
   * has one (powers of two, so whatever comes back fits any later request of its class; finer
   * classes were tried: fewer requests found a fit, and more memory became garbage)
   */
  alloc(n: number): Buffer {
    // (a small buffer dies young: V8's scavenges free it, and counting it towards full
    // collections cost a million-file snapshot 5 s of CPU)
    if (n < POOLED_MIN) return Buffer.allocUnsafeSlow(n)
    let size = POOLED_MIN
    while (size < n) size *= 2
    let ab = this.free.get(size)?.pop()
    if (ab) this.freeBytes -= size
    else {
      ab = new ArrayBuffer(size)
      this.allocated += size
    }
    this.out.add(ab)
    return Buffer.from(ab, 0, n)
  }

  /** true when `memory` came from alloc() and was not released since */
  owns(memory: ArrayBufferLike): boolean {
    return memory instanceof ArrayBuffer && this.out.has(memory)
  }

  /**
   * Take back memory from alloc() (any view of it): nothing may read or write it afterwards.
   * Memory this pool does not own is left alone.
   */
  release(memory: ArrayBufferLike): void {
    if (!this.owns(memory)) return
    this.out.delete(memory as ArrayBuffer)
    this.keep(memory as ArrayBuffer)
  }

  /**
   * Hand memory over to another thread (transfer): it is no longer this pool's until adopt()ed
   * back. Returns whether it was the pool's.
   */
  disown(memory: ArrayBufferLike): boolean {
    if (!this.owns(memory)) return false
    this.out.delete(memory as ArrayBuffer)
    return true
  }

  /** take back memory that was disown()ed and came back from another thread (a new ArrayBuffer object) */
  adopt(memory: ArrayBuffer): void {
    this.keep(memory)
  }

  private keep(ab: ArrayBuffer): void {
    const size = ab.byteLength
    // only this pool's sizes (a detached buffer has none)
    if (size < POOLED_MIN || (size & (size - 1)) !== 0) return
    if (this.freeBytes + size > this.freeMax) {
      this.dropped += size
      collectGarbage(size)
      return
    }
    let list = this.free.get(size)
    if (!list) this.free.set(size, (list = []))
    list.push(ab)
    this.freeBytes += size
  }
}

/** the process's pool for snapshot content */
export const contentMemory = new MemoryPool()
