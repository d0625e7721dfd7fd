/**
 * A container on user-defined networks, as compose makes them: a network with its own subnet,
 * driver options and labels, an internal one (a database cut off from the outside), fixed
 * addresses (`--ip`, compose's ipv4_address) and aliases. Restored on another host, the
 * networks are made as they were and the container has its addresses again; where the
 * target has the networks already, they are used as they are, and what cannot work is
 * refused before anything is changed.
 */
import {mkdtempSync, rmSync} from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import type Docker from 'dockerode'
import {afterAll, beforeAll, describe, expect, inject, it} from 'vitest'
import {holyship} from '../harness/cli.js'
import {connectEngine, imageIds, removeImagesSince} from '../harness/engine.js'

describe('user-defined networks', () => {
  const infoA = inject('holyshipEngineA')
  const infoB = inject('holyshipEngineB')
  const a = connectEngine(infoA).docker
  const b = connectEngine(infoB).docker
  const image = inject('holyshipBusyboxImage')
  const p = `nets-${process.pid}`
  const app = `${p}-app`
  const net = `${p}-front`
  const internal = `${p}-db`
  let work: string
  let env: Record<string, string>
  const onB = (): Record<string, string> => ({...env, DOCKER_HOST: infoB.dockerHost})

  const addresses = async (d: Docker, name: string): Promise<Record<string, {ip: string; aliases: string[]}>> => {
    const info = await d.getContainer(name).inspect()
    return Object.fromEntries(Object.entries(info.NetworkSettings.Networks).map(([n, ep]) => [n, {ip: ep.IPAddress, aliases: (ep.Aliases ?? []).filter((x: string) => !/^[0-9a-f]{12}$/.test(x))}]))
  }
  const settings = async (d: Docker, name: string): Promise<unknown> => {
    const n = await d.getNetwork(name).inspect()
    return {subnets: n.IPAM?.Config?.map((c: {Subnet?: string; Gateway?: string}) => [c.Subnet, c.Gateway]), internal: n.Internal, options: n.Options, labels: n.Labels}
  }

  let imagesOfB: Set<string>

  beforeAll(async () => {
    imagesOfB = await imageIds(b)
    work = mkdtempSync(path.join(os.tmpdir(), 'hs-nets-'))
    env = {HOLYSHIP_REPO: path.join(work, 'repo'), HOLYSHIP_CATALOGUE: path.join(work, 'cat.sqlite3'), DOCKER_HOST: infoA.dockerHost}
    expect((await holyship(['init'], env)).code).toBe(0)
    await a.createNetwork({
      Name: net,
      IPAM: {Driver: 'default', Config: [{Subnet: '172.30.7.0/24', Gateway: '172.30.7.1'}]},
      Options: {'com.docker.network.bridge.name': 'hsfront0'},
      Labels: {'com.docker.compose.project': p, 'com.docker.compose.network': 'front'},
    })
    await a.createNetwork({Name: internal, Internal: true, IPAM: {Config: [{Subnet: '172.30.8.0/24'}]}})
    const c = await a.createContainer({
      name: app,
      Image: image,
      Cmd: ['sleep', '100000'],
      // PID 1 ignores SIGTERM: a restore --force stops it before replacing it, waiting this long
      StopTimeout: 1,
      HostConfig: {NetworkMode: net},
      NetworkingConfig: {EndpointsConfig: {[net]: {IPAMConfig: {IPv4Address: '172.30.7.50'}, Aliases: ['web']}}},
    } as Docker.ContainerCreateOptions)
    await a.getNetwork(internal).connect({Container: c.id, EndpointConfig: {IPAMConfig: {IPv4Address: '172.30.8.9'}, Aliases: ['db', 'pg']}})
    await c.start()
    const s = await holyship(['snapshot', app], env)
    expect(s.stderr).toBe('')
    expect(s.code).toBe(0)
  })

  afterAll(async () => {
    for (const d of [a, b]) {
      for (const n of [app, `${app}-copy`]) await d.getContainer(n).remove({force: true}).catch(() => {})
      for (const n of [net, internal, `${p}-taken`]) await d.getNetwork(n).remove().catch(() => {})
    }
    await removeImagesSince(b, imagesOfB)
    rmSync(work, {recursive: true, force: true})
  })

  it('on another host: the networks are made as they were, and the container has its addresses and aliases again', async () => {
    const r = await holyship(['restore', `latest:${app}`, '--start'], onB())
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    expect(await addresses(b, app)).toEqual({[net]: {ip: '172.30.7.50', aliases: ['web']}, [internal]: {ip: '172.30.8.9', aliases: ['db', 'pg']}})
    for (const n of [net, internal]) expect(await settings(b, n)).toEqual(await settings(a, n))
    expect((await b.getNetwork(internal).inspect()).Internal).toBe(true)
  })

  it("beside the original, whose address it would take: refused before anything is changed; over it (--force), its addresses are the restore's", async () => {
    const before = await a.getContainer(app).inspect()
    const r = await holyship(['restore', `latest:${app}`, '--name', `${app}-copy`], env)
    expect(r.code).toBe(25)
    expect(r.stderr).toMatch(new RegExp(`^holyship: error: container ${app}'s fixed address 172\\.30\\.8\\.9 on network ${internal} is taken by container ${app} on .*\\n$`))
    await expect(a.getContainer(`${app}-copy`).inspect()).rejects.toThrow(/no such container/i)
    expect((await a.getContainer(app).inspect()).State.Running).toBe(true)

    const forced = await holyship(['restore', `latest:${app}`, '--force', '--start'], env)
    expect(forced.stderr).toBe('')
    expect(forced.code).toBe(0)
    expect((await a.getContainer(app).inspect()).Id).not.toBe(before.Id)
    expect(await addresses(a, app)).toEqual({[net]: {ip: '172.30.7.50', aliases: ['web']}, [internal]: {ip: '172.30.8.9', aliases: ['db', 'pg']}})
  })

  it('where the networks are there with other settings: a fixed address outside them is refused, a network no longer internal is warned of', async () => {
    await b.getContainer(app).remove({force: true})
    for (const n of [net, internal]) await b.getNetwork(n).remove()
    // the target's own networks of these names: not internal, and on another subnet
    await b.createNetwork({Name: internal, IPAM: {Config: [{Subnet: '172.30.8.0/24'}]}})
    await b.createNetwork({Name: net, IPAM: {Config: [{Subnet: '10.77.0.0/24'}]}})
    const r = await holyship(['restore', `latest:${app}`], onB())
    expect(r.code).toBe(25)
    expect(r.stderr).toMatch(new RegExp(`^holyship: error: container ${app} has the fixed address 172\\.30\\.7\\.50 on network ${net}, which is outside that network's subnets on .* \\(10\\.77\\.0\\.0/24\\) \\(remove network ${net} there .*\\n$`))
    await expect(b.getContainer(app).inspect()).rejects.toThrow(/no such container/i)

    await b.getNetwork(net).remove()
    const again = await holyship(['restore', `latest:${app}`, '--start', '--json'], onB())
    expect(again.code).toBe(0)
    expect(again.stderr).toBe(`holyship: warning: network ${internal} on ${infoB.dockerHost} is not internal, as it was where ${app} was snapshotted: the container can reach outside it now\n`)
    expect(JSON.parse(again.stdout).warnings).toHaveLength(1)
    expect(await settings(b, net)).toEqual(await settings(a, net))
    expect((await addresses(b, app))[internal].ip).toBe('172.30.8.9')
  })

  it('a network there with a subnet the engine chose does not take a fixed address: refused before anything is changed', async () => {
    const auto = `${p}-auto`
    // the target's network of that name, on a subnet of the engine's choosing
    await b.createNetwork({Name: auto})
    const subnet = (await b.getNetwork(auto).inspect()).IPAM.Config[0].Subnet as string
    const ip = subnet.replace(/\.0\/\d+$/, '.77')
    await a.createNetwork({Name: auto, IPAM: {Config: [{Subnet: subnet}]}})
    const name = `${p}-fixed`
    try {
      const c = await a.createContainer({name, Image: image, Cmd: ['sleep', '100000'], StopTimeout: 1, HostConfig: {NetworkMode: auto}, NetworkingConfig: {EndpointsConfig: {[auto]: {IPAMConfig: {IPv4Address: ip}}}}} as Docker.ContainerCreateOptions)
      await c.start()
      expect((await holyship(['snapshot', name], env)).code).toBe(0)
      const r = await holyship(['restore', `latest:${name}`, '--start'], onB())
      expect(r.code).toBe(25)
      expect(r.stderr).toMatch(new RegExp(`^holyship: error: network ${auto} on .* does not take container ${name}'s fixed address ${ip.replace(/\./g, '\\.')}: .*user configured subnets.*\n$`))
      await expect(b.getContainer(name).inspect()).rejects.toThrow(/no such container/i)
      expect((await b.listContainers({all: true})).filter((x) => x.Labels?.['holyship.helper'] === 'true')).toEqual([])
    } finally {
      for (const d of [a, b]) {
        await d.getContainer(name).remove({force: true}).catch(() => {})
        await d.getNetwork(auto).remove().catch(() => {})
      }
    }
  })

  it("a network whose subnet overlaps one of the target's is made on another when no fixed address needs it, with a warning", async () => {
    const dyn = `${p}-dyn`
    await a.createNetwork({Name: dyn, IPAM: {Config: [{Subnet: '172.30.9.0/24'}]}})
    const c = await a.createContainer({name: `${p}-free`, Image: image, Cmd: ['sleep', '100000'], StopTimeout: 1, HostConfig: {NetworkMode: dyn}})
    await c.start()
    try {
      expect((await holyship(['snapshot', `${p}-free`], env)).code).toBe(0)
      await b.createNetwork({Name: `${p}-taken`, IPAM: {Config: [{Subnet: '172.30.9.0/24'}]}})
      const r = await holyship(['restore', `latest:${p}-free`, '--start'], onB())
      expect(r.code).toBe(0)
      expect(r.stderr).toMatch(new RegExp(`^holyship: warning: network ${dyn} was made on a subnet of .*'s choosing: its snapshot's \\(172\\.30\\.9\\.0/24\\) overlaps a network there\\n$`))
      const made = await b.getNetwork(dyn).inspect()
      expect(made.IPAM.Config[0].Subnet).not.toBe('172.30.9.0/24')
      expect((await b.getContainer(`${p}-free`).inspect()).State.Running).toBe(true)
    } finally {
      for (const d of [a, b]) {
        await d.getContainer(`${p}-free`).remove({force: true}).catch(() => {})
        await d.getNetwork(dyn).remove().catch(() => {})
      }
    }
  })
})
