/**
 * list, show and diff read the catalogue: the repository is opened without its blob index,
 * which is loaded only when a tree is not in the catalogue's tree cache; the repository's
 * snapshot and index lists come from one readdir each.
 */
import * as fs from 'node:fs'
import {tmpdir} from 'node:os'
import * as path from 'node:path'
import Database from 'better-sqlite3'
import {afterEach, beforeEach, describe, expect, it, vi} from 'vitest'
import {LocalBackend} from '../../src/backend/local.js'
import {Repository} from '../../src/repo/repository.js'
import {openContext} from '../../src/services/context.js'
import {diffSnapshots, listSnapshots, showSnapshot} from '../../src/services/inspect.js'
import {listNames} from '../../src/services/sync.js'
import {content, writeSnapshot} from './helpers/repo-fixture.js'

describe('list, show and diff from the catalogue', () => {
  let dir: string
  let repoDir: string
  let catalogue: string
  let ids: string[]

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(tmpdir(), 'hs-inspect-'))
    repoDir = path.join(dir, 'repo')
    catalogue = path.join(dir, 'catalogue.sqlite3')
    fs.mkdirSync(repoDir)
    const repo = await Repository.init(new LocalBackend(repoDir))
    const v1 = {'a.txt': content('a', 100), 'd/b.txt': content('b', 200), 'd/c.txt': content('c', 300)}
    const v2 = {'a.txt': content('a2', 100), 'd/b.txt': content('b', 200), 'e/new.txt': content('n', 50)}
    ids = [
      await writeSnapshot(repo, 'vol', v1, {time: new Date('2025-01-01T00:00:00Z')}),
      await writeSnapshot(repo, 'vol', v2, {time: new Date('2025-01-02T00:00:00Z')}),
    ]
  })

  afterEach(() => {
    fs.rmSync(dir, {recursive: true, force: true})
  })

  const expectedDiff = [
    {change: 'changed', scope: 'vol', path: '/a.txt'},
    {change: 'removed', scope: 'vol', path: '/d/c.txt'},
    {change: 'added', scope: 'vol', path: '/e'},
    {change: 'added', scope: 'vol', path: '/e/new.txt'},
  ]

  it('records the index files a context writes, so the next open reads none back', async () => {
    const ctx = await openContext({repo: repoDir, catalogue})
    const before = ctx.catalogue.indexFilesKnown(ctx.repo.id)
    let newId: string
    try {
      newId = await writeSnapshot(ctx.repo, 'vol', {'x.bin': content('fresh', 5000)}, {time: new Date('2025-01-03T00:00:00Z')})
      const written = (await listNames(ctx.repo.backend, 'index/')).filter((id) => !before.has(id))
      expect(written).toHaveLength(1)
      // known to the catalogue as soon as it is stored, with its blobs
      expect(ctx.catalogue.indexFilesKnown(ctx.repo.id).has(written[0])).toBe(true)
      const blobs = new Map(ctx.catalogue.blobLocations(ctx.repo.id))
      for (const [id, loc] of ctx.repo.blobs()) expect(blobs.get(id)).toEqual(loc)
    } finally {
      ctx.close()
    }
    // the next open has no index file to read back (it would otherwise open and record the new one)
    const read = vi.spyOn(Repository.prototype, 'readIndexFile')
    const next = await openContext({repo: repoDir, catalogue})
    try {
      expect(read).not.toHaveBeenCalled()
      expect(listSnapshots(next, {volume: 'vol'}).map((r) => r.id)).toEqual([...ids, newId])
    } finally {
      read.mockRestore()
      next.close()
    }
  })

  it('answers without loading the blob index while the trees are cached', async () => {
    // the first open fills the catalogue (snapshots, index files); trees come with the first diff
    const first = await openContext({repo: repoDir, catalogue})
    await diffSnapshots(first, ids[0], ids[1])
    const someBlob = [...first.repo.blobs()][0][0]
    first.close()

    const ctx = await openContext({repo: repoDir, catalogue, lazyIndex: true})
    try {
      expect(ctx.repo.blobLocation(someBlob)).toBeUndefined()
      expect(listSnapshots(ctx, {volume: 'vol'}).map((r) => r.id)).toEqual(ids)
      expect((await showSnapshot(ctx, 'latest:vol')).id).toBe(ids[1])
      const d = await diffSnapshots(ctx, ids[0], 'latest')
      expect(d.changes).toEqual(expectedDiff)
      // every tree was in the catalogue: the index was never needed
      expect(ctx.repo.blobLocation(someBlob)).toBeUndefined()
      ctx.ensureIndex()
      expect(ctx.repo.blobLocation(someBlob)).toBeDefined()
    } finally {
      ctx.close()
    }
  })

  it('loads the blob index at the first tree the catalogue does not hold', async () => {
    ;(await openContext({repo: repoDir, catalogue})).close()
    const db = new Database(catalogue)
    db.prepare('DELETE FROM trees').run()
    db.close()
    const ctx = await openContext({repo: repoDir, catalogue, lazyIndex: true})
    try {
      expect((await diffSnapshots(ctx, ids[0], ids[1])).changes).toEqual(expectedDiff)
    } finally {
      ctx.close()
    }
  })

  it('lists a local repository the way the backend does, without the temporary files', async () => {
    const b = new LocalBackend(repoDir)
    fs.writeFileSync(path.join(repoDir, 'snapshots', '.tmp-0123'), 'partial')
    for (const prefix of ['snapshots/', 'index/'] as const) {
      const listed = (await b.list(prefix)).map((e) => e.key.slice(prefix.length))
      expect(listed.length).toBeGreaterThan(0)
      expect(await listNames(b, prefix)).toEqual(listed)
    }
    expect(await listNames(b, 'snapshots/')).toEqual([...ids].sort())
    fs.rmSync(path.join(repoDir, 'index'), {recursive: true})
    expect(await listNames(b, 'index/')).toEqual([])
  })
})
