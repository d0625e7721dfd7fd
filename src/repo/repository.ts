/**
 * The repository owns deduplication, packing, the index and snapshots on top of a plain
 * Backend. Writers call saveBlob() for every chunk and tree, then flush() (packs, then an
 * index file), and only then saveSnapshot(): a snapshot exists only once all its data is
 * durable, so a killed writer leaves at most unreferenced packs, never a broken snapshot.
 */
import {randomBytes} from 'node:crypto'
import * as os from 'node:os'
import debugFactory from 'debug'
import {Backend, isNotFound} from '../backend/backend.js'
import {HolyshipError} from '../errors.js'
import {DEFAULT_CHUNKER} from './chunker.js'
import {
  BlobType,
  FORMAT_NAME,
  FORMAT_VERSION,
  IndexFile,
  PackBlob,
  RepoConfig,
  SnapshotManifest,
  Tree,
  dataKey,
  indexKey,
  snapshotKey,
} from './format.js'
import {CorruptBlobError, PackBuilder, decodeBlob, encodeBlobParts, sha256} from './pack.js'

const debug = debugFactory('holyship:repo')

export interface BlobLocation {
  pack: string
  type: BlobType
  offset: number
  length: number
  raw: number
}

export interface SaveResult {
  id: string
  /** stored bytes added to the repository (0 when the blob was already there) */
  added: number
}

/**
 * A cache of tree blobs (the catalogue implements it), so that list/show/diff and finding a
 * file never read packs. Tree ids are content hashes, so a cached tree is always valid.
 */
export interface TreeCache {
  getTree(id: string): Buffer | undefined
  putTree(id: string, data: Buffer): void
}

export interface SnapshotEntry {
  id: string
  manifest: SnapshotManifest
}

export class Repository {
  private readonly index = new Map<string, BlobLocation>()
  private readonly loadedIndexFiles = new Set<string>()
  private readonly packSizes = new Map<string, number>()
  private pending = new PackBuilder()
  private readonly pendingIds = new Map<string, {type: BlobType; raw: number}>()
  /** packs written since the last index file */
  private unindexed: IndexFile['packs'] = []
  /** optional observer for progress reporting */
  onPackWritten?: (bytes: number) => void
  /** optional cache of tree blobs */
  treeCache?: TreeCache

  private constructor(readonly backend: Backend, readonly config: RepoConfig) {}

  get id(): string {
    return this.config.id
  }

  static async init(backend: Backend, opts: {packSize?: number; level?: number} = {}): Promise<Repository> {
    if ((await backend.stat('config')) !== undefined) {
      throw new HolyshipError('REPO_EXISTS', `a repository already exists at ${backend.location}`)
    }
    const config: RepoConfig = {
      format: FORMAT_NAME,
      version: FORMAT_VERSION,
      id: randomBytes(16).toString('hex'),
      created: new Date().toISOString(),
      chunker: {...DEFAULT_CHUNKER, seed: randomBytes(16).toString('hex')},
      compression: {algorithm: 'zstd', level: opts.level ?? 3},
      packSize: opts.packSize ?? 16 * 1024 * 1024,
      encryption: null,
    }
    await backend.put('config', Buffer.from(JSON.stringify(config, null, 2) + '\n'))
    return new Repository(backend, config)
  }

  static async open(backend: Backend, opts: {loadIndex?: boolean} = {}): Promise<Repository> {
    let raw: Buffer
    try {
      raw = await backend.get('config')
    } catch (e) {
      if (isNotFound(e)) {
        throw new HolyshipError('REPO_NOT_INITIALISED', `no holyship repository at ${backend.location}`, {
          hint: 'run `holyship init` first',
        })
      }
      throw e
    }
    let config: RepoConfig
    try {
      config = JSON.parse(raw.toString('utf8'))
    } catch {
      throw new HolyshipError('REPO_DAMAGED', `${backend.location}/config is not valid JSON`)
    }
    if (config.format !== FORMAT_NAME) {
      throw new HolyshipError('REPO_NOT_INITIALISED', `${backend.location} is not a holyship repository`)
    }
    if (typeof config.version !== 'number' || config.version > FORMAT_VERSION) {
      throw new HolyshipError(
        'REPO_NEWER_FORMAT',
        `${backend.location} has repository format ${config.version}; this holyship reads up to ${FORMAT_VERSION}`,
        {hint: 'upgrade holyship'},
      )
    }
    const repo = new Repository(backend, config)
    if (opts.loadIndex !== false) await repo.loadIndex()
    return repo
  }

  /** Read index files not yet loaded. Each is verified against its name (its SHA-256). */
  async loadIndex(): Promise<void> {
    const entries = await this.backend.list('index/')
    for (const {key} of entries) {
      const id = key.slice('index/'.length)
      if (this.loadedIndexFiles.has(id)) continue
      const data = await this.backend.get(key)
      if (sha256(data) !== id) {
        throw new HolyshipError('REPO_DAMAGED', `index file ${key} is damaged: its content does not match its name`)
      }
      this.addIndex(JSON.parse(data.toString('utf8')) as IndexFile)
      this.loadedIndexFiles.add(id)
    }
    debug('index: %d blobs from %d files', this.index.size, this.loadedIndexFiles.size)
  }

  /** Load blob locations from a cache (the catalogue) instead of reading index files. */
  seedIndex(locations: Iterable<[string, BlobLocation]>, indexFileIds: string[]): void {
    for (const [id, loc] of locations) {
      if (!this.index.has(id)) this.index.set(id, loc)
      if (!this.packSizes.has(loc.pack)) this.packSizes.set(loc.pack, 0)
    }
    for (const id of indexFileIds) this.loadedIndexFiles.add(id)
  }

  /**
   * Make an index file that was written to this repository's backend by someone else (a pull
   * copying packs in) known to the in-memory index. Its packs must already be stored.
   */
  registerIndexFile(id: string, file: IndexFile): void {
    this.addIndex(file)
    this.loadedIndexFiles.add(id)
  }

  private addIndex(file: IndexFile): void {
    for (const p of file.packs) {
      this.packSizes.set(p.id, p.size)
      for (const b of p.blobs) {
        if (!this.index.has(b.id)) this.index.set(b.id, {pack: p.id, type: b.type, offset: b.offset, length: b.length, raw: b.raw})
      }
    }
  }

  hasBlob(id: string): boolean {
    return this.index.has(id) || this.pendingIds.has(id)
  }

  blobLocation(id: string): BlobLocation | undefined {
    return this.index.get(id)
  }

  /** every blob the index knows, with its location */
  blobs(): IterableIterator<[string, BlobLocation]> {
    return this.index.entries()
  }

  packs(): Map<string, number> {
    return this.packSizes
  }

  indexFiles(): string[] {
    return [...this.loadedIndexFiles]
  }

  /** Store a blob unless the repository has it. `id` may be passed when already computed. */
  async saveBlob(type: BlobType, plain: Buffer, id = sha256(plain)): Promise<SaveResult> {
    if (this.hasBlob(id)) return {id, added: 0}
    const {enc, payload} = encodeBlobParts(plain, id, this.config.compression.level)
    this.pending.addParts(id, type, enc, payload, plain.length)
    this.pendingIds.set(id, {type, raw: plain.length})
    if (this.pending.length >= this.config.packSize) await this.writePack()
    return {id, added: payload.length + 1}
  }

  async saveTree(tree: Tree): Promise<SaveResult> {
    const data = Buffer.from(JSON.stringify(tree))
    const r = await this.saveBlob('tree', data)
    this.treeCache?.putTree(r.id, data)
    return r
  }

  async saveJsonBlob(value: unknown): Promise<SaveResult> {
    return this.saveBlob('tree', Buffer.from(JSON.stringify(value)))
  }

  private async writePack(): Promise<void> {
    if (this.pending.count === 0) return
    const {id, data, blobs} = this.pending.finish()
    const key = dataKey(id)
    try {
      await this.backend.put(key, data)
    } finally {
      this.pending.reset()
    }
    // a store can truncate silently (rustic #249): check what landed
    const size = await this.backend.stat(key)
    if (size !== data.length) {
      throw new HolyshipError('IO_FAILED', `pack ${key} was stored with ${size ?? 'no'} bytes instead of ${data.length}`)
    }
    for (const b of blobs) {
      this.index.set(b.id, {pack: id, type: b.type, offset: b.offset, length: b.length, raw: b.raw})
      this.pendingIds.delete(b.id)
    }
    this.packSizes.set(id, data.length)
    this.unindexed.push({id, size: data.length, blobs})
    debug('pack %s: %d blobs, %d bytes', id.slice(0, 12), blobs.length, data.length)
    this.onPackWritten?.(data.length)
    // keep index files bounded so a long snapshot's progress survives in pieces
    if (this.unindexed.length >= 64) await this.writeIndex()
  }

  private async writeIndex(): Promise<void> {
    if (this.unindexed.length === 0) return
    const file: IndexFile = {version: 1, packs: this.unindexed}
    const data = Buffer.from(JSON.stringify(file))
    const id = sha256(data)
    await this.backend.put(indexKey(id), data)
    this.loadedIndexFiles.add(id)
    this.unindexed = []
  }

  /** Make everything saved so far durable: the pending pack, then an index file for new packs. */
  async flush(): Promise<void> {
    await this.writePack()
    await this.writeIndex()
  }

  /** Drop what is not yet in a pack (an aborted snapshot). Written packs stay, unreferenced. */
  discardPending(): void {
    this.pending.reset()
    this.pendingIds.clear()
  }

  async loadBlob(id: string): Promise<Buffer> {
    const loc = this.index.get(id)
    if (!loc) {
      throw new HolyshipError('REPO_DAMAGED', `blob ${id.slice(0, 16)} is referenced but not in the repository's index`)
    }
    const key = dataKey(loc.pack)
    let stored: Buffer
    try {
      stored = await this.backend.getRange(key, loc.offset, loc.length)
    } catch (e) {
      if (isNotFound(e)) throw new HolyshipError('REPO_DAMAGED', `pack ${key} is missing (it holds blob ${id.slice(0, 16)})`)
      throw e
    }
    try {
      return decodeBlob(stored, id, loc.raw, key)
    } catch (e) {
      if (e instanceof CorruptBlobError) throw new HolyshipError('REPO_DAMAGED', e.message, {cause: e})
      throw e
    }
  }

  async loadTree(id: string): Promise<Tree> {
    let data = this.treeCache?.getTree(id)
    if (!data) {
      data = await this.loadBlob(id)
      this.treeCache?.putTree(id, data)
    }
    return JSON.parse(data.toString('utf8')) as Tree
  }

  async loadJsonBlob<T>(id: string): Promise<T> {
    return JSON.parse((await this.loadBlob(id)).toString('utf8')) as T
  }

  /** Write the manifest last; its id is the SHA-256 of its bytes. */
  async saveSnapshot(manifest: SnapshotManifest): Promise<string> {
    await this.flush()
    const data = Buffer.from(JSON.stringify(manifest))
    const id = sha256(data)
    await this.backend.put(snapshotKey(id), data)
    return id
  }

  async listSnapshotIds(): Promise<string[]> {
    return (await this.backend.list('snapshots/')).map((e) => e.key.slice('snapshots/'.length))
  }

  async loadSnapshot(id: string): Promise<SnapshotManifest> {
    let data: Buffer
    try {
      data = await this.backend.get(snapshotKey(id))
    } catch (e) {
      if (isNotFound(e)) throw new HolyshipError('SNAPSHOT_NOT_FOUND', `snapshot ${id} not found in ${this.backend.location}`)
      throw e
    }
    if (sha256(data) !== id) throw new HolyshipError('REPO_DAMAGED', `snapshot ${id} is damaged: its content does not match its id`)
    const m = JSON.parse(data.toString('utf8')) as SnapshotManifest
    if (m.version > 1) throw new HolyshipError('REPO_NEWER_FORMAT', `snapshot ${id} has manifest version ${m.version}`)
    return m
  }

  async listSnapshots(): Promise<SnapshotEntry[]> {
    const ids = await this.listSnapshotIds()
    const out: SnapshotEntry[] = []
    for (const id of ids) out.push({id, manifest: await this.loadSnapshot(id)})
    return out
  }
}

export const hostName = (): string => os.hostname()
