import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { compareColumnWrites, decideMerge, SENTINEL_CID, type ColumnClock } from './crdt-merge.js'
import { pick, randomInt, seededRandom } from './seeded-random.js'
import type { SqlValue } from './sqlite-value.js'

const site = (n: number) => Buffer.alloc(16, n)

describe('cr-sqlite merge rule', () => {
  it('causal length: lower lives lose, a higher even length deletes, a higher odd length resurrects', () => {
    for (let local = 0; local <= 6; local++) {
      for (let incoming = 1; incoming <= 7; incoming++) {
        for (const cid of [SENTINEL_CID, 'name']) {
          if (cid !== SENTINEL_CID && incoming % 2 === 0) continue // column changes belong to live rows
          const decision = decideMerge(local, undefined, { cid, cl: incoming, colVersion: 1, value: 'x', siteId: site(1) })
          const expected = incoming < local ? 'ignore'
            : incoming > local ? (incoming % 2 === 0 ? 'delete' : 'resurrect')
            : cid === SENTINEL_CID || incoming % 2 === 0 ? 'ignore' : 'apply-column'
          assert.equal(decision.action, expected, `local cl ${local}, incoming ${cid}@${incoming}`)
          if (decision.action === 'resurrect') assert.equal(decision.applyColumn, cid !== SENTINEL_CID)
        }
      }
    }
  })

  it('within one life: higher col_version wins, then the larger value, then the larger site id', () => {
    const local: ColumnClock = { colVersion: 3, value: 'm', siteId: site(5) }
    const decide = (colVersion: number, value: SqlValue, siteId: Buffer) => decideMerge(1, local, { cid: 'c', cl: 1, colVersion, value, siteId }).action
    assert.equal(decide(4, 'a', site(1)), 'apply-column')
    assert.equal(decide(2, 'z', site(9)), 'ignore')
    assert.equal(decide(3, 'n', site(1)), 'apply-column')
    assert.equal(decide(3, 'l', site(9)), 'ignore')
    assert.equal(decide(3, 'm', site(6)), 'apply-column')
    assert.equal(decide(3, 'm', site(4)), 'ignore')
    assert.equal(decide(3, 'm', site(5)), 'ignore', 'the same write again changes nothing')
    assert.equal(decide(3, 5n, site(9)), 'ignore', 'numbers sort before text')
    assert.equal(decide(3, Buffer.from('a'), site(1)), 'apply-column', 'blobs sort after text')
  })

  it('the column order is total: antisymmetric and transitive (so every delivery order agrees)', () => {
    const random = seededRandom(42)
    const values: SqlValue[] = [null, 0n, 1n, -1n, 1.0, 0.5, 'a', 'b', '', Buffer.from([0]), Buffer.from([1])]
    const writes: ColumnClock[] = Array.from({ length: 60 }, () => ({ colVersion: 1 + randomInt(random, 3), value: pick(random, values), siteId: site(1 + randomInt(random, 3)) }))
    for (const a of writes) {
      for (const b of writes) {
        assert.ok(Math.sign(compareColumnWrites(a, b)) === -Math.sign(compareColumnWrites(b, a)))
        for (const c of writes.slice(0, 15)) {
          if (compareColumnWrites(a, b) <= 0 && compareColumnWrites(b, c) <= 0) assert.ok(compareColumnWrites(a, c) <= 0)
        }
      }
    }
    // Folding writes in any order through the rule ends at the same maximum.
    for (let trial = 0; trial < 50; trial++) {
      const order = [...writes].sort(() => random() - 0.5)
      let state: ColumnClock | undefined
      for (const w of order) {
        if (decideMerge(1, state, { cid: 'c', cl: 1, ...w }).action === 'apply-column') state = w
      }
      const max = writes.reduce((best, w) => (compareColumnWrites(w, best) > 0 ? w : best))
      assert.equal(compareColumnWrites(state!, max), 0)
    }
  })
})
