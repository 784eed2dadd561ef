import { randomUUID } from 'node:crypto'
import { InvalidArgumentError, NotFoundError, PreconditionFailedError, type Logger, silentLogger } from '../core/index.js'
import { describeValue, MEMBERS_TABLE, type ChangedKeys, type CrrStore, type StatementInput } from './crr-store.js'
import { unpackColumns } from './packed-columns.js'
import { quoteIdentifier, stripComments } from './sql-text.js'
import { sqlRowToJsonText, type SqlValue } from './sqlite-value.js'

// SQL subscriptions (reference §5.3, `POST /v1/subscriptions`): a query's rows, then a change
// event each time a committed write (local or merged) changes its result. A subscription
// re-runs its query after commits that touch the tables it reads (found from its program's
// OpenRead opcodes) and diffs the result by row identity: the primary keys of the tables whose
// keys appear among the result columns (or, if none do, the whole row). A query over one table
// that returns the table's key (the proxy's `SELECT … FROM machines`) is refreshed
// incrementally: only the rows whose keys the commit touched are read again. Each row keeps a stable
// rowid for the subscription's life; each change gets the next change_id, and the last
// `maxLogEntries` changes are kept so a client can resume with `from=<change_id>`.

export type ChangeKind = 'insert' | 'update' | 'delete'

export interface SubscriptionOptions {
  /** Changes kept for resuming. */
  maxLogEntries: number
  /** A subscription with no listener for this long is dropped. */
  idleMs: number
  maxSubscriptions: number
}

const DEFAULT_OPTIONS: SubscriptionOptions = { maxLogEntries: 10_000, idleMs: 10 * 60_000, maxSubscriptions: 1000 }

interface RowState {
  rowid: number
  values: SqlValue[]
  fingerprint: string
}

export interface ChangeLine {
  changeId: number
  line: string
}

export class Subscription {
  readonly id = randomUUID()
  readonly columns: string[]
  readonly tables: Set<string>
  private rows = new Map<string, RowState>()
  private nextRowid = 1
  private changeId = 0
  private log: ChangeLine[] = []
  private readonly listeners = new Set<(line: ChangeLine) => void>()
  private readonly identityIndexes: number[] | null
  /** Set when the subscription can be refreshed by key: its one table and key column names. */
  private readonly incremental: { table: string; keyColumns: string[] } | null
  private pendingFull = false
  private readonly pendingKeys = new Map<string, SqlValue[]>()
  lastActive = Date.now()
  dirty = false

  constructor(private readonly store: CrrStore, readonly statement: StatementInput, private readonly maxLogEntries: number) {
    const stmt = store.prepareQuery(statement.sql)
    const info = stmt.columns()
    this.columns = info.map((c) => c.name)
    this.tables = store.tablesReadBy(statement.sql, this.args())
    this.identityIndexes = identityColumns(store, info)
    this.incremental = incrementalPlan(store, statement, this.tables, info, this.identityIndexes)
    for (const values of this.query()) {
      const key = this.identity(values)
      if (this.rows.has(key)) continue
      this.rows.set(key, { rowid: this.nextRowid++, values, fingerprint: fingerprint(values) })
    }
  }

  private args(): unknown[] {
    const params = this.statement.params
    return params === undefined ? [] : Array.isArray(params) ? params : [params]
  }

  private query(): SqlValue[][] {
    return this.store.prepareQuery(this.statement.sql).raw().all(...this.args()) as SqlValue[][]
  }

  private identity(values: SqlValue[]): string {
    const indexes = this.identityIndexes
    return (indexes ? indexes.map((i) => values[i]!) : values).map(describeValue).join('\u0000')
  }

  get lastChangeId(): number { return this.changeId }

  get listenerCount(): number { return this.listeners.size }

  /** The current rows, as NDJSON `row` lines. */
  rowLines(): string[] {
    return [...this.rows.values()].sort((a, b) => a.rowid - b.rowid).map((r) => `{"row":[${r.rowid},${sqlRowToJsonText(r.values)}]}`)
  }

  /** Changes after `from`; throws when they are no longer in the log. */
  changesSince(from: number): ChangeLine[] {
    if (!Number.isInteger(from) || from < 0) throw new InvalidArgumentError(`from must be a change id (a non-negative integer), got ${from}`)
    if (from > this.changeId) throw new InvalidArgumentError(`from=${from} is ahead of this subscription's last change ${this.changeId}`)
    const oldest = this.log[0]?.changeId ?? this.changeId + 1
    if (from < oldest - 1) throw new PreconditionFailedError(`change ${from + 1} is no longer in subscription ${this.id}'s log (oldest kept: ${oldest}); subscribe again`)
    return this.log.filter((c) => c.changeId > from)
  }

  listen(listener: (line: ChangeLine) => void): () => void {
    this.listeners.add(listener)
    this.lastActive = Date.now()
    return () => {
      this.listeners.delete(listener)
      this.lastActive = Date.now()
    }
  }

  /** Notes a commit that touched the subscription's tables: by key when the commit says which
   * rows of the subscription's table changed and the subscription can use that. */
  markDirty(table: string, keys: ChangedKeys | undefined): void {
    this.dirty = true
    const changed = keys?.get(table)
    if (!this.incremental || table !== this.incremental.table || !changed) { this.pendingFull = true; return }
    if (this.pendingFull) return
    for (const [hex, packed] of changed) {
      if (!this.pendingKeys.has(hex)) this.pendingKeys.set(hex, unpackColumns(packed))
      if (this.pendingKeys.size > 2000) { this.pendingFull = true; this.pendingKeys.clear(); return }
    }
  }

  private queryKeys(keys: SqlValue[][]): SqlValue[][] {
    const { keyColumns } = this.incremental!
    const out: SqlValue[][] = []
    const CHUNK = 256
    for (let i = 0; i < keys.length; i += CHUNK) {
      const chunk = keys.slice(i, i + CHUNK)
      // Padded to a power of two so a handful of statements serve every chunk size.
      let size = 1
      while (size < chunk.length) size *= 2
      while (chunk.length < size) chunk.push(chunk[chunk.length - 1]!)
      const tuple = `(${keyColumns.map(() => '?').join(', ')})`
      const target = keyColumns.length === 1 ? quoteIdentifier(keyColumns[0]!) : `(${keyColumns.map(quoteIdentifier).join(', ')})`
      const list = keyColumns.length === 1 ? `(${chunk.map(() => '?').join(', ')})` : `(VALUES ${chunk.map(() => tuple).join(', ')})`
      const sql = `SELECT * FROM (${this.statement.sql}) WHERE ${target} IN ${list}`
      const rows = this.store.prepareQuery(sql).raw().all(...this.args(), ...chunk.flat()) as SqlValue[][]
      for (const row of rows) out.push(row)
    }
    return out
  }

  /** Re-runs the query (or, incrementally, the rows of the changed keys) and emits what changed. */
  refresh(): void {
    this.dirty = false
    const emit = (kind: ChangeKind, row: RowState) => {
      this.changeId++
      const entry = { changeId: this.changeId, line: `{"change":["${kind}",${row.rowid},${sqlRowToJsonText(row.values)},${this.changeId}]}` }
      this.log.push(entry)
      if (this.log.length > this.maxLogEntries) this.log.splice(0, this.log.length - this.maxLogEntries)
      for (const listener of this.listeners) listener(entry)
    }
    if (!this.pendingFull && this.incremental) {
      const keys = [...this.pendingKeys.entries()]
      this.pendingKeys.clear()
      if (keys.length === 0) return
      const found = new Map<string, SqlValue[]>()
      for (const values of this.queryKeys(keys.map(([, v]) => v))) {
        const key = this.identity(values)
        if (!found.has(key)) found.set(key, values)
      }
      for (const [, pk] of keys) {
        const key = pk.map(describeValue).join('\u0000')
        const existing = this.rows.get(key)
        if (existing && !found.has(key)) { this.rows.delete(key); emit('delete', existing) }
      }
      for (const [key, values] of found) this.upsertRow(key, values, emit)
      return
    }
    this.pendingFull = false
    this.pendingKeys.clear()
    const next = new Map<string, SqlValue[]>()
    for (const values of this.query()) {
      const key = this.identity(values)
      if (!next.has(key)) next.set(key, values)
    }
    for (const [key, row] of this.rows) {
      if (!next.has(key)) {
        this.rows.delete(key)
        emit('delete', row)
      }
    }
    for (const [key, values] of next) this.upsertRow(key, values, emit)
  }

  private upsertRow(key: string, values: SqlValue[], emit: (kind: ChangeKind, row: RowState) => void): void {
    const print = fingerprint(values)
    const existing = this.rows.get(key)
    if (!existing) {
      const row = { rowid: this.nextRowid++, values, fingerprint: print }
      this.rows.set(key, row)
      emit('insert', row)
    } else if (existing.fingerprint !== print) {
      existing.values = values
      existing.fingerprint = print
      emit('update', existing)
    }
  }
}

const NOT_ROW_WISE = /\b(limit|offset|group\s+by|distinct|over|window|union|intersect|except)\b/i

/** When a subscription can be refreshed by key: one replicated table, its whole primary key
 * (and nothing else) as the row identity, positional parameters, unique result names, and no
 * clause that makes one row's presence depend on others (LIMIT, GROUP BY, DISTINCT, windows,
 * compound selects). */
function incrementalPlan(store: CrrStore, statement: StatementInput, tables: Set<string>, info: Array<{ name: string; column: string | null; table: string | null }>, identity: number[] | null): { table: string; keyColumns: string[] } | null {
  if (tables.size !== 1 || !identity) return null
  const table = [...tables][0]!
  const pk = store.tableSchema(table)?.pkColumns
  if (!pk || identity.length !== pk.length) return null
  if (!identity.every((index, i) => info[index]!.table === table && info[index]!.column === pk[i])) return null
  if (statement.params !== undefined && !Array.isArray(statement.params)) return null
  const names = info.map((c) => c.name)
  if (new Set(names).size !== names.length) return null
  if (NOT_ROW_WISE.test(stripComments(statement.sql))) return null
  return { table, keyColumns: identity.map((index) => names[index]!) }
}

function fingerprint(values: SqlValue[]): string {
  return values.map(describeValue).join('\u0000')
}

/** Indexes of result columns that carry, for some table, its whole primary key. */
function identityColumns(store: CrrStore, info: Array<{ name: string; column: string | null; table: string | null; database: string | null }>): number[] | null {
  const byTable = new Map<string, Map<string, number>>()
  info.forEach((c, i) => {
    if (!c.table || !c.column || c.database !== 'main') return
    let columns = byTable.get(c.table)
    if (!columns) { columns = new Map(); byTable.set(c.table, columns) }
    if (!columns.has(c.column)) columns.set(c.column, i)
  })
  const indexes: number[] = []
  for (const [table, columns] of byTable) {
    const pk = table === MEMBERS_TABLE ? ['site_id'] : store.tableSchema(table)?.pkColumns
    if (!pk || pk.length === 0 || !pk.every((c) => columns.has(c))) continue
    indexes.push(...pk.map((c) => columns.get(c)!))
  }
  return indexes.length > 0 ? indexes : null
}

export class SubscriptionManager {
  private readonly subscriptions = new Map<string, Subscription>()
  private readonly byStatement = new Map<string, Subscription>()
  private readonly options: SubscriptionOptions
  private readonly logger: Logger
  private scheduled = false
  private readonly unsubscribeCommits: () => void
  private readonly gcTimer: NodeJS.Timeout

  constructor(private readonly store: CrrStore, options: Partial<SubscriptionOptions> & { logger?: Logger } = {}) {
    this.options = { ...DEFAULT_OPTIONS, ...options }
    this.logger = options.logger ?? silentLogger
    this.unsubscribeCommits = store.onCommit((tables, keys) => this.onCommit(tables, keys))
    this.gcTimer = setInterval(() => this.collectIdle(), Math.min(60_000, this.options.idleMs)).unref()
  }

  /** A subscription for the statement: an existing one for the same statement, or a new one. */
  subscribe(statement: StatementInput): Subscription {
    const key = JSON.stringify([statement.sql, statement.params ?? null], (_k, v) => (typeof v === 'bigint' ? `${v}n` : v))
    const existing = this.byStatement.get(key)
    if (existing) {
      if (existing.dirty) existing.refresh()
      return existing
    }
    if (this.subscriptions.size >= this.options.maxSubscriptions) this.collectIdle(true)
    if (this.subscriptions.size >= this.options.maxSubscriptions) throw new InvalidArgumentError(`too many subscriptions (${this.options.maxSubscriptions}); close some first`)
    const subscription = new Subscription(this.store, statement, this.options.maxLogEntries)
    this.subscriptions.set(subscription.id, subscription)
    this.byStatement.set(key, subscription)
    return subscription
  }

  get(id: string): Subscription {
    const subscription = this.subscriptions.get(id)
    if (!subscription) throw new NotFoundError(`subscription ${id}`)
    if (subscription.dirty) subscription.refresh()
    return subscription
  }

  get size(): number { return this.subscriptions.size }

  private onCommit(tables: ReadonlySet<string>, keys?: ChangedKeys): void {
    let any = false
    for (const subscription of this.subscriptions.values()) {
      for (const table of subscription.tables) {
        if (tables.has(table)) { subscription.markDirty(table, keys); any = true }
      }
    }
    if (any && !this.scheduled) {
      // Coalesce a burst of commits into one re-run per subscription.
      this.scheduled = true
      setImmediate(() => this.refreshDirty())
    }
  }

  /** Re-runs every subscription with pending commits now. */
  refreshDirty(): void {
    this.scheduled = false
    if (this.store.isClosed) return
    for (const subscription of this.subscriptions.values()) {
      if (!subscription.dirty) continue
      try {
        subscription.refresh()
      } catch (err) {
        this.logger.warn('subscription refresh failed', { id: subscription.id, err })
      }
    }
  }

  private collectIdle(force = false): void {
    const now = Date.now()
    for (const [id, subscription] of this.subscriptions) {
      if (subscription.listenerCount > 0) continue
      if (force || now - subscription.lastActive > this.options.idleMs) {
        this.subscriptions.delete(id)
        for (const [key, s] of this.byStatement) if (s === subscription) this.byStatement.delete(key)
      }
    }
  }

  close(): void {
    this.unsubscribeCommits()
    clearInterval(this.gcTimer)
    this.subscriptions.clear()
    this.byStatement.clear()
  }
}
