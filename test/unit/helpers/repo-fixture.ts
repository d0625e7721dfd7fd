/**
 * Small real repositories for prune and lock tests: volume snapshots made with the Archiver
 * from in-memory files (deterministic pseudo-random content), read back through the trees.
 */
import {createHash} from 'node:crypto'
import * as os from 'node:os'
import {Archiver} from '../../../src/archive/archiver.js'
import {fileContent, walkTree} from '../../../src/archive/restorer.js'
import {SnapshotManifest} from '../../../src/repo/format.js'
import {Repository} from '../../../src/repo/repository.js'

/** `size` bytes that do not compress, the same for the same seed */
export function content(seed: string, size: number): Buffer {
  const out = Buffer.alloc(size)
  let off = 0
  for (let i = 0; off < size; i++) {
    const h = createHash('sha256').update(`${seed}:${i}`).digest()
    off += h.copy(out, off)
  }
  return out
}

export const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

/** Archive `files` as a standalone volume snapshot named `name`; returns the snapshot id. */
export async function writeSnapshot(repo: Repository, name: string, files: Record<string, Buffer>, opts: {time?: Date; beforeManifest?: () => Promise<void>} = {}): Promise<string> {
  const a = new Archiver(repo)
  await a.add({path: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [1_700_000_000, 0]})
  for (const [p, data] of Object.entries(files)) {
    await a.add({
      path: p,
      type: 'file',
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtime: [1_700_000_000, 0],
      size: data.length,
      content: (async function* () {
        yield data
      })(),
    })
  }
  const tree = await a.finish()
  await repo.flush()
  await opts.beforeManifest?.()
  const manifest: SnapshotManifest = {
    version: 1,
    kind: 'volume',
    time: (opts.time ?? new Date()).toISOString(),
    host: os.hostname(),
    tags: [],
    consistency: 'live',
    reader: 'direct',
    mounts: [{type: 'volume', source: name, destination: '', readOnly: false, tree, stats: a.stats}],
    stats: {bytes: a.stats.bytes, newBytes: a.stats.newBytes, files: a.stats.files, durationMs: 0},
  }
  return repo.saveSnapshot(manifest)
}

/** path → sha256 of every file of a volume snapshot, read from the packs */
export async function readSnapshotFiles(repo: Repository, id: string): Promise<Record<string, string>> {
  const m = await repo.loadSnapshot(id)
  const out: Record<string, string> = {}
  for await (const {path, node} of walkTree(repo, m.mounts[0].tree)) {
    if (node.type !== 'file') continue
    const parts: Buffer[] = []
    for await (const c of fileContent(repo, node)) parts.push(c)
    out[path.replace(/^\/+/, '')] = sha(Buffer.concat(parts))
  }
  return out
}

export const hashes = (files: Record<string, Buffer>): Record<string, string> => Object.fromEntries(Object.entries(files).map(([p, b]) => [p, sha(b)]))
