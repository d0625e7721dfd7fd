/**
 * Opening the local repository under a repository lock, and `holyship unlock`.
 *
 * The lock is taken BEFORE the catalogue is synced and the index loaded: a prune that
 * finished a moment ago has then rewritten the index, and the sync sees it (an index file the
 * catalogue knew is gone → every blob location is relearnt). A writer that loaded its index
 * first could dedup against a blob that prune has just deleted.
 */
import {promises as fsp} from 'node:fs'
import * as path from 'node:path'
import {Backend} from '../backend/backend.js'
import {LocalBackend} from '../backend/local.js'
import {HolyshipError} from '../errors.js'
import {ListedLock, RepoLock, UnlockResult, describeLock, listLocks, removeLocks} from '../repo/lock.js'
import {Repository} from '../repo/repository.js'
import {openRemote} from '../transfer/remotes.js'
import {Context, defaultRepoPath, openContext} from './context.js'

export interface LockedContextOptions {
  repo?: string
  catalogue?: string
  exclusive: boolean
  purpose: string
  /** wait this long for a conflicting lock to go away (default 0) */
  waitMs?: number
  onWait?: (message: string) => void
  /** read the blob index only when asked (Context.ensureIndex) */
  lazyIndex?: boolean
}

/** The local repository's backend, after checking it is an initialised repository. */
export async function localRepoBackend(repoDir?: string): Promise<LocalBackend> {
  const dir = path.resolve(repoDir ?? defaultRepoPath())
  const st = await fsp.stat(dir).catch(() => undefined)
  if (!st) throw new HolyshipError('REPO_MISSING', `no repository at ${dir}`, {hint: 'run `holyship init` (or pass --repo / set HOLYSHIP_REPO)'})
  if (!st.isDirectory()) throw new HolyshipError('REPO_MISSING', `${dir} is not a directory`)
  const backend = new LocalBackend(dir)
  // refuses a directory without a holyship config before a lock file is written into it
  await Repository.open(backend, {loadIndex: false})
  return backend
}

/** Lock the local repository, then open it (catalogue synced), run fn, close, unlock. */
export async function withLockedContext<T>(opts: LockedContextOptions, fn: (ctx: Context, lock: RepoLock) => Promise<T>): Promise<T> {
  const backend = await localRepoBackend(opts.repo)
  const lock = await RepoLock.acquire(backend, {exclusive: opts.exclusive, purpose: opts.purpose, waitMs: opts.waitMs, onWait: opts.onWait})
  try {
    const ctx = await openContext({repo: backend.location, catalogue: opts.catalogue, lazyIndex: opts.lazyIndex})
    try {
      return await fn(ctx, lock)
    } finally {
      ctx.close()
    }
  } finally {
    await lock.release().catch(() => undefined)
  }
}

export interface UnlockOptions {
  repo?: string
  /** a remote (name or s3:// URL) instead of the local repository */
  to?: string
  endpoint?: string
  region?: string
  remotesFile?: string
  removeStale?: boolean
  all?: boolean
}

export interface UnlockServiceResult extends UnlockResult {
  repository: string
  /** nothing was removed: only listed */
  listed: boolean
}

/** Run fn with the backend of the local repository or of a remote. */
export async function withRepoBackend<T>(opts: {repo?: string; to?: string; endpoint?: string; region?: string; remotesFile?: string}, fn: (backend: Backend) => Promise<T>): Promise<T> {
  if (!opts.to) return fn(await localRepoBackend(opts.repo))
  const remote = await openRemote({remote: opts.to, endpoint: opts.endpoint, region: opts.region, remotesFile: opts.remotesFile})
  try {
    return await fn(remote.backend)
  } finally {
    await remote.close()
  }
}

/**
 * `holyship unlock`: without flags, list the locks; `--remove-stale` removes locks of
 * processes that are gone (this host) or not refreshed for 30 min; `--all` removes every lock.
 */
export async function unlock(opts: UnlockOptions): Promise<UnlockServiceResult> {
  if (opts.all && opts.removeStale) throw new HolyshipError('USAGE', 'give --remove-stale or --all, not both')
  return withRepoBackend(opts, async (backend) => {
    if (!opts.all && !opts.removeStale) {
      const locks: ListedLock[] = await listLocks(backend)
      return {repository: backend.location, listed: true, removed: [], kept: locks.map((l) => ({id: l.id, description: describeLock(l)}))}
    }
    return {repository: backend.location, listed: false, ...(await removeLocks(backend, {all: opts.all}))}
  })
}
