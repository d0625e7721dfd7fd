import {HolyshipError} from '../errors.js'

const UNITS: Record<string, number> = {ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000}

/** `90s`, `30m`, `1h`, `2d`, `1h30m`, or `0`: milliseconds (USAGE on anything else) */
export function parseDuration(text: string, what = 'duration'): number {
  const s = text.trim()
  if (s === '0') return 0
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/g
  let total = 0
  let consumed = 0
  for (let m = re.exec(s); m; m = re.exec(s)) {
    if (m.index !== consumed) break
    total += Number(m[1]) * UNITS[m[2]]
    consumed = m.index + m[0].length
  }
  if (s === '' || consumed !== s.length) throw new HolyshipError('USAGE', `invalid ${what} ${JSON.stringify(text)}: use e.g. 90s, 30m, 1h, 2d or 0`)
  return total
}
