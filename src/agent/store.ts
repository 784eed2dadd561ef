import Database from 'better-sqlite3'
import { mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import { newUlid, type ExitEvent, type ImageRef, type MachineConfig, type MachineEvent, type MachineState } from '../core/index.js'

// The agent's durable state (DESIGN "Who owns what": the agent is the source of truth for its
// Machines). SQLite in WAL mode with synchronous=NORMAL: every committed write survives a
// kill -9 of the agent. Operations are logged step by step, append-only, *before* each step runs,
// so a restarted agent knows exactly where every unfinished operation stopped.

/** The parts of an image's config a Machine's process is made from (src/images parses it). */
export type ImageRuntimeConfig = Pick<import('../images/index.js').ImageRuntimeConfig, 'env' | 'entrypoint' | 'cmd' | 'workingDir' | 'user' | 'labels'>

export interface MachineRow {
  id: string
  app: string
  org: string
  network: number
  name: string
  region: string
  state: MachineState
  instanceId: string
  ordinal: number
  privateIp: string
  ipv4: string
  config: MachineConfig
  imageRef: ImageRef
  imageDigest: string
  imageConfig: ImageRuntimeConfig
  metadata: Record<string, string>
  cordoned: boolean
  restartCount: number
  primaryRegion: string
  createdAt: string
  updatedAt: string
}

export interface LeaseRow { machineId: string; nonce: string; owner: string; description: string; expiresAt: number; version: string }

export type OperationKind = 'create' | 'start' | 'stop' | 'suspend' | 'restart' | 'update' | 'destroy' | 'signal' | 'exec' | 'exit'
export type OperationStatus = 'running' | 'done' | 'failed' | 'rolled_back'

export interface OperationRow {
  id: string
  machineId: string
  kind: OperationKind
  params: Record<string, unknown>
  status: OperationStatus
  error: string | null
  startedAt: number
}

export interface StepRecord { step: string; phase: 'begin' | 'done' | 'undo'; at: number }

const SCHEMA = `
CREATE TABLE IF NOT EXISTS machines (
  id TEXT PRIMARY KEY,
  app TEXT NOT NULL,
  org TEXT NOT NULL,
  network INTEGER NOT NULL,
  name TEXT NOT NULL,
  region TEXT NOT NULL,
  state TEXT NOT NULL,
  instance_id TEXT NOT NULL,
  ordinal INTEGER NOT NULL,
  private_ip TEXT NOT NULL,
  ipv4 TEXT NOT NULL,
  config TEXT NOT NULL,
  image_ref TEXT NOT NULL,
  image_digest TEXT NOT NULL,
  image_config TEXT NOT NULL,
  metadata TEXT NOT NULL DEFAULT '{}',
  cordoned INTEGER NOT NULL DEFAULT 0,
  restart_count INTEGER NOT NULL DEFAULT 0,
  primary_region TEXT NOT NULL DEFAULT '',
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS machines_live_name ON machines(app, name) WHERE state != 'destroyed';
CREATE INDEX IF NOT EXISTS machines_app ON machines(app);
CREATE TABLE IF NOT EXISTS versions (
  machine_id TEXT NOT NULL,
  instance_id TEXT NOT NULL,
  config TEXT NOT NULL,
  created_at TEXT NOT NULL,
  replaced INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (machine_id, instance_id)
);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  machine_id TEXT NOT NULL,
  type TEXT NOT NULL,
  status TEXT NOT NULL,
  source TEXT NOT NULL,
  timestamp INTEGER NOT NULL,
  request TEXT
);
CREATE INDEX IF NOT EXISTS events_machine ON events(machine_id, seq);
CREATE TABLE IF NOT EXISTS leases (
  machine_id TEXT PRIMARY KEY,
  nonce TEXT NOT NULL,
  owner TEXT NOT NULL,
  description TEXT NOT NULL,
  expires_at INTEGER NOT NULL,
  version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS operations (
  id TEXT PRIMARY KEY,
  machine_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  params TEXT NOT NULL,
  status TEXT NOT NULL,
  error TEXT,
  started_at INTEGER NOT NULL,
  finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS operations_running ON operations(status) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS operation_steps (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  operation_id TEXT NOT NULL,
  step TEXT NOT NULL,
  phase TEXT NOT NULL,
  at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS operation_steps_op ON operation_steps(operation_id, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS machine_secrets (machine_id TEXT PRIMARY KEY, sealed BLOB NOT NULL, updated_at INTEGER NOT NULL);
`

interface MachineDbRow {
  id: string; app: string; org: string; network: number; name: string; region: string; state: string
  instance_id: string; ordinal: number; private_ip: string; ipv4: string; config: string; image_ref: string
  image_digest: string; image_config: string; metadata: string; cordoned: number; restart_count: number
  primary_region: string; created_at: string; updated_at: string
}

const toMachine = (row: MachineDbRow): MachineRow => ({
  id: row.id, app: row.app, org: row.org, network: row.network, name: row.name, region: row.region,
  state: row.state as MachineState, instanceId: row.instance_id, ordinal: row.ordinal, privateIp: row.private_ip,
  ipv4: row.ipv4, config: JSON.parse(row.config), imageRef: JSON.parse(row.image_ref), imageDigest: row.image_digest,
  imageConfig: JSON.parse(row.image_config), metadata: JSON.parse(row.metadata), cordoned: row.cordoned === 1,
  restartCount: row.restart_count, primaryRegion: row.primary_region, createdAt: row.created_at, updatedAt: row.updated_at,
})

export class AgentStore {
  readonly db: Database.Database
  private readonly statements

  /** `exclusive`: the agent is the database's only user while it runs, so it holds the lock for
   * good and keeps the WAL index in its own memory — no file locking or shared-memory reads on
   * each of the dozen commits a Machine create makes. Others (host cleanup) open it after the
   * agent has gone. */
  constructor(path: string, options: { exclusive?: boolean } = {}) {
    mkdirSync(dirname(path), { recursive: true })
    this.db = new Database(path)
    // First: a database an agent is letting go of (it holds it exclusively) is waited for.
    this.db.pragma('busy_timeout = 5000')
    // Before the first access to the WAL (SQLite's rule for a heap-memory WAL index).
    if (options.exclusive) this.db.pragma('locking_mode = EXCLUSIVE')
    this.db.pragma('journal_mode = WAL')
    this.db.pragma('synchronous = NORMAL')
    this.db.exec(SCHEMA)
    const db = this.db
    this.statements = {
      getMachine: db.prepare<[string], MachineDbRow>('SELECT * FROM machines WHERE id = ?'),
      machinesOfApp: db.prepare<[string], MachineDbRow>('SELECT * FROM machines WHERE app = ? ORDER BY created_at, id'),
      liveMachines: db.prepare<[], MachineDbRow>("SELECT * FROM machines WHERE state != 'destroyed' ORDER BY created_at, id"),
      nameTaken: db.prepare<[string, string], { id: string }>("SELECT id FROM machines WHERE app = ? AND name = ? AND state != 'destroyed'"),
      liveUsage: db.prepare<[number, number], { machines: number; cpus: number; memoryMb: number }>(`SELECT COUNT(*) AS machines,
          COALESCE(SUM(COALESCE(json_extract(config, '$.guest.cpus'), ?)), 0) AS cpus,
          COALESCE(SUM(COALESCE(json_extract(config, '$.guest.memory_mb'), ?)), 0) AS memoryMb
        FROM machines WHERE state != 'destroyed'`),
      usedOrdinals: db.prepare<[], { ordinal: number }>("SELECT ordinal FROM machines WHERE state != 'destroyed' ORDER BY ordinal"),
      insertMachine: db.prepare(`INSERT INTO machines (id, app, org, network, name, region, state, instance_id, ordinal, private_ip, ipv4, config, image_ref, image_digest, image_config, metadata, cordoned, restart_count, primary_region, created_at, updated_at)
        VALUES (@id, @app, @org, @network, @name, @region, @state, @instanceId, @ordinal, @privateIp, @ipv4, @config, @imageRef, @imageDigest, @imageConfig, @metadata, @cordoned, @restartCount, @primaryRegion, @createdAt, @updatedAt)`),
      setState: db.prepare('UPDATE machines SET state = ?, updated_at = ? WHERE id = ?'),
      setVersion: db.prepare('UPDATE machines SET instance_id = ?, config = ?, image_ref = ?, image_digest = ?, image_config = ?, metadata = ?, updated_at = ? WHERE id = ?'),
      setMetadata: db.prepare('UPDATE machines SET metadata = ?, updated_at = ? WHERE id = ?'),
      setCordoned: db.prepare('UPDATE machines SET cordoned = ?, updated_at = ? WHERE id = ?'),
      setRestartCount: db.prepare('UPDATE machines SET restart_count = ? WHERE id = ?'),
      insertVersion: db.prepare('INSERT OR IGNORE INTO versions (machine_id, instance_id, config, created_at) VALUES (?, ?, ?, ?)'),
      markReplaced: db.prepare('UPDATE versions SET replaced = 1 WHERE machine_id = ? AND instance_id = ?'),
      versions: db.prepare<[string], { instance_id: string; config: string; created_at: string; replaced: number }>('SELECT * FROM versions WHERE machine_id = ? ORDER BY created_at DESC, instance_id DESC'),
      insertEvent: db.prepare('INSERT INTO events (id, machine_id, type, status, source, timestamp, request) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      events: db.prepare<[string, number], { id: string; type: string; status: string; source: string; timestamp: number; request: string | null }>('SELECT * FROM events WHERE machine_id = ? ORDER BY seq DESC LIMIT ?'),
      getLease: db.prepare<[string], { machine_id: string; nonce: string; owner: string; description: string; expires_at: number; version: string }>('SELECT * FROM leases WHERE machine_id = ?'),
      putLease: db.prepare('INSERT OR REPLACE INTO leases (machine_id, nonce, owner, description, expires_at, version) VALUES (?, ?, ?, ?, ?, ?)'),
      deleteLease: db.prepare('DELETE FROM leases WHERE machine_id = ?'),
      insertOperation: db.prepare('INSERT INTO operations (id, machine_id, kind, params, status, started_at) VALUES (?, ?, ?, ?, ?, ?)'),
      finishOperation: db.prepare('UPDATE operations SET status = ?, error = ?, finished_at = ? WHERE id = ?'),
      runningOperations: db.prepare<[], { id: string; machine_id: string; kind: string; params: string; status: string; error: string | null; started_at: number }>("SELECT * FROM operations WHERE status = 'running' ORDER BY started_at"),
      insertStep: db.prepare('INSERT INTO operation_steps (operation_id, step, phase, at) VALUES (?, ?, ?, ?)'),
      steps: db.prepare<[string], { step: string; phase: string; at: number }>('SELECT step, phase, at FROM operation_steps WHERE operation_id = ? ORDER BY seq'),
      nextCounter: db.prepare<[string], { value: number }>('INSERT INTO counters (name, value) VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value'),
    }
  }

  getMachine(id: string): MachineRow | undefined {
    const row = this.statements.getMachine.get(id)
    return row ? toMachine(row) : undefined
  }

  machinesOfApp(app: string): MachineRow[] {
    return this.statements.machinesOfApp.all(app).map(toMachine)
  }

  liveMachines(): MachineRow[] {
    return this.statements.liveMachines.all().map(toMachine)
  }

  /** How many live Machines there are and the CPUs and memory their configs ask for. */
  liveUsage(defaultCpus: number, defaultMemoryMb: number): { machines: number; cpus: number; memoryMb: number } {
    return this.statements.liveUsage.get(defaultCpus, defaultMemoryMb)!
  }

  isNameTaken(app: string, name: string): boolean {
    return this.statements.nameTaken.get(app, name) !== undefined
  }

  /** The smallest ordinal no live Machine uses (a Machine's private IPv4 comes from it). */
  freeOrdinal(): number {
    let expected = 1
    for (const { ordinal } of this.statements.usedOrdinals.all()) {
      if (ordinal > expected) break
      expected = ordinal + 1
    }
    return expected
  }

  /** A host-wide counter that never repeats (the 6PN machine part must not be reused). */
  nextCounter(name: string): number {
    return this.statements.nextCounter.get(name)!.value
  }

  insertMachine(machine: MachineRow): void {
    this.db.transaction(() => {
      this.statements.insertMachine.run({
        ...machine, config: JSON.stringify(machine.config), imageRef: JSON.stringify(machine.imageRef),
        imageConfig: JSON.stringify(machine.imageConfig), metadata: JSON.stringify(machine.metadata), cordoned: machine.cordoned ? 1 : 0,
      })
      this.statements.insertVersion.run(machine.id, machine.instanceId, JSON.stringify(machine.config), machine.createdAt)
    })()
  }

  setState(id: string, state: MachineState): void {
    this.statements.setState.run(state, new Date().toISOString(), id)
  }

  /** Records a new config version and marks the old one replaced (reference §1.6). */
  setVersion(id: string, previousInstanceId: string, version: { instanceId: string; config: MachineConfig; imageRef: ImageRef; imageDigest: string; imageConfig: ImageRuntimeConfig; metadata: Record<string, string> }): void {
    const now = new Date().toISOString()
    this.db.transaction(() => {
      this.statements.insertVersion.run(id, version.instanceId, JSON.stringify(version.config), now)
      this.statements.markReplaced.run(id, previousInstanceId)
      this.statements.setVersion.run(version.instanceId, JSON.stringify(version.config), JSON.stringify(version.imageRef), version.imageDigest, JSON.stringify(version.imageConfig), JSON.stringify(version.metadata), now, id)
    })()
  }

  setMetadata(id: string, metadata: Record<string, string>): void {
    this.statements.setMetadata.run(JSON.stringify(metadata), new Date().toISOString(), id)
  }

  setCordoned(id: string, cordoned: boolean): void {
    this.statements.setCordoned.run(cordoned ? 1 : 0, new Date().toISOString(), id)
  }

  setRestartCount(id: string, count: number): void {
    this.statements.setRestartCount.run(count, id)
  }

  versions(id: string): Array<{ instanceId: string; config: MachineConfig; createdAt: string; replaced: boolean }> {
    return this.statements.versions.all(id).map((v) => ({ instanceId: v.instance_id, config: JSON.parse(v.config), createdAt: v.created_at, replaced: v.replaced === 1 }))
  }

  addEvent(machineId: string, event: { type: string; status: string; source: 'user' | 'flyd'; request?: { exit_event?: ExitEvent; restart_count?: number; [key: string]: unknown } }): MachineEvent {
    const stored: MachineEvent = { id: newUlid(), type: event.type, status: event.status, source: event.source, timestamp: Date.now(), ...(event.request ? { request: event.request } : {}) }
    this.statements.insertEvent.run(stored.id, machineId, stored.type, stored.status, stored.source, stored.timestamp, event.request ? JSON.stringify(event.request) : null)
    return stored
  }

  events(machineId: string, limit: number): MachineEvent[] {
    return this.statements.events.all(machineId, limit).map((e) => ({
      id: e.id, type: e.type, status: e.status, source: e.source as 'user' | 'flyd', timestamp: e.timestamp,
      ...(e.request ? { request: JSON.parse(e.request) } : {}),
    }))
  }

  getLease(machineId: string): LeaseRow | undefined {
    const row = this.statements.getLease.get(machineId)
    return row ? { machineId: row.machine_id, nonce: row.nonce, owner: row.owner, description: row.description, expiresAt: row.expires_at, version: row.version } : undefined
  }

  putLease(lease: LeaseRow): void {
    this.statements.putLease.run(lease.machineId, lease.nonce, lease.owner, lease.description, lease.expiresAt, lease.version)
  }

  deleteLease(machineId: string): void {
    this.statements.deleteLease.run(machineId)
  }

  beginOperation(machineId: string, kind: OperationKind, params: Record<string, unknown>): OperationRow {
    const op: OperationRow = { id: newUlid(), machineId, kind, params, status: 'running', error: null, startedAt: Date.now() }
    this.statements.insertOperation.run(op.id, machineId, kind, JSON.stringify(params), 'running', op.startedAt)
    return op
  }

  recordStep(operationId: string, step: string, phase: StepRecord['phase']): void {
    this.statements.insertStep.run(operationId, step, phase, Date.now())
  }

  finishOperation(operationId: string, status: Exclude<OperationStatus, 'running'>, error?: string): void {
    this.statements.finishOperation.run(status, error ?? null, Date.now(), operationId)
  }

  runningOperations(): OperationRow[] {
    return this.statements.runningOperations.all().map((o) => ({
      id: o.id, machineId: o.machine_id, kind: o.kind as OperationKind, params: JSON.parse(o.params), status: 'running', error: o.error, startedAt: o.started_at,
    }))
  }

  steps(operationId: string): StepRecord[] {
    return this.statements.steps.all(operationId) as StepRecord[]
  }

  /** A Machine's app secrets, sealed by the agent (never stored or logged in the clear). */
  putSecrets(machineId: string, sealed: Buffer): void {
    this.db.prepare('INSERT INTO machine_secrets (machine_id, sealed, updated_at) VALUES (?, ?, ?) ON CONFLICT(machine_id) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at').run(machineId, sealed, Date.now())
  }

  getSecrets(machineId: string): Buffer | undefined {
    return (this.db.prepare('SELECT sealed FROM machine_secrets WHERE machine_id = ?').get(machineId) as { sealed: Buffer } | undefined)?.sealed
  }

  deleteSecrets(machineId: string): void {
    this.db.prepare('DELETE FROM machine_secrets WHERE machine_id = ?').run(machineId)
  }

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)()
  }

  close(): void {
    if (this.db.open) this.db.close()
  }
}
