import { test } from 'node:test'
import assert from 'node:assert/strict'
import { buildLoadReport, countOrigin, decodeLoadReport, encodeLoadReport, loadExcluding, RemoteLoads, type LoadedMachine } from './load-reports.js'
import { pickCandidate, loadBucket, LoadBucket } from './balancer.js'

function machine(key: string, hostId: string, hardLimit = 25): LoadedMachine & { machineId: string; softLimit: number; rttMs: number } {
  return { key, machineId: key.split('/')[0]!, load: 0, othersLoad: 0, hardLimit, softLimit: 20, rttMs: 0, originLoad: undefined, route: { hostId } }
}

test('worker: per-origin counts, and each edge is told the load of the others only', () => {
  const m = machine('m1/tcp/8080', 'W')
  // 3 requests of the worker's own clients, 4 from edge A, 2 from edge B.
  m.load += 3
  for (let i = 0; i < 4; i++) { m.load++; countOrigin(m, 'A', 1) }
  for (let i = 0; i < 2; i++) { m.load++; countOrigin(m, 'B', 1) }
  assert.equal(m.load, 9)
  assert.equal(loadExcluding(m, 'A'), 5)
  assert.equal(loadExcluding(m, 'B'), 7)
  assert.equal(loadExcluding(m, 'C'), 9)
  const idle = machine('m2/tcp/8080', 'W')
  assert.deepEqual(buildLoadReport([m, idle], 'A'), [['m1/tcp/8080', 5]])
  // A's streams end: its counts go, and the map does not keep empty origins.
  for (let i = 0; i < 4; i++) { m.load--; countOrigin(m, 'A', -1) }
  assert.equal(m.originLoad!.has('A'), false)
  assert.equal(loadExcluding(m, 'A'), 5)
  // Only B's load on the Machine: B hears of nothing but the worker's 3.
  assert.deepEqual(buildLoadReport([m], 'B'), [['m1/tcp/8080', 3]])
})

test('reports survive encoding; malformed lines are errors', () => {
  const report: Array<[string, number]> = [['a/tcp/1', 3], ['b/tcp/2', 25]]
  assert.deepEqual(decodeLoadReport(encodeLoadReport(report).trim()), report)
  assert.deepEqual(decodeLoadReport('{"l":[]}'), [])
  for (const bad of ['', 'null', '{}', '{"l":{}}', '{"l":[["a",-1]]}', '{"l":[["a",1.5]]}', '{"l":[[1,1]]}', '{"l":[["a"]]}']) {
    assert.throws(() => decodeLoadReport(bad), Error, bad)
  }
})

test('edge: own in-flight plus reported others; reports replace, refusals hold the Machine at hard until the next report', () => {
  const machines = new Map<string, ReturnType<typeof machine>>()
  const woken: string[] = []
  const loads = new RemoteLoads({ entry: (key) => machines.get(key), wake: (m) => woken.push(m.key) })
  const near = machine('near/tcp/80', 'W1')
  const far = machine('far/tcp/80', 'W2')
  far.rttMs = 50
  near.rttMs = 10
  machines.set(near.key, near)
  machines.set(far.key, far)
  // The edge has 5 requests of its own on `near`; W1 reports others' 14.
  near.load = 5
  loads.applyReport('W1', [['near/tcp/80', 14]])
  assert.equal(near.load, 19)
  assert.equal(pickCandidate([near, far], () => 0), near, 'under soft (19 < 20): the closest')
  near.load++ // one more of ours: now at soft cluster-wide
  assert.equal(loadBucket(near), LoadBucket.UnderHard)
  assert.equal(pickCandidate([near, far], () => 0), far, 'over soft by others’ load: the next closest under soft')
  // A report about a Machine of another host is ignored (stale, or lying).
  loads.applyReport('W2', [['near/tcp/80', 100]])
  assert.equal(near.load, 20)
  // The next full report no longer lists `near`: others went away, waiters are woken.
  loads.applyReport('W1', [])
  assert.equal(near.load, 6)
  assert.equal(near.othersLoad, 0)
  assert.deepEqual(woken, ['near/tcp/80'])
  // Piggyback on an accepted stream.
  loads.applyPiggyback('W1', 'near/tcp/80', 10)
  assert.equal(near.load, 16)
  // Refused at hard: our count still holds the refused stream (16 − 10 = 6 own, one refused).
  loads.refused('W1', 'near/tcp/80', 12)
  near.load-- // the data path releases the refused stream
  assert.equal(near.load, near.hardLimit, 'after release it still looks full: no re-pick storm')
  assert.equal(loadBucket(near), LoadBucket.AtHard)
  // The worker reports capacity again.
  loads.applyReport('W1', [['near/tcp/80', 12]])
  assert.equal(near.load, 17)
  // Refused with a report larger than hard − own: the report wins.
  loads.refused('W1', 'near/tcp/80', 40)
  assert.equal(near.othersLoad, 40)
  // The link to W1 dropped: its reports no longer hold.
  loads.clearWorker('W1')
  assert.equal(near.othersLoad, 0)
  assert.equal(near.load, 5)
  // Unknown keys and bad numbers are ignored.
  loads.applyPiggyback('W1', 'nope/tcp/1', 3)
  loads.applyPiggyback('W1', 'near/tcp/80', NaN)
  assert.equal(near.load, 5)
})
