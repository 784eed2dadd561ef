import type net from 'node:net'
import { loadBucket, LoadBucket } from './balancer.js'
import { bindingForHost, type ListenInfo, type ProxyContext } from './context.js'
import { RefusedError, type Accept } from './dispatcher.js'
import {
  formatReplayFailed, formatReplaySrc, MAX_REPLAY_BODY_BYTES, MAX_REPLAYS, parseReplayHeader, parseReplayJson,
  regionMatchers, REPLAY_CONTENT_TYPE, transformHeaderLines, type ReplayInstruction,
} from './fly-replay.js'
import { BodyFramer, composeHead, CRLFCRLF, dechunk, keptHeaderLines, HttpParseError, parseRequestHead, parseResponseHead, reasonPhrase, responseHasNoBody, type RequestHead, type ResponseHead } from './http1-parser.js'
import type { MachineEntry, PortBinding, ServiceGroup } from './routing-table.js'
import { DEFAULT_HEADERS_READ_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS } from './services.js'
import type { UpstreamPool, Poolable, Transport, UpstreamSocket, UpstreamTarget } from './transport.js'
import { isAtCapacity } from './backhaul-protocol.js'
import { forwardViaH2Backend } from './http-exchange.js'

// The HTTP/1.1 data path (issue 3 "Handlers: http"): one object per client connection, a
// hand-written head parser, header rewriting on strings, keep-alive upstream connections pooled
// per Machine, and body bytes forwarded as they arrive without re-framing. Each request is
// balanced on its own (reference §4.1); `requests` concurrency counts it while in flight.
//
//   Head ──parse──► Routing ──Machine──► Forwarding ──response done──► Head (keep-alive)
//                     │ (queue / autostart)       └─101──► Upgraded (WebSocket, raw bytes)

const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')
const MAX_RESPONSE_HEAD_BYTES = 64 * 1024
/** Client bytes buffered beyond the current request (pipelining) before reading pauses. */
const MAX_PENDING_BYTES = 256 * 1024

const enum Phase { Head, Routing, Forwarding, Upgraded, Closed }

export class UpstreamConn implements Poolable {
  readonly socket: UpstreamSocket
  readonly key: string
  /** May go back to the pool after an exchange (not a backhaul stream: one request each). */
  readonly reusable: boolean
  owner: Http1Connection | undefined
  idleSince = 0
  /** It served a response before: a failure before any byte may be a stale keep-alive. */
  reused = false
  connected = false
  error = ''
  constructor(transport: Transport, target: UpstreamTarget, key: string, reusable = true) {
    // Responses are read into one shared buffer (no allocation per read); whatever outlives the
    // read is copied, and a write that queues takes the buffer with it (see writeShared).
    const socket = transport.connect(target, {
      onread: {
        buffer: sharedReadBuffer,
        callback: (nread: number, buf: Uint8Array) => {
          if (this.owner !== undefined) this.owner.onUpstreamData(this, (buf as Buffer).subarray(0, nread))
          else socket.destroy() // an idle pooled connection must not speak
          return true
        },
      },
    })
    this.socket = socket
    this.key = key
    this.reusable = reusable
    socket.on('drain', () => this.owner?.onUpstreamDrain())
    socket.once('connect', () => { this.connected = true })
    socket.on('error', (err: NodeJS.ErrnoException) => { this.error = err.code ?? err.message /* 'close' follows */ })
    socket.on('close', () => this.owner?.onUpstreamClose(this))
  }
  get destroyed(): boolean { return this.socket.destroyed }
  destroy(): void { this.socket.destroy() }
}

export interface Http1Options {
  pool: UpstreamPool<UpstreamConn>
}

export class Http1Connection {
  private readonly ctx: ProxyContext
  private readonly pool: UpstreamPool<UpstreamConn>
  private readonly socket: net.Socket
  private readonly listen: ListenInfo
  private readonly clientIp: string
  private phase = Phase.Head
  private pending: Buffer | undefined
  private lastActivity = Date.now()
  private headStartedAt = Date.now()
  private idleTimeoutMs = DEFAULT_IDLE_TIMEOUT_MS
  private headersTimeoutMs = DEFAULT_HEADERS_READ_TIMEOUT_MS
  private closeAfter = false

  // The exchange in flight.
  private head: RequestHead | undefined
  /** The client bytes the head was parsed from (its `keep` ranges point into them). */
  private headBuf: Buffer | undefined
  private binding: PortBinding | undefined
  private group: ServiceGroup | undefined
  private entry: MachineEntry | undefined
  private upstream: UpstreamConn | undefined
  private requestId = ''
  private readonly reqFramer = new BodyFramer()
  private readonly resFramer = new BodyFramer()
  private awaitingResponseHead = false
  private responseBytes = 0
  private responseHead: ResponseHead | undefined
  private upstreamBuf: Buffer | undefined
  private extraRequestHeaders = ''
  private replayChunks: Buffer[] = NO_CHUNKS
  private replayBytes = 0
  private replayOverflow = false
  private replays = 0
  private replay: ReplayInstruction | undefined
  private replayBody: Buffer[] | undefined
  private replayFrom: MachineEntry | undefined
  private replayStartedAt = 0
  private discarding = false

  constructor(ctx: ProxyContext, pool: UpstreamPool<UpstreamConn>, socket: net.Socket, listen: ListenInfo, initial?: Buffer) {
    this.ctx = ctx
    this.pool = pool
    this.socket = socket
    this.listen = listen
    this.clientIp = normaliseIp(socket.remoteAddress ?? '')
    const first = ctx.table.ports.get(listen.port)?.[0]
    if (first) {
      this.idleTimeoutMs = first.port.http.idleTimeoutMs
      this.headersTimeoutMs = first.port.http.headersReadTimeoutMs
    }
    socket.setNoDelay(true)
    // Shared listeners (no closures per connection: 10,000 idle clients cost less memory).
    ;(socket as ClientSocket)[CONNECTION] = this
    socket.on('data', onClientSocketData)
    socket.on('drain', onClientSocketDrain)
    socket.on('error', ignoreError)
    socket.on('close', onClientSocketClose)
    ctx.connections.add(this)
    if (initial !== undefined && initial.length > 0) this.onClientData(initial)
  }

  destroy(): void {
    this.socket.destroy()
  }

  /** Called about once a second: slow heads (slowloris) and idle keep-alive connections end. */
  sweep(now: number): void {
    if (this.phase === Phase.Forwarding && !this.reqFramer.done && now - this.lastActivity > this.idleTimeoutMs) {
      // A request body that stopped arriving must not hold the Machine's capacity forever.
      this.ctx.metrics.refuse(this.binding?.app ?? '-', 'headers_timeout')
      this.releaseEntry()
      this.phase = Phase.Closed
      this.socket.destroy()
      return
    }
    if (this.phase !== Phase.Head) return
    if (this.pending !== undefined && this.pending.length > 0) {
      if (now - this.headStartedAt > this.headersTimeoutMs) {
        this.ctx.metrics.refuse(this.binding?.app ?? '-', 'headers_timeout')
        this.respondError(408, 'the request head did not arrive in time', true)
      }
    } else if (now - this.lastActivity > this.idleTimeoutMs) {
      this.socket.end()
      this.phase = Phase.Closed
    }
  }

  onClientData(chunk: Buffer): void {
    this.lastActivity = Date.now()
    switch (this.phase) {
      case Phase.Head:
        if (this.pending === undefined) { this.pending = chunk; this.headStartedAt = this.lastActivity }
        else this.pending = Buffer.concat([this.pending, chunk])
        this.parseHead()
        return
      case Phase.Forwarding:
        if (!this.reqFramer.done && this.pending === undefined) { this.forwardRequestBody(chunk); return }
        this.stash(chunk)
        return
      case Phase.Routing:
        this.stash(chunk)
        return
      case Phase.Upgraded:
        if (this.upstream !== undefined && !this.upstream.socket.write(chunk)) this.socket.pause()
        return
      case Phase.Closed:
        return
    }
  }

  private stash(chunk: Buffer): void {
    this.pending = this.pending === undefined ? chunk : Buffer.concat([this.pending, chunk])
    if (this.pending.length > MAX_PENDING_BYTES) this.socket.pause()
  }

  private parseHead(): void {
    const buf = this.pending!
    const end = buf.indexOf(CRLFCRLF)
    if (end === -1) {
      if (buf.length >= 14 && buf[0] === 0x50 && buf.subarray(0, Math.min(buf.length, H2_PREFACE.length)).equals(H2_PREFACE.subarray(0, Math.min(buf.length, H2_PREFACE.length)))) {
        if (buf.length >= H2_PREFACE.length) this.handOffToHttp2(buf)
        return
      }
      if (buf.length > this.ctx.maxHeaderBytes) {
        this.ctx.metrics.refuse('-', 'header_too_large')
        this.respondError(431, `the request head exceeds ${this.ctx.maxHeaderBytes} bytes`, true)
      }
      return
    }
    if (end > this.ctx.maxHeaderBytes) {
      this.ctx.metrics.refuse('-', 'header_too_large')
      this.respondError(431, `the request head exceeds ${this.ctx.maxHeaderBytes} bytes`, true)
      return
    }
    if (end === 14 && buf.subarray(0, 24).equals(H2_PREFACE)) { this.handOffToHttp2(buf); return }
    let head: RequestHead
    try {
      head = parseRequestHead(buf.toString('latin1', 0, end))
    } catch (err) {
      const status = err instanceof HttpParseError ? err.status : 400
      this.ctx.metrics.refuse('-', 'bad_request')
      this.respondError(status, err instanceof Error ? err.message : 'bad request', true)
      return
    }
    const rest = end + 4
    this.pending = rest < buf.length ? buf.subarray(rest) : undefined
    this.headBuf = buf
    this.startRequest(head)
  }

  private handOffToHttp2(buf: Buffer): void {
    this.phase = Phase.Closed
    this.socket.removeListener('data', onClientSocketData)
    this.socket.removeListener('drain', onClientSocketDrain)
    this.socket.removeListener('close', onClientSocketClose)
    this.ctx.connections.delete(this)
    this.pending = undefined
    this.ctx.http2.accept(this.socket, this.listen, buf)
  }

  private startRequest(head: RequestHead): void {
    this.head = head
    this.closeAfter = head.close
    this.replays = 0
    this.replayChunks = NO_CHUNKS
    this.replayBytes = 0
    this.replayOverflow = false
    this.replay = undefined
    this.replayBody = undefined
    this.replayFrom = undefined
    this.extraRequestHeaders = ''
    this.failedMachines = NO_IDS
    this.capacityRetries = 0
    if (head.chunked) this.reqFramer.reset('chunked')
    else if (head.contentLength > 0) this.reqFramer.reset('length', head.contentLength)
    else this.reqFramer.reset('none')
    const binding = bindingForHost(this.ctx.table, this.listen.port, head.host, true)
    if (binding === undefined) {
      this.ctx.metrics.refuse('-', 'no_app')
      this.respondError(404, `no app serves ${head.host || 'this request'} on port ${this.listen.port}`, !this.reqFramer.done)
      return
    }
    this.binding = binding
    this.idleTimeoutMs = binding.port.http.idleTimeoutMs
    this.headersTimeoutMs = binding.port.http.headersReadTimeoutMs
    this.ctx.metrics.app(binding.app).requests++
    if (binding.port.forceHttps && !this.listen.tls) {
      const host = head.host.replace(/:\d+$/, '')
      this.respondRaw(301, `Location: https://${host}${head.target.startsWith('/') ? head.target : '/'}\r\nContent-Length: 0\r\n`, '', !this.reqFramer.done)
      return
    }
    this.requestId = this.ctx.requestId()
    this.route(binding.group, clientAccept(binding.group, head, (line) => { this.extraRequestHeaders += line }))
  }

  /** Fly's client routing headers (reference §3.1) and fly-replay targets become a filter. */
  private route(group: ServiceGroup, accept: Accept | undefined): void {
    this.group = group
    this.routeAccept = accept
    const result = this.ctx.dispatcher.acquire(group, accept)
    if (!(result instanceof Promise)) { this.connectUpstream(result); return }
    this.phase = Phase.Routing
    result.then(
      (entry) => {
        if (this.phase === Phase.Closed) { this.ctx.dispatcher.release(entry, group); return }
        if (this.pending === undefined || this.pending.length < MAX_PENDING_BYTES) this.socket.resume()
        this.connectUpstream(entry)
      },
      (err: unknown) => this.refused(err),
    )
  }

  private refused(err: unknown): void {
    if (this.phase === Phase.Closed) return
    const app = this.group?.app ?? '-'
    if (err instanceof RefusedError) {
      this.ctx.metrics.refuse(app, err.reason)
      if (this.replay !== undefined && this.replay.fallback !== '' && this.replayFrom !== undefined && !this.replayFallbackTried) {
        this.fallBackToReplaySource('no_candidate')
        return
      }
      if (this.failedMachines.length > 0) {
        // It failed on a Machine and found no other in time: the Machine's failure is the news.
        this.respondError(502, `could not connect to the Machine ${this.failedMachines.at(-1)} (${this.lastUpstreamError}), and no other Machine could take the request`, true)
        return
      }
      this.respondError(503, err.message, !this.reqFramer.done)
    } else {
      this.ctx.logger.error('routing failed', { app, error: err })
      this.respondError(502, 'the proxy could not route this request', true)
    }
  }

  private replayFallbackTried = false
  /** Times a worker refused this request at a Machine's hard limit. */
  private capacityRetries = 0
  /** The filter the current request was routed with, and the Machines that failed it. */
  private routeAccept: Accept | undefined
  private failedMachines: string[] = NO_IDS
  private lastUpstreamError = ''
  /** The group of the Machine that asked for the replay (fallback goes back there). */
  private replaySourceGroup: ServiceGroup | undefined

  private fallBackToReplaySource(reason: 'timeout' | 'retries_exhausted' | 'no_candidate'): void {
    const from = this.replayFrom!
    this.replayFallbackTried = true
    this.extraRequestHeaders += `fly-replay-failed: ${formatReplayFailed({ instance: this.replay!.instance, app: this.replay!.app || from.route.app, region: this.replay!.regions.join(','), source: from.machineId, reason, elapsedMs: Date.now() - this.replayStartedAt })}\r\n`
    this.replay = undefined
    this.route(this.replaySourceGroup ?? this.group!, (m) => m.machineId === from.machineId)
  }

  private connectUpstream(entry: MachineEntry): void {
    const head = this.head!
    this.entry = entry
    if (entry.route.app !== this.binding!.app) this.ctx.metrics.app(entry.route.app).requests++
    if (this.binding!.port.http.h2Backend && head.upgrade === '') {
      this.phase = Phase.Forwarding
      forwardViaH2Backend(this.ctx, this, entry, head, this.replayBody)
      if (this.replayBody === undefined && !this.reqFramer.done && this.pending !== undefined) {
        const chunk = this.pending
        this.pending = undefined
        this.forwardRequestBody(chunk)
      }
      return
    }
    const key = `${entry.upstreamHost}:${entry.upstreamPort}`
    const transport = this.ctx.transport
    // (No target object per request on one host: LocalTransport connections are always reusable.)
    const reusable = transport.reusable === undefined || transport.reusable({ machine: entry.route, host: entry.upstreamHost, port: entry.upstreamPort })
    let upstream = head.upgrade === '' && reusable ? this.pool.take(key) : undefined
    if (upstream === undefined) {
      upstream = new UpstreamConn(transport, { machine: entry.route, host: entry.upstreamHost, port: entry.upstreamPort }, key, reusable)
    } else {
      upstream.reused = true
    }
    upstream.owner = this
    this.upstream = upstream
    this.phase = Phase.Forwarding
    this.awaitingResponseHead = true
    this.responseBytes = 0
    this.responseHead = undefined
    this.upstreamBuf = undefined
    this.discarding = false
    const socket = upstream.socket
    socket.cork()
    socket.write(this.upstreamRequestHead(head, entry))
    if (this.replayBody !== undefined) {
      for (const chunk of this.replayBody) socket.write(chunk)
    } else if (!this.reqFramer.done && this.pending !== undefined) {
      const chunk = this.pending
      this.pending = undefined
      this.forwardRequestBody(chunk)
    }
    socket.uncork()
  }

  /** The request head for the Machine: the client's bytes minus hop-by-hop and proxy-owned
   * header lines, plus the headers Fly's proxy adds, in one buffer. */
  private upstreamRequestHead(head: RequestHead, entry: MachineEntry): Buffer {
    const tls = this.listen.tls
    const port = this.listen.port
    // reference §3.2: the request headers Fly's proxy adds.
    let added = head.upgrade !== '' ? 'Connection: upgrade\r\n' : ''
    added += `Fly-Client-IP: ${this.clientIp}\r\nX-Forwarded-For: ${head.xForwardedFor ? `${head.xForwardedFor}, ` : ''}${this.clientIp}\r\n`
      + `X-Forwarded-Proto: ${tls ? 'https' : 'http'}\r\nX-Forwarded-SSL: ${tls ? 'on' : 'off'}\r\n`
      + `X-Forwarded-Port: ${head.xForwardedPort || port}\r\nFly-Forwarded-Port: ${port}\r\n`
      + `Fly-Region: ${this.ctx.region}\r\nFly-Request-Id: ${this.requestId}\r\n${this.extraRequestHeaders}\r\n`
    if (head.minor === 1 && this.replay === undefined) return composeHead(this.headBuf!, head.keep, added)
    // HTTP/1.0 clients and replays with a transform get a rebuilt head.
    const target = this.replay?.transform.path || head.target
    let lines = keptHeaderLines(head)
    if (this.replay !== undefined) lines = transformHeaderLines(lines, this.replay.transform)
    if (head.minor === 0 && head.host === '') lines += `Host: ${entry.route.app}.${this.ctx.domain}\r\n`
    return Buffer.from(`${head.method} ${target} HTTP/1.1\r\n${lines}${added}`, 'latin1')
  }

  private forwardRequestBody(chunk: Buffer): void {
    let end: number
    try {
      end = this.reqFramer.consume(chunk, 0, chunk.length)
    } catch (err) {
      this.ctx.metrics.refuse(this.binding?.app ?? '-', 'bad_request')
      this.abortExchange()
      this.respondError(400, err instanceof Error ? err.message : 'bad request body', true)
      return
    }
    const part = end === -1 || end === chunk.length ? chunk : chunk.subarray(0, end)
    if (end !== -1 && end < chunk.length) {
      this.pending = chunk.subarray(end)
      this.socket.pause() // the next pipelined request waits for this response
    }
    if (!this.replayOverflow) {
      this.replayBytes += part.length
      if (this.replayBytes > MAX_REPLAY_BODY_BYTES) { this.replayOverflow = true; this.replayChunks = NO_CHUNKS }
      else if (this.replayChunks === NO_CHUNKS) this.replayChunks = [part]
      else this.replayChunks.push(part)
    }
    const upstream = this.upstream
    if (upstream === undefined) {
      // h2 backend path buffers through http-exchange.
      this.h2BodySink?.(part, this.reqFramer.done)
      return
    }
    if (!upstream.socket.write(part)) this.socket.pause()
  }

  /** Set by the h2 backend exchange to receive request body bytes. */
  h2BodySink: ((chunk: Buffer, done: boolean) => void) | undefined

  onUpstreamDrain(): void {
    if (this.phase === Phase.Forwarding || this.phase === Phase.Upgraded) {
      if (this.pending === undefined || this.pending.length < MAX_PENDING_BYTES) this.socket.resume()
    }
  }

  onClientDrain(): void {
    this.upstream?.socket.resume()
  }

  onUpstreamData(upstream: UpstreamConn, chunk: Buffer): void {
    if (upstream !== this.upstream) { upstream.destroy(); return }
    if (this.phase === Phase.Upgraded) {
      if (!writeShared(this.socket, chunk)) upstream.socket.pause()
      return
    }
    this.responseBytes += chunk.length
    if (this.awaitingResponseHead) {
      const buf = this.upstreamBuf === undefined ? chunk : Buffer.concat([this.upstreamBuf, chunk])
      this.upstreamBuf = undefined
      this.onResponseHeadBytes(buf)
      return
    }
    this.forwardResponseBody(chunk, 0)
  }

  private onResponseHeadBytes(buf: Buffer): void {
    const end = buf.indexOf(CRLFCRLF)
    if (end === -1) {
      if (buf.length > MAX_RESPONSE_HEAD_BYTES) this.upstreamFailed('the Machine sent an oversized response head')
      else this.upstreamBuf = Buffer.from(buf) // the read buffer is reused
      return
    }
    let res: ResponseHead
    try {
      res = parseResponseHead(buf.toString('latin1', 0, end))
    } catch (err) {
      this.upstreamFailed(err instanceof Error ? err.message : 'malformed response')
      return
    }
    const head = this.head!
    const bodyStart = end + 4
    if (res.status >= 100 && res.status < 200 && res.status !== 101) {
      // Interim responses (100 Continue) pass through; the final one follows.
      writeShared(this.socket, buf.subarray(0, bodyStart))
      if (bodyStart < buf.length) this.onResponseHeadBytes(buf.subarray(bodyStart))
      return
    }
    this.awaitingResponseHead = false
    this.responseHead = res
    if (res.status === 101 && head.upgrade !== '') {
      this.phase = Phase.Upgraded
      this.socket.write(this.clientResponseHead(buf, res, true, bodyStart < buf.length ? buf.subarray(bodyStart) : undefined))
      if (this.pending !== undefined) { this.upstream!.socket.write(this.pending); this.pending = undefined }
      this.socket.resume()
      return
    }
    if (responseHasNoBody(head.method, res.status)) this.resFramer.reset('none')
    else if (res.chunked) this.resFramer.reset('chunked')
    else if (res.contentLength >= 0) this.resFramer.reset('length', res.contentLength)
    else this.resFramer.reset('close')
    if ((res.flyReplay !== '' || res.contentType.startsWith(REPLAY_CONTENT_TYPE)) && head.upgrade === '' && this.binding !== undefined) {
      this.beginReplay(res, buf, bodyStart)
      return
    }
    if (this.resFramer.mode === 'close' || res.close || head.upgrade !== '') this.closeAfter = true
    // The head and the part of the body that came with it go out in one write.
    let bodyEnd: number
    try {
      bodyEnd = this.resFramer.consume(buf, bodyStart, buf.length)
    } catch {
      this.upstreamFailed('the Machine sent a malformed response body')
      return
    }
    const complete = bodyEnd !== -1
    if (!complete) bodyEnd = buf.length
    const out = this.clientResponseHead(buf, res, false, bodyEnd > bodyStart ? buf.subarray(bodyStart, bodyEnd) : undefined)
    if (!this.socket.write(out)) this.upstream!.socket.pause()
    if (complete) this.finishExchange(bodyEnd < buf.length)
  }

  /** The response head for the client: the Machine's bytes minus hop-by-hop lines, plus Via,
   * Server and Fly-Request-Id (reference §3.2) unless pristine, then `tail` (body bytes). */
  private clientResponseHead(source: Buffer, res: ResponseHead, upgrade: boolean, tail: Buffer | undefined): Buffer {
    const http = this.binding!.port.http
    let added = ''
    if (!http.pristine) {
      added += `Via: ${res.via ? `${res.via}, ` : ''}1.1 hangar\r\n`
      if (!res.hasServer) added += 'Server: Hangar\r\n'
      added += `Fly-Request-Id: ${this.requestId}\r\n`
    }
    if (upgrade) added += 'Connection: upgrade\r\n'
    else if (this.closeAfter) added += 'Connection: close\r\n'
    else if (this.head!.minor === 0) added += 'Connection: keep-alive\r\n'
    if (res.minor === 1 && http.responseHeaders.length === 0) return composeHead(source, res.keep, added + '\r\n', tail)
    let out = `HTTP/1.1 ${res.status} ${res.reason || reasonPhrase(res.status)}\r\n${keptHeaderLines(res)}${added}`
    if (http.responseHeaders.length > 0) out = applyResponseHeaders(out, http.responseHeaders)
    const head = Buffer.from(out + '\r\n', 'latin1')
    return tail === undefined ? head : Buffer.concat([head, tail])
  }

  private forwardResponseBody(buf: Buffer, start: number): void {
    let end: number
    try {
      end = this.resFramer.consume(buf, start, buf.length)
    } catch {
      this.upstreamFailed('the Machine sent a malformed response body')
      return
    }
    if (this.discarding) {
      if (this.replayBody !== undefined && this.replay === undefined) {
        // JSON form: collect the body (bounded) to parse it.
        const part = Buffer.from(buf.subarray(start, end === -1 ? buf.length : end)) // the read buffer is reused
        if (this.replayJsonBody === NO_CHUNKS) this.replayJsonBody = [part]
        else this.replayJsonBody.push(part)
        this.replayJsonBytes += part.length
        if (this.replayJsonBytes > 64 * 1024) { this.upstreamFailed('the fly-replay JSON body is too large'); return }
      }
      if (end !== -1) this.finishReplayResponse()
      return
    }
    const upstream = this.upstream!
    const last = end === -1 ? buf.length : end
    if (last > start) {
      const ok = writeShared(this.socket, start === 0 && last === buf.length ? buf : buf.subarray(start, last))
      if (!ok) upstream.socket.pause()
    }
    if (end !== -1) {
      if (end < buf.length) upstream.reused = false // the Machine sent bytes past its response
      this.finishExchange(end < buf.length)
    }
  }

  private finishExchange(upstreamDirty = false): void {
    const entry = this.entry
    const upstream = this.upstream
    this.entry = undefined
    this.upstream = undefined
    if (upstream !== undefined) {
      upstream.owner = undefined
      upstream.socket.resume()
      const reusable = upstream.reusable && !upstreamDirty && this.reqFramer.done && this.responseHead !== undefined && !this.responseHead.close && this.resFramer.mode !== 'close' && !upstream.socket.destroyed
      if (reusable) { upstream.reused = true; this.pool.put(upstream.key, upstream, this.lastActivity) }
      else upstream.destroy()
    }
    if (entry !== undefined) this.ctx.dispatcher.release(entry, this.group!)
    if (this.phase === Phase.Closed) return
    if (this.closeAfter || !this.reqFramer.done) {
      this.phase = Phase.Closed
      this.socket.end()
      return
    }
    this.phase = Phase.Head
    this.head = undefined
    this.headStartedAt = this.lastActivity = Date.now()
    if (this.pending !== undefined) {
      this.socket.resume()
      this.parseHead()
    }
  }

  /** Called by the h2 backend exchange when its response is complete. */
  finishGenericExchange(close: boolean): void {
    if (close) this.closeAfter = true
    this.responseHead = undefined
    this.finishExchange()
  }

  /** The generic exchange writes raw bytes to the client through this. */
  writeClient(data: Buffer | string): boolean {
    return typeof data === 'string' ? this.socket.write(data, 'latin1') : this.socket.write(data)
  }

  get requestState(): { requestId: string; clientIp: string; listen: ListenInfo; binding: PortBinding; closeAfter: boolean; framerDone: boolean; bodySoFar: Buffer[] } {
    return { requestId: this.requestId, clientIp: this.clientIp, listen: this.listen, binding: this.binding!, closeAfter: this.closeAfter, framerDone: this.reqFramer.done, bodySoFar: this.replayChunks }
  }

  onUpstreamClose(upstream: UpstreamConn): void {
    if (upstream !== this.upstream) return
    if (this.phase === Phase.Upgraded) { this.finishUpgraded(); return }
    if (this.phase !== Phase.Forwarding) return
    if (this.awaitingResponseHead) {
      if (this.responseBytes === 0 && upstream.reused && !this.replayOverflow && this.reqFramer.done && this.entry !== undefined) {
        // A pooled keep-alive connection the Machine had closed: resend on a fresh one.
        const entry = this.entry
        this.upstream = undefined
        upstream.owner = undefined
        this.replayBody = this.replayChunks
        this.connectUpstream(entry)
        this.replayBody = undefined
        return
      }
      if (isAtCapacity(upstream.error)) {
        // The Machine's worker (another host) refused at the hard limit before the Machine saw
        // anything: pick again or queue, as if the pick had seen the load (spec/seeds/004_…).
        if (this.retryAtCapacity()) return
        this.refuseAtCapacity()
        return
      }
      if (this.retryElsewhere(upstream)) return
      const machine = this.entry?.machineId ?? ''
      this.upstreamFailed(!upstream.connected
        ? `could not connect to the Machine ${machine} (${upstream.error || 'closed'})`
        : this.responseBytes === 0 ? `the Machine ${machine} closed the connection without a response` : `the Machine ${machine} closed the connection mid-response head`)
      return
    }
    if (this.resFramer.mode === 'close') {
      this.closeAfter = true
      this.resFramer.reset('none')
      if (this.discarding) this.finishReplayResponse()
      else this.finishExchange(true)
      return
    }
    // Mid-body: the client sees a truncated response, as from the Machine itself.
    this.ctx.metrics.app(this.group?.app ?? '-').upstreamErrors++
    this.releaseEntry()
    this.phase = Phase.Closed
    this.socket.destroy()
  }

  /** reference §3.2 (PR03/PR04, PM11): a Machine that refused the connection, or closed it
   * without answering an idempotent request, is not the client's problem: the request goes to
   * another Machine (or, with no other, to the same one after a pause), a few times. Only when
   * the whole request is still in hand (body done and ≤ 1 MB) and no response byte came back. */
  private retryElsewhere(upstream: UpstreamConn): boolean {
    const failed = this.entry
    const head = this.head
    if (failed === undefined || head === undefined || this.group === undefined) return false
    if (this.responseBytes !== 0 || !this.reqFramer.done || this.replayOverflow || head.upgrade !== '') return false
    if (upstream.connected && !IDEMPOTENT_METHODS.has(head.method)) return false
    if (this.failedMachines.length >= MAX_ROUTING_RETRIES) return false
    this.ctx.metrics.app(failed.route.app).upstreamErrors++
    this.ctx.logger.warn('retrying on another Machine', { app: failed.route.app, machineId: failed.machineId, error: upstream.error || 'closed without a response' })
    this.failedMachines = this.failedMachines === NO_IDS ? [failed.machineId] : [...this.failedMachines, failed.machineId]
    this.lastUpstreamError = upstream.error || 'closed without a response'
    this.releaseEntry()
    const group = this.group
    // A refused connection takes the Machine out of rotation briefly, for every request; with no
    // other Machine, requests queue until it is back (or its route changes) instead of failing.
    if (!upstream.connected) this.ctx.table.markUnhealthy(failed, group, UNHEALTHY_AFTER_REFUSAL_MS)
    this.replayBody = this.replayChunks
    const base = this.routeAccept
    const failedIds = this.failedMachines
    const untried: Accept = (m) => !failedIds.includes(m.machineId) && (base === undefined || base(m))
    this.route(group, group.routable.some(untried) ? untried : base)
    this.routeAccept = base
    return true
  }

  /** After a worker refused the Machine at its hard limit: route the request again (the edge now
   * sees the Machine full, so another one or the queue). Only while the whole request is in hand. */
  retryAtCapacity(): boolean {
    const head = this.head
    if (this.entry === undefined || head === undefined || this.group === undefined) return false
    if (this.responseBytes !== 0 || !this.reqFramer.done || this.replayOverflow) return false
    if (++this.capacityRetries > MAX_CAPACITY_RETRIES) return false
    this.releaseEntry()
    this.replayBody = this.replayChunks
    const accept = this.routeAccept
    this.route(this.group, accept)
    return true
  }

  /** A refusal at the hard limit that cannot be retried: 503, as when the queue gives up. */
  refuseAtCapacity(): void {
    const app = this.group?.app ?? '-'
    const machine = this.entry?.machineId ?? ''
    this.releaseEntry()
    this.ctx.metrics.refuse(app, 'at_capacity')
    this.respondError(503, `the Machine ${machine} is at its hard limit and the request could not be sent elsewhere`, true)
  }

  private finishUpgraded(): void {
    this.releaseEntry()
    this.phase = Phase.Closed
    this.socket.end()
  }

  private releaseEntry(): void {
    const entry = this.entry
    this.entry = undefined
    if (entry !== undefined) this.ctx.dispatcher.release(entry, this.group!)
    if (this.upstream !== undefined) {
      this.upstream.owner = undefined
      this.upstream.destroy()
      this.upstream = undefined
    }
  }

  private upstreamFailed(message: string): void {
    this.ctx.metrics.app(this.group?.app ?? '-').upstreamErrors++
    this.ctx.logger.warn('upstream error', { app: this.group?.app, machineId: this.entry?.machineId, message })
    const headSent = !this.awaitingResponseHead && !this.discarding
    this.releaseEntry()
    if (headSent) { this.phase = Phase.Closed; this.socket.destroy(); return }
    this.respondError(502, message, true)
  }

  private abortExchange(): void {
    this.releaseEntry()
  }

  // fly-replay (reference §3.1)

  private replayJsonBody: Buffer[] = NO_CHUNKS
  private replayJsonBytes = 0

  private beginReplay(res: ResponseHead, buf: Buffer, bodyStart: number): void {
    this.discarding = true
    this.replayJsonBody = NO_CHUNKS
    this.replayJsonBytes = 0
    let instruction: ReplayInstruction | undefined
    if (res.flyReplay !== '') {
      try { instruction = parseReplayHeader(res.flyReplay) } catch (err) {
        this.upstreamFailed(err instanceof Error ? err.message : 'bad fly-replay header')
        this.discarding = false
        return
      }
    }
    this.replay = instruction
    this.replayBody = instruction === undefined ? [] : undefined // marks "collect JSON body"
    if (this.resFramer.done) { this.finishReplayResponse(); return }
    this.forwardResponseBody(buf, bodyStart)
  }

  private finishReplayResponse(): void {
    const from = this.entry!
    let instruction = this.replay
    if (instruction === undefined) {
      const raw = Buffer.concat(this.replayJsonBody)
      try { instruction = parseReplayJson((this.responseHead?.chunked ? dechunk(raw) : raw).toString('utf8')) } catch (err) {
        this.upstreamFailed(err instanceof Error ? err.message : 'bad fly-replay JSON')
        this.discarding = false
        return
      }
    }
    this.discarding = false
    this.replayBody = undefined
    // The Machine's answer is done: give back its connection and its load.
    const upstream = this.upstream
    this.upstream = undefined
    this.entry = undefined
    if (upstream !== undefined) {
      upstream.owner = undefined
      if (upstream.reusable && this.resFramer.mode !== 'close' && !this.responseHead!.close) this.pool.put(upstream.key, upstream, Date.now())
      else upstream.destroy()
    }
    this.ctx.dispatcher.release(from, this.group!)
    this.ctx.metrics.app(from.route.app).replays++
    if (++this.replays > MAX_REPLAYS) {
      this.ctx.metrics.refuse(from.route.app, 'replay_failed')
      this.respondError(502, `fly-replay: more than ${MAX_REPLAYS} replays for one request`, true)
      return
    }
    if (!this.reqFramer.done) {
      this.ctx.metrics.refuse(from.route.app, 'replay_failed')
      this.respondError(502, 'fly-replay: the Machine answered before the request body was complete, so it cannot be replayed', true)
      return
    }
    if (this.replayOverflow) {
      this.ctx.metrics.refuse(from.route.app, 'replay_too_large')
      this.respondError(413, `fly-replay: the request body exceeds ${MAX_REPLAY_BODY_BYTES} bytes and cannot be replayed`, false)
      return
    }
    this.replay = instruction
    this.replayFrom = from
    this.replaySourceGroup = this.group
    this.replayFallbackTried = false
    this.replayStartedAt = Date.now()
    let group = this.group!
    if (instruction.app !== '' && instruction.app !== from.route.app) {
      const target = this.ctx.table.apps.get(instruction.app)
      const org = this.ctx.table.apps.get(from.route.app)?.org
      // reference §3.1: cross-app replay stays within the org.
      const targetGroup = target !== undefined && target.org === org ? pickHttpGroup(target.groups, this.listen.port) : undefined
      if (targetGroup === undefined) {
        this.ctx.metrics.refuse(from.route.app, 'replay_failed')
        if (instruction.fallback !== '') { this.fallBackToReplaySource('no_candidate'); return }
        this.respondError(502, `fly-replay: app ${instruction.app} is not a replay target (no such app in this organization with an http service)`, false)
        return
      }
      group = targetGroup
    }
    this.extraRequestHeaders = `fly-replay-src: ${formatReplaySrc(from.machineId, from.route.region, instruction.state)}\r\n`
    this.replayBody = this.replayChunks
    const accept = replayAccept(group, instruction, from)
    const preferUnavailable = instruction.preferInstance !== '' && !group.routable.some((m) => m.machineId === instruction!.preferInstance && loadBucket(m) !== LoadBucket.AtHard)
    if (preferUnavailable) this.extraRequestHeaders += `fly-preferred-instance-unavailable: ${instruction.preferInstance}\r\n`
    this.routeReplay(group, accept, instruction.timeoutMs)
  }

  private routeReplay(group: ServiceGroup, accept: Accept | undefined, timeoutMs: number): void {
    if (timeoutMs <= 0) { this.route(group, accept); return }
    // A replay with a timeout falls back (or fails) when no target frees up in time.
    const result = this.ctx.dispatcher.acquire(group, accept)
    if (!(result instanceof Promise)) { this.group = group; this.connectUpstream(result); return }
    this.group = group
    this.phase = Phase.Routing
    let settled = false
    const timer = setTimeout(() => {
      if (settled) return
      settled = true
      this.ctx.metrics.refuse(group.app, 'replay_failed')
      if (this.replay?.fallback) this.fallBackToReplaySource('timeout')
      else this.respondError(504, `fly-replay: no target within ${timeoutMs} ms`, false)
    }, timeoutMs)
    result.then(
      (entry) => {
        if (settled || this.phase === Phase.Closed) { this.ctx.dispatcher.release(entry, group); return }
        settled = true
        clearTimeout(timer)
        this.connectUpstream(entry)
      },
      (err: unknown) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        this.refused(err)
      },
    )
  }

  // Responses the proxy writes itself.

  private respondError(status: number, message: string, close: boolean): void {
    const body = `${message}\n`
    this.respondRaw(status, `Content-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n`, body, close)
  }

  private respondRaw(status: number, headers: string, body: string, close: boolean): void {
    if (this.phase === Phase.Closed || this.socket.destroyed) return
    if (close) this.closeAfter = true
    let out = `HTTP/1.1 ${status} ${reasonPhrase(status)}\r\n${headers}`
    if (this.requestId !== '' && !(this.binding?.port.http.pristine ?? false)) out += `Server: Hangar\r\nFly-Request-Id: ${this.requestId}\r\n`
    if (this.closeAfter) out += 'Connection: close\r\n'
    this.socket.write(out + '\r\n' + body)
    this.releaseEntry()
    if (this.closeAfter || !this.reqFramer.done) {
      this.phase = Phase.Closed
      this.socket.end()
      // A client that never reads its error must not hold the socket.
      setTimeout(() => this.socket.destroy(), 5000).unref()
      return
    }
    this.phase = Phase.Head
    this.head = undefined
    this.headStartedAt = this.lastActivity = Date.now()
    if (this.pending !== undefined) { this.socket.resume(); this.parseHead() }
  }

  onClientClose(): void {
    const wasOpen = this.phase !== Phase.Closed
    this.phase = Phase.Closed
    this.ctx.connections.delete(this)
    if (wasOpen || this.entry !== undefined) this.releaseEntry()
    else if (this.upstream !== undefined) this.releaseEntry()
  }
}

/** The one read buffer every upstream connection reads into (reads run one at a time). */
let sharedBuffer = Buffer.allocUnsafe(64 * 1024)
function sharedReadBuffer(): Buffer { return sharedBuffer }

/** Writes bytes that may live in the shared read buffer. If the socket could not take them at
 * once, the queued write still points into that buffer: later reads get a fresh one. */
function writeShared(socket: net.Socket, data: Buffer): boolean {
  const ok = socket.write(data)
  if (socket.writableLength > 0) sharedBuffer = Buffer.allocUnsafe(64 * 1024)
  return ok
}

const IDEMPOTENT_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE'])
/** How many times one request may be re-routed after workers refused it at a hard limit (each
 * refusal marks the Machine full until its worker reports otherwise, so this rarely runs out). */
const MAX_CAPACITY_RETRIES = 16
/** How many Machines one request may fail on before the client gets the 502. */
const MAX_ROUTING_RETRIES = 3
/** How long a Machine that refused a connection stays out of rotation. */
const UNHEALTHY_AFTER_REFUSAL_MS = 1000
const NO_IDS: string[] = Object.freeze([]) as unknown as string[]

const CONNECTION = Symbol('hangar.http1Connection')
interface ClientSocket extends net.Socket { [CONNECTION]?: Http1Connection }
/** Shared (frozen, never pushed to) until a request has a body to remember. */
const NO_CHUNKS: Buffer[] = Object.freeze([]) as unknown as Buffer[]
function onClientSocketData(this: ClientSocket, chunk: Buffer): void { this[CONNECTION]?.onClientData(chunk) }
function onClientSocketDrain(this: ClientSocket): void { this[CONNECTION]?.onClientDrain() }
function onClientSocketClose(this: ClientSocket): void { this[CONNECTION]?.onClientClose() }
export function ignoreError(): void { /* 'close' follows and carries the outcome */ }

function normaliseIp(address: string): string {
  return address.startsWith('::ffff:') ? address.slice(7) : address
}

/** reference §3.1: fly-force-instance-id / fly-force-region never fall back; the prefer forms
 * fall back to normal balancing (and the prefer-instance miss is reported to the Machine). */
export function clientAccept(group: ServiceGroup, head: { forceInstance: string; forceRegion: string; preferInstance: string; preferRegion: string }, noteExtraHeader: (line: string) => void): Accept | undefined {
  if (head.forceInstance !== '') {
    const id = head.forceInstance
    return (m) => m.machineId === id
  }
  if (head.forceRegion !== '') {
    const matchers = regionMatchers(head.forceRegion.split(',').map((r) => r.trim().toLowerCase()).filter(Boolean))
    return (m) => matchers.some((match) => match(m.route.region))
  }
  if (head.preferInstance !== '') {
    const id = head.preferInstance
    const available = group.routable.some((m) => m.machineId === id && loadBucket(m) !== LoadBucket.AtHard)
    if (available) return (m) => m.machineId === id
    noteExtraHeader(`fly-preferred-instance-unavailable: ${id}\r\n`)
    return undefined
  }
  if (head.preferRegion !== '') {
    const matchers = regionMatchers(head.preferRegion.split(',').map((r) => r.trim().toLowerCase()).filter(Boolean))
    for (const match of matchers) {
      if (group.routable.some((m) => match(m.route.region) && loadBucket(m) !== LoadBucket.AtHard)) return (m) => match(m.route.region)
    }
    return undefined
  }
  return undefined
}

/** The replay target filter: instance, regions in preference order, elsewhere. */
export function replayAccept(group: ServiceGroup, instruction: ReplayInstruction, from: MachineEntry): Accept | undefined {
  const notFrom = instruction.elsewhere ? (m: MachineEntry) => m.machineId !== from.machineId : () => true
  if (instruction.instance !== '') { const id = instruction.instance; return (m) => m.machineId === id }
  if (instruction.preferInstance !== '') {
    const id = instruction.preferInstance
    if (group.routable.some((m) => m.machineId === id && loadBucket(m) !== LoadBucket.AtHard)) return (m) => m.machineId === id
  }
  if (instruction.regions.length > 0) {
    const matchers = regionMatchers(instruction.regions)
    for (const match of matchers) {
      if (group.routable.some((m) => match(m.route.region) && notFrom(m) && loadBucket(m) !== LoadBucket.AtHard)) return (m) => match(m.route.region) && notFrom(m)
    }
    return (m) => matchers.some((match) => match(m.route.region)) && notFrom(m)
  }
  return instruction.elsewhere ? notFrom : undefined
}

export function pickHttpGroup(groups: Map<string, ServiceGroup>, port: number): ServiceGroup | undefined {
  let fallback: ServiceGroup | undefined
  for (const group of groups.values()) {
    for (const p of group.spec.ports) {
      if (!p.handlers.includes('http')) continue
      if (port >= p.startPort && port <= p.endPort) return group
      fallback ??= group
    }
  }
  return fallback
}

/** http_options.response.headers: set (replacing) or remove headers in a response head. */
function applyResponseHeaders(head: string, changes: Array<{ name: string; value: string | false }>): string {
  const names = new Set(changes.map((c) => c.name.toLowerCase()))
  const lines = head.split('\r\n')
  let out = lines[0]! + '\r\n'
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!
    if (!line) continue
    if (names.has(line.slice(0, line.indexOf(':')).toLowerCase())) continue
    out += line + '\r\n'
  }
  for (const change of changes) if (change.value !== false) out += `${change.name}: ${change.value}\r\n`
  return out
}
