/**
 * The Docker engine dies and comes back in the middle of a snapshot (dockerd SIGKILLed while the
 * container is paused and its volume is streamed through the API, then started again with the
 * same command line). holyship fails with one clean line, records nothing, and the container
 * ends up running again (holyship waits for the engine to come back; failing that, the pause
 * journal lets the next run put it back). The repository verifies and the next snapshot works.
 * It uses its own engine: the shared ones serve the other test files.
 */
import {spawn} from 'node:child_process'
import {closeSync, mkdtempSync, openSync, promises as fsp, readFileSync, rmSync, writeFileSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {LocalBackend} from '../../src/backend/local.js'
import {Repository} from '../../src/repo/repository.js'
import {verifyRepository} from '../../src/services/verify.js'
import {holyship} from '../harness/cli.js'
import {type Engine, dockerExec, isAlive, sleep, startEngine} from '../harness/engine.js'
import {importBusybox} from '../harness/images.js'

const BIN = fileURLToPath(new URL('../../bin/run.js', import.meta.url))

/** SIGKILL the engine's dockerd and start it again with the same command line, in its netns */
async function restartDockerd(engine: Engine): Promise<void> {
  const dir = path.dirname(engine.socketPath)
  const metaFile = path.join(dir, 'meta.json')
  const meta = JSON.parse(readFileSync(metaFile, 'utf8')) as {dockerdPid: number}
  const argv = readFileSync(`/proc/${meta.dockerdPid}/cmdline`, 'utf8').split('\0').filter(Boolean)
  process.kill(meta.dockerdPid, 'SIGKILL')
  while (isAlive(meta.dockerdPid)) await sleep(20)
  await fsp.rm(engine.socketPath, {force: true})
  const log = openSync(path.join(dir, 'dockerd.log'), 'a')
  const child = spawn('nsenter', [`--net=/var/run/netns/${engine.netns}`, '--', ...argv], {detached: true, stdio: ['ignore', log, log]})
  closeSync(log)
  child.unref()
  // the harness's sweep and teardown find it by its command line (it names the engine's directory)
  writeFileSync(metaFile, JSON.stringify({...meta, dockerdPid: child.pid}, null, 2) + '\n')
}

describe('the engine restarting in the middle of a snapshot', () => {
  let engine: Engine
  let work: string
  let env: Record<string, string>
  const name = 'busy'

  beforeAll(async () => {
    engine = await startEngine('crash')
    const image = await importBusybox(engine)
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-engine-restart-'))
    env = {
      HOLYSHIP_REPO: path.join(work, 'repo'),
      HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3'),
      HOLYSHIP_PAUSE_JOURNAL: path.join(work, 'journal'),
      DOCKER_HOST: engine.dockerHost,
    }
    const c = await engine.docker.createContainer({name, Image: image, Cmd: ['sleep', '100000'], HostConfig: {Binds: ['busydata:/data']}})
    await c.start()
    const r = await dockerExec(engine.docker, c.id, ['sh', '-c', 'for i in 1 2 3 4 5 6 7 8; do dd if=/dev/urandom of=/data/f$i bs=1M count=24 2>/dev/null; done'])
    expect(r.exitCode).toBe(0)
    expect((await holyship(['init'], env)).code).toBe(0)
  }, 180_000)

  afterAll(async () => {
    await engine?.stop()
    if (work) rmSync(work, {recursive: true, force: true})
  }, 120_000)

  it('fails with one clean line, records nothing, and the container runs again', async () => {
    const first = await holyship(['snapshot', name, '--json'], env)
    expect(first.code).toBe(0)
    const before = await new LocalBackend(env.HOLYSHIP_REPO).list('snapshots/')

    // through the API (the volume is streamed by the engine), paused (the default)
    const child = spawn(process.execPath, [BIN, 'snapshot', name, '--reader', 'api'], {env: {...process.env, ...env}, stdio: ['ignore', 'pipe', 'pipe']})
    let stderr = ''
    child.stderr.on('data', (d) => (stderr += d))
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)))
    const deadline = Date.now() + 60_000
    while (!(await engine.docker.getContainer(name).inspect()).State.Paused) {
      expect(Date.now()).toBeLessThan(deadline)
      await sleep(20)
    }
    await sleep(300)
    const t0 = Date.now()
    await restartDockerd(engine)
    const code = await exited
    console.log(`engine restarted under a paused snapshot: holyship exit ${code} after ${Date.now() - t0} ms: ${stderr.trim()}`)
    expect([30, 31]).toContain(code)
    expect(stderr.trim().split('\n')).toHaveLength(1)
    expect(stderr).toMatch(/^holyship: error: /)
    // nothing was recorded
    expect(await new LocalBackend(env.HOLYSHIP_REPO).list('snapshots/')).toEqual(before)

    // the engine is back; the container runs (holyship waited for it, or the next run sees to it)
    for (const until = Date.now() + 60_000; ; ) {
      try {
        await engine.docker.ping()
        break
      } catch {
        expect(Date.now()).toBeLessThan(until)
        await sleep(100)
      }
    }
    let st = (await engine.docker.getContainer(name).inspect()).State
    console.log(`after holyship exited: container ${st.Paused ? 'paused' : st.Running ? 'running' : 'stopped'}`)
    if (!st.Running || st.Paused) {
      expect((await fsp.readdir(env.HOLYSHIP_PAUSE_JOURNAL)).length).toBe(1)
      const next = await holyship(['snapshot', name, '--no-pause'], env)
      expect(next.code).toBe(0)
      st = (await engine.docker.getContainer(name).inspect()).State
    }
    expect(st).toMatchObject({Running: true, Paused: false})

    // the repository verifies, and the next snapshot works
    expect((await verifyRepository(await Repository.open(new LocalBackend(env.HOLYSHIP_REPO)), {readData: true})).problems).toEqual([])
    const again = await holyship(['snapshot', name, '--reader', 'api', '--json'], env)
    expect(again.stderr).toBe('')
    expect(again.code).toBe(0)
    expect((await engine.docker.getContainer(name).inspect()).State).toMatchObject({Running: true, Paused: false})
    expect(await fsp.readdir(env.HOLYSHIP_PAUSE_JOURNAL)).toEqual([])
  }, 180_000)
})
