import { Agent, request, type Dispatcher } from 'undici'
import { errorFromWire, HangarError, InvalidArgumentError, UnavailableError, type Logger, silentLogger } from '../core/index.js'
import type { StatementJson } from './statements.js'

// A typed client for a catalog node's HTTP API (reference §5.3), used by the agent (writes), the
// API and DNS (queries) and the proxy (subscriptions). Subscriptions resume by themselves: when
// the stream breaks the client re-attaches with `GET /v1/subscriptions/:id?from=<last change>`,
// and when the node no longer has the subscription (restarted) it subscribes afresh and hands
// the caller a new snapshot.

export type JsonValue = null | boolean | number | string | { blob: string } | JsonValue[] | { [key: string]: JsonValue }

export interface TransactionResponse {
  results: Array<{ rows_affected: number; time: number }>
  time: number
  version: number | null
  actor_id: string
}

export interface QueryResult {
  columns: string[]
  rows: JsonValue[][]
  time: number
}

export type SubscriptionChangeKind = 'insert' | 'update' | 'delete'

export interface SubscriptionRow {
  rowid: number
  values: JsonValue[]
}

export interface SubscriptionChange extends SubscriptionRow {
  kind: SubscriptionChangeKind
  changeId: number
}

export interface SubscriptionHandlers {
  /** The full result: first, and again after the client had to subscribe afresh. */
  onSnapshot?(columns: string[], rows: SubscriptionRow[], changeId: number): void
  onChange?(change: SubscriptionChange): void
  /** The stream broke; the client is reconnecting (informational). */
  onError?(err: Error): void
}

export interface CatalogSubscription {
  /** The subscription id (corro-query-id), once known. */
  readonly id: string | null
  readonly lastChangeId: number
  /** Resolves after the first snapshot. */
  readonly ready: Promise<void>
  close(): void
}

export interface CatalogClientOptions {
  token?: string
  /** Per-request timeout for transactions and queries. */
  timeoutMs?: number
  logger?: Logger
}

async function errorFromResponse(statusCode: number, body: string, what: string): Promise<HangarError> {
  try {
    const parsed = JSON.parse(body) as { error?: string; status?: string }
    if (parsed.error) {
      const code = statusCode === 401 ? 'unauthorized' : statusCode === 404 ? 'not_found' : statusCode === 412 ? 'precondition_failed' : statusCode === 413 ? 'payload_too_large' : statusCode >= 500 ? (statusCode === 503 ? 'unavailable' : 'internal') : 'invalid_argument'
      return errorFromWire({ code, message: parsed.error })
    }
  } catch { /* not JSON */ }
  return new UnavailableError(`${what}: HTTP ${statusCode} ${body.slice(0, 200)}`)
}

/** Splits a byte stream into lines. */
async function* lines(body: AsyncIterable<Buffer>): AsyncGenerator<string> {
  let pending = ''
  for await (const chunk of body) {
    pending += chunk.toString('utf8')
    let newline: number
    while ((newline = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, newline)
      pending = pending.slice(newline + 1)
      if (line.length > 0) yield line
    }
  }
  if (pending.length > 0) yield pending
}

export class CatalogClient {
  private readonly agent: Agent
  private readonly baseUrls: string[]
  private current = 0
  private readonly logger: Logger
  private readonly subscriptions = new Set<{ close(): void }>()

  constructor(baseUrl: string | string[], private readonly options: CatalogClientOptions = {}) {
    this.baseUrls = (Array.isArray(baseUrl) ? baseUrl : [baseUrl]).map((u) => u.replace(/\/+$/, ''))
    if (this.baseUrls.length === 0) throw new InvalidArgumentError('CatalogClient needs at least one catalog URL')
    this.agent = new Agent({ keepAliveTimeout: 30_000, connections: 16 })
    this.logger = options.logger ?? silentLogger
  }

  get baseUrl(): string { return this.baseUrls[this.current]! }

  private headers(): Record<string, string> {
    return { 'content-type': 'application/json', ...(this.options.token ? { authorization: `Bearer ${this.options.token}` } : {}) }
  }

  private async post(path: string, body: unknown, signal?: AbortSignal): Promise<Dispatcher.ResponseData> {
    let lastError: unknown
    for (let attempt = 0; attempt < this.baseUrls.length; attempt++) {
      const url = this.baseUrl + path
      try {
        return await request(url, {
          method: 'POST', body: JSON.stringify(body), headers: this.headers(), dispatcher: this.agent,
          signal: signal ?? AbortSignal.timeout(this.options.timeoutMs ?? 10_000),
        })
      } catch (err) {
        lastError = err
        // Connection failures move on to the next catalog node, if there is one.
        this.current = (this.current + 1) % this.baseUrls.length
      }
    }
    throw new UnavailableError(`catalog ${path}: ${(lastError as Error)?.message ?? 'unreachable'}`, { cause: lastError })
  }

  /** Runs statements as one transaction on the node (Corrosion `POST /v1/transactions`). */
  async transaction(statements: StatementJson[]): Promise<TransactionResponse> {
    const response = await this.post('/v1/transactions', statements)
    const text = await response.body.text()
    if (response.statusCode !== 200) throw await errorFromResponse(response.statusCode, text, 'catalog transaction')
    return JSON.parse(text) as TransactionResponse
  }

  /** One statement as a transaction. */
  async execute(sql: string, params?: unknown[] | Record<string, unknown>): Promise<TransactionResponse> {
    return this.transaction([params === undefined ? sql : [sql, params]])
  }

  /** A read (Corrosion `POST /v1/queries`). */
  async query(statement: StatementJson): Promise<QueryResult> {
    const response = await this.post('/v1/queries', statement)
    if (response.statusCode !== 200) throw await errorFromResponse(response.statusCode, await response.body.text(), 'catalog query')
    const result: QueryResult = { columns: [], rows: [], time: 0 }
    for await (const line of lines(response.body)) {
      const event = JSON.parse(line) as { columns?: string[]; row?: [number, JsonValue[]]; eoq?: { time: number }; error?: string }
      if (event.columns) result.columns = event.columns
      else if (event.row) result.rows.push(event.row[1])
      else if (event.eoq) result.time = event.eoq.time
      else if (event.error) throw new InvalidArgumentError(`catalog query: ${event.error}`)
    }
    return result
  }

  /** A read whose rows come back as objects keyed by column name. */
  async queryObjects<T = Record<string, JsonValue>>(statement: StatementJson): Promise<T[]> {
    const { columns, rows } = await this.query(statement)
    return rows.map((row) => Object.fromEntries(columns.map((c, i) => [c, row[i]])) as T)
  }

  async health(): Promise<Record<string, unknown>> {
    const response = await request(`${this.baseUrl}/v1/health`, { headers: this.headers(), dispatcher: this.agent, signal: AbortSignal.timeout(this.options.timeoutMs ?? 10_000) })
    const text = await response.body.text()
    if (response.statusCode !== 200) throw await errorFromResponse(response.statusCode, text, 'catalog health')
    return JSON.parse(text) as Record<string, unknown>
  }

  async members(): Promise<Array<Record<string, unknown>>> {
    const response = await request(`${this.baseUrl}/v1/members`, { headers: this.headers(), dispatcher: this.agent, signal: AbortSignal.timeout(this.options.timeoutMs ?? 10_000) })
    const text = await response.body.text()
    if (response.statusCode !== 200) throw await errorFromResponse(response.statusCode, text, 'catalog members')
    return JSON.parse(text) as Array<Record<string, unknown>>
  }

  /** Subscribes to a query's rows and their changes, resuming across disconnects. */
  subscribe(statement: StatementJson, handlers: SubscriptionHandlers): CatalogSubscription {
    const abort = new AbortController()
    let id: string | null = null
    let lastChangeId = 0
    let columns: string[] = []
    let resolveReady!: () => void
    let rejectReady!: (err: Error) => void
    const ready = new Promise<void>((resolve, reject) => { resolveReady = resolve; rejectReady = reject })
    ready.catch(() => {})
    let snapshotDone = false
    const client = this
    const handle = {
      get id() { return id },
      get lastChangeId() { return lastChangeId },
      ready,
      close() {
        abort.abort()
        client.subscriptions.delete(handle)
      },
    }
    this.subscriptions.add(handle)

    const consume = async (response: Dispatcher.ResponseData, resuming: boolean) => {
      const header = response.headers['corro-query-id']
      if (typeof header === 'string') id = header
      const snapshot: SubscriptionRow[] = []
      let inSnapshot = !resuming
      for await (const line of lines(response.body)) {
        const event = JSON.parse(line) as { columns?: string[]; row?: [number, JsonValue[]]; eoq?: { change_id?: number }; change?: [SubscriptionChangeKind, number, JsonValue[], number]; error?: string }
        if (event.columns) columns = event.columns
        else if (event.row) snapshot.push({ rowid: event.row[0], values: event.row[1] })
        else if (event.eoq) {
          lastChangeId = event.eoq.change_id ?? lastChangeId
          inSnapshot = false
          handlers.onSnapshot?.(columns, snapshot.splice(0), lastChangeId)
          if (!snapshotDone) { snapshotDone = true; resolveReady() }
        } else if (event.change) {
          const [kind, rowid, values, changeId] = event.change
          if (changeId <= lastChangeId) continue
          lastChangeId = changeId
          if (!inSnapshot) handlers.onChange?.({ kind, rowid, values, changeId })
        } else if (event.error) {
          throw new UnavailableError(`subscription stream: ${event.error}`)
        }
      }
      throw new UnavailableError('subscription stream ended')
    }

    const run = async () => {
      let backoff = 50
      while (!abort.signal.aborted) {
        try {
          if (id !== null && snapshotDone) {
            const response = await request(`${this.baseUrl}/v1/subscriptions/${encodeURIComponent(id)}?from=${lastChangeId}`, { headers: this.headers(), dispatcher: this.agent, signal: abort.signal })
            if (response.statusCode === 404 || response.statusCode === 412 || response.statusCode === 400) {
              // The node lost the subscription (restart) or the changes since; start over.
              await response.body.text()
              id = null
              continue
            }
            if (response.statusCode !== 200) throw await errorFromResponse(response.statusCode, await response.body.text(), 'catalog subscription')
            backoff = 50
            await consume(response, true)
          } else {
            const response = await this.post('/v1/subscriptions', statement, abort.signal)
            if (response.statusCode !== 200) {
              const err = await errorFromResponse(response.statusCode, await response.body.text(), 'catalog subscription')
              // A bad query will not get better by retrying.
              if (response.statusCode === 400 || response.statusCode === 401) { rejectReady(err); handlers.onError?.(err); return }
              throw err
            }
            backoff = 50
            await consume(response, false)
          }
        } catch (err) {
          if (abort.signal.aborted) return
          handlers.onError?.(err as Error)
          this.logger.debug('subscription reconnecting', { err, id })
          if (this.baseUrls.length > 1) {
            // Another node does not know this subscription id: move on and subscribe afresh.
            this.current = (this.current + 1) % this.baseUrls.length
            id = null
          }
          await new Promise((resolve) => setTimeout(resolve, backoff))
          backoff = Math.min(backoff * 2, 2000)
        }
      }
    }
    void run()
    return handle
  }

  async close(): Promise<void> {
    for (const subscription of [...this.subscriptions]) subscription.close()
    await this.agent.close().catch(() => {})
  }
}
