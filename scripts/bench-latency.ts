/**
 * The latency targets of GitHub issue 6, measured on the whole CLI process (`npm run bench --
 * --latency`, see scripts/bench.ts):
 *
 *   - `holyship list`, `show` and `diff` answer in under 200 ms with 1,000 snapshots in the
 *     catalogue;
 *   - `holyship push` of a snapshot the remote already has sends zero packs, in under a second,
 *     against s3rver.
 *
 * The catalogue is built cheaply: snapshots are written straight into a repository with the
 * Archiver (no Docker engine), half of them container snapshots (an image tree, a filesystem
 * diff with whiteouts and a volume), half volume snapshots, round robin over 20 containers and
 * volumes, each a small change of the one before; then `holyship catalogue rebuild` fills the
 * catalogue. This module only builds and times; bench.ts owns options, output and the JSON.
 */
import {createCipheriv, createHash} from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {Archiver, SourceEntry} from '../src/archive/archiver.js'
import {LocalBackend} from '../src/backend/local.js'
import {ArchiveStats, ImageRecord, MountRecord, SnapshotManifest} from '../src/repo/format.js'
import {Repository} from '../src/repo/repository.js'
import {S3RVER_CREDENTIALS, startS3Server} from '../test/harness/s3.js'

/** the targets of the issue (ms, whole process, median) */
export const LATENCY_TARGETS = {inspectMs: 200, noopPushMs: 1000}

export interface LatencyFixture {
  repo: string
  snapshots: number
  /** container names (`ctr-N`) and volume names (`vol-N`) */
  targets: string[]
  files: number
  buildMs: number
}

const MTIME: [number, number] = [1_700_000_000, 0]

/** `size` bytes, the same for the same seed (incompressible, so every version is a new chunk) */
function bytes(seed: string, size: number): Buffer {
  const key = createHash('sha256').update(seed).digest()
  return createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16)).update(Buffer.alloc(size))
}

const dir = (path: string): SourceEntry => ({path, type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: MTIME})
const file = (path: string, data: Buffer): SourceEntry => ({
  path,
  type: 'file',
  mode: 0o644,
  uid: 0,
  gid: 0,
  mtime: MTIME,
  size: data.length,
  content: (async function* () {
    yield data
  })(),
})

async function archive(repo: Repository, entries: SourceEntry[]): Promise<{tree: string; stats: ArchiveStats}> {
  const a = new Archiver(repo)
  await a.add(dir(''))
  for (const e of entries) await a.add(e)
  return {tree: await a.finish(), stats: a.stats}
}

/**
 * A volume of `dirs` directories of `perDir` small files; generation g of target t changes
 * about a tenth of its files (each file gets a new version every 10 generations, staggered).
 */
function volumeEntries(t: number, g: number, dirs: number, perDir: number): SourceEntry[] {
  const out: SourceEntry[] = []
  for (let d = 0; d < dirs; d++) {
    out.push(dir(`d${d}`))
    for (let f = 0; f < perDir; f++) {
      const j = d * perDir + f
      const version = Math.floor((g + ((j * 7) % 10)) / 10)
      out.push(file(`d${d}/f${f}.dat`, bytes(`t${t}/${j}/v${version}`, 512 + ((j * 37) % 8) * 256)))
    }
  }
  return out
}

/** a container's writable layer: a few files in /etc and /var/log, three deleted paths */
function fsDiffEntries(t: number, g: number): SourceEntry[] {
  const out: SourceEntry[] = [dir('etc'), dir('var'), dir('var/log')]
  for (let f = 0; f < 20; f++) out.push(file(`etc/conf${f}`, bytes(`fs${t}/etc/${f}/${Math.floor((g + f) / 5)}`, 300)))
  out.push(file('var/log/app.log', bytes(`fs${t}/log/${g}`, 2000)))
  for (const gone of ['etc/motd', 'etc/issue', 'var/cache']) out.push({path: gone, type: 'whiteout', mode: 0, uid: 0, gid: 0, mtime: MTIME})
  return out
}

/**
 * Write `count` snapshots into a new repository at `dir` (round robin over `targets` targets,
 * one minute apart, oldest first). Returns what was made; the catalogue is left to the CLI.
 */
export async function buildLatencyFixture(repoDir: string, opts: {count?: number; targets?: number; dirs?: number; perDir?: number} = {}): Promise<LatencyFixture> {
  const t0 = performance.now()
  const count = opts.count ?? 1000
  const targets = opts.targets ?? 20
  const dirs = opts.dirs ?? 4
  const perDir = opts.perDir ?? 25
  const repo = await Repository.init(new LocalBackend(repoDir))
  const imageFile = bytes('image', 64 * 1024)
  const image = await archive(repo, [file('image.tar', imageFile)])
  const imageRecord: ImageRecord = {id: `sha256:${createHash('sha256').update('image').digest('hex')}`, repoTags: ['bench/latency:1'], tree: image.tree, size: imageFile.length}
  const parents = new Map<number, string>()
  const start = Date.parse('2024-01-01T00:00:00Z')
  for (let i = 0; i < count; i++) {
    const t = i % targets
    const g = Math.floor(i / targets)
    const volume = `vol-${t}`
    const vol = await archive(repo, volumeEntries(t, g, dirs, perDir))
    const mount: MountRecord = {type: 'volume', source: volume, destination: '/data', readOnly: false, tree: vol.tree, stats: vol.stats}
    const container = t % 2 === 1
    let fsDiff: {tree: string; stats: ArchiveStats} | undefined
    if (container) fsDiff = await archive(repo, fsDiffEntries(t, g))
    const bytesTotal = vol.stats.bytes + (fsDiff?.stats.bytes ?? 0)
    const manifest: SnapshotManifest = {
      version: 1,
      kind: container ? 'container' : 'volume',
      time: new Date(start + i * 60_000).toISOString(),
      host: os.hostname(),
      tags: g % 10 === 0 ? ['daily'] : [],
      consistency: container ? 'pause' : 'live',
      reader: 'direct',
      ...(container
        ? {
            container: {
              id: createHash('sha256').update(`ctr-${t}`).digest('hex'),
              name: `/ctr-${t}`,
              config: {Image: 'bench/latency:1', Env: ['A=1', 'B=2'], Cmd: ['sleep', 'infinity'], Labels: {'holyship.schedule': '0 3 * * *'}},
              hostConfig: {RestartPolicy: {Name: 'unless-stopped'}},
              networks: [{name: 'bridge', aliases: []}],
              image: imageRecord,
              fsDiff: fsDiff!.tree,
              fsDiffStats: fsDiff!.stats,
              state: {running: true, paused: false},
            },
          }
        : {}),
      mounts: [mount],
      stats: {bytes: bytesTotal, newBytes: vol.stats.newBytes + (fsDiff?.stats.newBytes ?? 0), files: vol.stats.files + (fsDiff?.stats.files ?? 0), durationMs: 100},
      ...(parents.has(t) ? {parent: parents.get(t)} : {}),
    }
    parents.set(t, await repo.saveSnapshot(manifest))
  }
  const names = Array.from({length: targets}, (_, t) => (t % 2 === 1 ? `ctr-${t}` : `vol-${t}`))
  return {repo: repoDir, snapshots: count, targets: names, files: dirs * perDir, buildMs: performance.now() - t0}
}

// ------------------------------------------------------------------------------------------------
// the phase

/** one timed process, as bench.ts's timed() reports it */
export interface TimedRun {
  code: number
  stdout: string
  stderr: string
  wallMs: number
  cpuS: number
  maxRssKb: number
  load1: number
}

export interface LatencyDeps {
  /** the private build's bin/run.js */
  bin: string
  /** a scratch directory (removed by bench.ts) */
  work: string
  /** timed runs of each command (medians are reported) */
  runs: number
  timed: (cmd: string, args: string[], opts: {env?: NodeJS.ProcessEnv}) => Promise<TimedRun>
  say: (line: string) => void
  note: (line: string) => void
  /** with --profile: one `node --cpu-prof` run of a command, summarised */
  profiled?: (args: string[], env: NodeJS.ProcessEnv, label: string, what: string) => Promise<unknown>
}

export interface LatencySample {
  command: string
  run: number
  wallMs: number
  cpuMs: number
  maxRssKb: number
  load1: number
  code: number
}

export interface LatencyRow {
  command: string
  /** what the row measures, as printed */
  label: string
  medianWallMs: number
  minWallMs: number
  maxWallMs: number
  medianCpuMs: number
  /** the target (ms) for the rows the issue sets one for */
  targetMs?: number
  pass?: boolean
}

export interface LatencyResults {
  fixture: LatencyFixture
  catalogueRebuildMs: number
  remoteFillMs?: number
  runs: number
  samples: LatencySample[]
  rows: LatencyRow[]
  /** every no-op push reported packsSent 0 and no snapshot sent */
  noopPushSentNothing?: boolean
  profiles?: unknown[]
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  const h = Math.floor(s.length / 2)
  return s.length === 0 ? NaN : s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2
}

/**
 * Build the 1,000-snapshot repository, fill the catalogue with `holyship catalogue rebuild`,
 * then time (interleaved, `runs` times each) `list`, `show`, `diff`, and a push of a snapshot an
 * s3rver remote already has (after one push of everything), plus `node -e 0` and `holyship
 * --version` as the fixed cost every command pays. Exits on the first failing command.
 */
export async function latencyPhase(d: LatencyDeps, save: (r: LatencyResults) => void): Promise<LatencyResults> {
  const dir = path.join(d.work, 'latency')
  fs.mkdirSync(dir, {recursive: true})
  d.say('\n== latency: list, show, diff with 1,000 snapshots; push of a snapshot the remote already has')
  d.note('writing 1,000 snapshots into a repository (no Docker engine)')
  const fixture = await buildLatencyFixture(path.join(dir, 'repo'))
  d.note(`fixture: ${fixture.snapshots} snapshots of ${fixture.targets.length} containers and volumes in ${(fixture.buildMs / 1000).toFixed(1)} s`)
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    HOLYSHIP_REPO: fixture.repo,
    HOLYSHIP_CATALOGUE: path.join(dir, 'catalogue.sqlite3'),
    HOLYSHIP_REMOTES: path.join(dir, 'remotes.json'),
    AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
    AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
    AWS_REGION: 'us-east-1',
  }
  for (const k of ['AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_S3', 'AWS_PROFILE', 'HOLYSHIP_QUIET', 'HOLYSHIP_PASSWORD_FILE', 'DEBUG']) delete env[k]
  // Node reads and parses every certificate of NODE_EXTRA_CA_CERTS when it starts, whatever the
  // program: with the system bundle that is ~80 ms of CPU per process on this kind of machine,
  // more than holyship's own work. The commands are timed without it; a `node -e 0` row with it
  // shows what it adds where it is set.
  const extraCaCerts = env.NODE_EXTRA_CA_CERTS
  delete env.NODE_EXTRA_CA_CERTS
  const cli = async (args: string[]): Promise<TimedRun> => {
    const r = await d.timed(process.execPath, [d.bin, ...args], {env})
    if (r.code !== 0) throw new Error(`holyship ${args.join(' ')} exited ${r.code}:\n${(r.stderr || r.stdout).trim().split('\n').slice(-20).join('\n')}`)
    return r
  }

  const rebuild = await cli(['catalogue', 'rebuild', '--json'])
  const rebuilt = JSON.parse(rebuild.stdout) as {snapshots: number}
  if (rebuilt.snapshots !== fixture.snapshots) throw new Error(`catalogue rebuild saw ${rebuilt.snapshots} snapshots, not ${fixture.snapshots}`)
  const container = [...fixture.targets].reverse().find((t) => t.startsWith('ctr-'))!
  const volume = fixture.targets.find((t) => t.startsWith('vol-'))!
  const ofVolume = JSON.parse((await cli(['list', '--volume', volume, '--json'])).stdout) as {id: string}[]

  const results: LatencyResults = {fixture, catalogueRebuildMs: Math.round(rebuild.wallMs), runs: d.runs, samples: [], rows: []}
  const commands: {command: string; label: string; args: string[]; env?: NodeJS.ProcessEnv; targetMs?: number; check?: (r: TimedRun) => void}[] = [
    {command: 'node', label: '`node -e 0` (no holyship: the floor)', args: ['-e', '0']},
    ...(extraCaCerts ? [{command: 'node-ca', label: '`node -e 0` with NODE_EXTRA_CA_CERTS (not used below)', args: ['-e', '0'], env: {...env, NODE_EXTRA_CA_CERTS: extraCaCerts}}] : []),
    {command: 'version', label: '`holyship --version` (CLI start)', args: ['--version']},
    {
      command: 'list',
      label: `\`holyship list\` (${fixture.snapshots} rows)`,
      args: ['list'],
      targetMs: LATENCY_TARGETS.inspectMs,
      check: (r) => {
        if (r.stdout.trim().split('\n').length !== fixture.snapshots + 1) throw new Error(`holyship list printed ${r.stdout.trim().split('\n').length} lines`)
      },
    },
    {command: 'show', label: `\`holyship show latest:${container}\``, args: ['show', `latest:${container}`], targetMs: LATENCY_TARGETS.inspectMs},
    {
      command: 'diff',
      label: `\`holyship diff\` first vs latest of ${volume}`,
      args: ['diff', ofVolume[0].id, `latest:${volume}`],
      targetMs: LATENCY_TARGETS.inspectMs,
    },
  ]
  const node = (c: (typeof commands)[number]): boolean => c.command.startsWith('node')
  const sample = async (c: (typeof commands)[number], run: number): Promise<TimedRun> => {
    const r = node(c) ? await d.timed(process.execPath, c.args, {env: c.env ?? env}) : await cli(c.args)
    c.check?.(r)
    results.samples.push({command: c.command, run, wallMs: Math.round(r.wallMs * 10) / 10, cpuMs: Math.round(r.cpuS * 1000), maxRssKb: r.maxRssKb, load1: r.load1, code: r.code})
    return r
  }
  // one untimed round (page cache, catalogue WAL), then the timed rounds, order rotating
  for (const c of commands) await (node(c) ? d.timed(process.execPath, c.args, {env: c.env ?? env}) : cli(c.args))
  for (let run = 0; run < d.runs; run++) {
    for (let i = 0; i < commands.length; i++) await sample(commands[(i + run) % commands.length], run)
  }
  save(results)

  // push: a remote that holds all 1,000 snapshots, then a push of one of them
  d.note('starting s3rver and pushing the 1,000 snapshots once (the remote then has them all)')
  const s3 = await startS3Server('holyship-latency')
  try {
    const url = `s3://${s3.bucket}/latency`
    const fill = await cli(['push', '--to', url, '--endpoint', s3.endpoint, '--parallel', '8', '--json'])
    const filled = JSON.parse(fill.stdout) as {snapshotsSent: string[]}
    if (filled.snapshotsSent.length !== fixture.snapshots) throw new Error(`the first push sent ${filled.snapshotsSent.length} snapshots, not ${fixture.snapshots}`)
    results.remoteFillMs = Math.round(fill.wallMs)
    let sentNothing = true
    const noop = (r: TimedRun): void => {
      const p = JSON.parse(r.stdout) as {packsSent: number; snapshotsSent: string[]; indexFilesSent: number}
      if (p.packsSent !== 0 || p.snapshotsSent.length !== 0 || p.indexFilesSent !== 0) sentNothing = false
    }
    const pushes: (typeof commands)[number][] = [
      {command: 'push', label: `\`holyship push latest:${container}\` (the remote has it)`, args: ['push', `latest:${container}`, '--to', url, '--endpoint', s3.endpoint, '--json'], targetMs: LATENCY_TARGETS.noopPushMs, check: noop},
      {command: 'push-all', label: '`holyship push` (every snapshot; the remote has them all)', args: ['push', '--to', url, '--endpoint', s3.endpoint, '--json'], check: noop},
    ]
    commands.push(...pushes)
    for (const c of pushes) await cli(c.args)
    for (let run = 0; run < d.runs; run++) {
      for (let i = 0; i < pushes.length; i++) await sample(pushes[(i + run) % pushes.length], run)
    }
    results.noopPushSentNothing = sentNothing
  } finally {
    await s3.stop()
  }

  for (const c of commands) {
    const xs = results.samples.filter((s) => s.command === c.command)
    if (xs.length === 0) continue
    const wall = median(xs.map((s) => s.wallMs))
    const row: LatencyRow = {
      command: c.command,
      label: c.label,
      medianWallMs: Math.round(wall),
      minWallMs: Math.round(Math.min(...xs.map((s) => s.wallMs))),
      maxWallMs: Math.round(Math.max(...xs.map((s) => s.wallMs))),
      medianCpuMs: Math.round(median(xs.map((s) => s.cpuMs))),
    }
    if (c.targetMs !== undefined) {
      row.targetMs = c.targetMs
      row.pass = wall < c.targetMs && (c.command !== 'push' || results.noopPushSentNothing === true)
    }
    results.rows.push(row)
  }
  save(results)

  const load = median(results.samples.map((s) => s.load1))
  d.say(`\n${d.runs} runs each, interleaved; whole process, wall and CPU (user+sys) medians; load average ~${load.toFixed(1)} on ${os.cpus().length} cores`)
  if (extraCaCerts) d.say(`  (holyship ran without NODE_EXTRA_CA_CERTS=${extraCaCerts}: see the second row)`)
  d.say(`  ${'command'.padEnd(62)} ${'wall'.padStart(8)} ${'(min-max)'.padStart(13)} ${'cpu'.padStart(8)}   target`)
  for (const r of results.rows) {
    const verdict = r.targetMs === undefined ? '' : `< ${r.targetMs} ms ${r.pass ? 'PASS' : 'FAIL'}`
    d.say(`  ${r.label.padEnd(62)} ${`${r.medianWallMs} ms`.padStart(8)} ${`(${r.minWallMs}-${r.maxWallMs})`.padStart(13)} ${`${r.medianCpuMs} ms`.padStart(8)}   ${verdict}`)
  }
  if (results.noopPushSentNothing !== undefined) d.say(`  no-op pushes sent ${results.noopPushSentNothing ? 'nothing (0 packs, 0 index files, 0 manifests)' : 'SOMETHING: FAIL'}`)

  if (d.profiled) {
    results.profiles = [
      await d.profiled(['list'], env, 'latency-list', `holyship list (${fixture.snapshots} snapshots)`),
      await d.profiled(['show', `latest:${container}`], env, 'latency-show', 'holyship show'),
    ]
    save(results)
  }
  return results
}
