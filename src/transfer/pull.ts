/**
 * pull: copy snapshots from a remote into the local repository, fetching only what it lacks.
 *
 * The remote's index files and manifests are first cached in the catalogue under the remote's
 * namespace (syncRemote: only objects not seen before are read, each checked against its name).
 * Then, for the snapshots asked for, the trees are walked level by level: a tree the local side
 * can already read (catalogue tree cache or local index) costs nothing; the packs holding the
 * others are fetched. Finally the packs holding data blobs the local repository lacks are
 * fetched. Every fetched pack is checked whole before it is stored: SHA-256 == its id, header
 * parses, every blob decodes to its hash; a damaged one is reported by key (REMOTE_CORRUPT) and
 * never stored. Then local index files name the packs this pull made present, and the manifests
 * are written LAST. An interrupted pull leaves verified packs only; running it again reuses them.
 */
import debugFactory from 'debug'
import {isNotFound} from '../backend/backend.js'
import {Catalogue} from '../catalogue/catalogue.js'
import {HolyshipError} from '../errors.js'
import {Progress, silentProgress} from '../progress.js'
import {PackBlob, SnapshotManifest, dataKey, indexKey, snapshotKey} from '../repo/format.js'
import type {MasterKey} from '../repo/crypto.js'
import {Repository} from '../repo/repository.js'
import {IndexBatcher, PackCheckError, parseManifest, pool, snapshotRoots, syncRemoteIndex, syncRemoteSnapshots, cachedTreeChildren, verifyPack} from './common.js'
import {RemoteHandle} from './remotes.js'

const debug = debugFactory('holyship:pull')

/** Cache the remote's index files and snapshot list in the catalogue (metadata only, no packs). */
export async function syncRemote(cat: Catalogue, remote: RemoteHandle, parallel = 4, key?: MasterKey): Promise<{indexFiles: number; snapshots: number; fetched: number}> {
  const i = await syncRemoteIndex(cat, remote, parallel, key)
  const s = await syncRemoteSnapshots(cat, remote, parallel, key)
  return {indexFiles: i.indexFiles, snapshots: s.snapshots, fetched: i.fetched + s.fetched}
}

export interface PullSnapshotsOptions {
  repo: Repository
  catalogue: Catalogue
  remote: RemoteHandle
  /** snapshot ids of the remote, already known in its catalogue namespace (see syncRemote) */
  ids: string[]
  parallel?: number
  progress?: Progress
}

export interface PullTransferStats {
  /** ids asked for that were copied by this pull */
  snapshotsPulled: string[]
  /** ids asked for that the local repository already had */
  snapshotsSkipped: string[]
  packsReceived: number
  /** remote packs holding the snapshots' blobs that did not travel (already local) */
  packsSkipped: number
  bytesReceived: number
  bytesSkipped: number
  indexFilesWritten: number
}

export async function pullSnapshots(o: PullSnapshotsOptions): Promise<PullTransferStats> {
  const {repo, catalogue: cat, remote} = o
  const parallel = o.parallel ?? 4
  const progress = o.progress ?? silentProgress
  const ns = remote.namespace

  const localSnaps = new Set(cat.snapshotIds(repo.id))
  const ids = [...new Set(o.ids)]
  const toPull = ids.filter((id) => !localSnaps.has(id))
  const snapshotsSkipped = ids.filter((id) => localSnaps.has(id))
  const stats: PullTransferStats = {snapshotsPulled: [], snapshotsSkipped, packsReceived: 0, packsSkipped: 0, bytesReceived: 0, bytesSkipped: 0, indexFilesWritten: 0}
  if (toPull.length === 0) return stats

  const manifests = new Map<string, SnapshotManifest>()
  for (const id of toPull) {
    const m = cat.getManifest(ns, id)
    if (!m) throw new HolyshipError('SNAPSHOT_NOT_FOUND', `snapshot ${id} is not known at ${remote.location}`)
    manifests.set(id, m)
  }

  // where the remote keeps each blob
  const remoteBlob = new Map<string, string>()
  for (const [id, loc] of cat.blobLocations(ns)) remoteBlob.set(id, loc.pack)
  const remoteSizes = cat.packSizes(ns)
  const packOf = (blob: string): string => {
    const p = remoteBlob.get(blob)
    if (p === undefined) {
      throw new HolyshipError('REMOTE_CORRUPT', `${remote.location}: blob ${blob.slice(0, 16)} is referenced by a snapshot but no index file of the remote names it`)
    }
    return p
  }

  // packs this pull made present locally (downloaded, or left verified by an interrupted pull)
  const fetched = new Map<string, PackBlob[]>()
  const fetchedBlobs = new Set<string>()
  const batcher = new IndexBatcher(async (id, data, file) => {
    await repo.backend.put(indexKey(id), data)
    cat.recordIndexFile(repo.id, id, file)
    repo.registerIndexFile(id, file)
  }, repo.masterKey)
  const received = new Set<string>()
  let left = 0
  const fetchPacks = async (packs: string[]): Promise<void> => {
    const todo = [...new Set(packs)].filter((p) => !fetched.has(p))
    left += todo.length
    progress.detail?.(`${left} packs left`)
    await pool(todo, parallel, async (p) => {
      const {blobs, size, downloaded} = await fetchPack(o, p, remoteSizes.get(p))
      if (downloaded > 0) {
        received.add(p)
        stats.packsReceived++
        stats.bytesReceived += downloaded
        progress.add(downloaded)
      }
      fetched.set(p, blobs)
      for (const b of blobs) fetchedBlobs.add(b.id)
      progress.detail?.(`${--left} packs left`)
      await batcher.add({id: p, size, blobs})
    })
  }

  // trees, level by level: fetch the packs of the trees we cannot read yet
  progress.phase(`reading trees from ${remote.location}`)
  const needed = new Set<string>()
  let level: string[] = []
  for (const m of manifests.values()) {
    for (const r of snapshotRoots(m)) {
      if (!needed.has(r)) {
        needed.add(r)
        level.push(r)
      }
    }
  }
  while (level.length > 0) {
    await fetchPacks(level.filter((t) => !cat.hasTree(t) && !repo.hasBlob(t) && !fetchedBlobs.has(t)).map(packOf))
    const next: string[] = []
    for (const t of level) {
      const {data: chunks, subtrees} = await cachedTreeChildren(repo, cat, t)
      for (const c of chunks) needed.add(c)
      for (const s of subtrees) {
        if (!needed.has(s)) {
          needed.add(s)
          next.push(s)
        }
      }
    }
    level = next
  }

  // every blob the local repository lacks, from the packs that hold it
  const lacking = [...needed].filter((b) => !repo.hasBlob(b) && !fetchedBlobs.has(b))
  const dataPacks = [...new Set(lacking.map(packOf))].filter((p) => !fetched.has(p))
  progress.phase(`downloading from ${remote.location}`, dataPacks.reduce((n, p) => n + (remoteSizes.get(p) ?? 0), 0))
  await fetchPacks(dataPacks)
  for (const b of needed) {
    if (!repo.hasBlob(b) && !fetchedBlobs.has(b)) {
      throw new HolyshipError('REMOTE_CORRUPT', `${remote.location}: the remote's index places blob ${b.slice(0, 16)} in pack ${dataKey(packOf(b))}, which does not hold it`)
    }
  }
  await batcher.flush()
  stats.indexFilesWritten = batcher.written

  // packs of the remote that held needed blobs but did not travel
  const remoteNeeded = new Set<string>()
  for (const b of needed) {
    const p = remoteBlob.get(b)
    if (p !== undefined) remoteNeeded.add(p)
  }
  for (const p of remoteNeeded) {
    if (received.has(p)) continue
    stats.packsSkipped++
    stats.bytesSkipped += remoteSizes.get(p) ?? 0
  }

  // manifests last, oldest first, with the remote's exact bytes
  const order = [...toPull].sort((a, b) => Date.parse(manifests.get(a)!.time) - Date.parse(manifests.get(b)!.time))
  for (const id of order) {
    const data = await remote.backend.get(snapshotKey(id))
    const m = parseManifest(data, id, remote.location, repo.masterKey)
    await repo.backend.put(snapshotKey(id), data)
    cat.recordSnapshot(repo.id, id, m)
    stats.snapshotsPulled.push(id)
  }
  progress.done()
  debug('pulled %d snapshots: %d packs received, %d skipped', order.length, stats.packsReceived, stats.packsSkipped)
  return stats
}

/**
 * Make one remote pack present locally, verified. A copy left by an interrupted pull is
 * re-checked (locally, no traffic); a download that fails the check is tried once more, then
 * reported by key. Tree blobs are cached in the catalogue once the whole pack is verified.
 */
async function fetchPack(o: PullSnapshotsOptions, p: string, expectedSize: number | undefined): Promise<{blobs: PackBlob[]; size: number; downloaded: number}> {
  const {repo, catalogue: cat, remote} = o
  const key = dataKey(p)
  const check = (data: Buffer, where: string): PackBlob[] => {
    const trees: [string, Buffer][] = []
    const blobs = verifyPack(data, p, where, (id, plain) => trees.push([id, plain]), repo.masterKey)
    for (const [id, plain] of trees) cat.putTree(id, plain)
    return blobs
  }
  if ((await repo.backend.stat(key)) !== undefined) {
    try {
      const local = await repo.backend.get(key)
      return {blobs: check(local, `${repo.backend.location}/${key}`), size: local.length, downloaded: 0}
    } catch (e) {
      if (!(e instanceof PackCheckError)) throw e
      debug('local copy of %s is damaged (%s): fetching it again', key, e.message)
      await repo.backend.delete(key)
    }
  }
  let blobs: PackBlob[] | undefined
  let data: Buffer | undefined
  for (let attempt = 1; blobs === undefined; attempt++) {
    try {
      data = await remote.backend.get(key)
    } catch (e) {
      if (isNotFound(e)) {
        throw new HolyshipError('REMOTE_CORRUPT', `${remote.location}/${key} is missing, but the remote's index names it`, {cause: e})
      }
      throw e
    }
    try {
      if (expectedSize !== undefined && expectedSize !== 0 && data.length !== expectedSize) {
        throw new PackCheckError(`it has ${data.length} bytes, the remote's index says ${expectedSize}`)
      }
      blobs = check(data, `${remote.location}/${key}`)
    } catch (e) {
      if (!(e instanceof PackCheckError)) throw e
      if (attempt >= 2) throw new HolyshipError('REMOTE_CORRUPT', `${remote.location}/${key} is damaged: ${e.message}`, {hint: 'nothing of it was stored locally'})
      debug('%s failed its check (%s): downloading it again', key, e.message)
    }
  }
  await repo.backend.put(key, data!)
  return {blobs, size: data!.length, downloaded: data!.length}
}
