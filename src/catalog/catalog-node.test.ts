import assert from 'node:assert/strict'
import { createSocket } from 'node:dgram'
import { after, before, describe, it } from 'node:test'
import { silentLogger } from '../core/index.js'
import { startCatalogNode, type CatalogNode } from './catalog-node.js'
import { clusterTag, encodeSwimDatagram } from './gossip-codec.js'
import { parseHostPort } from './net-address.js'

// Two in-process nodes on loopback, attacked with garbage on the gossip port (UDP and the TCP
// sync endpoint) and approached by a node of another cluster: they shrug it off and keep
// replicating.

const SCHEMA = 'CREATE TABLE kv (k TEXT NOT NULL PRIMARY KEY, v);'

async function until(what: string, ok: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

describe('catalog node under hostile input', () => {
  let a: CatalogNode
  let b: CatalogNode

  before(async () => {
    a = await startCatalogNode({ dbPath: ':memory:', schemaSql: SCHEMA, clusterId: 'c1', logger: silentLogger })
    b = await startCatalogNode({ dbPath: ':memory:', schemaSql: SCHEMA, clusterId: 'c1', bootstrap: [a.gossipAddr], logger: silentLogger })
    await until('members', () => a.members().some((m) => m.state === 'alive') && b.members().some((m) => m.state === 'alive'))
  })
  after(async () => {
    await Promise.all([a?.close(), b?.close()])
  })

  it('drops garbage and foreign datagrams, counts them, and keeps replicating', async () => {
    const { host, port } = parseHostPort(a.gossipAddr)
    const socket = createSocket('udp4')
    const garbage = [
      Buffer.from('not a datagram'),
      Buffer.alloc(0),
      Buffer.from([0x48, 0x43, 1, 2, 0, 0, 0, 0, 1, 2, 3]),
      Buffer.from([0x48, 0x43, 1, 9, ...Buffer.alloc(4)]),
      encodeSwimDatagram(clusterTag('someone-else'), { type: 'join', from: { id: 'ff'.repeat(16), addr: '127.0.0.1:9', incarnation: 1, state: 'alive', meta: {} }, updates: [] }),
      (() => { const d = encodeSwimDatagram(clusterTag('c1'), { type: 'ping', seq: 1, from: { id: 'ee'.repeat(16), addr: '127.0.0.1:9', incarnation: 1, state: 'alive', meta: {} }, updates: [] }); return d.subarray(0, d.length - 3) })(),
    ]
    for (const datagram of garbage) await new Promise<void>((resolve) => socket.send(datagram, port, host, () => resolve()))
    socket.close()
    await until('garbage counted', () => a.stats().badDatagrams >= garbage.length - 1)
    assert.ok(!a.members().some((m) => m.id === 'ff'.repeat(16)), 'a member of another cluster was not admitted')
    a.transact([{ sql: "INSERT INTO kv VALUES ('after', 'garbage')" }])
    await until('replication still works', () => b.store.dumpTable('kv').length === 1)
  })

  it('answers bad sync requests with 4xx and keeps serving good ones', async () => {
    const url = `http://${a.gossipAddr}/v1/sync`
    assert.equal((await fetch(url, { method: 'POST', body: Buffer.from('junk-junk-junk') })).status, 409)
    const tag = Buffer.alloc(4)
    tag.writeUInt32BE(clusterTag('c1'))
    const bad = await fetch(url, { method: 'POST', body: Buffer.concat([tag, Buffer.from([1, 2, 3])]) })
    assert.equal(bad.status, 400)
    assert.equal((await fetch(`http://${a.gossipAddr}/anything`)).status, 404)
    a.transact([{ sql: "INSERT INTO kv VALUES ('still', 'syncing')" }])
    await until('replication', () => b.store.dumpTable('kv').some((r) => r.includes('still')))
  })

  it('nodes of another cluster never join', async () => {
    const stranger = await startCatalogNode({ dbPath: ':memory:', schemaSql: SCHEMA, clusterId: 'c2', bootstrap: [a.gossipAddr], logger: silentLogger })
    try {
      await new Promise((resolve) => setTimeout(resolve, 700))
      assert.equal(stranger.members().length, 0)
      assert.ok(!a.members().some((m) => m.addr === stranger.gossipAddr))
    } finally {
      await stranger.close()
    }
  })
})
