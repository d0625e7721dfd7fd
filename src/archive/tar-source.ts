/**
 * Read a tar stream (Docker's getArchive or export) into the archiver.
 */
import {Readable} from 'node:stream'
import {HolyshipError, classify, isHolyshipError} from '../errors.js'
import {NodeType} from '../repo/format.js'
import {Archiver, FILE_ROOT, SourceEntry, normalise} from './archiver.js'
import {hasEscapes, nameFromBytes} from './names.js'
import {TarItem, TarRecord, readTar} from './tar-reader.js'
import {TYPEFLAG} from './tarwriter.js'
import {badRelPath} from './tree-check.js'

export interface TarSourceOptions {
  /** drop the first path component (getArchive names entries after the requested path) */
  stripFirst?: boolean
  /** keep only entries for which this returns true (path is normalised, relative) */
  filter?: (path: string) => boolean
  /**
   * a root entry that is a file (getArchive of a bind-mounted file) is recorded under this
   * name, in a root directory made up for it, and one that is another non-directory (a
   * device) not at all; without it such a root is refused
   */
  fileRoot?: string
  /**
   * directories to record as opaque (overlay's: made anew over the image's, whose entries
   * below are all gone); `seen` is called with each one the stream has
   */
  opaque?: {has: (path: string) => boolean; seen: (path: string) => void}
}

/** what each typeflag is: the ones our writer writes, and the old and contiguous flags of a file */
const TYPES: Record<string, NodeType | undefined> = {...Object.fromEntries(Object.entries(TYPEFLAG).map(([type, flag]) => [flag, type])), '\0': 'file', '7': 'file'}

/** the type of entry a tar header is; undefined for a flag that is not a file system's */
export function tarType(h: TarRecord): NodeType | undefined {
  return TYPES[h.typeflag]
}

/** why an entry cannot be recorded as it is: a type that is not a file system's, or a GNU sparse file (its map would be stored as its content) */
function unrecordable(h: TarRecord): string | undefined {
  if (!tarType(h)) return `an entry of type ${JSON.stringify(h.typeflag)}, which holyship cannot record`
  for (const k of h.pax.keys()) if (k.startsWith('GNU.sparse.')) return 'a GNU sparse file, which holyship cannot read'
  return undefined
}

/** A tar header as an archiver entry (names as names.ts keeps them; xattr values base64 of their bytes); undefined for what cannot be recorded (unrecordable). */
export function tarHeaderToEntry(h: TarRecord, path: string): SourceEntry | undefined {
  const type = tarType(h)
  if (!type || unrecordable(h)) return undefined
  const xattrs: Record<string, string> = {}
  for (const [k, v] of h.pax) if (k.startsWith('SCHILY.xattr.')) xattrs[k.slice('SCHILY.xattr.'.length)] = v.toString('base64')
  return {
    path,
    type,
    mode: h.mode & 0o7777,
    uid: h.uid,
    gid: h.gid,
    mtime: h.mtime,
    size: type === 'file' ? h.size : undefined,
    target: type === 'symlink' || type === 'hardlink' ? nameFromBytes(h.linkname) : undefined,
    devMajor: type === 'chardev' || type === 'blockdev' ? h.devMajor : undefined,
    devMinor: type === 'chardev' || type === 'blockdev' ? h.devMinor : undefined,
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

/**
 * The entries of a tar stream, each with its cleaned path (the first component dropped with
 * `strip`). The stream's error ends the iteration with it; the stream is destroyed when the
 * caller stops, early or not.
 */
async function* tarEntries(stream: Readable, strip: boolean): AsyncGenerator<{entry: TarItem; name: string; path: string}> {
  try {
    for await (const entry of readTar(stream)) {
      const name = nameFromBytes(entry.header.name)
      const path = cleanPath(name)
      yield {entry, name, path: strip ? stripFirst(path) : path}
    }
  } finally {
    stream.destroy()
  }
}

/** Feed every entry of a tar stream to the archiver. Returns the root entry's type (undefined: the stream had no entries). */
export async function archiveTar(stream: Readable, archiver: Archiver, opts: TarSourceOptions = {}): Promise<NodeType | undefined> {
  let rootType: NodeType | undefined
  try {
    for await (const {entry, name, path} of tarEntries(stream, opts.stripFirst === true)) {
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
      // what is not recorded is skipped when the next entry is read
      if (opts.filter && !opts.filter(path)) continue
      // never dropped without a word, nor recorded as something else
      if (!se) throw new HolyshipError('DOCKER_FAILED', `the engine's tar stream has ${JSON.stringify(name)} as ${unrecordable(entry.header)}; nothing was recorded`)
      if (path === '') {
        rootType ??= se.type
        if (se.type !== 'dir' && opts.fileRoot !== undefined) {
          // the caller records what is not a file as a mount without content
          if (se.type !== 'file') continue
          await archiver.add(FILE_ROOT)
          se.path = opts.fileRoot
        } else if (se.type !== 'dir') {
          throw new HolyshipError('DOCKER_FAILED', `the engine's tar stream has a ${se.type} as its root entry ${JSON.stringify(name)}, not a directory; nothing was recorded`)
        }
      }
      if (se.type === 'file') se.content = entry.body
      if (se.type === 'dir' && opts.opaque?.has(path)) {
        se.opaque = true
        opts.opaque.seen(path)
      }
      await archiver.add(se)
    }
    return rootType
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
    // the archive's first entry is the directory itself, under its base name
    if (first) {
      if (tarType(entry.header) !== 'dir') return ''
      first = false
      continue
    }
    if (path !== '' && !inner.some((i) => path === i || path.startsWith(`${i}/`) || i.startsWith(`${path}/`))) return path
  }
  return undefined
}

/**
 * The container's layer through the API: `changes` (added, modified, deleted paths) picks what
 * of the export to record, and each deleted path becomes a whiteout. Returns the deleted paths
 * the engine could not spell (names that are not UTF-8), with a leading /.
 *
 * A deleted path the export still has is a directory made anew over the image's (rm -rf, then
 * mkdir: overlay's opaque directory, which an engine diffing natively names deleted; one that
 * diffs naively names each entry of the image's that is gone instead): recorded as opaque, not
 * as a whiteout, or the image's old entries in it would come back on restore.
 */
export async function archiveChanges(
  changes: {Path: string; Kind: number}[],
  mountPaths: Set<string>,
  exported: () => Promise<Readable>,
  archiver: Archiver,
): Promise<string[]> {
  const keep = new Set<string>()
  const deleted = new Set<string>()
  for (const c of changes) {
    const p = c.Path.replace(/^\/+/, '')
    if (mountPaths.has(p)) continue
    if (c.Kind === 2) deleted.add(p)
    else keep.add(p)
  }
  // every parent of a kept path is kept too, with its metadata
  for (const p of [...keep, ...deleted]) {
    for (let i = p.lastIndexOf('/'); i > 0; i = p.lastIndexOf('/', i - 1)) keep.add(p.slice(0, i))
  }
  // `changes` is JSON, where Go puts U+FFFD for each byte of a name that is not UTF-8; the
  // export's tar holds the bytes (escaped, names.ts): such a path is looked up as `changes`
  // spells it. Two names that differ only there are both kept: more than changed, never less
  const spelt = (set: Set<string>, p: string): string | undefined => (set.has(p) ? p : hasEscapes(p) && set.has(asGoJson(p)) ? asGoJson(p) : undefined)
  const remade = new Set<string>()
  const opaque = {has: (p: string) => spelt(deleted, p) !== undefined, seen: (p: string) => void remade.add(spelt(deleted, p)!)}
  const filter = (p: string): boolean => spelt(keep, p) !== undefined || spelt(deleted, p) !== undefined
  await archiveTar(await exported(), archiver, {filter, opaque})
  for (const p of deleted) {
    if (!remade.has(p)) await archiver.add({path: p, type: 'whiteout', mode: 0, uid: 0, gid: 0, mtime: [0, 0]})
  }
  return [...deleted].filter((p) => p.includes('\ufffd')).map((p) => `/${p}`)
}

/** a path as the engine's JSON spells it: each byte that is not UTF-8 (escaped here, names.ts) is U+FFFD */
export function asGoJson(p: string): string {
  return p.replace(/[\udc80-\udcff]/gu, '\ufffd')
}
