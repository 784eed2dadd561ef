import { test } from 'node:test'
import assert from 'node:assert/strict'
import { request } from 'node:http'
import { startRegistry, type TestRegistry } from './kit/registry.js'
import { pushHttpServerImage, HTTP_SERVER_BODY } from './kit/images.js'
import { startPlatform, type Platform } from './kit/platform.js'
import type { Machine } from '../src/core/index.js'
import { CatalogClient } from '../src/catalog/index.js'
import { eventually } from './kit/eventually.js'

// The proxy on a real host, fed by the agent over NATS, in front of real crun Machines: routing
// follows Machine changes, a stopped Machine is started by the first request (autostart), and
// an idle one is stopped by the autostop loop.

const get = (host: string, port: number, headers: Record<string, string> = {}): Promise<{ status: number; body: string; headers: Record<string, string | string[] | undefined> }> =>
  new Promise((resolve, reject) => {
    const req = request({ host, port, path: '/', headers, timeout: 30_000 }, (res) => {
      let body = ''
      res.on('data', (c) => { body += c })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }))
    })
    req.on('error', reject)
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.end()
  })


test('proxy on a host: routes to Machines, autostarts a stopped one, autostops an idle one', { timeout: 180_000 }, async (t) => {
  let registry: TestRegistry | undefined
  let platform: Platform | undefined
  t.after(async () => { await platform?.close(); await registry?.stop() })
  registry = await startRegistry()
  await pushHttpServerImage(registry, 'http:v1')
  platform = await startPlatform({ hostArgs: ['--autostop-interval', '1s'] })
  const p = platform
  const post = async (path: string, body?: unknown) => {
    const res = await p.fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) })
    return res.json() as Promise<any>
  }
  await post('/v1/apps', { app_name: 'site', org_slug: 'personal' })
  const machine: Machine = await post('/v1/apps/site/machines', {
    config: {
      image: `${registry.host}/http:v1`,
      env: { API_KEY: 's3cr3t-value' },
      services: [{ protocol: 'tcp', internal_port: 8080, ports: [{ port: 80, handlers: ['http'] }], autostop: 'stop', autostart: true, min_machines_running: 0, concurrency: { type: 'requests', soft_limit: 20, hard_limit: 25 } }],
    },
  })
  assert.equal(machine.state, 'started')

  await t.test('a request through the proxy reaches the Machine, with Fly’s headers', async () => {
    const res = await eventually('the proxy to route', async () => { const r = await get(p.proxyAddr, 80, { host: 'site.hangar.local' }); return r.status === 200 ? r : undefined })
    assert.equal(res.body, HTTP_SERVER_BODY)
    assert.ok(res.headers['fly-request-id'])
  })

  await t.test('the catalog carries the Machine and its host, with no env values or file contents', async () => {
    const catalogUrl = p.api.hosts.alive()[0]!.catalogUrl!
    assert.match(catalogUrl, /^http:\/\/127\.0\.0\.1:\d+$/)
    const client = new CatalogClient(catalogUrl)
    try {
      const rows = await eventually('the Machine in the catalog', async () => {
        const found = await client.queryObjects<{ id: string; state: string; host_id: string; config: string }>(['SELECT id, state, host_id, config FROM machines WHERE id = ?', [machine.id]])
        return found.length ? found : undefined
      })
      assert.equal(rows[0]!.state, 'started')
      assert.doesNotMatch(rows[0]!.config, /s3cr3t-value/, 'env values never reach the catalog')
      const hosts = await client.queryObjects<{ id: string; region: string }>('SELECT id, region FROM hosts')
      assert.deepEqual(hosts.map((h) => h.region), [p.region])
    } finally {
      await client.close()
    }
  })

  await t.test('idle: the autostop loop stops the region’s only Machine', async () => {
    await eventually('autostop', async () => (await (await p.fetch(`/v1/apps/site/machines/${machine.id}`)).json() as Machine).state === 'stopped', 30_000)
  })

  await t.test('the first request to a stopped app starts a Machine and is served', async () => {
    const started = Date.now()
    const res = await get(p.proxyAddr, 80, { host: 'site.hangar.local' })
    const coldMs = Date.now() - started
    assert.equal(res.status, 200)
    assert.equal(res.body, HTTP_SERVER_BODY)
    assert.equal((await (await p.fetch(`/v1/apps/site/machines/${machine.id}`)).json() as Machine).state, 'started')
    const warmStarted = Date.now()
    await get(p.proxyAddr, 80, { host: 'site.hangar.local' })
    process.stderr.write(`autostart: cold request ${coldMs} ms, warm request ${Date.now() - warmStarted} ms\n`)
  })
})
