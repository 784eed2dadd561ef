import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { startRegistry, type TestRegistry } from './kit/registry.js'
import { pushBusyboxImage, pushHttpServerImage } from './kit/images.js'
import { startPlatform, CLI_MAIN, type Platform } from './kit/platform.js'
import type { Machine } from '../src/core/index.js'
import { eventually } from './kit/eventually.js'

// The Machines API end to end: real HTTP, real NATS, a real host process running crun guests
// from a real registry. Asserts what a user of Fly's API would see.

async function json(res: Response): Promise<any> {
  const text = await res.text()
  return text ? JSON.parse(text) : undefined
}

test('Machines API: apps, machines and every machine endpoint, with Fly-shaped errors', { timeout: 240_000 }, async (t) => {
  let registry: TestRegistry | undefined
  let platform: Platform | undefined
  t.after(async () => { await platform?.close(); await registry?.stop() })
  registry = await startRegistry()
  await pushBusyboxImage(registry, 'busybox:v1')
  await pushHttpServerImage(registry, 'http:v1')
  const busybox = `${registry.host}/busybox:v1`
  const http = `${registry.host}/http:v1`
  platform = await startPlatform()
  const p = platform
  const post = (path: string, body?: unknown, headers: Record<string, string> = {}) => p.fetch(path, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: body === undefined ? undefined : JSON.stringify(body) })

  await t.test('requests without a valid token get 401 with Fly envelope and a request id', async () => {
    for (const token of [null, 'nope', 'Basic abc']) {
      const res = await p.fetch('/v1/apps?org_slug=personal', { token })
      assert.equal(res.status, 401)
      assert.match(res.headers.get('fly-request-id') ?? '', /^[0-9A-Z]{26}-tst$/)
      const body = await json(res)
      assert.equal(body.status, 'unknown')
      assert.equal(body.code, 'unauthorized')
      assert.match(body.error, /token/)
    }
    const flyv1 = await p.fetch('/v1/apps?org_slug=personal', { token: null, headers: { authorization: `FlyV1 ${p.token}` } })
    assert.equal(flyv1.status, 200)
  })

  await t.test('apps: create, get, list, name taken, bad names', async () => {
    const created = await post('/v1/apps', { app_name: 'web', org_slug: 'personal' })
    assert.equal(created.status, 201)
    assert.equal((await json(created)).name, 'web')
    const taken = await post('/v1/apps', { app_name: 'web', org_slug: 'personal' })
    assert.equal(taken.status, 422)
    assert.deepEqual(await json(taken), { error: 'app name "web" is already taken', status: 'name_taken', code: 'name_taken' })
    for (const name of ['Web', 'a_b', '-x', 'x'.repeat(64), '']) {
      const res = await post('/v1/apps', { app_name: name, org_slug: 'personal' })
      assert.equal(res.status, 400, name)
    }
    const list = await json(await p.fetch('/v1/apps?org_slug=personal'))
    assert.equal(list.total_apps, 1)
    assert.equal(list.apps[0].organization.slug, 'personal')
    assert.equal((await p.fetch('/v1/apps/nope')).status, 404)
  })

  let machine!: Machine
  await t.test('create, get, list with filters', async () => {
    const res = await post('/v1/apps/web/machines', { name: 'first', region: 'tst', config: { image: http, metadata: { role: 'web' }, env: { A: '1' }, guest: { cpus: 1, memory_mb: 256, cpu_kind: 'shared' } } })
    assert.equal(res.status, 200)
    machine = await json(res)
    assert.equal(machine.state, 'started')
    assert.equal(machine.name, 'first')
    assert.equal(machine.region, 'tst')
    assert.equal(machine.config.metadata?.role, 'web')
    const got = await json(await p.fetch(`/v1/apps/web/machines/${machine.id}`))
    assert.equal(got.id, machine.id)
    assert.equal((await json(await p.fetch('/v1/apps/web/machines?state=started'))).length, 1)
    assert.equal((await json(await p.fetch('/v1/apps/web/machines?state=stopped'))).length, 0)
    assert.equal((await json(await p.fetch('/v1/apps/web/machines?metadata.role=web'))).length, 1)
    assert.equal((await json(await p.fetch('/v1/apps/web/machines?metadata.role=db'))).length, 0)
    assert.equal((await json(await p.fetch('/v1/apps/web/machines?region=xyz'))).length, 0)
    const named = await post('/v1/apps/web/machines', { name: 'first', config: { image: http } })
    assert.equal(named.status, 422)
    assert.equal((await json(named)).status, 'name_taken')
  })

  await t.test('create with skip_launch leaves the Machine created; lease_ttl returns a nonce that guards it', async () => {
    const created = await json(await post('/v1/apps/web/machines', { config: { image: busybox, init: { cmd: ['sleep', '1000'] } }, skip_launch: true, lease_ttl: 30 }))
    assert.equal(created.state, 'created')
    assert.match(created.nonce, /^[0-9a-f]{32}$/)
    const refused = await post(`/v1/apps/web/machines/${created.id}/start`)
    assert.equal(refused.status, 409, 'the lease made at create guards the Machine')
    assert.equal((await post(`/v1/apps/web/machines/${created.id}/start`, undefined, { 'fly-machine-lease-nonce': created.nonce })).status, 200)
    // fly-go's StopMachineInput also sends the id in the body.
    assert.equal((await post(`/v1/apps/web/machines/${created.id}/stop`, { id: created.id, signal: 'SIGKILL' }, { 'fly-machine-lease-nonce': created.nonce })).status, 200)
    const waited = await json(await p.fetch(`/v1/apps/web/machines/${created.id}/wait?state=stopped&instance_id=${created.instance_id}&timeout=10`))
    assert.equal(waited.version, created.instance_id)
    const otherVersion = await p.fetch(`/v1/apps/web/machines/${created.id}/wait?state=stopped&version=01HZZZZZZZZZZZZZZZZZZZZZZZ&timeout=1`)
    assert.equal(otherVersion.status, 408, 'waiting for a version the Machine is not at times out')
    assert.equal((await p.fetch(`/v1/apps/web/machines/${created.id}?force=true`, { method: 'DELETE', headers: { 'fly-machine-lease-nonce': created.nonce } })).status, 200)
  })

  await t.test('bad input: malformed JSON, wrong types, unknown fields, huge bodies, bad values', async () => {
    const machinesBefore = (await json(await p.fetch('/v1/apps/web/machines?include_deleted=true'))).length
    const cases: Array<[unknown, RegExp]> = [
      ['{"config": ', /not valid JSON/],
      [{ config: { image: 5 } }, /config\.image: expected a string, got 5/],
      [{ config: { image: http, guest: { cpus: '2' } } }, /config\.guest\.cpus: expected an integer/],
      [{ config: { image: http, bogus: true } }, /config\.bogus: unknown field/],
      [{ config: { image: http }, surprise: 1 }, /surprise: unknown field/],
      [{ config: {} }, /config\.image is required/],
      [{}, /config is required/],
      [{ config: { image: http, guest: { memory_mb: 300 } } }, /multiple of 256/],
      [{ config: { image: http, services: [{ internal_port: 70000, protocol: 'tcp' }] } }, /internal_port/],
      [{ config: { image: http, services: [{ internal_port: 80, protocol: 'tcp', concurrency: { soft_limit: 30, hard_limit: 20 } }] } }, /must not exceed hard_limit/],
      [{ config: { image: http, restart: { policy: 'sometimes' } } }, /not one of no, always, on-failure/],
      [{ config: { image: 'UPPER CASE!!' } }, /config\.image/],
      [{ name: 'bad name!', config: { image: http } }, /name "bad name!"/],
      [{ config: { image: http, stop_config: { timeout: 'soon' } } }, /not a duration/],
      [[1, 2, 3], /expected an object/],
    ]
    for (const [body, message] of cases) {
      const res = await p.fetch('/v1/apps/web/machines', { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) })
      const envelope = await json(res)
      assert.equal(res.status, 400, `${JSON.stringify(body)} → ${JSON.stringify(envelope)}`)
      assert.equal(envelope.code, 'invalid_argument')
      assert.match(envelope.error, message)
    }
    const huge = await p.fetch('/v1/apps/web/machines', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ config: { image: http, env: { BIG: 'x'.repeat(2 * 1024 * 1024) } } }) })
    assert.equal(huge.status, 413)
    const missingImage = await post('/v1/apps/web/machines', { config: { image: `${registry!.host}/missing:v9` } })
    assert.equal(missingImage.status, 422)
    assert.match((await json(missingImage)).error, /missing/)
    const machines = await json(await p.fetch('/v1/apps/web/machines?include_deleted=true'))
    assert.equal(machines.length, machinesBefore, 'no half-made Machine was left by any bad request')
    assert.equal((await p.fetch('/v1/apps/web/machines')).status, 200, 'the API still answers')
  })

  await t.test('stop (body), start, suspend, restart, signal by name and number, wait with states and timeouts', async () => {
    const base = `/v1/apps/web/machines/${machine.id}`
    assert.equal((await post(`${base}/stop`, { signal: 'SIGTERM', timeout: '3s' })).status, 200)
    const waited = await json(await p.fetch(`${base}/wait?state=stopped&timeout=10`))
    assert.equal(waited.ok, true)
    assert.equal(waited.state, 'stopped')
    const again = await post(`${base}/stop`)
    assert.equal(again.status, 412)
    assert.match((await json(again)).error, /not currently started: stopped/)
    const start = await json(await post(`${base}/start`))
    assert.equal(start.previous_state, 'stopped')
    assert.equal((await json(await p.fetch(`${base}/wait?state=started`))).state, 'started')
    const timeout = await p.fetch(`${base}/wait?state=destroyed&timeout=1`)
    assert.equal(timeout.status, 408)
    assert.match((await json(timeout)).error, /machine failed to reach desired state, destroyed, currently started/)
    for (const bad of ['0', '61', 'abc']) assert.equal((await p.fetch(`${base}/wait?state=started&timeout=${bad}`)).status, 400)
    assert.equal((await p.fetch(`${base}/wait?state=sideways`)).status, 400)
    assert.equal((await post(`${base}/suspend`)).status, 200)
    assert.equal((await json(await p.fetch(`${base}/wait?state=suspended&timeout=10`))).state, 'suspended')
    assert.equal((await json(await p.fetch(`${base}/wait?state=settled&timeout=10`))).state, 'suspended')
    assert.equal((await post(`${base}/start`)).status, 200)
    assert.equal((await post(`${base}/restart?signal=SIGTERM&timeout=5`)).status, 200)
    assert.equal((await post(`${base}/restart?force_stop=true`)).status, 200, 'fly-go sends force_stop')
    assert.equal((await json(await p.fetch(`${base}/wait?state=started`))).state, 'started')
    // httpd does not handle SIGUSR1: it dies of it, tini reports 128+10, and on-failure restarts it.
    const exitsBefore = (await json(await p.fetch(`${base}/events?limit=50`))).filter((e: { type: string }) => e.type === 'exit').length
    assert.equal((await post(`${base}/signal`, { signal: 10 })).status, 200, 'fly-go sends signals as numbers')
    const deadline = Date.now() + 15_000
    let signalled: { request?: { exit_event?: { exit_code: number; signal: number } } } | undefined
    while (!signalled && Date.now() < deadline) {
      const exits = (await json(await p.fetch(`${base}/events?limit=50`))).filter((e: { type: string }) => e.type === 'exit')
      if (exits.length > exitsBefore) signalled = exits[0]
      else await new Promise((r) => setTimeout(r, 50))
    }
    assert.equal(signalled?.request?.exit_event?.exit_code, 138)
    assert.equal(signalled?.request?.exit_event?.signal, 10)
    assert.equal((await json(await p.fetch(`${base}/wait?state=started&timeout=20`))).state, 'started')
    assert.equal((await post(`${base}/signal`, { signal: 'SIGNOPE' })).status, 400)
    assert.equal((await post(`${base}/signal`, {})).status, 400)
    const events = await json(await p.fetch(`${base}/events?limit=50`))
    assert.ok(events.some((e: { type: string }) => e.type === 'restart'))
    assert.ok(events.length <= 50)
  })

  await t.test('exec, ps, versions, update with current_version, cordon', async () => {
    const base = `/v1/apps/web/machines/${machine.id}`
    const exec = await json(await post(`${base}/exec`, { command: ['sh', '-c', 'echo $A; echo oops >&2; exit 4'] }))
    assert.deepEqual(exec, { exit_code: 4, exit_signal: 0, stdout: '1\n', stderr: 'oops\n' })
    assert.equal((await post(`${base}/exec`, { command: [] })).status, 400)
    const ps = await eventually('httpd in ps', async () => { const list = await json(await p.fetch(`${base}/ps`)); return list.some((proc: { command: string }) => proc.command.includes('httpd')) ? list : undefined })
    assert.ok(ps.every((proc: { pid: number; rss: number }) => proc.pid > 0 && proc.rss >= 0))
    const current = await json(await p.fetch(base))
    const stale = await post(base, { config: { ...current.config, env: { A: '2' } }, current_version: '01HZZZZZZZZZZZZZZZZZZZZZZZ' })
    assert.equal(stale.status, 409)
    const updated = await json(await post(base, { config: { ...current.config, env: { A: '2' } }, current_version: current.instance_id }))
    assert.notEqual(updated.instance_id, current.instance_id)
    assert.equal((await json(await post(`${base}/exec`, { command: ['sh', '-c', 'echo $A'] }))).stdout, '2\n')
    const versions = await json(await p.fetch(`${base}/versions`))
    assert.equal(versions[0].version, updated.instance_id)
    assert.equal(versions.length, 2)
    assert.equal((await post(`${base}/cordon`)).status, 200)
    assert.equal((await json(await p.fetch(base))).cordoned, true)
    assert.equal((await post(`${base}/uncordon`)).status, 200)
    assert.equal((await json(await p.fetch(base))).cordoned, false)
  })

  await t.test('leases: body or ?ttl=, wrapped response, nonce enforced, refresh, release', async () => {
    const base = `/v1/apps/web/machines/${machine.id}`
    const created = await p.fetch(`${base}/lease?ttl=30`, { method: 'POST' })
    assert.equal(created.status, 201)
    const lease = await json(created)
    assert.equal(lease.status, 'success')
    assert.match(lease.data.nonce, /^[0-9a-f]{32}$/)
    assert.equal(lease.nonce, lease.data.nonce, 'the flat Lease fields of the spec are there too')
    const held = await post(`${base}/lease`, { ttl: 30 })
    assert.equal(held.status, 409)
    const blocked = await post(`${base}/stop`)
    assert.equal(blocked.status, 409)
    assert.match((await json(blocked)).error, /active lease/)
    const refreshed = await json(await post(`${base}/lease`, { ttl: 60, description: 'deploy' }, { 'fly-machine-lease-nonce': lease.data.nonce }))
    assert.equal(refreshed.data.nonce, lease.data.nonce)
    assert.ok(refreshed.data.expires_at > lease.data.expires_at)
    assert.equal((await json(await p.fetch(base + '?include_leases=true'))).lease.nonce, lease.data.nonce)
    assert.equal((await p.fetch(`${base}/lease`, { method: 'DELETE' })).status, 400)
    assert.equal((await p.fetch(`${base}/lease`, { method: 'DELETE', headers: { 'fly-machine-lease-nonce': 'wrong' } })).status, 409)
    assert.equal((await p.fetch(`${base}/lease`, { method: 'DELETE', headers: { 'fly-machine-lease-nonce': lease.data.nonce } })).status, 200)
    assert.equal((await p.fetch(`${base}/lease`)).status, 404)
  })

  await t.test('metadata: get, put, patch, key get/post/delete; no new version', async () => {
    const base = `/v1/apps/web/machines/${machine.id}`
    const versionsBefore = (await json(await p.fetch(`${base}/versions`))).length
    assert.deepEqual(await json(await p.fetch(`${base}/metadata`)), { role: 'web' })
    assert.equal((await p.fetch(`${base}/metadata`, { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ metadata: { tier: 'gold', role: null } }) })).status, 204)
    assert.deepEqual(await json(await p.fetch(`${base}/metadata`)), { tier: 'gold' })
    assert.equal((await p.fetch(`${base}/metadata`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ metadata: { only: 'this' } }) })).status, 204)
    assert.deepEqual(await json(await p.fetch(`${base}/metadata`)), { only: 'this' })
    assert.equal((await post(`${base}/metadata/zone`, { value: 'a' })).status, 204)
    assert.deepEqual(await json(await p.fetch(`${base}/metadata/zone`)), { value: 'a' })
    assert.equal((await p.fetch(`${base}/metadata/zone`, { method: 'DELETE' })).status, 204)
    assert.equal((await p.fetch(`${base}/metadata/zone`)).status, 404)
    assert.equal((await json(await p.fetch(`${base}/versions`))).length, versionsBefore)
    assert.equal((await json(await p.fetch('/v1/apps/web/machines?metadata.only=this'))).length, 1)
  })

  await t.test('50 concurrent conflicting operations on one Machine: every caller gets a clear answer and the state stays consistent', async () => {
    const base = `/v1/apps/web/machines/${machine.id}`
    const actions = ['stop', 'start', 'suspend', 'restart']
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => post(`${base}/${actions[i % actions.length]}`).then(async (res) => ({ status: res.status, body: await json(res) }))))
    for (const result of results) {
      assert.ok([200, 409, 412].includes(result.status), `unexpected ${result.status}: ${JSON.stringify(result.body)}`)
      if (result.status !== 200) assert.ok(result.body.error && result.body.status, 'a refusal carries Fly’s envelope')
    }
    assert.ok(results.some((r) => r.status === 200))
    const settled = await json(await p.fetch(`${base}/wait?state=settled&timeout=30`))
    assert.ok(['started', 'stopped', 'suspended'].includes(settled.state))
    const exec = await post(`${base}/exec`, { command: ['true'] })
    assert.equal(exec.status === 200, settled.state === 'started', 'the recorded state agrees with the guest')
  })

  await t.test('logs stream live through `hangar logs`, and destroy with force', async () => {
    const logged = await json(await post('/v1/apps/web/machines', { config: { image: busybox, init: { cmd: ['sh', '-c', 'i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.2; done'] } } }))
    const cli = spawn(process.execPath, [CLI_MAIN, 'logs', '-a', 'web', '--json'], { env: { ...process.env, HANGAR_API_URL: p.apiUrl, HANGAR_API_TOKEN: p.token } })
    try {
      const line = await new Promise<{ machine_id: string; message: string }>((resolve, reject) => {
        let buffered = ''
        const timer = setTimeout(() => reject(new Error(`no log line; got ${buffered}`)), 15_000)
        cli.stdout.on('data', (chunk) => {
          buffered += chunk
          for (const text of buffered.split('\n').slice(0, -1)) {
            const parsed = JSON.parse(text)
            if (parsed.machine_id === logged.id) { clearTimeout(timer); resolve(parsed) }
          }
        })
      })
      assert.match(line.message, /^tick \d+$/)
    } finally {
      cli.kill()
    }
    const notForced = await p.fetch(`/v1/apps/web/machines/${logged.id}`, { method: 'DELETE' })
    assert.equal(notForced.status, 412)
    assert.equal((await p.fetch(`/v1/apps/web/machines/${logged.id}?kill=true`, { method: 'DELETE' })).status, 200)
    assert.equal((await json(await p.fetch(`/v1/apps/web/machines/${logged.id}`))).state, 'destroyed')
    assert.equal((await json(await p.fetch('/v1/apps/web/machines?include_deleted=true'))).some((m: Machine) => m.id === logged.id), true)
  })

  await t.test('deleting an app destroys its Machines', async () => {
    assert.equal((await p.fetch('/v1/apps/web', { method: 'DELETE' })).status, 202)
    assert.equal((await p.fetch('/v1/apps/web')).status, 404)
    assert.equal((await p.fetch(`/v1/apps/web/machines/${machine.id}`)).status, 404)
  })
})
