/**
 * Repository locks on a real local backend: shared/exclusive rules, contention, stale
 * detection (dead process on this host, pid reuse, old locks of other hosts), refresh, lost
 * locks, and `unlock`.
 */
import {spawnSync} from 'node:child_process'
import {mkdtempSync, promises as fsp, readFileSync, readlinkSync, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {LocalBackend} from '../../src/backend/local.js'
import {LockInfo, RepoLock, deadReason, listLocks, processStart, removeLocks, withSharedLock} from '../../src/repo/lock.js'
import {sha256} from '../../src/repo/pack.js'
import {Repository} from '../../src/repo/repository.js'
import {unlock} from '../../src/services/locking.js'

let work: string
let n = 0
beforeAll(() => {
  work = mkdtempSync(path.join(os.tmpdir(), 'hs-lock-'))
})
afterAll(() => rmSync(work, {recursive: true, force: true}))

async function backend(): Promise<LocalBackend> {
  const dir = path.join(work, `r${n++}`)
  await fsp.mkdir(dir)
  await Repository.init(new LocalBackend(dir))
  return new LocalBackend(dir)
}

/** write a lock object as another holder would */
async function plant(b: LocalBackend, over: Partial<LockInfo>): Promise<string> {
  const now = new Date().toISOString()
  const info: LockInfo = {version: 1, exclusive: false, purpose: 'snapshot', host: 'elsewhere', pid: 4242, user: 'someone', created: now, time: now, ...over}
  const data = Buffer.from(JSON.stringify(info))
  const key = `locks/${sha256(data)}`
  await b.put(key, data)
  return key
}

/** a pid that is certainly not running: a child that has exited */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], {encoding: 'utf8'})
  return Number(r.stdout)
}

describe('repository locks', () => {
  it('shared locks coexist; exclusive excludes everything; release frees', async () => {
    const b = await backend()
    const s1 = await RepoLock.acquire(b, {exclusive: false, purpose: 'snapshot'})
    const s2 = await RepoLock.acquire(b, {exclusive: false, purpose: 'forget'})
    expect((await listLocks(b)).length).toBe(2)
    await expect(RepoLock.acquire(b, {exclusive: true, purpose: 'prune'})).rejects.toMatchObject({
      code: 'REPO_LOCKED',
      message: expect.stringMatching(new RegExp(`locked: a shared lock of (snapshot|forget) \\(pid ${process.pid} on ${os.hostname()}`)),
    })
    await s1.release()
    await s2.release()
    expect(await listLocks(b)).toEqual([])
    const x = await RepoLock.acquire(b, {exclusive: true, purpose: 'prune'})
    await expect(RepoLock.acquire(b, {exclusive: false, purpose: 'snapshot'})).rejects.toMatchObject({code: 'REPO_LOCKED', message: expect.stringMatching(/an exclusive lock of prune/)})
    await expect(RepoLock.acquire(b, {exclusive: true, purpose: 'prune'})).rejects.toMatchObject({code: 'REPO_LOCKED'})
    // a failed attempt leaves no lock object behind
    expect((await listLocks(b)).map((l) => l.id)).toEqual([x.id])
    await x.release()
  })

  it('racing acquirers: never two holders where one is exclusive', async () => {
    const b = await backend()
    for (let round = 0; round < 15; round++) {
      const attempts = await Promise.allSettled([
        RepoLock.acquire(b, {exclusive: true, purpose: 'prune-1'}),
        RepoLock.acquire(b, {exclusive: true, purpose: 'prune-2'}),
        RepoLock.acquire(b, {exclusive: false, purpose: 'snapshot-1'}),
        RepoLock.acquire(b, {exclusive: false, purpose: 'snapshot-2'}),
      ])
      const held = attempts.filter((a): a is PromiseFulfilledResult<RepoLock> => a.status === 'fulfilled').map((a) => a.value)
      const exclusive = held.filter((l) => l.exclusive)
      expect(exclusive.length <= 1).toBe(true)
      if (exclusive.length === 1) expect(held.length).toBe(1)
      for (const a of attempts) if (a.status === 'rejected') expect(a.reason).toMatchObject({code: 'REPO_LOCKED'})
      for (const l of held) await l.release()
      expect(await listLocks(b)).toEqual([])
    }
  })

  it('waits for a conflicting lock when asked to', async () => {
    const b = await backend()
    const s = await RepoLock.acquire(b, {exclusive: false, purpose: 'snapshot'})
    const waits: string[] = []
    setTimeout(() => void s.release(), 700)
    const t0 = Date.now()
    const x = await RepoLock.acquire(b, {exclusive: true, purpose: 'prune', waitMs: 20_000, onWait: (m) => waits.push(m)})
    expect(Date.now() - t0).toBeGreaterThanOrEqual(600)
    expect(waits).toEqual([expect.stringMatching(/^waiting for a shared lock of snapshot/)])
    await x.release()
  })

  it('stale detection: a dead process on this host, pid reuse, another boot', async () => {
    const b = await backend()
    const host = os.hostname()
    const dead = deadPid()
    expect(deadReason({version: 1, exclusive: true, purpose: 'p', host, pid: dead, user: 'u', created: '', time: ''})).toMatch(/not running/)
    // our own pid but another start time: the pid was reused
    expect(deadReason({version: 1, exclusive: true, purpose: 'p', host, pid: process.pid, start: '1', user: 'u', created: '', time: ''})).toMatch(/another process/)
    expect(deadReason({version: 1, exclusive: true, purpose: 'p', host, pid: process.pid, start: processStart(process.pid), user: 'u', created: '', time: ''})).toBeUndefined()
    // another boot: this host's before it rebooted only if written before this boot (a live holder refreshes every 5 minutes)
    const bootedAt = Date.now() - os.uptime() * 1000
    const at = (ms: number): string => new Date(ms).toISOString()
    expect(deadReason({version: 1, exclusive: true, purpose: 'p', host, pid: process.pid, boot: 'not-this-boot', user: 'u', created: '', time: at(bootedAt - 60_000)})).toMatch(/rebooted/)
    expect(deadReason({version: 1, exclusive: true, purpose: 'p', host, pid: process.pid, boot: 'not-this-boot', user: 'u', created: '', time: at(Date.now())})).toBeUndefined()
    // another machine with this host's name (its machine id says so): never judged, dead pid or other boot
    const machine = readFileSync('/etc/machine-id', 'utf8').trim()
    expect(deadReason({version: 1, exclusive: true, purpose: 'p', host, pid: dead, machine: 'f'.repeat(32), user: 'u', created: '', time: at(bootedAt - 60_000)})).toBeUndefined()
    expect(deadReason({version: 1, exclusive: true, purpose: 'p', host, pid: dead, boot: 'not-this-boot', machine: 'f'.repeat(32), user: 'u', created: '', time: at(bootedAt - 60_000)})).toBeUndefined()
    expect(deadReason({version: 1, exclusive: true, purpose: 'p', host, pid: dead, machine, user: 'u', created: '', time: ''})).toMatch(/not running/)
    // another host's process: we cannot tell, it is alive as far as we know
    expect(deadReason({version: 1, exclusive: true, purpose: 'p', host: 'elsewhere', pid: dead, user: 'u', created: '', time: ''})).toBeUndefined()
    // this host's name but another PID namespace (a container with --uts=host): its pid is not ours to judge
    const ourNs = readlinkSync('/proc/self/ns/pid')
    expect(deadReason({version: 1, exclusive: true, purpose: 'p', host, pid: dead, pidns: 'pid:[1]', user: 'u', created: '', time: ''})).toBeUndefined()
    expect(deadReason({version: 1, exclusive: true, purpose: 'p', host, pid: dead, pidns: ourNs, user: 'u', created: '', time: ''})).toMatch(/not running/)
    // and a lock we write names our namespace and machine
    const mine = await RepoLock.acquire(b, {exclusive: false, purpose: 'ns'})
    expect((await listLocks(b)).map((l) => [l.info?.pidns, l.info?.machine])).toEqual([[ourNs, machine]])
    await mine.release()
    // a live exclusive lock of a clone with our name (another boot, written a moment ago) blocks
    const clone = await plant(b, {host, pid: process.pid, boot: 'other-boot', exclusive: true, purpose: 'prune'})
    await expect(RepoLock.acquire(b, {exclusive: false, purpose: 'snapshot'})).rejects.toMatchObject({code: 'REPO_LOCKED'})
    expect((await listLocks(b)).map((l) => l.key)).toEqual([clone])
    await b.delete(clone)

    // a dead exclusive lock of this host does not block and is cleaned up
    const deadKey = await plant(b, {host, pid: dead, exclusive: true, purpose: 'prune'})
    const listed = await listLocks(b)
    expect(listed).toMatchObject([{key: deadKey, dead: true, stale: expect.stringMatching(/not running/)}])
    const s = await RepoLock.acquire(b, {exclusive: false, purpose: 'snapshot'})
    expect(await b.stat(deadKey)).toBeUndefined()
    await s.release()
  })

  it('an old lock of another host is stale but still blocks until `unlock --remove-stale`', async () => {
    const b = await backend()
    const old = new Date(Date.now() - 45 * 60_000).toISOString()
    const staleKey = await plant(b, {exclusive: true, purpose: 'prune', created: old, time: old})
    const freshKey = await plant(b, {exclusive: false, purpose: 'snapshot', host: 'third-host'})
    const l = await listLocks(b)
    expect(l.find((x) => x.key === staleKey)).toMatchObject({dead: false, stale: expect.stringMatching(/not refreshed for 45m/)})
    expect(l.find((x) => x.key === freshKey)?.stale).toBeUndefined()
    await expect(RepoLock.acquire(b, {exclusive: false, purpose: 'snapshot'})).rejects.toMatchObject({
      code: 'REPO_LOCKED',
      message: expect.stringMatching(/exclusive lock of prune \(pid 4242 on elsewhere.*stale: not refreshed/),
      hint: expect.stringMatching(/holyship unlock --remove-stale/),
    })
    // listing only
    const listedOnly = await unlock({repo: b.location})
    expect(listedOnly.listed).toBe(true)
    expect(listedOnly.kept).toHaveLength(2)
    expect(await b.stat(staleKey)).toBeDefined()
    // --remove-stale removes only the stale one
    const r = await unlock({repo: b.location, removeStale: true})
    expect(r.removed.map((x) => x.id)).toEqual([staleKey.slice(6)])
    expect(r.kept.map((x) => x.id)).toEqual([freshKey.slice(6)])
    const s = await RepoLock.acquire(b, {exclusive: false, purpose: 'snapshot'})
    await s.release()
    // --all removes everything
    expect((await removeLocks(b, {all: true})).removed).toHaveLength(1)
    expect(await listLocks(b)).toEqual([])
  })

  it('unreadable lock objects block (and are reported); empty ones are ignored', async () => {
    const b = await backend()
    await b.put(`locks/${sha256('garbage')}`, Buffer.from('garbage'))
    await b.put(`locks/${sha256('')}`, Buffer.alloc(0))
    await expect(RepoLock.acquire(b, {exclusive: false, purpose: 'snapshot'})).rejects.toMatchObject({code: 'REPO_LOCKED', message: expect.stringMatching(/unreadable lock/)})
    await b.delete(`locks/${sha256('garbage')}`)
    const s = await RepoLock.acquire(b, {exclusive: true, purpose: 'prune'})
    await s.release()
  })

  it('refresh replaces the lock object; a removed lock is lost and assertHeld refuses', async () => {
    const b = await backend()
    const l = await RepoLock.acquire(b, {exclusive: true, purpose: 'prune'})
    const first = l.id
    await new Promise((r) => setTimeout(r, 5))
    await l.refresh()
    expect(l.id).not.toBe(first)
    expect((await listLocks(b)).map((x) => x.id)).toEqual([l.id])
    await l.assertHeld()
    // someone runs `unlock --all` under us
    await removeLocks(b, {all: true})
    await expect(l.assertHeld()).rejects.toMatchObject({code: 'REPO_LOCKED', message: expect.stringMatching(/lost the exclusive lock.*removed by someone else/)})
    await l.release()
  })

  it('refreshes on its own timer', async () => {
    const b = await backend()
    const l = await RepoLock.acquire(b, {exclusive: false, purpose: 'snapshot', refreshMs: 100})
    const first = l.id
    await new Promise((r) => setTimeout(r, 450))
    expect(l.id).not.toBe(first)
    expect((await listLocks(b)).length).toBe(1)
    await l.release()
    expect(await listLocks(b)).toEqual([])
  })

  it('withSharedLock releases on failure too', async () => {
    const b = await backend()
    await expect(
      withSharedLock(b, 'snapshot', async () => {
        expect((await listLocks(b)).length).toBe(1)
        throw new Error('boom')
      }),
    ).rejects.toThrow('boom')
    expect(await listLocks(b)).toEqual([])
  })
})

describe('creating a repository', () => {
  it('two inits of one directory at the same moment: one repository is made, the other init is REPO_EXISTS', async () => {
    const dir = path.join(work, `race-${n++}`)
    await fsp.mkdir(dir)
    const results = await Promise.allSettled([1, 2, 3].map(() => Repository.init(new LocalBackend(dir))))
    const made = results.filter((r): r is PromiseFulfilledResult<Repository> => r.status === 'fulfilled')
    expect(made).toHaveLength(1)
    expect(results.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason.code)).toEqual(['REPO_EXISTS', 'REPO_EXISTS'])
    expect((await Repository.open(new LocalBackend(dir))).id).toBe(made[0].value.id)
  })
})
