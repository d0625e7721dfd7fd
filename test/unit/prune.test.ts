/**
 * prune on real local repositories (Repository + Archiver): what it deletes and repacks, that
 * every remaining snapshot restores and verify --read-data passes, and that it is safe with
 * writers in other processes (with and without the shared lock), with failing listings and
 * with damaged repositories.
 */
import {spawn, ChildProcessWithoutNullStreams} from 'node:child_process'
import {mkdtempSync, promises as fsp, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {createInterface} from 'node:readline'
import {fileURLToPath} from 'node:url'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {Backend} from '../../src/backend/backend.js'
import {LocalBackend} from '../../src/backend/local.js'
import {Catalogue} from '../../src/catalogue/catalogue.js'
import {BlobType, IndexFile, dataKey, indexKey, snapshotKey} from '../../src/repo/format.js'
import {RepoLock} from '../../src/repo/lock.js'
import {PackBuilder, openJson, sealJson, sha256} from '../../src/repo/pack.js'
import {pruneRepository} from '../../src/repo/prune.js'
import {Repository} from '../../src/repo/repository.js'
import {openContext} from '../../src/services/context.js'
import {prune} from '../../src/services/prune.js'
import {verifyRepository} from '../../src/services/verify.js'
import {content, hashes, readSnapshotFiles, writeSnapshot} from './helpers/repo-fixture.js'

const KiB = 1024
const WRITER = fileURLToPath(new URL('./helpers/writer-child.ts', import.meta.url))
let work: string

beforeAll(() => {
  work = mkdtempSync(path.join(os.tmpdir(), 'hs-prune-'))
})
afterAll(() => rmSync(work, {recursive: true, force: true}))

let n = 0
async function freshRepo(): Promise<{dir: string; repo: Repository}> {
  const dir = path.join(work, `repo-${n++}`)
  await fsp.mkdir(dir)
  // small packs: 5 blobs of 20 KiB each
  const repo = await Repository.init(new LocalBackend(dir), {packSize: 100 * KiB})
  return {dir, repo}
}

const files = (prefix: string, count: number, extra: Record<string, Buffer> = {}): Record<string, Buffer> => {
  const out: Record<string, Buffer> = {}
  for (let i = 0; i < count; i++) out[`${prefix}${String(i).padStart(2, '0')}`] = content(`${prefix}${i}`, 20 * KiB)
  return {...out, ...extra}
}

/** pretend everything stored so far was written `ms` ago */
async function age(dir: string, ms: number): Promise<void> {
  const t = (Date.now() - ms) / 1000
  for (const sub of ['data', 'index', 'snapshots']) {
    for (const e of await new LocalBackend(dir).list(`${sub}/`)) await fsp.utimes(path.join(dir, e.key), t, t)
  }
}

const keys = async (dir: string, prefix: string): Promise<string[]> => (await new LocalBackend(dir).list(prefix)).map((e) => e.key)
const stored = async (dir: string): Promise<number> => (await new LocalBackend(dir).list('data/')).reduce((s, e) => s + e.size, 0)

async function exclusive(repo: Repository): Promise<RepoLock> {
  return RepoLock.acquire(repo.backend, {exclusive: true, purpose: 'prune'})
}

/**
 * A: 20 files in 4 full packs + a tree pack. B: 10 new files + one file of each of A's packs.
 * After forgetting A, each of A's data packs is 20% used (→ repacked), A's tree pack unused.
 */
async function scenario() {
  const {dir, repo} = await freshRepo()
  const A = files('a', 20)
  const B = files('b', 10, {a00: A.a00, a05: A.a05, a10: A.a10, a15: A.a15})
  const a = await writeSnapshot(repo, 'vol-a', A)
  const b = await writeSnapshot(repo, 'vol-b', B)
  return {dir, repo, A, B, a, b}
}

/** `inner` with some of its methods replaced */
function wrapped(inner: Backend, over: Partial<Backend>): Backend {
  return {
    location: inner.location,
    get: (k) => inner.get(k),
    getRange: (k, o, l) => inner.getRange(k, o, l),
    put: (k, d) => inner.put(k, d),
    stat: (k) => inner.stat(k),
    delete: (k) => inner.delete(k),
    list: (p) => inner.list(p),
    ...over,
  }
}

async function verifyClean(dir: string): Promise<void> {
  const fresh = await Repository.open(new LocalBackend(dir))
  const v = await verifyRepository(fresh, {readData: true})
  expect(v.problems).toEqual([])
}

describe('prune', () => {
  it('dry run reports exactly what a real run then deletes, and changes nothing', async () => {
    const {dir, repo, a} = await scenario()
    await repo.backend.delete(snapshotKey(a))
    await age(dir, 2 * 3600_000)
    const before = [...(await keys(dir, 'data/')), ...(await keys(dir, 'index/'))]
    const dry = await pruneRepository(await Repository.open(repo.backend, {loadIndex: false}), {dryRun: true})
    expect([...(await keys(dir, 'data/')), ...(await keys(dir, 'index/'))]).toEqual(before)
    expect(dry.packs.repacked).toBe(4)
    expect(dry.packs.unused).toBe(1)
    expect(dry.blobs.copied).toBe(4)
    expect(dry.bytes.freed).toBeGreaterThan(15 * 20 * KiB)

    const lock = await exclusive(repo)
    const real = await pruneRepository(await Repository.open(repo.backend, {loadIndex: false}), {lock})
    await lock.release()
    expect(real.deleted.map((d) => d.key).sort()).toEqual(dry.deleted.map((d) => d.key).sort())
    expect(real.packs.written).toBe(1)
    expect(real.bytes.freed).toBeGreaterThan(15 * 20 * KiB)
    for (const d of real.deleted) expect(await repo.backend.stat(d.key)).toBeUndefined()
  })

  it('deletes what only forgotten snapshots needed, repacks mostly-empty packs; every remaining snapshot restores and verify --read-data passes', async () => {
    const {dir, repo, B, a, b} = await scenario()
    const c = await writeSnapshot(repo, 'vol-c', files('c', 3))
    await repo.backend.delete(snapshotKey(a))
    await age(dir, 2 * 3600_000)
    const sizeBefore = await stored(dir)
    const indexBefore = await keys(dir, 'index/')
    const lock = await exclusive(repo)
    const r = await pruneRepository(await Repository.open(repo.backend, {loadIndex: false}), {lock})
    await lock.release()
    expect(r.snapshots).toBe(2)
    expect(r.packs.repacked).toBe(4)
    expect(r.blobs.copied).toBe(4)
    expect(r.indexFiles.deleted).toBeGreaterThan(0)
    // 16 files of 20 KiB and a tree are gone
    expect(sizeBefore - (await stored(dir))).toBe(r.bytes.freed)
    expect(r.bytes.freed).toBeGreaterThan(16 * 20 * KiB)
    // index files untouched by the change stay as they are
    const indexAfter = await keys(dir, 'index/')
    expect(indexAfter.length).toBeGreaterThan(0)
    expect(indexAfter.some((k) => indexBefore.includes(k))).toBe(true)
    await verifyClean(dir)
    const fresh = await Repository.open(new LocalBackend(dir))
    expect(await readSnapshotFiles(fresh, b)).toEqual(hashes(B))
    expect(Object.keys(await readSnapshotFiles(fresh, c))).toHaveLength(3)
    // a second prune finds nothing to do
    const lock2 = await exclusive(repo)
    const again = await pruneRepository(await Repository.open(repo.backend, {loadIndex: false}), {lock: lock2})
    await lock2.release()
    expect(again.deleted).toEqual([])
    expect(again.packs.written).toBe(0)
  })

  it('the grace period: packs younger than it are left alone', async () => {
    const {repo, a} = await scenario()
    await repo.backend.delete(snapshotKey(a))
    const lock = await exclusive(repo)
    const r = await pruneRepository(await Repository.open(repo.backend, {loadIndex: false}), {lock, graceMs: 3600_000})
    await lock.release()
    expect(r.deleted).toEqual([])
    expect(r.packs.young).toBe(5)
  })

  it('removes old packs no index names (left by an interrupted writer), keeps young ones', async () => {
    const {dir, repo} = await scenario()
    const orphanOld = content('orphan-old', 1000)
    const orphanNew = content('orphan-new', 1000)
    // not real packs, but named like packs: an interrupted writer's leftovers
    const {sha256} = await import('../../src/repo/pack.js')
    await repo.backend.put(dataKey(sha256(orphanOld)), orphanOld)
    await age(dir, 2 * 3600_000)
    await repo.backend.put(dataKey(sha256(orphanNew)), orphanNew)
    const lock = await exclusive(repo)
    const r = await pruneRepository(await Repository.open(repo.backend, {loadIndex: false}), {lock})
    await lock.release()
    expect(r.deleted).toEqual([{key: dataKey(sha256(orphanOld)), size: 1000, why: 'unindexed'}])
    expect(await repo.backend.stat(dataKey(sha256(orphanNew)))).toBe(1000)
    await verifyClean(dir)
  })

  it('needs the exclusive lock', async () => {
    const {repo} = await scenario()
    await expect(pruneRepository(repo, {})).rejects.toThrow(/exclusive repository lock/)
    const shared = await RepoLock.acquire(repo.backend, {exclusive: false, purpose: 'test'})
    await expect(pruneRepository(repo, {lock: shared})).rejects.toThrow(/exclusive repository lock/)
    // and cannot get it while a shared lock is held
    await expect(exclusive(repo)).rejects.toMatchObject({code: 'REPO_LOCKED', message: expect.stringMatching(/a shared lock of test \(pid \d+/)})
    await shared.release()
  })

  it.each(['snapshots/', 'index/', 'data/'])('a failing listing of %s aborts before anything is deleted (never read as empty)', async (prefix) => {
    const {dir, repo, a} = await scenario()
    await repo.backend.delete(snapshotKey(a))
    await age(dir, 2 * 3600_000)
    const before = await keys(dir, '')
    const inner = repo.backend
    const faulty = wrapped(inner, {
      list: async (p) => {
        if (p === prefix) throw Object.assign(new Error('SlowDown: please reduce your request rate'), {name: 'SlowDown'})
        return inner.list(p)
      },
    })
    const lock = await exclusive(repo)
    await expect(pruneRepository(await Repository.open(faulty, {loadIndex: false}), {lock})).rejects.toThrow(/SlowDown/)
    await lock.release()
    expect(await keys(dir, '')).toEqual(before)
  })

  it('a snapshot whose data is missing aborts prune before anything is deleted', async () => {
    const {dir, repo, a, b} = await scenario()
    await repo.backend.delete(snapshotKey(a))
    await age(dir, 2 * 3600_000)
    // remove a pack that B needs (one of B's own)
    const fresh = await Repository.open(new LocalBackend(dir))
    const m = await fresh.loadSnapshot(b)
    const tree = await fresh.loadTree(m.mounts[0].tree)
    const bFile = tree.nodes.find((x) => x.name === 'b03')!
    const pack = fresh.blobLocation(bFile.content![0])!.pack
    await repo.backend.delete(dataKey(pack))
    const before = await keys(dir, '')
    const lock = await exclusive(repo)
    await expect(pruneRepository(await Repository.open(repo.backend, {loadIndex: false}), {lock})).rejects.toMatchObject({code: 'REPO_DAMAGED'})
    await lock.release()
    expect(await keys(dir, '')).toEqual(before)
  })

  it('a tree stored twice, once in a pack that is gone: prune reads the other copy instead of stopping', async () => {
    const {dir, repo, a, b, B} = await scenario()
    await repo.backend.delete(snapshotKey(a))
    await age(dir, 2 * 3600_000)
    // a second pack with every blob of B's root tree's pack (another order: another pack id)
    const fresh = await Repository.open(new LocalBackend(dir))
    const root = (await fresh.loadSnapshot(b)).mounts[0].tree
    const treePack = fresh.blobLocation(root)!.pack
    const entries = [...fresh.blobs()].filter(([, l]) => l.pack === treePack).reverse()
    const builder = new PackBuilder(fresh.masterKey)
    for (const [id, l] of entries) builder.add(id, l.type as BlobType, await repo.backend.getRange(dataKey(treePack), l.offset, l.length), l.raw)
    builder.add('f'.repeat(64), 'data', Buffer.from('x'), 1)
    const copy = builder.finish()
    expect(copy.id).not.toBe(treePack)
    await repo.backend.put(dataKey(copy.id), copy.data)
    const file = sealJson('index', {version: 1, packs: [{id: copy.id, size: copy.data.length, blobs: copy.blobs}]} satisfies IndexFile, fresh.masterKey)
    const copyIndex = sha256(file)
    await repo.backend.put(indexKey(copyIndex), file)
    // the copy the index reads first is the one that goes missing
    const order = (await repo.backend.list('index/')).map((e) => e.key.slice('index/'.length))
    const names = async (id: string): Promise<string[]> => openJson<IndexFile>('index', await repo.backend.get(indexKey(id)), id, fresh.masterKey).packs.map((p) => p.id)
    let treeIndex = -1
    for (const [i, id] of order.entries()) if (id !== copyIndex && (await names(id)).includes(treePack)) treeIndex = i
    expect(treeIndex).toBeGreaterThanOrEqual(0)
    const firstIsCopy = order.indexOf(copyIndex) < treeIndex
    await repo.backend.delete(dataKey(firstIsCopy ? copy.id : treePack))
    const lock = await exclusive(repo)
    const r = await pruneRepository(await Repository.open(repo.backend, {loadIndex: false}), {lock})
    await lock.release()
    expect(r.packs.missing).toBe(1)
    expect(await readSnapshotFiles(await Repository.open(new LocalBackend(dir)), b)).toEqual(hashes(B))
  })

  it('the service prunes the local repository and brings the catalogue up to date', async () => {
    const {dir, repo, B, a, b} = await scenario()
    const catFile = path.join(work, `cat-${n++}.sqlite3`)
    // the catalogue learns the index as it was
    let ctx = await openContext({repo: dir, catalogue: catFile})
    ctx.close()
    await repo.backend.delete(snapshotKey(a))
    await age(dir, 2 * 3600_000)
    const dry = await prune({repo: dir, catalogue: catFile, dryRun: true})
    expect(dry.dryRun).toBe(true)
    const r = await prune({repo: dir, catalogue: catFile, graceMs: 0})
    expect(r.deleted.length).toBe(dry.deleted.length)
    // the catalogue holds no blob location in a deleted pack, and snapshots restore through it
    const cat = Catalogue.open(catFile)
    try {
      const gone = new Set(r.deleted.map((d) => d.key.split('/').pop()))
      for (const [, loc] of cat.blobLocations(repo.id)) expect(gone.has(loc.pack)).toBe(false)
    } finally {
      cat.close()
    }
    ctx = await openContext({repo: dir, catalogue: catFile})
    try {
      expect(await readSnapshotFiles(ctx.repo, b)).toEqual(hashes(B))
      // a new snapshot through the catalogue-seeded index re-stores what prune deleted
      const again = files('a', 20)
      const id = await writeSnapshot(ctx.repo, 'vol-a2', again)
      expect(await readSnapshotFiles(ctx.repo, id)).toEqual(hashes(again))
    } finally {
      ctx.close()
    }
    await verifyClean(dir)
  })
})

// ------------------------------------------------------------------------------ other processes

interface Child {
  proc: ChildProcessWithoutNullStreams
  /** resolves with the first stdout line matching */
  waitFor(re: RegExp): Promise<string>
  go(): void
  exit: Promise<number>
}

function startWriter(args: {repo: string; lock: boolean; name: string; files: Record<string, [string, number]>}): Child {
  const proc = spawn(process.execPath, ['--import', 'tsx', WRITER, JSON.stringify(args)], {stdio: ['pipe', 'pipe', 'pipe'], cwd: path.resolve(path.dirname(WRITER), '../../..')})
  const seen: string[] = []
  const waiters: {re: RegExp; resolve: (l: string) => void}[] = []
  let stderr = ''
  proc.stderr.on('data', (d) => (stderr += d))
  createInterface({input: proc.stdout}).on('line', (line) => {
    seen.push(line)
    for (const w of [...waiters]) {
      if (w.re.test(line)) {
        waiters.splice(waiters.indexOf(w), 1)
        w.resolve(line)
      }
    }
  })
  const exit = new Promise<number>((resolve) => proc.on('close', (code) => resolve(code ?? -1)))
  return {
    proc,
    waitFor: (re) =>
      new Promise<string>((resolve, reject) => {
        const hit = seen.find((l) => re.test(l))
        if (hit) return resolve(hit)
        waiters.push({re, resolve})
        void exit.then((code) => reject(new Error(`writer exited ${code} before ${re}: ${stderr}`)))
      }),
    go: () => proc.stdin.write('GO\n'),
    exit,
  }
}

/**
 * A forgotten, old A and a lockless writer that has loaded the index (A's packs still indexed)
 * and waits for GO to write a snapshot of two of A's files
 */
async function lateWriter(): Promise<{dir: string; repo: Repository; child: Child}> {
  const {dir, repo, a} = await scenario()
  await repo.backend.delete(snapshotKey(a))
  await age(dir, 2 * 3600_000)
  const child = startWriter({repo: dir, lock: false, name: 'vol-r', files: {a07: ['a7', 20 * KiB], a13: ['a13', 20 * KiB]}})
  await child.waitFor(/^PACKS$/)
  return {dir, repo, child}
}
const LATE_FILES = (): Record<string, Buffer> => ({a07: content('a7', 20 * KiB), a13: content('a13', 20 * KiB)})

describe('prune racing writers in other processes', () => {
  it('a writer holding the shared lock: prune cannot start under it, runs after it, and the snapshot keeps all its data (incl. data deduplicated against a forgotten snapshot)', async () => {
    const {dir, repo, a} = await scenario()
    await repo.backend.delete(snapshotKey(a))
    await age(dir, 2 * 3600_000)
    // the writer stores a02 again: deduplicated against a pack that only the forgotten A used
    const child = startWriter({repo: dir, lock: true, name: 'vol-w', files: {a02: ['a2', 20 * KiB], w00: ['w0', 20 * KiB], w01: ['w1', 20 * KiB]}})
    await child.waitFor(/^PACKS$/)
    // locked: prune refuses at once…
    await expect(prune({repo: dir, graceMs: 0})).rejects.toMatchObject({code: 'REPO_LOCKED', message: expect.stringMatching(/shared lock of snapshot/)})
    // …or waits for the writer to finish
    const t0 = Date.now()
    const waiting = prune({repo: dir, graceMs: 0, lockWaitMs: 30_000})
    await new Promise((r) => setTimeout(r, 800))
    child.go()
    const id = (await child.waitFor(/^SNAPSHOT /)).split(' ')[1]
    expect(await child.exit).toBe(0)
    const r = await waiting
    expect(Date.now() - t0).toBeGreaterThan(700)
    // prune did run: the forgotten snapshot's other data is gone
    expect(r.deleted.length).toBeGreaterThan(0)
    const fresh = await Repository.open(new LocalBackend(dir))
    expect(await readSnapshotFiles(fresh, id)).toEqual({a02: hashes({x: content('a2', 20 * KiB)}).x, w00: hashes({x: content('w0', 20 * KiB)}).x, w01: hashes({x: content('w1', 20 * KiB)}).x})
    await verifyClean(dir)
  }, 60_000)

  it('a writer without a lock whose packs are young survives a prune that runs while it is between its packs and its manifest', async () => {
    const {dir, repo, a, b, B} = await scenario()
    await repo.backend.delete(snapshotKey(a))
    await age(dir, 2 * 3600_000)
    const child = startWriter({repo: dir, lock: false, name: 'vol-u', files: {u00: ['u0', 20 * KiB], u01: ['u1', 20 * KiB], u02: ['u2', 60 * KiB]}})
    await child.waitFor(/^PACKS$/)
    const r = await prune({repo: dir}) // default grace: 1 h
    expect(r.deleted.length).toBeGreaterThan(0)
    expect(r.packs.young).toBeGreaterThan(0)
    child.go()
    const id = (await child.waitFor(/^SNAPSHOT /)).split(' ')[1]
    expect(await child.exit).toBe(0)
    const fresh = await Repository.open(new LocalBackend(dir))
    expect(Object.keys(await readSnapshotFiles(fresh, id)).sort()).toEqual(['u00', 'u01', 'u02'])
    expect(await readSnapshotFiles(fresh, b)).toEqual(hashes(B))
    await verifyClean(dir)
  }, 60_000)

  it('a snapshot that appears while prune is between planning and deleting rescues the doomed pack it deduplicated against', async () => {
    const {dir, repo, child} = await lateWriter()
    let id = ''
    const lock = await exclusive(repo)
    const r = await pruneRepository(await Repository.open(repo.backend, {loadIndex: false}), {
      lock,
      graceMs: 0,
      beforeCommit: async () => {
        child.go()
        id = (await child.waitFor(/^SNAPSHOT /)).split(' ')[1]
      },
    })
    await lock.release()
    expect(await child.exit).toBe(0)
    // the two packs of A it deduplicated against, and its own tree pack (indexed, unreferenced
    // and, with a grace period of 0, old enough at the start)
    expect(r.packs.rescued).toBe(3)
    const fresh = await Repository.open(new LocalBackend(dir))
    expect(await readSnapshotFiles(fresh, id)).toEqual(hashes(LATE_FILES()))
    await verifyClean(dir)
  }, 60_000)

  it('a snapshot that appears after the new index is written keeps its rescued packs indexed even if prune dies while deleting the old index files', async () => {
    const {dir, repo, child} = await lateWriter()
    let id = ''
    // prune "dies" right after it has deleted an old index file: its next listing fails
    const inner = repo.backend
    let indexDeleted = false
    const dying = wrapped(inner, {
      delete: async (k) => {
        await inner.delete(k)
        if (k.startsWith('index/')) indexDeleted = true
      },
      list: async (p) => {
        if (indexDeleted) throw new Error('killed')
        return inner.list(p)
      },
    })
    const lock = await exclusive(repo)
    await expect(
      pruneRepository(await Repository.open(dying, {loadIndex: false}), {
        lock,
        graceMs: 0,
        afterIndexWritten: async () => {
          child.go()
          id = (await child.waitFor(/^SNAPSHOT /)).split(' ')[1]
        },
      }),
    ).rejects.toThrow('killed')
    await lock.release()
    expect(await child.exit).toBe(0)
    expect(indexDeleted).toBe(true)
    const fresh = await Repository.open(new LocalBackend(dir))
    expect(await readSnapshotFiles(fresh, id)).toEqual(hashes(LATE_FILES()))
  }, 60_000)
})
