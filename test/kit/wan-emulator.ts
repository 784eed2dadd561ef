import { createSocket, type Socket } from 'node:dgram'
import { isIPv6 } from 'node:net'
import { performance } from 'node:perf_hooks'

// The WAN emulator of the multi-host test kit (DESIGN "Proxy", host-facts §4): the kernel here
// has no netem, so inter-host delay comes from a userspace UDP relay on WireGuard's underlay,
// measured to add exactly the configured delay (D = 25 ms each way gave a 51.5 ms ping RTT).
//
//   host A's wg ──► relay socket {A,B} ──(delay(regionA, regionB))──► host B's wg
//   host A's wg ◄──(delay(regionB, regionA))── relay socket {A,B} ◄── host B's wg
//
// One relay socket per unordered host pair: it is A's endpoint for B and B's endpoint for A, so
// WireGuard roaming (a peer's endpoint follows where its packets come from) never moves a
// tunnel off the relay. A datagram is forwarded only if it comes from one of the pair's two real
// endpoints; anything else is dropped. Hangar's code never sees the delay table: the kit only
// points each mesh's peer endpoints at these sockets, and proxies measure RTT themselves.

export interface WanHost {
  hostId: string
  region: string
  /** The host's real WireGuard endpoint on the underlay, 'ip:port'. */
  endpoint: string
}

/** One-way delays in ms by region pair: 'ams:sjc' (also used for sjc→ams unless 'sjc:ams' is
 * given). Pairs not listed get `defaultDelayMs`; hosts in the same region `sameRegionDelayMs`. */
export type DelayTable = Record<string, number>

export interface WanOptions {
  delays?: DelayTable
  defaultDelayMs?: number
  sameRegionDelayMs?: number
}

export interface WanPairStats { hosts: [string, string]; endpoint: string; forwarded: number; dropped: number }

/** The kit's handle on the emulator, whether it runs in this process or in the hub namespace. */
export interface WanEmulator {
  /** Adds hosts; every pair among all hosts added so far gets its relay socket. */
  addHosts(hosts: WanHost[]): Promise<void>
  /** The endpoint host `from` must use for host `to` (a relay socket, 'ip:port'). */
  endpointFor(from: string, to: string): string
  /** Drops every datagram from and to the host until heal(). */
  partition(hostId: string): Promise<void>
  heal(hostId: string): Promise<void>
  /** Changes the one-way delay of a region pair (both directions unless oneWay) for new datagrams. */
  setDelay(regionA: string, regionB: string, ms: number, options?: { oneWay?: boolean }): Promise<void>
  delayMs(regionA: string, regionB: string): number
  stats(): Promise<WanPairStats[]>
  close(): Promise<void>
}

export function oneWayDelayMs(options: WanOptions, from: string, to: string): number {
  const table = options.delays ?? {}
  const listed = table[`${from}:${to}`] ?? table[`${to}:${from}`]
  if (listed !== undefined) return listed
  return from === to ? (options.sameRegionDelayMs ?? 0) : (options.defaultDelayMs ?? 0)
}

export function validateDelays(options: WanOptions): void {
  for (const [pair, ms] of Object.entries(options.delays ?? {})) {
    if (!/^[^:]+:[^:]+$/.test(pair)) throw new Error(`delay table key "${pair}" is not 'regionA:regionB'`)
    if (!Number.isFinite(ms) || ms < 0) throw new Error(`delay for ${pair} must be a number of ms ≥ 0, got ${ms}`)
  }
  for (const [name, ms] of [['defaultDelayMs', options.defaultDelayMs], ['sameRegionDelayMs', options.sameRegionDelayMs]] as const) {
    if (ms !== undefined && (!Number.isFinite(ms) || ms < 0)) throw new Error(`${name} must be a number of ms ≥ 0, got ${ms}`)
  }
}

function splitEndpoint(endpoint: string): { address: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d+)$/.exec(endpoint)
  if (!match) throw new Error(`endpoint "${endpoint}" is not 'ip:port'`)
  return { address: match[1] ?? match[2]!, port: Number(match[3]) }
}

/** Datagrams released in order after a fixed delay, with one timer per line (not per datagram). */
class DelayLine {
  private readonly queue: Array<{ due: number; data: Buffer }> = []
  private timer: NodeJS.Timeout | undefined
  constructor(private readonly send: (data: Buffer) => void) {}

  push(data: Buffer, delayMs: number): void {
    if (delayMs <= 0 && this.queue.length === 0) { this.send(data); return }
    // A shorter delay set later must not overtake datagrams already queued (UDP may reorder,
    // but a real path does not reorder by itself).
    const due = Math.max(performance.now() + delayMs, this.queue.at(-1)?.due ?? 0)
    this.queue.push({ due, data })
    if (!this.timer) this.arm()
  }

  private arm(): void {
    const head = this.queue[0]
    if (!head) { this.timer = undefined; return }
    this.timer = setTimeout(() => this.release(), Math.max(1, Math.ceil(head.due - performance.now())))
  }

  private release(): void {
    // A timer can fire early against performance.now() (libuv measures it from the loop's cached
    // clock, in whole ms), and the delay is a floor a test may rely on: send only what is due by
    // the real clock and re-arm for the rest. The cost is up to ~1 ms late, never early.
    const now = performance.now()
    while (this.queue.length > 0 && this.queue[0]!.due <= now) this.send(this.queue.shift()!.data)
    this.arm()
  }

  clear(): void {
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
    this.queue.length = 0
  }
}

interface PairRelay {
  a: WanHost & { address: string; port: number }
  b: WanHost & { address: string; port: number }
  socket: Socket
  endpoint: string
  toB: DelayLine
  toA: DelayLine
  forwarded: number
  dropped: number
}

/** The relay itself, in the current network namespace, bound to `bindAddress`. */
export class WanRelay implements WanEmulator {
  private readonly hosts = new Map<string, WanHost & { address: string; port: number }>()
  private readonly pairs = new Map<string, PairRelay>()
  private readonly partitioned = new Set<string>()
  private readonly delays: Map<string, number>
  private closed = false

  constructor(private readonly bindAddress: string, private readonly options: WanOptions = {}) {
    validateDelays(options)
    this.delays = new Map(Object.entries(options.delays ?? {}))
  }

  delayMs(from: string, to: string): number {
    return oneWayDelayMs({ ...this.options, delays: Object.fromEntries(this.delays) }, from, to)
  }

  async addHosts(hosts: WanHost[]): Promise<void> {
    if (this.closed) throw new Error('the WAN emulator is closed')
    for (const host of hosts) {
      if (this.hosts.has(host.hostId)) throw new Error(`host ${host.hostId} is already on the WAN emulator`)
      const { address, port } = splitEndpoint(host.endpoint)
      const entry = { ...host, address, port }
      const others = [...this.hosts.values()]
      this.hosts.set(host.hostId, entry)
      for (const other of others) await this.openPair(other, entry)
    }
  }

  endpointFor(from: string, to: string): string {
    const pair = this.pairs.get(pairKey(from, to))
    if (!pair) throw new Error(`no relay between ${from} and ${to} (add both hosts first)`)
    return pair.endpoint
  }

  async partition(hostId: string): Promise<void> {
    if (!this.hosts.has(hostId)) throw new Error(`unknown host ${hostId}`)
    this.partitioned.add(hostId)
    // What was already in flight to or from it is lost too, as on a cut link.
    for (const pair of this.pairs.values()) if (pair.a.hostId === hostId || pair.b.hostId === hostId) { pair.toA.clear(); pair.toB.clear() }
  }

  async heal(hostId: string): Promise<void> {
    this.partitioned.delete(hostId)
  }

  async setDelay(regionA: string, regionB: string, ms: number, options: { oneWay?: boolean } = {}): Promise<void> {
    validateDelays({ delays: { [`${regionA}:${regionB}`]: ms } })
    this.delays.set(`${regionA}:${regionB}`, ms)
    if (!options.oneWay) this.delays.set(`${regionB}:${regionA}`, ms)
    else if (!this.delays.has(`${regionB}:${regionA}`)) this.delays.set(`${regionB}:${regionA}`, this.delayMs(regionB, regionA))
  }

  async stats(): Promise<WanPairStats[]> {
    return [...this.pairs.values()].map((p) => ({ hosts: [p.a.hostId, p.b.hostId], endpoint: p.endpoint, forwarded: p.forwarded, dropped: p.dropped }))
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await Promise.all([...this.pairs.values()].map((pair) => new Promise<void>((resolve) => {
      pair.toA.clear()
      pair.toB.clear()
      pair.socket.close(() => resolve())
    })))
    this.pairs.clear()
  }

  private async openPair(a: PairRelay['a'], b: PairRelay['b']): Promise<void> {
    const socket = createSocket({ type: isIPv6(this.bindAddress) ? 'udp6' : 'udp4' })
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject)
      socket.bind(0, this.bindAddress, () => { socket.off('error', reject); resolve() })
    })
    socket.on('error', () => { /* ICMP errors from a host that is down: keep relaying */ })
    const port = socket.address().port
    const send = (to: { address: string; port: number }) => (data: Buffer) => { if (!this.closed) socket.send(data, to.port, to.address) }
    const pair: PairRelay = {
      a, b, socket, forwarded: 0, dropped: 0,
      endpoint: isIPv6(this.bindAddress) ? `[${this.bindAddress}]:${port}` : `${this.bindAddress}:${port}`,
      toB: new DelayLine(send(b)), toA: new DelayLine(send(a)),
    }
    socket.on('message', (data, from) => {
      const fromA = from.address === a.address && from.port === a.port
      const fromB = from.address === b.address && from.port === b.port
      if ((!fromA && !fromB) || this.partitioned.has(a.hostId) || this.partitioned.has(b.hostId)) { pair.dropped++; return }
      pair.forwarded++
      if (fromA) pair.toB.push(data, this.delayMs(a.region, b.region))
      else pair.toA.push(data, this.delayMs(b.region, a.region))
    })
    this.pairs.set(pairKey(a.hostId, b.hostId), pair)
  }
}

function pairKey(x: string, y: string): string {
  return x < y ? `${x}\u0000${y}` : `${y}\u0000${x}`
}
