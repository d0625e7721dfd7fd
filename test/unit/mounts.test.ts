/** keptMountOptions: what of a mount's declared options a restore declares again; the path helpers mounts are compared with */
import {describe, expect, it} from 'vitest'
import {cleanPath, keptMountOptions, overlaps} from '../../src/services/mounts.js'

describe('keptMountOptions', () => {
  it('keeps propagation and SELinux labels of -v specs, not ro/rw/nocopy nor another mount\'s', () => {
    const hc = {Binds: ['/srv/a:/a:ro,rshared,Z', '/srv/b:/b', 'data:/data:z,nocopy', '/srv/c:/c/:rslave', '/x:/other:shared']}
    expect(keptMountOptions(hc, '/a')).toEqual(['rshared', 'Z'])
    expect(keptMountOptions(hc, '/b')).toEqual([])
    expect(keptMountOptions(hc, '/data')).toEqual(['z'])
    expect(keptMountOptions(hc, '/c')).toEqual(['rslave'])
    expect(keptMountOptions(hc, '/nowhere')).toEqual([])
  })
  it('keeps the propagation of a --mount bind', () => {
    const hc = {Mounts: [{Type: 'bind', Source: '/srv/m', Target: '/m', BindOptions: {Propagation: 'rslave'}}, {Type: 'bind', Source: '/srv/n', Target: '/n'}, {Type: 'volume', Target: '/v'}]}
    expect(keptMountOptions(hc, '/m')).toEqual(['rslave'])
    expect(keptMountOptions(hc, '/n')).toEqual([])
    expect(keptMountOptions(hc, '/v')).toEqual([])
  })
  it('ignores what a hostile or odd HostConfig holds there', () => {
    expect(keptMountOptions({Binds: 'x', Mounts: {}}, '/a')).toEqual([])
    expect(keptMountOptions({Binds: [1, null, '/a:/a:rshared:extra'], Mounts: [null, {Type: 'bind', Target: '/a', BindOptions: {Propagation: 'rshared;rm -rf'}}]}, '/a')).toEqual([])
    expect(keptMountOptions({}, '/a')).toEqual([])
  })
})

describe('cleanPath and overlaps', () => {
  it('compare absolute paths as mounts are compared', () => {
    expect(cleanPath('/srv//pg/./data/')).toBe('/srv/pg/data')
    expect(cleanPath('/')).toBe('/')
    expect(overlaps('/srv/app', '/srv/app')).toBe(true)
    expect(overlaps('/srv/app', '/srv/app/uploads')).toBe(true)
    expect(overlaps('/srv/app/uploads', '/srv/app')).toBe(true)
    expect(overlaps('/srv/app', '/srv/apple')).toBe(false)
    expect(overlaps('/', '/srv')).toBe(true)
  })
})
