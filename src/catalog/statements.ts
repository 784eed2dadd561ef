import { InvalidArgumentError } from '../core/index.js'
import type { StatementInput } from './crr-store.js'
import { sqlValueFromJson, type SqlValue } from './sqlite-value.js'

// The statement forms Corrosion's API accepts (reference §5.3, corro-api-types `Statement`):
//   "SQL"
//   ["SQL", [positional params]]
//   ["SQL", {named params}]
//   {"query": "SQL", "params": [...], "named_params": {...}}
// Named parameter keys may carry their sigil (":name", "@name", "$name") or not.

export const MAX_STATEMENTS = 1000
const MAX_SQL_LENGTH = 1_000_000

function parseParams(value: unknown, where: string): SqlValue[] | Record<string, SqlValue> | undefined {
  if (value === undefined || value === null) return undefined
  if (Array.isArray(value)) return value.map((v, i) => sqlValueFromJson(v, `${where}: param ${i + 1}`))
  if (typeof value === 'object') {
    const named: Record<string, SqlValue> = {}
    for (const [key, v] of Object.entries(value as Record<string, unknown>)) {
      const name = key.replace(/^[:@$]/, '')
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new InvalidArgumentError(`${where}: "${key}" is not a parameter name`)
      named[name] = sqlValueFromJson(v, `${where}: param ${key}`)
    }
    return named
  }
  throw new InvalidArgumentError(`${where}: params must be an array or an object`)
}

function checkSql(sql: unknown, where: string): string {
  if (typeof sql !== 'string' || sql.trim().length === 0) throw new InvalidArgumentError(`${where}: SQL must be a non-empty string`)
  if (sql.length > MAX_SQL_LENGTH) throw new InvalidArgumentError(`${where}: SQL longer than ${MAX_SQL_LENGTH} characters`)
  return sql
}

export function parseStatement(value: unknown, where = 'statement'): StatementInput {
  if (typeof value === 'string') return { sql: checkSql(value, where) }
  if (Array.isArray(value)) {
    if (value.length < 1 || value.length > 2) throw new InvalidArgumentError(`${where}: use "SQL", ["SQL", [params]] or ["SQL", {named}]`)
    const params = parseParams(value[1], where)
    return params === undefined ? { sql: checkSql(value[0], where) } : { sql: checkSql(value[0], where), params }
  }
  if (value && typeof value === 'object') {
    const obj = value as Record<string, unknown>
    const unknownKeys = Object.keys(obj).filter((k) => !['query', 'params', 'named_params'].includes(k))
    if (unknownKeys.length > 0) throw new InvalidArgumentError(`${where}: unknown field ${unknownKeys[0]} (use query, params, named_params)`)
    if (obj.params !== undefined && obj.params !== null && obj.named_params !== undefined && obj.named_params !== null) {
      throw new InvalidArgumentError(`${where}: give params or named_params, not both`)
    }
    const params = parseParams(obj.named_params ?? obj.params, where)
    if (obj.params !== undefined && obj.params !== null && !Array.isArray(obj.params)) throw new InvalidArgumentError(`${where}: params must be an array`)
    return params === undefined ? { sql: checkSql(obj.query, where) } : { sql: checkSql(obj.query, where), params }
  }
  throw new InvalidArgumentError(`${where}: expected a string, an array or an object`)
}

export function parseStatements(body: unknown): StatementInput[] {
  if (!Array.isArray(body)) throw new InvalidArgumentError('the body must be a JSON array of statements')
  if (body.length === 0) throw new InvalidArgumentError('the body has no statements')
  if (body.length > MAX_STATEMENTS) throw new InvalidArgumentError(`at most ${MAX_STATEMENTS} statements per transaction`)
  return body.map((s, i) => parseStatement(s, `statement ${i}`))
}

/** The statement as a client sends it (`CatalogClient`), the inverse of parseStatement. */
export type StatementJson = string | [string, unknown[] | Record<string, unknown>] | { query: string; params?: unknown[]; named_params?: Record<string, unknown> }
