import http2 from 'node:http2'
import tls from 'node:tls'
import { Duplex } from 'node:stream'
import type { Logger } from '../core/index.js'
import { hostIdOfCertificate, type BackhaulIdentity } from './backhaul-identity.js'
import {
  BACKHAUL_ERROR, BACKHAUL_HEADER, BackhaulError, LOAD_REPORT_PATH, machineServiceKey,
} from './backhaul-protocol.js'
import type { ExchangeRequest, ExchangeResponse } from './http-exchange.js'
import { decodeLoadReport, type LoadedMachine, type RemoteLoads } from './load-reports.js'
import type { PeerStatus, ProxyMetrics } from './metrics.js'
import { joinHostPort, splitHostPort, type BackhaulPeer } from './peers.js'
import { RttEstimator, rttChanged } from './rtt.js'
import { CONNECT_TIMEOUT_MS, type ConnectOptions, type UpstreamSocket, type UpstreamTarget } from './transport.js'

// The edge side of the backhaul (backhaul-protocol.ts): one mutual-TLS HTTP/2 session to every
// peer proxy, opened as soon as the peer is known and kept (reconnecting with backoff), so that
// RTT is measured continuously (PING) and load reports stream in before any traffic needs them.
// Tunnels and exchanges are streams on that session: many at once, no handshake per request.

/** Per-stream and per-session flow-control windows: a cross-region link must not be limited to
 * 64 KiB per round trip. */
const STREAM_WINDOW_BYTES = 1 << 20
const SESSION_WINDOW_BYTES = 32 << 20
const MAX_SESSION_MEMORY_MB = 256
const RECONNECT_MIN_MS = 100
const RECONNECT_MAX_MS = 5000
/** A ping not answered in this long means the session is dead. */
const PING_TIMEOUT_MS = 10_000
/** First pings come quickly so a new peer is ranked within a second. */
const EARLY_PINGS = 5
const EARLY_PING_INTERVAL_MS = 100
const REPORT_STREAM_RETRY_MS = 250
/** How long a tunnel ended with END_STREAM may take to close before it is reset. */
const FINISH_TIMEOUT_MS = 5000

export interface BackhaulClientOptions<M extends LoadedMachine> {
  identity: BackhaulIdentity
  logger: Logger
  metrics: ProxyMetrics
  /** The edge's view of remote load: reports, piggybacked loads and refusals go here. */
  loads: RemoteLoads<M>
  /** The published RTT of some peer changed (the proxy re-ranks Machines). */
  onRttChange: () => void
  /** How often each peer is pinged once its first samples are in (default 1 s). */
  pingIntervalMs?: number
}

interface PeerLink {
  peer: BackhaulPeer
  session: http2.ClientHttp2Session | undefined
  up: boolean
  rtt: RttEstimator
  /** The RTT the balancer uses (changes only beyond jitter; rtt.ts rttChanged). */
  publishedRtt: number | undefined
  pingsSent: number
  pingTimer: NodeJS.Timeout | undefined
  retryTimer: NodeJS.Timeout | undefined
  reportTimer: NodeJS.Timeout | undefined
  /** Reset budget (takeResetToken): tokens and when they were last refilled. */
  resetTokens: number
  resetRefilledAt: number
  backoffMs: number
  lastError: string
  removed: boolean
}

export class BackhaulClient<M extends LoadedMachine> {
  private readonly links = new Map<string, PeerLink>()
  private readonly options: BackhaulClientOptions<M>
  private readonly pingIntervalMs: number
  private closed = false

  constructor(options: BackhaulClientOptions<M>) {
    this.options = options
    this.pingIntervalMs = options.pingIntervalMs ?? 1000
  }

  /** The peers to keep sessions with (this host is left out). */
  setPeers(peers: BackhaulPeer[]): void {
    if (this.closed) return
    const wanted = new Map<string, BackhaulPeer>()
    for (const peer of peers) if (peer.hostId !== this.options.identity.hostId && peer.addr !== '') wanted.set(peer.hostId, peer)
    for (const [hostId, link] of this.links) {
      const next = wanted.get(hostId)
      if (next === undefined) { this.drop(link); this.links.delete(hostId); continue }
      if (next.addr !== link.peer.addr) {
        // Moved: a new session to the new address; RTT starts over.
        this.drop(link)
        this.links.delete(hostId)
      } else {
        link.peer = next
      }
    }
    for (const [hostId, peer] of wanted) {
      if (this.links.has(hostId)) continue
      const link: PeerLink = {
        peer, session: undefined, up: false, rtt: new RttEstimator(), publishedRtt: undefined, pingsSent: 0,
        pingTimer: undefined, retryTimer: undefined, reportTimer: undefined, resetTokens: RESET_BURST, resetRefilledAt: Date.now(), backoffMs: RECONNECT_MIN_MS, lastError: '', removed: false,
      }
      this.links.set(hostId, link)
      this.open(link)
    }
  }

  /** Whether the backhaul knows where `hostId`'s proxy listens (up or not). */
  hasPeer(hostId: string): boolean {
    return this.links.has(hostId)
  }

  /** Measured RTT to a peer host (ms), undefined until measured. */
  rttMs(hostId: string): number | undefined {
    return this.links.get(hostId)?.publishedRtt
  }

  peers(): PeerStatus[] {
    return [...this.links.values()].map((l) => ({ hostId: l.peer.hostId, region: l.peer.region, addr: l.peer.addr, up: l.up, rttMs: l.publishedRtt }))
  }

  private open(link: PeerLink): void {
    if (this.closed || link.removed) return
    let authority: string
    let address: { host: string; port: number }
    try {
      address = splitHostPort(link.peer.addr, `backhaul address of host ${link.peer.hostId}`)
      authority = `https://${joinHostPort(address.host, address.port)}`
    } catch (err) {
      this.note(link, `bad address: ${(err as Error).message}`)
      return
    }
    const { identity } = this.options
    const expected = link.peer.hostId
    const session = http2.connect(authority, {
      // Our own TLS socket: node:http2 forbids touching its socket later, and small frames
      // (PINGs, tunnel bytes) must not wait for Nagle.
      createConnection: () => {
        const socket = tls.connect({
          host: address.host,
          port: address.port,
          ALPNProtocols: ['h2'],
          ca: identity.caPem,
          cert: identity.certPem,
          key: identity.keyPem,
          minVersion: 'TLSv1.3',
          // The worker must prove it is the host we mean, not merely some host of the cluster.
          checkServerIdentity: (_host, cert) => {
            const named = hostIdOfCertificate(cert)
            return named === expected ? undefined : new Error(`the backhaul peer at ${link.peer.addr} is ${named ?? 'unnamed'}, not host ${expected}`)
          },
        })
        socket.setNoDelay(true)
        return socket
      },
      settings: { enablePush: false, initialWindowSize: STREAM_WINDOW_BYTES },
      peerMaxConcurrentStreams: 100_000,
      maxSessionMemory: MAX_SESSION_MEMORY_MB,
    })
    link.session = session
    session.on('connect', () => {
      if (link.session !== session) return
      link.up = true
      link.backoffMs = RECONNECT_MIN_MS
      if (link.lastError !== '') this.options.logger.info('backhaul link up', { peer: expected, addr: link.peer.addr })
      link.lastError = ''
      session.setLocalWindowSize(SESSION_WINDOW_BYTES)
      link.pingsSent = 0
      this.ping(link)
      this.openReports(link)
    })
    session.on('error', (err: NodeJS.ErrnoException) => this.note(link, err.code ? `${err.code}: ${err.message}` : err.message))
    // The worker is going away (restart) or ended the session: streams it accepted finish on the
    // old session, new ones go on a new one at once (make before break).
    session.on('goaway', () => {
      if (link.session !== session || this.closed || link.removed) return
      const wasUp = link.up
      link.session = undefined
      link.up = false
      clearTimeout(link.pingTimer)
      clearTimeout(link.reportTimer)
      if (wasUp) this.options.logger.info('backhaul session ended by the peer; opening a new one', { peer: expected })
      this.open(link)
    })
    session.on('close', () => {
      if (link.session !== session) return
      this.down(link)
      if (this.closed || link.removed) return
      link.retryTimer = setTimeout(() => { link.retryTimer = undefined; this.open(link) }, link.backoffMs)
      link.retryTimer.unref()
      link.backoffMs = Math.min(RECONNECT_MAX_MS, link.backoffMs * 2)
    })
  }

  private note(link: PeerLink, message: string): void {
    // One warning per kind of failure, not one per reconnect attempt.
    if (link.lastError === message) return
    link.lastError = message
    this.options.logger.warn('backhaul link to a peer failed', { peer: link.peer.hostId, addr: link.peer.addr, error: message })
  }

  private down(link: PeerLink): void {
    const wasUp = link.up
    link.up = false
    link.session = undefined
    clearTimeout(link.pingTimer)
    clearTimeout(link.reportTimer)
    link.pingTimer = undefined
    link.reportTimer = undefined
    if (wasUp) this.options.loads.clearWorker(link.peer.hostId)
  }

  private drop(link: PeerLink): void {
    link.removed = true
    clearTimeout(link.retryTimer)
    const session = link.session
    this.down(link)
    session?.destroy()
  }

  private ping(link: PeerLink): void {
    const session = link.session
    if (session === undefined || !link.up || this.closed) return
    const timeout = setTimeout(() => session.destroy(new Error(`no PING answer from ${link.peer.hostId} within ${PING_TIMEOUT_MS} ms`)), PING_TIMEOUT_MS)
    timeout.unref()
    const sent = session.ping((err, durationMs) => {
      clearTimeout(timeout)
      if (err || link.session !== session) return
      const estimate = link.rtt.add(durationMs)
      if (rttChanged(link.publishedRtt, estimate)) {
        link.publishedRtt = estimate
        this.options.onRttChange()
      }
    })
    if (!sent) clearTimeout(timeout)
    link.pingsSent++
    link.pingTimer = setTimeout(() => this.ping(link), link.pingsSent < EARLY_PINGS ? EARLY_PING_INTERVAL_MS : this.pingIntervalMs)
    link.pingTimer.unref()
  }

  /** The worker's load reports for this edge, on one long-lived stream. */
  private openReports(link: PeerLink): void {
    const session = link.session
    if (session === undefined || !link.up || this.closed) return
    const stream = session.request({ ':method': 'GET', ':path': LOAD_REPORT_PATH })
    stream.setEncoding('utf8')
    let buffered = ''
    stream.on('data', (text: string) => {
      buffered += text
      let newline: number
      while ((newline = buffered.indexOf('\n')) !== -1) {
        const line = buffered.slice(0, newline)
        buffered = buffered.slice(newline + 1)
        try {
          this.options.loads.applyReport(link.peer.hostId, decodeLoadReport(line))
          this.options.metrics.backhaul.reportsReceived++
        } catch (err) {
          this.options.logger.warn('ignoring a malformed load report', { peer: link.peer.hostId, error: err })
        }
      }
    })
    stream.on('error', () => { /* close follows */ })
    stream.on('close', () => {
      if (link.session !== session || !link.up || this.closed) return
      link.reportTimer = setTimeout(() => this.openReports(link), REPORT_STREAM_RETRY_MS)
      link.reportTimer.unref()
    })
    stream.end()
  }

  private sessionFor(hostId: string): { link: PeerLink; session: http2.ClientHttp2Session } | BackhaulError {
    if (this.closed) return new BackhaulError(BACKHAUL_ERROR.closing, 'the proxy is shutting down')
    const link = this.links.get(hostId)
    if (link === undefined) return new BackhaulError(BACKHAUL_ERROR.noPeer, `no backhaul address is known for host ${hostId}`)
    if (link.session === undefined || link.session.destroyed || link.session.closed) {
      return new BackhaulError(BACKHAUL_ERROR.noPeer, `the backhaul link to host ${hostId} is down${link.lastError ? ` (${link.lastError})` : ''}`)
    }
    return { link, session: link.session }
  }

  /** A tunnel to a Machine on another host. Bytes written before 'connect' go out at once (no
   * extra round trip); if the worker refuses, they were never delivered and the caller may
   * re-send them elsewhere. */
  connect(target: UpstreamTarget, options: ConnectOptions = {}): UpstreamSocket {
    const worker = target.machine.hostId
    const found = this.sessionFor(worker)
    if (found instanceof BackhaulError) return failedSocket(found)
    const key = machineServiceKey(target.machine.machineId, target.port)
    this.options.metrics.backhaul.streamsOut++
    const stream = found.session.request({ ':method': 'CONNECT', ':authority': `${target.machine.machineId}:${target.port}` }, { endStream: false })
    const socket = stream as unknown as UpstreamSocket & http2.ClientHttp2Stream
    // Frames go out as written (the session's socket has TCP_NODELAY); nothing to set per stream.
    socket.setNoDelay = returnThis
    // A tunnel the data path is done with ends with END_STREAM, not RST_STREAM: the worker then
    // ends the Machine connection and the stream closes on both sides. nghttp2's rapid-reset guard
    // (CVE-2023-44487; Node 20 cannot configure it) ends a session that receives more than ~1000
    // resets in a burst, which a busy edge finishing one stream per request would otherwise do.
    // Bytes still arriving after that (the Machine was mid-response) get a reset from the link's
    // reset budget, or are dropped until one is available.
    let finishing = false
    const reset = stream.destroy.bind(stream)
    const resetWithinBudget = () => {
      if (stream.destroyed || stream.closed) return
      if (takeResetToken(found.link)) { reset(); return }
      setTimeout(resetWithinBudget, 100).unref()
    }
    socket.destroy = function (this: typeof socket, error?: Error): typeof socket {
      if (finishing || stream.destroyed || stream.closed) return this
      if (error !== undefined) { reset(error); return this }
      finishing = true
      stream.end()
      let dropping = false
      stream.on('data', () => { if (!dropping) { dropping = true; resetWithinBudget() } })
      setTimeout(resetWithinBudget, FINISH_TIMEOUT_MS).unref()
      return this
    }
    if (options.onread !== undefined) {
      const onread = options.onread
      stream.on('data', (chunk: Buffer) => { onread.callback(chunk.length, chunk) })
    }
    const timer = setTimeout(() => stream.destroy(new BackhaulError('ETIMEDOUT', `the worker on host ${worker} did not answer within ${CONNECT_TIMEOUT_MS} ms`)), CONNECT_TIMEOUT_MS)
    stream.once('close', () => clearTimeout(timer))
    stream.once('response', (headers) => {
      clearTimeout(timer)
      const status = Number(headers[':status'])
      const load = Number(headers[BACKHAUL_HEADER.load])
      if (status === 200) {
        if (headers[BACKHAUL_HEADER.load] !== undefined) this.options.loads.applyPiggyback(worker, key, load)
        stream.emit('connect')
        return
      }
      // The worker ended its side with the refusal; ending ours closes the stream without a reset.
      const error = this.refusal(worker, key, status, headers, load)
      finishing = true
      stream.end()
      if (stream.listenerCount('error') > 0) stream.emit('error', error)
      setTimeout(() => reset(), FINISH_TIMEOUT_MS).unref()
    })
    return socket
  }

  /** A request/response exchange with a Machine on another host (HTTP/2 clients, h2_backend). */
  async exchange(target: UpstreamTarget, h2Backend: boolean, request: ExchangeRequest): Promise<ExchangeResponse> {
    const worker = target.machine.hostId
    const found = this.sessionFor(worker)
    if (found instanceof BackhaulError) throw found
    const key = machineServiceKey(target.machine.machineId, target.port)
    const headers: http2.OutgoingHttpHeaders = {}
    let authority = ''
    for (const [name, value] of Object.entries(request.headers)) {
      if (name === 'host' || name === ':authority') { authority = String(Array.isArray(value) ? value[0] : value); continue }
      if (name.startsWith(':') || name.startsWith('hangar-')) continue
      headers[name] = value
    }
    headers[':method'] = request.method
    headers[':path'] = request.path
    if (authority !== '') headers[':authority'] = authority
    headers[BACKHAUL_HEADER.machine] = `${target.machine.machineId}:${target.port}`
    headers[BACKHAUL_HEADER.h2Backend] = h2Backend ? '1' : '0'
    this.options.metrics.backhaul.streamsOut++
    const stream = found.session.request(headers, { endStream: request.body.length === 0 })
    for (const chunk of request.body) stream.write(chunk)
    if (request.body.length > 0) stream.end()
    return await new Promise<ExchangeResponse>((resolve, reject) => {
      // After the response, errors reach whoever reads the body; later rejects are no-ops.
      stream.on('error', (err) => reject(err))
      stream.once('response', (responseHeaders) => {
        const status = Number(responseHeaders[':status'])
        const load = Number(responseHeaders[BACKHAUL_HEADER.load])
        const refusal = responseHeaders[BACKHAUL_HEADER.refusal]
        const error = responseHeaders[BACKHAUL_HEADER.error]
        if (refusal !== undefined || error !== undefined) {
          const err = this.refusal(worker, key, status, responseHeaders, load)
          // The worker ended the stream; ending ours closes it without a reset (see connect()).
          stream.end()
          stream.resume()
          reject(err)
          return
        }
        if (responseHeaders[BACKHAUL_HEADER.load] !== undefined) this.options.loads.applyPiggyback(worker, key, load)
        const out: Record<string, string | string[]> = {}
        for (const [name, value] of Object.entries(responseHeaders)) {
          if (name.startsWith(':') || name.startsWith('hangar-') || value === undefined) continue
          out[name] = value as string | string[]
        }
        resolve({ status, headers: out, body: stream })
      })
    })
  }

  private refusal(worker: string, key: string, status: number, headers: http2.IncomingHttpHeaders, load: number): BackhaulError {
    const refusal = String(headers[BACKHAUL_HEADER.refusal] ?? '')
    const error = String(headers[BACKHAUL_HEADER.error] ?? '')
    if (refusal === 'at_capacity') {
      this.options.loads.refused(worker, key, load)
      return new BackhaulError(BACKHAUL_ERROR.atCapacity, `the Machine's worker on host ${worker} refused: at its hard limit`)
    }
    if (refusal === 'unknown_machine') return new BackhaulError(BACKHAUL_ERROR.unknownMachine, `the worker on host ${worker} does not run this Machine`)
    if (refusal === 'closing') return new BackhaulError(BACKHAUL_ERROR.closing, `the worker on host ${worker} is shutting down`)
    return new BackhaulError(error || `HTTP_${status}`, `the worker on host ${worker} could not reach the Machine (${error || `status ${status}`})`)
  }

  /** Ends every session; idempotent. */
  close(): void {
    if (this.closed) return
    this.closed = true
    for (const link of this.links.values()) this.drop(link)
    this.links.clear()
  }
}

function returnThis<T>(this: T): T { return this }

/** Stream resets an edge may send a worker: a burst of RESET_BURST, then RESET_RATE a second —
 * under nghttp2's default guard (1000, then 33 a second), which would end the whole session. */
const RESET_BURST = 500
const RESET_RATE = 30
function takeResetToken(link: { resetTokens: number; resetRefilledAt: number }): boolean {
  const now = Date.now()
  link.resetTokens = Math.min(RESET_BURST, link.resetTokens + ((now - link.resetRefilledAt) / 1000) * RESET_RATE)
  link.resetRefilledAt = now
  if (link.resetTokens < 1) return false
  link.resetTokens--
  return true
}

/** A socket that fails at once (no link to the Machine's host): 'error' then 'close', as a
 * refused TCP connect would. */
function failedSocket(error: BackhaulError): UpstreamSocket {
  const socket = new Duplex({ read() {}, write(_chunk, _encoding, callback) { callback() } }) as UpstreamSocket
  socket.setNoDelay = returnThis
  process.nextTick(() => socket.destroy(error))
  return socket
}
