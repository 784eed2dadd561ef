import { randomUUID } from 'node:crypto'
import { InvalidArgumentError, NotFoundError, PreconditionFailedError, type Logger, silentLogger } from '../core/index.js'
import { describeValue, MEMBERS_TABLE, type CrrStore, type StatementInput } from './crr-store.js'
import { sqlRowToJsonText, type SqlValue } from './sqlite-value.js'

// SQL subscriptions (reference §5.3, `POST /v1/subscriptions`): a query's rows, then a change
// event each time a committed write (local or merged) changes its result. A subscription
// re-runs its query after commits that touch the tables it reads (found from its program's
// OpenRead opcodes) and diffs the result by row identity: the primary keys of the tables whose
// keys appear among the result columns (or, if none do, the whole row). Each row keeps a stable
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
  lastActive = Date.now()
  dirty = false

  constructor(private readonly store: CrrStore, readonly statement: StatementInput, private readonly maxLogEntries: number) {
    const stmt = store.prepareQuery(statement.sql)
    const info = stmt.columns()
    this.columns = info.map((c) => c.name)
    this.tables = store.tablesReadBy(statement.sql, this.args())
    this.identityIndexes = identityColumns(store, info)
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

  /** Re-runs the query and emits what changed. */
  refresh(): void {
    this.dirty = false
    const next = new Map<string, SqlValue[]>()
    for (const values of this.query()) {
      const key = this.identity(values)
      if (!next.has(key)) next.set(key, values)
    }
    const emit = (kind: ChangeKind, row: RowState) => {
      this.changeId++
      const entry = { changeId: this.changeId, line: `{"change":["${kind}",${row.rowid},${sqlRowToJsonText(row.values)},${this.changeId}]}` }
      this.log.push(entry)
      if (this.log.length > this.maxLogEntries) this.log.splice(0, this.log.length - this.maxLogEntries)
      for (const listener of this.listeners) listener(entry)
    }
    for (const [key, row] of this.rows) {
      if (!next.has(key)) {
        this.rows.delete(key)
        emit('delete', row)
      }
    }
    for (const [key, values] of next) {
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
    this.unsubscribeCommits = store.onCommit((tables) => this.onCommit(tables))
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

  private onCommit(tables: ReadonlySet<string>): void {
    let any = false
    for (const subscription of this.subscriptions.values()) {
      for (const table of subscription.tables) {
        if (tables.has(table)) { subscription.dirty = true; any = true; break }
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
