import assert from 'node:assert/strict'
import { afterEach, beforeEach, describe, it } from 'node:test'
import { CrrStore } from './crr-store.js'
import { pick, randomInt, seededRandom } from './seeded-random.js'
import { parseStatement, parseStatements } from './statements.js'
import { SubscriptionManager, type ChangeLine } from './subscriptions.js'

const SCHEMA = `
  CREATE TABLE machines (id TEXT NOT NULL PRIMARY KEY, app TEXT NOT NULL DEFAULT '', state TEXT NOT NULL DEFAULT 'created');
  CREATE TABLE apps (name TEXT NOT NULL PRIMARY KEY, primary_region TEXT NOT NULL DEFAULT '');
  CREATE TABLE other (id TEXT NOT NULL PRIMARY KEY);
`

describe('subscriptions', () => {
  let store: CrrStore
  let manager: SubscriptionManager

  beforeEach(() => {
    store = new CrrStore({ path: ':memory:' })
    store.applySchema(SCHEMA)
    manager = new SubscriptionManager(store, { maxLogEntries: 3 })
  })
  afterEach(() => {
    manager.close()
    store.close()
  })

  const write = (...sql: string[]) => store.transact(sql.map((s) => ({ sql: s })))

  it('identifies rows by primary key, so an update is an update with a stable rowid', () => {
    write("INSERT INTO machines VALUES ('m1', 'web', 'started')")
    const sub = manager.subscribe({ sql: 'SELECT id, state FROM machines' })
    const lines: ChangeLine[] = []
    sub.listen((l) => lines.push(l))
    assert.deepEqual(sub.rowLines(), ['{"row":[1,["m1","started"]]}'])
    write("UPDATE machines SET state = 'stopped' WHERE id = 'm1'", "INSERT INTO machines VALUES ('m2', 'web', 'created')")
    manager.refreshDirty()
    write("DELETE FROM machines WHERE id = 'm1'")
    manager.refreshDirty()
    assert.deepEqual(lines.map((l) => l.line), [
      '{"change":["update",1,["m1","stopped"],1]}',
      '{"change":["insert",2,["m2","created"],2]}',
      '{"change":["delete",1,["m1","stopped"],3]}',
    ])
  })

  it('without the key in the result, a changed row is a delete and an insert', () => {
    write("INSERT INTO machines VALUES ('m1', 'web', 'started')")
    const sub = manager.subscribe({ sql: 'SELECT app, state FROM machines' })
    const lines: string[] = []
    sub.listen((l) => lines.push(l.line))
    write("UPDATE machines SET state = 'stopped'")
    manager.refreshDirty()
    assert.deepEqual(lines, ['{"change":["delete",1,["web","started"],1]}', '{"change":["insert",2,["web","stopped"],2]}'])
  })

  it('joins re-run when either table changes; unrelated tables do not wake them', () => {
    write("INSERT INTO machines VALUES ('m1', 'web', 'started')", "INSERT INTO apps VALUES ('web', 'fra')")
    const sub = manager.subscribe({ sql: 'SELECT m.id, a.primary_region FROM machines m JOIN apps a ON a.name = m.app' })
    assert.deepEqual([...sub.tables].sort(), ['apps', 'machines'])
    const lines: string[] = []
    sub.listen((l) => lines.push(l.line))
    write("INSERT INTO other VALUES ('x')")
    assert.equal(sub.dirty, false)
    write("UPDATE apps SET primary_region = 'ams'")
    assert.equal(sub.dirty, true)
    manager.refreshDirty()
    assert.deepEqual(lines, ['{"change":["update",1,["m1","ams"],1]}'])
  })

  it('sees merged remote changes too', () => {
    const remote = new CrrStore({ path: ':memory:' })
    try {
      remote.applySchema(SCHEMA)
      const sub = manager.subscribe({ sql: 'SELECT id FROM machines' })
      const lines: string[] = []
      sub.listen((l) => lines.push(l.line))
      store.applyChangesets([remote.transact([{ sql: "INSERT INTO machines (id) VALUES ('r1')" }]).changeset!])
      manager.refreshDirty()
      assert.deepEqual(lines, ['{"change":["insert",1,["r1"],1]}'])
    } finally {
      remote.close()
    }
  })

  it('keeps a bounded log for resuming; older from= is refused, and the same statement shares one subscription', () => {
    const sub = manager.subscribe({ sql: 'SELECT id FROM machines WHERE app = ?', params: ['web'] })
    assert.equal(manager.subscribe({ sql: 'SELECT id FROM machines WHERE app = ?', params: ['web'] }), sub)
    assert.notEqual(manager.subscribe({ sql: 'SELECT id FROM machines WHERE app = ?', params: ['api'] }), sub)
    for (let i = 0; i < 5; i++) {
      write(`INSERT INTO machines VALUES ('m${i}', 'web', 'created')`)
      manager.refreshDirty()
    }
    assert.equal(sub.lastChangeId, 5)
    assert.deepEqual(sub.changesSince(3).map((c) => c.changeId), [4, 5])
    assert.deepEqual(sub.changesSince(2).map((c) => c.changeId), [3, 4, 5])
    assert.throws(() => sub.changesSince(1), /no longer in subscription .* log/)
    assert.throws(() => sub.changesSince(9), /ahead of this subscription/)
    assert.deepEqual(sub.changesSince(5), [])
  })

  it('subscribes to membership (the local members table) keyed by site id', () => {
    const sub = manager.subscribe({ sql: 'SELECT site_id, host_id, state FROM __corro_members' })
    const lines: string[] = []
    sub.listen((l) => lines.push(l.line))
    store.writeMember({ siteId: 'aa', hostId: 'h1', region: 'fra', addr: '127.0.0.1:1', apiUrl: '', state: 'alive', incarnation: 1, rttMs: 1 })
    manager.refreshDirty()
    store.writeMember({ siteId: 'aa', hostId: 'h1', region: 'fra', addr: '127.0.0.1:1', apiUrl: '', state: 'down', incarnation: 1, rttMs: null })
    manager.refreshDirty()
    assert.deepEqual(lines, ['{"change":["insert",1,["aa","h1","alive"],1]}', '{"change":["update",1,["aa","h1","down"],2]}'])
  })
})

describe('incremental subscriptions', () => {
  it('refreshing by changed keys gives the same events as re-running the whole query (random writes, local and merged)', () => {
    const store = new CrrStore({ path: ':memory:' })
    const remote = new CrrStore({ path: ':memory:' })
    store.applySchema(SCHEMA)
    remote.applySchema(SCHEMA)
    const manager = new SubscriptionManager(store)
    try {
      const random = seededRandom(5)
      const incremental = manager.subscribe({ sql: "SELECT id, state FROM machines WHERE state != ?", params: ['destroyed'] })
      // LIMIT makes a subscription refresh in full: the reference result.
      const full = manager.subscribe({ sql: "SELECT id, state FROM machines WHERE state != ? LIMIT -1", params: ['destroyed'] })
      const replay = (sub: typeof full) => {
        const rows = new Map<number, string>()
        for (const line of sub.rowLines()) { const [rowid, values] = JSON.parse(line).row; rows.set(rowid, JSON.stringify(values)) }
        sub.listen((change) => {
          const [kind, rowid, values] = JSON.parse(change.line).change
          if (kind === 'delete') rows.delete(rowid)
          else rows.set(rowid, JSON.stringify(values))
        })
        return rows
      }
      const a = replay(incremental)
      const b = replay(full)
      for (let step = 0; step < 300; step++) {
        const id = `m${randomInt(random, 6)}`
        const state = pick(random, ['started', 'stopped', 'destroyed'])
        const sql = pick(random, [
          'INSERT INTO machines (id, state) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state',
          'DELETE FROM machines WHERE id = ? AND ? IS NOT NULL',
        ])
        if (random() < 0.3) store.applyChangesets([remote.transact([{ sql, params: [id, state] }]).changeset].filter((c) => c !== null))
        else store.transact([{ sql, params: [id, state] }])
        if (random() < 0.5) manager.refreshDirty()
        if (step % 10 === 0) { manager.refreshDirty(); assert.deepEqual([...a.values()].sort(), [...b.values()].sort(), `step ${step}`) }
      }
    } finally {
      manager.close()
      store.close()
      remote.close()
    }
  })
})

describe('statement forms (reference §5.3)', () => {
  it('parses the four forms and refuses malformed ones', () => {
    assert.deepEqual(parseStatement('SELECT 1'), { sql: 'SELECT 1' })
    assert.deepEqual(parseStatement(['SELECT ?', [1, 'a', null, true, 2.5]]), { sql: 'SELECT ?', params: [1n, 'a', null, 1n, 2.5] })
    assert.deepEqual(parseStatement(['SELECT :a', { ':a': 1, '@b': 'x', $c: null, d: 2 }]), { sql: 'SELECT :a', params: { a: 1n, b: 'x', c: null, d: 2n } })
    assert.deepEqual(parseStatement({ query: 'SELECT ?', params: [1] }), { sql: 'SELECT ?', params: [1n] })
    assert.deepEqual(parseStatement({ query: 'SELECT :a', named_params: { a: 1 } }), { sql: 'SELECT :a', params: { a: 1n } })
    assert.throws(() => parseStatement(''), /non-empty/)
    assert.throws(() => parseStatement(42), /expected a string/)
    assert.throws(() => parseStatement(['SELECT 1', [1], 'extra']), /use "SQL"/)
    assert.throws(() => parseStatement(['SELECT :a', { 'a b': 1 }]), /not a parameter name/)
    assert.throws(() => parseStatement({ query: 'SELECT 1', params: [], named_params: {} }), /not both/)
    assert.throws(() => parseStatements(new Array(1001).fill('SELECT 1')), /at most 1000/)
  })
})
