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
import {constants as fsc, promises as fsp} from 'node:fs'
import * as path from 'node:path'
import {promisify} from 'node:util'
import {HolyshipError, isHolyshipError} from '../errors.js'
import {TreeNode} from '../repo/format.js'
import {Repository} from '../repo/repository.js'
import {TarHeader, TarWriter} from './tarwriter.js'
import {UnsafeTreeError, loadCheckedTree, walksBefore} from './tree-check.js'

const execFileP = promisify(execFile)

/** A path a --partial restore could not restore, and why. */
export interface SkippedEntry {
  /** path relative to the restored tree's root */
  path: string
  reason: string
}

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
  try {
    return await repo.loadBlob(id)
  } catch (e) {
    if (isHolyshipError(e) || (e as NodeJS.ErrnoException)?.code !== undefined || !(e instanceof Error)) throw e
    const loc = repo.blobLocation(id)
    const where = loc ? `pack data/${loc.pack.slice(0, 2)}/${loc.pack}` : 'the repository'
    throw new HolyshipError('REPO_DAMAGED', `blob ${id.slice(0, 16)} in ${where} cannot be read: ${e.message}`, {cause: e})
  }
}

/** The content of a file node, chunk by chunk, each verified against its hash by loadBlob. */
export async function* fileContent(repo: Repository, node: TreeNode, onBytes?: (n: number) => void): AsyncGenerator<Buffer> {
  const ids = node.content ?? []
  // read one chunk ahead so disk or network and the consumer overlap
  let next: Promise<Buffer> | undefined = ids.length > 0 ? readBlob(repo, ids[0]) : undefined
  // a rejected read-ahead that is never awaited must not become an unhandled rejection
  next?.catch(() => undefined)
  let total = 0
  for (let i = 0; i < ids.length; i++) {
    const buf = await next!
    next = i + 1 < ids.length ? readBlob(repo, ids[i + 1]) : undefined
    next?.catch(() => undefined)
    total += buf.length
    onBytes?.(buf.length)
    yield buf
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
  for await (const {path: rel, node: n} of walkTree(repo, treeId, '', walkOpts)) {
    const p = pre + rel
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
   * --partial: files whose data is damaged (and directories whose listing is) are left out
   * and listed here; everything else is restored. Without it the first damage fails the
   * restore and everything it created is removed again.
   */
  skipped?: SkippedEntry[]
}

/**
 * Write the subtree at `rel` (a file, a directory, or the whole tree for '') into `target`
 * on this host. Never writes outside `target`: every name is checked, no existing symlink is
 * followed, files are created new (O_EXCL|O_NOFOLLOW) under a temporary name and renamed
 * into place once complete. On failure everything this restore created is removed again
 * (files it replaced with `overwrite` stay replaced).
 */
export async function restoreToDir(
  repo: Repository,
  treeId: string,
  rel: string,
  target: string,
  opts: RestoreToDirOptions = {},
): Promise<{files: number; bytes: number; skipped: SkippedEntry[]}> {
  const partial = opts.skipped !== undefined
  const skipped: SkippedEntry[] = opts.skipped ?? []
  const node = await findNode(repo, treeId, rel)
  if (!node) throw new HolyshipError('PATH_NOT_FOUND', `no path ${JSON.stringify('/' + rel)} in the snapshot`)
  const root = path.resolve(target)
  /** what this restore created, in order: removed in reverse if it fails */
  const created: string[] = []
  const firstCreated = await fsp.mkdir(root, {recursive: true})
  if (firstCreated) created.push(firstCreated)
  const stats = {files: 0, bytes: 0}
  const dirsToTime: {abs: string; node: TreeNode}[] = []
  /** tree path -> where it was written, for hard links */
  const written = new Map<string, string>()
  const skippedPaths = new Set<string>()
  const relClean = rel.split('/').filter((p) => p !== '' && p !== '.').join('/')
  const baseName = relClean === '' ? '' : path.posix.basename(relClean)
  const skip = (treePath: string, reason: string): void => {
    skippedPaths.add(treePath)
    skipped.push({path: treePath, reason})
  }

  /** write a regular file's content under a temporary name beside `abs`; returns that name */
  const writeFileTemp = async (abs: string, n: TreeNode): Promise<string> => {
    const tmp = path.join(path.dirname(abs), `.holyship-restore-${randomBytes(6).toString('hex')}`)
    const fh = await fsp.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600)
    try {
      try {
        let pos = 0
        for await (const buf of fileContent(repo, n, opts.onBytes)) {
          // leave holes where the data is all zeros: sparse files stay sparse
          if (!isZero(buf)) await fh.write(buf, 0, buf.length, pos)
          pos += buf.length
        }
        await fh.truncate(pos)
      } finally {
        await fh.close()
      }
      await applyMeta(tmp, n)
    } catch (e) {
      await fsp.rm(tmp, {force: true}).catch(() => undefined)
      throw e
    }
    return tmp
  }

  /** directories this restore made or found to be real directories, their ancestors checked */
  const safeDirs = new Set<string>()
  const place = async (relOut: string, treePath: string, n: TreeNode): Promise<boolean> => {
    if (relOut.split('/').some((c) => c === '..' || c === '.' || c.includes('\0'))) {
      throw new HolyshipError('REPO_DAMAGED', `refusing unsafe path ${JSON.stringify(relOut)} in the snapshot`)
    }
    const abs = relOut === '' ? root : path.join(root, relOut)
    if (abs !== root && !abs.startsWith(root + path.sep)) throw new HolyshipError('REPO_DAMAGED', `refusing path outside the target: ${relOut}`)
    // never follow a symlink left on the way (written earlier or already there)
    await assertNoSymlinkBetween(root, abs, safeDirs)
    if (n.type === 'whiteout') return false
    const existing = abs === root ? await fsp.lstat(abs) : await fsp.lstat(abs).catch(() => undefined)
    const replace = existing !== undefined && (n.type !== 'dir' || !existing.isDirectory())
    if (replace && !opts.overwrite) {
      throw new HolyshipError('TARGET_EXISTS', `${abs} exists${n.type === 'dir' ? ' and is not a directory' : ''}`, {hint: 'use --force to overwrite'})
    }
    // a file's data is read (and checked) before anything at its path is touched
    let tmp: string | undefined
    let content: TreeNode | undefined
    if (n.type === 'file') content = n
    else if (n.type === 'hardlink') {
      const first = written.get(n.target ?? '')
      if (first === undefined) {
        if (skippedPaths.has(n.target ?? '')) {
          skip(treePath, `hard link to /${n.target}, which could not be restored`)
          return false
        }
        // the other name of this file is not part of this restore (or comes later): write the data
        try {
          const other = await hardlinkTarget(repo, treeId, treePath, n)
          content = {...other, name: n.name, mode: n.mode, uid: n.uid, gid: n.gid, mtime: n.mtime, xattrs: n.xattrs}
        } catch (e) {
          if (!(partial && isDamage(e))) throw e
          skip(treePath, e.message)
          return false
        }
      }
    }
    if (content) {
      try {
        tmp = await writeFileTemp(abs, content)
      } catch (e) {
        if (!(partial && isDamage(e))) throw e
        skip(treePath, e.message)
        return false
      }
    }
    try {
      // with --force: what is in the way goes (a symlink itself, never what it points to)
      if (replace) await fsp.rm(abs, {recursive: true, force: true})
      const fresh = !existing || replace
      switch (n.type) {
        case 'dir':
          if (fresh) await fsp.mkdir(abs)
          // a real directory now (lstat saw one, or we made it): entries below need not look past it
          safeDirs.add(abs)
          dirsToTime.push({abs, node: n})
          break
        case 'file':
          await fsp.rename(tmp!, abs)
          tmp = undefined
          stats.files++
          stats.bytes += n.size ?? 0
          break
        case 'symlink':
          await fsp.symlink(n.target ?? '', abs)
          break
        case 'hardlink':
          if (tmp) {
            await fsp.rename(tmp, abs)
            tmp = undefined
            stats.files++
            stats.bytes += content?.size ?? 0
          } else {
            await fsp.link(written.get(n.target ?? '')!, abs)
            created.push(abs)
            return true
          }
          break
        case 'fifo':
          await execFileP('mkfifo', ['-m', (n.mode & 0o777).toString(8), abs])
          break
        case 'chardev':
        case 'blockdev':
          await execFileP('mknod', [abs, n.type === 'chardev' ? 'c' : 'b', String(n.devMajor ?? 0), String(n.devMinor ?? 0)])
          break
      }
      if (fresh) created.push(abs)
    } finally {
      if (tmp) await fsp.rm(tmp, {force: true}).catch(() => undefined)
    }
    // hard links may only name regular files (a directory or a device is refused)
    if (n.type === 'file' || n.type === 'hardlink') written.set(treePath, abs)
    // files got their metadata before the rename
    if (n.type !== 'file' && n.type !== 'hardlink') await applyMeta(abs, n)
    return true
  }

  const walk = async (relOut: string, treePath: string, n: TreeNode): Promise<void> => {
    if (!(await place(relOut, treePath, n))) return
    if (n.type === 'dir' && n.subtree) {
      let tree
      try {
        tree = await loadCheckedTree(repo, n.subtree)
      } catch (e) {
        if (!(partial && isDamage(e))) throw e
        skip(treePath === '' ? '/' : `${treePath}/`, `directory listing unreadable: ${e.message}`)
        return
      }
      // regular files of a directory are written several at a time (each is mostly waiting
      // on the disk); everything else, and hard links to those files, in order after them
      let inFlight: Promise<void>[] = []
      const drain = async (): Promise<void> => {
        const results = await Promise.allSettled(inFlight)
        inFlight = []
        const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
        if (failed) throw failed.reason
      }
      for (const child of tree.nodes) {
        const join = (a: string): string => (a === '' ? child.name : `${a}/${child.name}`)
        if (child.type === 'file') {
          inFlight.push(walk(join(relOut), join(treePath), child))
          if (inFlight.length >= RESTORE_PARALLEL) await drain()
          continue
        }
        await drain()
        await walk(join(relOut), join(treePath), child)
      }
      await drain()
    }
  }
  try {
    await walk(baseName, relClean, node)
    // directory times last, deepest first: writing into a directory changes its mtime
    for (const {abs, node: n} of dirsToTime.reverse()) await setTimes(abs, n)
  } catch (e) {
    for (const p of created.reverse()) await fsp.rm(p, {recursive: true, force: true}).catch(() => undefined)
    throw e
  }
  return {...stats, skipped}
}

/** files written at the same time by restoreToDir */
const RESTORE_PARALLEL = 8

function isZero(buf: Buffer): boolean {
  for (let i = 0; i < buf.length; i += 8192) {
    const end = Math.min(buf.length, i + 8192)
    for (let j = i; j < end; j++) if (buf[j] !== 0) return false
  }
  return true
}

async function assertNoSymlinkBetween(root: string, abs: string, safe?: Set<string>): Promise<void> {
  let cur = path.dirname(abs)
  while (cur.length > root.length && !safe?.has(cur)) {
    const st = await fsp.lstat(cur).catch(() => undefined)
    if (st?.isSymbolicLink()) throw new HolyshipError('REPO_DAMAGED', `refusing to write through the symlink ${cur}`)
    cur = path.dirname(cur)
  }
}

async function setTimes(abs: string, n: TreeNode): Promise<void> {
  const t = n.mtime[0] + n.mtime[1] / 1e9
  await fsp.lutimes(abs, t, t)
}

async function applyMeta(abs: string, n: TreeNode): Promise<void> {
  if (process.getuid?.() === 0) await fsp.lchown(abs, n.uid, n.gid)
  if (n.type !== 'symlink') await fsp.chmod(abs, n.mode & 0o7777)
  if (n.xattrs) {
    for (const [k, v] of Object.entries(n.xattrs)) {
      await execFileP('setfattr', ['-h', '-n', k, '-v', `0s${v}`, abs]).catch(() => undefined)
    }
  }
  if (n.type !== 'dir') await setTimes(abs, n)
}
