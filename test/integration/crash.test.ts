/**
 * Crash safety: the built CLI is SIGKILLed at many points of a snapshot and a restore (by
 * test/harness/crash-preload.mjs, right after the Nth durable write, or when the container is
 * seen paused or stopped, or after a delay). After every kill: the repository verifies, no half
 * snapshot is listed, every earlier snapshot restores byte for byte, the next run succeeds, and
 * no container is left paused or stopped: the pause journal lets the next run put it back.
 * (push and pull: test/integration/crash-transfer.test.ts; the engine restarting:
 * test/integration/engine-restart.test.ts.)
 */
import {spawn} from 'node:child_process'
import {createHash, randomBytes} from 'node:crypto'
import {existsSync, mkdtempSync, promises as fsp, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {fileURLToPath, pathToFileURL} from 'node:url'
import {afterAll, beforeAll, describe, expect, inject, it} from 'vitest'
import {LocalBackend} from '../../src/backend/local.js'
import {Repository} from '../../src/repo/repository.js'
import {restorePath} from '../../src/services/restore.js'
import {verifyRepository} from '../../src/services/verify.js'
import {holyship} from '../harness/cli.js'
import {connectEngine, dockerExec} from '../harness/engine.js'

const BIN = fileURLToPath(new URL('../../bin/run.js', import.meta.url))
const PRELOAD = pathToFileURL(fileURLToPath(new URL('../harness/crash-preload.mjs', import.meta.url))).href

interface Run {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** the CLI with the crash hook loaded; killed by the hook, or when killWhen() says so, or after killAfterMs */
function crashRun(args: string[], env: Record<string, string>, opts: {crash?: string; countFile?: string; killWhen?: () => Promise<boolean>; killAfterMs?: number} = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', PRELOAD, BIN, ...args], {
      env: {...process.env, ...env, ...(opts.crash ? {HOLYSHIP_TEST_CRASH: opts.crash} : {}), ...(opts.countFile ? {HOLYSHIP_TEST_CRASH_COUNT: opts.countFile} : {})},
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    let done = false
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code, signal) => {
      done = true
      resolve({code, signal, stdout, stderr})
    })
    if (opts.killAfterMs !== undefined) setTimeout(() => child.kill('SIGKILL'), opts.killAfterMs)
    if (opts.killWhen) {
      const poll = async (): Promise<void> => {
        while (!done) {
          if (await opts.killWhen!().catch(() => false)) {
            child.kill('SIGKILL')
            return
          }
          await new Promise((r) => setTimeout(r, 15))
        }
      }
      void poll()
    }
  })
}

/** kill points: `n` values spread evenly over 1..total, the last one included */
const spread = (total: number, n: number): number[] => [...new Set(Array.from({length: n}, (_, i) => Math.max(1, Math.round(((i + 1) * total) / n))))]

/** what a durable write was, from where it was renamed to */
function kindOf(dest: string): string {
  if (/\/data\/[0-9a-f]{2}\//.test(dest)) return 'pack'
  if (dest.includes('/index/')) return 'index file'
  if (dest.includes('/snapshots/')) return 'manifest'
  if (dest.includes('/locks/')) return 'lock'
  if (dest.includes('/journal/')) return 'pause journal'
  return path.basename(dest)
}

describe('kill -9 at many points', () => {
  const info = inject('holyshipEngineA')
  const docker = connectEngine(info).docker
  const image = inject('holyshipBusyboxImage')
  const tag = process.pid.toString(36)
  const name = `crash-${tag}`
  const vol = `crash-vol-${tag}`
  let work: string
  let env: Record<string, string>
  let containerId: string
  /** snapshot id -> sha256 of every file of its volume, as written */
  const expected = new Map<string, Record<string, string>>()
  const report: string[] = []

  const state = async (): Promise<{Running: boolean; Paused: boolean}> => (await docker.getContainer(containerId).inspect()).State
  const repoDir = (): string => env.HOLYSHIP_REPO
  const snapshots = async (): Promise<string[]> => (await new LocalBackend(repoDir()).list('snapshots/')).map((e) => e.key.slice('snapshots/'.length)).sort()

  /**
   * new random content in the volume (so the next snapshot has new data to write), written on
   * the host straight into the volume (the container may be paused: a killed run left it so);
   * returns the files' hashes
   */
  const churn = async (round: number): Promise<Record<string, string>> => {
    const mp = (await docker.getVolume(vol).inspect()).Mountpoint
    for (const f of await fsp.readdir(mp)) await fsp.rm(path.join(mp, f), {recursive: true})
    const out: Record<string, string> = {}
    // big files (several chunks, packs) and small ones: a restore hands all but its first few
    // small files to its workers, which write them whole
    for (let i = 1; i <= 26; i++) {
      const name = i <= 6 ? `f${i}.bin` : `s${i}.bin`
      const data = randomBytes(i <= 6 ? 300 * 1024 : 3000 + i)
      await fsp.writeFile(path.join(mp, name), data)
      out[name] = createHash('sha256').update(data).digest('hex')
    }
    await fsp.writeFile(path.join(mp, 'round'), `${round}\n`)
    out.round = createHash('sha256').update(`${round}\n`).digest('hex')
    return out
  }

  /** every snapshot verifies and restores byte for byte (in-process, from the repository alone) */
  const checkRepository = async (readData = false): Promise<void> => {
    const repo = await Repository.open(new LocalBackend(repoDir()))
    const v = await verifyRepository(repo, {readData})
    expect(v.problems).toEqual([])
    for (const id of await snapshots()) {
      const want = expected.get(id)
      if (!want) continue
      const out = await fsp.mkdtemp(path.join(work, 'check-'))
      await restorePath({repo, snapshotId: id, manifest: await repo.loadSnapshot(id), path: '/data', target: out})
      for (const [f, sum] of Object.entries(want)) {
        expect(createHash('sha256').update(await fsp.readFile(path.join(out, f))).digest('hex'), `${id.slice(0, 12)}:${f}`).toBe(sum)
      }
      await fsp.rm(out, {recursive: true})
    }
  }

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-crash-'))
    env = {
      HOLYSHIP_REPO: path.join(work, 'repo'),
      HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3'),
      HOLYSHIP_PAUSE_JOURNAL: path.join(work, 'journal'),
      DOCKER_HOST: info.dockerHost,
    }
    // small packs, so a snapshot is many durable writes
    await fsp.mkdir(env.HOLYSHIP_REPO)
    await Repository.init(new LocalBackend(env.HOLYSHIP_REPO), {packSize: 192 * 1024})
    await docker.createVolume({Name: vol})
    const c = await docker.createContainer({name, Image: image, Cmd: ['sleep', '100000'], StopTimeout: 1, HostConfig: {Binds: [`${vol}:/data`]}})
    await c.start()
    containerId = c.id
  }, 120_000)

  afterAll(async () => {
    for (const c of await docker.listContainers({all: true})) {
      if (c.Names.some((n) => n.includes(tag))) await docker.getContainer(c.Id).remove({force: true, v: true}).catch(() => {})
    }
    for (const v of (await docker.listVolumes()).Volumes ?? []) if (v.Name.includes(tag)) await docker.getVolume(v.Name).remove().catch(() => {})
    rmSync(work, {recursive: true, force: true})
    // what was tried, for the record
    console.log(report.join('\n'))
  })

  it('snapshot: 10 kill points spread over its durable writes', async () => {
    // the first snapshot stores the image too; the second measures a run with only new data
    const h0 = await churn(0)
    const first = await holyship(['snapshot', name, '--json'], env)
    expect(first.stderr).toBe('')
    expected.set(JSON.parse(first.stdout)[0].id, h0)
    const h1 = await churn(1)
    const countFile = path.join(work, 'count.json')
    const measured = await crashRun(['snapshot', name, '--json'], env, {countFile})
    expect(measured.code).toBe(0)
    expected.set(JSON.parse(measured.stdout)[0].id, h1)
    const counted = JSON.parse(await fsp.readFile(countFile, 'utf8')) as {rename: number; renamed: string[]}
    const total = counted.rename
    const kinds = counted.renamed.map(kindOf)
    expect(total).toBeGreaterThan(6)
    expect(kinds).toContain('manifest')
    // 8 points spread over the writes, then right after the index file and right after the
    // manifest (a run after a kill also writes a recovery claim: the numbers shift by one)
    const points: string[] = [...spread(total, 8).map((n) => `rename:${n}`), 'rename-to:/index/', 'rename-to:/snapshots/']
    expect(points).toHaveLength(10)

    for (const [i, crash] of points.entries()) {
      const hashes = await churn(10 + i)
      const before = await snapshots()
      const runCount = path.join(work, `count-${i}.json`)
      const r = await crashRun(['snapshot', name, '--json'], env, {crash, countFile: runCount})
      const after = await snapshots()
      const st = await state()
      const c = JSON.parse(await fsp.readFile(runCount, 'utf8')) as {rename: number; renamed: string[]}
      report.push(
        `snapshot killed after durable write ${c.rename} of ~${total} (${kindOf(c.renamed[c.rename - 1])}): signal ${r.signal}, snapshots ${before.length} -> ${after.length}, container ${st.Paused ? 'paused (journal)' : st.Running ? 'running' : 'stopped'}`,
      )
      if (crash === 'rename-to:/snapshots/') expect(after.length).toBe(before.length + 1)
      expect(r.signal).toBe('SIGKILL')
      // a snapshot appears whole (killed after its manifest was written) or not at all
      expect(after.filter((id) => !before.includes(id)).length).toBeLessThanOrEqual(1)
      for (const id of after) if (!before.includes(id)) expected.set(id, hashes)
      expect((await verifyRepository(await Repository.open(new LocalBackend(repoDir())))).problems).toEqual([])
      // killed while the container was paused: the journal holds it, for the next run
      if (st.Paused) expect((await fsp.readdir(env.HOLYSHIP_PAUSE_JOURNAL)).some((f) => f.includes(containerId.slice(0, 12)))).toBe(true)
    }
    // the next run succeeds, and puts the container back first
    const hLast = await churn(99)
    const next = await holyship(['snapshot', name, '--json'], env)
    expect(next.stderr).toBe('')
    expect(next.code).toBe(0)
    expected.set(JSON.parse(next.stdout)[0].id, hLast)
    expect(await state()).toMatchObject({Running: true, Paused: false})
    expect(await fsp.readdir(env.HOLYSHIP_PAUSE_JOURNAL)).toEqual([])
    const listed = JSON.parse((await holyship(['list', '--json'], env)).stdout) as {id: string}[]
    expect(listed.map((s) => s.id).sort()).toEqual(await snapshots())
    await checkRepository(true)
  }, 300_000)

  it('snapshot killed while the container is paused, or stopped: the next run puts it back', async () => {
    for (const mode of ['pause', 'stop'] as const) {
      await churn(200)
      const before = await snapshots()
      const r = await crashRun(['snapshot', name, ...(mode === 'stop' ? ['--stop'] : [])], env, {
        killWhen: async () => {
          const s = await state()
          return mode === 'pause' ? s.Paused : !s.Running
        },
      })
      expect(r.signal).toBe('SIGKILL')
      const left = await state()
      report.push(`snapshot --${mode === 'pause' ? 'pause (default)' : 'stop'} killed with the container ${left.Paused ? 'paused' : left.Running ? 'running' : 'stopped'}`)
      expect(mode === 'pause' ? left.Paused : !left.Running).toBe(true)
      expect(await snapshots()).toEqual(before)
      // any holyship run against the engine that pauses or restores puts it back: here a restore --path
      // does not touch the engine, a snapshot does
      const next = await holyship(['snapshot', name, '--no-pause', '--json'], env)
      expect(next.code).toBe(0)
      expect(await state()).toMatchObject({Running: true, Paused: false})
    }
    expect(await fsp.readdir(env.HOLYSHIP_PAUSE_JOURNAL)).toEqual([])
    await checkRepository()
  }, 120_000)

  it('restore --path: killed between files and inside one, the next run (--force) restores it whole', async () => {
    const id = [...expected.keys()].pop()!
    const want = expected.get(id)!
    const countFile = path.join(work, 'count-restore.json')
    const measuredTarget = path.join(work, 'restore-measured')
    const m = await crashRun(['restore', id, '--path', '/data', '--target', measuredTarget], env, {countFile})
    expect(m.code).toBe(0)
    // into a new target every file is written under its own name (nothing there to protect),
    // its times set once its data is: the kill points count those
    const total = JSON.parse(await fsp.readFile(countFile, 'utf8')).file as number
    expect(total).toBeGreaterThan(3)
    for (const [mode, at] of [['file', 2], ['file-before', Math.ceil(total / 2)], ['file', total - 1]] as const) {
      const target = path.join(work, `restore-${mode}-${at}`)
      const r = await crashRun(['restore', id, '--path', '/data', '--target', target], env, {crash: `${mode}:${at}`})
      expect(r.signal).toBe('SIGKILL')
      // no target that looks whole: what the kill left is under a name that says it is partial
      expect(existsSync(target)).toBe(false)
      const partials = (await fsp.readdir(work)).filter((f) => f.startsWith(`.${path.basename(target)}.holyship-partial-`))
      expect(partials).toHaveLength(1)
      const partial = path.join(work, partials[0])
      const present = await fsp.readdir(partial)
      let whole = 0
      for (const f of present) if (want[f] && createHash('sha256').update(await fsp.readFile(path.join(partial, f))).digest('hex') === want[f]) whole++
      report.push(`restore --path killed ${mode === 'file' ? 'after' : 'before'} finishing file ${at}/${total}: ${present.length} entries, ${whole} whole files, under ${partials[0]}`)
      expect(present.filter((f) => f.startsWith('.holyship-restore-'))).toEqual([])
      // taken as the target anyway (renamed by hand), the next run with --force replaces what
      // is there, short files too (each written beside, renamed over)
      await fsp.rename(partial, target)
      const again = await holyship(['restore', id, '--path', '/data', '--target', target, '--force'], env)
      expect(again.code).toBe(0)
      for (const [f, sum] of Object.entries(want)) expect(createHash('sha256').update(await fsp.readFile(path.join(target, f))).digest('hex')).toBe(sum)
      expect((await fsp.readdir(target)).filter((f) => f.startsWith('.holyship-restore-'))).toEqual([])
    }
  }, 120_000)

  it('restore of a container: killed midway, the next run (--force) restores it; what the repository held is untouched', async () => {
    const id = [...expected.keys()].pop()!
    const target = `rc-${tag}`
    const args = ['restore', id, '--name', target, '--volume-prefix', `${target}-`]
    const t0 = Date.now()
    const measured = await holyship(args, env)
    expect(measured.code).toBe(0)
    const took = Date.now() - t0
    await docker.getContainer(target).remove({force: true})
    await docker.getVolume(`${target}-${vol}`).remove()
    const repoBefore = await new LocalBackend(repoDir()).list('')
    for (const frac of [0.5, 0.8]) {
      // --force: the leftovers of the previous kill go first, the kill lands in the real work
      const r = await crashRun([...args, '--force'], env, {killAfterMs: Math.round(took * frac)})
      report.push(`docker restore killed at ${Math.round(frac * 100)}% of its ${took} ms: ${r.signal ?? `exit ${r.code}`}`)
      const again = await holyship([...args, '--force'], env)
      expect(again.stderr).toBe('')
      expect(again.code).toBe(0)
      const c = await docker.getContainer(target).inspect()
      const sums = await dockerExec(docker, containerId, ['true']) // the original keeps running
      expect(sums.exitCode).toBe(0)
      expect(c.Mounts.find((mnt) => mnt.Destination === '/data')?.Name).toBe(`${target}-${vol}`)
    }
    // what was there is untouched; what --force replaced (a killed run's leftovers) was
    // snapshotted into the repository, tagged as such: nothing else was written
    const repoAfter = await new LocalBackend(repoDir()).list('')
    const after = new Map(repoAfter.map((e) => [e.key, e]))
    for (const e of repoBefore.filter((e) => !e.key.startsWith('locks/'))) expect(after.get(e.key), e.key).toEqual(e)
    const added = repoAfter.filter((e) => !e.key.startsWith('locks/') && !repoBefore.some((b) => b.key === e.key))
    expect(added.filter((e) => !/^(data|index|snapshots)\//.test(e.key))).toEqual([])
    const listed = JSON.parse((await holyship(['list', '--json'], env)).stdout) as {id: string; tags: string[]}[]
    const newSnapshots = added.filter((e) => e.key.startsWith('snapshots/')).map((e) => e.key.slice('snapshots/'.length))
    for (const sid of newSnapshots) expect(listed.find((l) => l.id === sid)?.tags, sid).toEqual(['replaced-by-restore'])
    // no helper container left behind (a killed restore's is removed by the next run)
    expect((await docker.listContainers({all: true})).filter((c) => c.Labels?.['holyship.helper'] === 'true')).toEqual([])
    expect(await state()).toMatchObject({Running: true, Paused: false})
  }, 180_000)
})
