import type { Command } from 'commander'
import { runAgentProcess } from '../../agent/index.js'
import { runApiProcess } from '../../api/index.js'
import { runHost } from '../../host/index.js'
import { defaultDataDir } from '../config.js'
import { InvalidArgumentError, parseDurationMs } from '../../core/index.js'

// The long-running processes: `hangar host` (supervises one host's components), `hangar agent`
// (started by host), `hangar api`. Operators run `host` on every server and `api` where they like.

export function registerDaemons(program: Command): void {
  program.command('host')
    .description("run this server's Hangar host: the agent (and proxy, catalog) under a supervisor")
    .option('--data-dir <dir>', 'where the host keeps everything', `${defaultDataDir()}/host`)
    .option('--region <code>', 'region code of this host', 'local')
    .requiredOption('--nats <url>', 'NATS server URL(s), comma-separated')
    .option('--machine-subnet <cidr>', "private IPv4 subnet for this host's Machines (default: derived from the host id)")
    .option('--host-address <addr>', 'the address other hosts reach this one at', '127.0.0.1')
    .option('--autostop-interval <duration>', 'how often the proxy considers stopping idle Machines', '3m')
    .option('--max-restart-backoff <duration>', 'longest wait before restarting a component that keeps dying', '10s')
    .option('--proxy-listen <addr>', "address the proxy's public ports bind", '0.0.0.0')
    .option('--no-proxy', 'run no proxy on this host')
    .option('--proxy-metrics <host:port>', "serve the proxy's Prometheus metrics here")
    .option('--domain <domain>', 'apps answer at <app>.<domain>', 'hangar.local')
    .option('--join <peers>', "catalog gossip addresses (host:port, comma-separated) of hosts to join")
    .option('--catalog-port <port>', "this host's catalog gossip port (UDP and TCP)", '4001')
    .option('--catalog-api-port <port>', "this host's catalog API port", '4002')
    .option('--catalog-api-addr <ip>', "where this host's catalog API listens", '127.0.0.1')
    .option('--insecure-registry <host...>', 'registries the agent reaches over plain HTTP (loopback ones always are)')
    .option('--no-catalog', 'run no catalog node (a single host that needs no replication)')
    .option('--no-dns', 'run no .internal DNS (it runs with the catalog node; Machines then use the host\'s resolvers)')
    .option('--mesh', 'join the WireGuard mesh between hosts (wireguard-go; peers learnt over NATS)')
    .option('--wireguard-port <port>', "the mesh's UDP port", '51820')
    .option('--mesh-endpoint <ip:port>', "where other hosts reach this host's WireGuard (default: its first IPv4)")
    .option('--wireguard-endpoints <file>', 'a JSON {hostId: "ip:port"} that overrides where peers are reached')
    .option('--cpus <n>', 'Machine CPUs this host offers (default: cores × 16, shared CPUs overcommitted)')
    .option('--memory-mb <n>', 'Machine memory this host offers (default: RAM × 4)')
    .option('--machines-pool-gb <n>', "size cap of the host's pool for Machines' writable layers (<data-dir>/machines.img); 0: keep them on the data dir's filesystem", '64')
    .option('--backhaul-port <port>', "the proxy's backhaul port on the host address (other hosts' proxies reach this host's Machines there)", '4003')
    .option('--cluster-ca <dir>', 'the cluster CA every host shares, for the backhaul between proxies (default: <data-dir>/cluster-ca, created if missing)')
    .action(async (opts) => {
      await runHost({
        backhaulPort: Number(opts.backhaulPort), clusterCaDir: opts.clusterCa,
        dataDir: opts.dataDir, region: opts.region, natsUrl: opts.nats, machineSubnet: opts.machineSubnet, hostAddress: opts.hostAddress,
        autostopInterval: opts.autostopInterval, maxRestartBackoffMs: parseDurationMs(opts.maxRestartBackoff, '--max-restart-backoff'),
        proxyListen: opts.proxy === false ? undefined : opts.proxyListen,
        catalog: opts.catalog === false ? undefined : { gossipPort: Number(opts.catalogPort), apiPort: Number(opts.catalogApiPort), join: String(opts.join ?? '').split(',').map((p: string) => p.trim()).filter(Boolean), apiHost: opts.catalogApiAddr },
        insecureRegistries: opts.insecureRegistry, dns: opts.dns !== false,
        mesh: opts.mesh ? { listenPort: Number(opts.wireguardPort), endpoint: opts.meshEndpoint, endpointOverridesFile: opts.wireguardEndpoints } : undefined,
        capacityCpus: opts.cpus ? Number(opts.cpus) : undefined,
        capacityMemoryMb: opts.memoryMb ? Number(opts.memoryMb) : undefined,
        machinesPoolGb: parseMachinesPoolGb(opts.machinesPoolGb),
        proxyArgs: ['--domain', opts.domain, ...(opts.proxyMetrics ? ['--metrics', opts.proxyMetrics] : [])],
      })
    })

  program.command('agent', { hidden: true })
    .description("run one host's agent (hangar host starts it)")
    .requiredOption('--data-dir <dir>')
    .requiredOption('--region <code>')
    .requiredOption('--nats <url>')
    .option('--host-id <id>')
    .option('--machine-subnet <cidr>')
    .option('--host-address <addr>')
    .option('--insecure-registry <host...>', 'registries reached over plain HTTP')
    .option('--cpus <n>')
    .option('--memory-mb <n>')
    .option('--machines-pool-gb <n>', "size cap of the machines pool (0: none)", '64')
    .option('--catalog-url <url>', "the host's catalog node API")
    .option('--mesh-endpoint <ip:port>', "this host's WireGuard endpoint (announced to the other hosts)")
    .option('--internal-dns', "Machines resolve through the host's .internal DNS")
    .option('--gossip-addr <addr>', "the host's catalog gossip address")
    .option('--proxy-addr <addr>', "where other hosts' proxies reach this host's proxy (backhaul), recorded in the catalog")
    .action(async (opts) => {
      await runAgentProcess({
        catalogUrl: opts.catalogUrl, gossipAddr: opts.gossipAddr, meshEndpoint: opts.meshEndpoint, internalDns: opts.internalDns === true, proxyAddr: opts.proxyAddr,
        dataDir: opts.dataDir, region: opts.region, natsUrl: opts.nats, hostId: opts.hostId, machineSubnet: opts.machineSubnet, hostAddress: opts.hostAddress,
        insecureRegistries: opts.insecureRegistry, capacityCpus: opts.cpus ? Number(opts.cpus) : undefined, capacityMemoryMb: opts.memoryMb ? Number(opts.memoryMb) : undefined,
        machinesPoolGb: parseMachinesPoolGb(opts.machinesPoolGb),
      })
    })

  program.command('api')
    .description('run the Machines API')
    .option('--data-dir <dir>', "where the API keeps its store", `${defaultDataDir()}/api`)
    .requiredOption('--nats <url>', 'NATS server URL(s)')
    .option('--host <addr>', 'listen address', '127.0.0.1')
    .option('--port <port>', 'listen port', '4280')
    .option('--region <code>', 'region code shown in request ids', 'local')
    .option('--bootstrap-org <slug>', 'create this org (and a token) on first start')
    .option('--token-file <path>', 'where the bootstrap token is written')
    .option('--catalog <url>', "a catalog node's API URL (apps are written there, Machines looked up)")
    .action(async (opts) => {
      await runApiProcess({ dataDir: opts.dataDir, natsUrl: opts.nats, host: opts.host, port: Number(opts.port), region: opts.region, bootstrapOrg: opts.bootstrapOrg, tokenFile: opts.tokenFile, catalogUrl: opts.catalog })
    })
}

/** --machines-pool-gb: a whole number of GiB, 0 for no pool. */
function parseMachinesPoolGb(value: string): number {
  const gb = Number(value)
  if (!Number.isInteger(gb) || gb < 0 || gb > 65_536) throw new InvalidArgumentError(`--machines-pool-gb must be a whole number of GiB from 0 to 65536, got ${JSON.stringify(value)}`)
  return gb
}
