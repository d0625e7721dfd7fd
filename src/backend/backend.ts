/**
 * A backend is a plain keyed blob store: the repository's files live under keys such as
 * `config`, `keys/<id>`, `data/ab/<packid>`, `index/<id>`, `snapshots/<id>`, `locks/<id>`.
 * Keys use `/` separators and never start with `/`. Objects are written once and never
 * modified in place (except `config` at init). Implementations: LocalBackend (a directory),
 * S3Backend (a bucket + prefix). Decorators (retry, limits) wrap any backend.
 *
 * Contract every implementation must satisfy (see test/unit/backend-conformance.test.ts):
 * - put(key, data) is atomic: a reader sees the whole object or none; after it resolves the
 *   object is durable. Putting an existing key with the same content is allowed.
 * - get(key) returns the full content or throws BackendNotFound; never a partial object.
 * - list(prefix) returns every key under prefix (recursive), with sizes; it must throw on any
 *   listing error rather than return a partial list (prune relies on it).
 * - stat(key) returns the size or undefined when the object does not exist.
 * - delete(key) removes the key; deleting a missing key is not an error.
 */
export interface BackendEntry {
  key: string
  size: number
  /** when the object was written, ms since the epoch, where the store reports it (prune's grace period) */
  mtime?: number
}

export interface Backend {
  /** a human-readable location, e.g. `/srv/repo` or `s3://bucket/prefix` */
  readonly location: string
  get(key: string): Promise<Buffer>
  /** read `length` bytes at `offset` (used to read one blob out of a pack) */
  getRange(key: string, offset: number, length: number): Promise<Buffer>
  /**
   * `opts.released` (optional for implementations) is called once `data` is no longer needed
   * (handed to the OS), which may be long before the object is durable and put resolves: the
   * caller may then reuse the buffer while the write finishes (a local pack's fsync).
   */
  put(key: string, data: Buffer, opts?: PutOptions): Promise<void>
  /**
   * Optional: the object as a file descriptor open in this process (a local file), for reads
   * of ranges straight from it, also by worker threads; valid until `release()`.
   */
  openFile?(key: string): Promise<{fd: number; release: () => void}>
  stat(key: string): Promise<number | undefined>
  list(prefix: string): Promise<BackendEntry[]>
  delete(key: string): Promise<void>
  close?(): Promise<void>
}

export interface PutOptions {
  released?: () => void
  /**
   * create only: fail with BackendExists if the key is there (atomic on a local disk, and on
   * S3 stores that honour `If-None-Match: *`; one that ignores it overwrites, so a caller
   * still reads back what is there)
   */
  ifAbsent?: boolean
}

export class BackendNotFound extends Error {
  constructor(readonly key: string, location: string) {
    super(`${location}: object not found: ${key}`)
    this.name = 'BackendNotFound'
  }
}

/** a put with `ifAbsent` found the key there */
export class BackendExists extends Error {
  constructor(readonly key: string, location: string) {
    super(`${location}: object already exists: ${key}`)
    this.name = 'BackendExists'
  }
}

export function isExists(e: unknown): e is BackendExists {
  return e instanceof BackendExists
}

export function isNotFound(e: unknown): e is BackendNotFound {
  return e instanceof BackendNotFound
}
