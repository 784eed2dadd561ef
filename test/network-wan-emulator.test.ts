import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createSocket, type Socket } from 'node:dgram'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { randomBytes } from 'node:crypto'
import { runCommand } from '../src/core/command.js'
import { WireguardMesh } from '../src/network/index.js'
import { WanRelay, oneWayDelayMs } from './kit/wan-emulator.js'
import { createNetnsStar } from './kit/netns-star.js'
import { startHub } from './kit/netns-hub.js'

// The WAN emulator on its own: datagrams between fake hosts on loopback (exact timing, order,
// partition), then the real use — a WireGuard tunnel between two isolated namespaces whose only
// path is the relay in the hub namespace.

interface FakeHost { socket: Socket; endpoint: string; received: Array<{ data: string; at: number; from: string }> }

async function fakeHost(t: { after(fn: () => unknown): void }): Promise<FakeHost> {
  const socket = createSocket('udp4')
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', () => resolve()))
  t.after(() => new Promise<void>((resolve) => socket.close(() => resolve())))
  const host: FakeHost = { socket, endpoint: `127.0.0.1:${socket.address().port}`, received: [] }
  socket.on('message', (data, from) => host.received.push({ data: data.toString(), at: performance.now(), from: `${from.address}:${from.port}` }))
  return host
}

function send(host: FakeHost, endpoint: string, data: string): number {
  const [address, port] = endpoint.split(':')
  host.socket.send(data, Number(port), address)
  return performance.now()
}

async function until<T>(probe: () => T | undefined, timeoutMs = 2000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = probe()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error('timed out')
    await new Promise((resolve) => setTimeout(resolve, 2))
  }
}

test('delay table: listed pairs both ways unless a direction is given, defaults for the rest', () => {
  const options = { delays: { 'ams:sjc': 70, 'sjc:ams': 80, 'ams:fra': 5 }, defaultDelayMs: 40, sameRegionDelayMs: 1 }
  assert.equal(oneWayDelayMs(options, 'ams', 'sjc'), 70)
  assert.equal(oneWayDelayMs(options, 'sjc', 'ams'), 80)
  assert.equal(oneWayDelayMs(options, 'fra', 'ams'), 5)
  assert.equal(oneWayDelayMs(options, 'fra', 'sjc'), 40)
  assert.equal(oneWayDelayMs(options, 'fra', 'fra'), 1)
  assert.equal(oneWayDelayMs({}, 'a', 'b'), 0)
  assert.throws(() => new WanRelay('127.0.0.1', { delays: { 'ams-sjc': 5 } }), /not 'regionA:regionB'/)
  assert.throws(() => new WanRelay('127.0.0.1', { delays: { 'ams:sjc': -1 } }), /≥ 0/)
})

test('the relay delays each direction by its region pair, keeps order, and drops strangers', async (t) => {
  const relay = new WanRelay('127.0.0.1', { delays: { 'ams:sjc': 25, 'ams:fra': 5 } })
  t.after(() => relay.close())
  const [a, b, c, stranger] = await Promise.all([fakeHost(t), fakeHost(t), fakeHost(t), fakeHost(t)])
  await relay.addHosts([{ hostId: 'a', region: 'ams', endpoint: a.endpoint }, { hostId: 'b', region: 'sjc', endpoint: b.endpoint }])
  await relay.addHosts([{ hostId: 'c', region: 'fra', endpoint: c.endpoint }])
  const ab = relay.endpointFor('a', 'b')
  assert.equal(relay.endpointFor('b', 'a'), ab, 'one socket per pair: roaming cannot leave the relay')
  assert.notEqual(relay.endpointFor('a', 'c'), ab)
  assert.throws(() => relay.endpointFor('a', 'zzz'), /no relay/)
  await assert.rejects(relay.addHosts([{ hostId: 'a', region: 'ams', endpoint: a.endpoint }]), /already/)

  const sentAt = send(a, ab, 'hello')
  const arrived = await until(() => b.received[0])
  assert.equal(arrived.data, 'hello')
  assert.equal(arrived.from, ab, 'B sees the relay, and answers to it')
  assert.ok(arrived.at - sentAt >= 24.5, `a→b took ${arrived.at - sentAt} ms, at least the 25 ms configured`)
  assert.ok(arrived.at - sentAt < 60, `a→b took ${arrived.at - sentAt} ms`)
  const repliedAt = send(b, arrived.from, 'back')
  const reply = await until(() => a.received[0])
  assert.equal(reply.data, 'back')
  assert.ok(reply.at - repliedAt >= 24.5 && reply.at - repliedAt < 60, `b→a took ${reply.at - repliedAt} ms`)

  const toC = send(a, relay.endpointFor('a', 'c'), 'near')
  const nearArrival = await until(() => c.received[0])
  assert.ok(nearArrival.at - toC >= 4.5 && nearArrival.at - toC < 40, `a→c took ${nearArrival.at - toC} ms for 5 configured`)

  // 200 datagrams in a burst arrive complete and in order.
  for (let i = 0; i < 200; i++) send(a, ab, `n${i}`)
  await until(() => (b.received.length === 201 ? true : undefined))
  assert.deepEqual(b.received.slice(1).map((r) => r.data), Array.from({ length: 200 }, (_, i) => `n${i}`))

  send(stranger, ab, 'intruder')
  await new Promise((resolve) => setTimeout(resolve, 60))
  assert.ok(!b.received.some((r) => r.data === 'intruder') && !a.received.some((r) => r.data === 'intruder'))

  // A shorter delay later must not let new datagrams overtake queued ones.
  send(a, ab, 'slow')
  await relay.setDelay('ams', 'sjc', 0)
  send(a, ab, 'fast')
  await until(() => (b.received.some((r) => r.data === 'fast') ? true : undefined))
  assert.deepEqual(b.received.slice(-2).map((r) => r.data), ['slow', 'fast'])
  assert.equal(relay.delayMs('sjc', 'ams'), 0)

  const statsBefore = (await relay.stats()).find((s) => s.endpoint === ab)!
  assert.equal(statsBefore.dropped, 1)
  assert.equal(statsBefore.forwarded, 204)
})

test('partition drops everything to and from a host until healed', async (t) => {
  const relay = new WanRelay('127.0.0.1', { defaultDelayMs: 2 })
  t.after(() => relay.close())
  const [a, b] = await Promise.all([fakeHost(t), fakeHost(t)])
  await relay.addHosts([{ hostId: 'a', region: 'x', endpoint: a.endpoint }, { hostId: 'b', region: 'y', endpoint: b.endpoint }])
  const ab = relay.endpointFor('a', 'b')
  await relay.partition('b')
  send(a, ab, 'lost')
  send(b, ab, 'lost too')
  await new Promise((resolve) => setTimeout(resolve, 50))
  assert.deepEqual([a.received, b.received], [[], []])
  await assert.rejects(relay.partition('nobody'), /unknown host/)
  await relay.heal('b')
  send(a, ab, 'through')
  assert.equal((await until(() => b.received[0])).data, 'through')
  const [stats] = await relay.stats()
  assert.deepEqual([stats!.dropped, stats!.forwarded], [2, 1])
})

test('a WireGuard tunnel whose only path is the hub relay gets the configured delay; partition cuts it', async (t) => {
  const star = await createNetnsStar({ hosts: 2, prefix: 'hgwe', isolateHosts: true })
  const dir = mkdtempSync(join(tmpdir(), 'hangar-wan-'))
  const closers: Array<() => Promise<unknown>> = []
  t.after(async () => {
    for (const close of closers.reverse()) await close().catch(() => undefined)
    await star.close()
    rmSync(dir, { recursive: true, force: true })
  })
  const hub = await startHub({ netns: star.hub.netns, address: star.hub.address, wan: { delays: { 'ams:sjc': 25 } }, logFile: join(dir, 'hub.log') })
  closers.push(() => hub.close())
  const meshes = await Promise.all(star.hosts.map((h, i) => WireguardMesh.start({ hostId: `wan${i}${randomBytes(3).toString('hex')}`, dataDir: join(dir, `h${i}`), netns: h.netns })))
  for (const mesh of meshes) closers.push(() => mesh.close())
  const [a, b] = meshes as [WireguardMesh, WireguardMesh]
  await hub.wan.addHosts([
    { hostId: a.hostId, region: 'ams', endpoint: `${star.hosts[0]!.address}:${a.listenPort}` },
    { hostId: b.hostId, region: 'sjc', endpoint: `${star.hosts[1]!.address}:${b.listenPort}` },
  ])
  await a.setPeers([b.selfPeer(hub.wan.endpointFor(a.hostId, b.hostId))])
  await b.setPeers([a.selfPeer(hub.wan.endpointFor(b.hostId, a.hostId))])
  const ping = async (count: number) => {
    const [command, args] = star.exec(star.hosts[0]!.netns, 'ping', ['-6', '-n', '-c', String(count), '-i', '0.2', '-W', '1', b.overlayAddress])
    return runCommand(command, args, { allowFailure: true, timeoutMs: 30_000 })
  }
  // Direct underlay traffic between the hosts is impossible (isolated bridge ports).
  const [command, args] = star.exec(star.hosts[0]!.netns, 'ping', ['-c', '1', '-W', '1', star.hosts[1]!.address])
  assert.notEqual((await runCommand(command, args, { allowFailure: true })).code, 0)

  for (let i = 0; i < 20 && (await ping(1)).code !== 0; i++) { /* handshake */ }
  const result = await ping(10)
  assert.equal(result.code, 0, result.stdout)
  // The delay is a floor (never early); the median tolerates a loaded machine's scheduling spikes.
  const times = [...result.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1])).sort((x, y) => x - y)
  const [min, median] = [times[0]!, times[Math.floor((times.length - 1) / 2)]!]
  assert.ok(min >= 50 && min < 58 && median < 75, `overlay RTT min ${min} ms, median ${median} ms for 2 × 25 ms`)
  t.diagnostic(`overlay RTT through the relay: min ${min} ms, median ${median} ms (configured 2 × 25 ms)`)

  await hub.wan.partition(b.hostId)
  assert.notEqual((await ping(2)).code, 0)
  await hub.wan.heal(b.hostId)
  const healedAt = Date.now()
  for (let i = 0; i < 20 && (await ping(1)).code !== 0; i++) { /* WireGuard retries its handshake */ }
  assert.equal((await ping(1)).code, 0)
  t.diagnostic(`tunnel back ${Date.now() - healedAt} ms after heal`)
  const stats = await hub.wan.stats()
  assert.equal(stats.length, 1)
  assert.ok(stats[0]!.forwarded > 20 && stats[0]!.dropped > 0)
})
