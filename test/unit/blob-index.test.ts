/**
 * The compact blob index against a plain Map as the model: the same answers for every id,
 * through growth, replacement and ids it never saw.
 */
import {createHash} from 'node:crypto'
import {describe, expect, it} from 'vitest'
import {BlobIndex, type BlobLocation} from '../../src/repo/blob-index.js'

const idOf = (i: number): string => createHash('sha256').update(`blob ${i}`).digest('hex')

describe('BlobIndex', () => {
  it('answers like a Map across segments, table doublings, replacements and misses', () => {
    const index = new BlobIndex()
    const model = new Map<string, BlobLocation>()
    // past two segments of 65,536 entries and several table doublings
    const N = 140_000
    for (let i = 0; i < N; i++) {
      const loc: BlobLocation = {pack: idOf(-1 - (i % 97)), type: i % 5 === 0 ? 'tree' : 'data', offset: i * 13, length: (i * 7) % 5_000_000, raw: 4 * 1024 * 1024 - i}
      index.set(idOf(i), loc)
      model.set(idOf(i), loc)
      // some are moved (a repack): the later location wins
      if (i % 1000 === 999) {
        const moved = {...loc, pack: idOf(-500), offset: 0xffffffff}
        index.set(idOf(i - 500), moved)
        model.set(idOf(i - 500), moved)
      }
    }
    expect(index.size).toBe(model.size)
    for (const [id, loc] of model) expect(index.get(id)).toEqual(loc)
    for (let i = N; i < N + 5000; i++) {
      expect(index.has(idOf(i))).toBe(false)
      expect(index.get(idOf(i))).toBeUndefined()
    }
    const listed = new Map(index.entries())
    expect(listed).toEqual(model)
  })

  it('never finds what is not a lowercase 64-digit hex id, and refuses to store it', () => {
    const index = new BlobIndex()
    const id = idOf(1)
    index.set(id, {pack: idOf(2), type: 'data', offset: 0, length: 10, raw: 10})
    for (const bad of ['', id.slice(0, 63), `${id}0`, id.toUpperCase(), `${id.slice(0, 62)}zz`, '../../etc/passwd']) {
      expect(index.has(bad)).toBe(false)
      expect(index.get(bad)).toBeUndefined()
      expect(() => index.set(bad, {pack: idOf(2), type: 'data', offset: 0, length: 1, raw: 1})).toThrow(/not a blob id/)
    }
    expect(() => index.set(idOf(3), {pack: idOf(2), type: 'data', offset: 2 ** 32, length: 1, raw: 1})).toThrow(/out of range/)
    expect(index.size).toBe(1)
  })

  it('addValid leaves out what cannot be real instead of throwing, and otherwise adds like addIfAbsent', () => {
    const index = new BlobIndex()
    const loc: BlobLocation = {pack: idOf(2), type: 'data', offset: 0, length: 10, raw: 10}
    expect(index.addValid(idOf(1), loc)).toBe(true)
    expect(index.addValid(idOf(1), {...loc, offset: 5})).toBe(false)
    expect(index.get(idOf(1))).toEqual(loc)
    for (const [id, bad] of [
      [idOf(3).toUpperCase(), loc],
      ['', loc],
      [idOf(4), {...loc, offset: -1}],
      [idOf(5), {...loc, raw: 2 ** 32}],
      [idOf(6), {...loc, length: 1.5}],
      [idOf(7), {...loc, type: 'other' as BlobLocation['type']}],
    ] as [string, BlobLocation][]) {
      expect(index.addValid(id, bad)).toBe('invalid')
      expect(index.has(id)).toBe(false)
    }
    expect(index.size).toBe(1)
  })
})
