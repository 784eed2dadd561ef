import { randomBytes, randomInt } from 'node:crypto'
import { existsSync } from 'node:fs'
import { runCommand } from '../core/command.js'

// A star of network namespaces: several hosts on one machine (DESIGN "Hosts in tests", host-facts
// §4). The multi-host test kit builds its clusters on it, and `hangar up --hosts N` its local
// cluster for trying Hangar out:
//
//            root namespace (the test)  ── veth <prefix><suffix>r ──┐
//                                                                   │ 10.X.Y.254
//   host ns h0 (eth0 10.X.Y.10) ── veth ──┐                        │
//   host ns h1 (eth0 10.X.Y.11) ── veth ──┼── br0 in the hub ns (10.X.Y.1) ──┘
//   host ns hN …                ── veth ──┘
//
// One /24 underlay, 10.X.Y.0/24 with X in 200–254 (other kits here pick 10.100–199.*), chosen
// so that no route in the root namespace already covers it. With `isolateHosts`, the hosts'
// bridge ports are isolated (bridge(8) `isolated on`): a host reaches the hub and the test but
// never another host directly, so all host-to-host traffic must pass whatever runs in the hub
// (the WAN emulator). Every name carries a random suffix; close() kills every process left in
// the namespaces and deletes them and the root veth, also after a failed test.

export interface StarNode {
  netns: string
  /** Underlay IPv4 address (no prefix length). */
  address: string
}

export interface NetnsStar {
  readonly suffix: string
  /** e.g. '10.231.7' — the /24 is `${subnet}.0/24`. */
  readonly subnet: string
  readonly hub: StarNode
  readonly hosts: StarNode[]
  /** The test process's address on the star (root namespace, on the kit's own veth). */
  readonly testAddress: string
  readonly rootVeth: string
  /** Every namespace of the star (hub first). */
  readonly namespaces: string[]
  /** [command, args] that run `command` inside `netns` (network namespace only: nsenter --net
   * keeps the root mount namespace, so mounts made there stay visible to cleanup). */
  exec(netns: string, command: string, args: string[]): [string, string[]]
  run(netns: string, command: string, args: string[], input?: string): Promise<string>
  close(): Promise<void>
}

export interface NetnsStarOptions {
  hosts: number
  /** Prefix of every name (≤ 4 characters), default 'hgs'. */
  prefix?: string
  isolateHosts?: boolean
}

export function netnsExec(netns: string, command: string, args: string[]): [string, string[]] {
  return ['nsenter', [`--net=/var/run/netns/${netns}`, '--', command, ...args]]
}

async function ip(args: string[], input?: string): Promise<string> {
  return (await runCommand('ip', args, { input, timeoutMs: 20_000 })).stdout
}

async function pickSubnet(): Promise<string> {
  const used = (await ip(['-4', 'route', 'show', 'table', 'all'])) + (await ip(['-4', 'addr', 'show']))
  for (let attempt = 0; attempt < 200; attempt++) {
    const subnet = `10.${randomInt(200, 255)}.${randomInt(0, 256)}`
    if (!used.includes(`${subnet}.`) && !used.includes(`${subnet.split('.').slice(0, 2).join('.')}.0.0/16`)) return subnet
  }
  throw new Error('no free 10.x.y.0/24 subnet for the namespace star')
}

/** Kills every process whose network namespace is `netns` (SIGKILL), and waits until they are gone. */
export async function killNetnsProcesses(netns: string): Promise<number> {
  if (!existsSync(`/var/run/netns/${netns}`)) return 0
  const pids = (await runCommand('ip', ['netns', 'pids', netns], { allowFailure: true })).stdout.split('\n').map(Number).filter((n) => n > 0)
  for (const pid of pids) { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } }
  const deadline = Date.now() + 5000
  while (pids.some((pid) => existsSync(`/proc/${pid}`)) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10))
  return pids.length
}

/** Removes a star: kills what runs in its namespaces, deletes them and the root veth. Idempotent. */
export async function removeNetnsStar(star: { namespaces: string[]; rootVeth: string }): Promise<void> {
  for (const netns of star.namespaces) await killNetnsProcesses(netns)
  await runCommand('ip', ['-force', '-batch', '-'], {
    input: [`link del ${star.rootVeth}`, ...star.namespaces.map((ns) => `netns del ${ns}`)].join('\n') + '\n', allowFailure: true,
  })
}

export async function createNetnsStar(options: NetnsStarOptions): Promise<NetnsStar> {
  const prefix = options.prefix ?? 'hgs'
  if (prefix.length > 4) throw new Error('prefix: at most 4 characters (interface names are ≤ 15)')
  const suffix = randomBytes(3).toString('hex')
  const subnet = await pickSubnet()
  const hub: StarNode = { netns: `${prefix}-${suffix}-hub`, address: `${subnet}.1` }
  const hosts: StarNode[] = Array.from({ length: options.hosts }, (_, i) => ({ netns: `${prefix}-${suffix}-h${i}`, address: `${subnet}.${10 + i}` }))
  if (options.hosts > 240) throw new Error('at most 240 hosts in one star')
  const rootVeth = `${prefix}${suffix}r`
  const testAddress = `${subnet}.254`
  const namespaces = [hub.netns, ...hosts.map((h) => h.netns)]

  const close = () => removeNetnsStar({ namespaces, rootVeth })
  try {
    // Root-namespace commands in one batch; each namespace's own set-up in one batch inside it.
    await ip(['-batch', '-'], [
      ...namespaces.map((ns) => `netns add ${ns}`),
      `link add br0 netns ${hub.netns} type bridge`,
      ...hosts.map((h, i) => `link add eth0 netns ${h.netns} type veth peer name p${i} netns ${hub.netns}`),
      `link add ${rootVeth} type veth peer name proot netns ${hub.netns}`,
      `addr add ${testAddress}/24 dev ${rootVeth}`,
      `link set ${rootVeth} up`,
    ].join('\n') + '\n')
    await ip(['-n', hub.netns, '-batch', '-'], [
      'link set lo up',
      `addr add ${hub.address}/24 dev br0`,
      'link set br0 up',
      ...hosts.map((_, i) => `link set p${i} master br0 up`),
      'link set proot master br0 up',
    ].join('\n') + '\n')
    if (options.isolateHosts) {
      await runCommand('bridge', ['-n', hub.netns, '-batch', '-'], { input: hosts.map((_, i) => `link set dev p${i} isolated on`).join('\n') + '\n', timeoutMs: 10_000 })
    }
    await Promise.all(hosts.map((h) => ip(['-n', h.netns, '-batch', '-'], ['link set lo up', `addr add ${h.address}/24 dev eth0`, 'link set eth0 up'].join('\n') + '\n')))
  } catch (err) {
    await close()
    throw err
  }
  return {
    suffix, subnet, hub, hosts, testAddress, rootVeth, namespaces,
    exec: netnsExec,
    async run(netns, command, args, input) {
      const [cmd, full] = netnsExec(netns, command, args)
      return (await runCommand(cmd, full, { input, timeoutMs: 30_000 })).stdout
    },
    close,
  }
}
