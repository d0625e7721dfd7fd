/**
 * S3 faults: push and pull through a fault-injecting proxy in front of s3rver (dropped
 * connections before and after the server acted, 500 and 503 answers, slow answers, bodies cut
 * short, bodies cut short with a lying Content-Length). Transfers retry and finish with every
 * byte intact, or fail clearly (REMOTE_UNREACHABLE / REMOTE_CORRUPT naming the object) after
 * the last try; a snapshot is never visible, remotely or locally, before all of its data is.
 * Damaged objects on the remote (a flipped byte in a pack, an index file, a manifest) are
 * named by key and never stored locally.
 */
import {randomBytes, randomUUID} from 'node:crypto'
import {promises as fsp} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {Readable} from 'node:stream'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {Archiver} from '../../src/archive/archiver.js'
import {restoreToDir} from '../../src/archive/restorer.js'
import {LocalBackend} from '../../src/backend/local.js'
import {S3Backend} from '../../src/backend/s3.js'
import {HolyshipError} from '../../src/errors.js'
import {SnapshotManifest} from '../../src/repo/format.js'
import {Repository} from '../../src/repo/repository.js'
import {pull, push} from '../../src/services/remote.js'
import {verifyRepository} from '../../src/services/verify.js'
import {FaultProxy, RECOVERABLE, rotatingFaults, startFaultProxy} from '../harness/fault-proxy.js'
import {S3Server, s3rverObjectPath, startS3Server, useS3rverEnv} from '../harness/s3.js'

let s3: S3Server
let proxy: FaultProxy
let tmp: string
let restoreEnv: () => void = () => {}

beforeAll(async () => {
  restoreEnv = useS3rverEnv()
  s3 = await startS3Server()
  proxy = await startFaultProxy(s3.endpoint)
  tmp = await fsp.mkdtemp(join(tmpdir(), 'holyship-s3faults-'))
}, 30_000)

afterAll(async () => {
  await proxy?.stop()
  await s3?.stop()
  if (tmp) await fsp.rm(tmp, {recursive: true, force: true})
  restoreEnv()
})

interface Side {
  dir: string
  catalogue: string
}
const side = (name: string): Side => {
  const base = join(tmp, `${name}-${randomUUID().slice(0, 8)}`)
  return {dir: join(base, 'repo'), catalogue: join(base, 'catalogue.sqlite3')}
}

async function volumeSnapshot(repo: Repository, volume: string, content: Record<string, Buffer>, time: string): Promise<{id: string; tree: string}> {
  const a = new Archiver(repo)
  await a.add({path: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [1_700_000_000, 0]})
  for (const [p, data] of Object.entries(content)) {
    await a.add({path: p, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: [1_700_000_000, 0], content: Readable.from([data])})
  }
  const tree = await a.finish()
  const m: SnapshotManifest = {
    version: 1,
    kind: 'volume',
    time,
    host: 'test',
    tags: [],
    consistency: 'live',
    reader: 'api',
    mounts: [{type: 'volume', source: volume, destination: '', readOnly: false, tree, stats: a.stats}],
    stats: {bytes: a.stats.bytes, newBytes: a.stats.newBytes, files: a.stats.files, durationMs: 1},
  }
  return {id: await repo.saveSnapshot(m), tree}
}

const files = (n: number): Record<string, Buffer> => Object.fromEntries(Array.from({length: n}, (_, i) => [`${i % 2 ? 'sub/' : ''}f${i}.bin`, randomBytes(24 * 1024)]))

/** a repository that reads the remote directly (no proxy), to check what is really there */
async function remoteRepo(url: string): Promise<{repo: Repository; close: () => Promise<void>}> {
  const prefix = url.slice(`s3://${s3.bucket}/`.length)
  const b = new S3Backend({bucket: s3.bucket, prefix, endpoint: s3.endpoint, region: 'us-east-1'})
  return {repo: await Repository.open(b), close: () => b.close()}
}

async function remoteSnapshots(url: string): Promise<string[]> {
  const prefix = url.slice(`s3://${s3.bucket}/`.length)
  const b = new S3Backend({bucket: s3.bucket, prefix, endpoint: s3.endpoint, region: 'us-east-1'})
  try {
    return (await b.list('snapshots/')).map((e) => e.key).sort()
  } finally {
    await b.close()
  }
}

const localSnapshots = async (s: Side): Promise<string[]> =>
  (await new LocalBackend(s.dir).list('snapshots/').catch(() => [])).map((e) => e.key).sort()

async function expectRestored(s: Side, tree: string, content: Record<string, Buffer>): Promise<void> {
  const repo = await Repository.open(new LocalBackend(s.dir))
  const out = join(tmp, `out-${randomUUID().slice(0, 8)}`)
  await restoreToDir(repo, tree, '', out)
  for (const [p, data] of Object.entries(content)) expect((await fsp.readFile(join(out, p))).equals(data), p).toBe(true)
}

// fast backoff: the faults are many, the test is short; 8 tries per request (each also tried
// up to 3 times by the SDK, while its retry quota lasts)
const FAST = {retryBaseDelayMs: 5, parallel: 4, attempts: 8}

describe('push and pull through a faulty network', () => {
  let A: Side
  let B: Side
  const url = `s3://holyship-test/faults-${randomUUID().slice(0, 8)}`
  const v1 = files(24)
  const v2 = files(16)
  let s1: {id: string; tree: string}
  let s2: {id: string; tree: string}

  beforeAll(async () => {
    A = side('A')
    B = side('B')
    await fsp.mkdir(A.dir, {recursive: true})
    const repo = await Repository.init(new LocalBackend(A.dir), {packSize: 48 * 1024})
    s1 = await volumeSnapshot(repo, 'vol1', v1, '2025-01-01T00:00:00.000Z')
    s2 = await volumeSnapshot(repo, 'vol2', v2, '2025-01-02T00:00:00.000Z')
  })

  it('push retries through every kind of fault and the remote ends up whole', async () => {
    // every third request of each method fails, each kind in turn
    proxy.setPlan(rotatingFaults(3))
    const before = proxy.log.length
    const r = await push({repo: A.dir, catalogue: A.catalogue, remote: url, endpoint: proxy.endpoint, ...FAST})
    const seen = proxy.log.slice(before)
    expect(r.snapshotsSent.sort()).toEqual([s1.id, s2.id].sort())
    // every kind of fault was met, on uploads too
    expect(new Set(seen.map((l) => l.fault))).toEqual(new Set(['pass', ...RECOVERABLE]))
    expect(new Set(seen.filter((l) => l.method === 'PUT').map((l) => l.fault))).toEqual(new Set(['pass', ...RECOVERABLE]))
    proxy.setPlan(() => 'pass')
    const {repo, close} = await remoteRepo(url)
    try {
      const v = await verifyRepository(repo, {readData: true})
      expect(v.problems).toEqual([])
      expect(v.snapshots).toBe(2)
    } finally {
      await close()
    }
  }, 120_000)

  it('pull retries through every kind of fault, lying short bodies included, and restores byte for byte', async () => {
    // every third request of each method fails, each kind in turn; and the first download of
    // every pack is short with a Content-Length that agrees (only the pack's hash tells: it is
    // fetched again)
    const rotate = rotatingFaults(3)
    const lied = new Set<string>()
    proxy.setPlan((q) => {
      if (q.method === 'GET' && q.path.includes('/data/') && !lied.has(q.path)) {
        lied.add(q.path)
        return 'truncate-lie'
      }
      return rotate(q)
    })
    const before = proxy.log.length
    const r = await pull({repo: B.dir, catalogue: B.catalogue, remote: url, endpoint: proxy.endpoint, snapshots: ['latest:vol1', 'latest:vol2'], ...FAST})
    proxy.setPlan(() => 'pass')
    const seen = proxy.log.slice(before)
    expect(new Set(seen.filter((l) => l.method === 'GET').map((l) => l.fault))).toEqual(new Set(['pass', 'truncate-lie', ...RECOVERABLE]))
    expect(lied.size).toBeGreaterThan(5)
    expect(r.snapshotsPulled.sort()).toEqual([s1.id, s2.id].sort())
    expect((await verifyRepository(await Repository.open(new LocalBackend(B.dir)), {readData: true})).problems).toEqual([])
    await expectRestored(B, s1.tree, v1)
    await expectRestored(B, s2.tree, v2)
  }, 120_000)

  it('a push that keeps failing ends with REMOTE_UNREACHABLE, no snapshot is visible, and the next push finishes it', async () => {
    const repo = await Repository.open(new LocalBackend(A.dir))
    const s3id = await volumeSnapshot(repo, 'vol3', files(8), '2025-01-03T00:00:00.000Z')
    const remoteBefore = await remoteSnapshots(url)
    // every upload of a pack fails (the uploads before it, HEADs and listings, work)
    let packPuts = 0
    proxy.setPlan((q) => (q.method === 'PUT' && q.path.includes('/data/') && ++packPuts > 1 ? 'status503' : 'pass'))
    const err = await push({repo: A.dir, catalogue: A.catalogue, remote: url, endpoint: proxy.endpoint, ...FAST, attempts: 3}).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(err).toBeInstanceOf(HolyshipError)
    expect((err as HolyshipError).code).toBe('REMOTE_UNREACHABLE')
    expect((err as Error).message).toMatch(/put data\/.* failed after 3 attempts/)
    expect((err as Error).message.split('\n')).toHaveLength(1)
    expect(await remoteSnapshots(url)).toEqual(remoteBefore)
    // the same with the manifest upload itself failing: data and index are there, the snapshot is not
    proxy.setPlan((q) => (q.method === 'PUT' && q.path.includes('/snapshots/') ? 'drop' : 'pass'))
    await expect(push({repo: A.dir, catalogue: A.catalogue, remote: url, endpoint: proxy.endpoint, ...FAST, attempts: 2})).rejects.toMatchObject({code: 'REMOTE_UNREACHABLE'})
    expect(await remoteSnapshots(url)).toEqual(remoteBefore)
    proxy.setPlan(() => 'pass')
    const ok = await push({repo: A.dir, catalogue: A.catalogue, remote: url, endpoint: proxy.endpoint, ...FAST})
    expect(ok.snapshotsSent).toEqual([s3id.id])
    expect(await remoteSnapshots(url)).toEqual([...remoteBefore, `snapshots/${s3id.id}`].sort())
    const {repo: rr, close} = await remoteRepo(url)
    try {
      expect((await verifyRepository(rr, {readData: true})).problems).toEqual([])
    } finally {
      await close()
    }
  }, 120_000)

  it('a pull that keeps failing ends with REMOTE_UNREACHABLE or REMOTE_CORRUPT, nothing is visible locally, and the next pull finishes it', async () => {
    const C = side('C')
    // connections cut on every pack download
    proxy.setPlan((q) => (q.method === 'GET' && q.path.includes('/data/') ? 'truncate' : 'pass'))
    await expect(pull({repo: C.dir, catalogue: C.catalogue, remote: url, endpoint: proxy.endpoint, snapshots: ['latest:vol1'], ...FAST, attempts: 2})).rejects.toMatchObject({
      code: 'REMOTE_UNREACHABLE',
    })
    expect(await localSnapshots(C)).toEqual([])
    // every pack download short, with a Content-Length that agrees: only the hash can tell
    proxy.setPlan((q) => (q.method === 'GET' && q.path.includes('/data/') ? 'truncate-lie' : 'pass'))
    const err = await pull({repo: C.dir, catalogue: C.catalogue, remote: url, endpoint: proxy.endpoint, snapshots: ['latest:vol1'], ...FAST, attempts: 2}).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(err).toMatchObject({code: 'REMOTE_CORRUPT'})
    expect((err as Error).message).toMatch(/data\/[0-9a-f]{2}\/[0-9a-f]{64} is damaged/)
    expect(await localSnapshots(C)).toEqual([])
    expect((await new LocalBackend(C.dir).list('data/')).length).toBe(0) // nothing unverified was stored
    expect((await verifyRepository(await Repository.open(new LocalBackend(C.dir)), {readData: true})).problems).toEqual([])
    proxy.setPlan(() => 'pass')
    const ok = await pull({repo: C.dir, catalogue: C.catalogue, remote: url, endpoint: proxy.endpoint, snapshots: ['latest:vol1'], ...FAST})
    expect(ok.snapshotsPulled).toEqual([s1.id])
    await expectRestored(C, s1.tree, v1)
  }, 120_000)

  it('damaged objects on the remote are named by key and never stored locally', async () => {
    const {repo, close} = await remoteRepo(url)
    const m = await repo.loadSnapshot(s2.id)
    const packKey = `data/${repo.blobLocation(m.mounts[0].tree)!.pack.slice(0, 2)}/${repo.blobLocation(m.mounts[0].tree)!.pack}`
    await close()
    const prefix = url.slice(`s3://${s3.bucket}/`.length)
    const flip = async (key: string): Promise<() => Promise<void>> => {
      const file = s3rverObjectPath(s3, `${prefix}/${key}`)
      const orig = await fsp.readFile(file)
      const bad = Buffer.from(orig)
      bad[Math.floor(bad.length / 2)] ^= 0xff
      await fsp.writeFile(file, bad)
      return () => fsp.writeFile(file, orig)
    }
    // a pack
    let undo = await flip(packKey)
    try {
      const {repo: rr, close: c2} = await remoteRepo(url)
      const v = await verifyRepository(rr, {readData: true})
      await c2()
      expect(v.problems.map((p) => p.object)).toEqual([packKey])
      expect(v.problems[0].snapshots).toEqual([s2.id])
      const D = side('D')
      await expect(pull({repo: D.dir, catalogue: D.catalogue, remote: url, endpoint: s3.endpoint, snapshots: [s2.id], ...FAST})).rejects.toMatchObject({
        code: 'REMOTE_CORRUPT',
        message: expect.stringContaining(packKey),
      })
      expect(await localSnapshots(D)).toEqual([])
      expect((await new LocalBackend(D.dir).stat(packKey))).toBeUndefined()
    } finally {
      await undo()
    }
    // an index file, then a manifest, seen by a host that has not cached them yet
    const {repo: rr} = await remoteRepo(url)
    const indexKey = `index/${rr.indexFiles()[0]}`
    for (const key of [indexKey, `snapshots/${s2.id}`]) {
      undo = await flip(key)
      try {
        const E = side('E')
        await expect(pull({repo: E.dir, catalogue: E.catalogue, remote: url, endpoint: s3.endpoint, snapshots: [s2.id.slice(0, 8)], ...FAST})).rejects.toMatchObject({
          code: 'REMOTE_CORRUPT',
          message: expect.stringContaining(key),
        })
        expect(await localSnapshots(E)).toEqual([])
      } finally {
        await undo()
      }
    }
  }, 120_000)

  it('an unreachable endpoint and a missing bucket fail at once with their own codes', async () => {
    const F = side('F')
    const down = await startFaultProxy(s3.endpoint)
    const deadEndpoint = down.endpoint
    await down.stop()
    const t0 = Date.now()
    await expect(push({repo: A.dir, catalogue: A.catalogue, remote: url, endpoint: deadEndpoint, ...FAST, attempts: 2})).rejects.toMatchObject({code: 'REMOTE_UNREACHABLE'})
    await expect(pull({repo: F.dir, catalogue: F.catalogue, remote: url, endpoint: deadEndpoint, ...FAST, attempts: 2})).rejects.toMatchObject({code: 'REMOTE_UNREACHABLE'})
    expect(Date.now() - t0).toBeLessThan(30_000)
    await expect(push({repo: A.dir, catalogue: A.catalogue, remote: 's3://no-such-bucket/x', endpoint: s3.endpoint, ...FAST})).rejects.toMatchObject({code: 'REMOTE_NOT_FOUND'})
    await expect(pull({repo: F.dir, catalogue: F.catalogue, remote: 's3://no-such-bucket/x', endpoint: s3.endpoint, ...FAST})).rejects.toMatchObject({code: 'REMOTE_NOT_FOUND'})
    await expect(fsp.stat(F.dir)).rejects.toThrow()
  }, 60_000)
})
