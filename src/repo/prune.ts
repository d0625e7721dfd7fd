/**
 * prune: delete the packs no snapshot needs and repack the mostly-empty ones, on any Backend
 * (a local directory, or an S3 remote: pass a Repository opened on its backend).
 *
 * Safety against writers in other processes and on other hosts (see docs/scheduling.md):
 *  1. the caller holds the repository's EXCLUSIVE lock (src/repo/lock.ts); holyship writers
 *     hold a shared lock, so none runs while prune does;
 *  2. every listing must succeed: a failed list aborts prune, it is never taken as empty
 *     (kopia #552/#1949, rustic #392); every index file and manifest is checked against its
 *     name, and a snapshot whose data is missing aborts prune before anything is deleted;
 *  3. listings are made in the order snapshots → index files → packs, so every pack of a
 *     snapshot or index file that prune sees is in its pack listing;
 *  4. only packs unreferenced at the start AND older than the start minus `graceMs` are
 *     deleted or repacked (a writer that holds no lock may be writing them right now);
 *  5. before the new index is written, right before the old index files are deleted, and
 *     again right before packs are deleted, snapshots and index files are listed again: a
 *     snapshot or index file that appeared meanwhile and needs a doomed pack rescues it (it
 *     stays, and stays indexed);
 *  6. order of writes: new packs → new index file(s) → delete old index files → delete packs.
 *     A crash at any point leaves every snapshot readable (at worst duplicates or
 *     unreferenced packs, which the next prune removes).
 */
import debugFactory from 'debug'
import {Backend, BackendEntry} from '../backend/backend.js'
import {HolyshipError} from '../errors.js'
import {Progress, silentProgress} from '../progress.js'
import {BlobType, IndexFile, PackBlob, SnapshotManifest, Tree, dataKey, indexKey} from './format.js'
import type {MasterKey} from './crypto.js'
import {CorruptBlobError, CorruptObjectError, PackBuilder, decodeBlob, openJson, sealJson, sha256} from './pack.js'
import type {RepoLock} from './lock.js'
import type {Repository, TreeCache} from './repository.js'

const debug = debugFactory('holyship:prune')

export const DEFAULT_GRACE_MS = 60 * 60_000
export const DEFAULT_REPACK_BELOW = 0.5
const PACKS_PER_INDEX = 64
const BLOBS_PER_INDEX = 100_000

export interface PruneOptions {
  dryRun?: boolean
  /** packs younger than this are never deleted or repacked (default 1 h) */
  graceMs?: number
  /** repack packs with less than this fraction of their blob bytes in use (default 0.5) */
  repackBelow?: number
  /** the exclusive lock; required unless dryRun */
  lock?: RepoLock
  /** what-if for `forget --dry-run --prune`: these snapshots count as gone */
  assumeForgotten?: ReadonlySet<string>
  /** tree blobs by id (the catalogue): trees are content-addressed, any cache is valid */
  treeCache?: TreeCache
  progress?: Progress
  now?: () => number
  /** tests: runs after planning and repacking, before the first re-check and any deletion */
  beforeCommit?: () => Promise<void>
  /** tests: runs after the new index is written, before the old index files are deleted */
  afterIndexWritten?: () => Promise<void>
}

export interface PrunedObject {
  key: string
  size: number
  why: 'unused' | 'repacked' | 'unindexed'
}

export interface PruneResult {
  repository: string
  dryRun: boolean
  startedAt: string
  snapshots: number
  packs: {
    total: number
    /** packs left as they are */
    kept: number
    /** deleted (or, dry run, to delete) because no snapshot uses any of their blobs */
    unused: number
    /** rewritten: their used blobs were copied into new packs, then they were deleted */
    repacked: number
    /** packs no index names (left by interrupted writers), old enough to delete */
    unindexed: number
    /** new packs written by repacking */
    written: number
    /** unused or mostly-empty packs left alone because they are younger than the grace period */
    young: number
    /** named by the index but not stored (no snapshot needs them): dropped from the index */
    missing: number
    /** doomed packs kept because a snapshot or index file written during prune needs them */
    rescued: number
  }
  bytes: {
    /** all packs before */
    total: number
    /** of packs deleted */
    deleted: number
    /** written into new packs */
    written: number
    /** deleted − written */
    freed: number
  }
  blobs: {used: number; unused: number; copied: number}
  indexFiles: {before: number; written: number; deleted: number}
  /** every object deleted (dry run: that would be) */
  deleted: PrunedObject[]
  durationMs: number
}

interface PackInfo {
  id: string
  size: number
  blobs: PackBlob[]
  indexFiles: Set<string>
}

const PACK_KEY_RE = /^data\/([0-9a-f]{2})\/([0-9a-f]{64})$/

/** every blob a set of snapshots needs (trees and data), by walking their trees */
async function usedBlobs(
  loadBlob: (id: string) => Promise<Buffer>,
  manifests: {id: string; manifest: SnapshotManifest}[],
  inIndex: (id: string) => boolean,
  used: Set<string>,
  treeCache: TreeCache | undefined,
): Promise<void> {
  const loadTree = async (id: string): Promise<Tree> => {
    const cached = treeCache?.getTree(id)
    if (cached) return JSON.parse(cached.toString('utf8')) as Tree
    const data = await loadBlob(id)
    treeCache?.putTree(id, data)
    return JSON.parse(data.toString('utf8')) as Tree
  }
  for (const {id, manifest: m} of manifests) {
    const roots = [m.container?.image?.tree, m.container?.fsDiff, ...(m.mounts ?? []).map((x) => x.tree)].filter((x): x is string => !!x)
    const queue = roots.filter((r) => !used.has(r))
    for (const r of queue) used.add(r)
    while (queue.length > 0) {
      const tree = queue.pop()!
      if (!inIndex(tree)) {
        throw new HolyshipError('REPO_DAMAGED', `tree ${tree.slice(0, 16)} of snapshot ${id.slice(0, 12)} is in no index file; prune stopped, nothing was deleted`, {
          hint: 'run `holyship verify` to see what is damaged',
        })
      }
      let t: Tree
      try {
        t = await loadTree(tree)
      } catch (e) {
        throw new HolyshipError('REPO_DAMAGED', `cannot read tree ${tree.slice(0, 16)} of snapshot ${id.slice(0, 12)}: ${(e as Error).message}; prune stopped, nothing was deleted`, {cause: e})
      }
      for (const n of t.nodes) {
        for (const c of n.content ?? []) {
          if (used.has(c)) continue
          if (!inIndex(c)) {
            throw new HolyshipError('REPO_DAMAGED', `blob ${c.slice(0, 16)} of snapshot ${id.slice(0, 12)} is in no index file; prune stopped, nothing was deleted`, {
              hint: 'run `holyship verify` to see what is damaged',
            })
          }
          used.add(c)
        }
        if (n.subtree && !used.has(n.subtree)) {
          used.add(n.subtree)
          queue.push(n.subtree)
        }
      }
    }
  }
}

async function readIndexFile(backend: Backend, id: string, key: MasterKey | undefined): Promise<IndexFile> {
  const data = await backend.get(indexKey(id))
  if (sha256(data) !== id) throw new HolyshipError('REPO_DAMAGED', `index file index/${id} is damaged: its content does not match its name; prune stopped`)
  let file: IndexFile
  try {
    // decrypted and authenticated in an encrypted repository
    file = openJson<IndexFile>('index', data, `index file index/${id}`, key)
  } catch (e) {
    if (e instanceof CorruptObjectError) throw new HolyshipError('REPO_DAMAGED', `${e.message}; prune stopped`)
    throw e
  }
  if (!file || !Array.isArray(file.packs)) throw new HolyshipError('REPO_DAMAGED', `index file index/${id} has no pack list; prune stopped`)
  return file
}

export async function pruneRepository(repo: Repository, opts: PruneOptions = {}): Promise<PruneResult> {
  const now = opts.now ?? Date.now
  const t0 = now()
  const dryRun = opts.dryRun ?? false
  const graceMs = opts.graceMs ?? DEFAULT_GRACE_MS
  const repackBelow = opts.repackBelow ?? DEFAULT_REPACK_BELOW
  const progress = opts.progress ?? silentProgress
  const backend = repo.backend
  if (!dryRun && !opts.lock?.exclusive) throw new Error('pruneRepository needs the exclusive repository lock')
  if (!(graceMs >= 0)) throw new HolyshipError('USAGE', `the grace period must be 0 or more, not ${graceMs}`)

  // 1. listings, in this order (see 3. above); any failure throws and aborts
  progress.phase('listing the repository')
  const snapshotIds = (await backend.list('snapshots/')).map((e) => e.key.slice('snapshots/'.length))
  const indexIds = (await backend.list('index/')).map((e) => e.key.slice('index/'.length))
  const stored = new Map<string, BackendEntry>()
  for (const e of await backend.list('data/')) {
    const m = PACK_KEY_RE.exec(e.key)
    if (m && m[1] === m[2].slice(0, 2)) stored.set(m[2], e)
    else debug('ignoring %s: not a pack name', e.key)
  }

  // 2. the index: which blobs are where
  progress.phase('reading the index')
  const packs = new Map<string, PackInfo>()
  const indexFilePacks = new Map<string, string[]>()
  const addIndexFile = (id: string, file: IndexFile): void => {
    const ids: string[] = []
    for (const p of file.packs) {
      ids.push(p.id)
      const known = packs.get(p.id)
      if (known) known.indexFiles.add(id)
      else packs.set(p.id, {id: p.id, size: p.size, blobs: p.blobs, indexFiles: new Set([id])})
    }
    indexFilePacks.set(id, ids)
  }
  for (const id of indexIds) {
    const file = await readIndexFile(backend, id, repo.masterKey)
    addIndexFile(id, file)
    repo.registerIndexFile(id, file)
  }
  // blob → the stored packs holding it (a blob may be in several after an interrupted writer)
  const where = new Map<string, string[]>()
  const indexBlob = (p: PackInfo): void => {
    for (const b of p.blobs) {
      const w = where.get(b.id)
      if (w) w.push(p.id)
      else where.set(b.id, [p.id])
    }
  }
  for (const p of packs.values()) if (stored.has(p.id)) indexBlob(p)
  // a tree from a pack that is stored: the repository's index keeps the first location it
  // read, which may be a pack that is gone while another holds the same blob
  const blobsOf = new Map<string, Map<string, PackBlob>>() // of packs trees were read from
  const loadTree = async (id: string): Promise<Buffer> => {
    let failure: unknown = new Error(`blob ${id.slice(0, 16)} is in no stored pack`)
    for (const pid of where.get(id) ?? []) {
      let inPack = blobsOf.get(pid)
      if (!inPack) blobsOf.set(pid, (inPack = new Map(packs.get(pid)!.blobs.map((x) => [x.id, x]))))
      const b = inPack.get(id)!
      try {
        return decodeBlob(await backend.getRange(dataKey(pid), b.offset, b.length), id, b.raw, dataKey(pid), repo.masterKey)
      } catch (e) {
        failure = e
      }
    }
    throw failure
  }

  // 3. what the snapshots need
  progress.phase('reading snapshots')
  const forgotten = opts.assumeForgotten ?? new Set<string>()
  const manifests: {id: string; manifest: SnapshotManifest}[] = []
  for (const id of snapshotIds) if (!forgotten.has(id)) manifests.push({id, manifest: await repo.loadSnapshot(id)})
  const used = new Set<string>()
  await usedBlobs(loadTree, manifests, (b) => where.has(b), used, opts.treeCache)

  // 4. classify packs
  for (const p of packs.values()) {
    const s = stored.get(p.id)
    if (s && s.size !== p.size) {
      throw new HolyshipError('REPO_DAMAGED', `pack ${dataKey(p.id)} has ${s.size} bytes, the index says ${p.size}; prune stopped, nothing was deleted`, {
        hint: 'run `holyship verify --read-data`',
      })
    }
  }
  const oldEnough = (id: string): boolean => {
    const m = stored.get(id)?.mtime
    return m !== undefined && m <= t0 - graceMs
  }
  const keep = new Set<string>()
  const unused = new Set<string>()
  const repack = new Set<string>()
  const missing = new Set<string>()
  let young = 0
  let unusedBlobCount = 0
  for (const p of packs.values()) {
    if (!stored.has(p.id)) {
      missing.add(p.id)
      continue
    }
    let usedBytes = 0
    let blobBytes = 0
    for (const b of p.blobs) {
      blobBytes += b.length
      if (used.has(b.id)) {
        usedBytes += b.length
      } else unusedBlobCount++
    }
    const wantsWork = usedBytes === 0 || usedBytes < blobBytes * repackBelow
    if (!wantsWork) keep.add(p.id)
    else if (!oldEnough(p.id)) {
      keep.add(p.id)
      young++
    } else if (usedBytes === 0) unused.add(p.id)
    else repack.add(p.id)
  }
  const unindexed = new Set<string>()
  for (const [id] of stored) {
    if (packs.has(id)) continue
    if (oldEnough(id)) unindexed.add(id)
    else young++
  }
  // the used blobs of repacked packs that no kept pack holds: copied once each
  const toCopy = new Map<string, {pack: string; blob: PackBlob}>()
  for (const id of repack) {
    for (const b of packs.get(id)!.blobs) {
      if (!used.has(b.id) || toCopy.has(b.id)) continue
      if ((where.get(b.id) ?? []).some((pid) => keep.has(pid))) continue
      toCopy.set(b.id, {pack: id, blob: b})
    }
  }

  const result: PruneResult = {
    repository: backend.location,
    dryRun,
    startedAt: new Date(t0).toISOString(),
    snapshots: manifests.length,
    packs: {total: stored.size, kept: 0, unused: 0, repacked: 0, unindexed: 0, written: 0, young, missing: missing.size, rescued: 0},
    bytes: {total: [...stored.values()].reduce((n, e) => n + e.size, 0), deleted: 0, written: 0, freed: 0},
    blobs: {used: used.size, unused: unusedBlobCount, copied: toCopy.size},
    indexFiles: {before: indexIds.length, written: 0, deleted: 0},
    deleted: [],
    durationMs: 0,
  }
  const doomed = (): PrunedObject[] => [
    ...[...unused].map((id) => ({key: dataKey(id), size: stored.get(id)!.size, why: 'unused' as const})),
    ...[...repack].map((id) => ({key: dataKey(id), size: stored.get(id)!.size, why: 'repacked' as const})),
    ...[...unindexed].map((id) => ({key: dataKey(id), size: stored.get(id)!.size, why: 'unindexed' as const})),
  ]
  const finish = (written: number): PruneResult => {
    result.deleted = doomed()
    result.packs.unused = unused.size
    result.packs.repacked = repack.size
    result.packs.unindexed = unindexed.size
    result.packs.kept = result.packs.total - unused.size - repack.size - unindexed.size
    result.bytes.deleted = result.deleted.reduce((n, d) => n + d.size, 0)
    result.bytes.written = written
    result.bytes.freed = result.bytes.deleted - written
    result.durationMs = now() - t0
    progress.done()
    return result
  }

  if (dryRun) {
    // estimate what repacking would write: the copied blobs plus a header per new pack
    const copyBytes = [...toCopy.values()].reduce((n, c) => n + c.blob.length, 0)
    result.packs.written = toCopy.size === 0 ? 0 : Math.ceil(copyBytes / repo.config.packSize)
    return finish(copyBytes)
  }
  if (unused.size + repack.size + unindexed.size + missing.size === 0) return finish(0)

  // 5. repack: copy the still-used blobs of mostly-empty packs into new packs
  const newPacks: IndexFile['packs'] = []
  let written = 0
  if (toCopy.size > 0) {
    const total = [...repack].reduce((n, id) => n + stored.get(id)!.size, 0)
    progress.phase(`repacking ${repack.size} packs`, total)
    let builder = new PackBuilder(repo.masterKey)
    const flushPack = async (): Promise<void> => {
      if (builder.count === 0) return
      const {id, data, blobs} = builder.finish()
      const key = dataKey(id)
      await backend.put(key, data)
      const size = await backend.stat(key)
      if (size !== data.length) throw new HolyshipError('IO_FAILED', `pack ${key} was stored with ${size ?? 'no'} bytes instead of ${data.length}`)
      newPacks.push({id, size: data.length, blobs: blobs.map((b) => ({...b}))})
      written += data.length
      builder = new PackBuilder(repo.masterKey)
      debug('repack: wrote %s (%d blobs, %d bytes)', id.slice(0, 12), blobs.length, data.length)
    }
    const byPack = new Map<string, PackBlob[]>()
    for (const {pack, blob} of toCopy.values()) {
      const l = byPack.get(pack)
      if (l) l.push(blob)
      else byPack.set(pack, [blob])
    }
    for (const [packId, blobs] of byPack) {
      const key = dataKey(packId)
      const data = await backend.get(key)
      if (sha256(data) !== packId) throw new HolyshipError('REPO_DAMAGED', `pack ${key} is damaged (its content does not match its name); prune stopped, nothing was deleted`)
      for (const b of blobs.sort((x, y) => x.offset - y.offset)) {
        const storedBlob = data.subarray(b.offset, b.offset + b.length)
        try {
          decodeBlob(storedBlob, b.id, b.raw, key, repo.masterKey)
        } catch (e) {
          if (e instanceof CorruptBlobError) throw new HolyshipError('REPO_DAMAGED', `${e.message}; prune stopped, nothing was deleted`, {cause: e})
          throw e
        }
        builder.add(b.id, b.type as BlobType, Buffer.from(storedBlob), b.raw)
        if (builder.length >= repo.config.packSize) await flushPack()
      }
      progress.add(data.length)
    }
    await flushPack()
  }
  result.packs.written = newPacks.length

  await opts.beforeCommit?.()

  // 6. re-check: snapshots and index files that appeared since the start rescue what they need
  const seenSnapshots = new Set(snapshotIds)
  const seenIndex = new Set(indexIds)
  const rescue = async (): Promise<string[]> => {
    const rescued: string[] = []
    const save = (id: string): void => {
      if (unused.delete(id) || repack.delete(id) || unindexed.delete(id)) {
        keep.add(id)
        rescued.push(id)
      }
    }
    const newIndex = (await backend.list('index/')).map((e) => e.key.slice('index/'.length)).filter((id) => !seenIndex.has(id))
    for (const id of newIndex) {
      seenIndex.add(id)
      const file = await readIndexFile(backend, id, repo.masterKey)
      repo.registerIndexFile(id, file)
      for (const p of file.packs) {
        save(p.id)
        if (!packs.has(p.id)) {
          const info: PackInfo = {id: p.id, size: p.size, blobs: p.blobs, indexFiles: new Set([id])}
          packs.set(p.id, info)
          indexBlob(info)
        } else packs.get(p.id)!.indexFiles.add(id)
      }
    }
    const newSnaps = (await backend.list('snapshots/')).map((e) => e.key.slice('snapshots/'.length)).filter((id) => !seenSnapshots.has(id))
    if (newSnaps.length > 0) {
      const ms: {id: string; manifest: SnapshotManifest}[] = []
      for (const id of newSnaps) {
        seenSnapshots.add(id)
        ms.push({id, manifest: await repo.loadSnapshot(id)})
      }
      const need = new Set<string>()
      await usedBlobs(loadTree, ms, (b) => where.has(b) || toCopy.has(b), need, opts.treeCache)
      for (const b of need) {
        const holders = where.get(b) ?? []
        // kept elsewhere, or copied by the repack above (indexed with the new packs)
        if (holders.some((p) => keep.has(p)) || toCopy.has(b)) continue
        for (const p of holders) save(p)
      }
    }
    if (rescued.length > 0) debug('rescued %d packs needed by %d new snapshots / %d new index files', rescued.length, newSnaps.length, newIndex.length)
    return rescued
  }
  progress.phase('checking for new snapshots')
  let rescued = await rescue()

  // 7. the new index: every kept indexed pack of a rewritten index file, and the new packs
  await opts.lock!.assertHeld()
  const doomedIds = (): Set<string> => new Set([...unused, ...repack, ...missing])
  const gone = doomedIds()
  const dirtyIndex = indexIds.filter((id) => indexFilePacks.get(id)!.some((p) => gone.has(p)))
  const stillIndexed = new Set<string>()
  for (const id of indexIds) if (!dirtyIndex.includes(id)) for (const p of indexFilePacks.get(id)!) stillIndexed.add(p)
  const carry: IndexFile['packs'] = []
  for (const id of dirtyIndex) {
    for (const p of indexFilePacks.get(id)!) {
      if (gone.has(p) || stillIndexed.has(p)) continue
      stillIndexed.add(p)
      const info = packs.get(p)!
      carry.push({id: p, size: info.size, blobs: info.blobs})
    }
  }
  const writeIndex = async (entries: IndexFile['packs']): Promise<void> => {
    let batch: IndexFile['packs'] = []
    let blobs = 0
    const cut = async (): Promise<void> => {
      if (batch.length === 0) return
      const data = sealJson('index', {version: 1, packs: batch} satisfies IndexFile, repo.masterKey)
      const id = sha256(data)
      await backend.put(indexKey(id), data)
      seenIndex.add(id)
      result.indexFiles.written++
      batch = []
      blobs = 0
    }
    for (const e of entries) {
      batch.push(e)
      blobs += e.blobs.length
      if (batch.length >= PACKS_PER_INDEX || blobs >= BLOBS_PER_INDEX) await cut()
    }
    await cut()
  }
  progress.phase('writing the index')
  await writeIndex([...carry, ...newPacks])
  for (const p of newPacks) {
    const info: PackInfo = {id: p.id, size: p.size, blobs: p.blobs, indexFiles: new Set()}
    packs.set(p.id, info)
    stored.set(p.id, {key: dataKey(p.id), size: p.size})
    keep.add(p.id)
  }

  // 8. a re-check, old index files out, a last re-check, then the packs. A pack rescued by a
  // re-check whose every index file is being replaced is indexed again at once: before the old
  // index files go when it was rescued before, so that a crash leaves no needed pack unindexed
  // (only one rescued while they were being deleted waits for the moment that takes)
  await opts.afterIndexWritten?.()
  const reindexRescued = async (ids: string[]): Promise<void> => {
    const lost = ids.filter((id) => packs.has(id) && !stillIndexed.has(id) && ![...packs.get(id)!.indexFiles].some((f) => !dirtyIndex.includes(f)))
    for (const id of lost) stillIndexed.add(id)
    if (lost.length > 0) await writeIndex(lost.map((id) => ({id, size: packs.get(id)!.size, blobs: packs.get(id)!.blobs})))
  }
  const recheck = async (): Promise<void> => {
    const late = await rescue()
    rescued = [...rescued, ...late]
    await reindexRescued(late)
  }
  await recheck()
  await opts.lock!.assertHeld()
  for (const id of dirtyIndex) {
    await backend.delete(indexKey(id))
    result.indexFiles.deleted++
  }
  await recheck()
  result.packs.rescued = rescued.length

  await opts.lock!.assertHeld()
  const victims = doomed()
  progress.phase(`deleting ${victims.length} packs`, victims.reduce((n, v) => n + v.size, 0))
  let fenced = Date.now()
  for (const v of victims) {
    // a long delete (thousands of packs on S3) checks now and then that the lock is still ours
    if (Date.now() - fenced > 60_000) {
      await opts.lock!.assertHeld()
      fenced = Date.now()
    }
    await backend.delete(v.key)
    progress.add(v.size)
  }
  debug('pruned %d packs (%d bytes), wrote %d packs (%d bytes)', victims.length, victims.reduce((n, v) => n + v.size, 0), newPacks.length, written)
  return finish(written)
}
