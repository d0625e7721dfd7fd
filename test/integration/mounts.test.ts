/**
 * Mounts that are not a plain read-write directory, through the CLI on a real engine, with
 * both readers: a bind-mounted file (named otherwise on the host than in the container), a
 * read-only bind, a read-only volume and a bind-mounted unix socket. Snapshotted, their
 * sources removed, restored as a new container that runs with them; the file is written back
 * to its host path, and `restore --path` gives it under the container's name. A file that is
 * there with other content is refused without --force and written over with it.
 */
import {mkdirSync, mkdtempSync, promises as fsp, rmSync, statSync, writeFileSync, chmodSync} from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'
import {afterAll, beforeAll, describe, expect, inject, it} from 'vitest'
import {holyship} from '../harness/cli.js'
import {connectEngine, dockerExec} from '../harness/engine.js'

describe.each(['direct', 'api'] as const)('bind-mounted files, sockets and read-only mounts (%s reader)', (reader) => {
  const info = inject('holyshipEngineA')
  const docker = connectEngine(info).docker
  const tag = `${reader}-${process.pid}`
  const name = `mounts-${tag}`
  const vol = `mounts-vol-${tag}`
  let work: string
  let env: Record<string, string>
  let server: net.Server
  let conf: string
  let roDir: string

  const fillSources = (): void => {
    writeFileSync(conf, 'setting=1\n')
    chmodSync(conf, 0o640)
    mkdirSync(roDir, {recursive: true})
    writeFileSync(path.join(roDir, 'x'), 'ro\n')
  }

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-mounts-'))
    env = {HOLYSHIP_REPO: path.join(work, 'repo'), HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3'), DOCKER_HOST: info.dockerHost}
    conf = path.join(work, 'app-prod.conf')
    roDir = path.join(work, 'ro')
    fillSources()
    server = net.createServer()
    await new Promise<void>((resolve) => server.listen(path.join(work, 'app.sock'), resolve))
    await docker.createVolume({Name: vol})
    writeFileSync(path.join((await docker.getVolume(vol).inspect()).Mountpoint, 'f'), 'vol\n')
    const c = await docker.createContainer({
      name,
      Image: inject('holyshipBusyboxImage'),
      Cmd: ['sleep', '100000'],
      HostConfig: {Binds: [`${conf}:/etc/app.conf`, `${roDir}:/ro:ro`, `${vol}:/rovol:ro`, `${path.join(work, 'app.sock')}:/run/app.sock`]},
    })
    await c.start()
    expect((await holyship(['init'], env)).code).toBe(0)
  })

  afterAll(async () => {
    for (const c of [name, `${name}-copy`]) await docker.getContainer(c).remove({force: true}).catch(() => {})
    for (const v of [vol, `copy-${vol}`]) await docker.getVolume(v).remove().catch(() => {})
    server?.close()
    rmSync(work, {recursive: true, force: true})
  })

  const check = async (container: string): Promise<void> => {
    const e = await dockerExec(docker, container, ['sh', '-c', 'cat /etc/app.conf /ro/x /rovol/f && test -S /run/app.sock && echo socket'])
    expect(e.stderr).toBe('')
    expect(e.stdout).toBe('setting=1\nro\nvol\nsocket\n')
  }

  it('snapshots them, and a restore where their sources are gone writes them back and runs', async () => {
    const s = await holyship(['snapshot', name, '--reader', reader, '--json'], env)
    expect(s.stderr).toBe('')
    expect(s.code).toBe(0)
    const show = JSON.parse((await holyship(['show', 'latest', '--json'], env)).stdout)
    const kinds = Object.fromEntries(show.mounts.map((m: {destination: string; file?: boolean}) => [m.destination, m.file === true]))
    expect(kinds).toEqual({'/etc/app.conf': true, '/ro': false, '/rovol': false, '/run/app.sock': true})
    await docker.getContainer(name).remove({force: true})
    rmSync(conf)
    rmSync(roDir, {recursive: true})
    const r = await holyship(['restore', 'latest', '--name', `${name}-copy`, '--volume-prefix', 'copy-', '--start', '--json'], env)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    await check(`${name}-copy`)
    // the file is back at its host path, a file (not the directory a missing bind source becomes), with its mode
    expect(statSync(conf).isFile()).toBe(true)
    expect(statSync(conf).mode & 0o777).toBe(0o640)
  })

  it('restore --path of the file gives it under the name the container sees', async () => {
    const out = path.join(work, 'out')
    const p = await holyship(['restore', 'latest', '--path', '/etc/app.conf', '--target', out], env)
    expect(p.stderr).toBe('')
    expect(p.code).toBe(0)
    expect(await fsp.readdir(out)).toEqual(['app.conf'])
    expect(await fsp.readFile(path.join(out, 'app.conf'), 'utf8')).toBe('setting=1\n')
    // there now: refused without --force
    expect((await holyship(['restore', 'latest', '--path', '/etc/app.conf', '--target', out], env)).code).toBe(25)
    rmSync(out, {recursive: true})
  })

  it('a file of other content at the source is refused without --force, and written over with it', async () => {
    await docker.getContainer(`${name}-copy`).remove({force: true})
    await docker.getVolume(`copy-${vol}`).remove()
    writeFileSync(conf, 'edited on the host\n')
    // the read-only bind's directory holds its files again: emptied, so only the file is in the way
    rmSync(roDir, {recursive: true})
    const refused = await holyship(['restore', 'latest', '--name', `${name}-copy`, '--volume-prefix', 'copy-', '--start'], env)
    expect(refused.code).toBe(25)
    expect(refused.stderr).toMatch(/^holyship: error: the source .*app-prod\.conf of the bind-mounted file \/etc\/app\.conf on .* holds other content than the snapshot's/)
    expect(await fsp.readFile(conf, 'utf8')).toBe('edited on the host\n')
    expect(await docker.getContainer(`${name}-copy`).inspect().then(() => true, () => false)).toBe(false)
    // nor a helper container (of this test: other files' may run at the same time), nor a volume
    const helpers = await docker.listContainers({all: true, filters: {label: ['holyship.helper=true']}})
    expect(helpers.filter((h) => h.Mounts.some((m) => (m.Source ?? '').startsWith(work)))).toEqual([])
    expect(await docker.getVolume(`copy-${vol}`).inspect().then(() => true, () => false)).toBe(false)
    const forced = await holyship(['restore', 'latest', '--name', `${name}-copy`, '--volume-prefix', 'copy-', '--force', '--start'], env)
    expect(forced.stderr).toBe('')
    expect(forced.code).toBe(0)
    expect(await fsp.readFile(conf, 'utf8')).toBe('setting=1\n')
    await check(`${name}-copy`)
  })
})
