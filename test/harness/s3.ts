import {mkdtemp, rm} from 'node:fs/promises'
import {createRequire} from 'node:module'
import type {AddressInfo} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {Backend, BackendExists, PutOptions} from '../../src/backend/backend.js'

/** the slice of s3rver's (untyped, CommonJS) API we use */
interface S3rverInstance {
  run(): Promise<AddressInfo>
  close(): Promise<void>
}
type S3rverCtor = new (options: {
  address: string
  port: number
  silent: boolean
  directory: string
  configureBuckets: Array<{name: string}>
  resetOnClose?: boolean
}) => S3rverInstance

const require = createRequire(import.meta.url)

/**
 * s3rver 3.7.1 encrypts ListObjectsV2 continuation tokens with DES, which OpenSSL 3 (Node >= 17)
 * no longer provides: every paginated listing fails with a 500 (ERR_OSSL_EVP_UNSUPPORTED).
 * Tokens are opaque to clients, so give s3rver an identity "cipher" for 'des' only. The patch
 * only changes calls that would otherwise throw, and only when DES really is unavailable.
 */
function patchDesForS3rver(): void {
  const crypto = require('node:crypto') as typeof import('node:crypto') & {__holyshipDesShim?: true}
  if (crypto.__holyshipDesShim) return
  try {
    crypto.createCipheriv('des', Buffer.alloc(8), Buffer.alloc(8))
    return // DES works (legacy provider loaded): nothing to do
  } catch {
    // fall through
  }
  const identity = () => ({
    update: (data: string | Buffer, enc?: BufferEncoding) => (typeof data === 'string' ? Buffer.from(data, enc ?? 'utf8') : Buffer.from(data)),
    final: () => Buffer.alloc(0),
  })
  const origCipher = crypto.createCipheriv
  const origDecipher = crypto.createDecipheriv
  const patched = crypto as unknown as Record<string, unknown>
  patched.createCipheriv = function (this: unknown, algorithm: string, ...rest: unknown[]) {
    if (algorithm === 'des') return identity()
    return (origCipher as (...a: unknown[]) => unknown).call(this, algorithm, ...rest)
  }
  patched.createDecipheriv = function (this: unknown, algorithm: string, ...rest: unknown[]) {
    if (algorithm === 'des') return identity()
    return (origDecipher as (...a: unknown[]) => unknown).call(this, algorithm, ...rest)
  }
  crypto.__holyshipDesShim = true
}

export interface S3Server {
  /** e.g. http://127.0.0.1:40123 */
  endpoint: string
  bucket: string
  /** s3rver's storage directory; objects live at `<dir>/<bucket>/<key>._S3rver_object` */
  dir: string
  stop(): Promise<void>
}

/** credentials s3rver accepts (it only checks the access key id, not the V4 signature) */
export const S3RVER_CREDENTIALS = {accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER'}

/** Path of the raw file s3rver stores an object's bytes in. */
export function s3rverObjectPath(server: Pick<S3Server, 'dir' | 'bucket'>, key: string): string {
  const parts = key.split('/')
  const last = parts.pop()!
  return join(server.dir, server.bucket, ...parts, `${last}._S3rver_object`)
}

/** Starts s3rver on 127.0.0.1 (random free port) over a fresh temp directory with one bucket. */
export async function startS3Server(bucket = 'holyship-test'): Promise<S3Server> {
  patchDesForS3rver()
  const S3rver = require('s3rver') as S3rverCtor
  const dir = await mkdtemp(join(tmpdir(), 'holyship-s3rver-'))
  const server = new S3rver({address: '127.0.0.1', port: 0, silent: true, directory: dir, configureBuckets: [{name: bucket}]})
  let addr: AddressInfo
  try {
    addr = await server.run()
  } catch (e) {
    await rm(dir, {recursive: true, force: true})
    throw e
  }
  let stopped = false
  return {
    endpoint: `http://127.0.0.1:${addr.port}`,
    bucket,
    dir,
    async stop() {
      if (stopped) return
      stopped = true
      // close() waits for keep-alive sockets; clients should be destroyed first
      await server.close()
      await rm(dir, {recursive: true, force: true})
    },
  }
}

/**
 * Point the AWS SDK's default credential chain at s3rver for this process (and no ambient
 * endpoint or profile); returns the function that puts the environment back.
 */
export function useS3rverEnv(): () => void {
  const want: Record<string, string | undefined> = {
    AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
    AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
    AWS_REGION: 'us-east-1',
    AWS_ENDPOINT_URL: undefined,
    AWS_ENDPOINT_URL_S3: undefined,
    AWS_PROFILE: undefined,
  }
  const saved: Record<string, string | undefined> = {}
  for (const [k, v] of Object.entries(want)) {
    saved[k] = process.env[k]
    if (v === undefined) delete process.env[k]
    else process.env[k] = v
  }
  return () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  }
}

/**
 * s3rver ignores `If-None-Match: *` on PUT (AWS S3, MinIO, R2 honour it): a wrapBackend that
 * gives the backends it wraps a store's create-only puts, atomic among them (one lock for all)
 */
export function honourIfNoneMatch(): (b: Backend) => Backend {
  let queue: Promise<unknown> = Promise.resolve()
  return (b) =>
    new Proxy(b, {
      get(target, prop, receiver) {
        if (prop !== 'put') return Reflect.get(target, prop, receiver)
        return (key: string, data: Buffer, opts?: PutOptions): Promise<void> => {
          if (!opts?.ifAbsent) return target.put(key, data, opts)
          const run = queue.then(async () => {
            if ((await target.stat(key)) !== undefined) throw new BackendExists(key, target.location)
            await target.put(key, data, opts)
          })
          queue = run.catch(() => undefined)
          return run
        }
      },
    })
}
