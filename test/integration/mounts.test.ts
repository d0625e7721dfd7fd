/**
 * Mounts that are not a plain read-write directory, through the CLI on a real engine, with
 * both readers, in a container with a read-only root filesystem and a tmpfs declared with
 * --mount (kept on restore, not dropped with the other --mount entries): a bind-mounted file (named
 * otherwise on the host than in the container), one whose source is a symlink (as
 * /etc/localtime is), one inside a bind of a directory whose source holds it under another
 * name, a read-only bind with a writable volume inside it, a read-only volume and a
 * bind-mounted unix socket. Snapshotted, their
 * sources removed, restored as a new container that runs with them; the file is written back
 * to its host path, and `restore --path` gives it under the container's name. A file that is
 * there with the snapshot's content is left alone; one with other content is refused without
 * --force and written over with it. A bind mount's propagation and SELinux label come back too.
 */
import {spawnSync} from 'node:child_process'
import {chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, promises as fsp, rmSync, statSync, symlinkSync, writeFileSync} from 'node:fs'
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
  const cache = `mounts-cache-${tag}`
  let work: string
  let env: Record<string, string>
  let server: net.Server
  let conf: string
  let roDir: string
  let appDir: string

  const fillSources = (): void => {
    writeFileSync(conf, 'setting=1\n')
    chmodSync(conf, 0o640)
    mkdirSync(roDir, {recursive: true})
    writeFileSync(path.join(roDir, 'x'), 'ro\n')
    // the engine cannot make a mountpoint in a read-only mount (moby#39587): docker run needs it there
    mkdirSync(path.join(roDir, 'cache'))
    mkdirSync(appDir, {recursive: true})
    writeFileSync(path.join(appDir, 'main.js'), 'main\n')
    writeFileSync(path.join(appDir, 'config.prod.json'), '{"prod":true}\n')
  }
  /** what a restore writes back: the directories' sources (the file bind's is the test's to change) */
  const removeDirSources = (): void => {
    rmSync(roDir, {recursive: true, force: true})
    rmSync(appDir, {recursive: true, force: true})
  }

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-mounts-'))
    env = {HOLYSHIP_REPO: path.join(work, 'repo'), HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3'), DOCKER_HOST: info.dockerHost}
    conf = path.join(work, 'app-prod.conf')
    roDir = path.join(work, 'ro')
    appDir = path.join(work, 'app')
    fillSources()
    writeFileSync(path.join(work, 'tz-real'), 'Europe/Zurich\n')
    symlinkSync('tz-real', path.join(work, 'tz-link'))
    server = net.createServer()
    await new Promise<void>((resolve) => server.listen(path.join(work, 'app.sock'), resolve))
    await docker.createVolume({Name: vol})
    writeFileSync(path.join((await docker.getVolume(vol).inspect()).Mountpoint, 'f'), 'vol\n')
    await docker.createVolume({Name: cache})
    writeFileSync(path.join((await docker.getVolume(cache).inspect()).Mountpoint, 'c'), 'cache\n')
    const c = await docker.createContainer({
      name,
      Image: inject('holyshipBusyboxImage'),
      Cmd: ['sleep', '100000'],
      HostConfig: {
        ReadonlyRootfs: true,
        // declared with --mount (compose's `type: tmpfs`): no data, but the container expects it
        Mounts: [{Type: 'tmpfs', Target: '/scratch', TmpfsOptions: {SizeBytes: 1 << 20}}] as never,
        Binds: [
          `${conf}:/etc/app.conf`,
          `${path.join(work, 'tz-link')}:/etc/tz:ro`,
          `${appDir}:/app`,
          `${path.join(appDir, 'config.prod.json')}:/app/config.json:ro`,
          `${roDir}:/ro:ro`,
          // a writable volume inside the read-only bind: its mountpoint must be in the bind's source
          `${cache}:/ro/cache`,
          `${vol}:/rovol:ro`,
          `${path.join(work, 'app.sock')}:/run/app.sock`,
        ],
      },
    })
    await c.start()
    expect((await holyship(['init'], env)).code).toBe(0)
  })

  afterAll(async () => {
    for (const c of [name, `${name}-copy`]) await docker.getContainer(c).remove({force: true}).catch(() => {})
    for (const v of [vol, `copy-${vol}`, cache, `copy-${cache}`]) await docker.getVolume(v).remove().catch(() => {})
    server?.close()
    rmSync(work, {recursive: true, force: true})
  })

  const check = async (container: string): Promise<void> => {
    const e = await dockerExec(docker, container, ['sh', '-c', 'cat /etc/app.conf /etc/tz /app/main.js /app/config.json /ro/x /ro/cache/c /rovol/f && test -S /run/app.sock && echo socket && grep -o " /scratch tmpfs" /proc/mounts'])
    expect(e.stderr).toBe('')
    expect(e.stdout).toBe('setting=1\nEurope/Zurich\nmain\n{"prod":true}\nro\ncache\nvol\nsocket\n /scratch tmpfs\n')
  }

  it('snapshots them, and a restore where their sources are gone writes them back and runs', async () => {
    const s = await holyship(['snapshot', name, '--reader', reader, '--json'], env)
    expect(s.stderr).toBe('')
    expect(s.code).toBe(0)
    const show = JSON.parse((await holyship(['show', 'latest', '--json'], env)).stdout)
    const kinds = Object.fromEntries(show.mounts.map((m: {destination: string; file?: boolean}) => [m.destination, m.file === true]))
    expect(kinds).toEqual({'/etc/app.conf': true, '/etc/tz': true, '/app': false, '/app/config.json': true, '/ro': false, '/ro/cache': false, '/rovol': false, '/run/app.sock': true})
    await docker.getContainer(name).remove({force: true})
    rmSync(conf)
    removeDirSources()
    const r = await holyship(['restore', 'latest', '--name', `${name}-copy`, '--volume-prefix', 'copy-', '--start', '--json'], env)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    await check(`${name}-copy`)
    // the file is back at its host path, a file (not the directory a missing bind source becomes), with its mode
    expect(statSync(conf).isFile()).toBe(true)
    expect(statSync(conf).mode & 0o777).toBe(0o640)
    // the symlinked source was left as it was: it leads to the snapshot's content
    expect(lstatSync(path.join(work, 'tz-link')).isSymbolicLink()).toBe(true)
    // the file bound inside /app is not copied into /app's own source: there the engine made
    // an empty mountpoint, as on the first start (the api reader's archive of /app held its content)
    expect((await fsp.readdir(appDir)).sort()).toEqual(['config.json', 'config.prod.json', 'main.js'])
    expect(statSync(path.join(appDir, 'config.json')).size).toBe(0)
    // nor the volume inside the read-only bind into the bind's source: only its mountpoint is there
    expect(await fsp.readdir(path.join(roDir, 'cache'))).toEqual([])
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

  it("a file with the snapshot's content at the source is left alone; one of other content is refused without --force, and written over with it", async () => {
    const again = async (...extra: string[]): Promise<{code: number; stderr: string}> => {
      await docker.getContainer(`${name}-copy`).remove({force: true}).catch(() => {})
      await docker.getVolume(`copy-${vol}`).remove().catch(() => {})
      await docker.getVolume(`copy-${cache}`).remove().catch(() => {})
      removeDirSources()
      return holyship(['restore', 'latest', '--name', `${name}-copy`, '--volume-prefix', 'copy-', '--start', ...extra], env)
    }
    const before = statSync(conf)
    const same = await again()
    expect(same.stderr).toBe('')
    expect(same.code).toBe(0)
    expect(statSync(conf).ino).toBe(before.ino)
    writeFileSync(conf, 'edited on the host\n')
    const refused = await again()
    expect(refused.code).toBe(25)
    expect(refused.stderr).toMatch(/^holyship: error: the source .*app-prod\.conf of the bind-mounted file \/etc\/app\.conf on .* holds other content than the snapshot's/)
    expect(await fsp.readFile(conf, 'utf8')).toBe('edited on the host\n')
    expect(await docker.getContainer(`${name}-copy`).inspect().then(() => true, () => false)).toBe(false)
    // nor a helper container (of this test: other files' may run at the same time), nor a volume, nor a directory source
    const helpers = await docker.listContainers({all: true, filters: {label: ['holyship.helper=true']}})
    expect(helpers.filter((h) => h.Mounts.some((m) => (m.Source ?? '').startsWith(work)))).toEqual([])
    expect(await docker.getVolume(`copy-${vol}`).inspect().then(() => true, () => false)).toBe(false)
    expect(existsSync(roDir)).toBe(false)
    const forced = await again('--force')
    expect(forced.stderr).toBe('')
    expect(forced.code).toBe(0)
    expect(await fsp.readFile(conf, 'utf8')).toBe('setting=1\n')
    await check(`${name}-copy`)
  })
})

describe('bind mount propagation and SELinux labels', () => {
  const info = inject('holyshipEngineA')
  const docker = connectEngine(info).docker
  const name = `propagation-${process.pid}`
  let work: string
  let shared: string
  let env: Record<string, string>

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-propagation-'))
    env = {HOLYSHIP_REPO: path.join(work, 'repo'), HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3'), DOCKER_HOST: info.dockerHost}
    // rshared and rslave need a source on a shared mount: this host's / is private
    shared = path.join(work, 'shared')
    mkdirSync(path.join(shared, 'sub'), {recursive: true})
    for (const args of [['--bind', shared, shared], ['--make-rshared', shared]]) expect(spawnSync('mount', args).status).toBe(0)
    mkdirSync(path.join(work, 'label'))
    writeFileSync(path.join(work, 'label', 'f'), 'x\n')
    const c = await docker.createContainer({
      name,
      Image: inject('holyshipBusyboxImage'),
      Cmd: ['sleep', '100000'],
      HostConfig: {
        Binds: [`${shared}:/shared:rshared`, `${path.join(work, 'label')}:/label:ro,z`],
        Mounts: [{Type: 'bind', Source: path.join(shared, 'sub'), Target: '/slave', BindOptions: {Propagation: 'rslave'}}] as never,
      },
    })
    await c.start()
    expect((await holyship(['init'], env)).code).toBe(0)
  })

  afterAll(async () => {
    await docker.getContainer(name).remove({force: true}).catch(() => {})
    spawnSync('umount', ['-l', shared])
    rmSync(work, {recursive: true, force: true})
  })

  it('a restored container has them as the original had', async () => {
    const modes = async (): Promise<Record<string, [string, string, boolean]>> =>
      Object.fromEntries((await docker.getContainer(name).inspect()).Mounts.map((m) => [m.Destination, [m.Propagation, m.Mode, m.RW]]))
    const before = await modes()
    expect(before['/shared'][0]).toBe('rshared')
    expect(before['/slave'][0]).toBe('rslave')
    expect(before['/label'][1]).toMatch(/z/)
    expect((await holyship(['snapshot', name], env)).code).toBe(0)
    await docker.getContainer(name).remove({force: true})
    // the sources are there as they were: written over with the same files
    const r = await holyship(['restore', 'latest', '--start', '--force'], env)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const after = await modes()
    expect(Object.fromEntries(Object.entries(after).map(([k, v]) => [k, [v[0], v[1].includes('z'), v[2]]]))).toEqual(
      Object.fromEntries(Object.entries(before).map(([k, v]) => [k, [v[0], v[1].includes('z'), v[2]]])),
    )
  })
})
