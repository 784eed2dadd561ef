// Pulling from a real registry (Debian's docker-registry on loopback) in each auth mode, with
// images the test kit builds and pushes. What a user of ImageStore sees: the parsed config, the
// unpacked layers, typed errors with clear messages, and a cache that downloads each layer once.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createLogger, isInvalidArgument } from '../src/core/index.js'
import { ImageStore, isImagePullError, listStoredLayers, type ImageStoreOptions } from '../src/images/index.js'
import { startCountingRelay, startRegistry, type TestRegistry } from './kit/registry.js'
import { eventually } from './kit/eventually.js'
import {
  BUSYBOX_ENV, HTTP_SERVER_BODY, pushBusyboxImage, pushHttpServerImage, pushImage, pushIndex, pushMultiArchImage, busyboxLayerEntries,
  type PushedImage, type PushedIndex,
} from './kit/images.js'

let open: TestRegistry
let basic: TestRegistry
let token: TestRegistry
let workRoot: string
const images: Record<string, PushedImage> = {}
let multiArch: PushedIndex
let multiArchDocker: PushedIndex

before(async () => {
  workRoot = await mkdtemp(join(tmpdir(), 'hangar-images-pull-'))
  ;[open, basic, token] = await Promise.all([startRegistry(), startRegistry({ auth: 'basic' }), startRegistry({ auth: 'token' })])
  images.busybox = await pushBusyboxImage(open, 'busybox:v1')
  images.docker = await pushBusyboxImage(open, 'docker-types:v1', { mediaTypes: 'docker', config: { Entrypoint: ['/bin/sh', '-c'], Cmd: ['echo hi'], WorkingDir: '/tmp', User: 'nobody' } })
  images.http = await pushHttpServerImage(open, 'http-server:v1')
  images.zstd = await pushImage(open, 'zstd:v1', { layers: [[{ path: 'hello.txt', content: 'zstd layer\n' }]], compression: 'zstd' })
  images.basic = await pushBusyboxImage(basic, 'private/app:v1')
  images.token = await pushHttpServerImage(token, 'private/web:v1')
  multiArch = await pushMultiArchImage(open, 'multiarch:v1')
  multiArchDocker = await pushMultiArchImage(open, 'multiarch-docker:v1', { mediaTypes: 'docker' })
})

after(async () => {
  await Promise.all([open?.stop(), basic?.stop(), token?.stop()])
  if (workRoot) await rm(workRoot, { recursive: true, force: true })
})

async function newStore(t: { after: (fn: () => Promise<void>) => void }, options: Partial<ImageStoreOptions> = {}): Promise<ImageStore> {
  const dataDir = await mkdtemp(join(workRoot, 'store-'))
  const store = new ImageStore({ dataDir, ...options })
  t.after(async () => { await store.close(); await rm(dataDir, { recursive: true, force: true }) })
  return store
}

const layerFile = (layerDirs: string[], path: string) => {
  for (const dir of [...layerDirs].reverse()) if (existsSync(join(dir, path))) return join(dir, path)
  return undefined
}

test('anonymous pull of an OCI image: config, Fly image_ref and unpacked layers', async (t) => {
  const store = await newStore(t)
  const image = await store.pull(images.http!.ref)
  assert.equal(image.ref, images.http!.ref)
  assert.equal(image.digest, images.http!.digest)
  assert.equal(image.manifestDigest, images.http!.digest)
  assert.equal(image.configDigest, images.http!.configDigest)
  assert.deepEqual(image.config, {
    env: BUSYBOX_ENV, entrypoint: [], cmd: ['httpd', '-f', '-p', '8080', '-h', '/www'], workingDir: '', user: '',
    labels: { 'org.opencontainers.image.title': 'hangar http-server' }, exposedPorts: ['8080/tcp'],
  })
  assert.deepEqual(image.imageRef, { registry: open.host, repository: 'http-server', tag: 'v1', digest: images.http!.digest, labels: { 'org.opencontainers.image.title': 'hangar http-server' } })
  assert.deepEqual(image.platform, { os: 'linux', architecture: 'amd64' })
  assert.equal(image.layerDirs.length, 2)
  assert.deepEqual(image.layers.map((l) => l.diffId), images.http!.layers.map((l) => l.diffId))
  assert.equal(readFileSync(layerFile(image.layerDirs, 'www/index.html')!, 'utf8'), HTTP_SERVER_BODY)
  assert.deepEqual(readFileSync(layerFile(image.layerDirs, 'usr/bin/busybox')!), readFileSync('/bin/busybox'))
  assert.deepEqual(store.get(images.http!.ref), image)
})

test('Docker schema2 media types pull the same way', async (t) => {
  const store = await newStore(t)
  const image = await store.pull(images.docker!.ref)
  assert.equal(image.digest, images.docker!.digest)
  assert.deepEqual(image.config.entrypoint, ['/bin/sh', '-c'])
  assert.deepEqual(image.config.cmd, ['echo hi'])
  assert.equal(image.config.workingDir, '/tmp')
  assert.equal(image.config.user, 'nobody')
  assert.equal(image.layers[0]!.mediaType, 'application/vnd.docker.image.rootfs.diff.tar.gzip')
})

test('zstd-compressed OCI layers unpack', async (t) => {
  const store = await newStore(t)
  const image = await store.pull(images.zstd!.ref)
  assert.equal(readFileSync(join(image.layerDirs[0]!, 'hello.txt'), 'utf8'), 'zstd layer\n')
})

test('manifest lists and OCI indexes resolve to linux/amd64', async (t) => {
  const store = await newStore(t)
  for (const index of [multiArch, multiArchDocker]) {
    const image = await store.pull(index.ref)
    const amd64 = index.images.find((i) => i.platform.architecture === 'amd64')!
    assert.equal(image.digest, index.digest, 'digest is what the tag names: the index')
    assert.equal(image.manifestDigest, amd64.digest)
    assert.equal(image.imageRef.digest, index.digest)
    assert.equal(readFileSync(layerFile(image.layerDirs, 'etc/arch')!, 'utf8'), 'amd64\n')
    assert.deepEqual(store.get(index.pinnedRef)?.manifestDigest, amd64.digest)
  }
})

test('a manifest list without this platform is refused, naming what it offers', async (t) => {
  const pushed = await pushIndex(open, 'arm-only:v1', [
    { layers: [[{ path: 'x', content: 'arm' }]], platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
  ])
  const store = await newStore(t)
  await assert.rejects(store.pull(pushed.ref), (err) =>
    isImagePullError(err, 'no_matching_platform') && err.message === `image "${pushed.ref}" has no linux/amd64 variant (available: linux/arm64/v8)`)
})

test('HTTP basic auth: the configured credentials work; none or wrong ones are clear errors without secrets', async (t) => {
  const lines: string[] = []
  const logger = createLogger('images-test', { level: 'debug', write: (line) => lines.push(line) })
  const good = await newStore(t, { credentials: (registry) => (registry === basic.host ? basic.credentials : undefined), logger })
  const image = await good.pull(images.basic!.ref)
  assert.equal(image.digest, images.basic!.digest)

  const none = await newStore(t)
  await assert.rejects(none.pull(images.basic!.ref), (err) =>
    isImagePullError(err, 'unauthorized') && err.httpStatus === 422 &&
    err.message === `image "${images.basic!.ref}": registry ${basic.host} requires authentication (the repository does not exist or needs credentials, and none are configured for ${basic.host})`)

  const wrongPassword = 'not-the-password-' + Math.random().toString(36).slice(2)
  const wrong = await newStore(t, { credentials: () => ({ username: basic.credentials!.username, password: wrongPassword }), logger })
  await assert.rejects(wrong.pull(images.basic!.ref), (err) => {
    assert.ok(isImagePullError(err, 'unauthorized'))
    assert.equal(err.message, `image "${images.basic!.ref}": registry ${basic.host} rejected the configured credentials`)
    return true
  })
  const logged = lines.join('')
  assert.ok(logged.length > 0)
  assert.ok(!logged.includes(wrongPassword) && !logged.includes(basic.credentials!.password), 'no password in logs')
})

test('bearer token auth (the Docker Hub flow): token fetched once, then reused', async (t) => {
  const store = await newStore(t, { credentials: (registry) => (registry === token.host ? token.credentials : undefined) })
  const before = token.tokenServer!.requests
  const image = await store.pull(images.token!.ref)
  assert.equal(image.digest, images.token!.digest)
  assert.equal(readFileSync(layerFile(image.layerDirs, 'www/index.html')!, 'utf8'), HTTP_SERVER_BODY)
  await store.pull(images.token!.ref) // cached: one HEAD with the cached token
  assert.equal(token.tokenServer!.requests - before, 1)

  const wrong = await newStore(t, { credentials: () => ({ username: 'hangar', password: 'wrong' }) })
  await assert.rejects(wrong.pull(images.token!.ref), (err) =>
    isImagePullError(err, 'unauthorized') && err.message === `image "${images.token!.ref}": the token server of registry ${token.host} rejected the configured credentials (HTTP 401)`)

  const anonymous = await newStore(t)
  await assert.rejects(anonymous.pull(images.token!.ref), (err) =>
    isImagePullError(err, 'unauthorized') && err.message.startsWith(`image "${images.token!.ref}": registry ${token.host} requires authentication`))
})

test('missing repository, tag or digest: not_found, and nothing is left behind', async (t) => {
  const store = await newStore(t)
  const missingDigest = `${open.host}/busybox@sha256:${'0'.repeat(64)}`
  for (const ref of [`${open.host}/nope:v1`, `${open.host}/busybox:no-such-tag`, missingDigest]) {
    await assert.rejects(store.pull(ref), (err) => isImagePullError(err, 'not_found') && err.message === `image "${ref}" not found in registry`)
  }
  assert.deepEqual(readdirSync(join(store.dataDir, 'tmp')), [])
  assert.deepEqual(listStoredLayers(store.dataDir), [])
  assert.equal(store.get(`${open.host}/nope:v1`), undefined)
  await assert.rejects(store.pull('Not A Reference'), (err) => isInvalidArgument(err))
})

test('a tampered layer blob is a digest error and leaves nothing in the cache', async (t) => {
  const pushed = await pushImage(open, 'tampered-layer:v1', { layers: [[{ path: 'a.txt', content: 'original content '.repeat(100) }]] })
  const layer = pushed.layers[0]!
  const path = open.blobDataPath(layer.digest)
  const bytes = readFileSync(path)
  bytes[Math.floor(bytes.length / 2)] ^= 0xff // same length, different bytes
  writeFileSync(path, bytes)

  const store = await newStore(t)
  await assert.rejects(store.pull(pushed.ref), (err) =>
    isImagePullError(err, 'digest_mismatch') && err.code === 'unprocessable' &&
    err.message.startsWith(`image "${pushed.ref}": layer 0 ${layer.digest} digest mismatch: expected ${layer.digest}, got sha256:`))
  assert.ok(!existsSync(store.blobPath(layer.digest)), 'the bad blob is not stored')
  assert.ok(!existsSync(store.layerPath(layer.diffId)), 'no layer directory')
  assert.ok(!existsSync(store.blobPath(pushed.digest)), 'the manifest is not recorded')
  assert.deepEqual(readdirSync(join(store.dataDir, 'tmp')), [])
  assert.equal(store.get(pushed.ref), undefined)
})

test('a tampered manifest is a manifest digest mismatch', async (t) => {
  const pushed = await pushImage(open, 'tampered-manifest:v1', { layers: [[{ path: 'b.txt', content: 'b' }]] })
  const path = open.blobDataPath(pushed.digest)
  const layerHex = pushed.layers[0]!.digest.slice('sha256:'.length)
  const forged = layerHex.slice(0, -1) + (layerHex.endsWith('0') ? '1' : '0')
  writeFileSync(path, readFileSync(path, 'utf8').replace(layerHex, forged)) // same length, other bytes
  const store = await newStore(t)
  await assert.rejects(store.pull(pushed.ref), (err) => isImagePullError(err, 'digest_mismatch') && err.message.startsWith(`image "${pushed.ref}": manifest digest mismatch: expected ${pushed.digest}, got sha256:`))
  await assert.rejects(store.pull(pushed.pinnedRef), (err) => isImagePullError(err, 'digest_mismatch'))
  assert.deepEqual(listStoredLayers(store.dataDir), [])
})

test('20 concurrent pulls fetch the manifest and each layer once; images sharing a layer share the download', async (t) => {
  const relay = await startCountingRelay(open.url)
  t.after(() => relay.stop())
  const store = await newStore(t)
  const http = `${relay.host}/http-server:v1`
  const busybox = `${relay.host}/busybox:v1`
  const pulls = await Promise.all([
    ...Array.from({ length: 20 }, () => store.pull(http)),
    ...Array.from({ length: 5 }, () => store.pull(busybox)),
  ])
  assert.ok(pulls.slice(0, 20).every((p) => p.digest === images.http!.digest))
  assert.ok(pulls.slice(20).every((p) => p.digest === images.busybox!.digest))
  assert.equal(relay.count('HEAD', /\/v2\/http-server\/manifests\/v1$/), 1)
  // Every blob of either image (the shared busybox layer included) was downloaded exactly once.
  const blobGets = relay.requests.filter((r) => r.method === 'GET' && r.path.includes('/blobs/'))
  const perDigest = new Map<string, number>()
  for (const r of blobGets) { const d = r.path.split('/blobs/')[1]!; perDigest.set(d, (perDigest.get(d) ?? 0) + 1) }
  assert.ok([...perDigest.values()].every((n) => n === 1), JSON.stringify([...perDigest]))
  const sharedLayer = images.busybox!.layers[0]!.digest
  assert.equal(images.http!.layers[0]!.digest, sharedLayer)
  assert.equal(perDigest.get(sharedLayer), 1)
  assert.equal(listStoredLayers(store.dataDir).length, 2)
})

test('cached pulls: by digest without any request, by tag with one HEAD; get() never asks', async (t) => {
  const relay = await startCountingRelay(open.url)
  t.after(() => relay.stop())
  const store = await newStore(t, { tagReuseMs: 0 })
  const byTag = `${relay.host}/busybox:v1`
  const byDigest = `${relay.host}/busybox@${images.busybox!.digest}`
  assert.equal(store.get(byTag), undefined)
  await store.pull(byTag)
  const afterFirst = relay.requests.length

  let started = performance.now()
  const pinned = await store.pull(byDigest)
  const digestMs = performance.now() - started
  assert.equal(relay.requests.length, afterFirst, 'no request for a cached digest')
  assert.equal(pinned.digest, images.busybox!.digest)
  assert.equal(pinned.imageRef.tag, '')

  started = performance.now()
  await store.pull(byTag)
  const tagMs = performance.now() - started
  assert.deepEqual(relay.requests.slice(afterFirst).map((r) => `${r.method} ${r.path}`), ['HEAD /v2/busybox/manifests/v1'])
  assert.ok(store.get(byTag))
  assert.equal(relay.requests.length, afterFirst + 1)
  t.diagnostic(`cached pull by digest ${digestMs.toFixed(2)} ms, by tag ${tagMs.toFixed(2)} ms`)
  assert.ok(digestMs < 20, `cached pull by digest took ${digestMs} ms`)
})

test('a tag resolved a moment ago is not asked again within tagReuseMs; after that it is', async (t) => {
  const relay = await startCountingRelay(open.url)
  t.after(() => relay.stop())
  const store = await newStore(t, { tagReuseMs: 300 })
  const byTag = `${relay.host}/busybox:v1`
  const first = await store.pull(byTag)
  const heads = () => relay.count('HEAD', /\/v2\/busybox\/manifests\/v1$/)
  const afterFirst = heads()
  for (let i = 0; i < 10; i++) assert.equal((await store.pull(byTag)).digest, first.digest)
  assert.equal(heads(), afterFirst, 'a burst of pulls within the window sends no HEAD')
  // The behaviour under test is a time window: wait for it to close, then the tag is asked again.
  const windowEnds = performance.now() + 300
  await eventually('the reuse window has closed', () => performance.now() > windowEnds)
  assert.equal((await store.pull(byTag)).digest, first.digest)
  assert.equal(heads(), afterFirst + 1)
})

test('a restarted store finds its cache on disk and sweeps the leftovers of a crashed pull', async (t) => {
  const relay = await startCountingRelay(open.url)
  t.after(() => relay.stop())
  const dataDir = await mkdtemp(join(workRoot, 'restart-'))
  t.after(() => rm(dataDir, { recursive: true, force: true }))
  const first = new ImageStore({ dataDir })
  const pulled = await first.pull(`${relay.host}/busybox:v1`)
  await first.close()
  await first.close() // idempotent

  // A half-unpacked layer from a process that died (pid 999999 does not exist).
  mkdirSync(join(dataDir, 'tmp', '999999-layer-abc', 'usr'), { recursive: true })
  const requests = relay.requests.length
  const second = new ImageStore({ dataDir })
  t.after(() => second.close())
  assert.deepEqual(second.get(`${relay.host}/busybox:v1`), pulled)
  assert.deepEqual((await second.pull(`${relay.host}/busybox@${pulled.digest}`)).layerDirs, pulled.layerDirs)
  assert.equal(relay.requests.length, requests)
  assert.deepEqual(readdirSync(join(dataDir, 'tmp')), [])
})

test('a pull that waits can be abandoned by its caller without spoiling the shared download', async (t) => {
  const store = await newStore(t)
  const big = await pushImage(open, 'abandon:v1', { layers: [busyboxLayerEntries(), [{ path: 'pad', content: 'x'.repeat(1 << 20) }]] }, { layerCacheKeys: ['busybox'] })
  const controller = new AbortController()
  const impatient = store.pull(big.ref, { signal: controller.signal })
  const patient = store.pull(big.ref)
  controller.abort(new Error('caller gave up'))
  await assert.rejects(impatient, /caller gave up/)
  assert.equal((await patient).digest, big.digest)
})

test('an image pushed inside a one-entry index pulls to the index digest', async (t) => {
  const pushed = await pushImage(open, 'wrapped:v1', { layers: [[{ path: 'w.txt', content: 'wrapped' }]], index: true, mediaTypes: 'docker' })
  const store = await newStore(t)
  const image = await store.pull(pushed.ref)
  assert.equal(image.digest, pushed.index!.digest)
  assert.equal(image.manifestDigest, pushed.digest)
  assert.equal(readFileSync(join(image.layerDirs[0]!, 'w.txt'), 'utf8'), 'wrapped')
})

test("aborting the store's signal mid-download stops the pull and leaves no temp files or layers", async (t) => {
  const relay = await startCountingRelay(open.url, { holdPaths: /\/blobs\/sha256:/ })
  t.after(() => relay.stop())
  const controller = new AbortController()
  const store = await newStore(t, { signal: controller.signal })
  const pulling = store.pull(`${relay.host}/busybox:v1`)
  await waitFor(() => relay.arrived.some((r) => r.startsWith('GET /v2/busybox/blobs/')))
  controller.abort(new Error('host shutting down'))
  await assert.rejects(pulling)
  await store.close()
  relay.release()
  assert.deepEqual(readdirSync(join(store.dataDir, 'tmp')), [])
  assert.deepEqual(listStoredLayers(store.dataDir), [])
  await assert.rejects(store.pull(`${relay.host}/busybox:v1`), /closed/)
})

async function waitFor(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 5))
  }
}
