/**
 * Shipping through S3: remotes, push, pull, ship (snapshot + push) and land (pull + restore).
 * One function per command, each with one options object and a typed result; the domain work
 * is in src/transfer/*. Credentials never pass through here: the AWS SDK's provider chain
 * supplies them to S3Backend, and nothing below stores or prints them.
 */
import {promises as fsp} from 'node:fs'
import * as path from 'node:path'
import {LocalBackend} from '../backend/local.js'
import {Catalogue, SnapshotFilter, SnapshotRow, defaultCataloguePath} from '../catalogue/catalogue.js'
import {HolyshipError} from '../errors.js'
import {Progress, silentProgress} from '../progress.js'
import {Backend} from '../backend/backend.js'
import type {MasterKey} from '../repo/crypto.js'
import {unlockRepository} from '../repo/keys.js'
import {RepoLock, withSharedLock} from '../repo/lock.js'
import {Repository} from '../repo/repository.js'
import {createRepositoryCopy, readRemoteConfig} from '../transfer/common.js'
import {PullTransferStats, pullSnapshots, syncRemote} from '../transfer/pull.js'
import {PushResult, pushSnapshots} from '../transfer/push.js'
import {OpenRemoteOptions, RemoteHandle, RemoteRecord, addRemote, listRemotes, openRemote, removeRemote} from '../transfer/remotes.js'
import {defaultRepoPath, openEngine} from './context.js'
import {withLockedContext} from './locking.js'
// ship and land only: loaded by them (dockerode, the archiver...), not by push, pull or list
import type {RestoreResult} from './restore.js'
import {withSharedContext} from './run.js'
import type {ReaderChoice, SnapshotResult} from './snapshot.js'
import type {Consistency} from './state-guard.js'
import {syncCatalogue} from './sync.js'

export type {PushResult} from '../transfer/push.js'
export type {RemoteRecord} from '../transfer/remotes.js'

// ------------------------------------------------------------------------------ remotes

export function remoteAdd(opts: {name: string; url: string; endpoint?: string; region?: string; remotesFile?: string}): Promise<RemoteRecord> {
  return addRemote({name: opts.name, url: opts.url, endpoint: opts.endpoint, region: opts.region, file: opts.remotesFile})
}

export function remoteList(opts: {remotesFile?: string} = {}): Promise<RemoteRecord[]> {
  return listRemotes({file: opts.remotesFile})
}

export function remoteRemove(opts: {name: string; remotesFile?: string}): Promise<RemoteRecord> {
  return removeRemote({name: opts.name, file: opts.remotesFile})
}

// ------------------------------------------------------------------------------ transfers

export interface TransferOptions extends OpenRemoteOptions {
  /** local repository directory (default: $HOLYSHIP_REPO, else $XDG_DATA_HOME/holyship/repo) */
  repo?: string
  /** catalogue file (default: $HOLYSHIP_CATALOGUE, else $XDG_CACHE_HOME/holyship/catalogue.sqlite3) */
  catalogue?: string
  progress?: Progress
}

async function withRemote<T>(opts: TransferOptions, fn: (remote: RemoteHandle) => Promise<T>): Promise<T> {
  const remote = await openRemote(opts)
  try {
    return await fn(remote)
  } finally {
    await remote.close()
  }
}

/**
 * Push local snapshots (default: every one the remote lacks) to a remote. The local repository
 * is read under a shared lock (a local prune must not repack the packs being sent); a read-only
 * repository, where no lock can be written, is sent without it after `unlocked` is told why.
 */
export async function push(opts: TransferOptions & {snapshots?: string[]; unlocked?: (why: string) => void}): Promise<PushResult> {
  return withRemote(opts, async (remote) =>
    // the blob index only once there is something to send: a push of what the remote already
    // has is answered from the catalogue and a few requests
    withSharedContext(
      {repo: opts.repo, catalogue: opts.catalogue, lazyIndex: true},
      {purpose: 'push', writes: false, unlocked: opts.unlocked ?? (() => undefined)},
      (ctx) => pushSnapshots({repo: ctx.repo, catalogue: ctx.catalogue, remote, snapshots: opts.snapshots, parallel: opts.parallel, progress: opts.progress, loadIndex: ctx.ensureIndex}),
    ),
  )
}

export interface PullResult extends PullTransferStats {
  /** s3://bucket/prefix */
  remote: string
  remoteName?: string
  /** the remote's repository id */
  remoteRepository: string
  /** the local repository id (absent for a pull of the snapshot list only) */
  repository?: string
  sameRepository?: boolean
  /** the local repository was created by this pull, as a copy of the remote's config */
  createdRepository: boolean
  /** the snapshot ids asked for, resolved on the remote, in the order asked */
  snapshots: string[]
  /** without snapshot arguments: the remote's snapshots, oldest first */
  remoteSnapshots?: SnapshotRow[]
  durationMs: number
}

/**
 * Pull snapshots (id, prefix, latest, latest:NAME, resolved against the remote) into the local
 * repository, creating it from the remote's config when it does not exist. Without snapshots:
 * only the remote's snapshot list (manifests and index files, no packs) is fetched.
 */
export async function pull(opts: TransferOptions & {snapshots?: string[]}): Promise<PullResult> {
  return withRemote(opts, async (remote) => {
    const cat = Catalogue.open(opts.catalogue ?? defaultCataloguePath())
    try {
      const {local, lock, ...result} = await pullWith(opts, remote, cat)
      void local
      await lock?.release().catch(() => undefined)
      return result
    } finally {
      cat.close()
    }
  })
}

/**
 * The pull itself. With snapshots, it returns the local repository and its shared lock, taken
 * before its index was read and held: the caller releases it (land, once it has restored).
 */
async function pullWith(
  opts: TransferOptions & {snapshots?: string[]},
  remote: RemoteHandle,
  cat: Catalogue,
): Promise<PullResult & {local?: Repository; lock?: RepoLock}> {
  const t0 = Date.now()
  const parallel = opts.parallel ?? 4
  const progress = opts.progress ?? silentProgress
  const rc = await requireRemoteConfig(remote)
  // an encrypted remote's index files and manifests need its key: the passphrase opens one of
  // its key files (nothing is written anywhere before that)
  let key: MasterKey | undefined
  if (rc.config.encryption) key = (await unlockRepository(remote.backend)).key
  const base = {
    remote: remote.location,
    ...(remote.name ? {remoteName: remote.name} : {}),
    remoteRepository: rc.config.id,
  }
  const refs = opts.snapshots ?? []
  const readList = async (): Promise<void> => {
    progress.phase(`reading the snapshot list of ${remote.location}`)
    await syncRemote(cat, remote, parallel, key)
  }
  if (refs.length === 0) {
    await readList()
    progress.done()
    return {
      ...base,
      createdRepository: false,
      snapshots: [],
      remoteSnapshots: cat.listSnapshots(remote.namespace),
      snapshotsPulled: [],
      snapshotsSkipped: [],
      packsReceived: 0,
      packsSkipped: 0,
      bytesReceived: 0,
      bytesSkipped: 0,
      indexFilesWritten: 0,
      durationMs: Date.now() - t0,
    }
  }
  // the remote's index is read, and its packs fetched, under a shared lock there: a prune of it
  // (exclusive) does not repack a pack from under this pull
  return withRemoteReadLock(remote, 'pull', progress, async () => {
    await readList()
    // resolve before touching the local side: a typo creates nothing
    const ids = refs.map((r) => {
      try {
        return cat.resolveSnapshot(remote.namespace, r)
      } catch (e) {
        if (e instanceof HolyshipError && e.code === 'SNAPSHOT_NOT_FOUND') {
          throw new HolyshipError('SNAPSHOT_NOT_FOUND', `${e.message} at ${remote.location}`, {hint: e.hint})
        }
        throw e
      }
    })
    const {repo, created, lock} = await openOrCreateLocal(opts.repo ?? defaultRepoPath(), cat, rc.raw, rc.config.encryption ? remote.backend : undefined)
    try {
      return {...(await pullInto(repo, created, ids)), lock}
    } catch (e) {
      await lock.release().catch(() => undefined)
      throw e
    }
  })

  async function pullInto(repo: Repository, created: boolean, ids: string[]): Promise<PullResult & {local: Repository}> {
    if ((key || repo.encrypted) && (repo.id !== rc.config.id || !key || !repo.masterKey || !repo.masterKey.equals(key))) {
      // one side's key cannot read the other's objects
      throw new HolyshipError(
        repo.id === rc.config.id ? 'REMOTE_CORRUPT' : 'USAGE',
        repo.id === rc.config.id
          ? `${remote.location} has this repository's id but not its key`
          : `${remote.location} holds repository ${rc.config.id.slice(0, 12)}${key ? ' (encrypted)' : ''}, not the local ${repo.encrypted ? 'encrypted ' : ''}repository ${repo.id.slice(0, 12)}: an encrypted repository is only pulled into its own copy`,
        {hint: repo.id === rc.config.id ? undefined : 'pull into a new directory (--repo)'},
      )
    }
    if (repo.id !== rc.config.id) {
      progress.note(`note: the local repository ${repo.id.slice(0, 12)} is not ${remote.location}'s (${rc.config.id.slice(0, 12)}); data still dedups by content hash`)
    }
    const stats = await pullSnapshots({repo, catalogue: cat, remote, ids, parallel, progress})
    return {
      ...base,
      repository: repo.id,
      sameRepository: repo.id === rc.config.id,
      createdRepository: created,
      snapshots: ids,
      ...stats,
      durationMs: Date.now() - t0,
      local: repo,
    }
  }
}

/**
 * Run fn under a shared lock of the remote. Credentials that may read but not write there (a
 * restore-only key) cannot leave a lock: fn then runs without, after a note saying so.
 */
async function withRemoteReadLock<T>(remote: RemoteHandle, purpose: string, progress: Progress, fn: () => Promise<T>): Promise<T> {
  let held = false
  try {
    return await withSharedLock(
      remote.backend,
      purpose,
      () => {
        held = true
        return fn()
      },
      {waitMs: 60_000, onWait: (m) => progress.note(m)},
    )
  } catch (e) {
    if (held || !(e instanceof HolyshipError && e.code === 'REMOTE_DENIED')) throw e
    progress.note(`note: no lock can be written to ${remote.location} (${e.message}): reading without it, so a prune there meanwhile could fail this ${purpose}`)
    return fn()
  }
}

/**
 * Open the local repository and bring the catalogue up to date; when the directory is missing
 * or empty, create the repository first with the remote's config (same id and chunker seed)
 * and, for an encrypted remote (`keysFrom`), its key files.
 */
async function openOrCreateLocal(dirArg: string, cat: Catalogue, remoteConfig: Buffer, keysFrom?: Backend): Promise<{repo: Repository; created: boolean; lock: RepoLock}> {
  const dir = path.resolve(dirArg)
  const entries = await fsp.readdir(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined
    if (e.code === 'ENOTDIR') throw new HolyshipError('REPO_MISSING', `${dir} is not a directory`)
    throw e
  })
  let created = false
  if (!entries || entries.length === 0) {
    await fsp.mkdir(dir, {recursive: true, mode: 0o700})
    // a pull that created it at the same moment keeps its config, and this one goes on with
    // the repository that is there
    created = (await createRepositoryCopy(new LocalBackend(dir), remoteConfig, keysFrom)).created
  } else if (!entries.includes('config')) {
    throw new HolyshipError('REPO_EXISTS', `${dir} is not empty and not a holyship repository`, {hint: 'pass --repo with an empty or new directory'})
  }
  // a shared lock (pull writes packs, index files and manifests; a prune waits), taken before
  // the index is read: a prune that finished a moment ago has rewritten it, and the sync sees that
  const backend = new LocalBackend(dir)
  const lock = await RepoLock.acquire(backend, {exclusive: false, purpose: 'pull', waitMs: 60_000})
  try {
    const repo = await Repository.open(backend, {loadIndex: false})
    repo.treeCache = cat
    await syncCatalogue(cat, repo)
    return {repo, created, lock}
  } catch (e) {
    await lock.release().catch(() => undefined)
    throw e
  }
}

/** the remote's repository config: REMOTE_NOT_FOUND when no holyship repository is there */
export async function requireRemoteConfig(remote: RemoteHandle): Promise<NonNullable<Awaited<ReturnType<typeof readRemoteConfig>>>> {
  const rc = await readRemoteConfig(remote)
  if (!rc) {
    throw new HolyshipError('REMOTE_NOT_FOUND', `no holyship repository at ${remote.location} (${remote.endpointName})`, {
      hint: 'push to it first, or check the bucket, prefix and endpoint',
    })
  }
  return rc
}

/**
 * Bring the catalogue's copy of the remote's snapshot list up to date (reading the remote's
 * manifests; an encrypted remote asks for its passphrase). Its rows are then under
 * `remote.namespace`.
 */
export async function refreshRemoteSnapshots(opts: TransferOptions, remote: RemoteHandle, cat: Catalogue): Promise<void> {
  await pullWith({...opts, snapshots: []}, remote, cat)
}

/** The remote's snapshots (after fetching its snapshot list), filtered like `list`. */
export async function listRemoteSnapshots(opts: TransferOptions & SnapshotFilter): Promise<SnapshotRow[]> {
  return withRemote(opts, async (remote) => {
    const cat = Catalogue.open(opts.catalogue ?? defaultCataloguePath())
    try {
      await refreshRemoteSnapshots(opts, remote, cat)
      return cat.listSnapshots(remote.namespace, {container: opts.container, volume: opts.volume, tag: opts.tag})
    } finally {
      cat.close()
    }
  })
}

// ------------------------------------------------------------------------------ ship and land

export interface ShipOptions extends TransferOptions {
  containers?: string[]
  volumes?: string[]
  tags?: string[]
  consistency?: Consistency
  reader?: ReaderChoice
  dockerHost?: string
}

export interface ShipResult {
  snapshots: SnapshotResult[]
  push: PushResult
}

/** Snapshot containers/volumes into the local repository, then push exactly those snapshots. */
export async function ship(opts: ShipOptions): Promise<ShipResult> {
  return withRemote(opts, async (remote) => {
    // fail on a wrong bucket, endpoint or credentials before pausing anything
    await readRemoteConfig(remote)
    // the local repository under a shared lock from the snapshot to the end of the push: a
    // prune there must neither delete what the snapshot dedups against nor repack what is sent
    return withLockedContext({repo: opts.repo, catalogue: opts.catalogue, exclusive: false, purpose: 'ship', waitMs: 60_000}, async (ctx, lock) => {
      const engine = await openEngine({dockerHost: opts.dockerHost})
      const {snapshot} = await import('./snapshot.js')
      const snaps = await snapshot({
        repo: ctx.repo,
        catalogue: ctx.catalogue,
        engine,
        containers: opts.containers,
        volumes: opts.volumes,
        tags: opts.tags,
        consistency: opts.consistency,
        reader: opts.reader,
        progress: opts.progress,
        lock,
      })
      let pushed: PushResult
      try {
        pushed = await pushSnapshots({
          repo: ctx.repo,
          catalogue: ctx.catalogue,
          remote,
          snapshots: snaps.map((s) => s.id),
          parallel: opts.parallel,
          progress: opts.progress,
        })
      } catch (e) {
        if (e instanceof HolyshipError) {
          throw new HolyshipError(e.code, `${e.message} (the snapshot${snaps.length > 1 ? 's' : ''} ${snaps.map((s) => s.id.slice(0, 12)).join(', ')} ${snaps.length > 1 ? 'are' : 'is'} in the local repository)`, {
            cause: e,
            hint: `run \`holyship push --to ${opts.remote}\` to resume`,
          })
        }
        throw e
      }
      return {snapshots: snaps, push: pushed}
    })
  })
}

export interface LandOptions extends TransferOptions {
  /** id, unique prefix, latest or latest:NAME, resolved against the remote */
  snapshot: string
  name?: string
  volumePrefix?: string
  start?: boolean
  force?: boolean
  /** see RestoreOptions.keepReplaced */
  keepReplaced?: boolean
  dockerHost?: string
}

export interface LandResult {
  pull: PullResult
  restore: RestoreResult
}

/**
 * Pull one snapshot (creating the local repository from the remote's config on a host that has
 * none) and restore it on the engine.
 */
export async function land(opts: LandOptions): Promise<LandResult> {
  const engine = await openEngine({dockerHost: opts.dockerHost})
  // no download for an engine we cannot reach
  await engine.ping()
  const {restore} = await import('./restore.js')
  return withRemote(opts, async (remote) => {
    const cat = Catalogue.open(opts.catalogue ?? defaultCataloguePath())
    try {
      // the pull's lock is held through the restore (what --force replaces is snapshotted into
      // the local repository, against the index the pull read under it)
      const {local, lock, ...pulled} = await pullWith({...opts, snapshots: [opts.snapshot]}, remote, cat)
      try {
        const id = pulled.snapshots[0]
        const manifest = cat.getManifest(local!.id, id)
        if (!manifest) throw new HolyshipError('SNAPSHOT_NOT_FOUND', `snapshot ${id} is not in the local catalogue after the pull`)
        const restored = await restore({
          repo: local!,
          engine,
          snapshotId: id,
          manifest,
          name: opts.name,
          volumePrefix: opts.volumePrefix,
          start: opts.start,
          force: opts.force,
          catalogue: cat,
          keepReplaced: opts.keepReplaced,
          lock,
          progress: opts.progress,
        })
        return {pull: pulled, restore: restored}
      } finally {
        await lock?.release().catch(() => undefined)
      }
    } finally {
      cat.close()
    }
  })
}
