import net from 'node:net'
import type { Duplex } from 'node:stream'
import type { MachineRoute } from '../core/index.js'
import type { ExchangeRequest, ExchangeResponse } from './http-exchange.js'

// How the proxy reaches a Machine. On one host it connects straight to the Machine's address
// (LocalTransport). In a cluster, ClusterTransport sends Machines of other hosts over the
// backhaul to the worker proxy of their host (backhaul-client.ts), which enforces their limits
// and connects locally; the data path only sees this interface.

export interface UpstreamTarget {
  machine: MachineRoute
  host: string
  port: number
}

export interface ConnectOptions {
  /** Read into caller-provided memory instead of a fresh buffer per read (net.connect's onread). */
  onread?: net.OnReadOpts
}

/** What the data path needs of a connection to a Machine: a net.Socket locally, a backhaul
 * stream otherwise. It emits 'connect' once the Machine accepted, or 'error' then 'close'. */
export interface UpstreamSocket extends Duplex {
  setNoDelay(noDelay?: boolean): unknown
}

export interface Transport {
  /** A connecting socket to the target; 'connect' or 'error' follows. */
  connect(target: UpstreamTarget, options?: ConnectOptions): UpstreamSocket
  /** Whether a connection to `target` may carry several exchanges (keep-alive pooling). The
   * backhaul says no: its worker counts one stream as one request or connection. Default yes. */
  reusable?(target: UpstreamTarget): boolean
  /** A request/response exchange (HTTP/2 clients, h2_backend) this transport carries itself, or
   * undefined when the proxy's own clients should reach the Machine directly. */
  exchange?(target: UpstreamTarget, h2Backend: boolean, request: ExchangeRequest): Promise<ExchangeResponse> | undefined
}

/** A Machine that does not accept within this long is an upstream error (502 / close), not a
 * request that hangs for the OS's minutes-long connect timeout. */
export const CONNECT_TIMEOUT_MS = 5000

export class LocalTransport implements Transport {
  connect(target: UpstreamTarget, options: ConnectOptions = {}): net.Socket {
    const socket = net.connect({ host: target.host, port: target.port, noDelay: true, ...(options.onread ? { onread: options.onread } : {}) })
    socket.setTimeout(CONNECT_TIMEOUT_MS, () => socket.destroy(new Error(`connect to ${target.host}:${target.port} timed out`)))
    socket.once('connect', () => socket.setTimeout(0))
    return socket
  }
}

/** Idle keep-alive connections to Machines, per host:port (reference §4.1: the proxy pools
 * upstream connections for about 4 s). Pooled objects keep their own socket listeners (so taking
 * one from the pool costs no listener churn); a destroyed one is skipped lazily. */
export interface Poolable {
  readonly destroyed: boolean
  idleSince: number
  destroy(): void
}

export class UpstreamPool<T extends Poolable> {
  private readonly idle = new Map<string, T[]>()
  private readonly idleTimeoutMs: number
  private readonly maxIdlePerTarget: number
  private sweeper: NodeJS.Timeout | undefined
  private closed = false

  constructor(options: { idleTimeoutMs?: number; maxIdlePerTarget?: number } = {}) {
    this.idleTimeoutMs = options.idleTimeoutMs ?? 4000
    this.maxIdlePerTarget = options.maxIdlePerTarget ?? 1024
    this.sweeper = setInterval(() => this.sweep(), Math.max(250, this.idleTimeoutMs / 4))
    this.sweeper.unref()
  }

  take(key: string): T | undefined {
    const list = this.idle.get(key)
    if (list === undefined) return undefined
    while (list.length > 0) {
      const conn = list.pop()!
      if (!conn.destroyed) return conn
    }
    return undefined
  }

  put(key: string, conn: T, now: number): void {
    if (this.closed || conn.destroyed) { conn.destroy(); return }
    let list = this.idle.get(key)
    if (list === undefined) { list = []; this.idle.set(key, list) }
    if (list.length >= this.maxIdlePerTarget) { conn.destroy(); return }
    conn.idleSince = now
    list.push(conn)
  }

  private sweep(): void {
    const cutoff = Date.now() - this.idleTimeoutMs
    for (const [key, list] of this.idle) {
      // Oldest first: the list is a stack, so expired ones sit at the bottom.
      let expired = 0
      while (expired < list.length && (list[expired]!.idleSince < cutoff || list[expired]!.destroyed)) expired++
      for (const conn of list.splice(0, expired)) conn.destroy()
      if (list.length === 0) this.idle.delete(key)
    }
  }

  idleCount(): number {
    let n = 0
    for (const list of this.idle.values()) for (const conn of list) if (!conn.destroyed) n++
    return n
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    clearInterval(this.sweeper)
    this.sweeper = undefined
    for (const list of this.idle.values()) for (const conn of list) conn.destroy()
    this.idle.clear()
  }
}
