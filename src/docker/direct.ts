/**
 * Reading and writing the engine's files directly (a volume's directory, a container's
 * writable layer) instead of through the API's tar streams, which ran ~100 MB/s here: only
 * where this process is root on the engine's own host.
 */
import {promises as fsp} from 'node:fs'
import {HolyshipError} from '../errors.js'
import {Engine} from './engine.js'

/** how a snapshot reads (--reader) or a restore writes (--writer) a container's files */
export type Access = 'auto' | 'api' | 'direct'

/** what proves the engine's files are on this host: a container's state directory, or a volume's Mountpoint */
export interface Probe {
  containerId?: string
  mountpoint?: string
}

/**
 * Can this process read (or write) the engine's files directly? Only as root, over a local
 * socket, without user namespace remapping, when the engine's own directories are here: the
 * container's state directory (named by its random 256-bit id) proves it is the same host;
 * for a standalone volume, its Mountpoint under the engine's root.
 */
export async function directAccess(engine: Engine, probe: Probe): Promise<boolean> {
  if (!engine.isLocalSocket || process.getuid?.() !== 0) return false
  try {
    const info = await engine.info()
    // with user namespace remapping the files on disk have shifted owners: the API shifts them back, a direct read or write would not
    if ((info.SecurityOptions ?? []).some((o) => o.includes('name=userns'))) return false
    const root = info.DockerRootDir
    if (probe.containerId) {
      return (await fsp.stat(`${root}/containers/${probe.containerId}`)).isDirectory()
    }
    if (probe.mountpoint) {
      return probe.mountpoint.startsWith(`${root}/`) && (await fsp.stat(probe.mountpoint)).isDirectory()
    }
    return false
  } catch {
    return false
  }
}

/**
 * Whether to go direct, as `want` says: never with `api`; with `auto` where directAccess and
 * `usable` (what else the caller needs, asked only then) allow it; with `direct` the same, or
 * USAGE with `refusal` where they do not.
 */
export async function goDirect(engine: Engine, want: Access, probe: Probe, refusal: string, usable?: () => Promise<boolean>): Promise<boolean> {
  if (want === 'api') return false
  const ok = (await directAccess(engine, probe)) && (usable === undefined || (await usable()))
  if (!ok && want === 'direct') throw new HolyshipError('USAGE', refusal)
  return ok
}

/** what volumeReadPath needs of a volume's inspect */
export interface VolumeSite {
  Driver?: string
  Mountpoint?: string
  Options?: Record<string, string> | null
}

/**
 * Where a direct read finds a volume's files on the engine's host, or undefined where only
 * the API can read them. A local volume without a mount of its own: its Mountpoint. One the
 * engine mounts (driver options `type` or `device`: an NFS share, a tmpfs, a bind of another
 * directory) is mounted there only while a container uses it; otherwise the Mountpoint is an
 * empty directory, and reading it would record an empty volume. A bind's source directory is
 * read instead; any other such volume, or another driver's, is read through the API, which
 * mounts it for the read.
 */
export function volumeReadPath(v: VolumeSite): string | undefined {
  if (v.Driver !== 'local' || typeof v.Mountpoint !== 'string') return undefined
  const o = v.Options ?? {}
  if (!o.type && !o.device) return v.Mountpoint
  return bindDevice(v.Driver, o)
}

/**
 * The directory of the host a local volume binds (driver options `o=bind`, `device=DIR`:
 * compose's `driver_opts` for a volume "at" a host path), where its files are kept whatever
 * the volume is named and after it is removed; undefined for any other volume.
 */
export function bindDevice(driver: string | undefined, options: Record<string, string> | null | undefined): string | undefined {
  const o = options ?? {}
  if ((driver ?? 'local') !== 'local' || typeof o.device !== 'string' || !o.device.startsWith('/')) return undefined
  return (o.o ?? '').split(',').some((x) => x === 'bind' || x === 'rbind') ? o.device : undefined
}
