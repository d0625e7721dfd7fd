/**
 * The scheduler's pieces that need no engine: config file and label parsing, targets,
 * forget on a real repository + catalogue, metrics text and the webhook POST.
 */
import {mkdtempSync, promises as fsp, rmSync} from 'node:fs'
import * as http from 'node:http'
import type {AddressInfo} from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {LocalBackend} from '../../src/backend/local.js'
import {HolyshipError} from '../../src/errors.js'
import {Repository} from '../../src/repo/repository.js'
import {EMPTY_CONFIG, containerTarget, labelSettings, loadConfig, parseConfig} from '../../src/schedule/config.js'
import {renderMetrics, startMetricsServer} from '../../src/schedule/metrics.js'
import {notification, postWebhook} from '../../src/schedule/notify.js'
import {forget} from '../../src/services/forget.js'
import {openContext} from '../../src/services/context.js'
import {content, writeSnapshot} from './helpers/repo-fixture.js'

let work: string
beforeAll(() => {
  work = mkdtempSync(path.join(os.tmpdir(), 'hs-sched-'))
})
afterAll(() => rmSync(work, {recursive: true, force: true}))

const usage = (fn: () => unknown, re: RegExp): void => {
  let err: unknown
  try {
    fn()
  } catch (e) {
    err = e
  }
  expect(err).toBeInstanceOf(HolyshipError)
  expect((err as HolyshipError).code).toBe('USAGE')
  expect((err as HolyshipError).message).toMatch(re)
  expect((err as HolyshipError).message).not.toContain('\n')
}

describe('schedule config', () => {
  it('parses a full config', () => {
    const c = parseConfig(
      JSON.stringify({
        webhook: {url: 'http://127.0.0.1:9/hook', onSuccess: true},
        containers: {db: {schedule: '0 3 * * *', keep: 'daily=7', stop: true, pre: 'pg_dumpall > /dump.sql', post: 'rm /dump.sql', to: 'offsite'}},
        volumes: {media: {schedule: '@weekly', keep: 'weekly=4'}},
        prune: {schedule: '0 5 * * 0', graceMinutes: 30},
        lockWaitSeconds: 60,
        rescanSeconds: 2,
      }),
      'cfg.json',
    )
    expect(c.webhook).toEqual({url: 'http://127.0.0.1:9/hook', onSuccess: true})
    expect(c.containers.db).toEqual({schedule: '0 3 * * *', keep: 'daily=7', stop: true, pre: 'pg_dumpall > /dump.sql', post: 'rm /dump.sql', to: 'offsite'})
    expect(c.volumes.media.keep).toBe('weekly=4')
    expect(c.prune).toEqual({schedule: '0 5 * * 0', graceMinutes: 30})
    expect(c.lockWaitSeconds).toBe(60)
    expect(c.hookTimeoutSeconds).toBe(EMPTY_CONFIG.hookTimeoutSeconds)
    expect(parseConfig('{"webhook": "https://x.example/h"}').webhook).toEqual({url: 'https://x.example/h', onSuccess: false})
  })

  it.each([
    ['[]', /expected a JSON object/],
    ['{', /not valid JSON/],
    ['{"containerz": {}}', /unknown key "containerz"/],
    ['{"containers": {"db": {"schedule": "0 3 * *"}}}', /containers\.db: invalid cron expression "0 3 \* \*": expected 5 or 6 fields, got 4/],
    ['{"containers": {"db": {"schedule": "0 3 * * *", "keep": "dayly=3"}}}', /containers\.db: invalid keep rules .*unknown rule "dayly"/],
    ['{"containers": {"db": {"stop": "yes"}}}', /containers\.db\.stop must be true or false/],
    ['{"volumes": {"v": {"pre": "x"}}}', /volumes\.v: unknown key "pre"/],
    ['{"webhook": "ftp://x"}', /http or https/],
    ['{"webhook": {"url": "http://x", "onFailure": true}}', /webhook: unknown key "onFailure"/],
    ['{"prune": {"schedule": "every day"}}', /prune: invalid cron/],
    ['{"rescanSeconds": -1}', /rescanSeconds must be a number from 1 to 2147483/],
    ['{"hookTimeoutSeconds": 0}', /hookTimeoutSeconds must be a number from 1 to 2147483 \(seconds\)/],
    ['{"hookTimeoutSeconds": 2592000}', /hookTimeoutSeconds must be a number from 1/],
    ['{"lockWaitSeconds": "600"}', /lockWaitSeconds must be a number from 0/],
  ])('refuses %s', (text, re) => usage(() => parseConfig(text, 'cfg.json'), re))

  it('an explicit file must exist; the default may be absent', async () => {
    await expect(loadConfig(path.join(work, 'nope.json'))).rejects.toMatchObject({code: 'USAGE', message: expect.stringMatching(/does not exist/)})
    const saved = {...process.env}
    try {
      delete process.env.HOLYSHIP_SCHEDULE_CONFIG
      process.env.XDG_CONFIG_HOME = path.join(work, 'xdg-empty')
      expect(await loadConfig()).toMatchObject({containers: {}, volumes: {}})
      await fsp.mkdir(path.join(work, 'xdg', 'holyship'), {recursive: true})
      await fsp.writeFile(path.join(work, 'xdg', 'holyship', 'schedule.json'), '{"volumes": {"v": {"schedule": "@daily"}}}')
      process.env.XDG_CONFIG_HOME = path.join(work, 'xdg')
      expect((await loadConfig()).volumes.v.schedule).toBe('@daily')
    } finally {
      process.env = saved
    }
  })

  it('labels: values, stop spellings, bad values', () => {
    expect(labelSettings({'holyship.schedule': '*/2 * * * * *', 'holyship.keep': 'last=3', 'holyship.stop': 'TRUE', 'holyship.pre': 'echo hi', other: 'x'})).toEqual({
      schedule: '*/2 * * * * *',
      keep: 'last=3',
      stop: true,
      pre: 'echo hi',
    })
    expect(labelSettings({'holyship.stop': 'no'})).toEqual({stop: false})
    usage(() => labelSettings({'holyship.stop': 'maybe'}), /holyship\.stop="maybe": expected true or false/)
  })

  it('targets: labels win over the config key by key; bad labels are problems, not crashes', () => {
    const cfg = parseConfig(JSON.stringify({containers: {db: {schedule: '0 3 * * *', keep: 'daily=7', pre: 'dump'}}}))
    const t = containerTarget('db', 'abc', {'holyship.keep': 'last=2'}, cfg)
    expect(t).toMatchObject({key: 'container:db', source: 'label+config', settings: {schedule: '0 3 * * *', keep: 'last=2', pre: 'dump'}, keep: {last: 2}})
    expect(containerTarget('db', undefined, {}, cfg)).toMatchObject({missing: true, source: 'config'})
    expect(containerTarget('web', 'x', {}, cfg)).toBeUndefined()
    expect(containerTarget('web', 'x', {'holyship.schedule': '61 * * * *'}, cfg)).toMatchObject({key: 'container:web', error: expect.stringMatching(/minute: 61/)})
    expect(containerTarget('web', 'x', {'holyship.schedule': '@daily', 'holyship.keep': 'x'}, cfg)).toMatchObject({error: expect.stringMatching(/invalid keep rules/)})
  })
})

describe('forget', () => {
  it('applies the policy per target and host, removes manifests and catalogue rows; dry run changes nothing', async () => {
    const dir = path.join(work, 'repo-forget')
    await fsp.mkdir(dir)
    const repo = await Repository.init(new LocalBackend(dir), {packSize: 64 * 1024})
    const day = 86_400_000
    const t0 = Date.parse('2024-06-30T12:00:00Z')
    const ids: Record<string, string[]> = {a: [], b: []}
    // volume a: one snapshot a day for 6 days with a 10-day gap in the middle; volume b: 2
    for (const [i, off] of [0, 1, 2, 13, 14, 15].entries()) ids.a.push(await writeSnapshot(repo, 'a', {f: content(`a${i}`, 1000)}, {time: new Date(t0 - off * day)}))
    for (const [i, off] of [0, 1].entries()) ids.b.push(await writeSnapshot(repo, 'b', {f: content(`b${i}`, 1000)}, {time: new Date(t0 - off * day)}))
    const catFile = path.join(work, 'forget.sqlite3')
    const dry = await forget({repo: dir, catalogue: catFile, policy: {daily: 4}, dryRun: true, utc: true})
    expect(dry.removed.sort()).toEqual([ids.a[4], ids.a[5]].sort())
    expect(dry.groups.map((g) => [g.name, g.keep.length, g.remove.length])).toEqual([
      ['a', 4, 2],
      ['b', 2, 0],
    ])
    expect((await repo.listSnapshotIds()).length).toBe(8)
    // a missed stretch of days does not make the policy forget the days before it
    expect(dry.groups[0].keep.map((k) => k.id)).toEqual(ids.a.slice(0, 4))

    const r = await forget({repo: dir, catalogue: catFile, policy: {last: 1}, volume: 'a', utc: true})
    expect(r.removed.sort()).toEqual(ids.a.slice(1).sort())
    expect((await repo.listSnapshotIds()).sort()).toEqual([ids.a[0], ...ids.b].sort())
    const ctx = await openContext({repo: dir, catalogue: catFile})
    try {
      expect(ctx.catalogue.snapshotIds(repo.id).sort()).toEqual([ids.a[0], ...ids.b].sort())
    } finally {
      ctx.close()
    }
    await expect(forget({repo: dir, catalogue: catFile, policy: {}})).rejects.toMatchObject({code: 'USAGE', message: expect.stringMatching(/--keep-/)})
    // forget + prune: the forgotten snapshots' data goes
    const p = await forget({repo: dir, catalogue: catFile, policy: {last: 1}, volume: 'b', prune: true, graceMs: 0})
    expect(p.removed).toEqual([ids.b[1]])
    expect(p.prune?.dryRun).toBe(false)
    expect(p.prune?.bytes.freed).toBeGreaterThan(0)
  })
})

describe('metrics and webhook', () => {
  it('renders Prometheus text and serves it on 127.0.0.1', async () => {
    const text = renderMetrics(
      [
        {target: 'container:db', lastSuccessSeconds: 1700000000, lastDurationSeconds: 1.5, lastBytes: 100, lastNewBytes: 10, runs: 3, failures: 1, overruns: 0, running: false},
        {target: 'volume:"odd"', runs: 0, failures: 0, overruns: 0, running: true},
      ],
      {uncovered: 2, startedSeconds: 1699999999},
    )
    expect(text).toContain('# TYPE holyship_last_success_timestamp_seconds gauge')
    expect(text).toContain('holyship_last_success_timestamp_seconds{target="container:db"} 1700000000')
    expect(text).toContain('holyship_failures_total{target="container:db"} 1')
    expect(text).toContain('holyship_running{target="volume:\\"odd\\""} 1')
    expect(text).toContain('holyship_uncovered_mounts 2')
    const server = await startMetricsServer(0, () => text)
    try {
      const res = await fetch(`http://127.0.0.1:${server.port}/metrics`)
      expect(res.status).toBe(200)
      expect(res.headers.get('content-type')).toMatch(/text\/plain; version=0\.0\.4/)
      expect(await res.text()).toBe(text)
      expect((await fetch(`http://127.0.0.1:${server.port}/other`)).status).toBe(404)
    } finally {
      await server.close()
    }
  })

  it('POSTs JSON to the webhook; a dead webhook is an error message, not an exception', async () => {
    const got: {body: unknown; type?: string}[] = []
    const srv = http.createServer((req, res) => {
      let b = ''
      req.on('data', (d) => (b += d))
      req.on('end', () => {
        got.push({body: JSON.parse(b), type: req.headers['content-type']})
        res.writeHead(204).end()
      })
    })
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()))
    const port = (srv.address() as AddressInfo).port
    try {
      const n = notification({event: 'failure', target: 'container:db', container: 'db', durationMs: 12, error: 'pre-hook exited 3'})
      expect(await postWebhook(`http://127.0.0.1:${port}/hook`, n)).toBeUndefined()
      expect(got).toEqual([{body: {...n}, type: 'application/json'}])
      expect(got[0].body).toMatchObject({event: 'failure', container: 'db', host: os.hostname(), error: 'pre-hook exited 3'})
    } finally {
      await new Promise((r) => srv.close(r))
    }
    expect(await postWebhook(`http://127.0.0.1:${port}/hook`, notification({event: 'success', target: 't', durationMs: 1}), 2000)).toMatch(/webhook failed: ECONNREFUSED/)
  })
})
