/**
 * The error taxonomy. Every failure a user can cause or must act on is a HolyshipError with
 * its own exit code; anything else is our bug and exits with BUG. One place (commands/base)
 * renders them as one line on stderr. The table is copied into the README.
 */
export const ExitCode = {
  OK: 0,
  BUG: 1,
  USAGE: 2,
  REPO_MISSING: 10,
  REPO_NOT_INITIALISED: 11,
  REPO_NEWER_FORMAT: 12,
  REPO_EXISTS: 13,
  REPO_LOCKED: 14,
  REPO_DAMAGED: 15,
  WRONG_PASSWORD: 16,
  SNAPSHOT_NOT_FOUND: 20,
  SNAPSHOT_AMBIGUOUS: 21,
  CONTAINER_NOT_FOUND: 22,
  VOLUME_NOT_FOUND: 23,
  PATH_NOT_FOUND: 24,
  TARGET_EXISTS: 25,
  DOCKER_UNREACHABLE: 30,
  DOCKER_FAILED: 31,
  REMOTE_NOT_FOUND: 40,
  REMOTE_UNREACHABLE: 41,
  REMOTE_DENIED: 42,
  REMOTE_CORRUPT: 43,
  REMOTE_EXISTS: 44,
  DISK_FULL: 50,
  IO_FAILED: 51,
  INTERRUPTED: 130,
} as const

export type ExitCodeName = keyof typeof ExitCode

export class HolyshipError extends Error {
  readonly code: ExitCodeName
  readonly exitCode: number
  /** a hint for the user, printed after the message */
  readonly hint?: string

  constructor(code: ExitCodeName, message: string, options: {hint?: string; cause?: unknown} = {}) {
    super(message, options.cause === undefined ? undefined : {cause: options.cause})
    this.name = 'HolyshipError'
    this.code = code
    this.exitCode = ExitCode[code]
    this.hint = options.hint
  }
}

export function isHolyshipError(e: unknown): e is HolyshipError {
  return e instanceof HolyshipError
}

/** Map low-level errors the user can act on (disk full, permission) to the taxonomy. */
export function classify(e: unknown): HolyshipError | undefined {
  if (isHolyshipError(e)) return e
  const err = e as NodeJS.ErrnoException | undefined
  if (!err || typeof err !== 'object') return undefined
  if (err.code === 'ENOSPC' || err.code === 'EDQUOT') {
    return new HolyshipError('DISK_FULL', `no space left on device${err.path ? ` (${err.path})` : ''}`, {cause: e})
  }
  if (err.code === 'EACCES' || err.code === 'EPERM' || err.code === 'EROFS') {
    return new HolyshipError('IO_FAILED', `${err.code === 'EROFS' ? 'read-only file system' : 'permission denied'}${err.path ? `: ${err.path}` : ''}`, {cause: e})
  }
  return undefined
}
