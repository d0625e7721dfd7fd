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
 * withContext, under a shared repository lock (as a snapshot takes it) when `lockFor` names
 * what it is for: a command that writes to the repository beside other snapshots (a restore
 * that keeps what it replaces). Without, nothing is written (a read-only repository will do).
 */
export async function withEngineContext<T>(
  opts: {repo?: string; catalogue?: string; 'docker-host'?: string},
  lockFor: string | undefined,
  fn: (ctx: Context, engine: Engine, lock?: RepoLock) => Promise<T>,
): Promise<T> {
  if (!lockFor) return withContext(opts, (ctx, engine) => fn(ctx, engine))
  return withLockedContext({repo: opts.repo, catalogue: opts.catalogue, exclusive: false, purpose: lockFor, waitMs: 60_000}, async (ctx, lock) =>
    fn(ctx, await openEngine({dockerHost: opts['docker-host']}), lock),
  )
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
