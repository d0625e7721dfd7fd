/**
 * Cron parsing and next-run computation (UTC, so the results do not depend on the machine's
 * time zone; one local-time case checks the default calendar).
 */
import {describe, expect, it} from 'vitest'
import {HolyshipError} from '../../src/errors.js'
import {intervalMs, nextRun, nextRuns, parseCron} from '../../src/schedule/cron.js'
import {parseDuration} from '../../src/schedule/duration.js'

const utc = (s: string) => parseCron(s, {utc: true})
const at = (iso: string) => new Date(iso)
const next = (expr: string, from: string, n = 1) => nextRuns(utc(expr), at(from), n).map((d) => d.toISOString())

describe('cron: parsing', () => {
  it('5 fields mean second 0; 6 fields start with seconds', () => {
    const five = utc('*/15 2 * * *')
    expect(five.hasSeconds).toBe(false)
    expect([...five.seconds]).toEqual([0])
    expect([...five.minutes]).toEqual([0, 15, 30, 45])
    expect([...five.hours]).toEqual([2])
    const six = utc('*/2 * * * * *')
    expect(six.hasSeconds).toBe(true)
    expect(six.seconds.size).toBe(30)
    expect([...six.seconds].slice(0, 3)).toEqual([0, 2, 4])
  })

  it('ranges, steps, lists and N/S', () => {
    const c = utc('0 1-5,10,20-30/5 */6 1,15 * *')
    expect([...c.minutes]).toEqual([1, 2, 3, 4, 5, 10, 20, 25, 30])
    expect([...c.hours]).toEqual([0, 6, 12, 18])
    expect([...c.days]).toEqual([1, 15])
    expect([...utc('5/20 * * * *').minutes]).toEqual([5, 25, 45])
  })

  it('month and day names, case-insensitive, in ranges; 7 is Sunday', () => {
    const c = utc('0 9 * jan-MAR,Dec Mon-fri')
    expect([...c.months]).toEqual([1, 2, 3, 12])
    expect([...c.weekdays].sort()).toEqual([1, 2, 3, 4, 5])
    expect([...utc('0 0 * * 7').weekdays]).toEqual([0])
    expect([...utc('0 0 * * 5-7').weekdays].sort()).toEqual([0, 5, 6])
    expect([...utc('0 0 * * SUN').weekdays]).toEqual([0])
  })

  it('macros', () => {
    expect(next('@daily', '2024-03-10T12:00:00Z')).toEqual(['2024-03-11T00:00:00.000Z'])
    expect(next('@hourly', '2024-03-10T12:00:00Z')).toEqual(['2024-03-10T13:00:00.000Z'])
    expect(next('@weekly', '2024-03-10T12:00:00Z')).toEqual(['2024-03-17T00:00:00.000Z']) // a Sunday
    expect(next('@monthly', '2024-03-10T12:00:00Z')).toEqual(['2024-04-01T00:00:00.000Z'])
    expect(next('@yearly', '2024-03-10T12:00:00Z')).toEqual(['2025-01-01T00:00:00.000Z'])
  })

  it.each([
    ['', /empty/],
    ['* * * *', /expected 5 or 6 fields, got 4/],
    ['* * * * * * *', /expected 5 or 6 fields, got 7/],
    ['60 * * * *', /minute: 60 is outside 0-59/],
    ['* 24 * * *', /hour: 24 is outside 0-23/],
    ['* * 0 * *', /day of month: 0 is outside 1-31/],
    ['* * * 13 *', /month: 13 is outside 1-12/],
    ['* * * * 8', /day of week: 8 is outside 0-7/],
    ['61 * * * * *', /second: 61 is outside/],
    ['*/0 * * * *', /step "0" must be a positive number/],
    ['*/x * * * *', /step "x"/],
    ['5-1 * * * *', /goes backwards/],
    ['1,,2 * * * *', /empty list item/],
    ['1-2-3 * * * *', /not a range/],
    ['* * * foo *', /month: "foo" is not a number or a name/],
    ['a * * * *', /minute: "a" is not a number/],
    ['*/2/3 * * * *', /more than one/],
    ['@sometimes', /unknown macro/],
    ['0 0 30 2 *', /never fires/],
    ['0 0 31 4,6,9,11 *', /never fires/],
  ])('rejects %j with a one-line USAGE error', (expr, why) => {
    let err: unknown
    try {
      parseCron(expr)
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(HolyshipError)
    expect((err as HolyshipError).code).toBe('USAGE')
    expect((err as HolyshipError).message).toMatch(why)
    expect((err as HolyshipError).message).not.toContain('\n')
  })

  it('accepts Feb 29 (leap years) and 31st in months that have it', () => {
    expect(next('0 0 29 2 *', '2025-01-01T00:00:00Z')).toEqual(['2028-02-29T00:00:00.000Z'])
    expect(next('0 0 31 * *', '2024-04-01T00:00:00Z', 2)).toEqual(['2024-05-31T00:00:00.000Z', '2024-07-31T00:00:00.000Z'])
  })
})

describe('cron: next runs', () => {
  it('every 2 seconds (6 fields)', () => {
    expect(next('*/2 * * * * *', '2024-01-01T00:00:00.500Z', 3)).toEqual(['2024-01-01T00:00:02.000Z', '2024-01-01T00:00:04.000Z', '2024-01-01T00:00:06.000Z'])
    // strictly after: a whole-second "from" that matches is not returned again
    expect(next('*/2 * * * * *', '2024-01-01T00:00:02.000Z')).toEqual(['2024-01-01T00:00:04.000Z'])
  })

  it('seconds lists and ranges roll over minutes and hours', () => {
    expect(next('10,50 59 23 * * *', '2024-12-31T23:59:20Z', 3)).toEqual(['2024-12-31T23:59:50.000Z', '2025-01-01T23:59:10.000Z', '2025-01-01T23:59:50.000Z'])
  })

  it('daily at 03:30', () => {
    expect(next('30 3 * * *', '2024-02-28T04:00:00Z', 3)).toEqual(['2024-02-29T03:30:00.000Z', '2024-03-01T03:30:00.000Z', '2024-03-02T03:30:00.000Z'])
  })

  it('weekdays only', () => {
    // 2024-03-08 is a Friday
    expect(next('0 9 * * mon-fri', '2024-03-08T10:00:00Z', 2)).toEqual(['2024-03-11T09:00:00.000Z', '2024-03-12T09:00:00.000Z'])
  })

  it('day of month OR day of week when both are restricted (Vixie cron)', () => {
    // the 13th, or any Friday: 2024-09-06 (Fri), 2024-09-13 (Fri and 13th), 2024-09-20 (Fri)
    expect(next('0 0 13 * 5', '2024-09-01T00:00:00Z', 3)).toEqual(['2024-09-06T00:00:00.000Z', '2024-09-13T00:00:00.000Z', '2024-09-20T00:00:00.000Z'])
    // a star-step day field counts as unrestricted: only Fridays on odd days... i.e. AND
    expect(next('0 0 */2 * 5', '2024-09-01T00:00:00Z', 2)).toEqual(['2024-09-13T00:00:00.000Z', '2024-09-27T00:00:00.000Z'])
  })

  it('month boundaries and years', () => {
    expect(next('0 0 1 */3 *', '2024-11-15T00:00:00Z', 2)).toEqual(['2025-01-01T00:00:00.000Z', '2025-04-01T00:00:00.000Z'])
  })

  it('local time is the default calendar', () => {
    const local = parseCron('0 30 4 * * *')
    const n = nextRun(local, new Date(2024, 5, 1, 12, 0, 0))!
    expect([n.getFullYear(), n.getMonth(), n.getDate(), n.getHours(), n.getMinutes(), n.getSeconds()]).toEqual([2024, 5, 2, 4, 30, 0])
  })

  it('a local time the clock skips (summer time begins) fires right after the gap, not a day later; a repeated one fires once', () => {
    const saved = process.env.TZ
    const runs = (tz: string, expr: string, from: string, n: number): string[] => {
      process.env.TZ = tz
      return nextRuns(parseCron(expr), new Date(from), n).map((d) => d.toISOString())
    }
    try {
      // Berlin, 2025-03-30: 02:00 CET -> 03:00 CEST (01:00Z)
      expect(runs('Europe/Berlin', '30 2 * * *', '2025-03-29T12:00:00Z', 3)).toEqual(['2025-03-30T01:00:00.000Z', '2025-03-31T00:30:00.000Z', '2025-04-01T00:30:00.000Z'])
      // New York, 2025-03-09: 02:00 EST -> 03:00 EDT (07:00Z)
      expect(runs('America/New_York', '0 2 * * *', '2025-03-08T12:00:00Z', 2)).toEqual(['2025-03-09T07:00:00.000Z', '2025-03-10T06:00:00.000Z'])
      // Santiago, 2025-09-07: midnight is skipped (00:00 -> 01:00, 04:00Z); @daily still runs that day
      expect(runs('America/Santiago', '@daily', '2025-09-06T12:00:00Z', 2)).toEqual(['2025-09-07T04:00:00.000Z', '2025-09-08T03:00:00.000Z'])
      // a time the gap does not touch, and an every-hour schedule, are as the wall clock says
      expect(runs('Europe/Berlin', '0 4 * * *', '2025-03-29T12:00:00Z', 2)).toEqual(['2025-03-30T02:00:00.000Z', '2025-03-31T02:00:00.000Z'])
      expect(runs('Europe/Berlin', '30 * * * *', '2025-03-30T00:00:00Z', 2)).toEqual(['2025-03-30T00:30:00.000Z', '2025-03-30T01:30:00.000Z'])
      // summer time ends, 2025-10-26: 02:30 happens twice, the job runs once
      expect(runs('Europe/Berlin', '30 2 * * *', '2025-10-25T12:00:00Z', 2)).toEqual(['2025-10-26T00:30:00.000Z', '2025-10-27T01:30:00.000Z'])
    } finally {
      if (saved === undefined) delete process.env.TZ
      else process.env.TZ = saved
    }
  })

  it('interval between runs', () => {
    expect(intervalMs(utc('*/2 * * * * *'), at('2024-01-01T00:00:00Z'))).toBe(2000)
    expect(intervalMs(utc('0 3 * * *'), at('2024-01-01T00:00:00Z'))).toBe(86_400_000)
  })
})

describe('durations', () => {
  it('parses and rejects', () => {
    expect(parseDuration('0')).toBe(0)
    expect(parseDuration('90s')).toBe(90_000)
    expect(parseDuration('1h30m')).toBe(5_400_000)
    expect(parseDuration('2d')).toBe(172_800_000)
    expect(() => parseDuration('1 hour')).toThrow(/invalid duration/)
    expect(() => parseDuration('')).toThrow(/invalid duration/)
  })
})
