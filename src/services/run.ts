import type {Engine} from '../docker/engine.js'
import {Context, ContextOptions, openContext, openEngine} from './context.js'

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
