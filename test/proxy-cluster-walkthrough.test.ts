import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import http from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Machine } from '../src/core/index.js'
import { startCluster, type Cluster, type ClusterHost } from './kit/cluster.js'
import { HTTP_SERVER_PORT, pushHttpServerImage } from './kit/images.js'
import { holdRequest, type HeldRequest } from './kit/proxy-cluster.js'
import { startRegistry, type TestRegistry } from './kit/registry.js'
import { eventually } from './kit/eventually.js'

// The seed's load-balancing walkthrough end to end (spec/seeds/004_… "Web service"; issue 4 "How
// it is shown"): four hosts in four regions (ams, maa, sea, sin) in network namespaces, joined by
// a WireGuard mesh whose traffic the kit's WAN emulator delays per region pair; real `hangar
// host`s with their proxies, catalog and agents; ten real crun Machines (three in ams), soft 20 /
// hard 25. Every client connects to the ams host's proxy. The proxies measure their RTTs
// themselves (the delay table stays in the kit) and the edge sends other regions' traffic over
// the backhaul to their hosts' proxies:
//
//   1–60     the three ams Machines, 20 each          (closest, under soft)
//   61–200   maa (30 ms), then sea (50), then sin (70), each Machine to 20
//   201–215  ams again, to 25                          (all over soft: the closest under hard)
//   216–250  maa, sea, sin to 25
//   251      waits (every Machine at hard) and goes when one frees; sustained, 503

const REGIONS = ['ams', 'maa', 'sea', 'sin']
// One-way delays (ms). From ams: maa 15, sea 25, sin 35.
const DELAYS = { 'ams:maa': 15, 'ams:sea': 25, 'ams:sin': 35, 'maa:sea': 30, 'maa:sin': 20, 'sea:sin': 25 }
const PER_REGION: Record<string, number> = { ams: 3, maa: 2, sea: 3, sin: 2 }
const SOFT = 20
const HARD = 25
const METRICS_PORT = 9091
const DOMAIN = 'hangar.local'

// A Machine request that stays in flight: busybox httpd runs this CGI, which answers its head at
// once and then writes a dot a second (so it notices a client that left) for up to two minutes
// (CRLF line ends: the proxy reads heads as HTTP/1.1 says, RFC 9112 §2.2.)
const HOLD_CGI = `#!/bin/sh
printf 'Content-Type: text/plain\\r\\nX-Machine-Id: %s\\r\\nX-Region: %s\\r\\n\\r\\nheld\\n' "$FLY_MACHINE_ID" "$FLY_REGION"
i=0
while [ $i -lt 120 ]; do sleep 1; echo . || exit 0; i=$((i+1)); done
`

function getThrough(host: ClusterHost, path: string, headers: Record<string, string>): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: host.proxyAddress, port: 80, path, headers: { host: `walk.${DOMAIN}`, ...headers }, agent: false, timeout: 10_000 }, (res) => {
      let body = ''
      res.on('data', (c) => { body += c })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }))
    })
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', reject)
    req.end()
  })
}

async function metric(host: ClusterHost, name: string, labels: Record<string, string>): Promise<number | undefined> {
  const text = await (await fetch(`http://${host.underlayAddress}:${METRICS_PORT}/metrics`)).text()
  for (const line of text.split('\n')) {
    const match = /^([a-z_]+)\{(.*)\} (\S+)$/.exec(line)
    if (!match || match[1] !== name) continue
    const have = new Map([...match[2]!.matchAll(/([a-z_]+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!]))
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) return Number(match[3])
  }
  return undefined
}

test('the seed’s load-balancing walkthrough across 4 regions: real proxies, real Machines, measured RTTs', { timeout: 180_000 }, async (t) => {
  let registry: TestRegistry | undefined
  let cluster: Cluster | undefined
  const held: HeldRequest[] = []
  const caDir = await mkdtemp(join(tmpdir(), 'hangar-walkthrough-ca-'))
  t.after(async () => {
    for (const h of held) h.release()
    await cluster?.close()
    await registry?.stop()
    await rm(caDir, { recursive: true, force: true })
  })
  registry = await startRegistry()
  await pushHttpServerImage(registry, 'hold:v1', { extraLayers: [[{ path: 'www/cgi-bin', type: 'dir' }, { path: 'www/cgi-bin/hold', content: HOLD_CGI, mode: 0o755 }]] })
  // Every host shares the cluster CA (the backhaul is mutual TLS under it).
  cluster = await startCluster({
    regions: REGIONS, delays: DELAYS, registry,
    hostArgs: (host) => ['--cluster-ca', join(caDir, 'ca'), '--proxy-metrics', `${host.underlayAddress}:${METRICS_PORT}`],
  })
  const c = cluster
  const ams = c.host('ams')
  t.diagnostic(`cluster up in ${c.timings.total} ms`)

  // The app: ten Machines, three in ams.
  const created = await c.fetch('/v1/apps', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ app_name: 'walk', org_slug: c.org }) })
  assert.equal(created.status, 201, await created.clone().text())
  const regionOf = new Map<string, string>()
  await Promise.all(REGIONS.map(async (region) => {
    for (let i = 0; i < PER_REGION[region]!; i++) {
      const res = await c.fetch('/v1/apps/walk/machines', {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          region,
          config: {
            image: `${registry!.host}/hold:v1`,
            guest: { cpus: 1, memory_mb: 256, cpu_kind: 'shared' },
            services: [{ protocol: 'tcp', internal_port: HTTP_SERVER_PORT, ports: [{ port: 80, handlers: ['http'] }], autostop: 'off', autostart: true, concurrency: { type: 'requests', soft_limit: SOFT, hard_limit: HARD } }],
          },
        }),
      })
      const machine = await res.json() as Machine
      assert.equal(res.status, 200, JSON.stringify(machine))
      assert.equal(machine.region, region)
      regionOf.set(machine.id, region)
    }
  }))
  assert.equal(regionOf.size, 10)

  await t.test('the ams proxy measured its RTTs to the other regions’ proxies, and they follow the WAN', async () => {
    const rtts = await eventually('RTTs to every peer', async () => {
      const values = await Promise.all(['maa', 'sea', 'sin'].map((region) => metric(ams, 'hangar_proxy_peer_rtt_ms', { host: c.host(region).hostId, region })))
      return values.every((v) => v !== undefined) ? values as number[] : undefined
    }, 30_000)
    const [maa, sea, sin] = rtts as [number, number, number]
    t.diagnostic(`ams proxy measured RTT: maa ${maa.toFixed(1)} ms, sea ${sea.toFixed(1)} ms, sin ${sin.toFixed(1)} ms (2 × one-way: 30, 50, 70)`)
    // Never below the WAN's RTT; a little above it (more on a busy machine, whose relay timers fire late).
    assert.ok(maa >= 30 && maa < 55, `maa ${maa}`)
    assert.ok(sea >= 50 && sea < 75, `sea ${sea}`)
    assert.ok(sin >= 70 && sin < 95, `sin ${sin}`)
    assert.ok(maa < sea && sea < sin)
  })

  await t.test('every Machine answers through the ams edge (over the backhaul for the other regions)', async () => {
    for (const [id, region] of regionOf) {
      const res = await eventually(`Machine ${id} (${region}) through the ams proxy`, async () => {
        const r = await getThrough(ams, '/', { 'fly-force-instance-id': id })
        return r.status === 200 ? r : undefined
      }, 30_000)
      assert.match(res.body, /hello from hangar/)
    }
  })

  const counts = () => {
    const byRegion: Record<string, number> = { ams: 0, maa: 0, sea: 0, sin: 0 }
    const byMachine = new Map<string, number>()
    for (const h of held) {
      byRegion[regionOf.get(h.machine)!]!++
      byMachine.set(h.machine, (byMachine.get(h.machine) ?? 0) + 1)
    }
    return { byRegion, byMachine }
  }
  const send = async () => {
    const h = await holdRequest(ams.proxyAddress, 80, 'walk', DOMAIN, 30_000, '/cgi-bin/hold')
    assert.equal(h.status, 200, `request ${held.length + 1}`)
    assert.ok(regionOf.has(h.machine), `request ${held.length + 1} answered by ${h.machine}`)
    held.push(h)
    return h
  }
  const regionsOfMachines = (region: string) => [...regionOf].filter(([, r]) => r === region).map(([id]) => id)

  await t.test('up to 60 concurrent requests stay in ams, evenly', async () => {
    for (let i = 0; i < 60; i++) await send()
    const { byRegion, byMachine } = counts()
    assert.deepEqual(byRegion, { ams: 60, maa: 0, sea: 0, sin: 0 })
    for (const id of regionsOfMachines('ams')) assert.equal(byMachine.get(id), SOFT)
  })

  await t.test('the 61st goes to the next closest region; each region fills to soft in order of RTT up to 200', async () => {
    const sixtyFirst = await send()
    assert.equal(regionOf.get(sixtyFirst.machine), 'maa')
    for (let i = 61; i < 100; i++) await send()
    assert.deepEqual(counts().byRegion, { ams: 60, maa: 40, sea: 0, sin: 0 })
    for (let i = 100; i < 160; i++) await send()
    assert.deepEqual(counts().byRegion, { ams: 60, maa: 40, sea: 60, sin: 0 })
    for (let i = 160; i < 200; i++) await send()
    const { byRegion, byMachine } = counts()
    assert.deepEqual(byRegion, { ams: 60, maa: 40, sea: 60, sin: 40 })
    for (const id of regionOf.keys()) assert.equal(byMachine.get(id), SOFT, `Machine ${id} at its soft limit`)
    // The workers count what the edge sent them.
    const seaHost = c.host('sea')
    for (const id of regionsOfMachines('sea')) assert.equal(await metric(seaHost, 'hangar_proxy_machine_load', { machine: id }), SOFT)
  })

  await t.test('at 200 every Machine is at soft: the 201st goes to ams again; then every region to hard', async () => {
    const next = await send()
    assert.equal(regionOf.get(next.machine), 'ams')
    for (let i = 201; i < 215; i++) await send()
    assert.deepEqual(counts().byRegion, { ams: 75, maa: 40, sea: 60, sin: 40 })
    for (let i = 215; i < 250; i++) await send()
    const { byRegion, byMachine } = counts()
    assert.deepEqual(byRegion, { ams: 75, maa: 50, sea: 75, sin: 50 })
    for (const id of regionOf.keys()) assert.equal(byMachine.get(id), HARD, `Machine ${id} at its hard limit`)
  })

  await t.test('the 251st waits until a Machine is below its hard limit; sustained overload answers 503', async () => {
    const waiting = holdRequest(ams.proxyAddress, 80, 'walk', DOMAIN, 30_000, '/cgi-bin/hold')
    const early = await Promise.race([waiting.then(() => 'answered'), new Promise((resolve) => setTimeout(() => resolve('waiting'), 1500))])
    assert.equal(early, 'waiting')
    assert.equal(await metric(ams, 'hangar_proxy_queue_depth', { service: `walk/tcp/${HTTP_SERVER_PORT}` }), 1)
    // A sin request ends: the 251st goes there (the only Machine under hard).
    const freed = held.find((h) => regionOf.get(h.machine) === 'sin')!
    held.splice(held.indexOf(freed), 1)
    freed.release()
    const served = await waiting
    held.push(served)
    assert.equal(served.status, 200)
    assert.equal(served.machine, freed.machine)
    // Everything at hard again; nothing frees: the queue gives up with a 503.
    const began = Date.now()
    const refused = await holdRequest(ams.proxyAddress, 80, 'walk', DOMAIN, 30_000, '/cgi-bin/hold')
    held.push(refused)
    assert.equal(refused.status, 503)
    t.diagnostic(`the 252nd request waited ${Date.now() - began} ms in the queue before its 503`)
    assert.ok(Date.now() - began >= 9_000)
    assert.ok((await metric(ams, 'hangar_proxy_refusals_total', { app: 'walk', reason: 'queue_timeout' }))! >= 1)
  })
})
