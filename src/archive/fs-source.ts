/**
 * Read a host directory (a volume's Mountpoint, a bind mount's source, or an overlay2
 * writable layer) straight from disk: the fast path when holyship runs as root on the
 * engine's host. Files that change while they are read never fail the snapshot: each is
 * stored as read and reported in stats.changed.
 */
import {execFile} from 'node:child_process'
import {createReadStream, promises as fsp, Stats} from 'node:fs'
import * as path from 'node:path'
import {promisify} from 'node:util'
import debugFactory from 'debug'
import {Archiver, SourceEntry} from './archiver.js'

const debug = debugFactory('holyship:fs-source')
const execFileP = promisify(execFile)

export interface FsSourceOptions {
  /** an overlay2 upper dir: 0/0 character devices are whiteouts, trusted.overlay.opaque marks opaque dirs */
  overlay?: boolean
  /** relative paths (no leading /) to leave out, with everything below them */
  exclude?: Set<string>
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

function mtimeOf(st: Stats & {mtimeNs?: bigint}): [number, number] {
  const ns = st.mtimeNs ?? BigInt(Math.round(st.mtimeMs * 1e6))
  const sec = ns / 1_000_000_000n
  return [Number(sec), Number(ns - sec * 1_000_000_000n)]
}

/** Walk `root` depth-first and add every entry to the archiver. */
export async function archiveDir(root: string, archiver: Archiver, opts: FsSourceOptions = {}): Promise<string[]> {
  const changed: string[] = []
  const xattrs = await readXattrs(root)
  const links = new Map<string, string>()
  const meta = (rel: string, st: Stats): Omit<SourceEntry, 'type'> => {
    const x = xattrs.get(rel)
    let xa: Record<string, string> | undefined
    if (x) {
      xa = {}
      for (const [k, v] of Object.entries(x)) if (!(opts.overlay && k.startsWith('trusted.overlay.'))) xa[k] = v
      if (Object.keys(xa).length === 0) xa = undefined
    }
    return {path: rel, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtime: mtimeOf(st as Stats & {mtimeNs?: bigint}), xattrs: xa}
  }

  const visit = async (rel: string): Promise<void> => {
    const abs = rel === '' ? root : path.join(root, rel)
    let st: Stats
    try {
      st = (await fsp.lstat(abs, {bigint: false})) as Stats
      const big = await fsp.lstat(abs, {bigint: true})
      ;(st as Stats & {mtimeNs?: bigint}).mtimeNs = big.mtimeNs
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
      for (const name of names) {
        const childRel = rel === '' ? name : `${rel}/${name}`
        if (opts.exclude?.has(childRel)) continue
        await visit(childRel)
      }
      return
    }
    if (st.isFile()) {
      if (st.nlink > 1) {
        const key = `${st.dev}:${st.ino}`
        const first = links.get(key)
        if (first !== undefined) {
          await archiver.add({...meta(rel, st), type: 'hardlink', target: first})
          return
        }
        links.set(key, rel)
      }
      let stream
      try {
        stream = createReadStream(abs, {highWaterMark: 1024 * 1024})
        await new Promise<void>((resolve, reject) => {
          stream!.once('open', () => resolve())
          stream!.once('error', reject)
        })
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
          changed.push(rel)
          return
        }
        throw e
      }
      await archiver.add({...meta(rel, st), type: 'file', content: stream as AsyncIterable<Buffer>})
      const after = await fsp.lstat(abs).catch(() => undefined)
      if (!after || after.size !== st.size || after.mtimeMs !== st.mtimeMs) changed.push(rel)
      return
    }
    if (st.isSymbolicLink()) {
      const target = await fsp.readlink(abs)
      await archiver.add({...meta(rel, st), type: 'symlink', target})
      return
    }
    if (st.isCharacterDevice()) {
      if (opts.overlay && st.rdev === 0) {
        await archiver.add({...meta(rel, st), type: 'whiteout'})
        return
      }
      await archiver.add({...meta(rel, st), type: 'chardev', devMajor: major(st.rdev), devMinor: minor(st.rdev)})
      return
    }
    if (st.isBlockDevice()) {
      await archiver.add({...meta(rel, st), type: 'blockdev', devMajor: major(st.rdev), devMinor: minor(st.rdev)})
      return
    }
    if (st.isFIFO()) {
      await archiver.add({...meta(rel, st), type: 'fifo'})
      return
    }
    // sockets are not archived (they cannot be restored meaningfully)
    debug('skipping socket %s', abs)
  }
  await visit('')
  return changed
}
