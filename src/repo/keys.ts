/**
 * Key files and passphrases of an encrypted repository (FORMAT.md, "Key files").
 *
 * The master key is wrapped (AES-256-GCM) by a key derived from a passphrase with scrypt, once
 * per passphrase, in `keys/<id>` objects (id = SHA-256 of the key file's bytes). Changing a
 * passphrase writes a new key file and deletes the old one; data is never re-encrypted.
 *
 * Passphrases come from, in order: an explicit value (API), `--password-file FILE` /
 * $HOLYSHIP_PASSWORD_FILE, $HOLYSHIP_PASSWORD, a prompt on the terminal (no echo). They are
 * never taken from argv, never logged, never part of an error message or a result.
 */
import {randomBytes, scrypt as scryptCb} from 'node:crypto'
import {promises as fsp} from 'node:fs'
import * as os from 'node:os'
import debugFactory from 'debug'
import {Backend, isNotFound} from '../backend/backend.js'
import {HolyshipError} from '../errors.js'
import {AuthenticationError, MASTER_KEY_LENGTH, MasterKey, openWith, sealWith, aad} from './crypto.js'
import {sha256} from './pack.js'

const debug = debugFactory('holyship:keys')

export const KEYS_PREFIX = 'keys/'
export const keyFileKey = (id: string): string => `${KEYS_PREFIX}${id}`

export interface ScryptParams {
  /** CPU/memory cost, a power of 2 */
  N: number
  r: number
  p: number
}

/** memory-hard default: 128 * N * r = 128 MiB per derivation */
export const DEFAULT_SCRYPT: ScryptParams = {N: 2 ** 17, r: 8, p: 1}
/** for tests only (HOLYSHIP_TEST_FAST_KDF=1): 1 MiB; never the default */
export const FAST_TEST_SCRYPT: ScryptParams = {N: 2 ** 10, r: 8, p: 1}
/** the most a key file may ask of us (a hostile key file must not make us allocate gigabytes) */
const MAX_SCRYPT_MEMORY = 1024 * 1024 * 1024
/** and the most work (N * r * p): 16 times the default's */
const MAX_SCRYPT_WORK = 16 * 2 ** 20

/** the parameters new key files get */
export function scryptParamsForNewKeys(env: NodeJS.ProcessEnv = process.env): ScryptParams {
  return env.HOLYSHIP_TEST_FAST_KDF === '1' ? FAST_TEST_SCRYPT : DEFAULT_SCRYPT
}

export interface KeyFile {
  version: 1
  created: string
  host: string
  user: string
  kdf: {algorithm: 'scrypt'; N: number; r: number; p: number; salt: string}
  /** the master key (encryption key | MAC key, 64 bytes) sealed with the derived key */
  masterKey: {algorithm: 'aes-256-gcm'; nonce: string; data: string}
}

function checkScrypt(k: {N: unknown; r: unknown; p: unknown}): ScryptParams {
  const {N, r, p} = k
  const int = (x: unknown): x is number => typeof x === 'number' && Number.isInteger(x) && x > 0
  if (!int(N) || !int(r) || !int(p) || N < 2 || (N & (N - 1)) !== 0 || r > 64 || p > 16 || 128 * N * r > MAX_SCRYPT_MEMORY || N * r * p > MAX_SCRYPT_WORK) {
    throw new Error(`unsupported scrypt parameters N=${String(N)} r=${String(r)} p=${String(p)}`)
  }
  return {N, r, p}
}

function deriveKey(password: string, salt: Buffer, params: ScryptParams): Promise<Buffer> {
  const {N, r, p} = checkScrypt(params)
  return new Promise((resolve, reject) => {
    scryptCb(password.normalize('NFC'), salt, 32, {N, r, p, maxmem: 2 * 128 * N * r + 32 * 1024 * 1024}, (err, key) => (err ? reject(err) : resolve(key)))
  })
}

function userName(): string {
  try {
    return os.userInfo().username
  } catch {
    return process.env.USER ?? ''
  }
}

/** A new key file wrapping `master` with `password`. */
export async function makeKeyFile(master: MasterKey, password: string, params: ScryptParams = scryptParamsForNewKeys()): Promise<{id: string; data: Buffer; file: KeyFile}> {
  const salt = randomBytes(32)
  const kek = await deriveKey(password, salt, params)
  const sealed = sealWith(kek, aad(0x80, 'key'), master.toBytes())
  const file: KeyFile = {
    version: 1,
    created: new Date().toISOString(),
    host: os.hostname(),
    user: userName(),
    kdf: {algorithm: 'scrypt', N: params.N, r: params.r, p: params.p, salt: salt.toString('base64')},
    masterKey: {
      algorithm: 'aes-256-gcm',
      nonce: sealed.subarray(0, 12).toString('base64'),
      data: sealed.subarray(12).toString('base64'),
    },
  }
  const data = Buffer.from(JSON.stringify(file, null, 2) + '\n')
  return {id: sha256(data), data, file}
}

/** Write a new key file for `master`; returns its id. */
export async function addKeyFile(backend: Backend, master: MasterKey, password: string, params?: ScryptParams): Promise<string> {
  const {id, data} = await makeKeyFile(master, password, params)
  await backend.put(keyFileKey(id), data)
  return id
}

function parseKeyFile(data: Buffer, where: string): KeyFile {
  let f: KeyFile
  try {
    f = JSON.parse(data.toString('utf8')) as KeyFile
  } catch {
    throw new Error(`${where} is not valid JSON`)
  }
  if (!f || f.version !== 1 || f.kdf?.algorithm !== 'scrypt' || f.masterKey?.algorithm !== 'aes-256-gcm' || typeof f.kdf.salt !== 'string') {
    throw new Error(`${where} is not a holyship key file`)
  }
  checkScrypt(f.kdf)
  return f
}

export interface StoredKey {
  id: string
  file: KeyFile
}

/**
 * Every key file of a repository, each checked against its name. Damaged ones are returned in
 * `damaged` (not thrown): another key may still open the repository.
 */
export async function readKeyFiles(backend: Backend): Promise<{keys: StoredKey[]; damaged: {key: string; problem: string}[]}> {
  const keys: StoredKey[] = []
  const damaged: {key: string; problem: string}[] = []
  for (const {key} of await backend.list(KEYS_PREFIX)) {
    const id = key.slice(KEYS_PREFIX.length)
    let data: Buffer
    try {
      data = await backend.get(key)
    } catch (e) {
      if (isNotFound(e)) continue // removed meanwhile
      throw e
    }
    if (sha256(data) !== id) {
      damaged.push({key, problem: 'its content does not match its name'})
      continue
    }
    try {
      keys.push({id, file: parseKeyFile(data, key)})
    } catch (e) {
      damaged.push({key, problem: (e as Error).message})
    }
  }
  return {keys, damaged}
}

/** Try one key file; undefined when the passphrase does not open it. */
export async function tryKeyFile(k: StoredKey, password: string): Promise<MasterKey | undefined> {
  const cacheKey = sha256(`${k.id}\0${password}`)
  const cached = unlocked.get(cacheKey)
  if (cached) return cached
  const kek = await deriveKey(password, Buffer.from(k.file.kdf.salt, 'base64'), k.file.kdf)
  const sealed = Buffer.concat([Buffer.from(k.file.masterKey.nonce, 'base64'), Buffer.from(k.file.masterKey.data, 'base64')])
  let material: Buffer
  try {
    material = openWith(kek, aad(0x80, 'key'), sealed)
  } catch (e) {
    if (e instanceof AuthenticationError) return undefined
    throw e
  }
  if (material.length !== MASTER_KEY_LENGTH) return undefined
  const master = MasterKey.fromBytes(material)
  material.fill(0)
  unlocked.set(cacheKey, master)
  return master
}

/**
 * Master keys unlocked in this process, by (key file id, passphrase) hash: a command that opens
 * the same repository (or a copy with the same key files: a pulled one) again pays scrypt once.
 */
const unlocked = new Map<string, MasterKey>()

export interface Unlocked {
  key: MasterKey
  /** the key file the passphrase opened */
  keyId: string
}

/**
 * Open a repository's master key with a passphrase (default: from the usual sources). Nothing
 * is written. A passphrase that opens no key file: WRONG_PASSWORD.
 */
export async function unlockRepository(backend: Backend, opts: {password?: string} = {}): Promise<Unlocked> {
  const {keys, damaged} = await readKeyFiles(backend)
  for (const d of damaged) debug('%s/%s: %s', backend.location, d.key, d.problem)
  if (keys.length === 0) {
    throw new HolyshipError('REPO_DAMAGED', `${backend.location} is encrypted but has no ${damaged.length ? 'readable ' : ''}key file${damaged.length ? ` (${damaged[0].key}: ${damaged[0].problem})` : ''}`)
  }
  const fromPrompt = opts.password === undefined && passwordSource() === 'prompt'
  const password = opts.password ?? (await getPassword(`passphrase for ${backend.location}: `))
  for (const k of keys) {
    const master = await tryKeyFile(k, password)
    if (master) {
      if (fromPrompt) sessionPassword = password
      debug('%s: unlocked with key %s', backend.location, k.id.slice(0, 12))
      return {key: master, keyId: k.id}
    }
  }
  throw new HolyshipError('WRONG_PASSWORD', `wrong passphrase for the repository at ${backend.location}`, {
    hint: fromPrompt ? undefined : `it came from ${passwordSource() === 'file' ? 'the password file' : 'HOLYSHIP_PASSWORD'}`,
  })
}

// ------------------------------------------------------------------------------ passphrases

let defaultPasswordFile: string | undefined
/** a passphrase typed at the prompt that opened a repository: not asked again in this process */
let sessionPassword: string | undefined

/** the CLI's --password-file (for every repository this process opens) */
export function setPasswordFile(file: string | undefined): void {
  defaultPasswordFile = file
}

/** forget what was typed at a prompt (tests) */
export function forgetSessionPassword(): void {
  sessionPassword = undefined
}

function passwordSource(env: NodeJS.ProcessEnv = process.env): 'file' | 'env' | 'prompt' {
  if (defaultPasswordFile ?? env.HOLYSHIP_PASSWORD_FILE) return 'file'
  if (env.HOLYSHIP_PASSWORD !== undefined && env.HOLYSHIP_PASSWORD !== '') return 'env'
  return 'prompt'
}

async function readPasswordFile(file: string): Promise<string> {
  let text: string
  try {
    text = await fsp.readFile(file, 'utf8')
  } catch (e) {
    throw new HolyshipError('USAGE', `cannot read the password file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`)
  }
  // one trailing newline is not part of the passphrase
  const pw = text.replace(/\r?\n$/, '')
  if (pw === '') throw new HolyshipError('USAGE', `the password file ${file} is empty`)
  return pw
}

/** The passphrase of an existing repository: file, environment, or a prompt on a terminal. */
export async function getPassword(prompt: string, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const file = defaultPasswordFile ?? env.HOLYSHIP_PASSWORD_FILE
  if (file) return readPasswordFile(file)
  if (env.HOLYSHIP_PASSWORD !== undefined && env.HOLYSHIP_PASSWORD !== '') return env.HOLYSHIP_PASSWORD
  if (sessionPassword !== undefined) return sessionPassword
  if (!process.stdin.isTTY) {
    throw new HolyshipError('USAGE', 'the repository is encrypted and no passphrase was given', {
      hint: 'set HOLYSHIP_PASSWORD or pass --password-file FILE; there is no terminal to ask on',
    })
  }
  const pw = await promptHidden(`holyship: ${prompt}`)
  if (pw === '') throw new HolyshipError('USAGE', 'empty passphrase')
  return pw
}

/**
 * A new passphrase (init --encrypt, key add, key passwd): `fileOrNothing` (e.g.
 * --new-password-file) or the environment variable `envName`, else typed twice at a prompt.
 */
export async function getNewPassword(opts: {file?: string; envName: string; useDefaultSources?: boolean}, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  if (opts.file) return readPasswordFile(opts.file)
  if (opts.useDefaultSources) {
    const file = defaultPasswordFile ?? env.HOLYSHIP_PASSWORD_FILE
    if (file) return readPasswordFile(file)
  }
  const v = env[opts.envName]
  if (v !== undefined && v !== '') return v
  if (!process.stdin.isTTY) {
    throw new HolyshipError('USAGE', 'no new passphrase was given', {
      hint: `set ${opts.envName} or pass ${opts.useDefaultSources ? '--password-file' : '--new-password-file'} FILE; there is no terminal to ask on`,
    })
  }
  const a = await promptHidden('holyship: new passphrase: ')
  if (a === '') throw new HolyshipError('USAGE', 'empty passphrase')
  const b = await promptHidden('holyship: the same passphrase again: ')
  if (a !== b) throw new HolyshipError('USAGE', 'the passphrases do not match')
  return a
}

/** Read a line from the terminal without echo (raw mode). Ctrl-C → INTERRUPTED. */
function promptHidden(question: string): Promise<string> {
  const stdin = process.stdin
  process.stderr.write(question)
  return new Promise((resolve, reject) => {
    let buf = ''
    const wasRaw = stdin.isRaw
    const done = (): void => {
      stdin.off('data', onData)
      stdin.setRawMode(wasRaw)
      stdin.pause()
      process.stderr.write('\n')
    }
    const onData = (chunk: Buffer | string): void => {
      for (const ch of typeof chunk === 'string' ? chunk : chunk.toString('utf8')) {
        if (ch === '\r' || ch === '\n') {
          done()
          resolve(buf)
          return
        }
        if (ch === '\u0003') {
          done()
          reject(new HolyshipError('INTERRUPTED', 'interrupted at the passphrase prompt'))
          return
        }
        if (ch === '\u0004') {
          if (buf === '') {
            done()
            reject(new HolyshipError('USAGE', 'no passphrase given'))
            return
          }
          continue
        }
        if (ch === '\u007f' || ch === '\b') {
          buf = [...buf].slice(0, -1).join('')
          continue
        }
        if (ch === '\u0015') {
          buf = ''
          continue
        }
        buf += ch
      }
    }
    stdin.setRawMode(true)
    stdin.resume()
    stdin.on('data', onData)
  })
}

/**
 * Copy the key files `to` lacks from `from` (each checked against its name): a remote gets the
 * passphrases of the repository it copies, a host landing from a remote gets the remote's.
 * Key files are never deleted here (`key remove` on each side does that). Returns the ids copied.
 */
export async function copyKeyFiles(from: Backend, to: Backend): Promise<string[]> {
  const have = new Set((await to.list(KEYS_PREFIX)).map((e) => e.key))
  const copied: string[] = []
  for (const {key} of await from.list(KEYS_PREFIX)) {
    if (have.has(key)) continue
    const data = await from.get(key)
    const id = key.slice(KEYS_PREFIX.length)
    if (sha256(data) !== id) {
      debug('%s/%s is damaged: not copied', from.location, key)
      continue
    }
    await to.put(key, data)
    copied.push(id)
  }
  return copied
}
