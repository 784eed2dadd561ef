import http2 from 'node:http2'
import type net from 'node:net'
import { bindingForHost, type Http2Handoff, type ListenInfo, type ProxyContext } from './context.js'
import { RefusedError } from './dispatcher.js'
import { isAtCapacity } from './backhaul-protocol.js'
import { formatReplayFailed, formatReplaySrc, MAX_REPLAY_BODY_BYTES, MAX_REPLAYS, parseReplayHeader, parseReplayJson, REPLAY_CONTENT_TYPE, type ReplayInstruction } from './fly-replay.js'
import { clientAccept, pickHttpGroup, replayAccept } from './http1-proxy.js'
import { exchangeClients, flyRequestHeaders, type ExchangeResponse } from './http-exchange.js'
import type { MachineEntry, ServiceGroup } from './routing-table.js'

// HTTP/2 from clients (issue 3: ALPN h2 over TLS, and h2c with prior knowledge on plaintext
// ports). node:http2 terminates the framing; each stream is balanced like an HTTP/1.1 request
// and sent to the Machine over HTTP/1.1 (undici pool) or h2c when the service sets h2_backend.

const LISTEN = Symbol('hangar.listen')
const DROP_REQUEST_HEADERS = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'http2-settings', 'host',
  'fly-client-ip', 'fly-region', 'fly-forwarded-port', 'fly-request-id', 'x-forwarded-proto', 'x-forwarded-ssl', 'x-forwarded-for', 'x-forwarded-port',
  'fly-replay-src', 'fly-prefer-region', 'fly-force-region', 'fly-prefer-instance-id', 'fly-force-instance-id', 'fly-preferred-instance-unavailable',
])
const DROP_RESPONSE_HEADERS = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te'])
/** Re-routes of one request after workers refused it at a hard limit. */
const MAX_CAPACITY_RETRIES = 16
/** HTTP/2 request bodies are buffered (they may be replayed); larger ones are refused. */
const MAX_H2_BODY_BYTES = 64 * 1024 * 1024

export class Http2Frontend implements Http2Handoff {
  private readonly ctx: ProxyContext
  private readonly server: http2.Http2Server
  private readonly sessions = new Set<http2.ServerHttp2Session>()

  constructor(ctx: ProxyContext) {
    this.ctx = ctx
    this.server = http2.createServer({ maxHeaderListPairs: 256, maxSendHeaderBlockLength: 64 * 1024 })
    // An HTTP/2 connection with no activity for two minutes is closed (idle sessions, stalled bodies).
    this.server.setTimeout(120_000)
    this.server.on('session', (session) => {
      this.sessions.add(session)
      session.on('close', () => this.sessions.delete(session))
      session.on('error', () => {})
    })
    this.server.on('stream', (stream, headers) => {
      const listen = (stream.session?.socket as unknown as { [LISTEN]?: ListenInfo })?.[LISTEN] ?? { port: 0, tls: false }
      void this.onStream(stream, headers, listen).catch((err: unknown) => {
        ctx.logger.error('h2 stream failed', { error: err })
        if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR)
      })
    })
  }

  accept(socket: net.Socket, listen: ListenInfo, buffered?: Buffer): void {
    ;(socket as unknown as { [LISTEN]: ListenInfo })[LISTEN] = listen
    // node:http2 reads what is already buffered on the socket before taking over its handle.
    socket.pause()
    if (buffered !== undefined && buffered.length > 0) socket.unshift(buffered)
    this.server.emit('connection', socket)
  }

  close(): void {
    for (const session of this.sessions) session.destroy()
    this.sessions.clear()
  }

  private respondText(stream: http2.ServerHttp2Stream, status: number, message: string, extra: Record<string, string> = {}): void {
    if (stream.destroyed || stream.headersSent) return
    stream.respond({ ':status': status, 'content-type': 'text/plain; charset=utf-8', server: 'Hangar', ...extra })
    stream.end(`${message}\n`)
  }

  private async onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, listen: ListenInfo): Promise<void> {
    const ctx = this.ctx
    const authority = String(headers[':authority'] ?? headers.host ?? '')
    const binding = bindingForHost(ctx.table, listen.port, authority, true)
    if (binding === undefined) {
      ctx.metrics.refuse('-', 'no_app')
      this.respondText(stream, 404, `no app serves ${authority || 'this request'} on port ${listen.port}`)
      return
    }
    ctx.metrics.app(binding.app).requests++
    const method = String(headers[':method'] ?? 'GET')
    const path = String(headers[':path'] ?? '/')
    if (binding.port.forceHttps && !listen.tls) {
      stream.respond({ ':status': 301, location: `https://${authority.replace(/:\d+$/, '')}${path}` })
      stream.end()
      return
    }
    const requestId = ctx.requestId()
    const clientIp = (stream.session?.socket?.remoteAddress ?? '').replace(/^::ffff:/, '')
    const header = (name: string) => { const v = headers[name]; return Array.isArray(v) ? v.join(', ') : v ?? '' }
    const forwarded: Record<string, string | string[]> = {}
    for (const [name, value] of Object.entries(headers)) {
      if (name.startsWith(':') || DROP_REQUEST_HEADERS.has(name) || value === undefined) continue
      forwarded[name] = value as string | string[]
    }
    Object.assign(forwarded, flyRequestHeaders(ctx, listen, clientIp, requestId, header('x-forwarded-for'), header('x-forwarded-port')))
    forwarded.host = authority
    // The body, buffered: it may be replayed (reference §3.1).
    const body: Buffer[] = []
    let bodyBytes = 0
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      bodyBytes += chunk.length
      if (bodyBytes > MAX_H2_BODY_BYTES) { this.respondText(stream, 413, `request bodies over HTTP/2 are limited to ${MAX_H2_BODY_BYTES} bytes`); return }
      body.push(chunk)
    }
    let group: ServiceGroup = binding.group
    let accept = clientAccept(group, {
      forceInstance: header('fly-force-instance-id'), forceRegion: header('fly-force-region'),
      preferInstance: header('fly-prefer-instance-id'), preferRegion: header('fly-prefer-region'),
    }, (line) => { const [name, value] = line.trim().split(': '); forwarded[name!.toLowerCase()] = value! })
    // Set while re-delivering a fly-replay: where to fall back to, and how long to wait.
    let replayFallback: { from: MachineEntry; group: ServiceGroup; instruction: ReplayInstruction; startedAt: number } | undefined
    let capacityRetries = 0
    for (let replays = 0; ; replays++) {
      let entry: MachineEntry
      try {
        entry = await this.acquire(group, accept, replayFallback?.instruction.timeoutMs ?? 0)
      } catch (err) {
        if (err instanceof RefusedError) {
          ctx.metrics.refuse(group.app, err.reason)
          if (replayFallback !== undefined && replayFallback.instruction.fallback !== '') {
            // reference §3.1: fallback=force_self|prefer_self sends it back to the replaying Machine.
            const { from, instruction, startedAt } = replayFallback
            forwarded['fly-replay-failed'] = formatReplayFailed({ instance: instruction.instance, app: instruction.app || from.route.app, region: instruction.regions.join(','), source: from.machineId, reason: err.reason === 'queue_timeout' ? 'timeout' : 'no_candidate', elapsedMs: Date.now() - startedAt })
            group = replayFallback.group
            accept = (m) => m.machineId === from.machineId
            replayFallback = undefined
            replays--
            continue
          }
          this.respondText(stream, 503, err.message)
          return
        }
        throw err
      }
      if (stream.destroyed) { ctx.dispatcher.release(entry, group); return }
      let response: ExchangeResponse
      try {
        response = await exchangeClients(ctx).exchange(entry, binding.port.http.h2Backend, { method, path, headers: forwarded, body })
      } catch (err) {
        ctx.dispatcher.release(entry, group)
        if (isAtCapacity(err) && ++capacityRetries <= MAX_CAPACITY_RETRIES) {
          // The Machine's worker refused at its hard limit before the Machine saw anything: the
          // edge now sees it full, so the next pick goes elsewhere or queues.
          replays--
          continue
        }
        if (isAtCapacity(err)) { ctx.metrics.refuse(group.app, 'at_capacity'); this.respondText(stream, 503, `the Machine ${entry.machineId} is at its hard limit`); return }
        ctx.metrics.app(group.app).upstreamErrors++
        ctx.logger.warn('upstream error', { app: group.app, machineId: entry.machineId, error: err })
        this.respondText(stream, 502, `the Machine ${entry.machineId} did not answer`)
        return
      }
      const replayHeader = response.headers['fly-replay']
      const contentType = String(response.headers['content-type'] ?? '')
      if (replayHeader === undefined && !contentType.startsWith(REPLAY_CONTENT_TYPE)) {
        try {
          await this.sendResponse(stream, response, binding.port.http, requestId)
        } catch (err) {
          ctx.metrics.app(group.app).upstreamErrors++
          if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR)
          ctx.logger.warn('response from the Machine failed mid-stream', { app: group.app, machineId: entry.machineId, error: err })
        } finally {
          ctx.dispatcher.release(entry, group)
        }
        return
      }
      // fly-replay: drop this answer, re-deliver the request where it says.
      let instruction: ReplayInstruction
      try {
        const chunks: Buffer[] = []
        for await (const chunk of response.body) chunks.push(chunk)
        instruction = replayHeader !== undefined ? parseReplayHeader(String(replayHeader)) : parseReplayJson(Buffer.concat(chunks).toString('utf8'))
      } catch (err) {
        ctx.dispatcher.release(entry, group)
        this.respondText(stream, 502, err instanceof Error ? err.message : 'bad fly-replay')
        return
      } finally {
        // released below on success
      }
      ctx.dispatcher.release(entry, group)
      ctx.metrics.app(entry.route.app).replays++
      if (replays + 1 > MAX_REPLAYS) { ctx.metrics.refuse(group.app, 'replay_failed'); this.respondText(stream, 502, `fly-replay: more than ${MAX_REPLAYS} replays for one request`); return }
      if (bodyBytes > MAX_REPLAY_BODY_BYTES) { ctx.metrics.refuse(group.app, 'replay_too_large'); this.respondText(stream, 413, `fly-replay: the request body exceeds ${MAX_REPLAY_BODY_BYTES} bytes and cannot be replayed`); return }
      const sourceGroup = group
      if (instruction.app !== '' && instruction.app !== entry.route.app) {
        const target = ctx.table.apps.get(instruction.app)
        const targetGroup = target !== undefined && target.org === ctx.table.apps.get(entry.route.app)?.org ? pickHttpGroup(target.groups, listen.port) : undefined
        if (targetGroup === undefined) { ctx.metrics.refuse(group.app, 'replay_failed'); this.respondText(stream, 502, `fly-replay: app ${instruction.app} is not a replay target`); return }
        group = targetGroup
      }
      forwarded['fly-replay-src'] = formatReplaySrc(entry.machineId, entry.route.region, instruction.state)
      replayFallback = { from: entry, group: sourceGroup, instruction, startedAt: Date.now() }
      accept = replayAccept(group, instruction, entry)
    }
  }

  /** A Machine from the dispatcher, refused as a queue timeout after `timeoutMs` when given. */
  private async acquire(group: ServiceGroup, accept: ((m: MachineEntry) => boolean) | undefined, timeoutMs: number): Promise<MachineEntry> {
    const acquired = this.ctx.dispatcher.acquire(group, accept)
    if (!(acquired instanceof Promise)) return acquired
    if (timeoutMs <= 0) return await acquired
    let timer: NodeJS.Timeout | undefined
    let timedOut = false
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => { timedOut = true; reject(new RefusedError('queue_timeout', `fly-replay: no target within ${timeoutMs} ms`)) }, timeoutMs)
    })
    // A target that frees up after the timeout gives its capacity straight back.
    acquired.then((entry) => { if (timedOut) this.ctx.dispatcher.release(entry, group) }, () => {})
    try {
      return await Promise.race([acquired, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  private async sendResponse(stream: http2.ServerHttp2Stream, response: ExchangeResponse, http: { pristine: boolean; responseHeaders: Array<{ name: string; value: string | false }> }, requestId: string): Promise<void> {
    if (stream.destroyed) { for await (const _ of response.body) { /* drain */ } return }
    const out: http2.OutgoingHttpHeaders = { ':status': response.status }
    for (const [name, value] of Object.entries(response.headers)) if (!DROP_RESPONSE_HEADERS.has(name)) out[name] = value
    if (!http.pristine) {
      out.via = out.via ? `${String(out.via)}, 2 hangar` : '2 hangar'
      out.server ??= 'Hangar'
      out['fly-request-id'] = requestId
    }
    for (const change of http.responseHeaders) {
      if (change.value === false) delete out[change.name.toLowerCase()]
      else out[change.name.toLowerCase()] = change.value
    }
    stream.respond(out)
    for await (const chunk of response.body) {
      if (stream.destroyed) continue
      if (!stream.write(chunk)) await new Promise((resolve) => { stream.once('drain', resolve); stream.once('close', resolve) })
    }
    if (!stream.destroyed) stream.end()
  }
}
