/**
 * The tar reader against archives it did not write: GNU tar's in each of its formats (gnu,
 * oldgnu, pax with xattrs, ustar with its prefix field, v7) of a tree built here, with long
 * names and link targets, a name that is not UTF-8, a hard link, a fifo, a big uid, binary
 * xattr values, nanosecond mtimes and times before the epoch; fed in pieces of every size,
 * bodies read in part or not at all, the stream closed however reading stops. And tar-stream,
 * read as a second opinion on what both can read.
 */
import {spawnSync} from 'node:child_process'
import {mkdtempSync, mkdirSync, rmSync, symlinkSync, linkSync, writeFileSync, lstatSync, utimesSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {Readable} from 'node:stream'
import * as tarStream from 'tar-stream'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'
import {TarFormatError, TarRecord, parsePax, readTar} from '../../src/archive/tar-reader.js'

let work: string
let tree: string
const latin = (s: string): Buffer => Buffer.from(s, 'latin1')
const longDir = 'd'.repeat(60) + '/' + 'e'.repeat(60) + '/' + 'f'.repeat(60)
const longFile = `${longDir}/${'g'.repeat(120)}.txt`
const longTarget = 't'.repeat(150)
// cap_setuid+ep: a byte 0x80, which a UTF-8 decoder would turn into three others
const cap = Buffer.from('0100000280000000000000000000000000000000', 'hex')
const binary = Buffer.from([0xff, 0x00, 0xfe, 0x80, 0x0a, 0x3d])

function run(cmd: string, args: string[], cwd?: string): Buffer {
  const r = spawnSync(cmd, args, {cwd, maxBuffer: 64 * 1024 * 1024})
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`)
  return r.stdout
}

beforeAll(() => {
  work = mkdtempSync(path.join(os.tmpdir(), 'hs-tar-reader-'))
  tree = path.join(work, 'tree')
  mkdirSync(path.join(tree, longDir), {recursive: true})
  writeFileSync(path.join(tree, 'small.txt'), 'hello\n')
  writeFileSync(path.join(tree, longFile), Buffer.alloc(70_000, 7))
  writeFileSync(Buffer.from(`${tree}/caf\xe9.txt`, 'latin1'), 'latin\n')
  symlinkSync(longTarget, path.join(tree, 'long-link'))
  linkSync(path.join(tree, 'small.txt'), path.join(tree, 'hard'))
  run('mkfifo', [path.join(tree, 'fifo')])
  run('chown', ['3000000:70', path.join(tree, 'small.txt')])
  run('setfattr', ['-n', 'user.bin', '-v', `0x${binary.toString('hex')}`, path.join(tree, 'small.txt')])
  run('setfattr', ['-n', 'security.capability', '-v', `0x${cap.toString('hex')}`, path.join(tree, 'small.txt')])
  utimesSync(path.join(tree, 'small.txt'), 1_700_000_000.25, 1_700_000_000.25)
})
afterAll(() => rmSync(work, {recursive: true, force: true}))

/** GNU tar's archive of the tree, in `format`, sorted by name */
function gnuTar(format: string, extra: string[] = []): Buffer {
  return run('tar', ['-c', '-f', '-', `--format=${format}`, '--sort=name', '--numeric-owner', ...extra, '.'], tree)
}

/** the stream in pieces of `size` bytes */
const pieces = (b: Buffer, size: number): Readable => {
  const out: Buffer[] = []
  for (let i = 0; i < b.length; i += size) out.push(b.subarray(i, i + size))
  return Readable.from(out)
}

async function entries(source: Readable, read: 'all' | 'part' | 'none' = 'all'): Promise<Map<string, TarRecord & {body: Buffer}>> {
  const out = new Map<string, TarRecord & {body: Buffer}>()
  for await (const {header, body} of readTar(source)) {
    const got: Buffer[] = []
    if (read !== 'none') {
      for await (const b of body) {
        got.push(Buffer.from(b))
        if (read === 'part') break
      }
    }
    out.set(header.name.toString('latin1').replace(/^\.\//, '').replace(/\/$/, ''), {...header, body: Buffer.concat(got)})
  }
  return out
}

describe('readTar on GNU tar archives', () => {
  it.each([
    ['gnu', []],
    ['pax', ['--xattrs', '--xattrs-include=*']],
    ['oldgnu', []],
  ])('%s format: names, links, owners, times, xattrs, bodies as the file system has them', async (format, extra) => {
    const e = await entries(Readable.from([gnuTar(format, extra as string[])]))
    expect([...e.keys()].sort()).toEqual(['', 'caf\xe9.txt', 'd' + 'd'.repeat(59), longDir.split('/').slice(0, 2).join('/'), longDir, longFile, 'fifo', 'hard', 'long-link', 'small.txt'].sort())
    // one of the two names of the file is a hard link with no body (which one: tar's order)
    const [small, hard] = [e.get('small.txt')!, e.get('hard')!].sort((a, b) => a.typeflag.localeCompare(b.typeflag))
    expect([small.typeflag, hard.typeflag]).toEqual(['0', '1'])
    expect(small.body.toString()).toBe('hello\n')
    expect(hard.body.length).toBe(0)
    expect(hard.linkname.toString()).toMatch(/^(\.\/)?(hard|small\.txt)$/)
    expect([small.uid, small.gid]).toEqual([3_000_000, 70])
    expect(small.mode).toBe(lstatSync(path.join(tree, 'small.txt')).mode & 0o7777)
    expect(e.get(longFile)!.body).toEqual(Buffer.alloc(70_000, 7))
    expect(e.get('long-link')!.typeflag).toBe('2')
    expect(e.get('long-link')!.linkname.toString()).toBe(longTarget)
    expect(e.get('fifo')!.typeflag).toBe('6')
    expect(e.get(longDir)!.typeflag).toBe('5')
    expect(e.get('caf\xe9.txt')!.name.subarray(-8)).toEqual(latin('caf\xe9.txt'))
    if (format === 'pax') {
      // pax: the time to the nanosecond GNU tar keeps, the xattrs as their bytes
      expect(small.mtime).toEqual([1_700_000_000, 250_000_000])
      expect(small.pax.get('SCHILY.xattr.user.bin')).toEqual(binary)
      expect(small.pax.get('SCHILY.xattr.security.capability')).toEqual(cap)
    } else expect(small.mtime).toEqual([1_700_000_000, 0])
  })

  it('v7 (no magic, no fifos, no owners past 2^21): the same names and bodies', async () => {
    const top = longDir.split('/')[0]
    const e = await entries(Readable.from([run('tar', ['-c', '-f', '-', '--format=v7', '--owner=0', '--group=0', '--no-recursion', 'small.txt', top], tree)]))
    expect([...e.keys()]).toEqual(['small.txt', top])
    expect(e.get('small.txt')!.body.toString()).toBe('hello\n')
    expect([e.get('small.txt')!.typeflag, e.get(top)!.typeflag, e.get(top)!.name.toString()]).toEqual(['\0', '5', `${top}/`])
  })

  it('numbers as old tars wrote them: space-padded octal, with a signed checksum', async () => {
    const b = Buffer.from(run('tar', ['-c', '-f', '-', '--format=ustar', '--owner=0', '--group=0', 'fifo'], tree))
    b.write('   644 \0', 100, 'latin1')
    // a byte over 127 in the name makes the signed sum differ from the unsigned one
    b[4] = 0xe9
    let signed = 0
    for (let i = 0; i < 512; i++) signed += i >= 148 && i < 156 ? 32 : b[i] > 127 ? b[i] - 256 : b[i]
    b.write(`${signed.toString(8).padStart(6, '0')}\0 `, 148, 'latin1')
    const [e] = [...(await entries(Readable.from([b]))).values()]
    expect(e.mode).toBe(0o644)
    expect(e.name.subarray(-1)).toEqual(Buffer.of(0xe9))
  })

  it('ustar: a name of 101 to 256 bytes split into prefix and name, as Go writes every such ASCII name', async () => {
    const mid = `${longDir}/mid.txt`
    writeFileSync(path.join(tree, mid), 'mid\n')
    try {
      const bytes = run('tar', ['-c', '-f', '-', '--format=ustar', '--owner=0', '--group=0', mid], tree)
      // the prefix field really holds directories (as many as fit its 155 bytes)
      const prefix = longDir.split('/').slice(0, 2).join('/')
      expect(bytes.toString('latin1', 345, 345 + prefix.length + 1)).toBe(`${prefix}\0`)
      const e = await entries(Readable.from([bytes]))
      expect([...e.keys()]).toEqual([mid])
      expect(e.get(mid)!.body.toString()).toBe('mid\n')
      const extract = tarStream.extract()
      Readable.from([bytes]).pipe(extract)
      for await (const x of extract) {
        x.resume()
        expect(x.header.name).toBe(mid)
      }
    } finally {
      rmSync(path.join(tree, mid))
    }
  })

  it('a time before the epoch, as GNU tar writes it (base-256, negative)', async () => {
    const f = path.join(work, 'old')
    writeFileSync(f, 'x')
    for (const [t, want] of [
      [-1, -1],
      [-1_892_160_000, -1_892_160_000],
    ]) {
      // (Node's utimes takes a negative time for now)
      run('touch', ['-h', '-d', `@${t}`, f])
      const e = await entries(Readable.from([run('tar', ['-c', '-f', '-', '--format=gnu', 'old'], work)]))
      expect(e.get('old')!.mtime).toEqual([want, 0])
    }
  })

  it('the stream is closed however the reading stops: early, on an error, or at the end-of-archive block', async () => {
    const bytes = gnuTar('gnu')
    const early = Readable.from([bytes])
    for await (const x of readTar(early)) {
      expect(x.header.name.length).toBeGreaterThan(0)
      break
    }
    expect(early.destroyed).toBe(true)
    const broken = Readable.from([bytes.subarray(0, 700)])
    await expect(entries(broken)).rejects.toThrow(TarFormatError)
    expect(broken.destroyed).toBe(true)
    // two end blocks and more after them: the first ends the archive
    const trailing = Readable.from([bytes, Buffer.alloc(8192)])
    await entries(trailing)
    expect(trailing.destroyed).toBe(true)
  })

  it('the same entries whatever the pieces the stream comes in, however much of each body is read', async () => {
    const bytes = gnuTar('pax', ['--xattrs', '--xattrs-include=*'])
    const whole = await entries(Readable.from([bytes]))
    for (const size of [1, 7, 511, 512, 513, 4096, 65_537]) {
      const e = await entries(pieces(bytes, size))
      expect([...e.keys()]).toEqual([...whole.keys()])
      expect(e.get(longFile)!.body).toEqual(whole.get(longFile)!.body)
      expect(e.get('small.txt')!.pax).toEqual(whole.get('small.txt')!.pax)
    }
    for (const read of ['part', 'none'] as const) expect([...(await entries(pieces(bytes, 1000), read)).keys()]).toEqual([...whole.keys()])
  })

  it('agrees with tar-stream on every ASCII entry', async () => {
    const bytes = gnuTar('gnu')
    const ours = await entries(Readable.from([bytes]))
    const extract = tarStream.extract()
    Readable.from([bytes]).pipe(extract)
    let n = 0
    for await (const x of extract) {
      const h = x.header
      x.resume()
      const key = h.name.replace(/^\.\//, '').replace(/\/$/, '')
      if (!/^[\x20-\x7e]*$/.test(h.name)) continue
      const o = ours.get(key)!
      expect([o.mode, o.uid, o.gid, o.size, o.mtime[0], o.linkname.toString()]).toEqual([h.mode, h.uid, h.gid, h.size, h.mtime!.getTime() / 1000, h.linkname ?? ''])
      n++
    }
    expect(n).toBe(ours.size - 1)
  })
})

describe('readTar on broken streams', () => {
  const bytes = (): Buffer => gnuTar('gnu')
  const fails = async (b: Buffer, message: RegExp): Promise<void> => {
    await expect(entries(Readable.from([b]))).rejects.toThrow(message)
    await expect(entries(Readable.from([b]))).rejects.toBeInstanceOf(TarFormatError)
  }

  it('cut anywhere before the end-of-archive block: an error, never a shorter archive', async () => {
    const b = bytes()
    let end = b.length
    while (end > 0 && b[end - 1] === 0) end--
    for (const at of [0, 100, 512, 1024, 1536, end - 1, Math.ceil(end / 512) * 512]) {
      if (at === 0) {
        await fails(b.subarray(0, 0), /without its end-of-archive block/)
        continue
      }
      await fails(b.subarray(0, at), /ends (inside|without)/)
    }
  })

  it('a damaged header: the checksum says so', async () => {
    const b = Buffer.from(bytes())
    b[10] ^= 1
    await fails(b, /bad checksum at byte 0/)
  })

  it('malformed pax records', () => {
    expect(() => parsePax(Buffer.from('99 path=x\n'))).toThrow(TarFormatError)
    expect(() => parsePax(Buffer.from('8 pathx\n'))).toThrow(/no "="/)
    expect(() => parsePax(Buffer.from('x path=y\n'))).toThrow(TarFormatError)
    expect(parsePax(Buffer.from('12 path=a b\n'))).toEqual(new Map([['path', Buffer.from('a b')]]))
  })
})
