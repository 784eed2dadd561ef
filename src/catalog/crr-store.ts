import { randomBytes } from 'node:crypto'
import Database from 'better-sqlite3'
import { InvalidArgumentError, type Logger, silentLogger } from '../core/index.js'
import { SENTINEL_CID, decideMerge, type ColumnClock } from './crdt-merge.js'
import { SITE_ID_BYTES, type ChangeRecord, type Changeset } from './changeset.js'
import { packColumns, unpackColumns } from './packed-columns.js'
import { addColumnSql, isPlanEmpty, parseSchema, planSchemaChange, readTableSchema, SchemaError, type CatalogSchema, type SchemaPlan, type TableSchema } from './schema.js'
import { leadingKeywords, quoteIdentifier as q, quoteString } from './sql-text.js'
import type { SqlValue } from './sqlite-value.js'
import { missingFor, syncStateFromKnown, type SyncAnswer, type SyncState } from './sync-state.js'
import { RangeSet } from './version-ranges.js'

// The replicated store: a SQLite database whose schema tables are CRRs with cr-sqlite's
// semantics (reference §5.6), implemented with triggers and clock tables because the native
// extension cannot be built here (dependency-facts §2).
//
//   local write ──► triggers (capturing on) ──► <table>__crsql_clock rows stamped
//                   (site_id, db_version, seq, col_version)
//   remote change ──► applyChangesets (capturing off) ──► decideMerge ──► row + clock
//
// Each clock row is "the winning write of this cell"; `crsql_changes` (a view) joins clocks to
// the current values. Which transactions a node holds is kept per site as version ranges
// (`__hangar_bookkeeping`), the basis of sync (reference §5.4).

export interface StatementInput {
  sql: string
  params?: SqlValue[] | Record<string, SqlValue>
}

export interface StatementResult {
  rowsAffected: number
  timeSec: number
}

export interface TransactionOutcome {
  results: StatementResult[]
  /** The db_version the transaction took, or null when it changed nothing. */
  version: number | null
  changeset: Changeset | null
  timeSec: number
}

/** A statement of a transaction failed; the whole transaction was rolled back. */
export class StatementError extends InvalidArgumentError {
  constructor(readonly statementIndex: number, message: string, options?: { cause?: unknown }) {
    super(`statement ${statementIndex}: ${message}`, options)
  }
}

export interface ApplyOutcome {
  /** Changesets applied (new versions recorded). */
  versionsApplied: number
  /** Individual changes that won their merge and changed the database. */
  changesApplied: number
  /** Changesets that reference tables or columns this node does not have yet; not recorded, so
   * sync asks for them again after the schema catches up. */
  deferred: Array<{ siteId: string; version: number; reason: string }>
  changedTables: Set<string>
}

export interface CrrStoreOptions {
  /** SQLite file path, or ':memory:' (tests). */
  path: string
  /** Used only when the database is new. */
  siteId?: Buffer
  /** Refuse to open a database that belongs to another cluster (reference §5.4 DifferentCluster). */
  clusterId?: string
  logger?: Logger
  /** Synchronous mode; NORMAL (the default) survives process crashes, FULL also power loss. */
  synchronous?: 'NORMAL' | 'FULL'
}

export const MEMBERS_TABLE = '__corro_members'

/** Per table, the packed primary keys a commit changed (hex → pk); tables absent from the map
 * (or a missing map) changed in ways not tracked by key. */
export type ChangedKeys = ReadonlyMap<string, ReadonlyMap<string, Buffer>>
export type CommitListener = (changedTables: ReadonlySet<string>, changedKeys?: ChangedKeys) => void

function keysOf(changes: ChangeRecord[]): ChangedKeys {
  const out = new Map<string, Map<string, Buffer>>()
  for (const change of changes) {
    let keys = out.get(change.table)
    if (!keys) { keys = new Map(); out.set(change.table, keys) }
    keys.set(change.pk.toString('hex'), change.pk)
  }
  return out
}
const CHANGES_VIEW = 'crsql_changes'
const ALLOWED_WRITE_KEYWORDS = new Set(['INSERT', 'UPDATE', 'DELETE', 'REPLACE', 'WITH', 'SELECT', 'VALUES'])
const ALLOWED_QUERY_KEYWORDS = new Set(['SELECT', 'WITH', 'VALUES'])
const STATEMENT_CACHE_SIZE = 512

type Statement = Database.Statement<unknown[], unknown>

function clockName(table: string): string { return `${table}__crsql_clock` }

/** Per-table prepared statements for capture, merge and change collection. */
class TableRuntime {
  readonly clock: string
  private readonly pkMatch: string
  private readonly cache = new Map<string, Statement>()
  readonly valueColumnSet: Set<string>

  constructor(private readonly db: Database.Database, readonly schema: TableSchema) {
    this.clock = clockName(schema.name)
    this.pkMatch = schema.pkColumns.map((c) => `${q(c)} = ?`).join(' AND ')
    this.valueColumnSet = new Set(schema.valueColumns)
  }

  private statement(key: string, sql: () => string): Statement {
    let stmt = this.cache.get(key)
    if (!stmt) { stmt = this.db.prepare(sql()); this.cache.set(key, stmt) }
    return stmt
  }

  sentinel(pk: SqlValue[]): number {
    const row = this.statement('sentinel', () => `SELECT __crsql_col_version FROM ${q(this.clock)} WHERE ${this.pkMatch} AND __crsql_col_name = '-1'`).pluck().get(...pk) as bigint | undefined
    return row === undefined ? 0 : Number(row)
  }

  columnClock(pk: SqlValue[], cid: string): ColumnClock | undefined {
    const row = this.statement('column-clock', () => `SELECT __crsql_col_version, __crsql_site_id FROM ${q(this.clock)} WHERE ${this.pkMatch} AND __crsql_col_name = ?`).raw().get(...pk, cid) as [bigint, Buffer] | undefined
    if (!row) return undefined
    const value = this.statement(`read:${cid}`, () => `SELECT ${q(cid)} FROM ${q(this.schema.name)} WHERE ${this.pkMatch}`).pluck().get(...pk) as SqlValue | undefined
    return { colVersion: Number(row[0]), siteId: row[1], value: value ?? null }
  }

  deleteRow(pk: SqlValue[]): void {
    this.statement('delete-row', () => `DELETE FROM ${q(this.schema.name)} WHERE ${this.pkMatch}`).run(...pk)
    this.statement('delete-column-clocks', () => `DELETE FROM ${q(this.clock)} WHERE ${this.pkMatch} AND __crsql_col_name != '-1'`).run(...pk)
  }

  insertKeyOnly(pk: SqlValue[]): void {
    this.statement('insert-key', () => `INSERT INTO ${q(this.schema.name)} (${this.schema.pkColumns.map(q).join(', ')}) VALUES (${this.schema.pkColumns.map(() => '?').join(', ')})`).run(...pk)
  }

  writeColumn(pk: SqlValue[], cid: string, value: SqlValue): void {
    this.statement(`write:${cid}`, () => `UPDATE ${q(this.schema.name)} SET ${q(cid)} = ? WHERE ${this.pkMatch}`).run(value, ...pk)
  }

  writeClock(pk: SqlValue[], cid: string, colVersion: number, dbVersion: number, siteId: Buffer, seq: number): void {
    this.statement('write-clock', () => {
      const columns = [...this.schema.pkColumns.map(q), '__crsql_col_name', '__crsql_col_version', '__crsql_db_version', '__crsql_site_id', '__crsql_seq']
      return `INSERT INTO ${q(this.clock)} (${columns.join(', ')}) VALUES (${columns.map(() => '?').join(', ')})
        ON CONFLICT DO UPDATE SET __crsql_col_version = excluded.__crsql_col_version, __crsql_db_version = excluded.__crsql_db_version,
          __crsql_site_id = excluded.__crsql_site_id, __crsql_seq = excluded.__crsql_seq`
    }).run(...pk, cid, BigInt(colVersion), BigInt(dbVersion), siteId, BigInt(seq))
  }

  /** Clock rows of one site in a version range, with current values and causal lengths. */
  changes(siteId: Buffer, from: number, to: number): Array<{ version: number; change: ChangeRecord }> {
    const stmt = this.statement('changes', () => changesSelectSql(this.schema, 'c.__crsql_site_id = ? AND c.__crsql_db_version BETWEEN ? AND ?', false))
    const rows = stmt.raw().all(siteId, BigInt(from), BigInt(to)) as SqlValue[][]
    const n = this.schema.pkColumns.length
    return rows.map((row) => ({
      version: Number(row[n + 2]),
      change: {
        table: this.schema.name,
        pk: packColumns(row.slice(0, n)),
        cid: row[n] as string,
        colVersion: Number(row[n + 1]),
        seq: Number(row[n + 3]),
        val: row[n + 4]!,
        cl: Number(row[n + 5]),
      },
    }))
  }
}

/** SELECT over one table's clock: pk columns, cid, col_version, db_version, seq, val, cl (and,
 * for the view, the table name, packed pk and site id). */
function changesSelectSql(table: TableSchema, where: string, forView: boolean): string {
  const clock = q(clockName(table.name))
  const join = (alias: string) => table.pkColumns.map((c) => `${alias}.${q(c)} = c.${q(c)}`).join(' AND ')
  const value = table.valueColumns.length === 0
    ? 'NULL'
    : `CASE c.__crsql_col_name ${table.valueColumns.map((c) => `WHEN ${quoteString(c)} THEN t.${q(c)}`).join(' ')} ELSE NULL END`
  const from = `FROM ${clock} c LEFT JOIN ${q(table.name)} t ON ${join('t')} LEFT JOIN ${clock} s ON ${join('s')} AND s.__crsql_col_name = '-1'`
  if (forView) {
    return `SELECT ${quoteString(table.name)} AS "table", hangar_pack_pk(${table.pkColumns.map((c) => `c.${q(c)}`).join(', ')}) AS pk, c.__crsql_col_name AS cid, ${value} AS val,
      c.__crsql_col_version AS col_version, c.__crsql_db_version AS db_version, c.__crsql_site_id AS site_id, COALESCE(s.__crsql_col_version, 1) AS cl, c.__crsql_seq AS seq ${from}`
  }
  return `SELECT ${table.pkColumns.map((c) => `c.${q(c)}`).join(', ')}, c.__crsql_col_name, c.__crsql_col_version, c.__crsql_db_version, c.__crsql_seq, ${value}, COALESCE(s.__crsql_col_version, 1)
    ${from} WHERE ${where} ORDER BY c.__crsql_db_version, c.__crsql_seq`
}

/** Triggers that stamp local writes into the clock table (reference §5.6: every write to a CRR
 * records, per column, a new col_version; inserts and deletes move the causal length). */
function triggerSql(table: TableSchema): string[] {
  const name = table.name
  const clock = q(clockName(name))
  const pk = table.pkColumns
  const clockColumns = [...pk.map(q), '__crsql_col_name', '__crsql_col_version', '__crsql_db_version', '__crsql_site_id', '__crsql_seq'].join(', ')
  const stamp = 'hangar_db_version(), hangar_site_id(), hangar_next_seq()'
  const restamp = '__crsql_db_version = excluded.__crsql_db_version, __crsql_site_id = excluded.__crsql_site_id, __crsql_seq = excluded.__crsql_seq'
  const keys = (row: 'NEW' | 'OLD') => pk.map((c) => `${row}.${q(c)}`).join(', ')
  const sameKey = pk.map((c) => `NEW.${q(c)} IS OLD.${q(c)}`).join(' AND ')
  const oldKeyMatch = pk.map((c) => `${q(c)} = OLD.${q(c)}`).join(' AND ')
  // An insert starts a new life of the row: odd causal length, every column stamped.
  const insertBody = [
    `INSERT INTO ${clock} (${clockColumns}) VALUES (${keys('NEW')}, '-1', 1, ${stamp})
       ON CONFLICT DO UPDATE SET __crsql_col_version = __crsql_col_version + 1, ${restamp} WHERE __crsql_col_version % 2 = 0;`,
    ...table.valueColumns.map((c) => `INSERT INTO ${clock} (${clockColumns}) VALUES (${keys('NEW')}, ${quoteString(c)}, 1, ${stamp})
       ON CONFLICT DO UPDATE SET __crsql_col_version = __crsql_col_version + 1, ${restamp};`),
  ]
  // A delete ends the row's life: even causal length, column clocks dropped.
  const deleteBody = [
    `INSERT INTO ${clock} (${clockColumns}) VALUES (${keys('OLD')}, '-1', 2, ${stamp})
       ON CONFLICT DO UPDATE SET __crsql_col_version = __crsql_col_version + 1, ${restamp} WHERE __crsql_col_version % 2 = 1;`,
    `DELETE FROM ${clock} WHERE ${oldKeyMatch} AND __crsql_col_name != '-1';`,
  ]
  // An update stamps only the columns whose value (or storage class: 1 and 1.0 compare equal
  // but are different bytes) changed.
  const updateBody = table.valueColumns.map((c) => `INSERT INTO ${clock} (${clockColumns}) SELECT ${keys('NEW')}, ${quoteString(c)}, 1, ${stamp}
       WHERE NEW.${q(c)} IS NOT OLD.${q(c)} OR typeof(NEW.${q(c)}) IS NOT typeof(OLD.${q(c)})
       ON CONFLICT DO UPDATE SET __crsql_col_version = __crsql_col_version + 1, ${restamp};`)
  const trigger = (suffix: string) => q(`${name}__crsql_${suffix}`)
  const statements = [
    `DROP TRIGGER IF EXISTS ${trigger('itrig')}`,
    `DROP TRIGGER IF EXISTS ${trigger('utrig')}`,
    `DROP TRIGGER IF EXISTS ${trigger('uktrig')}`,
    `DROP TRIGGER IF EXISTS ${trigger('dtrig')}`,
    `CREATE TRIGGER ${trigger('itrig')} AFTER INSERT ON ${q(name)} WHEN hangar_capturing() BEGIN ${insertBody.join('\n')} END`,
    `CREATE TRIGGER ${trigger('dtrig')} AFTER DELETE ON ${q(name)} WHEN hangar_capturing() BEGIN ${deleteBody.join('\n')} END`,
    // Changing the primary key is a delete of the old key and an insert of the new one.
    `CREATE TRIGGER ${trigger('uktrig')} AFTER UPDATE ON ${q(name)} WHEN hangar_capturing() AND NOT (${sameKey}) BEGIN ${[...deleteBody, ...insertBody].join('\n')} END`,
  ]
  if (updateBody.length > 0) statements.push(`CREATE TRIGGER ${trigger('utrig')} AFTER UPDATE ON ${q(name)} WHEN hangar_capturing() AND ${sameKey} BEGIN ${updateBody.join('\n')} END`)
  return statements
}

function clockTableSql(table: TableSchema): string[] {
  const clock = q(clockName(table.name))
  const pk = table.pkColumns.map(q).join(', ')
  return [
    `CREATE TABLE IF NOT EXISTS ${clock} (${pk}, __crsql_col_name TEXT NOT NULL, __crsql_col_version INTEGER NOT NULL,
      __crsql_db_version INTEGER NOT NULL, __crsql_site_id BLOB NOT NULL, __crsql_seq INTEGER NOT NULL,
      PRIMARY KEY (${pk}, __crsql_col_name)) WITHOUT ROWID`,
    `CREATE INDEX IF NOT EXISTS ${q(`${clockName(table.name)}_site_version`)} ON ${clock} (__crsql_site_id, __crsql_db_version)`,
  ]
}

export class CrrStore {
  readonly siteId: Buffer
  readonly siteHex: string
  readonly db: Database.Database
  /** Read-only connection for queries and subscriptions (the writer itself for ':memory:'). */
  readonly reader: Database.Database
  private readonly logger: Logger
  private runtimes = new Map<string, TableRuntime>()
  private known = new Map<string, RangeSet>()
  private capturing = false
  private pendingVersion = 0
  private nextSeq = 0
  private readonly commitListeners = new Set<CommitListener>()
  private writableRootPages = new Map<number, string>()
  private rootPagesByNumber: Map<number, string> | null = null
  private readonly writeStatements = new Map<string, Statement>()
  private readonly queryStatements = new Map<string, Statement>()
  private closed = false
  readonly stats = { localTransactions: 0, changesetsApplied: 0, changesApplied: 0, changesSeen: 0 }

  constructor(options: CrrStoreOptions) {
    this.logger = options.logger ?? silentLogger
    this.db = new Database(options.path)
    try {
      this.db.pragma('journal_mode = WAL')
      this.db.pragma(`synchronous = ${options.synchronous ?? 'NORMAL'}`)
      this.db.pragma('busy_timeout = 5000')
      this.db.defaultSafeIntegers(true)
      this.registerFunctions(this.db, true)
      this.db.exec(`
        CREATE TABLE IF NOT EXISTS __hangar_meta (key TEXT PRIMARY KEY NOT NULL, value) ;
        CREATE TABLE IF NOT EXISTS __hangar_crr_tables (name TEXT PRIMARY KEY NOT NULL);
        CREATE TABLE IF NOT EXISTS __hangar_bookkeeping (site_id BLOB NOT NULL, start_version INTEGER NOT NULL,
          end_version INTEGER NOT NULL, PRIMARY KEY (site_id, start_version)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS ${MEMBERS_TABLE} (site_id TEXT PRIMARY KEY NOT NULL, host_id TEXT NOT NULL DEFAULT '',
          region TEXT NOT NULL DEFAULT '', addr TEXT NOT NULL DEFAULT '', api_url TEXT NOT NULL DEFAULT '',
          state TEXT NOT NULL DEFAULT 'alive', incarnation INTEGER NOT NULL DEFAULT 0, rtt_ms REAL,
          updated_at INTEGER NOT NULL DEFAULT 0);
      `)
      const meta = (key: string) => this.db.prepare('SELECT value FROM __hangar_meta WHERE key = ?').pluck().get(key) as SqlValue | undefined
      const setMeta = (key: string, value: SqlValue) => this.db.prepare('INSERT INTO __hangar_meta (key, value) VALUES (?, ?) ON CONFLICT DO UPDATE SET value = excluded.value').run(key, value)
      const storedSite = meta('site_id')
      if (storedSite instanceof Uint8Array && storedSite.length === SITE_ID_BYTES) {
        this.siteId = Buffer.from(storedSite)
      } else {
        this.siteId = options.siteId ?? randomBytes(SITE_ID_BYTES)
        if (this.siteId.length !== SITE_ID_BYTES) throw new InvalidArgumentError(`site id must be ${SITE_ID_BYTES} bytes`)
        setMeta('site_id', this.siteId)
      }
      this.siteHex = this.siteId.toString('hex')
      const storedCluster = meta('cluster_id')
      if (options.clusterId !== undefined) {
        if (typeof storedCluster === 'string' && storedCluster !== options.clusterId) {
          throw new InvalidArgumentError(`database ${options.path} belongs to cluster "${storedCluster}", not "${options.clusterId}" (a different cluster needs a new database, or a reseed)`)
        }
        if (storedCluster === undefined) setMeta('cluster_id', options.clusterId)
      }
      for (const row of this.db.prepare('SELECT site_id, start_version, end_version FROM __hangar_bookkeeping').raw().all() as Array<[Buffer, bigint, bigint]>) {
        const site = row[0].toString('hex')
        let ranges = this.known.get(site)
        if (!ranges) { ranges = new RangeSet(); this.known.set(site, ranges) }
        ranges.add(Number(row[1]), Number(row[2]))
      }
      const names = this.db.prepare('SELECT name FROM __hangar_crr_tables ORDER BY name').pluck().all() as string[]
      this.db.transaction(() => {
        for (const name of names) {
          const schema = readTableSchema(this.db, name)
          for (const sql of triggerSql(schema)) this.db.exec(sql)
          this.runtimes.set(name, new TableRuntime(this.db, schema))
        }
        this.rebuildChangesView()
      })()
      this.refreshRootPages()
      if (options.path === ':memory:' || options.path === '') {
        this.reader = this.db
      } else {
        this.reader = new Database(options.path, { readonly: true, fileMustExist: true })
        this.reader.pragma('busy_timeout = 5000')
        this.reader.defaultSafeIntegers(true)
        this.registerFunctions(this.reader, false)
      }
    } catch (err) {
      this.db.close()
      throw err
    }
  }

  private registerFunctions(db: Database.Database, writer: boolean): void {
    db.function('hangar_pack_pk', { varargs: true, deterministic: true, safeIntegers: true }, (...values: unknown[]) => packColumns(values as SqlValue[]))
    if (!writer) return
    db.function('hangar_capturing', { deterministic: false }, () => (this.capturing ? 1n : 0n))
    db.function('hangar_db_version', { deterministic: false }, () => {
      if (!this.capturing) throw new Error('hangar_db_version() outside a captured transaction')
      return BigInt(this.pendingVersion)
    })
    db.function('hangar_site_id', { deterministic: true }, () => this.siteId)
    db.function('hangar_next_seq', { deterministic: false }, () => BigInt(this.nextSeq++))
  }

  // ── schema ────────────────────────────────────────────────────────────────────────────────

  /** The replicated tables' current shape. */
  currentSchema(): CatalogSchema {
    const schema: CatalogSchema = { tables: new Map(), indexes: new Map() }
    for (const [name, runtime] of this.runtimes) schema.tables.set(name, runtime.schema)
    if (this.runtimes.size > 0) {
      const rows = this.db.prepare(`SELECT name, tbl_name, sql FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN (${[...this.runtimes.keys()].map(() => '?').join(', ')})`).raw().all(...this.runtimes.keys()) as Array<[string, string, string]>
      for (const [name, table, sql] of rows) schema.indexes.set(name, { name, table, sql })
    }
    return schema
  }

  /** Brings the database to a schema file's text: new tables become CRRs, new columns and indexes
   * are added in place (reference §5.2). Breaking changes throw a SchemaError and change nothing. */
  applySchema(sql: string): SchemaPlan {
    const next = parseSchema(sql)
    const plan = planSchemaChange(this.currentSchema(), next)
    for (const note of plan.ignored) this.logger.warn('schema change ignored', { note })
    if (isPlanEmpty(plan)) return plan
    const touched = new Set<string>()
    const nextRuntimes = new Map(this.runtimes)
    this.db.transaction(() => {
      for (const table of plan.newTables) {
        this.db.exec(table.sql)
        for (const stmt of clockTableSql(table)) this.db.exec(stmt)
        this.db.prepare('INSERT OR IGNORE INTO __hangar_crr_tables (name) VALUES (?)').run(table.name)
        touched.add(table.name)
      }
      for (const { table, column } of plan.newColumns) {
        try {
          this.db.exec(addColumnSql(table, column))
        } catch (err) {
          throw new SchemaError(`schema: cannot add column ${table}.${column.name}: ${(err as Error).message}`, { cause: err })
        }
        touched.add(table)
      }
      for (const index of plan.changedIndexes) this.db.exec(`DROP INDEX IF EXISTS ${q(index.name)}`)
      for (const index of [...plan.newIndexes, ...plan.changedIndexes]) this.db.exec(index.sql)
      for (const name of touched) {
        const schema = readTableSchema(this.db, name)
        for (const stmt of triggerSql(schema)) this.db.exec(stmt)
        nextRuntimes.set(name, new TableRuntime(this.db, schema))
      }
      this.rebuildChangesView(nextRuntimes)
    })()
    this.runtimes = nextRuntimes
    this.writeStatements.clear()
    this.queryStatements.clear()
    this.refreshRootPages()
    this.logger.info('schema applied', { newTables: plan.newTables.map((t) => t.name), newColumns: plan.newColumns.map((c) => `${c.table}.${c.column.name}`), indexes: [...plan.newIndexes, ...plan.changedIndexes].map((i) => i.name) })
    return plan
  }

  tableNames(): string[] { return [...this.runtimes.keys()] }

  tableSchema(name: string): TableSchema | undefined { return this.runtimes.get(name)?.schema }

  private rebuildChangesView(runtimes: Map<string, TableRuntime> = this.runtimes): void {
    this.db.exec(`DROP VIEW IF EXISTS ${CHANGES_VIEW}`)
    const parts = [...runtimes.values()].map((r) => changesSelectSql(r.schema, '', true))
    const body = parts.length > 0
      ? parts.join('\nUNION ALL\n')
      : `SELECT NULL AS "table", NULL AS pk, NULL AS cid, NULL AS val, NULL AS col_version, NULL AS db_version, NULL AS site_id, NULL AS cl, NULL AS seq WHERE 0`
    this.db.exec(`CREATE VIEW ${CHANGES_VIEW} AS ${body}`)
  }

  private refreshRootPages(): void {
    const rows = this.db.prepare('SELECT rootpage, tbl_name FROM sqlite_schema WHERE rootpage > 0').raw().all() as Array<[bigint, string]>
    this.writableRootPages = new Map()
    this.rootPagesByNumber = new Map()
    for (const [page, table] of rows) {
      this.rootPagesByNumber.set(Number(page), table)
      if (this.runtimes.has(table)) this.writableRootPages.set(Number(page), table)
    }
  }

  /** Tables a prepared statement's program reads (for subscriptions: which writes matter). */
  tablesReadBy(sql: string, args: unknown[] = []): Set<string> {
    const rows = this.reader.prepare(`EXPLAIN ${sql}`).all(...args) as Array<{ opcode: string; p2: bigint | number; p3: bigint | number }>
    if (!this.rootPagesByNumber) this.refreshRootPages()
    const out = new Set<string>()
    for (const row of rows) {
      if (row.opcode !== 'OpenRead' || Number(row.p3) !== 0) continue
      let table = this.rootPagesByNumber!.get(Number(row.p2))
      if (!table) { this.refreshRootPages(); table = this.rootPagesByNumber!.get(Number(row.p2)) }
      if (table) out.add(table)
    }
    return out
  }

  // ── local writes ───────────────────────────────────────────────────────────────────────────

  /** Prepares a statement for a transaction, refusing anything but reads and writes of
   * replicated tables (Corrosion: all writes go through the catalog, only to CRRs). */
  private prepareWrite(sql: string, args: unknown[]): Statement {
    const cached = this.writeStatements.get(sql)
    if (cached) return cached
    if (typeof sql !== 'string' || sql.trim().length === 0) throw new InvalidArgumentError('empty statement')
    const keyword = leadingKeywords(sql, 1)[0] ?? ''
    if (!ALLOWED_WRITE_KEYWORDS.has(keyword)) {
      throw new InvalidArgumentError(`only INSERT, UPDATE, DELETE, REPLACE and SELECT statements are allowed in a transaction, got ${keyword || 'nothing'}`)
    }
    let stmt: Statement
    try {
      stmt = this.db.prepare(sql)
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message, { cause: err })
    }
    if (!stmt.readonly) {
      // The program's shape does not depend on parameter values; the statement's own are bound
      // because EXPLAIN needs every parameter.
      const program = this.db.prepare(`EXPLAIN ${sql}`).all(...args) as Array<{ addr: bigint; opcode: string; p1: bigint; p2: bigint; p3: bigint }>
      let previous = -1
      for (const row of program) {
        const addr = Number(row.addr)
        if (addr <= previous) break // the trigger sub-programs follow the main program
        previous = addr
        // OpenWrite opens a b-tree for writing; Clear empties one (DELETE without WHERE).
        if (row.opcode !== 'OpenWrite' && row.opcode !== 'Clear') continue
        const page = Number(row.opcode === 'Clear' ? row.p1 : row.p2)
        const database = Number(row.opcode === 'Clear' ? row.p2 : row.p3)
        if (database !== 0 || !this.writableRootPages.has(page)) {
          const name = this.rootPagesByNumber?.get(page) ?? `root page ${page}`
          throw new InvalidArgumentError(`statement writes to ${name}, which is not a replicated table (writable: ${[...this.runtimes.keys()].join(', ') || 'none'})`)
        }
      }
    }
    if (this.writeStatements.size >= STATEMENT_CACHE_SIZE) this.writeStatements.delete(this.writeStatements.keys().next().value!)
    this.writeStatements.set(sql, stmt)
    return stmt
  }

  /** Runs statements in one SQLite transaction, capturing their changes as one new version. */
  transact(statements: StatementInput[]): TransactionOutcome {
    this.assertOpen()
    const started = performance.now()
    const results: StatementResult[] = []
    let changeset: Changeset | null = null
    const argsOf = (s: StatementInput) => (s.params === undefined ? [] : Array.isArray(s.params) ? s.params : [s.params])
    const prepared = statements.map((s, i) => {
      try {
        return this.prepareWrite(s.sql, argsOf(s))
      } catch (err) {
        throw new StatementError(i, (err as Error).message, { cause: err })
      }
    })
    const run = this.db.transaction(() => {
      this.capturing = true
      this.pendingVersion = this.ownVersions().max + 1
      this.nextSeq = 0
      try {
        prepared.forEach((stmt, i) => {
          const t0 = performance.now()
          const args = argsOf(statements[i]!)
          let rowsAffected: number
          try {
            // A plain SELECT affects nothing; INSERT … RETURNING affects the rows it returns.
            if (stmt.reader) rowsAffected = stmt.readonly ? (stmt.all(...args), 0) : stmt.all(...args).length
            else rowsAffected = stmt.run(...args).changes
          } catch (err) {
            throw new StatementError(i, (err as Error).message, { cause: err })
          }
          results.push({ rowsAffected, timeSec: (performance.now() - t0) / 1000 })
        })
      } finally {
        this.capturing = false
      }
      const changes = this.collectChanges(this.siteId, this.pendingVersion, this.pendingVersion)
      if (changes.length > 0) {
        changeset = { siteId: this.siteId, version: this.pendingVersion, changes: changes.map((c) => c.change) }
        const own = this.ownVersions().clone().add(this.pendingVersion)
        this.persistKnown(this.siteHex, own)
        return own
      }
      return null
    })
    const own = run()
    const outcome: TransactionOutcome = { results, version: null, changeset: null, timeSec: (performance.now() - started) / 1000 }
    if (own && changeset) {
      this.known.set(this.siteHex, own)
      this.stats.localTransactions++
      outcome.version = (changeset as Changeset).version
      outcome.changeset = changeset
      this.emitCommit(new Set((changeset as Changeset).changes.map((c) => c.table)), keysOf((changeset as Changeset).changes))
    }
    return outcome
  }

  private ownVersions(): RangeSet {
    return this.known.get(this.siteHex) ?? new RangeSet()
  }

  private collectChanges(siteId: Buffer, from: number, to: number): Array<{ version: number; change: ChangeRecord }> {
    const out: Array<{ version: number; change: ChangeRecord }> = []
    for (const runtime of this.runtimes.values()) {
      for (const change of runtime.changes(siteId, from, to)) out.push(change)
    }
    out.sort((a, b) => a.version - b.version || a.change.seq - b.change.seq)
    return out
  }

  private persistKnown(site: string, ranges: RangeSet): void {
    const siteId = Buffer.from(site, 'hex')
    this.db.prepare('DELETE FROM __hangar_bookkeeping WHERE site_id = ?').run(siteId)
    const insert = this.db.prepare('INSERT INTO __hangar_bookkeeping (site_id, start_version, end_version) VALUES (?, ?, ?)')
    for (const [s, e] of ranges.toArray()) insert.run(siteId, BigInt(s), BigInt(e))
  }

  // ── merging remote changes ─────────────────────────────────────────────────────────────────

  /** True when the node already holds (site, version). */
  hasVersion(siteId: Buffer | string, version: number): boolean {
    const site = typeof siteId === 'string' ? siteId : siteId.toString('hex')
    return this.known.get(site)?.has(version) ?? false
  }

  /**
   * Merges changesets from other nodes (or this node's own, fetched back after a crash) in one
   * SQLite transaction. Versions already held are skipped; `settle` marks further version ranges
   * as held (sync answers name the ranges they cover, including cleared versions).
   */
  applyChangesets(changesets: Changeset[], settle?: ReadonlyMap<string, RangeSet>): ApplyOutcome {
    this.assertOpen()
    const outcome: ApplyOutcome = { versionsApplied: 0, changesApplied: 0, deferred: [], changedTables: new Set() }
    const updated = new Map<string, RangeSet>()
    const rangesFor = (site: string) => {
      let ranges = updated.get(site)
      if (!ranges) { ranges = (this.known.get(site) ?? new RangeSet()).clone(); updated.set(site, ranges) }
      return ranges
    }
    const deferredVersions = new Map<string, RangeSet>()
    const changedKeys = new Map<string, Map<string, Buffer>>()
    this.db.transaction(() => {
      for (const changeset of changesets) {
        const site = changeset.siteId.toString('hex')
        if (rangesFor(site).has(changeset.version)) continue
        const problem = this.checkChangeset(changeset)
        if (problem) {
          outcome.deferred.push({ siteId: site, version: changeset.version, reason: problem })
          let set = deferredVersions.get(site)
          if (!set) { set = new RangeSet(); deferredVersions.set(site, set) }
          set.add(changeset.version)
          continue
        }
        try {
          this.db.transaction(() => {
            for (const change of changeset.changes) {
              this.stats.changesSeen++
              if (this.mergeChange(change, changeset.siteId, changeset.version)) {
                outcome.changesApplied++
                outcome.changedTables.add(change.table)
                let keys = changedKeys.get(change.table)
                if (!keys) { keys = new Map(); changedKeys.set(change.table, keys) }
                keys.set(change.pk.toString('hex'), change.pk)
              }
            }
          })()
        } catch (err) {
          const reason = `merge failed: ${(err as Error).message}`
          this.logger.warn('changeset not applied', { site, version: changeset.version, reason })
          outcome.deferred.push({ siteId: site, version: changeset.version, reason })
          continue
        }
        rangesFor(site).add(changeset.version)
        outcome.versionsApplied++
      }
      if (settle) {
        for (const [site, ranges] of settle) {
          const skip = deferredVersions.get(site)
          const settled = skip ? ranges.subtract(skip) : ranges
          if (!settled.isEmpty) rangesFor(site).addAll(settled)
        }
      }
      for (const [site, ranges] of updated) {
        if (!ranges.equals(this.known.get(site) ?? new RangeSet())) this.persistKnown(site, ranges)
      }
    })()
    for (const [site, ranges] of updated) this.known.set(site, ranges)
    this.stats.changesetsApplied += outcome.versionsApplied
    this.stats.changesApplied += outcome.changesApplied
    if (outcome.changedTables.size > 0) this.emitCommit(outcome.changedTables, changedKeys)
    return outcome
  }

  private checkChangeset(changeset: Changeset): string | null {
    if (changeset.siteId.length !== SITE_ID_BYTES) return 'bad site id'
    for (const change of changeset.changes) {
      const runtime = this.runtimes.get(change.table)
      if (!runtime) return `unknown table ${change.table}`
      if (change.cid !== SENTINEL_CID && !runtime.valueColumnSet.has(change.cid)) return `unknown column ${change.table}.${change.cid}`
      if (change.cl < 1) return 'causal length must be at least 1'
      let pk: SqlValue[]
      try { pk = unpackColumns(change.pk) } catch (err) { return (err as Error).message }
      if (pk.length !== runtime.schema.pkColumns.length) return `primary key of ${change.table} has ${runtime.schema.pkColumns.length} columns, change has ${pk.length}`
      if (pk.some((v) => v === null)) return 'primary key values cannot be NULL'
    }
    return null
  }

  /** One change through the merge rule (crdt-merge.ts); true when it changed the database. */
  private mergeChange(change: ChangeRecord, siteId: Buffer, version: number): boolean {
    const runtime = this.runtimes.get(change.table)!
    const pk = unpackColumns(change.pk)
    const localCl = runtime.sentinel(pk)
    const needsColumn = change.cl === localCl && change.cid !== SENTINEL_CID && localCl % 2 === 1
    const localColumn = needsColumn ? runtime.columnClock(pk, change.cid) : undefined
    const decision = decideMerge(localCl, localColumn, { cid: change.cid, cl: change.cl, colVersion: change.colVersion, value: change.val, siteId })
    switch (decision.action) {
      case 'ignore':
        return false
      case 'delete':
        runtime.deleteRow(pk)
        runtime.writeClock(pk, SENTINEL_CID, change.cl, version, siteId, change.seq)
        return true
      case 'resurrect':
        runtime.deleteRow(pk)
        runtime.insertKeyOnly(pk)
        runtime.writeClock(pk, SENTINEL_CID, change.cl, version, siteId, change.seq)
        if (decision.applyColumn) {
          runtime.writeColumn(pk, change.cid, change.val)
          runtime.writeClock(pk, change.cid, change.colVersion, version, siteId, change.seq)
        }
        return true
      case 'apply-column':
        runtime.writeColumn(pk, change.cid, change.val)
        runtime.writeClock(pk, change.cid, change.colVersion, version, siteId, change.seq)
        return true
    }
  }

  // ── sync ───────────────────────────────────────────────────────────────────────────────────

  /** Per site, the versions this node holds. */
  knownVersions(): ReadonlyMap<string, RangeSet> { return this.known }

  syncState(): SyncState {
    return syncStateFromKnown(this.siteId, this.known)
  }

  /** The changesets a peer in state `theirs` lacks, up to about `maxChanges` changes. */
  answerSync(theirs: SyncState, maxChanges = 20_000): SyncAnswer {
    this.assertOpen()
    const missing = missingFor(theirs, this.known)
    const answer: SyncAnswer = { changesets: [], covered: new Map(), complete: true }
    let budget = maxChanges
    outer: for (const [site, ranges] of missing) {
      const siteId = Buffer.from(site, 'hex')
      for (const [start, end] of ranges.chunks(256)) {
        if (budget <= 0) { answer.complete = false; break outer }
        const byVersion = new Map<number, ChangeRecord[]>()
        for (const { version, change } of this.collectChanges(siteId, start, end)) {
          let list = byVersion.get(version)
          if (!list) { list = []; byVersion.set(version, list) }
          list.push(change)
        }
        for (const [version, changes] of byVersion) {
          answer.changesets.push({ siteId, version, changes })
          budget -= changes.length
        }
        let covered = answer.covered.get(site)
        if (!covered) { covered = new RangeSet(); answer.covered.set(site, covered) }
        covered.add(start, end)
      }
    }
    return answer
  }

  /** This node's changes of one version (its own or another site's, as they stand now). */
  changesetFor(siteId: Buffer, version: number): Changeset | null {
    if (!this.hasVersion(siteId, version)) return null
    const changes = this.collectChanges(siteId, version, version).map((c) => c.change)
    return { siteId, version, changes }
  }

  // ── reads ──────────────────────────────────────────────────────────────────────────────────

  /** Prepares a read-only query on the reader connection. */
  prepareQuery(sql: string): Statement {
    this.assertOpen()
    const cached = this.queryStatements.get(sql)
    if (cached) return cached
    if (typeof sql !== 'string' || sql.trim().length === 0) throw new InvalidArgumentError('empty query')
    const keyword = leadingKeywords(sql, 1)[0] ?? ''
    if (!ALLOWED_QUERY_KEYWORDS.has(keyword)) throw new InvalidArgumentError(`a query must be a SELECT (or WITH … SELECT), got ${keyword || 'nothing'}`)
    let stmt: Statement
    try {
      stmt = this.reader.prepare(sql)
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message, { cause: err })
    }
    if (!stmt.reader || !stmt.readonly) throw new InvalidArgumentError('a query must only read')
    if (this.queryStatements.size >= STATEMENT_CACHE_SIZE) this.queryStatements.delete(this.queryStatements.keys().next().value!)
    this.queryStatements.set(sql, stmt)
    return stmt
  }

  /** Rows of a table in primary-key order, every value typed exactly — for comparing nodes. */
  dumpTable(name: string): string[] {
    const runtime = this.runtimes.get(name)
    if (!runtime) throw new InvalidArgumentError(`no replicated table ${name}`)
    const rows = this.reader.prepare(`SELECT * FROM ${q(name)} ORDER BY ${runtime.schema.pkColumns.map(q).join(', ')}`).raw().all() as SqlValue[][]
    return rows.map((row) => row.map(describeValue).join('|'))
  }

  // ── members (local, not replicated) ────────────────────────────────────────────────────────

  writeMember(member: { siteId: string; hostId: string; region: string; addr: string; apiUrl: string; state: string; incarnation: number; rttMs: number | null }): void {
    this.assertOpen()
    this.db.prepare(`INSERT INTO ${MEMBERS_TABLE} (site_id, host_id, region, addr, api_url, state, incarnation, rtt_ms, updated_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET host_id = excluded.host_id, region = excluded.region, addr = excluded.addr,
      api_url = excluded.api_url, state = excluded.state, incarnation = excluded.incarnation, rtt_ms = excluded.rtt_ms, updated_at = excluded.updated_at`)
      .run(member.siteId, member.hostId, member.region, member.addr, member.apiUrl, member.state, BigInt(member.incarnation), member.rttMs, BigInt(Date.now()))
    this.emitCommit(new Set([MEMBERS_TABLE]))
  }

  readMembers(): Array<{ siteId: string; addr: string; state: string }> {
    return (this.db.prepare(`SELECT site_id, addr, state FROM ${MEMBERS_TABLE}`).raw().all() as Array<[string, string, string]>).map(([siteId, addr, state]) => ({ siteId, addr, state }))
  }

  // ── events and lifecycle ───────────────────────────────────────────────────────────────────

  /** Called after every commit that changed tables (local transactions, merges, members). */
  onCommit(listener: CommitListener): () => void {
    this.commitListeners.add(listener)
    return () => this.commitListeners.delete(listener)
  }

  private emitCommit(tables: ReadonlySet<string>, keys?: ChangedKeys): void {
    for (const listener of this.commitListeners) {
      try { listener(tables, keys) } catch (err) { this.logger.error('commit listener failed', { err }) }
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new InvalidArgumentError('the catalog store is closed')
  }

  get isClosed(): boolean { return this.closed }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.commitListeners.clear()
    if (this.reader !== this.db) this.reader.close()
    this.db.close()
  }
}

/** A value with its storage class, exact to the byte (REAL as its IEEE-754 bits). */
export function describeValue(value: SqlValue): string {
  if (value === null) return 'null'
  if (typeof value === 'bigint') return `i${value}`
  if (typeof value === 'number') { const b = Buffer.alloc(8); b.writeDoubleBE(value); return `r${b.toString('hex')}` }
  if (typeof value === 'string') return `t${JSON.stringify(value)}`
  return `b${Buffer.from(value).toString('hex')}`
}
