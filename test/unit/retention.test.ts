/**
 * Keep rules and the retention policy: a pure function over timestamps (UTC calendar here).
 */
import {describe, expect, it} from 'vitest'
import {HolyshipError} from '../../src/errors.js'
import {applyRetention, formatKeep, parseKeep} from '../../src/schedule/retention.js'

const H = 3_600_000
const D = 24 * H
const T0 = Date.parse('2024-06-30T12:00:00Z') // a Sunday

/** snapshots at these offsets (ms before T0), ids s0 (newest) … */
const snaps = (offsets: number[]) => offsets.map((o, i) => ({id: `s${String(i).padStart(3, '0')}`, time: T0 - o}))
const kept = (items: {id: string; time: number}[], policy: Parameters<typeof applyRetention>[1]) =>
  applyRetention(items, policy, {utc: true})
    .keep.map((k) => k.item.id)
    .sort()

describe('keep rules', () => {
  it('parses rules, spaces, any case', () => {
    expect(parseKeep('last=3,daily=7,weekly=4')).toEqual({last: 3, daily: 7, weekly: 4})
    expect(parseKeep(' Hourly = 24 , monthly=12,yearly=0 ')).toEqual({hourly: 24, monthly: 12, yearly: 0})
    expect(formatKeep({weekly: 4, last: 3})).toBe('last=3,weekly=4')
  })

  it.each([
    ['', /no rules/],
    ['daily', /not RULE=COUNT/],
    ['daily=7,', /empty item/],
    ['forever=1', /unknown rule "forever"/],
    ['daily=7,daily=3', /"daily" given twice/],
    ['daily=-1', /not a whole number/],
    ['daily=1.5', /not a whole number/],
    ['daily=x', /not a whole number/],
    ['daily=0,last=0', /keep nothing/],
    ['last=99999999', /more than/],
  ])('rejects %j as USAGE', (text, why) => {
    let err: unknown
    try {
      parseKeep(text)
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(HolyshipError)
    expect((err as HolyshipError).code).toBe('USAGE')
    expect((err as HolyshipError).message).toMatch(why)
    expect((err as HolyshipError).message).not.toContain('\n')
  })
})

describe('retention policy', () => {
  it('last=N keeps the N newest', () => {
    const s = snaps([0, H, 2 * H, 3 * H, 4 * H])
    expect(kept(s, {last: 2})).toEqual(['s000', 's001'])
  })

  it('daily=N keeps the newest snapshot of each of the N newest days that have snapshots', () => {
    // three a day for 5 days
    const s = snaps([0, 2 * H, 4 * H, D, D + 2 * H, D + 4 * H, 2 * D, 2 * D + H, 3 * D, 4 * D])
    const d = applyRetention(s, {daily: 3}, {utc: true})
    expect(d.keep.map((k) => k.item.id)).toEqual(['s000', 's003', 's006'])
    expect(d.keep.every((k) => k.reasons.includes('daily'))).toBe(true)
    expect(d.remove.map((r) => r.id).sort()).toEqual(['s001', 's002', 's004', 's005', 's007', 's008', 's009'])
  })

  it('a missed day never deletes history: buckets count days that HAVE snapshots', () => {
    // daily snapshots, then the host was off for 10 days, then one more
    const s = snaps([0, 11 * D, 12 * D, 13 * D, 14 * D, 15 * D, 16 * D, 17 * D])
    // calendar thinking ("the last 7 days") would keep only s000; counting keeps 7 days of history
    expect(kept(s, {daily: 7})).toEqual(['s000', 's001', 's002', 's003', 's004', 's005', 's006'])
    // and a month of no backups at all loses nothing
    const gap = snaps([0, 40 * D, 41 * D])
    expect(kept(gap, {daily: 3})).toEqual(['s000', 's001', 's002'])
  })

  it('the newest snapshot is always kept', () => {
    const s = snaps([0, H])
    // hourly=1 keeps the newest hour; make the rules keep nothing else
    const d = applyRetention(s, {last: 1}, {utc: true})
    expect(d.keep.map((k) => k.item.id)).toEqual(['s000'])
    // input order does not matter: the newest by time is kept
    const shuffled = [s[1], s[0]]
    expect(applyRetention(shuffled, {yearly: 1}, {utc: true}).keep.map((k) => k.item.id)).toEqual(['s000'])
    // one snapshot, any policy
    expect(kept(snaps([5 * 365 * D]), {daily: 1})).toEqual(['s000'])
  })

  it('an empty policy keeps everything', () => {
    const s = snaps([0, D, 2 * D])
    expect(applyRetention(s, {}).remove).toEqual([])
  })

  it('rules combine: a snapshot is kept when any rule keeps it', () => {
    // hourly for a day, then daily, weekly, monthly
    const offsets: number[] = []
    for (let h = 0; h < 24 * 90; h += 6) offsets.push(h * H)
    const s = snaps(offsets)
    const d = applyRetention(s, {last: 2, daily: 7, weekly: 4, monthly: 3}, {utc: true})
    const reasons = new Map(d.keep.map((k) => [k.item.id, k.reasons]))
    expect(reasons.get('s000')).toEqual(['last', 'daily', 'weekly', 'monthly'])
    expect(reasons.get('s001')).toEqual(['last'])
    const daily = d.keep.filter((k) => k.reasons.includes('daily'))
    expect(daily).toHaveLength(7)
    expect(d.keep.filter((k) => k.reasons.includes('weekly'))).toHaveLength(4)
    expect(d.keep.filter((k) => k.reasons.includes('monthly'))).toHaveLength(3)
    // nothing kept twice, nothing both kept and removed
    expect(d.keep.length + d.remove.length).toBe(s.length)
  })

  it('weekly uses ISO weeks (Monday to Sunday)', () => {
    // 2024-06-30 is a Sunday: it and Monday 2024-06-24 are the same ISO week; 2024-06-23 is the week before
    const s = [
      {id: 'sun30', time: Date.parse('2024-06-30T12:00:00Z')},
      {id: 'mon24', time: Date.parse('2024-06-24T12:00:00Z')},
      {id: 'sun23', time: Date.parse('2024-06-23T12:00:00Z')},
    ]
    expect(kept(s, {weekly: 2})).toEqual(['sun23', 'sun30'])
    // across a year boundary: 2020-12-31 (Thu) and 2021-01-03 (Sun) are both ISO week 2020-W53
    const y = [
      {id: 'jan03', time: Date.parse('2021-01-03T12:00:00Z')},
      {id: 'dec31', time: Date.parse('2020-12-31T12:00:00Z')},
      {id: 'dec27', time: Date.parse('2020-12-27T12:00:00Z')},
    ]
    expect(kept(y, {weekly: 2})).toEqual(['dec27', 'jan03'])
  })

  it('hourly, monthly, yearly buckets', () => {
    const s = [
      {id: 'a', time: Date.parse('2024-06-30T12:59:00Z')},
      {id: 'b', time: Date.parse('2024-06-30T12:01:00Z')},
      {id: 'c', time: Date.parse('2024-06-30T11:59:00Z')},
      {id: 'd', time: Date.parse('2024-05-01T00:00:00Z')},
      {id: 'e', time: Date.parse('2023-12-31T23:59:59Z')},
      {id: 'f', time: Date.parse('2022-01-01T00:00:00Z')},
    ]
    expect(kept(s, {hourly: 2})).toEqual(['a', 'c'])
    expect(kept(s, {monthly: 3})).toEqual(['a', 'd', 'e'])
    expect(kept(s, {yearly: 5})).toEqual(['a', 'e', 'f'])
  })

  it('equal times: deterministic by id', () => {
    const s = [
      {id: 'x', time: T0},
      {id: 'y', time: T0},
    ]
    const a = applyRetention(s, {last: 1}, {utc: true})
    const b = applyRetention([...s].reverse(), {last: 1}, {utc: true})
    expect(a.keep.map((k) => k.item.id)).toEqual(b.keep.map((k) => k.item.id))
  })

  it('local hours: the hour a clock change repeats counts twice, so hourly=N spans N real hours', () => {
    const saved = process.env.TZ
    process.env.TZ = 'Europe/Berlin'
    try {
      // 2025-10-26 in Berlin: 02:10 CEST (00:10Z) and 02:10 CET (01:10Z) are two hours
      const times = ['2025-10-25T22:10:00Z', '2025-10-25T23:10:00Z', '2025-10-26T00:10:00Z', '2025-10-26T01:10:00Z', '2025-10-26T02:10:00Z', '2025-10-26T03:10:00Z']
      const items = times.map((t, i) => ({id: `h${i}`, time: Date.parse(t)}))
      expect(applyRetention(items, {hourly: 10}).remove).toEqual([])
      // and daily still sees one day
      expect(applyRetention(items, {daily: 1}).keep.map((k) => k.item.id)).toEqual(['h5'])
    } finally {
      if (saved === undefined) delete process.env.TZ
      else process.env.TZ = saved
    }
  })
})
