/**
 * A volume whose files have names that are not UTF-8 (Latin-1, as a legacy application writes
 * them) and a file capability (a binary xattr, with a byte a UTF-8 decoder would change),
 * through the CLI on a real engine: the direct reader and the api reader (the engine's tar
 * stream) both keep every name and the capability byte for byte, and a container restore puts
 * them back into a new volume, straight or through the engine's tar extraction. In a
 * container's layer too; a deletion there the api reader cannot name, and says so.
 */
import {spawnSync} from 'node:child_process'
import {createHash} from 'node:crypto'
import {mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {afterAll, beforeAll, describe, expect, inject, it} from 'vitest'
import {holyship} from '../harness/cli.js'
import {connectEngine, dockerExec} from '../harness/engine.js'
import {listPath} from '../harness/tree-listing.js'

describe('names that are not UTF-8, through the CLI', () => {
  const info = inject('holyshipEngineA')
  const docker = connectEngine(info).docker
  const tag = process.pid.toString(36)
  const name = `names-${tag}`
  const vol = `names-vol-${tag}`
  const latin = (s: string): Buffer => Buffer.from(s, 'latin1')
  const sha = (s: string): string => createHash('sha256').update(s).digest('hex')
  const files = [latin('caf\xe9.txt'), latin('r\xe9sum\xe9 \xff.doc'), Buffer.from('plain.txt')]
  let work: string
  let env: Record<string, string>

  // cap_setuid+ep, as setcap writes it: the byte 0x80 is not UTF-8
  const cap = '0x0100000280000000000000000000000000000000'
  const capOf = (file: string): string => {
    const r = spawnSync('getfattr', ['--absolute-names', '-e', 'hex', '-n', 'security.capability', file], {encoding: 'utf8'})
    return /^security\.capability=(\S+)$/m.exec(r.stdout)?.[1] ?? `none (${r.stderr.trim()})`
  }
  const listing = (dir: string): string[] =>
    readdirSync(Buffer.from(dir), {encoding: 'buffer'})
      .map((n) => `${n.toString('hex')}:${readFileSync(Buffer.concat([Buffer.from(dir + '/'), n])).toString('hex')}`)
      .concat(`plain.txt capability ${capOf(path.join(dir, 'plain.txt'))}`)
      .sort()

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-names-'))
    env = {HOLYSHIP_REPO: path.join(work, 'repo'), HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3'), DOCKER_HOST: info.dockerHost}
    await docker.createVolume({Name: vol})
    const mp = (await docker.getVolume(vol).inspect()).Mountpoint
    for (const [i, f] of files.entries()) writeFileSync(Buffer.concat([Buffer.from(mp + '/'), f]), `content ${i}\n`)
    expect(spawnSync('setfattr', ['-n', 'security.capability', '-v', cap, path.join(mp, 'plain.txt')]).status).toBe(0)
    expect(capOf(path.join(mp, 'plain.txt'))).toBe(cap)
    const c = await docker.createContainer({name, Image: inject('holyshipBusyboxImage'), Cmd: ['sleep', '100000'], HostConfig: {Binds: [`${vol}:/v`]}})
    await c.start()
  })

  afterAll(async () => {
    for (const c of [name, `${name}-copy`, `${name}-api`, `${name}-base`, `${name}-layer`, `${name}-layer-copy`]) await docker.getContainer(c).remove({force: true}).catch(() => {})
    await docker.getImage(`holyship-test/names:${tag}`).remove({force: true}).catch(() => {})
    for (const v of [vol, `copy-${vol}`, `api-${vol}`]) await docker.getVolume(v).remove().catch(() => {})
    rmSync(work, {recursive: true, force: true})
  })

  it('the direct reader keeps them, a container restore writes them back byte for byte', async () => {
    expect((await holyship(['init'], env)).code).toBe(0)
    const snap = await holyship(['snapshot', name, '--reader', 'direct', '--json'], env)
    expect(snap.stderr).toBe('')
    expect(snap.code).toBe(0)
    expect(JSON.parse(snap.stdout)[0].files).toBe(files.length)
    const r = await holyship(['restore', `latest:${name}`, '--name', `${name}-copy`, '--volume-prefix', 'copy-', '--json'], env)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const original = (await docker.getVolume(vol).inspect()).Mountpoint
    const copy = (await docker.getVolume(`copy-${vol}`).inspect()).Mountpoint
    expect(listing(copy)).toEqual(listing(original))
    // and restore --path into a host directory
    const out = path.join(work, 'out')
    const p = await holyship(['restore', `latest:${name}`, '--path', '/v', '--target', out], env)
    expect(p.code).toBe(0)
    expect(listing(out)).toEqual(listing(original))
  })

  it('the api reader keeps them too, and a restore through the engine writes them back byte for byte', async () => {
    const snap = await holyship(['snapshot', name, '--reader', 'api', '--json'], env)
    expect(snap.stderr).toBe('')
    expect(snap.code).toBe(0)
    expect(JSON.parse(snap.stdout)[0].files).toBe(files.length)
    const r = await holyship(['restore', `latest:${name}`, '--name', `${name}-api`, '--volume-prefix', 'api-', '--writer', 'api', '--json'], env)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const original = (await docker.getVolume(vol).inspect()).Mountpoint
    const copy = (await docker.getVolume(`api-${vol}`).inspect()).Mountpoint
    expect(listing(copy)).toEqual(listing(original))
  })

  it("the api reader keeps a container layer's files with such names, and says which deletions it cannot name", async () => {
    // an image that has /old\xe9 (made by committing a container), and a container of it that
    // deletes it and adds /new\xe9 and /dir\xe9/f in its layer
    const base = await docker.createContainer({name: `${name}-base`, Image: inject('holyshipBusyboxImage'), Cmd: ['sleep', '100000']})
    await base.start()
    expect((await dockerExec(docker, base.id, ['sh', '-c', 'printf old > "/old$(printf "\\351")"'])).exitCode).toBe(0)
    await base.commit({repo: 'holyship-test/names', tag})
    const c = await docker.createContainer({name: `${name}-layer`, Image: `holyship-test/names:${tag}`, Cmd: ['sleep', '100000']})
    await c.start()
    const e = await dockerExec(docker, c.id, ['sh', '-c', 'x=$(printf "\\351"); rm "/old$x" && printf new > "/new$x" && mkdir "/dir$x" && printf f > "/dir$x/f"'])
    expect(e.exitCode).toBe(0)
    for (const reader of ['direct', 'api']) {
      const snap = await holyship(['snapshot', `${name}-layer`, '--reader', reader, '--json'], env)
      expect(snap.code).toBe(0)
      const r = JSON.parse(snap.stdout)[0]
      if (reader === 'direct') {
        expect(snap.stderr).toBe('')
        expect(r.unnamedDeletions).toBeUndefined()
      } else {
        expect(r.unnamedDeletions).toEqual(['/old\ufffd'])
        expect(snap.stderr).toMatch(/^holyship: warning: container [^ ]+-layer: 1 path\(s\) deleted in the container have names that are not UTF-8.*"\/old\ufffd"\n$/)
      }
      // the layer's files are in the snapshot: restored beside the original, the same bytes
      const restored = await holyship(['restore', r.id, '--name', `${name}-layer-copy`, '--json'], env)
      expect(restored.code).toBe(0)
      const copy = (await docker.getContainer(`${name}-layer-copy`).inspect()).Id
      const list = await listPath(docker, copy, '/')
      // (getArchive of / names its entries with a leading /)
      expect([list.get('/new\udce9')?.sha256, list.get('/dir\udce9')?.type, list.get('/dir\udce9/f')?.size]).toEqual([sha('new'), '5', 1])
      // the deletion: kept by the direct reader; the api reader could not name it
      expect(list.has('/old\udce9')).toBe(reader === 'api')
      await docker.getContainer(copy).remove({force: true})
    }
  })
})
