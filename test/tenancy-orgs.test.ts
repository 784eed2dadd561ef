import { test } from 'node:test'
import assert from 'node:assert/strict'
import { startRegistry, type TestRegistry } from './kit/registry.js'
import { pushBusyboxImage } from './kit/images.js'
import { startPlatform, type Platform } from './kit/platform.js'

// Tenancy (issue 5): two orgs on one platform (real API, NATS and host process), each with an
// app, a running Machine, a secret, a release, a lease-able Machine and members. Each org's token
// is tried against the other org's everything, on every endpoint: every answer is a 404 that reads
// exactly like "does not exist", nothing the other org owns changes, and the owner still reaches it.

interface Tenant { org: string; token: string; app: string; machineId: string; releaseId: string; tokenId: string }

function endpoints(victim: Tenant, attackerApp: string): Array<[string, string, unknown?]> {
  const app = `/v1/apps/${victim.app}`
  const m = `${app}/machines/${victim.machineId}`
  return [
    ['GET', app], ['DELETE', app],
    ['GET', `${app}/machines`], ['POST', `${app}/machines`, { config: { image: 'example.test/x:1' } }],
    ['GET', m], ['POST', m, { config: { image: 'example.test/x:1' } }], ['DELETE', `${m}?force=true`],
    ['POST', `${m}/start`], ['POST', `${m}/stop`, {}], ['POST', `${m}/suspend`], ['POST', `${m}/restart`],
    ['POST', `${m}/signal`, { signal: 'SIGTERM' }], ['POST', `${m}/cordon`], ['POST', `${m}/uncordon`],
    ['GET', `${m}/wait?state=started&timeout=1`], ['GET', `${m}/events`], ['GET', `${m}/versions`], ['GET', `${m}/ps`],
    ['POST', `${m}/exec`, { command: ['env'] }],
    ['GET', `${m}/lease`], ['POST', `${m}/lease`, { ttl: 30 }], ['DELETE', `${m}/lease`],
    ['GET', `${m}/metadata`], ['PUT', `${m}/metadata`, { metadata: { a: 'b' } }], ['PATCH', `${m}/metadata`, { metadata: { a: 'b' } }],
    ['GET', `${m}/metadata/role`], ['POST', `${m}/metadata/role`, { value: 'x' }], ['DELETE', `${m}/metadata/role`],
    ['GET', `${app}/logs`],
    ['GET', `${app}/secrets`], ['POST', `${app}/secrets`, { values: { STOLEN: 'x' } }], ['GET', `${app}/secrets/DATABASE_URL`],
    ['POST', `${app}/secrets/DATABASE_URL`, { value: 'x' }], ['DELETE', `${app}/secrets/DATABASE_URL`],
    ['GET', `${app}/releases`], ['POST', `${app}/releases`, { image: 'x', strategy: 'rolling' }],
    ['GET', `${app}/releases/${victim.releaseId}`], ['PATCH', `${app}/releases/${victim.releaseId}`, { status: 'failed' }],
    ['POST', `${app}/deploy_token`, {}],
    ['POST', '/v1/apps', { app_name: 'squatter', org_slug: victim.org }],
    ['POST', '/v1/tokens', { kind: 'deploy', org_slug: victim.org, app_name: victim.app }],
    ['POST', '/v1/tokens', { kind: 'org', org_slug: victim.org }],
    ['GET', `/v1/tokens?org_slug=${victim.org}`],
    ['POST', '/v1/tokens/revoke', { token_id: victim.tokenId }],
    ['GET', `/v1/orgs/${victim.org}`], ['GET', `/v1/orgs/${victim.org}/members`],
    ['POST', `/v1/orgs/${victim.org}/members`, { name: 'mallory' }], ['DELETE', `/v1/orgs/${victim.org}/members/owner`],
    // The other org's Machine through the attacker's own app.
    ['GET', `/v1/apps/${attackerApp}/machines/${victim.machineId}`],
    ['POST', `/v1/apps/${attackerApp}/machines/${victim.machineId}/stop`, {}],
    ['POST', `/v1/apps/${attackerApp}/machines/${victim.machineId}/exec`, { command: ['env'] }],
  ]
}

test('tenancy: each org’s token gets 404 for the other org’s apps, Machines, secrets, releases, tokens, members and logs', { timeout: 180_000 }, async (t) => {
  let registry: TestRegistry | undefined
  let platform: Platform | undefined
  t.after(async () => { await platform?.close(); await registry?.stop() })
  registry = await startRegistry()
  await pushBusyboxImage(registry, 'busybox:v1')
  const image = `${registry.host}/busybox:v1`
  platform = await startPlatform()
  const p = platform

  const request = async (token: string, method: string, path: string, body?: unknown) => {
    const res = await p.fetch(path, { method, token: null, headers: { authorization: `FlyV1 ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) }, body: body === undefined ? undefined : JSON.stringify(body) })
    const text = await res.text()
    return { status: res.status, body: text ? JSON.parse(text) : undefined }
  }

  const acmeOrg = await request(p.token, 'POST', '/v1/orgs', { slug: 'acme', name: 'Acme' })
  assert.equal(acmeOrg.status, 201)
  const tenants: Tenant[] = []
  for (const [org, token, app] of [['personal', p.token, 'alpha'], ['acme', acmeOrg.body.token as string, 'beta']] as const) {
    assert.equal((await request(token, 'POST', '/v1/apps', { app_name: app, org_slug: org })).status, 201)
    assert.equal((await request(token, 'POST', `/v1/apps/${app}/secrets`, { values: { DATABASE_URL: `postgres://${org}-secret` } })).status, 200)
    const machine = await request(token, 'POST', `/v1/apps/${app}/machines`, { config: { image, init: { cmd: ['sleep', '3600'] }, metadata: { role: 'db' } } })
    assert.equal(machine.status, 200, JSON.stringify(machine.body))
    const release = await request(token, 'POST', `/v1/apps/${app}/releases`, { image, strategy: 'rolling' })
    const minted = await request(token, 'POST', '/v1/tokens', { kind: 'deploy', app_name: app })
    assert.equal(minted.status, 201)
    tenants.push({ org, token, app, machineId: machine.body.id, releaseId: release.body.id, tokenId: minted.body.id })
  }

  for (const [attacker, victim] of [[tenants[0]!, tenants[1]!], [tenants[1]!, tenants[0]!]]) {
    await t.test(`${attacker.org}'s token against ${victim.org}'s resources`, async () => {
      const absent = await request(attacker.token, 'GET', '/v1/apps/no-such-app')
      for (const [method, path, body] of endpoints(victim, attacker.app)) {
        const res = await request(attacker.token, method, path, body)
        assert.equal(res.status, 404, `${method} ${path} → ${res.status} ${JSON.stringify(res.body)}`)
        assert.equal(res.body.status, absent.body.status, `${method} ${path}`)
        assert.match(res.body.error, /^(app|machine|organization|token) [\w-]+ not found$/, `${method} ${path}: ${res.body.error}`)
        assert.equal(JSON.stringify(res.body).includes('secret'), false)
      }
      const list = await request(attacker.token, 'GET', '/v1/apps')
      assert.deepEqual(list.body.apps.map((a: { name: string }) => a.name), [attacker.app])
      assert.deepEqual((await request(attacker.token, 'GET', `/v1/apps?org_slug=${victim.org}`)).body, { apps: [], total_apps: 0 })
      assert.deepEqual((await request(attacker.token, 'GET', '/v1/orgs')).body.orgs.map((o: { slug: string }) => o.slug), [attacker.org])
    })
  }

  await t.test('a machine-exec token runs only its commands on its Machine, and controls nothing else', async () => {
    const [alpha] = tenants
    const minted = await request(alpha!.token, 'POST', '/v1/tokens', { kind: 'machine-exec', app_name: alpha!.app, machine_id: alpha!.machineId, commands: [['echo']] })
    assert.equal(minted.status, 201, JSON.stringify(minted.body))
    const exec = (command: string[]) => request(minted.body.token, 'POST', `/v1/apps/${alpha!.app}/machines/${alpha!.machineId}/exec`, { command })
    const allowed = await exec(['echo', 'allowed'])
    assert.equal(allowed.status, 200)
    assert.equal(allowed.body.stdout, 'allowed\n')
    const refused = await exec(['sh', '-c', 'echo $DATABASE_URL'])
    assert.equal(refused.status, 403)
    assert.match(refused.body.error, /does not allow running "sh -c echo \$DATABASE_URL"/)
    assert.equal((await request(minted.body.token, 'POST', `/v1/apps/${alpha!.app}/machines/${alpha!.machineId}/stop`, {})).status, 403)
    assert.equal((await request(minted.body.token, 'GET', `/v1/apps/${alpha!.app}/machines/${alpha!.machineId}`)).status, 200, 'it may read the Machine')
    assert.equal((await request(minted.body.token, 'POST', `/v1/apps/${tenants[1]!.app}/machines/${tenants[1]!.machineId}/exec`, { command: ['echo'] })).status, 404)
  })

  await t.test('nothing of either org changed, and each owner still reaches everything', async () => {
    for (const tenant of tenants) {
      const machine = await request(tenant.token, 'GET', `/v1/apps/${tenant.app}/machines/${tenant.machineId}`)
      assert.equal(machine.status, 200)
      assert.equal(machine.body.state, 'started')
      assert.equal(machine.body.cordoned, false)
      assert.deepEqual(machine.body.config.metadata, { role: 'db' })
      assert.equal((await request(tenant.token, 'GET', `/v1/apps/${tenant.app}/machines`)).body.length, 1)
      const secrets = await request(tenant.token, 'GET', `/v1/apps/${tenant.app}/secrets`)
      assert.deepEqual(secrets.body.secrets.map((s: { name: string }) => s.name), ['DATABASE_URL'])
      assert.equal(secrets.body.version, 1)
      assert.equal((await request(tenant.token, 'GET', `/v1/apps/${tenant.app}/releases/${tenant.releaseId}`)).body.status, 'running')
      assert.equal((await request(tenant.token, 'GET', '/v1/tokens')).body.tokens.find((x: { id: string }) => x.id === tenant.tokenId).revoked, false)
      const members = await request(tenant.token, 'GET', `/v1/orgs/${tenant.org}/members`)
      assert.ok(!members.body.members.some((m: { name: string }) => m.name === 'mallory'))
      const exec = await request(tenant.token, 'POST', `/v1/apps/${tenant.app}/machines/${tenant.machineId}/exec`, { command: ['sh', '-c', 'echo $DATABASE_URL'] })
      assert.equal(exec.body.stdout, `postgres://${tenant.org}-secret\n`, 'each Machine has its own org’s secret')
    }
    assert.equal((await request(tenants[0]!.token, 'POST', '/v1/apps', { app_name: 'beta', org_slug: 'personal' })).body.status, 'name_taken', 'app names are global')
  })
})
