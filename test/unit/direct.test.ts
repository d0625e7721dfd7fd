/**
 * goDirect: the auto/api/direct decision of snapshot's --reader and restore's --writer, over a
 * fake engine (what directAccess asks of it: the socket, `docker info`) and real directories;
 * as root, like the whole suite (directAccess is false for anyone else).
 */
import {mkdirSync, mkdtempSync, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {afterAll, describe, expect, it} from 'vitest'
import {bindDevice, directAccess, goDirect, volumeReadPath} from '../../src/docker/direct.js'
import type {Engine} from '../../src/docker/engine.js'

const root = mkdtempSync(path.join(os.tmpdir(), 'hs-direct-'))
const volume = path.join(root, 'volumes', 'v', '_data')
mkdirSync(volume, {recursive: true})
mkdirSync(path.join(root, 'containers', 'c1'), {recursive: true})
afterAll(() => rmSync(root, {recursive: true, force: true}))

/** an engine on this host (or not), with its root directory, counting `docker info` calls */
function fakeEngine(local: boolean, securityOptions: string[] = []): Engine & {infos: number} {
  const e = {
    infos: 0,
    host: local ? 'unix:///run/fake.sock' : 'tcp://elsewhere:2376',
    isLocalSocket: local,
    async info() {
      e.infos++
      return {DockerRootDir: root, SecurityOptions: securityOptions}
    },
  }
  return e as unknown as Engine & {infos: number}
}


describe('goDirect', () => {
  it('auto: direct where the engine is here, by its container or volume directory', async () => {
    expect(await goDirect(fakeEngine(true), 'auto', {containerId: 'c1'}, 'no')).toBe(true)
    expect(await goDirect(fakeEngine(true), 'auto', {mountpoint: volume}, 'no')).toBe(true)
    // a container this engine does not have here, a mountpoint outside its root: the API
    expect(await goDirect(fakeEngine(true), 'auto', {containerId: 'c2'}, 'no')).toBe(false)
    expect(await goDirect(fakeEngine(true), 'auto', {mountpoint: os.tmpdir()}, 'no')).toBe(false)
    // user namespace remapping shifts owners on disk: never direct
    expect(await directAccess(fakeEngine(true, ['name=userns']), {containerId: 'c1'})).toBe(false)
  })

  it('a remote engine: auto is the API; direct is a usage error with the caller\'s words', async () => {
    expect(await goDirect(fakeEngine(false), 'auto', {containerId: 'c1'}, 'no')).toBe(false)
    await expect(goDirect(fakeEngine(false), 'direct', {containerId: 'c1'}, '--reader direct needs root here')).rejects.toMatchObject({code: 'USAGE', message: '--reader direct needs root here'})
  })

  it('api never looks', async () => {
    const e = fakeEngine(true)
    let asked = false
    expect(
      await goDirect(e, 'api', {containerId: 'c1'}, 'no', async () => {
        asked = true
        return true
      }),
    ).toBe(false)
    expect(e.infos).toBe(0)
    expect(asked).toBe(false)
  })

  it("usable is asked only where the engine is here, and its no counts like directAccess's", async () => {
    let asked = 0
    const usable = (ok: boolean) => async () => {
      asked++
      return ok
    }
    expect(await goDirect(fakeEngine(false), 'auto', {containerId: 'c1'}, 'no', usable(true))).toBe(false)
    expect(asked).toBe(0)
    expect(await goDirect(fakeEngine(true), 'auto', {containerId: 'c1'}, 'no', usable(true))).toBe(true)
    expect(await goDirect(fakeEngine(true), 'auto', {containerId: 'c1'}, 'no', usable(false))).toBe(false)
    await expect(goDirect(fakeEngine(true), 'direct', {containerId: 'c1'}, 'not writable', usable(false))).rejects.toMatchObject({code: 'USAGE'})
    expect(asked).toBe(3)
  })
})

describe('volumeReadPath: where a direct read finds a volume\'s files', () => {
  const mp = '/var/lib/docker/volumes/v/_data'
  it('a local volume without a mount of its own: its Mountpoint (a quota alone is not a mount)', () => {
    expect(volumeReadPath({Driver: 'local', Mountpoint: mp, Options: null})).toBe(mp)
    expect(volumeReadPath({Driver: 'local', Mountpoint: mp, Options: {}})).toBe(mp)
    expect(volumeReadPath({Driver: 'local', Mountpoint: mp, Options: {size: '10G'}})).toBe(mp)
  })
  it("a bind of a host directory: the directory, which holds the files whether or not it is mounted", () => {
    expect(volumeReadPath({Driver: 'local', Mountpoint: mp, Options: {type: 'none', o: 'bind', device: '/srv/data'}})).toBe('/srv/data')
    expect(volumeReadPath({Driver: 'local', Mountpoint: mp, Options: {type: 'none', o: 'ro,rbind', device: '/srv/data'}})).toBe('/srv/data')
  })
  it('one the engine mounts otherwise, a relative bind, or another driver\'s: none (the API reads it)', () => {
    expect(volumeReadPath({Driver: 'local', Mountpoint: mp, Options: {type: 'nfs', o: 'addr=10.0.0.1,rw', device: ':/export'}})).toBeUndefined()
    expect(volumeReadPath({Driver: 'local', Mountpoint: mp, Options: {type: 'tmpfs', device: 'tmpfs'}})).toBeUndefined()
    expect(volumeReadPath({Driver: 'local', Mountpoint: mp, Options: {type: 'none', o: 'bind', device: 'data'}})).toBeUndefined()
    expect(volumeReadPath({Driver: 'local', Mountpoint: mp, Options: {type: 'none', o: 'binder', device: '/srv/data'}})).toBeUndefined()
    expect(volumeReadPath({Driver: 'rexray/ebs', Mountpoint: mp, Options: {}})).toBeUndefined()
  })
  it('bindDevice: only a local bind of an absolute path', () => {
    expect(bindDevice(undefined, {o: 'bind', device: '/srv/x'})).toBe('/srv/x')
    expect(bindDevice('local', {type: 'ext4', device: '/dev/sdb1'})).toBeUndefined()
    expect(bindDevice('other', {o: 'bind', device: '/srv/x'})).toBeUndefined()
    expect(bindDevice('local', null)).toBeUndefined()
  })
})
