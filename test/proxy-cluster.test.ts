import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import http from 'node:http'
import http2 from 'node:http2'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import tls from 'node:tls'
import WebSocket from 'ws'
import { silentLogger, type MachineRoute } from '../src/core/index.js'
import { createClusterCa, issueHostCertificate, loadBackhaulIdentity, startProxy, StaticPeerSource, type RunningProxy } from '../src/proxy/index.js'
import { freePort, httpService, loopbackAddress, machineRoute, startBackend, TestRouteSource, waitFor, type Backend } from './kit/backends.js'
import { holdRequest, proxyCluster, startWebMachine, type HeldRequest, type ProxyCluster, type WebMachine } from './kit/proxy-cluster.js'

// The proxy across hosts (issue 4 "Backhaul and closeness"): three `hangar proxy` processes on
// loopback joined by the backhaul (mutual TLS under one cluster CA), each link through a relay
// that delays it (A–B 5 ms, B–C 10 ms, A–C 25 ms one way), Machines as real backend processes.
// A client at A reaches Machines on B and C over the backhaul with A's Fly headers; A measures
// B as closer than C and balances by it; workers refuse at the hard limit, edges queue, and load
// reports keep two edges within a Machine's hard limit.

const DOMAIN = 'cluster.test'

interface Answer { status: number; headers: http.IncomingHttpHeaders; body: any }

function get(host: string, port: number, app: string, path = '/'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, path, headers: { host: `${app}.${DOMAIN}` }, agent: false, timeout: 20_000 }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { text += c })
      res.on('end', () => {
        let body: unknown = text
        try { body = JSON.parse(text) } catch { /* not JSON */ }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body })
      })
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', reject)
    req.end()
  })
}

function route(machineId: string, app: string, hostId: string, region: string, machine: { host: string; port: number }, publicPort: number, soft: number, hard: number): MachineRoute {
  return machineRoute({
    machineId, app, hostId, region, address: machine.host, org: 'o', primaryRegion: 'ams',
    services: [httpService(publicPort, { internal_port: machine.port, concurrency: { type: 'requests', soft_limit: soft, hard_limit: hard } })],
  })
}

/** A request whose head has not arrived within `ms` is still waiting (queued). */
async function stillWaiting(pending: Promise<HeldRequest>, ms: number): Promise<boolean> {
  const timeout = new Promise<'waiting'>((resolve) => setTimeout(() => resolve('waiting'), ms))
  return (await Promise.race([pending.then(() => 'answered' as const, () => 'failed' as const), timeout])) === 'waiting'
}

describe('hangar proxy across hosts, on loopback', { timeout: 120_000 }, () => {
  let cluster: ProxyCluster
  const machines: WebMachine[] = []
  let echo: Backend
  let webB: WebMachine, webC: WebMachine, holdC: WebMachine

  before(async () => {
    cluster = await proxyCluster([{ hostId: 'host-a', region: 'ams' }, { hostId: 'host-b', region: 'fra' }, { hostId: 'host-c', region: 'sea' }])
    const webPort = await freePort()
    webB = await startWebMachine('web-b', webPort)
    webC = await startWebMachine('web-c', webPort)
    holdC = await startWebMachine('hold-c')
    machines.push(webB, webC, holdC)
    const echoHost = '127.0.0.1'
    echo = await startBackend('echo', 'echo-b', echoHost, await freePort())
    cluster.setRoutes([
      route('web-b', 'web', 'host-b', 'fra', webB, 80, 2, 3),
      route('web-c', 'web', 'host-c', 'sea', webC, 80, 2, 3),
      route('hold-c', 'hold', 'host-c', 'sea', holdC, 81, 1, 2),
      machineRoute({ machineId: 'echo-b', app: 'echo', hostId: 'host-b', region: 'fra', address: echoHost, org: 'o',
        services: [{ protocol: 'tcp', internal_port: echo.port, ports: [{ port: 7000 }], concurrency: { type: 'connections', soft_limit: 20, hard_limit: 25 } }] }),
    ])
    for (const [a, b, ms] of [['host-a', 'host-b', 5], ['host-b', 'host-c', 10], ['host-a', 'host-c', 25]] as const) {
      await cluster.delay(a, b, ms)
      await cluster.delay(b, a, ms)
    }
    await cluster.start()
    // Every proxy has measured every peer before the tests look at balancing.
    await waitFor(async () => {
      for (const proxy of cluster.proxies.values()) {
        for (const peer of cluster.proxies.values()) {
          if (peer !== proxy && await proxy.metric('hangar_proxy_peer_rtt_ms', { host: peer.hostId }) === undefined) return false
        }
      }
      return true
    }, 15_000, 'RTT measurements between all proxies')
  })

  after(async () => {
    await cluster?.close()
    await Promise.allSettled([...machines.map((m) => m.stop()), echo?.stop()])
  })

  test('RTTs are measured over the backhaul: B is closer to A than C', async () => {
    const a = cluster.proxy('host-a')
    const measure = async () => ({
      toB: (await a.metric('hangar_proxy_peer_rtt_ms', { host: 'host-b', region: 'fra' }))!,
      toC: (await a.metric('hangar_proxy_peer_rtt_ms', { host: 'host-c', region: 'sea' }))!,
      bToC: (await cluster.proxy('host-b').metric('hangar_proxy_peer_rtt_ms', { host: 'host-c' }))!,
    })
    // The relays add 2 × the one-way delay; the measurement adds a little (more while the machine
    // is busy: the relay's timers fire late), never less. Measurements go on, so a reading taken
    // during a busy moment is followed by better ones: wait for the links to show their order.
    const deadline = Date.now() + 15_000
    let rtt = await measure()
    while (!(rtt.toB < rtt.bToC && rtt.bToC < rtt.toC && rtt.toB < 40) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250))
      rtt = await measure()
    }
    const { toB, toC, bToC } = rtt
    process.stderr.write(`measured RTT: A→B ${toB.toFixed(2)} ms, A→C ${toC.toFixed(2)} ms, B→C ${bToC.toFixed(2)} ms\n`)
    // Lower bounds allow half a millisecond: the relay's timers and the proxy's clock round
    // differently (a 10 ms link once read 9.77 ms).
    assert.ok(toB >= 9.5 && toB < 40, `A→B ${toB}`)
    assert.ok(toC >= 49.5 && toC < 120, `A→C ${toC}`)
    assert.ok(bToC >= 19.5 && bToC < 80, `B→C ${bToC}`)
    assert.ok(toB < bToC && bToC < toC, 'the order of the links is the order of their delays')
    assert.equal(await a.metric('hangar_proxy_peer_up', { host: 'host-b' }), 1)
  })

  test('HTTP through the backhaul: the Machine on B answers, with the edge’s Fly headers', async () => {
    const a = cluster.proxy('host-a')
    const res = await get(a.listenHost, 80, 'web', '/hello')
    assert.equal(res.status, 200)
    assert.equal(res.body.machine, 'web-b', 'closest Machine under its soft limit')
    assert.equal(res.body.url, '/hello')
    const headers = res.body.headers as Record<string, string>
    assert.equal(headers['fly-region'], 'ams', 'Fly-Region is the edge’s region')
    assert.equal(headers['fly-client-ip'], '127.0.0.1')
    assert.equal(headers['x-forwarded-for'], '127.0.0.1')
    assert.equal(headers['x-forwarded-proto'], 'http')
    assert.equal(headers['fly-forwarded-port'], '80')
    assert.match(headers['fly-request-id']!, /-ams$/)
    assert.equal(headers.host, `web.${DOMAIN}`)
    assert.equal(res.headers['fly-request-id'], headers['fly-request-id'])
    assert.match(String(res.headers.via), /hangar/)
    assert.ok((await a.metric('hangar_proxy_backhaul_streams_total', { direction: 'out' }))! >= 1)
    assert.ok((await cluster.proxy('host-b').metric('hangar_proxy_backhaul_streams_total', { direction: 'in' }))! >= 1)
    // Keep-alive from the client: several requests on one connection, each its own stream.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    try {
      for (let i = 0; i < 5; i++) {
        const body = await new Promise<any>((resolve, reject) => {
          http.get({ host: a.listenHost, port: 80, path: `/k${i}`, agent, headers: { host: `web.${DOMAIN}` } }, (r) => {
            let text = ''
            r.on('data', (c) => { text += c })
            r.on('end', () => resolve(JSON.parse(text)))
          }).on('error', reject)
        })
        assert.equal(body.url, `/k${i}`)
      }
    } finally {
      agent.destroy()
    }
    await waitFor(async () => await cluster.proxy('host-b').metric('hangar_proxy_machine_load', { machine: 'web-b' }) === 0, 5000, 'web-b idle on its worker')
  })

  test('HTTP/2 clients reach a Machine on another host (exchange over the backhaul)', async () => {
    const a = cluster.proxy('host-a')
    const session = http2.connect(`http://${a.listenHost}:80`)
    try {
      const body = await new Promise<any>((resolve, reject) => {
        const stream = session.request({ ':path': '/h2', ':authority': `web.${DOMAIN}` })
        let text = ''
        stream.setEncoding('utf8')
        stream.on('data', (c: string) => { text += c })
        stream.on('end', () => resolve(JSON.parse(text)))
        stream.on('error', reject)
      })
      assert.equal(body.machine, 'web-b')
      assert.equal(body.url, '/h2')
      assert.equal(body.headers['fly-region'], 'ams')
    } finally {
      session.close()
    }
  })

  test('WebSocket upgrade through the backhaul; the connection counts on both proxies while open', async () => {
    const a = cluster.proxy('host-a')
    const b = cluster.proxy('host-b')
    const ws = new WebSocket(`ws://${a.listenHost}:80/socket`, { headers: { host: `web.${DOMAIN}` } })
    try {
      await new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject) })
      const reply = new Promise<string>((resolve) => ws.once('message', (data) => resolve(data.toString())))
      ws.send('hello')
      assert.equal(await reply, 'web-b:hello')
      assert.equal(await b.metric('hangar_proxy_machine_load', { machine: 'web-b' }), 1, 'the worker counts the open WebSocket')
      assert.equal(await a.metric('hangar_proxy_machine_load', { machine: 'web-b' }), 1, 'the edge counts it once (own in-flight, not again from reports)')
    } finally {
      ws.close()
    }
    await waitFor(async () => await b.metric('hangar_proxy_machine_load', { machine: 'web-b' }) === 0 && await a.metric('hangar_proxy_machine_load', { machine: 'web-b' }) === 0, 5000, 'the load gone on both sides')
  })

  test('raw TCP through the backhaul: 1 MiB echoed intact, on two connections at once', async () => {
    const a = cluster.proxy('host-a')
    const roundTrip = (payload: Buffer) => new Promise<Buffer>((resolve, reject) => {
      const socket = net.connect({ host: a.listenHost, port: 7000 })
      const chunks: Buffer[] = []
      let received = 0
      socket.on('data', (c: Buffer) => { chunks.push(c); received += c.length; if (received >= payload.length) { socket.end(); resolve(Buffer.concat(chunks)) } })
      socket.on('error', reject)
      socket.setTimeout(20_000, () => socket.destroy(new Error('echo timed out')))
      socket.write(payload)
    })
    const one = randomBytes(1 << 20)
    const two = randomBytes(300_000)
    const [backOne, backTwo] = await Promise.all([roundTrip(one), roundTrip(two)])
    assert.ok(backOne.equals(one))
    assert.ok(backTwo.equals(two))
  })

  test('closeness and soft limits: B first, C once B is at soft, B again when all are over soft, queue at hard', async () => {
    const a = cluster.proxy('host-a')
    const held: HeldRequest[] = []
    try {
      const order: string[] = []
      for (let i = 0; i < 6; i++) {
        const h = await holdRequest(a.listenHost, 80, 'web')
        held.push(h)
        order.push(h.machine)
      }
      // soft 2, hard 3 on each: B (closer) to soft, then C to soft, then both over soft → the
      // closest under hard (B), then C.
      assert.deepEqual(order, ['web-b', 'web-b', 'web-c', 'web-c', 'web-b', 'web-c'])
      const seventh = holdRequest(a.listenHost, 80, 'web')
      assert.equal(await stillWaiting(seventh, 400), true, 'every Machine at hard: the 7th waits')
      held.shift()!.release() // one of web-b's
      const served = await seventh
      held.push(served)
      assert.equal(served.machine, 'web-b')
      assert.deepEqual(await webB.stats().then((s) => s.max), 3)
    } finally {
      for (const h of held) h.release()
    }
    await waitFor(async () => (await webB.stats()).current === 0 && (await webC.stats()).current === 0, 5000, 'held requests ended')
  })

  test('hard limit across two edges: load reports keep B from even trying, and the worker refuses a race', async () => {
    const a = cluster.proxy('host-a')
    const b = cluster.proxy('host-b')
    const c = cluster.proxy('host-c')
    const held: HeldRequest[] = []
    try {
      // A fills hold-c (hard 2) over the backhaul.
      held.push(await holdRequest(a.listenHost, 81, 'hold'), await holdRequest(a.listenHost, 81, 'hold'))
      assert.deepEqual(held.map((h) => h.machine), ['hold-c', 'hold-c'])
      // B learns it from C's load reports, without sending anything.
      await waitFor(async () => await b.metric('hangar_proxy_machine_load', { machine: 'hold-c' }) === 2, 2000, 'B to see hold-c at 2 from load reports')
      const refusalsBefore = (await c.metric('hangar_proxy_backhaul_refusals_total', { reason: 'at_capacity' })) ?? 0
      const fromB = holdRequest(b.listenHost, 81, 'hold')
      assert.equal(await stillWaiting(fromB, 400), true, 'B queues its request')
      assert.equal((await c.metric('hangar_proxy_backhaul_refusals_total', { reason: 'at_capacity' })) ?? 0, refusalsBefore, 'B never sent it: it knew the Machine was full')
      assert.equal(await b.metric('hangar_proxy_queue_depth', { service: 'hold/tcp/' + holdC.port }), 1)
      // A's client goes away: C reports the freed capacity and B's request goes.
      held.shift()!.release()
      const served = await fromB
      held.push(served)
      assert.equal(served.machine, 'hold-c')
      assert.equal((await holdC.stats()).max, 2)
    } finally {
      for (const h of held.splice(0)) h.release()
    }
    await waitFor(async () => (await holdC.stats()).current === 0 && await a.metric('hangar_proxy_machine_load', { machine: 'hold-c' }) === 0 && await b.metric('hangar_proxy_machine_load', { machine: 'hold-c' }) === 0, 5000, 'hold-c idle everywhere')

    // Both edges at once, 4 requests each: the Machine never holds more than 2; every request
    // is served in turn as capacity frees (queued at the edges, refused by the worker on a race).
    const pending = [...Array.from({ length: 4 }, () => holdRequest(a.listenHost, 81, 'hold')), ...Array.from({ length: 4 }, () => holdRequest(b.listenHost, 81, 'hold'))]
    let served = 0
    await Promise.all(pending.map(async (p) => {
      const h = await p
      assert.equal(h.status, 200)
      served++
      await new Promise((resolve) => setTimeout(resolve, 100))
      h.release()
    }))
    assert.equal(served, 8)
    const stats = await holdC.stats()
    assert.equal(stats.max, 2, 'the Machine never went past its hard limit')
    process.stderr.write(`two-edge race: worker refusals at hard limit so far: ${(await c.metric('hangar_proxy_backhaul_refusals_total', { reason: 'at_capacity' })) ?? 0}\n`)
  })

  test('an unauthenticated backhaul link is refused', async () => {
    const b = cluster.proxy('host-b')
    const failuresBefore = (await b.metric('hangar_proxy_backhaul_auth_failures_total')) ?? 0
    const dir = await mkdtemp(join(tmpdir(), 'hangar-foreign-ca-'))
    try {
      const foreignCa = await createClusterCa(join(dir, 'ca'))
      const { readFile } = await import('node:fs/promises')
      const foreign = await issueHostCertificate(foreignCa, await readFile(join(dir, 'ca', 'ca.key'), 'utf8'), 'host-a')
      const member = await loadBackhaulIdentity({ caDir: cluster.caDir, hostId: 'host-a' })
      const attempt = (credentials: { cert?: string; key?: string }) => new Promise<string>((resolve) => {
        const session = http2.connect(`https://127.0.0.1:${b.backhaulPort}`, {
          createConnection: () => tls.connect({ host: '127.0.0.1', port: b.backhaulPort, ALPNProtocols: ['h2'], rejectUnauthorized: false, ...credentials }),
        })
        session.on('error', () => undefined)
        const stream = session.request({ ':method': 'CONNECT', ':authority': `web-b:${webB.port}` })
        const done = (outcome: string) => { session.destroy(); resolve(outcome) }
        stream.on('response', (headers) => done(`status ${headers[':status']}`))
        stream.on('error', () => done('refused'))
        stream.on('close', () => done('refused'))
        setTimeout(() => done('no answer'), 5000)
      })
      assert.equal(await attempt({}), 'refused', 'no client certificate')
      assert.equal(await attempt({ cert: foreign.certPem, key: foreign.keyPem }), 'refused', 'a certificate from another CA')
      assert.ok((await b.metric('hangar_proxy_backhaul_auth_failures_total'))! >= failuresBefore + 2)
      // The same request with a certificate of the cluster goes through.
      assert.equal(await attempt({ cert: member.certPem, key: member.keyPem }), 'status 200')
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

test('a worker refuses at the hard limit; the edge picks the next Machine without counting the refused one', { timeout: 60_000 }, async (t) => {
  // In-process proxies (E1, E2 edges; W and V workers) whose workers send no periodic reports, so
  // E2's view of W's Machine is stale and only the worker's refusal can tell it.
  const dir = await mkdtemp(join(tmpdir(), 'hangar-backhaul-refusal-'))
  const proxies: RunningProxy[] = []
  const machines: WebMachine[] = []
  t.after(async () => {
    await Promise.allSettled(proxies.map((p) => p.close()))
    await Promise.allSettled(machines.map((m) => m.stop()))
    await rm(dir, { recursive: true, force: true })
  })
  const port = await freePort()
  const mW = await startWebMachine('m-w', port)
  const mV = await startWebMachine('m-v', port)
  machines.push(mW, mV)
  const source = new TestRouteSource()
  source.upsert(route('m-w', 'busy', 'W', 'ams', mW, 80, 1, 1))
  source.upsert(route('m-v', 'busy', 'V', 'fra', mV, 80, 1, 1))
  const hosts = ['E1', 'E2', 'W', 'V']
  const ports = new Map<string, number>()
  const listen = new Map<string, string>()
  for (const h of hosts) { ports.set(h, await freePort()); listen.set(h, loopbackAddress()) }
  const peers = new StaticPeerSource(hosts.map((h) => ({ hostId: h, region: h, addr: `127.0.0.1:${ports.get(h)}` })))
  await createClusterCa(join(dir, 'ca'))
  for (const hostId of hosts) {
    proxies.push(await startProxy({
      routeSource: source, region: hostId.toLowerCase(), hostId, domain: DOMAIN, caDir: join(dir, hostId), listenHost: listen.get(hostId)!, logger: silentLogger,
      // A test seam: fixed closeness (W nearer than V) so the pick is known; the cluster tests above measure it.
      rttMs: (h) => (h === hostId ? 0 : h === 'W' ? 1 : 2),
      backhaul: { identity: await loadBackhaulIdentity({ caDir: join(dir, 'ca'), hostId }), peers, listen: { host: '127.0.0.1', port: ports.get(hostId)! }, reportIntervalMs: 3_600_000 },
    }))
  }
  const [e1, e2, w] = proxies as [RunningProxy, RunningProxy, RunningProxy]
  await waitFor(() => proxies.every((p) => p.peers().every((peer) => peer.up)), 10_000, 'backhaul links up')
  const first = await holdRequest(listen.get('E1')!, 80, 'busy', DOMAIN)
  t.after(() => first.release())
  assert.equal(first.machine, 'm-w', 'E1 fills W’s Machine (hard 1)')
  const second = await holdRequest(listen.get('E2')!, 80, 'busy', DOMAIN)
  t.after(() => second.release())
  assert.equal(second.machine, 'm-v', 'E2 tried W’s Machine, was refused, and went to the next closest')
  assert.equal(w.metrics.backhaul.refusals.get('at_capacity'), 1)
  assert.equal((await mW.stats()).max, 1, 'the refused request never reached the Machine')
  const loadOf = (proxy: RunningProxy, machine: string) => [...proxy.metrics.render().matchAll(/^hangar_proxy_machine_load\{[^}]*machine="([^"]+)"[^}]*\} (\d+)$/gm)].find((m) => m[1] === machine)?.[2]
  assert.equal(loadOf(e2, 'm-w'), '1', 'E2 sees W’s Machine full: the worker’s count, not its own refused attempt too')
  assert.equal(loadOf(e2, 'm-v'), '1')
  assert.equal(loadOf(e1, 'm-w'), '1')
})
