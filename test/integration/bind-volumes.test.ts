/**
 * A volume "at" a host directory, as compose makes one with
 * `driver_opts: {type: none, o: bind, device: /srv/app-data}`: the local driver mounts the
 * directory on the volume's Mountpoint only while a container uses it. A stopped container's
 * volume, read at its Mountpoint, looked empty: the snapshot recorded no files, and
 * succeeded. Both readers must record the files; a restore must not write into the directory
 * another volume (the original, when restoring beside it with --volume-prefix) keeps its files
 * in, must make it on a host that lacks it, and a rollback with --force must leave the
 * directory as the snapshot had it, not the snapshot's files mixed with today's; one that
 * fails after that must leave today's files and the volume as they were.
 */
import {existsSync, mkdirSync, mkdtempSync, promises as fsp, readFileSync, rmSync, writeFileSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {afterAll, beforeAll, describe, expect, inject, it} from 'vitest'
import {holyship} from '../harness/cli.js'
import {connectEngine, dockerExec, imageIds, removeImagesSince} from '../harness/engine.js'
import {failingRestore} from '../harness/restore.js'

describe.each(['direct', 'api'] as const)('a volume that binds a host directory (%s reader)', (reader) => {
  const infoA = inject('holyshipEngineA')
  const infoB = inject('holyshipEngineB')
  const a = connectEngine(infoA).docker
  const b = connectEngine(infoB).docker
  const tag = `${reader}-${process.pid}`
  const app = `bindvol-${tag}`
  const vol = `bindvol-data-${tag}`
  let work: string
  let dir: string
  let env: Record<string, string>
  const onB = (): Record<string, string> => ({...env, DOCKER_HOST: infoB.dockerHost})
  const listing = async (d: string): Promise<Record<string, string>> => {
    const out: Record<string, string> = {}
    for (const e of (await fsp.readdir(d, {recursive: true, withFileTypes: true})).filter((x) => x.isFile())) {
      const p = path.join(e.parentPath, e.name)
      out[path.relative(d, p)] = readFileSync(p, 'utf8')
    }
    return out
  }

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-bindvol-'))
    env = {HOLYSHIP_REPO: path.join(work, 'repo'), HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3'), DOCKER_HOST: infoA.dockerHost}
    imagesOfB = await imageIds(b)
    dir = path.join(work, 'srv-data')
    mkdirSync(path.join(dir, 'base'), {recursive: true})
    writeFileSync(path.join(dir, 'PG_VERSION'), '15\n')
    writeFileSync(path.join(dir, 'base', '1'), 'relation\n')
    await a.createVolume({Name: vol, DriverOpts: {type: 'none', o: 'bind', device: dir}})
    const c = await a.createContainer({name: app, Image: inject('holyshipBusyboxImage'), Cmd: ['sleep', '100000'], StopTimeout: 1, HostConfig: {Binds: [`${vol}:/var/lib/data`]}})
    await c.start()
    expect((await dockerExec(a, c.id, ['cat', '/var/lib/data/PG_VERSION'])).stdout).toBe('15\n')
    // stopped: the engine has unmounted the directory from the volume's Mountpoint
    await c.stop({t: 0})
    expect((await holyship(['init'], env)).code).toBe(0)
  })

  /** restore --force of the latest snapshot of `name` that fails at start, once what it replaces is gone and the mounts are filled */
  const failing = (name: string, host = infoA.dockerHost): Promise<Error | undefined> => failingRestore(env, host, name, 'cmd')
  let imagesOfB: Set<string>

  afterAll(async () => {
    for (const d of [a, b]) {
      for (const c of [app, `${app}-copy`, `${app}-other`]) await d.getContainer(c).remove({force: true}).catch(() => {})
      for (const v of [vol, `copy-${vol}`]) await d.getVolume(v).remove().catch(() => {})
    }
    await removeImagesSince(b, imagesOfB)
    rmSync(work, {recursive: true, force: true})
  })

  it("records the directory's files, of the stopped container and of the volume alone", async () => {
    const s = await holyship(['snapshot', app, '--reader', reader, '--json'], env)
    expect(s.stderr).toBe('')
    expect(s.code).toBe(0)
    expect(JSON.parse(s.stdout)[0].files).toBe(2)
    const v = await holyship(['snapshot', '--volume', vol, '--reader', reader, '--json'], env)
    expect(v.stderr).toBe('')
    expect(JSON.parse(v.stdout)[0].files).toBe(2)
    const out = path.join(work, 'out')
    expect((await holyship(['restore', `latest:${app}`, '--path', '/var/lib/data', '--target', out], env)).code).toBe(0)
    expect(await listing(out)).toEqual({PG_VERSION: '15\n', 'base/1': 'relation\n'})
    rmSync(out, {recursive: true})
  })

  it('a restore beside the original does not write into its directory, even with --force', async () => {
    const before = await listing(dir)
    writeFileSync(path.join(dir, 'PG_VERSION'), '16\n')
    for (const extra of [[], ['--force']]) {
      const r = await holyship(['restore', `latest:${app}`, '--name', `${app}-copy`, '--volume-prefix', 'copy-', ...extra], env)
      expect(r.code).toBe(25)
      expect(r.stderr).toMatch(new RegExp(`^holyship: error: volume copy-${vol} keeps its files in ${dir} on .*, as volume ${vol} there does \\(`))
    }
    expect(await listing(dir)).toEqual({...before, PG_VERSION: '16\n'})
    expect(await a.getVolume(`copy-${vol}`).inspect().then(() => true, () => false)).toBe(false)
    expect(await a.getContainer(`${app}-copy`).inspect().then(() => true, () => false)).toBe(false)
    writeFileSync(path.join(dir, 'PG_VERSION'), '15\n')
  })

  it('on a host that lacks the directory, makes it and fills it; one that holds files there is refused', async () => {
    // host B shares this filesystem: the original's directory moved away stands for another host's disk
    const kept = `${dir}.a`
    await fsp.rename(dir, kept)
    try {
      const r = await holyship(['restore', `latest:${app}`, '--start'], onB())
      expect(r.stderr).toBe('')
      expect(r.code).toBe(0)
      expect((await dockerExec(b, app, ['cat', '/var/lib/data/PG_VERSION', '/var/lib/data/base/1'])).stdout).toBe('15\nrelation\n')
      expect(await listing(dir)).toEqual({PG_VERSION: '15\n', 'base/1': 'relation\n'})
      await b.getContainer(app).remove({force: true})
      await b.getVolume(vol).remove()
      // left there: the volume is gone, its files are not, and no volume of B's keeps them
      for (const extra of [[], ['--force']]) {
        const again = await holyship(['restore', `latest:${app}`, ...extra], onB())
        expect(again.code).toBe(25)
        expect(again.stderr).toMatch(new RegExp(`^holyship: error: volume ${vol} keeps its files in ${dir} on .*, which is not empty \\(it holds "(PG_VERSION|base)"\\)`))
      }
      expect(await b.getVolume(vol).inspect().then(() => true, () => false)).toBe(false)
      // one that fails once it has filled the directory it made leaves it empty again
      rmSync(dir, {recursive: true})
      expect((await failing(app, infoB.dockerHost))?.message).toMatch(/no such command|no such file/i)
      expect(await fsp.readdir(dir)).toEqual([])
      expect(await b.getVolume(vol).inspect().then(() => true, () => false)).toBe(false)
      expect(await b.getContainer(app).inspect().then(() => true, () => false)).toBe(false)
    } finally {
      rmSync(dir, {recursive: true, force: true})
      await fsp.rename(kept, dir)
    }
  })

  it('a rollback with --force leaves the directory as the snapshot had it, and keeps what it replaced', async () => {
    writeFileSync(path.join(dir, 'PG_VERSION'), '16\n')
    writeFileSync(path.join(dir, 'base', '2'), 'new relation\n')
    const r = await holyship(['restore', `latest:${app}`, '--force', '--json'], env)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const replaced = JSON.parse(r.stdout).replaced as {id: string}[]
    expect(replaced).toHaveLength(1)
    expect(await listing(dir)).toEqual({PG_VERSION: '15\n', 'base/1': 'relation\n'})
    const info = await a.getVolume(vol).inspect()
    expect(info.Options).toEqual({type: 'none', o: 'bind', device: dir})
    // what it replaced, today's files, is in the kept snapshot
    const out = path.join(work, 'kept')
    expect((await holyship(['restore', replaced[0].id, '--path', '/var/lib/data', '--target', out], env)).code).toBe(0)
    expect(await listing(out)).toEqual({PG_VERSION: '16\n', 'base/1': 'relation\n', 'base/2': 'new relation\n'})
    expect(existsSync(path.join(dir, 'base', '2'))).toBe(false)
  })

  it("one that fails after it replaced them leaves today's files and the volume as they were, and runs the container again", async () => {
    await a.getContainer(app).start()
    writeFileSync(path.join(dir, 'PG_VERSION'), '17\n')
    const today = await listing(dir)
    const e = await failing(app)
    expect(e?.message).toMatch(/no such (command|file).*; what it replaced was put back as it was \(from snapshot [0-9a-f]{12}\)$/i)
    expect(await listing(dir)).toEqual(today)
    expect((await fsp.readdir(dir)).filter((n) => n.startsWith('.holyship'))).toEqual([])
    expect((await a.getVolume(vol).inspect()).Options).toEqual({type: 'none', o: 'bind', device: dir})
    expect((await a.getContainer(app).inspect()).State.Running).toBe(true)
    expect((await dockerExec(a, app, ['cat', '/var/lib/data/PG_VERSION'])).stdout).toBe('17\n')
  })

  it('with --force, refuses while another container has a bind mount inside the directory', async () => {
    const other = await a.createContainer({name: `${app}-other`, Image: inject('holyshipBusyboxImage'), Cmd: ['sleep', '100000'], StopTimeout: 1, HostConfig: {Binds: [`${path.join(dir, 'base')}:/base`]}})
    const today = await listing(dir)
    const r = await holyship(['restore', `latest:${app}`, '--force'], env)
    expect(r.code).toBe(25)
    expect(r.stderr).toMatch(new RegExp(`^holyship: error: volume ${vol} keeps its files in ${dir} on .*: container ${app}-other has a bind mount of ${dir}/base, in or around it`))
    expect(await listing(dir)).toEqual(today)
    expect((await a.getContainer(app).inspect()).State.Running).toBe(true)
    await other.remove({force: true})
  })

  it('a snapshot of the volume alone, restored with --force, leaves the directory as it had it', async () => {
    await a.getContainer(app).remove({force: true})
    writeFileSync(path.join(dir, 'stray'), 'x\n')
    const r = await holyship(['restore', `latest:${vol}`, '--force', '--json'], env)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    expect(await listing(dir)).toEqual({PG_VERSION: '15\n', 'base/1': 'relation\n'})
    expect((await a.getVolume(vol).inspect()).Options).toEqual({type: 'none', o: 'bind', device: dir})
  })
})

describe('a volume the engine mounts on use, not a bind (a tmpfs here, NFS in real life)', () => {
  const info = inject('holyshipEngineA')
  const docker = connectEngine(info).docker
  const app = `tmpfsvol-${process.pid}`
  const vol = `tmpfsvol-data-${process.pid}`
  let work: string
  let env: Record<string, string>

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-tmpfsvol-'))
    env = {HOLYSHIP_REPO: path.join(work, 'repo'), HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3'), DOCKER_HOST: info.dockerHost}
    await docker.createVolume({Name: vol, DriverOpts: {type: 'tmpfs', device: 'tmpfs', o: 'size=1m'}})
    const c = await docker.createContainer({name: app, Image: inject('holyshipBusyboxImage'), Cmd: ['sleep', '100000'], StopTimeout: 1, HostConfig: {Binds: [`${vol}:/cache`]}})
    await c.start()
    expect((await dockerExec(docker, c.id, ['sh', '-c', 'echo hot > /cache/entry'])).exitCode).toBe(0)
    expect((await holyship(['init'], env)).code).toBe(0)
  })

  afterAll(async () => {
    await docker.getContainer(app).remove({force: true}).catch(() => {})
    await docker.getVolume(vol).remove().catch(() => {})
    rmSync(work, {recursive: true, force: true})
  })

  it('is read through the engine by the default reader; --reader direct refuses it (2) and leaves the container running', async () => {
    const d = await holyship(['snapshot', app, '--reader', 'direct'], env)
    expect(d.code).toBe(2)
    expect(d.stderr).toMatch(new RegExp(`^holyship: error: --reader direct cannot read volume ${vol}: the engine mounts it`))
    expect((await docker.getContainer(app).inspect()).State).toMatchObject({Running: true, Paused: false})
    const s = await holyship(['snapshot', app, '--json'], env)
    expect(s.stderr).toBe('')
    expect(JSON.parse(s.stdout)[0]).toMatchObject({reader: 'direct', files: 1})
    const out = path.join(work, 'out')
    expect((await holyship(['restore', 'latest', '--path', '/cache/entry', '--target', out], env)).code).toBe(0)
    expect(readFileSync(path.join(out, 'entry'), 'utf8')).toBe('hot\n')
  })
})
