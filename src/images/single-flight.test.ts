import { test } from 'node:test'
import assert from 'node:assert/strict'
import { SingleFlight, waitUnlessAborted } from './single-flight.js'

test('concurrent calls with one key share one run; the next call after it settles runs again', async () => {
  const flights = new SingleFlight<number>()
  let runs = 0
  let release!: () => void
  const gate = new Promise<void>((r) => { release = r })
  const job = async () => { runs++; await gate; return runs }
  const callers = Array.from({ length: 20 }, () => flights.run('layer', job))
  const other = flights.run('other-layer', async () => 99)
  assert.equal(flights.size, 2)
  release()
  assert.deepEqual(await Promise.all(callers), Array(20).fill(1))
  assert.equal(await other, 99)
  assert.equal(runs, 1)
  assert.equal(flights.size, 0)
  assert.equal(await flights.run('layer', job), 2)
})

test('a failure reaches every waiter and is not cached', async () => {
  const flights = new SingleFlight<string>()
  let attempts = 0
  const failing = () => flights.run('k', async () => { attempts++; throw new Error('boom') })
  const results = await Promise.allSettled([failing(), failing(), failing()])
  assert.ok(results.every((r) => r.status === 'rejected' && (r.reason as Error).message === 'boom'))
  assert.equal(attempts, 1)
  await assert.rejects(failing())
  assert.equal(attempts, 2)
})

test('an aborted waiter stops waiting while the shared job completes for the others', async () => {
  const flights = new SingleFlight<string>()
  let release!: () => void
  const job = () => flights.run('k', () => new Promise<string>((r) => { release = () => r('done') }))
  const controller = new AbortController()
  const impatient = waitUnlessAborted(job(), controller.signal)
  const patient = job()
  controller.abort(new Error('caller gave up'))
  await assert.rejects(impatient, /caller gave up/)
  release()
  assert.equal(await patient, 'done')
  await flights.drain()
})
