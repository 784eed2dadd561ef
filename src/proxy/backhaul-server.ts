import http2 from 'node:http2'
import type net from 'node:net'
import type { Logger } from '../core/index.js'
import { hostIdOfCertificate, type BackhaulIdentity } from './backhaul-identity.js'
import { BACKHAUL_HEADER, LOAD_REPORT_PATH, machineServiceKey, parseMachineAuthority, type BackhaulRefusal } from './backhaul-protocol.js'
import type { Dispatcher } from './dispatcher.js'
import type { ExchangeRequest, ExchangeResponse } from './http-exchange.js'
import { buildLoadReport, countOrigin, encodeLoadReport, loadExcluding } from './load-reports.js'
import type { ProxyMetrics } from './metrics.js'
import type { MachineEntry, RoutingTable } from './routing-table.js'
import type { Transport } from './transport.js'

// The worker side of the backhaul (backhaul-protocol.ts): other proxies' streams for this host's
// Machines. The worker owns the Machines' live load (DESIGN "Who owns what"): every stream counts
// on the Machine for as long as it is open, next to this proxy's own clients, and a stream that
// would take a Machine past its hard_limit is refused at once, with the Machine's load, so the
// edge picks again or queues (spec/seeds/004_…: "no new traffic" above hard_limit). It streams
// each edge a load report of what the others put on its Machines (load-reports.ts).

const STREAM_WINDOW_BYTES = 1 << 20
const SESSION_WINDOW_BYTES = 32 << 20
const MAX_SESSION_MEMORY_MB = 256
/** A report goes out when it changed, and at least this often anyway (the edge sees it alive). */
const REPORT_HEARTBEAT_MS = 1000
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'http2-settings'])
const ORIGIN = Symbol('hangar.backhaulOrigin')

interface OriginSession extends http2.ServerHttp2Session { [ORIGIN]?: string }

interface Subscriber {
  origin: string
  stream: http2.ServerHttp2Stream
  last: string
  lastAt: number
}

export interface BackhaulServerOptions {
  identity: BackhaulIdentity
  table: RoutingTable
  dispatcher: Dispatcher
  metrics: ProxyMetrics
  logger: Logger
  /** Reaches this host's Machines (connects straight to their address). */
  local: Transport
  /** An exchange with one of this host's Machines (the proxy's own HTTP clients). */
  exchange(entry: MachineEntry, h2Backend: boolean, request: ExchangeRequest): Promise<ExchangeResponse>
  /** How often load reports go out (default 100 ms; issue 4: "often enough"). */
  reportIntervalMs?: number
}

export class BackhaulServer {
  private readonly options: BackhaulServerOptions
  private readonly server: http2.Http2SecureServer
  private readonly sessions = new Set<http2.ServerHttp2Session>()
  private readonly subscribers = new Set<Subscriber>()
  private readonly reportTimer: NodeJS.Timeout
  private authFailureLogged = new Map<string, number>()
  private address: { host: string; port: number } | undefined
  private closed = false

  constructor(options: BackhaulServerOptions) {
    this.options = options
    const { identity } = options
    this.server = http2.createSecureServer({
      key: identity.keyPem,
      cert: identity.certPem,
      ca: identity.caPem,
      // Mutual TLS: a client without a certificate from the cluster CA never gets a session.
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.3',
      allowHTTP1: false,
      settings: { initialWindowSize: STREAM_WINDOW_BYTES, maxConcurrentStreams: 100_000 },
      maxSessionMemory: MAX_SESSION_MEMORY_MB,
      // nghttp2's "rapid reset" guard (CVE-2023-44487) ends a session whose client resets more
      // than 1000 streams in a burst: a busy edge does that legitimately (clients that leave
      // mid-response), and only authenticated cluster members get here.
      ...({ streamResetBurst: 1_000_000, streamResetRate: 100_000 } as object),
    })
    this.server.on('connection', (socket: net.Socket) => socket.setNoDelay(true))
    this.server.on('tlsClientError', (err: NodeJS.ErrnoException, socket) => {
      options.metrics.backhaul.authFailures++
      const from = `${socket.remoteAddress ?? '?'}`
      const now = Date.now()
      if (now - (this.authFailureLogged.get(from) ?? 0) > 60_000) {
        this.authFailureLogged.set(from, now)
        options.logger.warn('refused a backhaul connection without a valid cluster certificate', { from, error: err.code ?? err.message })
      }
      socket.destroy()
    })
    this.server.on('session', (session: OriginSession) => {
      const socket = session.socket as unknown as { getPeerCertificate?: () => unknown }
      const origin = hostIdOfCertificate(socket.getPeerCertificate?.() as never)
      if (origin === undefined || origin === identity.hostId) {
        options.metrics.backhaul.authFailures++
        session.destroy()
        return
      }
      session[ORIGIN] = origin
      this.sessions.add(session)
      session.on('close', () => this.sessions.delete(session))
      session.on('error', () => { /* close follows */ })
      session.on('connect', () => session.setLocalWindowSize(SESSION_WINDOW_BYTES))
      try { session.setLocalWindowSize(SESSION_WINDOW_BYTES) } catch { /* not yet connected: 'connect' does it */ }
    })
    this.server.on('stream', (stream, headers) => {
      const origin = (stream.session as OriginSession | undefined)?.[ORIGIN]
      stream.on('error', () => { /* close follows */ })
      if (origin === undefined) { stream.close(http2.constants.NGHTTP2_REFUSED_STREAM); return }
      try {
        this.onStream(stream, headers, origin)
      } catch (err) {
        options.logger.error('backhaul stream failed', { origin, error: err })
        if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR)
      }
    })
    this.reportTimer = setInterval(() => this.sendReports(), options.reportIntervalMs ?? 100)
    this.reportTimer.unref()
  }

  /** Binds the backhaul listener; rejects if the address cannot be bound. */
  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => { this.server.removeListener('listening', onListening); reject(err) }
      const onListening = () => {
        this.server.removeListener('error', onError)
        const address = this.server.address() as net.AddressInfo
        this.address = { host: address.address, port: address.port }
        resolve(this.address)
      }
      this.server.once('error', onError)
      this.server.once('listening', onListening)
      this.server.listen({ host, port, backlog: 1024 })
    })
  }

  get listeningAddress(): { host: string; port: number } | undefined {
    return this.address
  }

  private onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, origin: string): void {
    const method = headers[':method']
    if (method === 'CONNECT') { this.tunnel(stream, headers, origin); return }
    if (method === 'GET' && headers[':path'] === LOAD_REPORT_PATH) { this.subscribe(stream, origin); return }
    if (headers[BACKHAUL_HEADER.machine] !== undefined) { this.exchange(stream, headers, origin); return }
    stream.respond({ ':status': 404, 'content-type': 'text/plain; charset=utf-8' })
    stream.end('not a backhaul stream\n')
  }

  /** The Machine a stream names, if it runs on this host; or the refusal to answer with. */
  private admit(stream: http2.ServerHttp2Stream, target: string | undefined, origin: string): MachineEntry | undefined {
    const { metrics } = this.options
    metrics.backhaul.streamsIn++
    const parsed = target === undefined ? undefined : parseMachineAuthority(target)
    const entry = parsed === undefined ? undefined : this.options.table.entry(machineServiceKey(parsed.machineId, parsed.port))
    if (this.closed) { this.refuse(stream, 503, 'closing'); return undefined }
    if (entry === undefined || entry.route.hostId !== this.options.identity.hostId) { this.refuse(stream, 404, 'unknown_machine'); return undefined }
    // spec/seeds/004_…: at hard_limit a Machine gets no new traffic, from any edge.
    if (entry.load >= entry.hardLimit) { this.refuse(stream, 503, 'at_capacity', loadExcluding(entry, origin)); return undefined }
    entry.load++
    countOrigin(entry, origin, 1)
    return entry
  }

  private refuse(stream: http2.ServerHttp2Stream, status: number, reason: BackhaulRefusal, load?: number): void {
    this.options.metrics.backhaulRefusal(reason)
    if (stream.destroyed || stream.headersSent) return
    stream.respond({ ':status': status, [BACKHAUL_HEADER.refusal]: reason, ...(load !== undefined ? { [BACKHAUL_HEADER.load]: String(load) } : {}) }, { endStream: true })
  }

  private releaser(entry: MachineEntry, origin: string): () => void {
    let released = false
    return () => {
      if (released) return
      released = true
      countOrigin(entry, origin, -1)
      const group = this.options.table.groupOf(entry)
      if (group !== undefined) this.options.dispatcher.release(entry, group)
      else entry.load--
    }
  }

  /** CONNECT: bytes both ways between the stream and a fresh connection to the Machine. */
  private tunnel(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, origin: string): void {
    const entry = this.admit(stream, headers[':authority'], origin)
    if (entry === undefined) return
    const release = this.releaser(entry, origin)
    const socket = this.options.local.connect({ machine: entry.route, host: entry.upstreamHost, port: entry.upstreamPort })
    socket.setNoDelay(true)
    let connected = false
    socket.once('connect', () => {
      connected = true
      if (stream.destroyed) { socket.destroy(); return }
      stream.respond({ ':status': 200, [BACKHAUL_HEADER.load]: String(loadExcluding(entry, origin)) })
      stream.pipe(socket)
      socket.pipe(stream)
    })
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (connected) {
        // The Machine reset the connection: the edge sees the stream reset, as its client would.
        if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_CONNECT_ERROR)
        return
      }
      this.options.metrics.backhaulRefusal('connect_failed')
      if (!stream.destroyed && !stream.headersSent) stream.respond({ ':status': 502, [BACKHAUL_HEADER.error]: err.code ?? 'ECONNREFUSED' }, { endStream: true })
    })
    socket.on('close', release)
    stream.on('close', () => { socket.destroy(); release() })
  }

  /** One request/response with the Machine, through this proxy's own clients. */
  private exchange(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, origin: string): void {
    const entry = this.admit(stream, String(headers[BACKHAUL_HEADER.machine]), origin)
    if (entry === undefined) return
    const release = this.releaser(entry, origin)
    stream.on('close', release)
    const h2Backend = headers[BACKHAUL_HEADER.h2Backend] === '1'
    const forwarded: Record<string, string | string[]> = {}
    for (const [name, value] of Object.entries(headers)) {
      if (name.startsWith(':') || name.startsWith('hangar-') || value === undefined) continue
      forwarded[name] = value as string | string[]
    }
    const authority = headers[':authority']
    if (authority !== undefined) forwarded[h2Backend ? ':authority' : 'host'] = authority
    const body: Buffer[] = []
    stream.on('data', (chunk: Buffer) => body.push(chunk))
    stream.once('end', () => {
      if (stream.destroyed) return
      this.options.exchange(entry, h2Backend, { method: String(headers[':method']), path: String(headers[':path'] ?? '/'), headers: forwarded, body }).then(
        async (response) => {
          if (stream.destroyed) { for await (const _ of response.body) { /* drain */ } return }
          const out: http2.OutgoingHttpHeaders = { ':status': response.status }
          for (const [name, value] of Object.entries(response.headers)) if (!HOP_BY_HOP.has(name) && !name.startsWith('hangar-')) out[name] = value
          out[BACKHAUL_HEADER.load] = String(loadExcluding(entry, origin))
          stream.respond(out)
          for await (const chunk of response.body) {
            if (stream.destroyed) continue
            if (!stream.write(chunk)) await new Promise((resolve) => { stream.once('drain', resolve); stream.once('close', resolve) })
          }
          if (!stream.destroyed) stream.end()
        },
      ).catch((err: unknown) => {
        this.options.metrics.app(entry.route.app).upstreamErrors++
        const code = (err as NodeJS.ErrnoException | undefined)?.code ?? 'EUPSTREAM'
        if (!stream.destroyed && !stream.headersSent) stream.respond({ ':status': 502, [BACKHAUL_HEADER.error]: String(code) }, { endStream: true })
        else if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR)
      })
    })
  }

  private subscribe(stream: http2.ServerHttp2Stream, origin: string): void {
    stream.respond({ ':status': 200, 'content-type': 'application/x-ndjson' })
    const subscriber: Subscriber = { origin, stream, last: '', lastAt: 0 }
    this.subscribers.add(subscriber)
    stream.on('close', () => this.subscribers.delete(subscriber))
    this.sendTo(subscriber, this.localMachines(), Date.now())
  }

  private localMachines(): MachineEntry[] {
    const self = this.options.identity.hostId
    const local: MachineEntry[] = []
    for (const entry of this.options.table.machineEntries()) if (entry.load > 0 && entry.route.hostId === self) local.push(entry)
    return local
  }

  private sendReports(): void {
    if (this.subscribers.size === 0) return
    const local = this.localMachines()
    const now = Date.now()
    for (const subscriber of this.subscribers) this.sendTo(subscriber, local, now)
  }

  private sendTo(subscriber: Subscriber, local: MachineEntry[], now: number): void {
    const line = encodeLoadReport(buildLoadReport(local, subscriber.origin))
    if (line === subscriber.last && now - subscriber.lastAt < REPORT_HEARTBEAT_MS) return
    if (subscriber.stream.destroyed) return
    // A report is small; one that cannot be written now is replaced by the next one.
    if (subscriber.stream.writableLength > 64 * 1024) return
    subscriber.stream.write(line)
    subscriber.last = line
    subscriber.lastAt = now
    this.options.metrics.backhaul.reportsSent++
  }

  /** Stops listening and ends every session; idempotent. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    clearInterval(this.reportTimer)
    for (const subscriber of this.subscribers) subscriber.stream.destroy()
    this.subscribers.clear()
    const closing = new Promise<void>((resolve) => {
      if (!this.server.listening) { resolve(); return }
      this.server.close(() => resolve())
    })
    for (const session of this.sessions) session.destroy()
    this.sessions.clear()
    await closing
  }
}
