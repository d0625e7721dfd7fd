import {randomBytes} from 'node:crypto'
import {closeSync, constants as fsc, promises as fsp, open, read, readSync} from 'node:fs'
import * as path from 'node:path'
import {promisify} from 'node:util'
import {Backend, BackendEntry, BackendExists, BackendNotFound, PutOptions} from './backend.js'

const openP = promisify(open)
const readP = (fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<number> =>
  new Promise((resolve, reject) => read(fd, buf, offset, length, position, (e, n) => (e ? reject(e) : resolve(n))))

/** idle pack files a read session keeps open at most */
const MAX_OPEN = 32
/** ranges shorter than this are read with what follows them, in a read-ahead window (sessions only) */
const SMALL_RANGE = 64 * 1024
const WINDOW = 512 * 1024
/** read-ahead windows kept at most (the files a restore reads at the same time) */
const MAX_WINDOWS = 4

/** a read-ahead buffer: `length` bytes of its file from `start` */
interface ReadWindow {
  buf: Buffer
  start: number
  length: number
  owner?: OpenFile
}

/** an open object file, shared by the reads that use it */
interface OpenFile {
  key: string
  fd?: number
  /** set while the file is being opened */
  opening?: Promise<void>
  /** reads using it now */
  refs: number
  /** the file's read-ahead window, while it has one */
  window?: ReadWindow
}

/**
 * The complete file `tmp` at `dest` unless something is there (EEXIST): link() fails on an
 * existing name where rename() replaces it. A file system without hard links (vfat, exFAT,
 * some FUSE mounts) gets an exclusive copy, synced, instead.
 */
async function placeNew(tmp: string, dest: string): Promise<void> {
  try {
    await fsp.link(tmp, dest)
    return
  } catch (e) {
    if (!['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS'].includes((e as NodeJS.ErrnoException).code ?? '')) throw e
  }
  await fsp.copyFile(tmp, dest, fsc.COPYFILE_EXCL)
  const fh = await fsp.open(dest, 'r+')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/**
 * A repository in a local directory. put() writes a temporary file, fsyncs it, renames it
 * into place and fsyncs the directory, so a crash leaves either the old state or the whole
 * new object, never a torn one. Temporary files start with `.tmp-` and are ignored by list().
 */
export class LocalBackend implements Backend {
  readonly location: string
  /** open object files (read sessions keep them), least recently used first */
  private readonly handles = new Map<string, OpenFile>()
  /** read sessions running (retainReads) */
  private sessions = 0
  /** read-ahead windows, least recently used first */
  private windows: ReadWindow[] = []

  constructor(readonly root: string) {
    this.location = path.resolve(root)
  }

  private file(key: string): string {
    if (key.startsWith('/') || key.split('/').some((p) => p === '..' || p === '' || p === '.')) {
      throw new Error(`invalid backend key: ${JSON.stringify(key)}`)
    }
    return path.join(this.location, key)
  }

  async get(key: string): Promise<Buffer> {
    try {
      return await fsp.readFile(this.file(key))
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new BackendNotFound(key, this.location)
      throw e
    }
  }

  /**
   * Read `length` bytes at `offset`. Inside a read session (retainReads) the pack file stays
   * open for the next read, and a small range is read together with what follows it (a
   * read-ahead window): a restore asks for the blobs of a pack mostly in the order they were
   * written, so the next small blobs are served from memory instead of one system call each.
   * Outside a session every call opens and closes the file, as a plain store would.
   */
  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    const h = await this.acquire(key)
    try {
      if (this.sessions > 0 && length < SMALL_RANGE) return this.fromWindow(h, offset, length)
      const buf = Buffer.allocUnsafeSlow(length)
      let done = 0
      while (done < length) {
        const n = await readP(h.fd!, buf, done, length - done, offset + done)
        if (n === 0) break
        done += n
      }
      if (done !== length) throw this.shortRead(key, done, length, offset)
      return buf
    } finally {
      this.release(h)
    }
  }

  /** the object's file, open for reads (kept open for the next one inside a read session) */
  async openFile(key: string): Promise<{fd: number; release: () => void}> {
    const h = await this.acquire(key)
    let released = false
    return {
      fd: h.fd!,
      release: () => {
        if (released) return
        released = true
        this.release(h)
      },
    }
  }

  /**
   * Begin a read session: until the returned function is called, pack files read by getRange
   * stay open (at most MAX_OPEN idle ones, least recently used closed first) and small reads
   * come from read-ahead windows. The files are closed when the last session ends. Objects
   * must not be replaced while a session reads them (packs never are: they are immutable).
   */
  retainReads(): () => void {
    this.sessions++
    let ended = false
    return () => {
      if (ended) return
      ended = true
      if (--this.sessions === 0) {
        for (const h of [...this.handles.values()]) if (h.refs === 0) this.closeHandle(h)
        this.windows = []
      }
    }
  }

  /** the open file of `key`, shared by concurrent readers (counted in refs) */
  private async acquire(key: string): Promise<OpenFile> {
    let h = this.handles.get(key)
    if (h) {
      // most recently used last
      this.handles.delete(key)
      this.handles.set(key, h)
      h.refs++
      if (h.fd === undefined) {
        try {
          await h.opening
        } catch (e) {
          h.refs--
          throw e
        }
      }
      return h
    }
    const file = this.file(key)
    const opened: OpenFile = {key, refs: 1}
    opened.opening = openP(file, fsc.O_RDONLY).then(
      (fd) => {
        opened.fd = fd
        opened.opening = undefined
      },
      (e: NodeJS.ErrnoException) => {
        if (this.handles.get(key) === opened) this.handles.delete(key)
        throw e.code === 'ENOENT' ? new BackendNotFound(key, this.location) : e
      },
    )
    this.handles.set(key, opened)
    try {
      await opened.opening
    } catch (e) {
      opened.refs--
      throw e
    }
    return opened
  }

  private release(h: OpenFile): void {
    if (--h.refs > 0) return
    if (this.sessions === 0 || this.handles.get(h.key) !== h) {
      this.closeHandle(h)
      return
    }
    // a session keeps idle files open, but only so many
    if (this.handles.size > MAX_OPEN) {
      for (const other of this.handles.values()) {
        if (this.handles.size <= MAX_OPEN) break
        if (other.refs === 0) this.closeHandle(other)
      }
    }
  }

  private closeHandle(h: OpenFile): void {
    if (this.handles.get(h.key) === h) this.handles.delete(h.key)
    if (h.window) h.window.owner = undefined
    h.window = undefined
    if (h.fd !== undefined) {
      const fd = h.fd
      h.fd = undefined
      closeSync(fd)
    }
  }

  /**
   * A small range, copied out of the file's read-ahead window; the window is read anew (at
   * `offset`) when it does not hold the range. Windows are a few buffers reused from file to
   * file, so reading ahead allocates nothing but the ranges handed out.
   */
  private fromWindow(h: OpenFile, offset: number, length: number): Buffer {
    let w = h.window
    if (!w || offset < w.start || offset + length > w.start + w.length) {
      w ??= this.takeWindow(h)
      w.length = 0
      let got = readSync(h.fd!, w.buf, 0, w.buf.length, offset)
      while (got < length) {
        const n = readSync(h.fd!, w.buf, got, w.buf.length - got, offset + got)
        if (n === 0) break
        got += n
      }
      if (got < length) throw this.shortRead(h.key, got, length, offset)
      w.start = offset
      w.length = got
    } else {
      // most recently used last
      const i = this.windows.indexOf(w)
      if (i >= 0 && i < this.windows.length - 1) {
        this.windows.splice(i, 1)
        this.windows.push(w)
      }
    }
    const out = Buffer.allocUnsafe(length)
    w.buf.copy(out, 0, offset - w.start, offset - w.start + length)
    return out
  }

  /** a window for `h`: a new one while there are fewer than MAX_WINDOWS, else the least recently used */
  private takeWindow(h: OpenFile): ReadWindow {
    let w: ReadWindow
    if (this.windows.length < MAX_WINDOWS) w = {buf: Buffer.allocUnsafeSlow(WINDOW), start: 0, length: 0}
    else {
      w = this.windows.shift()!
      if (w.owner) w.owner.window = undefined
    }
    w.owner = h
    h.window = w
    this.windows.push(w)
    return w
  }

  private shortRead(key: string, done: number, length: number, offset: number): Error {
    return new Error(`${this.location}/${key}: short read (${done} of ${length} bytes at ${offset})`)
  }

  async put(key: string, data: Buffer, opts: PutOptions = {}): Promise<void> {
    const dest = this.file(key)
    const dir = path.dirname(dest)
    await fsp.mkdir(dir, {recursive: true})
    const tmp = path.join(dir, `.tmp-${randomBytes(8).toString('hex')}`)
    const fh = await fsp.open(tmp, 'wx', 0o644)
    try {
      await fh.writeFile(data)
      // the bytes are in the page cache: the caller may reuse its buffer during the fsync
      opts.released?.()
      await fh.sync()
    } catch (e) {
      await fh.close().catch(() => {})
      await fsp.rm(tmp, {force: true})
      throw e
    }
    await fh.close()
    try {
      if (opts.ifAbsent) await placeNew(tmp, dest)
      else await fsp.rename(tmp, dest)
    } catch (e) {
      await fsp.rm(tmp, {force: true})
      if (opts.ifAbsent && (e as NodeJS.ErrnoException).code === 'EEXIST') throw new BackendExists(key, this.location)
      throw e
    }
    if (opts.ifAbsent) await fsp.rm(tmp, {force: true})
    await syncDir(dir)
  }

  async stat(key: string): Promise<number | undefined> {
    try {
      return (await fsp.stat(this.file(key))).size
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw e
    }
  }

  async list(prefix: string): Promise<BackendEntry[]> {
    const out: BackendEntry[] = []
    const base = prefix.replace(/\/+$/, '')
    const walk = async (rel: string): Promise<void> => {
      let entries
      try {
        entries = await fsp.readdir(path.join(this.location, rel), {withFileTypes: true})
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT' && rel === base) return
        throw e
      }
      for (const ent of entries) {
        if (ent.name.startsWith('.tmp-')) continue
        const childRel = rel ? `${rel}/${ent.name}` : ent.name
        if (ent.isDirectory()) await walk(childRel)
        else if (ent.isFile()) {
          // deleted between readdir and stat (a lock released, a pack pruned): not there, not an error
          const st = await fsp.stat(path.join(this.location, childRel)).catch((e: NodeJS.ErrnoException) => {
            if (e.code === 'ENOENT') return undefined
            throw e
          })
          if (st) out.push({key: childRel, size: st.size, mtime: st.mtimeMs})
        }
      }
    }
    await walk(base)
    out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    return out
  }

  async delete(key: string): Promise<void> {
    await fsp.rm(this.file(key), {force: true})
  }
}

/**
 * Begin a read session on `backend` when it is a LocalBackend (see LocalBackend.retainReads);
 * call the returned function when done. Other backends: nothing to do.
 */
export function retainReads(backend: Backend): () => void {
  return backend instanceof LocalBackend ? backend.retainReads() : () => undefined
}

export async function syncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}
