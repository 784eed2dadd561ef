import type { AppRoute, Logger, MachineRoute, RouteChange } from '../core/index.js'
import type { BalancerCandidate } from './balancer.js'
import type { LoadedMachine } from './load-reports.js'
import { normaliseServices, serviceKey, type PortSpec, type ServiceSpec } from './services.js'

// The proxy's routing table, rebuilt from RouteSource changes (DESIGN "Proxy"): apps → service
// groups → Machines, public port → bindings, hostname → app. Per-Machine load lives on
// MachineEntry objects that survive rebuilds, so a Machine update never loses in-flight counts.
// Rebuilding touches only the app that changed; the data path reads the precomputed arrays.

/** States whose Machines autostart may start (reference §4.3). */
const STARTABLE_STATES = new Set(['stopped', 'suspended'])

export class MachineEntry implements BalancerCandidate, LoadedMachine {
  readonly machineId: string
  readonly key: string
  /** What the balancer counts: this proxy's own in-flight plus othersLoad (load-reports.ts). */
  load = 0
  /** A remote Machine's load from other proxies, as its worker last reported. */
  othersLoad = 0
  /** This host's Machine: backhaul streams in flight per edge host. */
  originLoad: Map<string, number> | undefined = undefined
  softLimit: number
  hardLimit: number
  rttMs: number
  route: MachineRoute
  /** host:port the transport connects to. */
  upstreamHost: string
  upstreamPort: number
  lastActiveAt = Date.now()
  /** Set when the controller reported a start that the RouteSource has not shown yet. */
  startedLocallyAt = 0
  /** A start that failed is not retried for a while. */
  startFailedAt = 0
  /** Set when autostop asked for a stop the RouteSource has not shown yet: no new traffic. */
  stoppingSince = 0
  /** After a refused connection the Machine gets no new traffic until then (ms epoch). */
  unhealthyUntil = 0

  constructor(route: MachineRoute, spec: ServiceSpec, rttMs: number) {
    this.machineId = route.machineId
    this.key = `${route.machineId}/${spec.protocol}/${spec.internalPort}`
    this.route = route
    this.softLimit = spec.concurrency.softLimit
    this.hardLimit = spec.concurrency.hardLimit
    this.rttMs = rttMs
    this.upstreamHost = route.address
    this.upstreamPort = spec.internalPort
  }

  get state(): string {
    if (this.startedLocallyAt > 0) return 'started'
    return this.route.state
  }

  /** reference §4.1: only started, check-passing, non-cordoned Machines get traffic. */
  get routable(): boolean {
    return this.unhealthyUntil <= Date.now() && this.recovering
  }

  /** Routable but for a recent connection failure: requests wait for it rather than fail. */
  get recovering(): boolean {
    if (this.route.cordoned || this.stoppingSince > 0) return false
    if (this.state !== 'started') return false
    for (const check of this.route.checks) if (check.status !== 'passing') return false
    return true
  }

  /** On its way to a state the proxy can use: started soon (starting, restarting, updating), or
   * stopped soon and then startable again (stopping, suspending, or an autostop the RouteSource
   * has not shown yet). A request that finds nothing else waits for it instead of failing. */
  settling(autostart: boolean): boolean {
    if (this.route.cordoned) return false
    const state = this.state
    if (state === 'starting' || state === 'restarting' || state === 'updating') return true
    return autostart && (this.stoppingSince > 0 || state === 'stopping' || state === 'suspending')
  }

  get startable(): boolean {
    return this.startedLocallyAt === 0 && STARTABLE_STATES.has(this.route.state) && !this.route.cordoned
  }
}

export class ServiceGroup {
  readonly key: string
  readonly app: string
  spec: ServiceSpec
  primaryRegion = ''
  /** Every Machine of the app that has this service. */
  machines: MachineEntry[] = []
  /** The subset that may get traffic now; the balancer scans this. */
  routable: MachineEntry[] = []
  constructor(key: string, app: string, spec: ServiceSpec) {
    this.key = key
    this.app = app
    this.spec = spec
  }
  refreshRoutable(): void {
    this.routable = this.machines.filter((m) => m.routable)
  }
}

export interface AppState {
  app: string
  org: string
  hostnames: string[]
  groups: Map<string, ServiceGroup>
}

export interface PortBinding {
  app: string
  group: ServiceGroup
  port: PortSpec
}

export interface RoutingTableOptions {
  domain: string
  rttMs: (hostId: string) => number
  logger: Logger
  /** Called after each change with the public ports now in use. */
  onChange?: () => void
}

export class RoutingTable {
  readonly apps = new Map<string, AppState>()
  /** public port → the services listening on it, across apps. */
  readonly ports = new Map<number, PortBinding[]>()
  /** lower-case hostname → app. */
  readonly hostnames = new Map<string, string>()
  private readonly machines = new Map<string, MachineRoute>()
  /** app → its Machines, so a change rebuilds one app without scanning every Machine. */
  private readonly machinesByApp = new Map<string, Map<string, MachineRoute>>()
  private readonly appRoutes = new Map<string, AppRoute>()
  private readonly entries = new Map<string, MachineEntry>()
  private readonly options: RoutingTableOptions
  private readonly groupListeners: Array<(group: ServiceGroup) => void> = []

  constructor(options: RoutingTableOptions) {
    this.options = options
  }

  /** Called whenever a group's Machines change (the dispatcher wakes its queue). */
  onGroupChange(listener: (group: ServiceGroup) => void): void {
    this.groupListeners.push(listener)
  }

  apply(change: RouteChange): void {
    const touched = new Set<string>()
    switch (change.kind) {
      case 'snapshot':
        for (const app of this.apps.keys()) touched.add(app)
        this.machines.clear()
        this.machinesByApp.clear()
        this.appRoutes.clear()
        for (const machine of change.machines) { this.setMachine(machine); touched.add(machine.app) }
        for (const app of change.apps) { this.appRoutes.set(app.app, app); touched.add(app.app) }
        break
      case 'upsert': {
        const previous = this.machines.get(change.machine.machineId)
        if (previous && previous.app !== change.machine.app) { touched.add(previous.app); this.deleteMachine(previous) }
        this.setMachine(change.machine)
        touched.add(change.machine.app)
        break
      }
      case 'remove': {
        const previous = this.machines.get(change.machineId)
        if (previous) { this.deleteMachine(previous); touched.add(previous.app) }
        break
      }
      case 'app':
        this.appRoutes.set(change.app.app, change.app)
        touched.add(change.app.app)
        break
    }
    for (const app of touched) this.rebuildApp(app)
    this.rebuildIndexes()
    this.options.onChange?.()
  }

  private setMachine(machine: MachineRoute): void {
    this.machines.set(machine.machineId, machine)
    let byId = this.machinesByApp.get(machine.app)
    if (byId === undefined) { byId = new Map(); this.machinesByApp.set(machine.app, byId) }
    byId.set(machine.machineId, machine)
  }

  private deleteMachine(machine: MachineRoute): void {
    this.machines.delete(machine.machineId)
    const byId = this.machinesByApp.get(machine.app)
    byId?.delete(machine.machineId)
    if (byId?.size === 0) this.machinesByApp.delete(machine.app)
  }

  /** Re-reads RTTs (the cluster's measurements change them). */
  refreshRtt(): void {
    for (const entry of this.entries.values()) entry.rttMs = this.options.rttMs(entry.route.hostId)
  }

  machineEntries(): IterableIterator<MachineEntry> {
    return this.entries.values()
  }

  /** The entry of one Machine service, by `<machineId>/<protocol>/<internal port>`. */
  entry(key: string): MachineEntry | undefined {
    return this.entries.get(key)
  }

  /** The service group of an entry's app and service (undefined once the app has no such service). */
  groupOf(entry: MachineEntry): ServiceGroup | undefined {
    return this.apps.get(entry.route.app)?.groups.get(`${entry.route.app}/${entry.key.slice(entry.machineId.length + 1)}`)
  }

  findMachine(machineId: string): MachineEntry[] {
    const found: MachineEntry[] = []
    for (const entry of this.entries.values()) if (entry.machineId === machineId) found.push(entry)
    return found
  }

  /** The app serving `hostname` (no port, any case): `<app>.<domain>` or a custom hostname. */
  appForHost(hostname: string): string | undefined {
    return this.hostnames.get(hostname.toLowerCase())
  }

  private rebuildApp(app: string): void {
    const machines = [...(this.machinesByApp.get(app)?.values() ?? [])]
    const appRoute = this.appRoutes.get(app)
    const previous = this.apps.get(app)
    if (machines.length === 0 && !appRoute) {
      if (previous) {
        for (const group of previous.groups.values()) {
          for (const entry of group.machines) if (entry.route.app === app) this.entries.delete(entry.key)
          this.dropGroup(group)
        }
      }
      this.apps.delete(app)
      return
    }
    const groups = new Map<string, ServiceGroup>()
    const seenEntries = new Set<string>()
    const previousEntries: MachineEntry[] = []
    if (previous) for (const group of previous.groups.values()) previousEntries.push(...group.machines)
    // The newest Machine's config decides group-wide settings (ports, autostop, autostart).
    machines.sort((a, b) => b.updatedAt - a.updatedAt)
    for (const machine of machines) {
      let specs: ServiceSpec[]
      try {
        specs = normaliseServices(machine.services)
      } catch (err) {
        this.options.logger.warn('ignoring the services of a Machine with an invalid config', { app, machineId: machine.machineId, error: err })
        continue
      }
      for (const spec of mergeByInternalPort(specs)) {
        if (spec.protocol !== 'tcp') continue // UDP is not proxied (reference §2: fly-global-services)
        const key = serviceKey(app, spec)
        let group = groups.get(key)
        if (!group) {
          group = previous?.groups.get(key) ?? new ServiceGroup(key, app, spec)
          group.spec = spec
          group.primaryRegion = machine.primaryRegion
          group.machines = []
          groups.set(key, group)
        }
        const entryKey = `${machine.machineId}/${spec.protocol}/${spec.internalPort}`
        let entry = this.entries.get(entryKey)
        if (!entry) {
          entry = new MachineEntry(machine, spec, this.options.rttMs(machine.hostId))
          this.entries.set(entryKey, entry)
        } else {
          if (entry.startedLocallyAt > 0 && machine.updatedAt >= entry.startedLocallyAt) entry.startedLocallyAt = 0
          if (entry.stoppingSince > 0 && machine.updatedAt >= entry.stoppingSince) entry.stoppingSince = 0
          // Reports from the Machine's former host no longer describe it.
          if (machine.hostId !== entry.route.hostId && entry.othersLoad !== 0) { entry.load -= entry.othersLoad; entry.othersLoad = 0 }
          entry.route = machine
          entry.softLimit = spec.concurrency.softLimit
          entry.hardLimit = spec.concurrency.hardLimit
          entry.upstreamHost = machine.address
          entry.rttMs = this.options.rttMs(machine.hostId)
        }
        seenEntries.add(entryKey)
        group.machines.push(entry)
      }
    }
    if (previous) {
      for (const [key, group] of previous.groups) if (!groups.has(key)) this.dropGroup(group)
    }
    // Entries of Machines that left the app (unless another app took the Machine over meanwhile).
    for (const entry of previousEntries) if (!seenEntries.has(entry.key) && entry.route.app === app) this.entries.delete(entry.key)
    for (const group of groups.values()) group.refreshRoutable()
    this.apps.set(app, { app, org: appRoute?.org ?? machines[0]?.org ?? '', hostnames: appRoute?.hostnames ?? [], groups })
    for (const group of groups.values()) for (const listener of this.groupListeners) listener(group)
  }

  private dropGroup(group: ServiceGroup): void {
    group.machines = []
    group.routable = []
    for (const listener of this.groupListeners) listener(group)
  }

  private rebuildIndexes(): void {
    this.ports.clear()
    this.hostnames.clear()
    for (const state of [...this.apps.values()].sort((a, b) => (a.app < b.app ? -1 : 1))) {
      this.hostnames.set(`${state.app}.${this.options.domain}`.toLowerCase(), state.app)
      for (const hostname of state.hostnames) if (!this.hostnames.has(hostname.toLowerCase())) this.hostnames.set(hostname.toLowerCase(), state.app)
      for (const group of state.groups.values()) {
        for (const port of group.spec.ports) {
          for (let p = port.startPort; p <= port.endPort; p++) {
            const list = this.ports.get(p)
            const binding = { app: state.app, group, port }
            if (list) list.push(binding)
            else this.ports.set(p, [binding])
          }
        }
      }
    }
  }

  /** Takes a Machine out of rotation for `ms` after a refused connection (PM-class errors). */
  markUnhealthy(entry: MachineEntry, group: ServiceGroup, ms: number): void {
    entry.unhealthyUntil = Date.now() + ms
    this.touch(group)
    setTimeout(() => this.touch(group), ms + 1).unref()
  }

  /** Notify listeners after an entry's routability changed outside a RouteSource change. */
  touch(group: ServiceGroup): void {
    group.refreshRoutable()
    for (const listener of this.groupListeners) listener(group)
  }
}

/** Services of one Machine that share an internal port are one service with all their ports
 * (load and limits are per Machine port, so they cannot be told apart anyway). */
function mergeByInternalPort(specs: ServiceSpec[]): ServiceSpec[] {
  const byKey = new Map<string, ServiceSpec>()
  for (const spec of specs) {
    const key = `${spec.protocol}/${spec.internalPort}`
    const existing = byKey.get(key)
    if (existing === undefined) byKey.set(key, { ...spec, ports: [...spec.ports] })
    else existing.ports.push(...spec.ports)
  }
  return [...byKey.values()]
}
