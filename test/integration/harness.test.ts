/**
 * Smoke test of the integration harness: two private engines that are not the machine's Docker,
 * the busybox image in A, and the postgres image.
 */
import {mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {describe, expect, inject, it} from 'vitest'
import {connectEngine, dockerExec, dockerRun} from '../harness/engine.js'
import {POSTGRES_IMAGE, ensurePostgresImage, waitForPostgres} from '../harness/images.js'

const a = connectEngine(inject('holyshipEngineA'))
const b = connectEngine(inject('holyshipEngineB'))
const busybox = inject('holyshipBusyboxImage')

describe('integration harness', () => {
  it('runs a busybox container on engine A', async () => {
    const r = await dockerRun(a.docker, busybox, ['sh', '-c', 'echo "hello from $(hostname)" > /tmp/f && cat /tmp/f'])
    expect(r.exitCode).toBe(0)
    expect(r.stdout).toMatch(/^hello from [0-9a-f]{12}\n$/)
  })

  it('has two distinct private engines', async () => {
    const [infoA, infoB] = await Promise.all([a.docker.info(), b.docker.info()])
    expect(infoA.ID).toBeTruthy()
    expect(infoA.ID).not.toBe(infoB.ID)
    expect(infoA.DockerRootDir).toBe(a.dataRoot)
    expect(infoB.DockerRootDir).toBe(b.dataRoot)
    // B starts with no images (other test files may have landed some on it since)
    expect((await b.docker.listImages()).map((i) => i.RepoTags).flat()).not.toContain(busybox)
    expect((await a.docker.listImages()).map((i) => i.RepoTags).flat()).toContain(busybox)
    for (const e of [a, b]) {
      expect(e.socketPath).not.toMatch(/^\/(var\/)?run\/docker\.sock$/)
      expect(e.dockerHost).toBe(`unix://${e.socketPath}`)
    }
    expect(a.socketPath).not.toBe(b.socketPath)
    expect(a.netns).not.toBe(b.netns)
    expect(process.env.HOLYSHIP_TEST_DOCKER_HOST_A).toBe(a.dockerHost)
    expect(process.env.HOLYSHIP_TEST_DOCKER_HOST_B).toBe(b.dockerHost)
    expect(inject('holyshipDockerHostA')).toBe(a.dockerHost)
    expect(inject('holyshipDockerHostB')).toBe(b.dockerHost)
  })

  it('gives each engine its own network namespace', async () => {
    // the same default bridge subnet on both: only possible because they do not share a netns
    const [netA, netB] = await Promise.all([a.docker.getNetwork('bridge').inspect(), b.docker.getNetwork('bridge').inspect()])
    expect(netA.IPAM?.Config?.[0]?.Subnet).toBeTruthy()
    expect(netA.IPAM?.Config?.[0]?.Subnet).toBe(netB.IPAM?.Config?.[0]?.Subnet)
  })

  describe('postgres image', () => {
    it('starts, initdb-s its volume and answers psql', async () => {
      const image = await ensurePostgresImage(a, POSTGRES_IMAGE)
      expect(image).toMatch(/^sha256:/)
      const c = await a.docker.createContainer({Image: POSTGRES_IMAGE, HostConfig: {Binds: ['hs-pgdata:/var/lib/postgresql/data']}})
      try {
        await c.start()
        await waitForPostgres(a.docker, c.id)
        const r = await dockerExec(a.docker, c.id, ['psql', '-qAtX', '-c', 'select 1'])
        expect(r).toMatchObject({exitCode: 0, stdout: '1\n'})
        const who = await dockerExec(a.docker, c.id, ['psql', '-qAtX', '-c', 'show listen_addresses'])
        expect(who.stdout.trim()).toBe('*')
        // restart on the same volume: no second initdb
        await c.stop()
        await c.start()
        await waitForPostgres(a.docker, c.id)
        const logs = String(await c.logs({stdout: true, stderr: true}))
        expect(logs.match(/initialising a new cluster/g)).toHaveLength(1)
      } finally {
        await c.remove({force: true, v: true})
        await a.docker.getVolume('hs-pgdata').remove().catch(() => {})
      }
    })

    it('started as root on a root-owned bind mount, drops to postgres', async () => {
      await ensurePostgresImage(a, POSTGRES_IMAGE)
      const dir = await mkdtemp(join(tmpdir(), 'holyship-pgbind-'))
      const c = await a.docker.createContainer({Image: POSTGRES_IMAGE, User: 'root', HostConfig: {Binds: [`${dir}:/var/lib/postgresql/data`]}})
      try {
        await c.start()
        await waitForPostgres(a.docker, c.id)
        const r = await dockerExec(a.docker, c.id, ['psql', '-qAtX', '-U', 'postgres', '-c', 'select current_user'], {user: 'postgres'})
        expect(r).toMatchObject({exitCode: 0, stdout: 'postgres\n'})
        const top = await dockerExec(a.docker, c.id, ['sh', '-c', 'stat -c %U /proc/1 "$PGDATA/PG_VERSION"'])
        expect(top.stdout.split('\n').filter(Boolean)).toEqual(['postgres', 'postgres'])
        const other = await dockerRun(a.docker, POSTGRES_IMAGE, ['psql', '--version'])
        expect(other).toMatchObject({exitCode: 0})
        expect(other.stdout).toMatch(/^psql \(PostgreSQL\) 15\./)
      } finally {
        await c.remove({force: true, v: true})
        await rm(dir, {recursive: true, force: true})
      }
    })
  })
})
