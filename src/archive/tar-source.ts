/**
 * Read a tar stream (Docker's getArchive or export) into the archiver.
 */
import {Readable} from 'node:stream'
import * as tar from 'tar-stream'
import {NodeType} from '../repo/format.js'
import {Archiver, SourceEntry, normalise} from './archiver.js'

export interface TarSourceOptions {
  /** drop the first path component (getArchive names entries after the requested path) */
  stripFirst?: boolean
  /** keep only entries for which this returns true (path is normalised, relative) */
  filter?: (path: string, type: NodeType) => boolean
}

const TYPES: Record<string, NodeType | undefined> = {
  file: 'file',
  'contiguous-file': 'file',
  directory: 'dir',
  symlink: 'symlink',
  link: 'hardlink',
  'character-device': 'chardev',
  'block-device': 'blockdev',
  fifo: 'fifo',
}

export function tarHeaderToEntry(h: tar.Header, path: string): SourceEntry | undefined {
  const type = TYPES[h.type ?? 'file']
  if (!type) return undefined
  const pax = (h.pax ?? {}) as Record<string, string>
  let mtime: [number, number] = [Math.floor((h.mtime?.getTime() ?? 0) / 1000), 0]
  if (pax.mtime) {
    const [s, frac = ''] = pax.mtime.split('.')
    mtime = [Number(s), Number((frac + '000000000').slice(0, 9))]
  }
  const xattrs: Record<string, string> = {}
  for (const [k, v] of Object.entries(pax)) {
    if (k.startsWith('SCHILY.xattr.')) xattrs[k.slice('SCHILY.xattr.'.length)] = Buffer.from(v, 'utf8').toString('base64')
  }
  return {
    path,
    type,
    mode: (h.mode ?? 0o644) & 0o7777,
    uid: h.uid ?? 0,
    gid: h.gid ?? 0,
    mtime,
    size: h.size,
    target: type === 'symlink' || type === 'hardlink' ? (h.linkname ?? '') : undefined,
    devMajor: h.devmajor,
    devMinor: h.devminor,
    xattrs: Object.keys(xattrs).length ? xattrs : undefined,
  }
}

/** Feed every entry of a tar stream to the archiver. */
export async function archiveTar(stream: Readable, archiver: Archiver, opts: TarSourceOptions = {}): Promise<void> {
  const extract = tar.extract()
  stream.on('error', (e) => extract.destroy(e))
  stream.pipe(extract)
  for await (const e of extract) {
    const entry = e as unknown as AsyncIterable<Buffer> & {header: tar.Header; resume(): void}
    let path = normalise(entry.header.name)
    if (opts.stripFirst) {
      const i = path.indexOf('/')
      path = i < 0 ? '' : path.slice(i + 1)
    }
    const se = tarHeaderToEntry(entry.header, path)
    if (se && se.type === 'hardlink' && opts.stripFirst && se.target) {
      const t = normalise(se.target)
      const i = t.indexOf('/')
      se.target = i < 0 ? '' : t.slice(i + 1)
    }
    if (!se || (opts.filter && !opts.filter(path, se.type))) {
      entry.resume()
      continue
    }
    if (se.type === 'file') se.content = entry
    await archiver.add(se)
    // make sure nothing of the entry is left unread (the archiver reads it fully)
    entry.resume()
  }
}
