/**
 * An encrypted repository through the installed `holyship` binary on a real engine: the
 * container's env secret, a file name and the file's content appear nowhere in the
 * repository; a wrong passphrase exits 16 and changes nothing; snapshot, verify and restore
 * work with the passphrase from a file.
 */
import {mkdtempSync, promises as fsp, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {afterAll, beforeAll, describe, expect, inject, it} from 'vitest'
import {holyship} from '../harness/cli.js'
import {connectEngine} from '../harness/engine.js'

const MARKERS = ['hunter2', 'very-secret-name', 'CONTENT-MARKER-7f3a9']

describe('holyship with an encrypted repository', () => {
  const info = inject('holyshipEngineA')
  const docker = connectEngine(info).docker
  let work: string
  let env: Record<string, string>
  const name = `enc-${process.pid}`
  const vol = `enc-vol-${process.pid}`

  const files = async (dir: string): Promise<Map<string, Buffer>> => {
    const out = new Map<string, Buffer>()
    const walk = async (d: string): Promise<void> => {
      for (const e of await fsp.readdir(d, {withFileTypes: true})) {
        const p = path.join(d, e.name)
        if (e.isDirectory()) await walk(p)
        else out.set(path.relative(dir, p), await fsp.readFile(p))
      }
    }
    await walk(dir)
    return out
  }

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-enc-'))
    await fsp.writeFile(path.join(work, 'pw'), 'a long passphrase\n', {mode: 0o600})
    env = {
      HOLYSHIP_REPO: path.join(work, 'repo'),
      HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3'),
      HOLYSHIP_PASSWORD_FILE: path.join(work, 'pw'),
      HOLYSHIP_TEST_FAST_KDF: '1',
      DOCKER_HOST: info.dockerHost,
    }
    await docker.createVolume({Name: vol})
    const c = await docker.createContainer({
      name,
      Image: inject('holyshipBusyboxImage'),
      Env: ['SECRET_TOKEN=hunter2'],
      Cmd: ['sh', '-c', 'echo CONTENT-MARKER-7f3a9 > /v/very-secret-name.txt; echo ready; sleep 100000'],
      HostConfig: {Binds: [`${vol}:/v`]},
    })
    await c.start()
    for (let i = 0; i < 100; i++) {
      if ((await c.logs({stdout: true})).toString().includes('ready')) break
      await new Promise((r) => setTimeout(r, 100))
    }
  })

  afterAll(async () => {
    for (const n of [name, `${name}-2`]) await docker.getContainer(n).remove({force: true}).catch(() => {})
    for (const v of [vol, `x-${vol}`]) await docker.getVolume(v).remove().catch(() => {})
    rmSync(work, {recursive: true, force: true})
  })

  it('snapshots, refuses a wrong passphrase (16) without changing anything, verifies and restores', async () => {
    const init = await holyship(['init', '--encrypt', '--json'], env)
    expect(init.code).toBe(0)
    expect(JSON.parse(init.stdout)).toMatchObject({encrypted: true})
    const s = await holyship(['snapshot', name, '--json'], env)
    expect(s.stderr).toBe('')
    expect(s.code).toBe(0)
    expect(s.stdout).not.toContain('a long passphrase')

    const stored = await files(env.HOLYSHIP_REPO)
    const found = [...stored].flatMap(([k, b]) => MARKERS.filter((m) => k.includes(m) || b.includes(Buffer.from(m))).map((m) => `${m} in ${k}`))
    expect(found).toEqual([])

    const before = [...stored.keys()].sort()
    const wrong = await holyship(['list'], {...env, HOLYSHIP_PASSWORD_FILE: '', HOLYSHIP_PASSWORD: 'not it'})
    expect(wrong.code).toBe(16)
    expect(wrong.stderr.trim().split('\n')).toHaveLength(1)
    expect(wrong.stderr).toMatch(/^holyship: error: wrong passphrase/)
    const none = await holyship(['snapshot', name], {...env, HOLYSHIP_PASSWORD_FILE: ''})
    expect(none.code).toBe(2)
    expect(none.stderr).toMatch(/no passphrase was given/)
    expect([...(await files(env.HOLYSHIP_REPO)).keys()].sort()).toEqual(before)

    const v = await holyship(['verify', '--read-data', '--json'], env)
    expect(v.code).toBe(0)
    expect(JSON.parse(v.stdout).problems).toEqual([])
    const r = await holyship(['restore', `latest:${name}`, '--name', `${name}-2`, '--volume-prefix', 'x-', '--json'], env)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const restored = await docker.getContainer(`${name}-2`).inspect()
    expect(restored.Config.Env).toContain('SECRET_TOKEN=hunter2')
    const out = path.join(work, 'out')
    const f = await holyship(['restore', `latest:${name}`, '--path', '/v/very-secret-name.txt', '--target', out], env)
    expect(f.code).toBe(0)
    expect(await fsp.readFile(path.join(out, 'very-secret-name.txt'), 'utf8')).toBe('CONTENT-MARKER-7f3a9\n')
  })
})
