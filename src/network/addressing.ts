import { createHash } from 'node:crypto'

// reference §3.4: each Machine gets a /112 in its org's 6PN:
//   fdaa | network (32 bits) | host (32 bits) | machine (32 bits) | 16 free bits
// e.g. fdaa:0:18:a7b:7d:f066:b83b:2. The machine part is unrelated to the Machine ID; Hangar
// numbers Machines per host from the agent's database. The Machine's own address is `…::2`
// inside its /112 (as in Fly's example).

const hex16 = (n: number) => (n & 0xffff).toString(16)

export function sixpnPrefix(network: number, host: number, machine: number): string {
  return ['fdaa', hex16(network >>> 16), hex16(network), hex16(host >>> 16), hex16(host), hex16(machine >>> 16), hex16(machine)].join(':')
}

export function sixpnAddress(network: number, host: number, machine: number): string {
  return `${sixpnPrefix(network, host, machine)}:2`
}

/** The org-wide /48 that routes a whole 6PN network (reference §3.4: `fdaa:0:4::/48`). */
export function orgPrefix(network: number): string {
  return `fdaa:${hex16(network >>> 16)}:${hex16(network)}::/48`
}

/** A stable 32-bit host number derived from the host id. */
export function hostNumber(hostId: string): number {
  return createHash('sha256').update(hostId).digest().readUInt32BE(0)
}

export interface Ipv4Subnet { base: number; prefix: number }

export function parseCidr(cidr: string): Ipv4Subnet {
  const match = /^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)$/.exec(cidr)
  if (!match) throw new Error(`"${cidr}" is not an IPv4 CIDR like 172.19.0.0/20`)
  const octets = match.slice(1, 5).map(Number)
  const prefix = Number(match[5])
  if (octets.some((o) => o > 255) || prefix < 8 || prefix > 30) throw new Error(`"${cidr}" is not a usable IPv4 subnet (prefix 8–30)`)
  const base = ((octets[0]! << 24) | (octets[1]! << 16) | (octets[2]! << 8) | octets[3]!) >>> 0
  const mask = prefix === 0 ? 0 : (~0 << (32 - prefix)) >>> 0
  return { base: (base & mask) >>> 0, prefix }
}

export function formatIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.')
}

/** The bridge takes the subnet's first address; Machines take the following ones by ordinal. */
export function gatewayIpv4(subnet: Ipv4Subnet): string {
  return formatIpv4(subnet.base + 1)
}

export function machineIpv4(subnet: Ipv4Subnet, ordinal: number): string {
  const capacity = 2 ** (32 - subnet.prefix) - 3
  if (ordinal < 1 || ordinal > capacity) throw new Error(`no IPv4 address left in ${formatIpv4(subnet.base)}/${subnet.prefix} for Machine #${ordinal}`)
  return formatIpv4(subnet.base + 1 + ordinal)
}

export function ipv4Capacity(subnet: Ipv4Subnet): number {
  return 2 ** (32 - subnet.prefix) - 3
}

/** A default per-host private IPv4 subnet, a /20 inside 172.16.0.0/12 chosen by the host id,
 * so that two hosts sharing one network namespace (two `--data-dir`s) rarely collide; operators
 * set `--machine-subnet` to choose. */
export function defaultMachineSubnet(hostId: string): string {
  const n = hostNumber(hostId) % 256
  return `172.${16 + (n >> 4)}.${(n & 15) << 4}.0/20`
}

/** Interface names are at most 15 characters. */
export function hostVethName(machineId: string): string {
  return `hv${machineId.slice(0, 13)}`
}

export function machineNetnsName(machineId: string): string {
  return `hangar-${machineId}`
}

export function bridgeNameFor(hostId: string): string {
  return `hgbr${createHash('sha256').update(hostId).digest('hex').slice(0, 8)}`
}
