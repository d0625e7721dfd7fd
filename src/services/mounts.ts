/** What snapshot and restore both need to know about a container's mounts. */
import * as path from 'node:path'

/** the destinations of the other mounts inside `m` (a volume at /app/node_modules in a bind of /app), relative to its own */
export function innerMounts(mounts: {destination: string}[], m: {destination: string}): string[] {
  const under = m.destination === '/' ? '/' : `${m.destination}/`
  return mounts.filter((o) => o !== m && o.destination.startsWith(under)).map((o) => path.posix.relative(m.destination, o.destination))
}
