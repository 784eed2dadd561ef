import type net from 'node:net'
import { randomBytes } from 'node:crypto'
import type { Logger } from '../core/index.js'
import type { Dispatcher } from './dispatcher.js'
import type { ProxyMetrics } from './metrics.js'
import type { PortBinding, RoutingTable } from './routing-table.js'
import type { Transport } from './transport.js'

// What every handler shares: the routing table, the dispatcher, the transport, metrics, and the
// proxy's identity. One object, built by startProxy, passed to each accepted connection.

export interface ListenInfo {
  port: number
  /** This connection arrived over TLS (tls or pg_tls handler terminated it). */
  tls: boolean
}

export interface Http2Handoff {
  /** Serves an HTTP/2 connection (ALPN h2, or an h2c preface on a plaintext port). */
  accept(socket: net.Socket, listen: ListenInfo, buffered?: Buffer): void
}

export interface ProxyContext {
  table: RoutingTable
  dispatcher: Dispatcher
  transport: Transport
  metrics: ProxyMetrics
  logger: Logger
  region: string
  hostId: string
  domain: string
  maxHeaderBytes: number
  requestId: () => string
  http2: Http2Handoff
  /** Live client connections; close() ends them. */
  connections: Set<{ destroy(): void; sweep(now: number): void }>
  closing: boolean
}

/** The binding a request on `port` with Host `host` goes to: the only app on the port, or the
 * app the hostname names (`<app>.<domain>` or a custom hostname). */
export function bindingForHost(table: RoutingTable, port: number, host: string, needsHttp: boolean): PortBinding | undefined {
  const bindings = table.ports.get(port)
  if (bindings === undefined) return undefined
  if (bindings.length === 1) return bindings[0]
  let hostname = host
  const colon = hostname.lastIndexOf(':')
  if (colon !== -1 && !hostname.endsWith(']')) hostname = hostname.slice(0, colon)
  const app = table.appForHost(hostname)
  if (app === undefined) return undefined
  for (const binding of bindings) if (binding.app === app && (!needsHttp || binding.port.handlers.includes('http'))) return binding
  for (const binding of bindings) if (binding.app === app) return binding
  return undefined
}

const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'

/** Fly-Request-Id values: a ULID then the region (reference §1.1), made without BigInt or a
 * syscall per request: the time part is cached per millisecond, the random part counts up from
 * a random start. */
export function requestIdGenerator(region: string): () => string {
  let lastMs = -1
  let timePart = ''
  const random = randomBytes(10)
  let counter = random.readUInt32BE(0) >>> 1
  const highPart = encode(random.readUInt32BE(4), 7) + encode(random.readUInt16BE(8), 3)
  return () => {
    const now = Date.now()
    if (now !== lastMs) {
      lastMs = now
      timePart = encode(now, 10)
    }
    counter = (counter + 1) % 0x40000000
    return `${timePart}${highPart}${encode(counter, 6)}-${region}`
  }
}

function encode(value: number, length: number): string {
  let out = ''
  let v = value
  for (let i = 0; i < length; i++) {
    out = CROCKFORD[v % 32]! + out
    v = Math.floor(v / 32)
  }
  return out
}
