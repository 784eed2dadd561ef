// Prometheus metrics for the proxy (issue 3 "Metrics"). The data path bumps plain numeric fields
// on per-app and per-Machine objects (no label lookups per request); the exposition walks them
// when scraped. Text format: https://prometheus.io/docs/instrumenting/exposition_formats/

export interface AppCounters {
  connections: number
  connectionsOpen: number
  requests: number
  refusals: Map<string, number>
  autostarts: number
  autostops: number
  upstreamErrors: number
  replays: number
}

export interface MachineLoad {
  app: string
  machineId: string
  region: string
  service: string
  load: number
}

/** A peer proxy as this proxy's backhaul sees it. */
export interface PeerStatus {
  hostId: string
  region: string
  addr: string
  /** The mutual-TLS session is established. */
  up: boolean
  /** Measured RTT (ms) the balancer uses; undefined until measured. */
  rttMs: number | undefined
}

export interface BackhaulCounters {
  /** Streams this proxy opened to workers (tunnels and exchanges). */
  streamsOut: number
  /** Streams other proxies opened to this one, by outcome. */
  streamsIn: number
  /** Streams this proxy refused as a worker, by reason (at_capacity, unknown_machine, ...). */
  refusals: Map<string, number>
  /** Backhaul connections refused for want of a valid cluster certificate. */
  authFailures: number
  reportsSent: number
  reportsReceived: number
}

export type RefusalReason = 'at_capacity' | 'queue_timeout' | 'queue_full' | 'no_machines' | 'no_app' | 'header_too_large' | 'headers_timeout' | 'bad_request' | 'replay_too_large' | 'replay_failed' | 'tls_handshake' | 'closing'

export class ProxyMetrics {
  private readonly apps = new Map<string, AppCounters>()
  /** Set by the proxy: the per-Machine loads, read when scraped. */
  machineLoads: () => Iterable<MachineLoad> = () => []
  private readonly queueDepths = new Map<string, () => number>()
  readonly backhaul: BackhaulCounters = { streamsOut: 0, streamsIn: 0, refusals: new Map(), authFailures: 0, reportsSent: 0, reportsReceived: 0 }
  /** Set by the proxy when it has a backhaul: the peer proxies, read when scraped. */
  peers: () => Iterable<PeerStatus> = () => []

  backhaulRefusal(reason: string): void {
    this.backhaul.refusals.set(reason, (this.backhaul.refusals.get(reason) ?? 0) + 1)
  }

  app(app: string): AppCounters {
    let counters = this.apps.get(app)
    if (!counters) {
      counters = { connections: 0, connectionsOpen: 0, requests: 0, refusals: new Map(), autostarts: 0, autostops: 0, upstreamErrors: 0, replays: 0 }
      this.apps.set(app, counters)
    }
    return counters
  }

  refuse(app: string, reason: RefusalReason): void {
    const refusals = this.app(app).refusals
    refusals.set(reason, (refusals.get(reason) ?? 0) + 1)
  }

  refusals(app: string, reason?: RefusalReason): number {
    const refusals = this.apps.get(app)?.refusals
    if (!refusals) return 0
    if (reason) return refusals.get(reason) ?? 0
    let total = 0
    for (const n of refusals.values()) total += n
    return total
  }

  setQueueDepth(service: string, depth: (() => number) | undefined): void {
    if (depth) this.queueDepths.set(service, depth)
    else this.queueDepths.delete(service)
  }

  /** The Prometheus text exposition. */
  render(): string {
    const lines: string[] = []
    const family = (name: string, type: 'counter' | 'gauge', help: string) => lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`)
    const label = (value: string) => value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
    const perApp = (name: string, type: 'counter' | 'gauge', help: string, read: (c: AppCounters) => number) => {
      family(name, type, help)
      for (const [app, counters] of this.apps) lines.push(`${name}{app="${label(app)}"} ${read(counters)}`)
    }
    perApp('hangar_proxy_connections_total', 'counter', 'Client connections accepted.', (c) => c.connections)
    perApp('hangar_proxy_connections_open', 'gauge', 'Client connections open now.', (c) => c.connectionsOpen)
    perApp('hangar_proxy_requests_total', 'counter', 'HTTP requests proxied (HTTP/1.1 and HTTP/2).', (c) => c.requests)
    perApp('hangar_proxy_autostarts_total', 'counter', 'Machines started by the proxy.', (c) => c.autostarts)
    perApp('hangar_proxy_autostops_total', 'counter', 'Machines stopped or suspended by the autostop loop.', (c) => c.autostops)
    perApp('hangar_proxy_upstream_errors_total', 'counter', 'Failed connections or exchanges with a Machine.', (c) => c.upstreamErrors)
    perApp('hangar_proxy_replays_total', 'counter', 'Requests replayed because of fly-replay.', (c) => c.replays)
    family('hangar_proxy_refusals_total', 'counter', 'Connections or requests the proxy refused, by reason.')
    for (const [app, counters] of this.apps) {
      for (const [reason, n] of counters.refusals) lines.push(`hangar_proxy_refusals_total{app="${label(app)}",reason="${reason}"} ${n}`)
    }
    family('hangar_proxy_queue_depth', 'gauge', 'Requests or connections waiting for a Machine under its hard limit.')
    for (const [service, depth] of this.queueDepths) lines.push(`hangar_proxy_queue_depth{service="${label(service)}"} ${depth()}`)
    family('hangar_proxy_machine_load', 'gauge', 'Connections or in-flight requests per Machine (the service concurrency type).')
    for (const m of this.machineLoads()) {
      lines.push(`hangar_proxy_machine_load{app="${label(m.app)}",machine="${label(m.machineId)}",region="${label(m.region)}",service="${label(m.service)}"} ${m.load}`)
    }
    const peers = [...this.peers()]
    if (peers.length > 0 || this.backhaul.streamsIn > 0 || this.backhaul.authFailures > 0) {
      family('hangar_proxy_peer_up', 'gauge', 'Whether the backhaul session to a peer proxy is established.')
      for (const p of peers) lines.push(`hangar_proxy_peer_up{host="${label(p.hostId)}",region="${label(p.region)}"} ${p.up ? 1 : 0}`)
      family('hangar_proxy_peer_rtt_ms', 'gauge', 'Measured round-trip time to a peer proxy (minimum of recent pings), ms.')
      for (const p of peers) if (p.rttMs !== undefined) lines.push(`hangar_proxy_peer_rtt_ms{host="${label(p.hostId)}",region="${label(p.region)}"} ${p.rttMs}`)
      family('hangar_proxy_backhaul_streams_total', 'counter', 'Backhaul streams, by direction (out: to workers, in: from edges).')
      lines.push(`hangar_proxy_backhaul_streams_total{direction="out"} ${this.backhaul.streamsOut}`, `hangar_proxy_backhaul_streams_total{direction="in"} ${this.backhaul.streamsIn}`)
      family('hangar_proxy_backhaul_refusals_total', 'counter', 'Backhaul streams this proxy refused as a worker, by reason.')
      for (const [reason, n] of this.backhaul.refusals) lines.push(`hangar_proxy_backhaul_refusals_total{reason="${label(reason)}"} ${n}`)
      family('hangar_proxy_backhaul_auth_failures_total', 'counter', 'Backhaul connections refused for want of a valid cluster certificate.')
      lines.push(`hangar_proxy_backhaul_auth_failures_total ${this.backhaul.authFailures}`)
      family('hangar_proxy_load_reports_total', 'counter', 'Load reports sent to edges and received from workers.')
      lines.push(`hangar_proxy_load_reports_total{direction="sent"} ${this.backhaul.reportsSent}`, `hangar_proxy_load_reports_total{direction="received"} ${this.backhaul.reportsReceived}`)
    }
    return lines.join('\n') + '\n'
  }
}
