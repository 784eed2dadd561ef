import { test } from 'node:test'
import assert from 'node:assert/strict'
import { request } from 'node:http'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { CatalogClient } from '../src/catalog/index.js'
import type { Machine } from '../src/core/index.js'
import { startCluster, type Cluster } from './kit/cluster.js'
import { startRegistry, type TestRegistry } from './kit/registry.js'
import { HTTP_SERVER_BODY, HTTP_SERVER_PORT, pushHttpServerImage } from './kit/images.js'
import { eventually } from './kit/eventually.js'

// Issue 4: "SWIM detects a killed node and the proxy stops routing to its Machines". An app whose
// Machines run in fra and sjc is served at the ams edge from the closer fra; when fra's host is
// killed (SIGKILL: supervisor, agent, proxy and catalog node at once) the ams catalog node's SWIM
// marks it down within seconds, its Machines leave the ams proxy's routes, and the edge serves
// from sjc instead. When fra comes back, its Machine is routed to again.

const get = (address: string, host: string): Promise<{ status: number; body: string; region: string | undefined }> => new Promise((resolve, reject) => {
  const req = request({ host: address, port: 80, path: '/', headers: { host }, timeout: 8_000 }, (res) => {
    let body = ''
    res.on('data', (chunk) => { body += chunk })
    res.on('end', () => resolve({ status: res.statusCode ?? 0, body, region: res.headers['fly-region'] as string | undefined }))
  })
  req.on('error', reject)
  req.on('timeout', () => req.destroy(new Error('timeout')))
  req.end()
})

test('a killed host: SWIM marks it down, the edge stops routing to its Machines, and routes to them again when it returns', { timeout: 240_000 }, async (t) => {
  let registry: TestRegistry | undefined
  let cluster: Cluster | undefined
  const caDir = await mkdtemp(join(tmpdir(), 'hangar-death-ca-'))
  t.after(async () => { await cluster?.close(); await registry?.stop(); await rm(caDir, { recursive: true, force: true }) })
  registry = await startRegistry()
  await pushHttpServerImage(registry, 'http:v1')
  cluster = await startCluster({
    regions: ['ams', 'fra', 'sjc'], delays: { 'ams:fra': 5, 'ams:sjc': 40, 'fra:sjc': 40 }, registry,
    hostArgs: () => ['--cluster-ca', join(caDir, 'ca')],
  })
  const c = cluster
  const [ams, fra] = [c.host('ams'), c.host('fra')]
  assert.equal((await c.fetch('/v1/apps', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ app_name: 'web', org_slug: c.org }) })).status, 201)
  const machines: Record<string, Machine> = {}
  for (const region of ['fra', 'sjc']) {
    const res = await c.fetch('/v1/apps/web/machines', {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ region, config: { image: `${registry.host}/http:v1`, services: [{ protocol: 'tcp', internal_port: HTTP_SERVER_PORT, ports: [{ port: 80, handlers: ['http'] }], autostop: 'off', autostart: false }] } }),
    })
    machines[region] = await res.json() as Machine
    assert.equal(res.status, 200, JSON.stringify(machines[region]))
  }
  const routedTo = async () => {
    const res = await get(ams.proxyAddress, 'web.hangar.local')
    return res.status === 200 && res.body === HTTP_SERVER_BODY ? res : undefined
  }
  // The ams edge serves from fra: 10 ms away against sjc's 80 ms (its proxy measured both).
  const catalog = new CatalogClient(ams.catalogUrl)
  t.after(() => catalog.close())
  const hostOfAnswer = async () => {
    const before = await catalog.queryObjects<{ id: string; state: string }>("SELECT id, state FROM machines WHERE app = 'web'")
    assert.equal(before.length, 2)
    return routedTo()
  }
  assert.ok(await eventually('the ams edge to serve the app', hostOfAnswer, 30_000))

  await t.test('fra is killed: SWIM at ams marks it down within seconds, and the app is served from sjc', async () => {
    const killedAt = Date.now()
    await fra.stop('SIGKILL')
    const down = await eventually('ams’s SWIM to mark fra down', async () => {
      const member = (await catalog.members()).find((m) => m.host_id === fra.hostId)
      return member && member.state === 'down' ? member : undefined
    }, 20_000)
    const detectedMs = Date.now() - killedAt
    t.diagnostic(`fra marked down after ${detectedMs} ms`)
    assert.ok(detectedMs < 15_000, `detected in ${detectedMs} ms`)
    assert.ok(down)
    // Every request now succeeds without waiting on the dead host.
    for (let i = 0; i < 10; i++) {
      const started = Date.now()
      const res = await eventually('an answer from sjc', routedTo, 20_000)
      assert.equal(res.body, HTTP_SERVER_BODY)
      assert.ok(Date.now() - started < 5_000, 'no request waits on the dead host')
    }
  })

  await t.test('fra returns: it rejoins and its Machine (which kept running) is routed to again', async () => {
    await fra.start()
    await eventually('fra alive again at ams', async () => {
      const member = (await catalog.members()).find((m) => m.host_id === fra.hostId)
      return member && member.state === 'alive' ? member : undefined
    }, 30_000)
    const res = await eventually('an answer after fra came back', routedTo, 30_000)
    assert.equal(res.body, HTTP_SERVER_BODY)
  })
})
