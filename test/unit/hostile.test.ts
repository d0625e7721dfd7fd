/**
 * Hostile and broken input, without Docker:
 *  - crafted trees (as a hostile remote could serve them: their hashes match) restored to a
 *    host directory and written as a tar for the engine: nothing lands outside the target,
 *    nothing is sent, and the error names the tree;
 *  - crafted tar streams (as a broken or hostile engine could send them) fed to the archiver;
 *  - damaged packs, index files and manifests: verify names each damaged object with the
 *    snapshots and files it affects, a restore fails and leaves nothing, --partial restores the
 *    rest and lists what it left out;
 *  - the pause journal: records of dead holyship processes are acted on, live ones are not.
 */
import {spawnSync} from 'node:child_process'
import {createHash, randomBytes} from 'node:crypto'
import {mkdtempSync, promises as fsp, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {PassThrough, Readable, Writable} from 'node:stream'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {Archiver} from '../../src/archive/archiver.js'
import {restoreToDir, walkTree, writeTreeAsTar} from '../../src/archive/restorer.js'
import {archiveChanges, archiveTar, firstEntryOutside} from '../../src/archive/tar-source.js'
import {END_OF_ARCHIVE, TarHeader, TarWriter, encodeHeader, padding} from '../../src/archive/tarwriter.js'
import {LocalBackend} from '../../src/backend/local.js'
import {Engine} from '../../src/docker/engine.js'
import {HolyshipError} from '../../src/errors.js'
import {SnapshotManifest, TreeNode, dataKey} from '../../src/repo/format.js'
import {Repository} from '../../src/repo/repository.js'
import {recordPause, recoverPausedContainers} from '../../src/services/pause-journal.js'
import {checkManifest, needsContainers, restorePath, withoutNetworkConflicts} from '../../src/services/restore.js'
import {verifyRepository} from '../../src/services/verify.js'

let work: string
beforeAll(() => {
  work = mkdtempSync(path.join(os.tmpdir(), 'hs-hostile-'))
})
afterAll(() => rmSync(work, {recursive: true, force: true}))

const T0: [number, number] = [1_700_000_000, 0]
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

async function newRepo(name: string, packSize = 64 * 1024): Promise<Repository> {
  const dir = path.join(work, name)
  await fsp.mkdir(dir, {recursive: true})
  return Repository.init(new LocalBackend(dir), {packSize})
}

/** every path under dir (relative), for "nothing changed outside" checks */
async function listAll(dir: string): Promise<string[]> {
  const out: string[] = []
  const walk = async (d: string): Promise<void> => {
    for (const e of await fsp.readdir(d, {withFileTypes: true}).catch(() => [])) {
      const p = path.join(d, e.name)
      out.push(path.relative(dir, p) + (e.isDirectory() ? '/' : e.isSymbolicLink() ? '@' : ''))
      if (e.isDirectory()) await walk(p)
    }
  }
  await walk(dir)
  return out.sort()
}

// ------------------------------------------------------------------------------ crafted trees

describe('crafted trees never write outside the target and never reach the engine', () => {
  let repo: Repository
  let fileNode: (name: string, data: Buffer, extra?: Partial<TreeNode>) => Promise<TreeNode>
  const node = (name: string, type: TreeNode['type'], extra: Partial<TreeNode> = {}): TreeNode =>
    ({name, type, mode: type === 'dir' ? 0o755 : 0o644, uid: 0, gid: 0, mtime: T0, ...extra}) as TreeNode
  /** a tree blob saved as-is (hash and all): what a hostile remote can serve */
  const tree = async (nodes: unknown[]): Promise<string> => (await repo.saveBlob('tree', Buffer.from(JSON.stringify({nodes})))).id
  const dir = async (name: string, nodes: unknown[]): Promise<TreeNode> => node(name, 'dir', {subtree: await tree(nodes)})

  beforeAll(async () => {
    repo = await newRepo('crafted')
    fileNode = async (name, data, extra = {}) => node(name, 'file', {size: data.length, content: [(await repo.saveBlob('data', data)).id], ...extra})
  })

  /** [description, root tree id, a fragment of the expected message] */
  const cases: [string, () => Promise<string>, RegExp][] = [
    ['a file named ..', async () => tree([await fileNode('..', Buffer.from('x'))]), /the name is "\.\."/],
    ['a file named .', async () => tree([await fileNode('.', Buffer.from('x'))]), /the name is "\."/],
    ['an empty name', async () => tree([await fileNode('', Buffer.from('x'))]), /the name is empty/],
    ['a name that climbs out', async () => tree([await fileNode('../../outside/pwned', Buffer.from('x'))]), /contains "\/"/],
    ['an absolute name', async () => tree([await fileNode('/tmp/holyship-pwned', Buffer.from('x'))]), /contains "\/"/],
    ['a name with a slash inside', async () => tree([await fileNode('a/b', Buffer.from('x'))]), /contains "\/"/],
    ['a name with NUL', async () => tree([await fileNode('a\0b', Buffer.from('x'))]), /NUL/],
    ['a deep .. after good entries', async () => tree([await fileNode('aaa', Buffer.from('good')), await dir('d', [await dir('e', [await fileNode('..', Buffer.from('x'))])])]), /the name is "\.\."/],
    [
      'a symlink out, then a directory of the same name through it (duplicate)',
      async () => tree([node('x', 'symlink', {target: '../outside'}), await dir('x', [await fileNode('pwned', Buffer.from('x'))])]),
      /appears twice/,
    ],
    ['the same file twice', async () => tree([await fileNode('f', Buffer.from('1')), await fileNode('f', Buffer.from('2'))]), /appears twice/],
    ['a hard link that climbs out', async () => tree([node('h', 'hardlink', {target: '../../etc/passwd'})]), /hard link target .* has a "\.\." component/],
    ['an absolute hard link', async () => tree([node('h', 'hardlink', {target: '/etc/passwd'})]), /absolute/],
    [
      'a hard link through a symlink of the same restore',
      async () => tree([node('link', 'symlink', {target: path.join(work, 'outside')}), node('z', 'hardlink', {target: 'link/pwned'})]),
      /hard link \/z points to \/link\/pwned, which is not a file/,
    ],
    ['a hard link to a directory', async () => tree([await dir('d', []), node('h', 'hardlink', {target: 'd'})]), /not a file/],
    ['a hard link to itself', async () => tree([node('h', 'hardlink', {target: 'h'})]), /not a file/],
    ['a symlink with an empty target', async () => tree([node('s', 'symlink', {target: ''})]), /bad symlink target/],
    ['an unknown entry type', async () => tree([node('s', 'socket' as never)]), /unknown type/],
    ['a negative owner', async () => tree([await fileNode('f', Buffer.from('x'), {uid: -1})]), /bad owner/],
    ['a mode that is not a number', async () => tree([await fileNode('f', Buffer.from('x'), {mode: 'rwx' as never})]), /bad mode/],
    ['a content list that is not blob ids', async () => tree([node('f', 'file', {size: 1, content: ['../../etc/passwd']})]), /bad content list/],
    ['a subtree id that is not an id', async () => tree([node('d', 'dir', {subtree: '../..'})]), /bad subtree id/],
    ['a tree blob that is not JSON', async () => (await repo.saveBlob('tree', Buffer.from('garbage{'))).id, /not valid JSON/],
    ['a tree without a node list', async () => (await repo.saveBlob('tree', Buffer.from('{"nodes":{"a":1}}'))).id, /not a directory listing/],
    ['a subtree that is a data blob', async () => tree([node('d', 'dir', {subtree: (await repo.saveBlob('data', Buffer.from('plain data'))).id})]), /not valid JSON/],
    ['a whiteout named ..', async () => tree([node('..', 'whiteout')]), /the name is "\.\."/],
    // escapes spelling "é" beside a real "é": two strings, one name on disk
    ['a name escaped twice over', async () => tree([await fileNode('\u00e9', Buffer.from('1')), await fileNode('\udcc3\udca9', Buffer.from('2'))]), /not in the form a snapshot writes/],
    ['a lone surrogate no snapshot writes', async () => tree([await fileNode('a\ud800', Buffer.from('1'))]), /not in the form a snapshot writes/],
  ]

  it.each(cases)('%s: restore --path refuses it, writes nothing anywhere', async (_what, make, message) => {
    const root = await make()
    await repo.flush()
    const sandbox = await fsp.mkdtemp(path.join(work, 'sandbox-'))
    const target = path.join(sandbox, 'target')
    await fsp.mkdir(path.join(sandbox, 'outside'))
    const err = await restoreToDir(repo, root, '', target).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(err).toBeInstanceOf(HolyshipError)
    expect((err as HolyshipError).code).toBe('REPO_DAMAGED')
    expect((err as Error).message).toMatch(message)
    // the tree is named (for errors found while reading a tree)
    if (!/hard link \/|not a file/.test((err as Error).message)) expect((err as Error).message).toMatch(/tree [0-9a-f]{16}/)
    // nothing outside the target; the target holds nothing but what it had (nothing)
    // (the target did not exist before: what the restore created is removed again)
    expect(await listAll(sandbox)).toEqual(['outside/'])
    await expect(fsp.lstat('/tmp/holyship-pwned')).rejects.toThrow()
  })

  it.each(cases)('%s: the tar for the engine is refused before its first byte', async (_what, make, message) => {
    const root = await make()
    await repo.flush()
    let sent = 0
    const out = new Writable({
      write(chunk: Buffer, _enc, cb) {
        sent += chunk.length
        cb()
      },
    })
    const tw = new TarWriter(out)
    for (const opts of [{}, {rootName: 'data'}, {layer: true}]) {
      await expect(writeTreeAsTar(repo, root, tw, opts)).rejects.toMatchObject({code: 'REPO_DAMAGED', message: expect.stringMatching(message)})
    }
    expect(sent).toBe(0)
    expect(tw.bytes).toBe(0)
  })

  it('an unsafe root name for the tar is refused, and the tar writer refuses unsafe names itself', async () => {
    const root = await tree([await fileNode('ok', Buffer.from('fine'))])
    await repo.flush()
    const tw = new TarWriter(new PassThrough().resume())
    await expect(writeTreeAsTar(repo, root, tw, {rootName: '..'})).rejects.toMatchObject({code: 'REPO_DAMAGED'})
    const h = (name: string | Buffer, extra: Partial<TarHeader> = {}): TarHeader => ({name, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: T0, size: 0, ...extra})
    for (const bad of [h('../x'), h('/etc/x'), h('a/../../x'), h('a\0b'), h('l', {type: 'hardlink', linkname: '../../etc/passwd'}), h('l', {type: 'hardlink', linkname: '/etc/passwd'})]) {
      await expect(tw.entry(bad)).rejects.toThrow(/unsafe/)
    }
    expect(tw.bytes).toBe(0)
    // a symlink may point anywhere (the engine resolves it inside the container)
    await tw.entry(h('s', {type: 'symlink', linkname: '/etc/passwd'}))
  })

  it('a symlink pointing out is restored as a link; nothing is written through it, nor through one found in the target', async () => {
    const outside = path.join(work, 'outside-sym')
    await fsp.mkdir(outside, {recursive: true})
    const root = await tree([
      await fileNode('a', Buffer.from('a')),
      node('abs', 'symlink', {target: outside}),
      node('rel', 'symlink', {target: '../../../../../../..' + outside}),
      await dir('zdir', [await fileNode('inner', Buffer.from('inner'))]),
    ])
    await repo.flush()
    const target = path.join(work, 'sym-target')
    await restoreToDir(repo, root, '', target)
    expect(await fsp.readlink(path.join(target, 'abs'))).toBe(outside)
    expect(await listAll(outside)).toEqual([])
    // a second restore over it with --force, where the target's zdir was swapped for a symlink out
    await fsp.rm(path.join(target, 'zdir'), {recursive: true})
    await fsp.symlink(outside, path.join(target, 'zdir'))
    await expect(restoreToDir(repo, root, '', target)).rejects.toMatchObject({code: 'TARGET_EXISTS'})
    expect(await listAll(outside)).toEqual([])
    await restoreToDir(repo, root, '', target, {overwrite: true})
    expect((await fsp.lstat(path.join(target, 'zdir'))).isDirectory()).toBe(true)
    expect(await listAll(outside)).toEqual([])
  })

  it('a file whose tree lies about its size is refused and leaves no partial file behind', async () => {
    const data = randomBytes(5000)
    const root = await tree([await fileNode('a-good', Buffer.from('good')), await fileNode('b-liar', data, {size: 9000})])
    await repo.flush()
    const target = path.join(work, 'liar')
    await expect(restoreToDir(repo, root, '', target)).rejects.toMatchObject({code: 'REPO_DAMAGED', message: expect.stringMatching(/hold 5000 bytes, its tree says 9000/)})
    // the target did not exist: the whole restore is undone
    await expect(fsp.lstat(target)).rejects.toThrow()
    const tw = new TarWriter(new PassThrough().resume())
    await expect(writeTreeAsTar(repo, root, tw)).rejects.toMatchObject({code: 'REPO_DAMAGED'})
    expect(tw.bytes).toBe(0)
  })

  it('a hard link to a later file is written as a copy, a link to an earlier one as a link', async () => {
    const root = await tree([node('a-link', 'hardlink', {target: 'b-file'}), await fileNode('b-file', Buffer.from('shared')), node('c-link', 'hardlink', {target: 'b-file'})])
    await repo.flush()
    const names: string[] = []
    const tw = new TarWriter(new PassThrough().resume())
    const orig = tw.entry.bind(tw)
    tw.entry = async (h, c) => {
      names.push(`${h.name}:${h.type}`)
      return orig(h, c)
    }
    await writeTreeAsTar(repo, root, tw)
    expect(names).toEqual(['a-link:file', 'b-file:file', 'c-link:hardlink'])
    const target = path.join(work, 'links')
    await restoreToDir(repo, root, '', target)
    expect(await fsp.readFile(path.join(target, 'a-link'), 'utf8')).toBe('shared')
    expect((await fsp.stat(path.join(target, 'c-link'))).ino).toBe((await fsp.stat(path.join(target, 'b-file'))).ino)
  })

  it("a container on another's network, or the host's UTS namespace, loses what the engine refuses with it", () => {
    const config = {Hostname: 'abc123', Domainname: 'x', ExposedPorts: {'80/tcp': {}}, MacAddress: '02:42:ac:11:00:02', Env: ['A=1']}
    const hostConfig = {NetworkMode: 'container:vpn', Dns: ['1.1.1.1'], DnsOptions: [], DnsSearch: [], ExtraHosts: ['a:1.2.3.4'], PortBindings: {'80/tcp': [{HostPort: '8080'}]}, PublishAllPorts: true, Links: ['/db:/app/db'], Memory: 1}
    const c = {...config}
    const hc: Record<string, unknown> = {...hostConfig}
    withoutNetworkConflicts(c, hc)
    expect(c).toEqual({Env: ['A=1']})
    expect(hc).toEqual({NetworkMode: 'container:vpn', PublishAllPorts: false, Memory: 1})
    // the host network: only the MAC address; an ordinary one: nothing
    const onHost = {...config}
    withoutNetworkConflicts(onHost, {NetworkMode: 'host'})
    expect(onHost).toEqual({Hostname: 'abc123', Domainname: 'x', ExposedPorts: {'80/tcp': {}}, Env: ['A=1']})
    const bridged = {...config}
    const bhc: Record<string, unknown> = {...hostConfig, NetworkMode: 'bridge'}
    withoutNetworkConflicts(bridged, bhc)
    expect([bridged, bhc]).toEqual([config, {...hostConfig, NetworkMode: 'bridge'}])
    // the containers a restore needs there first
    expect(needsContainers({NetworkMode: 'container:vpn', IpcMode: 'shareable', PidMode: 'container:init', VolumesFrom: ['data:ro', 'logs'], Links: ['/db:/app/db']})).toEqual([
      {what: 'network', name: 'vpn'},
      {what: 'PID namespace', name: 'init'},
      {what: 'volumes', name: 'data'},
      {what: 'volumes', name: 'logs'},
      {what: 'link', name: 'db'},
    ])
    expect(needsContainers({NetworkMode: 'bridge', VolumesFrom: null, Links: null})).toEqual([])
    // --uts=host: the host's hostname
    const uts = {...config}
    withoutNetworkConflicts(uts, {NetworkMode: 'bridge', UTSMode: 'host'})
    expect(uts).toEqual({ExposedPorts: {'80/tcp': {}}, MacAddress: '02:42:ac:11:00:02', Env: ['A=1']})
  })

  it('a hostile manifest is refused before anything is created', () => {
    const good: SnapshotManifest = {
      version: 1,
      kind: 'container',
      time: new Date().toISOString(),
      host: 'h',
      tags: [],
      consistency: 'pause',
      reader: 'api',
      container: {id: 'c', name: 'n', config: {}, hostConfig: {}, networks: [], image: {id: 'sha256:x', repoTags: [], tree: 'a'.repeat(64), size: 1}, state: {running: true, paused: false}},
      mounts: [{type: 'volume', source: 'data', destination: '/data', readOnly: false, tree: 'b'.repeat(64), stats: {files: 0, dirs: 0, others: 0, bytes: 0, newBytes: 0, newBlobs: 0}}],
      stats: {bytes: 0, newBytes: 0, files: 0, durationMs: 0},
    }
    expect(() => checkManifest('f'.repeat(64), good)).not.toThrow()
    const mount = good.mounts[0]
    const bad: [string, Partial<typeof mount>][] = [
      ['volume name with a slash (a bind in disguise)', {source: '/etc'}],
      ['volume name ..', {source: '..'}],
      ['destination that climbs', {destination: '/data/../../etc'}],
      ['relative destination', {destination: 'data'}],
      ['destination with options smuggled in', {destination: '/data:rw'}],
      ['destination /', {destination: '/'}],
      ['bind source /', {type: 'bind', source: '/'}],
      ['bind source with ..', {type: 'bind', source: '/srv/../etc'}],
      ['tree id that is not an id', {tree: '../../x'}],
      ['a file mount that is a volume', {file: true}],
      ['a file mount flag that is not true', {type: 'bind', source: '/srv/app.conf', file: 'yes' as never}],
      ['a volume that binds /', {driver: 'local', options: {type: 'none', o: 'bind', device: '/'}}],
      ['a volume that binds /.. (/ again)', {driver: 'local', options: {type: 'none', o: 'bind', device: '/srv/../..'}}],
      ['a volume that binds a path with options smuggled in', {driver: 'local', options: {type: 'none', o: 'bind', device: '/srv:/etc'}}],
    ]
    // a bind volume of a directory, trailing slash and all, as a user may have made it
    expect(() => checkManifest('f'.repeat(64), {...good, mounts: [{...mount, driver: 'local', options: {type: 'none', o: 'bind', device: '/srv/pgdata/'}}]})).not.toThrow()
    expect(() => checkManifest('f'.repeat(64), {...good, mounts: [{...mount, type: 'bind', source: '/srv/app.conf', file: true}]})).not.toThrow()
    // versions: 1 and 2 are read; a newer one is not restored as if it were one of these (a catalogue's copy is not checked when read)
    expect(() => checkManifest('f'.repeat(64), {...good, version: 2})).not.toThrow()
    expect(() => checkManifest('f'.repeat(64), {...good, version: 3 as never})).toThrow(expect.objectContaining({code: 'REPO_NEWER_FORMAT'}))
    for (const v of [0, 1.5, '1', undefined]) expect(() => checkManifest('f'.repeat(64), {...good, version: v as never}), String(v)).toThrow(/damaged or hostile/)
    for (const [what, change] of bad) {
      expect(() => checkManifest('f'.repeat(64), {...good, mounts: [{...mount, ...change}]}), what).toThrow(/damaged or hostile/)
    }
    // networks: a list of named ones with aliases
    const withNets = (networks: unknown) => ({...good, container: {...good.container!, networks: networks as never}})
    expect(() => checkManifest('f'.repeat(64), withNets([{name: 'front', aliases: ['web']}]))).not.toThrow()
    for (const nets of [
      undefined,
      {},
      [null],
      [{name: 1, aliases: []}],
      [{name: 'x'}],
      [{name: 'x', aliases: [7]}],
      [{name: '../x', aliases: []}],
      [{name: 'x', aliases: [], ipv4: 7}],
      [{name: 'x', aliases: [], internal: 'yes'}],
      [{name: 'x', aliases: [], options: {a: 1}}],
      [{name: 'x', aliases: [], ipam: {Config: 'all'}}],
    ]) {
      expect(() => checkManifest('f'.repeat(64), withNets(nets)), JSON.stringify(nets)).toThrow(/damaged or hostile/)
    }
  })
})

// ------------------------------------------------------------------------------ crafted tar streams

describe('crafted tar streams from the engine', () => {
  let repo: Repository
  beforeAll(async () => {
    repo = await newRepo('tars')
  })

  const h = (name: string | Buffer, extra: Partial<TarHeader> = {}): TarHeader => ({name, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: T0, size: 0, ...extra})
  /** raw tar bytes, names exactly as given (no checks: encodeHeader, not TarWriter) */
  const rawTar = (entries: [TarHeader, Buffer?][], opts: {end?: boolean} = {}): Buffer => {
    const parts: Buffer[] = []
    for (const [head, data] of entries) {
      const size = data?.length ?? 0
      parts.push(encodeHeader({...head, size: head.type === 'file' ? size : 0}))
      if (data) parts.push(data, padding(size))
    }
    if (opts.end !== false) parts.push(END_OF_ARCHIVE)
    return Buffer.concat(parts)
  }
  /** the header at `at` given another typeflag (and its checksum mended) */
  function retype(tar: Buffer, at: number, flag: string): Buffer {
    const b = Buffer.from(tar)
    b.write(flag, at + 156, 'latin1')
    b.write('        ', at + 148, 'latin1')
    let sum = 0
    for (let i = at; i < at + 512; i++) sum += b[i]
    b.write(`${sum.toString(8).padStart(6, '0')}\0 `, at + 148, 'latin1')
    return b
  }
  /** a file in pax's sparse format 1.0, as `tar -cS --format=pax` writes it */
  function paxSparse(): Buffer {
    const rec = (k: string, v: string): string => {
      const body = ` ${k}=${v}\n`
      let n = body.length + 1
      while (`${n}${body}`.length !== n) n = `${n}${body}`.length
      return `${n}${body}`
    }
    const pax = Buffer.from(rec('GNU.sparse.major', '1') + rec('GNU.sparse.minor', '0') + rec('GNU.sparse.name', 'f') + rec('GNU.sparse.realsize', '10485760'))
    const paxHead = retype(rawTar([[h('./PaxHeaders/f'), pax]], {end: false}), 0, 'x')
    return Buffer.concat([paxHead, rawTar([[h('GNUSparseFile.1/f'), Buffer.from('map and data')]])])
  }
  const archive = async (bytes: Buffer | Readable, opts = {}): Promise<{root: string; paths: string[]}> => {
    const a = new Archiver(repo)
    await a.add({path: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: T0})
    await archiveTar(Buffer.isBuffer(bytes) ? Readable.from([bytes]) : bytes, a, opts)
    const root = await a.finish()
    await repo.flush()
    const paths: string[] = []
    for await (const e of walkTree(repo, root)) paths.push(`${e.path}:${e.node.type}`)
    return {root, paths}
  }

  const refused: [string, Buffer, RegExp][] = [
    ['a path that climbs out', rawTar([[h('../escape'), Buffer.from('x')]]), /unsafe path "\.\.\/escape"/],
    ['a path that climbs out in the middle', rawTar([[h('a/../../escape'), Buffer.from('x')]]), /unsafe path/],
    ['a NUL in a (pax) name', rawTar([[h('a\0b'), Buffer.from('x')]]), /unsafe path/],
    ['a hard link that climbs out', rawTar([[h('h', {type: 'hardlink', linkname: '../../etc/passwd'})]]), /unsafe hard link target/],
    ['a file as the root', rawTar([[h('./'), Buffer.from('x')]]), /a file as its root entry/],
    ['a stream cut in the middle of a file', rawTar([[h('big'), randomBytes(100_000)]]).subarray(0, 50_000), /tar stream failed/],
    ['a stream that is not a tar', randomBytes(4096), /tar stream failed/],
    ['a stream that ends between entries, without the end-of-archive block', rawTar([[h('a'), Buffer.from('x')]], {end: false}), /tar stream failed: .*without its end-of-archive block/],
    ['an entry of a type no file system has (GNU sparse)', retype(rawTar([[h('sparse'), Buffer.from('x')]]), 0, 'S'), /"sparse" as an entry of type "S", which holyship cannot record/],
    ['a pax sparse file (its map would be stored as its content)', paxSparse(), /a GNU sparse file/],
    ['a header with a bad checksum', Buffer.concat([rawTar([[h('a'), Buffer.from('x')]], {end: false}), Buffer.alloc(511), Buffer.of(1), END_OF_ARCHIVE]), /tar stream failed: .*bad checksum at byte 1024/],
  ]

  it.each(refused)('%s: DOCKER_FAILED, one line, nothing recorded as a tree', async (_what, bytes, message) => {
    const before = (await repo.backend.list('snapshots/')).length
    const err = await archive(bytes).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(err).toMatchObject({code: 'DOCKER_FAILED'})
    expect((err as Error).message).toMatch(message)
    expect((err as Error).message.split('\n')).toHaveLength(1)
    expect((await repo.backend.list('snapshots/')).length).toBe(before)
  })

  it('names that are not UTF-8 and binary xattr values are kept byte for byte (as the direct reader keeps them)', async () => {
    const latin = (x: string): Buffer => Buffer.from(x, 'latin1')
    // security.capability as Docker puts it into its archives: cap_setuid has the byte 0x80
    const cap = Buffer.from('0100000280000000000000000000000000000000', 'hex')
    const bytes = rawTar([
      [h('dir/', {type: 'dir', mode: 0o755})],
      [h(latin('dir/caf\xe9'), {xattrs: {'security.capability': cap, 'user.note': latin('\xff\x00\xfe')}}), Buffer.from('x')],
      [h(latin('dir/lien \xe9'), {type: 'symlink', linkname: latin('caf\xe9')})],
      [h('dir/dur', {type: 'hardlink', linkname: latin('dir/caf\xe9')})],
    ])
    const {root, paths} = await archive(bytes)
    expect(paths).toEqual(['dir:dir', 'dir/caf\udce9:file', 'dir/dur:hardlink', 'dir/lien \udce9:symlink'])
    const nodes = new Map<string, TreeNode>()
    for await (const e of walkTree(repo, root)) nodes.set(e.path, e.node)
    expect(nodes.get('dir/caf\udce9')!.xattrs).toEqual({'security.capability': cap.toString('base64'), 'user.note': latin('\xff\x00\xfe').toString('base64')})
    expect(nodes.get('dir/lien \udce9')!.target).toBe('caf\udce9')
    expect(nodes.get('dir/dur')!.target).toBe('dir/caf\udce9')
    // and they go back to the file system as the bytes they were
    const target = path.join(work, 'latin')
    await restoreToDir(repo, root, '', target)
    expect((await fsp.readdir(Buffer.from(path.join(target, 'dir')), {encoding: 'buffer'})).map((n) => n.toString('hex')).sort()).toEqual(
      [latin('caf\xe9'), Buffer.from('dur'), latin('lien \xe9')].map((n) => n.toString('hex')).sort(),
    )
  })

  it("a bind mount's first entry outside its inner mountpoints (restore's emptiness check)", async () => {
    const d = (name: string): [TarHeader] => [h(name, {type: 'dir', mode: 0o755})]
    const first = (bytes: Buffer, inner: string[] = []): Promise<string | undefined> => firstEntryOutside(Readable.from([bytes]), inner)
    // getArchive names entries after the directory asked for
    expect(await first(rawTar([d('app/')]))).toBeUndefined()
    expect(await first(rawTar([d('app/'), [h('app/x'), Buffer.from('x')]]))).toBe('x')
    // the mountpoints of mounts inside the bind, and the directories leading to them, are not content
    const mounts = rawTar([d('app/'), d('app/node_modules/'), d('app/var/'), d('app/var/lib/'), d('app/var/lib/db/'), [h('app/var/lib/db/f'), Buffer.from('f')]])
    expect(await first(mounts, ['node_modules', 'var/lib/db'])).toBeUndefined()
    expect(await first(mounts, ['node_modules'])).toBe('var')
    // a name that only begins like a mountpoint is content; so is a file beside one, on the way to it
    expect(await first(rawTar([d('app/'), d('app/node_modules2/')]), ['node_modules'])).toBe('node_modules2')
    expect(await first(rawTar([d('app/'), d('app/var/'), [h('app/var/x'), Buffer.from('x')], d('app/var/lib/db/')]), ['var/lib/db'])).toBe('var/x')
    // names as tar writes them (`./`, a leading `/`): the same paths
    expect(await first(rawTar([d('./app/'), d('./app/node_modules/'), [h('/app/y'), Buffer.from('y')]]), ['node_modules'])).toBe('y')
    // a file where the directory was expected
    expect(await first(rawTar([[h('app'), Buffer.from('x')]]))).toBe('')
    // an empty archive (no root entry) holds nothing
    expect(await first(rawTar([]))).toBeUndefined()
    // a broken stream is an error, not "empty"
    await expect(first(randomBytes(4096))).rejects.toThrow()
    // the stream is closed once the answer is known, though it has not ended
    const open = new PassThrough()
    open.write(rawTar([d('app/'), [h('app/z'), Buffer.from('z')]], {end: false}))
    expect(await firstEntryOutside(open, [])).toBe('z')
    expect(open.destroyed).toBe(true)
  })

  it("the container's layer through the API: a directory removed and made anew is opaque (however the engine names it), a deleted path a whiteout", async () => {
    const d = (name: string): [TarHeader] => [h(name, {type: 'dir', mode: 0o755})]
    const exported = () => Promise.resolve(Readable.from([rawTar([d('./'), d('bin/'), d('home/'), [h('home/only'), Buffer.from('fresh\n')], d('etc/'), [h('etc/motd'), Buffer.from('hi\n')]])]))
    const layer = async (changes: {Path: string; Kind: number}[]): Promise<string[]> => {
      const a = new Archiver(repo)
      expect(await archiveChanges(changes, new Set(), exported, a)).toEqual([])
      const tree = await a.finish()
      await repo.flush()
      const out: string[] = []
      for await (const e of walkTree(repo, tree)) out.push(`${e.path}:${e.node.type}${e.node.type === 'dir' && e.node.opaque ? ':opaque' : ''}`)
      return out
    }
    // an engine diffing overlay natively names the remade directory deleted (and modified, as the parent of what was added)
    expect(await layer([{Path: '/home', Kind: 2}, {Path: '/home', Kind: 0}, {Path: '/home/only', Kind: 1}, {Path: '/bin/vi', Kind: 2}])).toEqual(['bin:dir', 'bin/vi:whiteout', 'home:dir:opaque', 'home/only:file'])
    // one diffing naively names what of the image's is gone in it
    expect(await layer([{Path: '/home', Kind: 0}, {Path: '/home/only', Kind: 1}, {Path: '/home/old', Kind: 2}, {Path: '/bin/vi', Kind: 2}])).toEqual(['bin:dir', 'bin/vi:whiteout', 'home:dir', 'home/old:whiteout', 'home/only:file'])
    // remade and left empty: only the deletion is named
    expect(await layer([{Path: '/etc', Kind: 2}])).toEqual(['etc:dir:opaque'])
  })

  it('a bind-mounted file (fileRoot): its archive\'s root file under the given name; a device root, nothing', async () => {
    const a = new Archiver(repo)
    const rootType = await archiveTar(Readable.from([rawTar([[h('app.conf'), Buffer.from('setting=1\n')]])]), a, {stripFirst: true, fileRoot: 'app-prod.conf'})
    expect(rootType).toBe('file')
    const tree = await a.finish()
    await repo.flush()
    const paths: string[] = []
    for await (const e of walkTree(repo, tree)) paths.push(`${e.path}:${e.node.type}:${e.node.size}`)
    expect(paths).toEqual(['app-prod.conf:file:10'])
    const d = new Archiver(repo)
    expect(await archiveTar(Readable.from([rawTar([[h('kvm', {type: 'chardev', devMajor: 10, devMinor: 232})]])]), d, {stripFirst: true, fileRoot: 'kvm'})).toBe('chardev')
    // nothing recorded: the caller gives the mount its made-up root, with nothing in it
    await d.add({path: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [0, 0]})
    const empty = await d.finish()
    await repo.flush()
    expect((await repo.loadTree(empty)).nodes).toEqual([])
    // without fileRoot a file root is still refused
    await expect(archive(rawTar([[h('app.conf'), Buffer.from('x')]]), {stripFirst: true})).rejects.toMatchObject({code: 'DOCKER_FAILED'})
  })

  it("an old regular-file flag on a name ending in / is a directory, as Go and tar-stream read it", async () => {
    const {paths} = await archive(retype(rawTar([[h('old/', {type: 'dir', mode: 0o755})], [h('old/f'), Buffer.from('f')]]), 0, '\0'))
    expect(paths).toEqual(['old:dir', 'old/f:file'])
  })

  it('with stripFirst, a hard link out of the first component is refused', async () => {
    await expect(archive(rawTar([[h('vol/h', {type: 'hardlink', linkname: 'vol/../../x'})]]), {stripFirst: true})).rejects.toMatchObject({code: 'DOCKER_FAILED'})
  })

  it('a stream that errors (the engine went away) is DOCKER_FAILED', async () => {
    const s = new PassThrough()
    s.write(rawTar([[h('a'), randomBytes(2000)]], {end: false}))
    setTimeout(() => s.destroy(Object.assign(new Error('read ECONNRESET'), {code: 'ECONNRESET'})), 20)
    await expect(archive(s)).rejects.toMatchObject({code: 'DOCKER_FAILED', message: expect.stringMatching(/ECONNRESET/)})
  })

  it('harmless oddities are normalised: leading /, ./, //, duplicates (the last one wins), a dir over a file', async () => {
    const {root, paths} = await archive(
      rawTar([
        [h('/abs/file'), Buffer.from('abs')],
        [h('./dot//file'), Buffer.from('dot')],
        [h('dup'), Buffer.from('first')],
        [h('dup'), Buffer.from('second')],
        [h('x'), Buffer.from('file')],
        [h('x/', {type: 'dir'})],
        [h('x/in'), Buffer.from('in')],
      ]),
    )
    expect(paths).toEqual(['abs:dir', 'abs/file:file', 'dot:dir', 'dot/file:file', 'dup:file', 'x:dir', 'x/in:file'])
    const target = path.join(work, 'odd')
    await restoreToDir(repo, root, '', target)
    expect(await fsp.readFile(path.join(target, 'dup'), 'utf8')).toBe('second')
  })
})

// ------------------------------------------------------------------------------ damaged repositories

describe('damaged packs, index files and manifests', () => {
  let repo: Repository
  let dir: string
  let s1: string
  let s2: string
  const files: Record<string, Buffer> = {}

  const snapshotOf = async (content: Record<string, Buffer>, name: string, links: Record<string, string> = {}): Promise<string> => {
    const a = new Archiver(repo)
    await a.add({path: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: T0})
    for (const [p, data] of Object.entries(content)) {
      await a.add({path: p, type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: T0, content: Readable.from([data])})
    }
    for (const [p, target] of Object.entries(links)) await a.add({path: p, type: 'hardlink', mode: 0o644, uid: 0, gid: 0, mtime: T0, target})
    const tree = await a.finish()
    const m: SnapshotManifest = {
      version: 1,
      kind: 'volume',
      time: new Date().toISOString(),
      host: 'test',
      tags: [],
      consistency: 'live',
      reader: 'direct',
      mounts: [{type: 'volume', source: name, destination: '', readOnly: false, tree, stats: a.stats}],
      stats: {bytes: a.stats.bytes, newBytes: a.stats.newBytes, files: a.stats.files, durationMs: 1},
    }
    return repo.saveSnapshot(m)
  }
  const packOf = (data: Buffer): string => path.join(dir, dataKey(repo.blobLocation(sha(data))!.pack))
  const reopen = async (): Promise<Repository> => Repository.open(new LocalBackend(dir))
  const flip = async (file: string, at: number): Promise<() => Promise<void>> => {
    const orig = await fsp.readFile(file)
    const bad = Buffer.from(orig)
    bad[at] ^= 0xff
    await fsp.writeFile(file, bad)
    return () => fsp.writeFile(file, orig)
  }

  beforeAll(async () => {
    // small packs: each file's one chunk (< the chunker minimum) lands in its own pack
    repo = await newRepo('damaged', 16 * 1024)
    dir = path.join(work, 'damaged')
    for (const n of ['a.bin', 'b.bin', 'sub/c.bin', 'sub/deeper/d.bin']) files[n] = randomBytes(20_000)
    s1 = await snapshotOf(files, 'vol1', {'z-link': 'a.bin'})
    s2 = await snapshotOf({'b.bin': files['b.bin'], 'other.bin': randomBytes(20_000)}, 'vol2')
    expect((await verifyRepository(repo, {readData: true})).problems).toEqual([])
  })

  it('a flipped byte in a pack: verify --read-data names the pack, the snapshot and the files; restore fails and leaves nothing', async () => {
    const pack = packOf(files['a.bin'])
    const undo = await flip(pack, 100)
    try {
      const r = await reopen()
      const plain = await verifyRepository(r)
      expect(plain.problems).toEqual([]) // same size: only reading the data can tell
      const v = await verifyRepository(r, {readData: true})
      expect(v.problems).toHaveLength(1)
      const p = v.problems[0]
      expect(p.object).toBe(`data/${path.basename(pack).slice(0, 2)}/${path.basename(pack)}`)
      expect(p.problem).toMatch(/does not match its name/)
      expect(p.snapshots).toEqual([s1])
      // the file that holds the data (its hard link z-link shares it; restore --partial lists both)
      expect(p.files).toEqual([`${s1.slice(0, 12)}:vol1:/a.bin`])
      const m = await r.loadSnapshot(s1)
      const target = path.join(work, 'restore-flip')
      await expect(restorePath({repo: r, snapshotId: s1, manifest: m, path: '/', target})).rejects.toMatchObject({code: 'REPO_DAMAGED', message: expect.stringMatching(/blob [0-9a-f]{16} in .* is damaged/)})
      await expect(fsp.lstat(target)).rejects.toThrow()
      // the other snapshot shares b.bin (another pack) and restores whole
      const t2 = path.join(work, 'restore-s2')
      await restorePath({repo: r, snapshotId: s2, manifest: await r.loadSnapshot(s2), path: '/', target: t2})
      expect(await fsp.readFile(path.join(t2, 'b.bin'))).toEqual(files['b.bin'])
    } finally {
      await undo()
    }
  })

  it('--partial restores the rest, lists what it left out, and never writes damaged data', async () => {
    const undo = await flip(packOf(files['a.bin']), 100)
    try {
      const r = await reopen()
      const target = path.join(work, 'partial')
      const res = await restorePath({repo: r, snapshotId: s1, manifest: await r.loadSnapshot(s1), path: '/', target, partial: true})
      expect(res.skipped?.map((s) => s.path).sort()).toEqual(['/a.bin', '/z-link'])
      expect(res.skipped?.[0].reason).toMatch(/damaged/)
      expect(await listAll(target)).toEqual(['b.bin', 'sub/', 'sub/c.bin', 'sub/deeper/', 'sub/deeper/d.bin'])
      for (const f of ['b.bin', 'sub/c.bin', 'sub/deeper/d.bin']) expect(await fsp.readFile(path.join(target, f))).toEqual(files[f])
    } finally {
      await undo()
    }
  })

  it('a truncated pack and a missing pack are named; --partial skips their files', async () => {
    const packC = packOf(files['sub/c.bin'])
    const packD = packOf(files['sub/deeper/d.bin'])
    const origC = await fsp.readFile(packC)
    const origD = await fsp.readFile(packD)
    await fsp.truncate(packC, Math.floor(origC.length / 2))
    await fsp.rm(packD)
    try {
      const r = await reopen()
      const v = await verifyRepository(r)
      const byObject = new Map(v.problems.map((p) => [p.object, p]))
      const keyC = `data/${path.basename(packC).slice(0, 2)}/${path.basename(packC)}`
      const keyD = `data/${path.basename(packD).slice(0, 2)}/${path.basename(packD)}`
      expect(byObject.get(keyC)?.problem).toMatch(/truncated/)
      expect(byObject.get(keyC)?.files).toEqual([`${s1.slice(0, 12)}:vol1:/sub/c.bin`])
      expect(byObject.get(keyD)?.problem).toMatch(/missing/)
      expect(byObject.get(keyD)?.files).toEqual([`${s1.slice(0, 12)}:vol1:/sub/deeper/d.bin`])
      const vr = await verifyRepository(r, {readData: true})
      expect(vr.problems.map((p) => p.object).sort()).toEqual([keyC, keyD].sort())
      const target = path.join(work, 'partial-trunc')
      await expect(restorePath({repo: r, snapshotId: s1, manifest: await r.loadSnapshot(s1), path: '/sub', target: path.join(work, 'no')})).rejects.toMatchObject({code: 'REPO_DAMAGED'})
      const res = await restorePath({repo: r, snapshotId: s1, manifest: await r.loadSnapshot(s1), path: '/', target, partial: true})
      expect(res.skipped?.map((s) => s.path).sort()).toEqual(['/sub/c.bin', '/sub/deeper/d.bin'])
      expect(res.skipped?.find((s) => s.path === '/sub/c.bin')?.reason).toMatch(/short read|damaged/)
      expect(await listAll(target)).toEqual(['a.bin', 'b.bin', 'sub/', 'sub/deeper/', 'z-link'])
    } finally {
      await fsp.writeFile(packC, origC)
      await fsp.writeFile(packD, origD)
    }
  })

  it('a damaged tree blob: the directory is named, --partial restores everything else', async () => {
    // the pack of the tree of sub/deeper (no tree cache here: trees are read from packs)
    const r0 = await reopen()
    const m = await r0.loadSnapshot(s1)
    const root = await r0.loadTree(m.mounts[0].tree)
    const sub = await r0.loadTree(root.nodes.find((n) => n.name === 'sub')!.subtree!)
    const deeper = sub.nodes.find((n) => n.name === 'deeper')!.subtree!
    const pack = path.join(dir, dataKey(r0.blobLocation(deeper)!.pack))
    const loc = r0.blobLocation(deeper)!
    const undo = await flip(pack, loc.offset + 2)
    try {
      const r = await reopen()
      const v = await verifyRepository(r, {readData: true})
      const p = v.problems.find((x) => x.object.startsWith('data/'))!
      expect(p.files).toContain(`${s1.slice(0, 12)}:vol1:/sub/deeper/`)
      const target = path.join(work, 'partial-tree')
      const res = await restorePath({repo: r, snapshotId: s1, manifest: m, path: '/', target, partial: true})
      expect(res.skipped?.map((s) => s.path)).toEqual(['/sub/deeper/'])
      expect(await listAll(target)).toEqual(['a.bin', 'b.bin', 'sub/', 'sub/c.bin', 'sub/deeper/', 'z-link'])
    } finally {
      await undo()
    }
  })

  it('a damaged index file and a damaged manifest are named by key', async () => {
    const idx = (await repo.backend.list('index/'))[0].key
    const undoIdx = await flip(path.join(dir, idx), 5)
    try {
      await expect(reopen()).rejects.toMatchObject({code: 'REPO_DAMAGED', message: expect.stringContaining(idx)})
      const r = await Repository.open(new LocalBackend(dir), {loadIndex: false})
      const v = await verifyRepository(r)
      expect(v.problems.find((p) => p.object === idx)?.problem).toMatch(/does not match its name/)
    } finally {
      await undoIdx()
    }
    const undoSnap = await flip(path.join(dir, 'snapshots', s2), 3)
    try {
      const r = await reopen()
      await expect(r.loadSnapshot(s2)).rejects.toMatchObject({code: 'REPO_DAMAGED', message: expect.stringContaining(s2)})
      const v = await verifyRepository(r, {readData: true})
      expect(v.problems).toEqual([expect.objectContaining({object: `snapshots/${s2}`, snapshots: [s2]})])
      // the other snapshot is unaffected
      await restorePath({repo: r, snapshotId: s1, manifest: await r.loadSnapshot(s1), path: '/a.bin', target: path.join(work, 'still-fine')})
    } finally {
      await undoSnap()
    }
    expect((await verifyRepository(await reopen(), {readData: true})).problems).toEqual([])
  })
})

describe('index files that name impossible blobs', () => {
  it('an index file whose name matches its content but whose entries cannot be real is damaged, by key', async () => {
    const repo = await newRepo('impossible-index', 16 * 1024)
    const dir = path.join(work, 'impossible-index')
    const a = new Archiver(repo)
    await a.add({path: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: T0})
    await a.add({path: 'f', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: T0, content: Readable.from([randomBytes(1000)])})
    await a.finish()
    await repo.flush()
    const [{key}] = await repo.backend.list('index/')
    const good = JSON.parse(await fsp.readFile(path.join(dir, key), 'utf8'))
    const blob = good.packs[0].blobs[0]
    const cases: [string, Record<string, unknown>][] = [
      ['an id in capitals', {...blob, id: blob.id.toUpperCase()}],
      ['an id that is not hex', {...blob, id: `${blob.id.slice(0, 60)}../x`}],
      ['an offset past 4 GiB', {...blob, offset: 2 ** 32}],
      ['a negative length', {...blob, length: -1}],
      ['a fractional plain length', {...blob, raw: 1.5}],
      ['an unknown type', {...blob, type: 'exe'}],
    ]
    for (const [what, bad] of cases) {
      const data = Buffer.from(JSON.stringify({...good, packs: [{...good.packs[0], blobs: [bad]}]}))
      const name = `index/${sha(data)}`
      await fsp.writeFile(path.join(dir, name), data)
      try {
        await expect(Repository.open(new LocalBackend(dir)), what).rejects.toMatchObject({code: 'REPO_DAMAGED', message: expect.stringContaining(name)})
      } finally {
        await fsp.rm(path.join(dir, name))
      }
    }
    // the repository itself is fine
    expect((await Repository.open(new LocalBackend(dir))).hasBlob(blob.id)).toBe(true)
  })
})

// ------------------------------------------------------------------------------ the pause journal

describe('the pause journal', () => {
  /** an engine double: records calls, containers with a state */
  const fakeEngine = (states: Record<string, {Running: boolean; Paused: boolean}>, opts: {down?: boolean; helpers?: {Id: string; Names: string[]; Labels: Record<string, string>; State: string}[]} = {}) => {
    const calls: string[] = []
    const down = (): void => {
      if (opts.down) throw new HolyshipError('DOCKER_UNREACHABLE', 'down')
    }
    const e = {
      host: 'unix:///fake/docker.sock',
      isLocalSocket: true,
      calls,
      async info() {
        down()
        return {ID: 'FAKE-ENGINE'}
      },
      async inspectContainer(id: string) {
        down()
        if (!states[id]) throw new HolyshipError('CONTAINER_NOT_FOUND', id)
        return {State: {...states[id], Restarting: false}}
      },
      async unpause(id: string) {
        down()
        calls.push(`unpause ${id}`)
        if (!states[id]?.Paused) throw new Error('not paused')
        states[id].Paused = false
      },
      async start(id: string) {
        down()
        calls.push(`start ${id}`)
        if (states[id].Running) throw new Error('already started')
        states[id].Running = true
      },
      async listContainers() {
        down()
        return opts.helpers ?? []
      },
      async removeContainer(id: string) {
        calls.push(`remove ${id}`)
      },
    }
    return e as typeof e & Engine
  }
  const deadPid = (): number => {
    const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'])
    return Number(r.stdout.toString())
  }
  const rewritePid = async (file: string, pid: number): Promise<void> => {
    const rec = JSON.parse(await fsp.readFile(file, 'utf8'))
    await fsp.writeFile(file, JSON.stringify({...rec, pid, start: undefined}))
  }

  it('puts back what a dead process paused or stopped, leaves live ones and other engines alone', async () => {
    const jdir = path.join(work, 'journal')
    const states = {p1: {Running: true, Paused: true}, s1: {Running: false, Paused: false}, live: {Running: true, Paused: true}, restarted: {Running: false, Paused: false}}
    const engine = fakeEngine(states)
    const f1 = await recordPause(engine, 'p1', 'paused-one', 'paused', jdir)
    const f2 = await recordPause(engine, 's1', 'stopped-one', 'stopped', jdir)
    const f3 = await recordPause(engine, 'live', 'live-one', 'paused', jdir)
    // paused, then the engine restarted and stopped it
    const f4 = await recordPause(engine, 'restarted', 'restarted-one', 'paused', jdir)
    const other = fakeEngine({x: {Running: true, Paused: true}})
    ;(other as {host: string}).host = 'unix:///other.sock'
    ;(other as {info: () => Promise<{ID: string}>}).info = async () => ({ID: 'OTHER'})
    const f5 = await recordPause(other, 'x', 'elsewhere', 'paused', jdir)
    for (const f of [f1, f2, f4, f5]) await rewritePid(f!, deadPid())
    const done = await recoverPausedContainers(engine, jdir)
    expect(done.map((d) => `${d.name}:${d.outcome}`).sort()).toEqual(['paused-one:unpaused', 'restarted-one:started', 'stopped-one:started'])
    expect(states.p1).toEqual({Running: true, Paused: false})
    expect(states.s1.Running).toBe(true)
    expect(states.restarted.Running).toBe(true)
    expect(states.live.Paused).toBe(true) // its owner (this process) is alive
    expect((await fsp.readdir(jdir)).sort()).toEqual([path.basename(f3!), path.basename(f5!)].sort())
  })

  it('keeps a record while the engine is down, and acts on it once it is back', async () => {
    const jdir = path.join(work, 'journal-down')
    const states = {c: {Running: true, Paused: true}}
    const f = await recordPause(fakeEngine(states), 'c', 'c', 'paused', jdir)
    await rewritePid(f!, deadPid())
    const down = fakeEngine(states, {down: true})
    expect((await recoverPausedContainers(down, jdir))[0].outcome).toMatch(/failed/)
    expect(await fsp.readdir(jdir)).toEqual([path.basename(f!)])
    const up = fakeEngine(states)
    expect((await recoverPausedContainers(up, jdir))[0].outcome).toBe('unpaused')
    expect(await fsp.readdir(jdir)).toEqual([])
  })

  it('removes helper containers of dead holyship processes only', async () => {
    const dead = deadPid()
    const helpers: {Id: string; Names: string[]; Labels: Record<string, string>; State: string}[] = [
      {Id: 'h-dead', Names: [`/holyship-helper-${dead}-abc`], Labels: {'holyship.helper': 'true'}, State: 'created'},
      {Id: 'h-live', Names: [`/holyship-helper-${process.pid}-abc`], Labels: {'holyship.helper': 'true'}, State: 'created'},
      {Id: 'not-ours', Names: [`/holyship-helper-${dead}-abc`], Labels: {}, State: 'created'},
    ]
    const engine = fakeEngine({}, {helpers})
    await recoverPausedContainers(engine, path.join(work, 'journal-helpers'))
    expect(engine.calls).toEqual(['remove h-dead'])
  })
})
