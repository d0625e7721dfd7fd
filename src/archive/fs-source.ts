/**
 * Read a host directory (a volume's Mountpoint, a bind mount's source, or an overlay2
 * writable layer) straight from disk: the fast path when holyship runs as root on the
 * engine's host. Files that change while they are read never fail the snapshot: each is
 * stored as read and reported in stats.changed.
 *
 * With a parent snapshot most of a tree is usually unchanged, and what it costs is metadata:
 * one lstat per entry (synchronous: a CLI has nothing else to do meanwhile, and the thread
 * pool's round trip costs several times the system call), and extended attributes only where
 * an entry's ctime or inode differs from the parent's (setting or removing an xattr changes the
 * ctime), so an unchanged tree spawns no `getfattr` at all.
 */
import {execFile} from 'node:child_process'
import {BigIntStats, closeSync, constants as fsc, existsSync, fstatSync, lstatSync, openSync, read, readSync} from 'node:fs'
import * as path from 'node:path'
import debugFactory from 'debug'
import {NodeType, Tree, TreeNode} from '../repo/format.js'
import {fsPath, hasEscapes, linkTarget, listNames, nameFromBytes} from './names.js'
import {Archiver, SourceEntry} from './archiver.js'
import {contentMemory} from '../repo/memory.js'

const debug = debugFactory('holyship:fs-source')

export interface FsSourceOptions {
  /** an overlay2 upper dir: 0/0 character devices are whiteouts, trusted.overlay.opaque marks opaque dirs */
  overlay?: boolean
  /** relative paths (no leading /) to leave out, with everything below them */
  exclude?: Set<string>
  /**
   * record only this one entry of the root directory (a bind-mounted file: its directory is
   * the root, the file its one entry), and read no attributes but its and the root's
   */
  only?: string
  /**
   * the same source's tree in the previous snapshot: unchanged files are not read again, and
   * unchanged entries keep their extended attributes without reading them; `root` is the
   * previous root directory's own node, when the snapshot recorded it
   */
  parent?: {tree?: string; root?: TreeNode; loadTree: (id: string) => Promise<Tree>}
  /** the window of RACY_MS; a negative one turns the rule off (tests that compare the trees of files they wrote a moment ago) */
  racyMs?: number
}

/**
 * A file whose mtime or ctime is this close to the start of the snapshot, or after it, is read
 * but not recorded for reuse (no ctime: the next snapshot reads it again). Timestamps come from
 * a coarse clock (a few milliseconds; a second on some file systems): a write in the same tick
 * as the read, after it, leaves size, mtime and ctime as they were read, and the next snapshot
 * would keep the content read before that write for as long as the file stays so (git's
 * "racily clean" entries).
 */
export const RACY_MS = 1000

export function major(rdev: number): number {
  return Number(((BigInt(rdev) >> 8n) & 0xfffn) | ((BigInt(rdev) >> 32n) & ~0xfffn))
}
export function minor(rdev: number): number {
  return Number((BigInt(rdev) & 0xffn) | ((BigInt(rdev) >> 12n) & ~0xffn))
}

type Xattrs = Map<string, Record<string, string>>

/**
 * Extended attributes of `paths` (absolute, below root; with `recursive` everything below each)
 * in one `getfattr` run (Node has no xattr API), never following symlinks: a symlink's own
 * attributes, not its target's. Returns root-relative path -> name -> base64 value, only for
 * entries that have any. Missing getfattr: undefined.
 */
async function runGetfattr(root: string, paths: string[], recursive: boolean): Promise<Xattrs | undefined> {
  const args = [...(recursive ? ['-R', '-P'] : []), '-h', '-d', '-m', '-', '-e', 'base64', '--absolute-names', '--', ...paths]
  // bytes, not text: the names it prints are the file system's, UTF-8 or not
  const stdout = await new Promise<Buffer | undefined>((resolve, reject) => {
    execFile('getfattr', args, {maxBuffer: 1024 * 1024 * 1024, encoding: 'buffer'}, (err, out) => {
      if (!err) return resolve(out)
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return resolve(undefined)
      // getfattr exits 1 when some file vanished; what it printed is still good
      if (typeof err.code === 'number') return resolve(out)
      reject(err)
    })
  })
  if (stdout === undefined) return undefined
  const out: Xattrs = new Map()
  let current: Record<string, string> | undefined
  for (let at = 0; at < stdout.length; ) {
    let end = stdout.indexOf(0x0a, at)
    if (end < 0) end = stdout.length
    const bytes = stdout.subarray(at, end)
    at = end + 1
    if (bytes.subarray(0, 8).equals(FILE_LINE)) {
      const abs = nameFromBytes(unescapeGetfattr(bytes.subarray(8)))
      const rel = path.relative(root, abs)
      current = {}
      out.set(rel === '' ? '' : rel.split(path.sep).join('/'), current)
      continue
    }
    const line = bytes.toString('utf8')
    if (current && line.includes('=')) {
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

/** All extended attributes below root (one recursive `getfattr`); empty without getfattr. */
export async function readXattrs(root: string): Promise<Map<string, Record<string, string>>> {
  const out = await runGetfattr(root, [root], true)
  if (!out) debug('getfattr not installed: extended attributes are not read')
  return out ?? new Map()
}

const FILE_LINE = Buffer.from('# file: ')

/** a name as getfattr printed it: it escapes a backslash, a newline and other control bytes as \ooo octal */
function unescapeGetfattr(b: Buffer): Buffer {
  if (!b.includes(0x5c)) return b
  const out: number[] = []
  for (let i = 0; i < b.length; i++) {
    const o = b.subarray(i + 1, i + 4).toString('latin1')
    if (b[i] === 0x5c && /^[0-7]{3}$/.test(o)) {
      out.push(parseInt(o, 8) & 0xff)
      i += 3
    } else out.push(b[i])
  }
  return Buffer.from(out)
}

/**
 * Where the extended attributes of the walk come from: either one recursive run over the whole
 * root (a first snapshot, or once the changes are many), or small runs for just the entries
 * that changed since the parent snapshot and the new directories (recursively).
 */
class XattrReader {
  private readonly map: Xattrs = new Map()
  /** the whole root has been read: the map has every entry that has attributes */
  private all = false
  private missing = false
  private runs = 0
  private entries = 0
  /** past these, one recursive run over everything is cheaper than more small ones */
  static readonly MAX_RUNS = 16
  static readonly MAX_ENTRIES = 2048

  constructor(private readonly root: string) {}

  get complete(): boolean {
    return this.all || this.missing
  }

  /** every entry's attributes are in the map (none there: it has none) */
  get everything(): boolean {
    return this.all
  }

  async readAll(): Promise<void> {
    if (this.complete) return
    const m = await runGetfattr(this.root, [this.root], true)
    this.all = true
    this.merge(m)
  }

  /** read `entries` (root-relative) and, recursively, `trees`; no-op once everything is read */
  async fetch(entries: string[], trees: string[]): Promise<void> {
    if (this.complete || entries.length + trees.length === 0) return
    // a name that is not UTF-8 cannot be passed to getfattr (arguments are UTF-8): the one
    // recursive run over the root prints it like any other
    if (entries.some(hasEscapes) || trees.some(hasEscapes)) return this.readAll()
    this.entries += entries.length
    this.runs += (entries.length > 0 ? Math.ceil(entries.length / 512) : 0) + (trees.length > 0 ? 1 : 0)
    if (this.runs > XattrReader.MAX_RUNS || this.entries > XattrReader.MAX_ENTRIES) return this.readAll()
    const abs = (rel: string): string => (rel === '' ? this.root : path.join(this.root, rel))
    // bounded argument lists (ARG_MAX)
    for (let i = 0; i < entries.length && !this.missing; i += 512) {
      this.merge(await runGetfattr(this.root, entries.slice(i, i + 512).map(abs), false))
    }
    if (trees.length > 0 && !this.missing) this.merge(await runGetfattr(this.root, trees.map(abs), true))
  }

  /** an entry's attributes once read (each entry is asked for once: forgotten here) */
  take(rel: string): Record<string, string> | undefined {
    const x = this.map.get(rel)
    if (x) this.map.delete(rel)
    return x
  }

  private merge(m: Xattrs | undefined): void {
    if (!m) {
      if (!this.missing) debug('getfattr not installed: extended attributes are not read')
      this.missing = true
      return
    }
    for (const [k, v] of m) this.map.set(k, v)
  }
}

function timeOf(ns: bigint): [number, number] {
  const sec = ns / 1_000_000_000n
  return [Number(sec), Number(ns - sec * 1_000_000_000n)]
}

function sameTime(a: [number, number] | undefined, b: [number, number]): boolean {
  return !!a && a[0] === b[0] && a[1] === b[1]
}

/**
 * the entry is as the parent snapshot recorded it: same inode and ctime (any change of owner,
 * mode, attributes, name or content moves the ctime) and same mtime (which can be set back)
 */
function unchangedSince(c: Child): boolean {
  return c.keepXattrs && sameTime(c.prev!.mtime, c.mtime)
}

/** lstat, or undefined when the entry is gone */
function lstatOrGone(at: string): BigIntStats | undefined {
  return lstatSync(fsPath(at), {bigint: true, throwIfNoEntry: false})
}

/**
 * The walk reaches each entry through the descriptor of the directory it listed it from
 * (`/proc/self/fd/N/NAME`, as openat(2) would), never by its path from the root: whatever can
 * still write below the root meanwhile (a second container on a shared volume, a snapshot
 * with --no-pause) could swap a directory or a file for a symlink between two system calls, and
 * a walk by path, as root, would then read the host's files where it points and store them as
 * the volume's. Each directory and file is opened without following a symlink and checked to
 * be the inode lstat saw; what is not was replaced while read (stats.changed).
 */
const ANCHORED = existsSync('/proc/self/fd')

const O_DIR = fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW
// O_NONBLOCK: a fifo swapped in for a file must not block the walk (and the paused container)
const O_FILE = fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK

/** open the entry lstat saw as `st`; undefined when it is gone or no longer that inode (replaced meanwhile) */
function openSame(at: string, flags: number, st: BigIntStats): number | undefined {
  let fd: number
  try {
    fd = openSync(fsPath(at), flags)
  } catch (e) {
    // ELOOP: a symlink now; ENOTDIR: not a directory now; ENXIO: a socket now
    if (['ENOENT', 'ELOOP', 'ENOTDIR', 'ENXIO'].includes((e as NodeJS.ErrnoException).code ?? '')) return undefined
    throw e
  }
  const now = fstatSync(fd, {bigint: true})
  if (now.ino === st.ino && now.dev === st.dev && (now.mode & BigInt(S_IFMT)) === (st.mode & BigInt(S_IFMT))) return fd
  closeSync(fd)
  return undefined
}

// file type bits of st_mode (BigIntStats' isFile() etc. allocate BigInts on every call)
const S_IFMT = 0o170000
const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const S_IFLNK = 0o120000
const S_IFCHR = 0o020000
const S_IFBLK = 0o060000
const S_IFIFO = 0o010000

/** one directory entry as the walk sees it: stat'ed once, matched to the parent snapshot's node */
interface Child {
  rel: string
  abs: string
  /** where the walk's system calls reach it: through its directory's descriptor (ANCHORED) */
  at: string
  st: BigIntStats
  /** st_mode & S_IFMT */
  kind: number
  mtime: [number, number]
  ctime: [number, number]
  inode: number
  size: number
  prev?: TreeNode
  /** the parent snapshot's attributes of this entry are still right (same inode, same ctime) */
  keepXattrs: boolean
}

function childOf(rel: string, abs: string, at: string, st: BigIntStats, prev: TreeNode | undefined): Child {
  const ctime = timeOf(st.ctimeNs)
  const inode = Number(st.ino)
  return {
    rel,
    abs,
    at,
    st,
    kind: Number(st.mode) & S_IFMT,
    mtime: timeOf(st.mtimeNs),
    ctime,
    inode,
    size: Number(st.size),
    prev,
    keepXattrs: prev !== undefined && prev.inode === inode && sameTime(prev.ctime, ctime),
  }
}

/** stat this many entries of a directory ahead (one getfattr for those that changed) */
const BATCH = 512

/** Walk `root` depth-first and add every entry to the archiver; returns the paths that changed while read. */
export async function archiveDir(root: string, archiver: Archiver, opts: FsSourceOptions = {}): Promise<string[]> {
  const changed: string[] = []
  const xattrs = new XattrReader(root)
  // a first snapshot needs every entry's attributes: one recursive run
  if (!opts.parent?.tree && opts.only === undefined) await xattrs.readAll()
  const links = new Map<string, string>()
  const racyMs = opts.racyMs ?? RACY_MS
  const racyFrom = racyMs < 0 ? undefined : BigInt(Date.now() - racyMs) * 1_000_000n

  /** the entry's common fields, with the attributes to record (overlayfs' own trusted.overlay.* left out) */
  const entryOf = (c: Child, type: NodeType): SourceEntry => {
    const e: SourceEntry = {
      path: c.rel,
      type,
      mode: Number(c.st.mode) & 0o7777,
      uid: Number(c.st.uid),
      gid: Number(c.st.gid),
      mtime: c.mtime,
      ctime: c.ctime,
      inode: c.inode,
    }
    if (c.keepXattrs && !xattrs.everything) {
      if (c.prev!.xattrs) e.xattrs = c.prev!.xattrs
      if (type === 'dir' && c.prev!.type === 'dir' && c.prev!.opaque) e.opaque = true
      return e
    }
    const x = xattrs.take(c.rel)
    if (!x) return e
    if (type === 'dir' && opts.overlay && x['trusted.overlay.opaque'] === OPAQUE) e.opaque = true
    for (const k in x) {
      if (opts.overlay && k.startsWith('trusted.overlay.')) continue
      ;(e.xattrs ??= {})[k] = x[k]
    }
    return e
  }

  const parentChildren = async (prev: TreeNode | undefined): Promise<Map<string, TreeNode> | undefined> => {
    const tree = prev?.type === 'dir' ? prev.subtree : undefined
    if (!tree || !opts.parent) return undefined
    try {
      const nodes = (await opts.parent.loadTree(tree)).nodes
      const m = new Map<string, TreeNode>()
      for (const n of nodes) m.set(n.name, n)
      return m
    } catch (e) {
      debug('parent tree %s unreadable, reading everything: %s', tree, (e as Error).message)
      return undefined
    }
  }

  /**
   * a directory: its own entry, then its children in name order, then its tree. Returns true
   * when the directory and everything below it are recorded exactly as in the parent snapshot
   * (then its tree is the parent's, not serialised and hashed again).
   */
  const visitDir = async (c: Child, subtreeKnown: boolean): Promise<boolean> => {
    const fd = ANCHORED ? openSame(c.at, O_DIR, c.st) : undefined
    if (ANCHORED && fd === undefined) {
      changed.push(c.rel)
      return false
    }
    try {
      return await visitOpenDir(c, subtreeKnown, fd === undefined ? c.abs : `/proc/self/fd/${fd}`)
    } finally {
      if (fd !== undefined) closeSync(fd)
    }
  }

  /** visitDir of a directory open at `here` */
  const visitOpenDir = async (c: Child, subtreeKnown: boolean, here: string): Promise<boolean> => {
    await archiver.add(entryOf(c, 'dir'))
    let names: string[]
    try {
      names = listNames(here)
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        changed.push(c.rel)
        return false
      }
      throw e
    }
    names.sort()
    if (opts.only !== undefined && c.rel === '') names = names.includes(opts.only) ? [opts.only] : []
    const before = await parentChildren(c.prev)
    // the directory itself unchanged (same inode and ctime: same names, owner, mode, attributes)
    let same = before !== undefined && unchangedSince(c) && c.prev?.type === 'dir' && c.prev.subtree !== undefined
    let recorded = 0
    const dirSlash = c.abs.endsWith('/') ? c.abs : `${c.abs}/`
    const hereSlash = here.endsWith('/') ? here : `${here}/`
    const relSlash = c.rel === '' ? '' : `${c.rel}/`
    for (let i = 0; i < names.length; i += BATCH) {
      // stat a batch, then read the attributes of those that changed in one go
      const batch: Child[] = []
      const need: string[] = []
      const newTrees = new Set<string>()
      for (let j = i; j < names.length && j < i + BATCH; j++) {
        const name = names[j]
        const rel = relSlash + name
        if (opts.exclude?.has(rel)) continue
        const at = hereSlash + name
        const st = lstatOrGone(at)
        if (!st) {
          changed.push(rel)
          same = false
          continue
        }
        const child = childOf(rel, dirSlash + name, at, st, before?.get(name))
        batch.push(child)
        if (subtreeKnown || child.keepXattrs) continue
        // a directory the parent snapshot does not have: everything below it is new
        if (child.kind === S_IFDIR && child.prev?.type !== 'dir') newTrees.add(rel)
        else need.push(rel)
      }
      await xattrs.fetch(need, [...newTrees])
      for (const child of batch) {
        const kept = child.kind === S_IFDIR ? await visitDir(child, subtreeKnown || newTrees.has(child.rel)) : await visitOther(child)
        if (!kept) same = false
        recorded++
      }
    }
    // depth-first: this directory is complete, write its tree (or take the parent's) and free its entries
    if (same && recorded === before!.size && archiver.closeDirAs(c.rel, c.prev!.subtree!)) return true
    await archiver.closeDir(c.rel)
    return false
  }

  /** an entry that is not a directory; true when it is recorded exactly as in the parent snapshot */
  const visitOther = async (c: Child): Promise<boolean> => {
    const {st, rel, prev} = c
    const same = unchangedSince(c)
    switch (c.kind) {
      case S_IFREG: {
        let key: string | undefined
        if (st.nlink > 1n) {
          key = `${st.dev}:${st.ino}`
          const first = links.get(key)
          if (first !== undefined) {
            const e = entryOf(c, 'hardlink')
            e.target = first
            await archiver.add(e)
            return false
          }
          links.set(key, rel)
        }
        const e = entryOf(c, 'file')
        // unchanged since the parent snapshot (size, mtime, ctime, inode): reuse its chunks unread
        if (
          prev?.type === 'file' &&
          prev.size === c.size &&
          prev.inode === c.inode &&
          sameTime(prev.ctime, c.ctime) &&
          sameTime(prev.mtime, c.mtime) &&
          prev.content &&
          archiver.hasAll(prev.content)
        ) {
          e.reuse = {content: prev.content, size: c.size}
          await archiver.add(e)
          // a file with other names is recorded as the first one seen: as before only if that stays so
          return same && st.nlink === 1n
        }
        // open and close are synchronous like lstat: a round trip through libuv's thread pool
        // costs far more than the system call, and the walk would wait for it on every file
        const fd = openSame(c.at, O_FILE, st)
        if (fd === undefined) {
          changed.push(rel)
          // gone or replaced: its other names are not links to it (the next one seen is the file)
          if (key !== undefined) links.delete(key)
          return false
        }
        if (racyFrom !== undefined && (st.mtimeNs >= racyFrom || st.ctimeNs >= racyFrom)) delete e.ctime
        try {
          e.content = readFile(fd, c.size)
          e.fresh = true
          await archiver.add(e)
        } finally {
          closeSync(fd)
        }
        const after = lstatOrGone(c.at)
        if (!after || after.size !== st.size || after.mtimeNs !== st.mtimeNs) changed.push(rel)
        return false
      }
      case S_IFLNK: {
        // a symlink's target never changes in place: same inode and ctime, same target
        let target = c.keepXattrs && prev?.type === 'symlink' ? prev.target : undefined
        if (target === undefined) {
          try {
            target = linkTarget(c.at)
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
              changed.push(rel)
              return false
            }
            throw err
          }
        }
        const e = entryOf(c, 'symlink')
        e.target = target
        await archiver.add(e)
        return same && prev?.type === 'symlink' && prev.target === target
      }
      case S_IFCHR:
      case S_IFBLK: {
        if (c.kind === S_IFCHR && opts.overlay && st.rdev === 0n) {
          await archiver.add(entryOf(c, 'whiteout'))
          return same && prev?.type === 'whiteout'
        }
        const e = entryOf(c, c.kind === S_IFCHR ? 'chardev' : 'blockdev')
        e.devMajor = major(Number(st.rdev))
        e.devMinor = minor(Number(st.rdev))
        await archiver.add(e)
        return same && prev?.type === e.type && prev.devMajor === e.devMajor && prev.devMinor === e.devMinor
      }
      case S_IFIFO:
        await archiver.add(entryOf(c, 'fifo'))
        return same && prev?.type === 'fifo'
      default:
        // sockets are not archived (they cannot be restored meaningfully)
        debug('skipping socket %s', c.abs)
        return false
    }
  }

  const st = lstatSync(root, {bigint: true})
  // the root's own node: the previous snapshot's, or a stand-in that only names the tree
  const rootPrev: TreeNode | undefined = opts.parent?.tree
    ? {...(opts.parent.root ?? {name: '', type: 'dir', mode: 0, uid: 0, gid: 0, mtime: [0, 0]}), subtree: opts.parent.tree}
    : undefined
  const rootChild = childOf('', root, root, st, rootPrev)
  // an overlay upper dir's root is not recorded (only what is below it), so its attributes are not needed
  if (!rootChild.keepXattrs && !opts.overlay) await xattrs.fetch([''], [])
  // not a directory (a bind-mounted file): the archiver refuses it
  if (rootChild.kind === S_IFDIR) await visitDir(rootChild, false)
  else await visitOther(rootChild)
  return changed
}

const OPAQUE = Buffer.from('y').toString('base64')

/**
 * A big file is read in pieces of this size. The archiver's in-flight bound (IN_FLIGHT_BYTES,
 * 6 MiB) is taken a piece at a time, so with 4 MiB pieces only one piece was in flight and the
 * blob worker waited while the next was cut and hashed: 2 MiB made the bench's first snapshot
 * ~8% faster (archiver alone, 3 runs each: 3.19-3.36 s -> 2.98-3.08 s), 1 MiB no better than 2.
 */
const READ_PIECE = 2 * 1024 * 1024

/** reads up to this size are synchronous (one system call from the page cache beats a thread pool round trip) */
const SYNC_READ = 1024 * 1024

/**
 * Read a file to its end with positioned reads of at most READ_PIECE, sized by the size lstat
 * gave (one read of size+1 bytes for a small file: a short read is the end). Small reads are
 * synchronous; big ones go through the thread pool with the next one already in flight while
 * the current piece is chunked and hashed. Each piece is a fresh buffer: the chunker keeps
 * views of it until its chunks are stored.
 */
async function* readFile(fd: number, expected: number): AsyncGenerator<Buffer> {
  let pos = 0
  const piece = (buf: Buffer, bytesRead: number, want: number): {buf: Buffer; full: boolean} => ({
    buf: bytesRead === want ? buf : buf.subarray(0, bytesRead),
    full: bytesRead === want,
  })
  const readAt = (at: number): {buf: Buffer; full: boolean} | Promise<{buf: Buffer; full: boolean}> => {
    const want = Math.min(READ_PIECE, Math.max(expected - at, 0) + 1)
    const buf = contentMemory.alloc(want)
    if (want <= SYNC_READ) return piece(buf, readSync(fd, buf, 0, want, at), want)
    return new Promise((resolve, reject) => read(fd, buf, 0, want, at, (err, n) => (err ? reject(err) : resolve(piece(buf, n, want)))))
  }
  let next: {buf: Buffer; full: boolean} | Promise<{buf: Buffer; full: boolean}> | undefined = readAt(pos)
  while (next) {
    const {buf, full}: {buf: Buffer; full: boolean} = await next
    pos += buf.length
    // a short read is the end of the file; a full one may be followed by more (a growing file)
    next = full ? readAt(pos) : undefined
    if (next instanceof Promise) next.catch(() => undefined)
    if (buf.length > 0) yield buf
  }
}
