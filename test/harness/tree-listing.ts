/**
 * Path-by-path listings of what a container sees, read through the Docker API, for
 * comparing an original container with its restored twin: type, mode, owner, mtime,
 * size, content hash, link target, and which paths are hard links of each other.
 */
import {createHash} from 'node:crypto'
import type {Readable} from 'node:stream'
import type Dockerode from 'dockerode'
import {nameFromBytes} from '../../src/archive/names.js'
import {readTar} from '../../src/archive/tar-reader.js'

export interface Listed {
  /** the tar typeflag: '0' a file, '5' a directory... */
  type: string
  mode: number
  uid: number
  gid: number
  mtime: number
  size: number
  sha256?: string
  link?: string
  /** the xattrs the engine's archive carries (security.capability), `name=hex` sorted */
  xattrs?: string[]
}

export async function listPath(docker: Dockerode, containerId: string, path: string): Promise<Map<string, Listed>> {
  const stream = (await docker.getContainer(containerId).getArchive({path})) as unknown as Readable
  const out = new Map<string, Listed>()
  // the byte-exact reader: names that are not UTF-8 and binary xattr values as they are
  for await (const {header: h, body} of readTar(stream)) {
    const hash = createHash('sha256')
    for await (const chunk of body) hash.update(chunk)
    const xattrs = [...h.pax].filter(([k]) => k.startsWith('SCHILY.xattr.')).map(([k, v]) => `${k.slice('SCHILY.xattr.'.length)}=${v.toString('hex')}`)
    out.set(nameFromBytes(h.name).replace(/\/$/, ''), {
      type: h.typeflag === '\0' ? '0' : h.typeflag,
      mode: h.mode & 0o7777,
      uid: h.uid,
      gid: h.gid,
      mtime: h.mtime[0],
      size: h.size,
      sha256: h.typeflag === '0' || h.typeflag === '\0' ? hash.digest('hex') : undefined,
      link: h.linkname.length ? nameFromBytes(h.linkname) : undefined,
      xattrs: xattrs.length ? xattrs.sort() : undefined,
    })
  }
  return out
}

/** Differences between two listings, as readable lines (empty when equal). */
export function compareListings(a: Map<string, Listed>, b: Map<string, Listed>, opts: {ignoreMtimeOf?: (p: string) => boolean} = {}): string[] {
  const problems: string[] = []
  for (const [p, x] of a) {
    const y = b.get(p)
    if (!y) {
      problems.push(`missing in restored: ${p}`)
      continue
    }
    const xs = {...x, mtime: opts.ignoreMtimeOf?.(p) ? 0 : x.mtime}
    const ys = {...y, mtime: opts.ignoreMtimeOf?.(p) ? 0 : y.mtime}
    if (JSON.stringify(xs) !== JSON.stringify(ys)) problems.push(`differs: ${p}: ${JSON.stringify(xs)} vs ${JSON.stringify(ys)}`)
  }
  for (const p of b.keys()) if (!a.has(p)) problems.push(`extra in restored: ${p}`)
  return problems
}
