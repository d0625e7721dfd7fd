/**
 * status: per scheduled target its schedule, last success and failure, next run and sizes
 * (from the catalogue: snapshots and the scheduler's state), and every volume and bind mount
 * on the engine that no schedule covers.
 */
import {Engine} from '../docker/engine.js'
import {describeLock, listLocks} from '../repo/lock.js'
import {ScheduleConfig, Target, TargetProblem, UncoveredMount, discoverTargets, loadConfig, uncoveredMounts} from '../schedule/config.js'
import {nextRun} from '../schedule/cron.js'
import {formatKeep} from '../schedule/retention.js'
import {withContext} from './run.js'

export interface StatusOptions {
  repo?: string
  catalogue?: string
  dockerHost?: string
  config?: string
  configObject?: ScheduleConfig
}

export interface TargetStatus {
  target: string
  kind: Target['kind']
  name: string
  /** false: not scheduled (any more) but the scheduler has a record of it */
  scheduled: boolean
  schedule?: string
  keep?: string
  to?: string
  nextRun?: string
  lastSuccess?: string
  lastFailure?: string
  lastError?: string
  lastDurationMs?: number
  /** the newest snapshot of the target (any, not only scheduled ones) */
  lastSnapshot?: {id: string; time: string; bytes: number; newBytes: number}
  snapshots: number
  /** what its snapshots hold together (sum of their sizes, before dedup) */
  snapshotBytes: number
  runs: number
  failures: number
  overruns: number
  missing?: boolean
}

export interface StatusResult {
  repository: string
  engine: string
  repositoryBytes: number
  snapshots: number
  targets: TargetStatus[]
  uncovered: UncoveredMount[]
  problems: TargetProblem[]
  locks: string[]
}

const iso = (ms: number | undefined): string | undefined => (ms === undefined ? undefined : new Date(ms).toISOString())

export async function status(opts: StatusOptions): Promise<StatusResult> {
  const config = opts.configObject ?? (await loadConfig(opts.config))
  return withContext({repo: opts.repo, catalogue: opts.catalogue, 'docker-host': opts.dockerHost}, async (ctx) => {
    const engine = new Engine(opts.dockerHost)
    await engine.ping()
    const {targets, problems, containers} = await discoverTargets(engine, config)
    const states = new Map(ctx.catalogue.scheduleStates(ctx.repo.id).map((s) => [s.target, s]))
    const now = new Date()
    const out: TargetStatus[] = []
    const describeTarget = (key: string, kind: Target['kind'], name: string, t?: Target): TargetStatus => {
      const st = states.get(key)
      const rows =
        kind === 'container'
          ? ctx.catalogue.listSnapshots(ctx.repo.id, {container: name}).filter((r) => r.kind === 'container')
          : kind === 'volume'
            ? ctx.catalogue.listSnapshots(ctx.repo.id, {volume: name}).filter((r) => r.kind === 'volume' && r.name === name)
            : []
      const last = rows[rows.length - 1]
      const next = t ? nextRun(t.schedule, now) : undefined
      return {
        target: key,
        kind,
        name,
        scheduled: t !== undefined,
        ...(t ? {schedule: t.schedule.source} : st?.schedule ? {schedule: st.schedule} : {}),
        ...(t?.keep ? {keep: formatKeep(t.keep)} : {}),
        ...(t?.settings.to ? {to: t.settings.to} : {}),
        ...(next && !t?.missing ? {nextRun: next.toISOString()} : {}),
        ...(st?.lastSuccessAt ? {lastSuccess: iso(st.lastSuccessAt)} : {}),
        ...(st?.lastFailureAt ? {lastFailure: iso(st.lastFailureAt), lastError: st.lastError} : {}),
        ...(st?.lastDurationMs !== undefined ? {lastDurationMs: st.lastDurationMs} : {}),
        ...(last ? {lastSnapshot: {id: last.id, time: last.time, bytes: last.bytes, newBytes: last.newBytes}} : {}),
        snapshots: rows.length,
        snapshotBytes: rows.reduce((n, r) => n + r.bytes, 0),
        runs: st?.runs ?? 0,
        failures: st?.failures ?? 0,
        overruns: st?.overruns ?? 0,
        ...(t?.missing ? {missing: true} : {}),
      }
    }
    for (const t of targets) out.push(describeTarget(t.key, t.kind, t.name, t))
    for (const [key] of states) {
      if (targets.some((t) => t.key === key)) continue
      const [kind, ...rest] = key.split(':')
      const k = (kind === 'container' || kind === 'volume' ? kind : 'prune') as Target['kind']
      out.push(describeTarget(key, k, k === 'prune' ? 'prune' : rest.join(':')))
    }
    const uncovered = await uncoveredMounts(engine, containers, targets)
    const locks = (await listLocks(ctx.repo.backend)).map((l) => describeLock(l))
    const packs = ctx.catalogue.packSizes(ctx.repo.id)
    return {
      repository: ctx.repo.backend.location,
      engine: engine.host,
      repositoryBytes: [...packs.values()].reduce((n, s) => n + s, 0),
      snapshots: ctx.catalogue.snapshotIds(ctx.repo.id).length,
      targets: out,
      uncovered,
      problems,
      locks,
    }
  })
}
