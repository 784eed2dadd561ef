import assert from 'node:assert/strict'
import { createServer, Socket, type Server } from 'node:net'
import { after, before, describe, it } from 'node:test'
import { CatalogClient, createCatalogRouteSource, upsertApp, upsertMachine, type SubscriptionChange } from '../src/catalog/index.js'
import type { RouteChange } from '../src/core/index.js'
import { dumpTables, members, restartNode, startCatalogCluster, stopNode, transact, waitFor, waitForConvergence, type CatalogCluster } from './kit/catalog-cluster.js'

// Real catalog node processes on loopback: concurrent writes converge, a SIGKILLed node is
// noticed by SWIM within seconds and catches up after a restart, subscriptions deliver changes
// across nodes and resume, and the proxy's route source drops a dead host's Machines.

async function allAlive(cluster: CatalogCluster): Promise<boolean> {
  const running = cluster.nodes.filter((n) => n.running)
  for (const node of running) {
    const view = await members(node.apiUrl)
    const alive = new Set(view.filter((m) => m.state === 'alive').map((m) => m.addr))
    if (!running.filter((o) => o !== node).every((o) => alive.has(o.gossipAddr))) return false
  }
  return true
}

describe('catalog cluster (processes on loopback)', () => {
  let cluster: CatalogCluster

  before(async () => {
    cluster = await startCatalogCluster(3, { hostIds: true })
    await waitFor(() => allAlive(cluster), { timeoutMs: 10_000, what: 'all members alive' })
  })
  after(async () => {
    await cluster?.close()
  })

  it('converges after concurrent writes to the same rows on different nodes', async () => {
    const writes: Array<Promise<unknown>> = []
    for (let round = 0; round < 15; round++) {
      cluster.nodes.forEach((node, i) => {
        const statements: unknown[] = [
          ['INSERT INTO kv (k, v, n) VALUES (?, ?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = kv.n + 1', [`k${round % 4}`, `from-${node.name}-${round}`, i]],
          ['INSERT INTO pairs (a, b, v) VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET v = excluded.v', [`p${round % 3}`, round % 2, i % 2 === 0 ? round * 1.5 : round]],
        ]
        if (round % 5 === i) statements.push(['DELETE FROM kv WHERE k = ?', [`k${(round + 1) % 4}`]])
        if (round % 7 === i) statements.push(['UPDATE kv SET note = ? WHERE k = ?', [`note-${node.name}`, `k${round % 4}`]])
        writes.push(transact(node.apiUrl, statements))
      })
    }
    await Promise.all(writes)
    const dump = await waitForConvergence(cluster.nodes)
    assert.ok(dump.split('\n').length > 5, `non-trivial state:\n${dump}`)
    const health = await Promise.all(cluster.nodes.map((n) => fetch(`${n.apiUrl}/v1/health`).then((r) => r.json() as Promise<{ gaps: number }>)))
    assert.ok(health.every((h) => h.gaps === 0))
  })

  it('notices a SIGKILLed node within a few seconds; the node catches up after a restart and is alive again', async () => {
    const [first, second, third] = cluster.nodes as [typeof cluster.nodes[0], typeof cluster.nodes[0], typeof cluster.nodes[0]]
    const killedAt = Date.now()
    await stopNode(third, 'SIGKILL')
    await waitFor(async () => {
      const views = await Promise.all([first, second].map((n) => members(n.apiUrl)))
      return views.every((view) => view.find((m) => m.addr === third.gossipAddr)?.state === 'down')
    }, { timeoutMs: 8_000, intervalMs: 50, what: 'SWIM to mark the killed node down' })
    const detectedMs = Date.now() - killedAt
    assert.ok(detectedMs < 5_000, `down after ${detectedMs} ms`)

    // Writes while it is down, on both remaining nodes.
    for (let i = 0; i < 30; i++) {
      await transact((i % 2 === 0 ? first : second).apiUrl, [['INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v', [`while-down-${i % 10}`, i]]])
    }
    const restarted = await restartNode(third)
    cluster.nodes[2] = restarted
    await waitFor(() => allAlive(cluster), { timeoutMs: 8_000, what: 'the restarted node to be alive everywhere' })
    const dump = await waitForConvergence(cluster.nodes)
    assert.match(dump, /while-down-9/)
    assert.equal(await dumpTables(restarted.apiUrl), dump)
  })

  it('a subscription on one node gets changes written on another, and resumes after its connection drops', async () => {
    const [writer, reader] = cluster.nodes as [typeof cluster.nodes[0], typeof cluster.nodes[0]]
    // A TCP relay in front of the reader's API, so the test can cut the client's connection.
    const target = new URL(reader.apiUrl)
    const sockets = new Set<Socket>()
    const relay: Server = createServer((client) => {
      const upstream = new Socket()
      upstream.connect(Number(target.port), target.hostname)
      client.pipe(upstream).pipe(client)
      sockets.add(client); sockets.add(upstream)
      const drop = () => { client.destroy(); upstream.destroy(); sockets.delete(client); sockets.delete(upstream) }
      client.on('error', drop); upstream.on('error', drop); client.on('close', drop); upstream.on('close', drop)
    })
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve))
    const client = new CatalogClient(`http://127.0.0.1:${(relay.address() as { port: number }).port}`)
    const changes: SubscriptionChange[] = []
    const snapshots: number[] = []
    try {
      const subscription = client.subscribe(["SELECT k, v FROM kv WHERE k LIKE 'sub-%'", []], {
        onSnapshot: (_columns, rows) => { snapshots.push(rows.length) },
        onChange: (change) => { changes.push(change) },
      })
      await subscription.ready
      await transact(writer.apiUrl, [["INSERT INTO kv (k, v) VALUES ('sub-1', 'one')"]])
      await waitFor(() => changes.some((c) => c.kind === 'insert' && c.values[0] === 'sub-1'), { what: 'the insert event' })

      for (const socket of sockets) socket.destroy() // the connection drops
      await transact(writer.apiUrl, [["UPDATE kv SET v = 'uno' WHERE k = 'sub-1'"], ["INSERT INTO kv (k, v) VALUES ('sub-2', 'two')"]])
      await waitFor(() => changes.some((c) => c.values[0] === 'sub-2'), { what: 'changes made while disconnected' })
      assert.deepEqual(snapshots, [0], 'resumed with from=, no second snapshot')
      assert.deepEqual(changes.map((c) => [c.kind, c.values[0], c.values[1]]), [['insert', 'sub-1', 'one'], ['update', 'sub-1', 'uno'], ['insert', 'sub-2', 'two']])
      assert.deepEqual(changes.map((c) => c.changeId), [1, 2, 3])
      subscription.close()
    } finally {
      await client.close()
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => relay.close(resolve))
    }
  })

  it("the route source stops routing to a killed host's Machines and routes to them again when it returns", async () => {
    const [first, , third] = cluster.nodes as [typeof cluster.nodes[0], typeof cluster.nodes[0], typeof cluster.nodes[0]]
    const base = { name: '', org: 'acme', region: 'fra', instance_id: '01J', private_ip: 'fdaa::1', image: 'img', services: [{ internal_port: 8080, ports: [{ port: 80, handlers: ['http'] }] }], checks: [], cordoned: false, process_group: 'app', created_at: 1, updated_at: 1 }
    await transact(first.apiUrl, [
      upsertApp({ name: 'web', org: 'acme', network: 'n1', primary_region: 'fra', hostnames: ['web.example.com'], created_at: 1, updated_at: 1 }),
      upsertMachine({ ...base, id: 'aaaaaaaaaaaaa1', app: 'web', host_id: `host-${first.name}`, state: 'started', address: '10.0.0.1', config: { image: 'img', env: { SECRET_LOOKING: 'value' }, stop_config: { signal: 'SIGINT' } } }),
      upsertMachine({ ...base, id: 'aaaaaaaaaaaaa3', app: 'web', host_id: `host-${third.name}`, state: 'started', address: '10.0.0.3', config: { image: 'img' } }),
      upsertMachine({ ...base, id: 'aaaaaaaaaaaaa9', app: 'web', host_id: `host-${third.name}`, state: 'destroyed', address: '10.0.0.9', config: { image: 'img' } }),
    ])
    const client = new CatalogClient(first.apiUrl)
    const source = createCatalogRouteSource(client)
    const received: RouteChange[] = []
    const unsubscribe = source.subscribe((change) => received.push(change))
    try {
      await source.ready
      const snapshot = received[0]
      assert.equal(snapshot?.kind, 'snapshot')
      if (snapshot?.kind !== 'snapshot') return
      assert.deepEqual(snapshot.machines.map((m) => m.machineId).sort(), ['aaaaaaaaaaaaa1', 'aaaaaaaaaaaaa3'], 'destroyed Machines are not routable')
      const m1 = snapshot.machines.find((m) => m.machineId === 'aaaaaaaaaaaaa1')!
      assert.equal(m1.primaryRegion, 'fra')
      assert.deepEqual(m1.stopConfig, { signal: 'SIGINT' })
      assert.equal(m1.services[0]!.internal_port, 8080)
      assert.deepEqual(snapshot.apps, [{ app: 'web', org: 'acme', hostnames: ['web.example.com'] }])
      // No secrets in the catalog: env values are blanked before they are written.
      const config = await client.queryObjects<{ config: string }>(["SELECT config FROM machines WHERE id = ?", ['aaaaaaaaaaaaa1']])
      assert.deepEqual(JSON.parse(config[0]!.config).env, { SECRET_LOOKING: '' })

      const killedAt = Date.now()
      await stopNode(third, 'SIGKILL')
      await waitFor(() => received.some((c) => c.kind === 'remove' && c.machineId === 'aaaaaaaaaaaaa3'), { timeoutMs: 8_000, what: "the dead host's Machine to be removed" })
      assert.ok(Date.now() - killedAt < 5_000, `removed after ${Date.now() - killedAt} ms`)
      assert.deepEqual(source.routes().map((r) => r.machineId), ['aaaaaaaaaaaaa1'])

      const restarted = await restartNode(third)
      cluster.nodes[2] = restarted
      await waitFor(() => received.some((c, i) => i > 0 && c.kind === 'upsert' && c.machine.machineId === 'aaaaaaaaaaaaa3' && received.findIndex((x) => x.kind === 'remove') < i), { timeoutMs: 8_000, what: 'the Machine to be routable again' })

      await transact(first.apiUrl, [["UPDATE machines SET state = 'stopped' WHERE id = 'aaaaaaaaaaaaa1'"]])
      await waitFor(() => received.some((c) => c.kind === 'upsert' && c.machine.machineId === 'aaaaaaaaaaaaa1' && c.machine.state === 'stopped'), { what: 'the state change' })
      await transact(first.apiUrl, [["DELETE FROM machines WHERE id = 'aaaaaaaaaaaaa1'"]])
      await waitFor(() => received.some((c) => c.kind === 'remove' && c.machineId === 'aaaaaaaaaaaaa1'), { what: 'the delete' })
    } finally {
      unsubscribe()
      source.close()
      await client.close()
    }
  })
})
