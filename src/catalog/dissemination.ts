import { type Logger, silentLogger } from '../core/index.js'
import { DEFAULT_BROADCAST_CONFIG, planOriginBroadcast, planRelay, planResend, type BroadcastConfig, type BroadcastPeer } from './broadcast-planner.js'
import type { Changeset } from './changeset.js'
import type { CrrStore } from './crr-store.js'
import { chunkChangeset, encodeAnnounceDatagram, HEADER_BYTES } from './gossip-codec.js'
import type { Random } from './seeded-random.js'

// Broadcast of changes over UDP (reference §5.4): a local transaction is sent to near peers
// first, then to random ones, re-sent a bounded number of times; receivers reassemble chunks,
// apply changesets in batches (one SQLite transaction per batch, as Corrosion's apply queue),
// pass on what they got with hops left, and ask for a sync when they notice a gap.

export interface DisseminationConfig extends BroadcastConfig {
  /** Delay between the origin's re-sends. */
  retransmitIntervalMs: number
  /** Datagram budget; larger transactions are chunked (or announced and fetched by sync). */
  maxDatagramBytes: number
  /** Chunks of a version not completed within this long are dropped; sync fetches the version. */
  reassemblyTimeoutMs: number
  /** Most re-sends pending at once (Corrosion: 500 in-flight broadcasts). */
  maxPendingResends: number
}

export const DEFAULT_DISSEMINATION_CONFIG: DisseminationConfig = {
  ...DEFAULT_BROADCAST_CONFIG,
  retransmitIntervalMs: 250,
  maxDatagramBytes: 1200,
  reassemblyTimeoutMs: 10_000,
  maxPendingResends: 500,
}

export interface DisseminatorOptions {
  store: CrrStore
  clusterTag: number
  send: (addr: string, datagram: Buffer) => void
  /** Live peers with their measured RTTs. */
  peers: () => BroadcastPeer[]
  /** Asks for an anti-entropy sync with a peer (the node debounces). */
  requestSync: (addr: string, reason: string) => void
  random: Random
  config?: Partial<DisseminationConfig>
  logger?: Logger
  /** Called after a batch of remote changesets was applied (for metrics). */
  onApplied?: (changesets: number, changes: number) => void
}

interface Reassembly {
  count: number
  parts: Map<number, Changeset>
  datagrams: Map<number, Buffer>
  hopsLeft: number
  fromAddr: string
  startedAt: number
}

interface Queued {
  changeset: Changeset
  hopsLeft: number
  fromAddr: string
  datagrams: Buffer[]
}

export interface DisseminationStats {
  broadcasts: number
  datagramsSent: number
  bytesSent: number
  changesetsReceived: number
  duplicatesReceived: number
  relays: number
  announcements: number
}

function withHops(datagram: Buffer, hops: number): Buffer {
  const copy = Buffer.from(datagram)
  copy[HEADER_BYTES] = hops
  return copy
}

export class Disseminator {
  readonly config: DisseminationConfig
  readonly stats: DisseminationStats = { broadcasts: 0, datagramsSent: 0, bytesSent: 0, changesetsReceived: 0, duplicatesReceived: 0, relays: 0, announcements: 0 }
  private readonly logger: Logger
  private readonly reassembly = new Map<string, Reassembly>()
  private queue: Queued[] = []
  private readonly queuedKeys = new Set<string>()
  private flushScheduled = false
  private readonly timers = new Set<NodeJS.Timeout>()
  private closed = false

  constructor(private readonly options: DisseminatorOptions) {
    this.config = { ...DEFAULT_DISSEMINATION_CONFIG, ...options.config }
    this.logger = options.logger ?? silentLogger
  }

  private transmit(addr: string, datagram: Buffer): void {
    this.stats.datagramsSent++
    this.stats.bytesSent += datagram.length
    this.options.send(addr, datagram)
  }

  /** Sends a local transaction's changes out. */
  broadcastLocal(changeset: Changeset): void {
    if (this.closed) return
    const peers = this.options.peers()
    if (peers.length === 0) return
    this.stats.broadcasts++
    const datagrams = chunkChangeset(this.options.clusterTag, 0, changeset, this.config.maxDatagramBytes)
    if (!datagrams) {
      // Too big for datagrams: tell peers it exists; they fetch it over sync (TCP).
      this.stats.announcements++
      const announce = encodeAnnounceDatagram(this.options.clusterTag, changeset.siteId, changeset.version)
      for (const target of planOriginBroadcast(peers, this.config, this.options.random)) this.transmit(target.addr, announce)
      return
    }
    const sent = new Set<string>()
    for (const target of planOriginBroadcast(peers, this.config, this.options.random)) {
      sent.add(target.id)
      for (const datagram of datagrams) this.transmit(target.addr, withHops(datagram, target.hopsLeft))
    }
    if (this.timers.size >= this.config.maxPendingResends) return
    for (let round = 1; round < this.config.maxTransmissions; round++) {
      const timer = setTimeout(() => {
        this.timers.delete(timer)
        if (this.closed) return
        for (const target of planResend(this.options.peers(), sent, this.config, this.options.random)) {
          sent.add(target.id)
          for (const datagram of datagrams) this.transmit(target.addr, withHops(datagram, target.hopsLeft))
        }
      }, this.config.retransmitIntervalMs * round)
      timer.unref()
      this.timers.add(timer)
    }
  }

  /** False when a CHANGES datagram for (site, version, chunk) would be a duplicate: the version
   * is held or queued, or that chunk is already buffered. Counted as a duplicate. */
  wants(site: string, version: number, chunkIndex: number): boolean {
    const key = `${site}:${version}`
    if (this.options.store.hasVersion(site, version) || this.queuedKeys.has(key) || this.reassembly.get(key)?.parts.has(chunkIndex)) {
      this.stats.changesetsReceived++
      this.stats.duplicatesReceived++
      return false
    }
    return true
  }

  /** A CHANGES datagram arrived. */
  onChanges(fromAddr: string, hopsLeft: number, chunkIndex: number, chunkCount: number, changeset: Changeset, raw: Buffer, now = Date.now()): void {
    if (this.closed) return
    this.stats.changesetsReceived++
    const key = `${changeset.siteId.toString('hex')}:${changeset.version}`
    if (this.options.store.hasVersion(changeset.siteId, changeset.version) || this.queuedKeys.has(key)) {
      this.stats.duplicatesReceived++
      return
    }
    if (chunkCount === 1) {
      this.enqueue(key, { changeset, hopsLeft, fromAddr, datagrams: [raw] })
      return
    }
    let entry = this.reassembly.get(key)
    if (!entry) {
      entry = { count: chunkCount, parts: new Map(), datagrams: new Map(), hopsLeft, fromAddr, startedAt: now }
      this.reassembly.set(key, entry)
    }
    if (entry.count !== chunkCount) return
    entry.parts.set(chunkIndex, changeset)
    entry.datagrams.set(chunkIndex, raw)
    entry.hopsLeft = Math.max(entry.hopsLeft, hopsLeft)
    if (entry.parts.size < entry.count) return
    this.reassembly.delete(key)
    const changes = [...entry.parts.entries()].sort((a, b) => a[0] - b[0]).flatMap(([, part]) => part.changes)
    this.enqueue(key, {
      changeset: { siteId: changeset.siteId, version: changeset.version, changes },
      hopsLeft: entry.hopsLeft,
      fromAddr: entry.fromAddr,
      datagrams: [...entry.datagrams.entries()].sort((a, b) => a[0] - b[0]).map(([, d]) => d),
    })
  }

  /** An ANNOUNCE datagram: a version too large for datagrams exists; fetch it by sync. */
  onAnnounce(fromAddr: string, siteId: Buffer, version: number): void {
    if (this.closed || this.options.store.hasVersion(siteId, version)) return
    this.options.requestSync(fromAddr, 'announced version')
  }

  /** Drops chunk sets that never completed (sync will fetch those versions). */
  expire(now = Date.now()): void {
    for (const [key, entry] of this.reassembly) {
      if (now - entry.startedAt > this.config.reassemblyTimeoutMs) {
        this.reassembly.delete(key)
        const [site, version] = key.split(':') as [string, string]
        if (!this.options.store.hasVersion(site, Number(version))) this.options.requestSync(entry.fromAddr, 'incomplete chunked version')
      }
    }
  }

  private enqueue(key: string, item: Queued): void {
    this.queuedKeys.add(key)
    this.queue.push(item)
    if (!this.flushScheduled) {
      this.flushScheduled = true
      setImmediate(() => this.flush())
    }
  }

  /** Applies everything queued in one transaction, then relays and checks for gaps. */
  flush(): void {
    this.flushScheduled = false
    if (this.closed || this.queue.length === 0) return
    const batch = this.queue
    this.queue = []
    this.queuedKeys.clear()
    const store = this.options.store
    const fresh = batch.filter((item) => !store.hasVersion(item.changeset.siteId, item.changeset.version))
    if (fresh.length === 0) return
    let outcome
    try {
      outcome = store.applyChangesets(fresh.map((item) => item.changeset))
    } catch (err) {
      this.logger.error('applying broadcast changes failed', { err })
      return
    }
    this.options.onApplied?.(outcome.versionsApplied, outcome.changesApplied)
    const deferred = new Set(outcome.deferred.map((d) => `${d.siteId}:${d.version}`))
    const peers = this.options.peers()
    const gapSources = new Map<string, string>()
    for (const item of fresh) {
      const site = item.changeset.siteId.toString('hex')
      if (deferred.has(`${site}:${item.changeset.version}`)) continue
      if (item.hopsLeft > 0) {
        const sender = peers.find((p) => p.addr === item.fromAddr)?.id
        const exclude = new Set([site, ...(sender ? [sender] : [])])
        for (const target of planRelay(peers, item.hopsLeft, exclude, this.config, this.options.random)) {
          this.stats.relays++
          for (const datagram of item.datagrams) this.transmit(target.addr, withHops(datagram, target.hopsLeft))
        }
      }
      const known = store.knownVersions().get(site)
      if (known && known.gaps().length > 0) gapSources.set(site, item.fromAddr)
    }
    for (const addr of new Set(gapSources.values())) this.options.requestSync(addr, 'gap in versions')
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    for (const timer of this.timers) clearTimeout(timer)
    this.timers.clear()
    this.queue = []
    this.reassembly.clear()
  }
}
