/**
 * File names that are not UTF-8 (a legacy application's Latin-1 names): kept byte for byte
 * from the file system through a snapshot to a restore into a directory and into a tar
 * stream, on real files. Before names.ts the direct reader dropped such files silently.
 */
import {execFileSync} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {closeSync, lstatSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync, promises as fsp, linkSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {PassThrough} from 'node:stream'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {Archiver} from '../../src/archive/archiver.js'
import {archiveDir} from '../../src/archive/fs-source.js'
import {bytesOfName, fsPath, hasEscapes, isCanonicalName, nameFromBytes} from '../../src/archive/names.js'
import {restoreToDir, writeTreeAsTar} from '../../src/archive/restorer.js'
import {TarWriter} from '../../src/archive/tarwriter.js'
import {LocalBackend} from '../../src/backend/local.js'
import {Repository} from '../../src/repo/repository.js'

const b = (s: string): Buffer => Buffer.from(s, 'latin1')
const join = (...parts: Buffer[]): Buffer => Buffer.concat(parts.flatMap((p, i) => (i === 0 ? [p] : [Buffer.from('/'), p])))

describe('names that are not UTF-8', () => {
  it('a name maps to a string and back byte for byte; UTF-8 names are their plain strings', () => {
    // (emoji whose second half is in the escapes' range, U+DC80..U+DCFF, are no escapes)
    for (const s of ['plain', 'ünïcødé ✓', '😀 astral', '💩 📁 💻', '\ufffd real replacement char']) {
      expect(nameFromBytes(Buffer.from(s))).toBe(s)
      expect(hasEscapes(s)).toBe(false)
      expect(fsPath(s)).toBe(s)
    }
    // Latin-1, a stray continuation byte, an overlong '/', an encoded surrogate, past U+10FFFF, cut short
    const odd = ['caf\xe9.txt', '\x80x', '\xc0\xaf', '\xed\xa0\x80', '\xf4\x90\x80\x80', 'ab\xe2\x82', '\xff\xfe']
    for (const s of odd) {
      const name = nameFromBytes(b(s))
      expect(hasEscapes(name)).toBe(true)
      expect(name).not.toContain('/')
      expect(bytesOfName(name).equals(b(s))).toBe(true)
      expect(JSON.parse(JSON.stringify(name))).toBe(name)
    }
    // the names a snapshot writes are canonical; others (escapes that spell UTF-8, a lone high
    // surrogate) would name the same bytes as another string, and a tree holding one is refused
    for (const s of ['plain', '💩', 'caf\udce9', nameFromBytes(b('\xc0\xaf'))]) expect(isCanonicalName(s)).toBe(true)
    for (const s of ['\udcc3\udca9', 'a\ud800', '\udfff']) expect(isCanonicalName(s)).toBe(false)
    // valid sequences next to invalid bytes stay characters
    expect(nameFromBytes(Buffer.concat([Buffer.from('é'), b('\xe9'), Buffer.from('✓')]))).toBe('é\udce9✓')
    for (let i = 0; i < 2000; i++) {
      const raw = randomBytes(1 + (i % 40))
      expect(bytesOfName(nameFromBytes(raw)).equals(raw)).toBe(true)
    }
  })

  describe('on real files', () => {
    let work: string
    let src: Buffer
    let repo: Repository
    let root: string
    const latin = b('caf\xe9.txt')
    const dir = b('r\xe9pertoire')
    const many: Buffer[] = []

    /** every entry below `d` (bytes of its relative path) with what identifies it */
    const listing = (d: Buffer, rel: Buffer[] = [], out = new Map<string, string>()): Map<string, string> => {
      for (const n of readdirSync(d, {encoding: 'buffer'}).sort(Buffer.compare)) {
        const p = join(d, n)
        const st = lstatSync(p)
        const key = join(...rel, n).toString('hex')
        const what = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? `link:${readlinkSync(p, {encoding: 'buffer'}).toString('hex')}` : st.isFIFO() ? 'fifo' : `file:${readFileSync(p).toString('hex')}`
        out.set(key, `${what}:${(st.mode & 0o7777).toString(8)}:${Math.round(st.mtimeMs)}`)
        if (st.isDirectory()) listing(p, [...rel, n], out)
      }
      return out
    }

    beforeAll(async () => {
      work = mkdtempSync(path.join(os.tmpdir(), 'hs-names-'))
      src = Buffer.from(path.join(work, 'src'))
      mkdirSync(src)
      writeFileSync(join(src, latin), 'latin-1 name\n')
      mkdirSync(join(src, dir))
      writeFileSync(join(src, dir, b('\xff\xfe.bin')), randomBytes(100_000))
      // enough small files that the restore workers write most of them
      for (let i = 0; i < 30; i++) {
        const n = b(`f${i}-\xe9\xe8`)
        many.push(n)
        writeFileSync(join(src, dir, n), `small ${i}\n`)
      }
      symlinkSync(b('caf\xe9.txt'), join(src, b('lien-\xe0')))
      linkSync(join(src, latin), join(src, b('z-hard-\xe9')))
      execFileSync('mkfifo', [path.join(work, 'src', 'fifo')])
      await fsp.rename(path.join(work, 'src', 'fifo'), join(src, b('tube-\xe9')))
      // an attribute on a name that is not UTF-8 (getfattr prints the name as bytes)
      const fd = openSync(join(src, b('attr-\xe9')), 'w')
      closeSync(fd)
      execFileSync('sh', ['-c', `setfattr -n user.note -v kept "$(printf '${path.join(work, 'src')}/attr-\\351')"`])
      await fsp.mkdir(path.join(work, 'repo'))
      repo = await Repository.init(new LocalBackend(path.join(work, 'repo')))
      const a = new Archiver(repo)
      await archiveDir(src.toString(), a)
      root = await a.finish()
      await repo.flush()
      expect(a.stats.files).toBe(33)
    })

    afterAll(() => rmSync(work, {recursive: true, force: true}))

    it('a snapshot keeps every entry under its own bytes, and a restore puts them back', async () => {
      const out = path.join(work, 'out')
      await restoreToDir(repo, root, '', out)
      expect(listing(Buffer.from(out))).toEqual(listing(src))
      expect(lstatSync(join(Buffer.from(out), latin)).ino).toBe(lstatSync(join(Buffer.from(out), b('z-hard-\xe9'))).ino)
      const attr = execFileSync('sh', ['-c', `getfattr --only-values -n user.note "$(printf '${out}/attr-\\351')"`]).toString()
      expect(attr).toBe('kept')
      // over what is there (--force): each file written beside and renamed over
      writeFileSync(join(Buffer.from(out), latin), 'changed')
      await restoreToDir(repo, root, '', out, {overwrite: true})
      expect(listing(Buffer.from(out))).toEqual(listing(src))
      expect(readdirSync(out).filter((n) => n.startsWith('.holyship-restore-'))).toEqual([])
    })

    it('a tar stream (for the engine) names them with their bytes', async () => {
      const pass = new PassThrough()
      const parts: Buffer[] = []
      pass.on('data', (d: Buffer) => parts.push(d))
      await writeTreeAsTar(repo, root, new TarWriter(pass))
      pass.end()
      const all = Buffer.concat(parts)
      // names that are not ASCII go in pax records, as bytes
      const record = (key: string, v: Buffer): Buffer => Buffer.concat([Buffer.from(` ${key}=`), v, Buffer.from('\n')])
      for (const n of [latin, join(dir, many[0]), b('tube-\xe9')]) expect(all.includes(record('path', n))).toBe(true)
      expect(all.includes(record('linkpath', latin))).toBe(true)
      // and nothing went out as U+FFFD
      expect(all.includes(Buffer.from('\ufffd'))).toBe(false)
    })
  })
})
