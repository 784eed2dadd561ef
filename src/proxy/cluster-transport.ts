import type { ExchangeRequest, ExchangeResponse } from './http-exchange.js'
import { LocalTransport, type ConnectOptions, type Transport, type UpstreamSocket, type UpstreamTarget } from './transport.js'

// The transport of a proxy in a cluster (DESIGN "Proxy": "Edge proxies pick a Machine anywhere
// and send the connection over the backhaul to the worker proxy of that Machine's host"): this
// host's Machines are reached directly, every other host's through its worker proxy.

/** What ClusterTransport needs of the backhaul (BackhaulClient). */
export interface RemoteTransport {
  /** Whether the host runs a proxy the backhaul knows (its catalog row names a proxy_addr). */
  hasPeer(hostId: string): boolean
  connect(target: UpstreamTarget, options?: ConnectOptions): UpstreamSocket
  exchange(target: UpstreamTarget, h2Backend: boolean, request: ExchangeRequest): Promise<ExchangeResponse>
}

export class ClusterTransport implements Transport {
  private readonly hostId: string
  private readonly backhaul: RemoteTransport
  private readonly local: Transport

  constructor(hostId: string, backhaul: RemoteTransport, local: Transport = new LocalTransport()) {
    this.hostId = hostId
    this.backhaul = backhaul
    this.local = local
  }

  /** Another host's Machine behind a proxy we know. A host that runs no proxy (`--no-proxy`)
   * has no worker to enforce limits: its Machines are connected to directly, as on one host. */
  private remote(target: UpstreamTarget): boolean {
    const hostId = target.machine.hostId
    return hostId !== '' && hostId !== this.hostId && this.backhaul.hasPeer(hostId)
  }

  connect(target: UpstreamTarget, options?: ConnectOptions): UpstreamSocket {
    return this.remote(target) ? this.backhaul.connect(target, options) : this.local.connect(target, options)
  }

  reusable(target: UpstreamTarget): boolean {
    return !this.remote(target)
  }

  exchange(target: UpstreamTarget, h2Backend: boolean, request: ExchangeRequest): Promise<ExchangeResponse> | undefined {
    return this.remote(target) ? this.backhaul.exchange(target, h2Backend, request) : undefined
  }
}
