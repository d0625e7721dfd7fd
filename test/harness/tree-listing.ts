/**
 * Path-by-path listings of what a container sees, read through the Docker API, for
 * comparing an original container with its restored twin: type, mode, owner, mtime,
 * size, content hash, link target, and which paths are hard links of each other.
 */
import {createHash} from 'node:crypto'
import type Dockerode from 'dockerode'
import * as tar from 'tar-stream'

export interface Listed {
  type: string
  mode: number
  uid: number
  gid: number
  mtime: number
  size: number
  sha256?: string
  link?: string
}

export async function listPath(docker: Dockerode, containerId: string, path: string): Promise<Map<string, Listed>> {
  const stream = (await docker.getContainer(containerId).getArchive({path})) as unknown as NodeJS.ReadableStream
  const out = new Map<string, Listed>()
  const extract = tar.extract()
  ;(stream as unknown as {pipe(d: unknown): void}).pipe(extract)
  for await (const e of extract as unknown as AsyncIterable<AsyncIterable<Buffer> & {header: tar.Header; resume(): void}>) {
    const h = e.header
    const hash = createHash('sha256')
    for await (const chunk of e) hash.update(chunk)
    const name = h.name.replace(/\/$/, '')
    out.set(name, {
      type: h.type ?? 'file',
      mode: (h.mode ?? 0) & 0o7777,
      uid: h.uid ?? 0,
      gid: h.gid ?? 0,
      mtime: Math.floor((h.mtime?.getTime() ?? 0) / 1000),
      size: h.size ?? 0,
      sha256: h.type === 'file' ? hash.digest('hex') : undefined,
      link: h.linkname || undefined,
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
