// The test kit's registry in each auth mode, checked with plain HTTP the way any client would.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, readFileSync } from 'node:fs'
import { startCountingRelay, startRegistry } from './registry.js'
import { BUSYBOX_APPLETS, buildTar, busyboxLayerEntries, pushBusyboxImage, pushMultiArchImage, sha256 } from './images.js'

const MANIFEST_ACCEPT = 'application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json'

test('anonymous registry: pushes and serves a busybox image; stop() removes process and files', async (t) => {
  const registry = await startRegistry()
  t.after(() => registry.stop())
  assert.match(registry.host, /^127\.0\.0\.1:\d+$/)
  assert.equal((await fetch(`${registry.url}/v2/`)).status, 200)
  const image = await pushBusyboxImage(registry)
  const res = await fetch(`${registry.url}/v2/busybox/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } })
  const body = Buffer.from(await res.arrayBuffer())
  assert.equal(res.status, 200)
  assert.equal(sha256(body), image.digest)
  assert.equal(res.headers.get('docker-content-digest'), image.digest)
  assert.ok(existsSync(registry.blobDataPath(image.layers[0]!.digest)))
  const config = image.config as { config: { Cmd: string[] }; rootfs: { diff_ids: string[] } }
  assert.deepEqual(config.config.Cmd, ['sh'])
  assert.deepEqual(config.rootfs.diff_ids, image.layers.map((l) => l.diffId))

  await registry.stop()
  await registry.stop()
  assert.ok(!existsSync(registry.storageDir))
  await assert.rejects(fetch(`${registry.url}/v2/`))
})

test('basic registry: 401 Basic challenge without credentials, 200 with them', async (t) => {
  const registry = await startRegistry({ auth: 'basic', username: 'alice', password: 'wonderland' })
  t.after(() => registry.stop())
  const anonymous = await fetch(`${registry.url}/v2/`)
  assert.equal(anonymous.status, 401)
  assert.match(anonymous.headers.get('www-authenticate') ?? '', /^Basic realm=/)
  const ok = await fetch(`${registry.url}/v2/`, { headers: { authorization: `Basic ${Buffer.from('alice:wonderland').toString('base64')}` } })
  assert.equal(ok.status, 200)
  const wrong = await fetch(`${registry.url}/v2/`, { headers: { authorization: `Basic ${Buffer.from('alice:nope').toString('base64')}` } })
  assert.equal(wrong.status, 401)
})

test('token registry: the Docker Hub bearer flow against the kit token server', async (t) => {
  const registry = await startRegistry({ auth: 'token', anonymousPull: true })
  t.after(() => registry.stop())
  const image = await pushMultiArchImage(registry, 'team/multi:v1')
  const challenge = await fetch(`${registry.url}/v2/team/multi/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } })
  assert.equal(challenge.status, 401)
  const header = challenge.headers.get('www-authenticate') ?? ''
  const realm = /realm="([^"]+)"/.exec(header)![1]!
  const service = /service="([^"]+)"/.exec(header)![1]!
  assert.equal(/scope="([^"]+)"/.exec(header)![1], 'repository:team/multi:pull')

  const tokenUrl = `${realm}?service=${encodeURIComponent(service)}&scope=${encodeURIComponent('repository:team/multi:pull')}`
  const anonymousToken = (await (await fetch(tokenUrl)).json()) as { token: string }
  const pulled = await fetch(`${registry.url}/v2/team/multi/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT, authorization: `Bearer ${anonymousToken.token}` } })
  assert.equal(pulled.status, 200)
  assert.equal(pulled.headers.get('docker-content-digest'), image.digest)

  const bad = await fetch(tokenUrl, { headers: { authorization: `Basic ${Buffer.from('hangar:wrong').toString('base64')}` } })
  assert.equal(bad.status, 401)
  const good = (await (await fetch(tokenUrl, { headers: { authorization: `Basic ${Buffer.from(`${registry.credentials!.username}:${registry.credentials!.password}`).toString('base64')}` } })).json()) as { token: string; expires_in: number }
  assert.ok(good.token.split('.').length === 3 && good.expires_in > 0)
  assert.ok(registry.tokenServer!.requests >= 3)
})

test('counting relay forwards requests and records them', async (t) => {
  const registry = await startRegistry()
  t.after(() => registry.stop())
  const relay = await startCountingRelay(registry.url)
  t.after(() => relay.stop())
  assert.equal((await fetch(`${relay.url}/v2/`)).status, 200)
  assert.equal((await fetch(`${relay.url}/v2/none/manifests/x`, { method: 'HEAD' })).status, 404)
  assert.deepEqual(relay.requests, [{ method: 'GET', path: '/v2/', status: 200 }, { method: 'HEAD', path: '/v2/none/manifests/x', status: 404 }])
  assert.equal(relay.count('HEAD', /manifests/), 1)
})

test('layers are deterministic tars; busybox has its applet links', async () => {
  const entries = busyboxLayerEntries()
  const [a, b] = await Promise.all([buildTar(entries), buildTar(entries)])
  assert.equal(sha256(a), sha256(b))
  for (const applet of BUSYBOX_APPLETS) assert.ok(entries.some((e) => e.path === `bin/${applet}` && e.target === '/usr/bin/busybox'), applet)
  assert.ok(a.includes(readFileSync('/bin/busybox').subarray(0, 4096)))
})
