import { TERMINAL_STATES, type AppRoute, type CheckStatus, type Logger, type MachineConfig, type MachineRoute, type MachineService, type MachineState, type RouteChange, type RouteSource, silentLogger } from '../core/index.js'
import type { CatalogClient, CatalogSubscription, JsonValue, SubscriptionChange, SubscriptionRow } from './client.js'
import { MEMBERS_TABLE } from './crr-store.js'

// The proxy's routing table fed from the catalog (DESIGN "Proxy": "the proxy keeps its routing
// table from a subscription"). Three subscriptions — machines, apps, and this node's view of
// membership — are joined here into MachineRoutes. A Machine is routable unless it is in a
// terminal state or its host's catalog node is down according to SWIM (issue 4: "SWIM detects
// a killed node and the proxy stops routing to its Machines"); it comes back when the host does.

const MACHINES_QUERY = 'SELECT id, app, org, region, host_id, state, instance_id, address, private_ip, services, checks, cordoned, process_group, config, updated_at FROM machines'
const APPS_QUERY = 'SELECT name, org, primary_region, hostnames FROM apps'
const MEMBERS_QUERY = `SELECT site_id, host_id, state FROM ${MEMBERS_TABLE}`

const TERMINAL = new Set<string>(TERMINAL_STATES)

function parseJson<T>(value: JsonValue, fallback: T): T {
  if (typeof value !== 'string') return fallback
  try { return JSON.parse(value) as T } catch { return fallback }
}

interface AppInfo extends AppRoute {
  primaryRegion: string
}

export interface CatalogRouteSource extends RouteSource {
  /** Resolves once machines, apps and members have loaded. */
  readonly ready: Promise<void>
  /** The Machines currently routable. */
  routes(): MachineRoute[]
  close(): void
}

export function createCatalogRouteSource(client: CatalogClient, options: { logger?: Logger } = {}): CatalogRouteSource {
  const logger = options.logger ?? silentLogger
  const machineRows = new Map<number, JsonValue[]>()
  const appRows = new Map<number, JsonValue[]>()
  const memberRows = new Map<number, JsonValue[]>()
  const apps = new Map<string, AppInfo>()
  const routable = new Map<string, MachineRoute>()
  const listeners = new Set<(change: RouteChange) => void>()
  let loaded = 0
  let started = false
  let subscriptions: CatalogSubscription[] = []
  let resolveReady!: () => void
  const ready = new Promise<void>((resolve) => { resolveReady = resolve })

  const emit = (change: RouteChange) => {
    for (const listener of listeners) {
      try { listener(change) } catch (err) { logger.error('route listener failed', { err }) }
    }
  }

  const downHosts = (): Set<string> => {
    const byHost = new Map<string, boolean>()
    for (const [, hostId, state] of memberRows.values()) {
      if (typeof hostId !== 'string' || hostId === '') continue
      const alive = state === 'alive' || state === 'suspect'
      byHost.set(hostId, (byHost.get(hostId) ?? false) || alive)
    }
    return new Set([...byHost].filter(([, alive]) => !alive).map(([host]) => host))
  }

  const toRoute = (row: JsonValue[]): MachineRoute => {
    const [id, app, org, region, hostId, state, instanceId, address, privateIp, services, checks, cordoned, processGroup, config, updatedAt] = row
    const parsedConfig = parseJson<MachineConfig>(config!, { image: '' })
    return {
      machineId: String(id),
      app: String(app),
      org: String(org),
      region: String(region),
      hostId: String(hostId),
      state: String(state) as MachineState,
      instanceId: String(instanceId),
      address: String(address || privateIp || ''),
      services: parseJson<MachineService[]>(services!, []),
      checks: parseJson<CheckStatus[]>(checks!, []),
      cordoned: cordoned === 1 || cordoned === true,
      processGroup: String(processGroup ?? ''),
      stopConfig: parsedConfig.stop_config ?? {},
      primaryRegion: apps.get(String(app))?.primaryRegion ?? '',
      updatedAt: Number(updatedAt ?? 0),
    }
  }

  /** Recomputes the routable set and emits the difference. */
  const reconcile = (silent = false) => {
    if (loaded < 3) return
    const down = downHosts()
    const next = new Map<string, MachineRoute>()
    for (const row of machineRows.values()) {
      const route = toRoute(row)
      if (TERMINAL.has(route.state) || down.has(route.hostId)) continue
      next.set(route.machineId, route)
    }
    for (const id of routable.keys()) {
      if (!next.has(id)) { routable.delete(id); if (!silent) emit({ kind: 'remove', machineId: id }) }
    }
    for (const [id, route] of next) {
      const before = routable.get(id)
      if (!before || JSON.stringify(before) !== JSON.stringify(route)) {
        routable.set(id, route)
        if (!silent) emit({ kind: 'upsert', machine: route })
      }
    }
  }

  const applyAppRows = (silent = false) => {
    const next = new Map<string, AppInfo>()
    for (const [name, org, primaryRegion, hostnames] of appRows.values()) {
      next.set(String(name), { app: String(name), org: String(org), hostnames: parseJson<string[]>(hostnames!, []), primaryRegion: String(primaryRegion ?? '') })
    }
    for (const [name, app] of next) {
      const before = apps.get(name)
      if (!silent && loaded >= 3 && (!before || JSON.stringify(before) !== JSON.stringify(app))) emit({ kind: 'app', app: { app: app.app, org: app.org, hostnames: app.hostnames } })
    }
    apps.clear()
    for (const [name, app] of next) apps.set(name, app)
  }

  const track = (rows: Map<number, JsonValue[]>, after: () => void) => {
    let initial = true
    return {
    onSnapshot(_columns: string[], snapshot: SubscriptionRow[]) {
      // A later snapshot (the client had to subscribe afresh) replaces the rows; the
      // difference is emitted as upserts and removes.
      rows.clear()
      for (const row of snapshot) rows.set(row.rowid, row.values)
      if (initial) {
        initial = false
        loaded++
        if (loaded === 3) {
          applyAppRows(true)
          reconcile(true)
          const snapshotChange: RouteChange = { kind: 'snapshot', machines: [...routable.values()], apps: [...apps.values()].map((a) => ({ app: a.app, org: a.org, hostnames: a.hostnames })) }
          for (const listener of listeners) listener(snapshotChange)
          resolveReady()
        }
        return
      }
      after()
    },
    onChange(change: SubscriptionChange) {
      if (change.kind === 'delete') rows.delete(change.rowid)
      else rows.set(change.rowid, change.values)
      after()
    },
    onError(err: Error) {
      logger.debug('route subscription reconnecting', { err: err.message })
    },
    }
  }

  const start = () => {
    if (started) return
    started = true
    subscriptions = [
      client.subscribe(APPS_QUERY, track(appRows, () => { applyAppRows(); reconcile() })),
      client.subscribe(MEMBERS_QUERY, track(memberRows, reconcile)),
      client.subscribe(MACHINES_QUERY, track(machineRows, reconcile)),
    ]
  }

  return {
    ready,
    subscribe(apply) {
      start()
      listeners.add(apply)
      if (loaded >= 3) apply({ kind: 'snapshot', machines: [...routable.values()], apps: [...apps.values()].map((a) => ({ app: a.app, org: a.org, hostnames: a.hostnames })) })
      return () => { listeners.delete(apply) }
    },
    routes: () => [...routable.values()],
    close() {
      for (const subscription of subscriptions) subscription.close()
      listeners.clear()
    },
  }
}
