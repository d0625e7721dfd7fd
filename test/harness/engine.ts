/**
 * Private Docker engines for integration tests.
 *
 * Every engine is a real dockerd + containerd pair that lives entirely under /tmp/hs-<run>/<name>/
 * and inside its own network namespace (hs-<run>-<name>), so it gets its own docker0, its own
 * iptables, its own containerd namespace and cgroup parent, and never shares anything with a
 * user's own Docker (/var/run/docker.sock, /var/lib/docker, /run/containerd/containerd.sock and
 * /etc/docker/daemon.json are never used).
 *
 * Layout (exec-root kept short: unix socket paths are limited to ~108 bytes):
 *   /tmp/hs-<run>/owner.json           pid + start time of the process that owns the run
 *   /tmp/hs-<run>/<name>/meta.json     what a later sweep needs to clean up after a crash
 *   /tmp/hs-<run>/<name>/docker.sock   the engine's API socket
 *   /tmp/hs-<run>/<name>/data          dockerd --data-root (containerd's root is data/containerd)
 *   /tmp/hs-<run>/<name>/exec          dockerd --exec-root (containerd's state is exec/containerd)
 *   /tmp/hs-<run>/<name>/*.log         dockerd.log, containerd.log
 *
 * Teardown runs from Engine.stop(), from stopAllEngines(), and synchronously from the process's
 * 'exit' / SIGINT / SIGTERM / SIGHUP handlers; run directories left behind by a process that died
 * (SIGKILL, OOM...) are swept the next time any process starts an engine.
 */
import {spawn, spawnSync} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import * as fs from 'node:fs'
import * as http from 'node:http'
import * as net from 'node:net'
import * as path from 'node:path'
import {PassThrough} from 'node:stream'
import Dockerode from 'dockerode'

// ------------------------------------------------------------------------------------------------
// public API

/** The serialisable part of an engine: what global setup hands to test files. */
export interface EngineInfo {
  name: string
  /** e.g. 'unix:///tmp/hs-k3x9qa/a/docker.sock' */
  dockerHost: string
  socketPath: string
  /** dockerd --data-root */
  dataRoot: string
  /** network namespace name (under /var/run/netns) the daemons run in */
  netns: string
}

export interface Engine extends EngineInfo {
  docker: Dockerode
  /** Stops containers, the daemons, unmounts and deletes everything. Idempotent. */
  stop(): Promise<void>
}

/** A client for an engine started elsewhere (e.g. by global setup, in another process). */
export interface EngineClient extends EngineInfo {
  docker: Dockerode
}

export const RUN_ROOT = '/tmp'
export const CACHE_DIR = process.env.HOLYSHIP_TEST_CACHE_DIR || '/var/cache/holyship-test'
const NETNS_DIR = '/var/run/netns'
const CGROUP_ROOT = '/sys/fs/cgroup'
const RUN_DIR_RE = /^hs-([a-z0-9]{6})$/

/**
 * Starts a private dockerd (and its own containerd) in a fresh network namespace.
 * `name` is a short label ('a', 'b', ...); it is sanitised and made unique within the process.
 */
export async function startEngine(name: string): Promise<Engine> {
  ensureSystemDeps()
  sweepStaleOnce()
  installExitHandlers()
  const run = ensureRunDir()
  const short = uniqueShortName(name)
  const dir = path.join(run.dir, short)
  const rec: EngineRecord = {
    name,
    dir,
    execRoot: path.join(dir, 'exec'),
    dataRoot: path.join(dir, 'data'),
    socketPath: path.join(dir, 'docker.sock'),
    containerdSocket: path.join(dir, 'exec', 'ctd.sock'),
    netns: `hs-${run.id}-${short}`,
    cgroupParent: `hs-${run.id}-${short}`,
  }
  for (const sock of [rec.socketPath, rec.containerdSocket + '.ttrpc']) {
    if (Buffer.byteLength(sock) > 100) throw new Error(`socket path too long for a unix socket: ${sock}`)
  }
  live.set(dir, rec)
  const t0 = Date.now()
  try {
    fs.mkdirSync(rec.execRoot, {recursive: true, mode: 0o711})
    fs.mkdirSync(rec.dataRoot, {recursive: true, mode: 0o711})
    writeMeta(rec)
    run_('ip', ['netns', 'add', rec.netns])
    run_('ip', ['-n', rec.netns, 'link', 'set', 'lo', 'up'])
    if (!isNsfsMount(path.join(NETNS_DIR, rec.netns))) throw new Error(`netns ${rec.netns} was not created`)

    // containerd: started by us (not by dockerd) so a system containerd at
    // /run/containerd/containerd.sock is never picked up.
    const ctdConfig = path.join(dir, 'containerd.toml')
    fs.writeFileSync(ctdConfig, containerdToml(rec))
    rec.containerdPid = spawnInNetns(rec, bin('containerd'), ['--config', ctdConfig], path.join(dir, 'containerd.log'))
    writeMeta(rec)
    await waitFor(
      `containerd of engine ${name}`,
      30_000,
      () => rec.containerdPid !== undefined && isAlive(rec.containerdPid),
      () => canConnect(rec.containerdSocket),
      path.join(dir, 'containerd.log'),
    )

    const tContainerd = Date.now() - t0
    const daemonJson = path.join(dir, 'daemon.json')
    fs.writeFileSync(daemonJson, JSON.stringify(daemonConfig(rec), null, 2) + '\n')
    const args = [
      '--config-file', daemonJson,
      '--data-root', rec.dataRoot,
      '--exec-root', rec.execRoot,
      '--pidfile', path.join(dir, 'dockerd.pid'),
      '-H', `unix://${rec.socketPath}`,
      '--containerd', rec.containerdSocket,
      '--containerd-namespace', rec.netns,
      '--containerd-plugins-namespace', `${rec.netns}-plugins`,
      '--exec-opt', 'native.cgroupdriver=cgroupfs',
      '--cgroup-parent', `/${rec.cgroupParent}`,
      '--storage-driver', process.env.HOLYSHIP_TEST_STORAGE_DRIVER || 'overlay2',
      ...(process.env.HOLYSHIP_TEST_DOCKERD_ARGS ? process.env.HOLYSHIP_TEST_DOCKERD_ARGS.split(/\s+/).filter(Boolean) : []),
    ]
    rec.dockerdPid = spawnInNetns(rec, bin('dockerd'), args, path.join(dir, 'dockerd.log'))
    writeMeta(rec)
    await waitFor(
      `dockerd of engine ${name}`,
      60_000,
      () => rec.dockerdPid !== undefined && isAlive(rec.dockerdPid),
      () => ping(rec.socketPath),
      path.join(dir, 'dockerd.log'),
    )
    const docker = new Dockerode({socketPath: rec.socketPath})
    const info = (await docker.info()) as {DockerRootDir?: string; ID?: string}
    if (info.DockerRootDir !== rec.dataRoot) {
      throw new Error(`engine ${name} answers with DockerRootDir=${info.DockerRootDir}, expected ${rec.dataRoot}`)
    }
    log(`engine ${name} up in ${Date.now() - t0} ms (containerd ${tContainerd} ms; ${rec.socketPath}, netns ${rec.netns})`)
    return {
      name,
      dockerHost: `unix://${rec.socketPath}`,
      socketPath: rec.socketPath,
      dataRoot: rec.dataRoot,
      netns: rec.netns,
      docker,
      stop: () => stopRecord(rec, docker),
    }
  } catch (e) {
    const tails = ['containerd.log', 'dockerd.log']
      .map((f) => `--- ${f} (last lines) ---\n${tail(path.join(dir, f), 30)}`)
      .join('\n')
    await stopRecord(rec).catch(() => {})
    const err = e instanceof Error ? e : new Error(String(e))
    err.message = `starting engine ${name} failed: ${err.message}\n${tails}`
    throw err
  }
}

/** Stops every engine this process started. */
export async function stopAllEngines(): Promise<void> {
  await Promise.all([...live.values()].map((rec) => stopRecord(rec)))
}

/** A Dockerode client for an engine described by an EngineInfo (e.g. one from `inject`). */
export function connectEngine(info: EngineInfo): EngineClient {
  if (path.resolve(info.socketPath) === '/var/run/docker.sock' || path.resolve(info.socketPath) === '/run/docker.sock') {
    throw new Error('refusing to use the system Docker socket in tests')
  }
  return {...engineInfo(info), docker: new Dockerode({socketPath: info.socketPath})}
}

/** The serialisable part of an engine. */
export function engineInfo(e: EngineInfo): EngineInfo {
  return {name: e.name, dockerHost: e.dockerHost, socketPath: e.socketPath, dataRoot: e.dataRoot, netns: e.netns}
}

export interface ExecResult {
  exitCode: number
  stdout: string
  stderr: string
}

/** `docker exec` (non-interactive): runs cmd in a running container and collects its output. */
export async function dockerExec(
  docker: Dockerode,
  containerId: string,
  cmd: string[],
  opts: {user?: string; env?: string[]; workingDir?: string} = {},
): Promise<ExecResult> {
  const exec = await docker.getContainer(containerId).exec({
    Cmd: cmd,
    AttachStdout: true,
    AttachStderr: true,
    User: opts.user,
    Env: opts.env,
    WorkingDir: opts.workingDir,
  })
  const stream = await exec.start({hijack: true, stdin: false})
  const {stdout, stderr} = await collectDemuxed(docker, stream)
  const {ExitCode} = await exec.inspect()
  return {exitCode: ExitCode ?? -1, stdout, stderr}
}

/** `docker run --rm` (non-interactive): creates, starts, waits for and removes a container. */
export async function dockerRun(
  docker: Dockerode,
  image: string,
  cmd: string[],
  opts: Partial<Dockerode.ContainerCreateOptions> = {},
): Promise<ExecResult> {
  const container = await docker.createContainer({Image: image, Cmd: cmd, Tty: false, ...opts})
  try {
    await container.start()
    const {StatusCode} = (await container.wait()) as {StatusCode: number}
    const logs = (await container.logs({stdout: true, stderr: true, follow: false})) as unknown as Buffer
    const {stdout, stderr} = demuxBuffer(logs)
    return {exitCode: StatusCode, stdout, stderr}
  } finally {
    await container.remove({force: true, v: true}).catch(() => {})
  }
}

// ------------------------------------------------------------------------------------------------
// system packages

let depsChecked = false

/** Installs (apt) what the harness needs when it is missing. Needs root, as do the engines. */
export function ensureSystemDeps(): void {
  if (depsChecked) return
  if (process.platform !== 'linux') throw new Error('the integration test harness needs Linux')
  const missing: string[] = []
  if (!which('dockerd') || !which('containerd') || !which('runc')) missing.push('docker.io')
  if (!isStaticElf('/bin/busybox')) missing.push('busybox-static')
  if (!which('debootstrap')) missing.push('debootstrap')
  if (!which('setfattr')) missing.push('attr')
  if (!which('ip')) missing.push('iproute2')
  if (!which('nsenter')) missing.push('util-linux')
  if (!which('iptables')) missing.push('iptables')
  if (process.getuid?.() !== 0) {
    throw new Error(
      'integration tests start private Docker engines and must run as root' +
        (missing.length ? `; also missing: apt-get install -y ${missing.join(' ')}` : ''),
    )
  }
  if (missing.length) {
    log(`installing missing system packages: ${missing.join(' ')}`)
    aptInstall(missing)
    for (const [cmd, pkg] of [['dockerd', 'docker.io'], ['nsenter', 'util-linux'], ['ip', 'iproute2']]) {
      if (!which(cmd)) throw new Error(`${cmd} still missing after apt-get install ${pkg}`)
    }
    if (!isStaticElf('/bin/busybox')) throw new Error('/bin/busybox is still not a static binary after installing busybox-static')
  }
  depsChecked = true
}

function aptInstall(pkgs: string[]): void {
  const env = {...process.env, DEBIAN_FRONTEND: 'noninteractive'}
  // Keep a freshly installed docker.io from starting the system's own dockerd (systemd hosts).
  const policy = '/usr/sbin/policy-rc.d'
  const ownPolicy = !fs.existsSync(policy)
  if (ownPolicy) fs.writeFileSync(policy, '#!/bin/sh\nexit 101\n', {mode: 0o755})
  try {
    for (const args of [['update'], ['install', '-y', ...pkgs]]) {
      const r = spawnSync('apt-get', args, {env, stdio: ['ignore', 'inherit', 'inherit']})
      if (r.status !== 0) throw new Error(`apt-get ${args.join(' ')} failed (exit ${r.status ?? r.signal})`)
    }
  } finally {
    if (ownPolicy) fs.rmSync(policy, {force: true})
  }
}

/** true when `file` is an ELF executable without a PT_INTERP (dynamic loader) program header */
function isStaticElf(file: string): boolean {
  let fd: number | undefined
  try {
    fd = fs.openSync(file, 'r')
    const h = Buffer.alloc(64)
    fs.readSync(fd, h, 0, 64, 0)
    if (h.readUInt32BE(0) !== 0x7f454c46 || h[4] !== 2 || h[5] !== 1) return false // ELF64 LE only
    const phoff = Number(h.readBigUInt64LE(32))
    const phentsize = h.readUInt16LE(54)
    const phnum = h.readUInt16LE(56)
    const ph = Buffer.alloc(phentsize * phnum)
    fs.readSync(fd, ph, 0, ph.length, phoff)
    for (let i = 0; i < phnum; i++) if (ph.readUInt32LE(i * phentsize) === 3) return false // PT_INTERP
    return true
  } catch {
    return false
  } finally {
    if (fd !== undefined) fs.closeSync(fd)
  }
}

const SBIN_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']

export function which(cmd: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':').filter(Boolean), ...SBIN_DIRS]
  for (const d of dirs) {
    const p = path.join(d, cmd)
    try {
      fs.accessSync(p, fs.constants.X_OK)
      if (fs.statSync(p).isFile()) return p
    } catch {
      // next
    }
  }
  return undefined
}

function bin(cmd: string): string {
  const p = which(cmd)
  if (!p) throw new Error(`${cmd} not found`)
  return p
}

// ------------------------------------------------------------------------------------------------
// daemons

interface EngineRecord {
  name: string
  dir: string
  execRoot: string
  dataRoot: string
  socketPath: string
  containerdSocket: string
  netns: string
  cgroupParent: string
  dockerdPid?: number
  containerdPid?: number
  stopping?: Promise<void>
}

const live = new Map<string, EngineRecord>()

function containerdToml(rec: EngineRecord): string {
  const q = (s: string) => JSON.stringify(s)
  return [
    'version = 2',
    `root = ${q(path.join(rec.dataRoot, 'containerd'))}`,
    `state = ${q(path.join(rec.execRoot, 'containerd'))}`,
    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
    '[grpc]',
    `  address = ${q(rec.containerdSocket)}`,
    '[ttrpc]',
    `  address = ${q(rec.containerdSocket + '.ttrpc')}`,
    '[debug]',
    '  address = ""',
    '[metrics]',
    '  address = ""',
    '[plugins]',
    '  [plugins."io.containerd.internal.v1.opt"]',
    `    path = ${q(path.join(rec.dataRoot, 'containerd', 'opt'))}`,
    '',
  ].join('\n')
}

let dockerdMajor: number | undefined

function daemonConfig(rec: EngineRecord): Record<string, unknown> {
  if (dockerdMajor === undefined) {
    const out = spawnSync(bin('dockerd'), ['--version'], {encoding: 'utf8'}).stdout ?? ''
    dockerdMajor = Number(/version (\d+)\./i.exec(out)?.[1] ?? 0)
  }
  // Before Docker 23 the engine ID (/info .ID) comes from a trust key, by default the shared
  // /etc/docker/key.json: give each engine its own so A and B are told apart.
  return dockerdMajor > 0 && dockerdMajor < 23 ? {'deprecated-key-path': path.join(rec.dir, 'key.json')} : {}
}

function spawnInNetns(rec: EngineRecord, cmd: string, args: string[], logFile: string): number {
  const fd = fs.openSync(logFile, 'a')
  try {
    const env = {...process.env}
    for (const k of ['NOTIFY_SOCKET', 'DOCKER_HOST', 'DOCKER_CONTEXT', 'LISTEN_PID', 'LISTEN_FDS']) delete env[k]
    // nsenter (not `ip netns exec`, which remounts /sys and hides the cgroup mounts) execs cmd in
    // place, so the pid is the daemon's. detached: a terminal's ^C must reach us, not the daemons.
    const child = spawn(bin('nsenter'), [`--net=${path.join(NETNS_DIR, rec.netns)}`, '--', cmd, ...args], {
      detached: true,
      stdio: ['ignore', fd, fd],
      env,
    })
    child.on('error', () => {})
    child.unref()
    if (child.pid === undefined) throw new Error(`could not spawn ${cmd}`)
    return child.pid
  } finally {
    fs.closeSync(fd)
  }
}

async function waitFor(
  what: string,
  timeoutMs: number,
  alive: () => boolean,
  ready: () => Promise<boolean>,
  logFile: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await ready()) return
    if (!alive()) throw new Error(`${what} exited during startup (see ${logFile})`)
    if (Date.now() > deadline) throw new Error(`${what} did not answer within ${timeoutMs} ms (see ${logFile})`)
    await sleep(50)
  }
}

function canConnect(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath)
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

function ping(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get({socketPath, path: '/_ping', timeout: 2000}, (res) => {
      res.resume()
      resolve(res.statusCode === 200)
    })
    req.on('timeout', () => req.destroy())
    req.on('error', () => resolve(false))
  })
}

function stopRecord(rec: EngineRecord, docker?: Dockerode): Promise<void> {
  if (!live.has(rec.dir)) return Promise.resolve()
  return (rec.stopping ??= stopDaemons(rec, docker))
}

async function stopDaemons(rec: EngineRecord, docker?: Dockerode): Promise<void> {
  try {
    if (rec.dockerdPid && isAlive(rec.dockerdPid)) {
      const client = docker ?? new Dockerode({socketPath: rec.socketPath})
      await withTimeout(
        (async () => {
          const running = await client.listContainers()
          await Promise.all(running.map((c) => client.getContainer(c.Id).stop({t: 1}).catch(() => {})))
        })(),
        20_000,
      ).catch(() => {})
      await terminate(rec.dockerdPid, 20_000)
    }
    if (rec.containerdPid && isAlive(rec.containerdPid)) await terminate(rec.containerdPid, 10_000)
  } finally {
    scrubEngineSync(rec, 0)
    live.delete(rec.dir)
    removeRunDirIfIdle()
  }
}

/** SIGTERM, wait up to graceMs for the process to go, then SIGKILL. */
async function terminate(pid: number, graceMs: number): Promise<void> {
  signal(pid, 'SIGTERM')
  const deadline = Date.now() + graceMs
  while (isAlive(pid) && Date.now() < deadline) await sleep(50)
  if (isAlive(pid)) {
    signal(pid, 'SIGKILL')
    const hard = Date.now() + 5_000
    while (isAlive(pid) && Date.now() < hard) await sleep(50)
  }
}

/**
 * Synchronous, best-effort, idempotent teardown of one engine: usable from 'exit' handlers and
 * for engines whose owner died. Kills the containers (via their cgroups), the daemons (SIGTERM,
 * graceMs, SIGKILL), anything else left in the engine's netns or naming its directory (shims,
 * docker-proxy), unmounts everything under its directory, deletes the netns, the cgroups and the
 * directory.
 */
function scrubEngineSync(rec: EngineRecord, graceMs: number): void {
  killCgroupSync(rec.cgroupParent)
  const daemons = [rec.dockerdPid, rec.containerdPid].filter(
    (p): p is number => p !== undefined && isAlive(p) && cmdline(p).includes(rec.dir + '/'),
  )
  for (const p of daemons) signal(p, 'SIGTERM')
  waitSync(() => daemons.every((p) => !isAlive(p)), graceMs)
  const nsPath = path.join(NETNS_DIR, rec.netns)
  const nsIno = isNsfsMount(nsPath) ? fs.statSync(nsPath).ino : undefined
  for (let round = 0; round < 3; round++) {
    const victims = findProcs(rec.dir + '/', nsIno)
    if (!victims.length) break
    for (const p of victims) signal(p, 'SIGKILL')
    waitSync(() => victims.every((p) => !isAlive(p)), 5_000)
  }
  killCgroupSync(rec.cgroupParent)
  const leftover = unmountAllUnder(rec.dir)
  if (fs.existsSync(nsPath)) spawnSync('ip', ['netns', 'delete', rec.netns], {stdio: 'ignore'})
  rmdirCgroupSync(rec.cgroupParent)
  if (leftover.length) {
    log(`not deleting ${rec.dir}: still mounted: ${leftover.join(', ')}`)
  } else {
    fs.rmSync(rec.dir, {recursive: true, force: true, maxRetries: 3})
  }
}

function writeMeta(rec: EngineRecord): void {
  const {stopping: _, ...meta} = rec
  fs.writeFileSync(path.join(rec.dir, 'meta.json'), JSON.stringify(meta, null, 2) + '\n')
}

// ------------------------------------------------------------------------------------------------
// run directory, exit handlers, stale sweep

interface RunDir {
  id: string
  dir: string
}
interface Owner {
  pid: number
  startTime: string
}

let currentRun: RunDir | undefined
const usedShortNames = new Set<string>()

function ensureRunDir(): RunDir {
  if (currentRun && fs.existsSync(currentRun.dir)) return currentRun
  for (;;) {
    const id = randomId(6)
    const dir = path.join(RUN_ROOT, `hs-${id}`)
    try {
      fs.mkdirSync(dir, {mode: 0o711})
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue
      throw e
    }
    const owner: Owner = {pid: process.pid, startTime: procStartTime(process.pid) ?? ''}
    fs.writeFileSync(path.join(dir, 'owner.json'), JSON.stringify(owner) + '\n')
    currentRun = {id, dir}
    return currentRun
  }
}

function removeRunDirIfIdle(): void {
  if (!currentRun || live.size) return
  try {
    const rest = fs.readdirSync(currentRun.dir).filter((f) => f !== 'owner.json')
    if (!rest.length && !unmountAllUnder(currentRun.dir).length) fs.rmSync(currentRun.dir, {recursive: true, force: true})
  } catch {
    // already gone
  }
  currentRun = undefined
  usedShortNames.clear()
}

function uniqueShortName(name: string): string {
  const base = name.toLowerCase().replace(/[^a-z0-9]/g, '').slice(0, 8) || 'e'
  let short = base
  for (let i = 2; usedShortNames.has(short); i++) short = `${base.slice(0, 6)}${i}`
  usedShortNames.add(short)
  return short
}

function randomId(n: number): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789'
  return [...randomBytes(n)].map((b) => alphabet[b % alphabet.length]).join('')
}

let handlersInstalled = false

function installExitHandlers(): void {
  if (handlersInstalled) return
  handlersInstalled = true
  process.on('exit', emergencyCleanup)
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = () => {
      emergencyCleanup()
      process.off(sig, onSignal)
      // Let whoever else handles the signal (vitest exits 1 ms later) do so; if nobody ends the
      // process, die of the signal as it would have without this handler.
      setTimeout(() => process.kill(process.pid, sig), 500)
    }
    process.on(sig, onSignal)
  }
}

function emergencyCleanup(): void {
  if (!live.size) return
  log(`cleaning up ${live.size} engine(s) on exit`)
  for (const rec of [...live.values()]) {
    try {
      scrubEngineSync(rec, 5_000)
    } catch (e) {
      log(`cleanup of ${rec.dir} failed: ${String(e)}`)
    }
    live.delete(rec.dir)
  }
  removeRunDirIfIdle()
}

let swept = false

function sweepStaleOnce(): void {
  if (swept) return
  swept = true
  sweepStale()
}

/**
 * Cleans up after runs whose owning process is gone: /tmp/hs-<id> run dirs, hs-<id>-* network
 * namespaces and cgroups without a run dir, and half-built image rootfs dirs in the cache.
 */
export function sweepStale(): void {
  swept = true
  let entries: string[] = []
  try {
    entries = fs.readdirSync(RUN_ROOT)
  } catch {
    // no /tmp?
  }
  for (const entry of entries) {
    const m = RUN_DIR_RE.exec(entry)
    if (!m) continue
    const dir = path.join(RUN_ROOT, entry)
    if (currentRun?.dir === dir || ownerAlive(dir)) continue
    log(`sweeping stale ${dir}`)
    for (const sub of safeReaddir(dir)) {
      const meta = path.join(dir, sub, 'meta.json')
      if (!fs.existsSync(meta)) continue
      try {
        const rec = JSON.parse(fs.readFileSync(meta, 'utf8')) as EngineRecord
        if (rec.dir !== path.join(dir, sub)) continue
        scrubEngineSync(rec, 2_000)
      } catch (e) {
        log(`sweeping ${path.join(dir, sub)} failed: ${String(e)}`)
      }
    }
    if (!unmountAllUnder(dir).length) fs.rmSync(dir, {recursive: true, force: true, maxRetries: 3})
  }
  const runExists = (id: string) => fs.existsSync(path.join(RUN_ROOT, `hs-${id}`))
  for (const ns of safeReaddir(NETNS_DIR)) {
    const m = /^hs-([a-z0-9]{6})-[a-z0-9]+$/.exec(ns)
    if (!m || runExists(m[1])) continue
    const nsPath = path.join(NETNS_DIR, ns)
    if (isNsfsMount(nsPath)) {
      const victims = findProcs(undefined, fs.statSync(nsPath).ino)
      for (const p of victims) signal(p, 'SIGKILL')
      waitSync(() => victims.every((p) => !isAlive(p)), 5_000)
    }
    spawnSync('ip', ['netns', 'delete', ns], {stdio: 'ignore'})
  }
  const cgroups = new Set<string>()
  for (const root of cgroupRoots()) {
    for (const cg of safeReaddir(root)) {
      const m = /^hs-([a-z0-9]{6})-[a-z0-9]+$/.exec(cg)
      if (m && !runExists(m[1])) cgroups.add(cg)
    }
  }
  for (const cg of cgroups) {
    killCgroupSync(cg)
    rmdirCgroupSync(cg)
  }
  for (const entry of safeReaddir(CACHE_DIR)) {
    const dir = path.join(CACHE_DIR, entry)
    if (!entry.startsWith('build-') || ownerAlive(dir)) continue
    if (!fs.existsSync(path.join(dir, 'owner.json')) && Date.now() - fs.statSync(dir).mtimeMs < 10 * 60_000) continue
    log(`sweeping stale ${dir}`)
    if (!unmountAllUnder(dir).length) fs.rmSync(dir, {recursive: true, force: true, maxRetries: 3})
  }
}

/** Marks `dir` as owned by this process (for sweepStale). */
export function writeOwner(dir: string): void {
  const owner: Owner = {pid: process.pid, startTime: procStartTime(process.pid) ?? ''}
  fs.writeFileSync(path.join(dir, 'owner.json'), JSON.stringify(owner) + '\n')
}

/** Whether the process recorded in `dir`/owner.json is still running (fresh dirs without one count as alive). */
export function ownerAlive(dir: string): boolean {
  let owner: Owner
  try {
    owner = JSON.parse(fs.readFileSync(path.join(dir, 'owner.json'), 'utf8')) as Owner
  } catch {
    // being created right now, or garbage: only old ones are stale
    try {
      return Date.now() - fs.statSync(dir).mtimeMs < 60_000
    } catch {
      return false
    }
  }
  return isAlive(owner.pid) && procStartTime(owner.pid) === owner.startTime
}

// ------------------------------------------------------------------------------------------------
// processes, mounts, cgroups (all synchronous)

function procStat(pid: number): string[] | undefined {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return s.slice(s.lastIndexOf(')') + 2).split(' ') // [0] = state (field 3)
  } catch {
    return undefined
  }
}

function procStartTime(pid: number): string | undefined {
  return procStat(pid)?.[19] // field 22
}

/** exists and is not a zombie */
export function isAlive(pid: number): boolean {
  const st = procStat(pid)
  return st !== undefined && st[0] !== 'Z' && st[0] !== 'X'
}

function cmdline(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ')
  } catch {
    return ''
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig)
  } catch {
    // gone
  }
}

/** pids whose command line mentions `dirPrefix`, or that live in the netns with inode `nsIno` */
function findProcs(dirPrefix: string | undefined, nsIno: number | undefined): number[] {
  const out: number[] = []
  for (const e of safeReaddir('/proc')) {
    if (!/^\d+$/.test(e)) continue
    const pid = Number(e)
    if (pid === process.pid || !isAlive(pid)) continue
    let hit = dirPrefix !== undefined && cmdline(pid).includes(dirPrefix)
    if (!hit && nsIno !== undefined) {
      try {
        hit = fs.readlinkSync(`/proc/${pid}/ns/net`) === `net:[${nsIno}]`
      } catch {
        // gone
      }
    }
    if (hit) out.push(pid)
  }
  return out
}

interface MountEntry {
  mountPoint: string
  fsType: string
}

function mounts(): MountEntry[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const f = line.split(' ')
      const sep = f.indexOf('-')
      return {mountPoint: unescape(f[4]), fsType: f[sep + 1]}
    })
}

function isNsfsMount(p: string): boolean {
  try {
    const real = path.join(fs.realpathSync(path.dirname(p)), path.basename(p)) // /var/run -> /run
    return mounts().some((m) => m.mountPoint === real && m.fsType === 'nsfs')
  } catch {
    return false
  }
}

/** Unmounts everything at or below dir (deepest first; lazily if busy). Returns what is left. */
export function unmountAllUnder(dir: string): string[] {
  const under = () =>
    mounts()
      .map((m) => m.mountPoint)
      .filter((mp) => mp === dir || mp.startsWith(dir + '/'))
      .sort((a, b) => b.length - a.length)
  for (let round = 0; round < 5; round++) {
    const mps = under()
    if (!mps.length) return []
    for (const mp of mps) {
      if (spawnSync('umount', [mp], {stdio: 'ignore'}).status !== 0) {
        spawnSync('umount', ['-l', mp], {stdio: 'ignore'})
      }
    }
  }
  return under()
}

function cgroupRoots(): string[] {
  const roots: string[] = []
  if (fs.existsSync(path.join(CGROUP_ROOT, 'cgroup.controllers'))) roots.push(CGROUP_ROOT) // v2
  for (const e of safeReaddir(CGROUP_ROOT)) {
    const p = path.join(CGROUP_ROOT, e)
    try {
      if (fs.statSync(p).isDirectory() && fs.existsSync(path.join(p, 'cgroup.procs'))) roots.push(p)
    } catch {
      // skip
    }
  }
  return roots
}

function cgroupTree(cg: string): string[] {
  const dirs: string[] = []
  const walk = (d: string) => {
    dirs.push(d)
    for (const e of safeReaddir(d, true)) if (e.isDirectory()) walk(path.join(d, e.name))
  }
  for (const root of cgroupRoots()) {
    const d = path.join(root, cg)
    if (fs.existsSync(d)) walk(d)
  }
  return dirs
}

function killCgroupSync(cg: string): void {
  for (let round = 0; round < 3; round++) {
    const pids = new Set<number>()
    for (const d of cgroupTree(cg)) {
      try {
        for (const l of fs.readFileSync(path.join(d, 'cgroup.procs'), 'utf8').split('\n')) if (l) pids.add(Number(l))
      } catch {
        // gone
      }
    }
    if (!pids.size) return
    for (const p of pids) signal(p, 'SIGKILL')
    waitSync(() => [...pids].every((p) => !isAlive(p)), 5_000)
  }
}

function rmdirCgroupSync(cg: string): void {
  for (const d of cgroupTree(cg).reverse()) {
    try {
      fs.rmdirSync(d)
    } catch {
      // busy or gone
    }
  }
}

// ------------------------------------------------------------------------------------------------
// small helpers

function safeReaddir(dir: string): string[]
function safeReaddir(dir: string, withTypes: true): fs.Dirent[]
function safeReaddir(dir: string, withTypes?: true): string[] | fs.Dirent[] {
  try {
    return withTypes ? fs.readdirSync(dir, {withFileTypes: true}) : fs.readdirSync(dir)
  } catch {
    return []
  }
}

function run_(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, {encoding: 'utf8'})
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${(r.stderr || r.error?.message || '').trim()}`)
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4))

function waitSync(done: () => boolean, timeoutMs: number): void {
  const deadline = Date.now() + timeoutMs
  while (!done() && Date.now() < deadline) Atomics.wait(sleepCell, 0, 0, 20)
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    p,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

export function tail(file: string, lines: number): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
  } catch {
    return '(no log)'
  }
}

export function log(msg: string): void {
  process.stderr.write(`[holyship-harness] ${msg}\n`)
}

async function collectDemuxed(docker: Dockerode, stream: NodeJS.ReadableStream): Promise<{stdout: string; stderr: string}> {
  const out = new PassThrough()
  const err = new PassThrough()
  const o: Buffer[] = []
  const e: Buffer[] = []
  out.on('data', (b: Buffer) => o.push(b))
  err.on('data', (b: Buffer) => e.push(b))
  docker.modem.demuxStream(stream, out, err)
  await new Promise<void>((resolve, reject) => {
    stream.on('end', resolve)
    stream.on('close', resolve)
    stream.on('error', reject)
  })
  return {stdout: Buffer.concat(o).toString('utf8'), stderr: Buffer.concat(e).toString('utf8')}
}

/** Splits a (non-TTY) multiplexed log buffer into stdout and stderr. */
export function demuxBuffer(buf: Buffer): {stdout: string; stderr: string} {
  const o: Buffer[] = []
  const e: Buffer[] = []
  let i = 0
  while (i + 8 <= buf.length) {
    const kind = buf[i]
    const len = buf.readUInt32BE(i + 4)
    const chunk = buf.subarray(i + 8, i + 8 + len)
    ;(kind === 2 ? e : o).push(chunk)
    i += 8 + len
  }
  return {stdout: Buffer.concat(o).toString('utf8'), stderr: Buffer.concat(e).toString('utf8')}
}

/** the ids of the images an engine has now */
export async function imageIds(docker: Dockerode): Promise<Set<string>> {
  return new Set((await docker.listImages()).map((i) => i.Id))
}

/**
 * Remove the images an engine got since `before` (imageIds): what a test's restores loaded
 * into host B, which the next test file may expect to have never seen them.
 */
export async function removeImagesSince(docker: Dockerode, before: Set<string>): Promise<void> {
  for (const i of await docker.listImages()) if (!before.has(i.Id)) await docker.getImage(i.Id).remove({force: true}).catch(() => {})
}
