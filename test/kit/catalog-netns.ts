import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { promisify } from 'node:util'

// Network namespaces for catalog tests (DESIGN "Hosts in tests", host-facts §4–5): a hub
// namespace with a bridge, one namespace per node with a veth into the bridge and its own
// address, and one veth from the test's own namespace into the bridge so the test can reach
// every node's API. A partition is nftables `drop` rules inside a node's namespace for the
// other nodes' addresses — the node's packets really are dropped, both ways, TCP and UDP — while
// the test's address stays reachable. Every name has a random suffix; `close()` deletes it all.

const run = promisify(execFile)

async function sh(command: string, args: string[], input?: string): Promise<string> {
  if (input === undefined) {
    const { stdout } = await run(command, args)
    return stdout
  }
  return new Promise((resolve, reject) => {
    const child = execFile(command, args, (err, stdout, stderr) => (err ? reject(new Error(`${command} ${args.join(' ')}: ${stderr || err.message}`)) : resolve(stdout)))
    child.stdin!.end(input)
  })
}

export interface LabNode {
  netns: string
  ip: string
}

export interface NetnsLab {
  readonly suffix: string
  readonly nodes: LabNode[]
  /** The test process's own address on the lab bridge. */
  readonly testIp: string
  /** Drops all traffic between `node` and the other nodes (both directions). */
  partition(node: LabNode): Promise<void>
  heal(node: LabNode): Promise<void>
  close(): Promise<void>
}

async function pickSubnet(): Promise<string> {
  const routes = await sh('ip', ['-4', 'route', 'show', 'table', 'all'])
  for (let attempt = 0; attempt < 50; attempt++) {
    const subnet = `10.${100 + (randomBytes(1)[0]! % 100)}.${randomBytes(1)[0]!}`
    if (!routes.includes(`${subnet}.`)) return subnet
  }
  throw new Error('no free 10.x.y.0/24 subnet for the namespace lab')
}

export async function createNetnsLab(count: number): Promise<NetnsLab> {
  const suffix = randomBytes(3).toString('hex')
  const hub = `cath-${suffix}`
  const hostVeth = `cth${suffix}`
  const subnet = await pickSubnet()
  const created: string[] = []
  const nodes: LabNode[] = []
  const cleanup = async () => {
    await sh('ip', ['link', 'del', hostVeth]).catch(() => {})
    for (const ns of created.reverse()) await sh('ip', ['netns', 'del', ns]).catch(() => {})
  }
  try {
    await sh('ip', ['netns', 'add', hub])
    created.push(hub)
    await sh('ip', ['-n', hub, 'link', 'add', 'br0', 'type', 'bridge'])
    await sh('ip', ['-n', hub, 'link', 'set', 'br0', 'up'])
    for (let i = 0; i < count; i++) {
      const ns = `catn${i}-${suffix}`
      await sh('ip', ['netns', 'add', ns])
      created.push(ns)
      const ip = `${subnet}.${i + 1}`
      await sh('ip', ['link', 'add', `cv${i}${suffix}`, 'netns', ns, 'type', 'veth', 'peer', 'name', `cp${i}${suffix}`, 'netns', hub])
      await sh('ip', ['-n', hub, 'link', 'set', `cp${i}${suffix}`, 'master', 'br0', 'up'])
      await sh('ip', ['-n', ns, 'addr', 'add', `${ip}/24`, 'dev', `cv${i}${suffix}`])
      await sh('ip', ['-n', ns, 'link', 'set', `cv${i}${suffix}`, 'up'])
      await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
      nodes.push({ netns: ns, ip })
    }
    const testIp = `${subnet}.254`
    await sh('ip', ['link', 'add', hostVeth, 'type', 'veth', 'peer', 'name', `ctp${suffix}`, 'netns', hub])
    await sh('ip', ['-n', hub, 'link', 'set', `ctp${suffix}`, 'master', 'br0', 'up'])
    await sh('ip', ['addr', 'add', `${testIp}/24`, 'dev', hostVeth])
    await sh('ip', ['link', 'set', hostVeth, 'up'])
    const table = `hangar_partition_${suffix}`
    return {
      suffix,
      nodes,
      testIp,
      async partition(node) {
        const peers = nodes.filter((n) => n !== node).map((n) => n.ip).join(', ')
        await sh('ip', ['netns', 'exec', node.netns, 'nft', '-f', '-'], `
          table inet ${table} {
            set peers {
              type ipv4_addr
              elements = { ${peers} }
            }
            chain input {
              type filter hook input priority 0; policy accept;
              ip saddr @peers drop
            }
            chain output {
              type filter hook output priority 0; policy accept;
              ip daddr @peers drop
            }
          }
`)
      },
      async heal(node) {
        await sh('ip', ['netns', 'exec', node.netns, 'nft', 'delete', 'table', 'inet', table]).catch(() => {})
      },
      close: cleanup,
    }
  } catch (err) {
    await cleanup()
    throw err
  }
}
