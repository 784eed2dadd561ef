import { test } from 'node:test'
import assert from 'node:assert/strict'
import { isInvalidArgument } from '../core/index.js'
import { formatImageReference, isLoopbackRegistry, parseImageReference, registryApiHost } from './reference.js'

const DIGEST = 'sha256:' + 'a'.repeat(64)

test('Docker Hub short names normalise to docker.io/library/<name>:latest', () => {
  assert.deepEqual(parseImageReference('busybox'), { registry: 'docker.io', repository: 'library/busybox', tag: 'latest' })
  assert.deepEqual(parseImageReference('busybox:1.36'), { registry: 'docker.io', repository: 'library/busybox', tag: '1.36' })
  assert.deepEqual(parseImageReference('org/app'), { registry: 'docker.io', repository: 'org/app', tag: 'latest' })
  assert.deepEqual(parseImageReference('index.docker.io/library/nginx:1'), { registry: 'docker.io', repository: 'library/nginx', tag: '1' })
  assert.deepEqual(parseImageReference('docker.io/nginx'), { registry: 'docker.io', repository: 'library/nginx', tag: 'latest' })
  assert.equal(formatImageReference(parseImageReference('busybox')), 'docker.io/library/busybox:latest')
})

test('registries with ports, localhost and IPv6 literals are recognised', () => {
  assert.deepEqual(parseImageReference('127.0.0.1:5000/app:v1'), { registry: '127.0.0.1:5000', repository: 'app', tag: 'v1' })
  assert.deepEqual(parseImageReference('localhost/app'), { registry: 'localhost', repository: 'app', tag: 'latest' })
  assert.deepEqual(parseImageReference('localhost:5000/a/b/c:t'), { registry: 'localhost:5000', repository: 'a/b/c', tag: 't' })
  assert.deepEqual(parseImageReference('[::1]:5000/app:v2'), { registry: '[::1]:5000', repository: 'app', tag: 'v2' })
  assert.deepEqual(parseImageReference('ghcr.io/org/app'), { registry: 'ghcr.io', repository: 'org/app', tag: 'latest' })
})

test('digests pin the image; a tag written beside one is kept for display', () => {
  assert.deepEqual(parseImageReference(`registry.example.com/org/app@${DIGEST}`), { registry: 'registry.example.com', repository: 'org/app', digest: DIGEST })
  assert.deepEqual(parseImageReference(`app:v1@${DIGEST}`), { registry: 'docker.io', repository: 'library/app', tag: 'v1', digest: DIGEST })
  assert.equal(formatImageReference(parseImageReference(`127.0.0.1:5000/app@${DIGEST}`)), `127.0.0.1:5000/app@${DIGEST}`)
})

test('malformed references are invalid_argument errors naming the problem', () => {
  const cases: Array<[string, RegExp]> = [
    ['', /empty/],
    ['UPPER/app', /lowercase/],
    ['app:', /not a valid tag/],
    ['app:bad tag', /whitespace/],
    ['app@sha256:xyz', /not a digest/],
    ['registry.example.com/', /repository name is missing/],
    ['a//b', /not a valid repository name component/],
    ['host:99999/app', /not a valid registry/],
    ['-bad.example.com/app', /not a valid registry/],
    ['app:' + 'x'.repeat(129), /not a valid tag/],
  ]
  for (const [input, message] of cases) {
    assert.throws(() => parseImageReference(input), (err: unknown) => isInvalidArgument(err) && message.test((err as Error).message) && (err as Error).message.includes('invalid image reference'), input)
  }
})

test('Docker Hub is reached at registry-1.docker.io; loopback registries are recognised', () => {
  assert.equal(registryApiHost('docker.io'), 'registry-1.docker.io')
  assert.equal(registryApiHost('127.0.0.1:5000'), '127.0.0.1:5000')
  assert.ok(isLoopbackRegistry('127.0.0.1:5000'))
  assert.ok(isLoopbackRegistry('127.3.4.5'))
  assert.ok(isLoopbackRegistry('localhost:5000'))
  assert.ok(isLoopbackRegistry('[::1]:5000'))
  assert.ok(!isLoopbackRegistry('registry.example.com'))
  assert.ok(!isLoopbackRegistry('10.0.0.1:5000'))
})
