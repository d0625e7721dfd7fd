/**
 * Cron expressions: 5 fields (minute hour day-of-month month day-of-week) or 6 with a leading
 * seconds field, as in `holyship.schedule=*\/2 * * * * *`.
 *
 *   field          values     names
 *   second         0-59
 *   minute         0-59
 *   hour           0-23
 *   day of month   1-31
 *   month          1-12       JAN-DEC
 *   day of week    0-7        SUN-SAT (0 and 7 are Sunday)
 *
 * Each field is a list (`,`) of `*`, `N`, `A-B`, each optionally with a step (`*\/S`, `A-B/S`,
 * `N/S` = from N to the field's maximum). Macros: @yearly (@annually), @monthly, @weekly,
 * @daily (@midnight), @hourly. As in Vixie cron, when both day of month and day of week are
 * restricted (neither starts with `*`), a day matches if EITHER matches.
 *
 * Times are computed in local time by default (what `date` shows), or UTC.
 */
import {HolyshipError} from '../errors.js'

export interface CronSchedule {
  /** the expression as given */
  readonly source: string
  /** true when the expression has a seconds field */
  readonly hasSeconds: boolean
  readonly seconds: ReadonlySet<number>
  readonly minutes: ReadonlySet<number>
  readonly hours: ReadonlySet<number>
  readonly days: ReadonlySet<number>
  readonly months: ReadonlySet<number>
  /** 0-6, Sunday = 0 */
  readonly weekdays: ReadonlySet<number>
  readonly dayRestricted: boolean
  readonly weekdayRestricted: boolean
  readonly utc: boolean
}

interface FieldSpec {
  name: string
  min: number
  max: number
  names?: Record<string, number>
}

const MONTHS = ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec']
const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat']

const FIELDS: Record<'second' | 'minute' | 'hour' | 'day' | 'month' | 'weekday', FieldSpec> = {
  second: {name: 'second', min: 0, max: 59},
  minute: {name: 'minute', min: 0, max: 59},
  hour: {name: 'hour', min: 0, max: 23},
  day: {name: 'day of month', min: 1, max: 31},
  month: {name: 'month', min: 1, max: 12, names: Object.fromEntries(MONTHS.map((m, i) => [m, i + 1]))},
  weekday: {name: 'day of week', min: 0, max: 7, names: Object.fromEntries(DAYS.map((d, i) => [d, i]))},
}

const MACROS: Record<string, string> = {
  '@yearly': '0 0 1 1 *',
  '@annually': '0 0 1 1 *',
  '@monthly': '0 0 1 * *',
  '@weekly': '0 0 * * 0',
  '@daily': '0 0 * * *',
  '@midnight': '0 0 * * *',
  '@hourly': '0 * * * *',
}

function usage(expr: string, why: string): HolyshipError {
  return new HolyshipError('USAGE', `invalid cron expression ${JSON.stringify(expr)}: ${why}`, {
    hint: 'use 5 fields (minute hour day month weekday) or 6 with seconds first, e.g. "0 3 * * *" or "*/30 * * * * *"',
  })
}

function parseValue(expr: string, spec: FieldSpec, s: string): number {
  const lower = s.toLowerCase()
  if (spec.names && lower in spec.names) return spec.names[lower]
  if (!/^\d+$/.test(s)) throw usage(expr, `${spec.name}: "${s}" is not a number${spec.names ? ' or a name' : ''}`)
  const n = Number(s)
  if (n < spec.min || n > spec.max) throw usage(expr, `${spec.name}: ${n} is outside ${spec.min}-${spec.max}`)
  return n
}

function parseField(expr: string, spec: FieldSpec, field: string): Set<number> {
  const out = new Set<number>()
  if (field === '') throw usage(expr, `${spec.name} is empty`)
  for (const part of field.split(',')) {
    if (part === '') throw usage(expr, `${spec.name}: empty list item in "${field}"`)
    const [rangePart, stepPart, extra] = part.split('/')
    if (extra !== undefined) throw usage(expr, `${spec.name}: "${part}" has more than one "/"`)
    let step = 1
    if (stepPart !== undefined) {
      if (!/^\d+$/.test(stepPart) || Number(stepPart) === 0) throw usage(expr, `${spec.name}: step "${stepPart}" must be a positive number`)
      step = Number(stepPart)
      if (step > spec.max - spec.min + 1) throw usage(expr, `${spec.name}: step ${step} is larger than the field's range ${spec.min}-${spec.max}`)
    }
    let lo: number
    let hi: number
    if (rangePart === '*') {
      lo = spec.min
      hi = spec.max
    } else if (rangePart.includes('-')) {
      const bits = rangePart.split('-')
      if (bits.length !== 2 || bits[0] === '' || bits[1] === '') throw usage(expr, `${spec.name}: "${rangePart}" is not a range A-B`)
      lo = parseValue(expr, spec, bits[0])
      hi = parseValue(expr, spec, bits[1])
      if (lo > hi) throw usage(expr, `${spec.name}: range ${bits[0]}-${bits[1]} goes backwards`)
    } else {
      lo = parseValue(expr, spec, rangePart)
      hi = stepPart !== undefined ? spec.max : lo
    }
    for (let v = lo; v <= hi; v += step) out.add(v)
  }
  return out
}

/** Parse a cron expression; a malformed one is a HolyshipError USAGE with a one-line message. */
export function parseCron(expression: string, opts: {utc?: boolean} = {}): CronSchedule {
  const source = expression
  const trimmed = expression.trim()
  if (trimmed === '') throw usage(expression, 'it is empty')
  const expanded = trimmed.startsWith('@') ? MACROS[trimmed.toLowerCase()] : trimmed
  if (expanded === undefined) throw usage(expression, `unknown macro ${trimmed} (known: ${Object.keys(MACROS).join(', ')})`)
  const fields = expanded.split(/\s+/)
  if (fields.length !== 5 && fields.length !== 6) throw usage(expression, `expected 5 or 6 fields, got ${fields.length}`)
  const hasSeconds = fields.length === 6
  const [sec, min, hour, day, month, weekday] = hasSeconds ? fields : ['0', ...fields]
  const weekdays = new Set([...parseField(expression, FIELDS.weekday, weekday)].map((d) => d % 7))
  const schedule: CronSchedule = {
    source,
    hasSeconds,
    seconds: parseField(expression, FIELDS.second, sec),
    minutes: parseField(expression, FIELDS.minute, min),
    hours: parseField(expression, FIELDS.hour, hour),
    days: parseField(expression, FIELDS.day, day),
    months: parseField(expression, FIELDS.month, month),
    weekdays,
    dayRestricted: !day.startsWith('*'),
    weekdayRestricted: !weekday.startsWith('*'),
    utc: opts.utc ?? false,
  }
  // e.g. "0 0 30 2 *": valid fields that never meet
  if (!canFire(schedule)) throw usage(expression, 'it never fires (no month has such a day)')
  return schedule
}

const DAYS_IN_MONTH = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

function canFire(s: CronSchedule): boolean {
  if (s.weekdayRestricted && !s.dayRestricted) return true
  if (s.weekdayRestricted && s.dayRestricted) return true // either matches: weekdays always occur
  for (const m of s.months) for (const d of s.days) if (d <= DAYS_IN_MONTH[m - 1]) return true
  return false
}

/** calendar access in local time or UTC */
interface Cal {
  y(d: Date): number
  mo(d: Date): number
  d(d: Date): number
  wd(d: Date): number
  h(d: Date): number
  mi(d: Date): number
  s(d: Date): number
  make(y: number, mo: number, d: number, h: number, mi: number, s: number): Date
}

const LOCAL: Cal = {
  y: (d) => d.getFullYear(),
  mo: (d) => d.getMonth(),
  d: (d) => d.getDate(),
  wd: (d) => d.getDay(),
  h: (d) => d.getHours(),
  mi: (d) => d.getMinutes(),
  s: (d) => d.getSeconds(),
  make: (y, mo, d, h, mi, s) => new Date(y, mo, d, h, mi, s, 0),
}

const UTC: Cal = {
  y: (d) => d.getUTCFullYear(),
  mo: (d) => d.getUTCMonth(),
  d: (d) => d.getUTCDate(),
  wd: (d) => d.getUTCDay(),
  h: (d) => d.getUTCHours(),
  mi: (d) => d.getUTCMinutes(),
  s: (d) => d.getUTCSeconds(),
  make: (y, mo, d, h, mi, s) => new Date(Date.UTC(y, mo, d, h, mi, s, 0)),
}

function dayMatches(s: CronSchedule, cal: Cal, t: Date): boolean {
  const dom = s.days.has(cal.d(t))
  const dow = s.weekdays.has(cal.wd(t))
  if (s.dayRestricted && s.weekdayRestricted) return dom || dow
  return dom && dow
}

/**
 * The first time strictly after `after` (whole seconds) at which the schedule fires, or
 * undefined when there is none within 8 years. A local time that a clock change skips (02:30
 * on the night summer time begins, in Europe) fires at the first instant after the gap, as
 * cron does: a nightly backup at such a time is not skipped for a day. Schedules with every
 * hour are not made up for (they fire again within the hour).
 */
export function nextRun(s: CronSchedule, after: Date): Date | undefined {
  const limit = after.getTime() + 8 * 366 * 86_400_000
  const plain = nextWallRun(s, after, limit)
  return afterGap(s, after, plain?.getTime() ?? limit) ?? plain
}

/** the first instant after a local clock change that skipped a time the schedule fires at, after `after` and before `before` */
function afterGap(s: CronSchedule, after: Date, before: number): Date | undefined {
  if (s.utc || s.hours.size === 24) return undefined
  const HOUR = 3_600_000
  const MINUTE = 60_000
  let off = after.getTimezoneOffset()
  for (let t = after.getTime() + HOUR; t - HOUR < before; t += HOUR) {
    const o = new Date(t).getTimezoneOffset()
    if (o >= off) {
      off = o
      continue
    }
    // the clock went forward by off - o minutes within the last hour: its first minute after
    let g = Math.ceil((t - HOUR) / MINUTE) * MINUTE
    while (new Date(g).getTimezoneOffset() !== o) g += MINUTE
    const at = new Date(g)
    if (g > after.getTime() && g < before) {
      // the wall-clock minutes skipped: those before the gap's end, as UTC fields
      const end = Date.UTC(at.getFullYear(), at.getMonth(), at.getDate(), at.getHours(), at.getMinutes())
      for (let k = 1; k <= off - o; k++) {
        const w = new Date(end - k * MINUTE)
        if (s.months.has(w.getUTCMonth() + 1) && dayMatches(s, UTC, w) && s.hours.has(w.getUTCHours()) && s.minutes.has(w.getUTCMinutes())) return at
      }
    }
    off = o
  }
  return undefined
}

/** nextRun by the wall clock alone: times a clock change skips are skipped */
function nextWallRun(s: CronSchedule, after: Date, limit: number): Date | undefined {
  const cal = s.utc ? UTC : LOCAL
  let t = new Date(Math.floor(after.getTime() / 1000) * 1000 + 1000)
  // every step moves t forward to the start of the next candidate unit
  const advance = (next: Date): void => {
    // a DST transition can make a "next" local time land on or before t: always move forward
    t = next.getTime() > t.getTime() ? next : new Date(t.getTime() + 1000)
  }
  while (t.getTime() <= limit) {
    if (!s.months.has(cal.mo(t) + 1)) {
      advance(cal.make(cal.y(t), cal.mo(t) + 1, 1, 0, 0, 0))
      continue
    }
    if (!dayMatches(s, cal, t)) {
      advance(cal.make(cal.y(t), cal.mo(t), cal.d(t) + 1, 0, 0, 0))
      continue
    }
    if (!s.hours.has(cal.h(t))) {
      advance(cal.make(cal.y(t), cal.mo(t), cal.d(t), cal.h(t) + 1, 0, 0))
      continue
    }
    if (!s.minutes.has(cal.mi(t))) {
      advance(cal.make(cal.y(t), cal.mo(t), cal.d(t), cal.h(t), cal.mi(t) + 1, 0))
      continue
    }
    if (!s.seconds.has(cal.s(t))) {
      advance(new Date(t.getTime() + 1000))
      continue
    }
    return t
  }
  return undefined
}

/** the next `n` fire times after `after` */
export function nextRuns(s: CronSchedule, after: Date, n: number): Date[] {
  const out: Date[] = []
  let t: Date | undefined = after
  while (out.length < n && (t = nextRun(s, t))) out.push(t)
  return out
}

/**
 * The nominal interval of a schedule around `at`: the gap between the next two fire times
 * (used to report runs that take longer than their interval).
 */
export function intervalMs(s: CronSchedule, at: Date): number | undefined {
  const [a, b] = nextRuns(s, at, 2)
  return a && b ? b.getTime() - a.getTime() : undefined
}
