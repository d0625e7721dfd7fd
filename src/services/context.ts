/**
 * Where the repository and catalogue are, and opening them: one place for the defaults
 * (flags > HOLYSHIP_* environment > XDG directories) and for the errors a user sees.
 */
import {promises as fsp} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {LocalBackend} from '../backend/local.js'
import {Catalogue, defaultCataloguePath} from '../catalogue/catalogue.js'
import type {Engine} from '../docker/engine.js'
import {HolyshipError} from '../errors.js'
import {Repository} from '../repo/repository.js'
import {syncCatalogue} from './sync.js'

export function defaultRepoPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HOLYSHIP_REPO) return env.HOLYSHIP_REPO
  const data = env.XDG_DATA_HOME || path.join(os.homedir(), '.local', 'share')
  return path.join(data, 'holyship', 'repo')
}

export interface ContextOptions {
  repo?: string
  catalogue?: string
  dockerHost?: string
}

export interface Context {
  repo: Repository
  catalogue: Catalogue
  close(): void
}

/** Open the repository (which must exist and be initialised) and bring the catalogue up to date. */
export async function openContext(opts: ContextOptions = {}): Promise<Context> {
  const dir = path.resolve(opts.repo ?? defaultRepoPath())
  const st = await fsp.stat(dir).catch(() => undefined)
  if (!st) {
    throw new HolyshipError('REPO_MISSING', `no repository at ${dir}`, {hint: 'run `holyship init` (or pass --repo / set HOLYSHIP_REPO)'})
  }
  if (!st.isDirectory()) throw new HolyshipError('REPO_MISSING', `${dir} is not a directory`)
  // the repository first: a wrong passphrase (encrypted repository) fails before anything is created
  const repo = await Repository.open(new LocalBackend(dir), {loadIndex: false})
  const catalogue = Catalogue.open(opts.catalogue ?? defaultCataloguePath())
  try {
    repo.treeCache = catalogue
    await syncCatalogue(catalogue, repo)
    return {repo, catalogue, close: () => catalogue.close()}
  } catch (e) {
    catalogue.close()
    throw e
  }
}

/** The Docker engine (dockerode is loaded here, by the commands that need an engine, not at start) */
export async function openEngine(opts: ContextOptions = {}): Promise<Engine> {
  const {Engine} = await import('../docker/engine.js')
  return new Engine(opts.dockerHost)
}
