/**
 * push / pull through a real S3 server (s3rver) between real local repositories and real
 * catalogue files; no Docker. Snapshots are volume snapshots built with the Archiver.
 */
import {createHash, randomBytes, randomUUID} from 'node:crypto'
import {existsSync, promises as fsp} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {Archiver} from '../../src/archive/archiver.js'
import {restoreToDir} from '../../src/archive/restorer.js'
import {Backend} from '../../src/backend/backend.js'
import {LocalBackend} from '../../src/backend/local.js'
import {HolyshipError} from '../../src/errors.js'
import {silentProgress} from '../../src/progress.js'
import {SnapshotManifest} from '../../src/repo/format.js'
import {Repository} from '../../src/repo/repository.js'
import {listRemoteSnapshots, pull, push, remoteAdd, remoteList, remoteRemove} from '../../src/services/remote.js'
import {RepoLock} from '../../src/repo/lock.js'
import {LIST_INSTEAD_OF_HEAD} from '../../src/transfer/push.js'
import {openRemote} from '../../src/transfer/remotes.js'
import {S3Server, s3rverObjectPath, startS3Server, useS3rverEnv} from '../harness/s3.js'

let s3: S3Server
let tmp: string
let restoreEnv: () => void = () => {}

beforeAll(async () => {
  restoreEnv = useS3rverEnv()
  s3 = await startS3Server()
  tmp = await fsp.mkdtemp(join(tmpdir(), 'holyship-transfer-'))
}, 20_000)

afterAll(async () => {
  await s3?.stop()
  if (tmp) await fsp.rm(tmp, {recursive: true, force: true})
  restoreEnv()
})

// ------------------------------------------------------------------------------ fixtures

interface Side {
  dir: string
  catalogue: string
}

function side(name: string): Side {
  const base = join(tmp, `${name}-${randomUUID().slice(0, 8)}`)
  return {dir: join(base, 'repo'), catalogue: join(base, 'catalogue.sqlite3')}
}

async function newRepo(s: Side, packSize = 64 * 1024): Promise<Repository> {
  await fsp.mkdir(s.dir, {recursive: true})
  return Repository.init(new LocalBackend(s.dir), {packSize})
}

/** random (incompressible) files; 32 KiB each is below the chunker minimum: one chunk per file */
function files(n: number, prefix = 'f', size = 32 * 1024): Record<string, Buffer> {
  const out: Record<string, Buffer> = {}
  for (let i = 0; i < n; i++) out[`${i % 3 === 0 ? 'sub/deeper/' : i % 2 ? 'sub/' : ''}${prefix}${i}.bin`] = randomBytes(size)
  return out
}

async function volumeSnapshot(repo: Repository, volume: string, content: Record<string, Buffer>, time = new Date()): Promise<{id: string; tree: string}> {
  const a = new Archiver(repo)
  const mtime: [number, number] = [Math.floor(time.getTime() / 1000), 0]
  await a.add({path: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime})
  for (const [path, data] of Object.entries(content)) {
    await a.add({path, type: 'file', mode: 0o644, uid: 1000, gid: 1000, mtime, content: (async function* () { yield data })()})
  }
  const tree = await a.finish()
  const stats = {...a.stats}
  const manifest: SnapshotManifest = {
    version: 1,
    kind: 'volume',
    time: time.toISOString(),
    host: 'test-host',
    tags: [],
    consistency: 'stop',
    reader: 'api',
    mounts: [{type: 'volume', source: volume, destination: '', readOnly: false, tree, stats, ...(a.rootNode() ? {root: a.rootNode()} : {})}],
    stats: {bytes: stats.bytes, newBytes: stats.newBytes, files: stats.files, durationMs: 1},
  }
  const id = await repo.saveSnapshot(manifest)
  return {id, tree}
}

/** `count` snapshots of volumes PREFIX0, PREFIX1, … (one file each), an hour apart, oldest first; their ids */
async function oneFileSnapshots(repo: Repository, count: number, prefix: string): Promise<string[]> {
  const ids: string[] = []
  for (let i = 0; i < count; i++) ids.push((await volumeSnapshot(repo, `${prefix}${i}`, files(1, `${prefix}${i}`), new Date(Date.UTC(2025, 0, 1, i)))).id)
  return ids
}

async function keys(dir: string, sub: string): Promise<string[]> {
  const b = new LocalBackend(dir)
  return (await b.list(sub)).map((e) => e.key)
}

async function expectRestored(s: Side, tree: string, content: Record<string, Buffer>): Promise<void> {
  const repo = await Repository.open(new LocalBackend(s.dir)) // reads the local index files afresh
  const out = join(tmp, `out-${randomUUID().slice(0, 8)}`)
  const r = await restoreToDir(repo, tree, '', out)
  expect(r.files).toBe(Object.keys(content).length)
  for (const [path, data] of Object.entries(content)) {
    expect((await fsp.readFile(join(out, path))).equals(data), path).toBe(true)
  }
}

function remoteUrl(): string {
  return `s3://${s3.bucket}/${randomUUID()}`
}

function remoteKeys(url: string, sub: string): Promise<string[]> {
  const prefix = url.slice(`s3://${s3.bucket}/`.length)
  const root = join(s3.dir, s3.bucket, prefix, sub)
  const out: string[] = []
  const walk = async (d: string, rel: string): Promise<void> => {
    for (const e of await fsp.readdir(d, {withFileTypes: true}).catch(() => [])) {
      if (e.isDirectory()) await walk(join(d, e.name), `${rel}${e.name}/`)
      else if (e.name.endsWith('._S3rver_object')) out.push(`${sub}/${rel}${e.name.slice(0, -'._S3rver_object'.length)}`)
    }
  }
  return walk(root, '').then(() => out.sort())
}

/** counts (and optionally fails) puts of the raw S3 backend */
function recorder(failAfterDataPuts?: number): {wrap: (b: Backend) => Backend; puts: string[]} {
  const puts: string[] = []
  let dataPuts = 0
  const wrap = (b: Backend): Backend =>
    new Proxy(b, {
      get(target, prop, receiver) {
        if (prop === 'put') {
          return async (key: string, data: Buffer) => {
            if (key.startsWith('data/') && failAfterDataPuts !== undefined && ++dataPuts > failAfterDataPuts) {
              throw new Error('simulated crash')
            }
            await target.put(key, data)
            puts.push(key)
          }
        }
        const v = Reflect.get(target, prop, receiver)
        return typeof v === 'function' ? v.bind(target) : v
      },
    })
  return {wrap, puts}
}

const endpoint = (): string => s3.endpoint

// ------------------------------------------------------------------------------ tests

describe('push and pull through S3', () => {
  it('pushes a repository, pulls it into a fresh host, then sends only what changed', async () => {
    const A = side('A')
    const repoA = await newRepo(A)
    const v1 = files(12)
    const s1 = await volumeSnapshot(repoA, 'vol', v1, new Date('2025-01-01T00:00:00Z'))
    const url = remoteUrl()
    const packsA1 = (await keys(A.dir, 'data')).length
    expect(packsA1).toBeGreaterThanOrEqual(5)

    const p1 = await push({repo: A.dir, catalogue: A.catalogue, remote: url, endpoint: endpoint()})
    expect(p1).toMatchObject({snapshotsSent: [s1.id], packsSent: packsA1, packsSkipped: 0, createdRemote: true, sameRepository: true, indexFilesSent: 1})
    expect(p1.bytesSent).toBe((await new LocalBackend(A.dir).list('data')).reduce((n, e) => n + e.size, 0))
    expect(await remoteKeys(url, 'snapshots')).toEqual([`snapshots/${s1.id}`])

    // a fresh host: no repository, no catalogue; `latest:NAME` resolves on the remote
    const B = side('B')
    const listed = await pull({repo: B.dir, catalogue: B.catalogue, remote: url, endpoint: endpoint()})
    expect(listed.remoteSnapshots?.map((r) => r.id)).toEqual([s1.id])
    expect(existsSync(B.dir)).toBe(false) // the list alone creates nothing locally
    const q1 = await pull({repo: B.dir, catalogue: B.catalogue, remote: url, endpoint: endpoint(), snapshots: ['latest:vol']})
    expect(q1).toMatchObject({createdRepository: true, snapshots: [s1.id], snapshotsPulled: [s1.id], packsReceived: packsA1, packsSkipped: 0, sameRepository: true})
    expect(JSON.parse(await fsp.readFile(join(B.dir, 'config'), 'utf8')).id).toBe(repoA.id)
    await expectRestored(B, s1.tree, v1)

    // a small change: one file rewritten, one added
    const v2 = {...v1, 'f1.bin': randomBytes(32 * 1024), 'new.bin': randomBytes(40 * 1024)}
    const before = new Set(await keys(A.dir, 'data'))
    const s2 = await volumeSnapshot(repoA, 'vol', v2, new Date('2025-01-02T00:00:00Z'))
    const added = (await new LocalBackend(A.dir).list('data')).filter((e) => !before.has(e.key))
    expect(added.length).toBeGreaterThan(0)
    const p2 = await push({repo: A.dir, catalogue: A.catalogue, remote: url, endpoint: endpoint()})
    expect(p2.snapshotsSent).toEqual([s2.id])
    expect(p2.snapshotsSkipped).toEqual([s1.id])
    expect(p2.createdRemote).toBe(false)
    expect(p2.packsSent).toBe(added.length)
    expect(p2.bytesSent).toBe(added.reduce((n, e) => n + e.size, 0))
    expect(p2.packsSkipped).toBeGreaterThan(0)

    // pulling it fetches only the new packs too
    const q2 = await pull({repo: B.dir, catalogue: B.catalogue, remote: url, endpoint: endpoint(), snapshots: ['latest']})
    expect(q2).toMatchObject({createdRepository: false, snapshotsPulled: [s2.id], packsReceived: added.length})
    expect(q2.bytesReceived).toBe(p2.bytesSent)
    await expectRestored(B, s2.tree, v2)

    // the remote already has everything: nothing travels
    const p3 = await push({repo: A.dir, catalogue: A.catalogue, remote: url, endpoint: endpoint(), snapshots: [s2.id.slice(0, 8)]})
    expect(p3).toMatchObject({snapshotsSent: [], snapshotsSkipped: [s2.id], packsSent: 0, bytesSent: 0, indexFilesSent: 0})
    const q3 = await pull({repo: B.dir, catalogue: B.catalogue, remote: url, endpoint: endpoint(), snapshots: [s1.id]})
    expect(q3).toMatchObject({snapshotsPulled: [], snapshotsSkipped: [s1.id], packsReceived: 0})

    // `list --remote` sees both
    const rows = await listRemoteSnapshots({catalogue: B.catalogue, remote: url, endpoint: endpoint(), volume: 'vol'})
    expect(rows.map((r) => r.id)).toEqual([s1.id, s2.id])
  })

  it('a damaged manifest on the remote (another size than ours) is not taken for the snapshot: the next push sends it again', async () => {
    const D = side('D')
    const repoD = await newRepo(D)
    const snaps = await oneFileSnapshots(repoD, LIST_INSTEAD_OF_HEAD + 1, 'm')
    const url = remoteUrl()
    await push({repo: D.dir, catalogue: D.catalogue, remote: url, endpoint: endpoint()})
    const manifestFile = (id: string): string => s3rverObjectPath(s3, `${url.slice(`s3://${s3.bucket}/`.length)}/snapshots/${id}`)
    const remoteOk = async (id: string): Promise<boolean> => createHash('sha256').update(await fsp.readFile(manifestFile(id))).digest('hex') === id
    // cut short, as a killed or mangled upload leaves it
    for (const id of [snaps[0], snaps[1]]) {
      const raw = await fsp.readFile(manifestFile(id))
      await fsp.writeFile(manifestFile(id), raw.subarray(0, raw.length - 7))
      expect(await remoteOk(id)).toBe(false)
    }
    // a few named (one HEAD each), then every snapshot (one listing)
    const few = await push({repo: D.dir, catalogue: D.catalogue, remote: url, endpoint: endpoint(), snapshots: [snaps[0], snaps[2]]})
    expect(few).toMatchObject({snapshotsSent: [snaps[0]], snapshotsSkipped: [snaps[2]], packsSent: 0})
    expect(await remoteOk(snaps[0])).toBe(true)
    const all = await push({repo: D.dir, catalogue: D.catalogue, remote: url, endpoint: endpoint()})
    expect(all).toMatchObject({snapshotsSent: [snaps[1]], packsSent: 0})
    expect(await remoteOk(snaps[1])).toBe(true)
  })

  it('looks up a few named snapshots with one HEAD each, not a listing of every snapshot on the remote', async () => {
    const A = side('A')
    const repoA = await newRepo(A)
    const snaps = await oneFileSnapshots(repoA, LIST_INSTEAD_OF_HEAD + 2, 'v')
    const url = remoteUrl()
    await push({repo: A.dir, catalogue: A.catalogue, remote: url, endpoint: endpoint(), snapshots: snaps.slice(0, 2)})
    const ops = (): {calls: string[]; wrap: (b: Backend) => Backend} => {
      const calls: string[] = []
      const wrap = (b: Backend): Backend =>
        new Proxy(b, {
          get(target, prop, receiver) {
            const v = Reflect.get(target, prop, receiver)
            if (typeof v !== 'function') return v
            return (...a: unknown[]) => {
              calls.push(`${String(prop)} ${String(a[0])}`)
              return v.apply(target, a)
            }
          },
        })
      return {calls, wrap}
    }
    // nothing to send: a config read and a HEAD per snapshot, nothing listed, nothing written
    const nothing = ops()
    const r1 = await push({repo: A.dir, catalogue: A.catalogue, remote: url, endpoint: endpoint(), snapshots: [snaps[1], 'latest:v0'], wrapBackend: nothing.wrap})
    expect(r1).toMatchObject({snapshotsSent: [], snapshotsSkipped: [snaps[1], snaps[0]], packsSent: 0, indexFilesSent: 0})
    expect(nothing.calls.sort()).toEqual(['get config', `stat snapshots/${snaps[0]}`, `stat snapshots/${snaps[1]}`].sort())
    // one the remote lacks among them is sent
    const some = ops()
    const r2 = await push({repo: A.dir, catalogue: A.catalogue, remote: url, endpoint: endpoint(), snapshots: [snaps[0], snaps[2]], wrapBackend: some.wrap})
    expect(r2).toMatchObject({snapshotsSent: [snaps[2]], snapshotsSkipped: [snaps[0]]})
    expect(r2.packsSent).toBeGreaterThan(0)
    expect(some.calls.filter((c) => c.startsWith('list snapshots'))).toEqual([])
    // many: one listing instead of a HEAD each
    const many = ops()
    const r3 = await push({repo: A.dir, catalogue: A.catalogue, remote: url, endpoint: endpoint(), snapshots: snaps, wrapBackend: many.wrap})
    expect(r3.snapshotsSent).toEqual(snaps.slice(3))
    expect(many.calls.filter((c) => c.startsWith('list snapshots'))).toHaveLength(1)
    expect(many.calls.filter((c) => c.startsWith('stat snapshots'))).toEqual([])
    const again = await push({repo: A.dir, catalogue: A.catalogue, remote: url, endpoint: endpoint()})
    expect(again).toMatchObject({snapshotsSent: [], packsSent: 0})
    expect(again.snapshotsSkipped.sort()).toEqual([...snaps].sort())
  }, 60_000)

  it('resumes an interrupted push without sending completed packs again; the snapshot appears last', async () => {
    const C = side('C')
    const repoC = await newRepo(C)
    const content = files(14)
    const s = await volumeSnapshot(repoC, 'data', content)
    const total = (await keys(C.dir, 'data')).length
    const url = remoteUrl()

    const crash = recorder(3)
    const err = await push({repo: C.dir, catalogue: C.catalogue, remote: url, endpoint: endpoint(), parallel: 2, wrapBackend: crash.wrap}).catch((e) => e)
    expect(err).toBeInstanceOf(Error)
    expect((err as Error).message).toMatch(/simulated crash/)
    const uploaded = crash.puts.filter((k) => k.startsWith('data/'))
    expect(uploaded.length).toBe(3)
    expect(await remoteKeys(url, 'snapshots')).toEqual([])
    expect(await remoteKeys(url, 'index')).toEqual([])

    const rec = recorder()
    const r = await push({repo: C.dir, catalogue: C.catalogue, remote: url, endpoint: endpoint(), wrapBackend: rec.wrap})
    expect(r.snapshotsSent).toEqual([s.id])
    expect(r.packsSent).toBe(total - 3)
    expect(r.packsSkipped).toBe(3)
    for (const k of uploaded) expect(rec.puts).not.toContain(k)
    // packs, then index files, then the manifest
    const lastData = Math.max(...rec.puts.map((k, i) => (k.startsWith('data/') ? i : -1)))
    const firstIndex = rec.puts.findIndex((k) => k.startsWith('index/'))
    const snap = rec.puts.indexOf(`snapshots/${s.id}`)
    expect(firstIndex).toBeGreaterThan(lastData)
    expect(snap).toBe(rec.puts.length - 1)
    // the index files name every pack, including the three the first attempt left
    expect((await remoteKeys(url, 'data')).length).toBe(total)

    const D = side('D')
    const q = await pull({repo: D.dir, catalogue: D.catalogue, remote: url, endpoint: endpoint(), snapshots: [s.id]})
    expect(q.packsReceived).toBe(total)
    await expectRestored(D, s.tree, content)
  })

  it('reports a damaged pack on the remote by key and stores nothing of it', async () => {
    const E = side('E')
    const repoE = await newRepo(E, 16 * 1024 * 1024) // one pack
    const content = files(3)
    const s = await volumeSnapshot(repoE, 'db', content)
    const url = remoteUrl()
    await push({repo: E.dir, catalogue: E.catalogue, remote: url, endpoint: endpoint()})
    const [packKey] = await remoteKeys(url, 'data')
    const file = s3rverObjectPath(s3, `${url.slice(`s3://${s3.bucket}/`.length)}/${packKey}`)
    const raw = await fsp.readFile(file)
    raw[100] ^= 0xff
    await fsp.writeFile(file, raw)

    const F = side('F')
    const err = await pull({repo: F.dir, catalogue: F.catalogue, remote: url, endpoint: endpoint(), snapshots: [s.id]}).catch((e) => e)
    expect(err).toBeInstanceOf(HolyshipError)
    expect((err as HolyshipError).code).toBe('REMOTE_CORRUPT')
    expect((err as HolyshipError).message).toContain(packKey)
    expect(await keys(F.dir, 'data')).toEqual([])
    expect(await keys(F.dir, 'index')).toEqual([])
    expect(await keys(F.dir, 'snapshots')).toEqual([])
  })

  it('lets two hosts push to the same remote at the same time', async () => {
    const G = side('G')
    const H = side('H')
    const [repoG, repoH] = await Promise.all([newRepo(G), newRepo(H)])
    const cg = files(8, 'g')
    const ch = files(8, 'h')
    const sg = await volumeSnapshot(repoG, 'g-vol', cg)
    const sh = await volumeSnapshot(repoH, 'h-vol', ch)
    const url = remoteUrl()
    const [pg, ph] = await Promise.all([
      push({repo: G.dir, catalogue: G.catalogue, remote: url, endpoint: endpoint()}),
      push({repo: H.dir, catalogue: H.catalogue, remote: url, endpoint: endpoint()}),
    ])
    expect(pg.snapshotsSent).toEqual([sg.id])
    expect(ph.snapshotsSent).toEqual([sh.id])
    expect(await remoteKeys(url, 'snapshots')).toEqual([`snapshots/${sg.id}`, `snapshots/${sh.id}`].sort())

    // one config won; the other repository's pushes still work, and say so
    const winner = JSON.parse((await fsp.readFile(s3rverObjectPath(s3, `${url.slice(`s3://${s3.bucket}/`.length)}/config`))).toString()).id
    expect([repoG.id, repoH.id]).toContain(winner)
    const loser = winner === repoG.id ? H : G
    await volumeSnapshot(winner === repoG.id ? repoH : repoG, 'late', files(1, 'l'))
    const again = await push({repo: loser.dir, catalogue: loser.catalogue, remote: url, endpoint: endpoint()})
    expect(again).toMatchObject({sameRepository: false, remoteRepository: winner, packsSent: 1})

    const I = side('I')
    const q = await pull({repo: I.dir, catalogue: I.catalogue, remote: url, endpoint: endpoint(), snapshots: ['latest:g-vol', 'latest:h-vol']})
    expect(q.snapshotsPulled.sort()).toEqual([sg.id, sh.id].sort())
    expect(q.repository).toBe(winner)
    await expectRestored(I, sg.tree, cg)
    await expectRestored(I, sh.tree, ch)
  })

  it('sends under a shared lock of the remote: a prune of it (exclusive) holds off a push of new data, and no lock is left behind', async () => {
    const E = side('E')
    const repoE = await newRepo(E)
    const first = await volumeSnapshot(repoE, 'data', files(3, 'a'))
    const url = remoteUrl()
    await push({repo: E.dir, catalogue: E.catalogue, remote: url, endpoint: endpoint()})
    expect(await remoteKeys(url, 'locks')).toEqual([])
    const packsThere = await remoteKeys(url, 'data')
    const second = await volumeSnapshot(repoE, 'data', files(3, 'b'), new Date(Date.now() + 1000))
    const remote = await openRemote({remote: url, endpoint: endpoint()})
    const prune = await RepoLock.acquire(remote.backend, {exclusive: true, purpose: 'prune'})
    try {
      const err = await push({repo: E.dir, catalogue: E.catalogue, remote: url, endpoint: endpoint()}).catch((e: unknown) => e)
      expect(err).toMatchObject({code: 'REPO_LOCKED'})
      expect(await remoteKeys(url, 'snapshots')).toEqual([`snapshots/${first.id}`])
      expect(await remoteKeys(url, 'data')).toEqual(packsThere)
      // what the remote has is still answered (nothing is read from its index, nothing written)
      const had = await push({repo: E.dir, catalogue: E.catalogue, remote: url, endpoint: endpoint(), snapshots: [first.id]})
      expect(had.snapshotsSkipped).toEqual([first.id])
    } finally {
      await prune.release()
      await remote.close()
    }
    const r = await push({repo: E.dir, catalogue: E.catalogue, remote: url, endpoint: endpoint()})
    expect(r.snapshotsSent).toEqual([second.id])
    expect(await remoteKeys(url, 'locks')).toEqual([])
  })

  it('pulls under a shared lock of the remote: a prune there (exclusive) holds the pull off; the snapshot list alone needs no lock; no lock is left', async () => {
    const P = side('P')
    const repoP = await newRepo(P)
    const content = files(3, 'q')
    const s = await volumeSnapshot(repoP, 'data', content)
    const url = remoteUrl()
    await push({repo: P.dir, catalogue: P.catalogue, remote: url, endpoint: endpoint()})
    const remote = await openRemote({remote: url, endpoint: endpoint()})
    const prune = await RepoLock.acquire(remote.backend, {exclusive: true, purpose: 'prune'})
    const Q = side('Q')
    let pulled = false
    const p = pull({repo: Q.dir, catalogue: Q.catalogue, remote: url, endpoint: endpoint(), snapshots: [s.id]}).then((r) => {
      pulled = true
      return r
    })
    try {
      await new Promise((r) => setTimeout(r, 1500))
      expect(pulled).toBe(false)
      expect(existsSync(Q.dir)).toBe(false)
      const list = await pull({repo: Q.dir, catalogue: Q.catalogue, remote: url, endpoint: endpoint()})
      expect(list.remoteSnapshots?.map((r) => r.id)).toEqual([s.id])
    } finally {
      await prune.release()
      await remote.close()
    }
    expect((await p).snapshotsPulled).toEqual([s.id])
    await expectRestored(Q, s.tree, content)
    expect(await remoteKeys(url, 'locks')).toEqual([])

    // read-only credentials (no lock can be written): pulled without it, and told so
    const R = side('R')
    const notes: string[] = []
    const readOnly = (b: Backend): Backend =>
      new Proxy(b, {
        get(target, prop, receiver) {
          if (prop === 'put') return async (k: string) => Promise.reject(new HolyshipError('REMOTE_DENIED', `access denied to ${k}`))
          return Reflect.get(target, prop, receiver)
        },
      })
    const r = await pull({repo: R.dir, catalogue: R.catalogue, remote: url, endpoint: endpoint(), snapshots: [s.id], wrapBackend: readOnly, progress: {...silentProgress, note: (m) => notes.push(m)}})
    expect(r.snapshotsPulled).toEqual([s.id])
    expect(notes).toEqual([expect.stringMatching(/no lock can be written to .*reading without it/)])
  })

  it('reads the local repository under a shared lock: a local prune (exclusive) holds the push off until it is done, and no local lock is left', async () => {
    const F = side('F')
    const repoF = await newRepo(F)
    const s = await volumeSnapshot(repoF, 'data', files(3, 'p'))
    const url = remoteUrl()
    const prune = await RepoLock.acquire(repoF.backend, {exclusive: true, purpose: 'prune'})
    let pushed = false
    const p = push({repo: F.dir, catalogue: F.catalogue, remote: url, endpoint: endpoint()}).then((r) => {
      pushed = true
      return r
    })
    await new Promise((r) => setTimeout(r, 1500))
    expect(pushed).toBe(false)
    expect(await remoteKeys(url, 'snapshots')).toEqual([])
    await prune.release()
    expect((await p).snapshotsSent).toEqual([s.id])
    expect(await keys(F.dir, 'locks')).toEqual([])
  })
})

describe('retries', () => {
  it('retries throttling and 5xx with backoff, and fails clearly after the last try', async () => {
    const K = side('K')
    const repo = await newRepo(K)
    const content = files(6)
    const s = await volumeSnapshot(repo, 'flaky', content)
    const url = remoteUrl()
    const failures = new Map<string, number>()
    const flaky = (always: boolean) => (b: Backend): Backend =>
      new Proxy(b, {
        get(target, prop, receiver) {
          if (prop === 'put') {
            return async (key: string, data: Buffer) => {
              const n = failures.get(key) ?? 0
              if (key.startsWith('data/') && (always || n === 0)) {
                failures.set(key, n + 1)
                throw Object.assign(new Error('Service Unavailable'), {name: n % 2 ? 'SlowDown' : 'ServiceUnavailable', $metadata: {httpStatusCode: 503}})
              }
              return target.put(key, data)
            }
          }
          const v = Reflect.get(target, prop, receiver)
          return typeof v === 'function' ? v.bind(target) : v
        },
      })
    const err = await push({repo: K.dir, catalogue: K.catalogue, remote: url, endpoint: endpoint(), attempts: 3, retryBaseDelayMs: 1, wrapBackend: flaky(true)}).catch((e) => e)
    expect(err).toMatchObject({code: 'REMOTE_UNREACHABLE'})
    expect((err as Error).message).toMatch(/put data\/.* failed after 3 attempts/)
    expect(await remoteKeys(url, 'snapshots')).toEqual([])

    failures.clear()
    const r = await push({repo: K.dir, catalogue: K.catalogue, remote: url, endpoint: endpoint(), retryBaseDelayMs: 1, wrapBackend: flaky(false)})
    expect(r.snapshotsSent).toEqual([s.id])
    expect([...failures.values()].every((n) => n === 1)).toBe(true)
    expect(failures.size).toBe(r.packsSent)
  })
})

describe('remotes', () => {
  it('adds, lists, resolves and removes named remotes; never accepts credentials in URLs', async () => {
    const remotesFile = join(tmp, `remotes-${randomUUID()}.json`)
    const url = remoteUrl()
    expect(await remoteAdd({name: 'backup', url, endpoint: endpoint(), remotesFile})).toMatchObject({name: 'backup', url, endpoint: endpoint()})
    await expect(remoteAdd({name: 'backup', url, remotesFile})).rejects.toMatchObject({code: 'REMOTE_EXISTS'})
    await expect(remoteAdd({name: 'x', url: 'http://bucket/p', remotesFile})).rejects.toMatchObject({code: 'USAGE'})
    await expect(remoteAdd({name: 'x', url: 's3://key:secret@bucket/p', remotesFile})).rejects.toMatchObject({code: 'USAGE'})
    await expect(remoteAdd({name: 'x', url, endpoint: 'http://key:secret@127.0.0.1:9000', remotesFile})).rejects.toMatchObject({code: 'USAGE'})
    expect((await remoteList({remotesFile})).map((r) => r.name)).toEqual(['backup'])

    // a push by name uses the stored endpoint
    const J = side('J')
    const repo = await newRepo(J)
    const s = await volumeSnapshot(repo, 'v', files(2))
    const r = await push({repo: J.dir, catalogue: J.catalogue, remote: 'backup', remotesFile})
    expect(r).toMatchObject({remoteName: 'backup', remote: url, snapshotsSent: [s.id]})
    expect(await fsp.readFile(remotesFile, 'utf8')).not.toMatch(/S3RVER/)

    await expect(push({repo: J.dir, catalogue: J.catalogue, remote: 'nope', remotesFile})).rejects.toMatchObject({code: 'REMOTE_NOT_FOUND'})
    await expect(pull({catalogue: J.catalogue, remote: 's3://Bad_Bucket', remotesFile})).rejects.toMatchObject({code: 'USAGE'})
    await expect(pull({catalogue: J.catalogue, remote: `s3://no-such-bucket-${randomUUID().slice(0, 8)}/x`, endpoint: endpoint(), attempts: 1})).rejects.toMatchObject({code: 'REMOTE_NOT_FOUND'})
    expect(await remoteRemove({name: 'backup', remotesFile})).toMatchObject({name: 'backup'})
    await expect(remoteRemove({name: 'backup', remotesFile})).rejects.toMatchObject({code: 'REMOTE_NOT_FOUND'})
    expect(await remoteList({remotesFile})).toEqual([])
  })
})
