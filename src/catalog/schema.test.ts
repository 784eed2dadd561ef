import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { CrrStore } from './crr-store.js'
import { parseSchema, planSchemaChange, SchemaError } from './schema.js'

describe('schema rules (reference §5.2)', () => {
  it('refuses what Corrosion refuses, saying why', () => {
    const refuse = (sql: string, pattern: RegExp) => assert.throws(() => parseSchema(sql), (err: unknown) => err instanceof SchemaError && pattern.test(err.message), sql)
    refuse('CREATE TABLE t (a TEXT, b TEXT)', /needs an explicit PRIMARY KEY/)
    refuse('CREATE TABLE t (a TEXT PRIMARY KEY, b TEXT)', /primary key column a must be NOT NULL/)
    refuse('CREATE TABLE t (a TEXT NOT NULL PRIMARY KEY, b TEXT NOT NULL)', /NOT NULL column b needs a DEFAULT/)
    refuse('CREATE TABLE t (a TEXT NOT NULL PRIMARY KEY, b TEXT UNIQUE)', /UNIQUE constraints/)
    refuse('CREATE TABLE t (a TEXT NOT NULL PRIMARY KEY, b TEXT); CREATE UNIQUE INDEX tb ON t (b)', /UNIQUE indexes are not allowed/)
    refuse('CREATE TABLE p (id TEXT NOT NULL PRIMARY KEY); CREATE TABLE t (a TEXT NOT NULL PRIMARY KEY, p TEXT REFERENCES p (id))', /FOREIGN KEY/)
    refuse('CREATE TABLE t (a INTEGER PRIMARY KEY AUTOINCREMENT)', /AUTOINCREMENT/)
    refuse('CREATE TABLE t (a TEXT NOT NULL PRIMARY KEY); DROP TABLE t', /only CREATE TABLE and CREATE INDEX/)
    refuse('CREATE VIEW v AS SELECT 1', /only CREATE TABLE and CREATE INDEX/)
    refuse('CREATE TABLE t (a TEXT NOT NULL PRIMARY KEY); CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1; END', /only CREATE TABLE and CREATE INDEX/)
    refuse("INSERT INTO t VALUES ('x')", /only CREATE TABLE and CREATE INDEX/)
    refuse('CREATE TABLE __corro_x (a TEXT NOT NULL PRIMARY KEY)', /reserved/)
    refuse('CREATE TABLE t (a TEXT NOT NULL PRIMARY KEY, __crsql_col_name TEXT)', /reserved/)
    refuse('CREATE TABLE t (a TEXT NOT NULL PRIMARY KEY, b AS (a || a))', /generated or hidden/)
    refuse('CREATE TABLE t (a TEXT NOT NULL PRIMARY KEY', /incomplete input/)
  })

  it('accepts rowid-alias keys, composite keys, defaults and comments', () => {
    const schema = parseSchema(`
      -- a comment; with a semicolon
      CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT NOT NULL DEFAULT 'x'); /* block; comment */
      CREATE TABLE b (x TEXT NOT NULL, y INTEGER NOT NULL, z, PRIMARY KEY (y, x));
      CREATE INDEX b_z ON b (z);
    `)
    assert.deepEqual(schema.tables.get('b')!.pkColumns, ['y', 'x'])
    assert.deepEqual(schema.tables.get('b')!.valueColumns, ['z'])
    assert.equal(schema.indexes.get('b_z')!.table, 'b')
  })

  it('plans additive changes and refuses breaking ones', () => {
    const v1 = parseSchema('CREATE TABLE t (k TEXT NOT NULL PRIMARY KEY, a TEXT); CREATE INDEX t_a ON t (a)')
    const v2 = parseSchema("CREATE TABLE t (k TEXT NOT NULL PRIMARY KEY, a TEXT, b INTEGER NOT NULL DEFAULT 0); CREATE INDEX t_a ON t (a, b); CREATE TABLE u (id TEXT NOT NULL PRIMARY KEY)")
    const plan = planSchemaChange(v1, v2)
    assert.deepEqual(plan.newTables.map((t) => t.name), ['u'])
    assert.deepEqual(plan.newColumns.map((c) => `${c.table}.${c.column.name}`), ['t.b'])
    assert.deepEqual(plan.changedIndexes.map((i) => i.name), ['t_a'])
    const dropped = planSchemaChange(v2, parseSchema('CREATE TABLE t (k TEXT NOT NULL PRIMARY KEY)'))
    assert.equal(dropped.newColumns.length + dropped.newTables.length, 0)
    assert.ok(dropped.ignored.some((n) => /column t.a/.test(n)) && dropped.ignored.some((n) => /table u/.test(n)))
    assert.throws(() => planSchemaChange(v1, parseSchema('CREATE TABLE t (k TEXT NOT NULL PRIMARY KEY, a INTEGER)')), /needs a reseed.*changes type from TEXT to INTEGER/)
    assert.throws(() => planSchemaChange(v1, parseSchema('CREATE TABLE t (k TEXT NOT NULL, a TEXT NOT NULL, PRIMARY KEY (k, a))')), /primary key changes/)
  })

  it('a new column with a default applies in place: rows keep their data, nodes keep merging, no reseed', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hangar-schema-'))
    try {
      const v1 = 'CREATE TABLE t (k TEXT NOT NULL PRIMARY KEY, a TEXT);'
      const v2 = "CREATE TABLE t (k TEXT NOT NULL PRIMARY KEY, a TEXT, color TEXT NOT NULL DEFAULT 'blue'); CREATE INDEX t_color ON t (color); CREATE TABLE u (id TEXT NOT NULL PRIMARY KEY, n);"
      const a = new CrrStore({ path: join(dir, 'a.db') })
      const b = new CrrStore({ path: join(dir, 'b.db') })
      a.applySchema(v1)
      b.applySchema(v1)
      b.applyChangesets([a.transact([{ sql: "INSERT INTO t VALUES ('x', 'one')" }]).changeset!])
      a.applySchema(v2)
      b.applySchema(v2)
      assert.deepEqual(a.dumpTable('t'), ['t"x"|t"one"|t"blue"'])
      const update = a.transact([{ sql: "UPDATE t SET color = 'red' WHERE k = 'x'" }, { sql: "INSERT INTO u VALUES ('id', 1)" }]).changeset!
      assert.deepEqual(update.changes.map((c) => `${c.table}.${c.cid}`), ['t.color', 'u.-1', 'u.n'])
      b.applyChangesets([update])
      assert.deepEqual(b.dumpTable('t'), a.dumpTable('t'))
      assert.deepEqual(b.dumpTable('u'), a.dumpTable('u'))
      // Applying the same schema again is a no-op, and it survives a reopen.
      assert.equal(a.applySchema(v2).newColumns.length, 0)
      a.close()
      const reopened = new CrrStore({ path: join(dir, 'a.db') })
      assert.equal(reopened.applySchema(v2).newTables.length, 0)
      assert.ok(reopened.transact([{ sql: "UPDATE t SET a = 'two'" }]).changeset)
      assert.ok(reopened.reader.prepare("SELECT count(*) FROM crsql_changes WHERE \"table\" = 'u'").pluck().get() === 2n)
      reopened.close()
      b.close()
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('a database belongs to one cluster', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hangar-schema-'))
    try {
      new CrrStore({ path: join(dir, 'c.db'), clusterId: 'one' }).close()
      assert.throws(() => new CrrStore({ path: join(dir, 'c.db'), clusterId: 'two' }), /belongs to cluster "one"/)
      const again = new CrrStore({ path: join(dir, 'c.db'), clusterId: 'one' })
      again.close()
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
