import {createHash, randomBytes, randomUUID} from 'node:crypto'
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {readdirSync} from 'node:fs'
import * as http from 'node:http'
import type {AddressInfo} from 'node:net'
import {tmpdir} from 'node:os'
import {dirname, join} from 'node:path'
import {Readable} from 'node:stream'
import {GetObjectCommand, PutObjectCommand, S3Client} from '@aws-sdk/client-s3'
import {afterAll, beforeAll, describe, expect, it, vi} from 'vitest'
import {Backend, BackendEntry, BackendExists, BackendNotFound, PutOptions, isExists} from '../../src/backend/backend.js'
import {LocalBackend} from '../../src/backend/local.js'
import {LimitBackend, RetryBackend, isTransient} from '../../src/backend/retry.js'
import {S3Backend, S3BackendOptions, parseS3Url} from '../../src/backend/s3.js'
import {HolyshipError} from '../../src/errors.js'
import {S3RVER_CREDENTIALS, S3Server, s3rverObjectPath, startS3Server} from '../harness/s3.js'

const MiB = 1024 * 1024
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const md5hex = (b: Buffer) => createHash('md5').update(b).digest('hex')
/** key and size only: entries may also carry the store's mtime (checked separately) */
const ks = (es: BackendEntry[]): BackendEntry[] => es.map(({key, size}) => ({key, size}))

async function pool<T>(items: T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let i = 0
  await Promise.all(
    Array.from({length: n}, async () => {
      while (i < items.length) await fn(items[i++])
    }),
  )
}

// ---------------------------------------------------------------------------------------------
// fixtures: one s3rver for the whole file, temp dirs for LocalBackend

let s3: S3Server
const cleanups: Array<() => Promise<void>> = []

beforeAll(async () => {
  s3 = await startS3Server()
}, 20_000)

afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {})
  await s3?.stop()
})

function s3Backend(options: Partial<S3BackendOptions> = {}): S3Backend {
  const b = new S3Backend({
    bucket: s3.bucket,
    prefix: `t/${randomUUID()}`,
    endpoint: s3.endpoint,
    credentials: S3RVER_CREDENTIALS,
    maxAttempts: 1,
    ...options,
  })
  cleanups.push(() => b.close())
  return b
}

async function localBackend(): Promise<LocalBackend> {
  const dir = await mkdtemp(join(tmpdir(), 'holyship-local-'))
  cleanups.push(() => rm(dir, {recursive: true, force: true}))
  return new LocalBackend(dir)
}

// ---------------------------------------------------------------------------------------------
// the contract of src/backend/backend.ts, run against every implementation

interface ConformanceOptions {
  /** store many objects fast (default: backend.put with 16 in flight) */
  seed?: (backend: Backend, objects: Array<[string, Buffer]>) => Promise<void>
}

function conformance(name: string, factory: () => Promise<Backend> | Backend, options: ConformanceOptions = {}): void {
  const seed = options.seed ?? ((b: Backend, objects: Array<[string, Buffer]>) => pool(objects, 16, ([k, v]) => b.put(k, v)))
  describe(`backend conformance: ${name}`, () => {
    it('round-trips 0-byte, small and 20 MiB objects exactly', async () => {
      const b = await factory()
      const objects: Array<[string, Buffer]> = [
        ['empty', Buffer.alloc(0)],
        ['small', Buffer.from('hello holyship\n')],
        ['data/ab/big', randomBytes(20 * MiB)],
      ]
      for (const [key, data] of objects) await b.put(key, data)
      for (const [key, data] of objects) {
        const got = await b.get(key)
        expect(got.length).toBe(data.length)
        expect(sha256(got)).toBe(sha256(data))
        expect(await b.stat(key)).toBe(data.length)
      }
    }, 30_000)

    it('getRange reads exact slices at several offsets', async () => {
      const b = await factory()
      const data = randomBytes(MiB + 17)
      await b.put('data/pack', data)
      const cases: Array<[number, number]> = [
        [0, 1],
        [0, 4096],
        [1, 100],
        [12345, 54321],
        [MiB, 17],
        [data.length - 1, 1],
        [0, data.length],
        [500, 0],
      ]
      for (const [offset, length] of cases) {
        const got = await b.getRange('data/pack', offset, length)
        expect(got.length, `${length}@${offset}`).toBe(length)
        expect(got.equals(data.subarray(offset, offset + length)), `${length}@${offset}`).toBe(true)
      }
      // reading past the end is an error, never a silently short buffer
      await expect(b.getRange('data/pack', data.length - 10, 20)).rejects.toThrow(/short read/)
      await expect(b.getRange('data/pack', data.length + 10, 20)).rejects.toThrow(/short read/)
    })

    it('missing objects: stat → undefined, get/getRange → BackendNotFound', async () => {
      const b = await factory()
      expect(await b.stat('nope')).toBeUndefined()
      expect(await b.stat('data/zz/nope')).toBeUndefined()
      await expect(b.get('nope')).rejects.toBeInstanceOf(BackendNotFound)
      await expect(b.get('data/zz/nope')).rejects.toBeInstanceOf(BackendNotFound)
      await expect(b.getRange('nope', 0, 10)).rejects.toBeInstanceOf(BackendNotFound)
      await expect(b.get('nope')).rejects.toMatchObject({key: 'nope'})
    })

    it('list returns every key under a prefix, recursively, with sizes, relative to the repo', async () => {
      const b = await factory()
      expect(ks(await b.list(''))).toEqual([])
      const keys: Record<string, number> = {
        config: 3,
        'data/ab/0001': 10,
        'data/ab/0002': 0,
        'data/cd/0003': 7,
        'datafile/x': 1,
        'index/i1': 5,
        'snapshots/s1': 2,
      }
      for (const [k, size] of Object.entries(keys)) await b.put(k, randomBytes(size))
      const all: BackendEntry[] = Object.entries(keys).map(([key, size]) => ({key, size}))
      const t0 = Date.now()
      const listed = await b.list('')
      expect(ks(listed)).toEqual(all)
      // mtime, where reported, is when the object was written (prune's grace period relies on it)
      for (const e of listed) if (e.mtime !== undefined) expect(Math.abs(e.mtime - t0)).toBeLessThan(120_000)
      const data = all.filter((e) => e.key.startsWith('data/'))
      expect(ks(await b.list('data'))).toEqual(data)
      expect(ks(await b.list('data/'))).toEqual(data)
      expect(ks(await b.list('data/ab'))).toEqual(data.filter((e) => e.key.startsWith('data/ab/')))
      expect(ks(await b.list('index'))).toEqual([{key: 'index/i1', size: 5}])
      expect(ks(await b.list('locks'))).toEqual([])
      expect(ks(await b.list('data/ef'))).toEqual([])
    })

    it('list paginates past 1000 keys', async () => {
      const b = await factory()
      const keys = Array.from({length: 1100}, (_, i) => `index/${String(i).padStart(5, '0')}`)
      await seed(b, keys.map((k) => [k, Buffer.from(k)]))
      await b.put('other/x', Buffer.from('x'))
      const listed = await b.list('index')
      expect(listed.length).toBe(1100)
      expect(listed.map((e) => e.key)).toEqual(keys)
      expect(listed.every((e) => e.size === 11)).toBe(true)
      expect((await b.list('')).length).toBe(1101)
    }, 30_000)

    it('delete removes the key and is idempotent', async () => {
      const b = await factory()
      await b.put('locks/l1', Buffer.from('lock'))
      await b.put('locks/l2', Buffer.from('lock'))
      await b.delete('locks/l1')
      expect(await b.stat('locks/l1')).toBeUndefined()
      await expect(b.get('locks/l1')).rejects.toBeInstanceOf(BackendNotFound)
      await b.delete('locks/l1')
      await b.delete('never/existed')
      expect(ks(await b.list('locks'))).toEqual([{key: 'locks/l2', size: 4}])
    })

    it('put of an existing key with the same content is allowed', async () => {
      const b = await factory()
      const data = randomBytes(4096)
      await b.put('data/ab/same', data)
      await b.put('data/ab/same', data)
      expect((await b.get('data/ab/same')).equals(data)).toBe(true)
      expect(ks(await b.list('data'))).toEqual([{key: 'data/ab/same', size: 4096}])
    })

    it('a create-only put (ifAbsent) of a new key stores it and nothing else', async () => {
      const b = await factory()
      const data = randomBytes(3000)
      await b.put('config', data, {ifAbsent: true})
      expect((await b.get('config')).equals(data)).toBe(true)
      expect(ks(await b.list(''))).toEqual([{key: 'config', size: 3000}])
    })

    it('rejects keys that escape the repository', async () => {
      const b = await factory()
      for (const key of ['../x', '/abs', 'a//b', 'a/./b', 'a/../b']) {
        await expect(b.put(key, Buffer.from('x')), key).rejects.toThrow(/invalid backend key/)
      }
    })
  })
}

/**
 * 1100 PUTs through s3rver (which shares this process's event loop) take ~10 s, so the
 * pagination test seeds s3rver's storage directory directly: `<key>._S3rver_object` files are
 * all s3rver needs (it derives size and MD5 from them). Listing still goes through the S3 API.
 */
async function seedS3rver(b: Backend, objects: Array<[string, Buffer]>): Promise<void> {
  let inner: unknown = b
  while (!(inner instanceof S3Backend)) inner = (inner as {inner: unknown}).inner
  const prefix = inner.prefix
  await pool(objects, 16, async ([key, data]) => {
    const file = s3rverObjectPath(s3, `${prefix}/${key}`)
    await mkdir(dirname(file), {recursive: true})
    await writeFile(file, data)
  })
}

conformance('LocalBackend', localBackend)
conformance('S3Backend (s3rver)', () => s3Backend(), {seed: seedS3rver})
conformance('RetryBackend(LimitBackend(S3Backend))', () => new RetryBackend(new LimitBackend(s3Backend(), 4)), {seed: seedS3rver})

describe('LocalBackend create-only puts', () => {
  it('refuse an existing key (BackendExists), keep what is there and leave no temporary file; of two at once, one wins', async () => {
    const b = await localBackend()
    await b.put('config', Buffer.from('first'), {ifAbsent: true})
    const e = await b.put('config', Buffer.from('second'), {ifAbsent: true}).catch((x: unknown) => x)
    expect(isExists(e)).toBe(true)
    expect((await b.get('config')).toString()).toBe('first')
    const racing = await Promise.allSettled(['a', 'b', 'c', 'd'].map((x) => b.put('locks/one', Buffer.from(x), {ifAbsent: true})))
    expect(racing.filter((r) => r.status === 'fulfilled')).toHaveLength(1)
    expect(racing.filter((r) => r.status === 'rejected' && isExists(r.reason))).toHaveLength(3)
    expect(readdirSync(join(b.location, 'locks'))).toEqual(['one'])
    expect(readdirSync(b.location).sort()).toEqual(['config', 'locks'])
  })
})

// ---------------------------------------------------------------------------------------------
// S3-specific: aws-chunked corruption, upload verification, error mapping

/** a plain client with the SDK's *default* checksum settings (WHEN_SUPPORTED) */
function defaultClient(): S3Client {
  const c = new S3Client({endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: S3RVER_CREDENTIALS, maxAttempts: 1})
  cleanups.push(async () => c.destroy())
  return c
}

describe('S3Backend data safety (aws-chunked, aws-sdk-js-v3#6810)', () => {
  it('stores exactly the bytes we put: raw s3rver file is byte-identical', async () => {
    const b = s3Backend()
    for (const [key, data] of [
      ['data/ab/pack', randomBytes(3 * MiB + 5)],
      ['config', Buffer.from('{"version":1}')],
      ['empty', Buffer.alloc(0)],
    ] as Array<[string, Buffer]>) {
      await b.put(key, data)
      const raw = await readFile(s3rverObjectPath(s3, `${b.prefix}/${key}`))
      expect(raw.length).toBe(data.length)
      expect(raw.equals(data)).toBe(true)
      // and a fresh plain client reads the same bytes back
      const r = await defaultClient().send(new GetObjectCommand({Bucket: s3.bucket, Key: `${b.prefix}/${key}`}))
      expect(Buffer.from(await r.Body!.transformToByteArray()).equals(data)).toBe(true)
    }
  })

  it('a default-configured client streaming a body makes s3rver store aws-chunked framing (the bug we avoid)', async () => {
    const c = defaultClient()
    const data = Buffer.from('holyship pack bytes\n'.repeat(2000))
    const key = `t/${randomUUID()}/streamed`
    await c.send(
      new PutObjectCommand({
        Bucket: s3.bucket,
        Key: key,
        Body: Readable.from([data.subarray(0, 10_000), data.subarray(10_000)]),
        ContentLength: data.length,
      }),
    )
    const raw = await readFile(s3rverObjectPath(s3, key))
    // observed with @aws-sdk/client-s3 3.1175 + s3rver 3.7.1: the stored object is the
    // aws-chunked wire encoding (hex chunk sizes, CRLFs, a CRC32 trailer), not our bytes
    expect(raw.equals(data)).toBe(false)
    expect(raw.length).toBeGreaterThan(data.length)
    expect(raw.subarray(0, 6).toString('latin1')).toBe('2710\r\n') // 10000 bytes, in hex
    expect(raw.toString('latin1')).toMatch(/\r\n0\r\nx-amz-checksum-crc32:[A-Za-z0-9+/=]+\r\n\r\n$/)
    // ... and the default client reads the corrupted bytes back without any error
    const r = await c.send(new GetObjectCommand({Bucket: s3.bucket, Key: key}))
    const got = Buffer.from(await r.Body!.transformToByteArray())
    expect(got.equals(raw)).toBe(true)
    // our backend never trusts the store: get() returns exactly what is stored (hashes are
    // verified above this layer)
    const b = s3Backend({prefix: key.split('/').slice(0, 2).join('/')})
    expect((await b.get('streamed')).equals(raw)).toBe(true)
  })

  it('a default-configured client refuses a stream of unknown length (no object is stored)', async () => {
    const c = defaultClient()
    const key = `t/${randomUUID()}/unknown-length`
    await expect(c.send(new PutObjectCommand({Bucket: s3.bucket, Key: key, Body: Readable.from([Buffer.from('abc')])}))).rejects.toThrow(
      /x-amz-decoded-content-length/,
    )
    expect(await s3Backend({prefix: key.split('/').slice(0, 2).join('/')}).stat('unknown-length')).toBeUndefined()
  })

  it('multipart uploads (above the threshold) are stored byte-identical', async () => {
    const b = s3Backend({multipartThreshold: 8 * MiB, partSize: 5 * MiB})
    const data = randomBytes(12 * MiB + 3)
    await b.put('data/mp/big', data)
    const raw = await readFile(s3rverObjectPath(s3, `${b.prefix}/data/mp/big`))
    expect(raw.equals(data)).toBe(true)
    expect(sha256(await b.get('data/mp/big'))).toBe(sha256(data))
    expect((await b.getRange('data/mp/big', 5 * MiB - 2, 4)).equals(data.subarray(5 * MiB - 2, 5 * MiB + 2))).toBe(true)
  }, 20_000)
})

// A fault-injecting HTTP proxy in front of s3rver: for matching PUTs it forwards only the first
// half of the body (with a matching Content-Length, so s3rver accepts it as complete). With
// `lie`, it also rewrites the PUT response's ETag to the MD5 of the full body, so only the HEAD
// check can notice.
interface Proxy {
  endpoint: string
  truncated: number
  /** every request seen: method, url, headers, body length */
  requests: Array<{method: string; url: string; headers: http.IncomingHttpHeaders; bodyLength: number}>
  stop(): Promise<void>
}

async function startTruncatingProxy(target: string, opts: {match: (url: string) => boolean; times: number; lie?: boolean; ifNoneMatch?: boolean | 'refuse'}): Promise<Proxy> {
  let remaining = opts.times
  const state = {truncated: 0}
  const requests: Proxy['requests'] = []
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks)
      requests.push({method: req.method ?? '', url: req.url ?? '', headers: req.headers, bodyLength: body.length})
      let out = body
      let cut = false
      if (req.method === 'PUT' && opts.match(req.url ?? '') && remaining > 0 && body.length > 1) {
        remaining--
        state.truncated++
        out = body.subarray(0, Math.floor(body.length / 2))
        cut = true
      }
      const headers = {...req.headers, 'content-length': String(out.length)}
      delete headers['transfer-encoding']
      const forward = (): void => {
        const up = http.request(`${target}${req.url}`, {method: req.method, headers}, (ur) => {
          const h = {...ur.headers}
          if (cut && opts.lie && h.etag) h.etag = JSON.stringify(md5hex(body))
          res.writeHead(ur.statusCode ?? 502, h)
          ur.pipe(res)
        })
        up.on('error', () => res.destroy())
        up.end(out)
      }
      if (!(opts.ifNoneMatch && req.method === 'PUT' && req.headers['if-none-match'] === '*')) return forward()
      if (opts.ifNoneMatch === 'refuse') {
        // a store that does not implement conditional writes and says so
        res.writeHead(501, {'content-type': 'application/xml'})
        res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message></Error>')
        return
      }
      // what AWS S3 does (s3rver ignores the header): 412 when the key is there
      const head = http.request(`${target}${req.url}`, {method: 'HEAD', headers: {host: req.headers.host ?? ''}}, (hr) => {
        hr.resume()
        if (hr.statusCode !== 200) return forward()
        res.writeHead(412, {'content-type': 'application/xml'})
        res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>')
      })
      head.on('error', () => res.destroy())
      head.end()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  return {
    endpoint: `http://127.0.0.1:${port}`,
    get truncated() {
      return state.truncated
    },
    requests,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

describe('S3Backend post-upload verification (fault-injecting proxy)', () => {
  it('uploads are plain bodies with Content-Length and Content-MD5, never aws-chunked or trailing checksums', async () => {
    const proxy = await startTruncatingProxy(s3.endpoint, {match: () => false, times: 0})
    cleanups.push(proxy.stop)
    const b = s3Backend({endpoint: proxy.endpoint, multipartThreshold: 6000, partSize: 5000})
    const small = randomBytes(5000)
    const big = randomBytes(12_000)
    await b.put('data/small', small)
    await b.put('data/big', big)
    const puts = proxy.requests.filter((r) => r.method === 'PUT')
    expect(puts.length).toBe(4) // one PutObject + three UploadPart
    for (const r of puts) {
      expect(r.headers['content-length']).toBe(String(r.bodyLength))
      expect(r.headers['content-md5']).toMatch(/^[A-Za-z0-9+/]{22}==$/)
      expect(r.headers['content-encoding'] ?? '').not.toMatch(/aws-chunked/)
      expect(r.headers['transfer-encoding']).toBeUndefined()
      expect(r.headers['x-amz-content-sha256'] ?? '').not.toMatch(/STREAMING/)
      expect(r.headers['x-amz-decoded-content-length']).toBeUndefined()
      expect(Object.keys(r.headers).filter((h) => h.startsWith('x-amz-checksum') || h === 'x-amz-sdk-checksum-algorithm' || h === 'x-amz-trailer')).toEqual([])
    }
    expect(puts[0].headers['content-md5']).toBe(createHash('md5').update(small).digest('base64'))
    // every upload is followed by a HEAD to verify it
    expect(proxy.requests.filter((r) => r.method === 'HEAD').length).toBe(2)
    // reads do not ask for checksums either (x-amz-checksum-mode)
    await b.get('data/small')
    expect(proxy.requests.at(-1)!.headers['x-amz-checksum-mode']).toBeUndefined()
  })

  it('a create-only put sends If-None-Match: * in one PutObject, even above the multipart threshold, and a 412 is BackendExists', async () => {
    const proxy = await startTruncatingProxy(s3.endpoint, {match: () => false, times: 0, ifNoneMatch: true})
    cleanups.push(proxy.stop)
    const b = s3Backend({endpoint: proxy.endpoint, multipartThreshold: 6000, partSize: 5000})
    const first = randomBytes(12_000)
    await b.put('config', first, {ifAbsent: true})
    const e = await b.put('config', randomBytes(100), {ifAbsent: true}).catch((x: unknown) => x)
    expect(isExists(e)).toBe(true)
    expect((await b.get('config')).equals(first)).toBe(true)
    const puts = proxy.requests.filter((r) => r.method === 'PUT')
    expect(puts.map((r) => [r.headers['if-none-match'], r.url.includes('uploadId') || r.url.includes('partNumber')])).toEqual([
      ['*', false],
      ['*', false],
    ])
    // an ordinary put still replaces
    await b.put('config', Buffer.from('x'))
    expect((await b.get('config')).toString()).toBe('x')
    // a store that refuses the header (501) gets a plain put
    const refusing = await startTruncatingProxy(s3.endpoint, {match: () => false, times: 0, ifNoneMatch: 'refuse'})
    cleanups.push(refusing.stop)
    const r = s3Backend({endpoint: refusing.endpoint})
    await r.put('config', Buffer.from('plain'), {ifAbsent: true})
    expect((await r.get('config')).toString()).toBe('plain')
    expect(refusing.requests.filter((q) => q.method === 'PUT').map((q) => q.headers['if-none-match'])).toEqual(['*', undefined])
  })

  it('a truncated PUT is detected (ETag ≠ MD5), deleted and reported as REMOTE_CORRUPT', async () => {
    const proxy = await startTruncatingProxy(s3.endpoint, {match: (u) => u.includes('/victim'), times: 1})
    cleanups.push(proxy.stop)
    const prefix = `t/${randomUUID()}`
    const b = s3Backend({endpoint: proxy.endpoint, prefix})
    const data = randomBytes(64 * 1024)
    const err = await b.put('data/victim', data).catch((e: unknown) => e)
    expect(proxy.truncated).toBe(1)
    expect(err).toBeInstanceOf(HolyshipError)
    expect(err).toMatchObject({code: 'REMOTE_CORRUPT'})
    expect((err as Error).message).toMatch(/upload corrupted.*ETag.*object deleted/)
    // nothing half-written stays behind
    expect(await s3Backend({prefix}).stat('data/victim')).toBeUndefined()
  })

  it('a truncated PUT whose response lies about the ETag is caught by the HEAD size check', async () => {
    const proxy = await startTruncatingProxy(s3.endpoint, {match: (u) => u.includes('/victim'), times: 1, lie: true})
    cleanups.push(proxy.stop)
    const prefix = `t/${randomUUID()}`
    const b = s3Backend({endpoint: proxy.endpoint, prefix})
    const err = await b.put('data/victim', randomBytes(10_000)).catch((e: unknown) => e)
    expect(proxy.truncated).toBe(1)
    expect(err).toMatchObject({code: 'REMOTE_CORRUPT'})
    expect((err as Error).message).toMatch(/stored size 5000, sent 10000/)
    expect(await s3Backend({prefix}).stat('data/victim')).toBeUndefined()
  })

  it('a truncated multipart part is detected and the upload aborted', async () => {
    const proxy = await startTruncatingProxy(s3.endpoint, {match: (u) => u.includes('partNumber=2'), times: 1})
    cleanups.push(proxy.stop)
    const prefix = `t/${randomUUID()}`
    const b = s3Backend({endpoint: proxy.endpoint, prefix, multipartThreshold: 1000, partSize: 1000})
    const err = await b.put('data/mp', randomBytes(2500)).catch((e: unknown) => e)
    expect(err).toMatchObject({code: 'REMOTE_CORRUPT'})
    expect((err as Error).message).toMatch(/part 2 corrupted/)
    expect(await s3Backend({prefix}).stat('data/mp')).toBeUndefined()
  })

  it('RetryBackend redoes a corrupted upload and the retry stores the right bytes', async () => {
    const proxy = await startTruncatingProxy(s3.endpoint, {match: (u) => u.includes('/victim'), times: 2})
    cleanups.push(proxy.stop)
    const prefix = `t/${randomUUID()}`
    const delays: number[] = []
    const b = new RetryBackend(s3Backend({endpoint: proxy.endpoint, prefix}), {sleep: async (ms) => void delays.push(ms)})
    const data = randomBytes(100_000)
    await b.put('data/victim', data)
    expect(proxy.truncated).toBe(2)
    expect(delays.length).toBe(2)
    const raw = await readFile(s3rverObjectPath(s3, `${prefix}/data/victim`))
    expect(raw.equals(data)).toBe(true)
  })
})

describe('S3Backend error mapping', () => {
  it('missing bucket → REMOTE_NOT_FOUND naming the bucket and endpoint', async () => {
    const b = s3Backend({bucket: 'no-such-bucket'})
    for (const op of [() => b.get('config'), () => b.put('config', Buffer.from('x')), () => b.list(''), () => b.stat('config'), () => b.getRange('config', 0, 1)]) {
      const err = await op().catch((e: unknown) => e)
      expect(err).toBeInstanceOf(HolyshipError)
      expect(err).toMatchObject({code: 'REMOTE_NOT_FOUND', exitCode: 40})
      expect((err as Error).message).toContain('no-such-bucket')
      expect((err as Error).message).toContain(s3.endpoint)
    }
  })

  it('unknown access key → REMOTE_DENIED, and the secret never appears in messages', async () => {
    // s3rver checks the access key id (InvalidAccessKeyId) but does not verify V4 signatures,
    // so a wrong secret for a known key id is not detectable here.
    const secret = 'SECRET-MUST-NOT-LEAK'
    const b = s3Backend({credentials: {accessKeyId: 'NOT-A-KEY', secretAccessKey: secret}})
    for (const op of [() => b.get('config'), () => b.put('config', Buffer.from('x')), () => b.list('')]) {
      const err = await op().catch((e: unknown) => e)
      expect(err).toMatchObject({code: 'REMOTE_DENIED'})
      expect((err as Error).message).toMatch(/access denied/)
      expect((err as Error).message).not.toContain(secret)
      expect(b.location).not.toContain(secret)
    }
  })

  it('connection refused → REMOTE_UNREACHABLE naming the endpoint', async () => {
    const srv = http.createServer()
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
    const port = (srv.address() as AddressInfo).port
    await new Promise<void>((resolve) => srv.close(() => resolve())) // the port is now closed
    const b = s3Backend({endpoint: `http://user:pw@127.0.0.1:${port}`})
    const err = await b.get('config').catch((e: unknown) => e)
    expect(err).toMatchObject({code: 'REMOTE_UNREACHABLE'})
    expect((err as Error).message).toContain(`http://127.0.0.1:${port}`)
    expect((err as Error).message).toContain(s3.bucket)
    expect((err as Error).message).not.toContain('pw')
    expect(isTransient(err)).toBe(true)
  })

  it('the SDK picks the endpoint up from AWS_ENDPOINT_URL_S3 itself; we switch to path-style for it', async () => {
    // a host name, not an IP: for IP endpoints the SDK picks path-style by itself
    const endpoint = s3.endpoint.replace('127.0.0.1', 'localhost')
    vi.stubEnv('AWS_ENDPOINT_URL_S3', endpoint)
    try {
      const b = s3Backend({endpoint: undefined})
      expect(b.endpointName).toBe(endpoint)
      await b.put('config', Buffer.from('via env'))
      expect((await b.get('config')).toString()).toBe('via env')
      expect((await readFile(s3rverObjectPath(s3, `${b.prefix}/config`))).toString()).toBe('via env')
    } finally {
      vi.unstubAllEnvs()
    }
  })

  it('location is s3://bucket/prefix', () => {
    expect(s3Backend({prefix: 'a/b/'}).location).toBe(`s3://${s3.bucket}/a/b`)
    expect(s3Backend({prefix: ''}).location).toBe(`s3://${s3.bucket}`)
  })
})

describe('parseS3Url', () => {
  it('parses bucket and prefix', () => {
    expect(parseS3Url('s3://bucket')).toEqual({bucket: 'bucket', prefix: ''})
    expect(parseS3Url('s3://bucket/')).toEqual({bucket: 'bucket', prefix: ''})
    expect(parseS3Url('s3://my.bucket-1/repos/web')).toEqual({bucket: 'my.bucket-1', prefix: 'repos/web'})
    expect(parseS3Url('s3://bucket/repos/web/')).toEqual({bucket: 'bucket', prefix: 'repos/web'})
    expect(parseS3Url('S3://bucket/p')).toEqual({bucket: 'bucket', prefix: 'p'})
  })

  it('rejects bad URLs with USAGE', () => {
    const bad: Array<[string, RegExp]> = [
      ['bucket/prefix', /expected s3:\/\/BUCKET/],
      ['http://bucket/prefix', /expected s3:\/\/BUCKET/],
      ['s3://', /bucket name is missing/],
      ['s3:///prefix', /bucket name is missing/],
      ['s3://Bucket', /invalid S3 bucket name/],
      ['s3://ab', /invalid S3 bucket name/],
      ['s3://under_score', /invalid S3 bucket name/],
      ['s3://-bucket', /invalid S3 bucket name/],
      ['s3://a..b', /invalid S3 bucket name/],
      ['s3://192.168.1.1', /invalid S3 bucket name/],
      ['s3://bucket/a//b', /empty, "\." or "\.\."/],
      ['s3://bucket/a/../b', /empty, "\." or "\.\."/],
      ['s3://bucket/p?x=1', /query strings/],
      ['s3://key:secret@bucket/p', /credentials/],
    ]
    for (const [url, re] of bad) {
      let err: unknown
      try {
        parseS3Url(url)
      } catch (e) {
        err = e
      }
      expect(err, url).toBeInstanceOf(HolyshipError)
      expect(err, url).toMatchObject({code: 'USAGE'})
      expect((err as Error).message, url).toMatch(re)
      expect((err as Error).message, url).not.toContain('secret')
    }
  })
})

// ---------------------------------------------------------------------------------------------
// RetryBackend / LimitBackend with fakes

class FlakyBackend implements Backend {
  readonly location = 'fake://flaky'
  calls = 0
  constructor(private readonly failures: unknown[], private readonly value: Buffer = Buffer.from('ok')) {}
  private async step<T>(v: T): Promise<T> {
    this.calls++
    const f = this.failures.shift()
    if (f !== undefined) throw f
    return v
  }
  get() {
    return this.step(this.value)
  }
  getRange(_k: string, o: number, l: number) {
    return this.step(this.value.subarray(o, o + l))
  }
  put() {
    return this.step(undefined)
  }
  stat() {
    return this.step(this.value.length as number | undefined)
  }
  list() {
    return this.step([] as BackendEntry[])
  }
  delete() {
    return this.step(undefined)
  }
}

const http503 = () => Object.assign(new Error('Service Unavailable'), {name: 'ServiceUnavailable', $metadata: {httpStatusCode: 503}})

describe('RetryBackend', () => {
  it('retries a 503 and then succeeds, with growing jittered delays', async () => {
    const fake = new FlakyBackend([http503(), http503(), Object.assign(new Error('read ECONNRESET'), {code: 'ECONNRESET'})])
    const delays: number[] = []
    const b = new RetryBackend(fake, {sleep: async (ms) => void delays.push(ms), random: () => 0.5})
    expect((await b.get('k')).toString()).toBe('ok')
    expect(fake.calls).toBe(4)
    expect(delays).toEqual([150, 300, 600])
  })

  it('retries throttling (429 / SlowDown), socket hang up and truncated bodies', async () => {
    const fake = new FlakyBackend([
      Object.assign(new Error('Please reduce your request rate.'), {name: 'SlowDown', $metadata: {httpStatusCode: 503}}),
      Object.assign(new Error('Too Many Requests'), {$metadata: {httpStatusCode: 429}}),
      new Error('socket hang up'),
      Object.assign(new Error('EPIPE'), {code: 'EPIPE'}),
      new HolyshipError('REMOTE_CORRUPT', 'truncated download (5 of 10 bytes)'),
      Object.assign(new Error('Premature close'), {code: 'ERR_STREAM_PREMATURE_CLOSE'}),
    ])
    const b = new RetryBackend(fake, {attempts: 10, sleep: async () => {}})
    await b.put('k', Buffer.from('x'))
    expect(fake.calls).toBe(7)
  })

  it('retries a create-only put refused with 409 ConditionalRequestConflict (another write to the key in flight), create-only again; a 412 is final', async () => {
    const conflict = () => Object.assign(new Error('A conflicting operation is in progress'), {name: 'ConditionalRequestConflict', $metadata: {httpStatusCode: 409}})
    const fake = new FlakyBackend([conflict(), conflict()])
    const seen: (PutOptions | undefined)[] = []
    const put = fake.put.bind(fake)
    fake.put = (...a: Parameters<Backend['put']>) => (seen.push(a[2]), put())
    const b = new RetryBackend(fake, {sleep: async () => {}})
    await b.put('config', Buffer.from('x'), {ifAbsent: true, released: () => {}})
    expect(seen).toEqual([{ifAbsent: true}, {ifAbsent: true}, {ifAbsent: true}])
    // a 409 of another kind (the bucket's own state) is not retried
    const other = new FlakyBackend([Object.assign(new Error('BucketAlreadyOwnedByYou'), {name: 'BucketAlreadyOwnedByYou', $metadata: {httpStatusCode: 409}})])
    await expect(new RetryBackend(other, {sleep: async () => {}}).put('config', Buffer.from('x'), {ifAbsent: true})).rejects.toThrow(/BucketAlreadyOwnedByYou/)
    expect(other.calls).toBe(1)
    const exists = new FlakyBackend([new BackendExists('config', 'fake://flaky')])
    await expect(new RetryBackend(exists, {sleep: async () => {}}).put('config', Buffer.from('x'), {ifAbsent: true})).rejects.toBeInstanceOf(BackendExists)
    expect(exists.calls).toBe(1)
  })

  it('gives up after N attempts with a clear message, keeping the cause', async () => {
    const errors = Array.from({length: 10}, http503)
    const fake = new FlakyBackend([...errors])
    const b = new RetryBackend(fake, {attempts: 3, sleep: async () => {}})
    const err = await b.get('data/ab/x').catch((e: unknown) => e)
    expect(fake.calls).toBe(3)
    expect(err).toBeInstanceOf(HolyshipError)
    expect(err).toMatchObject({code: 'REMOTE_UNREACHABLE'})
    expect((err as Error).message).toBe('fake://flaky: get data/ab/x failed after 3 attempts: Service Unavailable')
    expect((err as Error).cause).toBe(errors[2])
  })

  it('keeps the code of a HolyshipError when giving up', async () => {
    const fake = new FlakyBackend(Array.from({length: 6}, () => new HolyshipError('REMOTE_CORRUPT', 'fake://flaky/k: upload corrupted')))
    const err = await new RetryBackend(fake, {sleep: async () => {}}).put('k', Buffer.from('x')).catch((e: unknown) => e)
    expect(fake.calls).toBe(6)
    expect(err).toMatchObject({code: 'REMOTE_CORRUPT'})
    expect((err as Error).message).toBe('put k failed after 6 attempts: fake://flaky/k: upload corrupted')
  })

  it('does not retry BackendNotFound, USAGE, REMOTE_DENIED, REMOTE_NOT_FOUND, unknown hosts or plain errors', async () => {
    const permanent: unknown[] = [
      new BackendNotFound('k', 'fake://flaky'),
      new HolyshipError('USAGE', 'bad'),
      new HolyshipError('REMOTE_DENIED', 'denied'),
      new HolyshipError('REMOTE_NOT_FOUND', 'no bucket'),
      new HolyshipError('REMOTE_UNREACHABLE', 'cannot reach', {cause: Object.assign(new Error('getaddrinfo ENOTFOUND x'), {code: 'ENOTFOUND'})}),
      Object.assign(new Error('Access Denied'), {name: 'AccessDenied', $metadata: {httpStatusCode: 403}}),
      new Error('short read (0 of 10 bytes at 5)'),
    ]
    for (const e of permanent) {
      const fake = new FlakyBackend([e])
      const sleeps: number[] = []
      const got = await new RetryBackend(fake, {sleep: async (ms) => void sleeps.push(ms)}).get('k').catch((x: unknown) => x)
      expect(got).toBe(e) // rethrown unchanged
      expect(fake.calls).toBe(1)
      expect(sleeps).toEqual([])
    }
  })

  it('caps the backoff at maxDelayMs', () => {
    const b = new RetryBackend(new FlakyBackend([]), {random: () => 1})
    expect([1, 2, 3, 4, 5, 6, 7, 8].map((n) => b.delay(n))).toEqual([200, 400, 800, 1600, 3200, 6400, 10_000, 10_000])
    const j = new RetryBackend(new FlakyBackend([]), {random: () => 0})
    expect(j.delay(8)).toBe(5000)
  })
})

describe('LimitBackend', () => {
  it('never runs more than `limit` operations at once and passes results through', async () => {
    let active = 0
    let peak = 0
    const slow: Backend = {
      location: 'fake://slow',
      async get(key) {
        active++
        peak = Math.max(peak, active)
        await new Promise((r) => setTimeout(r, 5))
        active--
        if (key === 'bad') throw new Error('boom')
        return Buffer.from(key)
      },
      getRange: async () => Buffer.alloc(0),
      put: async () => {},
      stat: async () => undefined,
      list: async () => [],
      delete: async () => {},
    }
    const b = new LimitBackend(slow, 3)
    const keys = Array.from({length: 20}, (_, i) => `k${i}`)
    const results = await Promise.all([...keys.map((k) => b.get(k)), b.get('bad').catch((e: Error) => e.message)])
    expect(peak).toBe(3)
    expect(results.slice(0, 20).map(String)).toEqual(keys)
    expect(results[20]).toBe('boom')
    expect(b.inUse).toBe(0)
    expect(b.location).toBe('fake://slow')
    expect(new LimitBackend(slow).location).toBe('fake://slow')
  })
})
