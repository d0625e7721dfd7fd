/**
 * forget: apply retention rules per target and remove the snapshots they do not keep (their
 * manifests `snapshots/<id>` and catalogue rows; the data goes with the next prune).
 * Snapshots are grouped by host, kind and name (a container, or a standalone volume), so one
 * host's snapshots never make another's look redundant.
 */
import * as os from 'node:os'
import {Backend} from '../backend/backend.js'
import {Catalogue, REPLACED_TAG, SnapshotRow, defaultCataloguePath} from '../catalogue/catalogue.js'
import {HolyshipError} from '../errors.js'
import {Progress} from '../progress.js'
import {snapshotKey} from '../repo/format.js'
import {RepoLock} from '../repo/lock.js'
import {PruneResult, pruneRepository} from '../repo/prune.js'
import {Repository} from '../repo/repository.js'
import {KeepPolicy, applyRetention, formatKeep, keepsSomething} from '../schedule/retention.js'
import {openRemote} from '../transfer/remotes.js'
import {Context} from './context.js'
import {withLockedContext} from './locking.js'
import {prune} from './prune.js'
import {refreshRemoteSnapshots, requireRemoteConfig} from './remote.js'
import {syncCatalogue} from './sync.js'

export interface ForgetSelection {
  /** only snapshots of this container */
  container?: string
  /** only snapshots of this standalone volume */
  volume?: string
  tag?: string
  /** only snapshots taken on this host */
  host?: string
  /** these snapshots (ids or unique prefixes), instead of rules: each is removed */
  ids?: string[]
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
  /** a remote (name or s3:// URL) whose snapshots to forget instead of the local repository's */
  to?: string
  endpoint?: string
  region?: string
  remotesFile?: string
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

type Decision = ForgetSelection & {policy: KeepPolicy; dryRun?: boolean; utc?: boolean}

function checkRules(opts: Decision): void {
  if (opts.ids?.length) {
    if (Object.keys(opts.policy).length || opts.container !== undefined || opts.volume !== undefined || opts.tag !== undefined || opts.host !== undefined) {
      throw new HolyshipError('USAGE', 'give snapshot ids, or --keep-* rules (with --container, --volume, --tag, --host), not both')
    }
    for (const ref of opts.ids) if (!/^[0-9a-fA-F]{4,64}$/.test(ref)) throw new HolyshipError('USAGE', `forget takes snapshot ids (or unique prefixes of 4 or more hex characters), not "${ref}"`)
    return
  }
  if (!keepsSomething(opts.policy)) {
    throw new HolyshipError('USAGE', 'give snapshot ids, or at least one --keep-* rule with a count above 0 (forget with no rule would keep nothing)')
  }
  if (opts.container !== undefined && opts.volume !== undefined) throw new HolyshipError('USAGE', 'give --container or --volume, not both')
}

/** Decide and (unless dryRun) remove, in an open context; the caller holds a lock. */
export async function forgetInContext(ctx: Context, opts: Decision): Promise<ForgetResult> {
  checkRules(opts)
  return forgetIn({id: ctx.repo.id, backend: ctx.repo.backend, catalogue: ctx.catalogue}, opts)
}

/**
 * Decide from the catalogue's rows of repository `where.id` and (unless dryRun) delete the
 * manifests of what the rules do not keep from `where.backend`, and their rows.
 */
async function forgetIn(where: {id: string; backend: Backend; catalogue: Catalogue}, opts: Decision): Promise<ForgetResult> {
  const {catalogue} = where
  if (opts.ids?.length) return forgetIds(where, opts.ids, opts.dryRun ?? false)
  let rows: SnapshotRow[] = catalogue.listSnapshots(where.id, {container: opts.container, tag: opts.tag})
  if (opts.container !== undefined) rows = rows.filter((r) => r.kind === 'container')
  if (opts.volume !== undefined) rows = rows.filter((r) => r.kind === 'volume' && r.name === opts.volume)
  if (opts.host !== undefined) rows = rows.filter((r) => r.host === opts.host)
  // what a restore replaced is not a backup: it neither takes a backup's place under
  // --keep-last nor goes by the rules, unless --tag replaced-by-restore asks for it
  if (opts.tag !== REPLACED_TAG) rows = rows.filter((r) => !r.tags.includes(REPLACED_TAG))
  const groups = new Map<string, SnapshotRow[]>()
  for (const r of rows) {
    const k = groupKey(r)
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
  if (!opts.dryRun) await removeSnapshots(where, removed)
  return {dryRun: opts.dryRun ?? false, policy: formatKeep(opts.policy), groups: out, removed, kept}
}

/** the group a snapshot is decided in: its host, kind and name */
const groupKey = (r: SnapshotRow): string => `${r.host}\0${r.kind}\0${r.name}`

/** delete the manifests of `ids` from the repository or remote, and their rows from the catalogue */
async function removeSnapshots(where: {id: string; backend: Backend; catalogue: Catalogue}, ids: string[]): Promise<void> {
  for (const id of ids) {
    await where.backend.delete(snapshotKey(id))
    where.catalogue.removeSnapshot(where.id, id)
  }
}

/** forget ID…: each named snapshot goes (all are resolved before any is removed) */
async function forgetIds(where: {id: string; backend: Backend; catalogue: Catalogue}, refs: string[], dryRun: boolean): Promise<ForgetResult> {
  const ids = [...new Set(refs.map((r) => where.catalogue.resolveSnapshot(where.id, r)))]
  const byId = new Map(where.catalogue.listSnapshots(where.id).map((r) => [r.id, r]))
  const groups = new Map<string, ForgetGroup>()
  for (const id of ids) {
    const r = byId.get(id)!
    const k = groupKey(r)
    if (!groups.has(k)) groups.set(k, {host: r.host, kind: r.kind, name: r.name, keep: [], remove: []})
    groups.get(k)!.remove.push({id, time: r.time})
  }
  if (!dryRun) await removeSnapshots(where, ids)
  return {dryRun, policy: 'by id', groups: [...groups.values()], removed: ids, kept: byId.size - ids.length}
}

export async function forget(opts: ForgetOptions): Promise<ForgetResult> {
  if (opts.to !== undefined) return forgetRemote(opts)
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

/**
 * forget --to REMOTE: the same rules on a remote's snapshots (its list read afresh into the
 * catalogue first), their manifests deleted from the remote under a shared lock there; with
 * --prune, prune --to REMOTE afterwards (its exclusive lock). The local repository is not
 * touched, nor its snapshots: a remote keeps its own retention.
 */
async function forgetRemote(opts: ForgetOptions): Promise<ForgetResult> {
  checkRules(opts)
  const remote = await openRemote({remote: opts.to!, endpoint: opts.endpoint, region: opts.region, remotesFile: opts.remotesFile})
  let r: ForgetResult
  try {
    const cat = Catalogue.open(opts.catalogue ?? defaultCataloguePath())
    try {
      // nothing (not even a lock) is written where there is no holyship repository
      await requireRemoteConfig(remote)
      const lock = await RepoLock.acquire(remote.backend, {exclusive: false, purpose: 'forget', waitMs: opts.lockWaitMs, onWait: opts.onWait})
      try {
        await refreshRemoteSnapshots({remote: opts.to!, catalogue: opts.catalogue, progress: opts.progress}, remote, cat)
        r = await forgetIn({id: remote.namespace, backend: remote.backend, catalogue: cat}, opts)
      } finally {
        await lock.release().catch(() => undefined)
      }
    } finally {
      cat.close()
    }
  } finally {
    await remote.close()
  }
  if (opts.prune) {
    r.prune = await prune({
      to: opts.to,
      endpoint: opts.endpoint,
      region: opts.region,
      remotesFile: opts.remotesFile,
      catalogue: opts.catalogue,
      dryRun: opts.dryRun,
      assumeForgotten: opts.dryRun ? new Set(r.removed) : undefined,
      graceMs: opts.graceMs,
      lockWaitMs: opts.lockWaitMs,
      onWait: opts.onWait,
      progress: opts.progress,
    })
  }
  return r
}

export const thisHost = (): string => os.hostname()
