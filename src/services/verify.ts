/**
 * verify: check that every snapshot's data is there and intact. Structure: index files and
 * manifests match their hashes, every pack the index names exists with the right size, every
 * tree of every snapshot loads and every data blob it names is indexed. With readData, every
 * pack is read whole, hashed against its id, and every blob decoded against its hash.
 */
import {isNotFound} from '../backend/backend.js'
import {HolyshipError} from '../errors.js'
import {Progress, silentProgress} from '../progress.js'
import {dataKey, IndexFile} from '../repo/format.js'
import {decodeBlob, parsePackHeader, sha256} from '../repo/pack.js'
import {Repository} from '../repo/repository.js'

export interface VerifyProblem {
  object: string
  problem: string
  /** snapshots affected, when known */
  snapshots?: string[]
}

export interface VerifyResult {
  snapshots: number
  packs: number
  blobs: number
  trees: number
  bytesRead: number
  problems: VerifyProblem[]
}

export async function verifyRepository(repo: Repository, opts: {readData?: boolean; progress?: Progress} = {}): Promise<VerifyResult> {
  const progress = opts.progress ?? silentProgress
  const problems: VerifyProblem[] = []
  const packs = new Map<string, number>()
  const blobsInIndex = new Map<string, {pack: string}>()
  // index files, read afresh (not from the catalogue)
  for (const {key} of await repo.backend.list('index/')) {
    const data = await repo.backend.get(key)
    if (sha256(data) !== key.slice('index/'.length)) {
      problems.push({object: key, problem: 'content does not match its name'})
      continue
    }
    const idx = JSON.parse(data.toString('utf8')) as IndexFile
    for (const p of idx.packs) {
      packs.set(p.id, p.size)
      for (const b of p.blobs) blobsInIndex.set(b.id, {pack: p.id})
    }
  }
  const stored = new Map((await repo.backend.list('data/')).map((e) => [e.key, e.size]))
  for (const [id, size] of packs) {
    const have = stored.get(dataKey(id))
    if (have === undefined) problems.push({object: dataKey(id), problem: 'pack is missing'})
    else if (have !== size) problems.push({object: dataKey(id), problem: `pack has ${have} bytes, the index says ${size}`})
  }
  // snapshots and every tree they reach
  const treesSeen = new Set<string>()
  const damagedPacks = new Set(problems.filter((p) => p.object.startsWith('data/')).map((p) => p.object.split('/').pop()!))
  let snapshots = 0
  const ids = await repo.listSnapshotIds()
  progress.phase('checking snapshots')
  for (const id of ids) {
    let m
    try {
      m = await repo.loadSnapshot(id)
    } catch (e) {
      problems.push({object: `snapshots/${id}`, problem: (e as Error).message})
      continue
    }
    snapshots++
    const roots = [m.container?.fsDiff, m.container?.image.tree, ...m.mounts.map((x) => x.tree)].filter((x): x is string => !!x)
    const walk = async (tree: string): Promise<void> => {
      if (treesSeen.has(tree)) return
      treesSeen.add(tree)
      const loc = blobsInIndex.get(tree)
      if (!loc) {
        problems.push({object: `tree ${tree.slice(0, 16)}`, problem: 'not in any index', snapshots: [id]})
        return
      }
      let t
      try {
        t = await repo.loadTree(tree)
      } catch (e) {
        problems.push({object: dataKey(loc.pack), problem: (e as Error).message, snapshots: [id]})
        return
      }
      for (const n of t.nodes) {
        for (const c of n.content ?? []) {
          const bl = blobsInIndex.get(c)
          if (!bl) problems.push({object: `blob ${c.slice(0, 16)}`, problem: 'referenced but not in any index', snapshots: [id]})
          else if (damagedPacks.has(bl.pack)) problems.push({object: dataKey(bl.pack), problem: `holds blob ${c.slice(0, 16)} of a snapshot`, snapshots: [id]})
        }
        if (n.subtree) await walk(n.subtree)
      }
    }
    for (const r of roots) await walk(r)
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
        if (!isNotFound(e)) problems.push({object: key, problem: (e as Error).message})
        continue
      }
      bytesRead += data.length
      progress.add(data.length)
      if (sha256(data) !== id) {
        problems.push({object: key, problem: 'content does not match its name (damaged or truncated)'})
        continue
      }
      try {
        for (const b of parsePackHeader(data, key)) decodeBlob(data.subarray(b.offset, b.offset + b.length), b.id, b.raw, key)
      } catch (e) {
        problems.push({object: key, problem: (e as Error).message})
      }
    }
  }
  progress.done()
  return {snapshots, packs: packs.size, blobs: blobsInIndex.size, trees: treesSeen.size, bytesRead, problems}
}

export function assertHealthy(r: VerifyResult): void {
  if (r.problems.length > 0) {
    throw new HolyshipError('REPO_DAMAGED', `${r.problems.length} problem(s) found: ${r.problems[0].object}: ${r.problems[0].problem}`)
  }
}
