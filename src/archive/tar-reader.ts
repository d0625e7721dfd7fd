/**
 * A byte-exact tar reader, the twin of tarwriter.ts: what an engine's tar stream holds
 * (getArchive, export) comes out as the bytes it holds. tar-stream decodes pax records as
 * UTF-8, which turns a name that is not UTF-8 into U+FFFD and a binary xattr value (Docker
 * puts `security.capability` into its archives) into other bytes, a different length even.
 * Here names, link targets and pax values stay Buffers.
 *
 * Reads POSIX ustar and pax (`x` records for the next entry; `g` global records are skipped,
 * as Docker never writes them), GNU tar's long names (`L`, `K`) and base-256 numbers, and old
 * v7 headers. Every header's checksum is checked, and the stream must end with the
 * end-of-archive block: a stream cut at an entry's boundary is an error, not a shorter archive.
 */

import {nameFromBytes} from './names.js'

/** One entry's header, with what its pax or GNU long-name records said folded in. */
export interface TarRecord {
  /** the name, as the bytes the archive holds (a directory's may end in `/`) */
  name: Buffer
  /** the typeflag: '0' (or '\0', '7') a file, '1' a hard link, '2' a symlink, '3'/'4' a device, '5' a directory, '6' a fifo */
  typeflag: string
  mode: number
  uid: number
  gid: number
  /** the body's length (0 but for files) */
  size: number
  /** seconds and nanoseconds since the epoch */
  mtime: [number, number]
  /** a link's target (empty when none) */
  linkname: Buffer
  devMajor: number
  devMinor: number
  /** the entry's pax records (`SCHILY.xattr.*`...), values as bytes */
  pax: Map<string, Buffer>
}

export interface TarItem {
  header: TarRecord
  /** the entry's content; what is not read of it is skipped when the next entry is asked for */
  body: AsyncIterable<Buffer>
}

/** what is wrong with a tar stream: the caller says whose stream it was */
export class TarFormatError extends Error {}

const BLOCK = 512
const EMPTY: Buffer = Buffer.alloc(0)
const ZERO_BLOCK = Buffer.alloc(BLOCK)

/** exact reads over the buffers of a stream */
class Bytes {
  private buf: Buffer = EMPTY
  private readonly it: AsyncIterator<Uint8Array>
  /** bytes taken so far (for messages) */
  offset = 0

  constructor(source: AsyncIterable<Uint8Array>) {
    this.it = source[Symbol.asyncIterator]()
  }

  /** false at the stream's end */
  private async more(): Promise<boolean> {
    for (;;) {
      const r = await this.it.next()
      if (r.done) return false
      if (r.value.length === 0) continue
      this.buf = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength)
      return true
    }
  }

  /** exactly `n` bytes; undefined when the stream ends before the first of them */
  async take(n: number, what: string | {toString(): string}): Promise<Buffer | undefined> {
    if (this.buf.length >= n) {
      const out = this.buf.subarray(0, n)
      this.buf = this.buf.subarray(n)
      this.offset += n
      return out
    }
    // across the stream's buffers: gathered, then copied once
    const parts: Buffer[] = []
    let got = 0
    while (got < n) {
      if (this.buf.length === 0 && !(await this.more())) {
        if (got === 0) return undefined
        throw new TarFormatError(`the tar stream ends inside ${what} (at byte ${this.offset})`)
      }
      const piece = this.buf.subarray(0, n - got)
      this.buf = this.buf.subarray(piece.length)
      this.offset += piece.length
      parts.push(piece)
      got += piece.length
    }
    return Buffer.concat(parts, n)
  }

  /** done with the stream, read to its end or not: a Readable is destroyed */
  async close(): Promise<void> {
    await this.it.return?.()
  }

  /** up to `max` bytes, at least one; throws at the stream's end */
  async some(max: number, what: string | {toString(): string}): Promise<Buffer> {
    if (this.buf.length === 0 && !(await this.more())) throw new TarFormatError(`the tar stream ends inside ${what} (at byte ${this.offset})`)
    const out = this.buf.subarray(0, Math.min(max, this.buf.length))
    this.buf = this.buf.subarray(out.length)
    this.offset += out.length
    return out
  }
}

/** a NUL-terminated field */
function field(b: Buffer, at: number, len: number): Buffer {
  const f = b.subarray(at, at + len)
  const nul = f.indexOf(0)
  return nul < 0 ? f : f.subarray(0, nul)
}

/**
 * a numeric field: octal digits (ended by NUL or space), or GNU base-256 when the first byte
 * has its high bit (big-endian two's complement, the sign in bit 0x40, read as Go reads it).
 * Only an mtime may be negative.
 */
function num(b: Buffer, at: number, len: number, what: string, signed = false): number {
  const f = b.subarray(at, at + len)
  if (f[0] & 0x80) {
    // -a-1 == ~a: a negative number is read inverted
    const inv = f[0] & 0x40 ? 0xff : 0
    let v = 0
    for (let i = 0; i < f.length; i++) v = v * 256 + ((f[i] ^ inv) & (i === 0 ? 0x7f : 0xff))
    if (!Number.isSafeInteger(v)) throw new TarFormatError(`a tar header's ${what} is out of range`)
    if (inv && !signed) throw new TarFormatError(`a tar header's ${what} is negative`)
    return inv ? -v - 1 : v
  }
  // leading spaces (old tars pad with them), then digits up to a NUL or space
  const s = f.toString('latin1').replace(/^ +/, '').replace(/[\0 ].*$/s, '')
  if (s === '') return 0
  if (!/^[0-7]+$/.test(s)) throw new TarFormatError(`a tar header's ${what} is not a number (${JSON.stringify(s)})`)
  return parseInt(s, 8)
}

/** the header checksum is the sum of its bytes, the checksum field read as spaces (unsigned, or signed as some old tars did) */
function checksumOk(b: Buffer): boolean {
  const want = num(b, 148, 8, 'checksum')
  let unsigned = 0
  let signed = 0
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 32 : b[i]
    unsigned += c
    signed += c > 127 ? c - 256 : c
  }
  return want === unsigned || want === signed
}

/** pax records: `LEN KEY=VALUE\n`, LEN counting the whole record */
export function parsePax(b: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>()
  let at = 0
  while (at < b.length) {
    // a block's padding of NULs ends the records
    if (b[at] === 0) break
    const space = b.indexOf(0x20, at)
    const len = space < 0 ? NaN : Number(b.toString('latin1', at, space))
    if (!Number.isSafeInteger(len) || len <= space - at + 1 || at + len > b.length || b[at + len - 1] !== 0x0a) {
      throw new TarFormatError(`a pax header has a malformed record at byte ${at}`)
    }
    const rec = b.subarray(space + 1, at + len - 1)
    const eq = rec.indexOf(0x3d)
    if (eq < 0) throw new TarFormatError(`a pax record has no "=" at byte ${at}`)
    // a key holds an xattr's name, which need not be UTF-8 either (names.ts keeps it)
    out.set(nameFromBytes(rec.subarray(0, eq)), Buffer.from(rec.subarray(eq + 1)))
    at += len
  }
  return out
}

/** a pax mtime, `SECONDS[.FRACTION]`, to seconds and nanoseconds */
function paxTime(v: Buffer): [number, number] {
  const m = /^(-?\d+)(?:\.(\d*))?$/.exec(v.toString('latin1'))
  if (!m) throw new TarFormatError(`a pax mtime is not a time (${JSON.stringify(v.toString('latin1'))})`)
  const ns = Number(((m[2] ?? '') + '000000000').slice(0, 9))
  const s = Number(m[1])
  // -1.5 is 1.5 s before the epoch: -2 s + 0.5 s
  return s < 0 || m[1] === '-0' ? (ns === 0 ? [s, 0] : [s - 1, 1e9 - ns]) : [s, ns]
}

function paxNumber(v: Buffer, what: string): number {
  const s = v.toString('latin1')
  if (!/^\d+$/.test(s) || !Number.isSafeInteger(Number(s))) throw new TarFormatError(`a pax ${what} is not a number (${JSON.stringify(s)})`)
  return Number(s)
}

const padded = (n: number): number => Math.ceil(n / BLOCK) * BLOCK

/** the whole body of a metadata entry (pax, long name), bounded: such a record is never big */
async function metaBody(bytes: Bytes, size: number, what: string): Promise<Buffer> {
  if (size > 16 * 1024 * 1024) throw new TarFormatError(`a tar ${what} of ${size} bytes is too large`)
  const b = await bytes.take(padded(size), what)
  if (!b) throw new TarFormatError(`the tar stream ends before ${what}`)
  return Buffer.from(b.subarray(0, size))
}

/**
 * The entries of a tar stream, in order. Each entry's body must be read (or left) before the
 * next is asked for; what is left is skipped then. A malformed stream throws TarFormatError.
 */
export async function* readTar(source: AsyncIterable<Uint8Array>): AsyncGenerator<TarItem> {
  const bytes = new Bytes(source)
  try {
    yield* entries(bytes)
  } finally {
    // an early stop, an error, or the end-of-archive block with the rest unread
    await bytes.close()
  }
}

async function* entries(bytes: Bytes): AsyncGenerator<TarItem> {
  let pax = new Map<string, Buffer>()
  let longName: Buffer | undefined
  let longLink: Buffer | undefined
  for (;;) {
    const at = bytes.offset
    const b = await bytes.take(BLOCK, 'a header')
    if (!b) throw new TarFormatError(`the tar stream ends without its end-of-archive block (after ${at} bytes)`)
    // the end-of-archive marker (two zero blocks; one is enough to know)
    if (b.equals(ZERO_BLOCK)) return
    if (!checksumOk(b)) throw new TarFormatError(`the tar stream has a header with a bad checksum at byte ${at}: not a tar, or damaged`)
    const typeflag = String.fromCharCode(b[156])
    let size = num(b, 124, 12, 'size')
    if (typeflag === 'x' || typeflag === 'g' || typeflag === 'L' || typeflag === 'K') {
      const body = await metaBody(bytes, size, typeflag === 'x' || typeflag === 'g' ? 'pax header' : 'GNU long name')
      // a second `x` header before an entry replaces the first, as Go reads it (nothing piles up)
      if (typeflag === 'x') pax = parsePax(body)
      else if (typeflag === 'L') longName = field(body, 0, body.length)
      else if (typeflag === 'K') longLink = field(body, 0, body.length)
      continue
    }
    const magic = b.toString('latin1', 257, 263)
    let name = field(b, 0, 100)
    // POSIX ustar: a prefix (GNU's magic `ustar  ` keeps other fields there)
    if (magic === 'ustar\0') {
      const prefix = field(b, 345, 155)
      if (prefix.length) name = Buffer.concat([prefix, Buffer.from('/'), name])
    }
    const p = pax.get('path')
    const lp = pax.get('linkpath')
    const header: TarRecord = {
      name: Buffer.from(p ?? longName ?? name),
      // an old regular-file flag on a name ending in `/` is a directory (as Go reads it)
      typeflag: typeflag === '\0' && (p ?? longName ?? name).at(-1) === 0x2f ? '5' : typeflag,
      mode: num(b, 100, 8, 'mode'),
      uid: pax.has('uid') ? paxNumber(pax.get('uid')!, 'uid') : num(b, 108, 8, 'uid'),
      gid: pax.has('gid') ? paxNumber(pax.get('gid')!, 'gid') : num(b, 116, 8, 'gid'),
      size: pax.has('size') ? paxNumber(pax.get('size')!, 'size') : size,
      mtime: pax.has('mtime') ? paxTime(pax.get('mtime')!) : [num(b, 136, 12, 'mtime', true), 0],
      linkname: Buffer.from(lp ?? longLink ?? field(b, 157, 100)),
      devMajor: magic.startsWith('ustar') ? num(b, 329, 8, 'device major') : 0,
      devMinor: magic.startsWith('ustar') ? num(b, 337, 8, 'device minor') : 0,
      pax,
    }
    size = header.size
    pax = new Map()
    longName = longLink = undefined
    // only files have a body worth reading; a hard link's or directory's size (if any) is skipped like one
    let left = size
    let current = true
    const what = {toString: () => `the body of ${JSON.stringify(header.name.toString('utf8'))}`}
    const body: AsyncIterable<Buffer> = {
      async *[Symbol.asyncIterator]() {
        while (left > 0) {
          if (!current) throw new Error('a tar entry\'s body was read after the next entry was asked for')
          const piece = await bytes.some(left, what)
          left -= piece.length
          yield piece
        }
      },
    }
    yield {header, body}
    current = false
    while (left > 0) left -= (await bytes.some(left, what)).length
    const pad = padded(size) - size
    if (pad > 0 && !(await bytes.take(pad, what))) throw new TarFormatError(`the tar stream ends inside ${what}`)
  }
}
