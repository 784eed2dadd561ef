import { test } from 'node:test'
import assert from 'node:assert/strict'
import { RttEstimator, rttChanged } from './rtt.js'

test('RttEstimator: the minimum of the last samples, ignoring junk', () => {
  const rtt = new RttEstimator(3)
  assert.equal(rtt.value, undefined)
  assert.equal(rtt.add(12), 12)
  assert.equal(rtt.add(30), 12, 'a late answer (busy peer) does not raise the estimate')
  assert.equal(rtt.add(11), 11)
  assert.equal(rtt.add(NaN), 11)
  assert.equal(rtt.add(-1), 11)
  assert.equal(rtt.add(Infinity), 11)
  assert.equal(rtt.sampleCount, 3)
  // The path got slower: once the fast samples leave the window, the estimate follows.
  rtt.add(40); rtt.add(41)
  assert.equal(rtt.value, 11, 'the fast sample is still in the window')
  rtt.add(42)
  assert.equal(rtt.value, 40)
  rtt.add(43)
  assert.equal(rtt.value, 41)
  rtt.reset()
  assert.equal(rtt.value, undefined)
  assert.equal(rtt.sampleCount, 0)
  assert.throws(() => new RttEstimator(0), RangeError)
})

test('rttChanged: re-rank only beyond jitter (10% or 0.5 ms)', () => {
  assert.equal(rttChanged(undefined, 5), true)
  assert.equal(rttChanged(5, undefined), true)
  assert.equal(rttChanged(undefined, undefined), false)
  assert.equal(rttChanged(0.1, 0.5), false, 'sub-millisecond jitter on a LAN')
  assert.equal(rttChanged(0.1, 0.7), true)
  assert.equal(rttChanged(50, 54), false)
  assert.equal(rttChanged(50, 56), true)
  assert.equal(rttChanged(50, 44), true)
})
