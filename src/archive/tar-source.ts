/**
 * Read a tar stream (Docker's getArchive or export) into the archiver.
 */
import {Readable} from 'node:stream'
import * as tar from 'tar-stream'
import {HolyshipError, classify, isHolyshipError} from '../errors.js'
import {NodeType} from '../repo/format.js'
import {Archiver, SourceEntry, normalise} from './archiver.js'
import {badRelPath} from './tree-check.js'

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

/**
 * A tar stream comes from the engine; a broken or hostile one (a path with `..`, a NUL, a hard
 * link that climbs out, a non-directory root) must not become a tree: DOCKER_FAILED, naming
 * the entry. Paths are normalised first (`./`, leading `/`, duplicate `/` are harmless).
 */
function unsafeEntry(what: string, name: string, why: string): HolyshipError {
  return new HolyshipError('DOCKER_FAILED', `the engine's tar stream has an unsafe ${what} ${JSON.stringify(name)} (${why}); nothing was recorded`)
}

function cleanPath(p: string): string {
  return normalise(p)
    .split('/')
    .filter((c) => c !== '' && c !== '.')
    .join('/')
}

/** `path` without its first component (getArchive names entries after the requested path) */
function stripFirst(path: string): string {
  const i = path.indexOf('/')
  return i < 0 ? '' : path.slice(i + 1)
}

type TarEntry = AsyncIterable<Buffer> & {header: tar.Header; resume(): void}

/**
 * The entries of a tar stream, each with its cleaned path (the first component dropped with
 * `strip`). The stream's error ends the iteration with it; the stream and the parser are
 * destroyed when the caller stops, early or not.
 */
async function* tarEntries(stream: Readable, strip: boolean): AsyncGenerator<{entry: TarEntry; path: string}> {
  const extract = tar.extract()
  stream.on('error', (e) => extract.destroy(e))
  stream.pipe(extract)
  try {
    for await (const e of extract) {
      const entry = e as unknown as TarEntry
      const path = cleanPath(entry.header.name)
      yield {entry, path: strip ? stripFirst(path) : path}
    }
  } finally {
    stream.destroy()
    extract.destroy()
  }
}

/** Feed every entry of a tar stream to the archiver. */
export async function archiveTar(stream: Readable, archiver: Archiver, opts: TarSourceOptions = {}): Promise<void> {
  try {
    for await (const {entry, path} of tarEntries(stream, opts.stripFirst === true)) {
      const name = entry.header.name
      if (path !== '') {
        const why = badRelPath(path)
        if (why) throw unsafeEntry('path', name, why)
      }
      const se = tarHeaderToEntry(entry.header, path)
      if (se && se.type === 'hardlink') {
        const t = opts.stripFirst ? stripFirst(cleanPath(se.target ?? '')) : cleanPath(se.target ?? '')
        const why = badRelPath(t)
        if (why) throw unsafeEntry('hard link target', se.target ?? '', why)
        se.target = t
      }
      if (se && se.type === 'symlink' && (se.target === '' || se.target?.includes('\0'))) throw unsafeEntry('symlink target', se.target ?? '', 'empty or NUL')
      if (!se || (opts.filter && !opts.filter(path, se.type))) {
        entry.resume()
        continue
      }
      // tar-stream decodes names as UTF-8 (pax records always): bytes that are not UTF-8
      // come out as U+FFFD, a name that does not exist. An entry to record with one is refused,
      // rather than recorded wrong (what the filter leaves out, the image's own files, is not
      // looked at). A name that really holds U+FFFD is refused too: the two look the same here.
      for (const [what, v] of [['path', name], ['link target', entry.header.linkname ?? '']]) {
        if (v.includes('\ufffd')) {
          throw new HolyshipError(
            'DOCKER_FAILED',
            `the engine's tar stream has a ${what} that is not UTF-8 (${JSON.stringify(v)}), which the api reader cannot keep; snapshot on the engine's host with the direct reader, which keeps any name; nothing was recorded`,
          )
        }
      }
      if (path === '' && se.type !== 'dir') {
        throw new HolyshipError('DOCKER_FAILED', `the engine's tar stream has a ${se.type} as its root entry ${JSON.stringify(name)}, not a directory (a mount of a single file is not supported); nothing was recorded`)
      }
      if (se.type === 'file') se.content = entry
      await archiver.add(se)
      // make sure nothing of the entry is left unread (the archiver reads it fully)
      entry.resume()
    }
  } catch (e) {
    // ours to report as they are: HolyshipErrors, a full disk, permissions (the repository side)
    if (isHolyshipError(e) || classify(e)) throw e
    // a stream cut short (the engine went away) or not a tar at all
    throw new HolyshipError('DOCKER_FAILED', `reading the engine's tar stream failed: ${(e as Error).message}`, {cause: e})
  }
}

/**
 * The first entry of getArchive's stream of a directory that is not one of the paths `inner`
 * (relative to the directory) nor below one, by its path relative to the directory; '' when
 * the archive's root is not a directory; undefined when there is no such entry. The stream is
 * read up to that entry (what comes before it, an inner mount's files too, read and dropped)
 * and closed then.
 */
export async function firstEntryOutside(stream: Readable, inner: string[]): Promise<string | undefined> {
  let first = true
  for await (const {entry, path} of tarEntries(stream, true)) {
    entry.resume()
    // the archive's first entry is the directory itself, under its base name
    if (first) {
      if (entry.header.type !== 'directory') return ''
      first = false
      continue
    }
    if (path !== '' && !inner.some((i) => path === i || path.startsWith(`${i}/`) || i.startsWith(`${path}/`))) return path
  }
  return undefined
}
