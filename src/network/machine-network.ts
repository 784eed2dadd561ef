import { existsSync, readdirSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { runCommand } from '../core/command.js'
import { hostVethName, machineNetnsName } from './addressing.js'
import { createMachineNetwork } from './netlink-helper.js'
import { SIXPN_RESOLVER_ADDRESS } from './dns-resolver-address.js'

// A host bridge in the host's namespace and, per Machine, a network namespace joined to it by a
// veth pair (DESIGN "Network"; host-facts §4 measured this layout). The per-Machine set-up is
// netlink from one long-lived helper (netlink-helper.ts); the rest is `ip`.

export interface BridgeSpec {
  name: string
  /** e.g. 172.19.0.1/20 */
  gatewayCidr: string
  /** The host's own `.internal` resolver address (dns-resolver-address.ts), besides fdaa::3. */
  resolverAddress?: string
}

export async function ensureBridge(bridge: BridgeSpec): Promise<void> {
  const exists = await runCommand('ip', ['link', 'show', 'dev', bridge.name], { allowFailure: true })
  if (exists.code !== 0) {
    await runCommand('ip', ['link', 'add', bridge.name, 'type', 'bridge'], { allowFailure: true })
  }
  // Idempotent: `replace` does not fail when the address is already there.
  await runCommand('ip', ['-batch', '-'], {
    input: [
      // A bridge without a MAC of its own takes its lowest port's, so stopping one Machine could
      // change the MAC every other Machine has cached for fe80::1 and the gateway, cutting them
      // off from the host (and its DNS) until their neighbour entries expire. A fixed MAC keeps it.
      `link set ${bridge.name} address ${bridgeMac(bridge.name)}`,
      `link set ${bridge.name} up`,
      `addr replace ${bridge.gatewayCidr} dev ${bridge.name}`,
      `addr replace fe80::1/64 dev ${bridge.name} nodad`,
      // reference §3.3: the resolver addresses every Machine reaches through its default route to
      // the bridge; `hangar dns` serves there (dns-resolver-address.ts).
      `addr replace ${SIXPN_RESOLVER_ADDRESS}/128 dev ${bridge.name} nodad`,
      ...(bridge.resolverAddress ? [`addr replace ${bridge.resolverAddress}/128 dev ${bridge.name} nodad`] : []),
    ].join('\n') + '\n',
  })
  // Machines reach each other and the host through the bridge; forwarding lets them reach peers on
  // other hosts later (the cluster's WireGuard mesh).
  await runCommand('sysctl', ['-qw', 'net.ipv6.conf.all.forwarding=1', 'net.ipv4.ip_forward=1'], { allowFailure: true })
}

/** A locally administered unicast MAC (0a:…) from the bridge name: stable across restarts. */
export function bridgeMac(name: string): string {
  const bytes = createHash('sha256').update(name).digest().subarray(0, 5)
  return ['0a', ...[...bytes].map((b) => b.toString(16).padStart(2, '0'))].join(':')
}

export async function removeBridge(name: string): Promise<void> {
  await runCommand('ip', ['link', 'del', name], { allowFailure: true })
}

export interface MachineNetworkSpec {
  machineId: string
  bridge: string
  ipv4: string
  ipv4Prefix: number
  gatewayIpv4: string
  /** The Machine's 6PN address (its /112 ends in ::2). */
  sixpn: string
}

export function netnsPath(machineId: string): string {
  return `/var/run/netns/${machineNetnsName(machineId)}`
}

/** Creates the Machine's namespace, veth and addresses. Idempotent: a half-made network from an
 * interrupted call is removed first, so a resumed operation can simply call it again. */
export async function setupMachineNetwork(spec: MachineNetworkSpec): Promise<string> {
  const netns = machineNetnsName(spec.machineId)
  const veth = hostVethName(spec.machineId)
  if (existsSync(netnsPath(spec.machineId))) await teardownMachineNetwork(spec.machineId, spec.sixpn)
  try {
    await createMachineNetwork({
      netns, veth, bridge: spec.bridge, ipv4: spec.ipv4, ipv4Prefix: spec.ipv4Prefix, gatewayIpv4: spec.gatewayIpv4, sixpn: spec.sixpn,
      // A MAC derived from the IPv4 address: a restarted Machine keeps its address, and with the
      // same MAC the host's neighbour cache stays right (a fresh random MAC left it pointing at the
      // old one for up to ~45 s).
      mac: macForIpv4(spec.ipv4),
    })
  } catch (err) {
    // Nothing half-made stays behind for the next attempt to trip over.
    await teardownMachineNetwork(spec.machineId, spec.sixpn)
    throw err
  }
  return netnsPath(spec.machineId)
}

/** A locally administered unicast MAC (02:…) that embeds the IPv4 address. */
export function macForIpv4(ipv4: string): string {
  const octets = ipv4.split('.').map((o) => Number(o).toString(16).padStart(2, '0'))
  return `02:48:${octets.join(':')}`
}

/** Removes the namespace (which destroys the veth pair) and the host route. Idempotent. */
export async function teardownMachineNetwork(machineId: string, sixpn?: string): Promise<void> {
  const netns = machineNetnsName(machineId)
  const lines = []
  if (existsSync(netnsPath(machineId))) lines.push(`netns del ${netns}`)
  lines.push(`link del ${hostVethName(machineId)}`)
  if (sixpn) lines.push(`route del ${sixpn}/128`)
  // -force: keep going past lines that fail because the thing is already gone.
  await runCommand('ip', ['-force', '-batch', '-'], { input: lines.join('\n') + '\n', allowFailure: true })
}

/** Machine ids that have a network namespace on this host (for crash recovery). */
export function listMachineNetns(): string[] {
  if (!existsSync('/var/run/netns')) return []
  return readdirSync('/var/run/netns')
    .filter((name) => name.startsWith('hangar-'))
    .map((name) => name.slice('hangar-'.length))
}
