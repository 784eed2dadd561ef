import { isIP, isIPv4, isIPv6 } from 'node:net'
import { InvalidArgumentError } from '../core/index.js'
import { hostNumber } from './addressing.js'
import { isWireguardKey } from './wireguard-keys.js'

// The pure half of the WireGuard mesh: overlay addresses, interface names, peer validation and
// the diff from the peers applied to the peers wanted, as `wg set` arguments and routes. No I/O.
//
// Overlay layout. Hosts get addresses in the 6PN shape of one reserved network number,
// 0xffff0000, that the API never hands to an org (orgs are numbered 1, 2, 3…):
//
//   fdaa : ffff:0000 : <host 32 bits> : 0000:0000 : 0000:0001        e.g. fdaa:ffff:0:a7b:7d::1
//          network     host (hostNumber)  machine     the host itself
//
// The host part is `hostNumber(hostId)`, the same 32 bits the host's Machines carry in their
// 6PN addresses (reference §3.4: fdaa | network | host | machine | 16 free), so a host's overlay
// address and its Machines' prefixes name the same host. Every host's interface gets its address
// as a /128 and one route for the whole mesh, fdaa:ffff:0::/48 (like a Fly WireGuard peer's
// route to its org's /48, reference §3.4); WireGuard's cryptokey routing then picks the peer.
//
// Machines' cross-host traffic. A host's Machines live in `fdaa:<network>:<host>::/80` for each
// org network that has a Machine there; across networks that is not one prefix (the network
// bits come first). So a peer's `allowedIps` lists, besides its overlay /128, the per-network
// /80s of the networks that currently have Machines on it (`hostSixpnPrefix`); the caller (the
// host, from the catalog's machines table) adds them as they appear, and the mesh routes each
// such prefix to the interface. Org isolation stays the job of nftables on the host (DESIGN
// "Network"), not of WireGuard.

export const HOST_OVERLAY_NETWORK = 0xffff0000
export const MESH_PREFIX = 'fdaa:ffff:0::/48'
export const DEFAULT_LISTEN_PORT = 51820
/** Off by default. Setting a persistent keepalive makes wireguard-go start a handshake at once;
 * when two hosts add each other within one round trip, both initiate, each answers the other's
 * initiation and drops the answer to its own, and the tunnel waits for the 5 s rekey timeout
 * (measured here through a 25 ms relay: 5.3 s instead of 0.1 s). Hosts in a datacenter need no
 * NAT keepalive; handshakes then start on the first packet. Hosts behind NAT set 25. */
export const DEFAULT_PERSISTENT_KEEPALIVE_SECONDS = 0

/** A host as its peers see it. */
export interface MeshPeer {
  hostId: string
  publicKey: string
  /** 'ip:port' or '[ipv6]:port'. Without one the peer must reach us first (WireGuard roaming). */
  endpoint?: string
  overlayAddress: string
  /** Prefixes routed to this peer besides its overlay /128, e.g. its Machines' per-network /80s. */
  allowedIps?: string[]
}

/** What is applied to the device for one peer: the normalised form of a MeshPeer. */
export interface AppliedPeer {
  hostId: string
  publicKey: string
  endpoint?: string
  /** Normalised CIDRs, overlay /128 first, then sorted. */
  allowedIps: string[]
  persistentKeepaliveSeconds: number
}

export interface PeerPlan {
  /** Arguments after `wg set <interface>`; empty when nothing changes. */
  wgArgs: string[]
  /** CIDRs outside the mesh prefix to route to the interface (`ip route replace … dev <if>`). */
  routesToAdd: string[]
  routesToRemove: string[]
  added: string[]
  updated: string[]
  removed: string[]
  /** The applied state after the plan runs, keyed by public key. */
  next: Map<string, AppliedPeer>
}

// ── addresses ────────────────────────────────────────────────────────────────────────────────

const hex16 = (n: number) => (n & 0xffff).toString(16)

/** The host's overlay address: fdaa:ffff:0:<host hi>:<host lo>::1. */
export function overlayAddressFor(hostId: string): string {
  const host = hostNumber(hostId)
  return formatIpv6(parseIpv6(`fdaa:${hex16(HOST_OVERLAY_NETWORK >>> 16)}:${hex16(HOST_OVERLAY_NETWORK)}:${hex16(host >>> 16)}:${hex16(host)}::1`))
}

/** `hgwg` + the host number in 8 hex digits: 12 characters (Linux allows 15). Unique per host
 * because wireguard-go's UAPI socket, /var/run/wireguard/<name>.sock, is not per network
 * namespace (host-facts §4: two `wg0`s collide). */
export function wireguardInterfaceName(hostId: string): string {
  return `hgwg${hostNumber(hostId).toString(16).padStart(8, '0')}`
}

/** The /80 that holds every Machine of org network `network` on host `host`
 * (reference §3.4: fdaa | network 32 | host 32 | machine 32 | 16). */
export function hostSixpnPrefix(network: number, host: number): string {
  const text = `fdaa:${hex16(network >>> 16)}:${hex16(network)}:${hex16(host >>> 16)}:${hex16(host)}::`
  return `${formatIpv6(parseIpv6(text))}/80`
}

// ── IP text ──────────────────────────────────────────────────────────────────────────────────

export interface IpPrefix {
  family: 4 | 6
  /** The network address, host bits cleared. */
  address: bigint
  prefix: number
}

export function parseIpv6(text: string): bigint {
  if (!isIPv6(text)) throw new InvalidArgumentError(`"${text}" is not an IPv6 address`)
  let head = text
  let tailV4: number[] = []
  const lastColon = text.lastIndexOf(':')
  if (text.slice(lastColon + 1).includes('.')) {
    tailV4 = text.slice(lastColon + 1).split('.').map(Number)
    head = text.slice(0, lastColon + 1) + '0:0'
  }
  const [left, right] = head.includes('::') ? head.split('::') as [string, string] : [head, undefined]
  const leftGroups = left ? left.split(':') : []
  const rightGroups = right !== undefined && right !== '' ? right.split(':') : []
  const missing = 8 - leftGroups.length - rightGroups.length
  const groups = right === undefined ? leftGroups : [...leftGroups, ...Array<string>(missing).fill('0'), ...rightGroups]
  let value = 0n
  for (const group of groups) value = (value << 16n) | BigInt(parseInt(group, 16))
  if (tailV4.length === 4) value = (value & ~0xffffffffn) | BigInt(((tailV4[0]! << 24) | (tailV4[1]! << 16) | (tailV4[2]! << 8) | tailV4[3]!) >>> 0)
  return value
}

/** RFC 5952 text: lower case, no leading zeros, the longest run (≥2) of zero groups as `::`. */
export function formatIpv6(value: bigint): string {
  const groups: number[] = []
  for (let i = 7; i >= 0; i--) groups.push(Number((value >> BigInt(i * 16)) & 0xffffn))
  let bestStart = -1
  let bestLength = 0
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) { i++; continue }
    let j = i
    while (j < 8 && groups[j] === 0) j++
    if (j - i > bestLength && j - i >= 2) { bestStart = i; bestLength = j - i }
    i = j
  }
  const hex = groups.map((g) => g.toString(16))
  if (bestStart < 0) return hex.join(':')
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLength).join(':')}`
}

function parseIpv4(text: string): bigint {
  if (!isIPv4(text)) throw new InvalidArgumentError(`"${text}" is not an IPv4 address`)
  return BigInt(text.split('.').reduce((n, octet) => ((n << 8) | Number(octet)) >>> 0, 0))
}

function formatIpv4(value: bigint): string {
  const n = Number(value)
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.')
}

/** Parses 'addr/prefix' (or a bare address as a host prefix); clears host bits. */
export function parseIpPrefix(text: string): IpPrefix {
  if (typeof text !== 'string') throw new InvalidArgumentError(`${JSON.stringify(text)} is not a CIDR like fdaa:0:1::/48 or 10.0.0.0/8`)
  const slash = text.indexOf('/')
  const addressText = slash < 0 ? text : text.slice(0, slash)
  const family = isIP(addressText)
  if (family !== 4 && family !== 6) throw new InvalidArgumentError(`"${text}" is not a CIDR like fdaa:0:1::/48 or 10.0.0.0/8`)
  const bits = family === 4 ? 32 : 128
  const prefixText = slash < 0 ? String(bits) : text.slice(slash + 1)
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > bits) throw new InvalidArgumentError(`"${text}": the prefix length must be 0–${bits}`)
  const prefix = Number(prefixText)
  const raw = family === 4 ? parseIpv4(addressText) : parseIpv6(addressText)
  const mask = prefix === 0 ? 0n : ((1n << BigInt(prefix)) - 1n) << BigInt(bits - prefix)
  return { family, address: raw & mask, prefix }
}

export function formatIpPrefix(cidr: IpPrefix): string {
  return `${cidr.family === 4 ? formatIpv4(cidr.address) : formatIpv6(cidr.address)}/${cidr.prefix}`
}

export function normaliseIpPrefix(text: string): string {
  return formatIpPrefix(parseIpPrefix(text))
}

/** True when `inner` lies inside `outer` (same family, at least as long a prefix). */
export function ipPrefixContains(outer: IpPrefix, inner: IpPrefix): boolean {
  if (outer.family !== inner.family || inner.prefix < outer.prefix) return false
  const bits = outer.family === 4 ? 32 : 128
  const shift = BigInt(bits - outer.prefix)
  return outer.prefix === 0 || (outer.address >> shift) === (inner.address >> shift)
}

/** Validates 'ip:port' / '[ipv6]:port' and returns it in wg's form. */
export function normaliseEndpoint(endpoint: string): string {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(endpoint)
  const host = match?.[1] ?? match?.[2]
  const port = Number(match?.[3])
  if (!match || !host || isIP(host) === 0 || (match[1] !== undefined && !isIPv6(host)) || port < 1 || port > 65535) {
    throw new InvalidArgumentError(`endpoint "${endpoint}" is not 'ip:port' or '[ipv6]:port' with a port 1–65535`)
  }
  return isIPv6(host) ? `[${formatIpv6(parseIpv6(host))}]:${port}` : `${host}:${port}`
}

// ── peers ────────────────────────────────────────────────────────────────────────────────────

const MESH = parseIpPrefix(MESH_PREFIX)

/** Checks a whole peer set and normalises it. Throws InvalidArgumentError naming the peer and
 * the field: a silently accepted mistake here would misroute traffic between hosts. */
export function normalisePeers(peers: readonly MeshPeer[], self: { publicKey: string; overlayAddress: string }, persistentKeepaliveSeconds: number): Map<string, AppliedPeer> {
  if (!Array.isArray(peers)) throw new InvalidArgumentError('peers must be an array')
  const byKey = new Map<string, AppliedPeer>()
  const owner = new Map<string, string>()
  const hostIds = new Set<string>()
  owner.set(`${normaliseIpPrefix(self.overlayAddress)}`, '(this host)')
  for (const [index, peer] of peers.entries()) {
    const where = `peer ${index}${typeof peer?.hostId === 'string' ? ` (host ${peer.hostId})` : ''}`
    if (!peer || typeof peer !== 'object') throw new InvalidArgumentError(`${where}: not an object`)
    if (typeof peer.hostId !== 'string' || peer.hostId === '') throw new InvalidArgumentError(`${where}: hostId must be a non-empty string`)
    if (hostIds.has(peer.hostId)) throw new InvalidArgumentError(`${where}: host ${peer.hostId} is listed twice`)
    hostIds.add(peer.hostId)
    if (!isWireguardKey(peer.publicKey)) throw new InvalidArgumentError(`${where}: publicKey must be a WireGuard key (32 bytes in base64)`)
    if (peer.publicKey === self.publicKey) throw new InvalidArgumentError(`${where}: publicKey is this host's own key`)
    if (byKey.has(peer.publicKey)) throw new InvalidArgumentError(`${where}: publicKey is also used by host ${byKey.get(peer.publicKey)!.hostId}`)
    const endpoint = peer.endpoint === undefined ? undefined : normaliseEndpoint(peer.endpoint)
    if (typeof peer.overlayAddress !== 'string' || !isIPv6(peer.overlayAddress)) throw new InvalidArgumentError(`${where}: overlayAddress must be an IPv6 address`)
    const overlay = parseIpPrefix(`${peer.overlayAddress}/128`)
    if (!ipPrefixContains(MESH, overlay)) throw new InvalidArgumentError(`${where}: overlayAddress ${peer.overlayAddress} is outside the mesh prefix ${MESH_PREFIX}`)
    if (peer.allowedIps !== undefined && !Array.isArray(peer.allowedIps)) throw new InvalidArgumentError(`${where}: allowedIps must be an array of CIDRs`)
    const extra = new Set<string>()
    for (const text of peer.allowedIps ?? []) {
      const cidr = parseIpPrefix(text)
      // Another host's overlay addresses belong to that host alone; a wider prefix inside the
      // mesh would steal them from their owners.
      if (ipPrefixContains(MESH, cidr) && formatIpPrefix(cidr) !== formatIpPrefix(overlay)) throw new InvalidArgumentError(`${where}: allowed IP ${text} lies in the mesh prefix ${MESH_PREFIX}; only the peer's own overlay address may`)
      if (ipPrefixContains(cidr, MESH) ) throw new InvalidArgumentError(`${where}: allowed IP ${text} covers the whole mesh prefix ${MESH_PREFIX}`)
      extra.add(formatIpPrefix(cidr))
    }
    const overlayText = formatIpPrefix(overlay)
    extra.delete(overlayText)
    const allowedIps = [overlayText, ...[...extra].sort()]
    for (const cidr of allowedIps) {
      const previous = owner.get(cidr)
      // WireGuard gives an allowed IP to the last peer that names it, silently: refuse instead.
      if (previous) throw new InvalidArgumentError(`${where}: allowed IP ${cidr} is already routed to ${previous}`)
      owner.set(cidr, `host ${peer.hostId}`)
    }
    byKey.set(peer.publicKey, { hostId: peer.hostId, publicKey: peer.publicKey, ...(endpoint ? { endpoint } : {}), allowedIps, persistentKeepaliveSeconds })
  }
  return byKey
}

function samePeer(a: AppliedPeer, b: AppliedPeer): boolean {
  return a.endpoint === b.endpoint && a.persistentKeepaliveSeconds === b.persistentKeepaliveSeconds && a.allowedIps.join(',') === b.allowedIps.join(',')
}

/** Routes the interface needs beyond the mesh prefix: every allowed IP outside it. */
export function routesFor(peers: Iterable<AppliedPeer>): Set<string> {
  const routes = new Set<string>()
  for (const peer of peers) for (const cidr of peer.allowedIps) if (!ipPrefixContains(MESH, parseIpPrefix(cidr))) routes.add(cidr)
  return routes
}

/** The diff from `applied` to `wanted` as one `wg set` call and route changes. Applying the same
 * set twice yields an empty plan (setPeers is idempotent). */
export function planPeerChanges(applied: ReadonlyMap<string, AppliedPeer>, wanted: Map<string, AppliedPeer>): PeerPlan {
  const wgArgs: string[] = []
  const added: string[] = []
  const updated: string[] = []
  const removed: string[] = []
  for (const [key, peer] of applied) {
    if (wanted.has(key)) continue
    wgArgs.push('peer', key, 'remove')
    removed.push(peer.hostId)
  }
  for (const [key, peer] of wanted) {
    const before = applied.get(key)
    if (before && samePeer(before, peer)) continue
    ;(before ? updated : added).push(peer.hostId)
    // `allowed-ips` replaces the peer's list; `endpoint` is only set when known (roaming keeps
    // what the peer last used otherwise).
    wgArgs.push('peer', key, 'persistent-keepalive', String(peer.persistentKeepaliveSeconds), 'allowed-ips', peer.allowedIps.join(','))
    if (peer.endpoint) wgArgs.push('endpoint', peer.endpoint)
  }
  const routesBefore = routesFor(applied.values())
  const routesAfter = routesFor(wanted.values())
  return {
    wgArgs, added, updated, removed, next: wanted,
    routesToAdd: [...routesAfter].filter((r) => !routesBefore.has(r)).sort(),
    routesToRemove: [...routesBefore].filter((r) => !routesAfter.has(r)).sort(),
  }
}

// ── `wg show <if> dump` ──────────────────────────────────────────────────────────────────────

export interface PeerStatus {
  publicKey: string
  /** The endpoint WireGuard is using now (it roams to where the peer last spoke from). */
  endpoint?: string
  allowedIps: string[]
  /** When the last handshake completed; undefined if never. */
  latestHandshake?: Date
  rxBytes: number
  txBytes: number
  persistentKeepaliveSeconds?: number
}

/** Parses wg(8) `show <interface> dump`: a line for the interface, then one per peer, tab
 * separated: public-key preshared-key endpoint allowed-ips latest-handshake rx tx keepalive. */
export function parseWgDump(text: string): { listenPort: number; publicKey: string; peers: PeerStatus[] } {
  const lines = text.split('\n').filter((line) => line.trim() !== '')
  const head = lines[0]?.split('\t') ?? []
  if (head.length < 3) throw new InvalidArgumentError(`unexpected wg dump header: ${JSON.stringify(lines[0] ?? '')}`)
  const peers = lines.slice(1).map((line): PeerStatus => {
    const [publicKey, , endpoint, allowed, handshake, rx, tx, keepalive] = line.split('\t')
    if (!publicKey || rx === undefined || tx === undefined) throw new InvalidArgumentError(`unexpected wg dump peer line: ${JSON.stringify(line)}`)
    const seconds = Number(handshake)
    return {
      publicKey,
      ...(endpoint && endpoint !== '(none)' ? { endpoint } : {}),
      allowedIps: allowed && allowed !== '(none)' ? allowed.split(',') : [],
      ...(seconds > 0 ? { latestHandshake: new Date(seconds * 1000) } : {}),
      rxBytes: Number(rx),
      txBytes: Number(tx),
      ...(keepalive && keepalive !== 'off' ? { persistentKeepaliveSeconds: Number(keepalive) } : {}),
    }
  })
  return { publicKey: head[1]!, listenPort: Number(head[2]), peers }
}
