/**
 * snapshot: a container (its config, image, writable-layer diff and every volume and bind
 * mount) or standalone volumes, into the repository. Nothing is recorded unless everything
 * is durable; the container is always put back into the state it was in.
 */
import {readdirSync, realpathSync, statSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import debugFactory from 'debug'
import type Docker from 'dockerode'
import {Archiver, FILE_ROOT} from '../archive/archiver.js'
import {archiveDir} from '../archive/fs-source.js'
import {fsPath, nameFromBytes} from '../archive/names.js'
import {Catalogue} from '../catalogue/catalogue.js'
import {Access, Probe, VolumeSite, goDirect, volumeReadPath} from '../docker/direct.js'
import {ContainerInspect, Engine} from '../docker/engine.js'
import {HolyshipError} from '../errors.js'
import {Progress, silentProgress} from '../progress.js'
import {ArchiveStats, ContainerRecord, ImageRecord, MountRecord, SnapshotManifest, TreeNode} from '../repo/format.js'
import {Repository} from '../repo/repository.js'
import {BUILTIN_NETWORKS, networkRecord} from './networks.js'
import {recoverOnce} from './pause-journal.js'
import {Consistency, StateGuard} from './state-guard.js'

const debug = debugFactory('holyship:snapshot')

export type ReaderChoice = Access

export interface SnapshotOptions {
  repo: Repository
  catalogue: Catalogue
  engine: Engine
  containers?: string[]
  volumes?: string[]
  tags?: string[]
  consistency?: Consistency
  reader?: ReaderChoice
  progress?: Progress
  /**
   * the shared repository lock this snapshot holds (src/repo/lock.ts): checked right before
   * the manifest is written, so a prune that broke it can never orphan the snapshot's data
   */
  lock?: {assertHeld(): Promise<void>}
}

export interface SnapshotResult {
  id: string
  kind: 'container' | 'volume'
  name: string
  time: string
  bytes: number
  newBytes: number
  files: number
  durationMs: number
  reader: 'api' | 'direct'
  /** files that changed while they were read (live snapshots) */
  changed: string[]
  /**
   * api reader: paths the container deleted whose names are not UTF-8. The engine names them
   * with U+FFFD (Go's JSON), so their bytes are unknown here and the deletion is recorded under
   * that name: a restore shows the image's file again. Absent when none.
   */
  unnamedDeletions?: string[]
}

/** Snapshot each container, then the standalone volumes (one snapshot each). */
export async function snapshot(opts: SnapshotOptions): Promise<SnapshotResult[]> {
  const containers = opts.containers ?? []
  const volumes = opts.volumes ?? []
  if (containers.length === 0 && volumes.length === 0) {
    throw new HolyshipError('USAGE', 'name at least one container, or --volume NAME')
  }
  await opts.engine.ping()
  // directAccess will need `docker info` (the Engine keeps it): ask it during the recovery
  if (opts.reader !== 'api' && opts.engine.isLocalSocket && process.getuid?.() === 0) opts.engine.info().catch(() => undefined)
  // containers a killed holyship left paused or stopped on this engine are put back first,
  // so what is inspected below is their real state
  await recoverOnce(opts.engine)
  // check every name first so a typo fails before any work is done
  const infos = []
  for (const c of containers) infos.push(await opts.engine.inspectContainer(c))
  // a container started with --rm is removed by the engine once stopped, with its anonymous volumes
  const autoRemoved = opts.consistency === 'stop' ? infos.find((i) => i.State.Running && i.HostConfig?.AutoRemove) : undefined
  if (autoRemoved) {
    throw new HolyshipError('USAGE', `--stop would remove container ${autoRemoved.Name.replace(/^\//, '')}: it was started with --rm, so the engine removes it (and its anonymous volumes) once it stops`, {
      hint: 'snapshot it paused (the default) or with --no-pause',
    })
  }
  // started again after the read, a container the user paused would be left running
  const paused = opts.consistency === 'stop' ? infos.find((i) => i.State.Paused) : undefined
  if (paused) {
    throw new HolyshipError('USAGE', `--stop would leave container ${paused.Name.replace(/^\//, '')} running: it is paused, and a stopped container starts again unpaused`, {
      hint: 'snapshot it as it is, paused (without --stop), or unpause it first',
    })
  }
  for (const v of volumes) await opts.engine.inspectVolume(v)
  const results: SnapshotResult[] = []
  for (const info of infos) results.push(await snapshotContainer(opts, info))
  for (const v of volumes) results.push(await snapshotVolume(opts, v))
  return results
}

async function chooseReader(opts: SnapshotOptions, probe: Probe): Promise<'api' | 'direct'> {
  const direct = await goDirect(opts.engine, opts.reader ?? 'auto', probe, `--reader direct needs root on the engine's own host; ${opts.engine.host} is not readable here`)
  return direct ? 'direct' : 'api'
}

function emptyStats(): ArchiveStats {
  return {files: 0, dirs: 0, others: 0, bytes: 0, newBytes: 0, newBlobs: 0}
}

/** Store the image (docker save) unless the repository has it already. */
async function storeImage(opts: SnapshotOptions, imageId: string): Promise<{record: ImageRecord; newBytes: number}> {
  const {repo, catalogue, engine} = opts
  const known = catalogue.findImage(repo.id, imageId)
  if (known && repo.hasBlob(known.tree)) {
    debug('image %s already stored', imageId.slice(0, 19))
    return {record: known, newBytes: 0}
  }
  const inspect = await engine.inspectImage(imageId)
  if (!inspect) throw new HolyshipError('DOCKER_FAILED', `image ${imageId} of the container is not on the engine`)
  const progress = opts.progress ?? silentProgress
  progress.phase(`image ${(inspect.RepoTags ?? [])[0] ?? imageId.slice(7, 19)}`, inspect.Size)
  const archiver = new Archiver(repo, (n) => progress.add(n))
  const stream = await engine.saveImage(imageId)
  await archiver.add({path: 'image.tar', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: [Math.floor(Date.now() / 1000), 0], content: stream})
  const tree = await archiver.finish()
  const record: ImageRecord = {id: imageId, repoTags: inspect.RepoTags ?? [], tree, size: archiver.stats.bytes}
  return {record, newBytes: archiver.stats.newBytes}
}

/** The parts of `docker inspect` needed to re-create the container elsewhere. */
async function containerRecord(engine: Engine, info: ContainerInspect, image: ImageRecord): Promise<Omit<ContainerRecord, 'fsDiff' | 'fsDiffStats'>> {
  const networks: ContainerRecord['networks'] = []
  for (const [name, ep] of Object.entries(info.NetworkSettings?.Networks ?? {})) {
    const net = BUILTIN_NETWORKS.includes(name) ? undefined : await engine.inspectNetwork(name)
    networks.push(networkRecord(info.Id, name, ep, net))
  }
  const config = {...(info.Config as unknown as Record<string, unknown>)}
  const hostConfig = {...(info.HostConfig as unknown as Record<string, unknown>)}
  // another container's network, IPC or PID namespace, by its name: its id is this engine's
  // alone (a restore elsewhere, or of that one too, gives it another)
  for (const k of ['NetworkMode', 'IpcMode', 'PidMode']) {
    const v = hostConfig[k]
    if (typeof v !== 'string' || !v.startsWith('container:')) continue
    const other = await engine.inspectContainer(v.slice('container:'.length)).catch(() => undefined)
    if (other) hostConfig[k] = `container:${other.Name.replace(/^\//, '')}`
  }
  return {
    id: info.Id,
    name: info.Name.replace(/^\//, ''),
    config,
    hostConfig,
    networks,
    image,
    state: {running: info.State.Running, paused: info.State.Paused},
  }
}

interface MountSource {
  type: 'volume' | 'bind'
  source: string
  destination: string
  readOnly: boolean
  /** where this host can read it directly */
  hostPath?: string
  driver?: string
}

function mountsOf(info: ContainerInspect): MountSource[] {
  const out: MountSource[] = []
  for (const m of info.Mounts ?? []) {
    if (m.Type === 'volume') {
      out.push({type: 'volume', source: m.Name ?? '', destination: m.Destination, readOnly: !m.RW, hostPath: m.Source, driver: m.Driver})
    } else if (m.Type === 'bind') {
      out.push({type: 'bind', source: m.Source, destination: m.Destination, readOnly: !m.RW, hostPath: m.Source})
    }
  }
  return out
}

async function readMount(
  opts: SnapshotOptions,
  reader: 'api' | 'direct',
  containerId: string,
  m: MountSource,
  prev?: Pick<MountRecord, 'tree' | 'root'>,
): Promise<{tree: string; stats: ArchiveStats; root?: TreeNode; file?: true}> {
  const progress = opts.progress ?? silentProgress
  progress.phase(`${m.type} ${m.type === 'volume' ? m.source : m.destination}`)
  const archiver = new Archiver(opts.repo, (n) => progress.add(n))
  // a bind of one file: its tree is a root made up for it holding the file, named as on the
  // host; of something else that is not a directory (a socket: /var/run/docker.sock), an empty one
  let file = false
  if (reader === 'direct' && m.hostPath) {
    const st = m.type === 'bind' ? statSync(m.hostPath, {throwIfNoEntry: false}) : undefined
    if (st && !st.isDirectory()) {
      file = true
      // the file itself, where the source is a symlink (/etc/localtime); as bytes, names.ts
      const real = nameFromBytes(realpathSync(fsPath(m.hostPath), {encoding: 'buffer'}))
      if (st.isFile()) {
        archiver.stats.changed = await archiveDir(path.dirname(real), archiver, {only: path.basename(real), parent: parentOf(opts, prev?.tree)})
        // gone between the two looks: said, like any file that changed while being read
        if (archiver.stats.files === 0) archiver.stats.changed.push(path.basename(real))
      } else await archiver.add(FILE_ROOT)
    } else archiver.stats.changed = await archiveDir(m.hostPath, archiver, {parent: parentOf(opts, prev?.tree, prev?.root)})
  } else {
    const {archiveTar} = await tarSource()
    const fileRoot = m.type === 'bind' ? path.posix.basename(m.source) : undefined
    const rootType = await apiRead(`${m.destination} of the container`, async () => archiveTar(await opts.engine.getArchive(containerId, m.destination), archiver, {stripFirst: true, fileRoot}))
    // a device or fifo is recorded without content, like a socket, of which the engine's
    // archive holds nothing (Go's tar cannot write one)
    file = m.type === 'bind' && rootType !== 'dir'
    if (file && rootType !== 'file') await archiver.add(FILE_ROOT)
  }
  const tree = await archiver.finish()
  // a file's made-up (or its directory's) root is not the mount's: not recorded
  return file ? {tree, stats: archiver.stats, file: true} : {tree, stats: archiver.stats, root: archiver.rootNode()}
}

/**
 * How one mount of a container is read, with `reader` chosen for the container: a volume
 * whose files a direct read cannot find (volumeReadPath: one the engine mounts only while a
 * container uses it) through the API, or refused where --reader direct was asked; a direct
 * read takes the volume's files where volumeReadPath finds them (a bind volume's source)
 */
function mountReader(opts: SnapshotOptions, reader: 'api' | 'direct', m: MountSource, v: VolumeSite | undefined): 'api' | 'direct' {
  if (reader === 'api' || m.type !== 'volume' || !v) return reader
  const at = volumeReadPath(v)
  // a bind's directory as this host sees it: symlinks resolved; missing, not a directory or
  // empty (another mount namespace than the engine's?), read through the engine
  const real = at === undefined || at === v.Mountpoint ? at : realDir(at)
  if (real !== undefined) {
    m.hostPath = real
    return reader
  }
  if (opts.reader === 'direct') {
    throw new HolyshipError('USAGE', `--reader direct cannot read volume ${m.source}: the engine mounts it (driver ${v.Driver}, options ${JSON.stringify(v.Options ?? {})}) only while a container uses it`)
  }
  return 'api'
}

function realDir(p: string): string | undefined {
  try {
    const real = realpathSync(p)
    return statSync(real).isDirectory() && readdirSync(real).length > 0 ? real : undefined
  } catch {
    return undefined
  }
}

/** The writable layer's changes: added, modified and deleted paths, as an OCI-style diff tree. */
async function readFsDiff(
  opts: SnapshotOptions,
  reader: 'api' | 'direct',
  info: ContainerInspect,
  mounts: MountSource[],
  parentTree?: string,
): Promise<{tree?: string; stats: ArchiveStats; unnamedDeletions?: string[]}> {
  const {engine, repo} = opts
  const progress = opts.progress ?? silentProgress
  const mountPaths = new Set(mounts.map((m) => m.destination.replace(/^\/+/, '')))
  const upper = info.GraphDriver?.Name === 'overlay2' ? info.GraphDriver.Data?.UpperDir : undefined
  progress.phase('container filesystem')
  const archiver = new Archiver(repo, (n) => progress.add(n))
  let unnamed: string[] = []
  if (reader === 'direct' && upper) {
    archiver.stats.changed = await archiveDir(upper, archiver, {overlay: true, exclude: mountPaths, parent: parentOf(opts, parentTree)})
  } else {
    const changes = await engine.changes(info.Id)
    if (changes.length === 0) return {stats: emptyStats()}
    const {archiveChanges} = await tarSource()
    unnamed = await apiRead('the container filesystem', () => archiveChanges(changes, mountPaths, () => engine.exportContainer(info.Id), archiver))
  }
  const s = archiver.stats
  const more = unnamed.length ? {unnamedDeletions: unnamed} : {}
  if (s.files + s.dirs + s.others === 0) return {stats: s, ...more}
  const tree = await archiver.finish()
  return {tree, stats: archiver.stats, ...more}
}

/** the API reader's tar parsing, loaded only when the API reader is used */
const tarSource = (): Promise<typeof import('../archive/tar-source.js')> => import('../archive/tar-source.js')

/**
 * A tar stream from the engine that breaks mid-way (the engine's "archive/tar: write too long"
 * when a file grows while a live container is read, or the engine going away) is the engine's
 * failure, reported as such, not our bug.
 */
async function apiRead<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn()
  } catch (e) {
    if (e instanceof HolyshipError || (e as NodeJS.ErrnoException).code === 'ENOSPC') throw e
    throw new HolyshipError('DOCKER_FAILED', `reading ${what} through the Docker API failed: ${(e as Error).message}`, {
      hint: 'files that change while read break the engine\'s tar stream: pause the container (the default) or run as root on the engine host (direct reader)',
      cause: e,
    })
  }
}

function parentOf(opts: SnapshotOptions, tree: string | undefined, root?: TreeNode): {tree?: string; root?: TreeNode; loadTree: Repository['loadTree']} | undefined {
  return tree ? {tree, ...(root ? {root} : {}), loadTree: (id) => opts.repo.loadTree(id)} : undefined
}

/** The newest earlier snapshot of the same target, for reusing unchanged files. */
function parentManifest(opts: SnapshotOptions, name: string): {id: string; manifest: SnapshotManifest} | undefined {
  const id = latestOf(opts.catalogue, opts.repo, name)
  if (!id) return undefined
  const manifest = opts.catalogue.getManifest(opts.repo.id, id)
  return manifest ? {id, manifest} : undefined
}

function addStats(into: ArchiveStats, s: ArchiveStats): void {
  into.files += s.files
  into.dirs += s.dirs
  into.others += s.others
  into.bytes += s.bytes
  into.newBytes += s.newBytes
  into.newBlobs += s.newBlobs
}

async function snapshotContainer(opts: SnapshotOptions, info: ContainerInspect): Promise<SnapshotResult> {
  const started = Date.now()
  const {repo, catalogue, engine} = opts
  const name = info.Name.replace(/^\//, '')
  const reader = await chooseReader(opts, {containerId: info.Id})
  const consistency = opts.consistency ?? 'pause'
  const total = emptyStats()
  const changed: string[] = []

  // the image is immutable: read it before pausing the container
  const image = await storeImage(opts, info.Image)
  total.newBytes += image.newBytes

  const base = await containerRecord(engine, info, image.record)
  const mounts = mountsOf(info)
  // the volumes' driver, labels and options; and where a direct read finds each one's files
  const volumes = await Promise.all(mounts.map((m) => (m.type === 'volume' ? engine.inspectVolume(m.source) : undefined)))
  const readers = mounts.map((m, i) => mountReader(opts, reader, m, volumes[i]))
  const parent = parentManifest(opts, name)
  const guard = new StateGuard(engine, info.Id, name)
  let fsDiff: {tree?: string; stats: ArchiveStats; unnamedDeletions?: string[]}
  const mountRecords: MountRecord[] = []
  try {
    await guard.enter(consistency, info.State)
    fsDiff = await readFsDiff(opts, reader, info, mounts, parent?.manifest.container?.fsDiff)
    addStats(total, fsDiff.stats)
    changed.push(...(fsDiff.stats.changed ?? []).map((p) => `/${p}`))
    for (const [i, m] of mounts.entries()) {
      const prev = parent?.manifest.mounts.find((p) => p.type === m.type && p.source === m.source && p.destination === m.destination)
      const r = await readMount(opts, readers[i], info.Id, m, prev)
      addStats(total, r.stats)
      changed.push(...(r.stats.changed ?? []).map((p) => `${m.destination}/${p}`))
      const rec: MountRecord = {type: m.type, source: m.source, destination: m.destination, readOnly: m.readOnly, tree: r.tree, stats: r.stats}
      if (r.root) rec.root = r.root
      if (r.file) rec.file = true
      const v = volumes[i]
      if (v) {
        rec.driver = v.Driver
        rec.labels = v.Labels ?? {}
        rec.options = (v.Options as Record<string, string> | null) ?? {}
      }
      mountRecords.push(rec)
    }
    // everything is read: the container runs again while the last pack is written
    const [flushed, restored] = await Promise.allSettled([repo.flush(), guard.restore()])
    if (flushed.status === 'rejected') throw flushed.reason
    if (restored.status === 'rejected') throw restored.reason
  } catch (e) {
    repo.discardPending()
    throw e
  } finally {
    await guard.restore()
    ;(opts.progress ?? silentProgress).done()
  }

  const container: ContainerRecord = {...base, fsDiff: fsDiff.tree, fsDiffStats: fsDiff.stats}
  const manifest: SnapshotManifest = {
    // a bind-mounted file would be restored as a directory by a holyship that reads only 1
    version: mountRecords.some((m) => m.file) ? 2 : 1,
    kind: 'container',
    time: new Date().toISOString(),
    host: os.hostname(),
    tags: opts.tags ?? [],
    consistency,
    reader,
    container,
    mounts: mountRecords,
    stats: {bytes: total.bytes, newBytes: total.newBytes, files: total.files, durationMs: Date.now() - started},
    ...(parent ? {parent: parent.id} : {}),
  }
  await repo.flush()
  await opts.lock?.assertHeld()
  const id = await repo.saveSnapshot(manifest)
  catalogue.recordImage(repo.id, image.record)
  catalogue.recordSnapshot(repo.id, id, manifest)
  return {...result(id, manifest, name, changed), ...(fsDiff.unnamedDeletions ? {unnamedDeletions: fsDiff.unnamedDeletions} : {})}
}

/** the warnings a snapshot's result calls for, one line each (snapshot and ship print them) */
export function snapshotWarnings(r: SnapshotResult): string[] {
  const out: string[] = []
  const some = (paths: string[], n: number): string => paths.slice(0, n).map((p) => JSON.stringify(p)).join(', ') + (paths.length > n ? ', …' : '')
  if (r.changed.length > 0) out.push(`${r.kind} ${r.name}: ${r.changed.length} file(s) changed while being read: ${some(r.changed, 5)}`)
  const u = r.unnamedDeletions
  if (u) {
    out.push(
      `${r.kind} ${r.name}: ${u.length} path(s) deleted in the container have names that are not UTF-8, which the engine's API cannot spell ` +
        `(a restore shows the image's file again; --reader direct records them): ${some(u, 3)}`,
    )
  }
  return out
}

function latestOf(catalogue: Catalogue, repo: Repository, name: string): string | undefined {
  try {
    return catalogue.resolveSnapshot(repo.id, `latest:${name}`)
  } catch {
    return undefined
  }
}

function result(id: string, m: SnapshotManifest, name: string, changed: string[]): SnapshotResult {
  return {
    id,
    kind: m.kind,
    name,
    time: m.time,
    bytes: m.stats.bytes,
    newBytes: m.stats.newBytes,
    files: m.stats.files,
    durationMs: m.stats.durationMs,
    reader: m.reader,
    changed,
  }
}

/**
 * A standalone named volume. Direct read on the engine's host; otherwise through a
 * helper container that mounts the volume and is never started.
 */
async function snapshotVolume(opts: SnapshotOptions, volume: string): Promise<SnapshotResult> {
  const started = Date.now()
  const {repo, catalogue, engine} = opts
  const v = await engine.inspectVolume(volume)
  const parent = parentManifest(opts, volume)
  const m: MountSource = {type: 'volume', source: volume, destination: '/holyship-volume', readOnly: true, hostPath: v.Mountpoint}
  const reader = mountReader(opts, await chooseReader(opts, {mountpoint: v.Mountpoint}), m, v)
  let helper: string | undefined
  let r
  try {
    if (reader === 'api') helper = await createHelperContainer(engine, [`${volume}:/holyship-volume:ro`])
    r = await readMount(opts, reader, helper ?? '', m, parent?.manifest.mounts.find((p) => p.source === volume && p.type === 'volume'))
    await repo.flush()
  } catch (e) {
    repo.discardPending()
    throw e
  } finally {
    // v: also the anonymous volumes the helper's image may declare
    if (helper) await engine.docker.getContainer(helper).remove({force: true, v: true}).catch(() => undefined)
    ;(opts.progress ?? silentProgress).done()
  }
  const rec: MountRecord = {
    type: 'volume',
    source: volume,
    destination: '',
    readOnly: false,
    driver: v.Driver,
    labels: v.Labels ?? {},
    options: (v.Options as Record<string, string> | null) ?? {},
    tree: r.tree,
    stats: r.stats,
  }
  if (r.root) rec.root = r.root
  const manifest: SnapshotManifest = {
    version: 1,
    kind: 'volume',
    time: new Date().toISOString(),
    host: os.hostname(),
    tags: opts.tags ?? [],
    consistency: 'live',
    reader,
    mounts: [rec],
    stats: {bytes: r.stats.bytes, newBytes: r.stats.newBytes, files: r.stats.files, durationMs: Date.now() - started},
    ...(parent ? {parent: parent.id} : {}),
  }
  await repo.flush()
  await opts.lock?.assertHeld()
  const id = await repo.saveSnapshot(manifest)
  catalogue.recordSnapshot(repo.id, id, manifest)
  return result(id, manifest, volume, (r.stats.changed ?? []).map((p) => `/${p}`))
}

/**
 * A container that is created but never started, only so the engine mounts volumes for
 * getArchive/putArchive. It needs an image: any image the engine has will do (nothing runs).
 */
export async function createHelperContainer(engine: Engine, binds: string[], image?: string, network?: {name: string; endpoint: Docker.EndpointSettings}): Promise<string> {
  let img = image
  if (!img) {
    const images = await engine.listImages()
    img = images[0]?.Id
  }
  if (!img) {
    throw new HolyshipError('DOCKER_FAILED', `the engine at ${engine.host} has no image to mount the volume with`, {
      hint: 'run holyship on the engine host as root, or load any image (docker load) first',
    })
  }
  return engine.createContainer({
    Image: img,
    name: `holyship-helper-${process.pid}-${Date.now().toString(36)}`,
    Cmd: ['/holyship-never-started'],
    Entrypoint: [],
    Labels: {'holyship.helper': 'true'},
    HostConfig: {Binds: binds, NetworkMode: network?.name ?? 'none'},
    ...(network ? {NetworkingConfig: {EndpointsConfig: {[network.name]: network.endpoint}}} : {NetworkDisabled: true}),
  } as never)
}
