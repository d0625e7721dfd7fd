/**
 * Turn trees back into files: as a tar stream (for the Docker API: putArchive into a
 * volume, or an image layer for docker load) or into a host directory (restore --path).
 */
import {execFile} from 'node:child_process'
import {promises as fsp} from 'node:fs'
import * as path from 'node:path'
import {promisify} from 'node:util'
import {HolyshipError} from '../errors.js'
import {TreeNode} from '../repo/format.js'
import {Repository} from '../repo/repository.js'
import {TarHeader, TarWriter} from './tarwriter.js'

const execFileP = promisify(execFile)

/** The content of a file node, chunk by chunk, each verified against its hash by loadBlob. */
export async function* fileContent(repo: Repository, node: TreeNode, onBytes?: (n: number) => void): AsyncGenerator<Buffer> {
  const ids = node.content ?? []
  // read one chunk ahead so disk or network and the consumer overlap
  let next: Promise<Buffer> | undefined = ids.length > 0 ? repo.loadBlob(ids[0]) : undefined
  for (let i = 0; i < ids.length; i++) {
    const buf = await next!
    next = i + 1 < ids.length ? repo.loadBlob(ids[i + 1]) : undefined
    onBytes?.(buf.length)
    yield buf
  }
}

export interface TreeWalkEntry {
  path: string
  node: TreeNode
}

/** Depth-first walk of a tree (parents before children). */
export async function* walkTree(repo: Repository, treeId: string, prefix = ''): AsyncGenerator<TreeWalkEntry> {
  const tree = await repo.loadTree(treeId)
  for (const node of tree.nodes) {
    const p = prefix === '' ? node.name : `${prefix}/${node.name}`
    yield {path: p, node}
    if (node.type === 'dir' && node.subtree) yield* walkTree(repo, node.subtree, p)
  }
}

/** Find the node at a relative path; the root is returned as a synthetic dir node. */
export async function findNode(repo: Repository, treeId: string, rel: string): Promise<TreeNode | undefined> {
  const parts = rel.split('/').filter((p) => p !== '' && p !== '.')
  let node: TreeNode = {name: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [0, 0], subtree: treeId}
  for (const part of parts) {
    if (node.type !== 'dir' || !node.subtree) return undefined
    const tree = await repo.loadTree(node.subtree)
    const child = tree.nodes.find((n) => n.name === part)
    if (!child) return undefined
    node = child
  }
  return node
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
}

/** Write a whole tree as tar entries (names relative, hardlinks relative to the same root). */
export async function writeTreeAsTar(repo: Repository, treeId: string, tw: TarWriter, opts: TarOptions = {}): Promise<void> {
  const pre = opts.rootName ? `${opts.rootName}/` : ''
  if (opts.root || opts.rootName) {
    const root = opts.root ?? {name: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [Math.floor(Date.now() / 1000), 0]}
    await tw.entry(headerOf(pre || './', root))
  }
  for await (const {path: rel, node: n} of walkTree(repo, treeId)) {
    const p = pre + rel
    const node = pre && n.type === 'hardlink' ? {...n, target: pre + (n.target ?? '')} : n
    if (node.type === 'whiteout') {
      if (opts.layer) {
        const dir = p.includes('/') ? p.slice(0, p.lastIndexOf('/') + 1) : ''
        await tw.entry({name: `${dir}.wh.${node.name}`, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: node.mtime, size: 0})
      }
      continue
    }
    if (node.type === 'file') {
      await tw.entry(headerOf(p, node), fileContent(repo, node, opts.onBytes))
    } else {
      await tw.entry(headerOf(p, node))
      if (node.type === 'dir' && node.opaque && opts.layer) {
        await tw.entry({name: `${p}/.wh..wh..opq`, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: node.mtime, size: 0})
      }
    }
  }
}

/**
 * Write the subtree at `rel` (a file, a directory, or the whole tree for '') into `target`
 * on this host. Never writes outside `target`: every path is checked, and no existing
 * symlink is followed.
 */
export async function restoreToDir(
  repo: Repository,
  treeId: string,
  rel: string,
  target: string,
  opts: {onBytes?: (n: number) => void; overwrite?: boolean} = {},
): Promise<{files: number; bytes: number}> {
  const node = await findNode(repo, treeId, rel)
  if (!node) throw new HolyshipError('PATH_NOT_FOUND', `no path ${JSON.stringify('/' + rel)} in the snapshot`)
  const root = path.resolve(target)
  await fsp.mkdir(root, {recursive: true})
  const stats = {files: 0, bytes: 0}
  const dirsToTime: {abs: string; node: TreeNode}[] = []
  /** tree path -> where it was written, for hard links */
  const written = new Map<string, string>()
  const relClean = rel.split('/').filter((p) => p !== '' && p !== '.').join('/')
  const baseName = relClean === '' ? '' : path.posix.basename(relClean)

  const place = async (relOut: string, treePath: string, n: TreeNode): Promise<void> => {
    if (relOut.split('/').some((c) => c === '..' || c === '.' || c.includes('\0'))) {
      throw new HolyshipError('REPO_DAMAGED', `refusing unsafe path ${JSON.stringify(relOut)} in the snapshot`)
    }
    const abs = relOut === '' ? root : path.join(root, relOut)
    if (abs !== root && !abs.startsWith(root + path.sep)) throw new HolyshipError('REPO_DAMAGED', `refusing path outside the target: ${relOut}`)
    // never follow a symlink left on the way (written earlier or already there)
    await assertNoSymlinkBetween(root, abs)
    const existing = await fsp.lstat(abs).catch(() => undefined)
    if (existing && n.type !== 'dir') {
      if (!opts.overwrite) throw new HolyshipError('TARGET_EXISTS', `${abs} exists`, {hint: 'use --force to overwrite'})
      await fsp.rm(abs, {recursive: true, force: true})
    } else if (existing && n.type === 'dir' && !existing.isDirectory()) {
      if (!opts.overwrite) throw new HolyshipError('TARGET_EXISTS', `${abs} exists and is not a directory`, {hint: 'use --force to overwrite'})
      await fsp.rm(abs, {force: true})
    }
    switch (n.type) {
      case 'dir':
        await fsp.mkdir(abs, {recursive: true})
        dirsToTime.push({abs, node: n})
        break
      case 'file': {
        const fh = await fsp.open(abs, 'w', 0o600)
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
        stats.files++
        stats.bytes += n.size ?? 0
        break
      }
      case 'symlink':
        await fsp.symlink(n.target ?? '', abs)
        break
      case 'hardlink': {
        const first = written.get(n.target ?? '')
        if (first !== undefined) {
          await fsp.link(first, abs)
          return
        }
        // the other name of this file is not part of this restore: write the content as a file
        const other = await findNode(repo, treeId, n.target ?? '')
        if (!other || other.type !== 'file') {
          throw new HolyshipError('REPO_DAMAGED', `hard link /${treePath} points to /${n.target}, which is not a file in the snapshot`)
        }
        await place(relOut, treePath, {...other, name: n.name})
        return
      }
      case 'fifo':
        await execFileP('mkfifo', ['-m', (n.mode & 0o777).toString(8), abs])
        break
      case 'chardev':
      case 'blockdev':
        await execFileP('mknod', [abs, n.type === 'chardev' ? 'c' : 'b', String(n.devMajor ?? 0), String(n.devMinor ?? 0)])
        break
      case 'whiteout':
        return
    }
    written.set(treePath, abs)
    await applyMeta(abs, n)
  }

  const walk = async (relOut: string, treePath: string, n: TreeNode): Promise<void> => {
    await place(relOut, treePath, n)
    if (n.type === 'dir' && n.subtree) {
      for (const child of (await repo.loadTree(n.subtree)).nodes) {
        const join = (a: string): string => (a === '' ? child.name : `${a}/${child.name}`)
        await walk(join(relOut), join(treePath), child)
      }
    }
  }
  await walk(baseName, relClean, node)
  // directory times last, deepest first: writing into a directory changes its mtime
  for (const {abs, node: n} of dirsToTime.reverse()) await setTimes(abs, n)
  return stats
}

function isZero(buf: Buffer): boolean {
  for (let i = 0; i < buf.length; i += 8192) {
    const end = Math.min(buf.length, i + 8192)
    for (let j = i; j < end; j++) if (buf[j] !== 0) return false
  }
  return true
}

async function assertNoSymlinkBetween(root: string, abs: string): Promise<void> {
  let cur = path.dirname(abs)
  while (cur.length > root.length) {
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
