import {promises as fsp} from 'node:fs'
import * as path from 'node:path'
import {LocalBackend} from '../backend/local.js'
import {Catalogue, DamagedCatalogueError, defaultCataloguePath, rebuildFromRepository} from '../catalogue/catalogue.js'
import {HolyshipError} from '../errors.js'
import {Repository} from '../repo/repository.js'
import {defaultRepoPath} from './context.js'

/**
 * Rebuild the catalogue's rows for one repository from the repository alone. A catalogue
 * file that SQLite cannot open is moved aside (never deleted) and a new one is made.
 */
export async function rebuildCatalogue(opts: {repo?: string; catalogue?: string}): Promise<{
  repository: string
  catalogue: string
  snapshots: number
  trees: number
  indexFiles: number
  movedAside?: string
}> {
  const dir = path.resolve(opts.repo ?? defaultRepoPath())
  if (!(await fsp.stat(dir).catch(() => undefined))) throw new HolyshipError('REPO_MISSING', `no repository at ${dir}`)
  const repo = await Repository.open(new LocalBackend(dir), {loadIndex: true})
  const file = opts.catalogue ?? defaultCataloguePath()
  let cat: Catalogue
  let movedAside: string | undefined
  try {
    cat = Catalogue.open(file)
  } catch (e) {
    // only a file SQLite cannot read: one that cannot be opened at all (permissions) stays
    if (!(e instanceof DamagedCatalogueError)) throw e
    movedAside = `${file}.broken-${Date.now()}`
    await fsp.rename(file, movedAside)
    for (const suffix of ['-wal', '-shm']) await fsp.rename(file + suffix, movedAside + suffix).catch(() => undefined)
    cat = Catalogue.open(file)
  }
  try {
    repo.treeCache = cat
    const r = await rebuildFromRepository(cat, repo)
    return {repository: dir, catalogue: file, ...r, ...(movedAside ? {movedAside} : {})}
  } finally {
    cat.close()
  }
}
