import { test } from 'node:test'
import assert from 'node:assert/strict'
import { DigestAccumulator, assertDigest, digestOf, isDigest, parseDigest } from './digest.js'
import { isImagePullError } from './errors.js'

test('digestOf and the streaming accumulator agree', () => {
  const data = Buffer.from('hello hangar')
  const acc = new DigestAccumulator(digestOf(data))
  acc.update(data.subarray(0, 5))
  acc.update(data.subarray(5))
  assert.equal(acc.bytes, data.length)
  assert.equal(acc.digest(), digestOf(data))
  assert.match(digestOf(data, 'sha512'), /^sha512:[0-9a-f]{128}$/)
})

test('only well-formed sha256/sha512 digests parse', () => {
  assert.deepEqual(parseDigest('sha256:' + 'b'.repeat(64)), { algorithm: 'sha256', hex: 'b'.repeat(64) })
  assert.ok(isDigest('sha512:' + '0'.repeat(128)))
  assert.ok(!isDigest('sha256:' + 'B'.repeat(64)))
  assert.ok(!isDigest('sha256:abc'))
  assert.ok(!isDigest('nodigest'))
  assert.throws(() => parseDigest('md5:' + 'a'.repeat(32)), (err) => isImagePullError(err, 'unsupported'))
  assert.throws(() => parseDigest('sha256:short'), (err) => isImagePullError(err, 'invalid_image'))
})

test('a mismatch is a digest_mismatch pull error naming both digests', () => {
  const expected = digestOf(Buffer.from('a'))
  const actual = digestOf(Buffer.from('b'))
  assert.doesNotThrow(() => assertDigest('manifest', expected, expected))
  assert.throws(() => assertDigest('image "x": manifest', expected, actual), (err) =>
    isImagePullError(err, 'digest_mismatch') && err.code === 'unprocessable' && err.httpStatus === 422 &&
    err.message === `image "x": manifest digest mismatch: expected ${expected}, got ${actual}`)
})
