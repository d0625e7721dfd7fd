/**
 * Benchmarks of GitHub issue 6, run with `npm run bench` (scripts/bench.sh installs what is
 * missing and builds first). Everything runs on a private Docker engine from the test harness
 * (test/harness/engine.ts), never the machine's own Docker.
 *
 * Comparison (default): one data set in a named volume mounted by a running busybox container:
 * a Debian root filesystem with Postgres 15 (the harness's postgres rootfs tarball, ~10k
 * entries, ~420 MB) + 150 MB random + 100 MB zeros (`--small`: ~1/10 of it), built once and
 * cached under /var/cache/holyship-bench. For each run (`--runs N`, default 3) the volume is
 * filled afresh from the cache, every tool gets a fresh repository, and the phases run with the
 * tools interleaved (the order rotates from run to run):
 *
 *   first      first snapshot        holyship: `holyship snapshot bench` (the CONTAINER, default
 *                                    pause mode, direct reader); restic: `restic backup MOUNTPOINT`
 *                                    (--compression auto); tar: `tar -cf - . | zstd -3 -T0 > file`
 *   unchanged  the same again, nothing changed (tar: a full archive again)
 *   --         the 1% change is applied ONCE to the volume (scattered 64 KiB writes into the big
 *              files + 3 new files, same seed every run): every tool sees the same data
 *   changed    a third snapshot
 *   restore    holyship `restore latest:bench --path /data --target DIR`; restic `restore latest
 *              --target DIR`; tar `zstd -d | tar x`; each result checked against the source;
 *              each tool restores into a fresh loop-mounted ext4 (as root; see freshFs)
 *   restore-container   holyship only: a full `holyship restore` of the container into the engine
 *   push       (--push, when src/transfer has push and the CLI has `push`) holyship push vs
 *              restic copy to a local S3 (s3rver)
 *
 * Every tool process runs under /usr/bin/time (peak RSS = its maxrss, CPU user+sys); the
 * repository size is `du -sb` of the repository directory after each phase (caches/catalogues
 * not counted, listed separately). `sync` runs before every timed step so one tool's writeback
 * does not land on the next. Medians are reported; every sample goes to
 * bench-results/bench-<timestamp>.json.
 *
 * `--latency` runs (only) the latency targets (scripts/bench-latency.ts): `list`, `show`, `diff`
 * with 1,000 snapshots in the catalogue (< 200 ms each) and a push of a snapshot an s3rver
 * remote already has (zero packs, < 1 s), whole CLI process, medians of `--latency-runs`.
 *
 * `--scale` runs (only) the scale test: holyship's first snapshot of a volume of N small files
 * (`--files`, default 1,000,000) and of one big file (`--big-size`, default 5G), each also at half
 * the size, to show time growing linearly and memory staying bounded.
 */
import {spawn, spawnSync} from 'node:child_process'
import {createCipheriv, createHash} from 'node:crypto'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {performance} from 'node:perf_hooks'
import {createRequire} from 'node:module'
import {fileURLToPath} from 'node:url'
import {parseArgs} from 'node:util'
import {startEngine, stopAllEngines, type Engine} from '../test/harness/engine.js'
import {BUSYBOX_IMAGE, importBusybox, postgresRootfsTar} from '../test/harness/images.js'
import {latencyPhase} from './bench-latency.js'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
/** the private build of holyship the benchmark runs (see privateBuild) */
let BIN = path.join(ROOT, 'bin/run.js')
const CACHE = process.env.HOLYSHIP_BENCH_CACHE_DIR || '/var/cache/holyship-bench'
const RESULTS = path.join(ROOT, 'bench-results')
const TOOLS = ['holyship', 'restic', 'tar'] as const
type ToolName = (typeof TOOLS)[number]
const MiB = 1024 * 1024

const USAGE = `usage: npm run bench -- [options]

  --runs N        interleaved repetitions of every phase (default 3); medians are reported
  --small         ~1/10 of the data set (a quick check)
  --profile       also CPU profiles (node --cpu-prof) of holyship's first and unchanged snapshots
                  and its restore (with --scale: of each half-size snapshot)
  --push          also a push phase to a local S3 (s3rver): holyship push vs restic copy
                  (skipped when src/transfer has no push or the CLI no push command)
  --keep          keep the work directory (repositories, restores) for inspection
  --out FILE      where the JSON goes (default bench-results/bench-<timestamp>.json)
  --scale         only the scale test (long): N small files and one big file, full and half size
  --latency       only the latency targets (no Docker engine, ~3 min): list, show, diff with 1,000
                  snapshots (< 200 ms) and a push the remote needs nothing of (< 1 s), PASS/FAIL
  --latency-runs N  timed runs of each latency command (default 11)
  --files N       small files for --scale (default 1000000)
  --big-size SZ   the big file for --scale (default 5G; K/M/G suffixes)
`

// ------------------------------------------------------------------------------------------------
// options

const {values: argv} = parseArgs({
  options: {
    runs: {type: 'string', default: '3'},
    small: {type: 'boolean', default: false},
    profile: {type: 'boolean', default: false},
    push: {type: 'boolean', default: false},
    keep: {type: 'boolean', default: false},
    out: {type: 'string'},
    scale: {type: 'boolean', default: false},
    latency: {type: 'boolean', default: false},
    'latency-runs': {type: 'string', default: '11'},
    files: {type: 'string', default: '1000000'},
    'big-size': {type: 'string', default: '5G'},
    help: {type: 'boolean', short: 'h', default: false},
  },
  strict: true,
})
if (argv.help) {
  process.stdout.write(USAGE)
  process.exit(0)
}
const RUNS = positiveInt(argv.runs!, '--runs')
const SCALE_FILES = positiveInt(argv.files!, '--files')
const LATENCY_RUNS = positiveInt(argv['latency-runs']!, '--latency-runs')
const BIG_SIZE = parseSize(argv['big-size']!)

function positiveInt(s: string, flag: string): number {
  const n = Number(s.replace(/_/g, ''))
  if (!Number.isInteger(n) || n < 1) usage(`${flag} must be a positive integer, not ${JSON.stringify(s)}`)
  return n
}

function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$/i.exec(s.trim())
  if (!m) usage(`--big-size must look like 5G, 500M or a byte count, not ${JSON.stringify(s)}`)
  const mult = {'': 1, k: 1024, m: MiB, g: 1024 * MiB, t: 1024 * 1024 * MiB}[m![2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't']
  return Math.round(Number(m![1]) * mult)
}

function usage(msg: string): never {
  process.stderr.write(`bench: ${msg}\n\n${USAGE}`)
  process.exit(2)
}

// ------------------------------------------------------------------------------------------------
// small helpers

function say(msg: string): void {
  process.stdout.write(`${msg}\n`)
}

function note(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`)
}

const median = (xs: number[]): number => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b)
  if (s.length === 0) return NaN
  const h = Math.floor(s.length / 2)
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2
}

function fmtBytes(n: number): string {
  if (!Number.isFinite(n)) return '-'
  const a = Math.abs(n)
  if (a >= 1024 * MiB) return `${(n / 1024 / MiB).toFixed(2)} GiB`
  if (a >= MiB) return `${(n / MiB).toFixed(1)} MiB`
  if (a >= 1024) return `${(n / 1024).toFixed(1)} KiB`
  return `${n} B`
}

function fmtMs(ms: number): string {
  if (!Number.isFinite(ms)) return '-'
  return ms >= 100_000 ? `${(ms / 1000).toFixed(0)} s` : `${(ms / 1000).toFixed(2)} s`
}

function fmtRatio(r: number): string {
  return Number.isFinite(r) ? `${r.toFixed(2)}x` : '-'
}

/** A deterministic PRNG (mulberry32): the same change and the same files every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Deterministic incompressible bytes: AES-128-CTR of zeros under a key derived from `seed`. */
class RandomBytes {
  private cipher
  constructor(seed: string) {
    const key = createHash('sha256').update(`holyship-bench:${seed}`).digest().subarray(0, 16)
    this.cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16))
  }
  next(n: number): Buffer {
    return this.cipher.update(Buffer.alloc(n))
  }
}

function writeRandomFile(file: string, size: number, seed: string): void {
  const rnd = new RandomBytes(seed)
  const fd = fs.openSync(file, 'w', 0o644)
  try {
    for (let done = 0; done < size; ) {
      const n = Math.min(8 * MiB, size - done)
      fs.writeSync(fd, rnd.next(n))
      done += n
    }
  } finally {
    fs.closeSync(fd)
  }
}

function writeZeroFile(file: string, size: number): void {
  const fd = fs.openSync(file, 'w', 0o644)
  const zeros = Buffer.alloc(8 * MiB)
  try {
    for (let done = 0; done < size; ) {
      const n = Math.min(zeros.length, size - done)
      fs.writeSync(fd, zeros, 0, n)
      done += n
    }
  } finally {
    fs.closeSync(fd)
  }
}

function sha256File(file: string): string {
  const h = createHash('sha256')
  const fd = fs.openSync(file, 'r')
  const buf = Buffer.alloc(4 * MiB)
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null)
      if (n === 0) break
      h.update(buf.subarray(0, n))
    }
  } finally {
    fs.closeSync(fd)
  }
  return h.digest('hex')
}

/** Synchronous command that must succeed (setup steps, never timed). */
function must(cmd: string, args: string[], opts: {env?: NodeJS.ProcessEnv; cwd?: string} = {}): string {
  const r = spawnSync(cmd, args, {encoding: 'utf8', maxBuffer: 256 * MiB, env: opts.env ?? process.env, cwd: opts.cwd})
  if (r.error) throw r.error
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${(r.stderr || r.stdout).trim().slice(-2000)}`)
  return r.stdout
}

interface Proc {
  code: number
  stdout: string
  stderr: string
}

/** Asynchronous command (the event loop stays free: s3rver runs in this process for --push). */
function runAsync(cmd: string, args: string[], opts: {env?: NodeJS.ProcessEnv; cwd?: string} = {}): Promise<Proc> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {env: opts.env ?? process.env, cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe']})
    const out: Buffer[] = []
    const err: Buffer[] = []
    let outLen = 0
    child.stdout.on('data', (b: Buffer) => {
      // keep the last ~16 MiB (restic --json can print many status lines)
      out.push(b)
      outLen += b.length
      while (outLen > 16 * MiB && out.length > 1) outLen -= out.shift()!.length
    })
    child.stderr.on('data', (b: Buffer) => err.push(b))
    child.on('error', reject)
    child.on('close', (code, sig) =>
      resolve({code: code ?? (sig ? 128 : 1), stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8')}),
    )
  })
}

/**
 * A directory for one tool's restore on a file system of its own: a new ext4 image, loop
 * mounted (root with a free loop device; inode tables written at mkfs, so no lazy init runs
 * under the restore). On one shared ext4, each restore paid for the one deleted before it: the
 * inode allocator scans recently deleted inodes (`recently_deleted`), and the same restore
 * repeated after `rm -rf` went 2.8, 5.6, 6.5, 7.2 s, so the tool that restored first always won.
 * Without loop mounts: a directory in `parent`, as before (kind 'shared').
 */
function freshFs(parent: string, name: string, dataBytes: number): {dir: string; kind: 'fresh-ext4' | 'shared'; remove: () => void} {
  const dir = path.join(parent, name)
  fs.mkdirSync(dir, {recursive: true})
  const image = `${dir}.img`
  const shared = {dir, kind: 'shared' as const, remove: () => fs.rmSync(dir, {recursive: true, force: true})}
  if (process.getuid?.() !== 0 || freshFsBroken) return shared
  try {
    // room for the data twice over (a tool's temporary files) plus ext4's own
    fs.writeFileSync(image, '')
    fs.truncateSync(image, Math.ceil((dataBytes * 2 + 512 * MiB) / MiB) * MiB)
    must('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', image])
    must('mount', ['-o', 'loop', image, dir])
  } catch (e) {
    freshFsBroken = true
    note(`restores share one file system (no loop-mounted ext4 here: ${(e as Error).message.split('\n')[0]})`)
    fs.rmSync(image, {force: true})
    return shared
  }
  return {
    dir,
    kind: 'fresh-ext4',
    remove: () => {
      must('umount', [dir])
      fs.rmSync(image, {force: true})
      fs.rmSync(dir, {recursive: true, force: true})
    },
  }
}
let freshFsBroken = false

async function syncDisks(): Promise<void> {
  await runAsync('sync', [])
}

function duBytes(p: string): number {
  if (!fs.existsSync(p)) return 0
  return Number(must('du', ['-sb', p]).split(/\s+/)[0])
}

interface Timed extends Proc {
  wallMs: number
  maxRssKb: number
  /** user + sys */
  cpuS: number
  userS: number
  sysS: number
  /** 1-minute load average just before the step (the machine is shared: a hint of noise) */
  load1: number
}

let timeSeq = 0
let WORK = ''

/** Runs one tool process under /usr/bin/time: wall time, peak RSS (maxrss) and CPU time. */
async function timed(cmd: string, args: string[], opts: {env?: NodeJS.ProcessEnv; cwd?: string} = {}): Promise<Timed> {
  const tf = path.join(WORK, `time-${timeSeq++}.txt`)
  const load1 = Math.round(os.loadavg()[0] * 100) / 100
  const t0 = performance.now()
  const r = await runAsync('/usr/bin/time', ['-f', 'HSBENCH %M %U %S', '-o', tf, cmd, ...args], opts)
  const wallMs = performance.now() - t0
  const line = fs.existsSync(tf) ? fs.readFileSync(tf, 'utf8').split('\n').find((l) => l.startsWith('HSBENCH ')) : undefined
  fs.rmSync(tf, {force: true})
  const [, rss, user, sys] = (line ?? 'HSBENCH NaN NaN NaN').split(' ')
  return {...r, wallMs, maxRssKb: Number(rss), cpuS: Number(user) + Number(sys), userS: Number(user), sysS: Number(sys), load1}
}

function times(t: Timed): {wallMs: number; cpuS: number; userS: number; sysS: number; load1: number} {
  return {wallMs: t.wallMs, cpuS: t.cpuS, userS: t.userS, sysS: t.sysS, load1: t.load1}
}

function failed(what: string, r: Proc): Error {
  return new Error(`${what} exited ${r.code}:\n${(r.stderr || r.stdout).trim().split('\n').slice(-20).join('\n')}`)
}

/**
 * Others rebuild dist/ while they work, which would change the code under test in the middle
 * of a run. So the benchmark compiles the current sources ONCE, at its start, into a private
 * tree (WORK/holyship: bin/run.js, package.json, node_modules -> the checkout's, dist/) and runs
 * only that: every sample measures the same code (its hash goes into the JSON).
 */
function privateBuild(): {dir: string; sourceHash: string; sourceFiles: number; tscErrors?: string; manifestError?: string} {
  const dir = path.join(WORK, 'holyship')
  const h = createHash('sha256')
  let sourceFiles = 0
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, {withFileTypes: true}).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = path.join(d, e.name)
      if (e.isDirectory()) walk(p)
      else if (e.name.endsWith('.ts')) {
        h.update(path.relative(ROOT, p)).update('\0').update(fs.readFileSync(p)).update('\0')
        sourceFiles++
      }
    }
  }
  for (const d of ['src', 'commands']) walk(path.join(ROOT, d))
  fs.mkdirSync(path.join(dir, 'bin'), {recursive: true})
  fs.copyFileSync(path.join(ROOT, 'bin/run.js'), path.join(dir, 'bin/run.js'))
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'))
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'))
  const tsc = spawnSync(process.execPath, [path.join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', path.join(ROOT, 'tsconfig.json'), '--outDir', path.join(dir, 'dist')], {
    encoding: 'utf8',
    maxBuffer: 64 * MiB,
  })
  let tscErrors: string | undefined
  if (tsc.status !== 0) {
    tscErrors = (tsc.stdout + tsc.stderr).trim().split('\n').slice(0, 20).join('\n')
    if (!fs.existsSync(path.join(dir, 'dist/commands/snapshot.js'))) throw new Error(`compiling holyship failed:\n${tscErrors}`)
    note(`tsc reported errors (src/ being edited?); benchmarking what it emitted:\n${tscErrors}`)
  }
  // the oclif manifest, as `npm run build` writes it: without it every command module is imported
  const manifest = spawnSync(process.execPath, [path.join(ROOT, 'scripts/oclif-manifest.mjs'), dir], {encoding: 'utf8'})
  let manifestError: string | undefined
  if (manifest.status !== 0) {
    manifestError = (manifest.stderr || manifest.stdout).trim().split('\n').slice(0, 20).join('\n')
    note(`writing oclif.manifest.json failed: every command start imports every command module, timings are not those of a build:\n${manifestError}`)
  }
  BIN = path.join(dir, 'bin/run.js')
  return {dir, sourceHash: h.digest('hex').slice(0, 16), sourceFiles, ...(tscErrors ? {tscErrors} : {}), ...(manifestError ? {manifestError} : {})}
}

// ------------------------------------------------------------------------------------------------
// the data set (cached)

interface DatasetInfo {
  variant: 'full' | 'small'
  dir: string
  files: number
  dirs: number
  symlinks: number
  bytes: number
  rootfsBytes: number
  randomBytes: number
  zeroBytes: number
}

const DATASET_RECIPE = 'bench-dataset-v1'

async function ensureDataset(small: boolean): Promise<DatasetInfo> {
  const tar = await postgresRootfsTar()
  const variant = small ? 'small' : 'full'
  const hash = createHash('sha256').update(DATASET_RECIPE).update(path.basename(tar)).update(variant).digest('hex').slice(0, 12)
  const dir = path.join(CACHE, `dataset-${variant}-${hash}`)
  const metaFile = `${dir}.json`
  if (fs.existsSync(dir) && fs.existsSync(metaFile)) return JSON.parse(fs.readFileSync(metaFile, 'utf8')) as DatasetInfo
  fs.mkdirSync(CACHE, {recursive: true})
  for (const f of fs.readdirSync(CACHE)) {
    if (f.startsWith(`dataset-${variant}-`)) fs.rmSync(path.join(CACHE, f), {recursive: true, force: true})
  }
  const t0 = Date.now()
  note(`building the ${variant} data set in ${dir} (once; cached)`)
  const tmp = `${dir}.tmp-${process.pid}`
  fs.rmSync(tmp, {recursive: true, force: true})
  fs.mkdirSync(path.join(tmp, 'rootfs'), {recursive: true})
  // full: the whole Debian + Postgres rootfs; small: /etc, /var, /usr/bin, /usr/sbin of it (~1/10)
  const members = small ? ['./etc', './var', './usr/bin', './usr/sbin'] : []
  must('tar', ['--numeric-owner', '-xpf', tar, '-C', path.join(tmp, 'rootfs'), ...members])
  const blobs = path.join(tmp, 'bench-blobs')
  fs.mkdirSync(blobs)
  const scale = small ? 10 : 1
  const randomSizes = [100 * MiB, 50 * MiB].map((n) => Math.round(n / scale))
  randomSizes.forEach((n, i) => writeRandomFile(path.join(blobs, `random-${i}.bin`), n, `random-${i}`))
  const zeroBytes = Math.round((100 * MiB) / scale)
  writeZeroFile(path.join(blobs, 'zeros.bin'), zeroBytes)
  const sum = summariseTree(tmp)
  const rootfs = summariseTree(path.join(tmp, 'rootfs'))
  fs.renameSync(tmp, dir)
  const info: DatasetInfo = {
    variant,
    dir,
    files: sum.files,
    dirs: sum.dirs,
    symlinks: sum.symlinks,
    bytes: sum.bytes,
    rootfsBytes: rootfs.bytes,
    randomBytes: randomSizes.reduce((a, b) => a + b, 0),
    zeroBytes,
  }
  fs.writeFileSync(metaFile, JSON.stringify(info, null, 2) + '\n')
  note(`built the data set in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${info.files} files, ${fmtBytes(info.bytes)}`)
  return info
}

interface TreeSummary {
  files: number
  dirs: number
  symlinks: number
  others: number
  bytes: number
}

function summariseTree(root: string): TreeSummary {
  const s: TreeSummary = {files: 0, dirs: 0, symlinks: 0, others: 0, bytes: 0}
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, {withFileTypes: true})) {
      const p = path.join(dir, e.name)
      if (e.isDirectory()) {
        s.dirs++
        walk(p)
      } else if (e.isFile()) {
        s.files++
        s.bytes += fs.lstatSync(p).size
      } else if (e.isSymbolicLink()) s.symlinks++
      else s.others++
    }
  }
  walk(root)
  return s
}

/** Empties the volume and fills it with the cached data set (cp -a: owners, modes, times). */
function fillVolume(mountpoint: string, ds: DatasetInfo): void {
  for (const e of fs.readdirSync(mountpoint)) fs.rmSync(path.join(mountpoint, e), {recursive: true, force: true})
  must('cp', ['-a', `${ds.dir}/.`, `${mountpoint}/`])
  must('sync', [])
}

// ------------------------------------------------------------------------------------------------
// the 1% change

interface ChangePlan {
  seed: number
  targetBytes: number
  writes: {file: string; offset: number; length: number}[]
  newFiles: {file: string; size: number; kind: 'random' | 'text'}[]
  writtenBytes: number
}

const CHANGE_WRITE = 64 * 1024

/**
 * 1% of the data set's bytes: 70% as scattered 64 KiB writes (new random content) into the big
 * files (>= 4 MiB, chosen in proportion to their size), 30% as three new files (two random,
 * one compressible log text). Deterministic: the same plan every run and for every tool.
 */
function planChange(mountpoint: string, ds: DatasetInfo): ChangePlan {
  const seed = 20250606
  const rand = prng(seed)
  const targetBytes = Math.round(ds.bytes * 0.01)
  const big: {file: string; size: number}[] = []
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, {withFileTypes: true}).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = path.join(dir, e.name)
      if (e.isDirectory()) walk(p)
      else if (e.isFile()) {
        const size = fs.lstatSync(p).size
        if (size >= 4 * MiB) big.push({file: path.relative(mountpoint, p), size})
      }
    }
  }
  walk(mountpoint)
  const total = big.reduce((a, b) => a + b.size, 0)
  const nWrites = Math.max(1, Math.round((targetBytes * 0.7) / CHANGE_WRITE))
  const writes: ChangePlan['writes'] = []
  for (let i = 0; i < nWrites; i++) {
    let x = rand() * total
    let f = big[0]
    for (const b of big) {
      if (x < b.size) {
        f = b
        break
      }
      x -= b.size
    }
    const blocks = Math.floor((f.size - CHANGE_WRITE) / 4096)
    writes.push({file: f.file, offset: Math.floor(rand() * blocks) * 4096, length: CHANGE_WRITE})
  }
  const newBytes = Math.round(targetBytes * 0.3)
  const newFiles: ChangePlan['newFiles'] = [
    {file: 'bench-new/upload-1.bin', size: Math.round(newBytes * 0.5), kind: 'random'},
    {file: 'bench-new/app.log', size: Math.round(newBytes * 0.3), kind: 'text'},
    {file: 'bench-new/upload-2.bin', size: Math.round(newBytes * 0.2), kind: 'random'},
  ]
  const writtenBytes = writes.reduce((a, w) => a + w.length, 0) + newFiles.reduce((a, f) => a + f.size, 0)
  return {seed, targetBytes, writes, newFiles, writtenBytes}
}

function applyChange(mountpoint: string, plan: ChangePlan): void {
  const rnd = new RandomBytes(`change-${plan.seed}`)
  for (const w of plan.writes) {
    const fd = fs.openSync(path.join(mountpoint, w.file), 'r+')
    try {
      fs.writeSync(fd, rnd.next(w.length), 0, w.length, w.offset)
    } finally {
      fs.closeSync(fd)
    }
  }
  fs.mkdirSync(path.join(mountpoint, 'bench-new'), {recursive: true})
  for (const f of plan.newFiles) {
    const p = path.join(mountpoint, f.file)
    if (f.kind === 'random') {
      fs.writeFileSync(p, rnd.next(f.size))
    } else {
      const lines: string[] = []
      let len = 0
      for (let i = 0; len < f.size; i++) {
        const l = `2025-06-06T12:${String(Math.floor(i / 60) % 60).padStart(2, '0')}:${String(i % 60).padStart(2, '0')}.${String(i % 1000).padStart(3, '0')}Z INFO request id=${i} path=/api/v1/items/${(i * 7919) % 997} status=200 bytes=${(i * 31) % 65536}\n`
        lines.push(l)
        len += l.length
      }
      fs.writeFileSync(p, Buffer.from(lines.join('')).subarray(0, f.size))
    }
  }
  must('sync', [])
}

// ------------------------------------------------------------------------------------------------
// the tools

type Phase = 'first' | 'unchanged' | 'changed' | 'restore' | 'restore-container' | 'push'
const SNAP_PHASES: Phase[] = ['first', 'unchanged', 'changed']

interface Sample {
  run: number
  phase: Phase
  tool: ToolName
  order: number
  wallMs: number
  cpuS: number
  userS: number
  sysS: number
  load1: number
  maxRssKb: number
  /** du -sb of the tool's repository (or archives) after this step */
  storedBytes?: number
  /** catalogue / cache size after this step (not counted in storedBytes) */
  cacheBytes?: number
  /** restore: the restored tree matches the source (file count, bytes, hashes of the changed files) */
  verified?: boolean
  verifyNote?: string
  /** restore: into a fresh loop-mounted ext4 ('fresh-ext4') or a directory of the work file system ('shared') */
  restoreFs?: string
  /** anything the tool reported (holyship --json, restic's summary) */
  reported?: unknown
  code: number
}

interface Ctx {
  run: number
  engine: Engine
  mountpoint: string
  runDir: string
  s3?: S3
}

interface Tool {
  name: ToolName
  setup(ctx: Ctx): Promise<void>
  snapshot(ctx: Ctx, n: number): Promise<Omit<Sample, 'run' | 'phase' | 'tool' | 'order'>>
  restore(ctx: Ctx, target: string): Promise<{t: Timed; root: string; reported?: unknown}>
  stored(ctx: Ctx): {stored: number; cache: number}
}

const CONTAINER = 'bench'
const VOLUME = 'benchdata'

function hsEnv(ctx: Ctx): NodeJS.ProcessEnv {
  return {
    ...process.env,
    HOLYSHIP_REPO: path.join(ctx.runDir, 'holyship/repo'),
    HOLYSHIP_CATALOGUE: path.join(ctx.runDir, 'holyship/catalogue.sqlite3'),
    DOCKER_HOST: ctx.engine.dockerHost,
    HOLYSHIP_QUIET: '1',
  }
}

function parseJson(s: string): unknown {
  try {
    return JSON.parse(s)
  } catch {
    return undefined
  }
}

const holyship: Tool = {
  name: 'holyship',
  async setup(ctx) {
    fs.mkdirSync(path.join(ctx.runDir, 'holyship'), {recursive: true})
    const r = await runAsync(process.execPath, [BIN, 'init'], {env: hsEnv(ctx)})
    if (r.code !== 0) throw failed('holyship init', r)
  },
  async snapshot(ctx) {
    const t = await timed(process.execPath, [BIN, 'snapshot', CONTAINER, '--json'], {env: hsEnv(ctx)})
    if (t.code !== 0) throw failed('holyship snapshot', t)
    const s = this.stored(ctx)
    return {...times(t), maxRssKb: t.maxRssKb, code: t.code, storedBytes: s.stored, cacheBytes: s.cache, reported: parseJson(t.stdout)}
  },
  async restore(ctx, target) {
    const t = await timed(process.execPath, [BIN, 'restore', `latest:${CONTAINER}`, '--path', '/data', '--target', target, '--json'], {env: hsEnv(ctx)})
    if (t.code !== 0) throw failed('holyship restore --path', t)
    return {t, root: target, reported: parseJson(t.stdout)}
  },
  stored(ctx) {
    const e = hsEnv(ctx)
    return {stored: duBytes(e.HOLYSHIP_REPO!), cache: duBytes(e.HOLYSHIP_CATALOGUE!) + duBytes(`${e.HOLYSHIP_CATALOGUE}-wal`)}
  },
}

let resticHasCompression = false
const RESTIC_PASSWORD = 'holyship-bench'

function resticEnv(ctx: Ctx): NodeJS.ProcessEnv {
  return {
    ...process.env,
    RESTIC_REPOSITORY: path.join(ctx.runDir, 'restic/repo'),
    RESTIC_PASSWORD,
    RESTIC_CACHE_DIR: path.join(ctx.runDir, 'restic/cache'),
    RESTIC_PROGRESS_FPS: '0.1',
  }
}

const restic: Tool = {
  name: 'restic',
  async setup(ctx) {
    fs.mkdirSync(path.join(ctx.runDir, 'restic'), {recursive: true})
    const args = ['init', ...(resticHasCompression ? ['--repository-version', '2'] : [])]
    const r = await runAsync('restic', args, {env: resticEnv(ctx)})
    if (r.code !== 0) throw failed('restic init', r)
  },
  async snapshot(ctx) {
    const args = ['backup', '--json', ...(resticHasCompression ? ['--compression', 'auto'] : []), ctx.mountpoint]
    const t = await timed('restic', args, {env: resticEnv(ctx)})
    if (t.code !== 0) throw failed('restic backup', t)
    const summary = t.stdout
      .split('\n')
      .map((l) => parseJson(l) as {message_type?: string} | undefined)
      .find((m) => m?.message_type === 'summary')
    const s = this.stored(ctx)
    return {...times(t), maxRssKb: t.maxRssKb, code: t.code, storedBytes: s.stored, cacheBytes: s.cache, reported: summary}
  },
  async restore(ctx, target) {
    const t = await timed('restic', ['restore', 'latest', '--target', target], {env: resticEnv(ctx)})
    if (t.code !== 0) throw failed('restic restore', t)
    return {t, root: path.join(target, ctx.mountpoint)}
  },
  stored(ctx) {
    const e = resticEnv(ctx)
    return {stored: duBytes(e.RESTIC_REPOSITORY!), cache: duBytes(e.RESTIC_CACHE_DIR!)}
  },
}

const tarZstd: Tool = {
  name: 'tar',
  async setup(ctx) {
    fs.mkdirSync(path.join(ctx.runDir, 'tar'), {recursive: true})
  },
  async snapshot(ctx, n) {
    const out = path.join(ctx.runDir, 'tar', `snapshot-${n}.tar.zst`)
    const t = await timed('bash', ['-c', 'set -o pipefail; tar --numeric-owner -C "$1" -cf - . | zstd -3 -T0 -q -o "$2"', 'bash', ctx.mountpoint, out])
    if (t.code !== 0) throw failed('tar | zstd', t)
    const s = this.stored(ctx)
    return {...times(t), maxRssKb: t.maxRssKb, code: t.code, storedBytes: s.stored, cacheBytes: 0}
  },
  async restore(ctx, target) {
    const archives = fs.readdirSync(path.join(ctx.runDir, 'tar')).filter((f) => f.endsWith('.tar.zst')).sort()
    const last = path.join(ctx.runDir, 'tar', archives[archives.length - 1])
    fs.mkdirSync(target, {recursive: true})
    const t = await timed('bash', ['-c', 'set -o pipefail; zstd -d -q -c "$1" | tar --numeric-owner -x -C "$2"', 'bash', last, target])
    if (t.code !== 0) throw failed('zstd -d | tar x', t)
    return {t, root: target}
  },
  stored(ctx) {
    return {stored: duBytes(path.join(ctx.runDir, 'tar')), cache: 0}
  },
}

const ALL_TOOLS: Tool[] = [holyship, restic, tarZstd]

interface SourceCheck {
  summary: TreeSummary
  hashes: Record<string, string>
}

function sourceCheck(mountpoint: string, plan: ChangePlan): SourceCheck {
  const files = [...new Set([...plan.newFiles.map((f) => f.file), ...plan.writes.slice(0, 3).map((w) => w.file)])]
  const hashes: Record<string, string> = {}
  for (const f of files) hashes[f] = sha256File(path.join(mountpoint, f))
  return {summary: summariseTree(mountpoint), hashes}
}

function verifyRestore(root: string, want: SourceCheck): {ok: boolean; note: string} {
  if (!fs.existsSync(root)) return {ok: false, note: `${root} does not exist`}
  const got = summariseTree(root)
  const problems: string[] = []
  for (const k of ['files', 'dirs', 'symlinks', 'bytes'] as const) {
    if (got[k] !== want.summary[k]) problems.push(`${k} ${got[k]} != ${want.summary[k]}`)
  }
  for (const [f, h] of Object.entries(want.hashes)) {
    const p = path.join(root, f)
    if (!fs.existsSync(p)) problems.push(`${f} missing`)
    else if (sha256File(p) !== h) problems.push(`${f} differs`)
  }
  return {ok: problems.length === 0, note: problems.join('; ') || `${got.files} files, ${fmtBytes(got.bytes)}`}
}

// ------------------------------------------------------------------------------------------------
// the comparison

interface Results {
  version: 1
  startedAt: string
  finishedAt?: string
  options: Record<string, unknown>
  machine: Record<string, unknown>
  dataset?: DatasetInfo & {change?: Omit<ChangePlan, 'writes'> & {writes: number}}
  samples: Sample[]
  summary?: Record<string, unknown>
  targets?: {name: string; target: string; value: string; pass: boolean | null}[]
  profile?: unknown
  scale?: unknown
  latency?: unknown
  skipped?: string[]
}

function machineInfo(): Record<string, unknown> {
  const v = (cmd: string, args: string[]) => {
    const r = spawnSync(cmd, args, {encoding: 'utf8'})
    return r.status === 0 ? (r.stdout || r.stderr).trim().split('\n')[0] : undefined
  }
  return {
    hostname: os.hostname(),
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model,
    memBytes: os.totalmem(),
    kernel: os.release(),
    loadavg: os.loadavg(),
    node: process.version,
    restic: v('restic', ['version']),
    zstd: v('zstd', ['--version']),
    tar: v('tar', ['--version']),
    holyshipCommit: v('git', ['-C', ROOT, 'rev-parse', 'HEAD']),
    holyshipDirty: (spawnSync('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src', 'commands'], {encoding: 'utf8'}).stdout ?? '').trim().split('\n').filter(Boolean),
  }
}

function pushAvailable(): {ok: boolean; why?: string} {
  const pushTs = path.join(ROOT, 'src/transfer/push.ts')
  if (!fs.existsSync(pushTs)) return {ok: false, why: 'src/transfer/push.ts does not exist'}
  if (!/export\s+async\s+function\s+push\w*\s*\(/.test(fs.readFileSync(pushTs, 'utf8'))) return {ok: false, why: 'src/transfer/push.ts has no push function'}
  if (!fs.existsSync(path.join(path.dirname(BIN), '../dist/commands/push.js'))) return {ok: false, why: 'the built CLI has no push command (dist/commands/push.js)'}
  return {ok: true}
}

async function setupEngine(): Promise<{engine: Engine; mountpoint: string}> {
  note('starting a private Docker engine')
  const engine = await startEngine('bench')
  await importBusybox(engine)
  await engine.docker.createVolume({Name: VOLUME})
  const mountpoint = ((await engine.docker.getVolume(VOLUME).inspect()) as {Mountpoint: string}).Mountpoint
  const c = await engine.docker.createContainer({
    name: CONTAINER,
    Image: BUSYBOX_IMAGE,
    Cmd: ['sleep', '999999999'],
    HostConfig: {Binds: [`${VOLUME}:/data`]},
  })
  await c.start()
  return {engine, mountpoint}
}

async function comparison(results: Results, save: () => void): Promise<void> {
  const restHelp = spawnSync('restic', ['--help'], {encoding: 'utf8'}).stdout ?? ''
  resticHasCompression = /--compression/.test(restHelp)
  if (!resticHasCompression) note('this restic has no --compression: its repository is uncompressed (v1)')

  const ds = await ensureDataset(argv.small!)
  const {engine, mountpoint} = await setupEngine()
  const wantPush = argv.push!
  const push = wantPush ? pushAvailable() : {ok: false}
  if (wantPush && !push.ok) {
    results.skipped = [...(results.skipped ?? []), `push: ${push.why}`]
    note(`skipping the push phase: ${push.why}`)
  }
  const s3 = push.ok ? await startTlsS3() : undefined

  try {
    say(`data set: ${ds.files} files, ${ds.dirs} dirs, ${ds.symlinks} symlinks, ${fmtBytes(ds.bytes)} (rootfs ${fmtBytes(ds.rootfsBytes)}, random ${fmtBytes(ds.randomBytes)}, zeros ${fmtBytes(ds.zeroBytes)}) in volume ${VOLUME} of container ${CONTAINER}`)
    for (let run = 0; run < RUNS; run++) {
      const order = ALL_TOOLS.map((_, i) => ALL_TOOLS[(i + run) % ALL_TOOLS.length])
      say(`\n== run ${run + 1}/${RUNS} (order: ${order.map((t) => t.name).join(', ')})`)
      const runDir = path.join(WORK, `run-${run + 1}`)
      fs.mkdirSync(runDir, {recursive: true})
      const ctx: Ctx = {run, engine, mountpoint, runDir, ...(s3 ? {s3} : {})}
      fillVolume(mountpoint, ds)
      for (const t of order) await t.setup(ctx)

      let plan: ChangePlan | undefined
      for (const [n, phase] of SNAP_PHASES.entries()) {
        if (phase === 'changed') {
          plan = planChange(mountpoint, ds)
          applyChange(mountpoint, plan)
          results.dataset!.change = {...plan, writes: plan.writes.length}
          say(`   applied the 1% change: ${plan.writes.length} x 64 KiB writes into big files + ${plan.newFiles.length} new files = ${fmtBytes(plan.writtenBytes)}`)
        }
        for (const [i, t] of order.entries()) {
          await syncDisks()
          const s = await t.snapshot(ctx, n + 1)
          results.samples.push({run, phase, tool: t.name, order: i, ...s})
          say(`   ${phase.padEnd(10)} ${t.name.padEnd(9)} ${fmtMs(s.wallMs).padStart(9)}  cpu ${s.cpuS.toFixed(1).padStart(6)} s  rss ${fmtBytes(s.maxRssKb * 1024).padStart(10)}  stored ${fmtBytes(s.storedBytes!).padStart(10)}`)
          save()
        }
      }

      const check = sourceCheck(mountpoint, plan!)
      for (const [i, t] of order.entries()) {
        const fresh = freshFs(runDir, `restore-${t.name}`, ds.bytes)
        const target = path.join(fresh.dir, 'restored')
        try {
          await syncDisks()
          const {t: r, root, reported} = await t.restore(ctx, target)
          const v = verifyRestore(root, check)
          if (!v.ok) note(`WARNING: ${t.name}'s restore differs from the source: ${v.note}`)
          results.samples.push({run, phase: 'restore', tool: t.name, order: i, ...times(r), maxRssKb: r.maxRssKb, code: r.code, verified: v.ok, verifyNote: v.note, restoreFs: fresh.kind, ...(reported ? {reported} : {})})
          say(`   ${'restore'.padEnd(10)} ${t.name.padEnd(9)} ${fmtMs(r.wallMs).padStart(9)}  cpu ${r.cpuS.toFixed(1).padStart(6)} s  rss ${fmtBytes(r.maxRssKb * 1024).padStart(10)}  ${v.ok ? 'verified' : 'MISMATCH'}: ${v.note}${fresh.kind === 'fresh-ext4' ? ' (fresh ext4)' : ''}`)
        } finally {
          fresh.remove()
        }
        save()
      }

      // holyship only: the whole container back into the engine, beside the original
      {
        await syncDisks()
        const name = `bench-restored-${run + 1}`
        const prefix = `r${run + 1}-`
        const r = await timed(process.execPath, [BIN, 'restore', `latest:${CONTAINER}`, '--name', name, '--volume-prefix', prefix, '--json'], {env: hsEnv(ctx)})
        if (r.code !== 0) throw failed('holyship restore (container)', r)
        const vol = `${prefix}${VOLUME}`
        const mp = ((await engine.docker.getVolume(vol).inspect()) as {Mountpoint: string}).Mountpoint
        const v = verifyRestore(mp, check)
        if (!v.ok) note(`WARNING: the restored container's volume differs from the source: ${v.note}`)
        results.samples.push({run, phase: 'restore-container', tool: 'holyship', order: 0, ...times(r), maxRssKb: r.maxRssKb, code: r.code, verified: v.ok, verifyNote: v.note, reported: parseJson(r.stdout)})
        say(`   ${'restore-container'.padEnd(10)} holyship ${fmtMs(r.wallMs).padStart(9)}  cpu ${r.cpuS.toFixed(1).padStart(6)} s  rss ${fmtBytes(r.maxRssKb * 1024).padStart(10)}  ${v.ok ? 'verified' : 'MISMATCH'}: ${v.note}`)
        await engine.docker.getContainer(name).remove({force: true})
        await engine.docker.getVolume(vol).remove()
        save()
      }

      if (s3) await pushPhase(ctx, order, results, save)

      if (!argv.keep) fs.rmSync(runDir, {recursive: true, force: true})
    }
    summarise(results)
    if (argv.profile) results.profile = await profileHolyship(engine, mountpoint, ds)
  } finally {
    if (s3) await s3.stop().catch(() => undefined)
  }
}

interface S3 {
  endpoint: string
  bucket: string
  /** s3rver's directory: objects under <dir>/<bucket>/<key>._S3rver_object */
  dir: string
  /** the server's self-signed certificate */
  caFile: string
  stop(): Promise<void>
}

/**
 * s3rver (as the tests use it) over HTTPS with a throwaway self-signed certificate. Over plain
 * HTTP restic's S3 client (minio-go) signs uploads as aws-chunked streams, which s3rver stores
 * verbatim (framing included), so restic could not read its own repository back; over TLS it
 * sends plain bodies. Both tools talk to the same TLS server.
 */
async function startTlsS3(): Promise<S3> {
  const dir = path.join(WORK, 's3')
  fs.mkdirSync(dir, {recursive: true})
  const key = path.join(dir, 'key.pem')
  const cert = path.join(dir, 'cert.pem')
  must('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'])
  // the harness's startS3Server installs its shim for s3rver's DES listing tokens (OpenSSL 3)
  // but has no TLS option: start and stop one for the shim, then start a TLS server the same way
  const {startS3Server} = await import('../test/harness/s3.js')
  await (await startS3Server('holyship-bench-shim')).stop()
  const S3rver = createRequire(import.meta.url)('s3rver') as new (o: Record<string, unknown>) => {run(): Promise<{port: number}>; close(): Promise<void>}
  const bucket = 'holyship-bench'
  const data = path.join(dir, 'data')
  const server = new S3rver({address: '127.0.0.1', port: 0, silent: true, directory: data, configureBuckets: [{name: bucket}], key: fs.readFileSync(key), cert: fs.readFileSync(cert)})
  const addr = await server.run()
  return {endpoint: `https://127.0.0.1:${addr.port}`, bucket, dir: data, caFile: cert, stop: () => server.close()}
}

/** holyship push (all three snapshots) vs restic copy, to a fresh prefix of a local s3rver. */
async function pushPhase(ctx: Ctx, order: Tool[], results: Results, save: () => void): Promise<void> {
  const s3 = ctx.s3!
  const awsEnv = {AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_REGION: 'us-east-1', NODE_EXTRA_CA_CERTS: s3.caFile}
  for (const [i, t] of order.entries()) {
    if (t.name === 'tar') continue
    const prefix = `${t.name}-run${ctx.run + 1}`
    await syncDisks()
    let r: Timed
    if (t.name === 'holyship') {
      r = await timed(process.execPath, [BIN, 'push', '--to', `s3://${s3.bucket}/${prefix}`, '--endpoint', s3.endpoint, '--json'], {env: {...hsEnv(ctx), ...awsEnv}})
      if (r.code !== 0) throw failed('holyship push', r)
    } else {
      const env = {
        ...resticEnv(ctx),
        ...awsEnv,
        RESTIC_REPOSITORY: `s3:${s3.endpoint}/${s3.bucket}/${prefix}`,
        RESTIC_FROM_REPOSITORY: resticEnv(ctx).RESTIC_REPOSITORY,
        RESTIC_FROM_PASSWORD: RESTIC_PASSWORD,
      }
      const init = await runAsync('restic', ['init', '--cacert', s3.caFile, '--copy-chunker-params', ...(resticHasCompression ? ['--repository-version', '2'] : [])], {env})
      if (init.code !== 0) {
        note(`restic init on s3rver failed, no restic push sample: ${init.stderr.trim().split('\n').pop()}`)
        continue
      }
      r = await timed('restic', ['copy', '--cacert', s3.caFile], {env})
      if (r.code !== 0) {
        note(`restic copy to s3rver failed, no restic push sample: ${r.stderr.trim().split('\n').pop()}`)
        continue
      }
    }
    const stored = duBytes(path.join(s3.dir, s3.bucket, prefix))
    results.samples.push({run: ctx.run, phase: 'push', tool: t.name, order: i, ...times(r), maxRssKb: r.maxRssKb, code: r.code, storedBytes: stored, ...(t.name === 'holyship' ? {reported: parseJson(r.stdout)} : {})})
    say(`   ${'push'.padEnd(10)} ${t.name.padEnd(9)} ${fmtMs(r.wallMs).padStart(9)}  cpu ${r.cpuS.toFixed(1).padStart(6)} s  rss ${fmtBytes(r.maxRssKb * 1024).padStart(10)}  on S3 ${fmtBytes(stored).padStart(10)}`)
    save()
  }
}

// ------------------------------------------------------------------------------------------------
// summary

interface Row {
  label: string
  unit: 'ms' | 'bytes'
  values: Partial<Record<ToolName, number>>
}

function summarise(results: Results): void {
  const S = results.samples
  const pick = (phase: Phase, tool: ToolName, f: (s: Sample) => number | undefined) =>
    median(S.filter((s) => s.phase === phase && s.tool === tool).map((s) => f(s) ?? NaN))
  const perTool = (phase: Phase, f: (s: Sample) => number | undefined, tools: readonly ToolName[] = TOOLS) =>
    Object.fromEntries(tools.map((t) => [t, pick(phase, t, f)])) as Partial<Record<ToolName, number>>
  /** stored after phase b minus stored after phase a, per run, then the median */
  const delta = (a: Phase, b: Phase) =>
    Object.fromEntries(
      TOOLS.map((t) => {
        const d: number[] = []
        for (let run = 0; run < RUNS; run++) {
          const x = S.find((s) => s.run === run && s.tool === t && s.phase === a)?.storedBytes
          const y = S.find((s) => s.run === run && s.tool === t && s.phase === b)?.storedBytes
          if (x !== undefined && y !== undefined) d.push(y - x)
        }
        return [t, median(d)]
      }),
    ) as Partial<Record<ToolName, number>>
  const has = (phase: Phase) => S.some((s) => s.phase === phase)

  const rows: Row[] = [
    {label: 'first snapshot', unit: 'ms', values: perTool('first', (s) => s.wallMs)},
    {label: 'unchanged re-snapshot', unit: 'ms', values: perTool('unchanged', (s) => s.wallMs)},
    {label: 'snapshot after 1% change', unit: 'ms', values: perTool('changed', (s) => s.wallMs)},
    {label: 'restore (hs: --path /data)', unit: 'ms', values: perTool('restore', (s) => s.wallMs)},
    {label: 'restore container (hs)', unit: 'ms', values: perTool('restore-container', (s) => s.wallMs, ['holyship'])},
    ...(has('push') ? [{label: 'push 3 snapshots to S3', unit: 'ms' as const, values: perTool('push', (s) => s.wallMs, ['holyship', 'restic'])}] : []),
    {label: 'stored after first', unit: 'bytes', values: perTool('first', (s) => s.storedBytes)},
    {label: 'stored after all three', unit: 'bytes', values: perTool('changed', (s) => s.storedBytes)},
    {label: 'new bytes, unchanged', unit: 'bytes', values: delta('first', 'unchanged')},
    {label: 'new bytes after 1% change', unit: 'bytes', values: delta('unchanged', 'changed')},
    ...(has('push') ? [{label: 'bytes on S3 after push', unit: 'bytes' as const, values: perTool('push', (s) => s.storedBytes, ['holyship', 'restic'])}] : []),
    {label: 'cpu first snapshot (user+sys)', unit: 'ms', values: perTool('first', (s) => s.cpuS * 1000)},
    {label: 'cpu unchanged (user+sys)', unit: 'ms', values: perTool('unchanged', (s) => s.cpuS * 1000)},
    ...(['first', 'unchanged', 'changed', 'restore', 'restore-container', ...(has('push') ? ['push'] : [])] as Phase[]).map((p) => ({
      label: `peak RSS ${p}`,
      unit: 'bytes' as const,
      values: perTool(p, (s) => s.maxRssKb * 1024),
    })),
  ]

  const fmt = (r: Row, v: number | undefined) => (v === undefined || !Number.isFinite(v) ? '-' : r.unit === 'ms' ? fmtMs(v) : fmtBytes(v))
  const header = ['phase (medians of ' + RUNS + ' run' + (RUNS > 1 ? 's' : '') + ')', 'holyship', 'restic', 'tar|zstd', 'hs/restic', 'hs/tar']
  const widths = [32, 12, 12, 12, 10, 10]
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' ')
  say('\n' + line(header))
  say('-'.repeat(widths.reduce((a, b) => a + b + 1, 0)))
  for (const r of rows) {
    const h = r.values.holyship
    const ratio = (o: number | undefined) => (h !== undefined && o !== undefined && o > 0 ? fmtRatio(h / o) : '-')
    say(line([r.label, fmt(r, h), fmt(r, r.values.restic), fmt(r, r.values.tar), ratio(r.values.restic), ratio(r.values.tar)]))
  }

  const hsRss = Math.max(...S.filter((s) => s.tool === 'holyship').map((s) => s.maxRssKb * 1024))
  const ratio = (row: string) => {
    const r = rows.find((x) => x.label === row)!
    return (r.values.holyship ?? NaN) / (r.values.restic ?? NaN)
  }
  const targets: NonNullable<Results['targets']> = [
    {name: 'first snapshot', target: '<= 0.50x restic', x: ratio('first snapshot'), max: 0.5},
    {name: 'unchanged re-snapshot', target: '<= 0.50x restic', x: ratio('unchanged re-snapshot'), max: 0.5},
    {name: 'restore', target: '<= 0.70x restic', x: ratio('restore (hs: --path /data)'), max: 0.7},
    {name: 'stored size', target: '<= 1.00x restic', x: ratio('stored after first'), max: 1.0},
    {name: 'new bytes after 1% change', target: '<= 1.00x restic', x: ratio('new bytes after 1% change'), max: 1.0},
  ].map((t) => ({name: t.name, target: t.target, value: Number.isFinite(t.x) ? `${t.x.toFixed(3)}x` : '-', pass: Number.isFinite(t.x) ? t.x <= t.max : null}))
  targets.push({name: 'peak RSS (holyship, every process)', target: '<= 256 MiB', value: fmtBytes(hsRss), pass: Number.isFinite(hsRss) ? hsRss <= 256 * MiB : null})

  say('\ntargets (issue 6)')
  for (const t of targets) say(`  ${(t.pass === null ? 'n/a ' : t.pass ? 'PASS' : 'FAIL').padEnd(5)} ${t.name.padEnd(36)} ${t.target.padEnd(17)} ${t.value}`)
  const unverified = S.filter((s) => s.verified === false)
  if (unverified.length) say(`\nWARNING: ${unverified.length} restore(s) did not match the source: ${unverified.map((s) => `${s.tool} run ${s.run + 1}: ${s.verifyNote}`).join(' | ')}`)

  results.summary = Object.fromEntries(rows.map((r) => [r.label, r.values]))
  results.targets = targets
}

// ------------------------------------------------------------------------------------------------
// CPU profile of holyship

interface CpuProfile {
  nodes: {id: number; callFrame: {functionName: string; url: string; lineNumber: number}; children?: number[]}[]
  startTime: number
  endTime: number
  samples: number[]
  timeDeltas: number[]
}

function summariseProfile(file: string, top = 15): {totalMs: number; functions: {name: string; selfMs: number; pct: number}[]; groups: {name: string; selfMs: number; pct: number}[]} {
  const p = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile
  const byId = new Map(p.nodes.map((n) => [n.id, n]))
  const self = new Map<number, number>()
  for (let i = 0; i < p.samples.length; i++) {
    const dt = (p.timeDeltas[i + 1] ?? 0) / 1000
    self.set(p.samples[i], (self.get(p.samples[i]) ?? 0) + dt)
  }
  const totalMs = (p.endTime - p.startTime) / 1000
  const fn = new Map<string, number>()
  const grp = new Map<string, number>()
  for (const [id, ms] of self) {
    const n = byId.get(id)!
    const {functionName, url, lineNumber} = n.callFrame
    const buildDir = path.dirname(path.dirname(BIN))
    const short = url.replace(/^file:\/\//, '').replace(buildDir + '/', '').replace(ROOT, '')
    const name = url ? `${functionName || '(anonymous)'}  ${short}:${lineNumber + 1}` : functionName || '(anonymous)'
    fn.set(name, (fn.get(name) ?? 0) + ms)
    let g: string
    if (!url) g = functionName.startsWith('(') ? functionName : `native ${functionName}`
    else if (url.startsWith('node:')) g = url
    else if (/node_modules\//.test(short)) g = `node_modules/${/node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(short)![1]}`
    else g = short.replace(/^\/?(dist\/)?/, '').replace(/\.js$/, '')
    grp.set(g, (grp.get(g) ?? 0) + ms)
  }
  const list = (m: Map<string, number>, n: number) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([name, ms]) => ({name, selfMs: Math.round(ms), pct: Math.round((ms / totalMs) * 1000) / 10}))
  return {totalMs: Math.round(totalMs), functions: list(fn, top), groups: list(grp, 12)}
}

/** Runs holyship under `node --cpu-prof`, keeps the profile in bench-results/ and prints its summary. */
async function profiled(args: string[], env: NodeJS.ProcessEnv, label: string, what: string): Promise<Record<string, unknown> | undefined> {
  const profDir = fs.mkdtempSync(path.join(WORK, 'prof-'))
  try {
    const t = await timed(process.execPath, ['--cpu-prof', '--cpu-prof-dir', profDir, BIN, ...args], {env})
    if (t.code !== 0) throw failed(`holyship ${what} (profiled)`, t)
    const file = fs.readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'))
    if (!file) {
      note('no .cpuprofile was written')
      return undefined
    }
    fs.mkdirSync(RESULTS, {recursive: true})
    const keep = path.join(RESULTS, `${path.basename(OUT, '.json')}-${label}.cpuprofile`)
    fs.copyFileSync(path.join(profDir, file), keep)
    const s = summariseProfile(keep)
    say(`\n${what}: ${fmtMs(t.wallMs)} wall under the profiler, ${t.cpuS.toFixed(1)} s cpu, peak RSS ${fmtBytes(t.maxRssKb * 1024)}, profile ${path.relative(ROOT, keep)} (${s.totalMs} ms)`)
    say('  self time by module:')
    for (const g of s.groups) say(`    ${String(g.selfMs).padStart(7)} ms ${String(g.pct).padStart(5)}%  ${g.name}`)
    say('  top self-time functions:')
    for (const f of s.functions) say(`    ${String(f.selfMs).padStart(7)} ms ${String(f.pct).padStart(5)}%  ${f.name}`)
    return {what, wallMs: Math.round(t.wallMs), cpuS: t.cpuS, maxRssKb: t.maxRssKb, file: path.relative(ROOT, keep), ...s}
  } finally {
    fs.rmSync(profDir, {recursive: true, force: true})
  }
}

async function profileHolyship(engine: Engine, mountpoint: string, ds: DatasetInfo): Promise<unknown> {
  say('\n== CPU profile of holyship (node --cpu-prof): first and unchanged snapshot into a fresh repository, then a restore --path')
  const runDir = path.join(WORK, 'profile')
  fs.mkdirSync(runDir, {recursive: true})
  fillVolume(mountpoint, ds)
  const ctx: Ctx = {run: -1, engine, mountpoint, runDir}
  await holyship.setup(ctx)
  const out: Record<string, unknown> = {}
  const steps: {phase: string; what: string; args: string[]}[] = [
    {phase: 'first', what: 'first snapshot', args: ['snapshot', CONTAINER, '--json']},
    {phase: 'unchanged', what: 'unchanged re-snapshot', args: ['snapshot', CONTAINER, '--json']},
    {phase: 'restore', what: 'restore --path /data', args: ['restore', `latest:${CONTAINER}`, '--path', '/data', '--target', path.join(runDir, 'restore'), '--json']},
  ]
  for (const {phase, what, args} of steps) {
    await syncDisks()
    const r = await profiled(args, hsEnv(ctx), phase, what)
    if (r) out[phase] = r
  }
  if (!argv.keep) fs.rmSync(runDir, {recursive: true, force: true})
  return out
}

// ------------------------------------------------------------------------------------------------
// --scale

interface ScaleSample {
  kind: 'files' | 'big'
  files: number
  bytes: number
  generateMs: number
  snapshotMs: number
  cpuS: number
  maxRssKb: number
  storedBytes: number
  code: number
  reported?: unknown
  error?: string
}

/** N small files, 1000 a directory, 0..1 KiB of text each (distinct: no dedup between them). */
function generateSmallFiles(root: string, n: number): number {
  const rand = prng(7)
  const base = Buffer.from(Array.from({length: 4096}, (_, i) => `line ${i} lorem ipsum dolor sit amet ${(i * 2654435761) >>> 0}\n`).join(''))
  let bytes = 0
  for (let i = 0; i < n; i++) {
    if (i % 1000 === 0) fs.mkdirSync(path.join(root, `d${String(i / 1000).padStart(4, '0')}`))
    const size = Math.floor(rand() * 1024)
    const off = Math.floor(rand() * (base.length - 1024))
    const head = Buffer.from(`file ${i}\n`)
    const body = Buffer.concat([head, base.subarray(off, off + size)])
    fs.writeFileSync(path.join(root, `d${String(Math.floor(i / 1000)).padStart(4, '0')}`, `f${i}.txt`), body)
    bytes += body.length
    if ((i + 1) % 100_000 === 0) note(`  generated ${i + 1} files`)
  }
  return bytes
}

async function scale(results: Results, save: () => void): Promise<void> {
  note('starting a private Docker engine')
  const engine = await startEngine('scale')
  await importBusybox(engine)
  const samples: ScaleSample[] = []
  results.scale = {files: SCALE_FILES, bigSize: BIG_SIZE, samples}
  const variants: {kind: 'files' | 'big'; n: number}[] = [
    {kind: 'files', n: Math.floor(SCALE_FILES / 2)},
    {kind: 'files', n: SCALE_FILES},
    {kind: 'big', n: Math.floor(BIG_SIZE / 2)},
    {kind: 'big', n: BIG_SIZE},
  ]
  for (const [i, v] of variants.entries()) {
    const label = v.kind === 'files' ? `${v.n} small files` : `one ${fmtBytes(v.n)} file`
    say(`\n== scale ${i + 1}/${variants.length}: ${label}`)
    const vol = `scale-${i}`
    const name = `scale-${i}`
    await engine.docker.createVolume({Name: vol})
    const mp = ((await engine.docker.getVolume(vol).inspect()) as {Mountpoint: string}).Mountpoint
    const c = await engine.docker.createContainer({name, Image: BUSYBOX_IMAGE, Cmd: ['sleep', '999999999'], HostConfig: {Binds: [`${vol}:/data`]}})
    await c.start()
    const runDir = path.join(WORK, `scale-${i}`)
    fs.mkdirSync(runDir, {recursive: true})
    const ctx: Ctx = {run: i, engine, mountpoint: mp, runDir}
    try {
      const t0 = performance.now()
      let bytes: number
      let files: number
      if (v.kind === 'files') {
        bytes = generateSmallFiles(mp, v.n)
        files = v.n
      } else {
        writeRandomFile(path.join(mp, 'big.bin'), v.n, `big-${v.n}`)
        bytes = v.n
        files = 1
      }
      must('sync', [])
      const generateMs = performance.now() - t0
      say(`   generated in ${fmtMs(generateMs)} (incl. sync)`)
      await holyship.setup(ctx)
      const t = await timed(process.execPath, [BIN, 'snapshot', name, '--json'], {env: {...hsEnv(ctx)}})
      const stored = holyship.stored(ctx).stored
      const s: ScaleSample = {
        kind: v.kind,
        files,
        bytes,
        generateMs: Math.round(generateMs),
        snapshotMs: Math.round(t.wallMs),
        cpuS: t.cpuS,
        maxRssKb: t.maxRssKb,
        storedBytes: stored,
        code: t.code,
        reported: parseJson(t.stdout),
        ...(t.code !== 0 ? {error: (t.stderr || t.stdout).trim().split('\n').slice(-5).join('\n')} : {}),
      }
      samples.push(s)
      say(
        t.code === 0
          ? `   holyship snapshot: ${fmtMs(t.wallMs)}, ${v.kind === 'files' ? `${Math.round(files / (t.wallMs / 1000))} files/s` : `${(bytes / MiB / (t.wallMs / 1000)).toFixed(0)} MiB/s`}, cpu ${t.cpuS.toFixed(1)} s, peak RSS ${fmtBytes(t.maxRssKb * 1024)}, stored ${fmtBytes(stored)}`
          : `   holyship snapshot FAILED (exit ${t.code}) after ${fmtMs(t.wallMs)}, peak RSS ${fmtBytes(t.maxRssKb * 1024)}:\n${s.error}`,
      )
      save()
      if (argv.profile && i % 2 === 0) {
        // a second, profiled snapshot of the half-size variant into a fresh repository
        const pctx: Ctx = {...ctx, runDir: path.join(runDir, 'profiled')}
        await holyship.setup(pctx)
        await syncDisks()
        const p = await profiled(['snapshot', name, '--json'], hsEnv(pctx), `scale-${v.kind}`, `profiled snapshot of ${label}`)
        if (p) (results.scale as {profiles?: unknown[]}).profiles = [...((results.scale as {profiles?: unknown[]}).profiles ?? []), p]
        save()
      }
    } finally {
      await engine.docker.getContainer(name).remove({force: true}).catch(() => undefined)
      const t0 = performance.now()
      // rm -rf: several times faster than fs.rmSync on a million files
      await runAsync('rm', ['-rf', '--one-file-system', mp])
      fs.mkdirSync(mp, {recursive: true})
      await engine.docker.getVolume(vol).remove().catch(() => undefined)
      if (!argv.keep) fs.rmSync(runDir, {recursive: true, force: true})
      note(`cleaned up in ${fmtMs(performance.now() - t0)}`)
    }
  }
  say('\nscale (holyship first snapshot)')
  say(`${'data'.padEnd(22)} ${'generate'.padStart(10)} ${'snapshot'.padStart(10)} ${'rate'.padStart(14)} ${'cpu'.padStart(9)} ${'peak RSS'.padStart(10)} ${'stored'.padStart(10)}`)
  for (const s of samples) {
    const rate = s.code !== 0 ? 'FAILED' : s.kind === 'files' ? `${Math.round(s.files / (s.snapshotMs / 1000))} files/s` : `${(s.bytes / MiB / (s.snapshotMs / 1000)).toFixed(0)} MiB/s`
    say(
      `${(s.kind === 'files' ? `${s.files} files` : `1 file, ${fmtBytes(s.bytes)}`).padEnd(22)} ${fmtMs(s.generateMs).padStart(10)} ${fmtMs(s.snapshotMs).padStart(10)} ${rate.padStart(14)} ${`${s.cpuS.toFixed(1)} s`.padStart(9)} ${fmtBytes(s.maxRssKb * 1024).padStart(10)} ${fmtBytes(s.storedBytes).padStart(10)}`,
    )
  }
  for (const kind of ['files', 'big'] as const) {
    const [half, full] = samples.filter((s) => s.kind === kind)
    if (!half || !full || half.code !== 0 || full.code !== 0) continue
    const tr = full.snapshotMs / half.snapshotMs
    const mr = full.maxRssKb / half.maxRssKb
    say(`  ${kind === 'files' ? 'small files' : 'big file'}: 2x the data -> ${tr.toFixed(2)}x the time (linear: ~2x), ${mr.toFixed(2)}x the peak RSS (bounded: ~1x)`)
  }
  await stopAllEngines()
}

// ------------------------------------------------------------------------------------------------
// main

const STAMP = new Date().toISOString().replace(/[:.]/g, '-').replace(/Z$/, 'Z')
const OUT = path.resolve(argv.out ?? path.join(RESULTS, `bench-${argv.scale ? 'scale-' : argv.latency ? 'latency-' : ''}${STAMP}.json`))

async function main(): Promise<void> {
  if (process.getuid?.() !== 0 && !argv.latency) usage('the benchmark starts a private Docker engine and reads its volumes: run it as root')
  WORK = fs.mkdtempSync(path.join(os.tmpdir(), 'holyship-bench-'))
  const cleanupWork = () => {
    if (!argv.keep) fs.rmSync(WORK, {recursive: true, force: true})
  }
  process.on('exit', cleanupWork)
  const results: Results = {
    version: 1,
    startedAt: new Date().toISOString(),
    options: {runs: RUNS, small: argv.small, profile: argv.profile, push: argv.push, scale: argv.scale, files: SCALE_FILES, bigSize: BIG_SIZE, latency: argv.latency, latencyRuns: LATENCY_RUNS},
    machine: machineInfo(),
    samples: [],
  }
  results.machine.build = privateBuild()
  note(`benchmarking holyship compiled from the current sources (hash ${(results.machine.build as {sourceHash: string}).sourceHash}) into ${WORK}/holyship`)
  const save = () => {
    fs.mkdirSync(path.dirname(OUT), {recursive: true})
    fs.writeFileSync(OUT, JSON.stringify(results, null, 1) + '\n')
  }
  try {
    if (argv.latency) {
      await latencyPhase(
        {bin: BIN, work: WORK, runs: LATENCY_RUNS, timed, say, note, profiled: argv.profile ? profiled : undefined},
        (r) => {
          results.latency = r
          save()
        },
      )
    } else if (argv.scale) {
      await scale(results, save)
    } else {
      results.dataset = await ensureDataset(argv.small!)
      await comparison(results, save)
    }
    results.finishedAt = new Date().toISOString()
    save()
    say(`\nevery sample: ${path.relative(process.cwd(), OUT) || OUT}${argv.keep ? `\nwork directory kept: ${WORK}` : ''}`)
  } finally {
    await stopAllEngines()
  }
}

main().catch(async (e) => {
  process.stderr.write(`bench failed: ${(e as Error).stack ?? e}\n`)
  await stopAllEngines().catch(() => undefined)
  process.exit(1)
})
