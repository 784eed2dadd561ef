import { InvalidArgumentError, type Autostop, type MachineService, type MachinePort } from '../core/index.js'

// Turns a Machine config's `services[]` (reference §1.5, fly.toml `[[services]]` in §2) into the
// normalised specs the proxy routes by. Everything the data path needs per request is decided
// here once, when a Machine config arrives, never per request.

export type HandlerName = 'tls' | 'http' | 'proxy_proto' | 'pg_tls'
const KNOWN_HANDLERS: ReadonlySet<string> = new Set(['tls', 'http', 'proxy_proto', 'pg_tls'])

export type ConcurrencyType = 'connections' | 'requests'

export interface ConcurrencySpec {
  type: ConcurrencyType
  /** reference §2: soft_limit defaults to 20. */
  softLimit: number
  /** reference §2: hard_limit defaults to unset, i.e. unlimited. */
  hardLimit: number
}

export interface HttpPortOptions {
  /** Speak h2c (prior knowledge) to the Machine instead of HTTP/1.1 (reference §3.2). */
  h2Backend: boolean
  /** Keep-alive idle timeout toward clients, ms (Fly's `idle_timeout` is seconds, default 60). */
  idleTimeoutMs: number
  /** How long a client may take to send a complete request head, ms (slowloris guard). */
  headersReadTimeoutMs: number
  /** reference §3.2: `response.pristine` suppresses Via, Server and Fly-Request-Id. */
  pristine: boolean
  /** `response.headers`: header → value to set, or false to remove. */
  responseHeaders: Array<{ name: string; value: string | false }>
}

export interface PortSpec {
  /** The first public port; equal to `endPort` for a single port. */
  startPort: number
  endPort: number
  handlers: HandlerName[]
  forceHttps: boolean
  alpn: string[]
  tlsVersions: string[]
  http: HttpPortOptions
  proxyProtoVersion: 1 | 2
}

export interface ServiceSpec {
  protocol: 'tcp' | 'udp'
  internalPort: number
  ports: PortSpec[]
  concurrency: ConcurrencySpec
  autostop: Autostop
  autostart: boolean
  minMachinesRunning: number
}

export const DEFAULT_SOFT_LIMIT = 20
export const DEFAULT_IDLE_TIMEOUT_MS = 60_000
export const DEFAULT_HEADERS_READ_TIMEOUT_MS = 10_000
/** A port range wider than this is refused: each port is a listening socket. */
export const MAX_PORTS_PER_RANGE = 1024

function isPort(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= 65535
}

/** reference §1.5: autostop arrives as a bool or a word; internally it is always the word. */
export function normaliseAutostop(value: unknown, field = 'autostop'): Autostop {
  if (value === undefined || value === null || value === false || value === 'off') return 'off'
  if (value === true || value === 'stop') return 'stop'
  if (value === 'suspend') return 'suspend'
  throw new InvalidArgumentError(`${field}: must be false, true, "off", "stop" or "suspend", got ${JSON.stringify(value)}`)
}

function normalisePort(port: MachinePort, field: string): PortSpec {
  let startPort: number
  let endPort: number
  if (port.port !== undefined) {
    if (!isPort(port.port)) throw new InvalidArgumentError(`${field}.port: must be an integer 1..65535, got ${JSON.stringify(port.port)}`)
    startPort = endPort = port.port
  } else if (port.start_port !== undefined || port.end_port !== undefined) {
    if (!isPort(port.start_port) || !isPort(port.end_port)) {
      throw new InvalidArgumentError(`${field}: start_port and end_port must both be integers 1..65535`)
    }
    if (port.end_port < port.start_port) throw new InvalidArgumentError(`${field}: end_port ${port.end_port} is below start_port ${port.start_port}`)
    if (port.end_port - port.start_port + 1 > MAX_PORTS_PER_RANGE) {
      throw new InvalidArgumentError(`${field}: a port range may span at most ${MAX_PORTS_PER_RANGE} ports`)
    }
    startPort = port.start_port
    endPort = port.end_port
  } else {
    throw new InvalidArgumentError(`${field}: needs port or start_port/end_port`)
  }
  const handlers: HandlerName[] = []
  for (const handler of port.handlers ?? []) {
    if (!KNOWN_HANDLERS.has(handler)) throw new InvalidArgumentError(`${field}.handlers: unknown handler ${JSON.stringify(handler)} (known: tls, http, proxy_proto, pg_tls)`)
    if (!handlers.includes(handler as HandlerName)) handlers.push(handler as HandlerName)
  }
  if (handlers.includes('pg_tls') && (handlers.includes('tls') || handlers.includes('http'))) {
    throw new InvalidArgumentError(`${field}.handlers: pg_tls cannot be combined with tls or http`)
  }
  if (handlers.includes('http') && handlers.includes('proxy_proto')) {
    throw new InvalidArgumentError(`${field}.handlers: proxy_proto cannot be combined with http`)
  }
  const httpOptions = port.http_options ?? {}
  const responseHeaders: HttpPortOptions['responseHeaders'] = []
  for (const [name, value] of Object.entries(httpOptions.response?.headers ?? {})) {
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) throw new InvalidArgumentError(`${field}.http_options.response.headers: ${JSON.stringify(name)} is not a header name`)
    const values = Array.isArray(value) ? value : [value]
    for (const v of values) {
      if (v === false) responseHeaders.push({ name, value: false })
      else if (typeof v === 'string' && !/[\r\n]/.test(v)) responseHeaders.push({ name, value: v })
      else throw new InvalidArgumentError(`${field}.http_options.response.headers.${name}: must be a string, a list of strings or false`)
    }
  }
  const seconds = (value: unknown, name: string, fallbackMs: number): number => {
    if (value === undefined || value === null) return fallbackMs
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) throw new InvalidArgumentError(`${field}.http_options.${name}: must be a positive number of seconds`)
    return value * 1000
  }
  const version = port.proxy_proto_options?.version
  if (version !== undefined && version !== 'v1' && version !== 'v2') {
    throw new InvalidArgumentError(`${field}.proxy_proto_options.version: must be "v1" or "v2"`)
  }
  return {
    startPort,
    endPort,
    handlers,
    forceHttps: port.force_https === true,
    alpn: port.tls_options?.alpn ?? ['h2', 'http/1.1'],
    tlsVersions: port.tls_options?.versions ?? ['TLSv1.2', 'TLSv1.3'],
    http: {
      h2Backend: httpOptions.h2_backend === true,
      idleTimeoutMs: seconds(httpOptions.idle_timeout, 'idle_timeout', DEFAULT_IDLE_TIMEOUT_MS),
      headersReadTimeoutMs: seconds(httpOptions.headers_read_timeout, 'headers_read_timeout', DEFAULT_HEADERS_READ_TIMEOUT_MS),
      pristine: httpOptions.response?.pristine === true,
      responseHeaders,
    },
    proxyProtoVersion: version === 'v2' ? 2 : 1,
  }
}

export function normaliseService(service: MachineService, field = 'services[0]'): ServiceSpec {
  const protocol = service.protocol ?? 'tcp'
  if (protocol !== 'tcp' && protocol !== 'udp') throw new InvalidArgumentError(`${field}.protocol: must be "tcp" or "udp"`)
  if (!isPort(service.internal_port)) throw new InvalidArgumentError(`${field}.internal_port: must be an integer 1..65535, got ${JSON.stringify(service.internal_port)}`)
  const concurrency = service.concurrency ?? {}
  const type = concurrency.type ?? 'connections'
  if (type !== 'connections' && type !== 'requests') throw new InvalidArgumentError(`${field}.concurrency.type: must be "connections" or "requests"`)
  const limit = (value: unknown, name: string): number | undefined => {
    if (value === undefined || value === null || value === 0) return undefined
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) throw new InvalidArgumentError(`${field}.concurrency.${name}: must be a positive integer`)
    return value
  }
  const hardLimit = limit(concurrency.hard_limit, 'hard_limit') ?? Infinity
  // A soft limit above the hard one could never be reached; the hard one wins.
  const softLimit = Math.min(limit(concurrency.soft_limit, 'soft_limit') ?? DEFAULT_SOFT_LIMIT, hardLimit)
  const min = service.min_machines_running ?? 0
  if (!Number.isInteger(min) || min < 0) throw new InvalidArgumentError(`${field}.min_machines_running: must be a non-negative integer`)
  if (service.autostart !== undefined && typeof service.autostart !== 'boolean') throw new InvalidArgumentError(`${field}.autostart: must be a boolean`)
  return {
    protocol,
    internalPort: service.internal_port,
    ports: (service.ports ?? []).map((port, i) => normalisePort(port, `${field}.ports[${i}]`)),
    concurrency: { type, softLimit, hardLimit },
    autostop: normaliseAutostop(service.autostop, `${field}.autostop`),
    // reference §2: auto_start_machines defaults to true.
    autostart: service.autostart ?? true,
    minMachinesRunning: min,
  }
}

export function normaliseServices(services: MachineService[] | undefined): ServiceSpec[] {
  return (services ?? []).map((service, i) => normaliseService(service, `services[${i}]`))
}

/** The key that groups one service across an app's Machines: load, queues and limits are per group. */
export function serviceKey(app: string, spec: ServiceSpec): string {
  return `${app}/${spec.protocol}/${spec.internalPort}`
}
