/**
 * Where the repository and catalogue are, and opening them: one place for the defaults
 * (flags > HOLYSHIP_* environment > XDG directories) and for the errors a user sees.
 */
import {promises as fsp} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import debugFactory from 'debug'
import {LocalBackend} from '../backend/local.js'
import {Catalogue, defaultCataloguePath} from '../catalogue/catalogue.js'
import type {Engine} from '../docker/engine.js'
import {HolyshipError} from '../errors.js'
import type {IndexFile} from '../repo/format.js'
import {Repository, TreeCache} from '../repo/repository.js'
import {seedRepoIndex, syncCatalogue} from './sync.js'

const debug = debugFactory('holyship:catalogue')

export function defaultRepoPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HOLYSHIP_REPO) return env.HOLYSHIP_REPO
  const data = env.XDG_DATA_HOME || path.join(os.homedir(), '.local', 'share')
  return path.join(data, 'holyship', 'repo')
}

export interface ContextOptions {
  repo?: string
  catalogue?: string
  dockerHost?: string
  /**
   * Do not load the blob index (every blob location, from the catalogue) up front, only when
   * it is needed: on `ensureIndex()`, or the first time a tree is not in the catalogue's tree
   * cache. For commands that mostly read the catalogue (list, show, diff, a push with nothing
   * to send): the index grows with the repository and is most of their work otherwise.
   */
  lazyIndex?: boolean
}

export interface Context {
  repo: Repository
  catalogue: Catalogue
  /** load the blob index if it is not loaded yet (a lazyIndex context); cheap when it is */
  ensureIndex(): void
  close(): void
}

/** The catalogue as the repository's tree cache, loading the blob index at the first miss. */
class IndexOnMiss implements TreeCache {
  constructor(
    private readonly catalogue: Catalogue,
    private readonly ensureIndex: () => void,
  ) {}

  getTree(id: string): Buffer | undefined {
    const data = this.catalogue.getTree(id)
    // not cached: the repository reads it from a pack, which needs the blob's location
    if (data === undefined) this.ensureIndex()
    return data
  }

  putTree(id: string, data: Buffer): void {
    this.catalogue.putTree(id, data)
  }
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
    let indexLoaded = !opts.lazyIndex
    const ensureIndex = (): void => {
      if (indexLoaded) return
      indexLoaded = true
      seedRepoIndex(catalogue, repo)
    }
    repo.treeCache = opts.lazyIndex ? new IndexOnMiss(catalogue, ensureIndex) : catalogue
    repo.onIndexFileWritten = (id, file) => recordWrittenIndex(catalogue, repo.id, id, file)
    await syncCatalogue(catalogue, repo, {seedIndex: !opts.lazyIndex})
    return {repo, catalogue, ensureIndex, close: () => catalogue.close()}
  } catch (e) {
    catalogue.close()
    throw e
  }
}

/**
 * Record an index file this process just stored, so the next open need not read it back (a
 * snapshot right after another paid ~50 ms for that). A failure is only logged: the catalogue
 * is a cache, and the next syncCatalogue finds the file unknown and reads it.
 */
function recordWrittenIndex(catalogue: Catalogue, repoId: string, id: string, file: IndexFile): void {
  try {
    catalogue.recordIndexFile(repoId, id, file)
  } catch (e) {
    debug('catalogue: index file %s not recorded (read at the next open): %s', id.slice(0, 12), (e as Error).message)
  }
}

/** The Docker engine (dockerode is loaded here, by the commands that need an engine, not at start) */
export async function openEngine(opts: ContextOptions = {}): Promise<Engine> {
  const {Engine} = await import('../docker/engine.js')
  return new Engine(opts.dockerHost)
}
