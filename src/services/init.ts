import {promises as fsp} from 'node:fs'
import * as path from 'node:path'
import {LocalBackend} from '../backend/local.js'
import {Catalogue, defaultCataloguePath} from '../catalogue/catalogue.js'
import {HolyshipError} from '../errors.js'
import {Repository} from '../repo/repository.js'
import {defaultRepoPath} from './context.js'

export interface InitResult {
  repository: string
  id: string
  catalogue: string
}

/** Create a repository in an empty or missing directory. */
export async function initRepository(opts: {repo?: string; catalogue?: string}): Promise<InitResult> {
  const dir = path.resolve(opts.repo ?? defaultRepoPath())
  const entries = await fsp.readdir(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [] as string[]
    throw e
  })
  if (entries.includes('config')) throw new HolyshipError('REPO_EXISTS', `a repository already exists at ${dir}`)
  if (entries.length > 0) throw new HolyshipError('REPO_EXISTS', `${dir} is not empty; a repository needs an empty or new directory`)
  await fsp.mkdir(dir, {recursive: true, mode: 0o700})
  const repo = await Repository.init(new LocalBackend(dir))
  const catFile = opts.catalogue ?? defaultCataloguePath()
  Catalogue.open(catFile).close()
  return {repository: dir, id: repo.id, catalogue: catFile}
}
