/**
 * Keep the catalogue a faithful cache of the repository, cheaply: only index files and
 * snapshots the catalogue has not seen are read, and snapshots gone from the repository
 * (forgotten elsewhere) are dropped. Blob locations come from the catalogue, so opening a
 * repository does not re-read every index file.
 */
import {promises as fsp} from 'node:fs'
import * as path from 'node:path'
import {Backend} from '../backend/backend.js'
import {LocalBackend} from '../backend/local.js'
import {Catalogue} from '../catalogue/catalogue.js'
import {Repository} from '../repo/repository.js'

/**
 * The object names under a flat prefix (`index/`, `snapshots/`), sorted. A local repository is
 * read with one readdir: Backend.list also stats every object (size, mtime), which costs more
 * than the rest of `holyship list` in a repository with a thousand snapshots.
 */
export async function listNames(backend: Backend, prefix: 'index/' | 'snapshots/'): Promise<string[]> {
  if (!(backend instanceof LocalBackend)) return (await backend.list(prefix)).map((e) => e.key.slice(prefix.length))
  let entries
  try {
    entries = await fsp.readdir(path.join(backend.location, prefix), {withFileTypes: true})
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw e
  }
  // as LocalBackend.list: temporary files of a write in progress are not objects
  const names = entries.filter((e) => e.isFile() && !e.name.startsWith('.tmp-')).map((e) => e.name)
  return names.sort()
}

export async function syncCatalogue(
  cat: Catalogue,
  repo: Repository,
  opts: {seedIndex?: boolean} = {},
): Promise<{newIndexFiles: number; newSnapshots: number; removedSnapshots: number}> {
  let known = cat.indexFilesKnown(repo.id)
  const listed = await listNames(repo.backend, 'index/')
  // an index file we knew is gone: a prune rewrote the index and may have deleted packs, so
  // relearn every blob location rather than keep ones that point into deleted packs
  const listedIds = new Set(listed)
  if ([...known].some((id) => !listedIds.has(id))) {
    cat.forgetIndex(repo.id)
    known = new Set()
  }
  let newIndexFiles = 0
  for (const id of listed) {
    if (known.has(id)) continue
    // checked against its name and, in an encrypted repository, decrypted and authenticated
    cat.recordIndexFile(repo.id, id, await repo.readIndexFile(id))
    newIndexFiles++
  }
  // the catalogue now knows exactly the listed index files
  if (opts.seedIndex !== false) seedRepoIndex(cat, repo)

  const inRepo = new Set(await listNames(repo.backend, 'snapshots/'))
  const inCat = new Set(cat.snapshotIds(repo.id))
  let newSnapshots = 0
  let removedSnapshots = 0
  for (const id of inRepo) {
    if (inCat.has(id)) continue
    const m = await repo.loadSnapshot(id)
    if (m.container?.image) cat.recordImage(repo.id, m.container.image)
    cat.recordSnapshot(repo.id, id, m)
    newSnapshots++
  }
  for (const id of inCat) {
    if (!inRepo.has(id)) {
      cat.removeSnapshot(repo.id, id)
      removedSnapshots++
    }
  }
  return {newIndexFiles, newSnapshots, removedSnapshots}
}

/**
 * Hand the repository every blob location the catalogue knows for it (after syncCatalogue:
 * exactly those of the repository's index files), instead of reading the index files.
 */
export function seedRepoIndex(cat: Catalogue, repo: Repository): void {
  repo.seedIndex(cat.blobLocations(repo.id), [...cat.indexFilesKnown(repo.id)])
}
