/**
 * The archiver turns a stream of filesystem entries (from a tar stream of the Docker API, or
 * from a walk of a host directory) into chunks and tree blobs. Entries may come in any order
 * as long as every entry's data is read when it arrives; trees are written once at the end,
 * deepest first, so the root tree id names everything below it.
 */
import {ArchiveStats, NodeType, Tree, TreeNode} from '../repo/format.js'
import {collectGarbage} from '../repo/gc.js'
import {Repository, SaveResult} from '../repo/repository.js'

export interface SourceEntry {
  /** relative path, `/`-separated, no leading `./` or `/`; '' is the root directory */
  path: string
  type: NodeType
  mode: number
  uid: number
  gid: number
  mtime: [number, number]
  size?: number
  /** symlink target, or for hardlinks the path of the entry it links to */
  target?: string
  devMajor?: number
  devMinor?: number
  xattrs?: Record<string, string>
  opaque?: boolean
  /** regular files: the content */
  content?: AsyncIterable<Buffer>
  /**
   * the content's buffers are new and the source never touches them again (a file read into
   * fresh buffers), so they may be handed to a blob worker without a copy
   */
  fresh?: boolean
  /** regular files known unchanged since the parent snapshot: its chunk ids, not read again */
  reuse?: {content: string[]; size: number}
  ctime?: [number, number]
  inode?: number
}

/** the root directory made up for a bind-mounted file's tree, which holds just that file (its metadata is never restored) */
export const FILE_ROOT: SourceEntry = {path: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [0, 0]}

interface DirBuild {
  node?: TreeNode
  children: Map<string, TreeNode>
  /** its files' chunk saves and its closed subdirectories' tree writes: the tree is written once they are done */
  saves?: Promise<void>[]
  /** the source is done with it (closeDir): its tree is written as soon as its saves are */
  closed?: boolean
}

/**
 * Chunk bytes handed to the repository and not saved yet, at most (a chunk bigger than this
 * still goes, alone): enough to keep the main thread and a blob worker both busy; bounded so
 * memory does not grow with the data. (On two cores, 8 MiB made a first snapshot of the
 * bench's data ~7% faster, and its peak RSS up to 253 MiB: too near the 256 MB target.)
 */
export const IN_FLIGHT_BYTES = 6 * 1024 * 1024

/**
 * Saves in flight, at most: with tiny files the byte bound alone lets tens of thousands wait,
 * and their promises and closures live long enough to reach V8's old generation, which is
 * collected seldom (100,000 files of ~500 bytes: 170 MB of heap, nearly all garbage). A
 * million such files took 41 s of CPU with 512 in flight, 45-47 s with 1024 (more promoted).
 */
export const IN_FLIGHT_SAVES = 512

export interface ArchiverProgress {
  (bytes: number): void
}

export class Archiver {
  private readonly dirs = new Map<string, DirBuild>()
  private inFlight = 0
  /** saves in flight (each reserve()d) */
  private saving = 0
  private waiters: (() => void)[] = []
  /** the first failed chunk save: reported when the tree that needs it is written */
  private failure?: unknown
  readonly stats: ArchiveStats = {files: 0, dirs: 0, others: 0, bytes: 0, newBytes: 0, newBlobs: 0}

  constructor(private readonly repo: Repository, private readonly onBytes?: ArchiverProgress) {
    this.dirs.set('', {children: new Map()})
  }

  private dir(path: string): DirBuild {
    let d = this.dirs.get(path)
    if (!d) {
      d = {children: new Map()}
      this.dirs.set(path, d)
      // make sure the parent knows about this directory even if its entry never comes
      if (path !== '') this.dir(parentOf(path))
    }
    return d
  }

  /** Add one entry. Its content, if any, is consumed now. */
  async add(entry: SourceEntry): Promise<void> {
    const path = normalise(entry.path)
    const node: TreeNode = {
      name: path === '' ? '' : baseOf(path),
      type: entry.type,
      mode: entry.mode & 0o7777,
      uid: entry.uid,
      gid: entry.gid,
      mtime: entry.mtime,
    }
    if (entry.xattrs && Object.keys(entry.xattrs).length > 0) node.xattrs = entry.xattrs
    if (entry.ctime) node.ctime = entry.ctime
    if (entry.inode !== undefined) node.inode = entry.inode
    switch (entry.type) {
      case 'dir':
        if (entry.opaque) node.opaque = true
        this.dir(path).node = node
        this.stats.dirs++
        if (path === '') return
        break
      case 'file': {
        if (entry.reuse) {
          node.size = entry.reuse.size
          node.content = entry.reuse.content
          this.stats.files++
          this.stats.bytes += entry.reuse.size
          this.stats.reused = (this.stats.reused ?? 0) + 1
          break
        }
        const {content, size, saved} = await this.chunkStream(entry.content, entry.fresh === true)
        node.size = size
        node.content = content
        if (saved) (this.dir(parentOf(path)).saves ??= []).push(saved)
        this.stats.files++
        break
      }
      case 'symlink':
      case 'hardlink':
        node.target = entry.target ?? ''
        if (entry.type === 'hardlink') node.target = normalise(node.target)
        this.stats.others++
        break
      case 'chardev':
      case 'blockdev':
        node.devMajor = entry.devMajor ?? 0
        node.devMinor = entry.devMinor ?? 0
        this.stats.others++
        break
      default:
        this.stats.others++
    }
    if (path === '') throw new Error('the root of an archive must be a directory')
    this.dir(parentOf(path)).children.set(node.name, node)
  }

  /** true when every chunk is in the repository (a parent's file can be reused as it is) */
  hasAll(ids: string[]): boolean {
    for (const id of ids) if (!this.repo.hasBlob(id)) return false
    return true
  }

  /** Chunk a stream and store its chunks; returns the chunk ids and the byte count. */
  async chunkContent(content?: AsyncIterable<Buffer>): Promise<{content: string[]; size: number}> {
    const {content: ids, size, saved} = await this.chunkStream(content)
    await saved
    this.throwIfFailed()
    return {content: ids, size}
  }

  /**
   * Chunk a stream, handing each chunk to the repository without waiting for it to be stored
   * (at most IN_FLIGHT_BYTES in flight across all files): a blob worker compresses while the
   * next chunks and files are read and hashed. `content` gets each chunk's id in place as its
   * save finishes; `saved` settles (never rejects: failures go to this.failure) when all have.
   */
  private async chunkStream(content?: AsyncIterable<Buffer>, fresh = false): Promise<{content: string[]; size: number; saved?: Promise<void>}> {
    const ids: string[] = []
    let size = 0
    if (!content) return {content: ids, size}
    const it = content[Symbol.asyncIterator]()
    const first = await it.next()
    if (first.done) return {content: ids, size}
    // results of the pieces handed over, in order; `ids` is filled from them once all are in
    const parts: SaveResult[][] = []
    const pieces: Promise<void>[] = []
    // the pieces are cut as one stream, in order (most files come in one)
    const writer = this.repo.contentWriter()
    const hand = async (piece: Buffer, last: boolean): Promise<void> => {
      const n = piece.length
      size += n
      this.stats.bytes += n
      this.onBytes?.(n)
      this.throwIfFailed()
      await this.reserve(n)
      const k = parts.push([]) - 1
      pieces.push(
        writer(piece, fresh, last)
          .then(
            (rs) => {
              parts[k] = rs
            },
            (e: unknown) => {
              this.failure ??= e
            },
          )
          .finally(() => this.release(n)),
      )
    }
    const collected = (): Promise<void> =>
      Promise.all(pieces).then(() => {
        for (const r of parts.flat()) {
          ids.push(r.id)
          if (r.added > 0) {
            this.stats.newBytes += r.added
            this.stats.newBlobs++
          }
        }
      })
    // a piece is handed over once the next is known to exist (the last one ends the stream)
    let current = first.value
    for (let next = await it.next(); !next.done; next = await it.next()) {
      await hand(current, false)
      current = next.value
    }
    await hand(current, true)
    return {content: ids, size, saved: collected()}
  }

  private async reserve(n: number): Promise<void> {
    while (this.inFlight > 0 && (this.inFlight + n > IN_FLIGHT_BYTES || this.saving >= IN_FLIGHT_SAVES)) {
      await new Promise<void>((resolve) => this.waiters.push(resolve))
    }
    this.inFlight += n
    this.saving++
  }

  private release(n: number): void {
    this.inFlight -= n
    this.saving--
    // a save leaves garbage on the JS heap (promises, closures) besides its bytes: with tiny
    // files that, not the bytes, is what fills V8's old generation (gc.ts watches the heap)
    collectGarbage(0)
    const w = this.waiters
    this.waiters = []
    for (const wake of w) wake()
  }

  private throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure
  }

  /**
   * A depth-first source is done with a directory: its tree is written as soon as its files'
   * chunks are saved (without holding up the walk, so the blob workers always have the next
   * files), and its entries are forgotten then, so memory holds only the open directories and
   * those waiting for their saves, not the whole tree. Its parent's tree waits for it.
   */
  async closeDir(path: string): Promise<void> {
    const p = normalise(path)
    const d = this.dirs.get(p)
    if (p === '' || !d || d.closed) return
    d.closed = true
    const job = this.writeDir(p).then(
      () => undefined,
      (e: unknown) => {
        this.failure ??= e
      },
    )
    ;(this.dir(parentOf(p)).saves ??= []).push(job)
  }

  /**
   * A depth-first source is done with a directory that it found exactly as the parent snapshot
   * recorded it, itself and everything below it: its tree is `subtree`, the parent's, which is
   * not serialised and hashed again. False (nothing done) when that tree is not in the
   * repository or the directory has saves of its own: then closeDir() it.
   */
  closeDirAs(path: string, subtree: string): boolean {
    const p = normalise(path)
    const d = this.dirs.get(p)
    if (p === '' || !d || d.closed || (d.saves?.length ?? 0) > 0 || !d.node || !this.repo.hasBlob(subtree)) return false
    d.closed = true
    d.node.subtree = subtree
    this.dirs.delete(p)
    return true
  }

  /** Write one directory's tree once its files and subdirectories are saved, and link it to its parent. */
  private async writeDir(path: string): Promise<string> {
    const d = this.dirs.get(path)!
    if (d.saves) await Promise.all(d.saves)
    this.throwIfFailed()
    const nodes = [...d.children.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    const r = await this.repo.saveTree({nodes} satisfies Tree)
    if (r.added > 0) this.stats.newBytes += r.added
    if (path !== '') {
      const parent = this.dir(parentOf(path))
      const name = baseOf(path)
      let node = parent.children.get(name)
      if (!node || node.type !== 'dir') {
        // a directory known only from its children: record it with neutral metadata
        node = d.node ?? {name, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [0, 0]}
        parent.children.set(name, node)
      }
      node.subtree = r.id
      this.dirs.delete(path)
    }
    return r.id
  }

  /** Write all trees still open, deepest first; returns the root tree id. */
  async finish(): Promise<string> {
    // closed directories are being written already: their parents wait for them
    const paths = [...this.dirs.entries()].filter(([, d]) => !d.closed).map(([p]) => p).sort((a, b) => depth(b) - depth(a))
    let root = ''
    for (const path of paths) {
      const id = await this.writeDir(path)
      if (path === '') root = id
    }
    return root
  }

  /** The root directory's own metadata (mode, owner, mtime) if the source gave it. */
  rootNode(): TreeNode | undefined {
    return this.dirs.get('')?.node
  }
}

export function normalise(p: string): string {
  let s = p
  while (s.startsWith('./')) s = s.slice(2)
  s = s.replace(/^\/+/, '').replace(/\/+$/, '')
  if (s === '.') return ''
  return s
}

export function parentOf(p: string): string {
  const i = p.lastIndexOf('/')
  return i < 0 ? '' : p.slice(0, i)
}

export function baseOf(p: string): string {
  const i = p.lastIndexOf('/')
  return i < 0 ? p : p.slice(i + 1)
}

function depth(p: string): number {
  if (p === '') return 0
  let n = 1
  for (let i = 0; i < p.length; i++) if (p.charCodeAt(i) === 47) n++
  return n
}

