/**
 * The mission: a container with a volume and a filesystem diff on host A is shipped through
 * S3 (s3rver) and landed on host B, a second engine with no images, no repository and no
 * catalogue; its files compare equal and it runs. A second ship after a small change sends a
 * small fraction. A running Postgres travels the same way and keeps its rows.
 */
import {mkdtempSync, readdirSync, readFileSync, rmSync, statSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {ListObjectsV2Command, S3Client} from '@aws-sdk/client-s3'
import {afterAll, beforeAll, describe, expect, inject, it} from 'vitest'
import {LocalBackend} from '../../src/backend/local.js'
import {RepoLock} from '../../src/repo/lock.js'
import {holyship} from '../harness/cli.js'
import {connectEngine, dockerExec} from '../harness/engine.js'
import {waitForPostgres} from '../harness/images.js'
import {S3RVER_CREDENTIALS, startS3Server, type S3Server} from '../harness/s3.js'
import {compareListings, listPath} from '../harness/tree-listing.js'

describe('ship from host A, land on host B', () => {
  const a = connectEngine(inject('holyshipEngineA'))
  const b = connectEngine(inject('holyshipEngineB'))
  const tag = process.pid.toString(36)
  const name = `web-${tag}`
  const vol = `webdata-${tag}`
  let s3: S3Server
  let work: string
  let envA: Record<string, string>
  let envB: Record<string, string>
  let remote: string

  beforeAll(async () => {
    s3 = await startS3Server()
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-ship-'))
    remote = `s3://${s3.bucket}/fleet`
    const common = {
      AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
      AWS_REGION: 'us-east-1',
      AWS_ENDPOINT_URL_S3: s3.endpoint,
    }
    envA = {...common, DOCKER_HOST: a.dockerHost, HOLYSHIP_REPO: path.join(work, 'a/repo'), HOLYSHIP_CATALOGUE: path.join(work, 'a/cat.sqlite3'), HOLYSHIP_REMOTES: path.join(work, 'a/remotes.json')}
    envB = {...common, DOCKER_HOST: b.dockerHost, HOLYSHIP_REPO: path.join(work, 'b/repo'), HOLYSHIP_CATALOGUE: path.join(work, 'b/cat.sqlite3'), HOLYSHIP_REMOTES: path.join(work, 'b/remotes.json')}
    await a.docker.createVolume({Name: vol})
    const c = await a.docker.createContainer({
      name,
      Image: inject('holyshipBusyboxImage'),
      Cmd: ['sleep', '100000'],
      // PID 1 ignores SIGTERM: a restore --force stops it before replacing it, waiting this long
      StopTimeout: 1,
      Env: ['ROLE=web'],
      HostConfig: {Binds: [`${vol}:/srv`], RestartPolicy: {Name: 'always', MaximumRetryCount: 0}},
    })
    await c.start()
    const r = await dockerExec(a.docker, c.id, [
      'sh',
      '-c',
      'set -e; mkdir -p /srv/www /srv/db; for i in $(seq 1 50); do echo "page $i" > /srv/www/p$i.html; done; dd if=/dev/urandom of=/srv/db/big.bin bs=1M count=24 2>/dev/null; echo conf >> /etc/profile; rm /bin/vi; mkdir -p /opt/web && echo 1.0 > /opt/web/VERSION',
    ])
    expect(r.exitCode).toBe(0)
    expect((await holyship(['init'], envA)).code).toBe(0)
  }, 300_000)

  afterAll(async () => {
    await s3?.stop()
    if (work) rmSync(work, {recursive: true, force: true})
  })

  let firstBytes = 0

  it('ships a container from A and lands it on a brand-new B, where it runs with the same files', async () => {
    const shipped = await holyship(['ship', name, '--to', remote, '--json'], envA)
    expect(shipped.stderr).toBe('')
    expect(shipped.code).toBe(0)
    const res = JSON.parse(shipped.stdout)
    firstBytes = res.push.bytesSent
    expect(res.push.packsSent).toBeGreaterThan(0)
    expect(firstBytes).toBeGreaterThan(24 * 1024 * 1024)

    // B has never seen A's image: land must bring it from the repository
    expect((await b.docker.listImages()).map((i) => i.Id)).not.toContain((await a.docker.getContainer(name).inspect()).Image)
    const landed = await holyship(['land', `latest:${name}`, '--from', remote, '--start', '--json'], envB)
    expect(landed.stderr).toBe('')
    expect(landed.code).toBe(0)
    const l = JSON.parse(landed.stdout)
    expect(l.restore.container.name).toBe(name)
    const cb = await b.docker.getContainer(name).inspect()
    expect(cb.State.Running).toBe(true)
    expect(cb.Config.Env).toContain('ROLE=web')
    expect(cb.HostConfig.RestartPolicy?.Name).toBe('always')
    const ida = (await a.docker.getContainer(name).inspect()).Id
    for (const p of ['/srv', '/opt', '/etc/profile']) {
      expect(compareListings(await listPath(a.docker, ida, p), await listPath(b.docker, cb.Id, p))).toEqual([])
    }
    const vi = await dockerExec(b.docker, cb.Id, ['sh', '-c', 'test -e /bin/vi && echo present || echo absent'])
    expect(vi.stdout.trim()).toBe('absent')
    // B has its own repository now, with A's id, and it verifies
    const v = await holyship(['verify', '--read-data', '--json'], envB)
    expect(v.code).toBe(0)
  })

  it('ships a small change as a small fraction of the first', async () => {
    const ida = (await a.docker.getContainer(name).inspect()).Id
    // scattered writes inside the big file plus a new file
    await dockerExec(a.docker, ida, ['sh', '-c', 'for o in 3 11 19; do dd if=/dev/urandom of=/srv/db/big.bin bs=4096 count=1 seek=$((o*256)) conv=notrunc 2>/dev/null; done; echo new > /srv/www/new.html'])
    const packs = (): Map<string, number> => {
      const dir = path.join(envA.HOLYSHIP_REPO, 'data')
      return new Map(readdirSync(dir, {recursive: true, withFileTypes: true}).filter((e) => e.isFile()).map((e) => [e.name, statSync(path.join(e.parentPath, e.name)).size]))
    }
    const before = packs()
    // a local prune (exclusive lock) holds the ship off: no snapshot is taken under it
    const snapshotsBefore = readdirSync(path.join(envA.HOLYSHIP_REPO, 'snapshots')).length
    const prune = await RepoLock.acquire(new LocalBackend(envA.HOLYSHIP_REPO), {exclusive: true, purpose: 'prune'})
    let shipped = false
    const shipping = holyship(['ship', name, '--to', remote, '--json'], envA).then((r) => {
      shipped = true
      return r
    })
    await new Promise((r) => setTimeout(r, 2000))
    expect(shipped).toBe(false)
    expect(readdirSync(path.join(envA.HOLYSHIP_REPO, 'snapshots'))).toHaveLength(snapshotsBefore)
    await prune.release()
    const again = await shipping
    expect(again.code).toBe(0)
    expect(readdirSync(path.join(envA.HOLYSHIP_REPO, 'locks'))).toEqual([])
    const res = JSON.parse(again.stdout)
    // exactly the packs the new snapshot made travel: the remote had the rest
    const made = [...packs()].filter(([id]) => !before.has(id))
    expect(res.push.packsSent).toBe(made.length)
    expect(res.push.bytesSent).toBe(made.reduce((n, [, size]) => n + size, 0))
    expect(res.push.packsSkipped).toBeGreaterThan(0)
    // a fraction of the first: each 4 KiB write changes the chunks around it, up to 4 MiB each
    // (the chunker's max; where they fall depends on the repository's random chunker seed: 0.3
    // of the first was once exceeded at 8.6 of 26 MB)
    expect(res.push.bytesSent).toBeLessThan(firstBytes * 0.6)
    // and pushing what the remote has sends nothing
    const none = JSON.parse((await holyship(['push', '--to', remote, '--json'], envA)).stdout)
    expect(none.packsSent).toBe(0)
    expect(none.bytesSent).toBe(0)
    // the remote lists both snapshots
    const list = JSON.parse((await holyship(['list', '--remote', remote, '--json'], envB)).stdout)
    expect(list.filter((r: {name: string}) => r.name === name)).toHaveLength(2)
  })

  it('forget --to keeps the remote to its own retention; what it keeps still pulls and restores after prune --to', async () => {
    const ofName = (rows: {name: string; id: string}[]): string[] => rows.filter((r) => r.name === name).map((r) => r.id)
    const remoteRows = async (): Promise<string[]> => ofName(JSON.parse((await holyship(['list', '--remote', remote, '--json'], envB)).stdout))
    const before = await remoteRows()
    expect(before).toHaveLength(2)
    // B's own repository holds what it landed: a remote's forget leaves it alone
    const localBefore = (await holyship(['list', '--json'], envB)).stdout
    expect(ofName(JSON.parse(localBefore)).length).toBeGreaterThan(0)
    const dry = await holyship(['forget', '--to', remote, '--container', name, '--keep-last', '1', '--dry-run', '--prune', '--json'], envB)
    expect(dry.stderr).toBe('')
    const d = JSON.parse(dry.stdout)
    expect([d.dryRun, d.removed.length, d.kept]).toEqual([true, 1, 1])
    expect(d.prune.dryRun).toBe(true)
    expect(await remoteRows()).toEqual(before)
    // from host B, which never made these snapshots: the rules are the remote's, not a host's
    const real = await holyship(['forget', '--to', remote, '--container', name, '--keep-last', '1', '--prune', '--grace', '0', '--json'], envB)
    expect(real.stderr).toBe('')
    expect(real.code).toBe(0)
    const r = JSON.parse(real.stdout)
    expect(r.removed).toEqual(d.removed)
    // (the forgotten snapshot's few own chunks share packs with the kept one: nothing may be deletable)
    expect(r.prune.dryRun).toBe(false)
    expect(r.prune.packs.total).toBeGreaterThan(0)
    const after = await remoteRows()
    expect(after).toHaveLength(1)
    expect(before).toContain(after[0])
    expect(after).not.toContain(r.removed[0])
    expect((await holyship(['list', '--json'], envB)).stdout).toBe(localBefore)
    // the kept snapshot is whole on the remote: a fresh repository pulls it and restores its newest file
    const envC = {...envB, HOLYSHIP_REPO: path.join(work, 'c/repo'), HOLYSHIP_CATALOGUE: path.join(work, 'c/cat.sqlite3'), HOLYSHIP_REMOTES: path.join(work, 'c/remotes.json')}
    const pulled = await holyship(['pull', '--from', remote, after[0], '--json'], envC)
    expect(pulled.stderr).toBe('')
    expect(pulled.code).toBe(0)
    const out = path.join(work, 'c/out')
    const got = await holyship(['restore', after[0], '--path', '/srv/www/new.html', '--target', out], envC)
    expect(got.code).toBe(0)
    expect(readFileSync(path.join(out, 'new.html'), 'utf8')).toBe('new\n')
    // and a place with no repository is one line, its own exit code, and nothing is written there
    const bad = await holyship(['forget', '--to', `s3://${s3.bucket}/nothing-here`, '--keep-last', '1'], envB)
    expect(bad.code).toBe(40)
    expect(bad.stderr.trim().split('\n')).toHaveLength(1)
    expect(bad.stderr).toMatch(/no holyship repository/)
    const listed = await new S3Client({endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: S3RVER_CREDENTIALS}).send(new ListObjectsV2Command({Bucket: s3.bucket, Prefix: 'nothing-here/'}))
    expect(listed.KeyCount ?? 0).toBe(0)
  })

  it('lands a running Postgres on B with the same rows', async () => {
    const pgImage = inject('holyshipPostgresImage')
    expect(pgImage).not.toBe('')
    const pg = `pg-${tag}`
    const c = await a.docker.createContainer({name: pg, Image: pgImage, HostConfig: {Binds: [`pgvol-${tag}:/var/lib/postgresql/data`]}})
    await c.start()
    await waitForPostgres(a.docker, c.id)
    const sql = (id: string, docker = a.docker, q = "select count(*) || ':' || md5(string_agg(id || payload, ',' order by id)) from t") =>
      dockerExec(docker, id, ['psql', '-qAtX', '-v', 'ON_ERROR_STOP=1', '-c', q]).then((r) => {
        if (r.exitCode !== 0) throw new Error(r.stderr)
        return r.stdout.trim()
      })
    await sql(c.id, a.docker, "create table t(id int primary key, payload text); insert into t select i, md5(i::text) from generate_series(1, 50000) i")
    const expected = await sql(c.id)
    const shipped = await holyship(['ship', pg, '--to', remote, '--json'], envA)
    expect(shipped.code).toBe(0)
    const landed = await holyship(['land', `latest:${pg}`, '--from', remote, '--start', '--json'], envB)
    expect(landed.stderr).toBe('')
    expect(landed.code).toBe(0)
    const cb = await b.docker.getContainer(pg).inspect()
    await waitForPostgres(b.docker, cb.Id)
    expect(await sql(cb.Id, b.docker)).toBe(expected)
    expect(expected.startsWith('50000:')).toBe(true)
  }, 600_000)
})
