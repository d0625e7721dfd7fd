/**
 * restore: re-create a container (image, writable-layer diff, config, networks, volumes and
 * bind mounts) or standalone volumes from a snapshot, or copy paths out to a host directory.
 * On failure everything this restore created is removed again.
 */
import {createHash, randomBytes} from 'node:crypto'
import {createReadStream, createWriteStream, promises as fsp} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {PassThrough, Readable} from 'node:stream'
import debugFactory from 'debug'
import {MAX_XATTRS_LISTED, SkippedEntry, TarOptions, XattrsNotSet, checkTreesReadable, fileContent, findNode, makeTarget, restoreToDir, writeTreeAsTar} from '../archive/restorer.js'
import {TarWriter} from '../archive/tarwriter.js'
import {Access, bindDevice, directAccess, goDirect} from '../docker/direct.js'
import {REPLACED_TAG, type Catalogue} from '../catalogue/catalogue.js'
import type Docker from 'dockerode'
import {ContainerInspect, Engine} from '../docker/engine.js'
import {HolyshipError} from '../errors.js'
import {Progress, silentProgress} from '../progress.js'
import {ContainerRecord, MountRecord, NetworkRecord, SnapshotManifest, TreeNode, manifestVersion} from '../repo/format.js'
import {Repository} from '../repo/repository.js'
import {cleanPath, innerMounts, keptMountOptions, overlaps} from './mounts.js'
import {BUILTIN_NETWORKS, endpointConfig, planNetworks, sameAddress, type NetworkPlan} from './networks.js'
import {recoverOnce} from './pause-journal.js'
import {StateGuard} from './state-guard.js'

const debug = debugFactory('holyship:restore')

export interface RestoreOptions {
  repo: Repository
  engine: Engine
  snapshotId: string
  manifest: SnapshotManifest
  /** new name of the container, or of the volume for a single-volume snapshot */
  name?: string
  volumePrefix?: string
  start?: boolean
  force?: boolean
  /**
   * restore what can be restored: files whose data is damaged are left out and listed in
   * `skipped` (the caller exits REPO_DAMAGED); the container is then not started
   */
  partial?: boolean
  progress?: Progress
  /**
   * how volumes are filled: `direct` writes into the new volume's directory on the engine's
   * host (root on that host, a local volume without options), `api` through the Docker API
   * (any engine), `auto` (the default) direct where it can
   */
  writer?: Access
  /**
   * the catalogue: with it, what --force replaces (a container, volumes) is snapshotted first
   * and put back if the restore fails (see keepReplaced); without it, or with keepReplaced
   * false, it is removed and lost if the restore fails
   */
  catalogue?: Catalogue
  keepReplaced?: boolean
  /** the shared repository lock the restore holds (for the snapshots of what it replaces) */
  lock?: {assertHeld(): Promise<void>}
  /**
   * volumes (by name) and bind sources (by host path) the container gets as they are on the
   * engine: not replaced, not filled (putBack: what the failed restore did not touch)
   */
  attachAsIs?: Set<string>
}

export interface RestoreResult {
  snapshot: string
  kind: 'container' | 'volume'
  container?: {id: string; name: string; image: string; started: boolean}
  volumes: {name: string; destination: string}[]
  binds: {source: string; destination: string}[]
  bytes: number
  /** --partial: what could not be restored (paths as the container sees them) */
  skipped?: SkippedEntry[]
  /** snapshots of what the restore replaced (--force), kept in the repository */
  replaced?: {id: string; kind: 'container' | 'volume'; name: string}[]
  /** what the user should know of a restore that succeeded (a network that differs from the snapshot's); absent when none */
  warnings?: string[]
  /** extended attributes the direct writer could not set (paths on the engine's host); absent when none */
  xattrsNotSet?: XattrsNotSet
}

/** what a restore of a container or volumes did, a line each (the commands print them) */
export function describeRestore(r: RestoreResult): string[] {
  const lines: string[] = []
  if (r.container) lines.push(`restored container ${r.container.name} (${r.container.id.slice(0, 12)})${r.container.started ? ', started' : ''}`)
  for (const v of r.volumes) lines.push(`restored volume ${v.name}${v.destination ? ` at ${v.destination}` : ''}`)
  for (const b of r.binds) lines.push(`restored bind mount ${b.source} at ${b.destination}`)
  for (const k of r.replaced ?? []) lines.push(`kept the ${k.kind} ${k.name} it replaced as snapshot ${k.id.slice(0, 12)} (tag ${REPLACED_TAG})`)
  return lines
}

/** what a restore that succeeded warns of, a line each (the commands print them): see `warnings`, and xattrsWarning */
export function restoreWarnings(r: {warnings?: string[]; xattrsNotSet?: XattrsNotSet}): string[] {
  const x = xattrsWarning(r.xattrsNotSet)
  return [...(r.warnings ?? []), ...(x ? [x] : [])]
}

/**
 * One line on the extended attributes a restore could not set (the files themselves were
 * restored), naming the first few; undefined when there are none.
 */
export function xattrsWarning(x?: XattrsNotSet): string | undefined {
  if (!x || x.total === 0) return undefined
  const some = x.first.slice(0, 3).map((a) => `${a.path} (${a.name}: ${a.reason})`)
  return `${x.total} extended attribute(s) could not be set, the rest was restored: ${some.join(', ')}${x.total > some.length ? ', …' : ''}`
}

/** Undo list: what this restore created, removed in reverse order on failure. */
class Created {
  private readonly undo: {what: string; fn: () => Promise<void>}[] = []
  add(what: string, fn: () => Promise<void>): void {
    this.undo.push({what, fn})
  }
  async rollback(): Promise<void> {
    for (const u of this.undo.reverse()) {
      try {
        await u.fn()
      } catch (e) {
        debug('rollback of %s failed: %s', u.what, (e as Error).message)
      }
    }
  }
}

export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  checkManifest(opts.snapshotId, opts.manifest)
  await opts.engine.ping()
  // containers a killed holyship left paused or stopped on this engine are put back first
  await recoverOnce(opts.engine)
  const created = new Created()
  const replaced: Replaced = {snapshots: [], running: false, removed: false, removedVolumes: new Set(), wrote: new Set(), asides: []}
  try {
    const r = opts.manifest.kind === 'container' ? await restoreContainer(opts, created, replaced) : await restoreVolumes(opts, created, replaced)
    const left = await removeAsides(replaced.asides)
    if (left.length) r.warnings = [...(r.warnings ?? []), ...left]
    return replaced.snapshots.length ? {...r, replaced: replaced.snapshots} : r
  } catch (e) {
    // stopped to be replaced, but still there: started again
    await replaced.stopped?.restore().catch((err: Error) => debug('starting the replaced container again failed: %s', err.message))
    await created.rollback()
    // a move back that failed: say where the files are
    if (replaced.asides.length && e instanceof Error) e.message = `${e.message}; the files the restore replaced are in ${replaced.asides.join(', ')}`
    if (replaced.removed && replaced.snapshots.length) {
      const what = await putBack(opts, replaced)
      if (e instanceof Error) e.message = `${e.message}; ${what}`
    }
    throw e
  } finally {
    ;(opts.progress ?? silentProgress).done()
  }
}

const VOLUME_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/
/** a network name: the engine allows most (`sdk:user`); not what would be a path, nor control characters */
const NETWORK_NAME = /^(?!\.{1,2}$)[^/\\?#%\x00-\x1f\x7f]+$/
const TREE_ID = /^[0-9a-f]{64}$/

/** an absolute, clean container or host path, safe inside a `-v SRC:DST:OPTS` bind spec */
function badAbsPath(p: unknown): boolean {
  if (typeof p !== 'string' || !p.startsWith('/') || p.includes('\0') || p.includes(':')) return true
  return p !== '/' && p.slice(1).split('/').some((c) => c === '' || c === '.' || c === '..')
}

/**
 * A manifest may come from a hostile remote (its id is just its hash): before anything is
 * created, its mounts must name safe volume names, absolute clean paths and real tree ids.
 */
export function checkManifest(id: string, m: SnapshotManifest): void {
  const bad = (what: string): never => {
    throw new HolyshipError('REPO_DAMAGED', `snapshot ${id.slice(0, 12)} is damaged or hostile: ${what}`)
  }
  if (!m || typeof m !== 'object' || !Array.isArray(m.mounts)) bad('it has no list of mounts')
  // a catalogue's copy is not checked when read: a newer holyship's manifest is not restored as if it were one of ours
  const version = manifestVersion(m.version)
  if (version === 'bad') bad(`manifest version ${JSON.stringify(m.version)}`)
  if (version === 'newer') throw new HolyshipError('REPO_NEWER_FORMAT', `snapshot ${id.slice(0, 12)} has manifest version ${m.version}, newer than this holyship reads`, {hint: 'upgrade holyship'})
  if (m.kind !== 'container' && m.kind !== 'volume') bad(`unknown kind ${JSON.stringify(m.kind)}`)
  if (m.kind === 'container' && (!m.container || typeof m.container.image?.tree !== 'string')) bad('a container snapshot without its container')
  for (const t of [m.container?.image?.tree, m.container?.fsDiff]) if (t !== undefined && !TREE_ID.test(String(t))) bad(`bad tree id ${JSON.stringify(t)}`)
  if (m.container) {
    const nets: unknown = m.container.networks
    if (!Array.isArray(nets)) bad('a container without its list of networks')
    const strings = (v: unknown): boolean => v === undefined || (typeof v === 'object' && v !== null && Object.values(v).every((x) => typeof x === 'string'))
    for (const n of nets as NetworkRecord[]) {
      if (!n || typeof n.name !== 'string' || !NETWORK_NAME.test(n.name) || !Array.isArray(n.aliases) || !n.aliases.every((a) => typeof a === 'string')) bad(`bad network ${JSON.stringify(n)}`)
      const fine =
        [n.ipv4, n.ipv6, n.driver].every((v) => v === undefined || typeof v === 'string') &&
        [n.internal, n.attachable, n.enableIPv6].every((v) => v === undefined || typeof v === 'boolean') &&
        strings(n.options) &&
        strings(n.labels) &&
        (n.linkLocalIPs === undefined || (Array.isArray(n.linkLocalIPs) && n.linkLocalIPs.every((v) => typeof v === 'string'))) &&
        (n.ipam === undefined || (typeof n.ipam === 'object' && n.ipam !== null && (n.ipam.Config === undefined || Array.isArray(n.ipam.Config))))
      if (!fine) bad(`network ${n.name} has bad settings`)
    }
  }
  for (const mount of m.mounts) {
    if (!TREE_ID.test(String(mount.tree))) bad(`mount ${JSON.stringify(mount.destination)} has a bad tree id`)
    if (mount.type === 'volume') {
      if (typeof mount.source !== 'string' || !VOLUME_NAME.test(mount.source)) bad(`bad volume name ${JSON.stringify(mount.source)}`)
      const device = bindDevice(mount.driver, mount.options)
      if (device !== undefined && (badAbsPath(cleanPath(device)) || cleanPath(device) === '/')) bad(`volume ${mount.source} binds a bad path ${JSON.stringify(device)}`)
    } else if (mount.type === 'bind') {
      if (badAbsPath(mount.source) || mount.source === '/') bad(`bad bind mount source ${JSON.stringify(mount.source)}`)
    } else bad(`unknown mount type ${JSON.stringify((mount as MountRecord).type)}`)
    if (mount.file !== undefined && (mount.file !== true || mount.type !== 'bind')) bad(`mount ${JSON.stringify(mount.destination)} is a file mount that is not a bind`)
    if (m.kind === 'container' && (badAbsPath(mount.destination) || mount.destination === '/')) bad(`bad mount destination ${JSON.stringify(mount.destination)}`)
  }
}

/** add what one restoreToDir could not set to what a restore of several mounts could not */
function addXattrsNotSet(into: XattrsNotSet, from?: XattrsNotSet): void {
  if (!from) return
  into.total += from.total
  into.first.push(...from.first.slice(0, Math.max(0, MAX_XATTRS_LISTED - into.first.length)))
}

/** paths of a tree restored at `base` (a mount destination, or '' for the filesystem diff), as the container sees them */
function underBase(base: string, skipped: SkippedEntry[]): SkippedEntry[] {
  const b = base === '/' ? '' : base
  return skipped.map((s) => ({path: `${b}/${s.path}`, reason: s.reason}))
}

function volumeName(opts: RestoreOptions, m: MountRecord): string {
  return `${opts.volumePrefix ?? ''}${m.source}`
}

/**
 * Refuse to overwrite anything unless --force; with --force, refuse a volume another container
 * uses (it could not be removed: found only after the container it replaces was gone). Returns
 * the volumes that are there, which the restore replaces. `replacing`: the container the
 * restore replaces, whose volumes they may be.
 */
async function preflightVolumes(opts: RestoreOptions, mounts: MountRecord[], names: string[], replacing?: string): Promise<string[]> {
  const there: string[] = []
  for (let i = 0; i < mounts.length; i++) {
    if (mounts[i].type !== 'volume' || opts.attachAsIs?.has(names[i])) continue
    if (!(await opts.engine.volumeExists(names[i]))) continue
    if (!opts.force) {
      throw new HolyshipError('TARGET_EXISTS', `volume ${names[i]} already exists on ${opts.engine.host}`, {
        hint: 'use --volume-prefix to restore beside it, or --force to replace it',
      })
    }
    const users = (await opts.engine.listContainers(true, {volume: [names[i]]})).filter((c) => c.Id !== replacing)
    if (users.length) {
      const who = users.map((c) => (c.Names?.[0] ?? c.Id.slice(0, 12)).replace(/^\//, '')).join(', ')
      throw new HolyshipError('TARGET_EXISTS', `volume ${names[i]} is used by container ${who} on ${opts.engine.host}, so it cannot be replaced`, {
        hint: `remove ${who} first, or use --volume-prefix to restore beside it`,
      })
    }
    there.push(names[i])
  }
  return there
}

/** what a restore with --force replaced, and how far it got (see keepReplaced) */
interface Replaced {
  snapshots: {id: string; kind: 'container' | 'volume'; name: string}[]
  /** the old container was running (it is started again when put back) */
  running: boolean
  /** something of it has been removed or written over: a failure puts it back */
  removed: boolean
  /** the volumes removed (the others are the user's as they were: putBack takes them as they are) */
  removedVolumes: Set<string>
  /** the bind sources written into (bind-mounted files, directories filled): the others are as they were */
  wrote: Set<string>
  /** where the files of the bind volumes' directories it replaced were moved aside (replaceVolumes): removed once it succeeds */
  asides: string[]
  /** the replaced container, stopped by keepReplaced: started again if the restore fails before it is removed */
  stopped?: StateGuard
}

/** remove the container a restore replaces; `removed` once it is gone, even when the engine's answer was an error */
async function removeReplaced(opts: RestoreOptions, id: string, replaced: Replaced): Promise<void> {
  try {
    await opts.engine.removeContainer(id)
  } catch (e) {
    // gone, or left dead or being removed by the engine: it is not the user's container any more
    const left = await opts.engine.findContainer(id).catch(() => 'unknown' as const)
    if (left === undefined || (left !== 'unknown' && (left.State.Dead || left.State.Status === 'removing'))) await removedNow(replaced)
    throw e
  }
  await removedNow(replaced)
}

/** the replaced container is gone: putBack makes it again; the stop keepReplaced made is not undone */
async function removedNow(replaced: Replaced): Promise<void> {
  replaced.removed = true
  await replaced.stopped?.release()
}

/**
 * What a restore with --force replaces, kept first. The snapshot's data is read and checked
 * (a damaged chunk fails the restore here, with nothing changed), then the container of that
 * name and the volumes the restore removes are snapshotted into the repository (tagged
 * REPLACED_TAG) before anything of them is removed. If the restore fails once it has removed
 * any, they are put back from there (putBack); once it succeeds they stay in the repository
 * (`forget` drops them). `latest` never names them.
 */
async function keepReplaced(opts: RestoreOptions, existing: ContainerInspect | undefined, volumes: string[], replaced: Replaced): Promise<void> {
  if (!existing && volumes.length === 0) return
  // the snapshot of what is replaced shares the chunks it has in common with this one: a
  // damaged one would fail the restore and the putting back alike
  if (!opts.partial) {
    const progress = opts.progress ?? silentProgress
    progress.phase('checking the snapshot\'s data before replacing', opts.manifest.mounts.reduce((n, m) => n + m.stats.bytes, 0))
    await checkTreesReadable(opts.repo, opts.manifest.mounts.map((m) => m.tree), (n) => progress.add(n))
  }
  replaced.running = existing?.State.Running === true
  // stopped first (as `docker stop` does: its own signal and timeout), so what is kept is what
  // it left after a clean shutdown, and it writes nothing after that which would be in neither;
  // started again if the restore fails before it is removed. Not one started with --rm (the
  // engine would remove it once stopped: it is kept paused, as a snapshot does), nor one paused
  if (existing?.State.Running && !existing.State.Paused && !existing.HostConfig?.AutoRemove) {
    const guard = new StateGuard(opts.engine, existing.Id, existing.Name.replace(/^\//, ''))
    replaced.stopped = guard
    await guard.enter('stop', existing.State)
  }
  if (!opts.catalogue || opts.keepReplaced === false) return
  // the container's snapshot holds its own volumes; any other volume the restore replaces is snapshotted alone
  const own = new Set((existing?.Mounts ?? []).flatMap((m) => (m.Type === 'volume' && m.Name ? [m.Name] : [])))
  const {snapshot} = await import('./snapshot.js')
  const results = await snapshot({
    repo: opts.repo,
    catalogue: opts.catalogue,
    engine: opts.engine,
    containers: existing ? [existing.Id] : [],
    volumes: volumes.filter((v) => !own.has(v)),
    tags: [REPLACED_TAG],
    lock: opts.lock,
    progress: opts.progress,
  }).catch((e: unknown) => {
    // nothing is changed yet: say which step failed
    if (e instanceof Error) e.message = `the snapshot of what the restore would replace failed, nothing was changed (--no-keep-replaced skips it): ${e.message}`
    throw e
  })
  replaced.snapshots = results.map((r) => ({id: r.id, kind: r.kind, name: r.name}))
}

/**
 * Put back what a failed restore replaced, from the snapshots keepReplaced made: one line for
 * the error the user sees, saying what was done.
 */
async function putBack(opts: RestoreOptions, replaced: Replaced): Promise<string> {
  const ids = replaced.snapshots.map((s) => s.id.slice(0, 12)).join(', ')
  let started = true
  // what the failed restore did not touch is there as it was: the volumes it did not remove,
  // the bind sources it did not write into (nor above or below one); taken as they are
  const touched = (src: string): boolean => [...replaced.wrote].some((w) => overlaps(w, src))
  try {
    for (const s of replaced.snapshots) {
      const manifest = opts.catalogue!.getManifest(opts.repo.id, s.id)
      if (!manifest) throw new Error(`snapshot ${s.id.slice(0, 12)} is not in the catalogue`)
      const asIs = new Set<string>()
      for (const m of manifest.mounts) {
        if (m.type === 'volume' ? !replaced.removedVolumes.has(m.source) && (await opts.engine.volumeExists(m.source)) : !touched(m.source)) asIs.add(m.source)
      }
      const back = await restore({...opts, snapshotId: s.id, manifest, name: undefined, volumePrefix: undefined, start: false, force: true, partial: false, keepReplaced: false, attachAsIs: asIs})
      // started apart from the restore: a start that fails does not take back what was put back
      if (back.container && replaced.running) await opts.engine.start(back.container.id).catch(() => (started = false))
    }
    return `what it replaced was put back as it was (from snapshot ${ids})${started ? '' : ', but did not start again'}`
  } catch (e) {
    debug('putting back %s failed: %s', ids, (e as Error).message)
    return `putting back what it replaced failed too (${(e as Error).message}): it is kept in snapshot ${ids}, \`holyship restore ${replaced.snapshots[0].id.slice(0, 12)} --force\` puts it back`
  }
}

/**
 * Remove the volumes the restore replaces and make them new. `toEmpty` (checkBindDevices): the
 * directories of the bind volumes it replaces (by volume name), whose files are moved aside
 * into a directory of their own in it, which goes once the restore succeeds; if it fails, they
 * are moved back and the old volume is made again as it was (so putBack takes it as it is).
 */
async function replaceVolumes(opts: RestoreOptions, mounts: MountRecord[], names: string[], created: Created, replaced: Replaced, toEmpty = new Map<string, string>()): Promise<void> {
  for (let i = 0; i < mounts.length; i++) {
    const m = mounts[i]
    const n = names[i]
    if (m.type !== 'volume' || opts.attachAsIs?.has(n)) continue
    const dir = toEmpty.get(n)
    const old = await opts.engine.findVolume(n)
    if (old) {
      try {
        await opts.engine.removeVolume(n)
        replaced.removed = true
        replaced.removedVolumes.add(n)
      } catch (e) {
        throw new HolyshipError('TARGET_EXISTS', `volume ${n} is in use and cannot be replaced: ${(e as Error).message}`, {cause: e})
      }
      // a bind volume's files are in its directory, not in the volume: made again as it was, it has them
      // (once they are back, below), and putBack takes it as it is
      const options = (old.Options as Record<string, string> | null) ?? {}
      if (bindDevice(old.Driver, options) !== undefined) {
        created.add(`the old volume ${n}`, async () => {
          if (await opts.engine.volumeExists(n)) return
          await opts.engine.createVolume(n, old.Driver, old.Labels ?? {}, options)
          replaced.removedVolumes.delete(n)
        })
      }
    }
    if (dir !== undefined) {
      // undone from the first rename on: a failure halfway through the move moves back what it moved
      const aside = path.join(dir, `${ASIDE}${randomBytes(6).toString('hex')}`)
      replaced.asides.push(aside)
      let moved = false
      created.add(`the files of ${dir}`, async () => {
        await moveBack(dir, aside, moved)
        replaced.asides.splice(replaced.asides.indexOf(aside), 1)
      })
      await moveAside(dir, aside)
      moved = true
    }
    await opts.engine.createVolume(n, m.driver, m.labels, m.options)
    created.add(`volume ${n}`, () => opts.engine.removeVolume(n))
  }
}

/**
 * Load the snapshot's image into the engine unless it has it already. It stays if the restore
 * then fails: docker load moves the image's tags to it (a tag the user had for another image
 * among them), so removing it again could take a user's tag with it; the image itself is the
 * snapshot's, nothing of the user's.
 */
async function ensureImage(opts: RestoreOptions, c: ContainerRecord): Promise<void> {
  const {engine, repo} = opts
  if (await engine.inspectImage(c.image.id)) return
  const node = await findNode(repo, c.image.tree, 'image.tar')
  if (!node) throw new HolyshipError('REPO_DAMAGED', `snapshot ${opts.snapshotId.slice(0, 12)}: image ${c.image.id} has no image.tar`)
  const progress = opts.progress ?? silentProgress
  progress.phase(`loading image ${c.image.repoTags[0] ?? c.image.id.slice(7, 19)}`, node.size)
  await engine.loadImage(Readable.from(fileContent(repo, node, (n) => progress.add(n))))
  if (!(await engine.inspectImage(c.image.id))) {
    throw new HolyshipError('DOCKER_FAILED', `docker load did not produce image ${c.image.id}`)
  }
}

function imageTagFor(name: string, snapshotId: string): string {
  const repoName = name.toLowerCase().replace(/[^a-z0-9._-]+/g, '-').replace(/^[^a-z0-9]+/, '') || 'container'
  return `holyship-restore/${repoName}:${snapshotId.slice(0, 12)}`
}

/**
 * The writable-layer diff becomes one more image layer on top of the snapshot's image
 * (whiteouts for deleted paths), loaded with `docker load`; the base layers are already in
 * the engine, so the archive carries only the new layer. Works with any engine, local or remote.
 */
async function loadDiffImage(opts: RestoreOptions, c: ContainerRecord, name: string, skipped?: SkippedEntry[]): Promise<string> {
  const {engine, repo} = opts
  const base = await engine.inspectImage(c.image.id)
  if (!base) throw new HolyshipError('DOCKER_FAILED', `image ${c.image.id} vanished from the engine`)
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'holyship-layer-'))
  try {
    const layerFile = path.join(tmp, 'layer.tar')
    const progress = opts.progress ?? silentProgress
    progress.phase('container filesystem')
    const out = createWriteStream(layerFile)
    const tw = new TarWriter(out)
    const left: SkippedEntry[] | undefined = skipped ? [] : undefined
    await writeTreeAsTar(repo, c.fsDiff!, tw, {layer: true, onBytes: (n) => progress.add(n), skipped: left})
    if (left) skipped!.push(...underBase('', left))
    await tw.finish()
    const hash = createHash('sha256')
    for await (const b of createReadStream(layerFile)) hash.update(b as Buffer)
    const diffId = `sha256:${hash.digest('hex')}`
    const layerSize = (await fsp.stat(layerFile)).size
    const baseLayers = base.RootFS?.Layers ?? []
    const config = {
      architecture: base.Architecture,
      os: base.Os,
      created: new Date().toISOString(),
      config: base.Config,
      rootfs: {type: 'layers', diff_ids: [...baseLayers, diffId]},
      comment: `holyship: ${c.name} from snapshot ${opts.snapshotId.slice(0, 12)}`,
    }
    const configData = Buffer.from(JSON.stringify(config))
    const configId = createHash('sha256').update(configData).digest('hex')
    const tag = imageTagFor(name, opts.snapshotId)
    const manifest = Buffer.from(
      JSON.stringify([{Config: `${configId}.json`, RepoTags: [tag], Layers: [...baseLayers.map((_, i) => `base${i}/layer.tar`), 'diff/layer.tar']}]),
    )
    // the docker-save archive: manifest, config and only the new layer
    const body = new PassThrough()
    const outer = new TarWriter(body)
    const now: [number, number] = [Math.floor(Date.now() / 1000), 0]
    const loading = engine.loadImage(body)
    const writing = (async () => {
      await outer.entry({name: 'manifest.json', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: now, size: manifest.length}, [manifest])
      await outer.entry({name: `${configId}.json`, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: now, size: configData.length}, [configData])
      await outer.entry({name: 'diff/', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: now})
      await outer.entry({name: 'diff/layer.tar', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: now, size: layerSize}, createReadStream(layerFile) as AsyncIterable<Buffer>)
      await outer.finish()
    })()
    await Promise.all([writing, loading])
    const id = `sha256:${configId}`
    if (!(await engine.inspectImage(id))) throw new HolyshipError('DOCKER_FAILED', `docker load did not produce the restored image ${tag}`)
    return id
  } finally {
    await fsp.rm(tmp, {recursive: true, force: true})
  }
}

/**
 * A bind mount's host directory is not the restore's own, as a new volume is: with --name it
 * is even the original container's. One that holds anything is refused unless --force, before
 * a byte is written (its files would be written over, and a failed restore could not give
 * them back). Looked at through a helper container that has just that directory (the host
 * may be remote), before anything is changed: its archive is read up to its first entry that is
 * not the mountpoint of a mount inside it, nor a bind-mounted file of this snapshot. A
 * directory the engine does not have yet is empty (the engine makes it, as `docker run` would).
 */
async function checkBinds(opts: RestoreOptions, mounts: MountRecord[], image: string): Promise<void> {
  if (opts.force) return
  const files = mounts.filter((m) => m.file).map((m) => m.source)
  for (const m of mounts) {
    // a bind-mounted file is looked at by checkFileBinds
    if (m.type !== 'bind' || m.file) continue
    // the mountpoints of mounts inside this one (a volume on /app/node_modules in a bind of
    // /app): the engine makes them in the bind's directory itself; they are not its content
    const inner = innerMounts(mounts, m)
    // and the bind-mounted files in its source: this restore's own (written, or the snapshot's already)
    for (const f of files) if (f.startsWith(`${m.source}/`)) inner.push(path.posix.relative(m.source, f))
    const held = await withHelper(opts, [`${m.source}:/holyship-mount`], image, (helper) => firstEntryIn(opts.engine, helper, '/holyship-mount', inner))
    if (held === '/holyship-mount') {
      throw new HolyshipError('TARGET_EXISTS', `the bind mount source ${m.source} on ${opts.engine.host} is not a directory, as it was in the snapshot`, {hint: 'move it away'})
    }
    if (held !== undefined) {
      throw new HolyshipError('TARGET_EXISTS', `the bind mount source ${m.source} on ${opts.engine.host} is not empty (it holds ${JSON.stringify(held)})`, {
        hint: 'restore it elsewhere with --path, empty it, or use --force to write the snapshot over what is there',
      })
    }
  }
}

/**
 * A volume that binds a directory of the host (bindDevice: compose's `driver_opts` with
 * `o: bind`) keeps its files there, whatever it is named (--volume-prefix) and after it is
 * removed: that directory is looked at as a bind's source is. One that another volume of the
 * engine binds too, or a directory in or around it (the original's, when restoring beside it),
 * is refused even with --force; one that holds files is refused without --force. A missing
 * one is made, empty (the engine would refuse to mount the volume, after what the restore
 * replaces is gone). With --force, the files of one the volume it replaces binds (they are in
 * what keepReplaced keeps) are moved aside by replaceVolumes: checked here that this host
 * sees that directory, with nothing mounted inside it and no other container's bind mount in
 * or around it. Returns those directories, as this host names them, by volume name.
 * `replacing`: the volumes the restore removes; `existing`: the container it replaces.
 */
async function checkBindDevices(opts: RestoreOptions, mounts: MountRecord[], names: string[], replacing: string[], existing?: string, image?: string): Promise<Map<string, string>> {
  const toEmpty = new Map<string, string>()
  let binding: {name: string; dir: string}[] | undefined
  for (let i = 0; i < mounts.length; i++) {
    const m = mounts[i]
    const device = m.type === 'volume' && !opts.attachAsIs?.has(names[i]) ? bindDevice(m.driver, m.options) : undefined
    if (device === undefined) continue
    const dir = cleanPath(device)
    binding ??= (await opts.engine.listVolumes()).flatMap((v) => {
      const d = bindDevice(v.Driver, v.Options as Record<string, string> | null)
      return d !== undefined ? [{name: v.Name, dir: cleanPath(d)}] : []
    })
    const shared = binding.find((o) => overlaps(o.dir, dir) && !(o.dir === dir && replacing.includes(o.name)))
    if (shared) {
      const also = shared.dir === dir ? `as volume ${shared.name} there does` : `and volume ${shared.name} there keeps its in ${shared.dir}`
      throw new HolyshipError('TARGET_EXISTS', `volume ${names[i]} keeps its files in ${dir} on ${opts.engine.host}, ${also}`, {
        hint: '--volume-prefix does not move them: restore it on another host, or with --path',
      })
    }
    const inner = innerMounts(mounts, m)
    // the helper (its state directory) also proves whether this is the engine's host
    const [held, direct] = await withHelper(opts, [`${dir}:/holyship-mount`], image, async (helper) => [await firstEntryIn(opts.engine, helper, '/holyship-mount', inner), await directAccess(opts.engine, {containerId: helper})] as const)
    const at = `volume ${names[i]} keeps its files in ${dir} on ${opts.engine.host}`
    if (held === '/holyship-mount') throw new HolyshipError('TARGET_EXISTS', `${at}, which is not a directory`, {hint: 'move it away'})
    if (held === undefined) {
      // empty (or made just now): on the engine's host, what a failed restore writes there goes again
      const real = direct ? await fsp.realpath(dir).catch(() => undefined) : undefined
      if (real !== undefined && real !== '/') toEmpty.set(names[i], real)
      continue
    }
    const full = `${at}, which is not empty (it holds ${JSON.stringify(held)})`
    if (!opts.force) throw new HolyshipError('TARGET_EXISTS', full, {hint: 'restore it elsewhere with --path, or use --force to replace the volume that keeps them'})
    if (!binding.some((o) => o.dir === dir && replacing.includes(o.name))) {
      throw new HolyshipError('TARGET_EXISTS', `${full}, and no volume this restore replaces keeps them`, {hint: 'move them away: --force replaces volumes, it does not throw away a directory'})
    }
    if (!direct) throw new HolyshipError('TARGET_EXISTS', `${full}: replacing it needs root on the engine's own host`, {hint: `empty ${dir} there, or restore it elsewhere with --path`})
    toEmpty.set(names[i], await localDeviceDir(opts, dir, held, full, existing))
  }
  return toEmpty
}

/**
 * The bind volume directory `dir` of the engine's host as this process sees it (symlinks
 * resolved), for replaceVolumes to move its files aside, on the engine's host as root
 * (checkBindDevices asked directAccess): refused (before anything is changed) unless the
 * directory here holds `held`
 * (what the engine sees there: the same directory, not one of another mount namespace's),
 * it is not `/`, holds no files an earlier restore moved aside, nothing is mounted inside it (a rename cannot move a mount) and no container but `existing`
 * has a bind mount in or around it (a running one would see its files vanish).
 */
async function localDeviceDir(opts: RestoreOptions, dir: string, held: string, at: string, existing?: string): Promise<string> {
  const refuse = (why: string, hint: string): never => {
    throw new HolyshipError('TARGET_EXISTS', `${at}: ${why}`, {hint})
  }
  const real = await fsp.realpath(dir).catch(() => undefined)
  const here = real === undefined ? undefined : await fsp.lstat(path.join(real, held)).catch(() => undefined)
  if (real === undefined || here === undefined) refuse(`this host does not see it as the engine does (another mount namespace?)`, `empty ${dir} on the engine's host, or restore it elsewhere with --path`)
  if (real === '/') refuse('it is the root directory', 'restore it elsewhere with --path')
  const left = (await fsp.readdir(real!)).find((e) => e.startsWith(ASIDE))
  if (left) refuse(`${left} in it holds what an earlier restore that did not finish replaced`, `look at ${path.join(real!, left)}, and move it away`)
  const unescape = (p: string): string => p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
  const mounted = (await fsp.readFile('/proc/self/mountinfo', 'utf8')).split('\n').map((l) => unescape(l.split(' ')[4] ?? ''))
  const inside = mounted.find((p) => p.startsWith(`${real}/`))
  if (inside) refuse(`${inside} is mounted inside it`, 'unmount it, or stop what uses it')
  for (const c of await opts.engine.listContainers(true)) {
    if (c.Id === existing) continue
    const bind = (c.Mounts ?? []).find((mt) => mt.Type === 'bind' && typeof mt.Source === 'string' && (overlaps(cleanPath(mt.Source), dir) || overlaps(cleanPath(mt.Source), real!)))
    if (bind) refuse(`container ${(c.Names?.[0] ?? c.Id.slice(0, 12)).replace(/^\//, '')} has a bind mount of ${bind.Source}, in or around it`, 'remove that container first')
  }
  return real!
}

/** the name of the directory replaceVolumes moves a bind volume directory's files into */
const ASIDE = '.holyship-replaced-'

/**
 * move the entries of `dir` into the new directory `aside` in it (on the same file system:
 * renames). One an earlier, killed restore left is not touched.
 */
async function moveAside(dir: string, aside: string): Promise<void> {
  await fsp.mkdir(aside, {mode: 0o700})
  for (const e of await fsp.readdir(dir)) if (e !== path.basename(aside)) await fsp.rename(path.join(dir, e), path.join(aside, e))
}

/**
 * undo moveAside: what was moved aside comes back; once the move was `complete` (and the
 * restore may have written into `dir`), what is in `dir` goes first. After a move that failed
 * halfway, what is in `dir` is what was not moved yet: it stays.
 */
async function moveBack(dir: string, aside: string, complete: boolean): Promise<void> {
  if (!(await fsp.stat(aside).then((st) => st.isDirectory(), () => false))) return
  const own = path.basename(aside)
  // each entry on its own: one that fails does not keep the others from coming back
  const failed: string[] = []
  const each = async (names: string[], fn: (e: string) => Promise<void>): Promise<void> => {
    for (const e of names) await fn(e).catch((err: Error) => failed.push(`${e}: ${err.message}`))
  }
  if (complete) await each((await fsp.readdir(dir)).filter((e) => e !== own), (e) => fsp.rm(path.join(dir, e), {recursive: true, force: true}))
  await each(await fsp.readdir(aside), (e) => fsp.rename(path.join(aside, e), path.join(dir, e)))
  if (failed.length) throw new Error(`moving the files of ${dir} back from ${aside} failed for ${failed.slice(0, 3).join('; ')}`)
  await fsp.rmdir(aside)
}

/** once the restore succeeded, the files moveAside kept go; one line each for those that could not */
async function removeAsides(asides: string[]): Promise<string[]> {
  const left: string[] = []
  for (const a of asides) {
    await fsp.rm(a, {recursive: true, force: true}).catch((e: Error) => left.push(`the replaced files in ${a} could not be removed (${e.message}): remove them by hand`))
  }
  return left
}

/**
 * The path (relative to `dir`) of the first entry in directory `dir` of a container that is
 * not one of the mountpoints `inner` (nor below one); `dir` itself when it is not a directory;
 * undefined when there is none or `dir` is missing.
 */
async function firstEntryIn(engine: Engine, containerId: string, dir: string, inner: string[]): Promise<string | undefined> {
  const {firstEntryOutside} = await import('../archive/tar-source.js')
  const stream = await archiveOf(engine, containerId, dir)
  if (!stream) return undefined
  try {
    const held = await firstEntryOutside(stream, inner)
    return held === '' ? dir : held
  } catch (e) {
    throw engine.mapError(`get archive ${containerId.slice(0, 12)}:${dir}`, e)
  }
}

/** the engine's archive of `at` in container `containerId`; undefined when it has no such path */
async function archiveOf(engine: Engine, containerId: string, at: string): Promise<Readable | undefined> {
  const missing = new HolyshipError('PATH_NOT_FOUND', `${at} is not in container ${containerId.slice(0, 12)}`)
  try {
    return await engine.getArchive(containerId, at, () => missing)
  } catch (e) {
    if (e === missing) return undefined
    throw e
  }
}

/**
 * The directory of the new, empty volume `name` on this host, when the restore may write it
 * directly (much faster than the API's tar stream: the restore's workers write the files):
 * root on the engine's own host, proven by the state directory of `containerId`, the
 * container just created to hold the volume (directAccess), the volume's Mountpoint in the
 * engine's root, a local volume without driver options (one with options, an NFS mount say,
 * is only mounted while a container uses it). Undefined: the API fills it. With writer `direct`,
 * a volume it cannot write is a usage error.
 */
async function volumeDir(opts: RestoreOptions, name: string, containerId: string): Promise<string | undefined> {
  let mountpoint: string | undefined
  const usable = async (): Promise<boolean> => {
    const info = await opts.engine.info()
    const v = await opts.engine.inspectVolume(name)
    const options = (v.Options as Record<string, string> | null) ?? {}
    const local = v.Driver === 'local' && Object.keys(options).length === 0 && typeof v.Mountpoint === 'string' && v.Mountpoint.startsWith(`${info.DockerRootDir}/`)
    // made by this restore a moment ago: empty, or something else is going on
    if (local && (await fsp.readdir(v.Mountpoint)).length === 0) mountpoint = v.Mountpoint
    return mountpoint !== undefined
  }
  const refusal = `--writer direct needs root on the engine's own host and a local volume without options; volume ${name} on ${opts.engine.host} is not writable here`
  return (await goDirect(opts.engine, opts.writer ?? 'auto', {containerId}, refusal, usable)) ? mountpoint : undefined
}

/**
 * Write a volume's tree into its new directory `dir` (volumeDir); returns what --partial left
 * out (paths in the volume), and adds the extended attributes it could not set to `xattrs`
 */
async function fillVolumeDir(opts: RestoreOptions, m: MountRecord, dir: string, partial: boolean, xattrs: XattrsNotSet, warnings: string[]): Promise<SkippedEntry[] | undefined> {
  const progress = opts.progress ?? silentProgress
  const left: SkippedEntry[] | undefined = partial ? [] : undefined
  const r = await restoreToDir(opts.repo, m.tree, '', dir, {root: m.root, fresh: true, onBytes: (n) => progress.add(n), skipped: left})
  addXattrsNotSet(xattrs, r.xattrsNotSet)
  // device nodes it may not make, under the volume's name
  for (const w of r.warnings ?? []) warnings.push(`volume ${m.source}: ${w.split(dir).join('')}`)
  return left
}

/**
 * Fill a mounted volume or bind of a created (never started) container: a new volume `volume`
 * straight into its directory where the writer may (volumeDir), else through the API.
 */
async function fillMount(
  opts: RestoreOptions,
  containerId: string,
  m: MountRecord,
  destination: string,
  xattrs: XattrsNotSet,
  warnings: string[],
  skipped?: SkippedEntry[],
  volume?: string,
  without: string[] = [],
  skipUnder: string[] = [],
): Promise<void> {
  const progress = opts.progress ?? silentProgress
  progress.phase(`${m.type} ${m.type === 'volume' ? m.source : m.destination}`, m.stats.bytes)
  const dir = volume === undefined ? undefined : await volumeDir(opts, volume, containerId)
  if (dir !== undefined) {
    const left = await fillVolumeDir(opts, m, dir, skipped !== undefined, xattrs, warnings)
    if (left) skipped!.push(...underBase(destination, left))
    return
  }
  // extract into the parent under the mount's own name, so the root's mode, owner and time apply
  const left: SkippedEntry[] | undefined = skipped ? [] : undefined
  await putTree(opts, containerId, path.posix.dirname(destination), m.tree, {root: m.root, rootName: path.posix.basename(destination), onBytes: (n) => progress.add(n), skipped: left, without, skipUnder})
  if (left) skipped!.push(...underBase(destination, left))
}

/** Write a tree as a tar stream into directory `dir` of a container, through the engine's extraction. */
async function putTree(opts: RestoreOptions, containerId: string, dir: string, tree: string, tarOpts: TarOptions): Promise<void> {
  const body = new PassThrough()
  const tw = new TarWriter(body)
  const putting = opts.engine.putArchive(containerId, dir, body)
  const writing = (async () => {
    try {
      await writeTreeAsTar(opts.repo, tree, tw, tarOpts)
      await tw.finish()
    } catch (e) {
      body.destroy(e as Error)
      throw e
    }
  })()
  await Promise.all([writing, putting])
}

// ------------------------------------------------------------------------------ bind-mounted files

/** the one file of a bind-mounted file's tree; undefined for a socket or the like (nothing to write) */
async function fileOfBind(opts: RestoreOptions | RestorePathOptions, m: MountRecord): Promise<TreeNode | undefined> {
  const nodes = (await opts.repo.loadTree(m.tree)).nodes
  if (nodes.length === 0) return undefined
  if (nodes.length > 1 || nodes[0].type !== 'file') {
    throw new HolyshipError('REPO_DAMAGED', `snapshot ${opts.snapshotId.slice(0, 12)} is damaged or hostile: the bind-mounted file ${m.destination} is not one file`)
  }
  return nodes[0]
}

/** `fn` with a never-started helper container that has `binds` (any image will do when none is named) */
async function withHelper<T>(
  opts: RestoreOptions,
  binds: string[],
  image: string | undefined,
  fn: (helper: string) => Promise<T>,
  network?: {name: string; endpoint: Docker.EndpointSettings},
): Promise<T> {
  // the snapshot code (archiver, readers) only for the helper container: restore --path never loads it
  const {createHelperContainer} = await import('./snapshot.js')
  const helper = await createHelperContainer(opts.engine, binds, image, network)
  try {
    return await fn(helper)
  } finally {
    // with its anonymous volumes: the helper's image may declare VOLUMEs
    await opts.engine.docker
      .getContainer(helper)
      .remove({force: true, v: true})
      .catch(() => undefined)
  }
}

/** `fn` with a helper container that has the directory of `source` on the engine's host at /holyship-parent */
function withParentDir<T>(opts: RestoreOptions, image: string, source: string, fn: (helper: string) => Promise<T>): Promise<T> {
  return withHelper(opts, [`${path.posix.dirname(source)}:/holyship-parent`], image, fn)
}

/** what is at a bind-mounted file's source now */
type AtSource =
  | {is: 'absent'}
  | {is: 'same'}
  /** a file of other content; `old`, its archive as the engine gave it, to put back on rollback (when small) */
  | {is: 'other'; old?: Buffer}
  | {is: 'symlink' | 'not a file'}

/** the most of a file written over that is kept in memory to put back if the restore fails */
const ROLLBACK_COPY_MAX = 64 * 1024 * 1024

/** what the engine's archive of `at` in container `helper` holds, against the snapshot's file `node`; undefined: it has no such path */
async function compareAt(opts: RestoreOptions, helper: string, at: string, node: TreeNode, keep: boolean): Promise<AtSource | undefined> {
  const stream = await archiveOf(opts.engine, helper, at)
  if (!stream) return undefined
  // the archive's bytes, as long as they are few (a file written over is put back from them)
  const copy: Buffer[] = []
  let copied = 0
  const tee = async function* (): AsyncGenerator<Buffer> {
    for await (const b of stream as AsyncIterable<Buffer>) {
      if (keep && copied <= ROLLBACK_COPY_MAX) copy.push(b)
      copied += b.length
      yield b
    }
  }
  const {readTar} = await import('../archive/tar-reader.js')
  const {tarType} = await import('../archive/tar-source.js')
  // the engine's archive of a socket is empty
  let result: AtSource = {is: 'not a file'}
  try {
    // read to its end-of-archive block, so a copy is a whole archive
    for await (const {header, body} of readTar(tee())) {
      const type = tarType(header)
      if (type === 'symlink') return {is: 'symlink'}
      if (type !== 'file') return {is: 'not a file'}
      const there = createHash('sha256')
      for await (const b of body) there.update(b)
      result = {is: 'other'}
      if (header.size === node.size) {
        const ours = createHash('sha256')
        for await (const b of fileContent(opts.repo, node)) ours.update(b)
        if (there.digest('hex') === ours.digest('hex')) result = {is: 'same'}
      }
    }
  } catch (e) {
    throw opts.engine.mapError(`get archive ${helper.slice(0, 12)}:${at}`, e)
  } finally {
    stream.destroy()
  }
  return result.is === 'other' && keep && copied <= ROLLBACK_COPY_MAX ? {is: 'other', old: Buffer.concat(copy)} : result
}

/**
 * What is at a bind-mounted file's source on the engine's host. A symlink there (/etc/localtime)
 * is followed, as the engine follows it when it mounts the source: it is the same when it leads
 * to the snapshot's content.
 */
async function fileAtSource(opts: RestoreOptions, image: string, source: string, node: TreeNode): Promise<AtSource> {
  const there = await withParentDir(opts, image, source, (helper) => compareAt(opts, helper, `/holyship-parent/${path.posix.basename(source)}`, node, true))
  if (!there) return {is: 'absent'}
  if (there.is !== 'symlink') return there
  const target = await withHelper(opts, [`${source}:/holyship-file:ro`], image, (helper) => compareAt(opts, helper, '/holyship-file', node, false))
  return target?.is === 'same' ? target : {is: 'symlink'}
}

/**
 * A container's bind-mounted files, before anything is changed: each source on the engine's
 * host must be missing (written new), or hold the snapshot's content already (left as it is),
 * or, with --force, be a file (written over). Returns the ones to write.
 */
async function checkFileBinds(opts: RestoreOptions, mounts: MountRecord[], image: string): Promise<FileToWrite[]> {
  const out: FileToWrite[] = []
  for (const m of mounts) {
    if (!m.file || opts.attachAsIs?.has(m.source)) continue
    const node = await fileOfBind(opts, m)
    if (!node) continue
    const there = await fileAtSource(opts, image, m.source, node)
    if (there.is === 'same') continue
    if (there.is !== 'absent' && !(there.is === 'other' && opts.force)) {
      const is = {other: "holds other content than the snapshot's", symlink: "is a symlink that does not lead to the snapshot's content", 'not a file': 'is not a file (a directory?)'}[there.is]
      throw new HolyshipError('TARGET_EXISTS', `the source ${m.source} of the bind-mounted file ${m.destination} on ${opts.engine.host} ${is}`, {
        hint: there.is === 'other' ? "restore it elsewhere with --path, move it away, or use --force to write the snapshot's over it" : 'move it away: --force writes over a file, not through a symlink nor over anything else',
      })
    }
    out.push({m, old: there.is === 'other' ? (there.old ?? null) : undefined})
  }
  return out
}

/** a bind-mounted file to write; `old`: the archive of the file it writes over, null when too big to keep */
interface FileToWrite {
  m: MountRecord
  old?: Buffer | null
}

/**
 * Write the bind-mounted files checkFileBinds returned to their sources on the engine's host,
 * before the container is made (a missing source would become a directory). A file written
 * over is put back if the restore fails later (when it was small enough to keep); one written
 * new stays (the engine's API cannot delete a file).
 */
async function writeFileBinds(opts: RestoreOptions, files: FileToWrite[], image: string, created: Created): Promise<void> {
  const progress = opts.progress ?? silentProgress
  for (const {m, old} of files) {
    progress.phase(`bind ${m.destination}`, m.stats.bytes)
    if (old) created.add(`the old ${m.source}`, () => withParentDir(opts, image, m.source, (helper) => opts.engine.putArchive(helper, '/holyship-parent', Readable.from([old]))))
    await withParentDir(opts, image, m.source, (helper) => putTree(opts, helper, '/holyship-parent', m.tree, {topName: path.posix.basename(m.source), onBytes: (n) => progress.add(n)}))
  }
}

/**
 * A container that shares another's network (`--network container:X`, compose's
 * `network_mode: service:X`) has that one's hostname, DNS, hosts and ports: inspect shows them
 * in its own config too, and the engine refuses to create a container that sets any of them
 * with such a network mode ("conflicting options"). They are dropped, as `docker run` never
 * set them; on the host network a MAC address is refused likewise.
 */
export function withoutNetworkConflicts(config: Record<string, unknown>, hostConfig: Record<string, unknown>): void {
  const mode = String(hostConfig.NetworkMode ?? '')
  if (mode.startsWith('container:')) {
    for (const k of ['Hostname', 'Domainname', 'ExposedPorts', 'MacAddress']) delete config[k]
    for (const k of ['Dns', 'DnsOptions', 'DnsSearch', 'ExtraHosts', 'PortBindings', 'Links']) delete hostConfig[k]
    hostConfig.PublishAllPorts = false
  } else if (mode === 'host') delete config.MacAddress
  // the host's UTS namespace: its hostname, not one of the container's
  if (hostConfig.UTSMode === 'host') for (const k of ['Hostname', 'Domainname']) delete config[k]
}

/**
 * the other containers a container needs at create: whose namespaces it shares (`--network
 * container:X`, --ipc, --pid, by name as the snapshot recorded them), whose volumes it takes
 * (--volumes-from X[:ro]) and which it links to (--link X:alias, as inspect shows it: /X:/me/alias)
 */
export function needsContainers(hostConfig: Record<string, unknown>): {what: string; name: string}[] {
  const out: {what: string; name: string}[] = []
  for (const [k, what] of [['NetworkMode', 'network'], ['IpcMode', 'IPC namespace'], ['PidMode', 'PID namespace']]) {
    const v = hostConfig[k]
    if (typeof v === 'string' && v.startsWith('container:')) out.push({what, name: v.slice('container:'.length)})
  }
  const list = (k: string): string[] => (Array.isArray(hostConfig[k]) ? (hostConfig[k] as unknown[]).filter((v): v is string => typeof v === 'string') : [])
  for (const v of list('VolumesFrom')) out.push({what: 'volumes', name: v.split(':')[0]})
  for (const v of list('Links')) out.push({what: 'link', name: v.split(':')[0].replace(/^\//, '')})
  return out
}

async function restoreContainer(opts: RestoreOptions, created: Created, replaced: Replaced): Promise<RestoreResult> {
  const {engine, manifest} = opts
  const c = manifest.container!
  const name = opts.name ?? c.name
  const mounts = manifest.mounts
  const names = mounts.map((m) => (m.type === 'volume' ? volumeName(opts, m) : m.source))

  // check everything before changing anything
  // the engine takes a name it does not know as an id prefix: only a container of that name is replaced
  const found = await engine.findContainer(name)
  const existing = found?.Name === `/${name}` ? found : undefined
  if (existing && !opts.force) {
    throw new HolyshipError('TARGET_EXISTS', `container ${name} already exists on ${engine.host}`, {
      hint: 'use --name to restore beside it, or --force to replace it',
    })
  }
  const volumesThere = await preflightVolumes(opts, mounts, names, existing?.Id)
  // the engine would refuse to create it only after the old one (with --force) is gone
  for (const s of needsContainers(c.hostConfig)) {
    if (!(await engine.containerExists(s.name))) {
      const uses = s.what === 'link' ? 'links to' : s.what === 'volumes' ? 'takes the volumes of' : `shares the ${s.what} of`
      throw new HolyshipError('CONTAINER_NOT_FOUND', `container ${c.name} ${uses} container ${s.name}, which is not on ${engine.host}`, {hint: `restore or start ${s.name} first`})
    }
  }

  const there = new Map<string, Awaited<ReturnType<Engine['inspectNetwork']>>>()
  for (const n of c.networks) {
    if (BUILTIN_NETWORKS.includes(n.name)) continue
    // a name the engine does not know it takes as an id prefix: only a network of that name is there
    const net = await engine.inspectNetwork(n.name)
    there.set(n.name, net?.Name === n.name ? net : undefined)
  }
  const networks = planNetworks(c.name, c.networks, there, engine.host, existing?.Id)

  await ensureImage(opts, c)
  await tryFixedAddresses(opts, c, there, existing)
  const files = await checkFileBinds(opts, mounts, c.image.id)
  await checkBinds(opts, mounts, c.image.id)
  const toEmpty = await checkBindDevices(opts, mounts, names, volumesThere, existing?.Id, c.image.id)
  const skipped: SkippedEntry[] | undefined = opts.partial ? [] : undefined
  let image = c.image.id
  if (c.fsDiff) {
    image = await loadDiffImage(opts, c, name, skipped)
    const img = image
    created.add(`image ${img}`, () => engine.removeImage(img))
  }
  // nothing of the user's has been changed before this: what is replaced is kept, and then
  // (quickly: what the replaced container writes from now on is not in what is kept) removed
  // or written over
  await keepReplaced(opts, existing, volumesThere, replaced)
  await makeNetworks(opts, networks, created)
  if (existing) await removeReplaced(opts, existing.Id, replaced)
  // before the container is made (a missing source would become a directory); a file written
  // over is put back by `created` when it was small enough to keep, and by putBack from what was kept
  for (const f of files) replaced.wrote.add(f.m.source)
  await writeFileBinds(opts, files, c.image.id, created)
  await replaceVolumes(opts, mounts, names, created, replaced, toEmpty)

  const hostConfig = {...c.hostConfig} as Record<string, unknown>
  // mounts are re-declared as binds; volumes with nocopy, so the image's files are not copied in
  // with the propagation and SELinux options the container had (keptMountOptions)
  const bindSpecs = (writable: boolean): string[] =>
    mounts.map((m, i) => {
      const ro = m.readOnly && !writable ? ['ro'] : []
      // a volume takes no propagation; the helper that fills them needs only an SELinux label (shared) to write there
      const kept = keptMountOptions(c.hostConfig, m.destination).filter((o) => m.type === 'bind' || o === 'z' || o === 'Z')
      const extra = writable ? (kept.some((o) => o === 'z' || o === 'Z') ? ['z'] : []) : kept
      const opts = [...ro, ...extra, ...(m.type === 'volume' ? ['nocopy'] : [])]
      return `${m.type === 'volume' ? names[i] : m.source}:${m.destination}${opts.length ? `:${opts.join(',')}` : ''}`
    })
  hostConfig.Binds = bindSpecs(false)
  // what else --mount declared stays: tmpfs mounts (compose's `type: tmpfs`) hold no data to
  // snapshot, but the container expects them
  const others = ((c.hostConfig.Mounts as {Type?: string}[] | null | undefined) ?? []).filter((m) => m.Type !== 'bind' && m.Type !== 'volume')
  if (others.length) hostConfig.Mounts = others
  else delete hostConfig.Mounts
  const config = {...c.config} as Record<string, unknown>
  withoutNetworkConflicts(config, hostConfig)
  const labels = {...((config.Labels as Record<string, string> | null) ?? {})}
  const [firstNet, ...otherNets] = c.networks.filter((n) => n.name !== 'default')
  const networkingConfig =
    firstNet && !BUILTIN_NETWORKS.includes(firstNet.name)
      ? {EndpointsConfig: {[firstNet.name]: endpointConfig(firstNet)}}
      : undefined
  const id = await engine.createContainer({
    ...config,
    Labels: labels,
    Image: image,
    name,
    HostConfig: hostConfig,
    ...(networkingConfig ? {NetworkingConfig: networkingConfig} : {}),
  } as never)
  created.add(`container ${name}`, () => engine.removeContainer(id))
  for (const n of otherNets) {
    if (BUILTIN_NETWORKS.includes(n.name)) continue
    await engine.connectNetwork(n.name, id, endpointConfig(n))
  }

  let bytes = 0
  const xattrs: XattrsNotSet = {total: 0, first: []}
  const writeWarnings: string[] = []
  // every mount is filled through one helper container that has them all where the container
  // has them, but writable: the container's own may be read-only (:ro, --read-only), and a
  // mount inside another gets what the engine's archive of the outer one held of it, as before
  await withHelper(opts, bindSpecs(true), c.image.id, async (helper) => {
    for (const [i, m] of mounts.entries()) {
      bytes += m.stats.bytes
      // a bind-mounted file is written already; the engine cannot extract over its mountpoint
      // in another mount (EBUSY), and makes it itself
      if (m.file || opts.attachAsIs?.has(names[i])) continue
      const without = innerMounts(mounts.filter((o) => o.file), m)
      // mounts inside it that are taken as they are (putBack) keep what they hold
      const asIs = innerMounts(mounts.filter((o, j) => !o.file && opts.attachAsIs?.has(names[j])), m)
      replaced.wrote.add(m.source)
      await fillMount(opts, helper, m, m.destination, xattrs, writeWarnings, skipped, m.type === 'volume' ? names[i] : undefined, without, asIs)
    }
  })
  let started = false
  // a container with files missing is not started: its owner decides
  if (opts.start && !skipped?.length) {
    await engine.start(id)
    started = true
  }
  return {
    snapshot: opts.snapshotId,
    kind: 'container',
    container: {id, name, image, started},
    volumes: mounts.flatMap((m, i) => (m.type === 'volume' ? [{name: names[i], destination: m.destination}] : [])),
    binds: mounts.filter((m) => m.type === 'bind').map((m) => ({source: m.source, destination: m.destination})),
    bytes,
    ...(skipped ? {skipped} : {}),
    ...(networks.warnings.length + writeWarnings.length ? {warnings: [...networks.warnings, ...writeWarnings]} : {}),
    ...(xattrs.total > 0 ? {xattrsNotSet: xattrs} : {}),
  }
}

/** what the engine says when it will not give a container an address it asked for */
const ADDRESS_REFUSED = /user specified IP address|address already in use|no available (IPv4|IPv6)|invalid address|not in (the )?subnet|ipam/i

/**
 * A fixed address on a network the target has already is tried before anything is changed:
 * the engine takes one only on a network whose subnet was set by the user (inspect shows an
 * engine-chosen subnet alike), which it checks when the container starts and gets its
 * network, before the container's process runs. A helper container is made on each such
 * network with the address and started: its command does not exist, so starting it fails
 * either way, at the address (refused here) or after it (the address is fine).
 */
async function tryFixedAddresses(opts: RestoreOptions, c: ContainerRecord, there: Map<string, unknown>, replacing?: ContainerInspect): Promise<void> {
  for (const n of c.networks) {
    if (!there.get(n.name) || (!n.ipv4 && !n.ipv6)) continue
    // the running container this restore replaces has the address there: the network takes it
    // (and it is taken until that one is removed)
    const ep = (replacing?.NetworkSettings?.Networks as Record<string, {IPAddress?: string; GlobalIPv6Address?: string}> | undefined)?.[n.name]
    const holds = (want: string | undefined, has: string | undefined): boolean => !want || (!!has && sameAddress(want, has))
    if (replacing?.State.Running && ep && holds(n.ipv4, ep.IPAddress) && holds(n.ipv6, ep.GlobalIPv6Address)) continue
    const start = async (helper: string): Promise<void> => {
      await opts.engine.start(helper).catch((e: Error) => {
        if (ADDRESS_REFUSED.test(e.message)) throw e
        debug('probe of %s on network %s: %s', n.ipv4 ?? n.ipv6, n.name, e.message)
      })
    }
    try {
      await withHelper(opts, [], c.image.id, start, {name: n.name, endpoint: endpointConfig({...n, aliases: []})})
    } catch (e) {
      const why = (e as Error).message
      throw new HolyshipError('TARGET_EXISTS', `network ${n.name} on ${opts.engine.host} does not take container ${c.name}'s fixed address ${n.ipv4 ?? n.ipv6}: ${why}`, {
        hint: `remove network ${n.name} there (the restore makes it as it was), or make it with a subnet of its own (docker network create --subnet)`,
        cause: e,
      })
    }
  }
}

/**
 * Make the networks the plan says are missing, with the snapshot's settings; they go again if
 * the restore fails. A network whose recorded subnet the engine refuses (it overlaps one of the
 * target's) is made on a subnet of the engine's choosing, with a warning, unless the container
 * has a fixed address on it: then the restore fails, before anything of the user's is changed.
 */
async function makeNetworks(opts: RestoreOptions, plan: NetworkPlan, created: Created): Promise<void> {
  const {engine} = opts
  for (const n of plan.make) {
    try {
      await engine.createNetwork(n.spec)
    } catch (e) {
      if (!/overlap/i.test((e as Error).message)) throw e
      const subnets = (n.spec.IPAM?.Config ?? []).map((c) => c.Subnet).join(', ')
      if (!n.anySubnet) {
        throw new HolyshipError('TARGET_EXISTS', `network ${n.name} cannot be made on ${engine.host} with its snapshot's subnet (${subnets}), which the container's fixed address needs: it overlaps a network there`, {
          hint: 'remove or move the network that overlaps it',
          cause: e,
        })
      }
      await engine.createNetwork(n.anySubnet)
      plan.warnings.push(`network ${n.name} was made on a subnet of ${engine.host}'s choosing: its snapshot's (${subnets}) overlaps a network there`)
    }
    created.add(`network ${n.name}`, () => engine.removeNetwork(n.name))
  }
}

async function restoreVolumes(opts: RestoreOptions, created: Created, replaced: Replaced): Promise<RestoreResult> {
  const mounts = opts.manifest.mounts
  if (opts.name && mounts.length !== 1) throw new HolyshipError('USAGE', '--name needs a snapshot of exactly one volume')
  const names = mounts.map((m) => opts.name ?? volumeName(opts, m))
  const there = await preflightVolumes(opts, mounts, names)
  const toEmpty = await checkBindDevices(opts, mounts, names, there)
  await keepReplaced(opts, undefined, there, replaced)
  await replaceVolumes(opts, mounts, names, created, replaced, toEmpty)
  let bytes = 0
  const skipped: SkippedEntry[] | undefined = opts.partial ? [] : undefined
  const xattrs: XattrsNotSet = {total: 0, first: []}
  const warnings: string[] = []
  for (let i = 0; i < mounts.length; i++) {
    if (opts.attachAsIs?.has(names[i])) continue
    const left: SkippedEntry[] | undefined = skipped ? [] : undefined
    // written straight into the volume's directory where it can be (volumeDir), else through the helper
    await withHelper(opts, [`${names[i]}:/holyship-volume:nocopy`], undefined, (helper) => fillMount(opts, helper, mounts[i], '/holyship-volume', xattrs, warnings, left, names[i]))
    // paths inside the volume, named after it
    if (left) skipped!.push(...left.map((e) => ({path: `${names[i]}:${e.path.slice('/holyship-volume'.length)}`, reason: e.reason})))
    bytes += mounts[i].stats.bytes
  }
  return {snapshot: opts.snapshotId, kind: 'volume', volumes: names.map((n) => ({name: n, destination: ''})), binds: [], bytes, ...(skipped ? {skipped} : {}), ...(warnings.length ? {warnings} : {}), ...(xattrs.total > 0 ? {xattrsNotSet: xattrs} : {})}
}

export interface RestorePathOptions {
  repo: Repository
  snapshotId: string
  manifest: SnapshotManifest
  /** a path as the container sees it (`/data/x`, `/etc/passwd`), or inside a volume snapshot */
  path: string
  target: string
  force?: boolean
  /** restore what can be restored; damaged files are left out and listed in `skipped` */
  partial?: boolean
  progress?: Progress
}

export interface RestorePathResult {
  source: string
  target: string
  files: number
  bytes: number
  /** --partial: what could not be restored (paths as the container sees them) */
  skipped?: SkippedEntry[]
  /** extended attributes that could not be set (paths on this host); absent when none */
  xattrsNotSet?: XattrsNotSet
  /** --force: what it replaced and could not remove afterwards (see restoreToDir); absent when none */
  warnings?: string[]
}

/**
 * restore --path of a bind-mounted file: written into the target under the name the container
 * sees (the tree has it under its source's name on the host), by way of a temporary directory
 * in the target and a rename, so a file that is there is replaced whole or not at all.
 */
async function restoreBoundFile(opts: RestorePathOptions, m: MountRecord): Promise<RestorePathResult> {
  const node = await fileOfBind(opts, m)
  if (!node) throw new HolyshipError('PATH_NOT_FOUND', `${m.destination} in snapshot ${opts.snapshotId.slice(0, 12)} is a bind mount of ${m.source}, which is not a file (a socket or a device): it has no content`)
  const target = path.resolve(opts.target)
  const final = path.join(target, path.posix.basename(m.destination))
  await makeTarget(target)
  if (!opts.force && (await fsp.lstat(final).catch(() => undefined))) throw new HolyshipError('TARGET_EXISTS', `${final} exists`, {hint: 'use --force to overwrite'})
  const progress = opts.progress ?? silentProgress
  progress.phase(`restoring ${m.destination}`)
  const tmp = await fsp.mkdtemp(path.join(target, '.holyship-'))
  try {
    const r = await restoreToDir(opts.repo, m.tree, node.name, tmp, {onBytes: (n) => progress.add(n)})
    await fsp.rename(path.join(tmp, node.name), final)
    return {source: `bind ${m.source}`, target, files: r.files, bytes: r.bytes, ...(opts.partial ? {skipped: []} : {}), ...(r.xattrsNotSet ? {xattrsNotSet: r.xattrsNotSet} : {})}
  } finally {
    await fsp.rm(tmp, {recursive: true, force: true})
    progress.done()
  }
}

/**
 * Copy one file or folder out of a snapshot to a host directory. The path is looked up in the
 * mount whose destination holds it (longest match), else in the container's filesystem diff.
 */
export async function restorePath(opts: RestorePathOptions): Promise<RestorePathResult> {
  // the catalogue's copy of a manifest is not checked when read (a newer holyship's, say)
  checkManifest(opts.snapshotId, opts.manifest)
  const want = '/' + opts.path.split('/').filter((p) => p !== '' && p !== '.').join('/')
  if (want.split('/').includes('..')) throw new HolyshipError('USAGE', `--path must not contain "..": ${opts.path}`)
  const m = opts.manifest
  let tree: string | undefined
  let rel = ''
  let source = ''
  let base = ''
  let root: TreeNode | undefined
  const candidates = [...m.mounts].sort((a, b) => b.destination.length - a.destination.length)
  for (const mount of candidates) {
    const dest = mount.destination === '' ? '/' : mount.destination
    // a bind-mounted file holds nothing below it
    if (mount.file) {
      if (want === dest) return restoreBoundFile(opts, mount)
      continue
    }
    if (want === dest || want.startsWith(dest === '/' ? '/' : dest + '/')) {
      tree = mount.tree
      rel = want.slice(dest === '/' ? 1 : dest.length + 1)
      source = `${mount.type} ${mount.source}`
      base = dest === '/' ? '' : dest
      root = mount.root
      break
    }
  }
  if (!tree && m.container?.fsDiff) {
    tree = m.container.fsDiff
    rel = want.slice(1)
    source = 'container filesystem diff'
  }
  if (!tree) throw new HolyshipError('PATH_NOT_FOUND', `no path ${want} in snapshot ${opts.snapshotId.slice(0, 12)}`)
  const progress = opts.progress ?? silentProgress
  progress.phase(`restoring ${want}`)
  try {
    const r = await restoreToDir(opts.repo, tree, rel, opts.target, {overwrite: opts.force, root, onBytes: (n) => progress.add(n), skipped: opts.partial ? [] : undefined})
    const out: RestorePathResult = {source, target: path.resolve(opts.target), files: r.files, bytes: r.bytes}
    if (opts.partial) out.skipped = underBase(base, r.skipped)
    if (r.xattrsNotSet) out.xattrsNotSet = r.xattrsNotSet
    if (r.warnings) out.warnings = r.warnings
    return out
  } finally {
    progress.done()
  }
}
