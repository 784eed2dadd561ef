// The `.internal` names of reference §3.3, read from a query's lower-cased labels. Pure: the
// grammar is decided by the label count and the fixed labels (`vm`, `process`, `kv._metadata`,
// `nearest.of`, …), so every name maps to exactly one meaning or to none.
//
//   internal                                  the zone apex (SOA)
//   _apps.internal                            TXT  app names in the org
//   _instances.internal / all._instances…     TXT  instance=…,app=…,ip=…,region=… (started / all)
//   _peer.internal, <peer>._peer.internal     WireGuard peers (Hangar has none: empty / NXDOMAIN)
//   <app>.internal, global.<app>.internal     AAAA started Machines
//   vms.<app>.internal / all.vms.<app>…       TXT  "id region,…" (started / all)
//   regions.<app>.internal / all.regions…     TXT  "ams,sjc" (regions with started / any)
//   <region>.<app>.internal                   AAAA started Machines in the region
//   top<N>.nearest.of.<app>.internal          AAAA the N closest started Machines
//   <machine_id>.vm.<app>.internal            AAAA one Machine
//   <group>.process.<app>.internal            AAAA started Machines of a process group
//   <value>.<key>.kv._metadata.<app>.internal AAAA started Machines whose metadata key = value

export const INTERNAL_ZONE = 'internal'

/** The largest N in `top<N>.nearest.of`: more would not fit one UDP answer anyway. */
export const MAX_NEAREST = 64

export type InternalName =
  | { kind: 'apex' }
  | { kind: 'apps' }
  | { kind: 'instances'; all: boolean }
  | { kind: 'peers' }
  | { kind: 'peer'; peer: string }
  | { kind: 'app'; app: string }
  | { kind: 'vms'; app: string; all: boolean }
  | { kind: 'regions'; app: string; all: boolean }
  | { kind: 'region'; app: string; region: string }
  | { kind: 'nearest'; app: string; count: number }
  | { kind: 'vm'; app: string; machineId: string }
  | { kind: 'process'; app: string; group: string }
  | { kind: 'metadata'; app: string; key: string; value: string }

/** True for names under `.internal` (which Hangar answers itself and never forwards). */
export function isInternalName(labels: readonly string[]): boolean {
  return labels.length > 0 && labels[labels.length - 1] === INTERNAL_ZONE
}

/** The meaning of a lower-cased `.internal` name, or undefined when it has none (NXDOMAIN). */
export function parseInternalName(labels: readonly string[]): InternalName | undefined {
  if (!isInternalName(labels) || labels.some((l) => l.length === 0)) return undefined
  const parts = labels.slice(0, -1)
  const n = parts.length
  if (n === 0) return { kind: 'apex' }
  if (n === 1) {
    const [only] = parts as [string]
    if (only === '_apps') return { kind: 'apps' }
    if (only === '_instances') return { kind: 'instances', all: false }
    if (only === '_peer') return { kind: 'peers' }
    if (only.startsWith('_')) return undefined
    return { kind: 'app', app: only }
  }
  const app = parts[n - 1]!
  if (n === 2 && app === '_instances' && parts[0] === 'all') return { kind: 'instances', all: true }
  if (n === 2 && app === '_peer') return { kind: 'peer', peer: parts[0]! }
  // Every other name ends in an app; names starting with `_` are reserved, not apps.
  if (app.startsWith('_')) return undefined
  if (n === 2) {
    const [first] = parts as [string, string]
    if (first === 'global') return { kind: 'app', app }
    if (first === 'vms') return { kind: 'vms', app, all: false }
    if (first === 'regions') return { kind: 'regions', app, all: false }
    return { kind: 'region', app, region: first }
  }
  if (n === 3) {
    const [first, second] = parts as [string, string, string]
    if (first === 'all' && second === 'vms') return { kind: 'vms', app, all: true }
    if (first === 'all' && second === 'regions') return { kind: 'regions', app, all: true }
    if (second === 'vm') return { kind: 'vm', app, machineId: first }
    if (second === 'process') return { kind: 'process', app, group: first }
    return undefined
  }
  if (n === 4) {
    const match = /^top([1-9][0-9]*)$/.exec(parts[0]!)
    if (match && parts[1] === 'nearest' && parts[2] === 'of') {
      const count = Number(match[1])
      return count <= MAX_NEAREST ? { kind: 'nearest', app, count } : undefined
    }
    return undefined
  }
  if (n === 5 && parts[2] === 'kv' && parts[3] === '_metadata') return { kind: 'metadata', app: parts[4]!, key: parts[1]!, value: parts[0]! }
  return undefined
}
