import type net from 'node:net'
import tls from 'node:tls'
import type { CertificateStore } from './certificates.js'
import { bindingForHost, type ListenInfo, type ProxyContext } from './context.js'
import { RefusedError } from './dispatcher.js'
import { Http1Connection, ignoreError, type UpstreamConn } from './http1-proxy.js'
import type { AppCounters } from './metrics.js'
import { proxyHeaderV1, proxyHeaderV2 } from './proxy-protocol.js'
import type { MachineEntry, PortBinding } from './routing-table.js'
import type { UpstreamPool, UpstreamSocket } from './transport.js'
import { isAtCapacity } from './backhaul-protocol.js'

// What happens to a connection accepted on a public port, by the handlers its service names
// (reference §3.2): tls terminates TLS (certificate by SNI, ALPN h2/http1.1) and hands the
// plaintext on; pg_tls answers Postgres's SSLRequest first; http parses requests; proxy_proto
// writes a PROXY header; no handler pipes raw bytes. Raw and PROXY connections count as load
// for the whole connection whatever the concurrency type: there are no requests to count.

const PG_SSL_REQUEST = 80877103
const PG_GSSENC_REQUEST = 80877104
/** Client bytes kept for a re-send while a Machine's worker has not accepted yet. */
const MAX_EARLY_BYTES = 256 * 1024
/** Re-routes of one connection after workers refused it at a hard limit. */
const MAX_CAPACITY_RETRIES = 16
/** A TLS handshake or a Postgres preamble that does not finish in time is dropped. */
const HANDSHAKE_TIMEOUT_MS = 10_000

const COUNTERS = Symbol('hangar.counters')
interface CountedSocket extends net.Socket { [COUNTERS]?: AppCounters }
function onCountedSocketClose(this: CountedSocket): void {
  const counters = this[COUNTERS]
  if (counters !== undefined) counters.connectionsOpen--
}

export class ConnectionHandlers {
  private readonly ctx: ProxyContext
  private readonly pool: UpstreamPool<UpstreamConn>
  private readonly certificates: CertificateStore
  private readonly tlsServers = new Map<number, { signature: string; server: tls.Server }>()
  private readonly rawConnections = new Set<net.Socket>()

  constructor(ctx: ProxyContext, pool: UpstreamPool<UpstreamConn>, certificates: CertificateStore) {
    this.ctx = ctx
    this.pool = pool
    this.certificates = certificates
  }

  /** Entry point for every accepted socket on public port `port`. */
  accept(socket: net.Socket, port: number): void {
    const bindings = this.ctx.table.ports.get(port)
    if (bindings === undefined || bindings.length === 0 || this.ctx.closing) { socket.destroy(); return }
    socket.on('error', ignoreError)
    // Connections count per app where the port names one; shared ports count after SNI.
    if (bindings.length === 1) this.countConnection(socket, bindings[0]!.app)
    if (bindings.some((b) => b.port.handlers.includes('pg_tls'))) { this.postgresPreamble(socket, port); return }
    if (bindings.some((b) => b.port.handlers.includes('tls'))) { this.terminateTls(socket, port); return }
    if (bindings.some((b) => b.port.handlers.includes('http'))) { new Http1Connection(this.ctx, this.pool, socket, { port, tls: false }); return }
    this.forward(socket, bindings[0]!, { port, tls: false })
  }

  private countConnection(socket: net.Socket, app: string): void {
    const counters = this.ctx.metrics.app(app)
    counters.connections++
    counters.connectionsOpen++
    ;(socket as CountedSocket)[COUNTERS] = counters
    socket.once('close', onCountedSocketClose)
  }

  private afterTls(socket: tls.TLSSocket, port: number): void {
    const servername = typeof socket.servername === 'string' ? socket.servername : ''
    const binding = bindingForHost(this.ctx.table, port, servername, false)
    if (binding === undefined) { socket.destroy(); return }
    if ((this.ctx.table.ports.get(port)?.length ?? 0) > 1) this.countConnection(socket, binding.app) // SNI told the app apart
    const listen: ListenInfo = { port, tls: true }
    if (binding.port.handlers.includes('http')) {
      if (socket.alpnProtocol === 'h2') this.ctx.http2.accept(socket, listen)
      else new Http1Connection(this.ctx, this.pool, socket, listen)
      return
    }
    this.forward(socket, binding, listen)
  }

  /** The per-port TLS server (never listening itself: sockets are handed to it). */
  private async tlsServer(port: number): Promise<tls.Server | undefined> {
    const bindings = this.ctx.table.ports.get(port) ?? []
    const first = bindings.find((b) => b.port.handlers.includes('tls') || b.port.handlers.includes('pg_tls'))
    if (first === undefined) return undefined
    const wantsHttp = bindings.some((b) => b.port.handlers.includes('http'))
    const alpn = wantsHttp ? first.port.alpn.filter((p) => p === 'h2' || p === 'http/1.1') : []
    const versions = first.port.tlsVersions
    const minVersion = (versions.includes('TLSv1.2') ? 'TLSv1.2' : 'TLSv1.3') as tls.SecureVersion
    const maxVersion = (versions.includes('TLSv1.3') ? 'TLSv1.3' : 'TLSv1.2') as tls.SecureVersion
    const defaultHost = `${first.app}.${this.ctx.domain}`
    const signature = `${alpn.join(',')}|${minVersion}|${maxVersion}|${defaultHost}`
    const existing = this.tlsServers.get(port)
    if (existing !== undefined && existing.signature === signature) return existing.server
    // Clients that send no SNI (psql to an IP address, curl to 127.0.0.1) get the first app's.
    const defaultPem = await this.certificates.pemFor(defaultHost)
    const server = tls.createServer({
      cert: defaultPem.cert,
      key: defaultPem.key,
      minVersion,
      maxVersion,
      ...(alpn.length > 0 ? { ALPNProtocols: alpn } : {}),
      handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
      SNICallback: (servername, callback) => {
        // Certificates only for names this port serves: a client cannot make the CA issue
        // certificates for arbitrary names.
        const binding = bindingForHost(this.ctx.table, port, servername, false)
        const app = binding === undefined ? undefined : this.ctx.table.appForHost(servername)
        const name = app !== undefined ? servername : binding !== undefined ? `${binding.app}.${this.ctx.domain}` : undefined
        if (name === undefined) { callback(new Error(`no app serves ${servername} on port ${port}`)); return }
        this.certificates.contextFor(name, { minVersion, maxVersion }).then((context) => callback(null, context), (err: Error) => callback(err))
      },
    })
    server.on('secureConnection', (socket) => this.afterTls(socket, port))
    server.on('tlsClientError', (_err, socket) => {
      this.ctx.metrics.refuse('-', 'tls_handshake')
      socket.destroy()
    })
    this.tlsServers.set(port, { signature, server })
    return server
  }

  private terminateTls(socket: net.Socket, port: number): void {
    socket.pause()
    this.tlsServer(port).then(
      (server) => {
        if (server === undefined || socket.destroyed) { socket.destroy(); return }
        server.emit('connection', socket)
        socket.resume()
      },
      (err: unknown) => {
        this.ctx.logger.error('TLS setup failed', { port, error: err })
        socket.destroy()
      },
    )
  }

  /** reference §3.2 pg_tls: a Postgres client first sends SSLRequest (or GSSENCRequest); the
   * proxy answers 'S' (or 'N' to GSS) and then terminates TLS. A client that starts without TLS
   * is passed through as plain TCP. */
  private postgresPreamble(socket: net.Socket, port: number): void {
    let buffered = Buffer.alloc(0)
    const timer = setTimeout(() => socket.destroy(), HANDSHAKE_TIMEOUT_MS)
    const onData = (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk])
      if (buffered.length < 8) return
      const length = buffered.readUInt32BE(0)
      const code = buffered.readUInt32BE(4)
      if (length === 8 && code === PG_GSSENC_REQUEST) {
        buffered = buffered.subarray(8)
        socket.write('N')
        return
      }
      socket.removeListener('data', onData)
      clearTimeout(timer)
      if (length === 8 && code === PG_SSL_REQUEST) {
        const rest = buffered.subarray(8)
        socket.pause()
        if (rest.length > 0) socket.unshift(rest)
        socket.write('S')
        this.terminateTls(socket, port)
        return
      }
      const bindings = this.ctx.table.ports.get(port)
      if (bindings === undefined || bindings.length === 0) { socket.destroy(); return }
      socket.pause()
      this.forward(socket, bindings[0]!, { port, tls: false }, buffered)
    }
    socket.on('data', onData)
  }

  /** Raw TCP (optionally after TLS, optionally with a PROXY header) to a Machine. Client bytes
   * that arrive before the Machine accepted are sent at once and also kept (up to
   * MAX_EARLY_BYTES): a worker on another host that refuses at the hard limit never delivered
   * them, so they go to the next Machine the dispatcher gives (or the connection waits). */
  forward(client: net.Socket, binding: PortBinding, listen: ListenInfo, initial?: Buffer): void {
    const ctx = this.ctx
    const group = binding.group
    client.pause()
    this.rawConnections.add(client)
    let entry: MachineEntry | undefined
    let released = true
    let current: UpstreamSocket | undefined
    let refusals = 0
    const release = () => {
      if (released || entry === undefined) return
      released = true
      ctx.dispatcher.release(entry, group)
    }
    client.once('close', () => { this.rawConnections.delete(client); release(); current?.destroy() })
    // What the Machine must get first: the PROXY header (reference §3.2: v1 by default, v2 by
    // proxy_proto_options), then bytes a handler already read.
    let early: Buffer[] = []
    if (binding.port.handlers.includes('proxy_proto')) {
      const source = { address: client.remoteAddress ?? '', port: client.remotePort ?? 0 }
      const destination = { address: client.localAddress ?? '', port: client.localPort ?? listen.port }
      early.push(binding.port.proxyProtoVersion === 2 ? proxyHeaderV2(source, destination) : proxyHeaderV1(source, destination))
    }
    if (initial !== undefined && initial.length > 0) early.push(initial)
    const connect = (chosen: MachineEntry) => {
      entry = chosen
      released = false
      if (client.destroyed) { release(); return }
      const upstream = ctx.transport.connect({ machine: chosen.route, host: chosen.upstreamHost, port: chosen.upstreamPort })
      current = upstream
      upstream.setNoDelay(true)
      let connected = false
      let kept: Buffer[] | undefined = early
      let keptBytes = 0
      for (const chunk of kept) { keptBytes += chunk.length; upstream.write(chunk) }
      const onEarlyData = (chunk: Buffer) => {
        if (kept !== undefined) {
          kept.push(chunk)
          keptBytes += chunk.length
          if (keptBytes > MAX_EARLY_BYTES) kept = undefined // too much to re-send: no retry
        }
        if (!upstream.write(chunk) || kept === undefined) client.pause()
      }
      client.on('data', onEarlyData)
      client.resume()
      upstream.once('connect', () => {
        connected = true
        kept = undefined
        client.pause()
        client.removeListener('data', onEarlyData)
        client.pipe(upstream)
        upstream.pipe(client)
      })
      let error: unknown
      upstream.on('error', (err) => {
        error = err
        if (connected || isAtCapacity(err)) return
        ctx.metrics.app(group.app).upstreamErrors++
        ctx.logger.warn('upstream connect failed', { app: group.app, machineId: chosen.machineId })
        // The next connections go elsewhere (or wait) while this Machine refuses them.
        ctx.table.markUnhealthy(chosen, group, 1000)
      })
      upstream.on('close', () => {
        if (current !== upstream) return
        current = undefined
        release()
        if (!connected && isAtCapacity(error) && kept !== undefined && !client.destroyed && ++refusals <= MAX_CAPACITY_RETRIES) {
          // The Machine's worker refused at its hard limit: nothing reached the Machine.
          client.pause()
          client.removeListener('data', onEarlyData)
          early = kept
          acquire()
          return
        }
        if (!connected && isAtCapacity(error)) ctx.metrics.refuse(group.app, 'at_capacity')
        client.destroy()
      })
    }
    const acquire = () => {
      const result = ctx.dispatcher.acquire(group)
      if (!(result instanceof Promise)) { connect(result); return }
      result.then(connect, (err: unknown) => {
        // reference §4.1: sustained overload closes TCP connections; every refusal is counted.
        ctx.metrics.refuse(group.app, err instanceof RefusedError ? err.reason : 'no_machines')
        client.destroy()
      })
    }
    acquire()
  }

  close(): void {
    for (const socket of this.rawConnections) socket.destroy()
    this.rawConnections.clear()
    for (const { server } of this.tlsServers.values()) server.close()
    this.tlsServers.clear()
  }
}
