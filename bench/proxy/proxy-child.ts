// The proxy under benchmark, in its own process (so its CPU and memory are its own):
// argv[2] is JSON {machines: MachineRoute[], caDir, hostId?, ports?, backhaul?}. Prints "ready <json addresses>".
// With `backhaul` it joins the others over the backhaul (an edge, or a worker with `ports: []`).
import { loadBackhaulIdentity, startProxy, StaticPeerSource, type BackhaulPeer } from '../../src/proxy/index.js'
import type { MachineRoute, RouteChange, RouteSource } from '../../src/core/index.js'
import { silentLogger } from '../../src/core/index.js'

const config = JSON.parse(process.argv[2]!) as {
  machines: MachineRoute[]
  caDir: string
  hostId?: string
  ports?: number[]
  backhaul?: { clusterCaDir: string; listenPort?: number; peers: BackhaulPeer[] }
}
const source: RouteSource = {
  subscribe(apply: (change: RouteChange) => void) {
    apply({ kind: 'snapshot', machines: config.machines, apps: [] })
    return () => {}
  },
}
const hostId = config.hostId ?? 'bench-host'
const backhaul = config.backhaul === undefined ? undefined : {
  identity: await loadBackhaulIdentity({ caDir: config.backhaul.clusterCaDir, hostId }),
  peers: new StaticPeerSource(config.backhaul.peers),
  ...(config.backhaul.listenPort !== undefined ? { listen: { host: '127.0.0.1', port: config.backhaul.listenPort } } : {}),
}
const proxy = await startProxy({
  routeSource: source, region: 'bench', hostId, domain: 'bench.test', caDir: config.caDir, listenHost: '127.0.0.1', logger: silentLogger,
  ...(config.ports !== undefined ? { ports: config.ports } : {}),
  ...(backhaul !== undefined ? { backhaul } : {}),
})
const expected = config.ports ?? [...new Set(config.machines.flatMap((m) => (m.services ?? []).flatMap((sv) => (sv.ports ?? []).map((p) => p.port))))]
if (proxy.addresses.length !== expected.length) {
  process.stderr.write(`the proxy could not listen on every port: ${JSON.stringify(proxy.addresses)}\n`)
  process.exit(1)
}
if (backhaul !== undefined && config.backhaul!.peers.some((p) => p.hostId !== hostId)) {
  // Ready once the links to the peers are up.
  while (!proxy.peers().every((p) => p.up)) await new Promise((resolve) => setTimeout(resolve, 20))
}
process.stdout.write(`ready ${JSON.stringify(proxy.addresses)}\n`)
process.on('SIGTERM', () => { void proxy.close().then(() => process.exit(0)) })
