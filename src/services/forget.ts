/**
 * forget: apply retention rules per target and remove the snapshots they do not keep (their
 * manifests `snapshots/<id>` and catalogue rows; the data goes with the next prune).
 * Snapshots are grouped by host, kind and name (a container, or a standalone volume), so one
 * host's snapshots never make another's look redundant.
 */
import * as os from 'node:os'
import {SnapshotRow} from '../catalogue/catalogue.js'
import {HolyshipError} from '../errors.js'
import {Progress} from '../progress.js'
import {snapshotKey} from '../repo/format.js'
import {PruneResult, pruneRepository} from '../repo/prune.js'
import {Repository} from '../repo/repository.js'
import {KeepPolicy, applyRetention, formatKeep, keepsSomething} from '../schedule/retention.js'
import {Context} from './context.js'
import {withLockedContext} from './locking.js'
import {syncCatalogue} from './sync.js'

export interface ForgetSelection {
  /** only snapshots of this container */
  container?: string
  /** only snapshots of this standalone volume */
  volume?: string
  tag?: string
  /** only snapshots taken on this host */
  host?: string
}

export interface ForgetOptions extends ForgetSelection {
  repo?: string
  catalogue?: string
  policy: KeepPolicy
  dryRun?: boolean
  /** prune afterwards (exclusive lock) */
  prune?: boolean
  graceMs?: number
  lockWaitMs?: number
  onWait?: (message: string) => void
  progress?: Progress
  /** calendar buckets in UTC instead of local time */
  utc?: boolean
}

export interface ForgetGroup {
  host: string
  kind: 'container' | 'volume'
  name: string
  keep: {id: string; time: string; reasons: string[]}[]
  remove: {id: string; time: string}[]
}

export interface ForgetResult {
  dryRun: boolean
  policy: string
  groups: ForgetGroup[]
  /** ids removed (dry run: that would be) */
  removed: string[]
  kept: number
  prune?: PruneResult
}

/** Decide and (unless dryRun) remove, in an open context; the caller holds a lock. */
export async function forgetInContext(ctx: Context, opts: ForgetSelection & {policy: KeepPolicy; dryRun?: boolean; utc?: boolean}): Promise<ForgetResult> {
  if (!keepsSomething(opts.policy)) {
    throw new HolyshipError('USAGE', 'give at least one --keep-* rule with a count above 0 (forget with no rule would keep nothing)')
  }
  if (opts.container !== undefined && opts.volume !== undefined) throw new HolyshipError('USAGE', 'give --container or --volume, not both')
  const {repo, catalogue} = ctx
  let rows: SnapshotRow[] = catalogue.listSnapshots(repo.id, {container: opts.container, tag: opts.tag})
  if (opts.container !== undefined) rows = rows.filter((r) => r.kind === 'container')
  if (opts.volume !== undefined) rows = rows.filter((r) => r.kind === 'volume' && r.name === opts.volume)
  if (opts.host !== undefined) rows = rows.filter((r) => r.host === opts.host)
  const groups = new Map<string, SnapshotRow[]>()
  for (const r of rows) {
    const k = `${r.host}\0${r.kind}\0${r.name}`
    const g = groups.get(k)
    if (g) g.push(r)
    else groups.set(k, [r])
  }
  const out: ForgetGroup[] = []
  const removed: string[] = []
  let kept = 0
  for (const g of groups.values()) {
    const d = applyRetention(
      g.map((r) => ({id: r.id, time: Date.parse(r.time), row: r})),
      opts.policy,
      {utc: opts.utc},
    )
    out.push({
      host: g[0].host,
      kind: g[0].kind,
      name: g[0].name,
      keep: d.keep.map((k) => ({id: k.item.id, time: k.item.row.time, reasons: k.reasons})),
      remove: d.remove.map((r) => ({id: r.id, time: r.row.time})),
    })
    kept += d.keep.length
    removed.push(...d.remove.map((r) => r.id))
  }
  out.sort((a, b) => (a.kind + a.name + a.host < b.kind + b.name + b.host ? -1 : 1))
  if (!opts.dryRun) {
    for (const id of removed) {
      await repo.backend.delete(snapshotKey(id))
      catalogue.removeSnapshot(repo.id, id)
    }
  }
  return {dryRun: opts.dryRun ?? false, policy: formatKeep(opts.policy), groups: out, removed, kept}
}

export async function forget(opts: ForgetOptions): Promise<ForgetResult> {
  const r = await withLockedContext(
    {repo: opts.repo, catalogue: opts.catalogue, exclusive: false, purpose: 'forget', waitMs: opts.lockWaitMs, onWait: opts.onWait},
    async (ctx) => {
      const r = await forgetInContext(ctx, opts)
      if (opts.prune && opts.dryRun) {
        // what prune would free once these snapshots are gone
        const repo = await Repository.open(ctx.repo.backend, {loadIndex: false})
        r.prune = await pruneRepository(repo, {dryRun: true, graceMs: opts.graceMs, assumeForgotten: new Set(r.removed), treeCache: ctx.catalogue, progress: opts.progress})
      }
      return r
    },
  )
  if (opts.prune && !opts.dryRun) {
    r.prune = await withLockedContext(
      {repo: opts.repo, catalogue: opts.catalogue, exclusive: true, purpose: 'prune', waitMs: opts.lockWaitMs, onWait: opts.onWait},
      async (ctx, lock) => {
        const repo = await Repository.open(ctx.repo.backend, {loadIndex: false})
        const p = await pruneRepository(repo, {graceMs: opts.graceMs, lock, treeCache: ctx.catalogue, progress: opts.progress})
        await syncCatalogue(ctx.catalogue, ctx.repo)
        return p
      },
    )
  }
  return r
}

export const thisHost = (): string => os.hostname()
