/**
 * The scheduler on a real private engine, as the built CLI (`bin/run.js schedule run`, run
 * `npm run build` first) in a child process:
 *  - a container labelled with a seconds-level schedule is snapshotted again and again, its
 *    pre-hook's output (written into its volume) is inside the snapshot, and retention leaves
 *    the configured number;
 *  - a container started after the scheduler is picked up without a restart; it is stopped
 *    (holyship.stop=true) for its snapshots, started again, and each snapshot is shipped to an
 *    S3 remote (holyship.to; s3rver in this process);
 *  - a run longer than its interval is reported and the next one skipped, never overlapped;
 *  - a failing pre-hook leaves its container running, the scheduler alive, and a local HTTP
 *    server receives the webhook POST;
 *  - status, schedule list and the metrics endpoint; SIGTERM ends it with exit 0;
 *  - verify --read-data passes afterwards.
 */
import {ChildProcessWithoutNullStreams, spawn} from 'node:child_process'
import {mkdtempSync, promises as fsp, rmSync} from 'node:fs'
import * as http from 'node:http'
import type {AddressInfo} from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import {createInterface} from 'node:readline'
import {fileURLToPath} from 'node:url'
import {afterAll, beforeAll, describe, expect, inject, it} from 'vitest'
import {fileContent, findNode} from '../../src/archive/restorer.js'
import {openContext} from '../../src/services/context.js'
import {unlock} from '../../src/services/locking.js'
import {LocalBackend} from '../../src/backend/local.js'
import {Repository} from '../../src/repo/repository.js'
import {EMPTY_CONFIG} from '../../src/schedule/config.js'
import {RunRecord, listSchedule, runScheduler} from '../../src/services/schedule.js'
import {status} from '../../src/services/status.js'
import {verifyRepository} from '../../src/services/verify.js'
import {holyship} from '../harness/cli.js'
import {connectEngine} from '../harness/engine.js'
import {S3RVER_CREDENTIALS, S3Server, startS3Server} from '../harness/s3.js'

const BIN = fileURLToPath(new URL('../../bin/run.js', import.meta.url))

describe('holyship schedule run', () => {
  const info = inject('holyshipEngineA')
  const docker = connectEngine(info).docker
  const image = inject('holyshipBusyboxImage')
  const tag = String(process.pid)
  const ok = `sched-ok-${tag}`
  const bad = `sched-bad-${tag}`
  const late = `sched-late-${tag}`
  const idle = `sched-idle-${tag}`
  const vol = `sched-vol-${tag}`
  const orphan = `sched-orphan-${tag}`
  let work: string
  let env: Record<string, string>
  let hookServer: http.Server
  const posts: Record<string, unknown>[] = []
  let child: ChildProcessWithoutNullStreams
  const lines: string[] = []
  let exit: Promise<number>
  let stderr = ''
  let s3: S3Server

  const count = (re: RegExp): number => lines.filter((l) => re.test(l)).length
  const waitUntil = async (what: string, cond: () => boolean, ms: number): Promise<void> => {
    const t0 = Date.now()
    while (!cond()) {
      if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}; log:\n${lines.join('\n')}\nstderr:\n${stderr}`)
      await new Promise((r) => setTimeout(r, 100))
    }
  }

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-sched-'))
    hookServer = http.createServer((req, res) => {
      let body = ''
      req.on('data', (d) => (body += d))
      req.on('end', () => {
        posts.push(JSON.parse(body))
        res.writeHead(200).end('ok')
      })
    })
    await new Promise<void>((r) => hookServer.listen(0, '127.0.0.1', () => r()))
    const config = path.join(work, 'schedule.json')
    await fsp.writeFile(
      config,
      JSON.stringify({webhook: {url: `http://127.0.0.1:${(hookServer.address() as AddressInfo).port}/hook`}, rescanSeconds: 1, lockWaitSeconds: 30, concurrency: 3}),
    )
    s3 = await startS3Server()
    env = {
      HOLYSHIP_REPO: path.join(work, 'repo'),
      HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3'),
      HOLYSHIP_SCHEDULE_CONFIG: config,
      HOLYSHIP_REMOTES: path.join(work, 'remotes.json'),
      DOCKER_HOST: info.dockerHost,
      AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
      AWS_REGION: 'us-east-1',
      AWS_ENDPOINT_URL: s3.endpoint,
    }
    expect((await holyship(['init'], env)).code).toBe(0)

    await docker.createVolume({Name: vol})
    await docker.createVolume({Name: orphan})
    const start = async (name: string, labels: Record<string, string>, binds: string[] = []): Promise<void> => {
      const c = await docker.createContainer({name, Image: image, Cmd: ['sleep', '100000'], Labels: labels, HostConfig: {Binds: binds}})
      await c.start()
    }
    await start(
      ok,
      {
        'holyship.schedule': '*/2 * * * * *',
        'holyship.keep': 'last=2',
        'holyship.pre': 'echo "dump $(date +%s) $$" > /data/dump.sql && echo pre-ran',
        'holyship.post': 'echo post-ran',
      },
      [`${vol}:/data`],
    )
    // fails, and takes longer than its 2 s interval
    await start(bad, {'holyship.schedule': '*/2 * * * * *', 'holyship.pre': 'echo dumping; sleep 2.5; echo "pg_dump: connection refused" >&2; exit 3'})
    await start(idle, {}, [`${orphan}:/var/lib/stuff`])
  })

  afterAll(async () => {
    if (child && child.exitCode === null) child.kill('SIGKILL')
    for (const n of [ok, bad, late, idle]) await docker.getContainer(n).remove({force: true}).catch(() => {})
    for (const v of [vol, orphan]) await docker.getVolume(v).remove().catch(() => {})
    await new Promise((r) => hookServer?.close(r))
    await s3?.stop()
    rmSync(work, {recursive: true, force: true})
  })

  it('runs labelled containers on a seconds schedule, picks up new ones, survives a failing pre-hook, exits 0 on SIGTERM', async () => {
    const t0 = Date.now()
    child = spawn(process.execPath, [BIN, 'schedule', 'run', '--metrics-port', '0'], {env: {...process.env, ...env}, stdio: ['pipe', 'pipe', 'pipe']})
    child.stderr.on('data', (d) => (stderr += d))
    createInterface({input: child.stdout}).on('line', (l) => lines.push(l))
    exit = new Promise((resolve) => child.on('close', (code, signal) => resolve(code ?? (signal ? -1 : -2))))

    // start-up report: targets and the volume no schedule covers
    await waitUntil('the start-up report', () => count(/metrics on http/) === 1, 15_000)
    expect(lines.some((l) => l.includes(`container:${ok}: */2 * * * * * (label), keep last=2`))).toBe(true)
    expect(lines.some((l) => l.includes(`not covered by any schedule: volume ${orphan} (used by ${idle}:/var/lib/stuff)`))).toBe(true)

    // a container started after the scheduler: picked up at the next rescan
    const c = await docker.createContainer({
      name: late,
      Image: image,
      // stops at once on SIGTERM (a bare `sleep` as pid 1 would ignore it for 10 s)
      Cmd: ['sh', '-c', 'trap "exit 0" TERM; while true; do sleep 0.2; done'],
      Labels: {'holyship.schedule': '*/2 * * * * *', 'holyship.keep': 'last=1', 'holyship.stop': 'true', 'holyship.to': `s3://${s3.bucket}/sched`},
    })
    await c.start()

    const okRun = new RegExp(`container:${ok} ok in`)
    const badRun = new RegExp(`container:${bad} FAILED in .*: pre-hook exited 3`)
    const lateRun = new RegExp(`container:${late} ok in .*shipped to s3://${s3.bucket}/sched`)
    const skipped = new RegExp(`container:${bad} skipped: the previous run \\(started .* ago\\) is still going`)
    await waitUntil('4 runs of the labelled container, 2 failed runs and a skipped one, 2 of the late one', () => count(okRun) >= 4 && count(badRun) >= 2 && count(skipped) >= 1 && count(lateRun) >= 2, 40_000)
    const t1 = Date.now()
    if (process.env.HS_SHOW_LOG) console.log(lines.join('\n'))

    // the failing container: still running, not paused; its hook output logged; webhook POSTed
    const st = (await docker.getContainer(bad).inspect()).State
    expect([st.Running, st.Paused]).toEqual([true, false])
    expect(lines.some((l) => new RegExp(`container:${bad} FAILED .*warning: took \\d+\\.\\ds, longer than its interval of 2\\.0s`).test(l))).toBe(true)
    expect(lines.some((l) => l.includes(`container:${bad} pre| pg_dump: connection refused`))).toBe(true)
    expect(lines.some((l) => l.includes(`container:${ok} pre| pre-ran`))).toBe(true)
    expect(lines.some((l) => l.includes(`container:${ok} post| post-ran`))).toBe(true)
    expect(lines.some((l) => l.includes(`container:${late}: now scheduled`))).toBe(true)
    const failure = posts.find((p) => p.container === bad)
    expect(failure).toMatchObject({event: 'failure', target: `container:${bad}`, error: expect.stringMatching(/pre-hook exited 3/), host: os.hostname()})
    // failures only: no POST for successful runs
    expect(posts.every((p) => p.event === 'failure')).toBe(true)

    // metrics
    const port = Number(/127\.0\.0\.1:(\d+)\/metrics/.exec(lines.find((l) => l.includes('metrics on'))!)![1])
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
    expect(metrics).toMatch(new RegExp(`holyship_runs_total\\{target="container:${ok}"\\} \\d+`))
    expect(metrics).toMatch(new RegExp(`holyship_failures_total\\{target="container:${bad}"\\} [1-9]`))
    expect(metrics).toMatch(new RegExp(`holyship_last_success_timestamp_seconds\\{target="container:${ok}"\\} \\d+`))
    expect(metrics).toMatch(new RegExp(`holyship_overruns_total\\{target="container:${bad}"\\} [1-9]`))

    // status and schedule list while it runs
    // (in-process: a CLI start costs seconds on 2 busy cores)
    const svc = {repo: env.HOLYSHIP_REPO, catalogue: env.HOLYSHIP_CATALOGUE, dockerHost: env.DOCKER_HOST, config: env.HOLYSHIP_SCHEDULE_CONFIG}
    const [s, list] = await Promise.all([status(svc), listSchedule(svc)])
    const okStatus = s.targets.find((t) => t.target === `container:${ok}`)!
    expect(okStatus).toMatchObject({scheduled: true, schedule: '*/2 * * * * *', keep: 'last=2', lastSuccess: expect.any(String), nextRun: expect.any(String)})
    expect(okStatus.lastSnapshot!.bytes).toBeGreaterThan(0)
    const badStatus = s.targets.find((t) => t.target === `container:${bad}`)!
    expect(badStatus).toMatchObject({lastError: expect.stringMatching(/pre-hook exited 3/), snapshots: 0})
    expect(badStatus.failures).toBeGreaterThanOrEqual(2)
    expect(badStatus.overruns).toBeGreaterThanOrEqual(1)
    expect(s.uncovered).toContainEqual({type: 'volume', source: orphan, usedBy: [`${idle}:/var/lib/stuff`]})
    const entry = list.targets.find((t) => t.target === `container:${ok}`)!
    expect(entry.next).toHaveLength(3)
    expect(Date.parse(entry.next[1]) - Date.parse(entry.next[0])).toBe(2000)

    // SIGTERM: the current run finishes, exit 0
    const tTerm = Date.now()
    child.kill('SIGTERM')
    const code = await Promise.race([exit, new Promise<number>((r) => setTimeout(() => r(-99), 20_000))])
    expect(code, `stderr: ${stderr}\nlog:\n${lines.slice(-20).join('\n')}`).toBe(0)
    expect(lines.some((l) => /scheduler stopped \(SIGTERM\)/.test(l))).toBe(true)
    console.log(`scheduler: ${count(okRun)} runs of ${ok}, ${count(badRun)} failed runs of ${bad}, ${count(lateRun)} of ${late} in ${((t1 - t0) / 1000).toFixed(1)} s; exit 0 ${Date.now() - tTerm} ms after SIGTERM`)

    // retention left the configured number; the failing container has none
    const ctx = await openContext({repo: env.HOLYSHIP_REPO, catalogue: env.HOLYSHIP_CATALOGUE})
    try {
      const rows = (n: string) => ctx.catalogue.listSnapshots(ctx.repo.id, {container: n, tag: 'scheduled'})
      expect(rows(ok)).toHaveLength(2)
      expect(rows(late)).toHaveLength(1)
      // stopped for every snapshot and started again
      expect((await docker.getContainer(late).inspect()).State.Running).toBe(true)
      expect(rows(bad)).toHaveLength(0)
      // the pre-hook's dump is inside the snapshot, the newest one's newer than the older's
      const dumps: string[] = []
      for (const r of rows(ok)) {
        const m = ctx.catalogue.getManifest(ctx.repo.id, r.id)!
        const mount = m.mounts.find((x) => x.destination === '/data')!
        const node = await findNode(ctx.repo, mount.tree, 'dump.sql')
        expect(node?.type).toBe('file')
        const parts: Buffer[] = []
        for await (const b of fileContent(ctx.repo, node!)) parts.push(b)
        dumps.push(Buffer.concat(parts).toString('utf8'))
      }
      expect(dumps[0]).toMatch(/^dump \d+ \d+\n$/)
      expect(dumps[1]).toMatch(/^dump \d+ \d+\n$/)
      expect(dumps[0]).not.toBe(dumps[1])
      const v = await verifyRepository(ctx.repo, {readData: true})
      expect(v.problems).toEqual([])
    } finally {
      ctx.close()
    }
    // every snapshot of the late container was shipped (retention is local: the remote keeps them all)
    const remoteSnaps = await fsp.readdir(path.join(s3.dir, s3.bucket, 'sched', 'snapshots'))
    expect(remoteSnaps.filter((f) => f.endsWith('._S3rver_object')).length).toBeGreaterThanOrEqual(count(lateRun))
    // no lock left behind
    expect(await unlock({repo: env.HOLYSHIP_REPO})).toMatchObject({kept: [], removed: []})
  }, 60_000)
})

describe('a scheduled snapshot whose repository lock is taken away meanwhile', () => {
  it('stops before its manifest (the lock is lost), records the failure and writes no snapshot', async () => {
    const info = inject('holyshipEngineA')
    const docker = connectEngine(info).docker
    const work = mkdtempSync(path.join(os.tmpdir(), 'hs-sched-lock-'))
    const name = `sched-lock-${process.pid}`
    const repo = path.join(work, 'repo')
    try {
      await fsp.mkdir(repo)
      await Repository.init(new LocalBackend(repo))
      const c = await docker.createContainer({
        name,
        Image: inject('holyshipBusyboxImage'),
        Cmd: ['sleep', '100000'],
        // the pre-hook runs under the scheduler's lock: while it sleeps, `unlock --all` removes it
        Labels: {'holyship.schedule': '* * * * * *', 'holyship.pre': 'echo hook-start; sleep 2'},
      })
      await c.start()
      const stop = new AbortController()
      const runs: RunRecord[] = []
      let unlocked: Promise<unknown> | undefined
      await runScheduler({
        repo,
        catalogue: path.join(work, 'cat.sqlite3'),
        configObject: {...EMPTY_CONFIG, rescanSeconds: 1},
        dockerHost: info.dockerHost,
        handleSignals: false,
        signal: stop.signal,
        log: (line) => {
          if (/pre\| hook-start/.test(line)) unlocked ??= unlock({repo, all: true})
        },
        onRun: (r) => {
          // (the next second's run is skipped while this one goes on)
          if (r.skipped) return
          runs.push(r)
          stop.abort()
        },
      })
      expect((await unlocked) as {removed: unknown[]}).toMatchObject({removed: [expect.anything()]})
      expect(runs[0]).toMatchObject({target: `container:${name}`, ok: false, error: expect.stringMatching(/lost the shared lock .* was removed by someone else/)})
      expect(await fsp.readdir(path.join(repo, 'snapshots')).catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? [] : Promise.reject(e)))).toEqual([])
      expect((await docker.getContainer(name).inspect()).State).toMatchObject({Running: true, Paused: false})
    } finally {
      await docker.getContainer(name).remove({force: true}).catch(() => {})
      rmSync(work, {recursive: true, force: true})
    }
  }, 60_000)
})
