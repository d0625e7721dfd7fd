import {HolyshipError, isHolyshipError} from '../errors.js'
import {Backend, BackendEntry, PutOptions, isNotFound} from './backend.js'

export interface RetryOptions {
  /** total tries per operation, including the first (default 6) */
  attempts?: number
  /** first backoff delay in ms (default 200); doubles each retry */
  baseDelayMs?: number
  /** maximum backoff delay in ms (default 10 000) */
  maxDelayMs?: number
  /** injectable for tests */
  sleep?: (ms: number) => Promise<void>
  /** injectable for tests; returns [0, 1) */
  random?: () => number
  /** called before each retry (for debug logging) */
  onRetry?: (info: {op: string; key: string; attempt: number; delayMs: number; error: unknown}) => void
}

const TRANSIENT_NAMES = new Set([
  'SlowDown',
  // 409 of a conditional write while another on the same key is in flight: AWS says retry
  'ConditionalRequestConflict',
  'Throttling',
  'ThrottlingException',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'RequestTimeout',
  'RequestTimeoutException',
  'InternalError',
  'ServiceUnavailable',
  'TimeoutError',
])

const TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'ECONNABORTED',
  'ECONNREFUSED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EHOSTDOWN',
  'ERR_STREAM_PREMATURE_CLOSE',
  'ERR_SOCKET_CONNECTION_TIMEOUT',
  'UND_ERR_SOCKET',
])

/**
 * Whether an error is worth retrying: throttling (429, SlowDown), 5xx, timeouts, connection
 * resets, truncated bodies, our own REMOTE_UNREACHABLE / REMOTE_CORRUPT (a failed upload
 * verification or short download). Never: BackendNotFound, other HolyshipErrors (USAGE,
 * REMOTE_DENIED, REMOTE_NOT_FOUND, ...), a DNS name that does not exist, other errors.
 */
export function isTransient(e: unknown): boolean {
  if (isNotFound(e)) return false
  if (isHolyshipError(e)) {
    if (e.code === 'REMOTE_CORRUPT') return true
    if (e.code === 'REMOTE_UNREACHABLE') return !hasCode(e, 'ENOTFOUND')
    return false
  }
  return transientShape(e, new Set())
}

function transientShape(e: unknown, seen: Set<unknown>): boolean {
  if (!e || typeof e !== 'object' || seen.has(e)) return false
  seen.add(e)
  if (isNotFound(e)) return false
  if (isHolyshipError(e)) return isTransient(e)
  const err = e as {
    name?: unknown
    code?: unknown
    Code?: unknown
    message?: unknown
    status?: unknown
    statusCode?: unknown
    $metadata?: {httpStatusCode?: number}
    $retryable?: unknown
    errors?: unknown
    cause?: unknown
  }
  const status = err.$metadata?.httpStatusCode ?? (typeof err.statusCode === 'number' ? err.statusCode : typeof err.status === 'number' ? err.status : undefined)
  if (status !== undefined && (status === 429 || (status >= 500 && status <= 599))) return true
  if (typeof err.name === 'string' && TRANSIENT_NAMES.has(err.name)) return true
  if (typeof err.Code === 'string' && TRANSIENT_NAMES.has(err.Code)) return true
  if (typeof err.code === 'string' && TRANSIENT_CODES.has(err.code)) return true
  if (err.$retryable) return true
  if (typeof err.message === 'string' && /socket hang up|premature close|\baborted\b|truncated|timed? ?out/i.test(err.message)) return true
  if (Array.isArray(err.errors) && err.errors.some((x) => transientShape(x, seen))) return true
  return transientShape(err.cause, seen)
}

function hasCode(e: unknown, code: string): boolean {
  const seen = new Set<unknown>()
  const walk = (x: unknown): boolean => {
    if (!x || typeof x !== 'object' || seen.has(x)) return false
    seen.add(x)
    const err = x as {code?: unknown; errors?: unknown; cause?: unknown}
    if (err.code === code) return true
    if (Array.isArray(err.errors) && err.errors.some(walk)) return true
    return walk(err.cause)
  }
  return walk(e)
}

const defaultSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/**
 * Retries transient failures of the wrapped backend with exponential backoff and jitter.
 * After the last attempt the last error is rethrown wrapped, its message saying "after N
 * attempts"; a HolyshipError keeps its code, anything else becomes REMOTE_UNREACHABLE.
 * Non-transient errors are thrown at once, unchanged.
 */
export class RetryBackend implements Backend {
  readonly location: string
  readonly attempts: number
  private readonly baseDelayMs: number
  private readonly maxDelayMs: number
  private readonly sleep: (ms: number) => Promise<void>
  private readonly random: () => number
  private readonly onRetry?: RetryOptions['onRetry']

  constructor(readonly inner: Backend, options: RetryOptions = {}) {
    this.location = inner.location
    this.attempts = Math.max(1, Math.floor(options.attempts ?? 6))
    this.baseDelayMs = options.baseDelayMs ?? 200
    this.maxDelayMs = options.maxDelayMs ?? 10_000
    this.sleep = options.sleep ?? defaultSleep
    this.random = options.random ?? Math.random
    this.onRetry = options.onRetry
  }

  /** delay before retry number `retry` (1-based): equal jitter over the exponential step */
  delay(retry: number): number {
    const step = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (retry - 1))
    return Math.round(step / 2 + this.random() * (step / 2))
  }

  private async run<T>(op: string, key: string, fn: () => Promise<T>): Promise<T> {
    let last: unknown
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn()
      } catch (e) {
        last = e
        if (!isTransient(e)) throw e
        if (attempt >= this.attempts) break
        const delayMs = this.delay(attempt)
        this.onRetry?.({op, key, attempt, delayMs, error: e})
        await this.sleep(delayMs)
      }
    }
    const msg = last instanceof Error ? last.message : String(last)
    const what = `${op}${key ? ` ${key}` : ''}`
    const where = msg.includes(this.location) ? '' : `${this.location}: `
    const message = `${where}${what} failed after ${this.attempts} attempts: ${msg}`
    if (isHolyshipError(last)) throw new HolyshipError(last.code, message, {cause: last, hint: last.hint})
    throw new HolyshipError('REMOTE_UNREACHABLE', message, {cause: last})
  }

  get(key: string): Promise<Buffer> {
    return this.run('get', key, () => this.inner.get(key))
  }

  getRange(key: string, offset: number, length: number): Promise<Buffer> {
    return this.run('getRange', key, () => this.inner.getRange(key, offset, length))
  }

  put(key: string, data: Buffer, opts?: PutOptions): Promise<void> {
    // not `released`: a retry sends the same buffer again, the caller must not reuse it first
    const inner: PutOptions = opts?.ifAbsent ? {ifAbsent: true} : {}
    return this.run('put', key, () => this.inner.put(key, data, inner))
  }

  stat(key: string): Promise<number | undefined> {
    return this.run('stat', key, () => this.inner.stat(key))
  }

  list(prefix: string): Promise<BackendEntry[]> {
    return this.run('list', prefix, () => this.inner.list(prefix))
  }

  delete(key: string): Promise<void> {
    return this.run('delete', key, () => this.inner.delete(key))
  }

  async close(): Promise<void> {
    await this.inner.close?.()
  }
}

/** A counting semaphore. */
export class Semaphore {
  private active = 0
  private readonly waiting: Array<() => void> = []

  constructor(readonly limit: number) {
    if (!(limit >= 1)) throw new Error(`invalid concurrency limit: ${limit}`)
  }

  get inUse(): number {
    return this.active
  }

  async acquire(): Promise<void> {
    if (this.active < this.limit) {
      this.active++
      return
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve))
  }

  release(): void {
    const next = this.waiting.shift()
    if (next) next() // the slot passes straight to the next waiter
    else this.active--
  }

  async with<T>(fn: () => Promise<T>): Promise<T> {
    await this.acquire()
    try {
      return await fn()
    } finally {
      this.release()
    }
  }
}

/** Limits the number of concurrent operations on the wrapped backend (default 4). */
export class LimitBackend implements Backend {
  readonly location: string
  private readonly sem: Semaphore

  constructor(readonly inner: Backend, limit = 4) {
    this.location = inner.location
    this.sem = new Semaphore(limit)
  }

  get inUse(): number {
    return this.sem.inUse
  }

  get(key: string): Promise<Buffer> {
    return this.sem.with(() => this.inner.get(key))
  }

  getRange(key: string, offset: number, length: number): Promise<Buffer> {
    return this.sem.with(() => this.inner.getRange(key, offset, length))
  }

  put(key: string, data: Buffer, opts?: PutOptions): Promise<void> {
    return this.sem.with(() => this.inner.put(key, data, opts))
  }

  stat(key: string): Promise<number | undefined> {
    return this.sem.with(() => this.inner.stat(key))
  }

  list(prefix: string): Promise<BackendEntry[]> {
    return this.sem.with(() => this.inner.list(prefix))
  }

  delete(key: string): Promise<void> {
    return this.sem.with(() => this.inner.delete(key))
  }

  async close(): Promise<void> {
    await this.inner.close?.()
  }
}
