import { CatalogClient } from '../catalog/index.js'
import { InvalidArgumentError, createLogger, type Logger } from '../core/index.js'
import { createCatalogDnsFeed } from './dns-catalog.js'
import { hostResolvers, parseHostPort, type DnsUpstream } from './dns-forwarder.js'
import { DnsIndex } from './dns-index.js'
import { startDnsServer, type DnsServer } from './dns-server.js'

// `hangar dns`: the host's `.internal` resolver as its own process (DESIGN "Processes": agent,
// proxy, catalog node, DNS). `hangar host` runs it beside a catalog node, on the host's resolver
// address (what Machines' /etc/resolv.conf names) and on fdaa::3 (Fly's resolver address,
// reference §3.3, for apps that name it themselves): dns-resolver-address.ts.

export interface DnsProcessOptions {
  catalogUrl: string
  /** `ip`, `ip:port` or `[ipv6]:port`; port 53 by default. */
  listen: string[]
  hostId?: string
  region?: string
  /** Upstream resolvers for other names (default: the host's /etc/resolv.conf); [] refuses them. */
  upstreams?: string[]
  ttl?: number
  logger?: Logger
}

export function parseListenAddresses(addresses: string[], flag = '--listen'): DnsUpstream[] {
  if (addresses.length === 0) throw new InvalidArgumentError(`${flag}: give at least one address to serve DNS on`)
  return addresses.map((text) => {
    const parsed = parseHostPort(text.trim())
    if (!parsed) throw new InvalidArgumentError(`${flag}: "${text}" is not an address like 172.19.0.1, 127.0.0.1:5353 or [fdaa::3]:53`)
    return parsed
  })
}

export interface RunningDns {
  server: DnsServer
  index: DnsIndex
  close(): Promise<void>
}

export async function startDnsProcess(options: DnsProcessOptions): Promise<RunningDns> {
  const logger = options.logger ?? createLogger('dns', { base: options.hostId ? { hostId: options.hostId } : {} })
  const listen = parseListenAddresses(options.listen)
  const upstreamList = options.upstreams === undefined ? hostResolvers() : options.upstreams.map((u) => {
    const parsed = parseHostPort(u)
    if (!parsed) throw new InvalidArgumentError(`--upstream: "${u}" is not an address like 1.1.1.1 or [2606:4700::1111]:53`)
    return parsed
  })
  // Never forward to ourselves.
  const upstreams = upstreamList.filter((u) => !listen.some((l) => l.host === u.host && l.port === u.port))
  const client = new CatalogClient(options.catalogUrl, { logger })
  const index = new DnsIndex()
  const feed = createCatalogDnsFeed(client, index, { logger })
  const server = await startDnsServer({
    index, isReady: () => feed.loaded, listen, hostId: options.hostId, region: options.region, upstreams, ttl: options.ttl,
    // The bridge and its addresses appear when the agent starts: bind as soon as they do.
    retryBindMs: 100, logger,
  })
  logger.info('dns started', { listen: options.listen, upstreams: upstreams.map((u) => `${u.host}:${u.port}`) })
  let closed = false
  return {
    server, index,
    async close() {
      if (closed) return
      closed = true
      feed.close()
      await server.close()
      await client.close()
    },
  }
}

export async function runDnsProcess(options: DnsProcessOptions): Promise<void> {
  const running = await startDnsProcess(options)
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve)
    process.once('SIGINT', resolve)
  })
  await running.close()
  process.exit(0)
}
