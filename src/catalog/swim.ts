import { randomInt, shuffle, type Random } from './seeded-random.js'

// SWIM membership (Das, Gupta, Motivala 2002; reference §5.1: Corrosion uses Foca) as a pure
// state machine: it is fed messages and clock ticks and answers with messages to send and
// membership events. The UDP socket is a thin port around it (gossip-transport.ts), so every
// path — ping, ping-req through k others, suspect, confirm down, refute by incarnation, join,
// rejoin after a partition or a restart — is tested with a simulated network and clock.
//
//   each protocol period:  ping(target) ──ack?──► fine
//                              │ no ack within ackTimeout
//                              ▼
//                          ping-req(target) to k others ──forwarded ack?──► fine
//                              │ none by the end of the period
//                              ▼
//                          suspect(target, inc) ── gossiped; target refutes with inc+1 ──► alive
//                              │ suspicionTimeout passes
//                              ▼
//                          down(target, inc) ── gossiped
//
// Updates ride on every message (piggyback), each retransmitted a bounded number of times.
// Precedence for one member: a higher incarnation wins; at the same incarnation
// down > suspect > alive. Only the member itself raises its incarnation (refutation), and a
// restarted member starts from the wall clock, so it outranks its previous life.

export type MemberState = 'alive' | 'suspect' | 'down'

export interface MemberMeta {
  hostId?: string
  region?: string
  apiUrl?: string
}

export interface MemberUpdate {
  id: string
  addr: string
  incarnation: number
  state: MemberState
  meta: MemberMeta
}

export type SwimMessage =
  | { type: 'ping'; seq: number; from: MemberUpdate; updates: MemberUpdate[] }
  | { type: 'ack'; seq: number; from: MemberUpdate; updates: MemberUpdate[] }
  | { type: 'ping-req'; seq: number; target: { id: string; addr: string }; from: MemberUpdate; updates: MemberUpdate[] }
  | { type: 'join'; from: MemberUpdate; updates: MemberUpdate[] }
  | { type: 'join-ack'; from: MemberUpdate; updates: MemberUpdate[] }
  | { type: 'leave'; from: MemberUpdate; updates: MemberUpdate[] }

export interface MemberView {
  id: string
  addr: string
  incarnation: number
  state: MemberState
  meta: MemberMeta
  /** Smoothed round-trip time of direct pings, null until measured. */
  rttMs: number | null
}

export type MemberEventType = 'up' | 'alive' | 'suspect' | 'down' | 'updated'

export interface MemberEvent {
  type: MemberEventType
  member: MemberView
}

export type SwimOutput =
  | { kind: 'send'; to: string; message: SwimMessage }
  | { kind: 'event'; event: MemberEvent }

export interface SwimConfig {
  /** One probe per period. */
  protocolPeriodMs: number
  /** Floor of the direct-ping timeout; it grows with the target's measured RTT. */
  ackTimeoutMs: number
  /** k: members asked to ping a silent target on our behalf. */
  indirectProbes: number
  /** How long a member stays suspect before it is declared down. */
  suspicionTimeoutMs: number
  /** Each update is piggybacked about multiplier·⌈log10(n+1)⌉ times. */
  retransmitMultiplier: number
  maxUpdatesPerMessage: number
  /** How often a node alone re-joins through its bootstrap list, and a node with down members
   * knocks on one of them (this is what heals a partition). */
  announceIntervalMs: number
  /** Down members are forgotten after this long. */
  downRetentionMs: number
  /** At most one "you are down" notice per member per this interval. */
  downNoticeIntervalMs: number
  /** Members listed in one join-ack. */
  maxJoinAckMembers: number
}

export const DEFAULT_SWIM_CONFIG: SwimConfig = {
  protocolPeriodMs: 500,
  ackTimeoutMs: 200,
  indirectProbes: 3,
  suspicionTimeoutMs: 2000,
  retransmitMultiplier: 4,
  maxUpdatesPerMessage: 8,
  announceIntervalMs: 1000,
  downRetentionMs: 3_600_000,
  downNoticeIntervalMs: 1000,
  maxJoinAckMembers: 256,
}

interface Member extends MemberView {
  stateSince: number
  lastDownNoticeAt: number
  rttSamples: number[]
  lastRttProbeAt: number
}

interface Probe {
  targetId: string
  targetIncarnation: number
  seq: number
  startedAt: number
  directDeadline: number
  periodEnd: number
  phase: 'direct' | 'indirect'
}

interface Relay {
  requesterAddr: string
  requesterSeq: number
  expiresAt: number
}

const STATE_RANK: Record<MemberState, number> = { alive: 0, suspect: 1, down: 2 }

export class SwimMachine {
  readonly config: SwimConfig
  private self: MemberUpdate
  private readonly members = new Map<string, Member>()
  private readonly gossip = new Map<string, { update: MemberUpdate; transmits: number }>()
  private probe: Probe | null = null
  private probeOrder: string[] = []
  private nextProbeAt = 0
  private nextAnnounceAt = 0
  private nextRttProbeAt = 0
  private seq = 0
  private readonly relays = new Map<number, Relay>()
  /** Pings sent only to measure RTT (to a member just met): seq → [member id, sent at]. */
  private readonly rttProbes = new Map<number, { id: string; sentAt: number }>()
  private bootstrap: string[] = []
  private left = false
  private readonly random: Random

  constructor(
    self: { id: string; addr: string; meta?: MemberMeta },
    options: { config?: Partial<SwimConfig>; random: Random; incarnation: number },
  ) {
    this.config = { ...DEFAULT_SWIM_CONFIG, ...options.config }
    this.random = options.random
    this.self = { id: self.id, addr: self.addr, incarnation: options.incarnation, state: 'alive', meta: self.meta ?? {} }
  }

  get id(): string { return this.self.id }
  get incarnation(): number { return this.self.incarnation }
  get selfAddr(): string { return this.self.addr }

  /** Members other than this node, in every state. */
  memberViews(): MemberView[] {
    return [...this.members.values()].map(view)
  }

  member(id: string): MemberView | undefined {
    const m = this.members.get(id)
    return m ? view(m) : undefined
  }

  /** Members believed alive (suspects included: they still get traffic until confirmed down). */
  liveMembers(): MemberView[] {
    return [...this.members.values()].filter((m) => m.state !== 'down').map(view)
  }

  /** Contacts the bootstrap addresses; repeated every announce interval while alone. */
  join(bootstrap: string[], now: number): SwimOutput[] {
    this.bootstrap = bootstrap.filter((addr) => addr !== this.self.addr)
    this.nextAnnounceAt = now + this.config.announceIntervalMs
    this.nextProbeAt = now + this.config.protocolPeriodMs
    return this.bootstrap.map((to) => this.send(to, { type: 'join', from: this.self, updates: [] }))
  }

  /** Announces a graceful departure: peers mark this node down at once instead of waiting out
   * a suspicion. */
  leave(): SwimOutput[] {
    if (this.left) return []
    this.left = true
    const farewell: MemberUpdate = { ...this.self, state: 'down', incarnation: this.self.incarnation + 1 }
    const live = this.liveMembers()
    return shuffle(this.random, live).slice(0, Math.max(this.config.indirectProbes * 2, 6))
      .map((m) => ({ kind: 'send' as const, to: m.addr, message: { type: 'leave' as const, from: farewell, updates: [] } }))
  }

  /** Updates this node's own metadata (gossiped as an alive update with a new incarnation). */
  updateMeta(meta: MemberMeta): void {
    this.self = { ...this.self, meta: { ...meta }, incarnation: this.self.incarnation + 1 }
    this.enqueue(this.self)
  }

  tick(now: number): SwimOutput[] {
    if (this.left) return []
    const out: SwimOutput[] = []
    this.advanceProbe(now, out)
    if (!this.probe && now >= this.nextProbeAt) this.startProbe(now, out)
    if (now >= this.nextRttProbeAt) this.probeRtt(now, out)
    for (const member of this.members.values()) {
      if (member.state === 'suspect' && now - member.stateSince >= this.config.suspicionTimeoutMs) {
        this.setState(member, 'down', member.incarnation, now, out)
        this.enqueue(updateOf(member))
      }
      if (member.state === 'down' && now - member.stateSince >= this.config.downRetentionMs) {
        this.members.delete(member.id)
        this.gossip.delete(member.id)
      }
    }
    for (const [seq, relay] of this.relays) if (relay.expiresAt <= now) this.relays.delete(seq)
    for (const [seq, probe] of this.rttProbes) if (now - probe.sentAt > this.config.protocolPeriodMs * 4) this.rttProbes.delete(seq)
    if (now >= this.nextAnnounceAt) {
      this.nextAnnounceAt = now + this.config.announceIntervalMs
      this.announce(out)
    }
    return out
  }

  receive(fromAddr: string, message: SwimMessage, now: number): SwimOutput[] {
    if (this.left) return []
    const out: SwimOutput[] = []
    if (message.from.id === this.self.id) return out
    this.applyUpdate(message.from, now, out, fromAddr)
    for (const update of message.updates) this.applyUpdate(update, now, out)
    this.noticeIfDown(message.from, now, out)
    switch (message.type) {
      case 'ping':
        out.push(this.send(fromAddr, { type: 'ack', seq: message.seq, from: this.self, updates: [] }))
        break
      case 'ack': this.handleAck(message, now, out); break
      case 'ping-req': {
        const seq = this.nextSeq()
        this.relays.set(seq, { requesterAddr: fromAddr, requesterSeq: message.seq, expiresAt: now + this.config.protocolPeriodMs * 2 })
        out.push(this.send(message.target.addr, { type: 'ping', seq, from: this.self, updates: [] }))
        break
      }
      case 'join': {
        const everyone = [...this.members.values()].filter((m) => m.id !== message.from.id || m.state === 'down')
        const listed = shuffle(this.random, everyone).slice(0, this.config.maxJoinAckMembers).map(updateOf)
        out.push({ kind: 'send', to: fromAddr, message: { type: 'join-ack', from: this.self, updates: listed } })
        break
      }
      case 'join-ack':
      case 'leave':
        break
    }
    return out
  }

  // ── probing ──────────────────────────────────────────────────────────────────────────────

  private startProbe(now: number, out: SwimOutput[]): void {
    this.nextProbeAt = now + this.config.protocolPeriodMs
    const target = this.nextProbeTarget()
    if (!target) return
    // The direct ack may take 3 RTTs (a busy peer); until the RTT is known, be generous so a far
    // peer met a moment ago is not suspected for being far.
    const cap = Math.floor(this.config.protocolPeriodMs * 0.8)
    const directTimeout = target.rttMs === null ? Math.max(this.config.ackTimeoutMs, cap) : Math.min(Math.max(this.config.ackTimeoutMs, Math.ceil(target.rttMs * 3)), cap)
    const seq = this.nextSeq()
    this.probe = {
      targetId: target.id,
      targetIncarnation: target.incarnation,
      seq,
      startedAt: now,
      directDeadline: now + directTimeout,
      periodEnd: now + Math.max(this.config.protocolPeriodMs, directTimeout * 3),
      phase: 'direct',
    }
    out.push(this.send(target.addr, { type: 'ping', seq, from: this.self, updates: [] }))
  }

  private nextProbeTarget(): Member | undefined {
    for (let attempts = 0; attempts < 2; attempts++) {
      while (this.probeOrder.length > 0) {
        const id = this.probeOrder.shift()!
        const member = this.members.get(id)
        if (member && member.state !== 'down') return member
      }
      // reference: SWIM §4.3 round-robin over a shuffled list bounds the time to first probe.
      this.probeOrder = shuffle(this.random, [...this.members.values()].filter((m) => m.state !== 'down').map((m) => m.id))
    }
    return undefined
  }

  private advanceProbe(now: number, out: SwimOutput[]): void {
    const probe = this.probe
    if (!probe) return
    const target = this.members.get(probe.targetId)
    if (!target || target.state === 'down') { this.probe = null; return }
    if (probe.phase === 'direct' && now >= probe.directDeadline) {
      probe.phase = 'indirect'
      const helpers = shuffle(this.random, [...this.members.values()].filter((m) => m.state === 'alive' && m.id !== target.id))
        .slice(0, this.config.indirectProbes)
      for (const helper of helpers) {
        out.push(this.send(helper.addr, { type: 'ping-req', seq: probe.seq, target: { id: target.id, addr: target.addr }, from: this.self, updates: [] }))
      }
    }
    if (now >= probe.periodEnd) {
      this.probe = null
      if (target.state === 'alive' && target.incarnation === probe.targetIncarnation) {
        this.setState(target, 'suspect', target.incarnation, now, out)
        this.enqueue(updateOf(target))
      }
    }
  }

  private handleAck(message: Extract<SwimMessage, { type: 'ack' }>, now: number, out: SwimOutput[]): void {
    const relay = this.relays.get(message.seq)
    if (relay) {
      this.relays.delete(message.seq)
      out.push({ kind: 'send', to: relay.requesterAddr, message: { type: 'ack', seq: relay.requesterSeq, from: message.from, updates: this.takeUpdates() } })
      return
    }
    const rttProbe = this.rttProbes.get(message.seq)
    if (rttProbe) {
      this.rttProbes.delete(message.seq)
      const member = this.members.get(rttProbe.id)
      if (member && message.from.id === member.id) recordRtt(member, now - rttProbe.sentAt)
      return
    }
    const probe = this.probe
    if (probe && probe.seq === message.seq && message.from.id === probe.targetId) {
      const target = this.members.get(probe.targetId)
      if (target && probe.phase === 'direct') recordRtt(target, now - probe.startedAt)
      this.probe = null
    }
  }

  /** Besides failure detection, one extra ping per period to the member whose RTT is least
   * known: dissemination ranks peers by RTT, and round-robin alone refreshes each member only
   * once per n periods. */
  private probeRtt(now: number, out: SwimOutput[]): void {
    let best: Member | undefined
    for (const member of this.members.values()) {
      if (member.state !== 'alive') continue
      if (!best || member.rttSamples.length < best.rttSamples.length || (member.rttSamples.length === best.rttSamples.length && member.lastRttProbeAt < best.lastRttProbeAt)) best = member
    }
    // Until every member has a few samples, probe quickly: a single sample taken while a process
    // was busy (start-up) would put a near peer in a far ring.
    this.nextRttProbeAt = now + (best && best.rttSamples.length < 3 ? Math.min(50, this.config.protocolPeriodMs) : this.config.protocolPeriodMs)
    if (!best) return
    best.lastRttProbeAt = now
    const seq = this.nextSeq()
    this.rttProbes.set(seq, { id: best.id, sentAt: now })
    out.push(this.send(best.addr, { type: 'ping', seq, from: this.self, updates: [] }))
  }

  // ── membership updates ───────────────────────────────────────────────────────────────────

  private applyUpdate(update: MemberUpdate, now: number, out: SwimOutput[], directFromAddr?: string): void {
    if (update.id === this.self.id) {
      if (update.state !== 'alive' && update.incarnation >= this.self.incarnation) {
        // Refute: only this node may raise its own incarnation.
        this.self = { ...this.self, incarnation: update.incarnation + 1 }
        this.enqueue(this.self)
      }
      return
    }
    const existing = this.members.get(update.id)
    if (!existing) {
      const member: Member = { ...update, meta: { ...update.meta }, rttMs: null, rttSamples: [], lastRttProbeAt: now, stateSince: now, lastDownNoticeAt: -Infinity }
      if (directFromAddr && update.state === 'alive') member.addr = update.addr || directFromAddr
      this.members.set(update.id, member)
      if (update.state !== 'down') {
        this.enqueue(updateOf(member))
        out.push({ kind: 'event', event: { type: 'up', member: view(member) } })
        if (update.state === 'suspect') out.push({ kind: 'event', event: { type: 'suspect', member: view(member) } })
        // Measure the RTT to a new member right away: dissemination ranks peers by it.
        const seq = this.nextSeq()
        this.rttProbes.set(seq, { id: member.id, sentAt: now })
        out.push(this.send(member.addr, { type: 'ping', seq, from: this.self, updates: [] }))
      }
      return
    }
    const newer = update.incarnation > existing.incarnation
    const same = update.incarnation === existing.incarnation
    if (!(newer || (same && STATE_RANK[update.state] > STATE_RANK[existing.state]))) return
    const before = existing.state
    const metaChanged = existing.addr !== update.addr || JSON.stringify(existing.meta) !== JSON.stringify(update.meta)
    existing.addr = update.addr
    existing.meta = { ...update.meta }
    this.setState(existing, update.state, update.incarnation, now, out)
    if (before === update.state && metaChanged) out.push({ kind: 'event', event: { type: 'updated', member: view(existing) } })
    this.enqueue(updateOf(existing))
  }

  private setState(member: Member, state: MemberState, incarnation: number, now: number, out: SwimOutput[]): void {
    const before = member.state
    member.incarnation = incarnation
    if (before === state) return
    member.state = state
    member.stateSince = now
    if (state === 'down') { member.rttMs = null; member.rttSamples = []; if (this.probe?.targetId === member.id) this.probe = null }
    const type: MemberEventType = state === 'down' ? 'down' : state === 'suspect' ? 'suspect' : before === 'down' ? 'up' : 'alive'
    out.push({ kind: 'event', event: { type, member: view(member) } })
  }

  /** A member we hold as down is talking to us: tell it, so it refutes with a higher incarnation
   * (this is how both sides of a healed partition find each other again). */
  private noticeIfDown(from: MemberUpdate, now: number, out: SwimOutput[]): void {
    const member = this.members.get(from.id)
    if (!member || member.state !== 'down' || from.state === 'down' || member.incarnation < from.incarnation) return
    if (now - member.lastDownNoticeAt < this.config.downNoticeIntervalMs) return
    member.lastDownNoticeAt = now
    out.push({ kind: 'send', to: from.addr || member.addr, message: { type: 'ping', seq: this.nextSeq(), from: this.self, updates: [updateOf(member)] } })
  }

  private announce(out: SwimOutput[]): void {
    const live = [...this.members.values()].filter((m) => m.state !== 'down')
    if (live.length === 0) {
      for (const addr of this.bootstrap) out.push(this.send(addr, { type: 'join', from: this.self, updates: [] }))
      return
    }
    const down = [...this.members.values()].filter((m) => m.state === 'down')
    if (down.length > 0) {
      const member = down[randomInt(this.random, down.length)]!
      out.push(this.send(member.addr, { type: 'join', from: this.self, updates: [] }))
    }
    const liveAddrs = new Set(live.map((m) => m.addr))
    const missing = this.bootstrap.filter((addr) => !liveAddrs.has(addr))
    if (missing.length > 0) out.push(this.send(missing[randomInt(this.random, missing.length)]!, { type: 'join', from: this.self, updates: [] }))
  }

  // ── piggybacked gossip ───────────────────────────────────────────────────────────────────

  private enqueue(update: MemberUpdate): void {
    this.gossip.set(update.id, { update: { ...update, meta: { ...update.meta } }, transmits: 0 })
  }

  private retransmitLimit(): number {
    return this.config.retransmitMultiplier * Math.max(1, Math.ceil(Math.log10(this.members.size + 2)))
  }

  private takeUpdates(): MemberUpdate[] {
    if (this.gossip.size === 0) return []
    const limit = this.retransmitLimit()
    const entries = [...this.gossip.values()].sort((a, b) => a.transmits - b.transmits).slice(0, this.config.maxUpdatesPerMessage)
    for (const entry of entries) {
      entry.transmits++
      if (entry.transmits >= limit) this.gossip.delete(entry.update.id)
    }
    return entries.map((e) => e.update)
  }

  private send(to: string, message: SwimMessage): SwimOutput {
    if (message.updates.length === 0 && message.type !== 'join-ack') message.updates = this.takeUpdates()
    return { kind: 'send', to, message }
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) % 0x7fffffff
    return this.seq
  }

  /** Pending piggyback updates (tests). */
  pendingGossip(): number { return this.gossip.size }
}

/** RTT is the minimum of the last few samples: a busy process answering late says nothing
 * about the network, and the rings must not flap with scheduling noise. */
const RTT_SAMPLES = 16
function recordRtt(member: Member, sample: number): void {
  member.rttSamples.push(Math.max(0, sample))
  if (member.rttSamples.length > RTT_SAMPLES) member.rttSamples.shift()
  member.rttMs = Math.min(...member.rttSamples)
}

function view(member: Member): MemberView {
  return { id: member.id, addr: member.addr, incarnation: member.incarnation, state: member.state, meta: { ...member.meta }, rttMs: member.rttMs }
}

function updateOf(member: MemberView): MemberUpdate {
  return { id: member.id, addr: member.addr, incarnation: member.incarnation, state: member.state, meta: { ...member.meta } }
}

/** Validates an untrusted decoded datagram as a SWIM message (throws TypeError). */
export function parseSwimMessage(value: unknown): SwimMessage {
  const obj = value as Record<string, unknown>
  if (!obj || typeof obj !== 'object') throw new TypeError('swim: not an object')
  const type = obj.type
  const from = parseUpdate(obj.from)
  const updatesRaw = obj.updates
  if (!Array.isArray(updatesRaw) || updatesRaw.length > 1024) throw new TypeError('swim: updates must be an array of at most 1024')
  const updates = updatesRaw.map(parseUpdate)
  const seq = obj.seq
  const needSeq = () => {
    if (typeof seq !== 'number' || !Number.isInteger(seq) || seq < 0) throw new TypeError('swim: bad seq')
    return seq
  }
  switch (type) {
    case 'ping': return { type, seq: needSeq(), from, updates }
    case 'ack': return { type, seq: needSeq(), from, updates }
    case 'ping-req': {
      const target = obj.target as Record<string, unknown> | undefined
      if (!target || typeof target.id !== 'string' || typeof target.addr !== 'string') throw new TypeError('swim: bad ping-req target')
      return { type, seq: needSeq(), target: { id: target.id, addr: target.addr }, from, updates }
    }
    case 'join': case 'join-ack': case 'leave': return { type, from, updates }
    default: throw new TypeError(`swim: unknown message type ${String(type)}`)
  }
}

function parseUpdate(value: unknown): MemberUpdate {
  const u = value as Record<string, unknown>
  if (!u || typeof u !== 'object') throw new TypeError('swim: update is not an object')
  if (typeof u.id !== 'string' || u.id.length === 0 || u.id.length > 64) throw new TypeError('swim: bad member id')
  if (typeof u.addr !== 'string' || u.addr.length > 256) throw new TypeError('swim: bad member addr')
  if (typeof u.incarnation !== 'number' || !Number.isSafeInteger(u.incarnation) || u.incarnation < 0) throw new TypeError('swim: bad incarnation')
  if (u.state !== 'alive' && u.state !== 'suspect' && u.state !== 'down') throw new TypeError('swim: bad state')
  const metaRaw = (u.meta ?? {}) as Record<string, unknown>
  if (typeof metaRaw !== 'object') throw new TypeError('swim: bad meta')
  const meta: MemberMeta = {}
  for (const key of ['hostId', 'region', 'apiUrl'] as const) {
    const v = metaRaw[key]
    if (v === undefined || v === null) continue
    if (typeof v !== 'string' || v.length > 256) throw new TypeError(`swim: bad meta.${key}`)
    meta[key] = v
  }
  return { id: u.id, addr: u.addr, incarnation: u.incarnation, state: u.state, meta }
}
