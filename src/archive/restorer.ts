/**
 * Turn trees back into files: as a tar stream (for the Docker API: putArchive into a
 * volume, or an image layer for docker load) or into a host directory (restore --path).
 *
 * Trees are read through loadCheckedTree (tree-check.ts): names with `/`, NUL, `.`, `..`,
 * duplicates and hard links that leave the tree are refused before they are used. A tar
 * stream is checked whole before its first byte is written, so nothing of a hostile or
 * damaged tree reaches the engine; a host directory is never written outside its target.
 */
import {execFile} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {
  Stats,
  chmodSync,
  closeSync,
  fchmodSync,
  fchownSync,
  open as fsOpen,
  write as fsWrite,
  constants as fsc,
  promises as fsp,
  ftruncateSync,
  futimesSync,
  lchownSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  rmSync,
  symlinkSync,
  writeSync,
} from 'node:fs'
import * as path from 'node:path'
import {promisify} from 'node:util'
import {retainReads} from '../backend/local.js'
import {HolyshipError, isHolyshipError} from '../errors.js'
import {BlobPool, POOL_MIN_BLOB} from '../repo/blob-pool.js'
import {TreeNode, dataKey} from '../repo/format.js'
import {isZero} from '../repo/pack.js'
import {Repository, asUnreadable} from '../repo/repository.js'
import {bytesOfName, fsPath, hasEscapes} from './names.js'
import {TarHeader, TarWriter} from './tarwriter.js'
import {UnsafeTreeError, loadCheckedTree, walksBefore} from './tree-check.js'

const execFileP = promisify(execFile)

/** A path a --partial restore could not restore, and why. */
export interface SkippedEntry {
  /** path relative to the restored tree's root */
  path: string
  reason: string
}

/** An extended attribute a restore could not set; everything else of the entry was restored. */
export interface XattrNotSet {
  /** where the entry was written, on this host */
  path: string
  name: string
  reason: string
}

/** extended attributes a restore could not set: how many, and the first MAX_XATTRS_LISTED of them */
export interface XattrsNotSet {
  total: number
  first: XattrNotSet[]
}

export const MAX_XATTRS_LISTED = 1000

/** Damaged data (a blob or tree that cannot be read back intact), as opposed to a hostile tree or an I/O error. */
export function isDamage(e: unknown): e is HolyshipError {
  return isHolyshipError(e) && e.code === 'REPO_DAMAGED' && !(e instanceof UnsafeTreeError)
}

/**
 * repo.loadBlob, with a read that comes back short or garbled (a truncated pack: the local
 * backend's "short read") reported as REPO_DAMAGED naming the pack, like a hash mismatch.
 * Errors with an errno (EIO, EACCES, ENOSPC...) and HolyshipErrors pass unchanged.
 */
export async function readBlob(repo: Repository, id: string): Promise<Buffer> {
  return await damageNamed(repo, id, () => repo.loadBlob(id))
}

/** readBlob's error mapping around any read of blob `id` */
async function damageNamed<T>(repo: Repository, id: string, read: () => Promise<T>): Promise<T> {
  try {
    return await read()
  } catch (e) {
    const loc = repo.blobLocation(id)
    throw asUnreadable(e, id, loc ? `pack ${dataKey(loc.pack)}` : 'the repository')
  }
}

/** chunks fileContent reads ahead of the one it hands out, at most, and their bytes at most */
const READ_AHEAD_CHUNKS = 8
const READ_AHEAD_BYTES = 16 * 1024 * 1024

/**
 * The content of a file node, chunk by chunk, each verified against its hash by loadBlob.
 * Later chunks are read while one is consumed (a few, bounded by bytes), so reading, decoding
 * in the blob workers and the consumer overlap.
 */
export async function* fileContent(repo: Repository, node: TreeNode, onBytes?: (n: number) => void): AsyncGenerator<Buffer> {
  const ids = node.content ?? []
  const size = (i: number): number => repo.blobLocation(ids[i])?.raw ?? 0
  const ahead: Promise<Buffer>[] = []
  let next = 0
  let aheadBytes = 0
  let total = 0
  try {
    for (let i = 0; i < ids.length; i++) {
      while (next < ids.length && (ahead.length === 0 || (ahead.length < READ_AHEAD_CHUNKS && aheadBytes + size(next) <= READ_AHEAD_BYTES))) {
        const p = readBlob(repo, ids[next])
        // a rejected read-ahead that is never awaited must not become an unhandled rejection
        p.catch(() => undefined)
        ahead.push(p)
        aheadBytes += size(next++)
      }
      const buf = await ahead.shift()!
      aheadBytes -= size(i)
      total += buf.length
      onBytes?.(buf.length)
      yield buf
    }
  } finally {
    // the consumer stopped early (or a read failed): what was read ahead is dropped
    for (const p of ahead) p.catch(() => undefined)
  }
  if (node.size !== undefined && total !== node.size) {
    throw new HolyshipError('REPO_DAMAGED', `file ${JSON.stringify(node.name)}: its chunks hold ${total} bytes, its tree says ${node.size}`)
  }
}

/**
 * Why a file's content cannot be written as the tree describes it, from the index alone (no
 * data read): a chunk no index names, or chunk sizes that do not add up to the file's size.
 */
export function contentProblem(repo: Repository, node: TreeNode): string | undefined {
  let total = 0
  for (const id of node.content ?? []) {
    const loc = repo.blobLocation(id)
    if (!loc) return `chunk ${id.slice(0, 16)} is not in the repository's index`
    total += loc.raw
  }
  if (node.size !== undefined && total !== node.size) return `its chunks hold ${total} bytes, its tree says ${node.size}`
  return undefined
}

export interface TreeWalkEntry {
  path: string
  node: TreeNode
}

export interface WalkOptions {
  /**
   * a directory whose listing cannot be read (damaged, missing): called instead of throwing,
   * and the walk goes on without its entries (--partial). Hostile trees always throw.
   */
  onUnreadable?: (path: string, error: HolyshipError) => void
}

/** Depth-first walk of a tree (parents before children, siblings in tree order). */
export async function* walkTree(repo: Repository, treeId: string, prefix = '', opts: WalkOptions = {}): AsyncGenerator<TreeWalkEntry> {
  let tree
  try {
    tree = await loadCheckedTree(repo, treeId)
  } catch (e) {
    if (opts.onUnreadable && isDamage(e)) {
      opts.onUnreadable(prefix, e)
      return
    }
    throw e
  }
  for (const node of tree.nodes) {
    const p = prefix === '' ? node.name : `${prefix}/${node.name}`
    yield {path: p, node}
    if (node.type === 'dir' && node.subtree) yield* walkTree(repo, node.subtree, p, opts)
  }
}

/** Find the node at a relative path; the root is returned as a synthetic dir node. */
export async function findNode(repo: Repository, treeId: string, rel: string): Promise<TreeNode | undefined> {
  const parts = rel.split('/').filter((p) => p !== '' && p !== '.')
  let node: TreeNode = {name: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [0, 0], subtree: treeId}
  for (const part of parts) {
    if (node.type !== 'dir' || !node.subtree) return undefined
    const tree = await loadCheckedTree(repo, node.subtree)
    const child = tree.nodes.find((n) => n.name === part)
    if (!child) return undefined
    node = child
  }
  return node
}

/**
 * What a hard link at `linkPath` refers to: the file node at its target, which must be a
 * regular file of the same tree (never a directory, a link, or anything outside).
 */
async function hardlinkTarget(repo: Repository, treeId: string, linkPath: string, n: TreeNode): Promise<TreeNode> {
  const target = n.target ?? ''
  const other = await findNode(repo, treeId, target)
  if (!other || other.type !== 'file') {
    throw new HolyshipError('REPO_DAMAGED', `hard link /${linkPath} points to /${target}, which is not a file in the snapshot`)
  }
  return other
}

function xattrBuffers(node: TreeNode): Record<string, Buffer> | undefined {
  if (!node.xattrs) return undefined
  const out: Record<string, Buffer> = {}
  for (const [k, v] of Object.entries(node.xattrs)) out[k] = Buffer.from(v, 'base64')
  return out
}

function headerOf(name: string, node: TreeNode): TarHeader {
  const base = {name, mode: node.mode, uid: node.uid, gid: node.gid, mtime: node.mtime, xattrs: xattrBuffers(node)}
  switch (node.type) {
    case 'file':
      return {...base, type: 'file', size: node.size ?? 0}
    case 'dir':
      return {...base, name: name.endsWith('/') ? name : `${name}/`, type: 'dir'}
    case 'symlink':
      return {...base, type: 'symlink', linkname: node.target ?? ''}
    case 'hardlink':
      return {...base, type: 'hardlink', linkname: node.target ?? ''}
    case 'chardev':
    case 'blockdev':
      return {...base, type: node.type, devMajor: node.devMajor, devMinor: node.devMinor}
    case 'fifo':
      return {...base, type: 'fifo'}
    default:
      throw new Error(`cannot write a ${node.type} node as a tar entry`)
  }
}

export interface TarOptions {
  /**
   * an image layer: whiteouts become `.wh.NAME` files and opaque directories get
   * `.wh..wh..opq`, as docker load expects; otherwise whiteouts are skipped
   */
  layer?: boolean
  /** metadata of the root directory, written as `./` (or as `rootName/`) */
  root?: TreeNode
  /**
   * put every entry under this directory name instead of `./`: Docker's extraction skips the
   * metadata of a `.` entry, so a volume's own mode and owner only survive under a real name
   */
  rootName?: string
  /** write the tree's one top-level entry under this name instead of its own (a bind-mounted file, named as its source on the host) */
  topName?: string
  /**
   * relative paths of entries left out: the mountpoints of bind-mounted files inside this mount
   * (the engine cannot extract over a mounted file; it makes the mountpoint itself)
   */
  without?: string[]
  /** relative paths of directories left out with all they hold: mounts inside this one that are to stay as they are */
  skipUnder?: string[]
  onBytes?: (n: number) => void
  /**
   * --partial: a file whose data is damaged, a directory whose listing is, and hard links to
   * them are left out and pushed here, instead of failing the whole tree
   */
  skipped?: SkippedEntry[]
}

/**
 * Check a whole tree before any of it is sent: every tree loads and is safe, every hard link
 * names an earlier-or-later regular file of the tree, every file's chunks are indexed and add
 * up to its size. With `partial`, damaged directory listings are tolerated (left out later).
 */
export async function checkTreeForTar(repo: Repository, treeId: string, partial = false): Promise<void> {
  const walkOpts: WalkOptions = partial ? {onUnreadable: () => undefined} : {}
  for await (const {path: p, node} of walkTree(repo, treeId, '', walkOpts)) {
    if (node.type === 'hardlink') {
      try {
        await hardlinkTarget(repo, treeId, p, node)
      } catch (e) {
        if (!(partial && isDamage(e))) throw e
      }
    } else if (node.type === 'file' && !partial) {
      const problem = contentProblem(repo, node)
      if (problem) throw new HolyshipError('REPO_DAMAGED', `file /${p}: ${problem}`)
    }
  }
}

/**
 * Read every chunk of every file of the trees (each chunk once, decoded and checked against its
 * hash, a few at a time), and check the trees as checkTreeForTar does: a restore that replaces
 * the user's data checks that it can write all of it before it removes anything. Throws
 * REPO_DAMAGED (naming the file) at the first chunk that cannot be read.
 */
export async function checkTreesReadable(repo: Repository, treeIds: string[], onBytes?: (n: number) => void): Promise<void> {
  const seen = new Set<string>()
  const reading = new Set<Promise<void>>()
  for (const treeId of treeIds) {
    await checkTreeForTar(repo, treeId)
    for await (const {path: p, node} of walkTree(repo, treeId)) {
      if (node.type !== 'file') continue
      for (const id of node.content ?? []) {
        if (seen.has(id)) continue
        seen.add(id)
        const r: Promise<void> = readBlob(repo, id).then(
          (b) => onBytes?.(b.length),
          (e: unknown) => {
            throw isDamage(e) ? new HolyshipError('REPO_DAMAGED', `file /${p}: ${e.message}`, {cause: e}) : e
          },
        )
        reading.add(r)
        void r.then(() => reading.delete(r), () => undefined)
        if (reading.size >= READ_AHEAD_CHUNKS) await Promise.race(reading)
      }
    }
  }
  await Promise.all(reading)
}

/** --partial: read every chunk of a file once (hash-checked) before its header is written. */
async function unreadableContent(repo: Repository, node: TreeNode, bad: Map<string, string>): Promise<string | undefined> {
  const problem = contentProblem(repo, node)
  if (problem) return problem
  for (const id of node.content ?? []) {
    const known = bad.get(id)
    if (known) return known
    try {
      await readBlob(repo, id)
    } catch (e) {
      if (!isDamage(e)) throw e
      bad.set(id, e.message)
      return e.message
    }
  }
  return undefined
}

/**
 * Write a whole tree as tar entries (names relative, hardlinks relative to the same root).
 * The tree is checked whole first (checkTreeForTar): a hostile or damaged tree fails before
 * the first byte is written.
 */
export async function writeTreeAsTar(repo: Repository, treeId: string, tw: TarWriter, opts: TarOptions = {}): Promise<void> {
  const endReads = retainReads(repo.backend)
  try {
    await writeTree(repo, treeId, tw, opts)
  } finally {
    endReads()
  }
}

async function writeTree(repo: Repository, treeId: string, tw: TarWriter, opts: TarOptions): Promise<void> {
  const partial = opts.skipped !== undefined
  if (opts.rootName !== undefined && opts.rootName !== '') {
    const problem = opts.rootName === '.' || opts.rootName === '..' || opts.rootName.includes('/') || opts.rootName.includes('\0')
    if (problem) throw new HolyshipError('REPO_DAMAGED', `refusing the unsafe root name ${JSON.stringify(opts.rootName)}`)
  }
  await checkTreeForTar(repo, treeId, partial)
  const pre = opts.rootName ? `${opts.rootName}/` : ''
  if (opts.root || opts.rootName) {
    const root = opts.root ?? {name: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [Math.floor(Date.now() / 1000), 0]}
    await tw.entry(headerOf(pre || './', root))
  }
  const skippedFiles = new Set<string>()
  const badBlobs = new Map<string, string>()
  const skip = (p: string, reason: string): void => {
    skippedFiles.add(p)
    opts.skipped?.push({path: p, reason})
  }
  const walkOpts: WalkOptions = partial ? {onUnreadable: (p, e) => skip(`${p}/`, `directory listing unreadable: ${e.message}`)} : {}
  const renamed = (rel: string): string => {
    if (opts.topName === undefined) return rel
    const slash = rel.indexOf('/')
    return slash < 0 ? opts.topName : opts.topName + rel.slice(slash)
  }
  const without = new Set(opts.without ?? [])
  for await (const {path: rel, node: n} of walkTree(repo, treeId, '', walkOpts)) {
    if (without.has(rel) && n.type !== 'dir') continue
    if (opts.skipUnder?.some((d) => rel === d || rel.startsWith(`${d}/`))) continue
    const p = pre + renamed(rel)
    if (n.type === 'whiteout') {
      if (opts.layer) {
        const dir = p.includes('/') ? p.slice(0, p.lastIndexOf('/') + 1) : ''
        await tw.entry({name: `${dir}.wh.${n.name}`, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: n.mtime, size: 0})
      }
      continue
    }
    if (n.type === 'file') {
      if (partial) {
        const why = await unreadableContent(repo, n, badBlobs)
        if (why) {
          skip(rel, why)
          continue
        }
      }
      await tw.entry(headerOf(p, n), fileContent(repo, n, opts.onBytes))
      continue
    }
    if (n.type === 'hardlink') {
      const target = n.target ?? ''
      let other: TreeNode
      try {
        other = await hardlinkTarget(repo, treeId, rel, n)
      } catch (e) {
        if (!(partial && isDamage(e))) throw e
        skip(rel, e.message)
        continue
      }
      if (skippedFiles.has(target)) {
        skip(rel, `hard link to /${target}, which could not be restored`)
        continue
      }
      if (walksBefore(target, rel)) {
        await tw.entry(headerOf(p, {...n, target: pre + target}))
      } else {
        // the other name comes later in this tree: write the data under this name, the
        // later one is written as a file too (no link: the engine would find no target)
        if (partial) {
          const why = await unreadableContent(repo, other, badBlobs)
          if (why) {
            skip(rel, why)
            continue
          }
        }
        const asFile: TreeNode = {...other, name: n.name, mode: n.mode, uid: n.uid, gid: n.gid, mtime: n.mtime, xattrs: n.xattrs}
        await tw.entry(headerOf(p, asFile), fileContent(repo, asFile, opts.onBytes))
      }
      continue
    }
    await tw.entry(headerOf(p, n))
    if (n.type === 'dir' && n.opaque && opts.layer) {
      await tw.entry({name: `${p}/.wh..wh..opq`, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: n.mtime, size: 0})
    }
  }
}

export interface RestoreToDirOptions {
  onBytes?: (n: number) => void
  overwrite?: boolean
  /**
   * the tree's root directory as it was (a mount's root: mode, owner, times), given to the
   * target when the whole tree is restored. Without it the target keeps its own (a tree
   * records its entries, not itself).
   */
  root?: TreeNode
  /**
   * the target is an empty directory the caller has just made (a new volume's): written like
   * one this restore made (entries under their own names, nothing looked at first); on
   * failure what was written in it stays, for the caller to remove with the directory
   */
  fresh?: boolean
  /**
   * --partial: files whose data is damaged (and directories whose listing is) are left out
   * and listed here; everything else is restored. Without it the first damage fails the
   * restore and everything it created is removed again.
   */
  skipped?: SkippedEntry[]
}

/**
 * Write the subtree at `rel` (a file, a directory, or the whole tree for '') into `target`
 * on this host. Never writes outside `target`: every name is checked, no existing symlink is
 * followed, files are created new (O_EXCL|O_NOFOLLOW): in a directory the restore made,
 * under their own names; elsewhere under a temporary name, renamed into place once complete.
 * On failure everything this restore created is removed again, and what `overwrite` replaced
 * is put back: each entry in the way (a file, a link, a whole directory) is renamed aside, beside
 * itself, and removed only once the whole restore has succeeded. So a failed `--force` leaves the
 * target as it was, at the cost of room for both until the end.
 *
 * Every entry (directories too) is placed by one of up to RESTORE_PARALLEL concurrent jobs,
 * each once the directory it goes into is made; the blobs of the files being written are read with up
 * to RESTORE_BUFFER bytes in flight (see BlobFetcher), each chunk written at its offset as soon
 * as it is there.
 */
export async function restoreToDir(
  repo: Repository,
  treeId: string,
  rel: string,
  target: string,
  opts: RestoreToDirOptions = {},
): Promise<RestoredDir> {
  const node = await findNode(repo, treeId, rel)
  if (!node) throw new HolyshipError('PATH_NOT_FOUND', `no path ${JSON.stringify('/' + rel)} in the snapshot`)
  const whole = rel.split('/').every((p) => p === '' || p === '.')
  const final = path.resolve(target)
  // a target that is not there is written under a temporary name beside it, and renamed into
  // place once complete: a restore killed half way leaves `.NAME.holyship-partial-…`, never a
  // target that looks whole (in a directory it made, a restore writes files under their own
  // names, each sized before all its data is in)
  let root = final
  let firstCreated: string | undefined
  /** directories above the target this restore made, deepest first: removed only while empty */
  const madeParents: string[] = []
  const removeMadeParents = async (): Promise<void> => {
    for (const d of madeParents) await fsp.rmdir(d).catch(() => undefined)
  }
  const absent = (() => {
    try {
      return !lstatSync(final, {throwIfNoEntry: false})
    } catch {
      return false // below a file: makeTarget says so
    }
  })()
  // what is said of the temporary name is said of the target
  const named = <T extends Error>(e: T): T => {
    if (root === final) return e
    e.message = e.message.split(root).join(final)
    const x = e as T & {path?: unknown}
    if (typeof x.path === 'string' && (x.path === root || x.path.startsWith(root + path.sep))) x.path = final + x.path.slice(root.length)
    return e
  }
  if (!opts.fresh && absent) {
    const parentMade = await makeTarget(path.dirname(final))
    if (parentMade) {
      for (let d = path.dirname(final); ; d = path.dirname(d)) {
        madeParents.push(d)
        if (d === parentMade || d === path.dirname(d)) break
      }
    }
    root = path.join(path.dirname(final), `${partialPrefix(final)}${randomBytes(4).toString('hex')}`)
    try {
      await fsp.mkdir(root)
    } catch (e) {
      await removeMadeParents()
      throw named(e as Error)
    }
    firstCreated = root
  } else firstCreated = await makeTarget(final)
  const endReads = retainReads(repo.backend)
  let done: RestoredDir
  try {
    const run = new DirRestore(repo, treeId, root, opts)
    // a target this restore made is empty: nothing in it needs looking at before it is written
    if (firstCreated) run.created.push(firstCreated)
    if (firstCreated || opts.fresh) run.madeDirs.add(root)
    if (whole && !opts.root) run.keepTargetMeta = true
    done = await run.restore(rel, whole && opts.root ? {...opts.root, name: '', type: 'dir', subtree: treeId} : node)
  } catch (e) {
    await removeMadeParents()
    throw e instanceof Error ? named(e) : e
  } finally {
    endReads()
  }
  if (root !== final) {
    for (const x of done.xattrsNotSet?.first ?? []) x.path = final + x.path.slice(root.length)
    if (done.warnings) done.warnings = done.warnings.map((w) => w.split(root).join(final))
    try {
      // rename() would replace an empty directory made there meanwhile: refused first (what
      // appears between the look and the rename is still replaced if empty, never if not)
      if (lstatSync(final, {throwIfNoEntry: false})) throw Object.assign(new Error(`EEXIST: ${final} exists`), {code: 'EEXIST'})
      await fsp.rename(root, final)
    } catch (e) {
      // only what this restore wrote goes: what appeared at the target, and beside it, stays
      const left = await removeTree(root).then(() => '', (err: Error) => `; ${root} is left (${err.message})`)
      await removeMadeParents()
      const code = (e as NodeJS.ErrnoException).code ?? ''
      if (['EEXIST', 'ENOTEMPTY', 'ENOTDIR', 'EISDIR'].includes(code)) {
        throw new HolyshipError('TARGET_EXISTS', `the target ${final} appeared during the restore (${(e as Error).message}); nothing of the restore was kept${left}`, {cause: e})
      }
      if (e instanceof Error) e.message = `${e.message}; nothing of the restore was kept${left}`
      throw e
    }
    const stale = await stalePartials(final)
    if (stale.length > 0) {
      const first = stale.slice(0, 3).map((n) => path.join(path.dirname(final), n)).join(', ')
      ;(done.warnings ??= []).push(`an earlier restore to ${final} that did not finish left ${first}${stale.length > 3 ? `, … (${stale.length})` : ''}: remove ${stale.length > 1 ? 'them' : 'it'} once no restore to ${final} is running`)
    }
  }
  return done
}

/** the temporary name of a target restored anew, but for its random end: a long name keeps its first 32 characters (the temporary one must fit where it does) */
const partialPrefix = (final: string): string => `.${[...path.basename(final)].slice(0, 32).join('')}.holyship-partial-`

/** what restores to `final` that were killed left beside it (never removed here: one may still be running) */
async function stalePartials(final: string): Promise<string[]> {
  const prefix = partialPrefix(final)
  const names = await fsp.readdir(path.dirname(final)).catch(() => [] as string[])
  return names.filter((n) => n.startsWith(prefix) && /^[0-9a-f]{8}$/.test(n.slice(prefix.length))).sort()
}

/** what restoreToDir wrote: files and bytes, what --partial left out, the extended attributes it could not set (none: absent) */
export interface RestoredDir {
  files: number
  bytes: number
  skipped: SkippedEntry[]
  xattrsNotSet?: XattrsNotSet
  /** what `overwrite` moved aside and could not remove once the restore succeeded, device nodes not made, what killed restores to the target left beside it: a line each; absent when none */
  warnings?: string[]
}

/**
 * rm -rf `dir`, a tree this restore wrote: directories the snapshot made read-only (0555) are
 * made writable first where this process is not root and rm cannot remove what is in them
 */
async function removeTree(dir: string): Promise<void> {
  try {
    await fsp.rm(dir, {recursive: true, force: true})
    return
  } catch (e) {
    if (!['EACCES', 'EPERM'].includes((e as NodeJS.ErrnoException).code ?? '')) throw e
  }
  const writable = async (d: Buffer): Promise<void> => {
    await fsp.chmod(d, 0o700).catch(() => undefined)
    for (const ent of await fsp.readdir(d, {withFileTypes: true, encoding: 'buffer'}).catch(() => [])) {
      if (ent.isDirectory()) await writable(Buffer.concat([d, Buffer.from('/'), ent.name]))
    }
  }
  await writable(Buffer.from(dir))
  await fsp.rm(dir, {recursive: true, force: true})
}

/**
 * mkdir -p `root`; returns the first directory it made (undefined: it was there). Node's
 * recursive mkdir reports ENOENT for what is a read-only file system or a missing permission
 * further up: the step that failed is tried again alone, so its own error (EROFS, EACCES) is
 * what the user sees. A target that is a file, or below one, is TARGET_EXISTS.
 */
export async function makeTarget(root: string): Promise<string | undefined> {
  try {
    return await fsp.mkdir(root, {recursive: true})
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    if (code === 'EEXIST' || code === 'ENOTDIR') {
      throw new HolyshipError('TARGET_EXISTS', `the target ${root} ${code === 'EEXIST' ? 'exists and is not a directory' : 'is below something that is not a directory'}`)
    }
    if (code !== 'ENOENT') throw e
    let existing = path.dirname(root)
    let next = root
    while (existing !== next && !lstatSync(existing, {throwIfNoEntry: false})) {
      next = existing
      existing = path.dirname(existing)
    }
    await fsp.mkdir(next)
    // made after all (the reason went away meanwhile): `next` is the first one made
    await fsp.mkdir(root, {recursive: true})
    return next
  }
}

/** entries placed at the same time by restoreToDir (each mostly waits on the kernel) */
const RESTORE_PARALLEL = 32
/** bytes of blob data read and not yet written, at most (one blob may exceed it alone) */
const RESTORE_BUFFER = 16 * 1024 * 1024
/** files up to this size are written whole by a restore worker (fileWorkers) */
const FILE_JOB_MAX = 2 * 1024 * 1024
/** files a restore writes itself before fileWorkers hands files to the workers */
const FILE_JOB_AFTER = 8
/** writes at least this big go to the thread pool; smaller ones are written at once */
const ASYNC_WRITE = 64 * 1024

const openP = promisify(fsOpen)
const writeP = (fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<number> =>
  new Promise((resolve, reject) => fsWrite(fd, buf, offset, length, position, (e, n) => (e ? reject(e) : resolve(n))))

/** one restoreToDir run */
class DirRestore {
  /** what this restore created, in order: removed in reverse if it fails */
  readonly created: string[] = []
  /** directories this restore made: they held nothing before, so nothing in them is looked at first */
  readonly madeDirs = new Set<string>()
  /** directories this restore made or found to be real directories, their ancestors checked */
  private readonly safeDirs = new Set<string>()
  private readonly stats = {files: 0, bytes: 0}
  /** entries `overwrite` moved out of the way (renamed beside themselves): put back if the restore fails, removed once it succeeds */
  private readonly asides: {abs: string; aside: string}[] = []
  /** directories that were there: a failed restore, which added and removed entries in them, gives them their times back */
  private readonly foundDirs: {abs: string; st: Stats}[] = []
  /** directories this restore made whose final metadata is set (see the rollback) */
  private readonly finishedMade: string[] = []
  /** directories whose owner, mode, xattrs and times are set once everything below them is written */
  private readonly dirsToFinish: {abs: string; node: TreeNode}[] = []
  /** tree path -> where it was written, for hard links */
  private readonly written = new Map<string, string>()
  /** files (and hard links) being placed by a job: their tree path -> settled when done */
  private readonly placing = new Map<string, Promise<unknown>>()
  private readonly skippedPaths = new Set<string>()
  /** what --partial left out, with its place in the walk (jobs finish in any order) */
  private readonly skips: {seq: number; entry: SkippedEntry}[] = []
  private readonly xattrsNotSet: XattrsNotSet = {total: 0, first: []}
  /** device nodes this process may not make, left out */
  private readonly nodesNotMade: string[] = []
  private readonly jobs = new Jobs(RESTORE_PARALLEL)
  private readonly blobs: BlobFetcher
  private readonly partial: boolean
  private readonly tmpPrefix = `.holyship-restore-${randomBytes(4).toString('hex')}`
  private tmpSeq = 0
  private seq = 0
  /** the target is the tree's root and nothing recorded its metadata: its own stay */
  keepTargetMeta = false
  /** files met by fileWorkers() */
  private filesMet = 0
  /** the pool of writeInWorker (null: none), once a file for it came */
  private filePool?: BlobPool | null

  constructor(
    private readonly repo: Repository,
    private readonly treeId: string,
    private readonly root: string,
    private readonly opts: RestoreToDirOptions,
  ) {
    this.partial = opts.skipped !== undefined
    this.blobs = new BlobFetcher(repo, RESTORE_BUFFER)
  }

  async restore(rel: string, node: TreeNode): Promise<RestoredDir> {
    const relClean = rel.split('/').filter((p) => p !== '' && p !== '.').join('/')
    const baseName = relClean === '' ? '' : path.posix.basename(relClean)
    try {
      try {
        await this.walk(baseName, relClean, node, Promise.resolve())
      } finally {
        // nothing is removed (nor any file closed) while a job still works
        await this.jobs.drain()
      }
      this.jobs.check()
      // directories last, deepest first, when nothing is written into them any more: a
      // directory that was there is not changed by a restore that fails, a mode without write
      // permission does not stop its own entries, and no default ACL of the snapshot's is
      // inherited by entries that recorded their own metadata
      for (const {abs, node: n} of this.dirsToFinish.reverse()) {
        await finishDir(abs, n, this.xattrFailed(abs))
        if (this.madeDirs.has(abs)) this.finishedMade.push(abs)
      }
    } catch (e) {
      // a directory made and already given a mode without write permission (a failure in the
      // loop above) must be writable again for what is in it to go, when this is not root
      for (const abs of this.finishedMade) {
        if (lstatSync(fsPath(abs), {throwIfNoEntry: false})?.isDirectory()) {
          try {
            chmodSync(fsPath(abs), 0o700)
          } catch {
            // nothing more to do: the removal below says what is left
          }
        }
      }
      const notRemoved: string[] = []
      for (const p of this.created.reverse()) await fsp.rm(fsPath(p), {recursive: true, force: true}).catch((err: Error) => notRemoved.push(`${p} (${err.message})`))
      // what was replaced comes back (rename: nothing is at its name once what this restore made is gone)
      const notBack: string[] = []
      for (const {abs, aside} of this.asides.reverse()) {
        await fsp.rename(fsPath(aside), fsPath(abs)).catch((err: Error) => notBack.push(`${abs} is at ${aside} (${err.message})`))
      }
      // the failure says where what could not be put back is (it is never removed), and what
      // of its own it could not remove
      if (notBack.length && e instanceof Error) e.message = `${e.message}; not put back: ${notBack.join(', ')}`
      if (notRemoved.length && e instanceof Error) e.message = `${e.message}; left behind: ${notRemoved.join(', ')}`
      for (const {abs, st} of this.foundDirs.reverse()) {
        // the same directory still (lutimes follows no symlink either); one already finished
        // (a failure in the loop above, deepest first) also gets its owner and mode back
        const now = lstatSync(fsPath(abs), {throwIfNoEntry: false})
        if (!now?.isDirectory() || now.ino !== st.ino) continue
        try {
          if (asRoot() && (now.uid !== st.uid || now.gid !== st.gid)) lchownSync(fsPath(abs), st.uid, st.gid)
          if ((now.mode & 0o7777) !== (st.mode & 0o7777)) chmodSync(fsPath(abs), st.mode & 0o7777)
          lutimesSync(fsPath(abs), st.atimeMs / 1000, st.mtimeMs / 1000)
        } catch {
          // what cannot be set back (a read-only file system) stays as the failure left it
        }
      }
      throw e
    }
    const skipped = this.opts.skipped ?? []
    skipped.push(...this.skips.sort((a, b) => a.seq - b.seq).map((s) => s.entry))
    const warnings = await this.removeAsides()
    if (this.nodesNotMade.length > 0) {
      const first = this.nodesNotMade.slice(0, 3).join(', ')
      warnings.push(`${this.nodesNotMade.length} device node${this.nodesNotMade.length > 1 ? 's' : ''} not made (mknod needs root with CAP_MKNOD): ${first}${this.nodesNotMade.length > 3 ? ', …' : ''}`)
    }
    return {...this.stats, skipped, ...(this.xattrsNotSet.total > 0 ? {xattrsNotSet: this.xattrsNotSet} : {}), ...(warnings.length ? {warnings} : {})}
  }

  /**
   * The restore succeeded: what it replaced goes (after the directories are finished, so a
   * failure there still puts it back), and the directories it was in get their times again;
   * a line for each that could not go.
   */
  private async removeAsides(): Promise<string[]> {
    // (nothing was replaced, as in every restore into a new target: no map of every directory)
    if (this.asides.length === 0) return []
    const left: string[] = []
    const finished = new Map(this.dirsToFinish.map(({abs, node}) => [abs, node]))
    const touched = new Set<string>()
    for (const {abs, aside} of this.asides) {
      try {
        await fsp.rm(fsPath(aside), {recursive: true, force: true})
        touched.add(path.dirname(abs))
      } catch (e) {
        left.push(`what was at ${abs} before the restore is left at ${aside}: ${(e as Error).message}`)
      }
    }
    for (const dir of touched) {
      const n = finished.get(dir)
      if (n) setTimes(dir, n)
    }
    return left
  }

  /** move what is at `abs` out of the way (see asides): renamed beside itself, so a rollback puts it back whole */
  private async moveAside(abs: string): Promise<void> {
    const aside = this.tmpName(path.dirname(abs))
    await fsp.rename(fsPath(abs), fsPath(aside))
    this.asides.push({abs, aside})
  }

  /** a setXattrs report for the entry written at `abs`: the attributes it could not set are listed, the restore goes on */
  private xattrFailed(abs: string): XattrReport {
    return (name, reason) => {
      if (this.xattrsNotSet.total++ < MAX_XATTRS_LISTED) this.xattrsNotSet.first.push({path: abs, name, reason})
    }
  }

  /**
   * Remember what this restore made, for the rollback: not what it made inside a directory it
   * made (that goes with the directory), so a big restore into a new target keeps few names.
   */
  private made(abs: string): void {
    if (!this.madeDirs.has(path.dirname(abs))) this.created.push(abs)
  }

  private skip(seq: number, treePath: string, reason: string): void {
    this.skippedPaths.add(treePath)
    this.skips.push({seq, entry: {path: treePath, reason}})
  }

  /** the absolute path of `relOut`, checked to be inside the target and reached through no symlink */
  private resolve(relOut: string): string {
    if (relOut.split('/').some((c) => c === '..' || c === '.' || c.includes('\0'))) {
      throw new HolyshipError('REPO_DAMAGED', `refusing unsafe path ${JSON.stringify(relOut)} in the snapshot`)
    }
    const abs = relOut === '' ? this.root : path.join(this.root, relOut)
    if (abs !== this.root && !abs.startsWith(this.root + path.sep)) throw new HolyshipError('REPO_DAMAGED', `refusing path outside the target: ${relOut}`)
    // never follow a symlink left on the way (written earlier or already there)
    let cur = path.dirname(abs)
    while (cur.length > this.root.length && !this.safeDirs.has(cur)) {
      if (lstatSync(fsPath(cur), {throwIfNoEntry: false})?.isSymbolicLink()) throw new HolyshipError('REPO_DAMAGED', `refusing to write through the symlink ${cur}`)
      cur = path.dirname(cur)
    }
    return abs
  }

  /** what is at `abs` now (nothing, in a directory this restore made) */
  private existing(abs: string): Stats | undefined {
    if (abs !== this.root && this.madeDirs.has(path.dirname(abs))) return undefined
    return abs === this.root ? lstatSync(abs) : lstatSync(fsPath(abs), {throwIfNoEntry: false})
  }

  /** directories in walk order (their entries need them); every other entry as a job */
  /**
   * Walk the tree, handing every entry to a job; `parent` settles when the directory the entry
   * goes into has been made (its entries' jobs wait for it, the walk does not).
   */
  private async walk(relOut: string, treePath: string, n: TreeNode, parent: Promise<void>): Promise<void> {
    if (n.type !== 'dir') {
      const seq = this.seq++
      // a hard link waits for the file it names, when that came earlier in the walk, to be
      // placed (or skipped); never for itself or anything later
      const linked = n.type === 'hardlink' ? this.placing.get(n.target ?? '') : undefined
      const job = this.jobs.add(async () => {
        await parent
        await linked
        await this.place(relOut, treePath, n, seq)
      })
      if (n.type === 'file' || n.type === 'hardlink') {
        this.placing.set(treePath, job)
        void job.then(() => this.placing.delete(treePath))
      }
      await this.jobs.ready()
      return
    }
    const made = this.jobs.add(async () => {
      await parent
      await this.placeDir(relOut, n)
    })
    await this.jobs.ready()
    if (!n.subtree) return
    let tree
    try {
      tree = await loadCheckedTree(this.repo, n.subtree)
    } catch (e) {
      if (!(this.partial && isDamage(e))) throw e
      this.skip(this.seq++, treePath === '' ? '/' : `${treePath}/`, `directory listing unreadable: ${e.message}`)
      return
    }
    for (const child of tree.nodes) {
      if (this.jobs.failed) return
      const join = (a: string): string => (a === '' ? child.name : `${a}/${child.name}`)
      await this.walk(join(relOut), join(treePath), child, made)
    }
  }

  private async placeDir(relOut: string, n: TreeNode): Promise<void> {
    if (this.jobs.failed) return
    const abs = this.resolve(relOut)
    const existing = this.existing(abs)
    const replace = existing !== undefined && !existing.isDirectory()
    if (replace && !this.opts.overwrite) {
      throw new HolyshipError('TARGET_EXISTS', `${abs} exists and is not a directory`, {hint: 'use --force to overwrite'})
    }
    // with --force: what is in the way moves aside (a symlink itself, never what it points to)
    if (replace) await this.moveAside(abs)
    if (!existing || replace) {
      // at once, not through the thread pool: see writeTemp's open. Only its owner may look
      // into it until its own mode is set, at the end (nothing of a 0700 directory shows meanwhile)
      mkdirSync(fsPath(abs), 0o700)
      this.made(abs)
      this.madeDirs.add(abs)
    }
    // a real directory now (lstat saw one, or we made it): entries below need not look past it
    this.safeDirs.add(abs)
    if (existing && !replace) this.foundDirs.push({abs, st: existing})
    if (abs === this.root && this.keepTargetMeta) return
    // not root: a found directory's mode is set at the end, and only its owner may. A no-op
    // chmod says now (EPERM) if this process may not, before anything is written into it
    if (existing && !replace && !asRoot()) chmodSync(fsPath(abs), existing.mode & 0o7777)
    this.dirsToFinish.push({abs, node: n})
  }

  /** place one entry that is not a directory */
  private async place(relOut: string, treePath: string, n: TreeNode, seq: number): Promise<void> {
    if (this.jobs.failed) return
    const abs = this.resolve(relOut)
    if (n.type === 'whiteout') return
    const existing = this.existing(abs)
    const replace = existing !== undefined
    if (replace && !this.opts.overwrite) throw new HolyshipError('TARGET_EXISTS', `${abs} exists`, {hint: 'use --force to overwrite'})
    // a file's data is read (and checked) before anything at its path is touched
    let content: TreeNode | undefined
    if (n.type === 'file') content = n
    else if (n.type === 'hardlink') {
      const target = n.target ?? ''
      const first = this.written.get(target)
      if (first !== undefined) {
        if (replace) await this.moveAside(abs)
        await fsp.link(fsPath(first), fsPath(abs))
        this.made(abs)
        this.written.set(treePath, abs)
        return
      }
      if (this.skippedPaths.has(target)) {
        this.skip(seq, treePath, `hard link to /${target}, which could not be restored`)
        return
      }
      // the other name of this file is not part of this restore (or comes later): write the data
      try {
        const other = await hardlinkTarget(this.repo, this.treeId, treePath, n)
        content = {...other, name: n.name, mode: n.mode, uid: n.uid, gid: n.gid, mtime: n.mtime, xattrs: n.xattrs}
      } catch (e) {
        if (!(this.partial && isDamage(e))) throw e
        this.skip(seq, treePath, e.message)
        return
      }
    }
    let tmp: string | undefined
    if (content) {
      try {
        // in a directory this restore made there is nothing to protect: the file is written
        // under its own name (a rename less a file); elsewhere under a temporary one, so what
        // was there stays whole until the new file is
        const direct = !replace && this.madeDirs.has(path.dirname(abs))
        const pool = direct ? this.fileWorkers(content) : undefined
        tmp = pool ? await this.writeInWorker(pool, abs, content) : await this.writeTemp(abs, content, direct)
      } catch (e) {
        if (!(this.partial && isDamage(e))) throw e
        this.skip(seq, treePath, e.message)
        return
      }
    }
    if (n.type === 'chardev' || n.type === 'blockdev') {
      // only root with CAP_MKNOD makes device nodes: without, this entry alone is left out
      // (named in a warning); made under a temporary name first, so what is at its path stays
      if (!asRoot()) {
        this.nodesNotMade.push(abs)
        return
      }
      const dir = path.dirname(abs)
      const at = this.tmpName(hasEscapes(dir) ? this.root : dir)
      try {
        // its message in English whatever the locale: it is matched below
        await execFileP('mknod', [at, n.type === 'chardev' ? 'c' : 'b', String(n.devMajor ?? 0), String(n.devMinor ?? 0)], {env: {...process.env, LC_ALL: 'C'}})
      } catch (e) {
        rmSync(at, {force: true})
        if (!/Operation not permitted/.test(String((e as {stderr?: unknown}).stderr ?? ''))) throw e
        this.nodesNotMade.push(abs)
        return
      }
      tmp = at
    }
    try {
      if (replace) await this.moveAside(abs)
      switch (n.type) {
        case 'file':
        case 'hardlink':
          if (tmp !== abs) await fsp.rename(fsPath(tmp!), fsPath(abs))
          tmp = undefined
          this.made(abs)
          this.stats.files++
          this.stats.bytes += content?.size ?? 0
          // hard links may only name regular files (a directory or a device is refused)
          this.written.set(treePath, abs)
          return
        case 'symlink':
          symlinkSync(fsPath(n.target ?? ''), fsPath(abs))
          break
        case 'fifo':
          await this.makeNode(abs, (at) => execFileP('mkfifo', ['-m', (n.mode & 0o777).toString(8), at]))
          break
        case 'chardev':
        case 'blockdev':
          await fsp.rename(fsPath(tmp!), fsPath(abs))
          tmp = undefined
          break
      }
      this.made(abs)
    } finally {
      if (tmp) rmSync(fsPath(tmp), {force: true})
    }
    await applyMeta(abs, n, this.xattrFailed(abs))
  }

  /**
   * Make a fifo or device node at `abs` with a command (`make(path)`: Node has no call for
   * them). A name that is not UTF-8 cannot be a command's argument: the node is made under a
   * temporary name in the target and renamed into place.
   */
  private async makeNode(abs: string, make: (at: string) => Promise<unknown>): Promise<void> {
    if (!hasEscapes(abs)) {
      await make(abs)
      return
    }
    const at = this.tmpName(this.root)
    await make(at)
    try {
      await fsp.rename(at, fsPath(abs))
    } catch (e) {
      rmSync(at, {force: true})
      throw e
    }
  }

  /** a new temporary name in directory `dir` */
  private tmpName(dir: string): string {
    return path.join(dir, `${this.tmpPrefix}${(this.tmpSeq++).toString(36)}`)
  }

  /** the sizes of file `n`'s chunks, from the index: REPO_DAMAGED when one is missing or they do not add up to its size */
  private async chunkSizes(n: TreeNode): Promise<{sizes: number[]; total: number}> {
    const sizes: number[] = []
    let total = 0
    for (const id of n.content ?? []) {
      const loc = this.repo.blobLocation(id)
      // not in the index: loadBlob says so, as for any other read
      if (!loc) await readBlob(this.repo, id)
      sizes.push(loc?.raw ?? 0)
      total += loc?.raw ?? 0
    }
    if (n.size !== undefined && total !== n.size) {
      throw new HolyshipError('REPO_DAMAGED', `file ${JSON.stringify(n.name)}: its chunks hold ${total} bytes, its tree says ${n.size}`)
    }
    return {sizes, total}
  }

  /**
   * The restore workers, when file `n` is one for them to write whole (writeInWorker): a
   * file up to FILE_JOB_MAX bytes without extended attributes (setfattr runs here), once the
   * restore has met FILE_JOB_AFTER files (a restore of a few files does not start workers for
   * them). Bigger files are written blob by blob, their blobs spread over the workers.
   */
  private fileWorkers(n: TreeNode): BlobPool | undefined {
    if (n.xattrs || (n.size ?? 0) > FILE_JOB_MAX || ++this.filesMet <= FILE_JOB_AFTER) return undefined
    if (this.filePool === undefined) this.filePool = this.repo.fileWorkers() ?? null
    return this.filePool ?? undefined
  }

  /**
   * Write file `n` under its own name `abs` (in a directory this restore made) in a restore
   * worker, all of it: creation, data, size, owner, mode and times (Repository.writeFile).
   * This thread only looks its chunks up, so on two cores the file system calls of the many
   * small files of a tree run beside the walk instead of in it.
   */
  private async writeInWorker(pool: BlobPool, abs: string, n: TreeNode): Promise<string> {
    const {total} = await this.chunkSizes(n)
    const owner: [number, number] | undefined = asRoot() ? [n.uid, n.gid] : undefined
    await this.repo.writeFile(pool, {path: abs, size: total, mode: n.mode & 0o7777, owner, mtime: seconds(n)}, n.content ?? [])
    this.opts.onBytes?.(total)
    return abs
  }

  /**
   * Write a regular file's content, owner, mode, xattrs and times under a temporary name
   * beside `abs` (under `abs` itself when `direct`); returns that name. Its chunks are read
   * and written concurrently, each at its offset; chunks of zeros are left as holes (sparse
   * files stay sparse).
   */
  private async writeTemp(abs: string, n: TreeNode, direct = false): Promise<string> {
    const ids = n.content ?? []
    const {sizes, total} = await this.chunkSizes(n)
    const tmp = direct ? abs : this.tmpName(path.dirname(abs))
    // the file is created while its first chunks are read
    let fd: number | undefined
    const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW
    // a small file is opened at once, like its data is written: on a local disk the thread
    // pool's round trip costs more than the call (two context switches on a busy machine)
    const opening = (total < ASYNC_WRITE ? (async () => openSync(fsPath(tmp), flags, 0o600))() : openP(fsPath(tmp), flags, 0o600)).then((f) => {
      fd = f
      return f
    })
    opening.catch(() => undefined)
    // each settles, never rejects (a failure is kept apart)
    const writes: Promise<void>[] = []
    try {
      let end = 0
      let failure: {e: unknown} | undefined
      let pos = 0
      for (let i = 0; i < ids.length && !failure; i++) {
        const at = pos
        const size = sizes[i]
        pos += size
        const {done} = await this.blobs.start(ids[i], size, {fd: opening, pos: at})
        const written = done.then((wrote) => {
          if (wrote) end = Math.max(end, at + size)
          this.opts.onBytes?.(size)
        })
        writes.push(written.catch((e: unknown) => void (failure ??= {e})))
      }
      // every write has finished before the file is closed (or removed)
      await Promise.all(writes)
      const f = await opening
      if (failure) throw failure.e
      if (end < total) ftruncateSync(f, total)
      // owner, attributes, mode: a chown clears file capabilities, and a read-only mode keeps
      // its (non-root) owner from setting user.* attributes
      if (asRoot()) fchownSync(f, n.uid, n.gid)
      await setXattrs(tmp, n, this.xattrFailed(abs))
      fchmodSync(f, n.mode & 0o7777)
      futimesSync(f, seconds(n), seconds(n))
    } catch (e) {
      await opening.catch(() => undefined)
      // a write still in flight (blobs.start failed after others had started) must not reach
      // another file that gets this descriptor's number once it is closed
      await Promise.all(writes)
      // only what this restore created goes
      if (fd !== undefined) {
        closeSync(fd)
        rmSync(fsPath(tmp), {force: true})
      }
      throw e
    }
    closeSync(fd!)
    return tmp
  }
}

/**
 * Concurrent jobs, at most `limit` at a time. The first failure is kept (check() throws it)
 * and no job starts after it; drain() waits for the ones running.
 */
class Jobs {
  private running = new Set<Promise<void>>()
  private failure?: {e: unknown}
  private waiters: (() => void)[] = []

  constructor(private readonly limit: number) {}

  get failed(): boolean {
    return this.failure !== undefined
  }

  /** start `fn` now; the returned promise resolves when it has finished, failed or not */
  add(fn: () => Promise<void>): Promise<void> {
    const p = (async () => {
      try {
        await fn()
      } catch (e) {
        this.failure ??= {e}
      }
    })()
    this.running.add(p)
    void p.then(() => {
      this.running.delete(p)
      this.waiters.shift()?.()
    })
    return p
  }

  /** wait until fewer than `limit` jobs run; throws the first failure */
  async ready(): Promise<void> {
    while (this.running.size >= this.limit && !this.failure) await new Promise<void>((r) => this.waiters.push(r))
    this.check()
  }

  check(): void {
    if (this.failure) throw this.failure.e
  }

  async drain(): Promise<void> {
    while (this.running.size > 0) await Promise.all(this.running)
  }
}

/** where a blob's data goes: `pos` in the file `fd` settles to (it is being opened) */
interface BlobSink {
  fd: Promise<number>
  pos: number
}

/**
 * Reads blobs for the files being written and writes them there, with at most `budget` bytes
 * (plaintext sizes) read and not yet written; requests are served in the order they come, so
 * the walk's first files get their data first and packs are read mostly in order. A blob asked
 * for again while it is being read is read once; a blob found to be all zeros is not read
 * again (it is a hole).
 *
 * With restore workers (Repository.restoreWorkers) a worker reads a blob, decodes, checks and
 * writes it (Repository.writeBlobAt): neither its stored bytes nor its plaintext reach this
 * thread, which is left to walk the trees and create the files. Small blobs are not worth the
 * round trip.
 */
class BlobFetcher {
  private used = 0
  private readonly queue: {size: number; go: () => void}[] = []
  private head = 0
  private readonly reading = new Map<string, {data?: Promise<Buffer>; users: number; size: number}>()
  private readonly zeros = new Set<string>()
  /** the restore workers, once a blob big enough for them came (null: there are none) */
  private pool?: BlobPool | null

  constructor(
    private readonly repo: Repository,
    private readonly budget: number,
  ) {}

  /**
   * Wait for room for the blob `id` of `size` bytes, start reading it, and return a promise
   * that settles once it is written at `sink` (true) or found to be all zeros (false: nothing
   * is written, the file keeps a hole); the room is given back then.
   */
  async start(id: string, size: number, sink: BlobSink): Promise<{done: Promise<boolean>}> {
    if (this.zeros.has(id)) return {done: Promise.resolve(false)}
    let r = this.reading.get(id)
    if (!r) {
      await this.admit(size)
      r = this.reading.get(id)
      if (r) this.release(size)
      else {
        if (size >= POOL_MIN_BLOB) this.pool ??= this.repo.restoreWorkers() ?? null
        const inWorker = size >= POOL_MIN_BLOB && this.pool !== null
        // a worker reads the blob itself; else it is read (once for every file that wants it) here
        r = {data: inWorker ? undefined : readBlob(this.repo, id), users: 0, size}
        this.reading.set(id, r)
      }
    }
    const reading = r
    reading.users++
    const done = (async () => {
      try {
        const plain = await reading.data
        if (this.zeros.has(id)) return false
        const fd = await sink.fd
        if (!plain) {
          const {zero} = await damageNamed(this.repo, id, () => this.repo.writeBlobAt(this.pool!, id, fd, sink.pos))
          if (zero) this.zeros.add(id)
          return !zero
        }
        if (isZero(plain)) {
          this.zeros.add(id)
          return false
        }
        if (plain.length < ASYNC_WRITE) writeAllSync(fd, plain, sink.pos)
        else await writeAll(fd, plain, sink.pos)
        return true
      } finally {
        if (--reading.users === 0) {
          if (this.reading.get(id) === reading) this.reading.delete(id)
          this.release(reading.size)
        }
      }
    })()
    return {done}
  }

  private admit(size: number): Promise<void> | undefined {
    if (this.head === this.queue.length && (this.used === 0 || this.used + size <= this.budget)) {
      this.used += size
      return undefined
    }
    return new Promise<void>((go) => this.queue.push({size, go}))
  }

  private release(size: number): void {
    this.used -= size
    while (this.head < this.queue.length) {
      const next = this.queue[this.head]
      if (this.used > 0 && this.used + next.size > this.budget) break
      this.queue[this.head++] = undefined as never
      this.used += next.size
      next.go()
    }
    if (this.head === this.queue.length) {
      this.queue.length = 0
      this.head = 0
    }
  }
}

function writeAllSync(fd: number, buf: Buffer, pos: number): void {
  for (let done = 0; done < buf.length; ) done += writeSync(fd, buf, done, buf.length - done, pos + done)
}

async function writeAll(fd: number, buf: Buffer, pos: number): Promise<void> {
  for (let done = 0; done < buf.length; ) done += await writeP(fd, buf, done, buf.length - done, pos + done)
}

let root: boolean | undefined
/** whether this process runs as root (and so sets owners): asked once, a system call each time costs ~3 µs a file */
function asRoot(): boolean {
  return (root ??= process.getuid?.() === 0)
}

/** an entry's mtime as Node's time calls take it: seconds, a double (to the microsecond) */
function seconds(n: TreeNode): number {
  return n.mtime[0] + n.mtime[1] / 1e9
}

function setTimes(abs: string, n: TreeNode): void {
  lutimesSync(fsPath(abs), seconds(n), seconds(n))
}

async function setXattrs(abs: string, n: TreeNode, report: XattrReport): Promise<void> {
  if (!n.xattrs) return
  if (hasEscapes(abs)) {
    // a name that is not UTF-8 cannot be an argument: setfattr reads it from a dump
    // (getfattr's format: the name's unusual bytes as \ooo octal) on its standard input
    const name = [...bytesOfName(abs)].map((b) => (b < 0x21 || b > 0x7e || b === 0x5c ? `\\${b.toString(8).padStart(3, '0')}` : String.fromCharCode(b))).join('')
    // one run an attribute: a run's failure (exit 1, a line without the attribute's name) names that one
    for (const [k, v] of Object.entries(n.xattrs)) {
      const why = await new Promise<string | undefined>((resolve) => {
        const child = execFile('setfattr', ['-h', '--restore=-'], (e, _stdout, stderr) => resolve(e ? setfattrFailure(e, stderr) : undefined))
        // a setfattr that exits before reading it all (or is missing) must not crash the restore
        child.stdin?.on('error', () => undefined)
        child.stdin?.end(`# file: ${name}\n${k}=${setfattrValue(v)}\n\n`)
      })
      if (why !== undefined) report(k, why)
    }
    return
  }
  for (const [k, v] of Object.entries(n.xattrs)) {
    await execFileP('setfattr', ['-h', '-n', k, '-v', setfattrValue(v), abs]).catch((e: unknown) => report(k, setfattrFailure(e, (e as {stderr?: string}).stderr)))
  }
}

/** a value (base64) as setfattr takes it: an empty one as "" (setfattr sets nothing for `0s`, and says nothing) */
const setfattrValue = (v: string): string => (v === '' ? '""' : `0s${v}`)

/** what setXattrs tells of an attribute it could not set (its name, and why) */
type XattrReport = (name: string, reason: string) => void

/** why a setfattr run failed, in a few words: its own last message (`setfattr: PATH: Operation not supported`) without the path */
function setfattrFailure(e: unknown, stderr?: string | Buffer): string {
  if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 'setfattr is not installed (Debian: apt-get install attr)'
  const line = String(stderr ?? '').trim().split('\n').pop() ?? ''
  const i = line.lastIndexOf(': ')
  return (i >= 0 ? line.slice(i + 2) : line) || (e as Error).message
}

/**
 * A directory's owner, mode, xattrs and times, at the end of a restore: owner and mode through
 * a descriptor opened without following a symlink (one swapped in for the directory meanwhile
 * fails the restore, it is never followed); xattrs with setfattr -h, times with lutimes.
 */
async function finishDir(abs: string, n: TreeNode, report: XattrReport): Promise<void> {
  const fd = openSync(fsPath(abs), fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW)
  try {
    // owner, attributes, mode: as in applyMeta
    if (asRoot()) fchownSync(fd, n.uid, n.gid)
    await setXattrs(abs, n, report)
    fchmodSync(fd, n.mode & 0o7777)
  } finally {
    closeSync(fd)
  }
  setTimes(abs, n)
}

/** owner, mode, xattrs and times of what is at `abs` (not a directory: see finishDir) */
async function applyMeta(abs: string, n: TreeNode, report: XattrReport): Promise<void> {
  const p = fsPath(abs)
  // owner, attributes, mode: a chown clears file capabilities, and a read-only mode keeps its
  // (non-root) owner from setting user.* attributes
  if (asRoot()) lchownSync(p, n.uid, n.gid)
  await setXattrs(abs, n, report)
  if (n.type !== 'symlink') chmodSync(p, n.mode & 0o7777)
  setTimes(abs, n)
}
