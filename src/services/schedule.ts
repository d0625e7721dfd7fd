/**
 * The scheduler (`holyship schedule run`): a foreground loop that snapshots every scheduled
 * target when its cron fires, one line of log per run.
 *
 * - targets are re-discovered every `rescanSeconds` (labels of new or relabelled containers),
 *   and a container's labels are read again right before each of its runs;
 * - runs of the same target never overlap: a run that is due while the previous one is still
 *   going is skipped and reported (`overrun`), and a run longer than its interval is flagged;
 * - a run: shared repository lock → pre-hook (docker exec sh -c; non-zero aborts the run,
 *   the container was not touched) → snapshot (paused, or stopped with holyship.stop=true;
 *   always put back) → post-hook → retention (forget of this target's scheduled snapshots)
 *   → push to holyship.to → unlock; outcome in the catalogue, metrics, webhook;
 * - a failed run is logged and notified; the scheduler keeps going;
 * - SIGTERM/SIGINT: the current run finishes, then the scheduler exits 0; a second signal
 *   aborts the run (containers put back, locks released) and exits 0 at once.
 */
import * as os from 'node:os'
import {Catalogue, defaultCataloguePath} from '../catalogue/catalogue.js'
import {Engine} from '../docker/engine.js'
import {HolyshipError, classify} from '../errors.js'
import {formatBytes} from '../progress.js'
import {RepoLock} from '../repo/lock.js'
import {pruneRepository} from '../repo/prune.js'
import {Repository} from '../repo/repository.js'
import {
  ScheduleConfig,
  Target,
  TargetProblem,
  UncoveredMount,
  containerTarget,
  discoverTargets,
  loadConfig,
  uncoveredMounts,
} from '../schedule/config.js'
import {intervalMs, nextRun, nextRuns} from '../schedule/cron.js'
import {runHook} from '../schedule/hooks.js'
import {MetricsServer, TargetMetrics, renderMetrics, startMetricsServer} from '../schedule/metrics.js'
import {notification, postWebhook} from '../schedule/notify.js'
import {formatKeep} from '../schedule/retention.js'
import {forgetInContext} from './forget.js'
import {localRepoBackend, withLockedContext} from './locking.js'
import {push} from './remote.js'
import {ReaderChoice, snapshot} from './snapshot.js'
import {delegateSignals, restoreActiveGuards} from './state-guard.js'
import {syncCatalogue} from './sync.js'

/** the tag every scheduled snapshot carries; automatic retention only touches these */
export const SCHEDULED_TAG = 'scheduled'

export interface SchedulerOptions {
  repo?: string
  catalogue?: string
  dockerHost?: string
  /** config file (default: $HOLYSHIP_SCHEDULE_CONFIG, else ~/.config/holyship/schedule.json if present) */
  config?: string
  /** tests: the config itself instead of a file */
  configObject?: ScheduleConfig
  remotesFile?: string
  metricsPort?: number
  reader?: ReaderChoice
  /** runs at once (default: the config's `concurrency`, 1); runs of one target never overlap anyway */
  concurrency?: number
  /** one line per event (runs, hook output, start-up report) */
  log?: (line: string) => void
  /** every finished (or skipped) run */
  onRun?: (r: RunRecord) => void
  onReady?: (info: {metricsPort?: number; targets: string[]}) => void
  /** in-process stop: like SIGTERM (finish the current run, then return) */
  signal?: AbortSignal
  /** handle SIGINT/SIGTERM/SIGHUP (default true) */
  handleSignals?: boolean
  /** retention calendar in UTC instead of local time */
  utc?: boolean
}

export interface RunRecord {
  target: string
  kind: Target['kind']
  name: string
  ok: boolean
  /** not run: the previous run of the target was still going */
  skipped?: boolean
  startedAt: string
  durationMs: number
  snapshot?: string
  files?: number
  bytes?: number
  newBytes?: number
  error?: string
  hooks?: {pre?: {exitCode: number; durationMs: number} | 'skipped'; post?: {exitCode: number; durationMs: number} | 'skipped'}
  forgotten?: string[]
  shipped?: {to: string; ok: boolean; error?: string; bytesSent?: number}
  pruned?: {packsDeleted: number; bytesFreed: number}
  /** the run took longer than the schedule's interval */
  overran?: {intervalMs: number}
  warnings: string[]
}

export interface SchedulerResult {
  startedAt: string
  stoppedAt: string
  runs: number
  failures: number
  overruns: number
  stoppedBy: string
}

interface Slot {
  target: Target
  next?: Date
  running?: Promise<void>
  queued: boolean
  startedAt?: number
  metrics: TargetMetrics
  problem?: string
}

const stamp = (): string => new Date().toISOString()
const secs = (ms: number): string => `${(ms / 1000).toFixed(1)}s`

export async function runScheduler(opts: SchedulerOptions): Promise<SchedulerResult> {
  const log = opts.log ?? ((l: string) => process.stdout.write(l + '\n'))
  const say = (line: string): void => log(`${stamp()} ${line}`)
  const config = opts.configObject ?? (await loadConfig(opts.config))
  const engine = new Engine(opts.dockerHost)
  await engine.ping()
  // the repository must exist before we start; its id keys the scheduler state
  const backend = await localRepoBackend(opts.repo)
  const repoId = (await Repository.open(backend, {loadIndex: false})).id
  const state = Catalogue.open(opts.catalogue ?? defaultCataloguePath())
  const startedAt = Date.now()
  const slots = new Map<string, Slot>()
  const heldLocks = new Set<RepoLock>()
  const concurrency = Math.max(1, opts.concurrency ?? config.concurrency ?? 1)
  const lockWaitMs = config.lockWaitSeconds * 1000
  const rescanMs = Math.max(200, config.rescanSeconds * 1000)
  let runs = 0
  let failures = 0
  let overruns = 0
  let uncovered: UncoveredMount[] = []
  let stopRequested: string | undefined
  let active = 0
  const queue: Slot[] = []
  let wake: () => void = () => {}
  const problemsLogged = new Map<string, string>()

  // ---------------------------------------------------------------- signals
  const handleSignals = opts.handleSignals ?? true
  const onSignal = (sig: string): void => {
    if (!stopRequested) {
      stopRequested = sig
      say(active > 0 ? `${sig}: finishing the current run, then exiting (send it again to abort the run)` : `${sig}: exiting`)
      wake()
      return
    }
    if (!handleSignals) return
    say(`${sig} again: aborting the current run`)
    void (async () => {
      await restoreActiveGuards()
      await Promise.allSettled([...heldLocks].map((l) => l.release()))
      say('aborted: containers put back, locks released, nothing half-written was recorded')
      process.exit(0)
    })()
  }
  const signalHandlers: [string, () => void][] = []
  if (handleSignals) {
    delegateSignals(true)
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      const h = (): void => onSignal(sig)
      process.on(sig, h)
      signalHandlers.push([sig, h])
    }
  }
  const onAbort = (): void => onSignal('stop requested')
  opts.signal?.addEventListener('abort', onAbort)
  if (opts.signal?.aborted) onAbort()

  // ---------------------------------------------------------------- targets
  const rescan = async (first: boolean): Promise<void> => {
    const {targets, problems, containers} = await discoverTargets(engine, config)
    const now = new Date()
    const keys = new Set<string>()
    for (const t of targets) {
      keys.add(t.key)
      const slot = slots.get(t.key)
      if (!slot) {
        const s: Slot = {target: t, queued: false, next: nextRun(t.schedule, now), metrics: {target: t.key, runs: 0, failures: 0, overruns: 0, running: false}}
        slots.set(t.key, s)
        if (!first) say(`${t.key}: now scheduled (${t.schedule.source}${t.keep ? `, keep ${formatKeep(t.keep)}` : ''}), next run ${s.next?.toISOString() ?? 'never'}`)
      } else {
        if (slot.target.schedule.source !== t.schedule.source) {
          slot.next = nextRun(t.schedule, now)
          say(`${t.key}: schedule changed to ${t.schedule.source}, next run ${slot.next?.toISOString() ?? 'never'}`)
        }
        slot.target = t
      }
    }
    for (const [k, slot] of slots) {
      if (keys.has(k)) continue
      if (!slot.running && !slot.queued) {
        slots.delete(k)
        say(`${k}: no longer scheduled`)
      }
    }
    for (const p of problems) {
      if (problemsLogged.get(p.key) === p.error) continue
      problemsLogged.set(p.key, p.error)
      say(`${p.key}: not scheduled: ${p.error}`)
    }
    for (const k of problemsLogged.keys()) if (!problems.some((p) => p.key === k)) problemsLogged.delete(k)
    const before = new Set(uncovered.map((u) => `${u.type}:${u.source}`))
    uncovered = await uncoveredMounts(engine, containers, targets)
    // at start-up they are reported after the list of targets
    if (!first) reportUncovered(uncovered.filter((u) => !before.has(`${u.type}:${u.source}`)))
  }
  const reportUncovered = (list: UncoveredMount[]): void => {
    for (const u of list) say(`not covered by any schedule: ${u.type} ${u.source}${u.usedBy.length ? ` (used by ${u.usedBy.join(', ')})` : ' (no container uses it)'}`)
  }

  // ---------------------------------------------------------------- one run
  const runTarget = async (slot: Slot): Promise<RunRecord> => {
    const t0 = Date.now()
    let target = slot.target
    const rec: RunRecord = {target: target.key, kind: target.kind, name: target.name, ok: false, startedAt: new Date(t0).toISOString(), durationMs: 0, warnings: []}
    try {
      // labels afresh: a relabelled container runs with its new settings
      let running = false
      let containerId: string | undefined
      if (target.kind === 'container') {
        const info = await engine.inspectContainer(target.containerId ?? target.name)
        const fresh = containerTarget(target.name, info.Id, info.Config?.Labels, config, info.State.Running)
        if (!fresh) throw new HolyshipError('USAGE', 'the container no longer has a holyship.schedule')
        if ('error' in fresh) throw new HolyshipError('USAGE', fresh.error)
        target = fresh
        containerId = info.Id
        running = info.State.Running && !info.State.Paused
      }
      await withLockedContext(
        {repo: backend.location, catalogue: opts.catalogue, exclusive: target.kind === 'prune', purpose: `schedule ${target.key}`, waitMs: lockWaitMs, onWait: (m) => say(`${target.key}: ${m}`)},
        async (ctx, lock) => {
          heldLocks.add(lock)
          try {
            if (target.kind === 'prune') {
              const repo = await Repository.open(ctx.repo.backend, {loadIndex: false})
              const p = await pruneRepository(repo, {lock, graceMs: target.graceMs, treeCache: ctx.catalogue})
              await syncCatalogue(ctx.catalogue, ctx.repo)
              rec.pruned = {packsDeleted: p.deleted.length, bytesFreed: p.bytes.freed}
              return
            }
            const s = target.settings
            const hookLine = (which: string) => (line: string) => say(`${target.key} ${which}| ${line}`)
            let preOk = true
            if (s.pre) {
              if (!running) {
                rec.hooks = {...rec.hooks, pre: 'skipped'}
                rec.warnings.push('pre-hook not run: the container is not running')
              } else {
                const h = await runHook(engine, containerId!, s.pre, {timeoutMs: config.hookTimeoutSeconds * 1000, onLine: hookLine('pre')})
                rec.hooks = {...rec.hooks, pre: {exitCode: h.exitCode, durationMs: h.durationMs}}
                if (h.exitCode !== 0) {
                  preOk = false
                  throw new HolyshipError('DOCKER_FAILED', `pre-hook exited ${h.exitCode}; no snapshot taken, the container was left running`)
                }
              }
            }
            let snapError: unknown
            try {
              const [r] = await snapshot({
                repo: ctx.repo,
                catalogue: ctx.catalogue,
                engine,
                ...(target.kind === 'container' ? {containers: [containerId!]} : {volumes: [target.name]}),
                tags: [SCHEDULED_TAG],
                consistency: s.stop ? 'stop' : 'pause',
                reader: opts.reader,
                lock,
              })
              Object.assign(rec, {snapshot: r.id, files: r.files, bytes: r.bytes, newBytes: r.newBytes})
            } catch (e) {
              snapError = e
            }
            if (s.post && preOk) {
              const still = containerId ? (await engine.inspectContainer(containerId)).State : undefined
              if (!still?.Running) {
                rec.hooks = {...rec.hooks, post: 'skipped'}
                rec.warnings.push('post-hook not run: the container is not running')
              } else {
                const h = await runHook(engine, containerId!, s.post, {timeoutMs: config.hookTimeoutSeconds * 1000, onLine: hookLine('post')})
                rec.hooks = {...rec.hooks, post: {exitCode: h.exitCode, durationMs: h.durationMs}}
                if (h.exitCode !== 0 && !snapError) snapError = new HolyshipError('DOCKER_FAILED', `post-hook exited ${h.exitCode} (snapshot ${rec.snapshot?.slice(0, 12)} was taken and kept)`)
              }
            }
            if (snapError) throw snapError
            if (target.keep) {
              const f = await forgetInContext(ctx, {
                policy: target.keep,
                ...(target.kind === 'container' ? {container: target.name} : {volume: target.name}),
                tag: SCHEDULED_TAG,
                host: os.hostname(),
                utc: opts.utc,
              })
              rec.forgotten = f.removed
            }
            if (s.to) {
              try {
                const p = await push({remote: s.to, repo: backend.location, catalogue: opts.catalogue, snapshots: [rec.snapshot!], remotesFile: opts.remotesFile})
                rec.shipped = {to: s.to, ok: true, bytesSent: p.bytesSent}
              } catch (e) {
                rec.shipped = {to: s.to, ok: false, error: (e as Error).message}
                throw new HolyshipError(classify(e)?.code ?? 'REMOTE_UNREACHABLE', `shipping to ${s.to} failed: ${(e as Error).message} (snapshot ${rec.snapshot?.slice(0, 12)} is in the local repository)`)
              }
            }
          } finally {
            heldLocks.delete(lock)
          }
        },
      )
      rec.ok = true
    } catch (e) {
      rec.ok = false
      rec.error = (e as Error).message.split('\n')[0]
    }
    rec.durationMs = Date.now() - t0
    const iv = intervalMs(target.schedule, new Date(t0))
    if (iv !== undefined && rec.durationMs > iv) {
      rec.overran = {intervalMs: iv}
      rec.warnings.push(`took ${secs(rec.durationMs)}, longer than its interval of ${secs(iv)}`)
    }
    return rec
  }

  const describe = (r: RunRecord): string => {
    const parts: string[] = []
    if (r.snapshot) parts.push(`snapshot ${r.snapshot.slice(0, 12)} (${r.files ?? 0} files, ${formatBytes(r.bytes ?? 0)}, ${formatBytes(r.newBytes ?? 0)} new)`)
    if (r.pruned) parts.push(`pruned ${r.pruned.packsDeleted} packs, ${formatBytes(r.pruned.bytesFreed)} freed`)
    if (r.ok && r.hooks?.pre && r.hooks.pre !== 'skipped') parts.push(`pre-hook exit ${r.hooks.pre.exitCode}`)
    if (r.ok && r.hooks?.post && r.hooks.post !== 'skipped') parts.push(`post-hook exit ${r.hooks.post.exitCode}`)
    if (r.forgotten) parts.push(`forgot ${r.forgotten.length}`)
    if (r.shipped?.ok) parts.push(`shipped to ${r.shipped.to} (${formatBytes(r.shipped.bytesSent ?? 0)} sent)`)
    const head = r.ok ? `${r.target} ok in ${secs(r.durationMs)}` : `${r.target} FAILED in ${secs(r.durationMs)}: ${r.error}`
    return [head, parts.join(', '), r.warnings.length ? `warning: ${r.warnings.join('; ')}` : ''].filter(Boolean).join('; ')
  }

  const finished = async (slot: Slot, rec: RunRecord): Promise<void> => {
    runs++
    if (!rec.ok) failures++
    const m = slot.metrics
    m.runs++
    const endS = (Date.parse(rec.startedAt) + rec.durationMs) / 1000
    if (rec.ok) m.lastSuccessSeconds = endS
    else {
      m.failures++
      m.lastFailureSeconds = endS
    }
    m.lastDurationSeconds = rec.durationMs / 1000
    if (rec.bytes !== undefined) m.lastBytes = rec.bytes
    if (rec.newBytes !== undefined) m.lastNewBytes = rec.newBytes
    say(describe(rec))
    try {
      state.recordScheduleRun(repoId, slot.target.key, {
        at: Date.parse(rec.startedAt) + rec.durationMs,
        ok: rec.ok,
        error: rec.error,
        schedule: slot.target.schedule.source,
        snapshot: rec.snapshot,
        durationMs: rec.durationMs,
        bytes: rec.bytes,
        newBytes: rec.newBytes,
        nextRunAt: slot.next?.getTime(),
      })
    } catch (e) {
      say(`${slot.target.key}: could not record the run in the catalogue: ${(e as Error).message}`)
    }
    opts.onRun?.(rec)
    const hook = config.webhook
    if (hook && (!rec.ok || hook.onSuccess)) {
      const err = await postWebhook(
        hook.url,
        notification({
          event: rec.ok ? 'success' : 'failure',
          target: rec.target,
          ...(rec.kind === 'container' ? {container: rec.name} : rec.kind === 'volume' ? {volume: rec.name} : {}),
          ...(rec.snapshot ? {snapshot: rec.snapshot, bytes: rec.bytes, newBytes: rec.newBytes} : {}),
          durationMs: rec.durationMs,
          ...(rec.error ? {error: rec.error} : {}),
          details: {hooks: rec.hooks, forgotten: rec.forgotten, shipped: rec.shipped, warnings: rec.warnings},
        }),
      )
      if (err) say(`${rec.target}: ${err}`)
    }
  }

  const pump = (): void => {
    while (active < concurrency && queue.length > 0 && !stopRequested) {
      const slot = queue.shift()!
      slot.queued = false
      active++
      slot.startedAt = Date.now()
      slot.metrics.running = true
      slot.running = (async () => {
        try {
          const rec = await runTarget(slot)
          await finished(slot, rec)
        } catch (e) {
          say(`${slot.target.key}: internal error: ${(e as Error).message}`)
        } finally {
          active--
          slot.running = undefined
          slot.metrics.running = false
          wake()
        }
      })()
    }
  }

  // ---------------------------------------------------------------- start
  let metrics: MetricsServer | undefined
  try {
    await rescan(true)
    say(`holyship scheduler on ${engine.host}, repository ${backend.location}${config.file ? `, config ${config.file}` : ''}: ${slots.size} target(s)`)
    for (const s of slots.values()) {
      const t = s.target
      say(`  ${t.key}: ${t.schedule.source} (${t.source})${t.keep ? `, keep ${formatKeep(t.keep)}` : ''}${t.settings.to ? `, to ${t.settings.to}` : ''}${t.missing ? ', container not on the engine (yet)' : ''}, next ${s.next?.toISOString() ?? 'never'}`)
    }
    if (uncovered.length === 0) say('every volume and bind mount on the engine is covered by a schedule')
    else reportUncovered(uncovered)
    if (opts.metricsPort !== undefined) {
      metrics = await startMetricsServer(opts.metricsPort, () =>
        renderMetrics(
          [...slots.values()].map((s) => ({...s.metrics, ...(s.next ? {nextRunSeconds: s.next.getTime() / 1000} : {})})),
          {uncovered: uncovered.length, startedSeconds: startedAt / 1000},
        ),
      )
      say(`metrics on http://127.0.0.1:${metrics.port}/metrics`)
    }
    opts.onReady?.({metricsPort: metrics?.port, targets: [...slots.keys()]})

    // ---------------------------------------------------------------- loop
    let nextRescan = Date.now() + rescanMs
    while (!stopRequested) {
      let now = Date.now()
      if (now >= nextRescan) {
        try {
          await rescan(false)
        } catch (e) {
          say(`rescan failed: ${(e as Error).message}`)
        }
        now = Date.now()
        nextRescan = now + rescanMs
      }
      for (const slot of slots.values()) {
        if (!slot.next || slot.next.getTime() > now) continue
        // missed slots are not caught up: the next one is after now
        slot.next = nextRun(slot.target.schedule, new Date(now))
        if (slot.target.missing) continue
        if (slot.running || slot.queued) {
          overruns++
          slot.metrics.overruns++
          try {
            state.recordScheduleOverrun(repoId, slot.target.key)
          } catch (e) {
            say(`${slot.target.key}: could not record the overrun in the catalogue: ${(e as Error).message}`)
          }
          const since = slot.startedAt ? secs(now - slot.startedAt) : '?'
          say(`${slot.target.key} skipped: the previous run (started ${since} ago) is still going; the run takes longer than its interval`)
          opts.onRun?.({target: slot.target.key, kind: slot.target.kind, name: slot.target.name, ok: true, skipped: true, startedAt: new Date(now).toISOString(), durationMs: 0, warnings: ['previous run still going']})
          continue
        }
        slot.queued = true
        queue.push(slot)
      }
      pump()
      let until = nextRescan
      for (const s of slots.values()) if (s.next && !s.target.missing) until = Math.min(until, s.next.getTime())
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, until - Date.now()))
        wake = () => {
          clearTimeout(timer)
          resolve()
        }
      })
      wake = () => {}
    }
    // stop: queued runs are dropped, the running ones finish
    for (const s of queue.splice(0)) s.queued = false
    await Promise.allSettled([...slots.values()].map((s) => s.running).filter(Boolean))
  } finally {
    opts.signal?.removeEventListener('abort', onAbort)
    for (const [sig, h] of signalHandlers) process.off(sig, h)
    if (handleSignals) delegateSignals(false)
    await metrics?.close()
    state.close()
  }
  say(`scheduler stopped (${stopRequested}): ${runs} run(s), ${failures} failed, ${overruns} skipped as overruns`)
  return {startedAt: new Date(startedAt).toISOString(), stoppedAt: stamp(), runs, failures, overruns, stoppedBy: stopRequested ?? 'unknown'}
}

// ------------------------------------------------------------------------------ list

export interface ScheduleListOptions {
  dockerHost?: string
  config?: string
  configObject?: ScheduleConfig
  /** how many upcoming runs per target (default 3) */
  count?: number
}

export interface ScheduleListEntry {
  target: string
  kind: Target['kind']
  name: string
  schedule: string
  source: Target['source']
  next: string[]
  keep?: string
  to?: string
  stop?: boolean
  pre?: string
  post?: string
  /** a container named in the config that is not on the engine */
  missing?: boolean
}

export interface ScheduleListResult {
  targets: ScheduleListEntry[]
  problems: TargetProblem[]
}

/** What would run when: labels of the engine's containers and the config file. */
export async function listSchedule(opts: ScheduleListOptions): Promise<ScheduleListResult> {
  const config = opts.configObject ?? (await loadConfig(opts.config))
  const engine = new Engine(opts.dockerHost)
  await engine.ping()
  const {targets, problems} = await discoverTargets(engine, config)
  const now = new Date()
  return {
    targets: targets.map((t) => ({
      target: t.key,
      kind: t.kind,
      name: t.name,
      schedule: t.schedule.source,
      source: t.source,
      next: nextRuns(t.schedule, now, opts.count ?? 3).map((d) => d.toISOString()),
      ...(t.keep ? {keep: formatKeep(t.keep)} : {}),
      ...(t.settings.to ? {to: t.settings.to} : {}),
      ...(t.settings.stop ? {stop: true} : {}),
      ...(t.settings.pre ? {pre: t.settings.pre} : {}),
      ...(t.settings.post ? {post: t.settings.post} : {}),
      ...(t.missing ? {missing: true} : {}),
    })),
    problems,
  }
}
