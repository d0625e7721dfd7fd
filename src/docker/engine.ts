/**
 * The narrow interface holyship uses of a Docker engine. Every call is logged under the
 * `holyship:docker` debug namespace, and engine errors are mapped to the error taxonomy here,
 * once.
 *
 * The calls a snapshot makes (ping, info, inspect, pause, unpause, list, changes, and the tar
 * streams of export, archive and image save) go straight to a local engine's unix socket over
 * node:http: dockerode takes ~100-300 ms of CPU just to load (it pulls in ssh2 and gRPC), more
 * than a whole unchanged snapshot should cost. dockerode is loaded on first use only, for
 * uploads (put archive, load), creating and changing containers, and for engines not reached
 * over a unix socket (TCP, TLS, SSH).
 */
import {existsSync} from 'node:fs'
import * as http from 'node:http'
import {createRequire} from 'node:module'
import * as os from 'node:os'
import * as path from 'node:path'
import {Readable} from 'node:stream'
import debugFactory from 'debug'
import type Docker from 'dockerode'
import {HolyshipError} from '../errors.js'

const debug = debugFactory('holyship:docker')
const requireCjs = createRequire(import.meta.url)

/* eslint-disable @typescript-eslint/no-explicit-any */
export type ContainerInspect = Docker.ContainerInspectInfo & {GraphDriver?: {Name: string; Data: Record<string, string>}}

export interface Change {
  Path: string
  /** 0 modified, 1 added, 2 deleted */
  Kind: 0 | 1 | 2
}

const isOk = (res: http.IncomingMessage): boolean => (res.statusCode ?? 0) >= 200 && (res.statusCode ?? 0) < 300

/** a response's whole body as text */
function readText(res: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = []
    res.on('data', (c: Buffer) => parts.push(c))
    res.on('error', reject)
    res.on('end', () => resolve(Buffer.concat(parts).toString('utf8')))
  })
}

/** a body as JSON, or as the text it is (ping's "OK", some errors); undefined when empty */
function bodyOf(text: string): unknown {
  try {
    return text === '' ? undefined : JSON.parse(text)
  } catch {
    return text
  }
}

/** the error of a non-2xx answer, shaped like docker-modem's (statusCode, json) */
function engineError(res: http.IncomingMessage, text: string): Error {
  const status = res.statusCode ?? 0
  const body = bodyOf(text)
  const message = (body as {message?: string} | undefined)?.message ?? text
  return Object.assign(new Error(`(HTTP code ${status}) unexpected - ${message} `), {statusCode: status, json: body})
}

export class Engine {
  readonly host: string
  private dockerode?: Docker
  /** the engine's unix socket, when it is reached over one: the light client's way in */
  private readonly socketPath?: string
  private infoCache?: Promise<EngineInfo>

  /** `host` like DOCKER_HOST; without it dockerode's default: DOCKER_HOST or the local socket */
  constructor(private readonly explicitHost?: string) {
    this.host = explicitHost ?? process.env.DOCKER_HOST ?? 'unix:///var/run/docker.sock'
    this.socketPath = unixSocketOf(explicitHost)
  }

  /** the dockerode client, loaded on first use */
  get docker(): Docker {
    if (!this.dockerode) {
      const Dockerode = requireCjs('dockerode') as typeof Docker
      this.dockerode = this.explicitHost ? new Dockerode(dockerOptions(this.explicitHost)) : new Dockerode()
    }
    return this.dockerode
  }

  /**
   * One JSON call on the engine's unix socket (undefined body for 204), or through dockerode's
   * `viaDockerode` when there is no socket. Errors look like docker-modem's (statusCode, json),
   * so mapError treats both alike.
   */
  private async json<T>(method: 'GET' | 'POST', urlPath: string, viaDockerode: () => Promise<T>): Promise<T> {
    if (!this.socketPath) return viaDockerode()
    const res = await this.request(method, urlPath)
    const text = await readText(res)
    if (isOk(res)) return bodyOf(text) as T
    throw engineError(res, text)
  }

  /**
   * A GET whose answer is a stream (a tar: export, archive, saved image) on the engine's unix
   * socket, or through dockerode's `viaDockerode` when there is no socket. Resolves with the
   * response once its status is known; an error status is read and thrown as json() does.
   */
  private async stream(urlPath: string, viaDockerode: () => Promise<Readable>): Promise<Readable> {
    if (!this.socketPath) return viaDockerode()
    const res = await this.request('GET', urlPath)
    if (isOk(res)) return res
    throw engineError(res, await readText(res))
  }

  /** a request on the engine's unix socket: its response, once the status line is in */
  private request(method: 'GET' | 'POST', urlPath: string): Promise<http.IncomingMessage> {
    return new Promise((resolve, reject) => {
      const req = http.request({socketPath: this.socketPath, method, path: urlPath, headers: {Host: 'docker'}}, resolve)
      req.on('error', reject)
      req.end()
    })
  }

  /** true when the engine is reached over a local unix socket (its files may be on this host) */
  get isLocalSocket(): boolean {
    return this.host.startsWith('unix://') || this.host.startsWith('/')
  }

  private async call<T>(what: string, fn: () => Promise<T>, notFound?: () => HolyshipError): Promise<T> {
    debug('%s', what)
    try {
      return await fn()
    } catch (e) {
      throw this.mapError(what, e, notFound)
    }
  }

  mapError(what: string, e: unknown, notFound?: () => HolyshipError): Error {
    if (e instanceof HolyshipError) return e
    const err = e as {statusCode?: number; code?: string; message?: string; json?: {message?: string}}
    debug('%s failed: %s', what, err?.message)
    if (err?.code === 'ECONNREFUSED' || err?.code === 'ENOENT' || err?.code === 'EACCES' || err?.code === 'EHOSTUNREACH' || err?.code === 'ETIMEDOUT') {
      return new HolyshipError('DOCKER_UNREACHABLE', `cannot reach the Docker engine at ${this.host} (${err.code})`, {
        hint: 'is dockerd running? set DOCKER_HOST to the engine to use',
        cause: e,
      })
    }
    if (err?.statusCode === 404 && notFound) return notFound()
    const msg = err?.json?.message ?? err?.message ?? String(e)
    return new HolyshipError('DOCKER_FAILED', `docker ${what}: ${msg.trim()}`, {cause: e})
  }

  async ping(): Promise<void> {
    await this.call('ping', () => this.json('GET', '/_ping', () => this.docker.ping()))
  }

  /** docker info; asked once per Engine (what holyship reads of it does not change while it runs) */
  async info(): Promise<EngineInfo> {
    this.infoCache ??= this.call('info', () => this.json<EngineInfo>('GET', '/info', () => this.docker.info()))
    this.infoCache.catch(() => (this.infoCache = undefined))
    return this.infoCache
  }

  async inspectContainer(ref: string): Promise<ContainerInspect> {
    // a reference goes into the request URL: refuse anything that is not a name or an id
    if (!VALID_REF.test(ref)) throw new HolyshipError('CONTAINER_NOT_FOUND', `no container named ${JSON.stringify(ref)} on ${this.host} (not a valid container name)`)
    const id = encodeURIComponent(ref.replace(/^\//, ''))
    return this.call(`inspect container ${ref}`, () => this.json('GET', `/containers/${id}/json`, () => this.docker.getContainer(ref).inspect() as Promise<ContainerInspect>), () =>
      new HolyshipError('CONTAINER_NOT_FOUND', `no container named ${JSON.stringify(ref)} on ${this.host}`),
    )
  }

  /** the container's inspect; undefined when the engine has none by that name or id */
  async findContainer(ref: string): Promise<ContainerInspect | undefined> {
    try {
      return await this.inspectContainer(ref)
    } catch (e) {
      if (e instanceof HolyshipError && e.code === 'CONTAINER_NOT_FOUND') return undefined
      throw e
    }
  }

  async containerExists(ref: string): Promise<boolean> {
    return (await this.findContainer(ref)) !== undefined
  }

  async changes(id: string): Promise<Change[]> {
    const c = encodeURIComponent(id)
    return this.call(`changes ${id.slice(0, 12)}`, async () => (await this.json<Change[] | null>('GET', `/containers/${c}/changes`, async () => (await this.docker.getContainer(id).changes()) as Change[] | null)) ?? [])
  }

  async exportContainer(id: string): Promise<Readable> {
    const c = encodeURIComponent(id)
    return this.call(`export ${id.slice(0, 12)}`, () => this.stream(`/containers/${c}/export`, async () => (await this.docker.getContainer(id).export()) as unknown as Readable))
  }

  /** a tar stream of `path` in the container; a path it does not have is notFound() when given (else DOCKER_FAILED, like any other refusal) */
  async getArchive(id: string, path: string, notFound?: () => HolyshipError): Promise<Readable> {
    const c = encodeURIComponent(id)
    return this.call(
      `get archive ${id.slice(0, 12)}:${path}`,
      () => this.stream(`/containers/${c}/archive?${new URLSearchParams({path})}`, async () => (await this.docker.getContainer(id).getArchive({path})) as unknown as Readable),
      notFound,
    )
  }

  async putArchive(id: string, path: string, tar: Readable): Promise<void> {
    await this.call(`put archive ${id.slice(0, 12)}:${path}`, async () => {
      const res = (await this.docker.getContainer(id).putArchive(tar as any, {path})) as unknown
      if (res && typeof (res as Readable).resume === 'function') {
        await drain(res as Readable)
      }
    })
  }

  async pause(id: string): Promise<void> {
    await this.call(`pause ${id.slice(0, 12)}`, () => this.json('POST', `/containers/${encodeURIComponent(id)}/pause`, () => this.docker.getContainer(id).pause()))
  }

  async unpause(id: string): Promise<void> {
    await this.call(`unpause ${id.slice(0, 12)}`, () => this.json('POST', `/containers/${encodeURIComponent(id)}/unpause`, () => this.docker.getContainer(id).unpause()))
  }

  async stop(id: string, timeoutSeconds?: number): Promise<void> {
    await this.call(`stop ${id.slice(0, 12)}`, () => this.docker.getContainer(id).stop(timeoutSeconds === undefined ? {} : {t: timeoutSeconds}))
  }

  async start(id: string): Promise<void> {
    await this.call(`start ${id.slice(0, 12)}`, () => this.docker.getContainer(id).start())
  }

  async removeContainer(id: string, force = true): Promise<void> {
    await this.call(`remove container ${id.slice(0, 12)}`, () => this.docker.getContainer(id).remove({force, v: false}))
  }

  async createContainer(opts: Docker.ContainerCreateOptions): Promise<string> {
    return this.call(`create container ${opts.name ?? ''}`, async () => (await this.docker.createContainer(opts)).id)
  }

  async inspectImage(ref: string): Promise<Docker.ImageInspectInfo | undefined> {
    try {
      return await this.call(`inspect image ${ref.slice(0, 19)}`, () => this.json('GET', `/images/${encodeURIComponent(ref)}/json`, () => this.docker.getImage(ref).inspect()))
    } catch (e) {
      if (e instanceof HolyshipError && e.code === 'DOCKER_FAILED' && /no such image|not found/i.test(e.message)) return undefined
      throw e
    }
  }

  async saveImage(id: string): Promise<Readable> {
    return this.call(`save image ${id.slice(0, 19)}`, () => this.stream(`/images/${encodeURIComponent(id)}/get`, async () => (await this.docker.getImage(id).get()) as unknown as Readable))
  }

  /** docker load; resolves with the loaded image references once the engine has finished */
  async loadImage(tar: Readable): Promise<string[]> {
    return this.call('load image', async () => {
      const res = (await this.docker.loadImage(tar as any, {quiet: true})) as unknown as Readable
      const body = (await drain(res)).toString('utf8')
      const loaded: string[] = []
      for (const line of body.split('\n')) {
        if (!line.trim()) continue
        let msg: {stream?: string; error?: string; errorDetail?: {message?: string}}
        try {
          msg = JSON.parse(line)
        } catch {
          continue
        }
        if (msg.error || msg.errorDetail) throw new Error(msg.errorDetail?.message ?? msg.error)
        const m = /Loaded image(?: ID)?: (\S+)/.exec(msg.stream ?? '')
        if (m) loaded.push(m[1])
      }
      return loaded
    })
  }

  async removeImage(ref: string): Promise<void> {
    await this.call(`remove image ${ref.slice(0, 19)}`, () => this.docker.getImage(ref).remove({force: false, noprune: false}))
  }

  async inspectVolume(name: string): Promise<Docker.VolumeInspectInfo & {CreatedAt?: string}> {
    if (!VALID_REF.test(name)) throw new HolyshipError('VOLUME_NOT_FOUND', `no volume named ${JSON.stringify(name)} on ${this.host} (not a valid volume name)`)
    const v = encodeURIComponent(name.replace(/^\//, ''))
    return this.call(`inspect volume ${name}`, () => this.json('GET', `/volumes/${v}`, () => this.docker.getVolume(name).inspect()), () =>
      new HolyshipError('VOLUME_NOT_FOUND', `no volume named ${JSON.stringify(name)} on ${this.host}`),
    )
  }

  /** the volume's inspect; undefined when the engine has none of that name */
  async findVolume(name: string): Promise<(Docker.VolumeInspectInfo & {CreatedAt?: string}) | undefined> {
    try {
      return await this.inspectVolume(name)
    } catch (e) {
      if (e instanceof HolyshipError && e.code === 'VOLUME_NOT_FOUND') return undefined
      throw e
    }
  }

  async volumeExists(name: string): Promise<boolean> {
    return (await this.findVolume(name)) !== undefined
  }

  async createVolume(name: string, driver?: string, labels?: Record<string, string>, options?: Record<string, string>): Promise<void> {
    await this.call(`create volume ${name}`, () =>
      this.docker.createVolume({Name: name, Driver: driver ?? 'local', Labels: labels ?? {}, DriverOpts: options ?? {}}),
    )
  }

  async removeVolume(name: string): Promise<void> {
    await this.call(`remove volume ${name}`, () => this.docker.getVolume(name).remove())
  }

  async listVolumes(): Promise<Docker.VolumeInspectInfo[]> {
    return this.call('list volumes', async () => (await this.docker.listVolumes()).Volumes ?? [])
  }

  async listContainers(all = true, filters?: Record<string, string[]>): Promise<Docker.ContainerInfo[]> {
    const q = new URLSearchParams(all ? {all: 'true'} : {})
    if (filters) q.set('filters', JSON.stringify(filters))
    return this.call('list containers', () => this.json('GET', `/containers/json?${q}`, () => this.docker.listContainers({all, ...(filters ? {filters} : {})})))
  }

  async listImages(): Promise<Docker.ImageInfo[]> {
    return this.call('list images', () => this.docker.listImages())
  }

  async inspectNetwork(name: string): Promise<Docker.NetworkInspectInfo | undefined> {
    try {
      return await this.call(`inspect network ${name}`, () => this.json('GET', `/networks/${encodeURIComponent(name)}`, () => this.docker.getNetwork(name).inspect()))
    } catch (e) {
      if (e instanceof HolyshipError && /not found|no such network/i.test(e.message)) return undefined
      throw e
    }
  }

  async createNetwork(opts: Docker.NetworkCreateOptions): Promise<void> {
    await this.call(`create network ${opts.Name}`, () => this.docker.createNetwork(opts))
  }

  async connectNetwork(name: string, container: string, endpoint: Docker.EndpointSettings): Promise<void> {
    await this.call(`connect ${container.slice(0, 12)} to network ${name}`, () => this.docker.getNetwork(name).connect({Container: container, EndpointConfig: endpoint}))
  }

  async removeNetwork(name: string): Promise<void> {
    await this.call(`remove network ${name}`, () => this.docker.getNetwork(name).remove())
  }
}

export interface EngineInfo {
  ID: string
  Name: string
  Driver: string
  DockerRootDir: string
  ServerVersion: string
  /** e.g. `name=seccomp,profile=default`, `name=userns` (user namespace remapping) */
  SecurityOptions?: string[]
}

/**
 * The unix socket an engine is reached over, as dockerode would pick it: `host` (unix:// or a
 * path), else DOCKER_HOST, else ~/.docker/run/docker.sock when it exists, else
 * /var/run/docker.sock. undefined for anything else (TCP, TLS, SSH, npipe): dockerode then.
 */
function unixSocketOf(host: string | undefined): string | undefined {
  const h = host ?? process.env.DOCKER_HOST
  if (h === undefined || h === '' || h === 'unix://') {
    if (h === undefined && process.platform === 'win32') return undefined
    const user = path.join(os.homedir(), '.docker', 'run', 'docker.sock')
    return existsSync(user) ? user : '/var/run/docker.sock'
  }
  if (h.startsWith('unix://')) return h.slice('unix://'.length)
  if (host !== undefined && h.startsWith('/')) return h
  return undefined
}

/** Docker's own rule for container and volume names (and ids): [a-zA-Z0-9][a-zA-Z0-9_.-]* */
const VALID_REF = /^\/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$/

function dockerOptions(host: string): Docker.DockerOptions {
  if (host.startsWith('unix://')) return {socketPath: host.slice('unix://'.length)}
  if (host.startsWith('/')) return {socketPath: host}
  const u = new URL(host.replace(/^tcp:/, 'http:'))
  return {host: u.hostname, port: Number(u.port || 2375), protocol: 'http'}
}

export async function drain(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of stream) parts.push(Buffer.isBuffer(c) ? c : Buffer.from(c))
  return Buffer.concat(parts)
}
