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
import {fileContent, findNode, restoreToDir, walkTree} from '../../src/archive/restorer.js'
import {LocalBackend} from '../../src/backend/local.js'
import type {TreeNode} from '../../src/repo/format.js'
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
    await archiveDir(src, a, {racyMs: -1})
    const root1 = await a.finish()
    const b = new Archiver(repo)
    await archiveDir(src, b, {racyMs: -1})
    const root2 = await b.finish()
    await repo.flush()
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
    await repo.flush()
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

  it('a file with other names whose first name goes while the snapshot runs: the next name holds the data, not a link to nothing', async () => {
    const dir = path.join(work, 'vanish')
    await fsp.mkdir(path.join(dir, 'a-dir'), {recursive: true})
    await fsp.writeFile(path.join(dir, 'a-dir/x'), 'x\n')
    await fsp.writeFile(path.join(dir, 'b'), 'data of b and c\n')
    await fsp.link(path.join(dir, 'b'), path.join(dir, 'c'))
    const a = new Archiver(repo)
    const add = a.add.bind(a)
    // b and c are stat'ed with the root's entries, then a-dir is walked: b goes meanwhile
    a.add = async (e) => {
      if (e.path === 'a-dir/x') rmSync(path.join(dir, 'b'))
      return add(e)
    }
    const changed = await archiveDir(dir, a, {racyMs: -1})
    const tree = await a.finish()
    await repo.flush()
    expect(changed).toEqual(['b'])
    expect(await findNode(repo, tree, 'c')).toMatchObject({type: 'file', size: 16})
    const out = path.join(work, 'vanish-out')
    await restoreToDir(repo, tree, '', out)
    expect(await fsp.readFile(path.join(out, 'c'), 'utf8')).toBe('data of b and c\n')
    expect(await fsp.readdir(out)).toEqual(['a-dir', 'c'])
  })

  it('never reads through an entry swapped for a symlink (or a fifo) while the walk runs: nothing of the host outside the root is stored', async () => {
    const dir = path.join(work, 'swapped')
    const host = path.join(work, 'host-only')
    await fsp.mkdir(path.join(host, 'etc'), {recursive: true})
    await fsp.writeFile(path.join(host, 'secret'), 'HOST SECRET')
    await fsp.writeFile(path.join(host, 'x'), 'HOST SECRET')
    await fsp.writeFile(path.join(host, 'etc/shadow'), 'HOST SECRET')
    await fsp.mkdir(path.join(dir, 'sub'), {recursive: true})
    await fsp.writeFile(path.join(dir, 'sub/x'), 'x')
    await fsp.writeFile(path.join(dir, 'aaa'), 'first')
    await fsp.writeFile(path.join(dir, 'victim'), 'harmless')
    await fsp.writeFile(path.join(dir, 'pipe'), 'a file, then a fifo')
    await fsp.mkdir(path.join(dir, 'deep/etc'), {recursive: true})
    await fsp.writeFile(path.join(dir, 'deep/etc/a'), 'a')
    await fsp.writeFile(path.join(dir, 'deep/etc/shadow'), 'harmless')
    const a = new Archiver(repo)
    const add = a.add.bind(a)
    // what shares the volume swaps entries the walk has stat'ed but not yet read
    a.add = async (e) => {
      if (e.path === 'aaa') {
        await fsp.rename(path.join(dir, 'sub'), path.join(work, 'sub.old'))
        await fsp.symlink(host, path.join(dir, 'sub'))
        await fsp.rm(path.join(dir, 'victim'))
        await fsp.symlink(path.join(host, 'secret'), path.join(dir, 'victim'))
        await fsp.rm(path.join(dir, 'pipe'))
        execFileSync('mkfifo', [path.join(dir, 'pipe')])
      }
      // a directory above the next file: a walk by path would go through the symlink
      if (e.path === 'deep/etc/a') {
        await fsp.rename(path.join(dir, 'deep'), path.join(work, 'deep.old'))
        await fsp.symlink(host, path.join(dir, 'deep'))
      }
      return add(e)
    }
    const changed = await archiveDir(dir, a, {racyMs: -1})
    const tree = await a.finish()
    await repo.flush()
    expect(changed.sort()).toEqual(['pipe', 'sub', 'victim'])
    const files: Record<string, string> = {}
    for await (const {path: p, node} of walkTree(repo, tree)) {
      if (node.type !== 'file') continue
      let body = ''
      for await (const b of fileContent(repo, node)) body += b.toString()
      files[p] = body
    }
    expect(files).toEqual({'aaa': 'first', 'deep/etc/a': 'a', 'deep/etc/shadow': 'harmless'})
  }, 30_000)
})

describe('direct reader with a parent snapshot', () => {
  let work: string
  let src: string
  let repo: Repository

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-parent-'))
    src = path.join(work, 'src')
    await fsp.mkdir(path.join(src, 'a/b'), {recursive: true})
    await fsp.writeFile(path.join(src, 'a/one.txt'), 'one\n')
    await fsp.writeFile(path.join(src, 'a/b/two.txt'), 'two\n')
    await fsp.symlink('../one.txt', path.join(src, 'a/b/sym'))
    execFileSync('setfattr', ['-n', 'user.note', '-v', 'first', path.join(src, 'a/one.txt')])
    execFileSync('setfattr', ['-n', 'user.dir', '-v', 'd', path.join(src, 'a/b')])
    await fsp.mkdir(path.join(work, 'repo'))
    repo = await Repository.init(new LocalBackend(path.join(work, 'repo')))
  })

  afterAll(() => rmSync(work, {recursive: true, force: true}))

  const snap = async (parent?: {tree: string; root?: TreeNode}) => {
    const a = new Archiver(repo)
    // (the files were written a moment ago: see racy, below)
    const changed = await archiveDir(src, a, {racyMs: -1, ...(parent ? {parent: {...parent, loadTree: (id) => repo.loadTree(id)}} : {})})
    const tree = await a.finish()
    await repo.flush()
    return {tree, root: a.rootNode(), stats: a.stats, changed}
  }
  const xattrsOf = async (tree: string, p: string) => (await findNode(repo, tree, p))?.xattrs

  it('reuses unchanged files and their attributes, and sees what changed since', async () => {
    const first = await snap()
    expect(await xattrsOf(first.tree, 'a/one.txt')).toEqual({'user.note': Buffer.from('first').toString('base64')})
    expect(await xattrsOf(first.tree, 'a/b')).toEqual({'user.dir': Buffer.from('d').toString('base64')})
    // a symlink's own attributes, not its target's
    expect(await xattrsOf(first.tree, 'a/b/sym')).toBeUndefined()

    const same = await snap(first)
    expect(same.tree).toBe(first.tree)
    expect(same.stats.reused).toBe(2)
    expect(same.stats.newBlobs).toBe(0)

    // an attribute changed (content not), one removed, a new directory with attributes below it
    execFileSync('setfattr', ['-n', 'user.note', '-v', 'second', path.join(src, 'a/one.txt')])
    execFileSync('setfattr', ['-x', 'user.dir', path.join(src, 'a/b')])
    await fsp.mkdir(path.join(src, 'a/new/deeper'), {recursive: true})
    await fsp.writeFile(path.join(src, 'a/new/deeper/three.txt'), 'three\n')
    execFileSync('setfattr', ['-n', 'user.new', '-v', 'n', path.join(src, 'a/new/deeper/three.txt')])
    execFileSync('setfattr', ['-n', 'user.newdir', '-v', 'n', path.join(src, 'a/new')])
    await fsp.writeFile(path.join(src, 'a/b/two.txt'), 'two, changed\n')
    const next = await snap(same)
    expect(next.tree).not.toBe(first.tree)
    expect(await xattrsOf(next.tree, 'a/one.txt')).toEqual({'user.note': Buffer.from('second').toString('base64')})
    expect(await xattrsOf(next.tree, 'a/b')).toBeUndefined()
    expect(await xattrsOf(next.tree, 'a/new')).toEqual({'user.newdir': Buffer.from('n').toString('base64')})
    expect(await xattrsOf(next.tree, 'a/new/deeper/three.txt')).toEqual({'user.new': Buffer.from('n').toString('base64')})
    expect((await findNode(repo, next.tree, 'a/b/two.txt'))?.size).toBe('two, changed\n'.length)
    // one.txt's ctime moved with its attribute: read again (its content is the same)
    expect(next.stats.reused ?? 0).toBe(0)
    expect(next.stats.newBlobs).toBe(2)

    // and a restore of it has them
    const out = path.join(work, 'out')
    await restoreToDir(repo, next.tree, '', out)
    expect(await fsp.readFile(path.join(out, 'a/b/two.txt'), 'utf8')).toBe('two, changed\n')
    expect(execFileSync('getfattr', ['--only-values', '-n', 'user.new', path.join(out, 'a/new/deeper/three.txt')]).toString()).toBe('n')
  })

  it('keeps an overlay upper dir\'s whiteouts and opaque directories across snapshots, and sees new ones', async () => {
    const upper = path.join(work, 'upper')
    await fsp.mkdir(path.join(upper, 'etc/opaque'), {recursive: true})
    await fsp.writeFile(path.join(upper, 'etc/opaque/only'), 'o\n')
    execFileSync('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', path.join(upper, 'etc/opaque')])
    execFileSync('mknod', [path.join(upper, 'etc/deleted'), 'c', '0', '0'])
    const snapOverlay = async (parent?: {tree: string}) => {
      const a = new Archiver(repo)
      await archiveDir(upper, a, {overlay: true, racyMs: -1, ...(parent ? {parent: {...parent, loadTree: (id: string) => repo.loadTree(id)}} : {})})
      const tree = await a.finish()
      await repo.flush()
      return tree
    }
    const check = async (tree: string) => {
      expect(await findNode(repo, tree, 'etc/deleted')).toMatchObject({type: 'whiteout'})
      const opaque = await findNode(repo, tree, 'etc/opaque')
      expect(opaque?.opaque).toBe(true)
      // overlayfs' own attributes are not recorded
      expect(opaque?.xattrs).toBeUndefined()
    }
    const first = await snapOverlay()
    await check(first)
    const same = await snapOverlay({tree: first})
    expect(same).toBe(first)
    await check(same)
    // a directory made opaque since (rm -rf + mkdir in the container)
    await fsp.mkdir(path.join(upper, 'var'))
    execFileSync('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', path.join(upper, 'var')])
    const next = await snapOverlay({tree: same})
    await check(next)
    expect((await findNode(repo, next, 'var'))?.opaque).toBe(true)
  })

  it('takes an unchanged directory\'s tree from the parent without writing it again, and the result is what a full read gives', async () => {
    const base = await snap()
    const saved: string[] = []
    const saveTree = repo.saveTree.bind(repo)
    repo.saveTree = async (tree) => {
      saved.push(tree.nodes.map((n) => n.name).join(','))
      return saveTree(tree)
    }
    try {
      // nothing changed: only the root's tree is written (it is not a child of anything)
      saved.length = 0
      const same = await snap(base)
      expect(same.tree).toBe(base.tree)
      expect(saved).toHaveLength(1)

      // a file's content deep down changes and its mtime is set back to what the parent
      // recorded: its ctime moved, so it is read again and the directories above it are written
      await fsp.writeFile(path.join(src, 'a/b/two.txt'), 'TWO, changed again\n')
      const recorded = (await findNode(repo, same.tree, 'a/b/two.txt'))!.mtime
      await fsp.utimes(path.join(src, "a/b/two.txt"), recorded[0] + recorded[1] / 1e9, recorded[0] + recorded[1] / 1e9)
      saved.length = 0
      const back = await snap(same)
      expect(saved.length).toBe(3)
      expect(back.tree).toBe((await snap()).tree)
      await fsp.chmod(path.join(src, 'a/one.txt'), 0o600)
      saved.length = 0
      const chmodded = await snap(back)
      expect(chmodded.tree).not.toBe(back.tree)
      // a/b is unchanged since `back`: only the root and a are written
      expect(saved).toHaveLength(2)
      expect(chmodded.tree).toBe((await snap()).tree)
      expect((await findNode(repo, chmodded.tree, 'a/one.txt'))?.mode).toBe(0o600)
      expect(await fsp.readFile(path.join(src, 'a/b/two.txt'), 'utf8')).toBe('TWO, changed again\n')
      const out = path.join(work, 'out-reused')
      await restoreToDir(repo, chmodded.tree, '', out)
      expect(await fsp.readFile(path.join(out, 'a/b/two.txt'), 'utf8')).toBe('TWO, changed again\n')
      expect((await fsp.lstat(path.join(out, 'a/one.txt'))).mode & 0o777).toBe(0o600)
    } finally {
      repo.saveTree = saveTree
    }
  })

  it('does not record a file written a moment before (or while) it is read for reuse: a write in the same clock tick, after the read, would look unchanged', async () => {
    const dir = path.join(work, 'racy')
    await fsp.mkdir(dir)
    await fsp.writeFile(path.join(dir, 'f'), 'written now\n')
    const snapDir = async (racyMs: number, parent?: string) => {
      const a = new Archiver(repo)
      await archiveDir(dir, a, {racyMs, ...(parent ? {parent: {tree: parent, loadTree: (id) => repo.loadTree(id)}} : {})})
      const tree = await a.finish()
      await repo.flush()
      return {tree, reused: a.stats.reused ?? 0, node: (await findNode(repo, tree, 'f'))!}
    }
    // written within the window (a minute): read, but without the ctime that reuse needs
    const first = await snapDir(60_000)
    expect(first.node.ctime).toBeUndefined()
    expect(first.node.size).toBe(12)
    const again = await snapDir(60_000, first.tree)
    expect(again.reused).toBe(0)
    // once it is older than the window, it is recorded for reuse, and reused
    await new Promise((r) => setTimeout(r, 50))
    const settled = await snapDir(20, again.tree)
    expect(settled.node.ctime).toBeDefined()
    expect((await snapDir(20, settled.tree)).reused).toBe(1)
  })

  it('reads the attributes of everything when the parent tree cannot be read', async () => {
    const first = await snap()
    const a = new Archiver(repo)
    await archiveDir(src, a, {racyMs: -1, parent: {tree: first.tree, loadTree: async () => Promise.reject(new Error('gone'))}})
    expect(await a.finish()).toBe(first.tree)
  })
})

describe('direct reader of a bind-mounted file (only)', () => {
  let work: string
  let repo: Repository

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-only-'))
    await fsp.mkdir(path.join(work, 'etc/sub'), {recursive: true})
    await fsp.writeFile(path.join(work, 'etc/app.conf'), 'setting=1\n')
    await fsp.writeFile(path.join(work, 'etc/other.conf'), 'not mine\n')
    await fsp.writeFile(path.join(work, 'etc/sub/deep'), 'not mine either\n')
    execFileSync('setfattr', ['-n', 'user.note', '-v', 'mine', path.join(work, 'etc/app.conf')])
    execFileSync('setfattr', ['-n', 'user.note', '-v', 'theirs', path.join(work, 'etc/other.conf')])
    await fsp.mkdir(path.join(work, 'repo'))
    repo = await Repository.init(new LocalBackend(path.join(work, 'repo')))
  })
  afterAll(() => rmSync(work, {recursive: true, force: true}))

  const snap = async (parent?: string): Promise<{tree: string; files: number; changed: string[]}> => {
    const a = new Archiver(repo)
    const changed = await archiveDir(path.join(work, 'etc'), a, {only: 'app.conf', racyMs: -1, ...(parent ? {parent: {tree: parent, loadTree: (id) => repo.loadTree(id)}} : {})})
    const tree = await a.finish()
    await repo.flush()
    return {tree, files: a.stats.files, changed}
  }

  it('records the one file with its attributes, nothing else of its directory, and reuses it unchanged', async () => {
    const first = await snap()
    const paths: string[] = []
    for await (const e of walkTree(repo, first.tree)) paths.push(e.path)
    expect(paths).toEqual(['app.conf'])
    const node = (await findNode(repo, first.tree, 'app.conf'))!
    expect(node.xattrs).toEqual({'user.note': Buffer.from('mine').toString('base64')})
    // the same tree again from the parent; a change is seen
    expect((await snap(first.tree)).tree).toBe(first.tree)
    await fsp.writeFile(path.join(work, 'etc/app.conf'), 'setting=2\n')
    expect((await snap(first.tree)).tree).not.toBe(first.tree)
    // gone: an empty tree (the snapshot says so, see readMount)
    await fsp.rm(path.join(work, 'etc/app.conf'))
    expect((await snap()).files).toBe(0)
  })
})
