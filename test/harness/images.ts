/**
 * Test images, made without a registry: root filesystems built locally, cached as tarballs under
 * /var/cache/holyship-test (once per machine), and `docker import`ed into a test engine.
 *
 *  - holyship-test/busybox:latest   busybox-static + a symlink per applet (~2 MB, ~1 s to build)
 *  - holyship-test/postgres:15      Debian bookworm minbase + postgresql-15 via debootstrap
 *                                   (~500 MB, ~1 min to build, built only when asked for)
 */
import {spawn, spawnSync} from 'node:child_process'
import {createHash} from 'node:crypto'
import * as fs from 'node:fs'
import * as path from 'node:path'
import type Dockerode from 'dockerode'
import {CACHE_DIR, dockerExec, ensureSystemDeps, log, ownerAlive, sleep, tail, unmountAllUnder, writeOwner} from './engine.js'

export const BUSYBOX_IMAGE = 'holyship-test/busybox:latest'
export const POSTGRES_IMAGE = 'holyship-test/postgres:15'

/** Anything with a Dockerode client: an Engine from startEngine, or connectEngine(inject(...)). */
export interface EngineLike {
  name: string
  docker: Dockerode
}

// ------------------------------------------------------------------------------------------------
// busybox

const BUSYBOX_RECIPE = 'busybox-v2'

/** Imports the busybox test image into `engine` (no-op when the tag is there); returns its image id. */
export async function importBusybox(engine: EngineLike, tag = BUSYBOX_IMAGE): Promise<string> {
  const existing = await imageId(engine.docker, tag)
  if (existing) return existing
  const t0 = Date.now()
  const tar = busyboxRootfsTar()
  const id = await importRootfsTar(engine, tar, tag, [
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    'CMD ["sh"]',
  ])
  log(`imported ${tag} into engine ${engine.name} in ${Date.now() - t0} ms`)
  return id
}

/** Path of the cached busybox rootfs tarball, built on first use (synchronous, ~1 s). */
export function busyboxRootfsTar(): string {
  ensureSystemDeps()
  const busybox = '/bin/busybox'
  const hash = createHash('sha256').update(BUSYBOX_RECIPE).update(fs.readFileSync(busybox)).digest('hex').slice(0, 12)
  const out = path.join(CACHE_DIR, `busybox-rootfs-${hash}.tar`)
  if (fs.existsSync(out)) return out
  const build = makeBuildDir()
  try {
    const root = path.join(build, 'rootfs')
    for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'root', 'tmp', 'var/tmp', 'home']) {
      fs.mkdirSync(path.join(root, d), {recursive: true, mode: 0o755})
    }
    fs.chmodSync(path.join(root, 'tmp'), 0o1777)
    fs.chmodSync(path.join(root, 'var/tmp'), 0o1777)
    fs.chmodSync(path.join(root, 'root'), 0o700)
    fs.copyFileSync(busybox, path.join(root, 'bin/busybox'))
    fs.chmodSync(path.join(root, 'bin/busybox'), 0o755)
    const list = spawnSync(busybox, ['--list-full'], {encoding: 'utf8'})
    if (list.status !== 0) throw new Error(`busybox --list-full failed: ${list.stderr}`)
    for (const applet of list.stdout.split('\n').map((l) => l.trim()).filter(Boolean)) {
      if (applet === 'bin/busybox' || applet.includes('..')) continue
      const p = path.join(root, applet)
      fs.mkdirSync(path.dirname(p), {recursive: true})
      if (!fs.existsSync(p)) fs.symlinkSync('/bin/busybox', p)
    }
    fs.writeFileSync(
      path.join(root, 'etc/passwd'),
      'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
    )
    fs.writeFileSync(path.join(root, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n')
    // an image directory with entries, for a container that removes and remakes it (opaque)
    fs.mkdirSync(path.join(root, 'home/old'), {mode: 0o755})
    fs.writeFileSync(path.join(root, 'home/old/.profile'), 'export PS1=old\n')
    return createTarball(root, out)
  } finally {
    removeBuildDir(build)
  }
}

// ------------------------------------------------------------------------------------------------
// postgres

const PG_PATH = '/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
const PG_DATA = '/var/lib/postgresql/data'

/**
 * Entrypoint of the postgres test image. `postgres` (the default CMD) or flags: initdb on an empty
 * data dir (trust auth, also from the network), then exec postgres listening on '*'. Any other
 * command runs as given. Started as root (`--user root`, root-owned bind mounts) it fixes the
 * ownership of the data dir and drops to the postgres user.
 */
const ENTRYPOINT = `#!/bin/sh
set -eu
: "\${PGDATA:=${PG_DATA}}"
export PGDATA

if [ "$#" -eq 0 ] || [ "\${1#-}" != "$1" ]; then
  set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
  exec "$@"
fi
shift

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" postgres "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA" 2>/dev/null || true
  if [ -n "$(ls -A "$PGDATA" 2>/dev/null)" ]; then
    echo "entrypoint: $PGDATA is not empty but holds no cluster (no PG_VERSION); refusing to initdb" >&2
    ls -la "$PGDATA" >&2
    exit 1
  fi
  echo "entrypoint: initialising a new cluster in $PGDATA" >&2
  initdb --pgdata="$PGDATA" --username=postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 --no-instructions
  printf '\\n# holyship test image: trust everyone on the (private) network\\nhost all all all trust\\n' >> "$PGDATA/pg_hba.conf"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
`

const POSTGRES_CHANGES = [
  `ENV PATH=${PG_PATH}`,
  `ENV PGDATA=${PG_DATA}`,
  'ENV LANG=C.UTF-8',
  'USER postgres',
  'WORKDIR /var/lib/postgresql',
  `VOLUME ${PG_DATA}`,
  'EXPOSE 5432',
  // (no STOPSIGNAL: dockerd 20.10's import rejects it; `docker stop` sends SIGTERM = smart shutdown)
  'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]',
  'CMD ["postgres"]',
]

/** what the cached tarball depends on (the import-time changes above do not count) */
const POSTGRES_RECIPE = ['postgres15-bookworm-v1', ENTRYPOINT].join('\n')
const pgImports = new Map<string, Promise<string>>()

/**
 * Makes sure `engine` has the postgres test image (building the cached rootfs on first use on this
 * machine: about a minute; importing it: some seconds). Returns the image id.
 */
export function ensurePostgresImage(engine: EngineLike, tag = POSTGRES_IMAGE): Promise<string> {
  const key = `${tag}\0${(engine.docker.modem as {socketPath?: string}).socketPath ?? engine.name}`
  let p = pgImports.get(key) // an import under way: join it
  if (!p) {
    p = (async () => {
      const existing = await imageId(engine.docker, tag)
      if (existing) return existing
      const tar = await postgresRootfsTar()
      const t0 = Date.now()
      const id = await importRootfsTar(engine, tar, tag, POSTGRES_CHANGES)
      log(`imported ${tag} into engine ${engine.name} in ${Date.now() - t0} ms`)
      return id
    })().finally(() => pgImports.delete(key))
    pgImports.set(key, p)
  }
  return p
}

/** Path of the cached postgres rootfs tarball, built with debootstrap on first use. */
export async function postgresRootfsTar(): Promise<string> {
  ensureSystemDeps()
  const hash = createHash('sha256').update(POSTGRES_RECIPE).digest('hex').slice(0, 12)
  const out = path.join(CACHE_DIR, `postgres15-rootfs-${hash}.tar`)
  if (fs.existsSync(out)) return out
  const unlock = await lock(path.join(CACHE_DIR, 'postgres.lock'), 20 * 60_000)
  try {
    if (fs.existsSync(out)) return out
    const t0 = Date.now()
    const build = makeBuildDir()
    try {
      const root = path.join(build, 'rootfs')
      const mirror = debianMirror()
      log(`building the postgres test rootfs with debootstrap from ${mirror} (once per machine, ~1 min)`)
      const logFile = path.join(build, 'debootstrap.log')
      const code = await runLogged(
        'debootstrap',
        ['--variant=minbase', '--include=postgresql-15', 'bookworm', root, mirror],
        logFile,
        20 * 60_000,
      )
      unmountAllUnder(root)
      if (code !== 0) {
        throw new Error(
          `debootstrap failed (exit ${code}):\n${tail(logFile, 20)}\n${tail(path.join(root, 'debootstrap/debootstrap.log'), 20)}`,
        )
      }
      customisePostgresRootfs(root)
      createTarball(root, out, ['./dev/*', './proc/*', './sys/*', './tmp/*', './run/lock/*'])
      log(`built ${out} in ${Math.round((Date.now() - t0) / 1000)} s`)
      for (const f of fs.readdirSync(CACHE_DIR)) {
        if (/^postgres15-rootfs-[0-9a-f]{12}\.tar$/.test(f) && path.join(CACHE_DIR, f) !== out) fs.rmSync(path.join(CACHE_DIR, f), {force: true})
      }
      return out
    } finally {
      removeBuildDir(build)
    }
  } finally {
    unlock()
  }
}

function customisePostgresRootfs(root: string): void {
  const passwd = fs.readFileSync(path.join(root, 'etc/passwd'), 'utf8')
  const pgLine = passwd.split('\n').find((l) => l.startsWith('postgres:'))
  if (!pgLine) throw new Error('debootstrap result has no postgres user')
  const [, , uid, gid] = pgLine.split(':').map((s) => s.trim())
  const own = (p: string, mode: number) => {
    fs.mkdirSync(p, {recursive: true})
    fs.chownSync(p, Number(uid), Number(gid))
    fs.chmodSync(p, mode)
  }
  for (const f of ['usr/lib/postgresql/15/bin/postgres', 'usr/lib/postgresql/15/bin/initdb', 'usr/bin/setpriv']) {
    if (!fs.existsSync(path.join(root, f))) throw new Error(`debootstrap result lacks /${f}`)
  }
  const ep = path.join(root, 'usr/local/bin/docker-entrypoint.sh')
  fs.mkdirSync(path.dirname(ep), {recursive: true})
  fs.writeFileSync(ep, ENTRYPOINT, {mode: 0o755})
  fs.chmodSync(ep, 0o755)
  // the cluster Debian's postinst created is not used: PGDATA is the image's VOLUME
  fs.rmSync(path.join(root, 'var/lib/postgresql/15/main'), {recursive: true, force: true})
  own(path.join(root, PG_DATA), 0o700)
  own(path.join(root, 'run/postgresql'), 0o2775)
  for (const d of ['var/cache/apt/archives', 'var/lib/apt/lists', 'usr/share/doc', 'usr/share/man', 'usr/share/info']) {
    const p = path.join(root, d)
    for (const e of fs.existsSync(p) ? fs.readdirSync(p) : []) {
      if (e !== 'partial' && e !== 'lock') fs.rmSync(path.join(p, e), {recursive: true, force: true})
    }
  }
}

/** Reads apt's sources for a Debian mirror URL (HOLYSHIP_TEST_DEBIAN_MIRROR overrides). */
export function debianMirror(): string {
  if (process.env.HOLYSHIP_TEST_DEBIAN_MIRROR) return process.env.HOLYSHIP_TEST_DEBIAN_MIRROR
  const entries: Array<{uri: string; suites: string[]; components: string[]}> = []
  const files = ['/etc/apt/sources.list']
  try {
    for (const f of fs.readdirSync('/etc/apt/sources.list.d').sort()) {
      if (f.endsWith('.list') || f.endsWith('.sources')) files.push(path.join('/etc/apt/sources.list.d', f))
    }
  } catch {
    // none
  }
  for (const file of files) {
    let text: string
    try {
      text = fs.readFileSync(file, 'utf8')
    } catch {
      continue
    }
    if (file.endsWith('.sources')) {
      for (const stanza of text.split(/\n\s*\n/)) {
        const field = (name: string) =>
          new RegExp(`^${name}:\\s*(.*)$`, 'im').exec(stanza.replace(/^#.*$/gm, ''))?.[1]?.trim().split(/\s+/) ?? []
        if (!field('Types').includes('deb') || /^Enabled:\s*no/im.test(stanza)) continue
        for (const uri of field('URIs')) entries.push({uri, suites: field('Suites'), components: field('Components')})
      }
    } else {
      for (const line of text.split('\n')) {
        const m = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)$/.exec(line)
        if (m) entries.push({uri: m[1], suites: [m[2]], components: m[3].trim().split(/\s+/)})
      }
    }
  }
  const debian = entries.filter((e) => /^https?:/.test(e.uri) && e.components.includes('main') && !/security/.test(e.uri))
  const pick = debian.find((e) => e.suites.includes('bookworm')) ?? debian.find((e) => /debian/.test(e.uri))
  return (pick?.uri ?? 'http://deb.debian.org/debian').replace(/\/+$/, '')
}

/** Waits until postgres in `containerId` accepts connections (pg_isready), or throws with its logs. */
export async function waitForPostgres(docker: Dockerode, containerId: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const state = (await docker.getContainer(containerId).inspect()).State
    if (!state.Running) {
      const logs = await docker.getContainer(containerId).logs({stdout: true, stderr: true})
      throw new Error(`postgres container exited (${state.ExitCode}):\n${String(logs).slice(-3000)}`)
    }
    // as postgres whatever the container's user is (e.g. --user root)
    const q = await dockerExec(docker, containerId, ['psql', '-qAtX', '-U', 'postgres', '-d', 'postgres', '-c', 'select 1'], {
      user: 'postgres',
    })
    if (q.exitCode === 0 && q.stdout.trim() === '1') return
    if (Date.now() > deadline) {
      throw new Error(`postgres in ${containerId} not ready after ${timeoutMs} ms: psql said ${JSON.stringify(q)}`)
    }
    await sleep(200)
  }
}

// ------------------------------------------------------------------------------------------------
// shared

/** `docker import` of a rootfs tarball with Dockerfile-style changes; returns the image id. */
export async function importRootfsTar(engine: EngineLike, tarPath: string, tag: string, changes: string[] = []): Promise<string> {
  const colon = tag.lastIndexOf(':')
  const [repo, t] = colon > tag.lastIndexOf('/') ? [tag.slice(0, colon), tag.slice(colon + 1)] : [tag, 'latest']
  const stream = await engine.docker.importImage(fs.createReadStream(tarPath), {repo, tag: t, changes})
  const messages = await new Promise<Array<{error?: string; errorDetail?: {message?: string}}>>((resolve, reject) => {
    engine.docker.modem.followProgress(stream, (err: Error | null, res: Array<{error?: string}>) => (err ? reject(err) : resolve(res)))
  })
  const failed = messages.find((m) => m.error)
  if (failed) throw new Error(`docker import of ${tarPath} as ${tag} failed: ${failed.error}`)
  const id = await imageId(engine.docker, tag)
  if (!id) throw new Error(`docker import of ${tarPath} as ${tag} left no image`)
  return id
}

async function imageId(docker: Dockerode, tag: string): Promise<string | undefined> {
  try {
    return (await docker.getImage(tag).inspect()).Id
  } catch (e) {
    if ((e as {statusCode?: number}).statusCode === 404) return undefined
    throw e
  }
}

function makeBuildDir(): string {
  fs.mkdirSync(CACHE_DIR, {recursive: true, mode: 0o755})
  const dir = fs.mkdtempSync(path.join(CACHE_DIR, 'build-'))
  writeOwner(dir)
  return dir
}

function removeBuildDir(dir: string): void {
  const left = unmountAllUnder(dir)
  if (left.length) {
    log(`not deleting ${dir}: still mounted: ${left.join(', ')}`)
    return
  }
  fs.rmSync(dir, {recursive: true, force: true, maxRetries: 3})
}

/** tar of `root` (owners numeric, sorted, mtimes kept) written atomically to `out` */
function createTarball(root: string, out: string, exclude: string[] = []): string {
  const tmp = `${out}.tmp-${process.pid}`
  const args = ['--numeric-owner', '--sort=name', ...exclude.map((e) => `--exclude=${e}`), '-C', root, '-cf', tmp, '.']
  const r = spawnSync('tar', args, {encoding: 'utf8'})
  if (r.status !== 0) {
    fs.rmSync(tmp, {force: true})
    throw new Error(`tar ${args.join(' ')} failed: ${r.stderr}`)
  }
  fs.renameSync(tmp, out)
  return out
}

function runLogged(cmd: string, args: string[], logFile: string, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const fd = fs.openSync(logFile, 'a')
    const child = spawn(cmd, args, {stdio: ['ignore', fd, fd], env: {...process.env, DEBIAN_FRONTEND: 'noninteractive'}})
    fs.closeSync(fd)
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    child.on('exit', (code, sig) => {
      clearTimeout(timer)
      resolve(code ?? (sig ? 128 : 1))
    })
  })
}

/** A cross-process lock: a directory holding owner.json; taken over when its owner is dead. */
async function lock(dir: string, timeoutMs: number): Promise<() => void> {
  fs.mkdirSync(path.dirname(dir), {recursive: true})
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      fs.mkdirSync(dir)
      writeOwner(dir)
      return () => fs.rmSync(dir, {recursive: true, force: true})
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
    }
    if (!ownerAlive(dir)) {
      fs.rmSync(dir, {recursive: true, force: true})
      continue
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${dir}`)
    await sleep(1000)
  }
}
