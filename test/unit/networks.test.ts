import type Docker from 'dockerode'
import {describe, expect, it} from 'vitest'
import {HolyshipError} from '../../src/errors.js'
import type {NetworkRecord} from '../../src/repo/format.js'
import {endpointConfig, inSubnet, networkRecord, planNetworks} from '../../src/services/networks.js'

const inspect = (over: Partial<Docker.NetworkInspectInfo>): Docker.NetworkInspectInfo =>
  ({Name: 'n', Id: 'x', Created: '', Scope: 'local', Driver: 'bridge', EnableIPv6: false, Internal: false, Attachable: false, Ingress: false, ConfigOnly: false, ...over}) as Docker.NetworkInspectInfo

describe('inSubnet', () => {
  it('IPv4', () => {
    expect(inSubnet('172.30.7.50', '172.30.7.0/24')).toBe(true)
    expect(inSubnet('172.30.8.50', '172.30.7.0/24')).toBe(false)
    expect(inSubnet('10.1.2.3', '0.0.0.0/0')).toBe(true)
    expect(inSubnet('10.1.2.3', '10.1.2.3/32')).toBe(true)
    expect(inSubnet('10.1.2.4', '10.1.2.3/32')).toBe(false)
    expect(inSubnet('172.16.0.1', '172.16.0.0/12')).toBe(true)
    expect(inSubnet('172.32.0.1', '172.16.0.0/12')).toBe(false)
  })
  it('IPv6, with :: and an IPv4 tail', () => {
    expect(inSubnet('fd00:1::5', 'fd00:1::/64')).toBe(true)
    expect(inSubnet('fd00:2::5', 'fd00:1::/64')).toBe(false)
    expect(inSubnet('::ffff:10.0.0.1', '::ffff:0:0/96')).toBe(true)
    expect(inSubnet('2001:db8:0:0:0:0:0:1', '2001:db8::/32')).toBe(true)
  })
  it('undefined for other families and what is not an address', () => {
    expect(inSubnet('fd00::1', '10.0.0.0/8')).toBeUndefined()
    expect(inSubnet('10.0.0.256', '10.0.0.0/8')).toBeUndefined()
    expect(inSubnet('10.0.0.1', '10.0.0.0/33')).toBeUndefined()
    expect(inSubnet('1::2::3', 'fd00::/8')).toBeUndefined()
    expect(inSubnet('1:2:3', 'fd00::/8')).toBeUndefined()
    expect(inSubnet('10.0.0.1', '10.0.0.0')).toBeUndefined()
    expect(inSubnet('10.0.0.1', '10.0.0.0/')).toBeUndefined()
    expect(inSubnet('10.0.0.1', '10.0.0.0/-1')).toBeUndefined()
  })
})

describe('networkRecord and endpointConfig', () => {
  it("records a user-defined network's settings and the container's fixed addresses, and gives them back", () => {
    const net = inspect({Internal: true, Options: {'com.docker.network.bridge.name': 'br9'}, Labels: {a: 'b'}, IPAM: {Driver: 'default', Config: [{Subnet: '172.30.7.0/24', Gateway: '172.30.7.1'}]}})
    const rec = networkRecord('0123456789abcdef', 'front', {Aliases: ['web', '0123456789ab'], IPAMConfig: {IPv4Address: '172.30.7.50', LinkLocalIPs: []}}, net)
    expect(rec).toEqual({
      name: 'front',
      aliases: ['web'],
      ipv4: '172.30.7.50',
      driver: 'bridge',
      labels: {a: 'b'},
      internal: true,
      attachable: false,
      enableIPv6: false,
      options: {'com.docker.network.bridge.name': 'br9'},
      ipam: {Driver: 'default', Options: undefined, Config: [{Subnet: '172.30.7.0/24', Gateway: '172.30.7.1'}]},
    })
    expect(endpointConfig(rec)).toEqual({Aliases: ['web'], IPAMConfig: {IPv4Address: '172.30.7.50'}})
    // the default bridge: no settings of its own, no fixed address
    expect(networkRecord('0123456789abcdef', 'bridge', {Aliases: null, IPAMConfig: null})).toEqual({name: 'bridge', aliases: []})
    expect(endpointConfig({name: 'bridge', aliases: []})).toEqual({Aliases: []})
  })
})

describe('planNetworks', () => {
  const front: NetworkRecord = {name: 'front', aliases: [], driver: 'bridge', labels: {}, internal: false, ipam: {Driver: 'default', Config: [{Subnet: '172.30.7.0/24'}]}, ipv4: '172.30.7.50'}
  const dyn: NetworkRecord = {name: 'dyn', aliases: [], driver: 'bridge', labels: {}, internal: true, ipam: {Driver: 'default', Config: [{Subnet: '172.30.9.0/24'}]}}
  const refused = (f: () => unknown): HolyshipError => {
    try {
      f()
    } catch (e) {
      return e as HolyshipError
    }
    throw new Error('not refused')
  }

  it('makes what is missing with its settings; a subnet only a fixed address needs has no fallback', () => {
    const plan = planNetworks('app', [{name: 'bridge', aliases: []}, front, dyn, {name: 'old', aliases: ['x'], driver: 'bridge', labels: {}}], new Map(), 'B')
    expect(plan.warnings).toEqual([])
    expect(plan.make.map((m) => m.name)).toEqual(['front', 'dyn', 'old'])
    expect(plan.make[0]).toEqual({name: 'front', spec: {Name: 'front', Driver: 'bridge', Labels: {}, CheckDuplicate: true, IPAM: {Driver: 'default', Config: [{Subnet: '172.30.7.0/24'}]}}})
    expect(plan.make[1].spec.Internal).toBe(true)
    expect(plan.make[1].anySubnet).toEqual({Name: 'dyn', Driver: 'bridge', Labels: {}, CheckDuplicate: true, Internal: true, IPAM: {Driver: 'default'}})
    // a snapshot from before networks were recorded whole: the engine's defaults
    expect(plan.make[2]).toEqual({name: 'old', spec: {Name: 'old', Driver: 'bridge', Labels: {}, CheckDuplicate: true}})
  })

  it('uses what is there; refuses a fixed address outside its subnets or taken by another container, not by the one replaced', () => {
    const there = (over: Partial<Docker.NetworkInspectInfo>) => new Map([['front', inspect({IPAM: {Config: [{Subnet: '172.30.7.0/24'}]}, ...over})]])
    expect(planNetworks('app', [front], there({}), 'B')).toEqual({make: [], warnings: []})
    expect(refused(() => planNetworks('app', [front], there({IPAM: {Config: [{Subnet: '10.0.0.0/24'}, {Subnet: 'fd00::/64'}]}}), 'B')).message).toBe(
      "container app has the fixed address 172.30.7.50 on network front, which is outside that network's subnets on B (10.0.0.0/24, fd00::/64)",
    )
    const held = {Containers: {c1: {Name: 'other', EndpointID: '', MacAddress: '', IPv4Address: '172.30.7.50/24', IPv6Address: ''}}}
    const e = refused(() => planNetworks('app', [front], there(held), 'B'))
    expect(e.code).toBe('TARGET_EXISTS')
    expect(e.message).toBe("container app's fixed address 172.30.7.50 on network front is taken by container other on B")
    expect(planNetworks('app', [front], there(held), 'B', 'c1').make).toEqual([])
    // an IPv6 address however the engine writes it
    const v6 = {...front, ipv4: undefined, ipv6: 'fd00::5'}
    const held6 = {IPAM: {Config: [{Subnet: 'fd00::/64'}]}, Containers: {c1: {Name: 'other', EndpointID: '', MacAddress: '', IPv4Address: '', IPv6Address: 'fd00:0:0::5/64'}}}
    expect(refused(() => planNetworks('app', [v6], there(held6), 'B')).message).toBe("container app's fixed address fd00::5 on network front is taken by container other on B")
  })

  it('warns when a network there is internal where the snapshot\'s was not, or the other way', () => {
    const p = planNetworks('app', [dyn, {...front, ipv4: undefined, internal: false}], new Map([['dyn', inspect({})], ['front', inspect({Internal: true})]]), 'B')
    expect(p.warnings).toEqual([
      'network dyn on B is not internal, as it was where app was snapshotted: the container can reach outside it now',
      'network front on B is internal, as it was not where app was snapshotted: the container cannot reach outside it now',
    ])
  })
})
