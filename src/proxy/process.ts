import { readFileSync, watch, type FSWatcher } from 'node:fs'
import {
  createLogger, InvalidArgumentError, parseDurationMs,
  type AppRoute, type Logger, type MachineController, type MachineRoute, type RouteChange, type RouteSource,
} from '../core/index.js'
import { startProxy, type BackhaulOptions, type ProxyOptions, type RunningProxy } from './proxy.js'
import { loadBackhaulIdentity } from './backhaul-identity.js'
import { FilePeerSource, splitHostPort, StaticPeerSource, type PeerSource } from './peers.js'

// The process entry behind `hangar proxy` (DESIGN "Processes": the proxy is its own process,
// supervised by `hangar host`). The CLI parses nothing itself: it hands argv to parseProxyArgs
// and the result, with the RouteSource/MachineController it wires (the agent's, over NATS), to
// runProxyProcess. `--routes-file` gives a standalone proxy a file-backed RouteSource.

export interface ProxyProcessFlags {
  region: string
  hostId: string
  domain: string
  caDir: string
  listenHost: string
  portMap: Record<number, number>
  ports: number[] | undefined
  autostopIntervalMs: number | undefined
  queueMax: number | undefined
  queueWaitMs: number | undefined
  startTimeoutMs: number | undefined
  metrics: { host: string; port: number } | undefined
  maxHeaderBytes: number | undefined
  routesFile: string | undefined
  /** Where other proxies reach this one over the backhaul (worker side). */
  backhaulListen: { host: string; port: number } | undefined
  /** The cluster CA directory: enables the backhaul. */
  clusterCaDir: string | undefined
  backhaulCert: string | undefined
  backhaulKey: string | undefined
  peersFile: string | undefined
}

export interface ProxyProcessOptions {
  flags: ProxyProcessFlags
  /** Required unless flags.routesFile is set. */
  routeSource?: RouteSource
  controller?: MachineController
  /** The other hosts' proxies (the catalog's hosts table); else --peers-file. */
  peerSource?: PeerSource
  logger?: Logger
  /** Stops the proxy when aborted (the supervisor's root signal); SIGTERM/SIGINT also do. */
  signal?: AbortSignal
}

/** `hangar proxy --help` text, for the CLI. */
export const PROXY_USAGE = `Usage: hangar proxy [options]

  --region <code>              region of this host (Fly-Region), required
  --host-id <id>               this host's id, required
  --domain <domain>            apps answer at <app>.<domain> (default: hangar.local)
  --ca-dir <dir>               Hangar CA and issued certificates (default: ./.hangar/proxy-ca)
  --listen <address>           address public ports bind (default: 0.0.0.0)
  --port-map <p:q,...>         bind service port p on local port q (e.g. 443:8443)
  --ports <p,...>              only open these service ports
  --autostop-interval <dur>    autostop pass interval, e.g. 2s (default: 3m)
  --queue-max <n>              waiters per service at hard limit (default: 1024)
  --queue-wait <dur>           longest wait for capacity before 503/close (default: 10s)
  --start-timeout <dur>        longest wait for an autostarted Machine (default: 30s)
  --metrics <host:port>        serve Prometheus metrics at /metrics
  --max-header-bytes <n>       largest request head (default: 32768)
  --routes-file <path>         read Machines and apps from a JSON file (watched)
  --cluster-ca <dir>           cluster CA (ca.crt, and ca.key to issue this host's certificate):
                               joins the backhaul between proxies (mutual TLS)
  --backhaul-listen <addr:port> where other hosts' proxies reach this one ([v6]:port for IPv6)
  --backhaul-cert <file>       this host's backhaul certificate (CN = host id), with --backhaul-key
  --backhaul-key <file>        its private key
  --peers-file <path>          other proxies as JSON [{"hostId","region","addr"}] (watched)
`

function positiveInt(value: string, flag: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${flag}: must be a positive integer, got ${JSON.stringify(value)}`)
  return n
}

function port(value: string, flag: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError(`${flag}: ${JSON.stringify(value)} is not a port`)
  return n
}

/** Parses `hangar proxy` flags (`--key value` or `--key=value`). Bad input: InvalidArgumentError. */
export function parseProxyArgs(argv: string[]): ProxyProcessFlags {
  const values = new Map<string, string>()
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (!arg.startsWith('--')) throw new InvalidArgumentError(`unexpected argument ${JSON.stringify(arg)} (see hangar proxy --help)`)
    const eq = arg.indexOf('=')
    const key = eq === -1 ? arg.slice(2) : arg.slice(2, eq)
    const value = eq === -1 ? argv[++i] : arg.slice(eq + 1)
    if (value === undefined) throw new InvalidArgumentError(`--${key} needs a value`)
    values.set(key, value)
  }
  const known = new Set(['region', 'host-id', 'domain', 'ca-dir', 'listen', 'port-map', 'ports', 'autostop-interval', 'queue-max', 'queue-wait', 'start-timeout', 'metrics', 'max-header-bytes', 'routes-file',
    'cluster-ca', 'backhaul-listen', 'backhaul-cert', 'backhaul-key', 'peers-file'])
  for (const key of values.keys()) if (!known.has(key)) throw new InvalidArgumentError(`unknown option --${key} (see hangar proxy --help)`)
  const region = values.get('region')
  const hostId = values.get('host-id')
  if (!region) throw new InvalidArgumentError('--region is required')
  if (!hostId) throw new InvalidArgumentError('--host-id is required')
  const portMap: Record<number, number> = {}
  for (const pair of (values.get('port-map') ?? '').split(',').filter(Boolean)) {
    const [from, to] = pair.split(':')
    if (from === undefined || to === undefined) throw new InvalidArgumentError(`--port-map: ${JSON.stringify(pair)} is not service:local`)
    portMap[port(from, '--port-map')] = port(to, '--port-map')
  }
  const duration = (key: string) => (values.has(key) ? parseDurationMs(values.get(key), `--${key}`) : undefined)
  let metrics: ProxyProcessFlags['metrics']
  const metricsValue = values.get('metrics')
  if (metricsValue !== undefined) {
    const colon = metricsValue.lastIndexOf(':')
    if (colon <= 0) throw new InvalidArgumentError('--metrics: use host:port, e.g. 127.0.0.1:9091')
    metrics = { host: metricsValue.slice(0, colon).replace(/^\[|\]$/g, ''), port: port(metricsValue.slice(colon + 1), '--metrics') }
  }
  return {
    region,
    hostId,
    domain: values.get('domain') ?? 'hangar.local',
    caDir: values.get('ca-dir') ?? './.hangar/proxy-ca',
    listenHost: values.get('listen') ?? '0.0.0.0',
    portMap,
    ports: values.has('ports') ? values.get('ports')!.split(',').filter(Boolean).map((p) => port(p, '--ports')) : undefined,
    autostopIntervalMs: duration('autostop-interval'),
    queueMax: values.has('queue-max') ? positiveInt(values.get('queue-max')!, '--queue-max') : undefined,
    queueWaitMs: duration('queue-wait'),
    startTimeoutMs: duration('start-timeout'),
    metrics,
    maxHeaderBytes: values.has('max-header-bytes') ? positiveInt(values.get('max-header-bytes')!, '--max-header-bytes') : undefined,
    routesFile: values.get('routes-file'),
    ...backhaulFlags(values),
  }
}

function backhaulFlags(values: Map<string, string>): Pick<ProxyProcessFlags, 'backhaulListen' | 'clusterCaDir' | 'backhaulCert' | 'backhaulKey' | 'peersFile'> {
  const listen = values.get('backhaul-listen')
  const flags = {
    backhaulListen: listen === undefined ? undefined : splitHostPort(listen, '--backhaul-listen'),
    clusterCaDir: values.get('cluster-ca'),
    backhaulCert: values.get('backhaul-cert'),
    backhaulKey: values.get('backhaul-key'),
    peersFile: values.get('peers-file'),
  }
  if (flags.clusterCaDir === undefined) {
    for (const key of ['backhaul-listen', 'backhaul-cert', 'backhaul-key', 'peers-file']) {
      if (values.has(key)) throw new InvalidArgumentError(`--${key} needs --cluster-ca (the backhaul is mutual TLS under the cluster CA)`)
    }
  }
  if ((flags.backhaulCert === undefined) !== (flags.backhaulKey === undefined)) throw new InvalidArgumentError('--backhaul-cert and --backhaul-key go together')
  return flags
}

/** A RouteSource read from a JSON file `{machines: MachineRoute[], apps?: AppRoute[]}`, re-read
 * (as a new snapshot) whenever the file changes. */
export class FileRouteSource implements RouteSource {
  private readonly path: string
  private readonly logger: Logger
  private watcher: FSWatcher | undefined

  constructor(path: string, logger: Logger) {
    this.path = path
    this.logger = logger
    this.read() // fail fast on a bad file
  }

  private read(): { machines: MachineRoute[]; apps: AppRoute[] } {
    let parsed: unknown
    try {
      parsed = JSON.parse(readFileSync(this.path, 'utf8'))
    } catch (err) {
      throw new InvalidArgumentError(`--routes-file ${this.path}: ${err instanceof Error ? err.message : String(err)}`)
    }
    const body = parsed as { machines?: unknown; apps?: unknown }
    if (body === null || typeof body !== 'object' || !Array.isArray(body.machines)) throw new InvalidArgumentError(`--routes-file ${this.path}: expected {"machines": [...], "apps": [...]}`)
    return { machines: body.machines as MachineRoute[], apps: Array.isArray(body.apps) ? body.apps as AppRoute[] : [] }
  }

  subscribe(apply: (change: RouteChange) => void): () => void {
    apply({ kind: 'snapshot', ...this.read() })
    this.watcher = watch(this.path, () => {
      try { apply({ kind: 'snapshot', ...this.read() }) } catch (err) { this.logger.warn('ignoring an unreadable routes file', { path: this.path, error: err }) }
    })
    return () => { this.watcher?.close(); this.watcher = undefined }
  }
}

export function proxyOptionsFromFlags(flags: ProxyProcessFlags, routeSource: RouteSource, controller: MachineController | undefined, logger: Logger, backhaul?: BackhaulOptions): ProxyOptions {
  return {
    routeSource,
    ...(controller ? { controller } : {}),
    region: flags.region,
    hostId: flags.hostId,
    domain: flags.domain,
    caDir: flags.caDir,
    listenHost: flags.listenHost,
    portMap: flags.portMap,
    ...(flags.ports ? { ports: flags.ports } : {}),
    ...(flags.autostopIntervalMs !== undefined ? { autostopIntervalMs: flags.autostopIntervalMs } : {}),
    queue: {
      ...(flags.queueMax !== undefined ? { maxQueueLength: flags.queueMax } : {}),
      ...(flags.queueWaitMs !== undefined ? { maxWaitMs: flags.queueWaitMs } : {}),
      ...(flags.startTimeoutMs !== undefined ? { startTimeoutMs: flags.startTimeoutMs } : {}),
    },
    ...(flags.metrics ? { metrics: flags.metrics } : {}),
    ...(flags.maxHeaderBytes !== undefined ? { maxHeaderBytes: flags.maxHeaderBytes } : {}),
    ...(backhaul !== undefined ? { backhaul } : {}),
    logger,
  }
}

/** The backhaul the flags ask for (--cluster-ca), with its peers from `peerSource` or --peers-file. */
export async function backhaulFromFlags(flags: ProxyProcessFlags, peerSource: PeerSource | undefined, logger: Logger): Promise<BackhaulOptions | undefined> {
  if (flags.clusterCaDir === undefined) return undefined
  const identity = await loadBackhaulIdentity({
    caDir: flags.clusterCaDir, hostId: flags.hostId, logger,
    ...(flags.backhaulCert !== undefined ? { certFile: flags.backhaulCert } : {}),
    ...(flags.backhaulKey !== undefined ? { keyFile: flags.backhaulKey } : {}),
  })
  const peers = peerSource ?? (flags.peersFile !== undefined ? new FilePeerSource(flags.peersFile, logger) : new StaticPeerSource([]))
  return { identity, peers, ...(flags.backhaulListen !== undefined ? { listen: flags.backhaulListen } : {}) }
}

/** Runs the proxy until SIGTERM/SIGINT or `signal` aborts; resolves after it closed. */
export async function runProxyProcess(options: ProxyProcessOptions): Promise<void> {
  const logger = options.logger ?? createLogger('proxy', { base: { hostId: options.flags.hostId, region: options.flags.region } })
  const routeSource = options.routeSource ?? (options.flags.routesFile ? new FileRouteSource(options.flags.routesFile, logger) : undefined)
  if (routeSource === undefined) throw new InvalidArgumentError('hangar proxy needs a route source: run it under `hangar host`, or pass --routes-file')
  const backhaul = await backhaulFromFlags(options.flags, options.peerSource, logger)
  const proxy: RunningProxy = await startProxy(proxyOptionsFromFlags(options.flags, routeSource, options.controller, logger, backhaul))
  logger.info('proxy started', { ports: proxy.addresses, metrics: proxy.metricsAddress, backhaul: proxy.backhaulAddress })
  await new Promise<void>((resolve) => {
    const stop = () => resolve()
    process.once('SIGTERM', stop)
    process.once('SIGINT', stop)
    options.signal?.addEventListener('abort', stop, { once: true })
  })
  logger.info('proxy stopping')
  await proxy.close()
}
