import { test } from 'node:test'
import assert from 'node:assert/strict'
import { ERROR_KINDS, HangarError, IllegalStateError, NotFoundError, errorFromWire, errorToWire, isIllegalState, isNotFound, toErrorEnvelope } from './errors.js'

test('every error code has an HTTP status, a Fly status word and a description', () => {
  for (const [code, kind] of Object.entries(ERROR_KINDS)) {
    assert.ok(kind.httpStatus >= 400 && kind.httpStatus < 600, code)
    assert.ok(kind.flyStatus.length > 0, code)
    assert.ok(kind.description.length > 10, code)
  }
})

test('toErrorEnvelope maps typed errors to Fly envelopes and hides unknown ones', () => {
  assert.deepEqual(toErrorEnvelope(new NotFoundError('machine 148ed193b95089')), { httpStatus: 404, body: { error: 'machine 148ed193b95089 not found', status: 'unknown', code: 'not_found' } })
  const hidden = toErrorEnvelope(new Error('ENOENT /var/lib/secret/path'))
  assert.equal(hidden.httpStatus, 500)
  assert.ok(!hidden.body.error.includes('/var/lib'))
})

test('errors survive the trip over NATS with their kind and current state', () => {
  const original = new IllegalStateError('unable to start machine from current state: started', 'started')
  const back = errorFromWire(errorToWire(original))
  assert.ok(isIllegalState(back))
  assert.equal(back.currentState, 'started')
  assert.equal(back.httpStatus, 412)
  assert.ok(isNotFound(errorFromWire(errorToWire(new NotFoundError('app x')))))
  assert.equal(errorFromWire({ code: 'no-such-code', message: 'm' }).code, 'internal')
  assert.ok(errorFromWire({ code: 'conflict', message: 'm' }) instanceof HangarError)
})
