/**
 * The realistic tier: a Postgres container with rows, written to while it is snapshotted
 * (paused for one point in time), destroyed, restored and started again; the rows (count and
 * checksum) must be equal. The image is built once per machine with debootstrap (~1 min).
 */
import {mkdtempSync, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {afterAll, beforeAll, describe, expect, inject, it} from 'vitest'
import {LocalBackend} from '../../src/backend/local.js'
import {Catalogue} from '../../src/catalogue/catalogue.js'
import {Engine} from '../../src/docker/engine.js'
import {Repository} from '../../src/repo/repository.js'
import {resolveSnapshot} from '../../src/services/inspect.js'
import {restore} from '../../src/services/restore.js'
import {snapshot} from '../../src/services/snapshot.js'
import {connectEngine, dockerExec} from '../harness/engine.js'
import {ensurePostgresImage, waitForPostgres} from '../harness/images.js'

const CHECKSUM = "select count(*) || ':' || md5(string_agg(id || ',' || payload, ';' order by id)) from items"

describe('a running Postgres container', () => {
  const info = inject('holyshipEngineA')
  const client = connectEngine(info)
  const docker = client.docker
  const engine = new Engine(info.dockerHost)
  const name = `pg-${process.pid}`
  const vol = `pgdata-${process.pid}`
  let work: string
  let repo: Repository
  let catalogue: Catalogue

  const psql = async (containerId: string, sql: string): Promise<string> => {
    const r = await dockerExec(docker, containerId, ['psql', '-qAtX', '-v', 'ON_ERROR_STOP=1', '-c', sql])
    if (r.exitCode !== 0) throw new Error(`psql failed: ${r.stderr}`)
    return r.stdout.trim()
  }

  beforeAll(async () => {
    const image = await ensurePostgresImage(client)
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-pg-'))
    repo = await Repository.init(new LocalBackend(path.join(work, 'repo')))
    catalogue = Catalogue.open(path.join(work, 'catalogue.sqlite3'))
    repo.treeCache = catalogue
    const c = await docker.createContainer({name, Image: image, HostConfig: {Binds: [`${vol}:/var/lib/postgresql/data`]}})
    await c.start()
    await waitForPostgres(docker, c.id)
  }, 600_000)

  afterAll(async () => {
    await docker.getContainer(name).remove({force: true}).catch(() => {})
    await docker.getVolume(vol).remove().catch(() => {})
    catalogue?.close()
    if (work) rmSync(work, {recursive: true, force: true})
  })

  it('snapshots it while it runs and is written to, and restores the same rows', async () => {
    const c = await docker.getContainer(name).inspect()
    await psql(c.Id, "create table items(id serial primary key, payload text); insert into items(payload) select md5(i::text) from generate_series(1, 20000) i")
    // keep writing while the snapshot runs: what is committed before the pause must be there
    const writer = dockerExec(docker, c.Id, ['sh', '-c', "for i in $(seq 1 200); do psql -qAtX -c \"insert into items(payload) values ('live $i')\" || exit 1; done"])
    await new Promise((r) => setTimeout(r, 300))
    const [snap] = await snapshot({repo, catalogue, engine, containers: [name]})
    await writer
    const state = (await docker.getContainer(name).inspect()).State
    expect(state.Running && !state.Paused).toBe(true)
    expect(snap.bytes).toBeGreaterThan(20_000_000)

    // what the database had at the snapshot: restore it beside the original first
    await docker.getContainer(name).remove({force: true})
    await docker.getVolume(vol).remove()
    const {id, manifest} = resolveSnapshot({repo, catalogue, close() {}}, `latest:${name}`)
    const r = await restore({repo, engine, snapshotId: id, manifest, start: true})
    await waitForPostgres(docker, r.container!.id)
    const restored = await psql(r.container!.id, CHECKSUM)
    const [count] = restored.split(':').map(Number)
    // 20,000 rows plus the live inserts committed before the pause, a consistent prefix of them
    expect(count).toBeGreaterThanOrEqual(20_000)
    const live = await psql(r.container!.id, "select count(*) from items where payload like 'live %'")
    const maxLive = await psql(r.container!.id, "select coalesce(max(substr(payload, 6)::int), 0) from items where payload like 'live %'")
    expect(Number(live)).toBe(Number(maxLive))
    expect(count).toBe(20_000 + Number(live))

    // and a second round trip of the now quiet database is exact
    const expected = await psql(r.container!.id, CHECKSUM)
    const [snap2] = await snapshot({repo, catalogue, engine, containers: [name]})
    expect(snap2.newBytes).toBeLessThan(snap.newBytes / 2)
    await docker.getContainer(name).remove({force: true})
    await docker.getVolume(vol).remove()
    const again = resolveSnapshot({repo, catalogue, close() {}}, snap2.id)
    const r2 = await restore({repo, engine, snapshotId: again.id, manifest: again.manifest, start: true})
    await waitForPostgres(docker, r2.container!.id)
    expect(await psql(r2.container!.id, CHECKSUM)).toBe(expected)
    const ci = await docker.getContainer(name).inspect()
    expect(ci.Config.User).toBe('postgres')
  })
})
