/**
 * The catalogue: a local SQLite CACHE of one or more repositories, keyed by the repository id
 * (`repo.config.id`), so that `list`, `show`, `diff` and finding a file never read packs. It
 * holds nothing the repository does not: delete it and `rebuildFromRepository` recreates it.
 *
 * Schema (version 1):
 *   trees(id PK, data BLOB, z)                tree blobs by content hash, shared by every
 *                                             repository; z=1: data is deflateRaw'd JSON,
 *                                             z=2: a zstd frame (with its content size)
 *   snapshots(repo_id, id, time, time_ms, host, kind, name, tags, volumes, bytes, new_bytes,
 *             files, parent, image_id, image_tree, manifest)     PK (repo_id, id)
 *   snapshot_targets(repo_id, snapshot_id, kind, target)  the container name and every volume
 *                                             name of a snapshot; cascades with snapshots
 *   images(repo_id, id, repo_tags, tree, size)
 *   index_files(repo_id, id)                  index files whose blobs are in `blobs`
 *   packs(pid, repo_id, id, size)             pack ids interned (saves ~64 bytes per blob)
 *   blobs(repo_id, id, pack -> packs.pid, type 0=data 1=tree, offset, length, raw)
 */
import {mkdirSync} from 'node:fs'
import {createRequire} from 'node:module'
import * as os from 'node:os'
import * as path from 'node:path'
import {inflateRawSync} from 'node:zlib'
import Database from 'better-sqlite3'
import {HolyshipError} from '../errors.js'
import {BlobType, ImageRecord, IndexFile, PackBlob, SnapshotManifest} from '../repo/format.js'
import type {BlobLocation, Repository, TreeCache} from '../repo/repository.js'

/**
 * Ordered schema migrations; migration i brings `PRAGMA user_version` from i to i + 1. Never
 * edit a released step: append a new one.
 */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE trees (
    id   TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    z    INTEGER NOT NULL DEFAULT 0
  );
  CREATE TABLE snapshots (
    repo_id    TEXT NOT NULL,
    id         TEXT NOT NULL,
    time       TEXT NOT NULL,
    time_ms    INTEGER NOT NULL,
    host       TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('container', 'volume')),
    name       TEXT NOT NULL,
    tags       TEXT NOT NULL,
    volumes    TEXT NOT NULL,
    bytes      INTEGER NOT NULL,
    new_bytes  INTEGER NOT NULL,
    files      INTEGER NOT NULL,
    parent     TEXT,
    image_id   TEXT,
    image_tree TEXT,
    manifest   TEXT NOT NULL,
    PRIMARY KEY (repo_id, id)
  );
  CREATE INDEX snapshots_time ON snapshots (repo_id, time_ms, id);
  CREATE INDEX snapshots_image ON snapshots (repo_id, image_id);
  CREATE TABLE snapshot_targets (
    repo_id     TEXT NOT NULL,
    snapshot_id TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('container', 'volume')),
    target      TEXT NOT NULL,
    PRIMARY KEY (repo_id, snapshot_id, kind, target),
    FOREIGN KEY (repo_id, snapshot_id) REFERENCES snapshots (repo_id, id) ON DELETE CASCADE
  ) WITHOUT ROWID;
  CREATE INDEX snapshot_targets_target ON snapshot_targets (repo_id, target, kind);
  CREATE TABLE images (
    repo_id   TEXT NOT NULL,
    id        TEXT NOT NULL,
    repo_tags TEXT NOT NULL,
    tree      TEXT NOT NULL,
    size      INTEGER NOT NULL,
    PRIMARY KEY (repo_id, id)
  );
  CREATE TABLE index_files (
    repo_id TEXT NOT NULL,
    id      TEXT NOT NULL,
    PRIMARY KEY (repo_id, id)
  ) WITHOUT ROWID;
  CREATE TABLE packs (
    pid     INTEGER PRIMARY KEY,
    repo_id TEXT NOT NULL,
    id      TEXT NOT NULL,
    size    INTEGER NOT NULL,
    UNIQUE (repo_id, id)
  );
  -- no foreign key on pack: deleting a pack would scan blobs; forgetRepository deletes both
  CREATE TABLE blobs (
    repo_id TEXT NOT NULL,
    id      TEXT NOT NULL,
    pack    INTEGER NOT NULL,
    type    INTEGER NOT NULL,
    offset  INTEGER NOT NULL,
    length  INTEGER NOT NULL,
    raw     INTEGER NOT NULL,
    PRIMARY KEY (repo_id, id)
  ) WITHOUT ROWID;
  `,
  // 2: the scheduler's state per target (`holyship status`). Unlike the rest of the catalogue
  // this is not in the repository: a rebuild keeps it, deleting the catalogue loses it.
  `
  CREATE TABLE IF NOT EXISTS schedule_state (
    repo_id          TEXT NOT NULL,
    target           TEXT NOT NULL,
    schedule         TEXT,
    last_run_at      INTEGER,
    last_success_at  INTEGER,
    last_failure_at  INTEGER,
    last_error       TEXT,
    last_snapshot    TEXT,
    last_duration_ms INTEGER,
    last_bytes       INTEGER,
    last_new_bytes   INTEGER,
    next_run_at      INTEGER,
    runs             INTEGER NOT NULL DEFAULT 0,
    failures         INTEGER NOT NULL DEFAULT 0,
    overruns         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (repo_id, target)
  ) WITHOUT ROWID;
  `,
]

export const CATALOGUE_SCHEMA_VERSION = MIGRATIONS.length

export interface SnapshotRow {
  id: string
  /** as in the manifest (ISO 8601) */
  time: string
  host: string
  kind: 'container' | 'volume'
  /** the container name, or for a volume snapshot its first volume */
  name: string
  tags: string[]
  bytes: number
  newBytes: number
  files: number
  /** names of the named volumes in the snapshot */
  volumes: string[]
  parent?: string
}

/** one scheduled run's outcome (times in ms since the epoch) */
export interface ScheduleRunRecord {
  at: number
  ok: boolean
  error?: string
  schedule?: string
  snapshot?: string
  durationMs: number
  bytes?: number
  newBytes?: number
  nextRunAt?: number
}

export interface ScheduleStateRow {
  target: string
  schedule?: string
  lastRunAt?: number
  lastSuccessAt?: number
  lastFailureAt?: number
  lastError?: string
  lastSnapshot?: string
  lastDurationMs?: number
  lastBytes?: number
  lastNewBytes?: number
  nextRunAt?: number
  runs: number
  failures: number
  overruns: number
}

export interface SnapshotFilter {
  container?: string
  volume?: string
  tag?: string
}

/** `$HOLYSHIP_CATALOGUE`, else `$XDG_CACHE_HOME/holyship/catalogue.sqlite3`, else `~/.cache/holyship/…` */
export function defaultCataloguePath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HOLYSHIP_CATALOGUE) return env.HOLYSHIP_CATALOGUE
  // the XDG spec says relative values are invalid and must be ignored
  if (env.XDG_CACHE_HOME && path.isAbsolute(env.XDG_CACHE_HOME)) {
    return path.join(env.XDG_CACHE_HOME, 'holyship', 'catalogue.sqlite3')
  }
  return path.join(env.HOME || os.homedir(), '.cache', 'holyship', 'catalogue.sqlite3')
}

/**
 * zstd for cached trees, through zstd-napi's binding with one context each way, loaded on first
 * use: a snapshot reads back every directory's tree of its parent, and a reused context
 * decompresses one in a few µs where inflateRawSync sets up a new zlib stream (~50 µs) each time.
 */
interface TreeZstd {
  compress(data: Buffer): Buffer
  decompress(z: Buffer): Buffer
}
let treeZstd: TreeZstd | undefined
function zstd(): TreeZstd {
  if (!treeZstd) {
    const b = createRequire(import.meta.url)('zstd-napi/binding') as {
      CCtx: new () => {setParameter(p: number, v: number): void; compress2(dst: Uint8Array, src: Uint8Array): number}
      DCtx: new () => {decompress(dst: Uint8Array, src: Uint8Array): number}
      CParameter: Record<string, number>
      compressBound(n: number): number
      getFrameContentSize(src: Uint8Array): number | null
    }
    const c = new b.CCtx()
    c.setParameter(b.CParameter.compressionLevel, 3)
    const d = new b.DCtx()
    treeZstd = {
      compress: (data) => {
        const out = Buffer.allocUnsafe(b.compressBound(data.length))
        return Buffer.from(out.subarray(0, c.compress2(out, data)))
      },
      decompress: (z) => {
        const n = b.getFrameContentSize(z)
        if (n === null || !Number.isSafeInteger(n)) throw new Error('a cached tree without its size')
        const out = Buffer.allocUnsafe(n)
        if (d.decompress(out, z) !== n) throw new Error('a cached tree of the wrong size')
        return out
      },
    }
  }
  return treeZstd
}

const BLOB_TYPE_CODE: Record<BlobType, number> = {data: 0, tree: 1}
const BLOB_TYPES: BlobType[] = ['data', 'tree']

/** docker reports container names with a leading slash */
const containerName = (name: string): string => name.replace(/^\/+/, '')

function targetsOf(m: SnapshotManifest): {kind: 'container' | 'volume'; target: string}[] {
  const out: {kind: 'container' | 'volume'; target: string}[] = []
  if (m.container) out.push({kind: 'container', target: containerName(m.container.name)})
  for (const mount of m.mounts ?? []) if (mount.type === 'volume') out.push({kind: 'volume', target: mount.source})
  return out
}

interface SnapshotDbRow {
  id: string
  time: string
  host: string
  kind: 'container' | 'volume'
  name: string
  tags: string
  volumes: string
  bytes: number
  new_bytes: number
  files: number
  parent: string | null
}

/** the tag of the snapshots a restore with --force makes of what it replaces (services/restore.ts) */
export const REPLACED_TAG = 'replaced-by-restore'

/**
 * SQL: the snapshot (its JSON `tags` column) is not one of what a restore replaced: `latest`
 * is the newest backup, not the state a restore was asked to replace
 */
const NOT_REPLACED = (column: string): string => `NOT EXISTS (SELECT 1 FROM json_each(${column}) j WHERE j.value = '${REPLACED_TAG}')`

const SNAPSHOT_COLUMNS = 's.id, s.time, s.host, s.kind, s.name, s.tags, s.volumes, s.bytes, s.new_bytes, s.files, s.parent'

const toSnapshotRow = (r: SnapshotDbRow): SnapshotRow => ({
  id: r.id,
  time: r.time,
  host: r.host,
  kind: r.kind,
  name: r.name,
  tags: JSON.parse(r.tags) as string[],
  bytes: r.bytes,
  newBytes: r.new_bytes,
  files: r.files,
  volumes: JSON.parse(r.volumes) as string[],
  ...(r.parent ? {parent: r.parent} : {}),
})

/** a catalogue file SQLite cannot read: `catalogue rebuild` moves it aside and makes a new one */
export class DamagedCatalogueError extends HolyshipError {
  constructor(file: string, cause: unknown) {
    super('IO_FAILED', `catalogue ${file} is not a valid SQLite database`, {
      hint: 'it is only a cache: `holyship catalogue rebuild` moves it aside and rebuilds it from the repository',
      cause,
    })
  }
}

export class Catalogue implements TreeCache {
  private readonly stmts = new Map<string, Database.Statement>()
  /** trees read or written through this connection: putTree skips its look-up for these */
  private readonly treesSeen = new Set<string>()

  private constructor(
    private readonly db: Database.Database,
    readonly file: string,
  ) {}

  static open(file: string): Catalogue {
    let db: Database.Database | undefined
    try {
      mkdirSync(path.dirname(path.resolve(file)), {recursive: true})
      db = new Database(file)
      db.pragma('busy_timeout = 5000')
      db.pragma('journal_mode = WAL')
      // a cache: losing the last transactions on power loss is fine, corruption is not (WAL)
      db.pragma('synchronous = NORMAL')
      db.pragma('foreign_keys = ON')
      migrate(db, file)
      return new Catalogue(db, file)
    } catch (e) {
      db?.close()
      if (e instanceof HolyshipError) throw e
      const code = (e as {code?: string}).code
      if (code === 'SQLITE_NOTADB' || code === 'SQLITE_CORRUPT') {
        throw new DamagedCatalogueError(file, e)
      }
      if (code === 'SQLITE_CANTOPEN' || code === 'SQLITE_READONLY' || code === 'EACCES' || code === 'EROFS') {
        throw new HolyshipError('IO_FAILED', `cannot open catalogue ${file}: ${(e as Error).message}`, {cause: e})
      }
      throw e
    }
  }

  close(): void {
    if (this.db.open) this.db.close()
  }

  /** Run fn in one transaction (nested calls become savepoints). */
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)()
  }

  private stmt(sql: string): Database.Statement {
    let s = this.stmts.get(sql)
    if (!s) {
      s = this.db.prepare(sql)
      this.stmts.set(sql, s)
    }
    return s
  }

  // ------------------------------------------------------------------------------ trees

  getTree(id: string): Buffer | undefined {
    const row = this.stmt('SELECT data, z FROM trees WHERE id = ?').get(id) as {data: Buffer; z: number} | undefined
    if (!row) return undefined
    const data = row.z === 2 ? zstd().decompress(row.data) : row.z === 1 ? inflateRawSync(row.data) : row.data
    this.sawTree(id)
    return data
  }

  private sawTree(id: string): void {
    // bounded: a rebuild walks every tree of the repository
    if (this.treesSeen.size >= 100_000) this.treesSeen.clear()
    this.treesSeen.add(id)
  }

  hasTree(id: string): boolean {
    return this.stmt('SELECT 1 FROM trees WHERE id = ?').get(id) !== undefined
  }

  /**
   * Tree JSON is mostly hex ids and repeated keys: zstd (level 3) stores it in about a third of
   * its size, as deflate did, in half deflate's time; stored raw when that does not help. A tree
   * this connection has read or written is not looked up again (an unchanged snapshot writes
   * back every tree it read from its parent).
   */
  putTree(id: string, data: Buffer): void {
    if (this.treesSeen.has(id)) return
    if (!this.hasTree(id)) {
      const z = zstd().compress(data)
      const [stored, flag] = z.length < data.length ? [z, 2] : [data, 0]
      this.stmt('INSERT OR IGNORE INTO trees (id, data, z) VALUES (?, ?, ?)').run(id, stored, flag)
    }
    this.sawTree(id)
  }

  // ------------------------------------------------------------------------------ snapshots

  /** Record a snapshot (and its image). Idempotent: recording it again replaces the row. */
  recordSnapshot(repoId: string, id: string, manifest: SnapshotManifest): void {
    const volumes = (manifest.mounts ?? []).filter((m) => m.type === 'volume').map((m) => m.source)
    const name = manifest.container
      ? containerName(manifest.container.name)
      : (volumes[0] ?? manifest.mounts?.[0]?.source ?? '')
    const timeMs = Date.parse(manifest.time)
    const image = manifest.container?.image
    this.transaction(() => {
      this.stmt(
        `INSERT INTO snapshots (repo_id, id, time, time_ms, host, kind, name, tags, volumes, bytes, new_bytes,
           files, parent, image_id, image_tree, manifest)
         VALUES (@repoId, @id, @time, @timeMs, @host, @kind, @name, @tags, @volumes, @bytes, @newBytes,
           @files, @parent, @imageId, @imageTree, @manifest)
         ON CONFLICT (repo_id, id) DO UPDATE SET time = excluded.time, time_ms = excluded.time_ms,
           host = excluded.host, kind = excluded.kind, name = excluded.name, tags = excluded.tags,
           volumes = excluded.volumes, bytes = excluded.bytes, new_bytes = excluded.new_bytes,
           files = excluded.files, parent = excluded.parent, image_id = excluded.image_id,
           image_tree = excluded.image_tree, manifest = excluded.manifest`,
      ).run({
        repoId,
        id,
        time: manifest.time,
        timeMs: Number.isFinite(timeMs) ? timeMs : 0,
        host: manifest.host ?? '',
        kind: manifest.kind,
        name,
        tags: JSON.stringify(manifest.tags ?? []),
        volumes: JSON.stringify(volumes),
        bytes: manifest.stats?.bytes ?? 0,
        newBytes: manifest.stats?.newBytes ?? 0,
        files: manifest.stats?.files ?? 0,
        parent: manifest.parent ?? null,
        imageId: image?.id ?? null,
        imageTree: image?.tree ?? null,
        manifest: JSON.stringify(manifest),
      })
      this.stmt('DELETE FROM snapshot_targets WHERE repo_id = ? AND snapshot_id = ?').run(repoId, id)
      const insertTarget = this.stmt(
        'INSERT OR IGNORE INTO snapshot_targets (repo_id, snapshot_id, kind, target) VALUES (?, ?, ?, ?)',
      )
      for (const t of targetsOf(manifest)) insertTarget.run(repoId, id, t.kind, t.target)
      if (image) this.recordImage(repoId, image)
    })
  }

  /** Snapshots ordered by time ascending (then id). Filters combine with AND. */
  listSnapshots(repoId: string, filter: SnapshotFilter = {}): SnapshotRow[] {
    const where = ['s.repo_id = @repoId']
    if (filter.container !== undefined) {
      where.push(`EXISTS (SELECT 1 FROM snapshot_targets t WHERE t.repo_id = s.repo_id AND t.snapshot_id = s.id
        AND t.kind = 'container' AND t.target = @container)`)
    }
    if (filter.volume !== undefined) {
      where.push(`EXISTS (SELECT 1 FROM snapshot_targets t WHERE t.repo_id = s.repo_id AND t.snapshot_id = s.id
        AND t.kind = 'volume' AND t.target = @volume)`)
    }
    if (filter.tag !== undefined) where.push('EXISTS (SELECT 1 FROM json_each(s.tags) j WHERE j.value = @tag)')
    const rows = this.stmt(
      `SELECT ${SNAPSHOT_COLUMNS} FROM snapshots s WHERE ${where.join(' AND ')} ORDER BY s.time_ms, s.id`,
    ).all({
      repoId,
      ...(filter.container !== undefined ? {container: containerName(filter.container)} : {}),
      ...(filter.volume !== undefined ? {volume: filter.volume} : {}),
      ...(filter.tag !== undefined ? {tag: filter.tag} : {}),
    }) as SnapshotDbRow[]
    return rows.map(toSnapshotRow)
  }

  getManifest(repoId: string, id: string): SnapshotManifest | undefined {
    const row = this.stmt('SELECT manifest FROM snapshots WHERE repo_id = ? AND id = ?').get(repoId, id) as
      | {manifest: string}
      | undefined
    return row ? (JSON.parse(row.manifest) as SnapshotManifest) : undefined
  }

  /** Remove a snapshot (its targets cascade). Removing a missing snapshot is not an error. */
  removeSnapshot(repoId: string, id: string): void {
    this.stmt('DELETE FROM snapshots WHERE repo_id = ? AND id = ?').run(repoId, id)
  }

  /** every snapshot id of the repository, oldest first */
  snapshotIds(repoId: string): string[] {
    return this.stmt('SELECT id FROM snapshots WHERE repo_id = ? ORDER BY time_ms, id')
      .pluck()
      .all(repoId) as string[]
  }

  /**
   * Resolve a user's snapshot reference: a full id, a unique id prefix of at least 4 hex
   * characters (case-insensitive), `latest` (the newest snapshot) or `latest:NAME` (the newest
   * snapshot of container or volume NAME).
   *
   * Malformed references (a prefix shorter than 4 characters, non-hex characters, `latest:`
   * with no name) are reported as SNAPSHOT_NOT_FOUND, not USAGE: whatever the user typed, no
   * snapshot matches it, and scripts get one exit code for "cannot resolve"; the hint explains
   * the syntax.
   */
  resolveSnapshot(repoId: string, ref: string): string {
    const syntaxHint = 'a snapshot is named by its id, a unique prefix of at least 4 hex characters, `latest` or `latest:NAME`'
    const notFound = (hint?: string): HolyshipError =>
      new HolyshipError('SNAPSHOT_NOT_FOUND', `no snapshot matches "${ref}"`, hint ? {hint} : {})
    if (ref === 'latest') {
      const id = this.stmt(`SELECT id FROM snapshots WHERE repo_id = ? AND ${NOT_REPLACED('tags')} ORDER BY time_ms DESC, id DESC LIMIT 1`)
        .pluck()
        .get(repoId) as string | undefined
      if (!id) throw notFound('the repository has no snapshots')
      return id
    }
    if (ref.startsWith('latest:')) {
      const name = ref.slice('latest:'.length)
      if (!name) throw notFound(syntaxHint)
      const id = this.stmt(
        `SELECT s.id FROM snapshot_targets t JOIN snapshots s ON s.repo_id = t.repo_id AND s.id = t.snapshot_id
         WHERE t.repo_id = ? AND t.target IN (?, ?) AND ${NOT_REPLACED('s.tags')} ORDER BY s.time_ms DESC, s.id DESC LIMIT 1`,
      )
        .pluck()
        .get(repoId, name, containerName(name)) as string | undefined
      if (!id) throw notFound(`no snapshot of a container or volume named "${name}"`)
      return id
    }
    if (!/^[0-9a-fA-F]{4,64}$/.test(ref)) throw notFound(syntaxHint)
    const prefix = ref.toLowerCase()
    // ids are lowercase hex, so every id starting with prefix sorts in [prefix, prefix + 'g')
    const ids = this.stmt(
      'SELECT id FROM snapshots WHERE repo_id = ? AND id >= ? AND id < ? ORDER BY time_ms, id LIMIT 6',
    )
      .pluck()
      .all(repoId, prefix, prefix + 'g') as string[]
    if (ids.length === 1) return ids[0]
    if (ids.length === 0) throw notFound()
    const n = this.stmt('SELECT count(*) FROM snapshots WHERE repo_id = ? AND id >= ? AND id < ?')
      .pluck()
      .get(repoId, prefix, prefix + 'g') as number
    const shown = ids.slice(0, 5).map((i) => i.slice(0, 12))
    throw new HolyshipError(
      'SNAPSHOT_AMBIGUOUS',
      `"${ref}" matches ${n} snapshots: ${shown.join(', ')}${n > shown.length ? ', …' : ''}`,
      {hint: 'give more characters of the snapshot id'},
    )
  }

  // ------------------------------------------------------------------------------ images

  recordImage(repoId: string, image: ImageRecord): void {
    this.stmt(
      `INSERT INTO images (repo_id, id, repo_tags, tree, size) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (repo_id, id) DO UPDATE SET repo_tags = excluded.repo_tags, tree = excluded.tree, size = excluded.size`,
    ).run(repoId, image.id, JSON.stringify(image.repoTags ?? []), image.tree, image.size)
  }

  /**
   * An image the repository already holds. Only returned while a recorded snapshot references
   * that image with that tree: a recorded image whose snapshot was aborted or forgotten may have
   * had its packs pruned, and reusing its tree would make a broken snapshot.
   */
  findImage(repoId: string, imageId: string): ImageRecord | undefined {
    const row = this.stmt(
      `SELECT i.id, i.repo_tags, i.tree, i.size FROM images i WHERE i.repo_id = ? AND i.id = ?
       AND EXISTS (SELECT 1 FROM snapshots s WHERE s.repo_id = i.repo_id AND s.image_id = i.id AND s.image_tree = i.tree)`,
    ).get(repoId, imageId) as {id: string; repo_tags: string; tree: string; size: number} | undefined
    if (!row) return undefined
    return {id: row.id, repoTags: JSON.parse(row.repo_tags) as string[], tree: row.tree, size: row.size}
  }

  // ------------------------------------------------------------------------------ blobs

  indexFilesKnown(repoId: string): Set<string> {
    return new Set(this.stmt('SELECT id FROM index_files WHERE repo_id = ?').pluck().all(repoId) as string[])
  }

  /**
   * Record an index file's packs and blob locations in one transaction. Recording a known
   * index file again does nothing; a blob in several index files keeps its first location
   * (as Repository does).
   */
  recordIndexFile(repoId: string, indexFileId: string, file: IndexFile): void {
    const addFile = this.stmt('INSERT OR IGNORE INTO index_files (repo_id, id) VALUES (?, ?)')
    const addPack = this.stmt(
      `INSERT INTO packs (repo_id, id, size) VALUES (?, ?, ?)
       ON CONFLICT (repo_id, id) DO UPDATE SET size = excluded.size RETURNING pid`,
    ).pluck()
    const addBlob = this.stmt(
      'INSERT OR IGNORE INTO blobs (repo_id, id, pack, type, offset, length, raw) VALUES (?, ?, ?, ?, ?, ?, ?)',
    )
    this.transaction(() => {
      if (addFile.run(repoId, indexFileId).changes === 0) return
      const rows: {b: PackBlob; pid: number}[] = []
      for (const p of file.packs) {
        const pid = addPack.get(repoId, p.id, p.size) as number
        for (const b of p.blobs) rows.push({b, pid})
      }
      // in id order (a stable sort: of one id twice, the first still wins): random ids put into
      // the blobs B-tree in file order touched a page per blob, and each index file of 65,536
      // blobs took longer than the last (16 s for a million, 1.1 s each by then); in order
      // each page is visited once
      rows.sort((x, y) => (x.b.id < y.b.id ? -1 : x.b.id > y.b.id ? 1 : 0))
      for (const {b, pid} of rows) addBlob.run(repoId, b.id, pid, BLOB_TYPE_CODE[b.type], b.offset, b.length, b.raw)
    })
  }

  /**
   * Every blob location of the repository, streamed from SQLite. The connection is busy until
   * the iteration ends: do not call other Catalogue methods inside the loop.
   */
  *blobLocations(repoId: string): Generator<[string, BlobLocation]> {
    const rows = this.stmt(
      `SELECT b.id, p.id, b.type, b.offset, b.length, b.raw FROM blobs b JOIN packs p ON p.pid = b.pack
       WHERE b.repo_id = ?`,
    )
      .raw(true)
      .iterate(repoId) as IterableIterator<[string, string, number, number, number, number]>
    for (const [id, pack, type, offset, length, raw] of rows) {
      yield [id, {pack, type: BLOB_TYPES[type], offset, length, raw}]
    }
  }

  /** the packs holding any of these blobs (unknown blobs are ignored) */
  packsOf(repoId: string, blobIds: string[]): Set<string> {
    const q = this.stmt('SELECT p.id FROM blobs b JOIN packs p ON p.pid = b.pack WHERE b.repo_id = ? AND b.id = ?').pluck()
    const out = new Set<string>()
    this.transaction(() => {
      for (const id of blobIds) {
        const pack = q.get(repoId, id) as string | undefined
        if (pack !== undefined) out.add(pack)
      }
    })
    return out
  }

  /** pack id → size for every pack of the known index files */
  packSizes(repoId: string): Map<string, number> {
    const rows = this.stmt('SELECT id, size FROM packs WHERE repo_id = ?').raw(true).all(repoId) as [string, number][]
    return new Map(rows)
  }

  /**
   * Drop the blob index of a repository (index files, packs, blob locations), keeping its
   * snapshots: used when an index file the catalogue knew is gone from the repository (a prune
   * rewrote the index), so that no blob is believed to be in a pack that was deleted.
   */
  forgetIndex(repoId: string): void {
    this.transaction(() => {
      for (const table of ['index_files', 'blobs', 'packs']) this.stmt(`DELETE FROM ${table} WHERE repo_id = ?`).run(repoId)
    })
  }

  // ------------------------------------------------------------------------------ scheduler state

  /** Record the outcome of one scheduled run of a target (`container:NAME`, `volume:NAME`, …). */
  recordScheduleRun(repoId: string, target: string, run: ScheduleRunRecord): void {
    this.stmt(
      `INSERT INTO schedule_state (repo_id, target, schedule, last_run_at, last_success_at, last_failure_at, last_error,
         last_snapshot, last_duration_ms, last_bytes, last_new_bytes, next_run_at, runs, failures)
       VALUES (@repoId, @target, @schedule, @at, @success, @failure, @error, @snapshot, @durationMs, @bytes, @newBytes, @next, 1, @failed)
       ON CONFLICT (repo_id, target) DO UPDATE SET
         schedule = coalesce(excluded.schedule, schedule),
         last_run_at = excluded.last_run_at,
         last_success_at = coalesce(excluded.last_success_at, last_success_at),
         last_failure_at = coalesce(excluded.last_failure_at, last_failure_at),
         last_error = CASE WHEN excluded.last_failure_at IS NOT NULL THEN excluded.last_error ELSE last_error END,
         last_snapshot = coalesce(excluded.last_snapshot, last_snapshot),
         last_duration_ms = excluded.last_duration_ms,
         last_bytes = coalesce(excluded.last_bytes, last_bytes),
         last_new_bytes = coalesce(excluded.last_new_bytes, last_new_bytes),
         next_run_at = coalesce(excluded.next_run_at, next_run_at),
         runs = runs + 1,
         failures = failures + excluded.failures`,
    ).run({
      repoId,
      target,
      schedule: run.schedule ?? null,
      at: run.at,
      success: run.ok ? run.at : null,
      failure: run.ok ? null : run.at,
      error: run.ok ? null : (run.error ?? 'failed'),
      snapshot: run.snapshot ?? null,
      durationMs: run.durationMs,
      bytes: run.bytes ?? null,
      newBytes: run.newBytes ?? null,
      next: run.nextRunAt ?? null,
      failed: run.ok ? 0 : 1,
    })
  }

  /** A run that was due while the previous one of the same target was still going. */
  recordScheduleOverrun(repoId: string, target: string): void {
    this.stmt(
      `INSERT INTO schedule_state (repo_id, target, overruns) VALUES (?, ?, 1)
       ON CONFLICT (repo_id, target) DO UPDATE SET overruns = overruns + 1`,
    ).run(repoId, target)
  }

  /** When the scheduler plans to run a target next (shown by `status`). */
  recordScheduleNext(repoId: string, target: string, schedule: string, nextRunAt: number | undefined): void {
    this.stmt(
      `INSERT INTO schedule_state (repo_id, target, schedule, next_run_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (repo_id, target) DO UPDATE SET schedule = excluded.schedule, next_run_at = excluded.next_run_at`,
    ).run(repoId, target, schedule, nextRunAt ?? null)
  }

  scheduleStates(repoId: string): ScheduleStateRow[] {
    const rows = this.stmt('SELECT * FROM schedule_state WHERE repo_id = ? ORDER BY target').all(repoId) as Record<string, unknown>[]
    return rows.map((r) => ({
      target: r.target as string,
      ...(r.schedule != null ? {schedule: r.schedule as string} : {}),
      ...(r.last_run_at != null ? {lastRunAt: r.last_run_at as number} : {}),
      ...(r.last_success_at != null ? {lastSuccessAt: r.last_success_at as number} : {}),
      ...(r.last_failure_at != null ? {lastFailureAt: r.last_failure_at as number} : {}),
      ...(r.last_error != null ? {lastError: r.last_error as string} : {}),
      ...(r.last_snapshot != null ? {lastSnapshot: r.last_snapshot as string} : {}),
      ...(r.last_duration_ms != null ? {lastDurationMs: r.last_duration_ms as number} : {}),
      ...(r.last_bytes != null ? {lastBytes: r.last_bytes as number} : {}),
      ...(r.last_new_bytes != null ? {lastNewBytes: r.last_new_bytes as number} : {}),
      ...(r.next_run_at != null ? {nextRunAt: r.next_run_at as number} : {}),
      runs: r.runs as number,
      failures: r.failures as number,
      overruns: r.overruns as number,
    }))
  }

  // ------------------------------------------------------------------------------ whole repository

  /**
   * Delete every row of this repository. Trees stay: they are keyed by content hash, may be
   * shared with other repositories and are always valid.
   */
  forgetRepository(repoId: string): void {
    this.transaction(() => {
      for (const table of ['snapshot_targets', 'snapshots', 'images', 'index_files', 'blobs', 'packs']) {
        this.stmt(`DELETE FROM ${table} WHERE repo_id = ?`).run(repoId)
      }
    })
  }
}

function migrate(db: Database.Database, file: string): void {
  const version = (): number => db.pragma('user_version', {simple: true}) as number
  const check = (v: number): void => {
    if (v > MIGRATIONS.length) {
      throw new HolyshipError(
        'REPO_NEWER_FORMAT',
        `catalogue ${file} has schema version ${v}; this holyship knows up to ${MIGRATIONS.length}`,
        {hint: 'upgrade holyship, or delete the catalogue (it is only a cache) and run `holyship catalogue rebuild`'},
      )
    }
  }
  check(version())
  for (let i = 0; i < MIGRATIONS.length; i++) {
    // IMMEDIATE: a second process migrating at the same time waits, then sees the new version
    db.transaction(() => {
      const v = version()
      check(v)
      if (v > i) return
      db.exec(MIGRATIONS[i])
      db.pragma(`user_version = ${i + 1}`)
    }).immediate()
  }
}

// ------------------------------------------------------------------------------ rebuild

/**
 * Recreate a repository's rows from the repository alone: index files (verified against their
 * names), snapshot manifests and their images, and every tree reachable from every snapshot.
 * Everything is read first and then swapped in with one transaction (forget + record), so a
 * failed rebuild leaves the previous rows; trees are cached as they are walked (reading only
 * those not cached yet). Idempotent.
 */
export async function rebuildFromRepository(
  cat: Catalogue,
  repo: Repository,
  opts: {concurrency?: number} = {},
): Promise<{snapshots: number; trees: number; indexFiles: number}> {
  const repoId = repo.config.id
  const indexFiles: {id: string; file: IndexFile}[] = []
  for (const {key} of await repo.backend.list('index/')) {
    const id = key.slice('index/'.length)
    // checked against its name; decrypted and authenticated in an encrypted repository
    indexFiles.push({id, file: await repo.readIndexFile(id)})
  }
  const snapshots = await repo.listSnapshots()

  cat.transaction(() => {
    cat.forgetRepository(repoId)
    for (const {id, file} of indexFiles) cat.recordIndexFile(repoId, id, file)
    for (const {id, manifest} of snapshots) cat.recordSnapshot(repoId, id, manifest)
  })

  // walk the trees; repo.loadTree reads the cache first and fills it on a miss
  const roots: string[] = []
  for (const {manifest} of snapshots) {
    if (manifest.container?.fsDiff) roots.push(manifest.container.fsDiff)
    if (manifest.container?.image?.tree) roots.push(manifest.container.image.tree)
    for (const m of manifest.mounts ?? []) if (m.tree) roots.push(m.tree)
  }
  const seen = new Set<string>(roots)
  const queue = [...seen]
  const previousCache = repo.treeCache
  repo.treeCache = cat
  let indexLoaded: Promise<void> | undefined
  try {
    const worker = async (): Promise<void> => {
      for (let id = queue.pop(); id !== undefined; id = queue.pop()) {
        // a repository opened without its index cannot read packs: load it on the first miss
        if (!cat.hasTree(id)) await (indexLoaded ??= repo.loadIndex())
        const tree = await repo.loadTree(id)
        for (const node of tree.nodes) {
          if (node.subtree && !seen.has(node.subtree)) {
            seen.add(node.subtree)
            queue.push(node.subtree)
          }
        }
      }
    }
    // workers stop when the queue is momentarily empty; loop until no work is left
    while (queue.length > 0) {
      await Promise.all(Array.from({length: Math.min(opts.concurrency ?? 8, queue.length)}, worker))
    }
  } finally {
    repo.treeCache = previousCache
  }
  return {snapshots: snapshots.length, trees: seen.size, indexFiles: indexFiles.length}
}
