import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import type { Changeset } from './changeset.js'
import { CrrStore, StatementError, type StatementInput } from './crr-store.js'
import { packColumns } from './packed-columns.js'
import { pick, randomInt, seededRandom, shuffle, type Random } from './seeded-random.js'
import type { SqlValue } from './sqlite-value.js'
import { decodeSyncAnswer, decodeSyncState, encodeSyncAnswer, encodeSyncState } from './sync-state.js'

const SCHEMA = `
  CREATE TABLE items (id INTEGER PRIMARY KEY NOT NULL, name TEXT, qty INTEGER NOT NULL DEFAULT 0, price REAL, data BLOB, anything);
  CREATE TABLE pairs (a TEXT NOT NULL, b INTEGER NOT NULL, v, PRIMARY KEY (a, b));
  CREATE TABLE tags (tag TEXT NOT NULL PRIMARY KEY);
  CREATE INDEX items_name ON items (name);
`
const TABLES = ['items', 'pairs', 'tags']

function siteId(n: number): Buffer {
  return Buffer.alloc(16, n)
}

function newStore(n: number): CrrStore {
  const store = new CrrStore({ path: ':memory:', siteId: siteId(n) })
  store.applySchema(SCHEMA)
  return store
}

function dump(store: CrrStore): string {
  return TABLES.map((t) => `${t}:\n${store.dumpTable(t).join('\n')}`).join('\n')
}

function randomValue(random: Random): SqlValue {
  switch (randomInt(random, 6)) {
    case 0: return null
    case 1: return BigInt(randomInt(random, 5) - 2)
    case 2: return pick(random, [1.5, 1.0, -0.25, 2.0])
    case 3: return pick(random, ['a', 'b', 'é', ''])
    case 4: return Buffer.from([randomInt(random, 3)])
    default: return 1n
  }
}

/** One random transaction touching a small key space, so nodes conflict often. */
function randomTransaction(random: Random): StatementInput[] {
  const statements: StatementInput[] = []
  const count = 1 + randomInt(random, 3)
  for (let i = 0; i < count; i++) {
    const id = BigInt(1 + randomInt(random, 4))
    const a = pick(random, ['x', 'y'])
    const b = BigInt(randomInt(random, 3))
    switch (randomInt(random, 11)) {
      case 0: statements.push({ sql: 'INSERT INTO items (id, name, qty) VALUES (?, ?, ?) ON CONFLICT DO NOTHING', params: [id, pick(random, ['n1', 'n2', null]), BigInt(randomInt(random, 9))] }); break
      case 1: statements.push({ sql: 'INSERT INTO items (id, name, qty, price) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name, price = excluded.price', params: [id, pick(random, ['u1', 'u2']), 1n, pick(random, [0.5, 1.0, 3.25])] }); break
      case 2: statements.push({ sql: 'UPDATE items SET qty = qty + 1 WHERE id = ?', params: [id] }); break
      case 3: statements.push({ sql: 'UPDATE items SET anything = ?, data = ? WHERE id = ?', params: [randomValue(random), randomValue(random), id] }); break
      case 4: statements.push({ sql: 'DELETE FROM items WHERE id = ?', params: [id] }); break
      case 5: statements.push({ sql: 'INSERT OR REPLACE INTO items (id, name) VALUES (?, ?)', params: [id, pick(random, ['r1', 'r2'])] }); break
      case 6: statements.push({ sql: 'INSERT INTO pairs (a, b, v) VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET v = excluded.v', params: [a, b, randomValue(random)] }); break
      case 7: statements.push({ sql: 'UPDATE pairs SET b = ? WHERE a = ? AND b = ? AND NOT EXISTS (SELECT 1 FROM pairs WHERE a = ? AND b = ?)', params: [b, a, (b + 1n) % 3n, a, b] }); break
      case 8: statements.push({ sql: 'DELETE FROM pairs WHERE a = ?', params: [a] }); break
      case 9: statements.push({ sql: 'INSERT INTO tags (tag) VALUES (?) ON CONFLICT DO NOTHING', params: [a] }); break
      default: statements.push({ sql: 'DELETE FROM tags WHERE tag = ?', params: [a] }); break
    }
  }
  return statements
}

/** Writes on random nodes, with random partial delivery in between, so later writes happen on
 * top of different partial states; returns every changeset produced. */
function runRandomHistory(random: Random, stores: CrrStore[], steps: number): Changeset[] {
  const produced: Changeset[] = []
  for (let step = 0; step < steps; step++) {
    const store = pick(random, stores)
    const outcome = store.transact(randomTransaction(random))
    if (outcome.changeset) produced.push(outcome.changeset)
    if (produced.length > 0 && random() < 0.5) {
      const target = pick(random, stores)
      target.applyChangesets([pick(random, produced)])
    }
  }
  return produced
}

describe('CRR store: convergence (property test)', () => {
  it('any delivery order, with duplicates, on any node, gives byte-identical tables', () => {
    for (let seed = 1; seed <= 60; seed++) {
      const random = seededRandom(seed)
      const stores = [1, 2, 3, 4].map(newStore)
      try {
        const produced = runRandomHistory(random, stores, 40)
        for (const store of stores) {
          // Every changeset at least once, some twice, in a random order and random batches.
          const delivery = shuffle(random, [...produced, ...produced.filter(() => random() < 0.3)])
          while (delivery.length > 0) store.applyChangesets(delivery.splice(0, 1 + randomInt(random, 5)))
        }
        const expected = dump(stores[0]!)
        for (const store of stores.slice(1)) assert.equal(dump(store), expected, `seed ${seed}: node ${stores.indexOf(store) + 1} differs`)
      } finally {
        for (const store of stores) store.close()
      }
    }
  })

  it('anti-entropy sync alone (state → answer → apply, over the wire encoding) converges the same way', () => {
    for (let seed = 100; seed <= 130; seed++) {
      const random = seededRandom(seed)
      const stores = [1, 2, 3].map(newStore)
      try {
        runRandomHistory(random, stores, 30)
        // Pairwise pulls in random order until a full round changes nothing.
        for (let round = 0; round < 10; round++) {
          let moved = 0
          for (const [asker, peer] of shuffle(random, stores.flatMap((a) => stores.filter((b) => b !== a).map((b) => [a, b] as const)))) {
            const state = decodeSyncState(encodeSyncState(asker.syncState()))
            const answer = decodeSyncAnswer(encodeSyncAnswer(peer.answerSync(state, 1 + randomInt(random, 50))))
            const outcome = asker.applyChangesets(answer.changesets, answer.covered)
            moved += outcome.versionsApplied
          }
          if (moved === 0) break
        }
        const expected = dump(stores[0]!)
        for (const store of stores.slice(1)) assert.equal(dump(store), expected, `seed ${seed}`)
        for (const store of stores.slice(1)) assert.deepEqual([...store.knownVersions()].map(([s, r]) => [s, r.toArray()]).sort(), [...stores[0]!.knownVersions()].map(([s, r]) => [s, r.toArray()]).sort())
      } finally {
        for (const store of stores) store.close()
      }
    }
  })
})

describe('CRR store: merge rules', () => {
  function pair(): [CrrStore, CrrStore] { return [newStore(1), newStore(2)] }
  function exchange(a: CrrStore, b: CrrStore, fromA: Changeset[], fromB: Changeset[]): void {
    b.applyChangesets(fromA)
    a.applyChangesets(fromB)
  }

  it('a concurrent delete beats an update of the same life of the row; a later re-insert wins over both', () => {
    const [a, b] = pair()
    try {
      const insert = a.transact([{ sql: "INSERT INTO items (id, name) VALUES (1, 'first')" }]).changeset!
      b.applyChangesets([insert])
      const update = a.transact([{ sql: "UPDATE items SET name = 'updated' WHERE id = 1" }]).changeset!
      const del = b.transact([{ sql: 'DELETE FROM items WHERE id = 1' }]).changeset!
      exchange(a, b, [update], [del])
      assert.deepEqual(a.dumpTable('items'), [])
      assert.deepEqual(b.dumpTable('items'), [])
      const reinsert = a.transact([{ sql: "INSERT INTO items (id, name) VALUES (1, 'again')" }]).changeset!
      b.applyChangesets([update, reinsert, del])
      assert.equal(a.dumpTable('items')[0], b.dumpTable('items')[0])
      assert.match(b.dumpTable('items')[0]!, /"again"/)
      assert.equal(reinsert.changes.find((c) => c.cid === '-1')!.cl, 3)
    } finally { a.close(); b.close() }
  })

  it('a column written more often wins; equal versions tie-break on the larger value, then the larger site', () => {
    const [a, b] = pair()
    try {
      b.applyChangesets([a.transact([{ sql: "INSERT INTO items (id, name, qty) VALUES (1, 'x', 0)" }]).changeset!])
      const twiceOnA = [a.transact([{ sql: 'UPDATE items SET qty = 5 WHERE id = 1' }]).changeset!, a.transact([{ sql: 'UPDATE items SET qty = 6 WHERE id = 1' }]).changeset!]
      const onceOnB = b.transact([{ sql: 'UPDATE items SET qty = 100 WHERE id = 1' }]).changeset!
      exchange(a, b, twiceOnA, [onceOnB])
      assert.match(a.dumpTable('items')[0]!, /\|i6\|/)
      assert.deepEqual(a.dumpTable('items'), b.dumpTable('items'))
      const nameA = a.transact([{ sql: "UPDATE items SET name = 'apple' WHERE id = 1" }]).changeset!
      const nameB = b.transact([{ sql: "UPDATE items SET name = 'banana' WHERE id = 1" }]).changeset!
      exchange(a, b, [nameA], [nameB])
      assert.match(a.dumpTable('items')[0]!, /"banana"/)
      assert.deepEqual(a.dumpTable('items'), b.dumpTable('items'))
    } finally { a.close(); b.close() }
  })

  it('keeps INTEGER and REAL apart, and BLOBs exact', () => {
    const [a, b] = pair()
    try {
      const cs = a.transact([{ sql: 'INSERT INTO items (id, anything, data, price) VALUES (?, ?, ?, ?)', params: [7n, 1.0, Buffer.from([0, 255]), 2n] }]).changeset!
      b.applyChangesets([cs])
      assert.deepEqual(b.dumpTable('items'), a.dumpTable('items'))
      assert.match(b.dumpTable('items')[0]!, /\|r3ff0000000000000$/) // anything = REAL 1.0
      const toInteger = a.transact([{ sql: 'UPDATE items SET anything = 1 WHERE id = 7' }]).changeset!
      assert.ok(toInteger, 'REAL 1.0 → INTEGER 1 is a change')
      b.applyChangesets([toInteger])
      assert.deepEqual(b.dumpTable('items'), a.dumpTable('items'))
    } finally { a.close(); b.close() }
  })

  it('the crsql_changes view has cr-sqlite columns and a packed pk', () => {
    const a = newStore(1)
    try {
      a.transact([{ sql: "INSERT INTO items (id, name) VALUES (1, 'n')" }])
      const rows = a.reader.prepare("SELECT \"table\", pk, cid, val, col_version, db_version, site_id, cl, seq FROM crsql_changes WHERE \"table\" = 'items' ORDER BY seq").all() as Array<Record<string, unknown>>
      assert.deepEqual(Object.keys(rows[0]!), ['table', 'pk', 'cid', 'val', 'col_version', 'db_version', 'site_id', 'cl', 'seq'])
      assert.deepEqual(rows[0]!.pk, Buffer.from('010901', 'hex'))
      assert.deepEqual(rows.map((r) => r.cid), ['-1', 'name', 'qty', 'price', 'data', 'anything'])
      assert.equal(rows[1]!.val, 'n')
      assert.ok(rows.every((r) => r.db_version === 1n && r.cl === 1n))
      assert.deepEqual(rows[0]!.site_id, siteId(1))
    } finally { a.close() }
  })

  it('a transaction that changes nothing takes no version', () => {
    const a = newStore(1)
    try {
      assert.equal(a.transact([{ sql: 'UPDATE items SET qty = 1 WHERE id = 999' }]).version, null)
      assert.equal(a.transact([{ sql: 'INSERT INTO tags (tag) VALUES (?)', params: ['t'] }]).version, 1)
      assert.equal(a.transact([{ sql: 'INSERT INTO tags (tag) VALUES (?) ON CONFLICT DO NOTHING', params: ['t'] }]).version, null)
      assert.equal(a.transact([{ sql: 'DELETE FROM tags' }]).version, 2)
    } finally { a.close() }
  })

  it('refuses statements that are not reads or writes of replicated tables, and rolls back on any error', () => {
    const a = newStore(1)
    try {
      const refuse = (sql: string, pattern: RegExp) => assert.throws(() => a.transact([{ sql }]), (err: unknown) => err instanceof StatementError && pattern.test(err.message))
      refuse('DELETE FROM __hangar_bookkeeping', /not a replicated table/)
      refuse('UPDATE items__crsql_clock SET __crsql_col_version = 9', /not a replicated table/)
      refuse('DROP TABLE items', /only INSERT, UPDATE, DELETE/)
      refuse("ATTACH '/tmp/x.db' AS x", /only INSERT, UPDATE, DELETE/)
      refuse('PRAGMA writable_schema = 1', /only INSERT, UPDATE, DELETE/)
      refuse('INSERT INTO nope VALUES (1)', /no such table: nope/)
      refuse('SELECT 1; SELECT 2', /more than one statement/)
      assert.throws(() => a.transact([{ sql: "INSERT INTO tags VALUES ('ok')" }, { sql: 'INSERT INTO items (id, qty) VALUES (1, NULL)' }]), (err: unknown) => err instanceof StatementError && err.statementIndex === 1 && /NOT NULL/.test(err.message))
      assert.deepEqual(a.dumpTable('tags'), [])
      assert.equal(a.syncState().heads.size, 0)
    } finally { a.close() }
  })

  it('defers changesets that name tables or columns this node does not have, and takes them once its schema catches up', () => {
    const a = newStore(1)
    const b = newStore(2)
    try {
      a.applySchema(SCHEMA + 'CREATE TABLE extra (k TEXT NOT NULL PRIMARY KEY, v);')
      a.applySchema(SCHEMA.replace('anything);', "anything, color TEXT NOT NULL DEFAULT 'blue');") + 'CREATE TABLE extra (k TEXT NOT NULL PRIMARY KEY, v);')
      const cs1 = a.transact([{ sql: "INSERT INTO extra VALUES ('k', 1)" }]).changeset!
      const cs2 = a.transact([{ sql: "INSERT INTO items (id, color) VALUES (1, 'red')" }]).changeset!
      const outcome = b.applyChangesets([cs1, cs2])
      assert.equal(outcome.versionsApplied, 0)
      assert.deepEqual(outcome.deferred.map((d) => d.reason), ['unknown table extra', 'unknown column items.color'])
      assert.equal(b.syncState().heads.size, 0)
      b.applySchema(SCHEMA.replace('anything);', "anything, color TEXT NOT NULL DEFAULT 'blue');") + 'CREATE TABLE extra (k TEXT NOT NULL PRIMARY KEY, v);')
      const answer = a.answerSync(b.syncState())
      assert.equal(b.applyChangesets(answer.changesets, answer.covered).versionsApplied, 2)
      assert.deepEqual(b.dumpTable('items'), a.dumpTable('items'))
      assert.deepEqual(b.dumpTable('extra'), a.dumpTable('extra'))
    } finally { a.close(); b.close() }
  })

  it('rejects hostile changesets without applying any part of them', () => {
    const a = newStore(1)
    try {
      const bad: Changeset = { siteId: siteId(9), version: 1, changes: [
        { table: 'items', pk: packColumns([1n]), cid: 'name', val: 'x', colVersion: 1, cl: 1, seq: 0 },
        { table: 'items', pk: Buffer.from([1, 0xff]), cid: 'name', val: 'x', colVersion: 1, cl: 1, seq: 1 },
      ] }
      const outcome = a.applyChangesets([bad])
      assert.equal(outcome.versionsApplied, 0)
      assert.equal(outcome.deferred.length, 1)
      assert.deepEqual(a.dumpTable('items'), [])
      const injection: Changeset = { siteId: siteId(9), version: 2, changes: [{ table: 'items', pk: packColumns([1n]), cid: 'name" = 1; --', val: 'x', colVersion: 1, cl: 1, seq: 0 }] }
      assert.match(a.applyChangesets([injection]).deferred[0]!.reason, /unknown column/)
    } finally { a.close() }
  })
})
