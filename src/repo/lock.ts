/**
 * Repository locks: `locks/<sha256>` objects, one per holder, in the repository itself, so
 * they work across processes and hosts on any Backend (a directory, an S3 bucket).
 *
 *   {"version":1,"exclusive":false,"purpose":"snapshot","host":"h","pid":42,"user":"root",
 *    "boot":"<boot id>","start":"<process start tick>","pidns":"pid:[…]","machine":"<machine id>",
 *    "created":"<ISO>","time":"<ISO>"}
 *
 * - shared: writers (snapshot, forget, pull); any number at once. Exclusive: prune.
 * - acquire = write our lock, then list `locks/`: a shared lock gives up if another live
 *   exclusive lock exists; an exclusive one if any other live lock exists. Both sides write
 *   before they look, so of two contenders at least one sees the other (both may back off,
 *   then retry after a random delay): never both proceed. Needs a store whose listing shows
 *   a completed write (local disks; S3 since 2020).
 * - objects are never modified: a refresh writes a new lock object (new time, new name) and
 *   deletes the old one, every `refreshMs` (5 min). A holder that could not refresh for longer
 *   than `staleMs` (30 min) must assume its lock is gone (assertHeld throws): another host may
 *   have removed it as stale.
 * - stale: not refreshed for `staleMs`, or written on THIS host by a process that is gone
 *   (pid not running, or running since another start time: pid reuse, or last written before
 *   this host booted), in this PID namespace (a holder in a container with the host's name is
 *   never judged). This host: the same name and machine id (another machine of the same name,
 *   a cloned VM or a container given one --hostname, is judged like any other host). Locks
 *   of dead processes on this host are ignored (and removed) by acquire; locks that are only
 *   old (maybe a suspended process on another host) keep blocking until `holyship unlock
 *   --remove-stale` removes them.
 */
import {randomInt} from 'node:crypto'
import {readFileSync, readlinkSync} from 'node:fs'
import * as os from 'node:os'
import debugFactory from 'debug'
import {Backend, isNotFound} from '../backend/backend.js'
import {HolyshipError} from '../errors.js'
import {sha256} from './pack.js'

const debug = debugFactory('holyship:lock')

export const LOCK_STALE_MS = 30 * 60_000
export const LOCK_REFRESH_MS = 5 * 60_000

export interface LockInfo {
  version: 1
  exclusive: boolean
  /** what holds it: snapshot, prune, forget, schedule, … */
  purpose: string
  host: string
  pid: number
  user: string
  /** Linux boot id and the process's start time (clock ticks since boot): tell pid reuse apart */
  boot?: string
  start?: string
  /**
   * the holder's PID namespace (`pid:[inode]` of /proc/self/ns/pid): a process in a container
   * that shares the host's name (--uts=host, --network=host) has pids that mean nothing here
   */
  pidns?: string
  /** the holder's /etc/machine-id: a machine with our host name is not this host (cloned VMs, containers given one --hostname) */
  machine?: string
  /** when the holder first took the lock */
  created: string
  /** when this lock object was written (the last refresh) */
  time: string
}

export interface ListedLock {
  id: string
  key: string
  /** undefined when the object could not be parsed */
  info?: LockInfo
  /** why it is stale, if it is */
  stale?: string
  /** provably dead: written on this host by a process that no longer runs */
  dead: boolean
}

const lockKey = (id: string): string => `locks/${id}`

function readBootId(): string | undefined {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || undefined
  } catch {
    return undefined
  }
}

/** field 22 of /proc/PID/stat: start time in clock ticks since boot */
export function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // the command name (field 2) may hold spaces and parentheses: split after its last ')'
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return rest[19]
  } catch {
    return undefined
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function readPidNamespace(): string | undefined {
  try {
    return readlinkSync('/proc/self/ns/pid') || undefined
  } catch {
    return undefined
  }
}

function readMachineId(): string | undefined {
  for (const f of ['/etc/machine-id', '/var/lib/dbus/machine-id']) {
    try {
      const id = readFileSync(f, 'utf8').trim()
      if (id) return id
    } catch {
      // the next, or none
    }
  }
  return undefined
}

const BOOT_ID = readBootId()
const PID_NS = readPidNamespace()
const MACHINE_ID = readMachineId()

/** Why a lock written on this host belongs to a process that is gone, or undefined. */
export function deadReason(info: LockInfo, host = os.hostname(), bootedAt = Date.now() - os.uptime() * 1000): string | undefined {
  if (info.host !== host) return undefined
  // another machine that has our name
  if (info.machine !== undefined && MACHINE_ID !== undefined && info.machine !== MACHINE_ID) return undefined
  if (info.boot && BOOT_ID && info.boot !== BOOT_ID) {
    // another boot id: this host before it rebooted, or another machine with our name and
    // machine id (a clone); a live holder refreshes every LOCK_REFRESH_MS, so only a lock last
    // written before this boot can be this host's from before it
    return Date.parse(info.time) < bootedAt ? 'written before this host rebooted' : undefined
  }
  if (!Number.isInteger(info.pid) || info.pid <= 0) return undefined
  // its pid is not one of ours to look up (a lock of an older holyship has no namespace: it
  // is judged as before)
  if (info.pidns !== undefined && info.pidns !== PID_NS) return undefined
  if (!pidAlive(info.pid)) return `process ${info.pid} is not running`
  if (info.start) {
    const now = processStart(info.pid)
    if (now !== undefined && now !== info.start) return `process ${info.pid} is another process now`
  }
  return undefined
}

export function describeLock(l: ListedLock, now = Date.now()): string {
  if (!l.info) return `an unreadable lock ${l.key}`
  const i = l.info
  const age = Math.max(0, Math.round((now - Date.parse(i.time)) / 1000))
  return `${i.exclusive ? 'an exclusive' : 'a shared'} lock of ${i.purpose} (pid ${i.pid} on ${i.host}, user ${i.user}, since ${i.created}, refreshed ${formatAge(age)} ago)${l.stale ? ` — stale: ${l.stale}` : ''}`
}

function formatAge(s: number): string {
  if (s < 120) return `${s}s`
  if (s < 7200) return `${Math.round(s / 60)}m`
  return `${Math.round(s / 3600)}h`
}

/** Every lock of the repository with its staleness. A listing error is thrown, never ignored. */
export async function listLocks(backend: Backend, opts: {staleMs?: number; now?: number} = {}): Promise<ListedLock[]> {
  const staleMs = opts.staleMs ?? LOCK_STALE_MS
  const now = opts.now ?? Date.now()
  const out: ListedLock[] = []
  for (const {key} of await backend.list('locks/')) {
    const id = key.slice('locks/'.length)
    let data: Buffer
    try {
      data = await backend.get(key)
    } catch (e) {
      if (isNotFound(e)) continue // released between list and get
      throw e
    }
    let info: LockInfo | undefined
    try {
      const parsed = JSON.parse(data.toString('utf8')) as LockInfo
      if (parsed && typeof parsed === 'object' && typeof parsed.exclusive === 'boolean' && typeof parsed.time === 'string') info = parsed
    } catch {
      info = undefined
    }
    if (!info) {
      out.push({id, key, dead: false, stale: data.length === 0 ? 'empty lock object' : undefined})
      continue
    }
    const dead = deadReason(info)
    const t = Date.parse(info.time)
    const old = !Number.isFinite(t) ? 'no valid time' : now - t > staleMs ? `not refreshed for ${formatAge(Math.round((now - t) / 1000))}` : undefined
    out.push({id, key, info, dead: dead !== undefined, stale: dead ?? old})
  }
  return out
}

export interface AcquireOptions {
  exclusive: boolean
  purpose: string
  /** keep trying for this long when the repository is locked (default 0: fail at once) */
  waitMs?: number
  staleMs?: number
  refreshMs?: number
  /** called with a message when acquire has to wait */
  onWait?: (message: string) => void
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

export class RepoLock {
  private key: string
  private info: LockInfo
  private timer?: NodeJS.Timeout
  private lastRefresh: number
  private refreshing?: Promise<void>
  private lostReason?: string
  private released = false

  private constructor(readonly backend: Backend, key: string, info: LockInfo, private readonly staleMs: number) {
    this.key = key
    this.info = info
    this.lastRefresh = Date.now()
  }

  get id(): string {
    return this.key.slice('locks/'.length)
  }

  get exclusive(): boolean {
    return this.info.exclusive
  }

  /** Take a shared or exclusive lock; REPO_LOCKED when another holder conflicts (after waitMs). */
  static async acquire(backend: Backend, opts: AcquireOptions): Promise<RepoLock> {
    const staleMs = opts.staleMs ?? LOCK_STALE_MS
    const deadline = Date.now() + (opts.waitMs ?? 0)
    let announced = false
    for (;;) {
      const conflict = await RepoLock.tryAcquire(backend, opts, staleMs)
      if (conflict instanceof RepoLock) {
        conflict.startRefresh(opts.refreshMs ?? LOCK_REFRESH_MS)
        return conflict
      }
      const what = describeLock(conflict)
      if (Date.now() >= deadline) {
        throw new HolyshipError('REPO_LOCKED', `the repository at ${backend.location} is locked: ${what}`, {
          hint: conflict.stale
            ? 'if that process is gone, run `holyship unlock --remove-stale`'
            : 'wait for it to finish; if it is gone, `holyship unlock --remove-stale` removes locks older than 30 min',
        })
      }
      if (!announced) {
        opts.onWait?.(`waiting for ${what}`)
        announced = true
      }
      await sleep(Math.min(Math.max(0, deadline - Date.now()), 500 + randomInt(2000)))
    }
  }

  /** one attempt: our lock, or the lock that conflicts */
  private static async tryAcquire(backend: Backend, opts: AcquireOptions, staleMs: number): Promise<RepoLock | ListedLock> {
    const conflicts = async (ignore?: string): Promise<ListedLock | undefined> => {
      for (const l of await listLocks(backend, {staleMs})) {
        if (l.id === ignore) continue
        if (l.dead) {
          // provably gone (this host, process not running): clean up, never block on it
          debug('removing dead lock %s: %s', l.id.slice(0, 12), l.stale)
          await backend.delete(l.key)
          continue
        }
        // an empty object is a failed upload of a lock (restic #4061), not a holder
        if (!l.info && l.stale === 'empty lock object') continue
        if (opts.exclusive || !l.info || l.info.exclusive) return l
      }
      return undefined
    }
    // an exclusive lock looks first, so it does not write a lock only to remove it again
    if (opts.exclusive) {
      const c = await conflicts()
      if (c) return c
    }
    const now = new Date().toISOString()
    const info: LockInfo = {
      version: 1,
      exclusive: opts.exclusive,
      purpose: opts.purpose,
      host: os.hostname(),
      pid: process.pid,
      user: userName(),
      ...(BOOT_ID ? {boot: BOOT_ID} : {}),
      ...(processStart(process.pid) ? {start: processStart(process.pid)} : {}),
      ...(PID_NS ? {pidns: PID_NS} : {}),
      ...(MACHINE_ID ? {machine: MACHINE_ID} : {}),
      created: now,
      time: now,
    }
    const key = await writeLock(backend, info)
    let c: ListedLock | undefined
    try {
      c = await conflicts(key.slice('locks/'.length))
    } catch (e) {
      await backend.delete(key).catch(() => {})
      throw e
    }
    if (c) {
      await backend.delete(key)
      return c
    }
    debug('%s lock %s taken for %s', opts.exclusive ? 'exclusive' : 'shared', key.slice(6, 18), opts.purpose)
    return new RepoLock(backend, key, info, staleMs)
  }

  private startRefresh(refreshMs: number): void {
    this.timer = setInterval(() => void this.refresh().catch(() => {}), refreshMs)
    this.timer.unref()
  }

  /**
   * Write a fresh lock object and remove the previous one. If the previous one is gone,
   * someone removed our lock (`unlock`): the lock is lost and assertHeld() throws from now on.
   */
  refresh(): Promise<void> {
    this.refreshing ??= (async () => {
      try {
        if (this.released || this.lostReason) return
        if ((await this.backend.stat(this.key)) === undefined) {
          this.lostReason = `lock ${this.key} was removed by someone else`
          return
        }
        const info: LockInfo = {...this.info, time: new Date().toISOString()}
        const key = await writeLock(this.backend, info)
        const old = this.key
        this.key = key
        this.info = info
        this.lastRefresh = Date.now()
        if (old !== key) await this.backend.delete(old)
        debug('lock refreshed: %s', key.slice(6, 18))
      } catch (e) {
        debug('lock refresh failed: %s', (e as Error).message)
        throw e
      } finally {
        this.refreshing = undefined
      }
    })()
    return this.refreshing
  }

  /**
   * Throw REPO_LOCKED unless the lock is still ours and fresh: call before an irreversible
   * step (prune deleting, a snapshot writing its manifest). Refreshes first when half stale.
   */
  async assertHeld(): Promise<void> {
    if (!this.lostReason && !this.released && Date.now() - this.lastRefresh > this.staleMs / 2) {
      await this.refresh().catch(() => {})
    }
    if (!this.lostReason && this.released) this.lostReason = 'the lock was released'
    if (!this.lostReason && Date.now() - this.lastRefresh > this.staleMs - 60_000) {
      this.lostReason = `the lock could not be refreshed for ${Math.round((Date.now() - this.lastRefresh) / 60_000)} min and may have been removed as stale`
    }
    if (!this.lostReason && (await this.backend.stat(this.key)) === undefined) this.lostReason = `lock ${this.key} was removed by someone else`
    if (this.lostReason) {
      throw new HolyshipError('REPO_LOCKED', `lost the ${this.exclusive ? 'exclusive' : 'shared'} lock on ${this.backend.location}: ${this.lostReason}; stopping before anything else is changed`)
    }
  }

  async release(): Promise<void> {
    if (this.timer) clearInterval(this.timer)
    if (this.released) return
    await this.refreshing?.catch(() => {})
    this.released = true
    await this.backend.delete(this.key)
    debug('lock released: %s', this.key.slice(6, 18))
  }
}

async function writeLock(backend: Backend, info: LockInfo): Promise<string> {
  const data = Buffer.from(JSON.stringify(info))
  const key = lockKey(sha256(data))
  await backend.put(key, data)
  return key
}

function userName(): string {
  try {
    return os.userInfo().username
  } catch {
    return String(process.getuid?.() ?? '?')
  }
}

/** Run fn under a lock and always release it. */
export async function withLock<T>(backend: Backend, opts: AcquireOptions, fn: (lock: RepoLock) => Promise<T>): Promise<T> {
  const lock = await RepoLock.acquire(backend, opts)
  try {
    return await fn(lock)
  } finally {
    await lock.release().catch((e) => debug('releasing the lock failed: %s', (e as Error).message))
  }
}

/**
 * The helper writers call: a shared lock for the duration of fn. Take it BEFORE the
 * repository's index is loaded (openContext), so that a prune that finished just before is
 * seen, and call `lock.assertHeld()` right before writing the snapshot manifest.
 */
export function withSharedLock<T>(backend: Backend, purpose: string, fn: (lock: RepoLock) => Promise<T>, opts: {waitMs?: number; onWait?: (m: string) => void} = {}): Promise<T> {
  return withLock(backend, {exclusive: false, purpose, waitMs: opts.waitMs, onWait: opts.onWait}, fn)
}

export interface UnlockResult {
  removed: {id: string; description: string}[]
  kept: {id: string; description: string}[]
}

/** Remove stale locks (or all, with `all`). Returns what was removed and what is left. */
export async function removeLocks(backend: Backend, opts: {all?: boolean; staleMs?: number}): Promise<UnlockResult> {
  const out: UnlockResult = {removed: [], kept: []}
  for (const l of await listLocks(backend, {staleMs: opts.staleMs})) {
    const description = describeLock(l)
    if (opts.all || l.stale) {
      await backend.delete(l.key)
      out.removed.push({id: l.id, description})
    } else out.kept.push({id: l.id, description})
  }
  return out
}
