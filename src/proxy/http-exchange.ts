import http2 from 'node:http2'
import { Pool } from 'undici'
import type { ListenInfo, ProxyContext } from './context.js'
import { dechunk, keptHeaderLines, reasonPhrase, type RequestHead } from './http1-parser.js'
import type { Http1Connection } from './http1-proxy.js'
import type { MachineEntry } from './routing-table.js'
import type { Transport } from './transport.js'
import { isAtCapacity } from './backhaul-protocol.js'

// Request/response exchanges with a Machine where the raw HTTP/1.1 byte path does not apply:
// HTTP/2 clients (any backend) and HTTP/1.1 clients of an `h2_backend` service. HTTP/1.1 to the
// Machine goes through undici pools (one per Machine address), h2c through one node:http2
// session per Machine (reference §3.2: `h2_backend` speaks h2c).

export interface ExchangeRequest {
  method: string
  path: string
  /** Lower-case names, without hop-by-hop and pseudo headers. */
  headers: Record<string, string | string[]>
  body: Buffer[]
}

export interface ExchangeResponse {
  status: number
  headers: Record<string, string | string[]>
  body: AsyncIterable<Buffer>
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'http2-settings', 'host'])

export class ExchangeClients {
  private readonly pools = new Map<string, Pool>()
  private readonly sessions = new Map<string, http2.ClientHttp2Session>()
  private readonly transport: Transport | undefined
  private closed = false

  constructor(transport?: Transport) {
    this.transport = transport
  }

  async exchange(entry: MachineEntry, h2Backend: boolean, request: ExchangeRequest): Promise<ExchangeResponse> {
    if (this.closed) throw new Error('the proxy is shutting down')
    // A Machine on another host: its worker proxy does the exchange (backhaul-client.ts).
    const carried = this.transport?.exchange?.({ machine: entry.route, host: entry.upstreamHost, port: entry.upstreamPort }, h2Backend, request)
    if (carried !== undefined) return await carried
    const key = `${entry.upstreamHost}:${entry.upstreamPort}`
    const host = entry.upstreamHost.includes(':') ? `[${entry.upstreamHost}]` : entry.upstreamHost
    const origin = `http://${host}:${entry.upstreamPort}`
    if (!h2Backend) {
      let pool = this.pools.get(key)
      if (pool === undefined) {
        pool = new Pool(origin, { keepAliveTimeout: 4000, connections: null })
        this.pools.set(key, pool)
      }
      const response = await pool.request({
        method: request.method as 'GET',
        path: request.path,
        headers: request.headers,
        body: request.body.length === 0 ? null : request.body.length === 1 ? request.body[0]! : Buffer.concat(request.body),
      })
      return { status: response.statusCode, headers: response.headers as Record<string, string | string[]>, body: response.body }
    }
    let session = this.sessions.get(key)
    if (session === undefined || session.closed || session.destroyed) {
      session = http2.connect(origin)
      session.on('error', () => { /* streams report it */ })
      const created = session
      session.on('close', () => { if (this.sessions.get(key) === created) this.sessions.delete(key) })
      this.sessions.set(key, session)
    }
    const stream = session.request({ ':method': request.method, ':path': request.path, ...request.headers }, { endStream: request.body.length === 0 })
    for (const chunk of request.body) stream.write(chunk)
    if (request.body.length > 0) stream.end()
    return await new Promise<ExchangeResponse>((resolve, reject) => {
      stream.once('error', reject)
      stream.once('response', (headers) => {
        const status = Number(headers[':status'] ?? 502)
        const out: Record<string, string | string[]> = {}
        for (const [name, value] of Object.entries(headers)) if (!name.startsWith(':') && value !== undefined) out[name] = value as string | string[]
        resolve({ status, headers: out, body: stream })
      })
    })
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    for (const pool of this.pools.values()) void pool.destroy()
    for (const session of this.sessions.values()) session.destroy()
    this.pools.clear()
    this.sessions.clear()
  }
}

/** The request headers Fly's proxy adds (reference §3.2), as an object. */
export function flyRequestHeaders(ctx: ProxyContext, listen: ListenInfo, clientIp: string, requestId: string, xForwardedFor: string, xForwardedPort: string): Record<string, string> {
  return {
    'fly-client-ip': clientIp,
    'x-forwarded-for': xForwardedFor ? `${xForwardedFor}, ${clientIp}` : clientIp,
    'x-forwarded-proto': listen.tls ? 'https' : 'http',
    'x-forwarded-ssl': listen.tls ? 'on' : 'off',
    'x-forwarded-port': xForwardedPort || String(listen.port),
    'fly-forwarded-port': String(listen.port),
    'fly-region': ctx.region,
    'fly-request-id': requestId,
  }
}

/** Header lines (as the HTTP/1.1 parser keeps them) to an object for undici/http2. */
export function headerLinesToObject(lines: string, extra: string): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {}
  for (const line of (lines + extra).split('\r\n')) {
    if (!line) continue
    const colon = line.indexOf(':')
    const name = line.slice(0, colon).toLowerCase()
    if (HOP_BY_HOP.has(name) || name === 'content-length') continue
    const value = line.slice(colon + 1).trim()
    const existing = out[name]
    if (existing === undefined) out[name] = value
    else if (Array.isArray(existing)) existing.push(value)
    else out[name] = [existing, value]
  }
  return out
}

/** An HTTP/1.1 client request to an h2_backend service: buffered body, h2c to the Machine, and
 * the response written back as HTTP/1.1 with chunked framing. */
export function forwardViaH2Backend(ctx: ProxyContext, conn: Http1Connection, entry: MachineEntry, head: RequestHead, replayBody: Buffer[] | undefined): void {
  const state = conn.requestState
  const body: Buffer[] = replayBody !== undefined ? [...replayBody] : state.framerDone ? [...state.bodySoFar] : []
  const send = () => {
    conn.h2BodySink = undefined
    if (head.chunked && body.length > 0) body.splice(0, body.length, dechunk(Buffer.concat(body)))
    const headers = headerLinesToObject(keptHeaderLines(head), '')
    Object.assign(headers, flyRequestHeaders(ctx, state.listen, state.clientIp, state.requestId, head.xForwardedFor, head.xForwardedPort))
    if (head.host) headers[':authority' as string] = head.host
    void exchangeClients(ctx).exchange(entry, true, { method: head.method, path: head.target, headers, body }).then(
      async (response) => {
        let out = `HTTP/1.1 ${response.status} ${reasonPhrase(response.status)}\r\n`
        for (const [name, value] of Object.entries(response.headers)) {
          if (HOP_BY_HOP.has(name) || name === 'content-length') continue
          for (const v of Array.isArray(value) ? value : [value]) out += `${name}: ${v}\r\n`
        }
        const http = state.binding.port.http
        if (!http.pristine) out += `Via: 1.1 hangar\r\n${response.headers.server ? '' : 'Server: Hangar\r\n'}Fly-Request-Id: ${state.requestId}\r\n`
        out += `Transfer-Encoding: chunked\r\n${state.closeAfter ? 'Connection: close\r\n' : ''}\r\n`
        conn.writeClient(out)
        for await (const chunk of response.body) {
          if (chunk.length === 0) continue
          conn.writeClient(`${chunk.length.toString(16)}\r\n`)
          conn.writeClient(chunk)
          conn.writeClient('\r\n')
        }
        conn.writeClient('0\r\n\r\n')
        conn.finishGenericExchange(false)
      },
    ).catch((err: unknown) => {
      // The worker refused at the Machine's hard limit (nothing was sent to the Machine).
      if (isAtCapacity(err)) { if (!conn.retryAtCapacity()) conn.refuseAtCapacity(); return }
      ctx.metrics.app(entry.route.app).upstreamErrors++
      ctx.logger.warn('h2 backend exchange failed', { app: entry.route.app, machineId: entry.machineId, error: err })
      const body = `the Machine ${entry.machineId} did not answer over h2c\n`
      conn.writeClient(`HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
      conn.finishGenericExchange(true)
    })
  }
  if (replayBody !== undefined || state.framerDone) { send(); return }
  conn.h2BodySink = (chunk, done) => {
    body.push(chunk)
    if (done) send()
  }
}

const clientsByContext = new WeakMap<ProxyContext, ExchangeClients>()
export function exchangeClients(ctx: ProxyContext): ExchangeClients {
  let clients = clientsByContext.get(ctx)
  if (!clients) { clients = new ExchangeClients(ctx.transport); clientsByContext.set(ctx, clients) }
  return clients
}

