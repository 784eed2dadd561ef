import assert from 'node:assert/strict'
import { afterEach, describe, it } from 'node:test'
import type { BroadcastPeer } from './broadcast-planner.js'
import { CrrStore } from './crr-store.js'
import { Disseminator, type DisseminationConfig } from './dissemination.js'
import { clusterTag, DatagramKind, decodeDatagram } from './gossip-codec.js'
import { seededRandom } from './seeded-random.js'

// Dissemination over a fake datagram network: real stores, real encoding, and a switch that
// can drop datagrams, so every path (direct, chunked, relayed, announced, gap → sync) is shown.

const SCHEMA = 'CREATE TABLE kv (k TEXT NOT NULL PRIMARY KEY, v);'
const TAG = clusterTag('test')

interface Peer { addr: string; store: CrrStore; node: Disseminator; syncRequests: string[] }

function network(count: number, rtts: (from: number, to: number) => number | null, config: Partial<DisseminationConfig> = {}) {
  const peers: Peer[] = []
  const dropped = new Set<string>()
  const sent: Array<{ from: string; to: string; bytes: number }> = []
  for (let i = 0; i < count; i++) {
    const addr = `10.0.0.${i + 1}:4001`
    const store = new CrrStore({ path: ':memory:', siteId: Buffer.alloc(16, i + 1) })
    store.applySchema(SCHEMA)
    const peer: Peer = { addr, store, syncRequests: [], node: undefined as unknown as Disseminator }
    peer.node = new Disseminator({
      store, clusterTag: TAG, random: seededRandom(i + 1), config: { retransmitIntervalMs: 5, ...config },
      peers: () => peers.filter((p) => p !== peer).map((p): BroadcastPeer => ({ id: p.store.siteHex, addr: p.addr, rttMs: rtts(i, peers.indexOf(p)) })),
      requestSync: (from) => peer.syncRequests.push(from),
      send: (to, datagram) => {
        sent.push({ from: addr, to, bytes: datagram.length })
        if (dropped.has(to)) return
        const target = peers.find((p) => p.addr === to)!
        const decoded = decodeDatagram(datagram, TAG)
        queueMicrotask(() => {
          if (decoded.kind === DatagramKind.Changes) target.node.onChanges(addr, decoded.hopsLeft, decoded.chunkIndex, decoded.chunkCount, decoded.changeset, datagram)
          else if (decoded.kind === DatagramKind.Announce) target.node.onAnnounce(addr, decoded.siteId, decoded.version)
        })
      },
    })
    peers.push(peer)
  }
  return { peers, dropped, sent, close: () => peers.forEach((p) => { p.node.close(); p.store.close() }) }
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 30))

describe('dissemination', () => {
  let net: ReturnType<typeof network> | undefined
  afterEach(() => { net?.close(); net = undefined })

  it('a local write reaches every near peer directly, once each', async () => {
    net = network(5, () => 0.2)
    const [origin, ...others] = net.peers
    origin!.node.broadcastLocal(origin!.store.transact([{ sql: "INSERT INTO kv VALUES ('a', 1)" }]).changeset!)
    await settle()
    for (const peer of others) assert.deepEqual(peer.store.dumpTable('kv'), ['t"a"|i1'])
    assert.equal(net.sent.length, 4, 'no re-sends when every peer was sent to directly')
    assert.ok(net.sent.every((s) => s.bytes < 100), `datagram sizes ${net.sent.map((s) => s.bytes)}`)
  })

  it('far peers are reached through relays and re-sends: 3 regions, nobody near the origin', async () => {
    // Region of node i is i % 3; 1 ms inside a region, 80 ms across.
    net = network(12, (a, b) => (a % 3 === b % 3 ? 1 : 80))
    const origin = net.peers[0]!
    for (let i = 0; i < 10; i++) origin.node.broadcastLocal(origin.store.transact([{ sql: 'INSERT INTO kv VALUES (?, ?)', params: [`k${i}`, BigInt(i)] }]).changeset!)
    const expected = origin.store.dumpTable('kv')
    // Relays and re-sends take a few timer turns; a loaded machine stretches them.
    const deadline = Date.now() + 5000
    while (Date.now() < deadline && !net.peers.every((peer) => JSON.stringify(peer.store.dumpTable('kv')) === JSON.stringify(expected))) await settle()
    for (const peer of net.peers) assert.deepEqual(peer.store.dumpTable('kv'), expected, peer.addr)
    // Bounded: a few transmissions per change per peer (re-sends and relays vary with timer
    // turns, so the bound leaves room for a loaded machine; a flood would be thousands).
    assert.ok(net.sent.length < 10 * 11 * 6, `${net.sent.length} datagrams for 10 changes to 11 peers`)
  })

  it('a large transaction travels in chunks and is applied whole', async () => {
    net = network(3, () => 0.2, { maxDatagramBytes: 300 })
    const [origin, peer] = net.peers
    const rows = Array.from({ length: 40 }, (_, i) => `('row-${i}', '${'v'.repeat(20)}')`).join(', ')
    origin!.node.broadcastLocal(origin!.store.transact([{ sql: `INSERT INTO kv VALUES ${rows}` }]).changeset!)
    await settle()
    assert.ok(net.sent.length > 2 * 5, 'several chunks per peer')
    assert.equal(peer!.store.dumpTable('kv').length, 40)
  })

  it('a transaction too large for datagrams is announced, and receivers ask for a sync', async () => {
    net = network(2, () => 0.2)
    const [origin, peer] = net.peers
    origin!.node.broadcastLocal(origin!.store.transact([{ sql: 'INSERT INTO kv VALUES (?, ?)', params: ['big', 'x'.repeat(70_000)] }]).changeset!)
    await settle()
    assert.deepEqual(peer!.store.dumpTable('kv'), [])
    assert.deepEqual(peer!.syncRequests, [origin!.addr])
  })

  it('duplicates are ignored, and a gap in a site\'s versions asks for a sync', async () => {
    net = network(2, () => 0.2)
    const [origin, peer] = net.peers
    net.dropped.add(peer!.addr)
    origin!.node.broadcastLocal(origin!.store.transact([{ sql: "INSERT INTO kv VALUES ('lost', 1)" }]).changeset!)
    await settle()
    net.dropped.clear()
    const second = origin!.store.transact([{ sql: "INSERT INTO kv VALUES ('second', 2)" }]).changeset!
    origin!.node.broadcastLocal(second)
    origin!.node.broadcastLocal(second)
    await settle()
    assert.deepEqual(peer!.store.dumpTable('kv'), ['t"second"|i2'])
    assert.equal(peer!.node.stats.duplicatesReceived, 1)
    assert.deepEqual(peer!.syncRequests, [origin!.addr], 'version 1 is missing: sync')
  })
})
