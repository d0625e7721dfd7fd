/**
 * The blob worker pool and the pipelined write path: real worker threads, a real repository in
 * a temp directory. What the workers produce must be exactly what the main thread would (same
 * ids, blobs that decode back), in plain and encrypted repositories; a failing pack write or a
 * dead worker must fail the snapshot with an error, never hang or lose data silently.
 */
import {createHash, randomBytes} from 'node:crypto'
import {mkdtempSync, promises as fsp, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {Readable} from 'node:stream'
import {afterAll, afterEach, beforeAll, describe, expect, it} from 'vitest'
import {Archiver} from '../../src/archive/archiver.js'
import {archiveDir} from '../../src/archive/fs-source.js'
import {restoreToDir} from '../../src/archive/restorer.js'
import {LocalBackend} from '../../src/backend/local.js'
import {BlobPool, owned, poolSize} from '../../src/repo/blob-pool.js'
import {Chunker} from '../../src/repo/chunker.js'
import {MasterKey} from '../../src/repo/crypto.js'
import {FAST_TEST_SCRYPT} from '../../src/repo/keys.js'
import {decodeBlob, encodeBlob, sha256} from '../../src/repo/pack.js'
import {POOL_START_BYTES, Repository} from '../../src/repo/repository.js'

const MiB = 1024 * 1024
const T0: [number, number] = [1_700_000_000, 0]

/** compressible, not trivially: lines with counters */
function text(bytes: number, seed = 0): Buffer {
  const parts: string[] = []
  let n = 0
  for (let i = 0; n < bytes; i++) {
    const line = `line ${seed}:${i} ${(i * 2654435761) % 1000003} the quick brown fox\n`
    parts.push(line)
    n += line.length
  }
  return Buffer.from(parts.join('')).subarray(0, bytes)
}

async function withEnv<T>(name: string, value: string | undefined, fn: () => Promise<T>): Promise<T> {
  const old = process.env[name]
  if (value === undefined) delete process.env[name]
  else process.env[name] = value
  try {
    return await fn()
  } finally {
    if (old === undefined) delete process.env[name]
    else process.env[name] = old
  }
}

describe('blob pool', {timeout: 60_000}, () => {
  let pool: BlobPool
  let keyed: BlobPool
  const key = MasterKey.generate()

  beforeAll(() => {
    pool = new BlobPool(2)
    keyed = new BlobPool(1, key)
  })
  afterAll(async () => {
    await pool.close()
    await keyed.close()
  })

  it('poolSize: HOLYSHIP_WORKERS sets it, auto is one per core up to 4, the default one where there are two cores', () => {
    expect(poolSize({HOLYSHIP_WORKERS: '0'})).toBe(0)
    expect(poolSize({HOLYSHIP_WORKERS: '3'})).toBe(3)
    expect(poolSize({HOLYSHIP_WORKERS: 'auto'})).toBe(Math.min(4, os.availableParallelism()))
    const byDefault = os.availableParallelism() >= 2 ? 1 : 0
    expect(poolSize({HOLYSHIP_WORKERS: 'lots'})).toBe(byDefault)
    expect(poolSize({})).toBe(byDefault)
    // a restore has two workers where there are two cores to use, unless told otherwise
    expect(poolSize({}, 'restore')).toBe(os.availableParallelism() >= 2 ? 2 : 0)
    expect(poolSize({HOLYSHIP_WORKERS: '0'}, 'restore')).toBe(0)
    expect(poolSize({HOLYSHIP_WORKERS: '1'}, 'restore')).toBe(1)
  })

  /** `plain` as one chunk compressed in a pool's worker: its stored form (a blob kept as it is: encoding byte and its bytes) */
  const asOneChunk = async (p: BlobPool, plain: Buffer, k?: MasterKey): Promise<{id: string; stored: Buffer}> => {
    const id = k ? k.blobId(plain) : sha256(plain)
    const memory = owned(Buffer.from(plain)).buffer as ArrayBuffer
    const r = await p.compress([memory], [[0, 0, plain.length, id]], 3)
    expect(r.stored).toHaveLength(1)
    // the memory comes back whole, its bytes untouched
    expect(Buffer.from(r.memories[0]).equals(plain)).toBe(true)
    return {id, stored: r.stored[0] ?? Buffer.concat([Buffer.from([0]), plain])}
  }

  it('compresses and decodes exactly as the main thread does', async () => {
    for (const plain of [text(3 * MiB), randomBytes(700_000), Buffer.alloc(MiB)]) {
      const id = sha256(plain)
      const c = await asOneChunk(pool, plain)
      expect(c.id).toBe(id)
      // the same encoding the main thread chooses, and it decodes back on either side
      expect(c.stored[0]).toBe(encodeBlob(plain, id, 3)[0])
      expect(decodeBlob(c.stored, id, plain.length, 'test').equals(plain)).toBe(true)
      const back = await pool.decode(Buffer.from(c.stored), id, plain.length, 'test')
      expect(back.equals(plain)).toBe(true)
    }
  })

  it('compress(): the chunks asked for, out of one memory, checked by decoding; plain ones come back as null; the backlog drains', async () => {
    const data = Buffer.concat([text(300_000, 4), randomBytes(200_000), Buffer.alloc(100_000)])
    const mem = owned(Buffer.from(data))
    const cuts: [number, number][] = [
      [1000, 299_000],
      [300_000, 200_000],
      [500_000, 100_000],
    ]
    const ids = cuts.map(([at, n]) => sha256(data.subarray(at, at + n)))
    const job = pool.compress([mem.buffer as ArrayBuffer], cuts.map(([at, n], i) => [0, at, n, ids[i]]), 3)
    // handed over: this thread's view of it is empty now
    expect(mem.length).toBe(0)
    expect(pool.queued).toBeLessThanOrEqual(600_000)
    const r = await job
    expect(pool.queued).toBe(0)
    expect(decodeBlob(r.stored[0]!, ids[0], 299_000, 'test').equals(data.subarray(1000, 300_000))).toBe(true)
    // random bytes do not compress: stored as they are, from the memory that came back
    expect(r.stored[1]).toBeNull()
    expect(Buffer.from(r.memories[0], 300_000, 200_000).equals(data.subarray(300_000, 500_000))).toBe(true)
    expect(decodeBlob(r.stored[2]!, ids[2], 100_000, 'test').equals(Buffer.alloc(100_000))).toBe(true)
    // a chunk outside the memory it came with is refused, not compressed short
    const small = owned(Buffer.from(text(70_000)))
    await expect(pool.compress([small.buffer as ArrayBuffer], [[0, 10, 70_000, sha256(Buffer.alloc(1))]], 3)).rejects.toThrow(/not in the memory/)
    expect(pool.queued).toBe(0)
  })

  it('a file written in pieces is cut as if it came whole, across piece boundaries', async () => {
    const dir = path.join(os.tmpdir(), `holyship-pieces-${process.pid}`)
    await fsp.mkdir(dir, {recursive: true})
    try {
      const repo = await withEnv('HOLYSHIP_WORKERS', '2', () => Repository.init(new LocalBackend(dir), {packSize: MiB}))
      const params = repo.config.chunker
      const data = Buffer.concat([text(MiB + 12_345, 3), Buffer.alloc(3 * MiB), randomBytes(5 * MiB + 700_001), text(2 * MiB, 5)])
      const whole = new Chunker(params)
      const expected = whole.push(Buffer.from(data))
      const tail = whole.finish()
      if (tail) expected.push(tail)
      const writer = await withEnv('HOLYSHIP_WORKERS', '2', async () => repo.contentWriter())
      const pieces = [0, 100_000, 1_500_000, 1_500_001, 4_000_000, 6_500_000, 9_000_000, data.length]
      const calls = []
      for (let i = 0; i + 1 < pieces.length; i++) {
        // not given away: the writer copies, the caller's buffer stays whole
        calls.push(writer(data.subarray(pieces[i], pieces[i + 1]), false, i + 2 === pieces.length))
      }
      const got = (await Promise.all(calls)).flat()
      expect(got.map((c) => c.id)).toEqual(expected.map((c) => sha256(c)))
      await repo.flush()
      // every chunk was stored once and reads back as the bytes it names
      for (const c of expected) expect((await repo.loadBlob(sha256(c))).equals(c)).toBe(true)
      expect(data.length).toBe(pieces.at(-1))
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('in an encrypted repository: HMAC ids and sealed blobs that only the key opens', async () => {
    const plain = text(MiB)
    const c = await asOneChunk(keyed, plain, key)
    expect(c.id).toBe(key.blobId(plain))
    expect(c.id).not.toBe(sha256(plain))
    expect(c.stored[0] & 0x80).toBe(0x80)
    expect(decodeBlob(c.stored, c.id, plain.length, 'test', key).equals(plain)).toBe(true)
    expect(() => decodeBlob(c.stored, c.id, plain.length, 'test', MasterKey.generate())).toThrow(/authentication failed/)
    expect((await keyed.decode(Buffer.from(c.stored), c.id, plain.length, 'test')).equals(plain)).toBe(true)
  })

  it('a damaged blob is a CorruptBlobError from the worker too', async () => {
    const plain = text(MiB)
    const id = sha256(plain)
    const stored = encodeBlob(plain, id, 3)
    stored[stored.length >> 1] ^= 0xff
    await expect(pool.decode(stored, id, plain.length, 'data/xx')).rejects.toMatchObject({name: 'CorruptBlobError', where: 'data/xx'})
  })

  it('write(): decodes and checks in the worker and writes at the offset; zeros, damage and a failed write are told apart', async () => {
    const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'hs-pool-write-')), 'out')
    const fh = await fsp.open(file, 'w+')
    try {
      const plain = text(MiB + 17)
      const id = sha256(plain)
      const stored = encodeBlob(plain, id, 3)
      // at an offset, leaving a hole before it; the stored bytes are handed over (transferred)
      expect(await pool.write(owned(Buffer.from(stored)), id, plain.length, 'data/aa', fh.fd, 4096)).toEqual({zero: false})
      const zeros = Buffer.alloc(300_000)
      const zid = sha256(zeros)
      // a blob of zeros is not written: the file does not grow
      expect(await pool.write(encodeBlob(zeros, zid, 3), zid, zeros.length, 'data/aa', fh.fd, 4096 + plain.length)).toEqual({zero: true})
      const back = await fsp.readFile(file)
      expect(back.length).toBe(4096 + plain.length)
      expect(back.subarray(4096).equals(plain)).toBe(true)
      expect(back.subarray(0, 4096).equals(Buffer.alloc(4096))).toBe(true)
      // damage: nothing is written
      const bad = Buffer.from(stored)
      bad[bad.length >> 1] ^= 0xff
      await expect(pool.write(bad, id, plain.length, 'data/aa', fh.fd, 8 * MiB)).rejects.toMatchObject({name: 'CorruptBlobError', where: 'data/aa'})
      expect((await fsp.stat(file)).size).toBe(4096 + plain.length)
      // a write that fails keeps its errno code (the restore maps ENOSPC, EACCES... by it)
      const ro = await fsp.open(file, 'r')
      try {
        await expect(pool.write(Buffer.from(stored), id, plain.length, 'data/aa', ro.fd, 0)).rejects.toMatchObject({code: 'EBADF', syscall: 'write'})
      } finally {
        await ro.close()
      }
    } finally {
      await fh.close()
      rmSync(path.dirname(file), {recursive: true, force: true})
    }
  })

  it('file(): creates a file whole from blobs in a pack (holes, size, owner, mode, times); damage, a short pack and an existing file leave nothing of it', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'hs-pool-file-'))
    try {
      const parts = [text(100_000, 1), Buffer.alloc(200_000), text(3000, 2), randomBytes(70_000)]
      const stored = parts.map((p) => encodeBlob(p, sha256(p), 3))
      const packFile = path.join(dir, 'pack')
      await fsp.writeFile(packFile, Buffer.concat(stored))
      const pack = await fsp.open(packFile, 'r')
      const offsets = stored.map((_, i) => stored.slice(0, i).reduce((n, b) => n + b.length, 0))
      const blobs = parts.map((p, i) => ({id: sha256(p), raw: p.length, where: 'data/pp', fd: pack.fd, offset: offsets[i], length: stored[i].length}))
      const size = parts.reduce((n, p) => n + p.length, 0)
      // a file of zeros after the data: its last blob is a hole, the size set all the same
      const tail = Buffer.alloc(50_000)
      const tailBlob = {...blobs[1], id: sha256(tail), raw: tail.length}
      await fsp.appendFile(packFile, encodeBlob(tail, tailBlob.id, 3))
      tailBlob.offset = stored.reduce((n, b) => n + b.length, 0)
      tailBlob.length = encodeBlob(tail, tailBlob.id, 3).length
      try {
        const out = path.join(dir, 'out')
        const mtime = 1_600_000_123.5
        await pool.file({path: out, size: size + tail.length, mode: 0o4751, owner: [1234, 5678], mtime, blobs: [...blobs, tailBlob]})
        const st = await fsp.stat(out)
        expect((await fsp.readFile(out)).equals(Buffer.concat([...parts, tail]))).toBe(true)
        expect(st.size).toBe(size + tail.length)
        // mode after owner: chown would have cleared the setuid bit
        expect([st.mode & 0o7777, st.uid, st.gid]).toEqual([0o4751, 1234, 5678])
        expect(st.mtimeMs).toBe(mtime * 1000)
        // the blobs of zeros took no blocks (the data around them: ~173 KB)
        expect(st.blocks * 512).toBeLessThan(200_000)

        // damage in the third blob: CorruptBlobError naming it, and the file is gone
        const bad = path.join(dir, 'bad')
        const flipped = path.join(dir, 'flipped')
        const copy = Buffer.from(await fsp.readFile(packFile))
        copy[offsets[2] + (stored[2].length >> 1)] ^= 0xff
        await fsp.writeFile(flipped, copy)
        const fl = await fsp.open(flipped, 'r')
        try {
          const e = await pool.file({path: bad, size, mode: 0o644, mtime, blobs: blobs.map((b) => ({...b, fd: fl.fd}))}).catch((x: unknown) => x)
          expect(e).toMatchObject({name: 'CorruptBlobError', blobId: blobs[2].id, where: 'data/pp', blob: 2})
        } finally {
          await fl.close()
        }
        await expect(fsp.lstat(bad)).rejects.toMatchObject({code: 'ENOENT'})
        // a pack shorter than the index says: a short read naming the blob, the file gone
        const cut = path.join(dir, 'cut')
        await fsp.writeFile(cut, copy.subarray(0, offsets[3] + 10))
        const ct = await fsp.open(cut, 'r')
        try {
          const e = await pool.file({path: bad, size, mode: 0o644, mtime, blobs: blobs.map((b) => ({...b, fd: ct.fd})).filter((_, i) => i !== 2)}).catch((x: unknown) => x)
          expect(e).toMatchObject({message: /short read/, blob: 2})
        } finally {
          await ct.close()
        }
        await expect(fsp.lstat(bad)).rejects.toMatchObject({code: 'ENOENT'})
        // a name that exists is never written through, nor removed
        await expect(pool.file({path: out, size, mode: 0o644, mtime, blobs})).rejects.toMatchObject({code: 'EEXIST', syscall: 'open'})
        expect((await fsp.readFile(out)).equals(Buffer.concat([...parts, tail]))).toBe(true)
      } finally {
        await pack.close()
      }
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('owned() copies only what does not own its memory', () => {
    const whole = Buffer.allocUnsafeSlow(100)
    expect(owned(whole)).toBe(whole)
    const view = whole.subarray(10, 20)
    const copy = owned(view)
    expect(copy).not.toBe(view)
    expect(copy.equals(view)).toBe(true)
  })

  it('a worker that dies fails what it had and the pool after it, instead of hanging', async () => {
    const p = new BlobPool(1)
    const compress = (plain: Buffer): Promise<unknown> => p.compress([owned(Buffer.from(plain)).buffer as ArrayBuffer], [[0, 0, plain.length, sha256(plain)]], 3)
    const inFlight = compress(text(4 * MiB))
    // terminate the worker behind the pool's back (a crash)
    await (p as unknown as {slots: {worker: {terminate(): Promise<number>}}[]}).slots[0].worker.terminate()
    await expect(inFlight).rejects.toThrow(/blob worker/)
    expect(p.failed).toBe(true)
    await expect(compress(Buffer.from('x'.repeat(100_000)))).rejects.toThrow(/blob worker/)
    await p.close()
  })
})

describe('pipelined snapshots', {timeout: 120_000}, () => {
  let work: string
  let src: string

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-pool-'))
    src = path.join(work, 'src')
    await fsp.mkdir(path.join(src, 'a/b'), {recursive: true})
    // big files (several chunks, read in pieces), middle ones (one read, cut in a worker),
    // small ones (main thread), duplicates inside and across files
    await fsp.writeFile(path.join(src, 'big-text'), text(9 * MiB, 2))
    await fsp.writeFile(path.join(src, 'big-random'), randomBytes(6 * MiB))
    await fsp.writeFile(path.join(src, 'zeros'), Buffer.alloc(10 * MiB))
    for (let i = 0; i < 40; i++) await fsp.writeFile(path.join(src, 'a', `mid-${i}`), text(100_000 + i * 20_000, i))
    for (let i = 0; i < 200; i++) await fsp.writeFile(path.join(src, 'a/b', `small-${i}`), `small ${i}\n`.repeat(i))
    await fsp.copyFile(path.join(src, 'a', 'mid-7'), path.join(src, 'a/b', 'copy-of-mid-7'))
  })
  afterAll(() => rmSync(work, {recursive: true, force: true}))
  afterEach(() => {
    delete process.env.HOLYSHIP_WORKERS
  })

  const snapshot = async (repo: Repository): Promise<{tree: string; newBytes: number}> => {
    const a = new Archiver(repo)
    await archiveDir(src, a, {racyMs: -1}) // the trees are compared (see RACY_MS)
    const tree = await a.finish()
    await repo.flush()
    return {tree, newBytes: a.stats.newBytes}
  }

  const digestOf = async (dir: string): Promise<string> => {
    const h = createHash('sha256')
    const walk = async (d: string): Promise<void> => {
      for (const name of (await fsp.readdir(d)).sort()) {
        const p = path.join(d, name)
        const st = await fsp.lstat(p)
        h.update(`${path.relative(dir, p)}\0${st.mode}\0`)
        if (st.isDirectory()) await walk(p)
        else h.update(await fsp.readFile(p))
      }
    }
    await walk(dir)
    return h.digest('hex')
  }

  it('with workers and without: the same trees, packs that verify, a byte-identical restore', async () => {
    const seed = 'cd'.repeat(16)
    const repos: Repository[] = []
    const trees: string[] = []
    for (const workers of ['2', '0', '1']) {
      const dir = path.join(work, `repo-${workers}`)
      await fsp.mkdir(dir)
      const repo = await withEnv('HOLYSHIP_WORKERS', workers, async () => {
        const r = await Repository.init(new LocalBackend(dir), {packSize: 2 * MiB})
        // one chunker seed for both, so equal data cuts equally
        ;(r.config.chunker as {seed: string}).seed = seed
        const {tree} = await snapshot(r)
        trees.push(tree)
        return r
      })
      repos.push(repo)
    }
    expect(trees[0]).toBe(trees[1])
    const reopened = await Repository.open(new LocalBackend(path.join(work, 'repo-2')))
    const ids = [...reopened.blobs()].map(([id]) => id).sort()
    expect(ids).toEqual([...repos[1].blobs()].map(([id]) => id).sort())
    // every blob decodes to its id (loadBlob verifies), through the pool
    for (const id of ids) await reopened.loadBlob(id)
    // restored by the workers (they decode, check and write) and without them
    for (const workers of ['2', '0']) {
      const target = path.join(work, `restored-${workers}`)
      await withEnv('HOLYSHIP_WORKERS', workers, async () => {
        const r = await Repository.open(new LocalBackend(path.join(work, 'repo-2')))
        expect(r.restoreWorkers()?.size).toBe(workers === '0' ? undefined : 2)
        await restoreToDir(r, trees[0], '', target)
      })
      expect(await digestOf(target)).toBe(await digestOf(src))
    }
  })

  it('a pack write that fails fails the snapshot (flush throws), and nothing is indexed', async () => {
    const dir = path.join(work, 'repo-fail')
    await fsp.mkdir(dir)
    const backend = new LocalBackend(dir)
    process.env.HOLYSHIP_WORKERS = '2'
    const repo = await Repository.init(backend, {packSize: MiB})
    let puts = 0
    const put = backend.put.bind(backend)
    backend.put = async (key: string, data: Buffer): Promise<void> => {
      if (key.startsWith('data/') && ++puts === 3) throw Object.assign(new Error('ENOSPC: no space left on device'), {code: 'ENOSPC'})
      return put(key, data)
    }
    const a = new Archiver(repo)
    const failed = await (async () => {
      await archiveDir(src, a)
      await a.finish()
      await repo.flush()
    })().then(
      () => undefined,
      (e: unknown) => e,
    )
    expect((failed as Error | undefined)?.message).toMatch(/ENOSPC/)
    repo.discardPending()
    expect(await fsp.readdir(path.join(dir, 'index')).catch(() => [])).toEqual([])
  })

  it('a pack whose buffer is free but whose write is not durable yet is never named by an index file; a late failure fails the flush', async () => {
    for (const failLate of [false, true]) {
      const dir = path.join(work, `repo-late-${failLate}`)
      await fsp.mkdir(dir)
      const backend = new LocalBackend(dir)
      const repo = await Repository.init(backend, {packSize: MiB})
      const put = backend.put.bind(backend)
      const events: string[] = []
      let packs = 0
      backend.put = async (key, data, opts) => {
        if (!key.startsWith('data/')) {
          events.push(`put ${key.split('/')[0]}`)
          return put(key, data, opts)
        }
        const n = ++packs
        // the bytes are handed over at once (the buffer is free), the write ends much later
        const copy = Buffer.from(data)
        opts?.released?.()
        await new Promise((resolve) => setTimeout(resolve, 150))
        if (failLate && n === 2) throw Object.assign(new Error('EIO: i/o error, fsync'), {code: 'EIO'})
        await put(key, copy)
        events.push(`durable pack ${n}`)
      }
      const a = new Archiver(repo)
      const done = (async () => {
        await archiveDir(src, a)
        await a.finish()
        await repo.flush()
      })().then(
        () => undefined,
        (e: unknown) => e as Error,
      )
      const failed = await done
      if (failLate) {
        expect(failed?.message).toMatch(/EIO/)
        repo.discardPending()
        expect(events.filter((e) => e === 'put index')).toEqual([])
        continue
      }
      expect(failed).toBeUndefined()
      expect(packs).toBeGreaterThan(3)
      // every pack durable before the one index file names them
      const index = events.indexOf('put index')
      expect(index).toBeGreaterThan(0)
      expect(events.slice(0, index).filter((e) => e.startsWith('durable')).length).toBe(packs)
      expect(await allBlobsReadBack(dir, repo)).toBe(true)
    }
  })

  /** every blob the reopened repository's index names reads back as what its id says */
  const allBlobsReadBack = async (dir: string, written: Repository): Promise<boolean> => {
    const reopened = await Repository.open(new LocalBackend(dir))
    const ids = [...reopened.blobs()].map(([id]) => id)
    expect(ids.sort()).toEqual([...written.blobs()].map(([id]) => id).sort())
    for (const id of ids) await reopened.loadBlob(id)
    return true
  }

  it('chunks of one memory split between a worker and this thread: each stored once, each reading back as its bytes, the caller\'s memory untouched; plain and encrypted', async () => {
    // sizes going down: the first goes to the worker, which then has more than each next one
    // (offloadBytes 0), so those are compressed here (from copies, when the memory is sent)
    const layouts = {
      text: [text(400_000, 21), randomBytes(300_000), text(200_000, 22), Buffer.alloc(100_000), text(20_000, 23)],
      // incompressible first: the worker hands it back as null, packed from the memory that came back
      random: [randomBytes(500_000), text(300_000, 24), randomBytes(200_000), text(90_000, 25)],
    }
    for (const encrypt of [false, true]) {
      for (const [name, layout] of Object.entries(layouts)) {
        for (const given of [true, false]) {
          const dir = path.join(work, `repo-split-${encrypt}-${name}-${given}`)
          await fsp.mkdir(dir)
          process.env.HOLYSHIP_WORKERS = '1'
          const repo = await Repository.init(new LocalBackend(dir), encrypt ? {packSize: MiB, encrypt, password: 'pw', kdf: FAST_TEST_SCRYPT} : {packSize: MiB})
          repo.offloadBytes = 0
          repo.poolStartBytes = 0
          // and a repeat of the first chunk, which is not stored again
          const parts = [...layout, Buffer.from(layout[0])]
          const memory = owned(Buffer.concat(parts))
          const original = Buffer.from(memory)
          const views: Buffer[] = []
          let at = 0
          for (const p of parts) {
            views.push(memory.subarray(at, at + p.length))
            at += p.length
          }
          const saveChunks = (repo as unknown as {saveChunks(c: Buffer[], caller?: ArrayBufferLike): Promise<{id: string; added: number}[]>}).saveChunks.bind(repo)
          const results = await saveChunks(views, given ? undefined : memory.buffer)
          await repo.flush()
          const where = `${name}, ${encrypt ? 'encrypted' : 'plain'}, ${given ? 'given' : 'kept'}`
          expect(results.map((r) => r.id), where).toEqual(parts.map((p) => (repo.masterKey ? repo.masterKey.blobId(p) : sha256(p))))
          expect(results.at(-1)!.added, where).toBe(0)
          expect(results.slice(0, -1).every((r) => r.added > 0), where).toBe(true)
          for (const [i, p] of parts.entries()) expect((await repo.loadBlob(results[i].id)).equals(p), where).toBe(true)
          // given away, the memory went to the worker; kept, it is the caller's as it was
          if (given) expect(memory.length, where).toBe(0)
          else expect(memory.equals(original), where).toBe(true)
          if (!encrypt) expect(await allBlobsReadBack(dir, repo)).toBe(true)
        }
      }
    }
  })

  it('the worker starts only after POOL_START_BYTES of new chunks worth a round trip, never for tiny ones', async () => {
    const dir = path.join(work, 'repo-start')
    await fsp.mkdir(dir)
    process.env.HOLYSHIP_WORKERS = '1'
    const repo = await Repository.init(new LocalBackend(dir), {packSize: MiB})
    const started = (): boolean => (repo as unknown as {pools: {store?: unknown}}).pools.store !== undefined
    // many tiny files: never
    for (let i = 0; i < 200; i++) await repo.saveContent(Buffer.from(`tiny ${i}\n`.repeat(100)), true)
    expect(started()).toBe(false)
    // a small image's worth: still compressed here
    await repo.saveContent(text(POOL_START_BYTES / 2, 31), true)
    expect(started()).toBe(false)
    // past the threshold: the worker takes over
    await repo.saveContent(text(POOL_START_BYTES, 32), true)
    expect(started()).toBe(true)
    await repo.flush()
    expect(await allBlobsReadBack(dir, repo)).toBe(true)
  })

  it('chunks of zeros: hashed once per length, stored once, in plain and encrypted repositories', async () => {
    for (const encrypt of [false, true]) {
      const dir = path.join(work, `repo-zeros-${encrypt}`)
      await fsp.mkdir(dir)
      const repo = await Repository.init(new LocalBackend(dir), encrypt ? {packSize: MiB, encrypt, password: 'pw', kdf: FAST_TEST_SCRYPT} : {packSize: MiB})
      const zeros = Buffer.alloc(300_000)
      const idOf = (b: Buffer): string => (repo.masterKey ? repo.masterKey.blobId(b) : sha256(b))
      const a = await repo.saveContent(Buffer.alloc(300_000), true)
      const b = await repo.saveContent(Buffer.alloc(300_000), true)
      // one byte off zero: not taken for zeros
      const almost = Buffer.alloc(300_000)
      almost[299_999] = 1
      const c = await repo.saveContent(Buffer.from(almost), true)
      await repo.flush()
      expect(a.map((r) => r.id)).toEqual([idOf(zeros)])
      expect(b).toEqual([{id: idOf(zeros), added: 0}])
      expect(c.map((r) => r.id)).toEqual([idOf(almost)])
      expect((await repo.loadBlob(idOf(zeros))).equals(zeros)).toBe(true)
      expect((await repo.loadBlob(idOf(almost))).equals(almost)).toBe(true)
    }
  })

  it('a file given as one stream piece that is not fresh is copied, not taken', async () => {
    const dir = path.join(work, 'repo-copy')
    await fsp.mkdir(dir)
    process.env.HOLYSHIP_WORKERS = '1'
    const repo = await Repository.init(new LocalBackend(dir), {packSize: MiB})
    const data = text(600_000, 9)
    const a = new Archiver(repo)
    await a.add({path: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: T0})
    await a.add({path: 'f', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: T0, content: Readable.from([data])})
    await a.finish()
    await repo.flush()
    // the caller's buffer is intact (a transfer would have emptied it)
    expect(data.length).toBe(600_000)
    expect(data.equals(text(600_000, 9))).toBe(true)
  })
})
