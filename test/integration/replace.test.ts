/**
 * A restore with --force over the container it was snapshotted from (the rollback of an app to
 * last night's snapshot) replaces the user's container and volumes. Nothing of them may be lost
 * when the restore fails: the snapshot's data is read and checked before anything is removed
 * (a damaged repository fails with everything as it was), what is replaced is snapshotted
 * first (tag replaced-by-restore, never `latest`), and put back if the restore fails after it
 * removed it.
 */
import {spawnSync} from 'node:child_process'
import {mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {afterAll, beforeAll, describe, expect, inject, it} from 'vitest'
import {holyship} from '../harness/cli.js'
import {failingRestore} from '../harness/restore.js'
import {connectEngine, dockerExec} from '../harness/engine.js'

const files = (d: string): string[] => readdirSync(d, {withFileTypes: true}).flatMap((e) => (e.isDirectory() ? files(path.join(d, e.name)) : [path.join(d, e.name)]))

describe('restore --force over what is there', () => {
  const info = inject('holyshipEngineA')
  const docker = connectEngine(info).docker
  const image = inject('holyshipBusyboxImage')
  const p = `repl-${process.pid}`
  const app = `${p}-app`
  const vol = `${p}-vol`
  let work: string
  let env: Record<string, string>

  /** the app's state now: its container's id and whether it runs, and what its volume holds */
  const state = async (): Promise<{id: string; running: boolean; data: string}> => {
    const c = await docker.getContainer(app).inspect()
    const helper = await docker.createContainer({Image: image, Cmd: ['sh', '-c', 'cat /data/v; wc -c < /data/big'], HostConfig: {Binds: [`${vol}:/data:ro`]}})
    try {
      await helper.start()
      await helper.wait()
      const out = (await helper.logs({stdout: true, stderr: true})) as Buffer
      // the log stream's frames: 8-byte headers before each line
      const text = out.toString('latin1').replace(/[\x00-\x08]/g, '').replace(/\s+/g, ' ').trim()
      return {id: c.Id, running: c.State.Running, data: text}
    } finally {
      await helper.remove({force: true})
    }
  }
  /** restore --force of the latest snapshot of `name`, made to fail once it has removed what it replaces (the engine refuses CPU 63) */
  const failing = (name: string): Promise<Error | undefined> => failingRestore(env, info.dockerHost, name)
  const writeV = async (v: string): Promise<void> => {
    const r = await dockerExec(docker, app, ['sh', '-c', `echo ${v} > /data/v`])
    expect(r.exitCode).toBe(0)
  }

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-repl-'))
    env = {HOLYSHIP_REPO: path.join(work, 'repo'), HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3'), DOCKER_HOST: info.dockerHost}
    expect((await holyship(['init'], env)).code).toBe(0)
    const c = await docker.createContainer({name: app, Image: image, Cmd: ['sleep', '100000'], StopTimeout: 1, HostConfig: {Binds: [`${vol}:/data`]}})
    await c.start()
    const r = await dockerExec(docker, app, ['sh', '-c', 'head -c 300000 /dev/urandom > /data/big && echo v1 > /data/v'])
    expect(r.exitCode).toBe(0)
    const s = await holyship(['snapshot', app], env)
    expect(s.code).toBe(0)
  })

  afterAll(async () => {
    for (const n of [app, `${p}-other`]) await docker.getContainer(n).remove({force: true}).catch(() => {})
    await docker.getVolume(vol).remove().catch(() => {})
    rmSync(work, {recursive: true, force: true})
  })

  it('succeeds: the state it replaced is kept as a snapshot, which `latest` does not name', async () => {
    await writeV('v2')
    const r = await holyship(['restore', `latest:${app}`, '--force', '--start', '--json'], env)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const out = JSON.parse(r.stdout)
    expect(out.replaced).toEqual([{id: expect.stringMatching(/^[0-9a-f]{64}$/), kind: 'container', name: app}])
    expect((await state()).data).toBe('v1 300000')
    const list = JSON.parse((await holyship(['list', '--json'], env)).stdout) as {id: string; tags: string[]}[]
    expect(list.find((s) => s.id === out.replaced[0].id)?.tags).toEqual(['replaced-by-restore'])
    // latest:app is still the backup, not the state it replaced; the kept one restores by id
    expect(JSON.parse((await holyship(['restore', `latest:${app}`, '--force', '--no-keep-replaced', '--json'], env)).stdout).snapshot).toBe(out.snapshot)
    expect((await holyship(['restore', out.replaced[0].id, '--force', '--no-keep-replaced', '--start'], env)).code).toBe(0)
    expect((await state()).data).toBe('v2 300000')
  })

  it('stops the container it replaces before keeping it: what is kept is what it left after a clean shutdown', async () => {
    const name = `${p}-term`
    const data = `${p}-term-data`
    // a repository of its own: the other tests count the snapshots of theirs
    const env = {HOLYSHIP_REPO: path.join(work, 'term-repo'), HOLYSHIP_CATALOGUE: path.join(work, 'term-cat.sqlite3'), DOCKER_HOST: info.dockerHost}
    expect((await holyship(['init'], env)).code).toBe(0)
    // a service that writes its last state when asked to stop, as a database flushes
    const c = await docker.createContainer({name, Image: image, Cmd: ['sh', '-c', "trap 'echo clean > /data/shutdown; exit 0' TERM; while true; do sleep 1; done"], HostConfig: {Binds: [`${data}:/data`]}})
    try {
      await c.start()
      expect((await holyship(['snapshot', name], env)).code).toBe(0)
      const r = await holyship(['restore', `latest:${name}`, '--force', '--json'], env)
      expect(r.stderr).toBe('')
      expect(r.code).toBe(0)
      const kept = JSON.parse(r.stdout).replaced[0].id as string
      const out = path.join(work, 'term-out')
      expect((await holyship(['restore', kept, '--path', '/data/shutdown', '--target', out], env)).code).toBe(0)
      expect(readFileSync(path.join(out, 'shutdown'), 'utf8')).toBe('clean\n')
      // the backup restored has none: it was taken while the service ran
      expect((await holyship(['restore', `latest:${name}`, '--path', '/data/shutdown', '--target', path.join(work, 'term-none')], env)).code).toBe(24)
    } finally {
      await docker.getContainer(name).remove({force: true}).catch(() => {})
      await docker.getVolume(data).remove().catch(() => {})
    }
  })

  it('fails after it removed them: the container and its volume are put back as they were, running', async () => {
    await writeV('v3')
    const before = await state()
    expect((await failing(app))?.message).toMatch(/cpu.*; what it replaced was put back as it was \(from snapshot [0-9a-f]{12}\)$/i)
    const after = await state()
    expect(after).toEqual({...before, id: expect.any(String)})
    expect(after.id).not.toBe(before.id)
  })

  it('a bind-mounted file the failed restore wrote over holds what the user had, not the snapshot\'s', async () => {
    const conf = path.join(work, 'app.conf')
    writeFileSync(conf, 'A\n')
    const name = `${p}-conf`
    const c = await docker.createContainer({name, Image: image, Cmd: ['sleep', '100000'], StopTimeout: 1, HostConfig: {Binds: [`${conf}:/etc/app.conf`]}})
    try {
      await c.start()
      expect((await holyship(['snapshot', name], env)).code).toBe(0)
      writeFileSync(conf, 'B\n')
      expect((await failing(name))?.message).toMatch(/; what it replaced was put back as it was/)
      expect(readFileSync(conf, 'utf8')).toBe('B\n')
      expect((await docker.getContainer(name).inspect()).State.Running).toBe(true)
    } finally {
      await docker.getContainer(name).remove({force: true}).catch(() => {})
    }
  })

  it("putting back takes a volume and a bind directory the failed restore did not touch as they are (a sidecar's)", async () => {
    const name = `${p}-two`
    const [va, vb] = [`${p}-va`, `${p}-vb`]
    const cleanup = async (): Promise<void> => {
      for (const n of [name, `${p}-side`]) await docker.getContainer(n).remove({force: true}).catch(() => {})
      for (const v of [va, vb]) await docker.getVolume(v).remove().catch(() => {})
    }
    try {
      const first = await docker.createContainer({name, Image: image, Cmd: ['sleep', '100000'], StopTimeout: 1, HostConfig: {Binds: [`${va}:/a`]}})
      await first.start()
      expect((await holyship(['snapshot', name], env)).code).toBe(0)
      // the app made anew with a second volume, which a sidecar writes to
      await first.remove({force: true})
      const dir = path.join(work, 'shared-dir')
      mkdirSync(dir, {recursive: true})
      writeFileSync(path.join(dir, 'f'), 'host\n')
      const inode = statSync(path.join(dir, 'f')).ino
      const again = await docker.createContainer({name, Image: image, Cmd: ['sleep', '100000'], StopTimeout: 1, HostConfig: {Binds: [`${va}:/a`, `${vb}:/b`, `${dir}:/shared`]}})
      await again.start()
      const side = await docker.createContainer({name: `${p}-side`, Image: image, Cmd: ['sleep', '100000'], StopTimeout: 1, HostConfig: {Binds: [`${vb}:/b`]}})
      await side.start()
      expect((await dockerExec(docker, side.id, ['sh', '-c', 'echo live > /b/f'])).exitCode).toBe(0)
      expect((await failing(name))?.message).toMatch(/; what it replaced was put back as it was \(from snapshot [0-9a-f]{12}\)$/)
      const back = await docker.getContainer(name).inspect()
      expect(back.State.Running).toBe(true)
      expect(back.Mounts.filter((x) => x.Type === 'volume').map((x) => x.Name).sort()).toEqual([va, vb])
      // the bind directory was not written (a put back writes a file anew: another inode)
      expect(statSync(path.join(dir, 'f')).ino).toBe(inode)
      expect((await dockerExec(docker, side.id, ['sh', '-c', 'echo more >> /b/f; cat /b/f'])).stdout).toBe('live\nmore\n')
    } finally {
      await cleanup()
    }
  })

  it('a damaged snapshot: refused before anything is removed', async () => {
    const before = await state()
    // damage the pack that holds the volume's big file (the biggest)
    const packs = files(path.join(env.HOLYSHIP_REPO, 'data')).map((f) => ({f, n: readFileSync(f).length})).sort((x, y) => y.n - x.n)
    const b = readFileSync(packs[0].f)
    for (let i = 1000; i < b.length - 1000; i += 4096) b[i] ^= 0xff
    writeFileSync(packs[0].f, b)
    const r = await holyship(['restore', `latest:${app}`, '--force'], env)
    expect(r.code).toBe(15)
    expect(r.stderr).toMatch(/^holyship: error: file \/big: blob [0-9a-f]{16} in data\/.* is damaged: content does not match its hash\n$/)
    expect(await state()).toEqual(before)
    // nothing was snapshotted either: the check comes first
    const list = JSON.parse((await holyship(['list', '--json'], env)).stdout) as {tags: string[]}[]
    expect(list.filter((s) => s.tags.includes('replaced-by-restore'))).toHaveLength(4)
  })

  it('forget ID drops the snapshots a restore kept; it takes ids, not latest', async () => {
    const kept = (JSON.parse((await holyship(['list', '--json'], env)).stdout) as {id: string; tags: string[]}[]).filter((s) => s.tags.includes('replaced-by-restore'))
    expect(kept.length).toBeGreaterThan(0)
    const bad = await holyship(['forget', 'latest'], env)
    expect(bad.code).toBe(2)
    expect(bad.stderr).toBe('holyship: error: forget takes snapshot ids (or unique prefixes of 4 or more hex characters), not "latest"\n')
    const both = await holyship(['forget', kept[0].id, '--keep-last', '1'], env)
    expect(both.code).toBe(2)
    const r = await holyship(['forget', ...kept.map((k) => k.id.slice(0, 12)), '--json'], env)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    expect(JSON.parse(r.stdout).removed.sort()).toEqual(kept.map((k) => k.id).sort())
    const left = JSON.parse((await holyship(['list', '--json'], env)).stdout) as {tags: string[]}[]
    expect(left.filter((s) => s.tags.includes('replaced-by-restore'))).toEqual([])
    expect(left.length).toBeGreaterThan(0)
  })

  it('a read-only repository restores without its lock, with a warning; a --force that would keep what it replaces refuses', async () => {
    const ro = path.join(work, 'ro')
    mkdirSync(ro)
    expect(spawnSync('mount', ['--bind', env.HOLYSHIP_REPO, ro]).status).toBe(0)
    try {
      expect(spawnSync('mount', ['-o', 'remount,ro,bind', ro]).status).toBe(0)
      const roEnv = {...env, HOLYSHIP_REPO: ro}
      const target = path.join(work, 'out')
      const r = await holyship(['restore', `latest:${app}`, '--path', '/data/v', '--target', target], roEnv)
      expect(r.code).toBe(0)
      expect(r.stderr).toMatch(/^holyship: warning: the repository's lock cannot be written \(.*\): restoring without it, so a prune meanwhile could fail this restore\n$/)
      expect(readFileSync(path.join(target, 'v'), 'utf8')).toBe('v1\n')
      const before = await state()
      const forced = await holyship(['restore', `latest:${app}`, '--force'], roEnv)
      expect(forced.code).toBe(51)
      expect(forced.stderr).toMatch(/^holyship: error: read-only file system/)
      expect(await state()).toEqual(before)
    } finally {
      spawnSync('umount', [ro])
    }
  })

  it('a volume another container uses is refused before anything is changed', async () => {
    const other = await docker.createContainer({name: `${p}-other`, Image: image, Cmd: ['sleep', '100000'], StopTimeout: 1, HostConfig: {Binds: [`${vol}:/shared`]}})
    await other.start()
    const before = await state()
    const r = await holyship(['restore', `latest:${app}`, '--force'], env)
    expect(r.code).toBe(25)
    expect(r.stderr).toBe(`holyship: error: volume ${vol} is used by container ${p}-other on ${info.dockerHost}, so it cannot be replaced (remove ${p}-other first, or use --volume-prefix to restore beside it)\n`)
    expect(await state()).toEqual(before)
  })
})
