import { test } from 'node:test'
import assert from 'node:assert/strict'
import { isInvalidArgument } from '../core/index.js'
import { ACTION_ALL, ACTION_CONTROL, ACTION_CREATE, ACTION_READ, ACTION_WRITE, formatActions, isSubsetOf, parseActions } from './action-mask.js'

test('action letters parse to masks and format back in r w c d C order', () => {
  assert.equal(parseActions('r'), ACTION_READ)
  assert.equal(parseActions('Cr'), ACTION_READ | ACTION_CONTROL)
  assert.equal(parseActions('*'), ACTION_ALL)
  assert.equal(parseActions('rwcdC'), ACTION_ALL)
  assert.equal(parseActions(''), 0)
  assert.equal(formatActions(ACTION_CONTROL | ACTION_READ), 'rC')
  assert.equal(formatActions(ACTION_ALL), '*')
  assert.equal(formatActions(0), '')
  assert.equal(formatActions(parseActions('wc')), 'wc')
})

test('lower-case c is create and upper-case C is control', () => {
  assert.equal(parseActions('c'), ACTION_CREATE)
  assert.equal(parseActions('C'), ACTION_CONTROL)
})

test('an unknown letter is a typed error naming it', () => {
  assert.throws(() => parseActions('rx'), (err: Error) => isInvalidArgument(err) && /"x" is not an action/.test(err.message))
})

test('subset is the allow rule', () => {
  assert.ok(isSubsetOf(ACTION_READ, ACTION_READ | ACTION_WRITE))
  assert.ok(!isSubsetOf(ACTION_READ | ACTION_CONTROL, ACTION_READ))
  assert.ok(isSubsetOf(ACTION_ALL, ACTION_ALL))
})
