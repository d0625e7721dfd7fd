/**
 * Pieces shared by push and pull: a bounded worker pool, index files written in batches,
 * pack verification, walking a snapshot's trees, and caching a remote's index files and
 * manifests in the catalogue under the remote's own namespace.
 */
import {Backend, isExists, isNotFound} from '../backend/backend.js'
import {Catalogue} from '../catalogue/catalogue.js'
import {HolyshipError} from '../errors.js'
import {FORMAT_NAME, FORMAT_VERSION, IndexFile, PackBlob, RepoConfig, SnapshotManifest, Tree, indexKey, manifestVersion, snapshotKey} from '../repo/format.js'
import type {MasterKey} from '../repo/crypto.js'
import {copyKeyFiles, keyFileKey} from '../repo/keys.js'
import {CorruptBlobError, CorruptObjectError, decodeBlob, openJson, parsePackHeader, sealJson, sha256} from '../repo/pack.js'
import {Repository, checkEncryptionConfig} from '../repo/repository.js'
import {RemoteHandle} from './remotes.js'

/** most packs one index file names (as Repository does) so a long transfer is durable in pieces */
export const PACKS_PER_INDEX = 64

/**
 * Run fn over items with at most `limit` in flight. On the first failure no new item is
 * started; the ones in flight are awaited, then the first error is thrown.
 */
export async function pool<T>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0
  let failed = false
  let first: unknown
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const i = next++
      try {
        await fn(items[i], i)
      } catch (e) {
        if (!failed) {
          failed = true
          first = e
        }
      }
    }
  }
  await Promise.all(Array.from({length: Math.min(Math.max(1, limit), items.length)}, worker))
  if (failed) throw first
}

/**
 * Collects packs that have become present on a side and writes index files for them, at most
 * PACKS_PER_INDEX packs each, one at a time. Every index file is content-addressed and new:
 * nothing is read, modified and written back.
 */
export class IndexBatcher {
  private pending: IndexFile['packs'] = []
  private chain: Promise<void> = Promise.resolve()
  written = 0

  /** with a key (an encrypted repository) the index files are sealed with it */
  constructor(
    private readonly sink: (id: string, data: Buffer, file: IndexFile) => Promise<void>,
    private readonly key?: MasterKey,
  ) {}

  /** resolves once the index file that names this pack (if one was cut) is written */
  add(pack: IndexFile['packs'][number]): Promise<void> {
    this.pending.push(pack)
    return this.pending.length >= PACKS_PER_INDEX ? this.cut() : Promise.resolve()
  }

  private cut(): Promise<void> {
    const packs = this.pending
    this.pending = []
    const file: IndexFile = {version: 1, packs}
    const data = sealJson('index', file, this.key)
    const id = sha256(data)
    this.chain = this.chain.then(async () => {
      await this.sink(id, data, file)
      this.written++
    })
    return this.chain
  }

  async flush(): Promise<void> {
    if (this.pending.length > 0) await this.cut()
    else await this.chain
  }
}

export class PackCheckError extends Error {
  constructor(readonly reason: string) {
    super(reason)
    this.name = 'PackCheckError'
  }
}

/**
 * Check a whole pack: its SHA-256 is its id (no key needed), its header parses, and every blob
 * decodes to its id. An encrypted repository's pack needs its key for the last two: the header
 * and every blob are authenticated, and blob ids are HMACs of the plaintext. Tree blobs are
 * handed to onTree (decoded). Returns the header's blob list.
 */
export function verifyPack(data: Buffer, packId: string, where: string, onTree?: (id: string, plain: Buffer) => void, key?: MasterKey): PackBlob[] {
  if (sha256(data) !== packId) throw new PackCheckError('its content does not match its name (SHA-256 mismatch)')
  let blobs: PackBlob[]
  try {
    blobs = parsePackHeader(data, where, key)
  } catch (e) {
    throw new PackCheckError((e as Error).message)
  }
  for (const b of blobs) {
    if (b.type !== 'data' && b.type !== 'tree') throw new PackCheckError(`blob ${String(b.id).slice(0, 16)} has unknown type ${JSON.stringify(b.type)}`)
    let plain: Buffer
    try {
      plain = decodeBlob(data.subarray(b.offset, b.offset + b.length), b.id, b.raw, where, key)
    } catch (e) {
      if (e instanceof CorruptBlobError) throw new PackCheckError(e.message)
      throw e
    }
    if (b.type === 'tree') onTree?.(b.id, plain)
  }
  return blobs
}

/** Parse and check a repository config read from `where`. */
export function parseRepoConfig(raw: Buffer, where: string): RepoConfig {
  let config: RepoConfig
  try {
    config = JSON.parse(raw.toString('utf8')) as RepoConfig
  } catch {
    throw new HolyshipError('REMOTE_CORRUPT', `${where}/config is not valid JSON`)
  }
  if (!config || config.format !== FORMAT_NAME || typeof config.id !== 'string' || !config.chunker) {
    throw new HolyshipError('REMOTE_CORRUPT', `${where}/config is not a holyship repository config`)
  }
  if (typeof config.version !== 'number' || config.version > FORMAT_VERSION) {
    throw new HolyshipError('REPO_NEWER_FORMAT', `${where} has repository format ${config.version}; this holyship reads up to ${FORMAT_VERSION}`, {hint: 'upgrade holyship'})
  }
  checkEncryptionConfig(config, where, 'REMOTE_CORRUPT')
  return config
}

/**
 * Make `to` (empty) a copy of the repository whose config is `config`: an encrypted one's key
 * files first, from `keysFrom` (a config without them could not be opened; they travel only
 * now: afterwards each side's passphrases are its own, so one removed on one side is never
 * brought back), then the config, create only: of two copies made at the same moment one
 * config stays, never replaced by the other's after the first went on as if it were there.
 * Returns the config there afterwards, parsed, and whether it is ours (`created`). When another
 * repository's config won, the key files copied for this one are deleted: they open our master
 * key, not that repository's.
 */
export async function createRepositoryCopy(to: Backend, config: Buffer, keysFrom?: Backend): Promise<{created: boolean; raw: Buffer; config: RepoConfig}> {
  const keysCopied = keysFrom ? await copyKeyFiles(keysFrom, to) : []
  let created = false
  try {
    await to.put('config', config, {ifAbsent: true})
    created = true
  } catch (e) {
    // another copy was made at the same moment: its config will do (it may take a moment to show)
    if (!isExists(e) && !(await to.get('config').catch(() => undefined))) throw e
  }
  const there = await settledConfig(to)
  // a store that ignores If-None-Match let a racing copy replace ours: theirs is the one there
  if (!there.raw.equals(config)) created = false
  if (!created && keysCopied.length > 0 && there.config.id !== parseRepoConfig(config, 'this repository').id) {
    for (const id of keysCopied) await to.delete(keyFileKey(id))
  }
  return {created, ...there}
}

/**
 * The config of a repository copy just created, by us or one racing us: a store that writes an
 * object in place (s3rver, a file system without hard links) shows a racing put's object as
 * missing or cut for a moment, so a few reads are tried before that is an error.
 */
async function settledConfig(to: Backend): Promise<{raw: Buffer; config: RepoConfig}> {
  for (let attempt = 1; ; attempt++) {
    let failure: unknown
    try {
      const raw = await to.get('config')
      return {raw, config: parseRepoConfig(raw, to.location)}
    } catch (e) {
      failure = isNotFound(e) ? new HolyshipError('REMOTE_CORRUPT', `${to.location}: the config just written cannot be read back`) : e
    }
    if (attempt >= 5) throw failure
    await new Promise((r) => setTimeout(r, 100 * attempt))
  }
}

/** the root trees of a snapshot: image, filesystem diff, every mount */
export function snapshotRoots(m: SnapshotManifest): string[] {
  const roots: string[] = []
  if (m.container?.image?.tree) roots.push(m.container.image.tree)
  if (m.container?.fsDiff) roots.push(m.container.fsDiff)
  for (const mount of m.mounts ?? []) if (mount.tree) roots.push(mount.tree)
  return roots
}

/** the blobs a tree names directly: data chunks of its files, and its subdirectories' trees */
export function treeChildren(tree: Tree): {data: string[]; subtrees: string[]} {
  const data: string[] = []
  const subtrees: string[] = []
  for (const node of tree.nodes) {
    if (node.content) for (const c of node.content) data.push(c)
    if (node.subtree) subtrees.push(node.subtree)
  }
  return {data, subtrees}
}

/** treeChildren of the tree `id` of `repo`, read through the catalogue's tree cache (and kept there) */
export async function cachedTreeChildren(repo: Repository, cat: Catalogue, id: string): Promise<{data: string[]; subtrees: string[]}> {
  let data = cat.getTree(id)
  if (!data) {
    data = await repo.loadBlob(id)
    cat.putTree(id, data)
  }
  return treeChildren(JSON.parse(data.toString('utf8')) as Tree)
}

/** Parse a manifest whose bytes were checked against its id (decrypted with the key of an encrypted repository). */
export function parseManifest(data: Buffer, id: string, where: string, key?: MasterKey): SnapshotManifest {
  if (sha256(data) !== id) throw new HolyshipError('REMOTE_CORRUPT', `${where}/${snapshotKey(id)} is damaged: its content does not match its name`)
  let m: SnapshotManifest
  try {
    m = openJson<SnapshotManifest>('snapshot', data, `${where}/${snapshotKey(id)}`, key)
  } catch (e) {
    if (!(e instanceof CorruptObjectError)) throw e
    throw new HolyshipError('REMOTE_CORRUPT', e.why === 'not valid JSON' ? `${where}/${snapshotKey(id)} is not valid JSON` : e.message)
  }
  if (!m || typeof m !== 'object') throw new HolyshipError('REMOTE_CORRUPT', `${where}/${snapshotKey(id)} is not a manifest`)
  const version = manifestVersion(m.version)
  if (version === 'bad') throw new HolyshipError('REMOTE_CORRUPT', `${where}/${snapshotKey(id)} has manifest version ${JSON.stringify(m.version)}`)
  if (version === 'newer') throw new HolyshipError('REPO_NEWER_FORMAT', `snapshot ${id} at ${where} has manifest version ${m.version}`, {hint: 'upgrade holyship'})
  return m
}

/**
 * Bring the catalogue's copy of the remote's index files up to date: only index files not seen
 * before are read (each checked against its name). If one we knew is gone (pruned elsewhere),
 * the namespace is forgotten and relearnt. Listing `index/` is small; no pack is listed.
 */
export async function syncRemoteIndex(cat: Catalogue, remote: RemoteHandle, parallel: number, masterKey?: MasterKey): Promise<{indexFiles: number; fetched: number}> {
  const ns = remote.namespace
  const listed = (await remote.backend.list('index/')).map((e) => e.key.slice('index/'.length))
  const listedSet = new Set(listed)
  let known = cat.indexFilesKnown(ns)
  if ([...known].some((id) => !listedSet.has(id))) {
    cat.forgetRepository(ns)
    known = new Set()
  }
  const todo = listed.filter((id) => !known.has(id))
  await pool(todo, parallel, async (id) => {
    const key = indexKey(id)
    const data = await remote.backend.get(key)
    if (sha256(data) !== id) throw new HolyshipError('REMOTE_CORRUPT', `${remote.location}/${key} is damaged: its content does not match its name`)
    let file: IndexFile
    try {
      file = openJson<IndexFile>('index', data, `${remote.location}/${key}`, masterKey)
    } catch (e) {
      if (!(e instanceof CorruptObjectError)) throw e
      throw new HolyshipError('REMOTE_CORRUPT', e.why === 'not valid JSON' ? `${remote.location}/${key} is not valid JSON` : e.message)
    }
    if (!file || !Array.isArray(file.packs)) throw new HolyshipError('REMOTE_CORRUPT', `${remote.location}/${key} is not an index file`)
    cat.recordIndexFile(ns, id, file)
  })
  return {indexFiles: listed.length, fetched: todo.length}
}

/**
 * Bring the catalogue's list of the remote's snapshots up to date: manifests not seen before
 * are read and checked; snapshots gone from the remote are dropped from the namespace.
 */
export async function syncRemoteSnapshots(cat: Catalogue, remote: RemoteHandle, parallel: number, key?: MasterKey): Promise<{snapshots: number; fetched: number}> {
  const ns = remote.namespace
  const listed = (await remote.backend.list('snapshots/')).map((e) => e.key.slice('snapshots/'.length))
  const inCat = new Set(cat.snapshotIds(ns))
  const todo = listed.filter((id) => !inCat.has(id))
  await pool(todo, parallel, async (id) => {
    const m = parseManifest(await remote.backend.get(snapshotKey(id)), id, remote.location, key)
    cat.recordSnapshot(ns, id, m)
  })
  const listedSet = new Set(listed)
  for (const id of inCat) if (!listedSet.has(id)) cat.removeSnapshot(ns, id)
  return {snapshots: listed.length, fetched: todo.length}
}

/** Read the remote's config, or undefined when it has none. */
export async function readRemoteConfig(remote: RemoteHandle): Promise<{raw: Buffer; config: RepoConfig} | undefined> {
  let raw: Buffer
  try {
    raw = await remote.backend.get('config')
  } catch (e) {
    if (isNotFound(e)) return undefined
    throw e
  }
  return {raw, config: parseRepoConfig(raw, remote.location)}
}
