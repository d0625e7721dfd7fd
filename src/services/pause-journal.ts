/**
 * The pause journal: a container that holyship pauses (or stops) for a consistent read is
 * put back by StateGuard in `finally` and on SIGINT/SIGTERM/SIGHUP, but nothing runs on
 * SIGKILL, an OOM kill or a power cut of the holyship process alone. So before it pauses or
 * stops a container, holyship writes a small record here, and removes it once the container
 * is back. The next holyship run against the same engine (snapshot, ship, restore, land)
 * finds the records of processes that are gone and puts their containers back: unpauses a
 * paused one, starts a stopped one (also one the engine stopped while restarting). It also
 * removes the never-started helper containers (`holyship-helper-PID-…`) such a process left,
 * which would otherwise keep their volumes "in use".
 *
 * One JSON file per paused container, in `$HOLYSHIP_PAUSE_JOURNAL`, else `paused/` beside the
 * catalogue (`$HOLYSHIP_CATALOGUE`'s directory, else `$XDG_CACHE_HOME/holyship/`):
 *   {"version":1,"engine":"unix:///var/run/docker.sock","engineId":"…","container":"<id>",
 *    "name":"web","action":"paused"|"stopped","pid":123,"start":"<ticks>","boot":"<boot id>",
 *    "host":"<hostname>","time":"<ISO>"}
 * A process is gone when its pid does not run, or runs since another start time (pid reuse),
 * or the machine rebooted. Records of live processes are never touched.
 */
import {createHash, randomBytes} from 'node:crypto'
import {readFileSync, promises as fsp} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import debugFactory from 'debug'
import {defaultCataloguePath} from '../catalogue/catalogue.js'
import {Engine} from '../docker/engine.js'
import {HolyshipError} from '../errors.js'

const debug = debugFactory('holyship:pause-journal')

export type PauseAction = 'paused' | 'stopped'

export interface PauseRecord {
  version: 1
  /** the engine as holyship named it (DOCKER_HOST) */
  engine: string
  /** the engine's own id (docker info .ID), when it answered */
  engineId?: string
  container: string
  name: string
  action: PauseAction
  pid: number
  /** /proc/PID/stat start time (clock ticks since boot) and the boot id: tell pid reuse apart */
  start?: string
  boot?: string
  host: string
  time: string
}

export interface Recovered {
  container: string
  name: string
  action: PauseAction | 'helper removed'
  /** what was done, or why nothing could be */
  outcome: string
}

export function journalDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HOLYSHIP_PAUSE_JOURNAL) return env.HOLYSHIP_PAUSE_JOURNAL
  return path.join(path.dirname(defaultCataloguePath(env)), 'paused')
}

function bootId(): string | undefined {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || undefined
  } catch {
    return undefined
  }
}

/** field 22 of /proc/PID/stat, or undefined when the process does not exist */
function startTicks(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    if (rest[0] === 'Z' || rest[0] === 'X') return undefined
    return rest[19]
  } catch {
    return undefined
  }
}

/** Is the process that wrote this record gone (on this host)? */
export function ownerGone(r: Pick<PauseRecord, 'pid' | 'start' | 'boot' | 'host'>): boolean {
  if (r.host !== os.hostname()) return false
  const boot = bootId()
  if (r.boot && boot && r.boot !== boot) return true
  const start = startTicks(r.pid)
  if (start === undefined) return true
  return r.start !== undefined && r.start !== start
}

const engineIds = new Map<string, Promise<string | undefined>>()
function engineIdOf(engine: Engine): Promise<string | undefined> {
  let p = engineIds.get(engine.host)
  if (!p) {
    p = engine.info().then(
      (i) => i.ID,
      () => undefined,
    )
    engineIds.set(engine.host, p)
  }
  return p
}

const fileFor = (dir: string, engine: string, container: string, pid: number): string =>
  path.join(dir, `${createHash('sha256').update(engine).digest('hex').slice(0, 12)}-${container.slice(0, 12)}-${pid}.json`)

/**
 * Record that this process is about to pause or stop a container. Best effort: when the
 * journal cannot be written the snapshot goes on (the in-process guard still restores the
 * container on errors and signals); returns the record's file, to clear afterwards.
 */
export async function recordPause(engine: Engine, container: string, name: string, action: PauseAction, dir = journalDir()): Promise<string | undefined> {
  const rec: PauseRecord = {
    version: 1,
    engine: engine.host,
    engineId: await engineIdOf(engine),
    container,
    name,
    action,
    pid: process.pid,
    start: startTicks(process.pid),
    boot: bootId(),
    host: os.hostname(),
    time: new Date().toISOString(),
  }
  const file = fileFor(dir, engine.host, container, process.pid)
  try {
    await fsp.mkdir(dir, {recursive: true, mode: 0o700})
    const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`
    await fsp.writeFile(tmp, JSON.stringify(rec) + '\n', {mode: 0o600})
    await fsp.rename(tmp, file)
    return file
  } catch (e) {
    debug('cannot write the pause journal %s: %s', file, (e as Error).message)
    return undefined
  }
}

/** The container is back in its state: forget the record. */
export async function clearPause(file: string | undefined): Promise<void> {
  if (file) await fsp.rm(file, {force: true}).catch((e) => debug('cannot remove %s: %s', file, (e as Error).message))
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Put a container back after `action`: unpause it if it is paused, start it if it is not
 * running (stopped by us, or by an engine that restarted meanwhile). Waits up to `waitMs` for
 * an engine that does not answer (restarting). A container that no longer exists needs nothing.
 */
export async function putBack(engine: Engine, id: string, action: PauseAction, opts: {waitMs?: number} = {}): Promise<string> {
  // the usual case: one call
  try {
    if (action === 'paused') await engine.unpause(id)
    else await engine.start(id)
    return action === 'paused' ? 'unpaused' : 'started'
  } catch (e) {
    debug('%s %s: %s; checking its state', action === 'paused' ? 'unpause' : 'start', id.slice(0, 12), (e as Error).message)
  }
  const deadline = Date.now() + (opts.waitMs ?? 0)
  for (;;) {
    try {
      const st = (await engine.inspectContainer(id)).State
      if (st.Paused) {
        await engine.unpause(id)
        return 'unpaused'
      }
      if (!st.Running && !st.Restarting) {
        await engine.start(id)
        return 'started'
      }
      return 'already running'
    } catch (e) {
      if (e instanceof HolyshipError && e.code === 'CONTAINER_NOT_FOUND') return 'gone'
      if (e instanceof HolyshipError && e.code === 'DOCKER_UNREACHABLE' && Date.now() < deadline) {
        await sleep(250)
        continue
      }
      throw e
    }
  }
}

async function readRecords(dir: string): Promise<{file: string; rec: PauseRecord}[]> {
  let names: string[]
  try {
    names = await fsp.readdir(dir)
  } catch {
    return []
  }
  const out: {file: string; rec: PauseRecord}[] = []
  for (const n of names) {
    if (!n.endsWith('.json')) continue
    const file = path.join(dir, n)
    try {
      const rec = JSON.parse(await fsp.readFile(file, 'utf8')) as PauseRecord
      if (rec && rec.version === 1 && typeof rec.container === 'string' && typeof rec.pid === 'number') out.push({file, rec})
    } catch (e) {
      debug('ignoring unreadable journal file %s: %s', file, (e as Error).message)
    }
  }
  return out
}

/**
 * Put back every container that a holyship process now gone paused or stopped on this engine,
 * and remove the helper containers such processes left. Never throws: what cannot be done now
 * stays recorded for the next run. Returns what was found and done.
 */
export async function recoverPausedContainers(engine: Engine, dir = journalDir()): Promise<Recovered[]> {
  const done: Recovered[] = []
  const records = await readRecords(dir)
  const engineId = records.length > 0 ? await engineIdOf(engine) : undefined
  for (const {file, rec} of records) {
    const sameEngine = rec.engine === engine.host || (rec.engineId !== undefined && rec.engineId === engineId)
    if (!sameEngine || !ownerGone(rec)) continue
    // claim it: of two processes recovering at once, one renames the file, the other gets ENOENT
    const claim = `${file}.claim-${process.pid}`
    try {
      await fsp.rename(file, claim)
    } catch {
      continue
    }
    try {
      const outcome = await putBack(engine, rec.container, rec.action)
      await fsp.rm(claim, {force: true})
      debug('%s (%s) %s by pid %d: %s', rec.name, rec.container.slice(0, 12), rec.action, rec.pid, outcome)
      done.push({container: rec.container, name: rec.name, action: rec.action, outcome})
    } catch (e) {
      await fsp.rename(claim, file).catch(() => undefined)
      debug('cannot put %s back yet: %s', rec.name, (e as Error).message)
      done.push({container: rec.container, name: rec.name, action: rec.action, outcome: `failed: ${(e as Error).message}`})
    }
  }
  // helper containers of dead holyship processes (created, never started; they hold volumes);
  // only on an engine of this host (a unix socket): a pid means nothing on another host
  if (!engine.isLocalSocket) return done
  try {
    for (const c of await engine.listContainers(true)) {
      if (c.Labels?.['holyship.helper'] !== 'true') continue
      const m = /^\/?holyship-helper-(\d+)-/.exec(c.Names?.[0] ?? '')
      if (!m) continue
      const pid = Number(m[1])
      const alive = startTicks(pid) !== undefined && /node|holyship/.test(cmdline(pid))
      if (alive || c.State === 'running') continue
      await engine.removeContainer(c.Id).catch((e) => debug('cannot remove helper %s: %s', c.Id.slice(0, 12), (e as Error).message))
      done.push({container: c.Id, name: (c.Names?.[0] ?? '').replace(/^\//, ''), action: 'helper removed', outcome: 'removed'})
    }
  } catch (e) {
    debug('cannot look for leftover helper containers: %s', (e as Error).message)
  }
  return done
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ')
  } catch {
    return ''
  }
}

const recovered = new Map<string, Promise<Recovered[]>>()

/** recoverPausedContainers, at most once per engine per process (the hook commands call). */
export function recoverOnce(engine: Engine): Promise<Recovered[]> {
  let p = recovered.get(engine.host)
  if (!p) {
    p = recoverPausedContainers(engine).catch((e) => {
      debug('recovery failed: %s', (e as Error).message)
      return []
    })
    recovered.set(engine.host, p)
  }
  return p
}
