/** What snapshot and restore both need to know about a container's mounts. */
import * as path from 'node:path'

/** the destinations of the other mounts inside `m` (a volume at /app/node_modules in a bind of /app), relative to its own */
export function innerMounts(mounts: {destination: string}[], m: {destination: string}): string[] {
  const under = m.destination === '/' ? '/' : `${m.destination}/`
  return mounts.filter((o) => o !== m && o.destination.startsWith(under)).map((o) => path.posix.relative(m.destination, o.destination))
}

/** an absolute path as mounts are compared: normalized, without a trailing slash */
export function cleanPath(p: string): string {
  return path.posix.normalize(p).replace(/(.)\/+$/, '$1')
}

/** one of two absolute paths is the other or inside it */
export function overlaps(a: string, b: string): boolean {
  const under = (x: string, y: string): boolean => x === y || x.startsWith(y === '/' ? '/' : `${y}/`)
  return under(a, b) || under(b, a)
}

/** the options of a bind spec (`-v SRC:DST:OPTS`) a restore keeps: propagation and SELinux relabelling */
const KEPT_BIND_OPTIONS = new Set(['shared', 'rshared', 'slave', 'rslave', 'private', 'rprivate', 'z', 'Z'])

/**
 * The options of the mount at `destination` beyond read-only that a restore must declare
 * again, from the container's recorded HostConfig: its propagation (`rshared`: a mount the
 * container makes inside shows on the host) and SELinux relabelling (`z`, `Z`: without it, a
 * container on an SELinux host cannot read its bind mount), from `-v` (Binds) or `--mount`
 * (Mounts, BindOptions.Propagation).
 */
export function keptMountOptions(hostConfig: Record<string, unknown>, destination: string): string[] {
  const at = (p: string): boolean => cleanPath(p) === destination
  const out: string[] = []
  for (const spec of Array.isArray(hostConfig.Binds) ? hostConfig.Binds : []) {
    if (typeof spec !== 'string') continue
    const parts = spec.split(':')
    if (parts.length === 3 && at(parts[1])) out.push(...parts[2].split(',').filter((o) => KEPT_BIND_OPTIONS.has(o)))
  }
  for (const m of Array.isArray(hostConfig.Mounts) ? (hostConfig.Mounts as {Type?: unknown; Target?: unknown; BindOptions?: {Propagation?: unknown} | null}[]) : []) {
    const p = m?.BindOptions?.Propagation
    if (m?.Type === 'bind' && typeof m.Target === 'string' && at(m.Target) && typeof p === 'string' && KEPT_BIND_OPTIONS.has(p)) out.push(p)
  }
  return [...new Set(out)]
}
