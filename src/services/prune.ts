/**
 * prune: the local repository (under its exclusive lock, then the catalogue is brought up to
 * date) or a remote (`--to REMOTE`: the same code on the remote's S3 backend, under a lock in
 * the remote). See src/repo/prune.ts for the safety argument.
 */
import {Catalogue, defaultCataloguePath} from '../catalogue/catalogue.js'
import {Progress} from '../progress.js'
import {RepoLock} from '../repo/lock.js'
import {PruneResult, pruneRepository} from '../repo/prune.js'
import {Repository} from '../repo/repository.js'
import {openRemote} from '../transfer/remotes.js'
import {withLockedContext} from './locking.js'
import {syncCatalogue} from './sync.js'

export interface PruneServiceOptions {
  repo?: string
  catalogue?: string
  /** a remote (name or s3:// URL) to prune instead of the local repository */
  to?: string
  endpoint?: string
  region?: string
  remotesFile?: string
  dryRun?: boolean
  /** packs younger than this are left alone (default 1 h) */
  graceMs?: number
  /** wait this long for other holders of the repository lock (default 0) */
  lockWaitMs?: number
  onWait?: (message: string) => void
  progress?: Progress
  /** with dryRun: count these snapshots as gone (forget --dry-run --prune) */
  assumeForgotten?: Set<string>
}

export async function prune(opts: PruneServiceOptions): Promise<PruneResult> {
  if (opts.to) return pruneRemote(opts)
  // a dry run changes nothing: a shared lock keeps a real prune from running under it
  return withLockedContext(
    {repo: opts.repo, catalogue: opts.catalogue, exclusive: !opts.dryRun, purpose: opts.dryRun ? 'prune --dry-run' : 'prune', waitMs: opts.lockWaitMs, onWait: opts.onWait},
    async (ctx, lock) => {
      // a fresh Repository: prune reads the index files itself, not the catalogue's copy
      const repo = await Repository.open(ctx.repo.backend, {loadIndex: false})
      const r = await pruneRepository(repo, {dryRun: opts.dryRun, graceMs: opts.graceMs, lock, treeCache: ctx.catalogue, progress: opts.progress})
      if (!opts.dryRun) await syncCatalogue(ctx.catalogue, ctx.repo)
      return r
    },
  )
}

async function pruneRemote(opts: PruneServiceOptions): Promise<PruneResult> {
  const remote = await openRemote({remote: opts.to!, endpoint: opts.endpoint, region: opts.region, remotesFile: opts.remotesFile})
  const cat = Catalogue.open(opts.catalogue ?? defaultCataloguePath())
  try {
    const repo = await Repository.open(remote.backend, {loadIndex: false})
    const lock = await RepoLock.acquire(remote.backend, {exclusive: !opts.dryRun, purpose: opts.dryRun ? 'prune --dry-run' : 'prune', waitMs: opts.lockWaitMs, onWait: opts.onWait})
    try {
      // trees are content-addressed: the catalogue's cache is valid for any repository
      return await pruneRepository(repo, {dryRun: opts.dryRun, graceMs: opts.graceMs, lock, treeCache: cat, progress: opts.progress, assumeForgotten: opts.assumeForgotten})
    } finally {
      await lock.release().catch(() => undefined)
    }
  } finally {
    cat.close()
    await remote.close()
  }
}
