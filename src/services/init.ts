import {promises as fsp} from 'node:fs'
import * as path from 'node:path'
import {LocalBackend} from '../backend/local.js'
import {Catalogue, defaultCataloguePath} from '../catalogue/catalogue.js'
import {HolyshipError} from '../errors.js'
import {ScryptParams, getNewPassword} from '../repo/keys.js'
import {Repository} from '../repo/repository.js'
import {defaultRepoPath} from './context.js'

export interface InitResult {
  repository: string
  id: string
  catalogue: string
  encrypted: boolean
  /** encrypted: the id of the first key file (`holyship key list`) */
  keyId?: string
}

export interface InitOptions {
  repo?: string
  catalogue?: string
  /** an encrypted repository (AES-256-GCM; the passphrase wraps a random master key) */
  encrypt?: boolean
  /** its passphrase (default: --password-file / HOLYSHIP_PASSWORD / typed twice on a terminal) */
  password?: string
  /** scrypt parameters of the first key file (tests) */
  kdf?: ScryptParams
}

/** Create a repository in an empty or missing directory. */
export async function initRepository(opts: InitOptions): Promise<InitResult> {
  const dir = path.resolve(opts.repo ?? defaultRepoPath())
  const entries = await fsp.readdir(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [] as string[]
    throw e
  })
  if (entries.includes('config')) throw new HolyshipError('REPO_EXISTS', `a repository already exists at ${dir}`)
  if (entries.length > 0) throw new HolyshipError('REPO_EXISTS', `${dir} is not empty; a repository needs an empty or new directory`)
  // the passphrase before anything is created
  const password = opts.encrypt ? (opts.password ?? (await getNewPassword({envName: 'HOLYSHIP_PASSWORD', useDefaultSources: true}))) : undefined
  await fsp.mkdir(dir, {recursive: true, mode: 0o700})
  const repo = await Repository.init(new LocalBackend(dir), {encrypt: opts.encrypt, password, kdf: opts.kdf})
  const catFile = opts.catalogue ?? defaultCataloguePath()
  Catalogue.open(catFile).close()
  return {repository: dir, id: repo.id, catalogue: catFile, encrypted: repo.encrypted, ...(repo.keyId ? {keyId: repo.keyId} : {})}
}
