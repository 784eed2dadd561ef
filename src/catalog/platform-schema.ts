import type { CheckStatus, MachineConfig, MachineService, MachineState } from '../core/index.js'
import type { StatementJson } from './statements.js'

// Hangar's own catalog schema (DESIGN "Who owns what"): what every host must know about every
// other — hosts and their capacity, apps, the machine→host map with routing data, volumes.
// Agents write their own hosts' rows; the API, the proxy (through a subscription) and DNS read.
// Services and check statuses live on the machine row as JSON: they have one writer (the
// machine's agent) and the proxy needs them together, so one row change carries a route update.
//
// No secrets ever enter the catalog: machine configs are stored without env values, file
// contents or secret references (`configForCatalog`).
//
// Schema rules (reference §5.2): CREATE TABLE / CREATE INDEX only; NOT NULL columns have
// defaults; later versions may only add tables, columns with defaults, and indexes.

export const PLATFORM_SCHEMA_SQL = `
-- One row per host, written by that host's agent.
CREATE TABLE hosts (
  id TEXT NOT NULL PRIMARY KEY,
  region TEXT NOT NULL DEFAULT '',
  -- Underlay address other hosts use for the backhaul (WireGuard endpoint or mTLS).
  addr TEXT NOT NULL DEFAULT '',
  -- The host's worker proxy, as reached over the backhaul.
  proxy_addr TEXT NOT NULL DEFAULT '',
  -- The host's catalog node API and gossip address.
  catalog_url TEXT NOT NULL DEFAULT '',
  gossip_addr TEXT NOT NULL DEFAULT '',
  cpus INTEGER NOT NULL DEFAULT 0,
  memory_mb INTEGER NOT NULL DEFAULT 0,
  cpus_used REAL NOT NULL DEFAULT 0,
  memory_mb_used INTEGER NOT NULL DEFAULT 0,
  machines INTEGER NOT NULL DEFAULT 0,
  -- up | draining
  state TEXT NOT NULL DEFAULT 'up',
  labels TEXT NOT NULL DEFAULT '{}',
  last_seen INTEGER NOT NULL DEFAULT 0,
  updated_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX hosts_region ON hosts (region);

CREATE TABLE apps (
  name TEXT NOT NULL PRIMARY KEY,
  org TEXT NOT NULL DEFAULT '',
  -- The org's 6PN network id.
  network TEXT NOT NULL DEFAULT '',
  primary_region TEXT NOT NULL DEFAULT '',
  -- JSON array of custom hostnames besides <app>.<domain>.
  hostnames TEXT NOT NULL DEFAULT '[]',
  created_at INTEGER NOT NULL DEFAULT 0,
  updated_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX apps_org ON apps (org);

-- A projection of each Machine, written by the agent of the host that runs it.
CREATE TABLE machines (
  id TEXT NOT NULL PRIMARY KEY,
  name TEXT NOT NULL DEFAULT '',
  app TEXT NOT NULL DEFAULT '',
  org TEXT NOT NULL DEFAULT '',
  host_id TEXT NOT NULL DEFAULT '',
  region TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL DEFAULT 'created',
  instance_id TEXT NOT NULL DEFAULT '',
  -- 6PN address.
  private_ip TEXT NOT NULL DEFAULT '',
  -- Where the worker proxy on host_id connects to reach the Machine.
  address TEXT NOT NULL DEFAULT '',
  image TEXT NOT NULL DEFAULT '',
  -- JSON: the Machine config without secrets (configForCatalog).
  config TEXT NOT NULL DEFAULT '{}',
  -- JSON: config.services, for the proxy.
  services TEXT NOT NULL DEFAULT '[]',
  -- JSON: CheckStatus[], the latest check results.
  checks TEXT NOT NULL DEFAULT '[]',
  cordoned INTEGER NOT NULL DEFAULT 0,
  process_group TEXT NOT NULL DEFAULT '',
  created_at INTEGER NOT NULL DEFAULT 0,
  updated_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX machines_app ON machines (app);
CREATE INDEX machines_host ON machines (host_id);

CREATE TABLE volumes (
  id TEXT NOT NULL PRIMARY KEY,
  name TEXT NOT NULL DEFAULT '',
  app TEXT NOT NULL DEFAULT '',
  org TEXT NOT NULL DEFAULT '',
  region TEXT NOT NULL DEFAULT '',
  host_id TEXT NOT NULL DEFAULT '',
  size_gb INTEGER NOT NULL DEFAULT 0,
  -- created | attached | detached | destroyed | ...
  state TEXT NOT NULL DEFAULT 'created',
  attached_machine_id TEXT NOT NULL DEFAULT '',
  encrypted INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL DEFAULT 0,
  updated_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX volumes_app ON volumes (app);
CREATE INDEX volumes_host ON volumes (host_id);
`

export interface HostRow {
  id: string
  region: string
  addr: string
  proxy_addr: string
  catalog_url: string
  gossip_addr: string
  cpus: number
  memory_mb: number
  cpus_used: number
  memory_mb_used: number
  machines: number
  state: 'up' | 'draining'
  labels: Record<string, string>
  last_seen: number
  updated_at: number
}

export interface AppRow {
  name: string
  org: string
  network: string
  primary_region: string
  hostnames: string[]
  created_at: number
  updated_at: number
}

export interface MachineRow {
  id: string
  name: string
  app: string
  org: string
  host_id: string
  region: string
  state: MachineState
  instance_id: string
  private_ip: string
  address: string
  image: string
  config: MachineConfig
  services: MachineService[]
  checks: CheckStatus[]
  cordoned: boolean
  process_group: string
  created_at: number
  updated_at: number
}

export interface VolumeRow {
  id: string
  name: string
  app: string
  org: string
  region: string
  host_id: string
  size_gb: number
  state: string
  attached_machine_id: string
  encrypted: boolean
  created_at: number
  updated_at: number
}

/** A Machine config as the catalog may hold it: env values, file contents and secret
 * references are removed (the catalog is readable by every host). */
export function configForCatalog(config: MachineConfig): MachineConfig {
  const copy = JSON.parse(JSON.stringify(config)) as MachineConfig
  if (copy.env) copy.env = Object.fromEntries(Object.keys(copy.env).map((k) => [k, '']))
  if (copy.files) copy.files = copy.files.map(({ raw_value: _raw, secret_name: _secret, ...rest }) => rest)
  if (copy.processes) copy.processes = copy.processes.map(({ env, secrets: _secrets, ...rest }) => ({ ...rest, ...(env ? { env: Object.fromEntries(Object.keys(env).map((k) => [k, ''])) } : {}) }))
  return copy
}

/** INSERT … ON CONFLICT DO UPDATE of the given columns: only columns whose value changed take a
 * new col_version, so an agent can write its whole row every time at the cost of the diff. */
function upsert(table: string, key: string, row: Record<string, string | number | boolean | null>): StatementJson {
  const columns = Object.keys(row)
  const values = columns.map((c) => {
    const v = row[c]!
    return typeof v === 'boolean' ? (v ? 1 : 0) : v
  })
  const updates = columns.filter((c) => c !== key).map((c) => `"${c}" = excluded."${c}"`).join(', ')
  return [`INSERT INTO ${table} (${columns.map((c) => `"${c}"`).join(', ')}) VALUES (${columns.map(() => '?').join(', ')}) ON CONFLICT ("${key}") DO UPDATE SET ${updates}`, values]
}

export function upsertHost(row: HostRow): StatementJson {
  return upsert('hosts', 'id', { ...row, labels: JSON.stringify(row.labels) })
}

export function upsertApp(row: AppRow): StatementJson {
  return upsert('apps', 'name', { ...row, hostnames: JSON.stringify(row.hostnames) })
}

export function upsertMachine(row: MachineRow): StatementJson {
  return upsert('machines', 'id', {
    ...row,
    config: JSON.stringify(configForCatalog(row.config)),
    services: JSON.stringify(row.services),
    checks: JSON.stringify(row.checks),
  })
}

export function upsertVolume(row: VolumeRow): StatementJson {
  return upsert('volumes', 'id', { ...row })
}

export function deleteMachine(id: string): StatementJson {
  return ['DELETE FROM machines WHERE id = ?', [id]]
}

export function deleteVolume(id: string): StatementJson {
  return ['DELETE FROM volumes WHERE id = ?', [id]]
}

export function deleteApp(name: string): StatementJson {
  return ['DELETE FROM apps WHERE name = ?', [name]]
}
