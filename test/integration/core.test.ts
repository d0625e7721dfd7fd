/**
 * Round trip on a real engine: a container with a volume, a bind mount, a changed, an added
 * and a deleted file in its filesystem, file capabilities, env, labels, ports and a restart policy is
 * snapshotted, destroyed, restored and compared path by path; with both readers.
 */
import {spawnSync} from 'node:child_process'
import {mkdtempSync, promises as fsp, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {afterAll, beforeAll, describe, expect, inject, it} from 'vitest'
import {LocalBackend} from '../../src/backend/local.js'
import {Catalogue} from '../../src/catalogue/catalogue.js'
import {Engine} from '../../src/docker/engine.js'
import {Repository} from '../../src/repo/repository.js'
import {resolveSnapshot, showSnapshot, diffSnapshots} from '../../src/services/inspect.js'
import {restore, restorePath} from '../../src/services/restore.js'
import {snapshot} from '../../src/services/snapshot.js'
import {verifyRepository} from '../../src/services/verify.js'
import {connectEngine, dockerExec} from '../harness/engine.js'
import {compareListings, listPath} from '../harness/tree-listing.js'

const SETUP = `set -e
mkdir -p /data/dir/empty /data/deep/a/b/c
echo hello > /data/hello.txt
: > /data/empty-file
dd if=/dev/urandom of=/data/random.bin bs=1024 count=3000 2>/dev/null
dd if=/dev/zero of=/data/sparse.bin bs=1M seek=64 count=0 2>/dev/null
echo payload > /data/deep/a/b/c/file
ln /data/hello.txt /data/hardlink.txt
ln -s hello.txt /data/symlink
ln -s /nonexistent/target /data/dangling
echo secret > /data/setuid && chmod 4755 /data/setuid
echo cap > /data/caps
echo owned > /data/owned && chown 1234:5678 /data/owned
chmod 0640 /data/hello.txt
touch -d '2001-02-03 04:05:06' /data/old
mkfifo /data/fifo
long=$(printf 'n%.0s' $(seq 1 200)); echo long > "/data/$long"
echo 'bound' > /bind/b.txt
echo changed >> /etc/passwd
mkdir -p /opt/added && echo new > /opt/added/file && chmod 0700 /opt/added
rm /bin/vi
rm -rf /home && mkdir /home && echo fresh > /home/only
`

describe.each(['direct', 'api'] as const)('snapshot and restore of a container (%s reader)', (reader) => {
  const info = inject('holyshipEngineA')
  const client = connectEngine(info)
  const docker = client.docker
  const engine = new Engine(info.dockerHost)
  const image = inject('holyshipBusyboxImage')
  const tag = `${reader}-${process.pid}`
  const name = `app-${tag}`
  const vol = `vol-${tag}`
  let work: string
  let bindDir: string
  let repo: Repository
  let catalogue: Catalogue
  let original: {data: Map<string, unknown>; bind: Map<string, unknown>; fs: Map<string, unknown>}
  let containerId: string

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-core-'))
    bindDir = path.join(work, 'bind')
    await fsp.mkdir(bindDir)
    await fsp.mkdir(path.join(work, 'repo'))
    repo = await Repository.init(new LocalBackend(path.join(work, 'repo')))
    catalogue = Catalogue.open(path.join(work, 'catalogue.sqlite3'))
    repo.treeCache = catalogue
    await docker.createVolume({Name: vol, Labels: {team: 'ops'}})
    const c = await docker.createContainer({
      name,
      Image: image,
      Cmd: ['sleep', '100000'],
      Env: ['APP_MODE=prod', 'SECRET_TOKEN=abc'],
      Labels: {'com.example.role': 'db'},
      ExposedPorts: {'80/tcp': {}},
      WorkingDir: '/data',
      HostConfig: {
        Binds: [`${vol}:/data`, `${bindDir}:/bind`],
        PortBindings: {'80/tcp': [{HostPort: '18080'}]},
        RestartPolicy: {Name: 'unless-stopped', MaximumRetryCount: 0},
        ExtraHosts: ['db.internal:10.1.2.3'],
      },
    })
    containerId = c.id
    await c.start()
    const r = await dockerExec(docker, c.id, ['sh', '-c', SETUP])
    expect(r.stderr).toBe('')
    expect(r.exitCode).toBe(0)
    // file capabilities (binary xattrs that are not UTF-8: cap_setuid is the byte 0x80), set
    // from the engine's host (busybox has no setfattr), in the volume and in the container's layer
    const mp = (await docker.getVolume(vol).inspect()).Mountpoint
    const upper = (await c.inspect()).GraphDriver.Data.UpperDir as string
    for (const f of [path.join(mp, 'caps'), path.join(upper, 'opt/added/file')]) {
      expect(spawnSync('setfattr', ['-n', 'security.capability', '-v', '0x0100000280000000000000000000000000000000', f]).status).toBe(0)
    }
    original = {
      data: await listPath(docker, c.id, '/data'),
      bind: await listPath(docker, c.id, '/bind'),
      fs: new Map([...(await listPath(docker, c.id, '/opt')), ...(await listPath(docker, c.id, '/etc')), ...(await listPath(docker, c.id, '/home'))]),
    }
    // the engine's archive carries them, so the listings compare them
    const capability = ['security.capability=0100000280000000000000000000000000000000']
    expect([(original.data.get('data/caps') as {xattrs?: string[]}).xattrs, (original.fs.get('opt/added/file') as {xattrs?: string[]}).xattrs]).toEqual([capability, capability])
  })

  afterAll(async () => {
    for (const n of [name, `${name}-copy`]) await docker.getContainer(n).remove({force: true}).catch(() => {})
    for (const v of [vol, `copy-${vol}`]) await docker.getVolume(v).remove().catch(() => {})
    catalogue?.close()
    rmSync(work, {recursive: true, force: true})
  })

  it('snapshots while paused and leaves the container running', async () => {
    const [r] = await snapshot({repo, catalogue, engine, containers: [name], reader})
    expect(r.reader).toBe(reader)
    expect(r.kind).toBe('container')
    expect(r.files).toBeGreaterThanOrEqual(12)
    const state = (await docker.getContainer(containerId).inspect()).State
    expect(state.Running).toBe(true)
    expect(state.Paused).toBe(false)
    // sparse 64 MiB of zeros and 3 MB random must not blow up the repository
    const stored = (await repo.backend.list('data/')).reduce((a, e) => a + e.size, 0)
    expect(stored).toBeLessThan(3_000_000 + 2_500_000)
    const show = await showSnapshot({repo, catalogue, close() {}}, 'latest')
    expect(show.container?.fsDiff?.deleted).toBeGreaterThanOrEqual(1)
    expect(show.mounts.map((m) => m.type).sort()).toEqual(['bind', 'volume'])
  })

  it('a second snapshot of unchanged data adds almost nothing and diffs empty', async () => {
    const before = (await repo.backend.list('data/')).reduce((a, e) => a + e.size, 0)
    const [r] = await snapshot({repo, catalogue, engine, containers: [name], reader})
    expect(r.newBytes).toBeLessThan(64 * 1024)
    const after = (await repo.backend.list('data/')).reduce((a, e) => a + e.size, 0)
    expect(after - before).toBeLessThan(64 * 1024)
    const rows = catalogue.listSnapshots(repo.id, {container: name})
    expect(rows).toHaveLength(2)
    const d = await diffSnapshots({repo, catalogue, close() {}}, rows[0].id, rows[1].id)
    expect(d.changes.filter((c) => !c.path.startsWith('/bind') && c.scope !== 'fs')).toEqual([])
  })

  it('restores the destroyed container byte for byte, with its config, and it runs', async () => {
    await docker.getContainer(name).remove({force: true})
    await docker.getVolume(vol).remove()
    await fsp.rm(bindDir, {recursive: true, force: true})
    const {id, manifest} = resolveSnapshot({repo, catalogue, close() {}}, `latest:${name}`)
    // the direct variant writes the volume into its directory (and says so if it cannot), the api one through the engine
    const r = await restore({repo, engine, snapshotId: id, manifest, start: true, writer: reader})
    expect(r.container?.name).toBe(name)
    const c = docker.getContainer(name)
    const ci = await c.inspect()
    expect(ci.State.Running).toBe(true)
    expect(ci.Config.Env).toEqual(expect.arrayContaining(['APP_MODE=prod', 'SECRET_TOKEN=abc']))
    expect(ci.Config.Labels).toMatchObject({'com.example.role': 'db'})
    expect(ci.Config.WorkingDir).toBe('/data')
    expect(ci.HostConfig.PortBindings).toEqual({'80/tcp': [{HostIp: '', HostPort: '18080'}]})
    expect(ci.HostConfig.RestartPolicy).toEqual({Name: 'unless-stopped', MaximumRetryCount: 0})
    expect(ci.HostConfig.ExtraHosts).toEqual(['db.internal:10.1.2.3'])
    const v = await docker.getVolume(vol).inspect()
    expect(v.Labels).toMatchObject({team: 'ops'})

    // the directory times of /data and /bind themselves change when Docker mounts them
    const problems = [
      ...compareListings(original.data as never, await listPath(docker, ci.Id, '/data')),
      ...compareListings(original.bind as never, await listPath(docker, ci.Id, '/bind')),
      ...compareListings(
        original.fs as never,
        new Map([...(await listPath(docker, ci.Id, '/opt')), ...(await listPath(docker, ci.Id, '/etc'))  , ...(await listPath(docker, ci.Id, '/home'))]),
        // Docker rewrites /etc/hosts, hostname and resolv.conf for every container
        {ignoreMtimeOf: (p) => /^etc$|^etc\/(hosts|hostname|resolv\.conf|mtab)$/.test(p)},
      ).filter((p) => !/etc\/(hosts|hostname|resolv\.conf)/.test(p)),
    ]
    expect(problems).toEqual([])
    // deleted stays deleted
    const gone = await dockerExec(docker, ci.Id, ['sh', '-c', 'test -e /bin/vi && echo present || echo absent'])
    expect(gone.stdout.trim()).toBe('absent')
    // the hard link is still a link
    const links = await dockerExec(docker, ci.Id, ['sh', '-c', 'stat -c %i /data/hello.txt /data/hardlink.txt | uniq | wc -l'])
    expect(links.stdout.trim()).toBe('1')
    const opaque = await dockerExec(docker, ci.Id, ['ls', '/home'])
    expect(opaque.stdout.trim()).toBe('only')
  })

  it('refuses to restore over the existing container, and restores beside it with --name and --volume-prefix', async () => {
    const {id, manifest} = resolveSnapshot({repo, catalogue, close() {}}, `latest:${name}`)
    await expect(restore({repo, engine, snapshotId: id, manifest})).rejects.toMatchObject({code: 'TARGET_EXISTS'})
    // beside it, the bind mount is still the original's own directory, which holds its files:
    // refused before anything is written into it, and nothing of the attempt is left
    const bindBefore = await fsp.readdir(bindDir)
    await fsp.writeFile(path.join(bindDir, 'b.txt'), 'the original wrote this since\n')
    const refused = restore({repo, engine, snapshotId: id, manifest, name: `${name}-copy`, volumePrefix: 'copy-', writer: reader})
    await expect(refused).rejects.toMatchObject({code: 'TARGET_EXISTS', message: expect.stringContaining(`bind mount source ${bindDir}`)})
    expect(await fsp.readFile(path.join(bindDir, 'b.txt'), 'utf8')).toBe('the original wrote this since\n')
    expect(await fsp.readdir(bindDir)).toEqual(bindBefore)
    expect(await engine.containerExists(`${name}-copy`)).toBe(false)
    expect(await engine.volumeExists(`copy-${vol}`)).toBe(false)
    // --force: written over, as asked
    const r = await restore({repo, engine, snapshotId: id, manifest, name: `${name}-copy`, volumePrefix: 'copy-', force: true, writer: reader})
    expect(await fsp.readFile(path.join(bindDir, 'b.txt'), 'utf8')).toBe('bound\n')
    expect(r.volumes.map((v) => v.name)).toEqual([`copy-${vol}`])
    const listing = await listPath(docker, r.container!.id, '/data')
    expect(compareListings(original.data as never, listing)).toEqual([])
  })

  it('restores a single file and a folder to a host directory', async () => {
    const {id, manifest} = resolveSnapshot({repo, catalogue, close() {}}, `latest:${name}`)
    const target = path.join(work, 'out')
    const r = await restorePath({repo, snapshotId: id, manifest, path: '/data/deep', target})
    expect(r.files).toBe(1)
    expect(await fsp.readFile(path.join(target, 'deep/a/b/c/file'), 'utf8')).toBe('payload\n')
    await restorePath({repo, snapshotId: id, manifest, path: '/data/owned', target})
    const st = await fsp.stat(path.join(target, 'owned'))
    expect([st.uid, st.gid]).toEqual([1234, 5678])
    await restorePath({repo, snapshotId: id, manifest, path: '/data/sparse.bin', target})
    const sp = await fsp.stat(path.join(target, 'sparse.bin'))
    expect(sp.size).toBe(64 * 1024 * 1024)
    expect(sp.blocks * 512).toBeLessThan(1024 * 1024)
    await restorePath({repo, snapshotId: id, manifest, path: '/opt/added/file', target})
    expect(await fsp.readFile(path.join(target, 'file'), 'utf8')).toBe('new\n')
    await expect(restorePath({repo, snapshotId: id, manifest, path: '/data/hello.txt', target: path.join(target, 'deep')})).resolves.toBeTruthy()
    await expect(restorePath({repo, snapshotId: id, manifest, path: '/data/hello.txt', target: path.join(target, 'deep')})).rejects.toMatchObject({code: 'TARGET_EXISTS'})
    await expect(restorePath({repo, snapshotId: id, manifest, path: '/nope', target})).rejects.toMatchObject({code: 'PATH_NOT_FOUND'})
    // a whole volume: the target gets the volume root's mode, owner and time as snapshotted
    const whole = path.join(work, 'whole-data')
    await restorePath({repo, snapshotId: id, manifest, path: '/data', target: whole})
    const mroot = manifest.mounts.find((m) => m.destination === '/data')!.root!
    const ws = await fsp.stat(whole)
    expect(mroot.mtime[0]).toBeGreaterThan(0)
    expect([ws.mode & 0o7777, ws.uid, ws.gid]).toEqual([mroot.mode & 0o7777, mroot.uid, mroot.gid])
    expect(ws.mtimeMs).toBeCloseTo(mroot.mtime[0] * 1000 + mroot.mtime[1] / 1e6, 1)
    expect(await fsp.readFile(path.join(whole, 'deep/a/b/c/file'), 'utf8')).toBe('payload\n')
  })

  it('verify --read-data passes', async () => {
    const v = await verifyRepository(repo, {readData: true})
    expect(v.problems).toEqual([])
    expect(v.snapshots).toBe(2)
    expect(v.bytesRead).toBeGreaterThan(3_000_000)
  })
})

describe('the engine client on a unix socket (no dockerode)', () => {
  const info = inject('holyshipEngineA')
  const docker = connectEngine(info).docker
  const image = inject('holyshipBusyboxImage')
  const name = `light-${process.pid}`

  afterAll(async () => {
    await docker.getContainer(name).remove({force: true}).catch(() => {})
  })

  it('streams archives, exports and saved images as dockerode did, and maps their errors the same way', async () => {
    const engine = new Engine(info.dockerHost)
    const c = await docker.createContainer({name, Image: image, Cmd: ['sleep', '100000']})
    await c.start()
    expect((await dockerExec(docker, c.id, ['sh', '-c', 'mkdir /x && echo light > /x/f && rm /bin/vi'])).exitCode).toBe(0)
    const drain = async (s: NodeJS.ReadableStream): Promise<Buffer> => {
      const parts: Buffer[] = []
      for await (const p of s) parts.push(p as Buffer)
      return Buffer.concat(parts)
    }
    // a tar of /x: header of x/ then x/f with its content
    const tar = await drain(await engine.getArchive(c.id, '/x'))
    expect(tar.subarray(0, 2).toString()).toBe('x/')
    expect(tar.includes(Buffer.from('light\n'))).toBe(true)
    const exported = await drain(await engine.exportContainer(c.id))
    expect(exported.includes(Buffer.from('x/f'))).toBe(true)
    const saved = await drain(await engine.saveImage(image))
    expect(saved.includes(Buffer.from('manifest.json'))).toBe(true)
    expect(await engine.changes(c.id)).toEqual(expect.arrayContaining([{Path: '/x', Kind: 1}, {Path: '/bin/vi', Kind: 2}]))
    // errors: a status and the engine's message, as DOCKER_FAILED
    await expect(engine.getArchive(c.id, '/no/such/path')).rejects.toMatchObject({code: 'DOCKER_FAILED', message: expect.stringMatching(/could not find the file \/no\/such\/path/i)})
    await expect(engine.exportContainer('no-such-container-here')).rejects.toMatchObject({code: 'DOCKER_FAILED', message: expect.stringMatching(/no such container/i)})
    await expect(engine.changes('no-such-container-here')).rejects.toMatchObject({code: 'DOCKER_FAILED'})
    // dockerode was never loaded for any of it
    expect((engine as unknown as {dockerode?: unknown}).dockerode).toBeUndefined()
  })
})
