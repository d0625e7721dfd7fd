/**
 * The repository owns deduplication, packing, the index and snapshots on top of a plain
 * Backend. Writers call saveBlob() for every chunk and tree, then flush() (packs, then an
 * index file), and only then saveSnapshot(): a snapshot exists only once all its data is
 * durable, so a killed writer leaves at most unreferenced packs, never a broken snapshot.
 */
import {randomBytes} from 'node:crypto'
import * as os from 'node:os'
import debugFactory from 'debug'
import {Backend, isExists, isNotFound} from '../backend/backend.js'
import {HolyshipError, isHolyshipError} from '../errors.js'
import {Chunker, DEFAULT_CHUNKER, cutAll} from './chunker.js'
import {MasterKey} from './crypto.js'
import {
  BlobType,
  FORMAT_NAME,
  FORMAT_VERSION,
  FORMAT_VERSION_ENCRYPTED,
  FORMAT_VERSION_PLAIN,
  IndexFile,
  PackBlob,
  RepoConfig,
  SnapshotManifest,
  Tree,
  dataKey,
  indexKey,
  manifestVersion,
  snapshotKey,
} from './format.js'
import {ScryptParams, addKeyFile, getNewPassword, keyFileKey, unlockRepository} from './keys.js'
import {CorruptBlobError, CorruptObjectError, ENC_PLAIN, PackBuilder, blobIdOf, compressBlob, compressBlobOfId, decodeBlob, isZero, openJson, sealJson, sha256} from './pack.js'
import {BlobPool, POOL_MIN_BLOB, PoolUse, WorkerRef, sharedPool} from './blob-pool.js'
import type {CompressItem, FileJob, FileJobBlob} from './blob-worker.js'
import {collectGarbage} from './gc.js'
import {contentMemory} from './memory.js'
import {BlobIndex, type BlobLocation, isObjectId, validBlob} from './blob-index.js'

const debug = debugFactory('holyship:repo')

export type {BlobLocation}

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

export interface InitOptions {
  packSize?: number
  level?: number
  /** make an encrypted repository (format 2) */
  encrypt?: boolean
  /** its first passphrase (default: --password-file / HOLYSHIP_PASSWORD / typed twice on a terminal) */
  password?: string
  /** scrypt parameters of the first key file (default: memory-hard; tests pass cheap ones) */
  kdf?: ScryptParams
}

export interface OpenOptions {
  loadIndex?: boolean
  /** an encrypted repository's passphrase (default: --password-file / HOLYSHIP_PASSWORD / a prompt) */
  password?: string
}

/** a new repository's config: never over one that another init wrote at the same moment */
async function putConfig(backend: Backend, data: Buffer): Promise<void> {
  try {
    await backend.put('config', data, {ifAbsent: true})
  } catch (e) {
    if (isExists(e)) throw new HolyshipError('REPO_EXISTS', `a repository already exists at ${backend.location}`)
    throw e
  }
}

/**
 * Check the `encryption` field of a config read from `where` (null, or parameters this holyship
 * knows, with the matching format version). Throws REPO_NEWER_FORMAT / `damaged`.
 */
export function checkEncryptionConfig(config: RepoConfig, where: string, damaged: 'REPO_DAMAGED' | 'REMOTE_CORRUPT'): void {
  const e = config.encryption as unknown
  if (e === null || e === undefined) {
    if (config.version >= FORMAT_VERSION_ENCRYPTED) throw new HolyshipError(damaged, `${where}/config: format ${config.version} without encryption parameters`)
    return
  }
  const p = e as {algorithm?: unknown; kdf?: unknown}
  if (typeof e !== 'object' || p.algorithm !== 'aes-256-gcm' || p.kdf !== 'scrypt') {
    throw new HolyshipError('REPO_NEWER_FORMAT', `${where} uses encryption ${JSON.stringify(e)}, which this holyship does not know`, {hint: 'upgrade holyship'})
  }
  if (config.version < FORMAT_VERSION_ENCRYPTED) throw new HolyshipError(damaged, `${where}/config: encryption parameters in a format ${config.version} config`)
}

export class Repository {
  private readonly index = new BlobIndex()
  private readonly loadedIndexFiles = new Set<string>()
  private readonly packSizes = new Map<string, number>()
  /** the pack being filled (and, while `writing`, written) */
  private pending: PackBuilder
  /** blobs in `pending` or in a pack being written, not yet in `index` */
  private readonly pendingIds = new Map<string, {type: BlobType; raw: number}>()
  /** blobs being compressed by a worker: known (saveBlob dedups against them), not yet in a pack */
  private readonly compressing = new Set<string>()
  /** every save not finished yet (flush waits for them) */
  private readonly running = new Set<Promise<unknown>>()
  /** settles when every place in line for the pack so far has left (see takePlace) */
  private packLine: Promise<void> = Promise.resolve()
  /** the pack being handed to the backend (one at a time): its buffer is not free yet */
  private writing?: Promise<void>
  /** pack writes whose buffer is free but which are not durable yet (fsync), settled or not */
  private readonly syncing = new Set<Promise<void>>()
  /** the first failed save or pack write: the repository refuses to flush after it */
  private failure?: unknown
  /** bumped by discardPending(): saves that finish later belong to an abandoned snapshot */
  private generation = 0
  /**
   * worker pools by use: storing (compressing, decoding big blobs) and restoring
   * (absent: not looked up yet, null: none)
   */
  private readonly pools: Partial<Record<PoolUse, BlobPool | null>> = {}
  /** packs written since the last index file, and how many blobs they hold */
  private unindexed: IndexFile['packs'] = []
  private unindexedBlobs = 0
  /** bytes of new chunks of POOL_MIN_BLOB or more so far (saveChunks starts the worker after POOL_START_BYTES) */
  private bigNew = 0
  /** ids of chunks of zeros by length (chunkId) */
  private readonly zeroIds = new Map<number, string>()
  /** saveChunks' OFFLOAD_BYTES and POOL_START_BYTES (tests set them to force one side or the other) */
  offloadBytes = OFFLOAD_BYTES
  poolStartBytes = POOL_START_BYTES
  /** optional observer for progress reporting */
  onPackWritten?: (bytes: number) => void
  /** optional cache of tree blobs */
  treeCache?: TreeCache
  /**
   * Told of every index file this repository writes, once it is stored (the catalogue records
   * it then, instead of reading it back at the next open). Must not throw.
   */
  onIndexFileWritten?: (id: string, file: IndexFile) => void

  /**
   * `config` is the effective config: for an encrypted repository its chunker seed is the one
   * derived from the master key (the stored config has none). `masterKey` is set exactly when
   * the repository is encrypted; `keyId` names the key file that opened it.
   */
  private constructor(
    readonly backend: Backend,
    readonly config: RepoConfig,
    readonly masterKey?: MasterKey,
    readonly keyId?: string,
  ) {
    this.pending = new PackBuilder(masterKey, packCapacity(config))
  }

  get id(): string {
    return this.config.id
  }

  get encrypted(): boolean {
    return this.masterKey !== undefined
  }

  static async init(backend: Backend, opts: InitOptions = {}): Promise<Repository> {
    if ((await backend.stat('config')) !== undefined) {
      throw new HolyshipError('REPO_EXISTS', `a repository already exists at ${backend.location}`)
    }
    const base = {
      format: FORMAT_NAME as typeof FORMAT_NAME,
      id: randomBytes(16).toString('hex'),
      created: new Date().toISOString(),
      compression: {algorithm: 'zstd' as const, level: opts.level ?? 3},
      packSize: opts.packSize ?? 16 * 1024 * 1024,
    }
    if (!opts.encrypt) {
      const config: RepoConfig = {
        ...base,
        version: FORMAT_VERSION_PLAIN,
        chunker: {...DEFAULT_CHUNKER, seed: randomBytes(16).toString('hex')},
        encryption: null,
      }
      await putConfig(backend, Buffer.from(JSON.stringify(config, null, 2) + '\n'))
      return new Repository(backend, config)
    }
    // the passphrase first (nothing is written if none is given), then the key file, then the
    // config: a repository exists once its config does, and then it can be opened
    const password = opts.password ?? (await getNewPassword({envName: 'HOLYSHIP_PASSWORD', useDefaultSources: true}))
    const key = MasterKey.generate()
    const stored = {
      format: base.format,
      version: FORMAT_VERSION_ENCRYPTED,
      id: base.id,
      created: base.created,
      chunker: {...DEFAULT_CHUNKER},
      compression: base.compression,
      packSize: base.packSize,
      encryption: {algorithm: 'aes-256-gcm', kdf: 'scrypt'},
    }
    const keyId = await addKeyFile(backend, key, password, opts.kdf)
    try {
      await putConfig(backend, Buffer.from(JSON.stringify(stored, null, 2) + '\n'))
    } catch (e) {
      await backend.delete(keyFileKey(keyId)).catch(() => undefined)
      throw e
    }
    return new Repository(backend, effectiveConfig(stored as RepoConfig, key), key, keyId)
  }

  static async open(backend: Backend, opts: OpenOptions = {}): Promise<Repository> {
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
    checkEncryptionConfig(config, backend.location, 'REPO_DAMAGED')
    let repo: Repository
    if (config.encryption) {
      const {key, keyId} = await unlockRepository(backend, {password: opts.password})
      repo = new Repository(backend, effectiveConfig(config, key), key, keyId)
    } else repo = new Repository(backend, config)
    if (opts.loadIndex !== false) await repo.loadIndex()
    return repo
  }

  /** Read index files not yet loaded. Each is verified against its name (its SHA-256). */
  async loadIndex(): Promise<void> {
    const entries = await this.backend.list('index/')
    for (const {key} of entries) {
      const id = key.slice('index/'.length)
      if (this.loadedIndexFiles.has(id)) continue
      this.addIndex(await this.readIndexFile(id))
      this.loadedIndexFiles.add(id)
    }
    debug('index: %d blobs from %d files', this.index.size, this.loadedIndexFiles.size)
  }

  /** Read one index file: checked against its name, decrypted, parsed (REPO_DAMAGED otherwise). */
  async readIndexFile(id: string): Promise<IndexFile> {
    let data: Buffer
    try {
      data = await this.backend.get(indexKey(id))
    } catch (e) {
      if (isNotFound(e)) throw new HolyshipError('REPO_DAMAGED', `index file ${indexKey(id)} is missing`)
      throw e
    }
    return this.decodeIndexFile(id, data)
  }

  /** The stored bytes of an index file → the index file (checked against its name). */
  decodeIndexFile(id: string, data: Buffer): IndexFile {
    const key = indexKey(id)
    if (sha256(data) !== id) throw new HolyshipError('REPO_DAMAGED', `index file ${key} is damaged: its content does not match its name`)
    let file: IndexFile
    try {
      file = openJson<IndexFile>('index', data, `index file ${key}`, this.masterKey)
    } catch (e) {
      if (e instanceof CorruptObjectError) throw new HolyshipError('REPO_DAMAGED', e.message, {cause: e})
      throw e
    }
    if (!file || !Array.isArray(file.packs)) throw new HolyshipError('REPO_DAMAGED', `index file ${key} is damaged: it has no pack list`)
    checkIndexEntries(file, key)
    return file
  }

  /** An index file's stored bytes (sealed in an encrypted repository) and id. */
  encodeIndexFile(file: IndexFile): {id: string; data: Buffer} {
    const data = sealJson('index', file, this.masterKey)
    return {id: sha256(data), data}
  }

  /** a blob's id: SHA-256, or HMAC-SHA256 with the repository's MAC key when encrypted */
  blobId(plain: Buffer): string {
    return blobIdOf(plain, this.masterKey)
  }

  /** Load blob locations from a cache (the catalogue) instead of reading index files. */
  seedIndex(locations: Iterable<[string, BlobLocation]>, indexFileIds: string[]): void {
    for (const [id, loc] of locations) {
      // what an older holyship cached without checking: left out (reading that blob then fails)
      if (this.index.addValid(id, loc) === 'invalid') {
        debug('catalogue: blob %s has an impossible location, left out', id)
        continue
      }
      if (!this.packSizes.has(loc.pack)) this.packSizes.set(loc.pack, 0)
    }
    for (const id of indexFileIds) this.loadedIndexFiles.add(id)
  }

  /**
   * Make an index file that was written to this repository's backend by someone else (a pull
   * copying packs in) known to the in-memory index. Its packs must already be stored.
   */
  registerIndexFile(id: string, file: IndexFile): void {
    checkIndexEntries(file, indexKey(id))
    this.addIndex(file)
    this.loadedIndexFiles.add(id)
  }

  private addIndex(file: IndexFile): void {
    for (const p of file.packs) {
      this.packSizes.set(p.id, p.size)
      for (const b of p.blobs) {
        this.index.addIfAbsent(b.id, {pack: p.id, type: b.type, offset: b.offset, length: b.length, raw: b.raw})
      }
    }
  }

  hasBlob(id: string): boolean {
    return this.index.has(id) || this.pendingIds.has(id) || this.compressing.has(id)
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

  /**
   * Store a blob unless the repository has it. `given` (from blobId()) may be passed when the
   * id is already computed; the compressed form is then checked by hashing what it decodes to.
   * Several saves may be in flight at once (the archiver keeps a bounded number
   * going): a save resolves once its blob is in a pack buffer, and flush() makes everything
   * durable. Whole files' content goes through saveContent/contentWriter, which use the blob
   * workers when there are any.
   */
  async saveBlob(type: BlobType, plain: Buffer, given?: string): Promise<SaveResult> {
    const id = given ?? this.blobId(plain)
    if (this.hasBlob(id)) return {id, added: 0}
    this.compressing.add(id)
    return {id, added: await this.storeNew(type, plain, id, given === undefined)}
  }

  /**
   * Pack a blob the repository lacks (its id already marked `compressing`, which this clears):
   * compressed when its turn in line comes, from zstd's scratch buffer straight into the pack.
   * `ofBytes`: the id was computed here from these very bytes (memory nobody writes to), so
   * the decoded frame is compared with them instead of hashed again. Returns the bytes added.
   */
  private async storeNew(type: BlobType, plain: Buffer, id: string, ofBytes: boolean): Promise<number> {
    const place = this.takePlace()
    try {
      const level = this.config.compression.level
      const [added] = await this.addToPack(place, [
        () => {
          const {enc, payload} = ofBytes ? compressBlobOfId(plain, id, level) : compressBlob(plain, id, level, this.masterKey)
          return this.packParts(id, type, enc, payload, plain.length)
        },
      ])
      return added
    } finally {
      this.compressing.delete(id)
      place.leave()
    }
  }

  /** put a blob into the pending pack as its encoding and payload (sealed with a key); returns its stored length */
  private packParts(id: string, type: BlobType, enc: number, payload: Buffer, raw: number): number {
    let n: number
    if (this.masterKey) n = this.pending.addSealed(id, type, enc, payload, raw, this.masterKey)
    else {
      this.pending.addParts(id, type, enc, payload, raw)
      n = payload.length + 1
    }
    this.pendingIds.set(id, {type, raw})
    return n
  }

  /**
   * Save a whole file's content that came in one piece: a contentWriter's only, last piece.
   * `giveAway`: nobody touches `data` again, so its memory may be handed to a blob worker
   * instead of copied, and back to contentMemory once stored. Returns each chunk's result, in
   * order.
   */
  async saveContent(data: Buffer, giveAway = false): Promise<SaveResult[]> {
    return await this.contentWriter()(data, giveAway, true)
  }

  /**
   * A writer for one file whose content comes in several pieces, cut as one stream (the
   * unfinished chunk carried to the next piece). Call it for every piece in order, `last` on
   * the final one; each call returns the results of the chunks that piece completed.
   * `giveAway` as in saveContent, the same for every piece.
   */
  contentWriter(): (piece: Buffer, giveAway: boolean, last: boolean) => Promise<SaveResult[]> {
    const chunker = new Chunker(this.config.chunker, chunkMemory, releaseMemory)
    return async (piece, giveAway, last) => {
      const chunks = last ? cutAll(chunker, piece) : chunker.push(piece)
      // the unfinished chunk's start is copied out of `piece`, whose memory moves on
      if (!last && giveAway) chunker.ownPending()
      // all of it copied on (into a chunk across pieces, or the unfinished one): free again
      if (giveAway && !chunks.some((c) => c.buffer === piece.buffer)) contentMemory.release(piece.buffer)
      return await this.saveChunks(chunks, giveAway ? undefined : piece.buffer)
    }
  }

  /**
   * Save chunks of file content: each is hashed here and looked up, and the new ones are
   * compressed (checked by decoding) and packed, in the order the saves began. Compression,
   * the bulk of the work, goes to a blob worker unless the workers have more than the chunk
   * plus offloadBytes left to do: then this thread compresses that chunk, so both threads work
   * and neither waits for the other.
   *
   * The chunks are views of memory that is this save's (given away, or the chunker's) except
   * `callerMemory`, which stays the caller's: untouched, copied from. This save's memory goes
   * to a worker without a copy, which detaches every view of it: the chunks of that memory
   * compressed here are copied out first. Memory goes back to contentMemory as soon as nothing
   * reads it: once compressed, or once packed when a blob is stored from it as it is.
   */
  private async saveChunks(chunks: Buffer[], callerMemory?: ArrayBufferLike): Promise<SaveResult[]> {
    const results: SaveResult[] = []
    const fresh: {i: number; id: string; plain: Buffer; length: number}[] = []
    for (const plain of chunks) {
      const id = this.chunkId(plain)
      // marked at once, so an equal chunk in this or another file is not compressed twice
      if (!this.hasBlob(id)) {
        this.compressing.add(id)
        fresh.push({i: results.length, id, plain, length: plain.length})
      }
      results.push({id, added: 0})
    }
    // given away: any memory of the chunks; else only what the chunker made (from contentMemory)
    const ours = (m: ArrayBufferLike): boolean => (callerMemory === undefined ? m instanceof ArrayBuffer : m !== callerMemory && contentMemory.owns(m))
    const freshMemory = new Set(fresh.map((f) => f.plain.buffer))
    for (const c of chunks) if (!freshMemory.has(c.buffer) && ours(c.buffer)) contentMemory.release(c.buffer)
    if (fresh.length === 0) return results
    let pool: BlobPool | undefined
    try {
      // started once this repository has had POOL_START_BYTES of new chunks worth a round trip:
      // a worker's ~40 MiB are not worth a small image beside a million tiny files
      let big = 0
      for (const f of fresh) if (f.length >= POOL_MIN_BLOB) big += f.length
      this.bigNew += big
      pool = big > 0 && (this.pools.store !== undefined || this.bigNew >= this.poolStartBytes) ? this.workers() : undefined
    } catch (e) {
      for (const f of fresh) this.compressing.delete(f.id)
      this.failure ??= e
      throw e
    }
    if (!pool) {
      // no worker to share the work with: each chunk compressed when its turn comes (storeNew),
      // with no copy and no bookkeeping a chunk (a snapshot of a million tiny files is this)
      try {
        const added = await Promise.all(fresh.map((f) => this.storeNew('data', f.plain, f.id, true)))
        for (const [k, f] of fresh.entries()) results[f.i].added = added[k]
      } finally {
        for (const m of freshMemory) if (ours(m)) contentMemory.release(m)
      }
      return results
    }
    const generation = this.generation
    const level = this.config.compression.level
    const place = this.takePlace()
    // each new chunk's stored form: whole (from a worker), or its encoding and payload (to be
    // sealed into the pack with a key); a payload may be the chunk's own bytes
    const out: ({stored: Buffer} | {enc: number; payload: Buffer})[] = new Array(fresh.length)
    const offloaded: Promise<void>[] = []
    /** what to give back once the blobs are in the pack: contentMemory's, what came back from a worker, each worker's stored forms */
    const release: ArrayBufferLike[] = []
    const adopt: ArrayBuffer[] = []
    const theirs: {from: WorkerRef; stored: Buffer[]}[] = []
    try {
      // what the workers have yet to compress, with what this save gives them
      let backlog = pool.queued
      for (const group of byMemory(fresh)) {
        const first = fresh[group[0]].plain
        const toWorker: number[] = []
        const here: number[] = []
        for (const k of group) {
          const n = fresh[k].length
          // a worker gets the chunk unless what it has already keeps it busy while this thread compresses the chunk
          if (n >= POOL_MIN_BLOB && backlog < n + this.offloadBytes) {
            toWorker.push(k)
            backlog += n
          } else here.push(k)
        }
        // the chunks compressed here: their own bytes, or a copy when their memory goes to a worker
        const plains = new Map<number, Buffer>()
        if (toWorker.length > 0) {
          // memory of the caller's is not sent: the worker's chunks are copied instead
          const send = ours(first.buffer)
          if (send) {
            for (const k of here) {
              const copy = chunkMemory(fresh[k].length)
              fresh[k].plain.copy(copy)
              plains.set(k, copy)
            }
          }
          let memory: ArrayBuffer
          let at: number[]
          if (send) {
            memory = first.buffer as ArrayBuffer
            at = toWorker.map((k) => fresh[k].plain.byteOffset)
          } else {
            const copy = chunkMemory(toWorker.reduce((n, k) => n + fresh[k].length, 0))
            at = []
            let o = 0
            for (const k of toWorker) {
              at.push(o)
              o += fresh[k].plain.copy(copy, o)
            }
            memory = copy.buffer as ArrayBuffer
          }
          const items: CompressItem[] = toWorker.map((k, j) => [0, at[j], fresh[k].length, fresh[k].id])
          const pooled = contentMemory.disown(memory)
          offloaded.push(
            pool.compress([memory], items, level).then((r) => {
              const back = r.memories[0]
              for (const [j, k] of toWorker.entries()) {
                const s = r.stored[j]
                out[k] = s ? {stored: s} : {enc: ENC_PLAIN, payload: Buffer.from(back, at[j], fresh[k].length)}
              }
              theirs.push({from: r.from, stored: r.stored.filter((x): x is Buffer => x !== null)})
              // memory that holds no blob stored as it is circulates again at once, not once packed
              if (pooled && r.stored.every((x) => x !== null)) contentMemory.adopt(back)
              else if (pooled) adopt.push(back)
            }),
          )
        }
        // whether the memory holds a blob stored as it is (then it is let go of once packed)
        let holds = false
        for (const k of here) {
          const f = fresh[k]
          const plain = plains.get(k) ?? f.plain
          // a view of memory handed to a worker is empty: never store it under the chunk's id
          if (plain.length !== f.length) throw new Error(`chunk ${f.id} lost its memory before it was compressed`)
          const {enc, payload} = compressBlobOfId(plain, f.id, level)
          if (payload === plain) {
            out[k] = {enc, payload}
            if (plains.has(k)) release.push(plain.buffer)
            else holds = true
          } else {
            // zstd's scratch buffer: copied out before the next compression
            const copy = chunkMemory(payload.length)
            payload.copy(copy)
            release.push(copy.buffer)
            out[k] = {enc, payload: copy}
            if (plains.has(k)) contentMemory.release(plain.buffer)
          }
        }
        if (toWorker.length === 0 && ours(first.buffer)) {
          if (holds) release.push(first.buffer)
          else contentMemory.release(first.buffer)
        }
      }
    } catch (e) {
      // nothing of this save reaches the pack; what was offloaded is awaited below
      place.leave()
      for (const f of fresh) this.compressing.delete(f.id)
      await Promise.allSettled(offloaded)
      this.failure ??= e
      throw e
    }
    const job = (async (): Promise<void> => {
      try {
        await Promise.all(offloaded)
        if (generation !== this.generation) return
        const added = await this.addToPack(
          place,
          fresh.map((f, k) => () => {
            const o = out[k]
            if (!('stored' in o)) return this.packParts(f.id, 'data', o.enc, o.payload, f.length)
            this.pending.add(f.id, 'data', o.stored, f.length)
            this.pendingIds.set(f.id, {type: 'data', raw: f.length})
            return o.stored.length
          }),
        )
        for (const [k, f] of fresh.entries()) results[f.i].added = added[k]
      } finally {
        place.leave()
        for (const f of fresh) this.compressing.delete(f.id)
        // copied into the pack (or abandoned): the memory goes back where it came from
        for (const m of release) contentMemory.release(m)
        for (const m of adopt) contentMemory.adopt(m)
        for (const t of theirs) pool.recycle(t.from, t.stored)
      }
    })()
    await this.track(job)
    return results
  }

  /**
   * A chunk's id: blobIdOf, but hashed once per length for chunks of zeros (a sparse or
   * preallocated file's are all alike and the size of the chunker's maximum)
   */
  private chunkId(plain: Buffer): string {
    if (plain.length < ZERO_IDS_MIN || !isZero(plain)) return blobIdOf(plain, this.masterKey)
    let id = this.zeroIds.get(plain.length)
    if (id === undefined) {
      id = blobIdOf(plain, this.masterKey)
      this.zeroIds.set(plain.length, id)
    }
    return id
  }

  private workers(use: PoolUse = 'store'): BlobPool | undefined {
    const pool = this.pools[use]
    if (pool === undefined || pool?.failed) this.pools[use] = sharedPool(this.masterKey, use) ?? null
    return this.pools[use] ?? undefined
  }

  /** follow a save until it settles; its failure fails the next flush() too */
  private async track<T>(job: Promise<T>): Promise<T> {
    this.running.add(job)
    try {
      return await job
    } catch (e) {
      this.failure ??= e
      throw e
    } finally {
      this.running.delete(job)
    }
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

  /**
   * A place in line for the pack, taken when a save starts: blobs land in packs in the order
   * their saves began (a file's chunks together, as a restore reads them; the same layout
   * whichever worker finishes first), not in the order compression ends. `leave()` when the
   * save is over, added or not; the next place's turn comes once this one and all before it
   * have left.
   */
  private takePlace(): Place {
    const turn = this.packLine
    let leave!: () => void
    const left = new Promise<void>((resolve) => (leave = resolve))
    this.packLine = Promise.all([turn, left]).then(() => undefined)
    return {turn, leave}
  }

  /**
   * On `place`'s turn, run each `add` (which puts one blob into the pending pack,
   * synchronously) once the pending pack has room and is not being written; hand the pack to
   * the writer when it is full. Saves wait while a pack is written, which is what holds back a
   * producer faster than the disk (and keeps one pack buffer instead of two).
   */
  private async addToPack(place: Place, adds: (() => number)[]): Promise<number[]> {
    await place.turn
    const out: number[] = []
    for (const add of adds) {
      while (this.writing || this.packFull()) await this.handOver()
      out.push(add())
    }
    if (this.packFull()) await this.handOver()
    return out
  }

  /**
   * the pending pack has its size, or its blob count: tiny files' blobs are bookkept one by one
   * (the header, the pending set) until the pack is written, so a pack holds at most so many
   */
  private packFull(): boolean {
    return this.pending.length >= this.config.packSize || this.pending.count >= MAX_PACK_BLOBS
  }

  /**
   * Write the pending pack and wait until its buffer is free again (a local backend: once the
   * bytes are in the page cache, not until the fsync is over); when a write is under way, only
   * wait for it (the caller looks again). The rest of a write (fsync, rename, the size check,
   * recording its blobs) goes on while the next pack fills, at most MAX_SYNCING at once; flush()
   * waits for all of it before any index file names the pack. Throws the first failure of any
   * save or write.
   */
  private async handOver(): Promise<void> {
    if (this.failure !== undefined) throw this.failure
    if (this.writing) {
      await this.writing.catch(() => undefined)
      return
    }
    if (this.pending.count === 0) return
    // one pack buffer (about 20 MiB): blobs wait while it is handed to the backend; the
    // workers go on with what is in flight meanwhile
    const builder = this.pending
    const buffered = (async (): Promise<void> => {
      while (this.syncing.size >= MAX_SYNCING) await Promise.race(this.syncing)
      if (this.failure !== undefined) throw this.failure
      let released!: () => void
      const free = new Promise<void>((resolve) => (released = resolve))
      const write = this.track(this.writePack(builder, released))
      const done = write.then(
        () => undefined,
        () => undefined,
      )
      this.syncing.add(done)
      void done.then(() => this.syncing.delete(done))
      // the backend may never say (it keeps the data until the end): then the end frees it
      await Promise.race([free, write])
    })()
    this.writing = buffered.finally(() => {
      builder.reset()
      this.writing = undefined
    })
    await this.writing
  }

  private async writePack(builder: PackBuilder, released: () => void): Promise<void> {
    const {id, data, blobs} = builder.finish()
    const key = dataKey(id)
    await this.backend.put(key, data, {released})
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
    this.unindexedBlobs += blobs.length
    debug('pack %s: %d blobs, %d bytes', id.slice(0, 12), blobs.length, data.length)
    this.onPackWritten?.(data.length)
    // a pack of many small blobs is as many saves' promises, closures and tree entries, most of
    // them promoted to V8's old generation by now: collected every 16 MiB of such packs (a
    // million tiny files peaked ~14 MiB higher without; big blobs' memory is recycled instead,
    // and their few saves leave little behind)
    if (blobs.length >= MANY_BLOBS) collectGarbage(data.length)
    // keep index files bounded (packs of tiny files hold tens of thousands of blobs each), so a
    // long snapshot's progress survives in pieces and the pending lists stay small in memory
    if (this.unindexed.length >= 64 || this.unindexedBlobs >= INDEX_FILE_BLOBS) await this.writeIndex()
  }

  private async writeIndex(): Promise<void> {
    if (this.unindexed.length === 0) return
    // taken at once: another pack's write may finish (and call this) meanwhile
    const packs = this.unindexed
    this.unindexed = []
    this.unindexedBlobs = 0
    const file: IndexFile = {version: 1, packs}
    const {id, data} = this.encodeIndexFile(file)
    await this.backend.put(indexKey(id), data)
    this.loadedIndexFiles.add(id)
    this.onIndexFileWritten?.(id, file)
  }

  /** Make everything saved so far durable: saves in flight, the pending pack, then an index file for new packs. */
  async flush(): Promise<void> {
    while (this.running.size > 0) await Promise.allSettled([...this.running])
    while (this.pending.count > 0 || this.writing) await this.handOver()
    // the packs' fsyncs: no index file may name a pack before it is durable
    while (this.running.size > 0) await Promise.allSettled([...this.running])
    if (this.failure !== undefined) throw this.failure
    await this.writeIndex()
  }

  /** Drop what is not yet in a pack (an aborted snapshot). Written packs stay, unreferenced. */
  discardPending(): void {
    this.generation++
    this.pending.reset()
    this.pendingIds.clear()
    this.compressing.clear()
    this.failure = undefined
  }

  async loadBlob(id: string): Promise<Buffer> {
    const {loc, where} = this.locate(id)
    const stored = await this.readStored(loc, where, id)
    try {
      const pool = loc.raw >= POOL_MIN_BLOB ? this.workers() : undefined
      // the blob is garbage once the caller is done with it (a restore: once it is written)
      collectGarbage(loc.raw, true)
      return pool ? await pool.decode(stored, id, loc.raw, where) : decodeBlob(stored, id, loc.raw, where, this.masterKey)
    } catch (e) {
      throw asDamage(e)
    }
  }

  /** blob `id`'s bytes as stored at `loc` (not yet opened, decoded or checked); a missing pack is REPO_DAMAGED */
  private async readStored(loc: BlobLocation, where: string, id: string): Promise<Buffer> {
    return await packRead(where, id, () => this.backend.getRange(where, loc.offset, loc.length))
  }

  /** where blob `id` is: REPO_DAMAGED when the index does not have it */
  private locate(id: string): {loc: BlobLocation; where: string} {
    const loc = this.index.get(id)
    if (!loc) throw new HolyshipError('REPO_DAMAGED', `blob ${id.slice(0, 16)} is referenced but not in the repository's index`)
    return {loc, where: dataKey(loc.pack)}
  }

  /**
   * The blob workers of a restore (undefined without: writeBlobAt is then not for use).
   * Started on first use; they stay for the process (closeSharedPools ends them).
   */
  restoreWorkers(): BlobPool | undefined {
    return this.workers('restore')
  }

  /**
   * Write blob `id` at `pos` of the open file `fd` (a restore) from a restore worker, which
   * reads it (from the pack file itself when the backend has one open for it, else it is
   * read here and handed over), decodes and checks it, and writes it unless it is all zeros.
   * Returns whether it was. A damaged blob is REPO_DAMAGED, as from loadBlob; a failed write
   * keeps its errno code.
   */
  async writeBlobAt(pool: BlobPool, id: string, fd: number, pos: number): Promise<{zero: boolean}> {
    const {loc, where} = this.locate(id)
    const file = this.backend.openFile ? await packRead(where, id, () => this.backend.openFile!(where)) : undefined
    try {
      const from = file ? {fd: file.fd, offset: loc.offset, length: loc.length} : await this.readStored(loc, where, id)
      return await pool.write(from, id, loc.raw, where, fd, pos)
    } catch (e) {
      throw asDamage(e)
    } finally {
      file?.release()
    }
  }

  /**
   * The restore workers when they can write whole files (writeFile): the backend must hand
   * out its pack files' descriptors. Undefined otherwise.
   */
  fileWorkers(): BlobPool | undefined {
    return this.backend.openFile ? this.restoreWorkers() : undefined
  }

  /**
   * Create the file `file.path` and write blobs `ids` into it, its size, owner, mode and
   * times, all in a restore worker (FileJob) that reads each blob from its pack file, decodes
   * and checks it: the main thread only looks the blobs up. A damaged or unreadable blob is
   * REPO_DAMAGED naming it and its pack, as from loadBlob, and nothing of the file is left; a
   * failed system call keeps its errno code.
   */
  async writeFile(pool: BlobPool, file: Omit<FileJob, 'blobs'>, ids: string[]): Promise<void> {
    const open = new Map<string, Promise<{fd: number; release: () => void}>>()
    const blobs: FileJobBlob[] = []
    try {
      for (const id of ids) {
        const {loc, where} = this.locate(id)
        let f = open.get(where)
        if (!f) {
          f = packRead(where, id, () => this.backend.openFile!(where))
          open.set(where, f)
        }
        blobs.push({id, raw: loc.raw, where, fd: (await f).fd, offset: loc.offset, length: loc.length})
      }
      await pool.file({...file, blobs})
    } catch (e) {
      const at = (e as {blob?: number}).blob
      // a short read (the pack is shorter than the index says) names the blob it failed on
      throw at === undefined ? asDamage(e) : asUnreadable(asDamage(e), blobs[at].id, `pack ${blobs[at].where}`)
    } finally {
      for (const f of open.values()) void f.then((h) => h.release(), () => undefined)
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
    const data = this.encodeManifest(manifest)
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
    return this.decodeManifest(id, data)
  }

  /** A manifest's stored bytes (sealed in an encrypted repository); its id is their SHA-256. */
  encodeManifest(manifest: SnapshotManifest): Buffer {
    return sealJson('snapshot', manifest, this.masterKey)
  }

  /** The stored bytes of a manifest → the manifest (checked against its id, decrypted). */
  decodeManifest(id: string, data: Buffer): SnapshotManifest {
    if (sha256(data) !== id) throw new HolyshipError('REPO_DAMAGED', `snapshot ${id} is damaged: its content does not match its id`)
    let m: SnapshotManifest
    try {
      m = openJson<SnapshotManifest>('snapshot', data, `snapshot ${snapshotKey(id)}`, this.masterKey)
    } catch (e) {
      if (e instanceof CorruptObjectError) throw new HolyshipError('REPO_DAMAGED', e.message, {cause: e})
      throw e
    }
    if (!m || typeof m.version !== 'number') throw new HolyshipError('REPO_DAMAGED', `snapshot ${snapshotKey(id)} is damaged: not a manifest`)
    const version = manifestVersion(m.version)
    if (version === 'bad') throw new HolyshipError('REPO_DAMAGED', `snapshot ${snapshotKey(id)} is damaged: manifest version ${m.version}`)
    if (version === 'newer') throw new HolyshipError('REPO_NEWER_FORMAT', `snapshot ${id} has manifest version ${m.version}`)
    return m
  }

  async listSnapshots(): Promise<SnapshotEntry[]> {
    const ids = await this.listSnapshotIds()
    const out: SnapshotEntry[] = []
    for (const id of ids) out.push({id, manifest: await this.loadSnapshot(id)})
    return out
  }
}

/**
 * chunks of at least this size are looked at for zeros (chunkId), whose ids are kept by
 * length: a sparse or preallocated file's; smaller ones are cheap to hash and seldom all zeros
 */
const ZERO_IDS_MIN = 64 * 1024

/**
 * How much more than a chunk the blob workers may have left to compress before the main
 * thread compresses that chunk itself (saveChunks): enough that they do not run dry while it
 * does (measured on two cores: 0.5 to 2 MiB are alike, and all work better than never or always)
 */
const OFFLOAD_BYTES = 1024 * 1024

/**
 * New chunk bytes (of chunks worth a round trip) a repository compresses on its own before it
 * starts a blob worker (saveChunks): a scale run of a million tiny files beside a 2 MB image
 * peaked at 257-261 MiB with the worker started for the image, 243 MiB without
 */
export const POOL_START_BYTES = 8 * 1024 * 1024

/** blobs in a pack from which its write counts towards a full garbage collection (writePack) */
const MANY_BLOBS = 256

/** memory for chunks and stored forms of file content (see memory.ts) */
const chunkMemory = (n: number): Buffer => contentMemory.alloc(n)
const releaseMemory = (b: Buffer): void => contentMemory.release(b.buffer)

/** indexes of `chunks` grouped by the memory they are views of, in order of first appearance */
function byMemory(chunks: {plain: Buffer}[]): number[][] {
  const groups = new Map<ArrayBufferLike, number[]>()
  for (const [k, c] of chunks.entries()) {
    const g = groups.get(c.plain.buffer)
    if (g) g.push(k)
    else groups.set(c.plain.buffer, [k])
  }
  return [...groups.values()]
}

export const hostName = (): string => os.hostname()

/**
 * pack writes that may be finishing (fsync) at once while the next packs fill: each holds a
 * thread of libuv's pool, which the file reads of a snapshot need too
 */
const MAX_SYNCING = 2

const validBlobEntry = (b: Partial<PackBlob> | undefined): boolean => !!b && validBlob(b.id, b.type, b.offset, b.length, b.raw)

/** every pack and blob entry of an index file could be real (REPO_DAMAGED, naming `key`, otherwise) */
function checkIndexEntries(file: IndexFile, key: string): void {
  for (const p of file.packs) {
    const bad = !p || !isObjectId(p.id) || !Array.isArray(p.blobs) ? p : p.blobs.find((b) => !validBlobEntry(b))
    if (bad !== undefined) throw new HolyshipError('REPO_DAMAGED', `index file ${key} is damaged: it names an impossible blob or pack: ${JSON.stringify(bad).slice(0, 200)}`)
  }
}

/** an index file is written once the packs not yet in one hold this many blobs (or are 64) */
const INDEX_FILE_BLOBS = 65_536

/** blobs in one pack at most (a pack of ~500-byte files would otherwise hold ~70,000) */
const MAX_PACK_BLOBS = 16_384

/** a save's place in line for the pack (see Repository.takePlace) */
interface Place {
  turn: Promise<void>
  leave: () => void
}

/** room for a full pack: its target size, the biggest blob that can overflow it, and a header */
function packCapacity(config: RepoConfig): number {
  return config.packSize + config.chunker.max + 256 * 1024
}

/** the config an encrypted repository works with: the stored one, with the derived chunker seed */
function effectiveConfig(stored: RepoConfig, key: MasterKey): RepoConfig {
  return {...stored, chunker: {...stored.chunker, seed: key.chunkerSeed()}}
}

/** `read` of pack `where` (for blob `id`), a missing pack reported as REPO_DAMAGED */
async function packRead<T>(where: string, id: string, read: () => Promise<T>): Promise<T> {
  try {
    return await read()
  } catch (e) {
    if (isNotFound(e)) throw new HolyshipError('REPO_DAMAGED', `pack ${where} is missing (it holds blob ${id.slice(0, 16)})`)
    throw e
  }
}

/**
 * A read of blob `id` (in `where`: "pack data/…") that came back short or garbled (an Error
 * without an errno code: the local backend's or a worker's "short read") as REPO_DAMAGED
 * naming both; errno errors (EIO, EACCES, ENOSPC...), HolyshipErrors and the rest as they are.
 */
export function asUnreadable(e: unknown, id: string, where: string): unknown {
  if (isHolyshipError(e) || (e as NodeJS.ErrnoException)?.code !== undefined || !(e instanceof Error)) return e
  return new HolyshipError('REPO_DAMAGED', `blob ${id.slice(0, 16)} in ${where} cannot be read: ${e.message}`, {cause: e})
}

/** a blob found damaged (CorruptBlobError) as REPO_DAMAGED; any other error as it is */
function asDamage(e: unknown): unknown {
  return e instanceof CorruptBlobError ? new HolyshipError('REPO_DAMAGED', e.message, {cause: e}) : e
}
