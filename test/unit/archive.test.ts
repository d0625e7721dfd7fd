/**
 * Archiver, trees and restorer on a real repository in a temp directory and real files:
 * every kind of entry survives a round trip to a host directory.
 */
import {execFileSync} from 'node:child_process'
import {mkdtempSync, promises as fsp, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {Archiver} from '../../src/archive/archiver.js'
import {archiveDir} from '../../src/archive/fs-source.js'
import {findNode, restoreToDir, walkTree} from '../../src/archive/restorer.js'
import {LocalBackend} from '../../src/backend/local.js'
import {Repository} from '../../src/repo/repository.js'

describe('archiver and restorer', () => {
  let work: string
  let src: string
  let repo: Repository

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-arch-'))
    src = path.join(work, 'src')
    await fsp.mkdir(path.join(src, 'dir/empty'), {recursive: true})
    await fsp.writeFile(path.join(src, 'hello.txt'), 'hello\n')
    await fsp.writeFile(path.join(src, 'empty'), '')
    await fsp.link(path.join(src, 'hello.txt'), path.join(src, 'dir/link-to-hello'))
    await fsp.symlink('../hello.txt', path.join(src, 'dir/sym'))
    await fsp.writeFile(path.join(src, 'setuid'), 'x')
    await fsp.chmod(path.join(src, 'setuid'), 0o4755)
    await fsp.writeFile(path.join(src, 'owned'), 'o')
    await fsp.chown(path.join(src, 'owned'), 4321, 8765)
    await fsp.writeFile(path.join(src, 'big.bin'), Buffer.alloc(9 * 1024 * 1024, 7))
    const fh = await fsp.open(path.join(src, 'sparse'), 'w')
    await fh.truncate(32 * 1024 * 1024)
    await fh.close()
    await fsp.writeFile(path.join(src, 'n'.repeat(250)), 'long')
    await fsp.writeFile(path.join(src, 'ünïcødé ✓'), 'utf8')
    execFileSync('mkfifo', [path.join(src, 'fifo')])
    execFileSync('setfattr', ['-n', 'user.note', '-v', 'kept', path.join(src, 'hello.txt')])
    await fsp.utimes(path.join(src, 'empty'), 1_000_000_000.123456, 1_000_000_000.123456)
    await fsp.mkdir(path.join(work, 'repo'))
    repo = await Repository.init(new LocalBackend(path.join(work, 'repo')))
  })

  afterAll(() => rmSync(work, {recursive: true, force: true}))

  it('archives a directory and restores it with everything intact', async () => {
    const a = new Archiver(repo)
    await archiveDir(src, a)
    const root = await a.finish()
    await repo.flush()
    expect(a.stats.files).toBe(8)
    // 9 MiB of one byte and 32 MiB of zeros cost almost nothing
    const stored = (await repo.backend.list('data/')).reduce((s, e) => s + e.size, 0)
    expect(stored).toBeLessThan(64 * 1024)

    const out = path.join(work, 'out')
    await restoreToDir(repo, root, '', out)
    const st = async (p: string) => fsp.lstat(path.join(out, p))
    expect(await fsp.readFile(path.join(out, 'hello.txt'), 'utf8')).toBe('hello\n')
    expect((await st('hello.txt')).ino).toBe((await st('dir/link-to-hello')).ino)
    expect(await fsp.readlink(path.join(out, 'dir/sym'))).toBe('../hello.txt')
    expect((await st('setuid')).mode & 0o7777).toBe(0o4755)
    expect([(await st('owned')).uid, (await st('owned')).gid]).toEqual([4321, 8765])
    expect((await st('dir/empty')).isDirectory()).toBe(true)
    expect((await st('fifo')).isFIFO()).toBe(true)
    expect((await st('sparse')).size).toBe(32 * 1024 * 1024)
    expect((await st('sparse')).blocks).toBeLessThan(64)
    expect(await fsp.readFile(path.join(out, 'n'.repeat(250)), 'utf8')).toBe('long')
    expect(await fsp.readFile(path.join(out, 'ünïcødé ✓'), 'utf8')).toBe('utf8')
    const ns = (await fsp.lstat(path.join(out, 'empty'), {bigint: true})).mtimeNs
    const nsSrc = (await fsp.lstat(path.join(src, 'empty'), {bigint: true})).mtimeNs
    expect(ns).toBe(nsSrc)
    expect(execFileSync('getfattr', ['--only-values', '-n', 'user.note', path.join(out, 'hello.txt')]).toString()).toBe('kept')
  })

  it('stores identical content once and trees are content-addressed', async () => {
    const a = new Archiver(repo)
    await archiveDir(src, a)
    const root1 = await a.finish()
    const b = new Archiver(repo)
    await archiveDir(src, b)
    const root2 = await b.finish()
    expect(root2).toBe(root1)
    expect(b.stats.newBlobs).toBe(0)
    const names: string[] = []
    for await (const e of walkTree(repo, root1)) names.push(e.path)
    expect(names).toContain('dir/link-to-hello')
    // the first name in a depth-first walk holds the data, the other is a link to it
    expect((await findNode(repo, root1, 'dir/link-to-hello'))?.type).toBe('file')
    expect(await findNode(repo, root1, 'hello.txt')).toMatchObject({type: 'hardlink', target: 'dir/link-to-hello'})
  })

  it('never writes through a symlink found in the target', async () => {
    const a = new Archiver(repo)
    await archiveDir(src, a)
    const root = await a.finish()
    const out = path.join(work, 'evil')
    const outside = path.join(work, 'outside')
    await fsp.mkdir(out)
    await fsp.mkdir(outside)
    await fsp.symlink(outside, path.join(out, 'dir'))
    await expect(restoreToDir(repo, root, '', out)).rejects.toMatchObject({code: 'TARGET_EXISTS'})
    // with --force the symlink itself is replaced; nothing lands where it pointed
    await restoreToDir(repo, root, 'dir', out, {overwrite: true})
    expect((await fsp.lstat(path.join(out, 'dir'))).isDirectory()).toBe(true)
    expect(await fsp.readdir(outside)).toEqual([])
  })
})
