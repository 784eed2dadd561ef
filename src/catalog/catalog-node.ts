import { createSocket, type Socket } from 'node:dgram'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { isIPv6 } from 'node:net'
import { join } from 'node:path'
import { createLogger, InvalidArgumentError, type Logger } from '../core/index.js'
import { createCatalogApiServer } from './api-server.js'
import { rttRing, type BroadcastPeer } from './broadcast-planner.js'
import { siteIdToUuid } from './changeset.js'
import { CrrStore, type StatementInput, type TransactionOutcome } from './crr-store.js'
import { DEFAULT_DISSEMINATION_CONFIG, Disseminator, type DisseminationConfig } from './dissemination.js'
import { clusterTag as tagOf, DatagramKind, decodeDatagram, encodeSwimDatagram, peekChanges } from './gossip-codec.js'
import { formatHostPort, hostUrl, parseHostPort, type HostPort } from './net-address.js'
import type { Random } from './seeded-random.js'
import { SubscriptionManager } from './subscriptions.js'
import { SwimMachine, type MemberEvent, type MemberView, type SwimConfig, type SwimOutput } from './swim.js'
import { createSyncHandler, SyncClient, type SyncStats } from './sync-transport.js'

// One catalog node (Corrosion's agent): the CRR store, SWIM membership and change broadcast on a
// UDP gossip port, anti-entropy sync on the same port number over TCP, and the HTTP API.
//
//      HTTP API ──► transact ──► CrrStore ──► Disseminator ──UDP──► peers
//                                   ▲              ▲
//      SyncClient ──TCP──► peers ───┘   UDP ──► decode ──► SwimMachine (membership, RTTs)

export interface CatalogNodeOptions {
  /** SQLite database path (created when missing). */
  dbPath: string
  /** Where the gossip socket binds, host:port (UDP for SWIM and broadcasts, TCP for sync). Port 0 picks one. */
  gossipAddr?: string
  /** The gossip address peers should use, when it differs from the bound one (e.g. bound to 0.0.0.0). */
  advertiseAddr?: string
  /** Where the HTTP API binds, host:port. */
  apiAddr?: string
  /** Gossip addresses of nodes to join through (members remembered from earlier runs are added). */
  bootstrap?: string[]
  /** Schema SQL (CREATE TABLE / CREATE INDEX only). */
  schemaSql?: string
  /** Schema files, or directories whose *.sql files are read in name order. */
  schemaPaths?: string[]
  /** Nodes of different clusters ignore each other; a database is bound to one cluster. */
  clusterId?: string
  /** This node's host id (Hangar's hosts.id), gossiped with membership so readers can tell which
   * host a down member was. */
  hostId?: string
  region?: string
  /** Bearer token the HTTP API requires, if set. */
  apiToken?: string
  /** Anti-entropy: a sync round every syncIntervalMs (randomised ±50%), with this many peers. */
  syncIntervalMs?: number
  syncPeersPerRound?: number
  swim?: Partial<SwimConfig>
  dissemination?: Partial<DisseminationConfig>
  /** Test hook: a fixed site id for a new database. */
  siteId?: Buffer
  logger?: Logger
  random?: Random
}

export interface CatalogStats {
  localTransactions: number
  changesetsApplied: number
  changesApplied: number
  changesSeen: number
  broadcasts: number
  broadcastDatagrams: number
  broadcastBytes: number
  changesetsReceived: number
  duplicatesReceived: number
  relays: number
  swimDatagrams: number
  swimBytes: number
  syncRounds: number
  syncFailures: number
  syncBytesSent: number
  syncBytesReceived: number
  syncServed: number
  badDatagrams: number
  subscriptions: number
}

export interface CatalogNode {
  /** The node's site id as a UUID (Corrosion's actor_id). */
  readonly siteId: string
  readonly apiUrl: string
  readonly gossipAddr: string
  readonly store: CrrStore
  /** Runs statements as one transaction and broadcasts its changes. */
  transact(statements: StatementInput[]): TransactionOutcome
  members(): MemberView[]
  stats(): CatalogStats
  close(): Promise<void>
}

function readSchemaSources(options: CatalogNodeOptions): string {
  const parts: string[] = []
  if (options.schemaSql) parts.push(options.schemaSql)
  for (const path of options.schemaPaths ?? []) {
    let stat
    try { stat = statSync(path) } catch { throw new InvalidArgumentError(`schema path ${path} does not exist`) }
    const files = stat.isDirectory() ? readdirSync(path).filter((f) => f.endsWith('.sql')).sort().map((f) => join(path, f)) : [path]
    for (const file of files) parts.push(readFileSync(file, 'utf8'))
  }
  return parts.join(';\n')
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => { server.off('listening', onListening); reject(err) }
    const onListening = () => { server.off('error', onError); resolve() }
    server.once('error', onError)
    server.once('listening', onListening)
    server.listen(port, host)
  })
}

async function bindGossip(address: HostPort, syncServer: Server): Promise<{ udp: Socket; port: number }> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const udp = createSocket({ type: isIPv6(address.host) ? 'udp6' : 'udp4' })
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject)
      udp.bind(address.port, address.host, () => { udp.off('error', reject); resolve() })
    })
    const port = udp.address().port
    try {
      await listen(syncServer, port, address.host)
      return { udp, port }
    } catch (err) {
      udp.close()
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || address.port !== 0) throw err
    }
  }
  throw new InvalidArgumentError(`could not find a port free for both UDP and TCP on ${address.host}`)
}

async function closeServer(server: Server): Promise<void> {
  if (!server.listening) return
  await new Promise<void>((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  })
}

export async function startCatalogNode(options: CatalogNodeOptions): Promise<CatalogNode> {
  const logger = options.logger ?? createLogger('catalog')
  const random: Random = options.random ?? Math.random
  const clusterId = options.clusterId ?? 'hangar'
  const tag = tagOf(clusterId)
  const store = new CrrStore({ path: options.dbPath, clusterId, siteId: options.siteId, logger })
  const cleanups: Array<() => Promise<void> | void> = [() => store.close()]
  const fail = async (err: unknown): Promise<never> => {
    for (const cleanup of cleanups.reverse()) await Promise.resolve(cleanup()).catch(() => {})
    throw err
  }
  try {
    const schema = readSchemaSources(options)
    if (schema.trim().length > 0) store.applySchema(schema)
  } catch (err) {
    return fail(err)
  }

  const syncStats: SyncStats = { rounds: 0, failures: 0, bytesSent: 0, bytesReceived: 0, changesetsReceived: 0, served: 0 }
  const siteHex = store.siteHex
  const syncServer = createServer(createSyncHandler(store, tag, syncStats, logger))
  syncServer.keepAliveTimeout = 30_000
  cleanups.push(() => closeServer(syncServer))
  let udp: Socket
  let gossipAddr: string
  let apiUrl: string
  const subscriptions = new SubscriptionManager(store, { logger })
  cleanups.push(() => subscriptions.close())
  let swim: SwimMachine
  let disseminator: Disseminator
  const counters = { swimDatagrams: 0, swimBytes: 0, badDatagrams: 0 }

  const backend = {
    store,
    subscriptions,
    transact: (statements: StatementInput[]) => node.transact(statements),
    health: () => health(),
    members: () => node.members().map((m) => ({ id: m.id, site_id: siteIdToUuid(Buffer.from(m.id, 'hex')), addr: m.addr, state: m.state, incarnation: m.incarnation, rtt_ms: m.rttMs, host_id: m.meta.hostId ?? null, region: m.meta.region ?? null, api_url: m.meta.apiUrl ?? null })),
  }
  const apiServer = createCatalogApiServer(backend, { token: options.apiToken, logger })
  cleanups.push(() => closeServer(apiServer))
  try {
    const api = parseHostPort(options.apiAddr ?? '127.0.0.1:0', 'apiAddr')
    await listen(apiServer, api.port, api.host)
    const apiPort = (apiServer.address() as { port: number }).port
    apiUrl = hostUrl(api.host === '0.0.0.0' || api.host === '::' ? '127.0.0.1' : api.host, apiPort)
    const gossip = parseHostPort(options.gossipAddr ?? '127.0.0.1:0', 'gossipAddr')
    const bound = await bindGossip(gossip, syncServer)
    udp = bound.udp
    cleanups.push(() => new Promise<void>((resolve) => { try { udp.close(() => resolve()) } catch { resolve() } }))
    try { udp.setRecvBufferSize(4 * 1024 * 1024); udp.setSendBufferSize(4 * 1024 * 1024) } catch { /* best effort */ }
    gossipAddr = options.advertiseAddr ?? formatHostPort(gossip.host, bound.port)
    if (options.advertiseAddr) parseHostPort(options.advertiseAddr, 'advertiseAddr')
  } catch (err) {
    return fail(err)
  }

  const addressCache = new Map<string, HostPort>()
  const sendDatagram = (addr: string, datagram: Buffer) => {
    let target = addressCache.get(addr)
    if (!target) {
      try { target = parseHostPort(addr) } catch { return }
      if (addressCache.size > 10_000) addressCache.clear()
      addressCache.set(addr, target)
    }
    udp.send(datagram, target.port, target.host, () => { /* unreachable peers are SWIM's business */ })
  }

  swim = new SwimMachine(
    { id: siteHex, addr: gossipAddr, meta: { ...(options.hostId ? { hostId: options.hostId } : {}), ...(options.region ? { region: options.region } : {}), apiUrl } },
    { config: options.swim, random, incarnation: Date.now() },
  )

  // ── sync scheduling ──────────────────────────────────────────────────────────────────────
  const syncClient = new SyncClient(store, tag, syncStats, logger)
  cleanups.push(() => syncClient.close())
  const syncAbort = new AbortController()
  const peerSync = new Map<string, { running: boolean; again: boolean; lastAt: number; timer: NodeJS.Timeout | null }>()
  let syncsInFlight = 0
  const MAX_SYNCS_IN_FLIGHT = 4
  const MIN_SYNC_SPACING_MS = 300
  let closed = false
  const requestSync = (addr: string, reason: string) => {
    if (closed || addr === gossipAddr) return
    let state = peerSync.get(addr)
    if (!state) { state = { running: false, again: false, lastAt: 0, timer: null }; peerSync.set(addr, state) }
    if (state.running) { state.again = true; return }
    if (state.timer) return
    const delay = Math.max(20, MIN_SYNC_SPACING_MS - (Date.now() - state.lastAt))
    const entry = state
    entry.timer = setTimeout(() => {
      entry.timer = null
      if (closed) return
      if (syncsInFlight >= MAX_SYNCS_IN_FLIGHT) { entry.timer = setTimeout(() => { entry.timer = null; requestSync(addr, reason) }, 100); return }
      entry.running = true
      syncsInFlight++
      syncClient.pullFrom(addr, syncAbort.signal)
        .then((applied) => { if (applied > 0) logger.debug('sync applied', { peer: addr, reason, applied }) })
        .catch((err) => logger.debug('sync failed', { peer: addr, reason, err }))
        .finally(() => {
          syncsInFlight--
          entry.running = false
          entry.lastAt = Date.now()
          if (entry.again) { entry.again = false; requestSync(addr, 'again') }
        })
    }, delay)
    entry.timer.unref()
  }

  // ── dissemination ────────────────────────────────────────────────────────────────────────
  const rings = new Map<string, number>()
  const peers = (): BroadcastPeer[] => swim.liveMembers().map((m) => {
    const ring = rttRing(m.rttMs, rings.get(m.id))
    rings.set(m.id, ring)
    return { id: m.id, addr: m.addr, rttMs: m.rttMs, ring }
  })
  disseminator = new Disseminator({
    store, clusterTag: tag, send: sendDatagram, peers, requestSync, random, logger,
    config: { ...DEFAULT_DISSEMINATION_CONFIG, ...options.dissemination },
  })
  cleanups.push(() => disseminator.close())

  // ── membership ───────────────────────────────────────────────────────────────────────────
  const onMemberEvent = (event: MemberEvent) => {
    const m = event.member
    logger.info(`member ${event.type}`, { member: m.id, addr: m.addr, hostId: m.meta.hostId, incarnation: m.incarnation })
    try {
      store.writeMember({ siteId: m.id, hostId: m.meta.hostId ?? '', region: m.meta.region ?? '', addr: m.addr, apiUrl: m.meta.apiUrl ?? '', state: m.state, incarnation: m.incarnation, rttMs: m.rttMs })
    } catch (err) {
      logger.warn('could not record member', { err })
    }
    // A member that (re)appears may hold what this node missed, and the other way round.
    if (event.type === 'up' || event.type === 'alive') requestSync(m.addr, `member ${event.type}`)
  }
  const handleSwim = (outputs: SwimOutput[]) => {
    for (const output of outputs) {
      if (output.kind === 'send') {
        const datagram = encodeSwimDatagram(tag, output.message)
        counters.swimDatagrams++
        counters.swimBytes += datagram.length
        sendDatagram(output.to, datagram)
      } else {
        onMemberEvent(output.event)
      }
    }
  }

  udp.on('message', (buffer, rinfo) => {
    if (closed) return
    const from = formatHostPort(rinfo.address, rinfo.port)
    // Most change datagrams in a busy cluster are duplicates (relays, re-sends): skip decoding them.
    const peek = peekChanges(buffer)
    if (peek && buffer.readUInt32BE(4) === tag && !disseminator.wants(peek.site, peek.version, peek.chunkIndex)) return
    let datagram
    try {
      datagram = decodeDatagram(buffer, tag)
    } catch (err) {
      counters.badDatagrams++
      logger.debug('dropped datagram', { from, err })
      return
    }
    try {
      switch (datagram.kind) {
        case DatagramKind.Swim: handleSwim(swim.receive(from, datagram.message, performance.now())); break
        case DatagramKind.Changes: disseminator.onChanges(from, datagram.hopsLeft, datagram.chunkIndex, datagram.chunkCount, datagram.changeset, buffer); break
        case DatagramKind.Announce: disseminator.onAnnounce(from, datagram.siteId, datagram.version); break
      }
    } catch (err) {
      counters.badDatagrams++
      logger.warn('datagram handling failed', { from, err })
    }
  })
  udp.on('error', (err) => logger.warn('gossip socket error', { err }))

  // Members remembered from earlier runs help a restarted node find the cluster again.
  const remembered = store.readMembers().filter((m) => m.siteId !== siteHex && m.addr).map((m) => m.addr)
  const bootstrap = [...new Set([...(options.bootstrap ?? []), ...remembered])].filter((addr) => addr !== gossipAddr)
  handleSwim(swim.join(bootstrap, performance.now()))

  // SWIM runs on the monotonic clock (sub-millisecond RTTs on a LAN); incarnations use wall time.
  const swimTimer = setInterval(() => { if (!closed) handleSwim(swim.tick(performance.now())) }, 20)
  const housekeeping = setInterval(() => {
    if (closed) return
    disseminator.expire()
    // Refresh RTTs in the members table now and then (state changes are written at once).
    for (const m of swim.liveMembers()) {
      try { store.writeMember({ siteId: m.id, hostId: m.meta.hostId ?? '', region: m.meta.region ?? '', addr: m.addr, apiUrl: m.meta.apiUrl ?? '', state: m.state, incarnation: m.incarnation, rttMs: m.rttMs }) } catch { /* closed */ }
    }
  }, 10_000)
  housekeeping.unref()
  const syncIntervalMs = options.syncIntervalMs ?? 1000
  const syncPeersPerRound = options.syncPeersPerRound ?? 2
  let syncTimer: NodeJS.Timeout
  const scheduleSyncRound = () => {
    syncTimer = setTimeout(() => {
      if (closed) return
      const live = swim.liveMembers().filter((m) => m.state === 'alive')
      for (let i = 0; i < Math.min(syncPeersPerRound, live.length); i++) {
        const j = i + Math.floor(random() * (live.length - i))
        const chosen = live[j]!
        live[j] = live[i]!
        live[i] = chosen
        requestSync(chosen.addr, 'periodic')
      }
      scheduleSyncRound()
    }, syncIntervalMs * (0.5 + random()))
  }
  scheduleSyncRound()

  const health = () => {
    const members = swim.memberViews()
    let gaps = 0
    for (const ranges of store.knownVersions().values()) for (const [s, e] of ranges.gaps()) gaps += e - s + 1
    return {
      status: 'ok',
      site_id: siteIdToUuid(store.siteId),
      cluster_id: clusterId,
      host_id: options.hostId ?? null,
      region: options.region ?? null,
      gossip_addr: gossipAddr,
      members: { alive: members.filter((m) => m.state === 'alive').length, suspect: members.filter((m) => m.state === 'suspect').length, down: members.filter((m) => m.state === 'down').length },
      gaps,
      stats: node.stats(),
    }
  }

  let closing: Promise<void> | null = null
  const node: CatalogNode = {
    siteId: siteIdToUuid(store.siteId),
    apiUrl,
    gossipAddr,
    store,
    transact(statements) {
      const outcome = store.transact(statements)
      if (outcome.changeset) disseminator.broadcastLocal(outcome.changeset)
      return outcome
    },
    members: () => swim.memberViews(),
    stats: () => ({
      localTransactions: store.stats.localTransactions,
      changesetsApplied: store.stats.changesetsApplied,
      changesApplied: store.stats.changesApplied,
      changesSeen: store.stats.changesSeen,
      broadcasts: disseminator.stats.broadcasts,
      broadcastDatagrams: disseminator.stats.datagramsSent,
      broadcastBytes: disseminator.stats.bytesSent,
      changesetsReceived: disseminator.stats.changesetsReceived,
      duplicatesReceived: disseminator.stats.duplicatesReceived,
      relays: disseminator.stats.relays,
      swimDatagrams: counters.swimDatagrams,
      swimBytes: counters.swimBytes,
      syncRounds: syncStats.rounds,
      syncFailures: syncStats.failures,
      syncBytesSent: syncStats.bytesSent,
      syncBytesReceived: syncStats.bytesReceived,
      syncServed: syncStats.served,
      badDatagrams: counters.badDatagrams,
      subscriptions: subscriptions.size,
    }),
    close() {
      if (closing) return closing
      closing = (async () => {
        closed = true
        clearInterval(swimTimer)
        clearInterval(housekeeping)
        clearTimeout(syncTimer)
        for (const state of peerSync.values()) if (state.timer) clearTimeout(state.timer)
        syncAbort.abort()
        // Say goodbye so peers mark this node down at once rather than after a suspicion.
        for (const output of swim.leave()) if (output.kind === 'send') sendDatagram(output.to, encodeSwimDatagram(tag, output.message))
        await new Promise((resolve) => setImmediate(resolve))
        for (const cleanup of cleanups.reverse()) {
          try { await cleanup() } catch (err) { logger.warn('close step failed', { err }) }
        }
      })()
      return closing
    },
  }
  logger.info('catalog node started', { siteId: node.siteId, apiUrl, gossipAddr, bootstrap, clusterId })
  return node
}
