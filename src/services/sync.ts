/**
 * Keep the catalogue a faithful cache of the repository, cheaply: only index files and
 * snapshots the catalogue has not seen are read, and snapshots gone from the repository
 * (forgotten elsewhere) are dropped. Blob locations come from the catalogue, so opening a
 * repository does not re-read every index file.
 */
import {Catalogue} from '../catalogue/catalogue.js'
import {Repository} from '../repo/repository.js'

export async function syncCatalogue(cat: Catalogue, repo: Repository): Promise<{newIndexFiles: number; newSnapshots: number; removedSnapshots: number}> {
  let known = cat.indexFilesKnown(repo.id)
  const listed = await repo.backend.list('index/')
  // an index file we knew is gone: a prune rewrote the index and may have deleted packs, so
  // relearn every blob location rather than keep ones that point into deleted packs
  const listedIds = new Set(listed.map((e) => e.key.slice('index/'.length)))
  if ([...known].some((id) => !listedIds.has(id))) {
    cat.forgetIndex(repo.id)
    known = new Set()
  }
  let newIndexFiles = 0
  for (const {key} of listed) {
    const id = key.slice('index/'.length)
    if (known.has(id)) continue
    // checked against its name and, in an encrypted repository, decrypted and authenticated
    cat.recordIndexFile(repo.id, id, await repo.readIndexFile(id))
    newIndexFiles++
  }
  repo.seedIndex(cat.blobLocations(repo.id), listed.map((e) => e.key.slice('index/'.length)))

  const inRepo = new Set(await repo.listSnapshotIds())
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
