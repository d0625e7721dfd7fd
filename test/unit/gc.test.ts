/**
 * collectGarbage: a full collection every 16 MiB of bytes; for bytes in buffers that die
 * young, a scavenge instead, and a full collection only every 16th time.
 */
import {PerformanceObserver, constants} from 'node:perf_hooks'
import {describe, expect, it} from 'vitest'
import {collectGarbage} from '../../src/repo/gc.js'

const MiB = 1024 * 1024

/** the kinds of the collections V8 runs during `fn` */
async function collections(fn: () => void): Promise<{major: number; minor: number}> {
  const seen = {major: 0, minor: 0}
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = (e as unknown as {detail?: {kind?: number}}).detail?.kind
      if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) seen.major++
      if (kind === constants.NODE_PERFORMANCE_GC_MINOR) seen.minor++
    }
  })
  obs.observe({entryTypes: ['gc']})
  fn()
  // entries are delivered asynchronously
  await new Promise((r) => setTimeout(r, 50))
  obs.disconnect()
  return seen
}

describe('collectGarbage', () => {
  it('collects fully every 16 MiB, and for young bytes scavenges with a full collection every 16th time', async () => {
    const full = await collections(() => {
      for (let i = 0; i < 8; i++) collectGarbage(16 * MiB)
    })
    expect(full.major).toBeGreaterThanOrEqual(8)

    const young = await collections(() => {
      for (let i = 0; i < 32; i++) collectGarbage(16 * MiB, true)
    })
    expect(young.minor).toBeGreaterThanOrEqual(30)
    // 2 of the 32 (allow one V8 started on its own)
    expect(young.major).toBeGreaterThanOrEqual(2)
    expect(young.major).toBeLessThanOrEqual(3)

    // under 16 MiB nothing is collected
    const none = await collections(() => {
      for (let i = 0; i < 8; i++) collectGarbage(MiB, true)
    })
    expect(none.major).toBe(0)
  })
})
