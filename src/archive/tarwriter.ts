/**
 * A small, byte-exact tar writer (POSIX pax). We write our own rather than use tar-stream's
 * packer so that binary xattr values, nanosecond mtimes, long and non-ASCII names survive:
 * every entry that needs it gets a pax header of raw bytes.
 */
import {Writable} from 'node:stream'
import {HolyshipError} from '../errors.js'
import {bytesOfName} from './names.js'

export interface TarHeader {
  name: Buffer | string
  type: 'file' | 'dir' | 'symlink' | 'hardlink' | 'chardev' | 'blockdev' | 'fifo'
  mode: number
  uid: number
  gid: number
  mtime: [number, number]
  size?: number
  linkname?: Buffer | string
  devMajor?: number
  devMinor?: number
  /** xattr name -> raw value */
  xattrs?: Record<string, Buffer>
}

/** the typeflag of each type of entry (tar-source reads them back with it) */
export const TYPEFLAG: Record<TarHeader['type'], string> = {
  file: '0',
  hardlink: '1',
  symlink: '2',
  chardev: '3',
  blockdev: '4',
  dir: '5',
  fifo: '6',
}

function octal(buf: Buffer, off: number, len: number, value: number): void {
  const s = Math.max(0, Math.floor(value)).toString(8)
  if (s.length > len - 1) {
    // too large for the field: the pax header carries it, write zeros here
    buf.write('0'.repeat(len - 1), off, 'ascii')
    return
  }
  buf.write(s.padStart(len - 1, '0'), off, 'ascii')
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), value, Buffer.from('\n')])
  let len = body.length + 1
  while (String(len).length + body.length !== len) len = String(len).length + body.length
  return Buffer.concat([Buffer.from(String(len), 'ascii'), body])
}

function isAscii(b: Buffer): boolean {
  for (const c of b) if (c >= 0x80 || c === 0) return false
  return true
}

function rawHeader(name: Buffer, typeflag: string, h: Omit<TarHeader, 'name' | 'type'>, size: number, linkname: Buffer): Buffer {
  const buf = Buffer.alloc(512)
  name.copy(buf, 0, 0, Math.min(100, name.length))
  octal(buf, 100, 8, h.mode & 0o7777)
  octal(buf, 108, 8, h.uid)
  octal(buf, 116, 8, h.gid)
  octal(buf, 124, 12, size)
  octal(buf, 136, 12, h.mtime[0])
  buf.write('        ', 148, 'ascii')
  buf.write(typeflag, 156, 'ascii')
  linkname.copy(buf, 157, 0, Math.min(100, linkname.length))
  buf.write('ustar\u000000', 257, 'binary')
  octal(buf, 329, 8, h.devMajor ?? 0)
  octal(buf, 337, 8, h.devMinor ?? 0)
  let sum = 0
  for (let i = 0; i < 512; i++) sum += buf[i]
  buf.write(sum.toString(8).padStart(6, '0') + '\u0000 ', 148, 'binary')
  return buf
}

/** Encode the header block(s) of one entry: a pax header when needed, then the ustar header. */
export function encodeHeader(h: TarHeader): Buffer {
  // names as the file system had them: bytes that are not UTF-8 go back as they were (names.ts)
  const name = Buffer.isBuffer(h.name) ? h.name : bytesOfName(h.name)
  const link = h.linkname === undefined ? Buffer.alloc(0) : Buffer.isBuffer(h.linkname) ? h.linkname : bytesOfName(h.linkname)
  const size = h.type === 'file' ? (h.size ?? 0) : 0
  const records: Buffer[] = []
  if (name.length > 99 || !isAscii(name)) records.push(paxRecord('path', name))
  if (link.length > 99 || !isAscii(link)) records.push(paxRecord('linkpath', link))
  if (h.mtime[1] !== 0 || h.mtime[0] < 0 || h.mtime[0] > 0o77777777777) {
    records.push(paxRecord('mtime', Buffer.from(`${h.mtime[0]}.${String(h.mtime[1]).padStart(9, '0')}`)))
  }
  if (size > 0o77777777777) records.push(paxRecord('size', Buffer.from(String(size))))
  if (h.uid > 0o7777777) records.push(paxRecord('uid', Buffer.from(String(h.uid))))
  if (h.gid > 0o7777777) records.push(paxRecord('gid', Buffer.from(String(h.gid))))
  for (const [k, v] of Object.entries(h.xattrs ?? {})) records.push(paxRecord(`SCHILY.xattr.${k}`, v))
  const typeflag = TYPEFLAG[h.type]
  const shortName = name.length > 99 || !isAscii(name) ? Buffer.from('././@PaxPath', 'ascii') : name
  const shortLink = link.length > 99 || !isAscii(link) ? Buffer.from('././@PaxLink', 'ascii') : link
  const main = rawHeader(shortName, typeflag, h, size, shortLink)
  if (records.length === 0) return main
  const pax = Buffer.concat(records)
  const paxHead = rawHeader(Buffer.from('././@PaxHeader', 'ascii'), 'x', {...h, mode: 0o644}, pax.length, Buffer.alloc(0))
  return Buffer.concat([paxHead, pax, padding(pax.length), main])
}

export function padding(size: number): Buffer {
  const r = size % 512
  return r === 0 ? Buffer.alloc(0) : Buffer.alloc(512 - r)
}

export const END_OF_ARCHIVE = Buffer.alloc(1024)

/**
 * The last line of defence for what we send to an engine: no absolute name, no `..`
 * component, no NUL, and hard links only to relative names inside the archive (symlink
 * targets may point anywhere: the engine resolves them inside the container).
 */
export function assertSafeEntry(h: TarHeader): void {
  const check = (what: string, v: Buffer | string | undefined, relative: boolean): void => {
    if (v === undefined) return
    const s = Buffer.isBuffer(v) ? v.toString('utf8') : v
    const bad = s.includes('\0') || (relative && (s.startsWith('/') || s.split('/').includes('..')))
    if (bad) throw new HolyshipError('REPO_DAMAGED', `refusing to write a tar entry with the unsafe ${what} ${JSON.stringify(s)}`)
  }
  check('name', h.name, true)
  check(h.type === 'hardlink' ? 'hard link target' : 'link target', h.linkname, h.type === 'hardlink')
}

/** Write a tar to a Writable with backpressure. */
export class TarWriter {
  private written = 0

  constructor(private readonly out: Writable) {}

  get bytes(): number {
    return this.written
  }

  async write(buf: Buffer): Promise<void> {
    if (buf.length === 0) return
    this.written += buf.length
    if (!this.out.write(buf)) {
      await new Promise<void>((resolve, reject) => {
        const onDrain = (): void => {
          this.out.off('error', onError)
          resolve()
        }
        const onError = (e: Error): void => {
          this.out.off('drain', onDrain)
          reject(e)
        }
        this.out.once('drain', onDrain)
        this.out.once('error', onError)
      })
    }
  }

  async entry(h: TarHeader, content?: AsyncIterable<Buffer> | Iterable<Buffer>): Promise<void> {
    assertSafeEntry(h)
    await this.write(encodeHeader(h))
    if (h.type !== 'file') return
    let n = 0
    if (content) {
      for await (const chunk of content) {
        n += chunk.length
        await this.write(chunk)
      }
    }
    if (n !== (h.size ?? 0)) throw new Error(`tar entry ${h.name.toString()}: wrote ${n} bytes, header says ${h.size}`)
    await this.write(padding(n))
  }

  async finish(): Promise<void> {
    await this.write(END_OF_ARCHIVE)
    await new Promise<void>((resolve, reject) => {
      this.out.once('error', reject)
      this.out.end(() => resolve())
    })
  }
}
