/**
 * Crash safety of push and pull: the built CLI (`node bin/run.js`, build first) is SIGKILLed by
 * test/harness/crash-preload.mjs while its Nth S3 upload is on the wire (push) or right after
 * its Nth durable local write (pull), at points spread over a measured run. After every kill:
 * nothing partial is visible as a snapshot (remote or local), what is there verifies, and the
 * next run finishes the transfer with every byte intact. No Docker: the snapshots are volume
 * snapshots built in-process; the remote is s3rver.
 */
import {spawn} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {existsSync, promises as fsp} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {Readable} from 'node:stream'
import {fileURLToPath, pathToFileURL} from 'node:url'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {Archiver} from '../../src/archive/archiver.js'
import {restoreToDir} from '../../src/archive/restorer.js'
import {LocalBackend} from '../../src/backend/local.js'
import {S3Backend} from '../../src/backend/s3.js'
import {SnapshotManifest} from '../../src/repo/format.js'
import {Repository} from '../../src/repo/repository.js'
import {verifyRepository} from '../../src/services/verify.js'
import {S3RVER_CREDENTIALS, S3Server, startS3Server} from '../harness/s3.js'

const BIN = fileURLToPath(new URL('../../bin/run.js', import.meta.url))
const PRELOAD = pathToFileURL(fileURLToPath(new URL('../harness/crash-preload.mjs', import.meta.url))).href

let s3: S3Server
let tmp: string
let env: Record<string, string>

beforeAll(async () => {
  s3 = await startS3Server()
  tmp = await fsp.mkdtemp(join(tmpdir(), 'holyship-crash-transfer-'))
  env = {
    AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
    AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
    AWS_REGION: 'us-east-1',
    HOLYSHIP_REMOTES: join(tmp, 'remotes.json'),
    HOLYSHIP_PARALLEL: '2',
  }
}, 30_000)

afterAll(async () => {
  await s3?.stop()
  if (tmp) await fsp.rm(tmp, {recursive: true, force: true})
})

interface Run {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

function cli(args: string[], extra: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', PRELOAD, BIN, ...args], {env: {...process.env, ...env, ...extra}, stdio: ['ignore', 'pipe', 'pipe']})
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code, signal) => resolve({code, signal, stdout, stderr}))
  })
}

const spread = (total: number, n: number): number[] => [...new Set(Array.from({length: n}, (_, i) => Math.max(1, Math.round(((i + 1) * total) / n))))]

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

const remoteBackend = (prefix: string): S3Backend => new S3Backend({bucket: s3.bucket, prefix, endpoint: s3.endpoint, region: 'us-east-1', credentials: S3RVER_CREDENTIALS})

/** what is really on the remote under a prefix: its snapshots, and problems (every listed snapshot must be whole) */
async function remoteState(prefix: string): Promise<{snapshots: string[]; problems: unknown[]}> {
  const b = remoteBackend(prefix)
  try {
    const snapshots = (await b.list('snapshots/')).map((e) => e.key.slice('snapshots/'.length)).sort()
    if ((await b.stat('config')) === undefined) return {snapshots, problems: snapshots.length ? ['snapshots without a config'] : []}
    const v = await verifyRepository(await Repository.open(b), {readData: true})
    return {snapshots, problems: v.problems}
  } finally {
    await b.close()
  }
}

describe('kill -9 during push and pull', () => {
  const content1: Record<string, Buffer> = {}
  const content2: Record<string, Buffer> = {}
  let A: {dir: string; catalogue: string}
  let s1: {id: string; tree: string}
  let s2: {id: string; tree: string}
  const report: string[] = []

  beforeAll(async () => {
    A = {dir: join(tmp, 'A/repo'), catalogue: join(tmp, 'A/cat.sqlite3')}
    await fsp.mkdir(A.dir, {recursive: true})
    const repo = await Repository.init(new LocalBackend(A.dir), {packSize: 64 * 1024})
    for (let i = 0; i < 16; i++) content1[`${i % 2 ? 'sub/' : ''}a${i}.bin`] = randomBytes(40 * 1024)
    for (let i = 0; i < 10; i++) content2[`b${i}.bin`] = randomBytes(40 * 1024)
    s1 = await volumeSnapshot(repo, 'one', content1, '2025-01-01T00:00:00.000Z')
    s2 = await volumeSnapshot(repo, 'two', content2, '2025-01-02T00:00:00.000Z')
  })

  afterAll(() => console.log(report.join('\n')))

  it('push: killed at 5 points spread over its uploads; never a half snapshot on the remote; the next push finishes', async () => {
    const countFile = join(tmp, 'push-count.json')
    const measured = await cli(['push', '--to', `s3://${s3.bucket}/measured`, '--endpoint', s3.endpoint, '--repo', A.dir, '--catalogue', A.catalogue], {HOLYSHIP_TEST_CRASH_COUNT: countFile})
    expect(measured.stderr).toBe('')
    expect(measured.code).toBe(0)
    const total = JSON.parse(await fsp.readFile(countFile, 'utf8')).put as number
    expect(total).toBeGreaterThan(12)
    const points = spread(total, 5)
    for (const at of points) {
      const prefix = `push-kill-${at}`
      const url = `s3://${s3.bucket}/${prefix}`
      const r = await cli(['push', '--to', url, '--endpoint', s3.endpoint, '--repo', A.dir, '--catalogue', A.catalogue], {HOLYSHIP_TEST_CRASH: `put:${at}`})
      const after = await remoteState(prefix)
      report.push(`push killed during upload ${at}/${total}: ${r.signal ?? `exit ${r.code}`}, remote snapshots ${after.snapshots.length}, remote problems ${after.problems.length}`)
      expect(r.signal).toBe('SIGKILL')
      // what the remote lists is whole
      expect(after.problems).toEqual([])
      expect(after.snapshots.every((id) => [s1.id, s2.id].includes(id))).toBe(true)
      const again = await cli(['push', '--to', url, '--endpoint', s3.endpoint, '--repo', A.dir, '--catalogue', A.catalogue, '--json'])
      expect(again.stderr).toBe('')
      expect(again.code).toBe(0)
      const done = await remoteState(prefix)
      expect(done.snapshots).toEqual([s1.id, s2.id].sort())
      expect(done.problems).toEqual([])
    }
    // the local repository never changed
    expect((await verifyRepository(await Repository.open(new LocalBackend(A.dir)), {readData: true})).problems).toEqual([])
  }, 240_000)

  it('pull: killed at 5 points spread over its local writes; never a half snapshot locally; the next pull finishes', async () => {
    const url = `s3://${s3.bucket}/measured`
    const countFile = join(tmp, 'pull-count.json')
    const M = join(tmp, 'pull-measured')
    const measured = await cli(['pull', 'latest:one', 'latest:two', '--from', url, '--endpoint', s3.endpoint, '--repo', join(M, 'repo'), '--catalogue', join(M, 'cat.sqlite3')], {
      HOLYSHIP_TEST_CRASH_COUNT: countFile,
    })
    expect(measured.stderr).toBe('')
    expect(measured.code).toBe(0)
    const total = JSON.parse(await fsp.readFile(countFile, 'utf8')).rename as number
    expect(total).toBeGreaterThan(12)
    for (const at of spread(total, 5)) {
      const dir = join(tmp, `pull-kill-${at}`)
      const args = ['pull', 'latest:one', 'latest:two', '--from', url, '--endpoint', s3.endpoint, '--repo', join(dir, 'repo'), '--catalogue', join(dir, 'cat.sqlite3')]
      const r = await cli(args, {HOLYSHIP_TEST_CRASH: `rename:${at}`})
      expect(r.signal).toBe('SIGKILL')
      const local = join(dir, 'repo')
      const snaps = existsSync(join(local, 'snapshots')) ? await fsp.readdir(join(local, 'snapshots')) : []
      report.push(`pull killed after local write ${at}/${total}: local snapshots ${snaps.length}`)
      if (existsSync(join(local, 'config'))) {
        const v = await verifyRepository(await Repository.open(new LocalBackend(local)), {readData: true})
        expect(v.problems).toEqual([])
      }
      const again = await cli([...args, '--json'])
      expect(again.stderr).toBe('')
      expect(again.code).toBe(0)
      const repo = await Repository.open(new LocalBackend(local))
      expect((await verifyRepository(repo, {readData: true})).problems).toEqual([])
      for (const [tree, content] of [[s1.tree, content1], [s2.tree, content2]] as const) {
        const out = join(dir, `out-${tree.slice(0, 8)}`)
        await restoreToDir(repo, tree, '', out)
        for (const [p, data] of Object.entries(content)) expect((await fsp.readFile(join(out, p))).equals(data), p).toBe(true)
      }
    }
  }, 240_000)
})
