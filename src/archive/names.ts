/**
 * File names as bytes, kept losslessly in strings. Linux names are bytes, not text: a legacy
 * application may well have written Latin-1 names (`caf\xe9.txt`), which Node's string APIs
 * turn into U+FFFD, a name that no longer exists. Such a name is kept here the way Python's
 * "surrogateescape" keeps it: valid UTF-8 as the characters it encodes, and every byte that is
 * not part of valid UTF-8 as the lone surrogate U+DC80 + (byte - 0x80). No real name maps to
 * a lone surrogate (UTF-8 cannot encode one), so the mapping is one to one, and JSON keeps
 * lone surrogates (as `\udce9`), so trees store such names unchanged.
 *
 * At the file system, fsPath() turns such a string back into its bytes (a Buffer path, which
 * every fs call takes); a string without escapes is used as it is.
 */
import {isUtf8} from 'node:buffer'
import {readdirSync, readlinkSync} from 'node:fs'

// `u`: code points, so the second half of a real pair (an emoji) is not taken for an escape
const ESCAPED = /[\udc80-\udcff]/u
const LONE_SURROGATE = /\p{Cs}/u

/** true when `s` holds an escaped byte (a name that is not valid UTF-8) */
export function hasEscapes(s: string): boolean {
  return ESCAPED.test(s)
}

/** the name (or path, or link target) `b` holds, as a string: see the top of this file */
export function nameFromBytes(b: Buffer): string {
  if (isUtf8(b)) return b.toString('utf8')
  let out = ''
  let i = 0
  while (i < b.length) {
    const n = validSequence(b, i)
    if (n === 0) {
      out += String.fromCharCode(0xdc00 + b[i])
      i++
    } else {
      out += b.toString('utf8', i, i + n)
      i += n
    }
  }
  return out
}

/** the length of the valid UTF-8 sequence at `b[i]`, 0 when the byte there does not start one */
function validSequence(b: Buffer, i: number): number {
  const c = b[i]
  if (c < 0x80) return 1
  let n: number
  let lo = 0x80
  let hi = 0xbf
  if (c >= 0xc2 && c <= 0xdf) n = 2
  else if (c >= 0xe0 && c <= 0xef) {
    n = 3
    // no overlong forms, no surrogates (U+D800..U+DFFF)
    if (c === 0xe0) lo = 0xa0
    if (c === 0xed) hi = 0x9f
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4
    if (c === 0xf0) lo = 0x90
    if (c === 0xf4) hi = 0x8f
  } else return 0
  if (i + n > b.length) return 0
  if (b[i + 1] < lo || b[i + 1] > hi) return 0
  for (let k = 2; k < n; k++) if (b[i + k] < 0x80 || b[i + k] > 0xbf) return 0
  return n
}

/** the bytes of a name (or path) made by nameFromBytes */
export function bytesOfName(s: string): Buffer {
  if (!hasEscapes(s)) return Buffer.from(s, 'utf8')
  const parts: Buffer[] = []
  let run = ''
  for (const ch of s) {
    const cp = ch.codePointAt(0)!
    if (cp >= 0xdc80 && cp <= 0xdcff) {
      if (run) parts.push(Buffer.from(run, 'utf8'))
      run = ''
      parts.push(Buffer.of(cp - 0xdc00))
    } else run += ch
  }
  if (run) parts.push(Buffer.from(run, 'utf8'))
  return Buffer.concat(parts)
}

/**
 * true when `s` is a name nameFromBytes can make: no lone surrogate but escapes, and no escapes
 * that spell valid UTF-8 (`\udcc3\udca9` would be the bytes of "é"). Anything else would name
 * the same bytes as another string: a tree holding it is refused (tree-check.ts).
 */
export function isCanonicalName(s: string): boolean {
  return !LONE_SURROGATE.test(s) || nameFromBytes(bytesOfName(s)) === s
}

/** a path for node:fs: `s` itself, or its bytes when it holds an escaped byte */
export function fsPath(s: string): string | Buffer {
  return hasEscapes(s) ? bytesOfName(s) : s
}

/**
 * The names in directory `dir` (as nameFromBytes makes them). Read as strings first (Node
 * decodes them natively, fast); only a listing with a U+FFFD in it, which may stand for bytes
 * that are not UTF-8, is read again as bytes.
 */
export function listNames(dir: string): string[] {
  const p = fsPath(dir)
  const names = readdirSync(p)
  if (!names.some((n) => n.includes('\ufffd'))) return names
  return readdirSync(p, {encoding: 'buffer'}).map(nameFromBytes)
}

/** where the symlink `abs` points (as nameFromBytes makes it): read again as bytes only when it may not be UTF-8 */
export function linkTarget(abs: string): string {
  const p = fsPath(abs)
  const t = readlinkSync(p)
  return t.includes('\ufffd') ? nameFromBytes(readlinkSync(p, {encoding: 'buffer'})) : t
}
