import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { isUnavailable } from '../core/index.js'
import { isImagePullError } from './errors.js'
import { RegistryClient, type PullTarget } from './registry-client.js'
import { parseImageReference } from './reference.js'

// Raw HTTP servers on loopback play registries with exact answers (like undici's own tests).

type Handler = (req: IncomingMessage, res: ServerResponse) => void

async function serve(t: { after: (fn: () => Promise<void>) => void }, handler: Handler): Promise<string> {
  const server = createServer(handler)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  return `127.0.0.1:${(server.address() as AddressInfo).port}`
}

const target = (host: string, repo = 'app'): PullTarget => ({ reference: parseImageReference(`${host}/${repo}:v1`), display: `${host}/${repo}:v1` })
const DIGEST = 'sha256:' + 'e'.repeat(64)
const SECRET = 's3cret-password'

test('a redirected blob download never carries the registry credentials to the other origin', async (t) => {
  const seenAtStore: Array<string | undefined> = []
  const store = await serve(t, (req, res) => { seenAtStore.push(req.headers.authorization); res.end('blob-bytes') })
  const registry = await serve(t, (req, res) => {
    if (req.headers.authorization !== `Basic ${Buffer.from(`u:${SECRET}`).toString('base64')}`) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' }).end()
      return
    }
    res.writeHead(307, { location: `http://${store}/signed?sig=abc` }).end()
  })
  const client = new RegistryClient({ credentials: () => ({ username: 'u', password: SECRET }) })
  t.after(() => client.close())
  const blob = await client.getBlob(target(registry), DIGEST)
  let body = ''
  for await (const chunk of blob.body) body += chunk
  assert.equal(body, 'blob-bytes')
  assert.deepEqual(seenAtStore, [undefined])
})

test('5xx answers are retried; a registry that stays down is unavailable', async (t) => {
  let calls = 0
  const flaky = await serve(t, (_req, res) => {
    calls++
    if (calls < 3) { res.writeHead(503).end(); return }
    res.writeHead(200, { 'docker-content-digest': DIGEST }).end()
  })
  const client = new RegistryClient()
  t.after(() => client.close())
  assert.deepEqual(await client.headManifest(target(flaky), 'v1'), { digest: DIGEST })
  assert.equal(calls, 3)

  const down = await serve(t, (_req, res) => { res.writeHead(502).end() })
  await assert.rejects(client.headManifest(target(down), 'v1'), (err) => isUnavailable(err) && /HTTP 502/.test((err as Error).message))
})

test('an unreachable registry is unavailable, and no error names the password', async (t) => {
  const client = new RegistryClient({ credentials: () => ({ username: 'u', password: SECRET }) })
  t.after(() => client.close())
  const closed = `127.0.0.1:1` // nothing listens on port 1
  await assert.rejects(client.getManifest(target(closed), 'v1'), (err) => {
    assert.ok(isUnavailable(err))
    assert.match((err as Error).message, /^registry 127\.0\.0\.1:1 is not reachable: .*ECONNREFUSED/)
    assert.ok(!(err as Error).message.includes(SECRET))
    return true
  })
})

test('bearer flow: one token per scope, reused until it expires; bad credentials are unauthorized', async (t) => {
  let tokenRequests = 0
  const tokenServer = await serve(t, (req, res) => {
    tokenRequests++
    const url = new URL(req.url!, 'http://x')
    if (req.headers.authorization !== `Basic ${Buffer.from(`u:${SECRET}`).toString('base64')}`) { res.writeHead(401).end(); return }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: `tok:${url.searchParams.get('scope')}:${url.searchParams.get('service')}`, expires_in: 300 }))
  })
  const registry = await serve(t, (req, res) => {
    const repo = req.url!.split('/')[2]
    if (req.headers.authorization !== `Bearer tok:repository:${repo}:pull:svc`) {
      res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${tokenServer}/token",service="svc",scope="repository:${repo}:pull"` }).end()
      return
    }
    res.writeHead(200, { 'docker-content-digest': DIGEST }).end()
  })
  const client = new RegistryClient({ credentials: () => ({ username: 'u', password: SECRET }) })
  t.after(() => client.close())
  for (let i = 0; i < 3; i++) assert.deepEqual(await client.headManifest(target(registry, 'one'), 'v1'), { digest: DIGEST })
  assert.equal(tokenRequests, 1)
  await client.headManifest(target(registry, 'two'), 'v1')
  assert.equal(tokenRequests, 2)

  const wrong = new RegistryClient({ credentials: () => ({ username: 'u', password: 'wrong-password' }) })
  t.after(() => wrong.close())
  await assert.rejects(wrong.headManifest(target(registry, 'one'), 'v1'), (err) =>
    isImagePullError(err, 'unauthorized') && /rejected the configured credentials/.test(err.message) && !err.message.includes('wrong-password'))
})

test('404 on a manifest is not_found naming the image; other 4xx carry the registry error code', async (t) => {
  const registry = await serve(t, (req, res) => {
    if (req.url!.includes('/manifests/')) {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ errors: [{ code: 'MANIFEST_UNKNOWN', message: 'manifest unknown' }] }))
      return
    }
    res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ errors: [{ code: 'DIGEST_INVALID', message: 'bad' }] }))
  })
  const client = new RegistryClient()
  t.after(() => client.close())
  await assert.rejects(client.getManifest(target(registry, 'nope'), 'v1'), (err) =>
    isImagePullError(err, 'not_found') && err.message === `image "${registry}/nope:v1" not found in registry`)
  await assert.rejects(client.getBlob(target(registry), DIGEST), (err) =>
    isImagePullError(err, 'registry_error') && /HTTP 400 for blob .*: DIGEST_INVALID bad/.test(err.message))
})
