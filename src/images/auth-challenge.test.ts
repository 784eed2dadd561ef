import { test } from 'node:test'
import assert from 'node:assert/strict'
import { parseAuthChallenges } from './auth-challenge.js'

test('Docker Hub bearer challenge with a quoted, comma-holding scope', () => {
  const header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push"'
  assert.deepEqual(parseAuthChallenges(header), [{
    scheme: 'bearer',
    params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:samalba/my-app:pull,push' },
  }])
})

test('basic challenge, error parameter, several challenges, escapes and odd spacing', () => {
  assert.deepEqual(parseAuthChallenges('Basic realm="basic-realm"'), [{ scheme: 'basic', params: { realm: 'basic-realm' } }])
  assert.deepEqual(parseAuthChallenges('Bearer realm="r",service="s",error="insufficient_scope"')[0]!.params.error, 'insufficient_scope')
  assert.deepEqual(parseAuthChallenges('Bearer realm="r", Basic realm="b"').map((c) => c.scheme), ['bearer', 'basic'])
  assert.deepEqual(parseAuthChallenges(['Basic realm="a"', 'Bearer realm="b"']).map((c) => c.params.realm), ['a', 'b'])
  assert.equal(parseAuthChallenges('Basic realm="say \\"hi\\""')[0]!.params.realm, 'say "hi"')
  assert.deepEqual(parseAuthChallenges('BEARER  realm = "x" ,  service=y')[0], { scheme: 'bearer', params: { realm: 'x', service: 'y' } })
  assert.deepEqual(parseAuthChallenges(undefined), [])
  assert.deepEqual(parseAuthChallenges(''), [])
})
