import { timingSafeEqual } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { InvalidArgumentError, NotFoundError, PayloadTooLargeError, toErrorEnvelope, UnauthorizedError, type Logger, silentLogger } from '../core/index.js'
import { siteIdToUuid } from './changeset.js'
import { StatementError, type CrrStore, type StatementInput, type TransactionOutcome } from './crr-store.js'
import { sqlRowToJsonText, type SqlValue } from './sqlite-value.js'
import { parseStatement, parseStatements } from './statements.js'
import type { ChangeLine, Subscription, SubscriptionManager } from './subscriptions.js'

// The catalog's HTTP API, shaped like Corrosion's (reference §5.3):
//   POST /v1/transactions        JSON array of statements → {results, time, version, actor_id}
//   POST /v1/queries             one statement → NDJSON {"columns"}, {"row":[rowid,[…]]}…, {"eoq":{"time"}}
//   POST /v1/subscriptions       one statement → NDJSON columns, rows, eoq{time,change_id}, then
//                                {"change":[kind, rowid, [cols], change_id]}…; header corro-query-id
//   GET  /v1/subscriptions/:id   ?from=<change_id> resumes with the changes after it
//   GET  /v1/health, /v1/members, /v1/table_stats
// Errors are Fly's envelope {"error","status"} with the status from the error registry; bad SQL
// or hostile input never takes the process down.

export const QUERY_ID_HEADER = 'corro-query-id'
const NDJSON = 'application/x-ndjson'
/** A subscriber whose unread output grows past this is cut off (Corrosion errors out laggards). */
const MAX_SUBSCRIBER_BACKLOG_BYTES = 16 * 1024 * 1024

export interface CatalogApiBackend {
  readonly store: CrrStore
  readonly subscriptions: SubscriptionManager
  transact(statements: StatementInput[]): TransactionOutcome
  health(): Record<string, unknown>
  members(): Array<Record<string, unknown>>
}

export interface CatalogApiOptions {
  /** When set, every request needs `Authorization: Bearer <token>` (Corrosion api.authz.bearer-token). */
  token?: string
  maxBodyBytes?: number
  logger?: Logger
}

function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0)
    if (declared > limit) { reject(new PayloadTooLargeError(limit)); req.resume(); return }
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (chunk: Buffer) => {
      size += chunk.length
      if (size > limit) { reject(new PayloadTooLargeError(limit)); req.destroy(); return }
      chunks.push(chunk)
    })
    req.on('end', () => resolve(Buffer.concat(chunks)))
    req.on('error', reject)
  })
}

async function readJson(req: IncomingMessage, limit: number): Promise<unknown> {
  const body = await readBody(req, limit)
  if (body.length === 0) throw new InvalidArgumentError('the request body is empty; send JSON')
  try {
    return JSON.parse(body.toString('utf8'))
  } catch (err) {
    throw new InvalidArgumentError(`the request body is not valid JSON: ${(err as Error).message}`)
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text)
}

function writeLines(res: ServerResponse, lines: string[]): boolean {
  if (lines.length === 0) return true
  return res.write(lines.join('\n') + '\n')
}

function parseFrom(url: URL): number | undefined {
  const from = url.searchParams.get('from')
  if (from === null || from === '') return undefined
  if (!/^\d+$/.test(from)) throw new InvalidArgumentError(`from must be a change id (a non-negative integer), got "${from}"`)
  return Number(from)
}

export function createCatalogApiHandler(backend: CatalogApiBackend, options: CatalogApiOptions = {}) {
  const logger = options.logger ?? silentLogger
  const limit = options.maxBodyBytes ?? 16 * 1024 * 1024
  const token = options.token ? Buffer.from(options.token) : null

  const authorize = (req: IncomingMessage) => {
    if (!token) return
    const header = req.headers.authorization ?? ''
    const given = Buffer.from(header.startsWith('Bearer ') ? header.slice(7) : '')
    if (given.length !== token.length || !timingSafeEqual(given, token)) throw new UnauthorizedError('unauthorized: this catalog needs Authorization: Bearer <token>')
  }

  const transactions = async (req: IncomingMessage, res: ServerResponse) => {
    const statements = parseStatements(await readJson(req, limit))
    const started = performance.now()
    try {
      const outcome = backend.transact(statements)
      sendJson(res, 200, {
        results: outcome.results.map((r) => ({ rows_affected: r.rowsAffected, time: r.timeSec })),
        time: outcome.timeSec,
        version: outcome.version,
        actor_id: siteIdToUuid(backend.store.siteId),
      })
    } catch (err) {
      if (!(err instanceof StatementError)) throw err
      const { httpStatus, body } = toErrorEnvelope(err)
      sendJson(res, httpStatus, { ...body, results: [{ error: err.message }], statement_index: err.statementIndex, time: (performance.now() - started) / 1000 })
    }
  }

  const queries = async (req: IncomingMessage, res: ServerResponse) => {
    const statement = parseStatement(await readJson(req, limit))
    const started = performance.now()
    const stmt = backend.store.prepareQuery(statement.sql)
    const args = statement.params === undefined ? [] : Array.isArray(statement.params) ? statement.params : [statement.params]
    let rows: SqlValue[][]
    try {
      rows = stmt.raw().all(...args) as SqlValue[][]
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message, { cause: err })
    }
    res.writeHead(200, { 'content-type': NDJSON })
    res.write(`{"columns":${JSON.stringify(stmt.columns().map((c) => c.name))}}\n`)
    const BATCH = 500
    for (let i = 0; i < rows.length; i += BATCH) {
      const lines = rows.slice(i, i + BATCH).map((row, j) => `{"row":[${i + j + 1},${sqlRowToJsonText(row)}]}`)
      if (!writeLines(res, lines)) await new Promise((resolve) => res.once('drain', resolve))
      if (res.destroyed) return
    }
    res.end(`{"eoq":{"time":${(performance.now() - started) / 1000}}}\n`)
  }

  const stream = (req: IncomingMessage, res: ServerResponse, subscription: Subscription, from: number | undefined) => {
    const started = performance.now()
    const head = [`{"columns":${JSON.stringify(subscription.columns)}}`]
    let body: string[]
    if (from === undefined) {
      body = [...subscription.rowLines(), `{"eoq":{"time":${(performance.now() - started) / 1000},"change_id":${subscription.lastChangeId}}}`]
    } else {
      body = subscription.changesSince(from).map((c) => c.line)
    }
    res.writeHead(200, { 'content-type': NDJSON, [QUERY_ID_HEADER]: subscription.id, 'cache-control': 'no-store' })
    writeLines(res, [...head, ...body])
    req.socket.setKeepAlive(true, 15_000)
    const unlisten = subscription.listen((change: ChangeLine) => {
      if (res.writableLength > MAX_SUBSCRIBER_BACKLOG_BYTES) {
        unlisten()
        res.end(`{"error":"subscriber is lagging; resume with GET /v1/subscriptions/${subscription.id}?from=${change.changeId - 1}"}\n`)
        return
      }
      res.write(change.line + '\n')
    })
    res.on('close', unlisten)
  }

  const subscribe = async (req: IncomingMessage, res: ServerResponse, url: URL) => {
    const statement = parseStatement(await readJson(req, limit))
    const subscription = backend.subscriptions.subscribe(statement)
    stream(req, res, subscription, parseFrom(url))
  }

  const resume = (req: IncomingMessage, res: ServerResponse, url: URL, id: string) => {
    stream(req, res, backend.subscriptions.get(decodeURIComponent(id)), parseFrom(url))
  }

  const tableStats = (res: ServerResponse) => {
    const tables: Record<string, number> = {}
    let total = 0
    for (const name of backend.store.tableNames()) {
      const count = Number(backend.store.prepareQuery(`SELECT count(*) FROM "${name.replace(/"/g, '""')}"`).pluck().get())
      tables[name] = count
      total += count
    }
    sendJson(res, 200, { total_row_count: total, tables })
  }

  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    try {
      const url = new URL(req.url ?? '/', 'http://catalog')
      authorize(req)
      const path = url.pathname
      if (req.method === 'POST' && path === '/v1/transactions') return await transactions(req, res)
      if (req.method === 'POST' && path === '/v1/queries') return await queries(req, res)
      if (req.method === 'POST' && path === '/v1/subscriptions') return await subscribe(req, res, url)
      const match = /^\/v1\/subscriptions\/([^/]+)$/.exec(path)
      if (req.method === 'GET' && match) return resume(req, res, url, match[1]!)
      if (req.method === 'GET' && path === '/v1/health') return sendJson(res, 200, backend.health())
      if (req.method === 'GET' && path === '/v1/members') return sendJson(res, 200, backend.members())
      if (req.method === 'GET' && path === '/v1/table_stats') return tableStats(res)
      throw new NotFoundError(`route ${req.method} ${path}`)
    } catch (err) {
      const { httpStatus, body } = toErrorEnvelope(err)
      if (httpStatus >= 500) logger.error('catalog api error', { err, url: req.url })
      if (res.headersSent) {
        if (!res.writableEnded) res.end(`{"error":${JSON.stringify(body.error)}}\n`)
        return
      }
      sendJson(res, httpStatus, body)
    }
  }
}

export function createCatalogApiServer(backend: CatalogApiBackend, options: CatalogApiOptions = {}): Server {
  const handler = createCatalogApiHandler(backend, options)
  const server = createServer((req, res) => { void handler(req, res) })
  server.keepAliveTimeout = 30_000
  return server
}
