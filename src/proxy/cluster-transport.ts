import type { ExchangeRequest, ExchangeResponse } from './http-exchange.js'
import { LocalTransport, type ConnectOptions, type Transport, type UpstreamSocket, type UpstreamTarget } from './transport.js'

// The transport of a proxy in a cluster (DESIGN "Proxy": "Edge proxies pick a Machine anywhere
// and send the connection over the backhaul to the worker proxy of that Machine's host"): this
// host's Machines are reached directly, every other host's through its worker proxy.

/** What ClusterTransport needs of the backhaul (BackhaulClient). */
export interface RemoteTransport {
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

  private remote(target: UpstreamTarget): boolean {
    return target.machine.hostId !== '' && target.machine.hostId !== this.hostId
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
