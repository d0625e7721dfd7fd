import * as path from 'node:path'
import type {Engine} from '../docker/engine.js'
import type {RepoLock} from '../repo/lock.js'
import {Context, ContextOptions, openContext, openEngine} from './context.js'
import {withLockedContext} from './locking.js'

/** Open the repository, catalogue and engine for one command and always close them. */
export async function withContext<T>(
  opts: {repo?: string; catalogue?: string; 'docker-host'?: string},
  fn: (ctx: Context, engine: Engine) => Promise<T>,
): Promise<T> {
  const co: ContextOptions = {repo: opts.repo, catalogue: opts.catalogue, dockerHost: opts['docker-host']}
  const ctx = await openContext(co)
  try {
    return await fn(ctx, await openEngine(co))
  } finally {
    ctx.close()
  }
}

/**
 * withContext under a shared repository lock (as a snapshot takes it): a prune waits while a
 * command reads data it could repack (a restore), and the command may write beside other
 * snapshots. `lock.writes` false: a repository where the lock cannot be written (read-only)
 * is read without it, after `lock.unlocked` is told why.
 */
export async function withEngineContext<T>(
  opts: {repo?: string; catalogue?: string; 'docker-host'?: string},
  lock: SharedLockUse,
  fn: (ctx: Context, engine: Engine, lock?: RepoLock) => Promise<T>,
): Promise<T> {
  return withSharedContext(opts, lock, async (ctx, l) => fn(ctx, await openEngine({dockerHost: opts['docker-host']}), l))
}

export interface SharedLockUse {
  purpose: string
  /** the command writes to the repository: no lock, no command */
  writes: boolean
  /** told why a read-only command goes on without the lock */
  unlocked: (why: string) => void
}

/** openContext under a shared repository lock; see withEngineContext */
export async function withSharedContext<T>(
  opts: {repo?: string; catalogue?: string; lazyIndex?: boolean},
  lock: SharedLockUse,
  fn: (ctx: Context, lock?: RepoLock) => Promise<T>,
): Promise<T> {
  let held = false
  try {
    return await withLockedContext({repo: opts.repo, catalogue: opts.catalogue, lazyIndex: opts.lazyIndex, exclusive: false, purpose: lock.purpose, waitMs: 60_000}, async (ctx, l) => {
      held = true
      return fn(ctx, l)
    })
  } catch (e) {
    if (held || lock.writes || !unwritable(e)) throw e
    lock.unlocked((e as Error).message)
    const ctx = await openContext({repo: opts.repo, catalogue: opts.catalogue, lazyIndex: opts.lazyIndex})
    try {
      return await fn(ctx)
    } finally {
      ctx.close()
    }
  }
}

/** the file system refused to write the lock file (a read-only repository), and nothing else failed */
function unwritable(e: unknown): boolean {
  for (let x = e as {code?: unknown; path?: unknown; cause?: unknown} | undefined; x; x = x.cause as typeof x) {
    if (typeof x.code === 'string' && ['EROFS', 'EACCES', 'EPERM'].includes(x.code)) return typeof x.path === 'string' && x.path.includes(`${path.sep}locks${path.sep}`)
  }
  return false
}

/**
 * Open the repository and catalogue for a command answered from the catalogue (list, show,
 * diff): no engine, and the blob index only if a tree has to be read from a pack.
 */
export async function withCatalogue<T>(opts: {repo?: string; catalogue?: string}, fn: (ctx: Context) => Promise<T>): Promise<T> {
  const ctx = await openContext({repo: opts.repo, catalogue: opts.catalogue, lazyIndex: true})
  try {
    return await fn(ctx)
  } finally {
    ctx.close()
  }
}
