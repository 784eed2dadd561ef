import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readdirSync, existsSync } from 'node:fs'
import { runCommand } from '../src/core/command.js'
import { CatalogClient } from '../src/catalog/index.js'
import { wireguardInterfaceName } from '../src/network/index.js'
import { startCluster, type Cluster } from './kit/cluster.js'
import { eventually } from './kit/eventually.js'

// `hangar host --mesh` runs the WireGuard mesh itself: peers are learnt over NATS from the other
// hosts' heartbeats, the catalog gossips over it (so its SWIM sees the WAN's delays), and stopping
// the host removes its interface.

test('hosts run the WireGuard mesh themselves: peers learnt over NATS, catalog gossip over it, the WAN delay measured', { timeout: 180_000 }, async (t) => {
  let cluster: Cluster | undefined
  t.after(async () => { await cluster?.close() })
  cluster = await startCluster({ regions: ['ams', 'sjc', 'fra'], delays: { 'ams:sjc': 25, 'ams:fra': 5, 'sjc:fra': 30 }, meshBy: 'hosts', proxy: false })
  const [ams, sjc, fra] = cluster.hosts as [Cluster['hosts'][number], Cluster['hosts'][number], Cluster['hosts'][number]]

  // Each host made its interface and found both others.
  for (const host of cluster.hosts) {
    const [command, args] = host.exec('wg', ['show', wireguardInterfaceName(host.hostId), 'peers'])
    const peers = await eventually(`${host.name}'s mesh peers`, async () => {
      const out = (await runCommand(command, args, { allowFailure: true })).stdout.trim().split('\n').filter(Boolean)
      return out.length === 2 ? out : undefined
    }, 20_000)
    assert.equal(peers.length, 2)
  }
  const rtt = await eventually('the mesh between ams and sjc', async () => { try { const r = await cluster!.overlayRtt(ams, sjc, 5); return r.received > 0 ? r : undefined } catch { return undefined } }, 30_000)
  assert.ok(rtt.minMs >= 49 && rtt.minMs < 80, `ams↔sjc over the hosts' own mesh: ${JSON.stringify(rtt)} (25 ms each way)`)
  // Both sides add each other at once, so a pair's first handshake may wait out WireGuard's 5 s retry.
  const near = await eventually('the mesh between ams and fra', async () => { try { const r = await cluster!.overlayRtt(ams, fra, 5); return r.received > 0 ? r : undefined } catch { return undefined } }, 30_000)
  assert.ok(near.minMs >= 9.5 && near.minMs < 30, `ams↔fra: ${JSON.stringify(near)} (5 ms each way)`)

  // The catalog gossips over the mesh: every node sees all three hosts, and writes converge.
  const catalog = new CatalogClient(ams.catalogUrl)
  t.after(() => catalog.close())
  await eventually('three hosts in ams’s catalog', async () => (await catalog.queryObjects<{ id: string }>('SELECT id FROM hosts')).length === 3 || undefined, 30_000)
  const remote = new CatalogClient(fra.catalogUrl)
  t.after(() => remote.close())
  await eventually('sjc’s host row replicated to fra', async () => (await remote.queryObjects<{ id: string }>(['SELECT id FROM hosts WHERE id = ?', [sjc.hostId]])).length === 1 || undefined, 30_000)

  // Stopping a host removes its interface (it belongs to `hangar host`).
  const name = wireguardInterfaceName(fra.hostId)
  await fra.stop('SIGTERM')
  const [command, args] = fra.exec('ip', ['link', 'show', name])
  await eventually('fra’s interface gone', async () => (await runCommand(command, args, { allowFailure: true })).code !== 0 || undefined, 15_000)
  assert.ok(!existsSync(`/var/run/wireguard/${name}.sock`) || !readdirSync('/var/run/wireguard').includes(`${name}.sock`))
})
