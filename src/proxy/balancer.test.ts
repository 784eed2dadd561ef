import { test } from 'node:test'
import assert from 'node:assert/strict'
import { pickCandidate, loadBucket, type BalancerCandidate } from './balancer.js'

interface TestMachine extends BalancerCandidate { region: string }

function machine(machineId: string, region: string, rttMs: number, soft = 20, hard = 25): TestMachine {
  return { machineId, region, rttMs, load: 0, softLimit: soft, hardLimit: hard }
}

/** The seed's example (spec/seeds/004_…): 10 Machines in ams, maa, sea and sin, 3 of them in
 * ams, soft 20 / hard 25, every user in Amsterdam so every request lands on an ams edge. */
function seedFleet(): TestMachine[] {
  return [
    machine('ams1', 'ams', 1), machine('ams2', 'ams', 1), machine('ams3', 'ams', 1),
    machine('sea1', 'sea', 150), machine('sea2', 'sea', 150),
    machine('maa1', 'maa', 120), machine('maa2', 'maa', 120),
    machine('sin1', 'sin', 170), machine('sin2', 'sin', 170), machine('sin3', 'sin', 170),
  ]
}

function sendOne(fleet: TestMachine[], random?: () => number): TestMachine | undefined {
  const chosen = pickCandidate(fleet, random)
  if (chosen) chosen.load++
  return chosen
}

test('seed walkthrough: 60 stay in ams evenly, the 61st goes to the next closest, 200 all at soft, 250 all at hard, 251st waits', () => {
  const fleet = seedFleet()
  for (let i = 1; i <= 60; i++) {
    const chosen = sendOne(fleet)!
    assert.equal(chosen.region, 'ams', `request ${i} stays in ams`)
    const amsLoads = fleet.filter((m) => m.region === 'ams').map((m) => m.load)
    // Divided evenly: the ams loads never differ by more than one.
    assert.ok(Math.max(...amsLoads) - Math.min(...amsLoads) <= 1, `after ${i}: ${amsLoads}`)
  }
  assert.deepEqual(fleet.filter((m) => m.region === 'ams').map((m) => m.load), [20, 20, 20])

  const the61st = sendOne(fleet)!
  assert.equal(the61st.region, 'maa', 'the 61st goes to the next closest region')

  for (let i = 62; i <= 200; i++) {
    const chosen = sendOne(fleet)!
    assert.notEqual(chosen.region, 'ams', `request ${i} does not go back to ams while others are under soft`)
  }
  assert.ok(fleet.every((m) => m.load === 20), 'at 200 every Machine is at its soft limit')
  // Regions fill by closeness: maa before sea before sin.
  const the201st = sendOne(fleet)!
  assert.equal(the201st.region, 'ams', 'the 201st goes to an ams Machine at its soft limit')

  for (let i = 202; i <= 250; i++) assert.ok(sendOne(fleet), `request ${i} finds a Machine under hard`)
  assert.ok(fleet.every((m) => m.load === 25), 'at 250 every Machine is at its hard limit')
  assert.equal(pickCandidate(fleet), undefined, 'the 251st gets no Machine: it waits in the queue')

  // A Machine dropping below hard takes the waiting request.
  const sin2 = fleet.find((m) => m.machineId === 'sin2')!
  sin2.load--
  assert.equal(pickCandidate(fleet), sin2)
})

test('between 61 and 200, regions fill in order of closeness', () => {
  const fleet = seedFleet()
  const order: string[] = []
  for (let i = 1; i <= 200; i++) {
    const region = sendOne(fleet)!.region
    if (order.at(-1) !== region) order.push(region)
  }
  assert.deepEqual(order, ['ams', 'maa', 'sea', 'sin'])
})

test('bucket boundaries: below soft, at soft, between soft and hard, at hard', () => {
  const m = machine('m', 'ams', 0, 2, 4)
  const buckets = [0, 1, 2, 3, 4, 5].map((load) => loadBucket({ ...m, load }))
  assert.deepEqual(buckets, [0, 0, 1, 1, 2, 2])
  // No hard limit (Infinity) never reaches bucket 2.
  assert.equal(loadBucket({ ...m, hardLimit: Infinity, load: 1e9 }), 1)
})

test('a closer Machine over soft loses to a farther one under soft; a closer one under soft wins over a less loaded farther one', () => {
  const near = machine('near', 'ams', 1, 2, 4)
  const far = machine('far', 'sin', 100, 2, 4)
  near.load = 2
  assert.equal(pickCandidate([near, far]), far)
  near.load = 1
  far.load = 0
  assert.equal(pickCandidate([near, far]), near)
})

test('between soft and hard: the closest, then the least loaded', () => {
  const a = machine('a', 'ams', 5, 2, 10)
  const b = machine('b', 'ams', 1, 2, 10)
  const c = machine('c', 'ams', 1, 2, 10)
  a.load = 2; b.load = 7; c.load = 3
  assert.equal(pickCandidate([a, b, c]), c)
  c.load = 10
  assert.equal(pickCandidate([a, b, c]), b)
  b.load = 10
  assert.equal(pickCandidate([a, b, c]), a)
  a.load = 10
  assert.equal(pickCandidate([a, b, c]), undefined)
})

test('ties break at random, each tied Machine about equally often', () => {
  const fleet = [machine('a', 'ams', 1), machine('b', 'ams', 1), machine('c', 'ams', 1), machine('d', 'ams', 2)]
  const counts = new Map<string, number>()
  for (let i = 0; i < 3000; i++) {
    const chosen = pickCandidate(fleet)!
    counts.set(chosen.machineId, (counts.get(chosen.machineId) ?? 0) + 1)
  }
  assert.equal(counts.get('d'), undefined)
  for (const id of ['a', 'b', 'c']) assert.ok((counts.get(id) ?? 0) > 800, `${id}: ${counts.get(id)}`)
  // A deterministic random source picks deterministically.
  assert.equal(pickCandidate(fleet, () => 0)!.machineId, 'c')
  assert.equal(pickCandidate(fleet, () => 0.99)!.machineId, 'a')
})

test('accept filters candidates (fly-replay region/instance/elsewhere)', () => {
  const fleet = seedFleet()
  assert.equal(pickCandidate(fleet, Math.random, (m) => m.region === 'sin')!.region, 'sin')
  assert.equal(pickCandidate(fleet, Math.random, () => false), undefined)
  assert.equal(pickCandidate([], Math.random), undefined)
})

test('exhaustive: over every load combination of 3 Machines with soft 2 / hard 3 and RTTs 1,1,2, the pick is the minimum by (bucket, rtt, load)', () => {
  const rtts = [1, 1, 2]
  for (let a = 0; a <= 3; a++) for (let b = 0; b <= 3; b++) for (let c = 0; c <= 3; c++) {
    const fleet = [a, b, c].map((load, i) => ({ ...machine(`m${i}`, 'r', rtts[i]!, 2, 3), load }))
    const rank = (m: TestMachine) => [loadBucket(m), m.rttMs, m.load]
    const eligible = fleet.filter((m) => loadBucket(m) < 2)
    const chosen = pickCandidate(fleet)
    if (eligible.length === 0) { assert.equal(chosen, undefined); continue }
    assert.ok(chosen)
    const best = eligible.map(rank).sort((x, y) => x[0]! - y[0]! || x[1]! - y[1]! || x[2]! - y[2]!)[0]!
    assert.deepEqual(rank(chosen), best, `loads ${a},${b},${c}`)
  }
})
