/**
 * Retention rules and the policy that applies them, with restic's semantics: rules COUNT
 * snapshots, they do not measure time. `daily=7` keeps the newest snapshot of each of the
 * last 7 days THAT HAVE snapshots, so a host that was off for a week (or a day whose backup
 * failed) never loses its older history to the calendar (docker-volume-backup #631).
 *
 *  - last=N     the N newest snapshots
 *  - hourly=N   the newest snapshot of each of the N newest hours that have one
 *  - daily=N    … days, weekly=N … ISO weeks, monthly=N … months, yearly=N … years
 *
 * A snapshot is kept when any rule keeps it. The newest snapshot is always kept, whatever
 * the rules say. Pure functions: the caller groups snapshots (per target) and deletes.
 */
import {HolyshipError} from '../errors.js'

export const KEEP_RULES = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const
export type KeepRule = (typeof KEEP_RULES)[number]
export type KeepPolicy = Partial<Record<KeepRule, number>>

/** at most this many per rule: a typo such as daily=77777777 is refused */
const MAX_COUNT = 1_000_000

/**
 * Parse `last=3,daily=7,weekly=4` (spaces allowed around items). Unknown or repeated rules,
 * counts that are not whole numbers, and a policy that keeps nothing are USAGE errors.
 */
export function parseKeep(text: string): KeepPolicy {
  const bad = (why: string): HolyshipError =>
    new HolyshipError('USAGE', `invalid keep rules ${JSON.stringify(text)}: ${why}`, {
      hint: `use e.g. "last=3,daily=7,weekly=4" with ${KEEP_RULES.join(', ')}`,
    })
  const policy: KeepPolicy = {}
  const items = text.split(',').map((s) => s.trim())
  if (items.length === 1 && items[0] === '') throw bad('no rules')
  for (const item of items) {
    if (item === '') throw bad('empty item')
    const m = /^([a-z]+)\s*=\s*(\S+)$/i.exec(item)
    if (!m) throw bad(`"${item}" is not RULE=COUNT`)
    const rule = m[1].toLowerCase() as KeepRule
    if (!KEEP_RULES.includes(rule)) throw bad(`unknown rule "${m[1]}"`)
    if (rule in policy) throw bad(`"${rule}" given twice`)
    policy[rule] = checkCount(m[2], (why) => bad(`${rule}: ${why}`))
  }
  if (!keepsSomething(policy)) throw bad('every count is 0: that would keep nothing')
  return policy
}

export function checkCount(value: string | number, bad: (why: string) => Error): number {
  const s = String(value).trim()
  if (!/^\d+$/.test(s)) throw bad(`"${value}" is not a whole number`)
  const n = Number(s)
  if (n > MAX_COUNT) throw bad(`${n} is more than ${MAX_COUNT}`)
  return n
}

export function keepsSomething(p: KeepPolicy): boolean {
  return KEEP_RULES.some((r) => (p[r] ?? 0) > 0)
}

export function formatKeep(p: KeepPolicy): string {
  return KEEP_RULES.filter((r) => p[r] !== undefined).map((r) => `${r}=${p[r]}`).join(',')
}

export interface RetentionItem {
  id: string
  /** snapshot time, ms since the epoch */
  time: number
}

export interface RetentionDecision<T extends RetentionItem> {
  keep: {item: T; reasons: string[]}[]
  remove: T[]
}

/** ISO 8601 week: the year and week number of the week's Thursday */
function isoWeek(y: number, m: number, d: number): string {
  const t = new Date(Date.UTC(y, m, d))
  const dow = (t.getUTCDay() + 6) % 7 // Monday = 0
  t.setUTCDate(t.getUTCDate() - dow + 3) // Thursday of this week
  const year = t.getUTCFullYear()
  const jan4 = new Date(Date.UTC(year, 0, 4))
  const week = 1 + Math.round((t.getTime() - jan4.getTime()) / 86_400_000 / 7 - ((jan4.getUTCDay() + 6) % 7) / 7 + 3 / 7)
  return `${year}-W${String(week).padStart(2, '0')}`
}

type Bucket = (t: number) => string

function buckets(utc: boolean): Record<Exclude<KeepRule, 'last'>, Bucket> {
  const parts = (t: number): [number, number, number, number] => {
    const d = new Date(t)
    return utc ? [d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate(), d.getUTCHours()] : [d.getFullYear(), d.getMonth(), d.getDate(), d.getHours()]
  }
  return {
    // the offset too: the hour a clock change repeats (02:00-03:00 twice when summer time ends) is two hours
    hourly: (t) => (utc ? parts(t).join('-') : `${parts(t).join('-')}${new Date(t).getTimezoneOffset()}`),
    daily: (t) => parts(t).slice(0, 3).join('-'),
    weekly: (t) => {
      const [y, m, d] = parts(t)
      return isoWeek(y, m, d)
    },
    monthly: (t) => parts(t).slice(0, 2).join('-'),
    yearly: (t) => String(parts(t)[0]),
  }
}

/**
 * Decide which snapshots of ONE group (one target) to keep. Snapshots are considered newest
 * first; for each rule with count N, a snapshot is kept when it opens a new bucket (hour,
 * day, week, month, year) and fewer than N buckets were opened so far. Calendar buckets are
 * local time unless `utc`. An empty policy keeps everything.
 */
export function applyRetention<T extends RetentionItem>(items: readonly T[], policy: KeepPolicy, opts: {utc?: boolean} = {}): RetentionDecision<T> {
  const sorted = [...items].sort((a, b) => b.time - a.time || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0))
  if (!keepsSomething(policy)) return {keep: sorted.map((item) => ({item, reasons: ['no policy']})), remove: []}
  const fns = buckets(opts.utc ?? false)
  const left: Record<string, number> = {}
  const lastBucket: Record<string, string | undefined> = {}
  for (const r of KEEP_RULES) left[r] = policy[r] ?? 0
  const keep: RetentionDecision<T>['keep'] = []
  const remove: T[] = []
  sorted.forEach((item, i) => {
    const reasons: string[] = []
    if (left.last > 0) {
      reasons.push('last')
      left.last--
    }
    for (const r of KEEP_RULES) {
      if (r === 'last' || left[r] <= 0) continue
      const b = fns[r](item.time)
      if (b !== lastBucket[r]) {
        lastBucket[r] = b
        left[r]--
        reasons.push(r)
      }
    }
    if (i === 0 && reasons.length === 0) reasons.push('newest')
    if (reasons.length > 0) keep.push({item, reasons})
    else remove.push(item)
  })
  return {keep, remove}
}
