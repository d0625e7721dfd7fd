import {randomBytes} from 'node:crypto'
import {promises as fsp} from 'node:fs'
import * as path from 'node:path'
import {Backend, BackendEntry, BackendNotFound} from './backend.js'

/**
 * A repository in a local directory. put() writes a temporary file, fsyncs it, renames it
 * into place and fsyncs the directory, so a crash leaves either the old state or the whole
 * new object, never a torn one. Temporary files start with `.tmp-` and are ignored by list().
 */
export class LocalBackend implements Backend {
  readonly location: string

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

  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    let fh
    try {
      fh = await fsp.open(this.file(key), 'r')
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new BackendNotFound(key, this.location)
      throw e
    }
    try {
      const buf = Buffer.allocUnsafe(length)
      let done = 0
      while (done < length) {
        const {bytesRead} = await fh.read(buf, done, length - done, offset + done)
        if (bytesRead === 0) break
        done += bytesRead
      }
      if (done !== length) throw new Error(`${this.location}/${key}: short read (${done} of ${length} bytes at ${offset})`)
      return buf
    } finally {
      await fh.close()
    }
  }

  async put(key: string, data: Buffer): Promise<void> {
    const dest = this.file(key)
    const dir = path.dirname(dest)
    await fsp.mkdir(dir, {recursive: true})
    const tmp = path.join(dir, `.tmp-${randomBytes(8).toString('hex')}`)
    const fh = await fsp.open(tmp, 'wx', 0o644)
    try {
      await fh.writeFile(data)
      await fh.sync()
    } catch (e) {
      await fh.close().catch(() => {})
      await fsp.rm(tmp, {force: true})
      throw e
    }
    await fh.close()
    try {
      await fsp.rename(tmp, dest)
    } catch (e) {
      await fsp.rm(tmp, {force: true})
      throw e
    }
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

export async function syncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}
