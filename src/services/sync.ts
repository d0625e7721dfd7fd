/**
 * Keep the catalogue a faithful cache of the repository, cheaply: only index files and
 * snapshots the catalogue has not seen are read, and snapshots gone from the repository
 * (forgotten elsewhere) are dropped. Blob locations come from the catalogue, so opening a
 * repository does not re-read every index file.
 */
import {Catalogue} from '../catalogue/catalogue.js'
import {HolyshipError} from '../errors.js'
import {IndexFile} from '../repo/format.js'
import {sha256} from '../repo/pack.js'
import {Repository} from '../repo/repository.js'

export async function syncCatalogue(cat: Catalogue, repo: Repository): Promise<{newIndexFiles: number; newSnapshots: number; removedSnapshots: number}> {
  const known = cat.indexFilesKnown(repo.id)
  const listed = await repo.backend.list('index/')
  let newIndexFiles = 0
  for (const {key} of listed) {
    const id = key.slice('index/'.length)
    if (known.has(id)) continue
    const data = await repo.backend.get(key)
    if (sha256(data) !== id) throw new HolyshipError('REPO_DAMAGED', `index file ${key} is damaged: its content does not match its name`)
    cat.recordIndexFile(repo.id, id, JSON.parse(data.toString('utf8')) as IndexFile)
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
