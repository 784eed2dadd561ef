import { createSocket, type Socket as UdpSocket } from 'node:dgram'
import { connect } from 'node:net'
import { randomInt } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { silentLogger, type Logger } from '../core/index.js'
import { formatIpv6, parseIpv6 } from './dns-wire.js'

// Names outside `.internal` go to the host's own resolvers, as Fly's resolver does for Machines
// (reference §3.3: "/etc/resolv.conf is overwritten to point at fdaa::3", which must resolve
// everything). A plain forwarder: each query leaves with a fresh random id from one socket per
// address family, the answer is matched by id and upstream, given back the client's id, and a
// query that gets no answer in time is tried once at the next upstream. Bounded: at most
// `maxPending` queries wait at once; beyond that new ones are refused, so a flood cannot grow
// memory.

export interface DnsUpstream { host: string; port: number }

export interface DnsForwarderOptions {
  upstreams: DnsUpstream[]
  /** Per attempt (default 2 s). */
  timeoutMs?: number
  maxPending?: number
  logger?: Logger
}

interface Pending {
  upstream: DnsUpstream
  resolve: (answer: Buffer | undefined) => void
  timer: NodeJS.Timeout
}

/** `1.2.3.4`, `1.2.3.4:5353`, `fd00::1`, `[fd00::1]:5353` → host and port (53 by default). */
export function parseHostPort(text: string, defaultPort = 53): DnsUpstream | undefined {
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(text)
  if (bracketed) {
    const port = bracketed[2] === undefined ? defaultPort : Number(bracketed[2])
    return isIP(bracketed[1]!) === 6 && port > 0 && port < 65536 ? { host: bracketed[1]!, port } : undefined
  }
  if (isIP(text) === 6) return { host: text, port: defaultPort }
  const [host, portText, ...rest] = text.split(':')
  if (rest.length > 0 || isIP(host ?? '') !== 4) return undefined
  const port = portText === undefined ? defaultPort : Number(portText)
  return Number.isInteger(port) && port > 0 && port < 65536 ? { host: host!, port } : undefined
}

/** The host's resolvers from /etc/resolv.conf. The DNS server runs in the host's namespace, so
 * loopback resolvers (systemd-resolved's 127.0.0.53) are reachable from it. */
export function hostResolvers(path = '/etc/resolv.conf'): DnsUpstream[] {
  try {
    return readFileSync(path, 'utf8').split('\n')
      .map((line) => /^\s*nameserver\s+(\S+)/.exec(line)?.[1])
      .map((address) => (address ? parseHostPort(address.replace(/%.*$/, '')) : undefined))
      .filter((u): u is DnsUpstream => u !== undefined)
  } catch {
    return []
  }
}

export class DnsForwarder {
  private readonly pending = new Map<number, Pending>()
  private readonly sockets = new Map<'udp4' | 'udp6', UdpSocket>()
  private next = 0
  private closed = false
  private readonly timeoutMs: number
  private readonly maxPending: number
  private readonly logger: Logger

  constructor(private readonly options: DnsForwarderOptions) {
    this.timeoutMs = options.timeoutMs ?? 2000
    this.maxPending = options.maxPending ?? 2048
    this.logger = options.logger ?? silentLogger
  }

  get enabled(): boolean { return this.options.upstreams.length > 0 }
  get inFlight(): number { return this.pending.size }

  private socket(family: 'udp4' | 'udp6'): UdpSocket {
    let socket = this.sockets.get(family)
    if (socket) return socket
    socket = createSocket(family)
    socket.on('message', (message, rinfo) => this.onAnswer(message, rinfo.address, rinfo.port))
    socket.on('error', (err) => this.logger.warn('forwarder socket error', { err, family }))
    socket.bind(0)
    this.sockets.set(family, socket)
    return socket
  }

  private onAnswer(message: Buffer, address: string, port: number): void {
    if (message.length < 12) return
    const id = message.readUInt16BE(0)
    const pending = this.pending.get(id)
    // Only the upstream the query went to may answer it (no spoofing from elsewhere).
    if (!pending || pending.upstream.port !== port || !sameAddress(pending.upstream.host, address)) return
    this.pending.delete(id)
    clearTimeout(pending.timer)
    pending.resolve(message)
  }

  private freeId(): number | undefined {
    for (let tries = 0; tries < 32; tries++) {
      const id = randomInt(0, 65536)
      if (!this.pending.has(id)) return id
    }
    return undefined
  }

  private attemptUdp(query: Buffer, upstream: DnsUpstream): Promise<Buffer | undefined> {
    const id = this.freeId()
    if (id === undefined || this.closed) return Promise.resolve(undefined)
    const packet = Buffer.from(query)
    packet.writeUInt16BE(id, 0)
    return new Promise((resolve) => {
      const timer = setTimeout(() => { this.pending.delete(id); resolve(undefined) }, this.timeoutMs)
      this.pending.set(id, { upstream, resolve, timer })
      this.socket(isIP(upstream.host) === 6 ? 'udp6' : 'udp4').send(packet, upstream.port, upstream.host, (err) => {
        if (!err) return
        this.pending.delete(id)
        clearTimeout(timer)
        resolve(undefined)
      })
    })
  }

  private attemptTcp(query: Buffer, upstream: DnsUpstream): Promise<Buffer | undefined> {
    return new Promise((resolve) => {
      const socket = connect({ host: upstream.host, port: upstream.port })
      const chunks: Buffer[] = []
      let length = 0
      const done = (answer: Buffer | undefined) => { socket.destroy(); resolve(answer) }
      socket.setTimeout(this.timeoutMs, () => done(undefined))
      socket.on('error', () => done(undefined))
      socket.on('connect', () => {
        const frame = Buffer.alloc(2 + query.length)
        frame.writeUInt16BE(query.length, 0)
        query.copy(frame, 2)
        socket.write(frame)
      })
      socket.on('data', (chunk) => {
        chunks.push(chunk); length += chunk.length
        const buffered = Buffer.concat(chunks, length)
        if (buffered.length >= 2 && buffered.length >= 2 + buffered.readUInt16BE(0)) done(buffered.subarray(2, 2 + buffered.readUInt16BE(0)))
      })
      socket.on('end', () => done(undefined))
    })
  }

  /** The upstream's answer with the client's id, or undefined (the caller answers SERVFAIL). */
  async forward(query: Buffer, transport: 'udp' | 'tcp' = 'udp'): Promise<Buffer | undefined> {
    const upstreams = this.options.upstreams
    if (upstreams.length === 0 || this.closed || query.length < 12) return undefined
    if (this.pending.size >= this.maxPending) return undefined
    const clientId = query.readUInt16BE(0)
    const first = this.next % upstreams.length
    for (let attempt = 0; attempt < Math.min(2, upstreams.length); attempt++) {
      const upstream = upstreams[(first + attempt) % upstreams.length]!
      const answer = transport === 'tcp' ? await this.attemptTcp(query, upstream) : await this.attemptUdp(query, upstream)
      if (answer && answer.length >= 12) {
        const out = Buffer.from(answer)
        out.writeUInt16BE(clientId, 0)
        return out
      }
      // This upstream did not answer: start with the next one from now on.
      this.next = (first + attempt + 1) % upstreams.length
      this.logger.debug('upstream resolver did not answer', { upstream: `${upstream.host}:${upstream.port}` })
    }
    return undefined
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    for (const [id, pending] of this.pending) { clearTimeout(pending.timer); pending.resolve(undefined); this.pending.delete(id) }
    for (const socket of this.sockets.values()) { try { socket.close() } catch { /* already closed */ } }
    this.sockets.clear()
  }
}

function sameAddress(a: string, b: string): boolean {
  const canonical = (x: string) => {
    const plain = x.replace(/^::ffff:(?=\d+\.)/i, '')
    const v6 = plain.includes(':') ? parseIpv6(plain) : undefined
    return v6 ? formatIpv6(v6) : plain
  }
  return canonical(a) === canonical(b)
}
