import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { DEFAULT_BROADCAST_CONFIG, FAR_RING, planOriginBroadcast, planRelay, planResend, rttRing, type BroadcastPeer } from './broadcast-planner.js'
import { seededRandom } from './seeded-random.js'

function peers(rtts: Array<number | null>): BroadcastPeer[] {
  return rtts.map((rttMs, i) => ({ id: `p${i}`, addr: `10.0.0.${i}:7000`, rttMs }))
}

describe('broadcast planner', () => {
  it('buckets RTTs into Corrosion rings with hysteresis', () => {
    assert.equal(rttRing(0.1), 0)
    assert.equal(rttRing(5.9), 0)
    assert.equal(rttRing(6), 1)
    assert.equal(rttRing(49), 2)
    assert.equal(rttRing(250), 5)
    assert.equal(rttRing(300), FAR_RING)
    assert.equal(rttRing(null), FAR_RING)
    assert.equal(rttRing(7, 0), 0, 'within 2 ms above ring 0 stays in ring 0')
    assert.equal(rttRing(8.5, 0), 1)
    assert.equal(rttRing(4.5, 1), 1, 'within 2 ms below ring 1 stays in ring 1')
    assert.equal(rttRing(3, 1), 0)
  })

  it('sends a local change to every near peer first, nearest first, then to a few random far ones', () => {
    const list = peers([4, 0.5, 30, 120, null, 2, 80, 45])
    const plan = planOriginBroadcast(list, DEFAULT_BROADCAST_CONFIG, seededRandom(1))
    assert.deepEqual(plan.slice(0, 3).map((t) => t.id), ['p1', 'p5', 'p0'])
    assert.ok(plan.slice(0, 3).every((t) => t.hopsLeft === 0))
    const far = plan.slice(3)
    assert.equal(far.length, 3)
    assert.ok(far.every((t) => !['p0', 'p1', 'p5'].includes(t.id) && t.hopsLeft === DEFAULT_BROADCAST_CONFIG.maxHops))
    assert.equal(new Set(plan.map((t) => t.id)).size, plan.length, 'no peer twice')
  })

  it('grows the random fan-out with the cluster: (members − ring0) / (max_transmissions · 10)', () => {
    const list = peers(Array.from({ length: 300 }, () => 80))
    assert.equal(planOriginBroadcast(list, DEFAULT_BROADCAST_CONFIG, seededRandom(2)).length, 10)
    assert.equal(planOriginBroadcast(peers([1, 1, 1]), DEFAULT_BROADCAST_CONFIG, seededRandom(2)).length, 3)
  })

  it('re-sends go to peers not sent to before; relays never go back and lose a hop', () => {
    const list = peers([100, 100, 100, 100, 100, 100, 100])
    const first = planOriginBroadcast(list, DEFAULT_BROADCAST_CONFIG, seededRandom(3))
    const sent = new Set(first.map((t) => t.id))
    const again = planResend(list, sent, DEFAULT_BROADCAST_CONFIG, seededRandom(4))
    assert.ok(again.length > 0 && again.every((t) => !sent.has(t.id) && t.hopsLeft === 1))
    const relay = planRelay(list, 2, new Set(['p0', 'p1']), DEFAULT_BROADCAST_CONFIG, seededRandom(5))
    assert.ok(relay.every((t) => t.id !== 'p0' && t.id !== 'p1' && t.hopsLeft === 1))
    assert.deepEqual(planRelay(list, 0, new Set(), DEFAULT_BROADCAST_CONFIG, seededRandom(6)), [])
  })

  it('simulated: with relays, a change reaches every member of a 200-member, 4-region cluster', () => {
    const regions = 4
    const members = Array.from({ length: 200 }, (_, i) => ({ id: `m${i}`, region: i % regions }))
    const rtt = (a: number, b: number) => (a === b ? 1 : 40 + 20 * Math.abs(a - b))
    const random = seededRandom(9)
    const viewOf = (self: number): BroadcastPeer[] => members.filter((_, j) => j !== self).map((m) => ({ id: m.id, addr: m.id, rttMs: rtt(members[self]!.region, m.region) }))
    for (let trial = 0; trial < 20; trial++) {
      const origin = trial * 7 % members.length
      const received = new Set<string>([members[origin]!.id])
      let frontier = planOriginBroadcast(viewOf(origin), DEFAULT_BROADCAST_CONFIG, random).map((t) => ({ ...t, from: members[origin]!.id }))
      let datagrams = frontier.length
      while (frontier.length > 0) {
        const next: typeof frontier = []
        for (const target of frontier) {
          if (received.has(target.id)) continue
          received.add(target.id)
          const index = Number(target.id.slice(1))
          const relay = planRelay(viewOf(index), target.hopsLeft, new Set([target.from, members[origin]!.id]), DEFAULT_BROADCAST_CONFIG, random)
          datagrams += relay.length
          next.push(...relay.map((t) => ({ ...t, from: target.id })))
        }
        frontier = next
      }
      assert.equal(received.size, members.length, `trial ${trial}: reached ${received.size}`)
      assert.ok(datagrams < members.length * 8, `trial ${trial}: ${datagrams} datagrams`)
    }
  })
})
