import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import createClient from 'openapi-fetch'
import { Ajv } from 'ajv'
import type { paths } from './generated/fly-machines.js'
import { startRegistry, type TestRegistry } from './kit/registry.js'
import { pushHttpServerImage } from './kit/images.js'
import { startPlatform, type Platform } from './kit/platform.js'

// Conformance with Fly's Machines API: a typed client generated from spec/fly-machines-openapi.json
// by a third-party generator (openapi-typescript, used through openapi-fetch) drives every
// endpoint Hangar serves, and each response body is checked against the schema the spec gives
// for that path, method and status (ajv).

const SPEC = JSON.parse(readFileSync(new URL('../../spec/fly-machines-openapi.json', import.meta.url), 'utf8'))
const ajv = new Ajv({ strict: false, allErrors: true })
ajv.addSchema({ $id: 'fly', components: SPEC.components })

/** Checks `body` against the spec's response schema for (path, method, status). */
function conforms(path: string, method: string, status: number, body: unknown): void {
  const response = SPEC.paths[path]?.[method]?.responses?.[String(status)]
  assert.ok(response, `the spec documents ${method.toUpperCase()} ${path} → ${status}`)
  const schema = response.content?.['application/json']?.schema
  if (!schema) return // the spec gives no body schema for this status
  const rewritten = JSON.parse(JSON.stringify(schema).replaceAll('"#/components/', '"fly#/components/'))
  const validate = ajv.compile(rewritten)
  assert.ok(validate(body), `${method.toUpperCase()} ${path} → ${status} does not match the spec: ${ajv.errorsText(validate.errors)}\n${JSON.stringify(body).slice(0, 500)}`)
}

test('conformance: a client generated from Fly’s OpenAPI spec drives every Machines endpoint and every answer matches the spec', { timeout: 180_000 }, async (t) => {
  let registry: TestRegistry | undefined
  let platform: Platform | undefined
  t.after(async () => { await platform?.close(); await registry?.stop() })
  registry = await startRegistry()
  await pushHttpServerImage(registry, 'http:v1')
  const image = `${registry.host}/http:v1`
  platform = await startPlatform()
  const client = createClient<paths>({ baseUrl: platform.apiUrl, headers: { authorization: `Bearer ${platform.token}` } })
  const app = { path: { app_name: 'conform' } }

  const created = await client.POST('/v1/apps', { body: { app_name: 'conform', org_slug: 'personal' } as never })
  assert.equal(created.response.status, 201)
  conforms('/v1/apps', 'post', 201, created.data)

  const apps = await client.GET('/v1/apps', { params: { query: { org_slug: 'personal' } } })
  assert.equal(apps.response.status, 200)
  conforms('/v1/apps', 'get', 200, apps.data)
  assert.equal(apps.data?.apps?.[0]?.name, 'conform')

  const got = await client.GET('/v1/apps/{app_name}', { params: app })
  conforms('/v1/apps/{app_name}', 'get', 200, got.data)

  const machine = await client.POST('/v1/apps/{app_name}/machines', {
    params: app,
    body: { name: 'conformance', region: 'tst', config: { image, guest: { cpus: 1, memory_mb: 256, cpu_kind: 'shared' }, env: { A: '1' }, metadata: { k: 'v' }, services: [{ protocol: 'tcp', internal_port: 8080, ports: [{ port: 80, handlers: ['http'] }], autostop: 'stop', autostart: true, concurrency: { type: 'requests', soft_limit: 20, hard_limit: 25 } }], restart: { policy: 'on-failure', max_retries: 3 }, stop_config: { signal: 'SIGTERM', timeout: '5s' } } },
  })
  assert.equal(machine.response.status, 200, JSON.stringify(machine.error))
  conforms('/v1/apps/{app_name}/machines', 'post', 200, machine.data)
  const id = machine.data!.id!
  const m = { path: { app_name: 'conform', machine_id: id } }
  assert.equal(machine.data?.config?.services?.[0]?.autostop, 'stop' as never)

  const list = await client.GET('/v1/apps/{app_name}/machines', { params: { ...app, query: { include_deleted: true, region: 'tst' } } })
  conforms('/v1/apps/{app_name}/machines', 'get', 200, list.data)
  assert.equal(list.data?.length, 1)

  const one = await client.GET('/v1/apps/{app_name}/machines/{machine_id}', { params: m })
  conforms('/v1/apps/{app_name}/machines/{machine_id}', 'get', 200, one.data)

  const wait = await client.GET('/v1/apps/{app_name}/machines/{machine_id}/wait', { params: { ...m, query: { state: 'started', timeout: 30 } as never } })
  conforms('/v1/apps/{app_name}/machines/{machine_id}/wait', 'get', 200, wait.data)

  const updated = await client.POST('/v1/apps/{app_name}/machines/{machine_id}', { params: m, body: { config: { ...one.data!.config!, env: { A: '2' } }, current_version: one.data!.instance_id } })
  assert.equal(updated.response.status, 200, JSON.stringify(updated.error))
  conforms('/v1/apps/{app_name}/machines/{machine_id}', 'post', 200, updated.data)

  const events = await client.GET('/v1/apps/{app_name}/machines/{machine_id}/events', { params: { ...m, query: { limit: 10 } } })
  conforms('/v1/apps/{app_name}/machines/{machine_id}/events', 'get', 200, events.data)
  const versions = await client.GET('/v1/apps/{app_name}/machines/{machine_id}/versions', { params: m })
  conforms('/v1/apps/{app_name}/machines/{machine_id}/versions', 'get', 200, versions.data)
  const ps = await client.GET('/v1/apps/{app_name}/machines/{machine_id}/ps', { params: m })
  conforms('/v1/apps/{app_name}/machines/{machine_id}/ps', 'get', 200, ps.data)

  const exec = await client.POST('/v1/apps/{app_name}/machines/{machine_id}/exec', { params: m, body: { command: ['sh', '-c', 'echo $A'] }, parseAs: 'json' })
  assert.equal(exec.response.status, 200)
  const execBody = exec.data as unknown as { stdout: string }
  assert.equal(execBody.stdout, '2\n')
  conforms('/v1/apps/{app_name}/machines/{machine_id}/exec', 'post', 200, execBody)

  const lease = await client.POST('/v1/apps/{app_name}/machines/{machine_id}/lease', { params: m, body: { ttl: 30, description: 'conformance' } })
  assert.equal(lease.response.status, 201)
  conforms('/v1/apps/{app_name}/machines/{machine_id}/lease', 'post', 201, lease.data)
  const nonce = (lease.data as { nonce?: string }).nonce!
  const leaseGet = await client.GET('/v1/apps/{app_name}/machines/{machine_id}/lease', { params: m })
  conforms('/v1/apps/{app_name}/machines/{machine_id}/lease', 'get', 200, leaseGet.data)
  const released = await client.DELETE('/v1/apps/{app_name}/machines/{machine_id}/lease', { params: { ...m, header: { 'fly-machine-lease-nonce': nonce } } })
  assert.equal(released.response.status, 200)

  const metadata = await client.GET('/v1/apps/{app_name}/machines/{machine_id}/metadata', { params: m })
  conforms('/v1/apps/{app_name}/machines/{machine_id}/metadata', 'get', 200, metadata.data)
  assert.equal((await client.PATCH('/v1/apps/{app_name}/machines/{machine_id}/metadata', { params: m, body: { metadata: { x: 'y' } } })).response.status, 204)
  assert.equal((await client.PUT('/v1/apps/{app_name}/machines/{machine_id}/metadata', { params: m, body: { metadata: { x: 'z' } } })).response.status, 204)
  assert.equal((await client.POST('/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}', { params: { path: { ...m.path, key: 'zone' } }, body: { value: 'a' } })).response.status, 204)
  const key = await client.GET('/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}', { params: { path: { ...m.path, key: 'zone' } } })
  conforms('/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}', 'get', 200, key.data)
  assert.equal((await client.DELETE('/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}', { params: { path: { ...m.path, key: 'zone' } } })).response.status, 204)
  const missingKey = await client.GET('/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}', { params: { path: { ...m.path, key: 'zone' } } })
  assert.equal(missingKey.response.status, 404)
  conforms('/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}', 'get', 404, missingKey.error)

  for (const [path, status] of [['/v1/apps/{app_name}/machines/{machine_id}/cordon', 200], ['/v1/apps/{app_name}/machines/{machine_id}/uncordon', 200]] as const) {
    assert.equal((await client.POST(path, { params: m })).response.status, status)
  }
  assert.equal((await client.POST('/v1/apps/{app_name}/machines/{machine_id}/signal', { params: m, body: { signal: 'SIGHUP' } })).response.status, 200)
  await client.GET('/v1/apps/{app_name}/machines/{machine_id}/wait', { params: { ...m, query: { state: 'started', timeout: 30 } as never } })
  const stop = await client.POST('/v1/apps/{app_name}/machines/{machine_id}/stop', { params: m, body: { signal: 'SIGTERM', timeout: '5s' } })
  assert.equal(stop.response.status, 200)
  const stopAgain = await client.POST('/v1/apps/{app_name}/machines/{machine_id}/stop', { params: m, body: {} })
  assert.equal(stopAgain.response.status, 412)
  conforms('/v1/apps/{app_name}/machines/{machine_id}/stop', 'post', 400, stopAgain.error) // the spec documents the error envelope under 400
  assert.equal((await client.POST('/v1/apps/{app_name}/machines/{machine_id}/start', { params: m })).response.status, 200)
  assert.equal((await client.POST('/v1/apps/{app_name}/machines/{machine_id}/suspend', { params: m })).response.status, 200)
  assert.equal((await client.POST('/v1/apps/{app_name}/machines/{machine_id}/start', { params: m })).response.status, 200)
  assert.equal((await client.POST('/v1/apps/{app_name}/machines/{machine_id}/restart', { params: { ...m, query: { signal: 'SIGTERM' } } })).response.status, 200)

  const badWait = await client.GET('/v1/apps/{app_name}/machines/{machine_id}/wait', { params: { ...m, query: { timeout: 120 } as never } })
  assert.equal(badWait.response.status, 400)
  conforms('/v1/apps/{app_name}/machines/{machine_id}/wait', 'get', 400, badWait.error)

  const destroyed = await client.DELETE('/v1/apps/{app_name}/machines/{machine_id}', { params: { ...m, query: { force: true } } })
  assert.equal(destroyed.response.status, 200)
  const regions = await client.GET('/v1/platform/regions', {})
  conforms('/v1/platform/regions', 'get', 200, regions.data)
  assert.equal((await client.DELETE('/v1/apps/{app_name}', { params: app })).response.status, 202)
})
