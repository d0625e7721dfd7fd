/**
 * The archiver turns a stream of filesystem entries (from a tar stream of the Docker API, or
 * from a walk of a host directory) into chunks and tree blobs. Entries may come in any order
 * as long as every entry's data is read when it arrives; trees are written once at the end,
 * deepest first, so the root tree id names everything below it.
 */
import {ArchiveStats, NodeType, Tree, TreeNode} from '../repo/format.js'
import {Chunker} from '../repo/chunker.js'
import {Repository} from '../repo/repository.js'

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
  /** regular files known unchanged since the parent snapshot: its chunk ids, not read again */
  reuse?: {content: string[]; size: number}
  ctime?: [number, number]
  inode?: number
}

interface DirBuild {
  node?: TreeNode
  children: Map<string, TreeNode>
}

export interface ArchiverProgress {
  (bytes: number): void
}

export class Archiver {
  private readonly dirs = new Map<string, DirBuild>()
  readonly stats: ArchiveStats = {files: 0, dirs: 0, others: 0, bytes: 0, newBytes: 0, newBlobs: 0}
  private readonly chunkerParams

  constructor(private readonly repo: Repository, private readonly onBytes?: ArchiverProgress) {
    this.chunkerParams = repo.config.chunker
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
        const {content, size} = await this.chunkContent(entry.content)
        node.size = size
        node.content = content
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
    const ids: string[] = []
    let size = 0
    if (!content) return {content: ids, size}
    const chunker = new Chunker(this.chunkerParams)
    const store = async (chunk: Buffer): Promise<void> => {
      const r = await this.repo.saveBlob('data', chunk)
      ids.push(r.id)
      if (r.added > 0) {
        this.stats.newBytes += r.added
        this.stats.newBlobs++
      }
    }
    for await (const buf of content) {
      size += buf.length
      this.stats.bytes += buf.length
      this.onBytes?.(buf.length)
      for (const chunk of chunker.push(buf)) await store(chunk)
    }
    const last = chunker.finish()
    if (last) await store(last)
    return {content: ids, size}
  }

  /**
   * A depth-first source is done with a directory: write its tree now and forget its
   * entries, so memory holds only the open directories, not the whole tree.
   */
  async closeDir(path: string): Promise<void> {
    const p = normalise(path)
    if (p === '' || !this.dirs.has(p)) return
    await this.writeDir(p)
  }

  /** Write one directory's tree (its subdirectories are written already) and link it to its parent. */
  private async writeDir(path: string): Promise<string> {
    const d = this.dirs.get(path)!
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
    const paths = [...this.dirs.keys()].sort((a, b) => depth(b) - depth(a))
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

