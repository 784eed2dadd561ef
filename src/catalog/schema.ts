import Database from 'better-sqlite3'
import { InvalidArgumentError } from '../core/index.js'
import { leadingKeywords, quoteIdentifier, splitStatements, stripComments } from './sql-text.js'

// Schema files and how they change (reference §5.2, corrosion doc/schema.md):
// - only CREATE TABLE and CREATE INDEX;
// - every table has a primary key whose columns are NOT NULL; no other UNIQUE constraint;
// - NOT NULL columns need a default (a row resurrected from one column change must be valid);
// - destructive changes (dropped tables, columns, indexes) are ignored; changing what exists
//   (a column's type, the primary key) is breaking and needs a reseed.
// Additive changes — new tables, new columns with defaults, new or changed indexes — apply in
// place on every node, with no reseed and no backfill.

export class SchemaError extends InvalidArgumentError {}

export interface ColumnSchema {
  name: string
  /** Declared type as written, upper-cased ('' when none). */
  type: string
  notNull: boolean
  /** The DEFAULT expression's SQL text, or null. */
  defaultSql: string | null
  /** 1-based position in the primary key, 0 when not part of it. */
  pkPosition: number
}

export interface TableSchema {
  name: string
  columns: ColumnSchema[]
  /** Primary key columns in key order. */
  pkColumns: string[]
  /** Non-key columns in table order: the ones with per-column clocks. */
  valueColumns: string[]
  sql: string
}

export interface IndexSchema {
  name: string
  table: string
  sql: string
}

export interface CatalogSchema {
  tables: Map<string, TableSchema>
  indexes: Map<string, IndexSchema>
}

export interface SchemaPlan {
  newTables: TableSchema[]
  newColumns: Array<{ table: string; column: ColumnSchema }>
  newIndexes: IndexSchema[]
  changedIndexes: IndexSchema[]
  /** Destructive changes the plan leaves alone (reference §5.2), for the log. */
  ignored: string[]
}

const RESERVED_PREFIXES = ['sqlite_', 'crsql_', '__crsql', '__corro', '__hangar']

function checkName(kind: string, name: string): void {
  const lower = name.toLowerCase()
  if (RESERVED_PREFIXES.some((p) => lower.startsWith(p)) || lower.includes('__crsql_')) {
    throw new SchemaError(`${kind} name "${name}" is reserved (names starting with ${RESERVED_PREFIXES.join(', ')} or containing "__crsql_" belong to the catalog)`)
  }
}

interface PragmaColumn { cid: number | bigint; name: string; type: string; notnull: number | bigint; dflt_value: string | null; pk: number | bigint; hidden: number | bigint }

/** Reads one table's shape from a database (scratch or live). */
export function readTableSchema(db: Database.Database, name: string): TableSchema {
  const sqlRow = db.prepare("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?").get(name) as { sql: string } | undefined
  if (!sqlRow) throw new SchemaError(`table ${name} does not exist`)
  const rows = db.prepare(`PRAGMA table_xinfo(${quoteIdentifier(name)})`).all() as PragmaColumn[]
  const columns: ColumnSchema[] = rows.map((r) => ({
    name: r.name,
    type: (r.type ?? '').toUpperCase(),
    notNull: Number(r.notnull) === 1,
    defaultSql: r.dflt_value,
    pkPosition: Number(r.pk),
  }))
  const generated = rows.filter((r) => Number(r.hidden) !== 0).map((r) => r.name)
  if (generated.length > 0) throw new SchemaError(`table ${name}: generated or hidden columns (${generated.join(', ')}) are not supported in replicated tables`)
  const pkColumns = columns.filter((c) => c.pkPosition > 0).sort((a, b) => a.pkPosition - b.pkPosition).map((c) => c.name)
  return { name, columns, pkColumns, valueColumns: columns.filter((c) => c.pkPosition === 0).map((c) => c.name), sql: sqlRow.sql }
}

function validateTable(db: Database.Database, table: TableSchema): void {
  checkName('table', table.name)
  if (table.pkColumns.length === 0) throw new SchemaError(`table ${table.name}: a replicated table needs an explicit PRIMARY KEY`)
  for (const column of table.columns) {
    if (column.name.startsWith('__crsql_')) throw new SchemaError(`table ${table.name}: column name ${column.name} is reserved`)
    const isRowidAlias = table.pkColumns.length === 1 && column.pkPosition === 1 && column.type === 'INTEGER'
    if (column.pkPosition > 0 && !column.notNull && !isRowidAlias) {
      throw new SchemaError(`table ${table.name}: primary key column ${column.name} must be NOT NULL`)
    }
    if (column.pkPosition === 0 && column.notNull && column.defaultSql === null) {
      throw new SchemaError(`table ${table.name}: NOT NULL column ${column.name} needs a DEFAULT (rows are rebuilt column by column when changes merge)`)
    }
  }
  const uniques = (db.prepare(`PRAGMA index_list(${quoteIdentifier(table.name)})`).all() as Array<{ name: string; unique: number | bigint; origin: string }>)
    .filter((i) => Number(i.unique) === 1 && i.origin !== 'pk')
  if (uniques.length > 0) throw new SchemaError(`table ${table.name}: UNIQUE constraints or indexes besides the primary key are not allowed (two nodes could each insert a valid row that together violate it)`)
  const foreignKeys = db.prepare(`PRAGMA foreign_key_list(${quoteIdentifier(table.name)})`).all()
  if (foreignKeys.length > 0) throw new SchemaError(`table ${table.name}: FOREIGN KEY constraints are not allowed in replicated tables`)
}

/** Parses and validates a schema file's text. */
export function parseSchema(sql: string): CatalogSchema {
  const { statements } = splitStatements(sql)
  const scratch = new Database(':memory:')
  try {
    for (const statement of statements) {
      const words = leadingKeywords(statement, 4)
      const isTable = words[0] === 'CREATE' && words[1] === 'TABLE'
      const isIndex = words[0] === 'CREATE' && words[1] === 'INDEX'
      if (words[0] === 'CREATE' && words[1] === 'UNIQUE') throw new SchemaError(`schema: UNIQUE indexes are not allowed (only the primary key may be unique): ${abbreviate(statement)}`)
      if (!isTable && !isIndex) throw new SchemaError(`schema: only CREATE TABLE and CREATE INDEX are allowed, got: ${abbreviate(statement)}`)
      try {
        scratch.exec(statement)
      } catch (err) {
        throw new SchemaError(`schema: ${(err as Error).message} in: ${abbreviate(statement)}`, { cause: err })
      }
    }
    const schema: CatalogSchema = { tables: new Map(), indexes: new Map() }
    const objects = scratch.prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY rowid").all() as Array<{ type: string; name: string; tbl_name: string; sql: string }>
    for (const object of objects) {
      if (object.type === 'table') {
        if (/\bAUTOINCREMENT\b/i.test(object.sql)) {
          throw new SchemaError(`table ${object.name}: AUTOINCREMENT is not allowed (ids handed out by one node collide with another's)`)
        }
        const table = readTableSchema(scratch, object.name)
        validateTable(scratch, table)
        schema.tables.set(table.name, table)
      } else if (object.type === 'index') {
        checkName('index', object.name)
        schema.indexes.set(object.name, { name: object.name, table: object.tbl_name, sql: object.sql })
      }
    }
    return schema
  } finally {
    scratch.close()
  }
}

function abbreviate(statement: string): string {
  const flat = stripComments(statement)
  return flat.length > 120 ? `${flat.slice(0, 117)}...` : flat
}

function normaliseSql(sql: string): string {
  return stripComments(sql).replace(/\s*([(),])\s*/g, '$1').toLowerCase()
}

/** What it takes to go from the schema a node has to the one it is given. Throws on breaking
 * changes, naming each one. */
export function planSchemaChange(current: CatalogSchema, next: CatalogSchema): SchemaPlan {
  const plan: SchemaPlan = { newTables: [], newColumns: [], newIndexes: [], changedIndexes: [], ignored: [] }
  const breaking: string[] = []
  for (const table of next.tables.values()) {
    const existing = current.tables.get(table.name)
    if (!existing) { plan.newTables.push(table); continue }
    if (existing.pkColumns.join(',') !== table.pkColumns.join(',')) {
      breaking.push(`table ${table.name}: primary key changes from (${existing.pkColumns.join(', ')}) to (${table.pkColumns.join(', ')})`)
    }
    for (const column of table.columns) {
      const had = existing.columns.find((c) => c.name === column.name)
      if (!had) {
        if (column.pkPosition > 0) continue // reported above as a key change
        plan.newColumns.push({ table: table.name, column })
        continue
      }
      if (had.type !== column.type) breaking.push(`table ${table.name}: column ${column.name} changes type from ${had.type || 'none'} to ${column.type || 'none'}`)
      if (had.notNull !== column.notNull) breaking.push(`table ${table.name}: column ${column.name} changes NOT NULL`)
      if (had.defaultSql !== column.defaultSql) breaking.push(`table ${table.name}: column ${column.name} changes its default from ${had.defaultSql ?? 'none'} to ${column.defaultSql ?? 'none'}`)
    }
    for (const column of existing.columns) {
      if (!table.columns.some((c) => c.name === column.name)) plan.ignored.push(`column ${table.name}.${column.name} is no longer in the schema; kept`)
    }
  }
  for (const table of current.tables.values()) {
    if (!next.tables.has(table.name)) plan.ignored.push(`table ${table.name} is no longer in the schema; kept`)
  }
  if (breaking.length > 0) throw new SchemaError(`schema change needs a reseed (reference §5.2: only new tables, new columns with defaults and indexes apply in place): ${breaking.join('; ')}`)
  for (const index of next.indexes.values()) {
    const existing = current.indexes.get(index.name)
    if (!existing) plan.newIndexes.push(index)
    else if (normaliseSql(existing.sql) !== normaliseSql(index.sql)) plan.changedIndexes.push(index)
  }
  for (const index of current.indexes.values()) {
    if (!next.indexes.has(index.name)) plan.ignored.push(`index ${index.name} is no longer in the schema; kept`)
  }
  return plan
}

/** `ALTER TABLE … ADD COLUMN` text for a new column. */
export function addColumnSql(table: string, column: ColumnSchema): string {
  let sql = `ALTER TABLE ${quoteIdentifier(table)} ADD COLUMN ${quoteIdentifier(column.name)}`
  if (column.type) sql += ` ${column.type}`
  if (column.notNull) sql += ' NOT NULL'
  if (column.defaultSql !== null) sql += ` DEFAULT ${column.defaultSql}`
  return sql
}

export function isPlanEmpty(plan: SchemaPlan): boolean {
  return plan.newTables.length + plan.newColumns.length + plan.newIndexes.length + plan.changedIndexes.length === 0
}
