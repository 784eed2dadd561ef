import { createSocket, type Socket as UdpSocket } from 'node:dgram'
import { createServer, isIP, type Server, type Socket } from 'node:net'
import { silentLogger, type Logger } from '../core/index.js'
import { DNS_CLASS_IN, DNS_TYPE, RCODE, encodeErrorResponse, encodeResponse, parseQuery, responseLimit, type DnsQuery, type Rcode } from './dns-wire.js'
import { isInternalName, parseInternalName } from './dns-names.js'
import { DnsForwarder, type DnsUpstream } from './dns-forwarder.js'
import type { DnsIndex } from './dns-index.js'

// The `.internal` DNS server (DESIGN "Network"; reference §3.3): UDP and TCP (RFC 7766: TCP for
// answers that do not fit a datagram) on the host's resolver addresses. `.internal` names are
// answered from the DnsIndex within the asker's org; other names go to the host's resolvers.
// Nothing a client sends can stop it: garbage is dropped, malformed queries get FORMERR, and an
// unexpected failure answering one query is logged and answered SERVFAIL.

export interface DnsServerOptions {
  index: DnsIndex
  /** False until the catalog has loaded: `.internal` questions get SERVFAIL (try again), not a
   * wrong NXDOMAIN. */
  isReady?: () => boolean
  /** Addresses to serve on (UDP, and TCP unless `tcp: false`). Port 0 picks one (tests). */
  listen: DnsUpstream[]
  tcp?: boolean
  /** This host: IPv4 sources are Machines on this host (dns-index.ts `scopeFor`), and "nearest"
   * ranks from here for the host's own queries. */
  hostId?: string
  region?: string
  /** Where other names go; none: REFUSED. */
  upstreams?: DnsUpstream[]
  forwardTimeoutMs?: number
  /** TTL of `.internal` answers and of negative answers (SOA minimum). Default 5 s. */
  ttl?: number
  /** Queries from the host itself (loopback, its resolver addresses) see every org (default true). */
  hostSeesAll?: boolean
  /** Keep trying addresses that cannot be bound yet, every this many ms (the host bridge and its
   * addresses appear when the agent starts; another host may hold fdaa::3 for a while).
   * Without it, start fails when an address cannot be bound. */
  retryBindMs?: number
  logger?: Logger
}

export interface DnsServerStats {
  queries: number
  internal: number
  forwarded: number
  refused: number
  malformed: number
  dropped: number
  failures: number
}

export interface DnsServer {
  /** `host:port` of every address served now (UDP), in the order given. */
  readonly listening: Array<DnsUpstream & { tcp: boolean }>
  /** Resolves when every address is served (or rejects on the first that cannot be, without
   * `retryBindMs`). */
  readonly bound: Promise<void>
  stats(): DnsServerStats
  close(): Promise<void>
}

const MAX_TCP_CONNECTIONS = 256
const TCP_IDLE_MS = 10_000

interface Listener {
  address: DnsUpstream
  udp?: UdpSocket
  tcp?: Server
  retry?: NodeJS.Timeout
  lastError?: string
}

export async function startDnsServer(options: DnsServerOptions): Promise<DnsServer> {
  const logger = options.logger ?? silentLogger
  const ttl = options.ttl ?? 5
  const withTcp = options.tcp ?? true
  const forwarder = new DnsForwarder({ upstreams: options.upstreams ?? [], timeoutMs: options.forwardTimeoutMs, logger })
  const stats: DnsServerStats = { queries: 0, internal: 0, forwarded: 0, refused: 0, malformed: 0, dropped: 0, failures: 0 }
  const connections = new Set<Socket>()
  let closed = false

  const plain = (query: DnsQuery, rcode: Rcode, transport: 'udp' | 'tcp') =>
    encodeResponse(query, { rcode, authoritative: false, recursionAvailable: forwarder.enabled, answers: [], authority: [] }, responseLimit(query, transport))

  /** One packet in, at most one packet out. */
  const handle = async (packet: Buffer, source: string, transport: 'udp' | 'tcp'): Promise<Buffer | undefined> => {
    stats.queries++
    const parsed = parseQuery(packet)
    if (parsed.kind === 'drop') { stats.dropped++; return undefined }
    if (parsed.kind === 'error') { stats.malformed++; return encodeErrorResponse(parsed.id, parsed.rd, parsed.rcode, parsed.opcode) }
    const query = parsed.query
    try {
      const scope = options.index.scopeFor(source, { hostId: options.hostId, hostSeesAll: options.hostSeesAll })
      // Not a Machine of this host, nor the host: no answers and no open resolver.
      if (!scope) { stats.refused++; return plain(query, RCODE.REFUSED, transport) }
      if (isInternalName(query.labels)) {
        stats.internal++
        if (query.qclass !== DNS_CLASS_IN && query.qclass !== DNS_TYPE.ANY) return plain(query, RCODE.REFUSED, transport)
        if (options.isReady && !options.isReady()) return plain(query, RCODE.SERVFAIL, transport)
        const answer = options.index.answer(scope, parseInternalName(query.labels), query.qtype, { ttl, hostId: options.hostId, region: options.region, random: Math.random })
        return encodeResponse(query, { ...answer, recursionAvailable: forwarder.enabled }, responseLimit(query, transport))
      }
      if (!forwarder.enabled) { stats.refused++; return plain(query, RCODE.REFUSED, transport) }
      stats.forwarded++
      return (await forwarder.forward(packet, transport)) ?? plain(query, RCODE.SERVFAIL, transport)
    } catch (err) {
      stats.failures++
      logger.error('dns query failed', { err, name: query.name, qtype: query.qtype })
      return plain(query, RCODE.SERVFAIL, transport)
    }
  }

  const serveTcp = (socket: Socket) => {
    if (connections.size >= MAX_TCP_CONNECTIONS || closed) { socket.destroy(); return }
    connections.add(socket)
    socket.setTimeout(TCP_IDLE_MS, () => socket.destroy())
    socket.on('close', () => connections.delete(socket))
    socket.on('error', () => socket.destroy())
    const source = socket.remoteAddress ?? ''
    let buffered = Buffer.alloc(0)
    let chain = Promise.resolve()
    socket.on('data', (chunk) => {
      buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk
      // RFC 1035 §4.2.2: each message has a two-byte length prefix. Queries are answered in order.
      while (buffered.length >= 2) {
        const length = buffered.readUInt16BE(0)
        if (buffered.length < 2 + length) break
        const packet = buffered.subarray(2, 2 + length)
        buffered = buffered.subarray(2 + length)
        chain = chain.then(async () => {
          const answer = await handle(packet, source, 'tcp')
          if (!answer) { socket.destroy(); return undefined }
          if (socket.destroyed) return undefined
          const frame = Buffer.alloc(2 + answer.length)
          frame.writeUInt16BE(answer.length, 0)
          answer.copy(frame, 2)
          socket.write(frame)
          return undefined
        }).catch(() => { socket.destroy() })
      }
      if (buffered.length > 2 + 65_535) socket.destroy()
    })
  }

  const bindUdp = (address: DnsUpstream): Promise<UdpSocket> => new Promise((resolve, reject) => {
    const socket = createSocket({ type: isIP(address.host) === 6 ? 'udp6' : 'udp4', ipv6Only: isIP(address.host) === 6 })
    const onError = (err: Error) => { try { socket.close() } catch { /* never bound */ } reject(err) }
    socket.once('error', onError)
    socket.bind(address.port, address.host, () => {
      socket.off('error', onError)
      socket.on('error', (err) => logger.warn('dns socket error', { err, address: address.host }))
      socket.on('message', (message, rinfo) => {
        void handle(message, rinfo.address, 'udp').then((answer) => {
          if (answer && !closed) socket.send(answer, rinfo.port, rinfo.address, () => undefined)
        })
      })
      resolve(socket)
    })
  })

  const bindTcp = (address: DnsUpstream): Promise<Server> => new Promise((resolve, reject) => {
    const server = createServer(serveTcp)
    server.once('error', reject)
    server.listen({ port: address.port, host: address.host, ipv6Only: isIP(address.host) === 6 }, () => {
      server.off('error', reject)
      server.on('error', (err) => logger.warn('dns tcp server error', { err, address: address.host }))
      resolve(server)
    })
  })

  const listeners: Listener[] = options.listen.map((address) => ({ address: { ...address } }))

  /** Binds one address: UDP first (its port, when 0, is taken by TCP too). A port the system
   * chose for UDP may be taken for TCP by someone else: then another is tried. */
  const bind = async (listener: Listener, attemptsLeft = 10): Promise<void> => {
    const udp = await bindUdp(listener.address)
    const port = udp.address().port
    try {
      const tcp = withTcp ? await bindTcp({ host: listener.address.host, port }).catch((err: NodeJS.ErrnoException) => {
        if (listener.address.port === 0 && err.code === 'EADDRINUSE' && attemptsLeft > 0) return null
        throw err
      }) : undefined
      if (tcp === null) { udp.close(); return bind(listener, attemptsLeft - 1) }
      if (closed) { udp.close(); tcp?.close(); return }
      listener.udp = udp
      listener.tcp = tcp
      listener.address.port = port
      logger.info('dns listening', { address: listener.address.host, port, tcp: withTcp })
    } catch (err) {
      udp.close()
      throw err
    }
  }

  const bindWithRetry = (listener: Listener): Promise<void> => new Promise((resolve, reject) => {
    const attempt = () => {
      listener.retry = undefined
      if (closed) { resolve(); return }
      bind(listener).then(resolve, (err: NodeJS.ErrnoException) => {
        if (options.retryBindMs === undefined || closed) { reject(err); return }
        // The address is not there yet (EADDRNOTAVAIL) or someone else serves it (EADDRINUSE).
        if (listener.lastError !== err.code) logger.warn('dns address not available yet; retrying', { address: listener.address.host, port: listener.address.port, code: err.code })
        listener.lastError = err.code
        listener.retry = setTimeout(attempt, options.retryBindMs)
      })
    }
    attempt()
  })

  const closeAll = async () => {
    if (closed) return
    closed = true
    forwarder.close()
    for (const listener of listeners) {
      if (listener.retry) clearTimeout(listener.retry)
      try { listener.udp?.close() } catch { /* closed */ }
    }
    for (const socket of connections) socket.destroy()
    await Promise.all(listeners.map((l) => (l.tcp ? new Promise<void>((resolve) => l.tcp!.close(() => resolve())) : undefined)))
  }

  const bound = Promise.all(listeners.map(bindWithRetry)).then(() => undefined)
  if (options.retryBindMs === undefined) {
    try { await bound } catch (err) { await closeAll(); throw err }
  } else {
    bound.catch(() => undefined)
  }

  return {
    get listening() {
      return listeners.filter((l) => l.udp).map((l) => ({ host: l.address.host, port: l.address.port, tcp: l.tcp !== undefined }))
    },
    bound,
    stats: () => ({ ...stats }),
    close: closeAll,
  }
}
