/**
 * The user-defined networks of a container: what a snapshot records of them (the network's
 * own settings, and the container's fixed addresses and aliases on it), and the plan a restore
 * follows to have them on the target engine. Planning is pure (planNetworks): it looks at what
 * the target has and decides, before anything is changed, which networks to make, with which
 * settings, and what to refuse or warn about; the restore then acts on it.
 *
 * A network is made with its recorded settings where it is missing: an internal network stays
 * internal (a database cut off from the outside is not restored with a way out), a compose
 * network keeps its subnet and labels. Where it exists, it is used as it is; what differs from
 * the record that matters to the container is refused (its fixed address is outside the
 * network, or taken by another container) or warned about (internal or not).
 */
import type Docker from 'dockerode'
import {HolyshipError} from '../errors.js'
import type {NetworkRecord} from '../repo/format.js'

/** the engine's own networks: never made, never recorded with settings */
export const BUILTIN_NETWORKS = ['bridge', 'host', 'none', 'default']

type EndpointInspect = {Aliases?: string[] | null; IPAMConfig?: {IPv4Address?: string; IPv6Address?: string; LinkLocalIPs?: string[]} | null}

/** what a snapshot records of the container's endpoint `ep` on network `name` (`net`: that network's inspect, if any) */
export function networkRecord(containerId: string, name: string, ep: EndpointInspect, net?: Docker.NetworkInspectInfo): NetworkRecord {
  // the engine adds the short id itself (the new container's, on restore)
  const rec: NetworkRecord = {name, aliases: (ep.Aliases ?? []).filter((a) => !containerId.startsWith(a))}
  const ipam = ep.IPAMConfig ?? {}
  if (ipam.IPv4Address) rec.ipv4 = ipam.IPv4Address
  if (ipam.IPv6Address) rec.ipv6 = ipam.IPv6Address
  if (ipam.LinkLocalIPs?.length) rec.linkLocalIPs = [...ipam.LinkLocalIPs]
  if (net && !BUILTIN_NETWORKS.includes(name)) {
    rec.driver = net.Driver
    rec.labels = net.Labels ?? {}
    rec.internal = net.Internal === true
    rec.attachable = net.Attachable === true
    rec.enableIPv6 = net.EnableIPv6 === true
    if (net.Options && Object.keys(net.Options).length) rec.options = {...net.Options}
    if (net.IPAM) rec.ipam = {Driver: net.IPAM.Driver, Options: net.IPAM.Options ?? undefined, Config: (net.IPAM.Config ?? []).map((c) => ({...c}))}
  }
  return rec
}

/** the endpoint settings a restore gives the container on network `n`: its aliases and fixed addresses */
export function endpointConfig(n: NetworkRecord): Docker.EndpointSettings {
  const ipam: Record<string, unknown> = {}
  if (n.ipv4) ipam.IPv4Address = n.ipv4
  if (n.ipv6) ipam.IPv6Address = n.ipv6
  if (n.linkLocalIPs?.length) ipam.LinkLocalIPs = n.linkLocalIPs
  return {Aliases: n.aliases, ...(Object.keys(ipam).length ? {IPAMConfig: ipam} : {})} as Docker.EndpointSettings
}

/** a network to make: its settings, and (when the container has no fixed address on it) the same without the recorded subnets */
export interface NetworkToMake {
  name: string
  spec: Docker.NetworkCreateOptions
  /** made instead when `spec` is refused (its subnet overlaps one the target has): absent when a fixed address needs the subnet */
  anySubnet?: Docker.NetworkCreateOptions
}

export interface NetworkPlan {
  make: NetworkToMake[]
  warnings: string[]
}

/**
 * What a restore does about the container's networks on the target, decided before anything
 * is changed. `there`: the target's inspect of each recorded user-defined network (undefined
 * where it has none); `replacing`: the id of the container the restore replaces (--force),
 * whose addresses are free then. Throws TARGET_EXISTS when a fixed address cannot be had.
 */
export function planNetworks(container: string, networks: NetworkRecord[], there: Map<string, Docker.NetworkInspectInfo | undefined>, host: string, replacing?: string): NetworkPlan {
  const plan: NetworkPlan = {make: [], warnings: []}
  for (const n of networks) {
    if (BUILTIN_NETWORKS.includes(n.name)) continue
    const net = there.get(n.name)
    if (!net) {
      plan.make.push(toMake(n))
      continue
    }
    if (n.internal !== undefined && n.internal !== (net.Internal === true)) {
      plan.warnings.push(
        n.internal
          ? `network ${n.name} on ${host} is not internal, as it was where ${container} was snapshotted: the container can reach outside it now`
          : `network ${n.name} on ${host} is internal, as it was not where ${container} was snapshotted: the container cannot reach outside it now`,
      )
    }
    for (const ip of [n.ipv4, n.ipv6]) {
      if (!ip) continue
      const subnets = (net.IPAM?.Config ?? []).map((c) => c.Subnet).filter((s): s is string => typeof s === 'string')
      // the engine refuses a fixed address outside the network's subnets of its family
      if (!subnets.map((s) => inSubnet(ip, s)).includes(true)) {
        throw new HolyshipError('TARGET_EXISTS', `container ${container} has the fixed address ${ip} on network ${n.name}, which is outside that network's subnets on ${host} (${subnets.join(', ') || 'none set'})`, {
          hint: `remove network ${n.name} there (the restore makes it as it was), or give it a subnet that holds ${ip}`,
        })
      }
      for (const [id, c] of Object.entries(net.Containers ?? {})) {
        if (id === replacing) continue
        const has = [c.IPv4Address, c.IPv6Address].some((a) => typeof a === 'string' && sameAddress(a.split('/')[0], ip))
        if (has) {
          throw new HolyshipError('TARGET_EXISTS', `container ${container}'s fixed address ${ip} on network ${n.name} is taken by container ${c.Name} on ${host}`, {
            hint: `stop and remove ${c.Name}, or restore over it with --name ${c.Name} --force`,
          })
        }
      }
    }
  }
  return plan
}

function toMake(n: NetworkRecord): NetworkToMake {
  const base: Docker.NetworkCreateOptions = {
    Name: n.name,
    Driver: n.driver ?? 'bridge',
    Labels: n.labels ?? {},
    CheckDuplicate: true,
    ...(n.internal ? {Internal: true} : {}),
    ...(n.attachable ? {Attachable: true} : {}),
    ...(n.enableIPv6 ? {EnableIPv6: true} : {}),
    ...(n.options ? {Options: n.options} : {}),
  }
  const subnets = n.ipam?.Config ?? []
  if (!n.ipam || (subnets.length === 0 && !n.ipam.Options && (n.ipam.Driver ?? 'default') === 'default')) return {name: n.name, spec: base}
  const spec = {...base, IPAM: {Driver: n.ipam.Driver ?? 'default', ...(n.ipam.Options ? {Options: n.ipam.Options} : {}), Config: subnets}}
  const fixed = n.ipv4 !== undefined || n.ipv6 !== undefined
  return fixed ? {name: n.name, spec} : {name: n.name, spec, anySubnet: {...base, IPAM: {Driver: n.ipam.Driver ?? 'default', ...(n.ipam.Options ? {Options: n.ipam.Options} : {})}}}
}

/**
 * Whether address `ip` is in subnet `cidr` (IPv4 or IPv6, both written as the engine writes
 * them); undefined when either cannot be read, or they are of different families.
 */
export function inSubnet(ip: string, cidr: string): boolean | undefined {
  const [base, bitsText] = cidr.split('/')
  const a = addressBits(ip)
  const b = addressBits(base)
  if (!a || !b || a.length !== b.length || !/^\d{1,3}$/.test(bitsText ?? '')) return undefined
  const bits = Number(bitsText)
  if (bits > a.length) return undefined
  return a.slice(0, bits) === b.slice(0, bits)
}

/** the same address, however written (fd00:0::5 is fd00::5) */
export function sameAddress(a: string, b: string): boolean {
  const x = addressBits(a)
  return x !== undefined ? x === addressBits(b) : a === b
}

/** an IPv4 or IPv6 address as a string of 32 or 128 bits, undefined when it is not one */
function addressBits(ip: string): string | undefined {
  const v4 = (s: string): string | undefined => {
    const parts = s.split('.')
    if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) return undefined
    return parts.map((p) => Number(p).toString(2).padStart(8, '0')).join('')
  }
  if (!ip.includes(':')) return v4(ip)
  let head = ip
  let tail4 = ''
  const lastColon = ip.lastIndexOf(':')
  if (ip.slice(lastColon + 1).includes('.')) {
    const bits = v4(ip.slice(lastColon + 1))
    if (!bits) return undefined
    tail4 = bits
    head = `${ip.slice(0, lastColon + 1)}0:0`
  }
  const halves = head.split('::')
  if (halves.length > 2) return undefined
  const groups = (s: string): string[] => (s === '' ? [] : s.split(':'))
  const left = groups(halves[0])
  const right = halves.length === 2 ? groups(halves[1]) : []
  const missing = 8 - left.length - right.length
  if (missing < 0 || (halves.length === 1 && missing !== 0)) return undefined
  const all = [...left, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...right]
  if (all.some((g) => !/^[0-9a-fA-F]{1,4}$/.test(g))) return undefined
  const bits = all.map((g) => parseInt(g, 16).toString(2).padStart(16, '0')).join('')
  return tail4 ? bits.slice(0, 96) + tail4 : bits
}
