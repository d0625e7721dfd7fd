/**
 * A nudge to V8's garbage collector. A snapshot or restore streams hundreds of megabytes
 * through short-lived buffers (reads, chunks, compressed blobs); V8 frees their memory only
 * when it collects, and it starts a full collection for such external memory only once 64 MiB
 * more of it is held than after the last one, so RSS runs ~64 MiB above what is really in use.
 * A collection every 16 MiB costs a few milliseconds (the JS heap is small) and keeps
 * peak RSS near the working set. V8's gc hook is switched on here at run time; where that is
 * not possible this does nothing.
 */
import * as v8 from 'node:v8'
import * as vm from 'node:vm'

type GcFunction = (options?: {type?: 'major' | 'minor'; execution?: 'sync' | 'async'}) => void

let gc: GcFunction | null | undefined

let since = 0
/** calls since the JS heap was last looked at, and its size after the last collection */
let calls = 0
let heapAfter = 0

/** how much the JS heap may grow past what the last collection left before the next one */
const HEAP_SLACK = 24 * 1024 * 1024

/** of the collections for `young` bytes, every this many is a full one */
const MAJOR_EVERY = 16
let youngRuns = 0

/**
 * `bytes` more went through; collect once 16 MiB have since the last collection, or once the
 * JS heap has grown by HEAP_SLACK since (looked at every 256 calls): a snapshot of a million
 * tiny files moves few bytes but leaves its bookkeeping (tree nodes, promises) in V8's old
 * generation, which V8 itself lets grow to ~100 MB before it collects.
 *
 * `young`: the bytes are in buffers that die young (blobs read for a restore, dropped once
 * written), which a scavenge of the young generation frees: the 16 MiB collection is then a
 * minor one, and only every 16th a full one (for what was promoted). A full collection marks
 * the whole heap, and the CLI's heap (oclif and the rest) made those ~13 ms each: a restore
 * of 650 MiB spent 0.5 s of CPU in them.
 */
export function collectGarbage(bytes: number, young = false): void {
  since += bytes
  let minor = false
  if (since < 16 * 1024 * 1024) {
    if (++calls < 256) return
    calls = 0
    if (v8.getHeapStatistics().used_heap_size < heapAfter + HEAP_SLACK) return
  } else if (young && ++youngRuns % MAJOR_EVERY !== 0) minor = true
  since = 0
  calls = 0
  if (gc === undefined) {
    try {
      v8.setFlagsFromString('--expose-gc')
      gc = (vm.runInNewContext('gc') as GcFunction | undefined) ?? null
    } catch {
      gc = null
    }
  }
  if (!gc) return
  if (minor) {
    gc({type: 'minor'})
    return
  }
  gc()
  heapAfter = v8.getHeapStatistics().used_heap_size
}
