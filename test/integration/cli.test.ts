/**
 * The installed `holyship` binary: every bad input gets one line on stderr and its own exit
 * code, and leaves the repository and catalogue as they were; --json prints parseable results.
 */
import {mkdtempSync, promises as fsp, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, beforeAll, describe, expect, inject, it} from 'vitest'
import {manifestIsFresh} from '../../src/cli/manifest.js'
import {holyship} from '../harness/cli.js'
import {connectEngine} from '../harness/engine.js'

describe('holyship CLI', () => {
  const info = inject('holyshipEngineA')
  const docker = connectEngine(info).docker
  let work: string
  let env: Record<string, string>
  const name = `cli-${process.pid}`
  const vol = `cli-vol-${process.pid}`

  const tree = async (dir: string): Promise<string[]> => {
    const out: string[] = []
    const walk = async (d: string): Promise<void> => {
      for (const e of await fsp.readdir(d, {withFileTypes: true})) {
        const p = path.join(d, e.name)
        if (e.isDirectory()) await walk(p)
        else out.push(`${path.relative(work, p)}:${(await fsp.stat(p)).size}`)
      }
    }
    await walk(dir)
    return out.sort()
  }

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-cli-'))
    env = {
      HOLYSHIP_REPO: path.join(work, 'repo'),
      HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3'),
      DOCKER_HOST: info.dockerHost,
    }
    await docker.createVolume({Name: vol})
    const c = await docker.createContainer({
      name,
      Image: inject('holyshipBusyboxImage'),
      Cmd: ['sh', '-c', 'echo data > /v/file; sleep 100000'],
      HostConfig: {Binds: [`${vol}:/v`]},
    })
    await c.start()
  })

  afterAll(async () => {
    await docker.getContainer(name).remove({force: true}).catch(() => {})
    await docker.getContainer(`${name}-2`).remove({force: true}).catch(() => {})
    await docker.getVolume(vol).remove().catch(() => {})
    await docker.getVolume(`x-${vol}`).remove().catch(() => {})
    rmSync(work, {recursive: true, force: true})
  })

  it('finds every command in commands/ and answers --help for each, with the manifest of this build', async () => {
    const root = fileURLToPath(new URL('../..', import.meta.url))
    // npm run build wrote it, so commands are found without importing every command module
    expect(manifestIsFresh(root)).toBe(true)
    const ids: string[] = []
    const walk = async (rel: string): Promise<void> => {
      for (const e of await fsp.readdir(path.join(root, 'commands', rel), {withFileTypes: true})) {
        if (e.isDirectory()) await walk(path.join(rel, e.name))
        else if (e.name.endsWith('.ts')) ids.push(path.join(rel, e.name.slice(0, -3)).split(path.sep).join(' '))
      }
    }
    await walk('')
    expect(ids.length).toBeGreaterThan(15)
    const top = await holyship(['--help'], env)
    expect(top.code).toBe(0)
    for (const id of ids) {
      const r = await holyship([...id.split(' '), '--help'], env)
      expect({id, code: r.code, stderr: r.stderr}).toEqual({id, code: 0, stderr: ''})
      expect(r.stdout).toContain(`$ holyship ${id}`)
      // the top-level help lists every command or its topic
      expect(top.stdout).toMatch(new RegExp(`^  ${id.split(' ')[0]}\\s`, 'm'))
    }
  })

  it('reports a missing repository (10) and an uninitialised one (11)', async () => {
    const r = await holyship(['list'], env)
    expect(r.code).toBe(10)
    expect(r.stderr).toMatch(/^holyship: error: no repository at .*repo/)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    await fsp.mkdir(path.join(work, 'empty'))
    const r2 = await holyship(['list', '--repo', path.join(work, 'empty')], env)
    expect(r2.code).toBe(11)
  })

  it('init, snapshot with --json, list, show, and init again refused (13)', async () => {
    expect((await holyship(['init'], env)).code).toBe(0)
    const again = await holyship(['init'], env)
    expect(again.code).toBe(13)
    const s = await holyship(['snapshot', name, '--json', '--tag', 'nightly'], env)
    expect(s.stderr).toBe('')
    expect(s.code).toBe(0)
    const res = JSON.parse(s.stdout)
    expect(res[0]).toMatchObject({kind: 'container', name})
    const l = await holyship(['list', '--json'], env)
    const rows = JSON.parse(l.stdout)
    expect(rows).toHaveLength(1)
    expect(rows[0]).toMatchObject({id: res[0].id, tags: ['nightly'], volumes: [vol]})
    const sh = await holyship(['show', res[0].id.slice(0, 8), '--json'], env)
    expect(JSON.parse(sh.stdout).container.name).toBe(name)
    const vs = await holyship(['snapshot', '--volume', vol, '--json'], env)
    expect(vs.code).toBe(0)
    expect(JSON.parse(vs.stdout)[0]).toMatchObject({kind: 'volume', name: vol})
    const lv = await holyship(['list', '--volume', vol, '--json'], env)
    expect(JSON.parse(lv.stdout)).toHaveLength(2)
  })

  it('gives each bad input its own exit code and changes nothing', async () => {
    const before = await tree(path.join(work, 'repo'))
    // started with --rm: stopped for a snapshot, the engine would remove it and its anonymous volume
    const rm = await docker.createContainer({name: `${name}-rm`, Image: inject('holyshipBusyboxImage'), Cmd: ['sleep', '100000'], Volumes: {'/scratch': {}}, HostConfig: {AutoRemove: true}})
    await rm.start()
    // paused by its owner: stopped and started for a snapshot, it would run again
    const paused = await docker.createContainer({name: `${name}-paused`, Image: inject('holyshipBusyboxImage'), Cmd: ['sleep', '100000']})
    await paused.start()
    await paused.pause()
    const cases: [string[], number, RegExp, Record<string, string>?][] = [
      [['snapshot', 'no-such-container'], 22, /no container named "no-such-container"/],
      [['snapshot', '--volume', 'no-such-volume'], 23, /no volume named "no-such-volume"/],
      [['show', 'ffffffffffff'], 20, /no snapshot matches/],
      [['show', 'latest:nobody'], 20, /no snapshot/],
      [['restore', 'latest:' + name], 25, /already exists/],
      [['restore', 'latest:' + name, '--path', '/v/nope', '--target', path.join(work, 'out')], 24, /no path/],
      [['snapshot', name], 30, /cannot reach the Docker engine at unix:\/\/\/nonexistent\/docker.sock/, {DOCKER_HOST: 'unix:///nonexistent/docker.sock'}],
      [['snapshot'], 2, /name at least one container/],
      [['snapshot', name, '--stop', '--no-pause'], 2, /cannot also be provided|--no-pause/],
      [['snapshot', name, `${name}-rm`, '--stop'], 2, new RegExp(`--stop would remove container ${name}-rm: it was started with --rm`)],
      [['snapshot', `${name}-paused`, '--stop'], 2, new RegExp(`--stop would leave container ${name}-paused running: it is paused`)],
      [['list', '--bogus-flag'], 2, /Nonexistent flag|bogus/],
    ]
    for (const [args, code, msg, extra] of cases) {
      const r = await holyship(args, {...env, ...extra})
      expect({args, code: r.code}).toEqual({args, code})
      expect(r.stderr).toMatch(msg)
      expect(r.stderr.trim().split('\n')[0]).toMatch(/^holyship: error: /)
    }
    expect(await tree(path.join(work, 'repo'))).toEqual(before)
    const state = (await docker.getContainer(name).inspect()).State
    expect(state.Running && !state.Paused).toBe(true)
    expect((await rm.inspect()).State.Running).toBe(true)
    await rm.remove({force: true, v: true})
    expect((await paused.inspect()).State.Paused).toBe(true)
    await paused.remove({force: true})
  })

  it('refuses a repository of a newer format (12)', async () => {
    const cfgPath = path.join(work, 'repo', 'config')
    const orig = await fsp.readFile(cfgPath, 'utf8')
    await fsp.writeFile(cfgPath, JSON.stringify({...JSON.parse(orig), version: 99}))
    try {
      const r = await holyship(['list'], env)
      expect(r.code).toBe(12)
      expect(r.stderr).toMatch(/format 99/)
    } finally {
      await fsp.writeFile(cfgPath, orig)
    }
  })

  it('restores with --name and --volume-prefix, verify --read-data passes, catalogue rebuild restores the list, from a deleted or a damaged catalogue', async () => {
    const r = await holyship(['restore', `latest:${name}`, '--name', `${name}-2`, '--volume-prefix', 'x-', '--start', '--json'], env)
    expect(r.stderr).toBe('')
    expect(JSON.parse(r.stdout).container.name).toBe(`${name}-2`)
    const v = await holyship(['verify', '--read-data', '--json'], env)
    expect(v.code).toBe(0)
    expect(JSON.parse(v.stdout).problems).toEqual([])
    const listBefore = JSON.parse((await holyship(['list', '--json'], env)).stdout)
    await fsp.rm(env.HOLYSHIP_CATALOGUE)
    const rb = await holyship(['catalogue', 'rebuild', '--json'], env)
    expect(rb.code).toBe(0)
    expect(JSON.parse(rb.stdout).snapshots).toBe(2)
    const listAfter = JSON.parse((await holyship(['list', '--json'], env)).stdout)
    expect(listAfter).toEqual(listBefore)
    // a damaged catalogue: commands say so in one line, rebuild moves it aside (kept) and makes a new one
    const damaged = Buffer.from('not a database, but a file that once was one\n'.repeat(100))
    await fsp.writeFile(env.HOLYSHIP_CATALOGUE, damaged)
    const l = await holyship(['list'], env)
    expect(l.code).toBe(51)
    expect(l.stderr).toMatch(/^holyship: error: catalogue .* is not a valid SQLite database \(it is only a cache: `holyship catalogue rebuild` moves it aside/)
    expect(l.stderr.trim().split('\n')).toHaveLength(1)
    const rb2 = await holyship(['catalogue', 'rebuild', '--json'], env)
    expect(rb2.code).toBe(0)
    expect(rb2.stderr).toMatch(/^holyship: warning: the old catalogue could not be opened and was moved to .*\.broken-\d+\n$/)
    const moved = JSON.parse(rb2.stdout).movedAside
    expect(await fsp.readFile(moved)).toEqual(damaged)
    expect(JSON.parse((await holyship(['list', '--json'], env)).stdout)).toEqual(listBefore)
    await fsp.rm(moved)
  })

  it('verify names a damaged pack (15)', async () => {
    const packs = (await tree(path.join(work, 'repo'))).filter((p) => p.startsWith('repo/data/'))
    const victim = path.join(work, packs[0].split(':')[0])
    const buf = await fsp.readFile(victim)
    buf[10] ^= 0xff
    await fsp.writeFile(victim, buf)
    try {
      const r = await holyship(['verify', '--read-data'], env)
      expect(r.code).toBe(15)
      expect(r.stderr).toContain(path.basename(victim))
    } finally {
      buf[10] ^= 0xff
      await fsp.writeFile(victim, buf)
    }
  })
})
