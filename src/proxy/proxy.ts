import http from 'node:http'
import net from 'node:net'
import { createLogger, InvalidArgumentError, type Logger, type MachineController, type RouteSource } from '../core/index.js'
import { AutostopLoop, DEFAULT_AUTOSTOP_INTERVAL_MS } from './autostop-loop.js'
import { CertificateStore } from './certificates.js'
import { ConnectionHandlers } from './connection-handlers.js'
import { requestIdGenerator, type ProxyContext } from './context.js'
import { DEFAULT_QUEUE_LIMITS, Dispatcher, type QueueLimits } from './dispatcher.js'
import { exchangeClients } from './http-exchange.js'
import { Http2Frontend } from './http2-frontend.js'
import type { UpstreamConn } from './http1-proxy.js'
import { ProxyMetrics } from './metrics.js'
import { RoutingTable } from './routing-table.js'
import { LocalTransport, UpstreamPool, type Transport } from './transport.js'
import { BackhaulClient } from './backhaul-client.js'
import type { BackhaulIdentity } from './backhaul-identity.js'
import { BackhaulServer } from './backhaul-server.js'
import { ClusterTransport } from './cluster-transport.js'
import { RemoteLoads } from './load-reports.js'
import type { PeerStatus } from './metrics.js'
import type { PeerSource } from './peers.js'
import type { MachineEntry } from './routing-table.js'
import { UNMEASURED_RTT_MS } from './rtt.js'

// `hangar proxy` (DESIGN "Proxy", issue 3): follows a RouteSource, listens on every public port
// the services name, balances per the seed, queues at hard limits, autostarts and autostops
// through a MachineController, and serves Prometheus metrics.

/** The proxy as part of a cluster (issue 4 "Backhaul and closeness"). */
export interface BackhaulOptions {
  /** The cluster CA and this host's certificate (backhaul-identity.ts). */
  identity: BackhaulIdentity
  /** The other hosts' proxies (the catalog's hosts table, or a file). */
  peers: PeerSource
  /** Where other proxies reach this one (the worker side); omit for an edge-only proxy. */
  listen?: { host: string; port: number }
  /** Load reports to edges, ms (default 100). */
  reportIntervalMs?: number
  /** RTT pings per peer once measured, ms (default 1000). */
  pingIntervalMs?: number
}

export interface ProxyOptions {
  /** Machines and apps to route to (the agent on one host; the catalog in a cluster). */
  routeSource: RouteSource
  /** Autostart/autostop go through it; without one the proxy never starts or stops Machines. */
  controller?: MachineController
  /** The region this proxy's host is in (Fly-Region). */
  region: string
  /** This host's id: RTT 0 to its own Machines; autostop acts only on them. */
  hostId: string
  /** Apps are reachable as `<app>.<domain>`. */
  domain: string
  /** Where the Hangar CA and issued certificates live. */
  caDir: string
  /** Address the public ports bind (default 0.0.0.0; tests use 127.0.0.1). */
  listenHost?: string
  /** Service port → local port to bind instead (e.g. {443: 8443} without root). */
  portMap?: Record<number, number>
  /** Only these service ports are opened (default: every port the services name). */
  ports?: number[]
  /** Autostop pass interval (default 3 minutes; reference §4.2 "every few minutes"). */
  autostopIntervalMs?: number
  queue?: Partial<QueueLimits>
  /** Where /metrics is served (port 0 picks one); omit to serve none. */
  metrics?: { host: string; port: number }
  maxHeaderBytes?: number
  logger?: Logger
  /** How to reach a Machine (default: connect straight to its address). */
  transport?: Transport
  /** RTT to a host, ms (default: 0 for this host; with a backhaul the measured RTT, until then
   * UNMEASURED_RTT_MS; without one 100). */
  rttMs?: (hostId: string) => number
  /** Join the cluster: Machines of other hosts go over the backhaul to their worker proxy. */
  backhaul?: BackhaulOptions
  /** Tie-breaking randomness, [0, 1). */
  random?: () => number
}

export interface ListeningPort {
  /** The port the service names. */
  servicePort: number
  host: string
  /** The port actually bound (differs with portMap or port 0). */
  port: number
}

export interface RunningProxy {
  /** Ports listened on now (they follow the services). */
  readonly addresses: ListeningPort[]
  readonly metrics: ProxyMetrics
  /** Where /metrics is served, if asked. */
  readonly metricsAddress: { host: string; port: number } | undefined
  /** The CA certificate (PEM) clients trust to verify `<app>.<domain>`. */
  readonly caCertPem: string
  /** Resolves once the service port is listened on (after a route change adds it). */
  listening(servicePort: number, timeoutMs?: number): Promise<ListeningPort>
  /** Runs one autostop pass now. */
  autostopPass(): Promise<void>
  /** Re-reads `rttMs` for every Machine (the cluster's RTT measurements call this). */
  refreshRtt(): void
  /** Where the backhaul listener is bound (undefined without one, or while it cannot bind). */
  readonly backhaulAddress: { host: string; port: number } | undefined
  /** The peer proxies the backhaul knows, with their measured RTT. */
  peers(): PeerStatus[]
  /** Stops accepting, ends connections, stops the loops; idempotent. */
  close(): Promise<void>
}

export const DEFAULT_MAX_HEADER_BYTES = 32 * 1024

export async function startProxy(options: ProxyOptions): Promise<RunningProxy> {
  for (const [name, value] of [['region', options.region], ['hostId', options.hostId], ['domain', options.domain], ['caDir', options.caDir]] as const) {
    if (typeof value !== 'string' || value.length === 0) throw new InvalidArgumentError(`proxy: ${name} is required`)
  }
  const logger = options.logger ?? createLogger('proxy')
  const listenHost = options.listenHost ?? '0.0.0.0'
  const metrics = new ProxyMetrics()
  const certificates = await CertificateStore.open(options.caDir, logger)
  let backhaulClient: BackhaulClient<MachineEntry> | undefined
  const measuredRtt = (hostId: string) => (hostId === options.hostId || hostId === '' ? 0 : backhaulClient?.rttMs(hostId) ?? UNMEASURED_RTT_MS)
  const table = new RoutingTable({
    domain: options.domain,
    rttMs: options.rttMs ?? (options.backhaul ? measuredRtt : (hostId) => (hostId === options.hostId ? 0 : 100)),
    logger,
    onChange: () => syncListeners(),
  })
  metrics.machineLoads = function* () {
    for (const entry of table.machineEntries()) {
      yield { app: entry.route.app, machineId: entry.machineId, region: entry.route.region, service: entry.key, load: entry.load }
    }
  }
  const limits: QueueLimits = { ...DEFAULT_QUEUE_LIMITS, ...options.queue }
  const dispatcher = new Dispatcher({ table, controller: options.controller, metrics, limits, logger, ...(options.random ? { random: options.random } : {}) })
  const pool = new UpstreamPool<UpstreamConn>({ idleTimeoutMs: 4000 })
  const localTransport = new LocalTransport()
  if (options.backhaul !== undefined) {
    if (options.backhaul.identity.hostId !== options.hostId) throw new InvalidArgumentError(`proxy: the backhaul certificate names host ${options.backhaul.identity.hostId}, not ${options.hostId}`)
    const loads = new RemoteLoads<MachineEntry>({
      entry: (key) => table.entry(key),
      wake: (entry) => { const group = table.groupOf(entry); if (group !== undefined) dispatcher.wake(group) },
    })
    backhaulClient = new BackhaulClient<MachineEntry>({
      identity: options.backhaul.identity, logger, metrics, loads,
      onRttChange: () => table.refreshRtt(),
      ...(options.backhaul.pingIntervalMs !== undefined ? { pingIntervalMs: options.backhaul.pingIntervalMs } : {}),
    })
    const client = backhaulClient
    metrics.peers = () => client.peers()
  }
  const ctx: ProxyContext = {
    table, dispatcher, metrics, logger,
    transport: options.transport ?? (backhaulClient !== undefined ? new ClusterTransport(options.hostId, backhaulClient, localTransport) : localTransport),
    region: options.region,
    hostId: options.hostId,
    domain: options.domain,
    maxHeaderBytes: options.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES,
    requestId: requestIdGenerator(options.region),
    http2: undefined as unknown as Http2Frontend,
    connections: new Set(),
    closing: false,
  }
  const http2Frontend = new Http2Frontend(ctx)
  ctx.http2 = http2Frontend
  const handlers = new ConnectionHandlers(ctx, pool, certificates)

  // Listeners follow the services' ports.
  const servers = new Map<number, { server: net.Server; address: ListeningPort | undefined }>()
  const waiters = new Map<number, Array<(address: ListeningPort) => void>>()
  let closed = false
  function syncListeners(): void {
    if (closed) return
    const wanted = new Set<number>()
    for (const port of table.ports.keys()) if (options.ports === undefined || options.ports.includes(port)) wanted.add(port)
    for (const [port, entry] of servers) {
      if (!wanted.has(port)) { entry.server.close(); servers.delete(port) }
    }
    for (const port of wanted) {
      if (servers.has(port)) continue
      const server = net.createServer({ noDelay: true, pauseOnConnect: false }, (socket) => handlers.accept(socket, port))
      const entry = { server, address: undefined as ListeningPort | undefined }
      servers.set(port, entry)
      const bindPort = options.portMap?.[port] ?? port
      server.on('error', (err) => {
        logger.error('cannot listen on a service port', { port, bindPort, error: err })
        servers.delete(port)
      })
      server.listen({ host: listenHost, port: bindPort, backlog: 4096 }, () => {
        const address = server.address() as net.AddressInfo
        entry.address = { servicePort: port, host: address.address, port: address.port }
        logger.info('listening', { servicePort: port, host: address.address, port: address.port })
        for (const resolve of waiters.get(port) ?? []) resolve(entry.address)
        waiters.delete(port)
      })
    }
  }

  // The worker side: other proxies' streams for this host's Machines.
  let backhaulServer: BackhaulServer | undefined
  let backhaulRetry: NodeJS.Timeout | undefined
  const backhaulListen = options.backhaul?.listen
  if (options.backhaul !== undefined && backhaulListen !== undefined) {
    const server = new BackhaulServer({
      identity: options.backhaul.identity, table, dispatcher, metrics, logger, local: localTransport,
      exchange: (entry, h2Backend, request) => exchangeClients(ctx).exchange(entry, h2Backend, request),
      ...(options.backhaul.reportIntervalMs !== undefined ? { reportIntervalMs: options.backhaul.reportIntervalMs } : {}),
    })
    backhaulServer = server
    // The host's address may not be up yet (a mesh interface coming up): keep trying, without
    // holding up the public ports.
    let delayMs = 500
    const bind = async (first: boolean): Promise<void> => {
      try {
        const address = await server.listen(backhaulListen.host, backhaulListen.port)
        logger.info('backhaul listening', address)
      } catch (err) {
        if (first) logger.warn('cannot bind the backhaul listener yet; retrying', { ...backhaulListen, error: err })
        if (closed) return
        backhaulRetry = setTimeout(() => void bind(false), delayMs)
        backhaulRetry.unref()
        delayMs = Math.min(10_000, delayMs * 2)
      }
    }
    await bind(true)
  }
  const unsubscribePeers = options.backhaul?.peers.subscribe((peers) => backhaulClient?.setPeers(peers))

  const unsubscribe = options.routeSource.subscribe((change) => {
    try {
      table.apply(change)
    } catch (err) {
      logger.error('route change failed', { kind: change.kind, error: err })
    }
  })

  // Slow heads and idle keep-alive connections are swept once a second.
  const sweeper = setInterval(() => {
    const now = Date.now()
    for (const conn of ctx.connections) conn.sweep(now)
  }, 1000)
  sweeper.unref()

  const autostop = options.controller !== undefined
    ? new AutostopLoop({ table, controller: options.controller, metrics, logger, hostId: options.hostId, intervalMs: options.autostopIntervalMs ?? DEFAULT_AUTOSTOP_INTERVAL_MS })
    : undefined

  let metricsServer: http.Server | undefined
  let metricsAddress: { host: string; port: number } | undefined
  if (options.metrics !== undefined) {
    metricsServer = http.createServer((req, res) => {
      if (req.url === '/metrics' || req.url?.startsWith('/metrics?')) {
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' })
        res.end(metrics.render())
      } else {
        res.writeHead(404, { 'content-type': 'text/plain' })
        res.end('not found: the metrics are at /metrics\n')
      }
    })
    await new Promise<void>((resolve, reject) => {
      metricsServer!.once('error', reject)
      metricsServer!.listen(options.metrics!.port, options.metrics!.host, () => resolve())
    })
    const address = metricsServer.address() as net.AddressInfo
    metricsAddress = { host: address.address, port: address.port }
  }

  // The first snapshot's ports are open before startProxy returns.
  await Promise.all([...servers.keys()].map((port) => listening(port, 5000).catch(() => undefined)))

  function listening(servicePort: number, timeoutMs = 5000): Promise<ListeningPort> {
    const existing = servers.get(servicePort)?.address
    if (existing !== undefined) return Promise.resolve(existing)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`port ${servicePort} is not listened on after ${timeoutMs} ms`)), timeoutMs)
      const list = waiters.get(servicePort) ?? []
      list.push((address) => { clearTimeout(timer); resolve(address) })
      waiters.set(servicePort, list)
    })
  }

  let closing: Promise<void> | undefined
  return {
    get addresses() {
      return [...servers.values()].map((s) => s.address).filter((a): a is ListeningPort => a !== undefined)
    },
    metrics,
    metricsAddress,
    caCertPem: certificates.caCertPem,
    listening,
    autostopPass: () => autostop?.pass() ?? Promise.resolve(),
    refreshRtt: () => table.refreshRtt(),
    get backhaulAddress() { return backhaulServer?.listeningAddress },
    peers: () => backhaulClient?.peers() ?? [],
    close() {
      closing ??= (async () => {
        closed = true
        ctx.closing = true
        unsubscribe()
        unsubscribePeers?.()
        clearTimeout(backhaulRetry)
        backhaulClient?.close()
        clearInterval(sweeper)
        dispatcher.close()
        await autostop?.close()
        const closes = [...servers.values()].map(({ server }) => new Promise<void>((resolve) => server.close(() => resolve())))
        servers.clear()
        for (const conn of ctx.connections) conn.destroy()
        ctx.connections.clear()
        handlers.close()
        http2Frontend.close()
        pool.close()
        exchangeClients(ctx).close()
        if (metricsServer !== undefined) {
          metricsServer.closeAllConnections()
          closes.push(new Promise<void>((resolve) => metricsServer!.close(() => resolve())))
        }
        if (backhaulServer !== undefined) closes.push(backhaulServer.close())
        await Promise.all(closes)
      })()
      return closing
    },
  }
}
