/**
 * Read a host directory (a volume's Mountpoint, a bind mount's source, or an overlay2
 * writable layer) straight from disk: the fast path when holyship runs as root on the
 * engine's host. Files that change while they are read never fail the snapshot: each is
 * stored as read and reported in stats.changed.
 */
import {execFile} from 'node:child_process'
import {promises as fsp} from 'node:fs'
import * as path from 'node:path'
import {promisify} from 'node:util'
import debugFactory from 'debug'
import {Tree, TreeNode} from '../repo/format.js'
import {Archiver, SourceEntry} from './archiver.js'

const debug = debugFactory('holyship:fs-source')
const execFileP = promisify(execFile)

export interface FsSourceOptions {
  /** an overlay2 upper dir: 0/0 character devices are whiteouts, trusted.overlay.opaque marks opaque dirs */
  overlay?: boolean
  /** relative paths (no leading /) to leave out, with everything below them */
  exclude?: Set<string>
  /** the same source's tree in the previous snapshot: unchanged files are not read again */
  parent?: {tree?: string; loadTree: (id: string) => Promise<Tree>}
}

export function major(rdev: number): number {
  return Number(((BigInt(rdev) >> 8n) & 0xfffn) | ((BigInt(rdev) >> 32n) & ~0xfffn))
}
export function minor(rdev: number): number {
  return Number((BigInt(rdev) & 0xffn) | ((BigInt(rdev) >> 12n) & ~0xffn))
}

/**
 * All extended attributes below root in one `getfattr` run (Node has no xattr API).
 * Returns relative path -> name -> base64 value. Missing getfattr: no xattrs, with a debug note.
 */
export async function readXattrs(root: string): Promise<Map<string, Record<string, string>>> {
  const out = new Map<string, Record<string, string>>()
  let stdout: string
  try {
    ;({stdout} = await execFileP('getfattr', ['-R', '-P', '-d', '-m', '-', '-e', 'base64', '--absolute-names', root], {
      maxBuffer: 1024 * 1024 * 1024,
      encoding: 'utf8',
    }))
  } catch (e) {
    const err = e as NodeJS.ErrnoException & {stdout?: string}
    if (err.code === 'ENOENT') {
      debug('getfattr not installed: extended attributes are not read')
      return out
    }
    // getfattr exits 1 when some file vanished; what it printed is still good
    stdout = err.stdout ?? ''
  }
  let current: Record<string, string> | undefined
  for (const line of stdout.split('\n')) {
    if (line.startsWith('# file: ')) {
      const abs = unescapeGetfattr(line.slice(8))
      const rel = path.relative(root, abs)
      current = {}
      out.set(rel === '' ? '' : rel.split(path.sep).join('/'), current)
    } else if (current && line.includes('=')) {
      const i = line.indexOf('=')
      const name = line.slice(0, i)
      let value = line.slice(i + 1)
      if (value.startsWith('0s')) value = value.slice(2)
      else if (value.startsWith('"')) value = Buffer.from(JSON.parse(value) as string, 'utf8').toString('base64')
      current[name] = value
    }
  }
  return out
}

function unescapeGetfattr(s: string): string {
  // getfattr escapes unusual bytes as \ooo octal
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}

type BigStats = import('node:fs').BigIntStats

function timeOf(ns: bigint): [number, number] {
  const sec = ns / 1_000_000_000n
  return [Number(sec), Number(ns - sec * 1_000_000_000n)]
}

function sameTime(a: [number, number] | undefined, b: [number, number]): boolean {
  return !!a && a[0] === b[0] && a[1] === b[1]
}

/** Walk `root` depth-first and add every entry to the archiver; returns the paths that changed while read. */
export async function archiveDir(root: string, archiver: Archiver, opts: FsSourceOptions = {}): Promise<string[]> {
  const changed: string[] = []
  const xattrs = await readXattrs(root)
  const links = new Map<string, string>()
  const meta = (rel: string, st: BigStats): Omit<SourceEntry, 'type'> => {
    const x = xattrs.get(rel)
    let xa: Record<string, string> | undefined
    if (x) {
      xa = {}
      for (const [k, v] of Object.entries(x)) if (!(opts.overlay && k.startsWith('trusted.overlay.'))) xa[k] = v
      if (Object.keys(xa).length === 0) xa = undefined
    }
    return {path: rel, mode: Number(st.mode) & 0o7777, uid: Number(st.uid), gid: Number(st.gid), mtime: timeOf(st.mtimeNs), xattrs: xa}
  }
  const parentChildren = async (tree: string | undefined): Promise<Map<string, TreeNode> | undefined> => {
    if (!tree || !opts.parent) return undefined
    try {
      return new Map((await opts.parent.loadTree(tree)).nodes.map((n) => [n.name, n]))
    } catch (e) {
      debug('parent tree %s unreadable, reading everything: %s', tree, (e as Error).message)
      return undefined
    }
  }

  const visit = async (rel: string, prev: TreeNode | undefined): Promise<void> => {
    const abs = rel === '' ? root : path.join(root, rel)
    let st: BigStats
    try {
      st = await fsp.lstat(abs, {bigint: true})
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' && rel !== '') {
        changed.push(rel)
        return
      }
      throw e
    }
    if (st.isDirectory()) {
      const opaque = opts.overlay ? xattrs.get(rel)?.['trusted.overlay.opaque'] === Buffer.from('y').toString('base64') : false
      await archiver.add({...meta(rel, st), type: 'dir', opaque})
      let names: string[]
      try {
        names = await fsp.readdir(abs)
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
          changed.push(rel)
          return
        }
        throw e
      }
      names.sort()
      const before = await parentChildren(prev?.type === 'dir' ? prev.subtree : undefined)
      for (const name of names) {
        const childRel = rel === '' ? name : `${rel}/${name}`
        if (opts.exclude?.has(childRel)) continue
        await visit(childRel, before?.get(name))
      }
      // depth-first: this directory is complete, write its tree and free its entries
      await archiver.closeDir(rel)
      return
    }
    if (st.isFile()) {
      const m = meta(rel, st)
      if (st.nlink > 1n) {
        const key = `${st.dev}:${st.ino}`
        const first = links.get(key)
        if (first !== undefined) {
          await archiver.add({...m, type: 'hardlink', target: first})
          return
        }
        links.set(key, rel)
      }
      const ctime = timeOf(st.ctimeNs)
      const inode = Number(st.ino)
      const size = Number(st.size)
      // unchanged since the parent snapshot (size, mtime, ctime, inode): reuse its chunks unread
      if (
        prev?.type === 'file' &&
        prev.size === size &&
        prev.inode === inode &&
        sameTime(prev.ctime, ctime) &&
        sameTime(prev.mtime, m.mtime) &&
        prev.content &&
        archiver.hasAll(prev.content)
      ) {
        await archiver.add({...m, type: 'file', ctime, inode, reuse: {content: prev.content, size}})
        return
      }
      let fh
      try {
        fh = await fsp.open(abs, 'r')
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
          changed.push(rel)
          return
        }
        throw e
      }
      try {
        await archiver.add({...m, type: 'file', ctime, inode, content: readFile(fh, size)})
      } finally {
        await fh.close()
      }
      const after = await fsp.lstat(abs, {bigint: true}).catch(() => undefined)
      if (!after || after.size !== st.size || after.mtimeNs !== st.mtimeNs) changed.push(rel)
      return
    }
    if (st.isSymbolicLink()) {
      const target = await fsp.readlink(abs)
      await archiver.add({...meta(rel, st), type: 'symlink', target})
      return
    }
    if (st.isCharacterDevice()) {
      if (opts.overlay && st.rdev === 0n) {
        await archiver.add({...meta(rel, st), type: 'whiteout'})
        return
      }
      await archiver.add({...meta(rel, st), type: 'chardev', devMajor: major(Number(st.rdev)), devMinor: minor(Number(st.rdev))})
      return
    }
    if (st.isBlockDevice()) {
      await archiver.add({...meta(rel, st), type: 'blockdev', devMajor: major(Number(st.rdev)), devMinor: minor(Number(st.rdev))})
      return
    }
    if (st.isFIFO()) {
      await archiver.add({...meta(rel, st), type: 'fifo'})
      return
    }
    // sockets are not archived (they cannot be restored meaningfully)
    debug('skipping socket %s', abs)
  }
  const rootPrev: TreeNode | undefined = opts.parent?.tree ? {name: '', type: 'dir', mode: 0, uid: 0, gid: 0, mtime: [0, 0], subtree: opts.parent.tree} : undefined
  await visit('', rootPrev)
  return changed
}

/**
 * Read a file to its end with positioned reads of at most 4 MiB, sized by the size lstat
 * gave (one read of size+1 bytes for a small file: a short read is the end), the next read
 * already in flight while the current piece is chunked and hashed. Each piece is a fresh
 * buffer: the chunker keeps views of it until its chunks are stored.
 */
async function* readFile(fh: import('node:fs/promises').FileHandle, expected: number): AsyncGenerator<Buffer> {
  const MAX = 4 * 1024 * 1024
  let pos = 0
  const readAt = async (at: number): Promise<{buf: Buffer; full: boolean}> => {
    const want = Math.min(MAX, Math.max(expected - at, 0) + 1)
    const buf = Buffer.allocUnsafeSlow(want)
    const {bytesRead} = await fh.read(buf, 0, want, at)
    return {buf: bytesRead === want ? buf : buf.subarray(0, bytesRead), full: bytesRead === want}
  }
  let next: Promise<{buf: Buffer; full: boolean}> | undefined = readAt(pos)
  while (next) {
    const {buf, full}: {buf: Buffer; full: boolean} = await next
    pos += buf.length
    // a short read is the end of the file; a full one may be followed by more (a growing file)
    next = full ? readAt(pos) : undefined
    next?.catch(() => undefined)
    if (buf.length > 0) yield buf
  }
}
