/**
 * A container that shares another's network (`--network container:X`, compose's
 * `network_mode: service:X`, a VPN sidecar): inspect shows it the other's hostname, and the id
 * of the other. Its snapshot names the other by name, so a restore joins whatever container
 * has that name then (here: one made anew, with a new id), and leaves out what the engine
 * refuses with such a network mode.
 */
import {mkdtempSync, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {afterAll, beforeAll, describe, expect, inject, it} from 'vitest'
import {holyship} from '../harness/cli.js'
import {connectEngine, dockerExec} from '../harness/engine.js'

describe('a container on another container\'s network', () => {
  const info = inject('holyshipEngineA')
  const docker = connectEngine(info).docker
  const image = inject('holyshipBusyboxImage')
  const p = `shnet-${process.pid}`
  let work: string
  let env: Record<string, string>

  const owner = async (): Promise<string> => {
    const c = await docker.createContainer({name: `${p}-vpn`, Image: image, Cmd: ['sleep', '100000'], Hostname: 'vpnbox', HostConfig: {ExtraHosts: ['db.internal:10.9.9.9']}})
    await c.start()
    return c.id
  }

  beforeAll(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-shnet-'))
    env = {HOLYSHIP_REPO: path.join(work, 'repo'), HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3'), DOCKER_HOST: info.dockerHost}
    expect((await holyship(['init'], env)).code).toBe(0)
    await owner()
    const side = await docker.createContainer({name: `${p}-app`, Image: image, Cmd: ['sh', '-c', 'echo state > /state; sleep 100000'], HostConfig: {NetworkMode: `container:${p}-vpn`}})
    await side.start()
  })

  afterAll(async () => {
    for (const c of [`${p}-app`, `${p}-app-copy`, `${p}-vpn`]) await docker.getContainer(c).remove({force: true}).catch(() => {})
    rmSync(work, {recursive: true, force: true})
  })

  it('restores into the network of the container that has the name now', async () => {
    const s = await holyship(['snapshot', `${p}-app`, '--json'], env)
    expect(s.stderr).toBe('')
    expect(s.code).toBe(0)
    // the network's owner made anew: another id
    await docker.getContainer(`${p}-vpn`).remove({force: true})
    const newOwner = await owner()
    const r = await holyship(['restore', `latest:${p}-app`, '--name', `${p}-app-copy`, '--start', '--json'], env)
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    const copy = await docker.getContainer(`${p}-app-copy`).inspect()
    expect(copy.HostConfig.NetworkMode).toBe(`container:${newOwner}`)
    // the owner's hostname and hosts, and the restored filesystem
    const e = await dockerExec(docker, copy.Id, ['sh', '-c', 'hostname; grep db.internal /etc/hosts; cat /state'])
    expect(e.stdout.split('\n').slice(0, 1)).toEqual(['vpnbox'])
    expect(e.stdout).toMatch(/10\.9\.9\.9\s+db\.internal/)
    expect(e.stdout.trim().split('\n').at(-1)).toBe('state')
  })

  it('without the network\'s owner, a restore is refused before anything is changed, --force or not', async () => {
    await docker.getContainer(`${p}-vpn`).remove({force: true})
    const before = await docker.getContainer(`${p}-app-copy`).inspect()
    const r = await holyship(['restore', `latest:${p}-app`, '--name', `${p}-app-copy`, '--force'], env)
    expect(r.code).toBe(22)
    expect(r.stderr).toMatch(new RegExp(`^holyship: error: container ${p}-app shares the network of container ${p}-vpn, which is not on .*\\(restore or start ${p}-vpn first\\)\\n$`))
    // the copy it would have replaced is still there, the same container
    expect((await docker.getContainer(`${p}-app-copy`).inspect()).Id).toBe(before.Id)
  })
})
