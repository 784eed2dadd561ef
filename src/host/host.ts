import { writeFileSync, mkdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { networkInterfaces } from 'node:os'
import { startHostMesh, type HostMesh } from './host-mesh.js'
import { fileURLToPath } from 'node:url'
import { createLogger, InvalidArgumentError, joinHostPort } from '../core/index.js'
import { SIXPN_RESOLVER_ADDRESS, hostResolverAddress } from '../network/index.js'
import { hostIdFor } from '../agent/index.js'
import { Supervisor, type ComponentSpec } from './supervisor.js'

// `hangar host`: everything one host runs, each component its own process under the supervisor
// (DESIGN "Processes": the proxy must not share an event loop with the agent).

export interface HostOptions {
  dataDir: string
  region: string
  natsUrl: string
  machineSubnet?: string
  hostAddress?: string
  /** The host's catalog node: gossip and API ports, and the gossip addresses of nodes to join. */
  catalog?: { gossipPort: number; apiPort: number; join: string[]; apiHost?: string }
  /** Registries the agent reaches over plain HTTP (besides loopback ones). */
  insecureRegistries?: string[]
  /** Where the proxy's public ports bind; no proxy runs when undefined. */
  proxyListen?: string
  /** More `hangar proxy` flags (e.g. --metrics, --domain, --queue-wait). */
  proxyArgs?: string[]
  /** The proxy's backhaul port on the host address (with a catalog: other hosts' proxies send
   * traffic for this host's Machines there; default 4003). */
  backhaulPort?: number
  /** The cluster CA every host shares (default `<dataDir>/cluster-ca`, created if missing). */
  clusterCaDir?: string
  autostopInterval?: string
  /** Fixed capacity offered to the placement market (default: from the machine, overcommitted). */
  capacityCpus?: number
  capacityMemoryMb?: number
  /** Size cap of the machines pool in GiB; 0 keeps Machines' writable layers on the data dir's fs. */
  machinesPoolGb?: number
  /** Run the WireGuard mesh between hosts (src/host/host-mesh.ts). */
  mesh?: { listenPort: number; endpoint?: string; endpointOverridesFile?: string }
  /** Upper bound of the restart backoff for components that keep dying. */
  maxRestartBackoffMs?: number
  /** Run `.internal` DNS (`hangar dns`) beside the catalog node (default true; needs a catalog). */
  dns?: boolean
  extraComponents?: ComponentSpec[]
}

const CLI_MAIN = fileURLToPath(new URL('../cli/main.js', import.meta.url))

export function cliComponent(name: string, args: string[], env?: NodeJS.ProcessEnv): ComponentSpec {
  // HANGAR_PROFILE_DIR=<dir> writes a V8 CPU profile of every component when it exits (for finding
  // where a host spends its CPU; Node 20 refuses --cpu-prof in NODE_OPTIONS).
  const profile = process.env.HANGAR_PROFILE_DIR ? ['--cpu-prof', `--cpu-prof-dir=${process.env.HANGAR_PROFILE_DIR}`] : []
  return { name, command: process.execPath, args: ['--enable-source-maps', ...profile, CLI_MAIN, ...args], env: { ...process.env, ...env } }
}

/** This machine's first global IPv4 address: where other hosts reach its WireGuard by default. */
export function defaultUnderlayAddress(): string {
  for (const addresses of Object.values(networkInterfaces())) {
    for (const address of addresses ?? []) if (address.family === 'IPv4' && !address.internal) return address.address
  }
  return '127.0.0.1'
}


export async function runHost(hostOptions: HostOptions): Promise<void> {
  let options = hostOptions
  const logger = createLogger('host')
  mkdirSync(options.dataDir, { recursive: true })
  const hostId = hostIdFor(options.dataDir)
  writeFileSync(join(options.dataDir, 'host.pid'), String(process.pid))
  // The WireGuard mesh first: the agent announces its key, and the catalog and the backhaul ride
  // it (the host's address becomes its overlay address unless one is given).
  let hostMesh: HostMesh | undefined
  if (options.mesh) {
    hostMesh = await startHostMesh({ hostId, dataDir: options.dataDir, natsUrl: options.natsUrl, listenPort: options.mesh.listenPort, endpointOverridesFile: options.mesh.endpointOverridesFile, logger })
    options = { ...options, hostAddress: options.hostAddress ?? hostMesh.mesh.overlayAddress }
  }
  const agentArgs = ['agent', '--data-dir', options.dataDir, '--region', options.region, '--nats', options.natsUrl, '--host-id', hostId]
  if (hostMesh && options.mesh) agentArgs.push('--mesh-endpoint', options.mesh.endpoint ?? joinHostPort(defaultUnderlayAddress(), hostMesh.mesh.listenPort))
  if (options.machineSubnet) agentArgs.push('--machine-subnet', options.machineSubnet)
  if (options.hostAddress) agentArgs.push('--host-address', options.hostAddress)
  if (options.capacityCpus) agentArgs.push('--cpus', String(options.capacityCpus))
  if (options.insecureRegistries?.length) agentArgs.push('--insecure-registry', ...options.insecureRegistries)
  if (options.capacityMemoryMb) agentArgs.push('--memory-mb', String(options.capacityMemoryMb))
  if (options.machinesPoolGb !== undefined) agentArgs.push('--machines-pool-gb', String(options.machinesPoolGb))
  const components: ComponentSpec[] = []
  let catalogUrl: string | undefined
  if (options.catalog) {
    // The host's catalog node (DESIGN "Catalog"): gossip on the host's address, its API for the
    // host's own components on loopback.
    const apiHost = options.catalog.apiHost ?? '127.0.0.1'
    catalogUrl = `http://${joinHostPort(apiHost, options.catalog.apiPort)}`
    const gossipAddr = joinHostPort(options.hostAddress ?? '127.0.0.1', options.catalog.gossipPort)
    components.push(cliComponent('catalog', ['catalog', '--db', join(options.dataDir, 'catalog.db'), '--gossip-addr', gossipAddr,
      '--api-addr', joinHostPort(apiHost, options.catalog.apiPort), '--host-id', hostId, '--region', options.region,
      ...(options.catalog.join.length ? ['--bootstrap', options.catalog.join.join(',')] : [])]))
    agentArgs.push('--catalog-url', catalogUrl, '--gossip-addr', gossipAddr)
  }
  // In a cluster (a catalog node) the proxy joins the backhaul on the host address, and the
  // agent records where in the host's catalog row (proxy_addr) for the other hosts' proxies.
  const backhaulPort = options.backhaulPort ?? 4003
  if (!Number.isInteger(backhaulPort) || backhaulPort < 1 || backhaulPort > 65535) throw new InvalidArgumentError(`--backhaul-port: ${options.backhaulPort} is not a port`)
  const hostAddress = (options.hostAddress ?? '127.0.0.1').replace(/^\[(.*)\]$/, '$1')
  const backhaulAddr = catalogUrl !== undefined && options.proxyListen !== undefined ? joinHostPort(hostAddress, backhaulPort) : undefined
  if (backhaulAddr !== undefined) agentArgs.push('--proxy-addr', backhaulAddr)
  // `.internal` DNS reads the catalog (DESIGN "Network"), so it runs with a catalog node, on the
  // host's resolver address that the agent writes into Machines' resolv.conf and on fdaa::3
  // (reference §3.3) for apps that name Fly's resolver (src/network/dns-resolver-address.ts).
  const runDns = catalogUrl !== undefined && options.dns !== false
  if (runDns) {
    components.push(cliComponent('dns', ['dns', '--catalog', catalogUrl!, '--host-id', hostId, '--region', options.region,
      '--listen', `[${hostResolverAddress(hostId)}]:53`, '--listen', `[${SIXPN_RESOLVER_ADDRESS}]:53`]))
  }
  if (runDns) agentArgs.push('--internal-dns')
  components.push(cliComponent('agent', agentArgs))
  if (options.proxyListen !== undefined) {
    const proxyArgs = ['proxy', '--nats', options.natsUrl, '--region', options.region, '--host-id', hostId, '--listen', options.proxyListen,
      '--ca-dir', join(options.dataDir, 'proxy-ca'), '--autostop-interval', options.autostopInterval ?? '3m', ...(catalogUrl ? ['--catalog', catalogUrl] : []),
      ...(backhaulAddr !== undefined ? ['--cluster-ca', options.clusterCaDir ?? join(options.dataDir, 'cluster-ca'), '--backhaul-listen', backhaulAddr] : []),
      ...(options.proxyArgs ?? [])]
    components.push(cliComponent('proxy', proxyArgs))
  }
  components.push(...(options.extraComponents ?? []))
  const supervisor = new Supervisor({ dir: options.dataDir, logsDir: join(options.dataDir, 'logs'), components, logger, maxBackoffMs: options.maxRestartBackoffMs })
  await supervisor.start()
  logger.info('host running', { hostId, region: options.region, components: components.map((c) => c.name) })
  const shutdown = async (signal: string) => {
    logger.info('host stopping', { signal })
    await supervisor.stop()
    await hostMesh?.close()
    rmSync(join(options.dataDir, 'host.pid'), { force: true })
    process.exit(0)
  }
  process.once('SIGTERM', () => void shutdown('SIGTERM'))
  process.once('SIGINT', () => void shutdown('SIGINT'))
}
