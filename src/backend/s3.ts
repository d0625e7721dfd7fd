import {createHash} from 'node:crypto'
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  type CompletedPart,
  type S3ClientConfig,
} from '@aws-sdk/client-s3'
import debugFactory from 'debug'
import {HolyshipError, isHolyshipError} from '../errors.js'
import {Backend, BackendEntry, BackendExists, BackendNotFound, PutOptions, isExists, isNotFound} from './backend.js'

const debug = debugFactory('holyship:s3')

const MiB = 1024 * 1024

export interface S3BackendOptions {
  bucket: string
  /** key prefix inside the bucket, without leading/trailing `/`; '' for the bucket root */
  prefix: string
  /**
   * Custom endpoint (MinIO, Ceph, R2, B2, s3rver...). When omitted the SDK itself honours
   * AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (and `endpoint_url` in the shared config file).
   */
  endpoint?: string
  /** default: the SDK's region chain (AWS_REGION, shared config), else 'us-east-1' */
  region?: string
  /** default: true when a custom endpoint is configured (option or env), false for AWS */
  forcePathStyle?: boolean
  /** SDK-level attempts per request (default 3, the SDK default) */
  maxAttempts?: number
  /** for tests only; normally credentials come from the SDK's default provider chain */
  credentials?: S3ClientConfig['credentials']
  /** objects larger than this use multipart upload (default 64 MiB) */
  multipartThreshold?: number
  /** multipart part size (default 16 MiB, raised so that no upload needs more than 10000 parts) */
  partSize?: number
}

/**
 * A repository in an S3 bucket under a prefix. Objects are uploaded from Buffers with an
 * explicit Content-Length and Content-MD5 and with the SDK's flexible checksums switched to
 * WHEN_REQUIRED, so the body is never sent with aws-chunked framing (which several
 * S3-compatible stores, s3rver included, store verbatim: aws-sdk-js-v3#6810). Every upload is
 * then verified with a HEAD (size, and ETag == MD5 where the ETag is an MD5); a mismatch deletes
 * the object and throws REMOTE_CORRUPT. Getters return exactly the stored bytes and check
 * their length; content hashes are verified by the layers above.
 */
export class S3Backend implements Backend {
  readonly location: string
  readonly bucket: string
  readonly prefix: string
  /** the endpoint as shown in messages (never with credentials) */
  readonly endpointName: string
  private readonly client: S3Client
  private readonly base: string
  private readonly multipartThreshold: number
  private readonly partSize: number
  private bucketKnown = false

  constructor(options: S3BackendOptions) {
    if (!options.bucket) throw new HolyshipError('USAGE', 'S3 bucket name is empty')
    this.bucket = options.bucket
    this.prefix = normalisePrefix(options.prefix ?? '')
    this.base = this.prefix ? `${this.prefix}/` : ''
    this.location = `s3://${this.bucket}${this.prefix ? `/${this.prefix}` : ''}`
    this.multipartThreshold = options.multipartThreshold ?? 64 * MiB
    this.partSize = options.partSize ?? 16 * MiB
    if (this.partSize < 1 || this.multipartThreshold < 1) throw new HolyshipError('USAGE', 'invalid S3 part size / multipart threshold')

    let endpoint: string | undefined
    if (options.endpoint !== undefined) {
      endpoint = checkEndpoint(options.endpoint)
      this.endpointName = displayEndpoint(endpoint)
    } else {
      const fromEnv = envEndpoint()
      this.endpointName = fromEnv ? displayEndpoint(fromEnv) : 'AWS S3'
    }
    const custom = endpoint !== undefined || envEndpoint() !== undefined

    this.client = new S3Client({
      region: options.region ?? defaultRegion(),
      ...(endpoint !== undefined ? {endpoint} : {}),
      forcePathStyle: options.forcePathStyle ?? custom,
      ...(options.credentials !== undefined ? {credentials: options.credentials} : {}),
      maxAttempts: options.maxAttempts ?? 3,
      // never let the SDK frame bodies as aws-chunked nor add trailing checksums; we send
      // Content-MD5 ourselves and verify after the upload.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      followRegionRedirects: true,
      requestHandler: {connectionTimeout: 10_000, socketTimeout: 120_000},
    })
  }

  private objectKey(key: string): string {
    if (key.startsWith('/') || key.split('/').some((p) => p === '..' || p === '' || p === '.')) {
      throw new Error(`invalid backend key: ${JSON.stringify(key)}`)
    }
    return this.base + key
  }

  async get(key: string): Promise<Buffer> {
    const Key = this.objectKey(key)
    try {
      const r = await this.client.send(new GetObjectCommand({Bucket: this.bucket, Key}))
      const body = await readBody(r.Body)
      if (r.ContentLength !== undefined && body.length !== r.ContentLength) {
        throw new HolyshipError('REMOTE_CORRUPT', `${this.location}/${key}: truncated download (${body.length} of ${r.ContentLength} bytes)`)
      }
      return body
    } catch (e) {
      throw await this.mapError(e, 'get', key)
    }
  }

  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new Error(`${this.location}/${key}: invalid range (${length} bytes at ${offset})`)
    }
    if (length === 0) {
      if ((await this.stat(key)) === undefined) throw new BackendNotFound(key, this.location)
      return Buffer.alloc(0)
    }
    const Key = this.objectKey(key)
    let r
    try {
      r = await this.client.send(new GetObjectCommand({Bucket: this.bucket, Key, Range: `bytes=${offset}-${offset + length - 1}`}))
    } catch (e) {
      const err = e as {name?: string; $metadata?: {httpStatusCode?: number}}
      if (err?.name === 'InvalidRange' || err?.$metadata?.httpStatusCode === 416) {
        throw new Error(`${this.location}/${key}: short read (0 of ${length} bytes at ${offset}: beyond the end of the object)`)
      }
      throw await this.mapError(e, 'getRange', key)
    }
    let body: Buffer
    try {
      body = await readBody(r.Body)
    } catch (e) {
      throw await this.mapError(e, 'getRange', key)
    }
    if (r.ContentLength !== undefined && body.length !== r.ContentLength) {
      throw new HolyshipError('REMOTE_CORRUPT', `${this.location}/${key}: truncated download (${body.length} of ${r.ContentLength} bytes)`)
    }
    const range = r.ContentRange ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(r.ContentRange.trim()) : null
    let total = NaN
    if (!range) {
      if (r.ContentRange !== undefined || r.$metadata.httpStatusCode !== 200) {
        throw new Error(`${this.location}/${key}: unexpected range response (status ${r.$metadata.httpStatusCode}, Content-Range ${JSON.stringify(r.ContentRange)})`)
      }
      // a server that ignores Range answers 200 with the whole object
      total = body.length
      body = body.subarray(offset, offset + length)
    } else {
      if (Number(range[1]) !== offset) {
        throw new Error(`${this.location}/${key}: server answered range ${r.ContentRange} for ${length} bytes at ${offset}`)
      }
      if (range[3] !== '*') total = Number(range[3])
      // s3rver answers `bytes=0-0` with the rest of the object: keep what we asked for
      if (body.length > length) body = body.subarray(0, length)
    }
    if (body.length !== length) {
      if (Number.isFinite(total) && total < offset + length) {
        // the object really is shorter: not transient, retrying will not help
        throw new Error(`${this.location}/${key}: short read (${body.length} of ${length} bytes at ${offset}; object has ${total} bytes)`)
      }
      throw new HolyshipError('REMOTE_CORRUPT', `${this.location}/${key}: truncated download (${body.length} of ${length} bytes at ${offset})`)
    }
    return body
  }

  async put(key: string, data: Buffer, opts: PutOptions = {}): Promise<void> {
    const Key = this.objectKey(key)
    try {
      if (opts.ifAbsent) await this.putIfAbsent(key, Key, data)
      else if (data.length > this.multipartThreshold) await this.putMultipart(key, Key, data)
      else await this.putSingle(key, Key, data)
    } catch (e) {
      throw await this.mapError(e, 'put', key)
    }
  }

  /**
   * One PutObject with If-None-Match: *. 412: the key is there (BackendExists); a store that
   * refuses the header (501, or 400 naming it) gets a plain put, as one that ignores it does.
   * What the HEAD after it finds that is not ours is another writer's (a store that ignored the
   * header and a put racing ours): BackendExists too, and it is left alone, never deleted.
   */
  private async putIfAbsent(key: string, Key: string, data: Buffer): Promise<void> {
    try {
      await this.putSingle(key, Key, data, true)
    } catch (e) {
      const status = statusOf(e)
      const name = errorName(e)
      if (status === 412 || name === 'PreconditionFailed') throw new BackendExists(key, this.location)
      if (status === 501 || name === 'NotImplemented' || (status === 400 && /if-none-match/i.test((e as Error).message))) {
        debug('%s: the store refuses If-None-Match (%s): a plain put', this.location, name || status)
        // checked as a create-only put still: what else is there after it is another writer's
        await this.putSingle(key, Key, data, false, false)
        return
      }
      throw e
    }
  }

  private async putSingle(key: string, Key: string, data: Buffer, ifAbsent = false, ours = !ifAbsent): Promise<void> {
    const md5 = createHash('md5').update(data).digest()
    const md5hex = md5.toString('hex')
    const r = await this.client.send(
      new PutObjectCommand({
        Bucket: this.bucket,
        Key,
        Body: data,
        ContentLength: data.length,
        ContentMD5: md5.toString('base64'),
        ContentType: 'application/octet-stream',
        ...(ifAbsent ? {IfNoneMatch: '*'} : {}),
      }),
    )
    const encrypted = etagIsNotMd5(r)
    if (!encrypted && r.ETag !== undefined && cleanEtag(r.ETag) !== md5hex) {
      await this.discard(Key)
      throw new HolyshipError('REMOTE_CORRUPT', `${this.location}/${key}: upload corrupted: the store reports ETag ${cleanEtag(r.ETag)}, expected MD5 ${md5hex} (object deleted)`)
    }
    await this.verifyUpload(key, Key, data.length, encrypted ? undefined : [md5hex], ours)
  }

  private async putMultipart(key: string, Key: string, data: Buffer): Promise<void> {
    const partSize = Math.max(this.partSize, Math.ceil(data.length / 10_000))
    const created = await this.client.send(
      new CreateMultipartUploadCommand({Bucket: this.bucket, Key, ContentType: 'application/octet-stream'}),
    )
    const UploadId = created.UploadId
    if (!UploadId) throw new Error(`${this.location}/${key}: CreateMultipartUpload returned no upload id`)
    let encrypted = etagIsNotMd5(created)
    const parts: CompletedPart[] = []
    const partMd5s: Buffer[] = []
    try {
      for (let off = 0, n = 1; off < data.length; off += partSize, n++) {
        const chunk = data.subarray(off, Math.min(off + partSize, data.length))
        const md5 = createHash('md5').update(chunk).digest()
        const r = await this.client.send(
          new UploadPartCommand({
            Bucket: this.bucket,
            Key,
            UploadId,
            PartNumber: n,
            Body: chunk,
            ContentLength: chunk.length,
            ContentMD5: md5.toString('base64'),
          }),
        )
        encrypted ||= etagIsNotMd5(r)
        if (!r.ETag) throw new Error(`${this.location}/${key}: UploadPart ${n} returned no ETag`)
        if (!encrypted && cleanEtag(r.ETag) !== md5.toString('hex')) {
          throw new HolyshipError('REMOTE_CORRUPT', `${this.location}/${key}: part ${n} corrupted in upload: ETag ${cleanEtag(r.ETag)}, expected MD5 ${md5.toString('hex')}`)
        }
        parts.push({ETag: r.ETag, PartNumber: n})
        partMd5s.push(md5)
      }
      await this.client.send(new CompleteMultipartUploadCommand({Bucket: this.bucket, Key, UploadId, MultipartUpload: {Parts: parts}}))
    } catch (e) {
      await this.client.send(new AbortMultipartUploadCommand({Bucket: this.bucket, Key, UploadId})).catch(() => {})
      throw e
    }
    // AWS: md5(concat(part md5s))-N; some stores (s3rver) report the MD5 of the whole object
    const multipartEtag = `${createHash('md5').update(Buffer.concat(partMd5s)).digest('hex')}-${partMd5s.length}`
    const wholeMd5 = createHash('md5').update(data).digest('hex')
    await this.verifyUpload(key, Key, data.length, encrypted ? undefined : [multipartEtag, wholeMd5])
  }

  /** HEAD the object just written; on any mismatch delete it and throw REMOTE_CORRUPT */
  /** `ours` false (a create-only put): what is there may be another writer's, never deleted */
  private async verifyUpload(key: string, Key: string, size: number, etags: string[] | undefined, ours = true): Promise<void> {
    let head
    try {
      head = await this.client.send(new HeadObjectCommand({Bucket: this.bucket, Key}))
    } catch (e) {
      if (statusOf(e) === 404) {
        throw new HolyshipError('REMOTE_CORRUPT', `${this.location}/${key}: object not found right after upload`)
      }
      throw e
    }
    const problems: string[] = []
    if (head.ContentLength !== size) problems.push(`stored size ${head.ContentLength}, sent ${size}`)
    if (etags && !etagIsNotMd5(head) && head.ETag !== undefined && !etags.includes(cleanEtag(head.ETag))) {
      problems.push(`stored ETag ${cleanEtag(head.ETag)}, expected ${etags.join(' or ')}`)
    }
    if (problems.length && !ours) throw new BackendExists(key, this.location)
    if (problems.length) {
      await this.discard(Key)
      throw new HolyshipError('REMOTE_CORRUPT', `${this.location}/${key}: upload corrupted: ${problems.join('; ')} (object deleted)`)
    }
  }

  private async discard(Key: string): Promise<void> {
    await this.client.send(new DeleteObjectCommand({Bucket: this.bucket, Key})).catch(() => {})
  }

  async stat(key: string): Promise<number | undefined> {
    const Key = this.objectKey(key)
    try {
      const r = await this.client.send(new HeadObjectCommand({Bucket: this.bucket, Key}))
      return r.ContentLength ?? 0
    } catch (e) {
      if (statusOf(e) === 404 && errorName(e) !== 'NoSuchBucket') {
        // HEAD responses have no body: a missing bucket also looks like a plain 404
        await this.ensureBucket()
        return undefined
      }
      throw await this.mapError(e, 'stat', key)
    }
  }

  async list(prefix: string): Promise<BackendEntry[]> {
    const p = prefix.replace(/\/+$/, '')
    if (p) this.objectKey(p)
    const listPrefix = this.base + (p ? `${p}/` : '')
    const out: BackendEntry[] = []
    let token: string | undefined
    const seen = new Set<string>()
    try {
      for (;;) {
        const r = await this.client.send(
          new ListObjectsV2Command({Bucket: this.bucket, Prefix: listPrefix || undefined, ContinuationToken: token}),
        )
        for (const o of r.Contents ?? []) {
          if (o.Key === undefined) throw new Error(`${this.location}: listing returned an entry without a key`)
          if (!o.Key.startsWith(this.base)) throw new Error(`${this.location}: listing returned a key outside the prefix: ${o.Key}`)
          if (o.Key.endsWith('/')) continue // "folder" markers made by consoles
          out.push({key: o.Key.slice(this.base.length), size: o.Size ?? 0, ...(o.LastModified ? {mtime: o.LastModified.getTime()} : {})})
        }
        if (!r.IsTruncated) break
        token = r.NextContinuationToken
        if (!token) throw new Error(`${this.location}: listing truncated without a continuation token`)
        if (seen.has(token)) throw new Error(`${this.location}: listing repeats a continuation token`)
        seen.add(token)
      }
    } catch (e) {
      throw await this.mapError(e, 'list', prefix)
    }
    out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    return out
  }

  async delete(key: string): Promise<void> {
    const Key = this.objectKey(key)
    try {
      await this.client.send(new DeleteObjectCommand({Bucket: this.bucket, Key}))
    } catch (e) {
      if (errorName(e) === 'NoSuchKey') return
      throw await this.mapError(e, 'delete', key)
    }
  }

  async close(): Promise<void> {
    this.client.destroy()
  }

  private async ensureBucket(): Promise<void> {
    if (this.bucketKnown) return
    try {
      await this.client.send(new HeadBucketCommand({Bucket: this.bucket}))
      this.bucketKnown = true
    } catch (e) {
      if (statusOf(e) === 404) throw this.bucketMissing(e)
      // 403 here only means we may not HeadBucket; the object request itself was allowed
      if (statusOf(e) === 403) {
        this.bucketKnown = true
        return
      }
      throw await this.mapError(e, 'stat', '')
    }
  }

  private bucketMissing(cause: unknown): HolyshipError {
    return new HolyshipError('REMOTE_NOT_FOUND', `bucket "${this.bucket}" does not exist at ${this.endpointName}`, {
      cause,
      hint: 'create the bucket first, or check the bucket name, endpoint and region',
    })
  }

  /** translate SDK / network errors into the taxonomy; never includes credentials */
  private async mapError(e: unknown, op: string, key: string): Promise<unknown> {
    if (isHolyshipError(e) || isNotFound(e) || isExists(e)) return e
    const name = errorName(e)
    const status = statusOf(e)
    const what = key ? `${this.location}/${key}` : this.location
    if (name === 'NoSuchBucket') return this.bucketMissing(e)
    if (name === 'NoSuchKey' || (status === 404 && (op === 'get' || op === 'getRange') && name !== 'NoSuchUpload')) {
      if (name !== 'NoSuchKey') await this.ensureBucket()
      return new BackendNotFound(key, this.location)
    }
    if (name === 'CredentialsProviderError' || name === 'ProviderError') {
      return new HolyshipError('REMOTE_DENIED', `no AWS credentials found for ${this.location} (${this.endpointName})`, {
        cause: e,
        hint: 'set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE',
      })
    }
    if (DENIED.has(name) || status === 403) {
      return new HolyshipError('REMOTE_DENIED', `access denied to ${what} at ${this.endpointName} (${name || status})`, {
        cause: e,
        hint: 'check the credentials and the bucket policy',
      })
    }
    const net = networkCode(e)
    if (net) {
      return new HolyshipError('REMOTE_UNREACHABLE', `cannot reach ${this.endpointName} for bucket "${this.bucket}" (${op}: ${net})`, {cause: e})
    }
    return e
  }
}

const DENIED = new Set([
  'AccessDenied',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'ExpiredToken',
  'InvalidToken',
  'TokenRefreshRequired',
  'AllAccessDisabled',
  'AccountProblem',
  'InvalidSecurity',
  'Forbidden',
])

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
  'ERR_SOCKET_CONNECTION_TIMEOUT',
])

function errorName(e: unknown): string {
  const err = e as {name?: unknown; Code?: unknown} | undefined
  if (!err || typeof err !== 'object') return ''
  if (typeof err.Code === 'string') return err.Code
  return typeof err.name === 'string' ? err.name : ''
}

export function statusOf(e: unknown): number | undefined {
  const err = e as {$metadata?: {httpStatusCode?: number}; $response?: {statusCode?: number}} | undefined
  if (!err || typeof err !== 'object') return undefined
  return err.$metadata?.httpStatusCode ?? err.$response?.statusCode
}

/** a network-level failure code (ECONNREFUSED, ENOTFOUND, TimeoutError, ...) or undefined */
export function networkCode(e: unknown): string | undefined {
  const seen = new Set<unknown>()
  const walk = (x: unknown): string | undefined => {
    if (!x || typeof x !== 'object' || seen.has(x)) return undefined
    seen.add(x)
    const err = x as {code?: unknown; name?: unknown; message?: unknown; errors?: unknown; cause?: unknown}
    if (typeof err.code === 'string' && NETWORK_CODES.has(err.code)) return err.code
    if (err.name === 'TimeoutError') return 'timeout'
    if (typeof err.message === 'string' && /socket hang up/i.test(err.message)) return 'socket hang up'
    if (Array.isArray(err.errors)) for (const sub of err.errors) { const c = walk(sub); if (c) return c }
    return walk(err.cause)
  }
  return walk(e)
}

function cleanEtag(etag: string): string {
  return etag.replace(/"/g, '').toLowerCase()
}

/** SSE-KMS / SSE-C objects have ETags that are not the MD5 of the content */
function etagIsNotMd5(r: {ServerSideEncryption?: string; SSECustomerAlgorithm?: string}): boolean {
  return (r.ServerSideEncryption !== undefined && r.ServerSideEncryption.startsWith('aws:kms')) || r.SSECustomerAlgorithm !== undefined
}

async function readBody(body: unknown): Promise<Buffer> {
  if (body === undefined || body === null) return Buffer.alloc(0)
  const b = body as {transformToByteArray?: () => Promise<Uint8Array>}
  if (typeof b.transformToByteArray !== 'function') throw new Error('unexpected S3 response body type')
  const bytes = await b.transformToByteArray()
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
}

let regionPromise: Promise<string> | undefined
/** the SDK's own region chain (AWS_REGION, shared config), falling back to us-east-1 */
function defaultRegion(): () => Promise<string> {
  return () =>
    (regionPromise ??= (async () => {
      const probe = new S3Client({})
      try {
        return await probe.config.region()
      } catch {
        return 'us-east-1'
      } finally {
        probe.destroy()
      }
    })())
}

function envEndpoint(): string | undefined {
  const env = process.env
  if (env.AWS_IGNORE_CONFIGURED_ENDPOINT_URLS === 'true') return undefined
  return env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL || undefined
}

function checkEndpoint(endpoint: string): string {
  let url: URL
  try {
    url = new URL(endpoint)
  } catch {
    throw new HolyshipError('USAGE', `invalid S3 endpoint URL: ${JSON.stringify(redactUrl(endpoint))}`, {hint: 'use e.g. http://127.0.0.1:9000 or https://s3.example.com'})
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new HolyshipError('USAGE', `invalid S3 endpoint URL ${displayEndpoint(endpoint)}: the scheme must be http or https`)
  }
  return endpoint
}

/** the endpoint without user info, query or fragment */
function displayEndpoint(endpoint: string): string {
  try {
    const url = new URL(endpoint)
    return `${url.protocol}//${url.host}${url.pathname === '/' ? '' : url.pathname}`
  } catch {
    return redactUrl(endpoint)
  }
}

function redactUrl(s: string): string {
  return s.replace(/\/\/[^/@]*@/, '//***@')
}

function normalisePrefix(prefix: string): string {
  const p = prefix.replace(/^\/+|\/+$/g, '')
  if (p && p.split('/').some((seg) => seg === '' || seg === '.' || seg === '..')) {
    throw new HolyshipError('USAGE', `invalid S3 prefix ${JSON.stringify(prefix)}: empty, "." or ".." path segments are not allowed`)
  }
  return p
}

const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/

/** parse `s3://BUCKET[/PREFIX]` */
export function parseS3Url(url: string): {bucket: string; prefix: string} {
  const shown = JSON.stringify(redactUrl(url))
  const m = /^s3:\/\/([^/?#]*)(\/[^?#]*)?$/i.exec(url.trim())
  if (!m) {
    if (/[?#]/.test(url)) throw new HolyshipError('USAGE', `invalid S3 URL ${shown}: query strings and fragments are not allowed`)
    throw new HolyshipError('USAGE', `invalid S3 URL ${shown}: expected s3://BUCKET[/PREFIX]`)
  }
  const bucket = m[1]
  if (!bucket) throw new HolyshipError('USAGE', `invalid S3 URL ${shown}: the bucket name is missing (expected s3://BUCKET[/PREFIX])`)
  if (bucket.includes('@') || bucket.includes(':')) {
    throw new HolyshipError('USAGE', `invalid S3 URL ${shown}: credentials or ports do not belong in the URL`, {
      hint: 'use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile, and --endpoint for the server',
    })
  }
  if (!BUCKET_RE.test(bucket) || bucket.includes('..') || /^\d+\.\d+\.\d+\.\d+$/.test(bucket)) {
    throw new HolyshipError('USAGE', `invalid S3 bucket name "${bucket}": 3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit`)
  }
  const prefix = normalisePrefix(m[2] ?? '')
  return {bucket, prefix}
}
