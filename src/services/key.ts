/**
 * `holyship key list | add | remove | passwd`: the passphrases of an encrypted repository
 * (the local one, or a remote with `to`). Each passphrase wraps the same master key in its own
 * key file; adding or removing one never re-encrypts data. Every operation first opens the
 * repository with a current passphrase. Passphrases are never part of a result.
 */
import {promises as fsp} from 'node:fs'
import * as path from 'node:path'
import {Backend} from '../backend/backend.js'
import {LocalBackend} from '../backend/local.js'
import {HolyshipError} from '../errors.js'
import {ScryptParams, addKeyFile, getNewPassword, keyFileKey, readKeyFiles} from '../repo/keys.js'
import {Repository} from '../repo/repository.js'
import {openRemote} from '../transfer/remotes.js'
import {defaultRepoPath} from './context.js'

export interface KeyTargetOptions {
  repo?: string
  /** a remote (name or s3:// URL) instead of the local repository */
  to?: string
  endpoint?: string
  region?: string
  remotesFile?: string
  /** the current passphrase (default: --password-file / HOLYSHIP_PASSWORD / a prompt) */
  password?: string
}

export interface NewKeyOptions extends KeyTargetOptions {
  /** the new passphrase (default: newPasswordFile, HOLYSHIP_NEW_PASSWORD, typed twice on a terminal) */
  newPassword?: string
  newPasswordFile?: string
  /** scrypt parameters of the new key file (tests) */
  kdf?: ScryptParams
}

export interface KeyInfo {
  id: string
  created: string
  host: string
  user: string
  kdf: {algorithm: 'scrypt'; N: number; r: number; p: number}
  /** the passphrase given opened this key */
  current: boolean
}

export interface KeyListResult {
  repository: string
  keys: KeyInfo[]
  /** key files that cannot be read (damaged); they open nothing */
  damaged: {key: string; problem: string}[]
}

async function withBackend<T>(opts: KeyTargetOptions, fn: (backend: Backend) => Promise<T>): Promise<T> {
  if (!opts.to) {
    const dir = path.resolve(opts.repo ?? defaultRepoPath())
    const st = await fsp.stat(dir).catch(() => undefined)
    if (!st?.isDirectory()) throw new HolyshipError('REPO_MISSING', `no repository at ${dir}`, {hint: 'pass --repo / set HOLYSHIP_REPO'})
    return fn(new LocalBackend(dir))
  }
  const remote = await openRemote({remote: opts.to, endpoint: opts.endpoint, region: opts.region, remotesFile: opts.remotesFile})
  try {
    return await fn(remote.backend)
  } finally {
    await remote.close()
  }
}

/** Open the repository with the current passphrase; it must be encrypted. */
async function openEncrypted(backend: Backend, password: string | undefined): Promise<Repository> {
  const repo = await Repository.open(backend, {loadIndex: false, password})
  if (!repo.encrypted) {
    throw new HolyshipError('USAGE', `the repository at ${backend.location} is not encrypted: it has no keys`, {hint: 'an encrypted repository is made with `holyship init --encrypt`'})
  }
  return repo
}

function newPassword(opts: NewKeyOptions): Promise<string> {
  if (opts.newPassword !== undefined) {
    if (opts.newPassword === '') throw new HolyshipError('USAGE', 'empty passphrase')
    return Promise.resolve(opts.newPassword)
  }
  return getNewPassword({file: opts.newPasswordFile, envName: 'HOLYSHIP_NEW_PASSWORD'})
}

async function list(backend: Backend, current: string | undefined): Promise<KeyListResult> {
  const {keys, damaged} = await readKeyFiles(backend)
  const out: KeyInfo[] = keys.map(({id, file}) => ({
    id,
    created: file.created,
    host: file.host,
    user: file.user,
    kdf: {algorithm: 'scrypt', N: file.kdf.N, r: file.kdf.r, p: file.kdf.p},
    current: id === current,
  }))
  out.sort((a, b) => (a.created < b.created ? -1 : a.created > b.created ? 1 : a.id < b.id ? -1 : 1))
  return {repository: backend.location, keys: out, damaged}
}

export async function keyList(opts: KeyTargetOptions = {}): Promise<KeyListResult> {
  return withBackend(opts, async (backend) => {
    const repo = await openEncrypted(backend, opts.password)
    return list(backend, repo.keyId)
  })
}

export async function keyAdd(opts: NewKeyOptions = {}): Promise<{repository: string; id: string}> {
  return withBackend(opts, async (backend) => {
    const repo = await openEncrypted(backend, opts.password)
    const pw = await newPassword(opts)
    const id = await addKeyFile(backend, repo.masterKey!, pw, opts.kdf)
    return {repository: backend.location, id}
  })
}

/** A new key file for a new passphrase, then the key file the current one opened is removed. */
export async function keyPasswd(opts: NewKeyOptions = {}): Promise<{repository: string; added: string; removed: string}> {
  return withBackend(opts, async (backend) => {
    const repo = await openEncrypted(backend, opts.password)
    const pw = await newPassword(opts)
    // add first: the repository never has no key
    const added = await addKeyFile(backend, repo.masterKey!, pw, opts.kdf)
    await backend.delete(keyFileKey(repo.keyId!))
    return {repository: backend.location, added, removed: repo.keyId!}
  })
}

export async function keyRemove(opts: KeyTargetOptions & {id: string}): Promise<{repository: string; removed: string}> {
  return withBackend(opts, async (backend) => {
    const repo = await openEncrypted(backend, opts.password)
    const ref = opts.id.trim().toLowerCase()
    if (!/^[0-9a-f]{4,64}$/.test(ref)) throw new HolyshipError('USAGE', `${JSON.stringify(opts.id)} is not a key id (4 to 64 hex characters; see \`holyship key list\`)`)
    const ids = (await backend.list('keys/')).map((e) => e.key.slice('keys/'.length))
    const matches = ids.filter((id) => id.startsWith(ref))
    if (matches.length === 0) throw new HolyshipError('USAGE', `no key ${ref} in ${backend.location}`, {hint: 'see `holyship key list`'})
    if (matches.length > 1) throw new HolyshipError('USAGE', `${ref} matches ${matches.length} keys in ${backend.location}; give more of its id`)
    const id = matches[0]
    if (ids.length === 1) {
      throw new HolyshipError('USAGE', `key ${id.slice(0, 12)} is the only key of ${backend.location}: without it the repository could never be opened again`)
    }
    if (id === repo.keyId) {
      throw new HolyshipError('USAGE', `key ${id.slice(0, 12)} is the one the given passphrase opens`, {
        hint: 'change it with `holyship key passwd`, or remove it using another passphrase',
      })
    }
    await backend.delete(keyFileKey(id))
    return {repository: backend.location, removed: id}
  })
}
