/**
 * verify: check that every snapshot's data is there and intact. Structure: index files and
 * manifests match their hashes, every pack the index names exists with the right size, every
 * tree of every snapshot loads, is well-formed (tree-check.ts) and every data blob it names is
 * indexed. With readData, every pack is read whole, hashed against its id, and every blob
 * decoded against its hash. Each damaged object is reported once, with the snapshots and the
 * files (as the container sees them) whose data it holds.
 */
import {isNotFound} from '../backend/backend.js'
import {UnsafeTreeError, loadCheckedTree} from '../archive/tree-check.js'
import {HolyshipError} from '../errors.js'
import {Progress, silentProgress} from '../progress.js'
import {dataKey, IndexFile, PackBlob, SnapshotManifest} from '../repo/format.js'
import {CorruptObjectError, decodeBlob, openJson, parsePackHeader, sha256} from '../repo/pack.js'
import {Repository} from '../repo/repository.js'

export interface VerifyProblem {
  object: string
  problem: string
  /** snapshots affected, when known */
  snapshots?: string[]
  /** files affected, as `<snapshot id prefix>:<path>` (at most FILES_LISTED of them) */
  files?: string[]
  /** how many files are affected in all (files lists the first ones) */
  fileCount?: number
}

export interface VerifyResult {
  snapshots: number
  packs: number
  blobs: number
  trees: number
  bytesRead: number
  problems: VerifyProblem[]
}

const FILES_LISTED = 20
/** damaged files remembered per tree (the count goes on) */
const PER_TREE = 50

/** damaged entries below one tree: relative path -> the object that holds the damage */
interface TreeDamage {
  entries: {path: string; object: string}[]
  count: number
}
const NO_DAMAGE: TreeDamage = {entries: [], count: 0}

export async function verifyRepository(repo: Repository, opts: {readData?: boolean; progress?: Progress} = {}): Promise<VerifyResult> {
  const progress = opts.progress ?? silentProgress
  const problems = new Map<string, VerifyProblem>()
  const report = (object: string, problem: string): VerifyProblem => {
    let p = problems.get(object)
    if (!p) {
      p = {object, problem}
      problems.set(object, p)
    }
    return p
  }
  const packs = new Map<string, number>()
  const blobsInIndex = new Map<string, {pack: string; blob: PackBlob}>()
  const packBlobs = new Map<string, PackBlob[]>()
  // index files, read afresh (not from the catalogue)
  for (const {key} of await repo.backend.list('index/')) {
    let data: Buffer
    try {
      data = await repo.backend.get(key)
    } catch (e) {
      report(key, `cannot be read: ${(e as Error).message}`)
      continue
    }
    if (sha256(data) !== key.slice('index/'.length)) {
      report(key, 'content does not match its name (damaged or truncated); the packs only it names are not indexed')
      continue
    }
    let idx: IndexFile
    try {
      // decrypted and authenticated in an encrypted repository
      idx = openJson<IndexFile>('index', data, key, repo.masterKey)
      if (!idx || !Array.isArray(idx.packs)) throw new Error('no packs')
    } catch (e) {
      report(key, e instanceof CorruptObjectError && e.why !== 'not valid JSON' ? e.why : 'not an index file')
      continue
    }
    for (const p of idx.packs) {
      packs.set(p.id, p.size)
      const list = packBlobs.get(p.id) ?? []
      for (const b of p.blobs) {
        blobsInIndex.set(b.id, {pack: p.id, blob: b})
        list.push(b)
      }
      packBlobs.set(p.id, list)
    }
  }
  /** blob id -> the object (pack key) that holds it damaged */
  const damagedBlobs = new Map<string, string>()
  const markAll = (pack: string): void => {
    for (const b of packBlobs.get(pack) ?? []) damagedBlobs.set(b.id, dataKey(pack))
  }
  const stored = new Map((await repo.backend.list('data/')).map((e) => [e.key, e.size]))
  for (const [id, size] of packs) {
    const have = stored.get(dataKey(id))
    if (have === undefined) {
      report(dataKey(id), 'pack is missing')
      markAll(id)
    } else if (have !== size) {
      report(dataKey(id), `pack has ${have} bytes, the index says ${size} (truncated or damaged)`)
      // with --read-data the blobs still intact are told apart below
      if (!opts.readData) markAll(id)
    }
  }
  let bytesRead = 0
  if (opts.readData) {
    const total = [...packs.values()].reduce((a, b) => a + b, 0)
    progress.phase('reading data', total)
    for (const [id] of packs) {
      const key = dataKey(id)
      let data: Buffer
      try {
        data = await repo.backend.get(key)
      } catch (e) {
        if (!isNotFound(e)) {
          report(key, `cannot be read: ${(e as Error).message}`)
          markAll(id)
        }
        continue
      }
      bytesRead += data.length
      progress.add(data.length)
      const whole = sha256(data) === id
      if (!whole) report(key, 'content does not match its name (damaged or truncated)')
      else {
        try {
          parsePackHeader(data, key, repo.masterKey)
        } catch (e) {
          report(key, (e as Error).message)
        }
      }
      // every blob where the index places it: the damaged ones are told apart from the intact
      let bad = 0
      for (const b of packBlobs.get(id) ?? []) {
        try {
          if (b.offset < 0 || b.offset + b.length > data.length) throw new Error('beyond the end of the pack')
          decodeBlob(data.subarray(b.offset, b.offset + b.length), b.id, b.raw, key, repo.masterKey)
        } catch (e) {
          damagedBlobs.set(b.id, key)
          if (bad++ === 0 && whole) report(key, (e as Error).message)
        }
      }
    }
  }

  // snapshots and every tree they reach; damage is attributed to files, per tree, once
  const treeMemo = new Map<string, TreeDamage>()
  const damageOf = async (tree: string): Promise<TreeDamage> => {
    const known = treeMemo.get(tree)
    if (known) return known
    treeMemo.set(tree, NO_DAMAGE) // trees are content-addressed: no cycles, but be safe
    const entries: TreeDamage['entries'] = []
    let count = 0
    const add = (path: string, object: string): void => {
      count++
      if (entries.length < PER_TREE) entries.push({path, object})
    }
    const loc = blobsInIndex.get(tree)
    // the tree blob itself damaged in its pack (it may still be readable from the catalogue's cache)
    const treeObject = damagedBlobs.get(tree)
    if (treeObject) add('', treeObject)
    if (!loc) {
      report(`tree ${tree.slice(0, 16)}`, 'not in any index')
      add('', `tree ${tree.slice(0, 16)}`)
    } else {
      let t
      try {
        t = await loadCheckedTree(repo, tree)
      } catch (e) {
        const object = treeObject ?? (e instanceof UnsafeTreeError ? `tree ${tree.slice(0, 16)}` : dataKey(loc.pack))
        report(object, (e as Error).message)
        if (!treeObject) add('', object)
      }
      for (const n of t?.nodes ?? []) {
        for (const c of n.content ?? []) {
          const bl = blobsInIndex.get(c)
          const object = !bl ? `blob ${c.slice(0, 16)}` : damagedBlobs.get(c)
          if (!object) continue
          if (!bl) report(object, 'referenced but not in any index')
          add(n.name, object)
          break
        }
        if (n.type === 'dir' && n.subtree) {
          const sub = await damageOf(n.subtree)
          count += sub.count - Math.min(sub.entries.length, PER_TREE - entries.length)
          for (const e of sub.entries) {
            if (entries.length >= PER_TREE) break
            entries.push({path: e.path === '' ? `${n.name}/` : `${n.name}/${e.path}`, object: e.object})
            count++
          }
        }
      }
    }
    const result = count === 0 ? NO_DAMAGE : {entries, count}
    treeMemo.set(tree, result)
    return result
  }

  let snapshots = 0
  const ids = await repo.listSnapshotIds()
  progress.phase('checking snapshots')
  for (const id of ids) {
    let m: SnapshotManifest
    try {
      m = await repo.loadSnapshot(id)
    } catch (e) {
      report(`snapshots/${id}`, (e as Error).message).snapshots = [id]
      continue
    }
    snapshots++
    const roots: {tree: string; base: string}[] = []
    if (m.container?.image?.tree) roots.push({tree: m.container.image.tree, base: 'image:'})
    if (m.container?.fsDiff) roots.push({tree: m.container.fsDiff, base: ''})
    for (const mount of m.mounts ?? []) roots.push({tree: mount.tree, base: mount.destination === '/' ? '' : mount.type === 'volume' && !mount.destination ? `${mount.source}:` : mount.destination})
    for (const r of roots) {
      const d = await damageOf(r.tree)
      if (d.count === 0) continue
      const perObject = new Map<string, number>()
      for (const e of d.entries) {
        const p = problems.get(e.object) ?? report(e.object, 'damaged')
        if (!p.snapshots?.includes(id)) (p.snapshots ??= []).push(id)
        p.files ??= []
        if (p.files.length < FILES_LISTED) p.files.push(`${id.slice(0, 12)}:${r.base}/${e.path}`)
        perObject.set(e.object, (perObject.get(e.object) ?? 0) + 1)
      }
      for (const [object, n] of perObject) {
        const p = problems.get(object)!
        p.fileCount = (p.fileCount ?? 0) + n
      }
      // entries beyond what was remembered still count, against the first object
      if (d.count > d.entries.length && d.entries.length > 0) {
        const p = problems.get(d.entries[0].object)!
        p.fileCount = (p.fileCount ?? 0) + (d.count - d.entries.length)
      }
    }
  }
  progress.done()
  // the files affected, in the message too (what `verify` prints on stderr)
  const out = [...problems.values()]
  for (const p of out) {
    if (p.files && p.files.length > 0) {
      const n = p.fileCount ?? p.files.length
      p.problem += `; affects ${n} file(s): ${p.files.slice(0, 5).join(', ')}${n > 5 ? ', …' : ''}`
    }
  }
  return {snapshots, packs: packs.size, blobs: blobsInIndex.size, trees: treeMemo.size, bytesRead, problems: out}
}

export function assertHealthy(r: VerifyResult): void {
  if (r.problems.length > 0) {
    throw new HolyshipError('REPO_DAMAGED', `${r.problems.length} problem(s) found: ${r.problems[0].object}: ${r.problems[0].problem}`)
  }
}
