import Database from 'better-sqlite3'
import { mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import { createHash, randomBytes } from 'node:crypto'

// The API's own store (DESIGN "Who owns what": orgs, keys, secrets, token revocations). Apps and
// the Machine → host index live here too until the catalog carries them; the index is only a
// cache of what the agents report, never the truth about a Machine.

export interface OrgRow { slug: string; name: string; network: number; createdAt: string }
export interface AppRow { name: string; org: string; network: number; primaryRegion: string; createdAt: string }

const SCHEMA = `
CREATE TABLE IF NOT EXISTS orgs (slug TEXT PRIMARY KEY, name TEXT NOT NULL, network INTEGER NOT NULL UNIQUE, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS apps (name TEXT PRIMARY KEY, org TEXT NOT NULL, network INTEGER NOT NULL, primary_region TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS machine_hosts (machine_id TEXT PRIMARY KEY, app TEXT NOT NULL, host_id TEXT NOT NULL, state TEXT NOT NULL, updated_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS machine_hosts_app ON machine_hosts(app);
CREATE TABLE IF NOT EXISTS static_tokens (hash TEXT PRIMARY KEY, org TEXT NOT NULL, name TEXT NOT NULL, created_at TEXT NOT NULL);
`

export class ApiStore {
  readonly db: Database.Database
  private readonly appDeletedHooks: Array<(app: string) => void> = []
  private tokenIssuer: ((org: string, name: string) => string) | undefined

  constructor(path: string) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true })
    this.db = new Database(path)
    this.db.pragma('journal_mode = WAL')
    this.db.pragma('synchronous = NORMAL')
    // Several API processes may share one store (one data dir): writers wait for each other.
    this.db.pragma('busy_timeout = 5000')
    this.db.exec(SCHEMA)
  }

  private readonly statements = new Map<string, Database.Statement>()

  /** A prepared statement, prepared once per SQL text (a create asks for several). */
  private sql(text: string): Database.Statement {
    let statement = this.statements.get(text)
    if (!statement) { statement = this.db.prepare(text); this.statements.set(text, statement) }
    return statement
  }

  createOrg(slug: string, name = slug): OrgRow {
    const existing = this.getOrg(slug)
    if (existing) return existing
    const max = this.sql('SELECT COALESCE(MAX(network), 0) AS n FROM orgs').get() as { n: number }
    const org: OrgRow = { slug, name, network: max.n + 1, createdAt: new Date().toISOString() }
    this.sql('INSERT INTO orgs (slug, name, network, created_at) VALUES (?, ?, ?, ?)').run(org.slug, org.name, org.network, org.createdAt)
    return org
  }

  getOrg(slug: string): OrgRow | undefined {
    const row = this.sql('SELECT * FROM orgs WHERE slug = ?').get(slug) as { slug: string; name: string; network: number; created_at: string } | undefined
    return row ? { slug: row.slug, name: row.name, network: row.network, createdAt: row.created_at } : undefined
  }

  listOrgs(): OrgRow[] {
    return (this.sql('SELECT * FROM orgs ORDER BY slug').all() as Array<{ slug: string; name: string; network: number; created_at: string }>)
      .map((row) => ({ slug: row.slug, name: row.name, network: row.network, createdAt: row.created_at }))
  }

  /** Inserts the app; false when the name is taken (by any org: names are global, as on Fly). */
  createApp(app: AppRow): boolean {
    const result = this.sql('INSERT OR IGNORE INTO apps (name, org, network, primary_region, created_at) VALUES (?, ?, ?, ?, ?)').run(app.name, app.org, app.network, app.primaryRegion, app.createdAt)
    return result.changes === 1
  }

  getApp(name: string): AppRow | undefined {
    const row = this.sql('SELECT * FROM apps WHERE name = ?').get(name) as { name: string; org: string; network: number; primary_region: string; created_at: string } | undefined
    return row ? { name: row.name, org: row.org, network: row.network, primaryRegion: row.primary_region, createdAt: row.created_at } : undefined
  }

  listApps(org?: string): AppRow[] {
    const rows = (org ? this.sql('SELECT * FROM apps WHERE org = ? ORDER BY name').all(org) : this.sql('SELECT * FROM apps ORDER BY name').all()) as Array<{ name: string; org: string; network: number; primary_region: string; created_at: string }>
    return rows.map((row) => ({ name: row.name, org: row.org, network: row.network, primaryRegion: row.primary_region, createdAt: row.created_at }))
  }

  deleteApp(name: string): void {
    this.db.transaction(() => {
      this.sql('DELETE FROM apps WHERE name = ?').run(name)
      this.sql('DELETE FROM machine_hosts WHERE app = ?').run(name)
      // What other parts keep per app (secrets, releases) goes with it: a new app of the same
      // name, perhaps in another org, must not inherit it.
      for (const hook of this.appDeletedHooks) hook(name)
    })()
  }

  /** Runs `hook(app)` inside the transaction that deletes an app. */
  onAppDeleted(hook: (app: string) => void): void {
    this.appDeletedHooks.push(hook)
  }

  /** Where `createStaticToken` gets its tokens once the API's macaroon auth is open. */
  setTokenIssuer(issue: (org: string, name: string) => string): void {
    this.tokenIssuer = issue
  }

  indexMachine(machineId: string, app: string, hostId: string, state: string): void {
    this.sql('INSERT INTO machine_hosts (machine_id, app, host_id, state, updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(machine_id) DO UPDATE SET host_id = excluded.host_id, state = excluded.state, updated_at = excluded.updated_at')
      .run(machineId, app, hostId, state, Date.now())
  }

  machineHost(machineId: string): { app: string; hostId: string; state: string } | undefined {
    const row = this.sql('SELECT app, host_id, state FROM machine_hosts WHERE machine_id = ?').get(machineId) as { app: string; host_id: string; state: string } | undefined
    return row ? { app: row.app, hostId: row.host_id, state: row.state } : undefined
  }

  machineCounts(app: string): { total: number; live: number } {
    const row = this.sql("SELECT COUNT(*) AS total, SUM(state != 'destroyed') AS live FROM machine_hosts WHERE app = ?").get(app) as { total: number; live: number | null }
    return { total: row.total, live: row.live ?? 0 }
  }

  /** A token for `org` that may do everything in it, shown once: an fm2_ org macaroon when the
   * API's macaroon auth is open (the default), else a static bearer token whose hash is kept. */
  createStaticToken(org: string, name: string): string {
    if (this.tokenIssuer) return this.tokenIssuer(org, name)
    const token = `hgt_${randomBytes(24).toString('base64url')}`
    this.sql('INSERT INTO static_tokens (hash, org, name, created_at) VALUES (?, ?, ?, ?)').run(hashToken(token), org, name, new Date().toISOString())
    return token
  }

  staticTokenOrg(token: string): string | undefined {
    const row = this.sql('SELECT org FROM static_tokens WHERE hash = ?').get(hashToken(token)) as { org: string } | undefined
    return row?.org
  }

  close(): void {
    if (this.db.open) this.db.close()
  }
}

const hashToken = (token: string) => createHash('sha256').update(token).digest('hex')
