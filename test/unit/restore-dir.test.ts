/**
 * restoreToDir places many entries at the same time and reads blobs through a LocalBackend
 * read session: what that must not change (contents, links, holes, metadata, what a failure
 * leaves behind), and the session itself (exact ranges, nothing stale, nothing left open).
 */
import {execFileSync, spawnSync} from 'node:child_process'
import {createHash, randomBytes} from 'node:crypto'
import {chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, promises as fsp, readFileSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, beforeAll, describe, expect, it, vi} from 'vitest'
import {Archiver} from '../../src/archive/archiver.js'
import {archiveDir} from '../../src/archive/fs-source.js'
import {nameFromBytes} from '../../src/archive/names.js'
import {restoreToDir} from '../../src/archive/restorer.js'
import {BackendNotFound} from '../../src/backend/backend.js'
import {LocalBackend, retainReads} from '../../src/backend/local.js'
import {classify} from '../../src/errors.js'
import {dataKey} from '../../src/repo/format.js'
import {Repository} from '../../src/repo/repository.js'
import {xattrsWarning} from '../../src/services/restore.js'

const MiB = 1024 * 1024
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')
/** file descriptors open on files (not the pipes, sockets, event fds and /dev/null of threads, such as the restore workers') */
const openFds = (): number =>
  readdirSync('/proc/self/fd').filter((fd) => {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`)
      return target.startsWith('/') && !target.startsWith('/dev/')
    } catch {
      return false
    }
  }).length

/** every entry under `dir`: relative path -> what it is (content hash, link target, mode, mtime) */
async function describeTree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {}
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await fsp.readdir(path.join(dir, rel))).sort()) {
      const p = rel ? `${rel}/${name}` : name
      const abs = path.join(dir, p)
      const st = await fsp.lstat(abs)
      const meta = `${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid} ${Math.floor(st.mtimeMs)}`
      if (st.isDirectory()) {
        out[p] = `dir ${meta}`
        await walk(p)
      } else if (st.isSymbolicLink()) out[p] = `symlink ${await fsp.readlink(abs)}`
      else out[p] = `file ${st.size} ${sha(await fsp.readFile(abs))} ${meta}`
    }
  }
  await walk('')
  return out
}

describe('restoreToDir with many entries in flight', () => {
  let work: string
  let src: string
  let repo: Repository
  let root: string

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-rdir-'))
    src = path.join(work, 'src')
    // 300 small files in 10 directories, a few multi-chunk files, a sparse file with data in
    // the middle, a file of zeros, symlinks, and hard links before and after their file
    for (let d = 0; d < 10; d++) {
      await fsp.mkdir(path.join(src, `d${d}`, 'sub'), {recursive: true})
      for (let f = 0; f < 30; f++) {
        const p = path.join(src, `d${d}`, f % 3 === 0 ? 'sub' : '', `f${f}.txt`)
        await fsp.writeFile(p, `file ${d}/${f}\n`.repeat(1 + ((d * 31 + f) % 200)))
        await fsp.chmod(p, f % 2 ? 0o640 : 0o755)
        await fsp.utimes(p, 1_600_000_000 + f, 1_600_000_000 + d * 100 + f)
      }
      await fsp.symlink(`f${d}.txt`, path.join(src, `d${d}`, 'link'))
    }
    await fsp.writeFile(path.join(src, 'big-random.bin'), randomBytes(9 * MiB))
    await fsp.writeFile(path.join(src, 'big-text.txt'), Buffer.from('compressible line of text\n'.repeat(400_000)))
    await fsp.writeFile(path.join(src, 'zeros.bin'), Buffer.alloc(12 * MiB))
    const fh = await fsp.open(path.join(src, 'sparse.bin'), 'w')
    await fh.write(randomBytes(300_000), 0, 300_000, 20 * MiB)
    await fh.truncate(40 * MiB)
    await fh.close()
    await fsp.link(path.join(src, 'd3', 'f1.txt'), path.join(src, 'd3', 'a-hardlink'))
    await fsp.link(path.join(src, 'd5', 'f2.txt'), path.join(src, 'd5', 'z-hardlink'))
    await fsp.mkdir(path.join(work, 'repo'))
    repo = await Repository.init(new LocalBackend(path.join(work, 'repo')))
    const a = new Archiver(repo)
    await archiveDir(src, a)
    root = await a.finish()
    await repo.flush()
  })

  afterAll(() => rmSync(work, {recursive: true, force: true}))

  it('restores everything as it was, holes left as holes, and leaves no file open', async () => {
    const out = path.join(work, 'out')
    const fds = openFds()
    let bytes = 0
    const rename = vi.spyOn(fsp, 'rename')
    const inWorker = vi.spyOn(repo, 'writeFile')
    let r
    const seenMidway: string[][] = []
    try {
      r = await restoreToDir(repo, root, '', out, {
        onBytes: (n) => {
          // half way, the target is not there yet: only a directory that says it is partial
          if (bytes === 0) seenMidway.push(readdirSync(work).filter((x) => x.startsWith('.out') || x === 'out'))
          bytes += n
        },
      })
      // a new target holds nothing to protect: every file is written under its own name, in
      // a directory renamed to the target's name once all is in
      expect(seenMidway).toEqual([[expect.stringMatching(/^\.out\.holyship-partial-[0-9a-f]{8}$/)]])
      expect(rename.mock.calls).toEqual([[path.join(work, seenMidway[0][0]), out]])
      expect(readdirSync(work).filter((x) => x.startsWith('.out'))).toEqual([])
      // the small files (but the first few) were written whole by the restore workers
      expect(repo.fileWorkers()?.size).toBe(2)
      expect(inWorker.mock.calls.length).toBeGreaterThan(280)
    } finally {
      rename.mockRestore()
      inWorker.mockRestore()
    }
    expect(openFds()).toBe(fds)
    expect(await describeTree(out)).toEqual(await describeTree(src))
    expect(r.files).toBeGreaterThan(300)
    expect(bytes).toBe(r.bytes)
    // the file of zeros and the sparse file's holes take no blocks (holes are whole chunks of
    // zeros: the one chunk around the sparse file's data, at most 4 MiB, is written)
    expect((await fsp.stat(path.join(out, 'zeros.bin'))).blocks).toBeLessThan(64)
    expect((await fsp.stat(path.join(out, 'sparse.bin'))).blocks * 512).toBeLessThanOrEqual(4 * MiB + 300_000)
    // hard links are links, whichever name comes first
    for (const [x, y] of [['d3/f1.txt', 'd3/a-hardlink'], ['d5/f2.txt', 'd5/z-hardlink']]) {
      expect((await fsp.stat(path.join(out, x))).ino).toBe((await fsp.stat(path.join(out, y))).ino)
    }
    // no temporary file is left anywhere
    expect(Object.keys(await describeTree(out)).filter((p) => p.includes('.holyship-restore-'))).toEqual([])
  })

  it('a target that appears while it is restored: TARGET_EXISTS, and only what the restore wrote goes (not what is in the target or beside it, in directories it made)', async () => {
    const parent = path.join(work, 'new-parent', 'deeper')
    const out = path.join(parent, 'out')
    let planted = false
    const e = await restoreToDir(repo, root, '', out, {
      onBytes: () => {
        if (planted) return
        planted = true
        mkdirSync(out)
        writeFileSync(path.join(out, 'theirs.txt'), 'theirs')
        writeFileSync(path.join(parent, 'beside.txt'), 'beside')
      },
    }).catch((x: unknown) => x)
    expect(e).toMatchObject({code: 'TARGET_EXISTS', message: expect.stringMatching(/appeared during the restore/)})
    expect(readdirSync(out)).toEqual(['theirs.txt'])
    expect(readdirSync(parent).sort()).toEqual(['beside.txt', 'out'])
    // an empty directory that appears there is not replaced either (rename() would)
    const emptyOut = path.join(work, 'empty-appears')
    let made = false
    const e2 = await restoreToDir(repo, root, '', emptyOut, {
      onBytes: () => {
        if (!made) mkdirSync(emptyOut, 0o711)
        made = true
      },
    }).catch((x: unknown) => x)
    expect(e2).toMatchObject({code: 'TARGET_EXISTS'})
    expect([readdirSync(emptyOut), (await fsp.stat(emptyOut)).mode & 0o777]).toEqual([[], 0o711])
    expect(readdirSync(work).filter((f) => f.includes('holyship-partial'))).toEqual([])
    // a failure in a directory it made that nobody else wrote into: the directories go too
    const lone = path.join(work, 'lone-parent', 'out')
    const damaged = await restoreToDir(repo, root, '', lone, {
      onBytes: () => {
        throw new Error('disk on fire')
      },
    }).catch((x: unknown) => x)
    expect(damaged).toMatchObject({message: expect.stringMatching(/disk on fire/)})
    expect(existsSync(path.join(work, 'lone-parent'))).toBe(false)
  })

  it('what a killed restore to the same target left beside it is named in a warning, and left alone', async () => {
    const parent = path.join(work, 'stale-parent')
    const stale = path.join(parent, '.out.holyship-partial-0badcafe')
    mkdirSync(stale, {recursive: true})
    writeFileSync(path.join(stale, 'half.txt'), 'half')
    // names that only look alike are not a restore's
    mkdirSync(path.join(parent, '.out.holyship-partial-notmine'))
    mkdirSync(path.join(parent, '.outer.holyship-partial-0badcafe'))
    const r = await restoreToDir(repo, root, '', path.join(parent, 'out'))
    expect(r.warnings).toEqual([`an earlier restore to ${path.join(parent, 'out')} that did not finish left ${stale}: remove it once no restore to ${path.join(parent, 'out')} is running`])
    expect(readFileSync(path.join(stale, 'half.txt'), 'utf8')).toBe('half')
    expect(readdirSync(parent).sort()).toEqual(['.out.holyship-partial-0badcafe', '.out.holyship-partial-notmine', '.outer.holyship-partial-0badcafe', 'out'])
    // a restore that found nothing of the kind warns of nothing
    expect((await restoreToDir(repo, root, '', path.join(parent, 'other'))).warnings).toBeUndefined()
  })

  it('restores over an existing target with overwrite, and refuses without it', async () => {
    const out = path.join(work, 'again')
    await restoreToDir(repo, root, '', out)
    await fsp.writeFile(path.join(out, 'd1', 'f1.txt'), 'changed')
    await expect(restoreToDir(repo, root, '', out)).rejects.toMatchObject({code: 'TARGET_EXISTS'})
    // what is replaced stays whole until its new content is: written beside it, renamed over it
    const rename = vi.spyOn(fsp, 'rename')
    try {
      await restoreToDir(repo, root, 'd1', out, {overwrite: true})
      expect(rename.mock.calls.map(([from, to]) => [path.basename(String(from)).startsWith('.holyship-restore-'), path.relative(out, String(to))])).toContainEqual([true, 'd1/f1.txt'])
    } finally {
      rename.mockRestore()
    }
    expect(await fsp.readFile(path.join(out, 'd1', 'f1.txt'))).toEqual(await fsp.readFile(path.join(src, 'd1', 'f1.txt')))
    // what is in the way of another kind goes too, once the restore succeeded: a directory
    // where the snapshot has a file, a file where it has a directory, a link to elsewhere
    await fsp.rm(path.join(out, 'd2', 'f2.txt'))
    await fsp.mkdir(path.join(out, 'd2', 'f2.txt'))
    await fsp.rm(path.join(out, 'd2', 'sub'), {recursive: true})
    await fsp.writeFile(path.join(out, 'd2', 'sub'), 'a file')
    await fsp.rm(path.join(out, 'd2', 'link'))
    await fsp.symlink('/etc', path.join(out, 'd2', 'link'))
    const r = await restoreToDir(repo, root, 'd2', out, {overwrite: true})
    expect(r.warnings).toBeUndefined()
    const want = Object.entries(await describeTree(src)).filter(([p]) => p.startsWith('d2/'))
    expect(Object.entries(await describeTree(out)).filter(([p]) => p.startsWith('d2/'))).toEqual(want)
    expect(Object.keys(await describeTree(out)).filter((p) => p.includes('.holyship-restore-'))).toEqual([])
  })

  it('the whole tree: the target gets the root metadata given (a mount root), or keeps its own', async () => {
    const kept = path.join(work, 'kept')
    await fsp.mkdir(kept, {mode: 0o711})
    await fsp.chmod(kept, 0o711)
    await fsp.utimes(kept, 1_500_000_000, 1_500_000_000)
    await restoreToDir(repo, root, '', kept)
    // (its time is when the restore wrote into it, as for any directory written to; never 1970)
    const st = await fsp.stat(kept)
    expect(st.mode & 0o7777).toBe(0o711)
    expect(st.mtimeMs).toBeGreaterThan(Date.now() - 60_000)
    // a volume's root as it was: postgres wants its data directory 0700 and its own
    const given = path.join(work, 'given')
    await restoreToDir(repo, root, '/', given, {root: {name: '', type: 'dir', mode: 0o700, uid: 999, gid: 998, mtime: [1_400_000_000, 500_000_000]}})
    const g = await fsp.stat(given, {bigint: true})
    expect([Number(g.mode & 0o7777n), g.uid, g.gid, g.mtimeNs]).toEqual([0o700, 999n, 998n, 1_400_000_000_500_000_000n])
    expect(await describeTree(given)).toEqual(await describeTree(src))
    // a directory below the root (restored into the target under its name) gets its own
    // recorded metadata, and the target is left as it is
    const sub = path.join(work, 'sub')
    await fsp.mkdir(sub, {mode: 0o751})
    await fsp.chmod(sub, 0o751)
    await restoreToDir(repo, root, 'd1', sub, {root: {name: '', type: 'dir', mode: 0o700, uid: 999, gid: 998, mtime: [1_400_000_000, 0]}})
    const want = await fsp.stat(path.join(src, 'd1'))
    const got = await fsp.stat(path.join(sub, 'd1'))
    expect([got.mode, got.uid]).toEqual([want.mode, want.uid])
    // (times are set through Node's seconds as a double: to the microsecond, not the nanosecond)
    expect(got.mtimeMs).toBeCloseTo(want.mtimeMs, 2)
    expect((await fsp.stat(sub)).mode & 0o7777).toBe(0o751)
  })

  it('a damaged blob: the restore fails and removes all it made; --partial leaves out that file and its hard link only', async () => {
    const copy = path.join(work, 'repo-damaged')
    await fsp.cp(path.join(work, 'repo'), copy, {recursive: true})
    const r2 = await Repository.open(new LocalBackend(copy))
    const victim = (await fsp.readFile(path.join(src, 'd5', 'f2.txt'))).toString()
    const id = r2.blobId(Buffer.from(victim))
    const loc = r2.blobLocation(id)!
    const packFile = path.join(copy, dataKey(loc.pack))
    const pack = await fsp.readFile(packFile)
    pack[loc.offset + loc.length - 2] ^= 0xff
    await fsp.writeFile(packFile, pack)

    const out = path.join(work, 'damaged')
    const failed = await restoreToDir(r2, root, '', out).catch((e: Error) => e)
    expect(failed).toMatchObject({code: 'REPO_DAMAGED'})
    await expect(fsp.lstat(out)).rejects.toThrow()
    // nor its temporary name, which no message names
    expect(readdirSync(work).filter((x) => x.startsWith('.damaged'))).toEqual([])
    expect((failed as Error).message).not.toContain('holyship-partial')
    // into a tree that was there: what it made goes, the directories it found get their owner,
    // mode and times back
    const there = path.join(work, 'there')
    await fsp.mkdir(path.join(there, 'd5'), {recursive: true})
    await fsp.writeFile(path.join(there, 'd5', 'mine'), 'mine')
    await fsp.chmod(path.join(there, 'd5'), 0o700)
    await fsp.utimes(path.join(there, 'd5'), 1_300_000_000, 1_300_000_000)
    await expect(restoreToDir(r2, root, 'd5', there)).rejects.toMatchObject({code: 'REPO_DAMAGED'})
    const d5 = await fsp.stat(path.join(there, 'd5'))
    expect([d5.mode & 0o7777, d5.mtimeMs]).toEqual([0o700, 1_300_000_000_000])
    expect(await fsp.readdir(path.join(there, 'd5'))).toEqual(['mine'])

    // over a copy that differs everywhere, with overwrite (--force): what it replaced before
    // the damaged file stopped it comes back, each entry as it was, none left beside it
    const forced = path.join(work, 'forced')
    await restoreToDir(repo, root, '', forced)
    for (let d = 0; d < 5; d++) {
      for (let f = 1; f < 30; f += 3) await fsp.writeFile(path.join(forced, `d${d}`, `f${f}.txt`), `mine ${d}/${f}\n`)
    }
    await fsp.rm(path.join(forced, 'd1', 'sub'), {recursive: true})
    await fsp.writeFile(path.join(forced, 'd1', 'sub'), 'a file where a directory was')
    await fsp.rm(path.join(forced, 'd2', 'f1.txt'))
    await fsp.mkdir(path.join(forced, 'd2', 'f1.txt', 'deep'), {recursive: true})
    await fsp.writeFile(path.join(forced, 'd2', 'f1.txt', 'deep', 'kept'), 'kept')
    await fsp.rm(path.join(forced, 'd3', 'link'))
    await fsp.symlink('elsewhere', path.join(forced, 'd3', 'link'))
    await fsp.writeFile(path.join(forced, 'big-text.txt'), 'not so big')
    for (const d of ['d0', 'd1', 'd2', 'd3', 'd4']) await fsp.utimes(path.join(forced, d), 1_300_000_000, 1_300_000_000)
    const before = await describeTree(forced)
    await expect(restoreToDir(r2, root, '', forced, {overwrite: true})).rejects.toMatchObject({code: 'REPO_DAMAGED'})
    expect(await describeTree(forced)).toEqual(before)

    const skipped: {path: string; reason: string}[] = []
    await restoreToDir(r2, root, '', out, {skipped})
    expect(skipped.map((s) => s.path)).toEqual(['d5/f2.txt', 'd5/z-hardlink'])
    expect(skipped[0].reason).toMatch(/damaged/)
    const got = await describeTree(out)
    const want = await describeTree(src)
    delete want['d5/f2.txt']
    delete want['d5/z-hardlink']
    // the directory's time is set last, so it matches even with an entry left out
    expect(got).toEqual(want)
  })

  it('a target that cannot be made: a file (or below one) is TARGET_EXISTS, a read-only file system IO_FAILED naming it, not ENOENT', async () => {
    const file = path.join(work, 'a-file')
    await fsp.writeFile(file, 'x')
    await expect(restoreToDir(repo, root, '', file)).rejects.toMatchObject({code: 'TARGET_EXISTS', message: /exists and is not a directory/})
    await expect(restoreToDir(repo, root, '', path.join(file, 'x', 'y'))).rejects.toMatchObject({code: 'TARGET_EXISTS', message: /below something that is not a directory/})
    // (the tests run as root, as the Docker engines they start need)
    const ro = path.join(work, 'ro')
    await fsp.mkdir(ro)
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,ro', 'tmpfs', ro])
    try {
      for (const target of [path.join(ro, 'out'), path.join(ro, 'a', 'b', 'c')]) {
        const e = await restoreToDir(repo, root, '', target).catch((x: unknown) => x)
        expect(e).toMatchObject({code: 'EROFS', path: path.join(ro, path.relative(ro, target).split('/')[0])})
        expect(classify(e)).toMatchObject({code: 'IO_FAILED', message: /read-only file system/})
      }
    } finally {
      execFileSync('umount', [ro])
    }
  })

  it('blobs the restore workers read from the pack themselves: a flipped byte and a truncated pack are REPO_DAMAGED, --partial leaves out what they held', async () => {
    const old = process.env.HOLYSHIP_WORKERS
    process.env.HOLYSHIP_WORKERS = '2'
    try {
      for (const damage of ['flip', 'truncate'] as const) {
        const copy = path.join(work, `repo-${damage}`)
        await fsp.cp(path.join(work, 'repo'), copy, {recursive: true})
        // a truncated pack, as the workers see it: they read `short` in its place (the pack
        // may hold the trees too, which are read here, in full)
        const short = path.join(work, `short-${damage}`)
        let shortPack = ''
        class ShortPack extends LocalBackend {
          override async openFile(key: string): Promise<{fd: number; release: () => void}> {
            if (key !== shortPack) return await super.openFile(key)
            const fd = openSync(short, 'r')
            return {fd, release: () => closeSync(fd)}
          }
        }
        const r2 = await Repository.open(new ShortPack(copy))
        expect(r2.restoreWorkers()?.size).toBe(2)
        const node = (await r2.loadTree(root)).nodes.find((n) => n.name === 'big-random.bin')!
        // its biggest chunk
        const id = node.content!.reduce((a, b) => (r2.blobLocation(b)!.raw > r2.blobLocation(a)!.raw ? b : a))
        const loc = r2.blobLocation(id)!
        expect(loc.raw).toBeGreaterThan(64 * 1024)
        const packFile = path.join(copy, dataKey(loc.pack))
        if (damage === 'flip') {
          const pack = await fsp.readFile(packFile)
          pack[loc.offset + (loc.length >> 1)] ^= 0xff
          await fsp.writeFile(packFile, pack)
        } else {
          shortPack = dataKey(loc.pack)
          await fsp.writeFile(short, (await fsp.readFile(packFile)).subarray(0, loc.offset + loc.length - 10))
        }

        const out = path.join(work, `out-${damage}`)
        await expect(restoreToDir(r2, root, '', out)).rejects.toMatchObject({code: 'REPO_DAMAGED', message: damage === 'flip' ? /damaged/ : /short read/})
        await expect(fsp.lstat(out)).rejects.toThrow()

        const skipped: {path: string; reason: string}[] = []
        await restoreToDir(r2, root, '', out, {skipped})
        // a short read also fails what follows in that pack (other files' chunks)
        if (damage === 'flip') expect(skipped.map((x) => x.path)).toEqual(['big-random.bin'])
        else {
          expect(skipped.map((x) => x.path)).toContain('big-random.bin')
          // (a hard link to a file left out is left out too)
          for (const x of skipped) {
            const to = /^hard link to \/(.*), which could not be restored$/.exec(x.reason)?.[1]
            if (to === undefined) expect(x.reason).toMatch(/short read/)
            else expect(skipped.map((y) => y.path)).toContain(to)
          }
        }
        const got = await describeTree(out)
        const want = await describeTree(src)
        for (const x of skipped) delete want[x.path]
        expect(got).toEqual(want)
      }
    } finally {
      if (old === undefined) delete process.env.HOLYSHIP_WORKERS
      else process.env.HOLYSHIP_WORKERS = old
    }
  })
})

describe('LocalBackend read sessions', () => {
  let dir: string
  let b: LocalBackend
  const packs: Buffer[] = []

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'hs-lb-'))
    b = new LocalBackend(dir)
    for (let i = 0; i < 6; i++) {
      packs.push(randomBytes(3 * MiB + i * 1000))
      await b.put(`data/p${i}`, packs[i])
    }
  })

  afterAll(() => rmSync(dir, {recursive: true, force: true}))

  it('serves exact ranges from several files at once, copies that later reads do not change', async () => {
    const fds = openFds()
    const end = retainReads(b)
    try {
      await readMany()
    } finally {
      end()
    }
    end()
    expect(openFds()).toBe(fds)
  })

  async function readMany(): Promise<void> {
    const got: {i: number; off: number; len: number; buf: Buffer}[] = []
    // small ranges in order (window hits), interleaved over more files than there are windows,
    // jumps back, big ranges, the last byte of a file
    for (let step = 0; step < 400; step++) {
      const i = step % 6
      const off = ((step * 7919) % 3000) * 1000
      const len = Math.min(step % 10 === 0 ? 200_000 : 1 + ((step * 31) % 60_000), packs[i].length - off)
      got.push({i, off, len, buf: await b.getRange(`data/p${i}`, off, len)})
    }
    got.push({i: 5, off: packs[5].length - 1, len: 1, buf: await b.getRange('data/p5', packs[5].length - 1, 1)})
    const concurrent = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => b.getRange(`data/p${i}`, 12345, 70_000)))
    for (const [i, buf] of concurrent.entries()) expect(buf.equals(packs[i].subarray(12345, 12345 + 70_000))).toBe(true)
    for (const {i, off, len, buf} of got) expect(buf.equals(packs[i].subarray(off, off + len)), `${len}@${off} of p${i}`).toBe(true)
    // past the end: an error, in a session too; a missing object: BackendNotFound
    await expect(b.getRange('data/p0', packs[0].length - 10, 20)).rejects.toThrow(/short read/)
    await expect(b.getRange('data/nope', 0, 10)).rejects.toBeInstanceOf(BackendNotFound)
  }

  it('reads what a file holds now once the session that read it has ended', async () => {
    let end = retainReads(b)
    expect((await b.getRange('data/p0', 100, 10)).equals(packs[0].subarray(100, 110))).toBe(true)
    end()
    const changed = Buffer.from(packs[0])
    changed.fill(7, 0, 1000)
    await b.put('data/p0', changed)
    end = retainReads(b)
    expect((await b.getRange('data/p0', 100, 10)).equals(Buffer.alloc(10, 7))).toBe(true)
    end()
    expect((await b.getRange('data/p0', 100, 10)).equals(Buffer.alloc(10, 7))).toBe(true)
  })
})

describe('restoreToDir and extended attributes it cannot set', () => {
  let work: string
  let repo: Repository
  let tree: string
  const b64 = (s: string): string => Buffer.from(s).toString('base64')
  const latin1 = nameFromBytes(Buffer.from('caf\xe9', 'latin1'))
  const T: [number, number] = [1_600_000_000, 0]
  async function* bytes(s: string): AsyncGenerator<Buffer> {
    yield Buffer.from(s)
  }

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-rxattr-'))
    repo = await Repository.init(new LocalBackend(path.join(work, 'repo')))
    const a = new Archiver(repo)
    const meta = {mode: 0o644, uid: 0, gid: 0, mtime: T}
    await a.add({path: '', type: 'dir', ...meta, mode: 0o755})
    // a namespace no file system has: setfattr fails with "Operation not supported"
    await a.add({path: 'd', type: 'dir', ...meta, mode: 0o755, xattrs: {'bogus.dir': b64('x')}})
    await a.add({path: 'd/ok.txt', type: 'file', ...meta, xattrs: {'user.note': b64('kept')}, content: bytes('ok\n')})
    await a.add({path: 'd/odd.txt', type: 'file', ...meta, xattrs: {'user.note': b64('kept too'), 'bogus.file': b64('y')}, content: bytes('odd\n')})
    // a name that is not UTF-8 (Latin-1 é): setfattr reads it from a dump, one run an attribute
    await a.add({path: `d/${latin1}`, type: 'file', ...meta, xattrs: {'user.note': b64('kept three'), 'bogus.latin': b64('z')}, content: bytes('é\n')})
    // empty values: an attribute that is there with nothing in it (setfattr -v 0s sets nothing)
    await a.add({path: 'e', type: 'dir', ...meta, mode: 0o755, xattrs: {'user.flag': ''}})
    await a.add({path: 'e/f', type: 'file', ...meta, xattrs: {'user.flag': ''}, content: bytes('f\n')})
    await a.add({path: `e/${latin1}`, type: 'file', ...meta, xattrs: {'user.flag': ''}, content: bytes('l\n')})
    tree = await a.finish()
    await repo.flush()
  })

  afterAll(() => rmSync(work, {recursive: true, force: true}))

  it('restores everything else and lists each attribute it could not set, with why', async () => {
    const target = path.join(work, 'out')
    const r = await restoreToDir(repo, tree, '', target)
    expect(await fsp.readFile(path.join(target, 'd/odd.txt'), 'utf8')).toBe('odd\n')
    const note = (p: string): string => execFileSync('getfattr', ['--only-values', '-n', 'user.note', path.join(target, p)], {encoding: 'utf8'})
    expect(note('d/ok.txt')).toBe('kept')
    expect(note('d/odd.txt')).toBe('kept too')
    // the Latin-1 file's own attribute is set (getfattr prints its name's bytes as they are)
    const dump = execFileSync('getfattr', ['-d', '--absolute-names', '-R', path.join(target, 'd')], {encoding: 'latin1'})
    expect(dump).toContain(`# file: ${path.join(target, 'd')}/caf\xe9\nuser.note="kept three"`)
    expect(r.xattrsNotSet?.total).toBe(3)
    const listed = (r.xattrsNotSet?.first ?? []).map((x) => [path.relative(target, x.path), x.name]).sort()
    expect(listed).toEqual([
      ['d', 'bogus.dir'],
      [`d/${latin1}`, 'bogus.latin'],
      ['d/odd.txt', 'bogus.file'],
    ])
    for (const x of r.xattrsNotSet!.first) expect(x.reason).toMatch(/not supported/i)
    // the empty ones are there, empty
    const flags = execFileSync('getfattr', ['-d', '-e', 'base64', '--absolute-names', '-R', path.join(target, 'e')], {encoding: 'latin1'})
    for (const p of ['e', 'e/f', 'e/caf\xe9']) expect(flags).toContain(`# file: ${path.join(target, p)}\nuser.flag=0s\n`)
  })

  it('says so when setfattr is not installed', async () => {
    const pathVar = process.env.PATH
    process.env.PATH = path.join(work, 'no-bin')
    let r
    try {
      r = await restoreToDir(repo, tree, '', path.join(work, 'out-nobin'))
    } finally {
      process.env.PATH = pathVar
    }
    expect(r.xattrsNotSet?.total).toBe(9)
    for (const x of r.xattrsNotSet!.first) expect(x.reason).toMatch(/setfattr is not installed/)
  })

  it('the commands warn in one line, naming the first few', () => {
    const first = [1, 2, 3, 4].map((i) => ({path: `/t/f${i}`, name: 'security.selinux', reason: 'Operation not supported'}))
    expect(xattrsWarning(undefined)).toBeUndefined()
    expect(xattrsWarning({total: 1, first: first.slice(0, 1)})).toBe('1 extended attribute(s) could not be set, the rest was restored: /t/f1 (security.selinux: Operation not supported)')
    const w = xattrsWarning({total: 5000, first})!
    expect(w).toMatch(/^5000 extended attribute\(s\) could not be set, .*\/t\/f3 \(security\.selinux: Operation not supported\), …$/)
    expect(w).not.toContain('/t/f4')
    expect(w.split('\n')).toHaveLength(1)
  })

  it('a restore with every attribute set reports none', async () => {
    const a = new Archiver(repo)
    await a.add({path: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: T})
    await a.add({path: 'f', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: T, xattrs: {'user.a': b64('1')}, content: bytes('f')})
    const clean = await a.finish()
    await repo.flush()
    const r = await restoreToDir(repo, clean, '', path.join(work, 'out-clean'))
    expect(r.xattrsNotSet).toBeUndefined()
  })
})

describe('restoreToDir and device nodes', () => {
  const CHILD = fileURLToPath(new URL('./helpers/restore-child.ts', import.meta.url))
  let work: string
  let tree: string
  const T: [number, number] = [1_600_000_000, 0]

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-rdev-'))
    // an unprivileged user must read the repository and write the targets
    chmodSync(work, 0o755)
    const repo = await Repository.init(new LocalBackend(path.join(work, 'repo')))
    const a = new Archiver(repo)
    const meta = {mode: 0o666, uid: 0, gid: 0, mtime: T}
    await a.add({path: '', type: 'dir', ...meta, mode: 0o755})
    await a.add({path: 'dev', type: 'dir', ...meta, mode: 0o755})
    await a.add({path: 'dev/null', type: 'chardev', ...meta, devMajor: 1, devMinor: 3})
    await a.add({path: 'dev/loop9', type: 'blockdev', ...meta, mode: 0o660, devMajor: 7, devMinor: 9})
    await a.add({path: 'dev/readme', type: 'file', ...meta, mode: 0o644, size: 3, content: (async function* () {
      yield Buffer.from('hi\n')
    })()})
    // a directory nobody may write into once it is finished, and a read-only file: their
    // attributes are set before their mode (user.* wants write access, even of the owner)
    await a.add({path: 'ro', type: 'dir', ...meta, mode: 0o555, xattrs: {'user.d': Buffer.from('dir').toString('base64')}})
    await a.add({path: 'ro-file', type: 'file', ...meta, mode: 0o444, size: 1, xattrs: {'user.k': Buffer.from('file').toString('base64')}, content: (async function* () {
      yield Buffer.from('r')
    })()})
    await a.add({path: 'ro/inner', type: 'file', ...meta, mode: 0o644, size: 1, content: (async function* () {
      yield Buffer.from('i')
    })()})
    tree = await a.finish()
    await repo.flush()
    execFileSync('chmod', ['-R', 'a+rX', path.join(work, 'repo')])
  })

  afterAll(() => rmSync(work, {recursive: true, force: true}))

  /** restoreToDir in a child process with these setpriv options */
  const restoreAs = (setpriv: string[], target: string, overwrite = false, appear = false): {warnings?: string[]; files: number; xattrsNotSet?: unknown} => {
    const out = execFileSync('setpriv', [...setpriv, process.execPath, '--import', 'tsx', CHILD, JSON.stringify({repo: path.join(work, 'repo'), tree, target, overwrite, appear})], {
      cwd: path.resolve(path.dirname(CHILD), '../../..'),
      encoding: 'utf8',
      env: {...process.env, HOME: '/tmp'},
    })
    if (out.startsWith('ERROR')) throw new Error(out)
    return JSON.parse(out)
  }

  it('as root: made as they were', async () => {
    const out = path.join(work, 'as-root')
    const r = await restoreToDir(await Repository.open(new LocalBackend(path.join(work, 'repo'))), tree, '', out)
    expect(r.warnings).toBeUndefined()
    const st = await fsp.lstat(path.join(out, 'dev/null'))
    expect([st.isCharacterDevice(), st.rdev]).toEqual([true, (1 << 8) | 3])
    expect((await fsp.lstat(path.join(out, 'dev/loop9'))).isBlockDevice()).toBe(true)
  })

  it('without the right to make them: left out and named in a warning (under the target\'s own name), the rest restored', () => {
    const targets = path.join(work, 'nobody')
    mkdirSync(targets, {mode: 0o777})
    chmodSync(targets, 0o777)
    const out = path.join(targets, 'out')
    const r = restoreAs(['--reuid=nobody', '--regid=nogroup', '--clear-groups'], out)
    expect(r.warnings).toEqual([expect.stringMatching(/^2 device nodes not made \(mknod needs root with CAP_MKNOD\): /)])
    expect(r.warnings![0]).toContain(`${out}/dev/null`)
    expect(r.warnings![0]).toContain(`${out}/dev/loop9`)
    expect(readdirSync(path.join(out, 'dev')).sort()).toEqual(['readme'])
    expect(readFileSync(path.join(out, 'dev/readme'), 'utf8')).toBe('hi\n')
    expect(r.xattrsNotSet).toBeUndefined()
    const attr = (p: string, name: string): string => execFileSync('getfattr', ['--only-values', '-n', name, path.join(out, p)], {encoding: 'utf8'})
    expect([attr('ro', 'user.d'), attr('ro-file', 'user.k')]).toEqual(['dir', 'file'])
    expect([statSync(path.join(out, 'ro')).mode & 0o777, statSync(path.join(out, 'ro-file')).mode & 0o777]).toEqual([0o555, 0o444])
    // a target that appears meanwhile: the partial tree goes, its 0555 directory too
    const raced = path.join(targets, 'raced')
    expect(() => restoreAs(['--reuid=nobody', '--regid=nogroup', '--clear-groups'], raced, false, true)).toThrow(/ERROR TARGET_EXISTS .*appeared during the restore/)
    expect(readdirSync(raced)).toEqual(['theirs'])
    expect(readdirSync(targets).sort()).toEqual(['out', 'raced'])
  })

  it('root without CAP_MKNOD (a container\'s root): the same, and with --force an entry at a node\'s path stays as it was', async () => {
    const out = path.join(work, 'no-cap')
    await fsp.mkdir(path.join(out, 'dev'), {recursive: true})
    await fsp.writeFile(path.join(out, 'dev/null'), 'mine')
    const r = restoreAs(['--inh-caps=-mknod', '--bounding-set=-mknod'], out, true)
    expect(r.warnings).toEqual([expect.stringMatching(/^2 device nodes not made .*no-cap\/dev\/null/)])
    expect(readFileSync(path.join(out, 'dev/null'), 'utf8')).toBe('mine')
    expect(readdirSync(path.join(out, 'dev')).sort()).toEqual(['null', 'readme'])
  })
})

describe('restoreToDir failing while it finishes directories', () => {
  it('a directory it found and had already given the snapshot\'s mode and owner gets its own back', async () => {
    const work = mkdtempSync(path.join(os.tmpdir(), 'hs-rfin-'))
    const x = path.join(work, 'target', 'x')
    const a = path.join(x, 'a')
    try {
      const repo = await Repository.init(new LocalBackend(path.join(work, 'repo')))
      const ar = new Archiver(repo)
      const T: [number, number] = [1_600_000_000, 0]
      await ar.add({path: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: T})
      await ar.add({path: 'x', type: 'dir', mode: 0o700, uid: 0, gid: 0, mtime: T})
      await ar.add({path: 'x/a', type: 'dir', mode: 0o700, uid: 123, gid: 456, mtime: T})
      await ar.add({path: 'x/a/f', type: 'file', mode: 0o644, uid: 0, gid: 0, mtime: T, size: 2, content: (async function* () {
        yield Buffer.from('f\n')
      })()})
      const tree = await ar.finish()
      await repo.flush()
      // x: a read-only file system (its mode cannot be set: the finish fails there), with a
      // writable one at x/a, which is finished first (deepest first)
      mkdirSync(x, {recursive: true})
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,mode=755', 'tmpfs', x])
      mkdirSync(a)
      execFileSync('mount', ['-o', 'remount,ro', x])
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,mode=751', 'tmpfs', a])
      await fsp.utimes(a, 1_300_000_000, 1_300_000_000)
      const before = await fsp.stat(a)
      const e = await restoreToDir(repo, tree, '', path.join(work, 'target')).catch((err: unknown) => err)
      expect(e).toMatchObject({code: 'EROFS'})
      const after = await fsp.stat(a)
      expect([after.mode & 0o7777, after.uid, after.gid, after.mtimeMs]).toEqual([before.mode & 0o7777, before.uid, before.gid, before.mtimeMs])
      expect(readdirSync(a)).toEqual([])
    } finally {
      for (const m of [a, x]) spawnSync('umount', [m])
      rmSync(work, {recursive: true, force: true})
    }
  })
})
