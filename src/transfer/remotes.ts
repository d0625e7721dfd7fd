/**
 * Remotes: named S3 locations (`holyship remote add NAME s3://BUCKET[/PREFIX]`), kept in a small
 * JSON file in the user's configuration directory, and opening one as a Backend.
 *
 * Why a config file and not the catalogue: the catalogue is a disposable cache that holds nothing
 * the repositories do not (it can be deleted and rebuilt, or moved aside when damaged); a remote
 * is user configuration that cannot be rebuilt from anything. The file is human-editable, like
 * git's remotes, and never holds credentials: those come from the AWS SDK's provider chain.
 *
 * File: `$HOLYSHIP_REMOTES`, else `$XDG_CONFIG_HOME/holyship/remotes.json`, else
 * `~/.config/holyship/remotes.json`:
 *   {"version": 1, "remotes": {"NAME": {"url": "s3://bucket/prefix", "endpoint": "...", "region": "..."}}}
 */
import {randomBytes} from 'node:crypto'
import {promises as fsp} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import debugFactory from 'debug'
import {Backend} from '../backend/backend.js'
import {LimitBackend, RetryBackend} from '../backend/retry.js'
// the AWS SDK is loaded with the S3 backend, by the commands that talk to S3 (s3Module)
import type * as S3Module from '../backend/s3.js'
import {HolyshipError} from '../errors.js'

export interface RemoteRecord {
  name: string
  url: string
  endpoint?: string
  region?: string
}

interface RemotesFile {
  version: 1
  remotes: Record<string, Omit<RemoteRecord, 'name'>>
}

const debug = debugFactory('holyship:remote')

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/

/** src/backend/s3.ts, imported on first use: the AWS SDK costs a large part of a second to load */
const s3Module = (): Promise<typeof S3Module> => import('../backend/s3.js')

export function defaultRemotesFile(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HOLYSHIP_REMOTES) return env.HOLYSHIP_REMOTES
  if (env.XDG_CONFIG_HOME && path.isAbsolute(env.XDG_CONFIG_HOME)) return path.join(env.XDG_CONFIG_HOME, 'holyship', 'remotes.json')
  return path.join(env.HOME || os.homedir(), '.config', 'holyship', 'remotes.json')
}

async function readRemotes(file: string): Promise<RemotesFile> {
  let raw: string
  try {
    raw = await fsp.readFile(file, 'utf8')
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {version: 1, remotes: {}}
    throw e
  }
  let parsed: RemotesFile
  try {
    parsed = JSON.parse(raw) as RemotesFile
  } catch {
    throw new HolyshipError('USAGE', `remotes file ${file} is not valid JSON`, {hint: 'fix or delete it'})
  }
  if (!parsed || typeof parsed !== 'object' || typeof parsed.remotes !== 'object' || parsed.remotes === null) {
    throw new HolyshipError('USAGE', `remotes file ${file} has no "remotes" object`, {hint: 'fix or delete it'})
  }
  return parsed
}

/** atomic replace: temp file, fsync, rename */
async function writeRemotes(file: string, data: RemotesFile): Promise<void> {
  const dir = path.dirname(path.resolve(file))
  await fsp.mkdir(dir, {recursive: true, mode: 0o700})
  const tmp = path.join(dir, `.remotes-${randomBytes(6).toString('hex')}.tmp`)
  const fh = await fsp.open(tmp, 'wx', 0o644)
  try {
    await fh.writeFile(JSON.stringify(data, null, 2) + '\n')
    await fh.sync()
  } finally {
    await fh.close()
  }
  try {
    await fsp.rename(tmp, file)
  } catch (e) {
    await fsp.rm(tmp, {force: true})
    throw e
  }
}

function checkName(name: string): void {
  if (!NAME_RE.test(name)) {
    throw new HolyshipError('USAGE', `invalid remote name ${JSON.stringify(name)}: use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)`)
  }
}

/** Endpoints are stored and shown, so they must not carry credentials. */
export function checkEndpointUrl(endpoint: string): string {
  let url: URL
  try {
    url = new URL(endpoint)
  } catch {
    throw new HolyshipError('USAGE', `invalid S3 endpoint URL ${JSON.stringify(endpoint.replace(/\/\/[^/@]*@/, '//***@'))}`, {hint: 'use e.g. http://127.0.0.1:9000 or https://s3.example.com'})
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new HolyshipError('USAGE', `invalid S3 endpoint URL: the scheme must be http or https`)
  if (url.username || url.password) {
    throw new HolyshipError('USAGE', 'credentials do not belong in the endpoint URL', {hint: 'use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE'})
  }
  if (url.search || url.hash) throw new HolyshipError('USAGE', 'the S3 endpoint URL must not have a query string or fragment')
  return endpoint
}

export async function addRemote(opts: {name: string; url: string; endpoint?: string; region?: string; file?: string}): Promise<RemoteRecord> {
  checkName(opts.name)
  const {bucket, prefix} = (await s3Module()).parseS3Url(opts.url)
  if (opts.endpoint !== undefined) checkEndpointUrl(opts.endpoint)
  const file = opts.file ?? defaultRemotesFile()
  const data = await readRemotes(file)
  if (Object.prototype.hasOwnProperty.call(data.remotes, opts.name)) {
    throw new HolyshipError('REMOTE_EXISTS', `a remote named ${opts.name} already exists (${data.remotes[opts.name].url})`, {
      hint: 'remove it first with `holyship remote remove`',
    })
  }
  const rec: Omit<RemoteRecord, 'name'> = {
    url: `s3://${bucket}${prefix ? `/${prefix}` : ''}`,
    ...(opts.endpoint !== undefined ? {endpoint: opts.endpoint} : {}),
    ...(opts.region !== undefined ? {region: opts.region} : {}),
  }
  data.remotes[opts.name] = rec
  await writeRemotes(file, {version: 1, remotes: data.remotes})
  return {name: opts.name, ...rec}
}

export async function listRemotes(opts: {file?: string} = {}): Promise<RemoteRecord[]> {
  const data = await readRemotes(opts.file ?? defaultRemotesFile())
  return Object.keys(data.remotes)
    .sort()
    .map((name) => ({name, ...data.remotes[name]}))
}

export async function removeRemote(opts: {name: string; file?: string}): Promise<RemoteRecord> {
  const file = opts.file ?? defaultRemotesFile()
  const data = await readRemotes(file)
  if (!Object.prototype.hasOwnProperty.call(data.remotes, opts.name)) {
    throw new HolyshipError('REMOTE_NOT_FOUND', `no remote named ${JSON.stringify(opts.name)}`, {hint: 'see `holyship remote list`'})
  }
  const rec = {name: opts.name, ...data.remotes[opts.name]}
  delete data.remotes[opts.name]
  await writeRemotes(file, {version: 1, remotes: data.remotes})
  return rec
}

export interface RemoteSpec {
  /** a name from `remote add`, or an s3://BUCKET[/PREFIX] URL */
  remote: string
  /** overrides the remote's stored endpoint; default: the SDK's AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL */
  endpoint?: string
  region?: string
  /** remotes file (default: defaultRemotesFile()) */
  remotesFile?: string
}

/** Resolve a remote name or URL to its bucket, prefix, endpoint and region. */
export async function resolveRemote(spec: RemoteSpec): Promise<{name?: string; bucket: string; prefix: string; endpoint?: string; region?: string}> {
  const ref = spec.remote.trim()
  if (spec.endpoint !== undefined) checkEndpointUrl(spec.endpoint)
  const {parseS3Url} = await s3Module()
  if (/^s3:\/\//i.test(ref)) {
    const {bucket, prefix} = parseS3Url(ref)
    return {bucket, prefix, endpoint: spec.endpoint, region: spec.region}
  }
  if (!NAME_RE.test(ref)) {
    throw new HolyshipError('USAGE', `${JSON.stringify(ref)} is neither a remote name nor an s3://BUCKET[/PREFIX] URL`)
  }
  const data = await readRemotes(spec.remotesFile ?? defaultRemotesFile())
  if (!Object.prototype.hasOwnProperty.call(data.remotes, ref)) {
    throw new HolyshipError('REMOTE_NOT_FOUND', `no remote named ${JSON.stringify(ref)}`, {
      hint: 'add it with `holyship remote add NAME s3://BUCKET[/PREFIX]`, or give an s3:// URL',
    })
  }
  const rec = data.remotes[ref]
  const {bucket, prefix} = parseS3Url(rec.url)
  return {name: ref, bucket, prefix, endpoint: spec.endpoint ?? rec.endpoint, region: spec.region ?? rec.region}
}

export interface RemoteHandle {
  /** RetryBackend(LimitBackend(S3Backend)) */
  backend: Backend
  /** s3://bucket/prefix */
  location: string
  /** the endpoint as shown to users (never with credentials) */
  endpointName: string
  /** the remote's name when given by name */
  name?: string
  /**
   * The catalogue namespace (used as the catalogue's repo_id) under which this remote's index
   * files and snapshots are cached; distinct from any repository id.
   */
  namespace: string
  close(): Promise<void>
}

export interface OpenRemoteOptions extends RemoteSpec {
  /** concurrent requests (default 4) */
  parallel?: number
  /** tries per request, including the first (default 6) */
  attempts?: number
  /** tests: wrap the raw S3 backend (fault injection) */
  wrapBackend?: (b: Backend) => Backend
  /** tests: backoff between retries */
  retryBaseDelayMs?: number
}

export async function openRemote(opts: OpenRemoteOptions): Promise<RemoteHandle> {
  const r = await resolveRemote(opts)
  const parallel = opts.parallel ?? 4
  if (!Number.isInteger(parallel) || parallel < 1 || parallel > 256) throw new HolyshipError('USAGE', `--parallel must be an integer from 1 to 256, not ${parallel}`)
  // package.json supports Node 20: the SDK's 9-line "node >= 22 from 2027" notice on every
  // command is noise the user cannot act on (still shown when the variable is set otherwise)
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true'
  const {S3Backend} = await s3Module()
  const s3 = new S3Backend({bucket: r.bucket, prefix: r.prefix, endpoint: r.endpoint, region: r.region})
  const inner = opts.wrapBackend ? opts.wrapBackend(s3) : s3
  const backend = new RetryBackend(new LimitBackend(inner, parallel), {
    attempts: opts.attempts,
    onRetry: ({op, key, attempt, delayMs, error}) => debug('%s %s: retry %d in %d ms after: %s', op, key, attempt, delayMs, (error as Error)?.message ?? error),
    ...(opts.retryBaseDelayMs !== undefined ? {baseDelayMs: opts.retryBaseDelayMs} : {}),
  })
  return {
    backend,
    location: s3.location,
    endpointName: s3.endpointName,
    ...(r.name ? {name: r.name} : {}),
    namespace: `remote:${s3.endpointName}|${s3.location}`,
    close: () => s3.close(),
  }
}
