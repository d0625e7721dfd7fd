/**
 * Encrypted repositories (format 2): round trips, tamper detection on every kind of object,
 * wrong and missing passphrases, key management, nothing readable in the stored bytes, dedup,
 * and an encrypted repository shipped through a real S3 server (s3rver) to a fresh host.
 * scrypt runs with cheap parameters here (HOLYSHIP_TEST_FAST_KDF=1), except in one test that
 * checks the memory-hard default.
 */
import {createHmac, randomBytes, randomUUID} from 'node:crypto'
import {existsSync, promises as fsp} from 'node:fs'
import * as os from 'node:os'
import {join, relative} from 'node:path'
import {afterAll, beforeAll, beforeEach, describe, expect, it} from 'vitest'
import {Archiver} from '../../src/archive/archiver.js'
import {restoreToDir} from '../../src/archive/restorer.js'
import {LocalBackend} from '../../src/backend/local.js'
import {HolyshipError} from '../../src/errors.js'
import {AuthenticationError, MasterKey} from '../../src/repo/crypto.js'
import {SnapshotManifest, dataKey, indexKey, snapshotKey} from '../../src/repo/format.js'
import {DEFAULT_SCRYPT, FAST_TEST_SCRYPT, forgetSessionPassword, readKeyFiles, scryptParamsForNewKeys} from '../../src/repo/keys.js'
import {
  CorruptBlobError,
  CorruptObjectError,
  ENC_ENCRYPTED,
  PackBuilder,
  decodeBlob,
  encodeBlob,
  openJson,
  parsePackHeader,
  sealJson,
  sha256,
} from '../../src/repo/pack.js'
import {RepoLock} from '../../src/repo/lock.js'
import {pruneRepository} from '../../src/repo/prune.js'
import {Repository} from '../../src/repo/repository.js'
import {openContext} from '../../src/services/context.js'
import {initRepository} from '../../src/services/init.js'
import {keyAdd, keyList, keyPasswd, keyRemove} from '../../src/services/key.js'
import {pull, push, remoteAdd} from '../../src/services/remote.js'
import {verifyRepository} from '../../src/services/verify.js'
import {PackCheckError, verifyPack} from '../../src/transfer/common.js'
import {S3RVER_CREDENTIALS, S3Server, honourIfNoneMatch, s3rverObjectPath, startS3Server} from '../harness/s3.js'

const PW = 'correct horse battery staple'
const MARKERS = ['hunter2', 'SECRET_TOKEN', 'very-secret-name', 'CONTENT-MARKER-7f3a9']

let tmp: string
const savedEnv: Record<string, string | undefined> = {}
const ENV: Record<string, string | undefined> = {
  HOLYSHIP_TEST_FAST_KDF: '1',
  HOLYSHIP_PASSWORD: undefined,
  HOLYSHIP_PASSWORD_FILE: undefined,
  HOLYSHIP_NEW_PASSWORD: undefined,
}
const setEnv = (env: Record<string, string | undefined>): void => {
  for (const [k, v] of Object.entries(env)) {
    if (!(k in savedEnv)) savedEnv[k] = process.env[k]
    if (v === undefined) delete process.env[k]
    else process.env[k] = v
  }
}

beforeAll(async () => {
  tmp = await fsp.mkdtemp(join(os.tmpdir(), 'holyship-crypto-'))
})
beforeEach(() => {
  setEnv(ENV)
  forgetSessionPassword()
})
afterAll(async () => {
  if (tmp) await fsp.rm(tmp, {recursive: true, force: true})
  for (const [k, v] of Object.entries(savedEnv)) {
    if (v === undefined) delete process.env[k]
    else process.env[k] = v
  }
})

// ------------------------------------------------------------------------------ fixtures

const newDir = (name: string): string => join(tmp, `${name}-${randomUUID().slice(0, 8)}`)

async function encryptedRepo(dir = newDir('enc'), opts: {packSize?: number; password?: string} = {}): Promise<Repository> {
  await fsp.mkdir(dir, {recursive: true})
  return Repository.init(new LocalBackend(dir), {encrypt: true, password: opts.password ?? PW, kdf: FAST_TEST_SCRYPT, packSize: opts.packSize ?? 64 * 1024})
}

/** text that compresses, with the content marker in it */
function secretText(size: number): Buffer {
  const line = 'CONTENT-MARKER-7f3a9 the launch codes are 0000 and hunter2 is the password\n'
  return Buffer.from(line.repeat(Math.ceil(size / line.length)).slice(0, size))
}

const FILES = (): Record<string, Buffer> => ({
  'very-secret-name.txt': secretText(300 * 1024),
  'sub/random.bin': randomBytes(200 * 1024),
  'sub/small.txt': Buffer.from('CONTENT-MARKER-7f3a9 small'),
})

/** a container-like snapshot: env with a secret in the manifest, one volume with the files */
async function snapshotOf(repo: Repository, files: Record<string, Buffer>): Promise<{id: string; tree: string; manifest: SnapshotManifest}> {
  const a = new Archiver(repo)
  const mtime: [number, number] = [1_700_000_000, 0]
  await a.add({path: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime})
  for (const [path, data] of Object.entries(files)) {
    await a.add({path, type: 'file', mode: 0o600, uid: 1000, gid: 1000, mtime, size: data.length, content: (async function* () { yield data })()})
  }
  const tree = await a.finish()
  const image = new Archiver(repo)
  await image.add({path: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime})
  await image.add({path: 'image.tar', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime, size: 10, content: (async function* () { yield Buffer.from('not an image') })()})
  const imageTree = await image.finish()
  const manifest: SnapshotManifest = {
    version: 1,
    kind: 'container',
    time: new Date().toISOString(),
    host: 'test-host',
    tags: [],
    consistency: 'stop',
    reader: 'api',
    container: {
      id: 'c'.repeat(64),
      name: 'app',
      config: {Env: ['PATH=/usr/bin', 'SECRET_TOKEN=hunter2'], Image: 'app:1'},
      hostConfig: {},
      networks: [],
      image: {id: 'sha256:' + 'd'.repeat(64), repoTags: ['app:1'], tree: imageTree, size: 10},
      state: {running: false, paused: false},
    },
    mounts: [{type: 'volume', source: 'appdata', destination: '/data', readOnly: false, tree, stats: a.stats}],
    stats: {bytes: a.stats.bytes, newBytes: a.stats.newBytes, files: a.stats.files, durationMs: 1},
  }
  const id = await repo.saveSnapshot(manifest)
  return {id, tree, manifest}
}

/** every regular file under dir: relative path → bytes */
async function allFiles(dir: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>()
  const walk = async (d: string): Promise<void> => {
    for (const e of await fsp.readdir(d, {withFileTypes: true})) {
      const p = join(d, e.name)
      if (e.isDirectory()) await walk(p)
      else if (e.isFile()) out.set(relative(dir, p), await fsp.readFile(p))
    }
  }
  await walk(dir)
  return out
}

/** a fingerprint of a directory: names, sizes, contents */
async function fingerprint(dir: string): Promise<string> {
  const files = await allFiles(dir)
  return [...files.entries()]
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([p, b]) => `${p}:${b.length}:${sha256(b)}`)
    .join('\n')
}

/** markers (and the plain SHA-256 of the secret file) found anywhere in these bytes or names */
function leaks(files: Map<string, Buffer>, extra: string[] = []): string[] {
  const found: string[] = []
  for (const [name, bytes] of files) {
    for (const m of [...MARKERS, ...extra]) {
      if (name.includes(m) || bytes.includes(Buffer.from(m))) found.push(`${m} in ${name}`)
    }
  }
  return found
}

async function expectRestored(repo: Repository, tree: string, files: Record<string, Buffer>): Promise<void> {
  const out = newDir('out')
  const r = await restoreToDir(repo, tree, '', out)
  expect(r.files).toBe(Object.keys(files).length)
  for (const [p, data] of Object.entries(files)) expect((await fsp.readFile(join(out, p))).equals(data), p).toBe(true)
}

async function flipByte(file: string, at: number): Promise<void> {
  const b = await fsp.readFile(file)
  b[at] ^= 0x01
  await fsp.writeFile(file, b)
}

// ------------------------------------------------------------------------------ primitives

describe('sealing primitives', () => {
  it('round-trips blobs, pack headers and JSON objects; a plain repository is unchanged', () => {
    const key = MasterKey.generate()
    const text = secretText(10_000)
    const random = randomBytes(5000)
    for (const plain of [text, random, Buffer.alloc(0), Buffer.from('x')]) {
      const id = key.blobId(plain)
      expect(id).toBe(createHmac('sha256', key.toBytes().subarray(32)).update(plain).digest('hex'))
      expect(id).not.toBe(sha256(plain))
      const stored = encodeBlob(plain, id, 3, key)
      expect(stored[0] & ENC_ENCRYPTED).toBe(ENC_ENCRYPTED)
      expect(stored.includes(Buffer.from('CONTENT-MARKER'))).toBe(false)
      expect(decodeBlob(stored, id, plain.length, 'p', key).equals(plain)).toBe(true)
      // the plain form, and each refused by the other mode
      const plainStored = encodeBlob(plain, sha256(plain), 3)
      expect(plainStored[0] & ENC_ENCRYPTED).toBe(0)
      expect(() => decodeBlob(stored, id, plain.length, 'p')).toThrow(/encrypted, but the repository is not/)
      expect(() => decodeBlob(plainStored, sha256(plain), plain.length, 'p', key)).toThrow(/not encrypted, but the repository is/)
    }
    // text compresses before it is sealed
    expect(encodeBlob(text, key.blobId(text), 3, key).length).toBeLessThan(text.length / 4)

    const pb = new PackBuilder(key)
    pb.add(key.blobId(text), 'data', encodeBlob(text, key.blobId(text), 3, key), text.length)
    pb.add(key.blobId(random), 'tree', encodeBlob(random, key.blobId(random), 3, key), random.length)
    const {id, data, blobs} = pb.finish()
    expect(id).toBe(sha256(data))
    expect(parsePackHeader(data, 'p', key)).toEqual(blobs)
    expect(() => parsePackHeader(data, 'p')).toThrow(/encrypted, but the repository is not/)
    expect(() => parsePackHeader(data, 'p', MasterKey.generate())).toThrow(/authentication failed/)
    expect(verifyPack(Buffer.from(data), id, 'p', undefined, key)).toEqual(blobs)

    const value = {version: 1, packs: [{id: 'a'.repeat(64), size: 1, blobs: []}], note: 'hunter2'.repeat(100)}
    const sealed = sealJson('index', value, key)
    expect(sealed.includes(Buffer.from('hunter2'))).toBe(false)
    expect(openJson('index', sealed, 'i', key)).toEqual(value)
    // a sealed index is not a manifest, and another key opens nothing
    expect(() => openJson('snapshot', sealed, 's', key)).toThrow(/authentication failed/)
    expect(() => openJson('index', sealed, 'i', MasterKey.generate())).toThrow(CorruptObjectError)
    expect(() => openJson('index', sealed, 'i')).toThrow(/encrypted, but the repository is not/)
    expect(sealJson('index', value).equals(Buffer.from(JSON.stringify(value)))).toBe(true)
    expect(() => openJson('index', Buffer.from(JSON.stringify(value)), 'i', key)).toThrow(/not encrypted, but the repository is/)

    // the key material stays out of logs and JSON
    expect(JSON.stringify({key})).not.toMatch(/[0-9a-f]{32}/)
    expect(key.seal(0x80, 'blob', Buffer.from('a')).length).toBe(1 + 28)
    expect(() => key.open(0x80, 'blob', Buffer.alloc(10))).toThrow(AuthenticationError)
  })

  it('detects a change to any byte of a sealed blob, pack header or JSON object', () => {
    const key = MasterKey.generate()
    const plain = secretText(3000)
    const id = key.blobId(plain)
    const stored = encodeBlob(plain, id, 3, key)
    for (let i = 0; i < stored.length; i++) {
      const t = Buffer.from(stored)
      t[i] ^= 0x01
      expect(() => decodeBlob(t, id, plain.length, 'data/ab/pack', key), `blob byte ${i}`).toThrow(CorruptBlobError)
    }
    const pb = new PackBuilder(key)
    pb.add(id, 'data', stored, plain.length)
    const pack = Buffer.from(pb.finish().data)
    const headerLen = pack.readUInt32LE(pack.length - 12)
    for (let i = pack.length - 12 - headerLen; i < pack.length; i++) {
      const t = Buffer.from(pack)
      t[i] ^= 0x01
      expect(() => parsePackHeader(t, 'p', key), `header byte ${i}`).toThrow()
      // the transfer check: by name first, then (renamed to match) by authentication
      expect(() => verifyPack(t, sha256(pack), 'p', undefined, key)).toThrow(/does not match its name/)
      expect(() => verifyPack(t, sha256(t), 'p', undefined, key)).toThrow(PackCheckError)
    }
    for (const kind of ['index', 'snapshot'] as const) {
      const sealed = sealJson(kind, {version: 1, packs: [], text: 'x'.repeat(300)}, key)
      for (let i = 0; i < sealed.length; i++) {
        const t = Buffer.from(sealed)
        t[i] ^= 0x01
        expect(() => openJson(kind, t, kind, key), `${kind} byte ${i}`).toThrow(CorruptObjectError)
      }
    }
  })
})

// ------------------------------------------------------------------------------ repositories

describe('an encrypted repository', () => {
  it('stores nothing readable: no env value, file name, content, plain chunk hash or chunker seed', async () => {
    const dir = newDir('grep')
    const repo = await encryptedRepo(dir)
    const files = FILES()
    const s = await snapshotOf(repo, files)
    const stored = await allFiles(dir)
    expect([...stored.keys()].some((k) => k.startsWith('keys/'))).toBe(true)
    expect(leaks(stored, Object.values(files).map((b) => sha256(b)))).toEqual([])
    const config = JSON.parse(stored.get('config')!.toString('utf8'))
    expect(config).toMatchObject({version: 2, encryption: {algorithm: 'aes-256-gcm', kdf: 'scrypt'}})
    expect(config.chunker.seed).toBeUndefined()
    for (const bytes of stored.values()) expect(bytes.includes(Buffer.from(repo.config.chunker.seed))).toBe(false)

    // and it all reads back, with the passphrase
    const again = await Repository.open(new LocalBackend(dir), {password: PW})
    expect(again.config.chunker.seed).toBe(repo.config.chunker.seed)
    expect(await again.loadSnapshot(s.id)).toEqual(s.manifest)
    await expectRestored(again, s.tree, files)
    const v = await verifyRepository(again, {readData: true})
    expect(v.problems).toEqual([])

    // the same in a plain repository shows the manifest (the check above is not vacuous)
    const plainDir = newDir('plain')
    await fsp.mkdir(plainDir)
    const plain = await Repository.init(new LocalBackend(plainDir), {packSize: 64 * 1024})
    expect(plain.config).toMatchObject({version: 1, encryption: null})
    await snapshotOf(plain, files)
    expect(leaks(await allFiles(plainDir))).toContain(`hunter2 in ${snapshotKey((await plain.listSnapshotIds())[0])}`)
  })

  it('deduplicates: the same data twice adds nothing; ids are keyed, and a second key makes other ids', async () => {
    const dir = newDir('dedup')
    const repo = await encryptedRepo(dir)
    const files = FILES()
    await snapshotOf(repo, files)
    const before = await fingerprint(join(dir, 'data'))
    const s2 = await snapshotOf(repo, files)
    expect(s2.manifest.stats.newBytes).toBe(0)
    expect(await fingerprint(join(dir, 'data'))).toBe(before)
    const content = files['sub/random.bin']
    expect(repo.hasBlob(repo.blobId(content))).toBe(true)
    expect(repo.hasBlob(sha256(content))).toBe(false)
    const other = await encryptedRepo()
    expect(other.blobId(content)).not.toBe(repo.blobId(content))
    expect(other.config.chunker.seed).not.toBe(repo.config.chunker.seed)
  })

  it('reports a modified blob, pack header, index file or manifest as REPO_DAMAGED naming it', async () => {
    const dir = newDir('tamper')
    const repo = await encryptedRepo(dir)
    const files = FILES()
    const s = await snapshotOf(repo, files)
    const b = new LocalBackend(dir)

    // a blob inside a pack: its tag fails when it is read
    const chunk = repo.blobId(files['sub/random.bin'])
    const loc = repo.blobLocation(chunk)!
    await flipByte(join(dir, dataKey(loc.pack)), loc.offset + Math.floor(loc.length / 2))
    const fresh = await Repository.open(b, {password: PW})
    const err = await fresh.loadBlob(chunk).catch((e) => e)
    expect(err).toBeInstanceOf(HolyshipError)
    expect(err).toMatchObject({code: 'REPO_DAMAGED'})
    expect(err.message).toContain(dataKey(loc.pack))
    expect(err.message).toMatch(/authentication failed/)
    const v = await verifyRepository(fresh, {readData: true})
    expect(v.problems.map((p) => p.object)).toContain(dataKey(loc.pack))

    // an index file, modified and renamed to its new hash (so the name check passes)
    const idxId = (await b.list('index/'))[0].key.slice('index/'.length)
    const idx = await b.get(indexKey(idxId))
    idx[idx.length - 20] ^= 0x01
    await b.delete(indexKey(idxId))
    await b.put(indexKey(sha256(idx)), idx)
    const e2 = await Repository.open(b, {password: PW}).catch((e) => e)
    expect(e2).toMatchObject({code: 'REPO_DAMAGED'})
    expect(e2.message).toContain(indexKey(sha256(idx)))
    expect(e2.message).toMatch(/authentication failed/)
    // only modified: the name check
    await b.delete(indexKey(sha256(idx)))
    idx[idx.length - 20] ^= 0x01
    idx[5] ^= 0x01
    await b.put(indexKey(idxId), idx)
    await expect(Repository.open(b, {password: PW})).rejects.toMatchObject({code: 'REPO_DAMAGED', message: expect.stringContaining(indexKey(idxId))})
    idx[5] ^= 0x01
    await b.put(indexKey(idxId), idx)

    // a manifest, modified and renamed
    const m = await b.get(snapshotKey(s.id))
    m[40] ^= 0x01
    await b.delete(snapshotKey(s.id))
    await b.put(snapshotKey(sha256(m)), m)
    const e3 = await (await Repository.open(b, {password: PW})).loadSnapshot(sha256(m)).catch((e) => e)
    expect(e3).toMatchObject({code: 'REPO_DAMAGED'})
    expect(e3.message).toContain(snapshotKey(sha256(m)))
    expect(e3.message).toMatch(/authentication failed/)

    // a pack header: verify --read-data names the pack (its hash no longer matches either)
    const other = [...new Set([...fresh.blobs()].map(([, l]) => l.pack))].find((p) => p !== loc.pack)!
    const packFile = join(dir, dataKey(other))
    const pack = await fsp.readFile(packFile)
    await flipByte(packFile, pack.length - 12 - 5)
    const v2 = await verifyRepository(await Repository.open(b, {password: PW}), {readData: true})
    expect(v2.problems.map((p) => p.object)).toContain(dataKey(other))
  })

  it('refuses a wrong passphrase (WRONG_PASSWORD) and a missing one, writing nothing', async () => {
    const dir = newDir('wrong')
    const repo = await encryptedRepo(dir)
    await snapshotOf(repo, {'a.txt': Buffer.from('hello')})
    const before = await fingerprint(dir)
    const err = await Repository.open(new LocalBackend(dir), {password: 'not it'}).catch((e) => e)
    expect(err).toBeInstanceOf(HolyshipError)
    expect(err).toMatchObject({code: 'WRONG_PASSWORD', exitCode: 16})
    expect(err.message).toBe(`wrong passphrase for the repository at ${dir}`)
    expect(err.message).not.toContain('not it')

    // through the services, with the passphrase from the environment or a file
    const catalogue = join(newDir('cat'), 'catalogue.sqlite3')
    setEnv({HOLYSHIP_PASSWORD: 'not it'})
    await expect(openContext({repo: dir, catalogue})).rejects.toMatchObject({code: 'WRONG_PASSWORD'})
    await expect(keyAdd({repo: dir, newPassword: 'another'})).rejects.toMatchObject({code: 'WRONG_PASSWORD'})
    expect(existsSync(catalogue)).toBe(false)
    setEnv({HOLYSHIP_PASSWORD: undefined})
    // no passphrase and no terminal (vitest's stdin is not a TTY)
    await expect(Repository.open(new LocalBackend(dir))).rejects.toMatchObject({code: 'USAGE', message: expect.stringMatching(/encrypted and no passphrase was given/)})
    const pwFile = join(newDir('pw'), 'pw')
    await fsp.mkdir(join(pwFile, '..'), {recursive: true})
    await fsp.writeFile(pwFile, 'nope\n')
    setEnv({HOLYSHIP_PASSWORD_FILE: pwFile})
    await expect(Repository.open(new LocalBackend(dir))).rejects.toMatchObject({code: 'WRONG_PASSWORD'})
    await fsp.writeFile(pwFile, `${PW}\n`)
    const ctx = await openContext({repo: dir, catalogue})
    expect(ctx.repo.encrypted).toBe(true)
    ctx.close()
    setEnv({HOLYSHIP_PASSWORD_FILE: undefined})
    await fsp.rm(catalogue, {force: true})
    expect(await fingerprint(dir)).toBe(before)

    // init --encrypt without a passphrase creates nothing
    const none = newDir('none')
    await expect(initRepository({repo: none, catalogue, encrypt: true})).rejects.toMatchObject({code: 'USAGE'})
    expect(existsSync(none)).toBe(false)
  })

  it('uses memory-hard scrypt parameters unless the fast test KDF is asked for', async () => {
    expect(scryptParamsForNewKeys({})).toEqual(DEFAULT_SCRYPT)
    expect(128 * DEFAULT_SCRYPT.N * DEFAULT_SCRYPT.r).toBeGreaterThanOrEqual(128 * 1024 * 1024)
    expect(scryptParamsForNewKeys({HOLYSHIP_TEST_FAST_KDF: '1'})).toEqual(FAST_TEST_SCRYPT)
    setEnv({HOLYSHIP_TEST_FAST_KDF: undefined})
    const dir = newDir('default-kdf')
    const r = await initRepository({repo: dir, catalogue: join(dir + '-cat', 'c.sqlite3'), encrypt: true, password: PW})
    expect(r).toMatchObject({encrypted: true})
    const {keys} = await readKeyFiles(new LocalBackend(dir))
    expect(keys.map((k) => k.file.kdf)).toEqual([expect.objectContaining({algorithm: 'scrypt', N: 2 ** 17, r: 8, p: 1})])
    expect(Buffer.from(keys[0].file.kdf.salt, 'base64').length).toBe(32)
    expect((await Repository.open(new LocalBackend(dir), {password: PW})).encrypted).toBe(true)
  }, 30_000)
})

describe('key management', () => {
  it('adds, lists, changes and removes passphrases without re-encrypting data; never the last one', async () => {
    const dir = newDir('keys')
    const repo = await encryptedRepo(dir)
    const files = {'f.txt': secretText(5000)}
    const s = await snapshotOf(repo, files)
    const data = await fingerprint(join(dir, 'data'))
    const first = repo.keyId!

    let l = await keyList({repo: dir, password: PW})
    expect(l.keys.map((k) => [k.id, k.current])).toEqual([[first, true]])
    expect(l.keys[0]).toMatchObject({host: os.hostname(), kdf: {algorithm: 'scrypt', N: FAST_TEST_SCRYPT.N}})
    expect(JSON.stringify(l)).not.toContain(PW)

    const added = await keyAdd({repo: dir, password: PW, newPassword: 'second one'})
    l = await keyList({repo: dir, password: 'second one'})
    expect(l.keys.map((k) => k.current).sort()).toEqual([false, true])
    expect(l.keys.find((k) => k.current)!.id).toBe(added.id)

    // not the key the passphrase opened; not an unknown one
    await expect(keyRemove({repo: dir, password: PW, id: first})).rejects.toMatchObject({code: 'USAGE', message: expect.stringMatching(/the given passphrase opens/)})
    await expect(keyRemove({repo: dir, password: PW, id: 'abcdef0'})).rejects.toMatchObject({code: 'USAGE'})
    // remove the first with the second
    expect(await keyRemove({repo: dir, password: 'second one', id: first.slice(0, 8)})).toMatchObject({removed: first})
    await expect(Repository.open(new LocalBackend(dir), {password: PW})).rejects.toMatchObject({code: 'WRONG_PASSWORD'})
    // the last key stays
    await expect(keyRemove({repo: dir, password: 'second one', id: added.id})).rejects.toMatchObject({code: 'USAGE', message: expect.stringMatching(/only key/)})

    // passwd: new key file in, old one out
    setEnv({HOLYSHIP_NEW_PASSWORD: 'third one'})
    const p = await keyPasswd({repo: dir, password: 'second one'})
    expect(p.removed).toBe(added.id)
    await expect(Repository.open(new LocalBackend(dir), {password: 'second one'})).rejects.toMatchObject({code: 'WRONG_PASSWORD'})
    const reopened = await Repository.open(new LocalBackend(dir), {password: 'third one'})
    expect(reopened.keyId).toBe(p.added)
    expect((await keyList({repo: dir, password: 'third one'})).keys.map((k) => k.id)).toEqual([p.added])
    // the data did not change, and still reads
    expect(await fingerprint(join(dir, 'data'))).toBe(data)
    await expectRestored(reopened, s.tree, files)

    // a plain repository has no keys
    const plainDir = newDir('plain-keys')
    await fsp.mkdir(plainDir)
    await Repository.init(new LocalBackend(plainDir))
    await expect(keyList({repo: plainDir})).rejects.toMatchObject({code: 'USAGE', message: expect.stringMatching(/not encrypted/)})
  })
})

describe('prune of an encrypted repository', () => {
  it('repacks into sealed packs and index files; what remains restores and verifies', async () => {
    const dir = newDir('prune')
    const repo = await encryptedRepo(dir, {packSize: 100 * 1024})
    const keep: Record<string, Buffer> = {}
    const drop: Record<string, Buffer> = {}
    for (let i = 0; i < 10; i++) (i % 2 ? keep : drop)[`f${i}.bin`] = randomBytes(20 * 1024)
    const a = await snapshotOf(repo, {...keep, ...drop})
    const b = await snapshotOf(repo, {...keep, 'very-secret-name.txt': secretText(1000)})
    await repo.backend.delete(snapshotKey(a.id))
    const lock = await RepoLock.acquire(repo.backend, {exclusive: true, purpose: 'test'})
    const r = await pruneRepository(await Repository.open(repo.backend, {loadIndex: false, password: PW}), {lock, graceMs: 0})
    await lock.release()
    expect(r.packs.repacked + r.packs.unused).toBeGreaterThan(0)
    expect(r.packs.written).toBeGreaterThan(0)
    expect(leaks(await allFiles(dir))).toEqual([])
    const fresh = await Repository.open(new LocalBackend(dir), {password: PW})
    expect((await verifyRepository(fresh, {readData: true})).problems).toEqual([])
    await expectRestored(fresh, b.tree, {...keep, 'very-secret-name.txt': secretText(1000)})
  })
})

describe('configs and key files from elsewhere', () => {
  it('refuses unknown encryption, inconsistent configs, damaged and hostile key files', async () => {
    const dir = newDir('hostile')
    const repo = await encryptedRepo(dir)
    const b = new LocalBackend(dir)
    const config = JSON.parse((await b.get('config')).toString('utf8'))
    const withConfig = async (c: unknown, fn: () => Promise<void>): Promise<void> => {
      await b.put('config', Buffer.from(JSON.stringify(c)))
      try {
        await fn()
      } finally {
        await b.put('config', Buffer.from(JSON.stringify(config)))
      }
    }
    await withConfig({...config, encryption: {algorithm: 'chacha20', kdf: 'scrypt'}}, () =>
      expect(Repository.open(b, {password: PW})).rejects.toMatchObject({code: 'REPO_NEWER_FORMAT'}),
    )
    await withConfig({...config, encryption: null}, () => expect(Repository.open(b, {password: PW})).rejects.toMatchObject({code: 'REPO_DAMAGED'}))
    await withConfig({...config, version: 1}, () => expect(Repository.open(b, {password: PW})).rejects.toMatchObject({code: 'REPO_DAMAGED'}))
    await withConfig({...config, version: 3}, () => expect(Repository.open(b, {password: PW})).rejects.toMatchObject({code: 'REPO_NEWER_FORMAT'}))

    // a key file asking for 4 GiB of scrypt memory, and a damaged one: neither opens anything
    const key = (await b.list('keys/'))[0].key
    const good = await b.get(key)
    const file = JSON.parse(good.toString('utf8'))
    const greedy = Buffer.from(JSON.stringify({...file, kdf: {...file.kdf, N: 2 ** 22, r: 8}}))
    await b.put(`keys/${sha256(greedy)}`, greedy)
    await b.put(`keys/${'0'.repeat(64)}`, good)
    const {keys, damaged} = await readKeyFiles(b)
    expect(keys.map((k) => k.id)).toEqual([repo.keyId])
    expect(damaged).toHaveLength(2)
    expect(damaged.map((d) => d.problem)).toEqual(expect.arrayContaining([expect.stringMatching(/does not match its name/), expect.stringMatching(/unsupported scrypt parameters/)]))
    expect((await Repository.open(b, {password: PW})).keyId).toBe(repo.keyId)
    await b.delete(key)
    await expect(Repository.open(b, {password: PW})).rejects.toMatchObject({code: 'REPO_DAMAGED', message: expect.stringMatching(/no readable key file/)})
  })
})

// ------------------------------------------------------------------------------ through S3

describe('an encrypted repository through S3', () => {
  let s3: S3Server
  beforeAll(async () => {
    setEnv({
      AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
      AWS_REGION: 'us-east-1',
      AWS_ENDPOINT_URL: undefined,
      AWS_ENDPOINT_URL_S3: undefined,
      AWS_PROFILE: undefined,
    })
    s3 = await startS3Server()
  }, 20_000)
  afterAll(async () => {
    await s3?.stop()
  })

  it('is pushed, pulled into a fresh repository with its keys, and restores the same bytes; the bucket holds nothing readable', async () => {
    const A = {dir: newDir('A'), catalogue: join(newDir('A-cat'), 'c.sqlite3')}
    const B = {dir: newDir('B'), catalogue: join(newDir('B-cat'), 'c.sqlite3')}
    const repo = await encryptedRepo(A.dir, {packSize: 128 * 1024})
    const files = FILES()
    const s = await snapshotOf(repo, files)
    const prefix = randomUUID()
    const remotesFile = join(tmp, `remotes-${randomUUID()}.json`)
    await remoteAdd({name: 'backup', url: `s3://${s3.bucket}/${prefix}`, endpoint: s3.endpoint, remotesFile})

    setEnv({HOLYSHIP_PASSWORD: PW})
    const pushed = await push({repo: A.dir, catalogue: A.catalogue, remote: 'backup', remotesFile})
    expect(pushed).toMatchObject({createdRemote: true, snapshotsSent: [s.id]})
    const bucket = await allFiles(join(s3.dir, s3.bucket, prefix))
    expect([...bucket.keys()].some((k) => k.startsWith('keys/'))).toBe(true)
    expect(leaks(bucket, Object.values(files).map((b) => sha256(b)))).toEqual([])

    // a fresh host with the wrong passphrase: refused, nothing created
    setEnv({HOLYSHIP_PASSWORD: 'wrong'})
    await expect(pull({repo: B.dir, catalogue: B.catalogue, remote: 'backup', remotesFile, snapshots: ['latest']})).rejects.toMatchObject({code: 'WRONG_PASSWORD'})
    expect(existsSync(B.dir)).toBe(false)

    setEnv({HOLYSHIP_PASSWORD: PW})
    const pulled = await pull({repo: B.dir, catalogue: B.catalogue, remote: 'backup', remotesFile, snapshots: ['latest']})
    expect(pulled).toMatchObject({createdRepository: true, sameRepository: true, snapshotsPulled: [s.id]})
    const bFiles = await allFiles(B.dir)
    expect([...bFiles.keys()].filter((k) => k.startsWith('keys/'))).toEqual([`keys/${repo.keyId}`])
    expect(leaks(bFiles)).toEqual([])
    const b = await Repository.open(new LocalBackend(B.dir), {password: PW})
    expect(b.config.chunker.seed).toBe(repo.config.chunker.seed)
    expect(await b.loadSnapshot(s.id)).toEqual(s.manifest)
    await expectRestored(b, s.tree, files)
    expect((await verifyRepository(b, {readData: true})).problems).toEqual([])

    // B snapshots the same data: nothing new (same key, same ids, same cut points)
    const s2 = await snapshotOf(b, files)
    expect(s2.manifest.stats.newBytes).toBe(0)

    // an encrypted repository never mixes with another repository
    const plainDir = newDir('P')
    await fsp.mkdir(plainDir)
    await Repository.init(new LocalBackend(plainDir))
    await expect(pull({repo: plainDir, catalogue: join(newDir('P-cat'), 'c.sqlite3'), remote: 'backup', remotesFile, snapshots: ['latest']})).rejects.toMatchObject({
      code: 'USAGE',
      message: expect.stringMatching(/only pulled into its own copy/),
    })
    const other = await encryptedRepo(undefined, {password: PW})
    await snapshotOf(other, {'x.txt': Buffer.from('x')})
    await expect(push({repo: other.backend.location, catalogue: join(newDir('O-cat'), 'c.sqlite3'), remote: 'backup', remotesFile})).rejects.toMatchObject({
      code: 'USAGE',
      message: expect.stringMatching(/only pushed to its own copy/),
    })
  }, 60_000)

  it('two encrypted repositories that first push to one empty remote at once (a store honouring If-None-Match): one creates it, the other is refused and leaves no key file there', async () => {
    const A = {dir: newDir('RA'), catalogue: join(newDir('RA-cat'), 'c.sqlite3')}
    const B = {dir: newDir('RB'), catalogue: join(newDir('RB-cat'), 'c.sqlite3')}
    const [ra, rb] = [await encryptedRepo(A.dir), await encryptedRepo(B.dir)]
    const [sa, sb] = [await snapshotOf(ra, {'a.txt': Buffer.from('a')}), await snapshotOf(rb, {'b.txt': Buffer.from('b')})]
    const prefix = randomUUID()
    const url = `s3://${s3.bucket}/${prefix}`
    setEnv({HOLYSHIP_PASSWORD: PW})
    const wrapBackend = honourIfNoneMatch()
    const results = await Promise.allSettled([A, B].map((x) => push({repo: x.dir, catalogue: x.catalogue, remote: url, endpoint: s3.endpoint, wrapBackend})))
    const won = results.findIndex((r) => r.status === 'fulfilled')
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1)
    const lost = results[1 - won] as PromiseRejectedResult
    expect(lost.reason).toMatchObject({code: 'USAGE', message: expect.stringMatching(/only pushed to its own copy/)})
    const [winner, loser] = won === 0 ? [ra, rb] : [rb, ra]
    expect((results[won] as PromiseFulfilledResult<{createdRemote: boolean; snapshotsSent: string[]}>).value).toMatchObject({createdRemote: true, snapshotsSent: [won === 0 ? sa.id : sb.id]})
    // the remote is the winner's: its config, and only its key file
    expect(JSON.parse((await fsp.readFile(s3rverObjectPath(s3, `${prefix}/config`))).toString()).id).toBe(winner.id)
    const bucket = await allFiles(join(s3.dir, s3.bucket, prefix))
    expect([...bucket.keys()].filter((k) => k.startsWith('keys/') && k.endsWith('._S3rver_object'))).toEqual([`keys/${winner.keyId}._S3rver_object`])
    expect(loser.keyId).not.toBe(winner.keyId)
  }, 60_000)

  it('two pulls from two encrypted remotes into one new directory at once: one repository is made there, with only its own key file', async () => {
    const remotes: {url: string; repo: Repository}[] = []
    for (const n of ['X', 'Y']) {
      const dir = newDir(n)
      const repo = await encryptedRepo(dir)
      await snapshotOf(repo, {[`${n}.txt`]: Buffer.from(n)})
      const url = `s3://${s3.bucket}/${randomUUID()}`
      setEnv({HOLYSHIP_PASSWORD: PW})
      await push({repo: dir, catalogue: join(newDir(`${n}-cat`), 'c.sqlite3'), remote: url, endpoint: s3.endpoint})
      remotes.push({url, repo})
    }
    const Z = newDir('Z')
    const results = await Promise.allSettled(remotes.map((r, i) => pull({repo: Z, catalogue: join(newDir(`Z${i}-cat`), 'c.sqlite3'), remote: r.url, endpoint: s3.endpoint, snapshots: ['latest']})))
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1)
    const winner = remotes[results.findIndex((r) => r.status === 'fulfilled')].repo
    expect(JSON.parse(await fsp.readFile(join(Z, 'config'), 'utf8')).id).toBe(winner.id)
    expect(await fsp.readdir(join(Z, 'keys'))).toEqual([winner.keyId])
  }, 60_000)
})
