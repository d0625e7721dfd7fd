/**
 * push: copy snapshots from the local repository to a remote, sending only what it lacks.
 *
 *  1. list the remote's `snapshots/` (small): snapshots it has are not sent again;
 *  2. read the remote's index files not cached yet (catalogue namespace of the remote): the
 *     blobs and packs it has; a pack named by an index file is present (packs are written
 *     before the index that names them);
 *  3. walk the trees of the snapshots to send (tree cache in the catalogue) and collect every
 *     blob; the local packs holding blobs the remote lacks are candidates;
 *  4. HEAD each candidate (only those no remote index names: packs left by an interrupted
 *     push), upload the missing ones in parallel, then index files naming exactly the packs
 *     this push made present, then the manifests LAST.
 * Every object is content-addressed and new, so concurrent pushers never overwrite each
 * other's work; an interrupted push leaves packs (found by the HEAD check next time) and
 * never a manifest whose data is missing.
 */
import debugFactory from 'debug'
import {Catalogue} from '../catalogue/catalogue.js'
import {HolyshipError} from '../errors.js'
import {Progress, silentProgress} from '../progress.js'
import {IndexFile, SnapshotManifest, dataKey, indexKey, snapshotKey} from '../repo/format.js'
import {withSharedLock} from '../repo/lock.js'
import {parsePackHeader, sha256} from '../repo/pack.js'
import {Repository} from '../repo/repository.js'
import {IndexBatcher, cachedTreeChildren, createRepositoryCopy, pool, readRemoteConfig, snapshotRoots, syncRemoteIndex} from './common.js'
import {RemoteHandle} from './remotes.js'

const debug = debugFactory('holyship:push')

export interface PushSnapshotsOptions {
  repo: Repository
  catalogue: Catalogue
  remote: RemoteHandle
  /** local snapshot references (id, unique prefix, latest, latest:NAME); default: every local snapshot */
  snapshots?: string[]
  /** concurrent transfers (default 4) */
  parallel?: number
  progress?: Progress
  /**
   * Makes the repository's blob index available (a repository opened without it, see
   * openContext's lazyIndex); called only when there is something to send.
   */
  loadIndex?: () => void
}

export interface PushResult {
  /** s3://bucket/prefix */
  remote: string
  remoteName?: string
  /** local repository id */
  repository: string
  /** the remote's repository id (from its config) */
  remoteRepository: string
  /** false when the remote was created by another repository: content still dedups by hash */
  sameRepository: boolean
  /** this push created the remote repository (copied the local config) */
  createdRemote: boolean
  /** snapshot ids uploaded by this push */
  snapshotsSent: string[]
  /** selected snapshot ids the remote already had */
  snapshotsSkipped: string[]
  packsSent: number
  /** packs holding the sent snapshots' data that did not travel (the remote had them or their blobs) */
  packsSkipped: number
  bytesSent: number
  bytesSkipped: number
  indexFilesSent: number
  durationMs: number
}

const uniq = <T>(xs: T[]): T[] => [...new Set(xs)]

export async function pushSnapshots(o: PushSnapshotsOptions): Promise<PushResult> {
  const t0 = Date.now()
  const {repo, catalogue: cat, remote} = o
  const parallel = o.parallel ?? 4
  const progress = o.progress ?? silentProgress

  // resolve locally first: a typo fails before any network traffic
  const selected = o.snapshots && o.snapshots.length > 0 ? uniq(o.snapshots.map((r) => cat.resolveSnapshot(repo.id, r))) : cat.snapshotIds(repo.id)

  // the remote repository: created by the first push with the local config (same id and
  // chunker seed, so a host that lands from it dedups with us)
  let createdRemote = false
  let rc = await readRemoteConfig(remote)
  if (!rc) {
    const made = await createRepositoryCopy(remote.backend, await repo.backend.get('config'), repo.encrypted ? repo.backend : undefined)
    createdRemote = made.created
    rc = {raw: made.raw, config: made.config}
  }
  const sameRepository = rc.config.id === repo.id
  if ((repo.encrypted || rc.config.encryption) && (!sameRepository || !!rc.config.encryption !== repo.encrypted)) {
    // another repository's key (or none) cannot read what we would send, nor we its index
    throw new HolyshipError('USAGE', `${remote.location} holds repository ${rc.config.id.slice(0, 12)}${rc.config.encryption ? ' (encrypted)' : ''}, not this ${repo.encrypted ? 'encrypted ' : ''}repository ${repo.id.slice(0, 12)}: an encrypted repository is only pushed to its own copy`, {
      hint: 'push to an empty bucket prefix',
    })
  }
  if (!sameRepository) {
    progress.note(`note: ${remote.location} belongs to repository ${rc.config.id.slice(0, 12)}, not ${repo.id.slice(0, 12)}; data still dedups by content hash`)
  }
  const base = {
    remote: remote.location,
    ...(remote.name ? {remoteName: remote.name} : {}),
    repository: repo.id,
    remoteRepository: rc.config.id,
    sameRepository,
    createdRemote,
  }

  const onRemote = await remoteHas(remote, selected, parallel, (id) => repo.backend.stat(snapshotKey(id)))
  const toSend = selected.filter((id) => !onRemote.has(id))
  const snapshotsSkipped = selected.filter((id) => onRemote.has(id))
  if (toSend.length === 0) {
    return {...base, snapshotsSent: [], snapshotsSkipped, packsSent: 0, packsSkipped: 0, bytesSent: 0, bytesSkipped: 0, indexFilesSent: 0, durationMs: Date.now() - t0}
  }

  // a prune of the remote (exclusive lock) must not delete what this push relies on: packs the
  // remote's index names that no snapshot there uses yet, or the packs sent before their index
  // files are; so its index is read, and everything written, under a shared lock of the remote's
  return withSharedLock(remote.backend, 'push', async (lock) => {
    o.loadIndex?.()
    // what the remote has: its index files, cached in the catalogue under its namespace
    progress.phase(`reading the index of ${remote.location}`)
    await syncRemoteIndex(cat, remote, parallel, repo.masterKey)
    const remoteBlobs = new Set<string>()
    for (const [id] of cat.blobLocations(remote.namespace)) remoteBlobs.add(id)
    const remotePacks = cat.packSizes(remote.namespace)

    // every blob of the snapshots to send
    const manifests = new Map<string, SnapshotManifest>()
    for (const id of toSend) {
      const m = cat.getManifest(repo.id, id) ?? (await repo.loadSnapshot(id))
      manifests.set(id, m)
    }
    progress.phase('scanning snapshots')
    const blobs = await collectBlobs(repo, cat, [...manifests.values()].flatMap(snapshotRoots))

    // the local packs that hold them, and those holding something the remote lacks
    const localSizes = cat.packSizes(repo.id)
    const localPacks = new Map<string, number>()
    const candidates = new Set<string>()
    for (const b of blobs) {
      const loc = repo.blobLocation(b)
      if (!loc) throw new HolyshipError('REPO_DAMAGED', `blob ${b.slice(0, 16)} is referenced by a snapshot but not in the local repository's index`)
      if (!localPacks.has(loc.pack)) localPacks.set(loc.pack, localSizes.get(loc.pack) || repo.packs().get(loc.pack) || 0)
      if (!remoteBlobs.has(b) && !remotePacks.has(loc.pack)) candidates.add(loc.pack)
    }
    for (const [p, size] of localPacks) {
      if (size === 0) localPacks.set(p, (await repo.backend.stat(dataKey(p))) ?? 0)
    }

    // candidates an interrupted push already uploaded: present, but no index names them yet
    const present: string[] = []
    const upload: string[] = []
    progress.phase(`checking ${candidates.size} packs on ${remote.location}`)
    let checked = 0
    await pool([...candidates], parallel, async (p) => {
      const size = await remote.backend.stat(dataKey(p))
      if (size !== undefined && size === localPacks.get(p)) present.push(p)
      else upload.push(p)
      progress.detail?.(`${++checked} of ${candidates.size} checked`)
    })
    debug('%d snapshots, %d blobs, %d local packs, %d candidates (%d already uploaded)', toSend.length, blobs.size, localPacks.size, candidates.size, present.length)

    const batcher = new IndexBatcher(async (id, data, file) => {
      await remote.backend.put(indexKey(id), data)
      cat.recordIndexFile(remote.namespace, id, file)
    }, repo.masterKey)
    for (const p of present) {
      const data = await readLocalPack(repo, p)
      await batcher.add({id: p, size: data.length, blobs: parsePackHeader(data, dataKey(p), repo.masterKey)})
    }

    const total = upload.reduce((n, p) => n + (localPacks.get(p) ?? 0), 0)
    progress.phase(`uploading to ${remote.location}`, total)
    let left = upload.length
    let bytesSent = 0
    progress.detail?.(`${left} packs left`)
    await pool(upload, parallel, async (p) => {
      const data = await readLocalPack(repo, p)
      const packBlobs = parsePackHeader(data, dataKey(p), repo.masterKey)
      await remote.backend.put(dataKey(p), data)
      bytesSent += data.length
      progress.add(data.length)
      progress.detail?.(`${--left} packs left`)
      const entry: IndexFile['packs'][number] = {id: p, size: data.length, blobs: packBlobs}
      await batcher.add(entry)
    })
    await batcher.flush()

    // manifests last, oldest first, with their exact bytes (their ids are their hashes)
    const order = [...toSend].sort((a, b) => Date.parse(manifests.get(a)!.time) - Date.parse(manifests.get(b)!.time))
    // the lock is still ours (a prune of the remote may have run if it was lost)
    await lock.assertHeld()
    for (const id of order) {
      const data = await repo.backend.get(snapshotKey(id))
      if (sha256(data) !== id) throw new HolyshipError('REPO_DAMAGED', `snapshot ${id} is damaged: its content does not match its id`)
      await remote.backend.put(snapshotKey(id), data)
      cat.recordSnapshot(remote.namespace, id, manifests.get(id)!)
    }
    progress.done()

    const sent = new Set(upload)
    let bytesSkipped = 0
    for (const [p, size] of localPacks) if (!sent.has(p)) bytesSkipped += size
    return {
      ...base,
      snapshotsSent: order,
      snapshotsSkipped,
      packsSent: upload.length,
      packsSkipped: localPacks.size - upload.length,
      bytesSent,
      bytesSkipped,
      indexFilesSent: batcher.written,
      durationMs: Date.now() - t0,
    }
  })
}

/**
 * LIST_INSTEAD_OF_HEAD or fewer snapshots are looked up one HEAD each (in parallel); more, or
 * every snapshot, with one listing of the remote's `snapshots/` (1,000 keys a request).
 */
export const LIST_INSTEAD_OF_HEAD = 16

/**
 * Which of these snapshots the remote has (its manifest is there). A push of a few named
 * snapshots does not list every snapshot of a remote that may hold thousands: listing 1,000
 * manifests from s3rver and parsing the XML took longer than the rest of a push with nothing
 * to send.
 */
export async function remoteHas(remote: RemoteHandle, ids: string[], parallel: number, localSize: (id: string) => Promise<number | undefined>): Promise<Set<string>> {
  // a manifest there with another size than ours is a damaged copy (a cut or aws-chunked
  // upload), not the snapshot: it is sent again over it (its key is its hash)
  const intact = async (id: string, size: number): Promise<boolean> => {
    const want = await localSize(id)
    if (want === undefined || want === size) return true
    debug('snapshots/%s on %s has %d bytes, ours %d: sent again', id.slice(0, 12), remote.location, size, want)
    return false
  }
  let sizeThere = (id: string): Promise<number | undefined> => remote.backend.stat(snapshotKey(id))
  if (ids.length > LIST_INSTEAD_OF_HEAD) {
    const listed = new Map((await remote.backend.list('snapshots/')).map((e) => [e.key.slice('snapshots/'.length), e.size]))
    sizeThere = async (id) => listed.get(id)
  }
  const has = new Set<string>()
  await pool(ids, parallel, async (id) => {
    const size = await sizeThere(id)
    if (size !== undefined && (await intact(id, size))) has.add(id)
  })
  return has
}

/** a local pack, checked against its id so local damage never spreads to the remote */
async function readLocalPack(repo: Repository, id: string): Promise<Buffer> {
  const key = dataKey(id)
  const data = await repo.backend.get(key).catch((e) => {
    throw new HolyshipError('REPO_DAMAGED', `pack ${key} is missing from ${repo.backend.location}: ${(e as Error).message}`, {cause: e})
  })
  if (sha256(data) !== id) throw new HolyshipError('REPO_DAMAGED', `pack ${repo.backend.location}/${key} is damaged: its content does not match its name`)
  return data
}

/** Every tree and data blob reachable from the roots, walking trees through the catalogue's cache. */
export async function collectBlobs(repo: Repository, cat: Catalogue, roots: string[]): Promise<Set<string>> {
  const blobs = new Set<string>()
  const queue: string[] = []
  for (const r of roots) {
    if (!blobs.has(r)) {
      blobs.add(r)
      queue.push(r)
    }
  }
  for (let id = queue.pop(); id !== undefined; id = queue.pop()) {
    const {data: chunks, subtrees} = await cachedTreeChildren(repo, cat, id)
    for (const c of chunks) blobs.add(c)
    for (const s of subtrees) {
      if (!blobs.has(s)) {
        blobs.add(s)
        queue.push(s)
      }
    }
  }
  return blobs
}
