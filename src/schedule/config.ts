/**
 * What the scheduler backs up: containers labelled `holyship.schedule=CRON` (labels are read
 * again before every run, so a container started later, or relabelled, needs no restart), and
 * containers and standalone volumes named in a JSON config file.
 *
 * Labels (and the same keys in the config file):
 *   holyship.schedule   cron, 5 fields or 6 with seconds first
 *   holyship.keep       retention after each snapshot, e.g. last=3,daily=7,weekly=4
 *   holyship.to         a remote (name or s3:// URL): push each snapshot there
 *   holyship.stop       true: stop the container while reading instead of pausing it
 *   holyship.pre        command run in the container (sh -c) before; non-zero aborts the run
 *   holyship.post       command run in the container (sh -c) after
 *
 * Config file (JSON; `--config FILE`, `$HOLYSHIP_SCHEDULE_CONFIG`, or
 * `$XDG_CONFIG_HOME/holyship/schedule.json` when it exists):
 *   {
 *     "webhook": {"url": "https://hooks.example/x", "onSuccess": false},
 *     "containers": {"db": {"schedule": "0 3 * * *", "keep": "daily=7", "pre": "pg_dumpall > /backup/all.sql"}},
 *     "volumes": {"media": {"schedule": "0 4 * * 0", "keep": "weekly=8", "to": "offsite"}},
 *     "prune": {"schedule": "0 5 * * 0", "graceMinutes": 60},
 *     "lockWaitSeconds": 600, "hookTimeoutSeconds": 3600, "rescanSeconds": 10, "concurrency": 1
 *   }
 * For a container named in both, its labels win key by key.
 */
import {promises as fsp} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {ContainerInfo} from 'dockerode'
import {Engine} from '../docker/engine.js'
import {HolyshipError} from '../errors.js'
import {CronSchedule, parseCron} from './cron.js'
import {KeepPolicy, parseKeep} from './retention.js'

export const LABEL = {
  schedule: 'holyship.schedule',
  keep: 'holyship.keep',
  to: 'holyship.to',
  stop: 'holyship.stop',
  pre: 'holyship.pre',
  post: 'holyship.post',
} as const

export interface TargetSettings {
  schedule?: string
  keep?: string
  to?: string
  stop?: boolean
  pre?: string
  post?: string
}

export interface WebhookConfig {
  url: string
  /** also POST after successful runs (default: failures only) */
  onSuccess: boolean
}

export interface ScheduleConfig {
  /** the file it was read from, if any */
  file?: string
  webhook?: WebhookConfig
  containers: Record<string, TargetSettings>
  volumes: Record<string, Omit<TargetSettings, 'stop' | 'pre' | 'post'>>
  prune?: {schedule: string; graceMinutes?: number}
  lockWaitSeconds: number
  hookTimeoutSeconds: number
  rescanSeconds: number
  /** runs of different targets at once (runs of one target never overlap) */
  concurrency: number
}

/** the longest wait a timer can take, in seconds (2^31-1 ms) */
const MAX_TIMER_SECONDS = 2_147_483

export const EMPTY_CONFIG: ScheduleConfig = {containers: {}, volumes: {}, lockWaitSeconds: 600, hookTimeoutSeconds: 3600, rescanSeconds: 10, concurrency: 1}

export function defaultConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HOLYSHIP_SCHEDULE_CONFIG) return env.HOLYSHIP_SCHEDULE_CONFIG
  const base = env.XDG_CONFIG_HOME && path.isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : path.join(env.HOME || os.homedir(), '.config')
  return path.join(base, 'holyship', 'schedule.json')
}

/**
 * Read and check the config file. An explicit file must exist; the default one may be absent
 * (then only labels count). Any mistake is a USAGE error naming the file and the key.
 */
export async function loadConfig(file?: string): Promise<ScheduleConfig> {
  const explicit = file !== undefined || process.env.HOLYSHIP_SCHEDULE_CONFIG !== undefined
  const f = file ?? defaultConfigPath()
  let text: string
  try {
    text = await fsp.readFile(f, 'utf8')
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    if (code === 'ENOENT' && !explicit) return {...EMPTY_CONFIG}
    if (code === 'ENOENT') throw new HolyshipError('USAGE', `schedule config ${f} does not exist`)
    throw new HolyshipError('USAGE', `cannot read schedule config ${f}: ${(e as Error).message}`)
  }
  return parseConfig(text, f)
}

export function parseConfig(text: string, file = 'config'): ScheduleConfig {
  const bad = (why: string): HolyshipError => new HolyshipError('USAGE', `schedule config ${file}: ${why}`)
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (e) {
    throw bad(`not valid JSON (${(e as Error).message})`)
  }
  if (!isObject(raw)) throw bad('expected a JSON object')
  const known = ['webhook', 'containers', 'volumes', 'prune', 'lockWaitSeconds', 'hookTimeoutSeconds', 'rescanSeconds', 'concurrency']
  for (const k of Object.keys(raw)) if (!known.includes(k)) throw bad(`unknown key "${k}" (known: ${known.join(', ')})`)
  const cfg: ScheduleConfig = {...EMPTY_CONFIG, file, containers: {}, volumes: {}}
  if (raw.webhook !== undefined) {
    const w = typeof raw.webhook === 'string' ? {url: raw.webhook} : raw.webhook
    if (!isObject(w) || typeof w.url !== 'string') throw bad('"webhook" must be a URL or {"url": URL, "onSuccess": true|false}')
    for (const k of Object.keys(w)) if (!['url', 'onSuccess'].includes(k)) throw bad(`webhook: unknown key "${k}"`)
    let u: URL
    try {
      u = new URL(w.url)
    } catch {
      throw bad(`webhook: ${JSON.stringify(w.url)} is not a URL`)
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw bad('webhook: the URL must be http or https')
    if (w.onSuccess !== undefined && typeof w.onSuccess !== 'boolean') throw bad('webhook.onSuccess must be true or false')
    cfg.webhook = {url: w.url, onSuccess: w.onSuccess === true}
  }
  const section = (name: 'containers' | 'volumes', allowed: (keyof TargetSettings)[]): void => {
    const v = raw[name as keyof typeof raw]
    if (v === undefined) return
    if (!isObject(v)) throw bad(`"${name}" must be an object of NAME: settings`)
    for (const [target, s] of Object.entries(v)) {
      const where = `${name}.${target}`
      if (!isObject(s)) throw bad(`${where} must be an object`)
      for (const k of Object.keys(s)) if (!(allowed as string[]).includes(k)) throw bad(`${where}: unknown key "${k}" (known: ${allowed.join(', ')})`)
      const out: TargetSettings = {}
      for (const k of ['schedule', 'keep', 'to', 'pre', 'post'] as const) {
        if (s[k] === undefined) continue
        if (typeof s[k] !== 'string') throw bad(`${where}.${k} must be a string`)
        out[k] = s[k] as string
      }
      if (s.stop !== undefined) {
        if (typeof s.stop !== 'boolean') throw bad(`${where}.stop must be true or false`)
        out.stop = s.stop
      }
      try {
        checkSettings(out)
      } catch (e) {
        throw bad(`${where}: ${(e as Error).message}`)
      }
      ;(cfg[name] as Record<string, TargetSettings>)[target] = out
    }
  }
  section('containers', ['schedule', 'keep', 'to', 'stop', 'pre', 'post'])
  section('volumes', ['schedule', 'keep', 'to'])
  if (raw.prune !== undefined) {
    const p = raw.prune
    if (!isObject(p) || typeof p.schedule !== 'string') throw bad('"prune" must be {"schedule": CRON, "graceMinutes": N}')
    for (const k of Object.keys(p)) if (!['schedule', 'graceMinutes'].includes(k)) throw bad(`prune: unknown key "${k}"`)
    try {
      parseCron(p.schedule)
    } catch (e) {
      throw bad(`prune: ${(e as Error).message}`)
    }
    if (p.graceMinutes !== undefined && !(typeof p.graceMinutes === 'number' && p.graceMinutes >= 0)) throw bad('prune.graceMinutes must be a number ≥ 0')
    cfg.prune = {schedule: p.schedule, ...(p.graceMinutes !== undefined ? {graceMinutes: p.graceMinutes as number} : {})}
  }
  // a timer takes at most 2^31-1 ms (~24.8 days): a longer one fires at once; a hook timeout
  // of 0 would fail every hook
  for (const [k, min] of [['lockWaitSeconds', 0], ['hookTimeoutSeconds', 1], ['rescanSeconds', 1]] as const) {
    const v = raw[k]
    if (v === undefined) continue
    if (typeof v !== 'number' || !(v >= min && v <= MAX_TIMER_SECONDS)) throw bad(`${k} must be a number from ${min} to ${MAX_TIMER_SECONDS} (seconds)`)
    cfg[k] = v
  }
  if (raw.concurrency !== undefined) {
    const c = raw.concurrency
    if (typeof c !== 'number' || !Number.isInteger(c) || c < 1 || c > 64) throw bad('concurrency must be a whole number from 1 to 64')
    cfg.concurrency = c
  }
  return cfg
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** check a settings object's cron and keep rules (USAGE with a one-line message) */
export function checkSettings(s: TargetSettings): {schedule?: CronSchedule; keep?: KeepPolicy} {
  return {
    ...(s.schedule !== undefined ? {schedule: parseCron(s.schedule)} : {}),
    ...(s.keep !== undefined ? {keep: parseKeep(s.keep)} : {}),
  }
}

/** the holyship.* labels of a container as settings (USAGE on a bad holyship.stop) */
export function labelSettings(labels: Record<string, string> | null | undefined): TargetSettings {
  const l = labels ?? {}
  const out: TargetSettings = {}
  if (l[LABEL.schedule] !== undefined) out.schedule = l[LABEL.schedule]
  if (l[LABEL.keep] !== undefined) out.keep = l[LABEL.keep]
  if (l[LABEL.to] !== undefined && l[LABEL.to].trim() !== '') out.to = l[LABEL.to].trim()
  if (l[LABEL.pre] !== undefined && l[LABEL.pre].trim() !== '') out.pre = l[LABEL.pre]
  if (l[LABEL.post] !== undefined && l[LABEL.post].trim() !== '') out.post = l[LABEL.post]
  if (l[LABEL.stop] !== undefined) {
    const v = l[LABEL.stop].trim().toLowerCase()
    if (['true', '1', 'yes', 'on'].includes(v)) out.stop = true
    else if (['false', '0', 'no', 'off', ''].includes(v)) out.stop = false
    else throw new HolyshipError('USAGE', `label ${LABEL.stop}=${JSON.stringify(l[LABEL.stop])}: expected true or false`)
  }
  return out
}

export type TargetKind = 'container' | 'volume' | 'prune'

export interface Target {
  /** `container:NAME`, `volume:NAME`, or `repository:prune` */
  key: string
  kind: TargetKind
  name: string
  /** the container's id when it exists on the engine */
  containerId?: string
  /** container state when discovered */
  running?: boolean
  settings: TargetSettings
  schedule: CronSchedule
  keep?: KeepPolicy
  /** where the settings come from */
  source: 'label' | 'config' | 'label+config'
  /** a container named in the config that is not on the engine (yet) */
  missing?: boolean
  /** prune: grace period */
  graceMs?: number
}

export interface TargetProblem {
  key: string
  error: string
}

const containerName = (c: ContainerInfo): string => (c.Names?.[0] ?? c.Id).replace(/^\//, '')

/** one container's target from its labels and the config, or a problem (bad label values) */
export function containerTarget(
  name: string,
  id: string | undefined,
  labels: Record<string, string> | null | undefined,
  config: ScheduleConfig,
  running?: boolean,
): Target | TargetProblem | undefined {
  const key = `container:${name}`
  const fromConfig = config.containers[name]
  let fromLabels: TargetSettings
  try {
    fromLabels = labelSettings(labels)
  } catch (e) {
    return {key, error: (e as Error).message}
  }
  const settings: TargetSettings = {...(fromConfig ?? {}), ...fromLabels}
  if (settings.schedule === undefined) return undefined
  let checked
  try {
    checked = checkSettings(settings)
  } catch (e) {
    return {key, error: (e as Error).message}
  }
  const labelled = Object.keys(fromLabels).length > 0
  return {
    key,
    kind: 'container',
    name,
    ...(id ? {containerId: id} : {missing: true}),
    ...(running !== undefined ? {running} : {}),
    settings,
    schedule: checked.schedule!,
    ...(checked.keep ? {keep: checked.keep} : {}),
    source: labelled && fromConfig ? 'label+config' : labelled ? 'label' : 'config',
  }
}

/**
 * Every target: labelled containers, containers and volumes of the config, and the prune
 * job. Targets whose labels are wrong are returned as problems (the others still run).
 */
export async function discoverTargets(engine: Engine | undefined, config: ScheduleConfig): Promise<{targets: Target[]; problems: TargetProblem[]; containers: ContainerInfo[]}> {
  const targets: Target[] = []
  const problems: TargetProblem[] = []
  const containers = engine ? await engine.listContainers(true) : []
  const seen = new Set<string>()
  for (const c of containers) {
    if (c.Labels?.['holyship.helper']) continue
    const name = containerName(c)
    seen.add(name)
    const t = containerTarget(name, c.Id, c.Labels, config, c.State === 'running')
    if (!t) continue
    if ('error' in t) problems.push(t)
    else targets.push(t)
  }
  for (const name of Object.keys(config.containers)) {
    if (seen.has(name)) continue
    const t = containerTarget(name, undefined, {}, config)
    if (t && !('error' in t)) targets.push(t)
  }
  for (const [name, s] of Object.entries(config.volumes)) {
    if (s.schedule === undefined) continue
    const checked = checkSettings(s)
    targets.push({key: `volume:${name}`, kind: 'volume', name, settings: s, schedule: checked.schedule!, ...(checked.keep ? {keep: checked.keep} : {}), source: 'config'})
  }
  if (config.prune) {
    targets.push({
      key: 'repository:prune',
      kind: 'prune',
      name: 'prune',
      settings: {schedule: config.prune.schedule},
      schedule: parseCron(config.prune.schedule),
      source: 'config',
      ...(config.prune.graceMinutes !== undefined ? {graceMs: config.prune.graceMinutes * 60_000} : {}),
    })
  }
  targets.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
  return {targets, problems, containers}
}

export interface UncoveredMount {
  type: 'volume' | 'bind'
  /** volume name or host path */
  source: string
  /** containers using it (name:destination) */
  usedBy: string[]
}

/**
 * Every volume and bind mount on the engine that no schedule covers: mounts of containers
 * without a schedule (unless the volume has its own), and volumes no container uses and no
 * schedule names. The Docker socket a holyship container mounts is not data: left out.
 */
export async function uncoveredMounts(engine: Engine, containers: ContainerInfo[], targets: Target[]): Promise<UncoveredMount[]> {
  const coveredContainers = new Set(targets.filter((t) => t.kind === 'container').map((t) => t.name))
  const coveredVolumes = new Set(targets.filter((t) => t.kind === 'volume').map((t) => t.name))
  const out = new Map<string, UncoveredMount>()
  const usedVolumes = new Set<string>()
  // a mount snapshotted with any scheduled container is covered, whoever else uses it
  const covered = new Set<string>()
  for (const c of containers) {
    if (!coveredContainers.has(containerName(c))) continue
    for (const m of c.Mounts ?? []) covered.add(`${m.Type}:${m.Type === 'volume' ? m.Name : m.Source}`)
  }
  for (const c of containers) {
    if (c.Labels?.['holyship.helper']) continue
    const name = containerName(c)
    for (const m of c.Mounts ?? []) {
      const type = m.Type as string
      if (type !== 'volume' && type !== 'bind') continue
      const source = type === 'volume' ? (m.Name ?? '') : m.Source
      if (type === 'volume') usedVolumes.add(source)
      if (coveredContainers.has(name) || covered.has(`${type}:${source}`)) continue
      if (type === 'volume' && coveredVolumes.has(source)) continue
      if (type === 'bind' && /(^|\/)docker\.sock$/.test(source)) continue
      const k = `${type}:${source}`
      const entry = out.get(k) ?? {type, source, usedBy: []}
      entry.usedBy.push(`${name}:${m.Destination}`)
      out.set(k, entry)
    }
  }
  let volumes: {Name: string}[]
  try {
    volumes = ((await engine.docker.listVolumes()).Volumes ?? []) as {Name: string}[]
  } catch (e) {
    throw engine.mapError('list volumes', e)
  }
  for (const v of volumes) {
    if (usedVolumes.has(v.Name) || coveredVolumes.has(v.Name)) continue
    out.set(`volume:${v.Name}`, {type: 'volume', source: v.Name, usedBy: []})
  }
  return [...out.values()].sort((a, b) => (a.type + a.source < b.type + b.source ? -1 : 1))
}
