import { test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { NotFoundError, toErrorEnvelope } from '../src/core/index.js'
import {
  addThirdPartyCaveat, attenuate, formatAuthorizationHeader, InMemoryKeyStore, InMemoryRevocationList, isAccessDenied, mintDischarge, mintToken,
  openTicket, randomKey, scopeCaveats, thirdPartyTickets, TokenVerifier, type Access,
} from '../src/auth/index.js'

// The auth part over real HTTP, wired the way the API is meant to wire it: parse and verify the
// Authorization header once, authorize each access, turn errors into Fly's envelope with the one
// core function, and answer 404 when a token is refused only because the app is another org's.

interface Server { url: string; close(): Promise<void> }

const APPS: Record<string, string> = { web: 'org-a', api: 'org-a', billing: 'org-b' }

async function startServer(verifier: TokenVerifier): Promise<Server> {
  const server = http.createServer(async (req, res) => {
    const send = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' })
      res.end(JSON.stringify(body))
    }
    try {
      const match = /^\/v1\/apps\/([^/]+)(?:\/machines\/([^/]+)(\/(start|stop))?)?$/.exec(req.url ?? '')
      if (!match) throw new NotFoundError('route')
      const [, app, machine, , verb] = match
      const verified = await verifier.verifyHeader(req.headers.authorization)
      const orgId = APPS[app!]
      if (!orgId) throw new NotFoundError(`app ${app}`)
      const access: Access = { action: verb ? 'C' : req.method === 'GET' ? 'r' : 'w', orgId, appId: app!, ...(machine ? { machineId: machine } : {}) }
      try {
        verifier.authorize(verified, access)
      } catch (err) {
        if (isAccessDenied(err) && err.concealAsNotFound) throw new NotFoundError(`app ${app}`)
        throw err
      }
      send(200, { ok: true, app, machine })
    } catch (err) {
      const { httpStatus, body } = toErrorEnvelope(err)
      send(httpStatus, body)
    }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }),
  }
}

async function call(server: Server, path: string, authorization?: string, method = 'GET') {
  const res = await fetch(server.url + path, { method, headers: authorization ? { authorization } : {} })
  return { status: res.status, body: (await res.json()) as { error?: string; status?: string; code?: string } }
}

test('tokens over HTTP: 200 allowed, 401 unverifiable or expired, 403 out of scope, 404 for another org', async (t) => {
  const keys = new InMemoryKeyStore()
  const revocations = new InMemoryRevocationList()
  const keyA = keys.createKey('org-a')
  let now = Date.now()
  const server = await startServer(new TokenVerifier({ keys, revocations, now: () => now }))
  t.after(() => server.close())

  const deploy = mintToken({ kind: 'deploy', key: keyA, appId: 'web' })
  const deployHeader = formatAuthorizationHeader([deploy.token])

  assert.deepEqual(await call(server, '/v1/apps/web/machines/m1/start', deployHeader, 'POST'), { status: 200, body: { ok: true, app: 'web', machine: 'm1' } })
  assert.deepEqual(await call(server, '/v1/apps/web', `Bearer ${deploy.token}`), { status: 200, body: { ok: true, app: 'web' } })

  const missing = await call(server, '/v1/apps/web')
  assert.equal(missing.status, 401)
  assert.equal(missing.body.code, 'unauthorized')
  assert.match(missing.body.error!, /a token is required/)

  const tampered = await call(server, '/v1/apps/web', `FlyV1 ${deploy.token.slice(0, -8)}AAAAAAA=`)
  assert.equal(tampered.status, 401)

  const otherApp = await call(server, '/v1/apps/api', deployHeader)
  assert.equal(otherApp.status, 403)
  assert.equal(otherApp.body.code, 'forbidden')
  assert.match(otherApp.body.error!, /not valid for app api/)

  const otherOrg = await call(server, '/v1/apps/billing', deployHeader)
  assert.deepEqual(otherOrg, { status: 404, body: { error: 'app billing not found', status: 'unknown', code: 'not_found' } }, 'same answer as an app that does not exist')
  assert.deepEqual(await call(server, '/v1/apps/nonexistent', deployHeader), { status: 404, body: { error: 'app nonexistent not found', status: 'unknown', code: 'not_found' } })

  // Narrowed locally to read one Machine for an hour.
  const narrow = attenuate(deploy.token, scopeCaveats({ appId: 'web', machineId: 'm1', actions: 'r', expiry: '1h', nowMs: now }))
  assert.equal((await call(server, '/v1/apps/web/machines/m1', `FlyV1 ${narrow}`)).status, 200)
  assert.equal((await call(server, '/v1/apps/web/machines/m1/stop', `FlyV1 ${narrow}`, 'POST')).status, 403)
  now += 2 * 3600_000
  const expired = await call(server, '/v1/apps/web/machines/m1', `FlyV1 ${narrow}`)
  assert.equal(expired.status, 401)
  assert.match(expired.body.error!, /expired at/)
  assert.equal((await call(server, '/v1/apps/web', deployHeader)).status, 200, 'the parent token is unaffected')

  // Revocation reaches every token derived from the minted one.
  revocations.revoke(deploy.tokenId)
  assert.equal((await call(server, '/v1/apps/web', deployHeader)).status, 401)
})

test('a token with a third-party caveat works over HTTP only with its discharge in the same header', async (t) => {
  const keys = new InMemoryKeyStore()
  const keyA = keys.createKey('org-a')
  const server = await startServer(new TokenVerifier({ keys }))
  t.after(() => server.close())
  const ssoKey = randomKey()
  const token = addThirdPartyCaveat(mintToken({ kind: 'org', key: keyA }).token, { location: 'https://sso.example', thirdPartyKey: ssoKey })
  assert.equal((await call(server, '/v1/apps/web', `FlyV1 ${token}`)).status, 401)
  const [{ ticket, location }] = thirdPartyTickets(token) as [{ ticket: Buffer; location: string }]
  const discharge = mintDischarge({ ticket, location, dischargeKey: openTicket(ssoKey, ticket).dischargeKey })
  assert.equal((await call(server, '/v1/apps/web', formatAuthorizationHeader([token, discharge]))).status, 200)
})
