// The proxy under benchmark, in its own process (so its CPU and memory are its own):
// argv[2] is JSON {machines: MachineRoute[], caDir, metricsPort?}. Prints "ready <json addresses>".
import { startProxy } from '../../src/proxy/index.js'
import type { MachineRoute, RouteChange, RouteSource } from '../../src/core/index.js'
import { silentLogger } from '../../src/core/index.js'

const config = JSON.parse(process.argv[2]!) as { machines: MachineRoute[]; caDir: string }
const source: RouteSource = {
  subscribe(apply: (change: RouteChange) => void) {
    apply({ kind: 'snapshot', machines: config.machines, apps: [] })
    return () => {}
  },
}
const proxy = await startProxy({ routeSource: source, region: 'bench', hostId: 'bench-host', domain: 'bench.test', caDir: config.caDir, listenHost: '127.0.0.1', logger: silentLogger })
if (proxy.addresses.length !== new Set(config.machines.flatMap((m) => (m.services ?? []).flatMap((sv) => (sv.ports ?? []).map((p) => p.port)))).size) {
  process.stderr.write(`the proxy could not listen on every port: ${JSON.stringify(proxy.addresses)}\n`)
  process.exit(1)
}
process.stdout.write(`ready ${JSON.stringify(proxy.addresses)}\n`)
process.on('SIGTERM', () => { void proxy.close().then(() => process.exit(0)) })
