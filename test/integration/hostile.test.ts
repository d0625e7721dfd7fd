/**
 * Hostile and broken input through the installed CLI, on a real engine:
 *  - every command fed nonsense (bad ids, paths, URLs, names, flags, a missing bucket, an
 *    unreachable endpoint or engine): one line on stderr, its own exit code, nothing changed;
 *  - a hostile snapshot (crafted tree or manifest, as a hostile remote could serve it): the
 *    restore is refused before anything reaches the engine or the host, and what it created
 *    is removed again;
 *  - a damaged pack: verify names it with the file it holds, restore fails and leaves nothing,
 *    restore --partial restores the rest (to a directory and into Docker) and lists what not;
 *  - a full disk (tmpfs) as the repository of a snapshot and as the target of a restore: one
 *    line, DISK_FULL (50), nothing half-written, the repository verifies.
 */
import {execFileSync} from 'node:child_process'
import {mkdtempSync, promises as fsp, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {afterAll, beforeAll, describe, expect, inject, it} from 'vitest'
import {LocalBackend} from '../../src/backend/local.js'
import {SnapshotManifest, TreeNode, dataKey} from '../../src/repo/format.js'
import {Repository} from '../../src/repo/repository.js'
import {CliResult, holyship} from '../harness/cli.js'
import {connectEngine, dockerExec} from '../harness/engine.js'
import {S3RVER_CREDENTIALS, S3Server, startS3Server} from '../harness/s3.js'
import {listPath} from '../harness/tree-listing.js'

const T0: [number, number] = [1_700_000_000, 0]

/** run CLI invocations `limit` at a time (each is a node process: ~1-3 s) */
async function inParallel<T>(items: T[], limit: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(
    Array.from({length: limit}, async () => {
      while (next < items.length) await fn(items[next++])
    }),
  )
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = []
  const walk = async (d: string): Promise<void> => {
    for (const e of await fsp.readdir(d, {withFileTypes: true}).catch(() => [])) {
      const p = path.join(d, e.name)
      if (e.isDirectory()) await walk(p)
      else out.push(`${path.relative(dir, p)}:${(await fsp.lstat(p)).size}`)
    }
  }
  await walk(dir)
  return out.sort()
}

const oneLineError = (r: CliResult): void => {
  const lines = r.stderr.trim().split('\n')
  expect(lines[0], r.stderr).toMatch(/^holyship: error: /)
  expect(lines, r.stderr).toHaveLength(1)
}

describe('hostile and broken input', () => {
  const info = inject('holyshipEngineA')
  const docker = connectEngine(info).docker
  const image = inject('holyshipBusyboxImage')
  const tag = process.pid.toString(36)
  const name = `hostile-${tag}`
  const vol = `hostile-vol-${tag}`
  let work: string
  let env: Record<string, string>
  let s3: S3Server
  let snap: string
  const mounts: string[] = []

  const state = async (): Promise<{Running: boolean; Paused: boolean}> => (await docker.getContainer(name).inspect()).State
  /** what the engine has: containers, volumes and images (for "nothing changed") */
  const engineInventory = async (): Promise<string[]> => [
    ...(await docker.listContainers({all: true})).map((c) => `c:${c.Names[0]}`),
    ...((await docker.listVolumes()).Volumes ?? []).map((v) => `v:${v.Name}`),
    ...(await docker.listImages()).map((i) => `i:${i.Id}:${(i.RepoTags ?? []).join(',')}`),
  ].sort()
  /** what appeared or vanished on the engine since `before` */
  const engineChanges = async (before: string[]): Promise<string[]> => {
    const now = await engineInventory()
    return [...now.filter((x) => !before.includes(x)).map((x) => `+${x}`), ...before.filter((x) => !now.includes(x)).map((x) => `-${x}`)]
  }

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-hostile-'))
    s3 = await startS3Server()
    env = {
      HOLYSHIP_REPO: path.join(work, 'repo'),
      HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3'),
      HOLYSHIP_REMOTES: path.join(work, 'remotes.json'),
      DOCKER_HOST: info.dockerHost,
      AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
      AWS_REGION: 'us-east-1',
    }
    await docker.createVolume({Name: vol})
    const c = await docker.createContainer({name, Image: image, Cmd: ['sleep', '100000'], HostConfig: {Binds: [`${vol}:/v`]}})
    await c.start()
    const r = await dockerExec(docker, c.id, ['sh', '-c', 'echo one > /v/a.txt; echo two > /v/b.txt; mkdir /v/sub; echo three > /v/sub/c.txt; dd if=/dev/urandom of=/v/big.bin bs=1024 count=600 2>/dev/null'])
    expect(r.exitCode).toBe(0)
    expect((await holyship(['init'], env)).code).toBe(0)
    const s = await holyship(['snapshot', name, '--json'], env)
    expect(s.stderr).toBe('')
    snap = JSON.parse(s.stdout)[0].id
    expect((await holyship(['remote', 'add', 'good', `s3://${s3.bucket}/good`, '--endpoint', s3.endpoint], env)).code).toBe(0)
  }, 120_000)

  afterAll(async () => {
    for (const c of await docker.listContainers({all: true})) {
      if (c.Names.some((n) => n.includes(tag))) await docker.getContainer(c.Id).remove({force: true}).catch(() => {})
    }
    for (const v of (await docker.listVolumes()).Volumes ?? []) if (v.Name.includes(tag)) await docker.getVolume(v.Name).remove().catch(() => {})
    for (const m of mounts.reverse()) execFileSync('umount', ['-l', m])
    await s3?.stop()
    rmSync(work, {recursive: true, force: true})
  })

  it('every command fed nonsense: one line, its own exit code, nothing changed', async () => {
    const out = path.join(work, 'out')
    const remote = `s3://${s3.bucket}/nonsense`
    // one of each kind (URL, name and flag parsing in detail: test/unit/backend-conformance, transfer)
    const cases: [string[], number, RegExp, Record<string, string>?][] = [
      [['show', '../../etc/passwd'], 20, /no snapshot matches/],
      [['restore', 'latest:', '--path', '/v', '--target', out], 20, /no snapshot matches/],
      [['restore', snap, '--path', '../../etc', '--target', out], 2, /must not contain/],
      // created volumes are removed again when the engine refuses the container
      [['restore', snap, '--name', `bad/name-${tag}`, '--volume-prefix', `bad-${tag}-`], 31, /Invalid container name/],
      [['snapshot', name, '--reader', 'bogus'], 2, /bogus|Expected --reader/],
      [['snapshot', name], 30, /cannot reach the Docker engine/, {DOCKER_HOST: 'tcp://127.0.0.1:1'}],
      [['land', snap, '--from', 'good', '--docker-host', 'unix:///nonexistent/docker.sock'], 30, /cannot reach the Docker engine/],
      [['list', '--repo', '/dev/null'], 10, /not a directory/],
      [['list', '--catalogue', '/etc/passwd'], 51, /catalogue|SQLite|not a database/i],
      [['push', '--to', 's3://key:secret@bucket-x'], 2, /credentials or ports/],
      [['push', '--to', 'http://example.com/bucket'], 2, /neither a remote name nor an s3/],
      [['push', '--to', remote, '--endpoint', 'not a url'], 2, /invalid S3 endpoint URL/],
      [['push', '--to', 'no-such-remote'], 40, /no remote named/],
      [['push', '--to', 's3://no-such-bucket-x/p', '--endpoint', s3.endpoint], 40, /bucket "no-such-bucket-x" does not exist/],
      [['pull', 'latest', '--from', `s3://${s3.bucket}/empty`, '--endpoint', s3.endpoint], 40, /no holyship repository at/],
      [['push', '--to', remote, '--endpoint', 'http://127.0.0.1:1'], 41, /cannot reach http:\/\/127\.0\.0\.1:1|failed after/],
      [['remote', 'add', 'good', 's3://bucket-x'], 44, /already exists/],
    ]
    const repoBefore = await listFiles(env.HOLYSHIP_REPO)
    const remotesBefore = await fsp.readFile(env.HOLYSHIP_REMOTES, 'utf8')
    const engineBefore = await engineInventory()
    const failures: string[] = []
    await inParallel(cases, 2, async ([args, code, msg, extra]) => {
      const r = await holyship(args, {...env, ...extra})
      const lines = r.stderr.trim().split('\n')
      if (r.code !== code || !msg.test(r.stderr) || !/^holyship: error: /.test(lines[0]) || lines.length !== 1 || r.stdout !== '') {
        failures.push(`${JSON.stringify(args)}: exit ${r.code} (want ${code}), stdout ${JSON.stringify(r.stdout.slice(0, 80))}, stderr ${JSON.stringify(r.stderr)}`)
      }
    })
    expect(failures).toEqual([])
    expect(await listFiles(env.HOLYSHIP_REPO)).toEqual(repoBefore)
    expect(await fsp.readFile(env.HOLYSHIP_REMOTES, 'utf8')).toBe(remotesBefore)
    expect(await engineChanges(engineBefore)).toEqual([])
    await expect(fsp.stat(out)).rejects.toThrow()
    expect(await state()).toMatchObject({Running: true, Paused: false})
  }, 120_000)

  // a reference with `../` used to reach docker-modem's URL building (exit 31 or a crash):
  // Engine refuses what is not a Docker name before any request
  it('a container or volume name with ../ is not found (22, 23), not a crash', async () => {
    const r = await holyship(['snapshot', '../../etc'], env)
    expect(r.code).toBe(22)
    oneLineError(r)
    const v = await holyship(['snapshot', '--volume', '../x'], env)
    expect(v.code).toBe(23)
    oneLineError(v)
  }, 60_000)

  it('a hostile snapshot is refused before anything reaches the engine or the host', async () => {
    // as a hostile remote could serve them: objects whose hashes match
    const repo = await Repository.open(new LocalBackend(env.HOLYSHIP_REPO))
    const base = await repo.loadSnapshot(snap)
    const file = async (n: string, data: string): Promise<TreeNode> => ({name: n, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: T0, size: data.length, content: [(await repo.saveBlob('data', Buffer.from(data))).id]})
    const tree = async (nodes: TreeNode[]): Promise<string> => (await repo.saveBlob('tree', Buffer.from(JSON.stringify({nodes})))).id
    const deep = await tree([await file('pwned', 'owned')])
    const hostileTree = await tree([
      await file('a-harmless', 'fine'),
      {name: 'b', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: T0, subtree: await tree([{name: '..', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: T0, subtree: deep}])},
    ])
    const sandbox = path.join(work, 'bind-sandbox')
    await fsp.mkdir(sandbox)
    const stats = base.mounts[0].stats
    const save = async (m: SnapshotManifest): Promise<string> => repo.saveSnapshot(m)
    const viaBind = await save({...base, time: new Date().toISOString(), mounts: [{type: 'bind', source: sandbox, destination: '/hostile', readOnly: false, tree: hostileTree, stats}]})
    const viaVolume = await save({...base, kind: 'volume', container: undefined, time: new Date().toISOString(), mounts: [{type: 'volume', source: `hv-${tag}`, destination: '', readOnly: false, tree: hostileTree, stats}]})
    const disguisedBind = await save({...base, time: new Date().toISOString(), mounts: [{...base.mounts[0], source: '/etc'}]})
    const engineBefore = await engineInventory()

    const r1 = await holyship(['restore', viaBind, '--name', `hx-${tag}`], env)
    expect(r1.code).toBe(15)
    oneLineError(r1)
    expect(r1.stderr).toMatch(/tree [0-9a-f]{16} is damaged or hostile: entry "\.\.": the name is "\.\."/)
    expect(await fsp.readdir(sandbox)).toEqual([])
    const r2 = await holyship(['restore', viaVolume, '--volume-prefix', 'x-'], env)
    expect(r2.code).toBe(15)
    oneLineError(r2)
    const r3 = await holyship(['restore', disguisedBind, '--name', `hy-${tag}`, '--volume-prefix', 'y-'], env)
    expect(r3.code).toBe(15)
    oneLineError(r3)
    expect(r3.stderr).toMatch(/bad volume name "\/etc"/)
    // what the failed restores created (volumes, a container, a derived image, helpers) is gone
    expect(await engineChanges(engineBefore)).toEqual([])
    expect(await fsp.readdir(sandbox)).toEqual([])
    await expect(fsp.stat('/pwned')).rejects.toThrow()
    await expect(fsp.stat(path.join(work, 'pwned'))).rejects.toThrow()
    // verify names them too; then they go, so the repository is healthy again
    const v = await holyship(['verify'], env)
    expect(v.code).toBe(15)
    expect(v.stderr).toMatch(/damaged: tree [0-9a-f]{16}: .*hostile/)
    for (const id of [viaBind, viaVolume, disguisedBind]) await fsp.rm(path.join(env.HOLYSHIP_REPO, 'snapshots', id))
  }, 120_000)

  it('a damaged pack: verify names the file, restore fails and leaves nothing, --partial restores the rest', async () => {
    const repo = await Repository.open(new LocalBackend(env.HOLYSHIP_REPO))
    const m = await repo.loadSnapshot(snap)
    const root = await repo.loadTree(m.mounts[0].tree)
    const big = root.nodes.find((n) => n.name === 'big.bin')!
    const loc = repo.blobLocation(big.content![0])!
    const packFile = path.join(env.HOLYSHIP_REPO, dataKey(loc.pack))
    const orig = await fsp.readFile(packFile)
    const bad = Buffer.from(orig)
    bad[loc.offset + Math.floor(loc.length / 2)] ^= 0xff
    await fsp.writeFile(packFile, bad)
    try {
      const v = await holyship(['verify', '--read-data'], env)
      expect(v.code).toBe(15)
      expect(v.stderr).toContain(`damaged: ${dataKey(loc.pack)}`)
      expect(v.stderr).toContain(`${snap.slice(0, 12)}:/v/big.bin`)

      const t1 = path.join(work, 'restore-damaged')
      const r1 = await holyship(['restore', snap, '--path', '/v', '--target', t1], env)
      expect(r1.code).toBe(15)
      oneLineError(r1)
      expect(r1.stderr).toMatch(/blob [0-9a-f]{16} in .* is damaged/)
      await expect(fsp.stat(t1)).rejects.toThrow()

      const r2 = await holyship(['restore', snap, '--path', '/v', '--target', t1, '--partial'], env)
      expect(r2.code).toBe(15)
      expect(r2.stderr).toMatch(/^not restored: \/v\/big\.bin: blob .* is damaged/m)
      expect(r2.stderr.trim().split('\n').pop()).toMatch(/^holyship: error: 1 path\(s\) could not be restored/)
      // (the mount's root is /v: its content goes straight into the target)
      expect(await listFiles(t1)).toEqual(['a.txt:4', 'b.txt:4', 'sub/c.txt:6'])

      const before = await engineInventory()
      const r3 = await holyship(['restore', snap, '--name', `full-${tag}`, '--volume-prefix', `full-${tag}-`], env)
      expect(r3.code).toBe(15)
      oneLineError(r3)
      expect(await engineChanges(before)).toEqual([])

      const r4 = await holyship(['restore', snap, '--name', `part-${tag}`, '--volume-prefix', `part-${tag}-`, '--start', '--partial', '--json'], env)
      expect(r4.code).toBe(15)
      expect(r4.stderr).toMatch(/^not restored: \/v\/big\.bin/m)
      expect(r4.stderr).toMatch(/the container was not started/)
      expect(JSON.parse(r4.stdout).skipped).toEqual([{path: '/v/big.bin', reason: expect.stringMatching(/damaged/)}])
      const c = await docker.getContainer(`part-${tag}`).inspect()
      expect(c.State.Running).toBe(false)
      expect([...(await listPath(docker, c.Id, '/v')).keys()].sort()).toEqual(['v', 'v/a.txt', 'v/b.txt', 'v/sub', 'v/sub/c.txt'])
    } finally {
      await fsp.writeFile(packFile, orig)
    }
    expect((await holyship(['verify', '--read-data'], env)).code).toBe(0)
  }, 120_000)

  it('a full disk: one line, DISK_FULL, nothing half-written, the repository verifies', async () => {
    const full = path.join(work, 'full')
    const small = path.join(work, 'small')
    for (const [dir, size] of [[full, '20m'], [small, '4m']]) {
      await fsp.mkdir(dir)
      execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir])
      mounts.push(dir)
    }
    const bigName = `big-${tag}`
    const bigVol = `big-vol-${tag}`
    await docker.createVolume({Name: bigVol})
    const c = await docker.createContainer({name: bigName, Image: image, Cmd: ['sleep', '100000'], HostConfig: {Binds: [`${bigVol}:/data`]}})
    await c.start()
    expect((await dockerExec(docker, c.id, ['sh', '-c', 'dd if=/dev/urandom of=/data/big.bin bs=1M count=30 2>/dev/null; echo small > /data/small.txt'])).exitCode).toBe(0)

    // the repository on a 20 MB disk, 30 MB of data that does not compress
    const fenv = {...env, HOLYSHIP_REPO: path.join(full, 'repo'), HOLYSHIP_CATALOGUE: path.join(work, 'cat-full.sqlite3')}
    expect((await holyship(['init'], fenv)).code).toBe(0)
    const s = await holyship(['snapshot', bigName], fenv)
    expect(s.code).toBe(50)
    oneLineError(s)
    expect(s.stderr).toMatch(/no space left on device/)
    const leftovers = (await listFiles(fenv.HOLYSHIP_REPO)).filter((f) => /(^|\/)\.tmp-/.test(f))
    expect(leftovers).toEqual([])
    expect((await fsp.readdir(path.join(fenv.HOLYSHIP_REPO, 'snapshots')).catch(() => []))).toEqual([])
    expect(JSON.parse((await holyship(['list', '--json'], fenv)).stdout)).toEqual([])
    expect((await holyship(['verify'], fenv)).code).toBe(0)
    expect((await docker.getContainer(bigName).inspect()).State).toMatchObject({Running: true, Paused: false})

    // a restore onto a 4 MB disk: the 30 MB file does not fit
    const s2 = await holyship(['snapshot', bigName, '--json'], env)
    expect(s2.code).toBe(0)
    const id = JSON.parse(s2.stdout)[0].id
    const target = path.join(small, 'out')
    const r = await holyship(['restore', id, '--path', '/data', '--target', target], env)
    expect(r.code).toBe(50)
    oneLineError(r)
    expect(await fsp.readdir(small)).toEqual([]) // the target it created, and every temporary file, are gone
    // the small file alone fits
    const ok = await holyship(['restore', id, '--path', '/data/small.txt', '--target', target], env)
    expect(ok.code).toBe(0)
    expect(await fsp.readFile(path.join(target, 'small.txt'), 'utf8')).toBe('small\n')
  }, 120_000)
})
