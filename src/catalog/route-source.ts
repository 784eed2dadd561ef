import { TERMINAL_STATES, type AppRoute, type CheckStatus, type Logger, type MachineConfig, type MachineRoute, type MachineService, type MachineState, type RouteChange, type RouteSource, silentLogger } from '../core/index.js'
import type { CatalogClient, CatalogSubscription, JsonValue, SubscriptionChange, SubscriptionRow } from './client.js'
import { MEMBERS_TABLE } from './crr-store.js'

// The proxy's routing table fed from the catalog (DESIGN "Proxy": "the proxy keeps its routing
// table from a subscription"). Three subscriptions — machines, apps, and this node's view of
// membership — are joined here into MachineRoutes. A Machine is routable unless it is in a
// terminal state or its host's catalog node is down according to SWIM (issue 4: "SWIM detects
// a killed node and the proxy stops routing to its Machines"); it comes back when the host does.
// Work per change is proportional to what changed: a Machine row touches one route; an app
// or a host touches that app's or host's Machines.

const MACHINES_QUERY = 'SELECT id, app, org, region, host_id, state, instance_id, address, private_ip, services, checks, cordoned, process_group, config, updated_at FROM machines'
const APPS_QUERY = 'SELECT name, org, primary_region, hostnames FROM apps'
const MEMBERS_QUERY = `SELECT site_id, host_id, state FROM ${MEMBERS_TABLE}`

const TERMINAL = new Set<string>(TERMINAL_STATES)

function parseJson<T>(value: JsonValue | undefined, fallback: T): T {
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

type TableHandler = {
  onSnapshot(columns: string[], rows: SubscriptionRow[]): void
  onChange(change: SubscriptionChange): void
  onError(err: Error): void
}

export function createCatalogRouteSource(client: CatalogClient, options: { logger?: Logger } = {}): CatalogRouteSource {
  const logger = options.logger ?? silentLogger
  const machineRows = new Map<number, JsonValue[]>()
  const appRows = new Map<number, JsonValue[]>()
  const memberRows = new Map<number, JsonValue[]>()
  const apps = new Map<string, AppInfo>()
  let down = new Set<string>()
  const routable = new Map<string, { route: MachineRoute; print: string }>()
  const listeners = new Set<(change: RouteChange) => void>()
  let loaded = 0
  let started = false
  let subscriptions: CatalogSubscription[] = []
  let resolveReady!: () => void
  const ready = new Promise<void>((resolve) => { resolveReady = resolve })

  // Quiet until the first full snapshot has been handed out.
  let quiet = true
  const emit = (change: RouteChange) => {
    if (quiet) return
    for (const listener of listeners) {
      try { listener(change) } catch (err) { logger.error('route listener failed', { err }) }
    }
  }

  const snapshot = (): RouteChange => ({
    kind: 'snapshot',
    machines: [...routable.values()].map((r) => r.route),
    apps: [...apps.values()].map((a) => ({ app: a.app, org: a.org, hostnames: a.hostnames })),
  })

  const computeDownHosts = (): Set<string> => {
    const aliveByHost = new Map<string, boolean>()
    for (const [, hostId, state] of memberRows.values()) {
      if (typeof hostId !== 'string' || hostId === '') continue
      aliveByHost.set(hostId, (aliveByHost.get(hostId) ?? false) || state === 'alive' || state === 'suspect')
    }
    return new Set([...aliveByHost].filter(([, alive]) => !alive).map(([host]) => host))
  }

  const toRoute = (row: JsonValue[]): MachineRoute => {
    const [id, app, org, region, hostId, state, instanceId, address, privateIp, services, checks, cordoned, processGroup, config, updatedAt] = row
    return {
      machineId: String(id),
      app: String(app),
      org: String(org),
      region: String(region),
      hostId: String(hostId),
      state: String(state) as MachineState,
      instanceId: String(instanceId),
      address: String(address || privateIp || ''),
      services: parseJson<MachineService[]>(services, []),
      checks: parseJson<CheckStatus[]>(checks, []),
      cordoned: cordoned === 1 || cordoned === true,
      processGroup: String(processGroup ?? ''),
      stopConfig: parseJson<MachineConfig>(config, { image: '' }).stop_config ?? {},
      primaryRegion: apps.get(String(app))?.primaryRegion ?? '',
      updatedAt: Number(updatedAt ?? 0),
    }
  }

  /** Brings one Machine's routability up to date with its row (undefined: the row is gone). */
  const consider = (machineId: string, row: JsonValue[] | undefined) => {
    const route = row ? toRoute(row) : undefined
    if (!route || TERMINAL.has(route.state) || down.has(route.hostId)) {
      if (routable.delete(machineId)) emit({ kind: 'remove', machineId })
      return
    }
    const print = JSON.stringify(route)
    if (routable.get(machineId)?.print === print) return
    routable.set(machineId, { route, print })
    emit({ kind: 'upsert', machine: route })
  }

  const reconsiderWhere = (match: (row: JsonValue[]) => boolean) => {
    for (const row of machineRows.values()) if (match(row)) consider(String(row[0]), row)
  }

  /** Every Machine again (after a fresh snapshot of any table). */
  const reconcileAll = () => {
    const present = new Set<string>()
    for (const row of machineRows.values()) { present.add(String(row[0])); consider(String(row[0]), row) }
    for (const id of [...routable.keys()]) if (!present.has(id)) consider(id, undefined)
  }

  const refreshApps = (): Set<string> => {
    const changed = new Set<string>()
    const next = new Map<string, AppInfo>()
    for (const [name, org, primaryRegion, hostnames] of appRows.values()) {
      next.set(String(name), { app: String(name), org: String(org), hostnames: parseJson<string[]>(hostnames, []), primaryRegion: String(primaryRegion ?? '') })
    }
    for (const [name, app] of next) {
      const before = apps.get(name)
      if (!before || JSON.stringify(before) !== JSON.stringify(app)) {
        changed.add(name)
        if (!before || before.org !== app.org || JSON.stringify(before.hostnames) !== JSON.stringify(app.hostnames)) emit({ kind: 'app', app: { app: app.app, org: app.org, hostnames: app.hostnames } })
      }
    }
    for (const name of apps.keys()) if (!next.has(name)) changed.add(name)
    apps.clear()
    for (const [name, app] of next) apps.set(name, app)
    return changed
  }

  const onAppsChanged = () => {
    const changed = refreshApps()
    if (changed.size > 0) reconsiderWhere((row) => changed.has(String(row[1])))
  }

  const onMembersChanged = () => {
    const next = computeDownHosts()
    const flipped = new Set([...next].filter((h) => !down.has(h)).concat([...down].filter((h) => !next.has(h))))
    down = next
    if (flipped.size > 0) reconsiderWhere((row) => flipped.has(String(row[4])))
  }

  const onFirstLoad = () => {
    loaded++
    if (loaded < 3) return
    refreshApps()
    down = computeDownHosts()
    reconcileAll()
    quiet = false
    const first = snapshot()
    for (const listener of listeners) listener(first)
    resolveReady()
  }

  const handler = (rows: Map<number, JsonValue[]>, onChanged: (change?: SubscriptionChange, previous?: JsonValue[]) => void): TableHandler => {
    let initial = true
    return {
      onSnapshot(_columns, snapshotRows) {
        // A later snapshot (the client had to subscribe afresh) replaces the rows; the
        // difference is emitted as upserts and removes.
        rows.clear()
        for (const row of snapshotRows) rows.set(row.rowid, row.values)
        if (initial) { initial = false; onFirstLoad(); return }
        onChanged()
      },
      onChange(change) {
        const previous = rows.get(change.rowid)
        if (change.kind === 'delete') rows.delete(change.rowid)
        else rows.set(change.rowid, change.values)
        onChanged(change, previous)
      },
      onError(err) {
        logger.debug('route subscription reconnecting', { err: err.message })
      },
    }
  }

  const onMachinesChanged = (change?: SubscriptionChange, previous?: JsonValue[]) => {
    if (loaded < 3) return
    if (!change) { reconcileAll(); return }
    if (change.kind === 'delete') { consider(String((previous ?? change.values)[0]), undefined); return }
    if (previous && String(previous[0]) !== String(change.values[0])) consider(String(previous[0]), undefined)
    consider(String(change.values[0]), change.values)
  }

  const start = () => {
    if (started) return
    started = true
    subscriptions = [
      client.subscribe(APPS_QUERY, handler(appRows, () => { if (loaded >= 3) onAppsChanged() })),
      client.subscribe(MEMBERS_QUERY, handler(memberRows, () => { if (loaded >= 3) onMembersChanged() })),
      client.subscribe(MACHINES_QUERY, handler(machineRows, onMachinesChanged)),
    ]
  }

  return {
    ready,
    subscribe(apply) {
      start()
      listeners.add(apply)
      if (loaded >= 3) apply(snapshot())
      return () => { listeners.delete(apply) }
    },
    routes: () => [...routable.values()].map((r) => r.route),
    close() {
      for (const subscription of subscriptions) subscription.close()
      listeners.clear()
    },
  }
}

// ── the backhaul's peers ──
// Each host's agent writes its proxy's backhaul address into its hosts row (`proxy_addr`); every
// proxy keeps a session to every other (src/proxy backhaul). Shaped like the proxy's PeerSource.

const HOSTS_QUERY = 'SELECT id, region, proxy_addr FROM hosts'

export interface CatalogPeer {
  hostId: string
  region: string
  /** `host:port` of the host's proxy backhaul listener. */
  addr: string
}

export interface CatalogPeerSource {
  /** Calls `apply` with every host that has a backhaul address, now (once loaded) and on change. */
  subscribe(apply: (peers: CatalogPeer[]) => void): () => void
  close(): void
}

export function createCatalogPeerSource(client: CatalogClient, options: { logger?: Logger } = {}): CatalogPeerSource {
  const logger = options.logger ?? silentLogger
  const rows = new Map<number, JsonValue[]>()
  const listeners = new Set<(peers: CatalogPeer[]) => void>()
  let loaded = false
  let last = ''
  let subscription: CatalogSubscription | undefined
  const peers = (): CatalogPeer[] => [...rows.values()]
    .map(([id, region, addr]) => ({ hostId: String(id ?? ''), region: String(region ?? ''), addr: String(addr ?? '') }))
    .filter((p) => p.hostId !== '' && p.addr !== '')
    .sort((a, b) => (a.hostId < b.hostId ? -1 : 1))
  const emit = () => {
    if (!loaded) return
    const list = peers()
    const print = JSON.stringify(list)
    if (print === last) return
    last = print
    for (const listener of listeners) {
      try { listener(list) } catch (err) { logger.error('peer listener failed', { err }) }
    }
  }
  const start = () => {
    if (subscription !== undefined) return
    subscription = client.subscribe(HOSTS_QUERY, {
      onSnapshot(_columns, snapshotRows) {
        rows.clear()
        for (const row of snapshotRows) rows.set(row.rowid, row.values)
        loaded = true
        emit()
      },
      onChange(change) {
        if (change.kind === 'delete') rows.delete(change.rowid)
        else rows.set(change.rowid, change.values)
        emit()
      },
      onError(err) { logger.debug('hosts subscription reconnecting', { err: err.message }) },
    })
  }
  return {
    subscribe(apply) {
      start()
      listeners.add(apply)
      if (loaded) apply(peers())
      return () => { listeners.delete(apply) }
    },
    close() {
      subscription?.close()
      listeners.clear()
    },
  }
}
