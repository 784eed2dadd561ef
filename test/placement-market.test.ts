import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { startRegistry, type TestRegistry } from './kit/registry.js'
import { pushBusyboxImage } from './kit/images.js'
import { startPlatform, type Platform } from './kit/platform.js'
import type { Machine } from '../src/core/index.js'

// The placement market over real NATS with real hosts (agent processes): hosts offer only what
// they can hold and reserve it; the API picks best fit, fails fast on a full region and never
// double-books a host, whatever the concurrency.

test('placement market: best fit, region preference, fast failure, no double-booking under 50 concurrent creates', { timeout: 240_000 }, async (t) => {
  let registry: TestRegistry | undefined
  let platform: Platform | undefined
  t.after(async () => { await platform?.close(); await registry?.stop() })
  registry = await startRegistry()
  await pushBusyboxImage(registry, 'busybox:v1')
  const image = `${registry.host}/busybox:v1`
  // ams: the platform's own host (large) and a small one; sin: one host with room for 10 Machines.
  platform = await startPlatform({
    region: 'ams',
    hostArgs: ['--cpus', '64', '--memory-mb', '65536'],
    extraHosts: [
      { region: 'ams', args: ['--cpus', '4', '--memory-mb', '4096'] },
      { region: 'sin', args: ['--cpus', '10', '--memory-mb', '65536'] },
    ],
  })
  const p = platform
  const hostId = (dir: string) => readFileSync(join(dir, 'host-id'), 'utf8').trim()
  const [bigAms, smallAms, sin] = [hostId(p.hostDir), hostId(p.extraHostDirs[0]!), hostId(p.extraHostDirs[1]!)]
  const post = async (path: string, body: unknown) => {
    const res = await p.fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
    return { status: res.status, body: await res.json() as any }
  }
  assert.equal((await post('/v1/apps', { app_name: 'market', org_slug: 'personal' })).status, 201)
  const create = (region: string, cpus = 1) => post('/v1/apps/market/machines', { region, skip_launch: true, config: { image, guest: { cpus, memory_mb: 256, cpu_kind: 'shared' } } })

  await t.test('best fit: the host that would be fullest afterwards and still fits wins', async () => {
    const first = await create('ams', 2)
    assert.equal(first.status, 200)
    assert.equal((first.body as Machine).host_id, smallAms, 'the small ams host is the tighter fit')
    const second = await create('ams', 2)
    assert.equal((second.body as Machine).host_id, smallAms, 'it still fits (4 CPUs)')
    const third = await create('ams', 2)
    assert.equal((third.body as Machine).host_id, bigAms, 'the small host is full: the big one takes it')
  })

  await t.test('a region list is in order of preference; an unknown or full region fails fast with insufficient_capacity', async () => {
    const preferred = await create('sin,ams')
    assert.equal((preferred.body as Machine).host_id, sin)
    const started = Date.now()
    const nowhere = await create('xyz')
    assert.equal(nowhere.status, 412)
    assert.equal(nowhere.body.status, 'insufficient_capacity')
    assert.match(nowhere.body.error, /no host in region xyz/)
    const tooBig = await create('sin', 16)
    assert.equal(tooBig.status, 412)
    assert.equal(tooBig.body.status, 'insufficient_capacity')
    assert.ok(Date.now() - started < 2000, 'refusals come back at once, nothing is queued')
  })

  await t.test('50 concurrent creates into a region with room for 9 more: exactly 9 succeed, none double-booked', async () => {
    const results = await Promise.all(Array.from({ length: 50 }, () => create('sin')))
    const ok = results.filter((r) => r.status === 200)
    const refused = results.filter((r) => r.status !== 200)
    assert.equal(ok.length, 9, `9 of 50 fit (sin has 10 CPUs, 1 used): ${JSON.stringify(refused.slice(0, 2).map((r) => r.body))}`)
    assert.ok(refused.every((r) => r.status === 412 && r.body.status === 'insufficient_capacity'))
    const onSin = (await (await p.fetch('/v1/apps/market/machines')).json() as Machine[]).filter((m) => m.host_id === sin)
    assert.equal(onSin.length, 10, 'the host holds exactly its capacity')
  })

  await t.test('placement simulation (POST /v1/platform/placements)', async () => {
    const simulated = await post('/v1/platform/placements', { org_slug: 'personal', compute: { cpus: 1, memory_mb: 256 }, count: 20, region: 'ams' })
    assert.equal(simulated.status, 200)
    assert.deepEqual(simulated.body.regions, [{ region: 'ams', count: 20, concurrency: 1 }], 'only the big ams host has room')
    const full = await post('/v1/platform/placements', { org_slug: 'personal', compute: { cpus: 1, memory_mb: 256 }, count: 5, region: 'sin' })
    assert.deepEqual(full.body.regions, [])
  })
})
