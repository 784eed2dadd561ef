import { TERMINAL_STATES, silentLogger, type Logger, type MachineConfig } from '../core/index.js'
import type { CatalogClient, CatalogSubscription, JsonValue, SubscriptionChange, SubscriptionRow } from '../catalog/index.js'
import type { DnsApp, DnsIndex, DnsMachine } from './dns-index.js'

// `.internal` DNS reads the catalog (issue 4: the platform schema is "read by the API, the proxy
// (through a subscription) and DNS"): two subscriptions, machines and apps, applied to the
// DnsIndex row by row. After a reconnect that needed a fresh snapshot, the index is rebuilt
// from it, so nothing missed while the stream was down lingers.

const MACHINES_QUERY = 'SELECT id, app, host_id, region, state, private_ip, address, process_group, config FROM machines'
const APPS_QUERY = 'SELECT name, network FROM apps'

const TERMINAL = new Set<string>(TERMINAL_STATES)

export interface CatalogDnsFeed {
  /** Resolves once both tables have loaded (the server answers SERVFAIL until then). */
  readonly ready: Promise<void>
  readonly loaded: boolean
  close(): void
}

function parseConfig(value: JsonValue | undefined): Partial<MachineConfig> {
  if (typeof value !== 'string') return {}
  try { return JSON.parse(value) as Partial<MachineConfig> } catch { return {} }
}

/** A machines row as DNS sees it, or undefined when DNS must not list it: terminal states, and
 * Machines whose config says `dns.skip_registration` (reference §1.5 `dns`). */
export function dnsMachineFromRow(values: JsonValue[]): DnsMachine | undefined {
  const [id, app, hostId, region, state, privateIp, address, processGroup, config] = values
  if (typeof id !== 'string' || id === '' || typeof app !== 'string' || typeof privateIp !== 'string' || privateIp === '') return undefined
  if (TERMINAL.has(String(state))) return undefined
  const parsed = parseConfig(config)
  if (parsed.dns?.skip_registration) return undefined
  const metadata: Record<string, string> = {}
  for (const [key, value] of Object.entries(parsed.metadata ?? {})) if (typeof value === 'string') metadata[key] = value
  return {
    id, app, hostId: String(hostId ?? ''), region: String(region ?? ''), state: String(state ?? ''), privateIp,
    ipv4: String(address ?? ''), processGroup: String(processGroup || metadata.fly_process_group || 'app'), metadata,
  }
}

export function dnsAppFromRow(values: JsonValue[]): DnsApp | undefined {
  const [name, network] = values
  const number = Number(network)
  if (typeof name !== 'string' || name === '' || !Number.isInteger(number) || number <= 0) return undefined
  return { name, network: number }
}

export function createCatalogDnsFeed(client: CatalogClient, index: DnsIndex, options: { logger?: Logger } = {}): CatalogDnsFeed {
  const logger = options.logger ?? silentLogger
  // Each table's rows by rowid: a delete's values may be empty, so the previous row says which
  // Machine or app to remove; a fresh snapshot of either table rebuilds the index from both.
  const machineRows = new Map<number, JsonValue[]>()
  const appRows = new Map<number, JsonValue[]>()
  let machinesLoaded = false
  let appsLoaded = false
  let resolveReady!: () => void
  const ready = new Promise<void>((resolve) => { resolveReady = resolve })
  const loaded = () => machinesLoaded && appsLoaded

  const rebuild = () => {
    if (!loaded()) return
    const machines = [...machineRows.values()].map(dnsMachineFromRow).filter((m): m is DnsMachine => m !== undefined)
    const apps = [...appRows.values()].map(dnsAppFromRow).filter((a): a is DnsApp => a !== undefined)
    index.reset(machines, apps)
    logger.info('dns index loaded', index.size)
    resolveReady()
  }

  const onMachineChange = (change: SubscriptionChange) => {
    const previous = machineRows.get(change.rowid)
    if (change.kind === 'delete') machineRows.delete(change.rowid)
    else machineRows.set(change.rowid, change.values)
    if (!loaded()) return
    const previousId = previous ? String(previous[0] ?? '') : ''
    const id = change.kind === 'delete' ? '' : String(change.values[0] ?? '')
    if (previousId && previousId !== id) index.removeMachine(previousId)
    if (change.kind === 'delete') return
    const machine = dnsMachineFromRow(change.values)
    if (machine) index.upsertMachine(machine)
    else if (id) index.removeMachine(id)
  }

  const onAppChange = (change: SubscriptionChange) => {
    const previous = appRows.get(change.rowid)
    if (change.kind === 'delete') appRows.delete(change.rowid)
    else appRows.set(change.rowid, change.values)
    if (!loaded()) return
    const previousName = previous ? String(previous[0] ?? '') : ''
    const name = change.kind === 'delete' ? '' : String(change.values[0] ?? '')
    if (previousName && previousName !== name) index.removeApp(previousName)
    if (change.kind === 'delete') return
    const app = dnsAppFromRow(change.values)
    if (app) index.upsertApp(app)
    else if (name) index.removeApp(name)
  }

  const snapshotInto = (target: Map<number, JsonValue[]>, mark: () => void) => (_columns: string[], rows: SubscriptionRow[]) => {
    target.clear()
    for (const row of rows) target.set(row.rowid, row.values)
    mark()
    rebuild()
  }

  const subscriptions: CatalogSubscription[] = [
    client.subscribe(APPS_QUERY, {
      onSnapshot: snapshotInto(appRows, () => { appsLoaded = true }),
      onChange: onAppChange,
      onError: (err) => logger.debug('apps subscription reconnecting', { err: err.message }),
    }),
    client.subscribe(MACHINES_QUERY, {
      onSnapshot: snapshotInto(machineRows, () => { machinesLoaded = true }),
      onChange: onMachineChange,
      onError: (err) => logger.debug('machines subscription reconnecting', { err: err.message }),
    }),
  ]

  return {
    ready,
    get loaded() { return loaded() },
    close() { for (const subscription of subscriptions) subscription.close() },
  }
}
