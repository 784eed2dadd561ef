import { InvalidArgumentError } from '../core/index.js'

// SQLite's five storage classes as they cross JS. Tables are read with better-sqlite3's
// `safeIntegers(true)`, so INTEGER arrives as bigint and REAL as number: the two never blur,
// which is what lets two nodes end up with byte-identical tables (REAL 1.0 and INTEGER 1 are
// different bytes on disk even though SQLite compares them equal).

export type SqlValue = null | bigint | number | string | Uint8Array

const enum StorageClass { Null = 0, Numeric = 1, Text = 2, Blob = 3 }

function storageClass(value: SqlValue): StorageClass {
  if (value === null) return StorageClass.Null
  if (typeof value === 'bigint' || typeof value === 'number') return StorageClass.Numeric
  if (typeof value === 'string') return StorageClass.Text
  return StorageClass.Blob
}

function compareNumeric(a: bigint | number, b: bigint | number): number {
  if (typeof a === 'bigint' && typeof b === 'bigint') return a < b ? -1 : a > b ? 1 : 0
  if (typeof a === 'number' && typeof b === 'number') return a < b ? -1 : a > b ? 1 : 0
  // Mixed INTEGER/REAL: compare exactly, as SQLite does, without rounding the integer to a double.
  const flip = typeof a === 'number'
  const int = (flip ? b : a) as bigint
  const real = (flip ? a : b) as number
  let result: number
  if (real === Infinity) result = -1
  else if (real === -Infinity) result = 1
  else {
    const floor = Math.floor(real)
    const floorBig = BigInt(floor)
    if (int < floorBig) result = -1
    else if (int > floorBig) result = 1
    else result = floor === real ? 0 : -1
  }
  return flip && result !== 0 ? -result : result
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return a[i]! < b[i]! ? -1 : 1
  }
  return a.length === b.length ? 0 : a.length < b.length ? -1 : 1
}

/** SQLite's ordering of two values with no affinity and the BINARY collation
 * (https://sqlite.org/datatype3.html §4.1): NULL < INTEGER/REAL (numerically) < TEXT (by UTF-8
 * bytes) < BLOB (memcmp). reference §5.6: the value tie-break of the LWW merge uses this order. */
export function compareSqlValues(a: SqlValue, b: SqlValue): number {
  const ca = storageClass(a)
  const cb = storageClass(b)
  if (ca !== cb) return ca < cb ? -1 : 1
  switch (ca) {
    case StorageClass.Null: return 0
    case StorageClass.Numeric: return compareNumeric(a as bigint | number, b as bigint | number)
    case StorageClass.Text: {
      if (a === b) return 0
      return compareBytes(Buffer.from(a as string, 'utf8'), Buffer.from(b as string, 'utf8'))
    }
    default: return compareBytes(a as Uint8Array, b as Uint8Array)
  }
}

/** Same storage class and same bytes: the test for "nothing changed", stricter than `=`. */
export function sqlValuesIdentical(a: SqlValue, b: SqlValue): boolean {
  if (a === null || b === null) return a === b
  if (typeof a !== typeof b) return false
  if (typeof a === 'number') return Object.is(a, b)
  if (a instanceof Uint8Array) return compareBytes(a, b as Uint8Array) === 0
  return a === b
}

/** A JSON value a client sent as a statement parameter → the SQL value it binds as.
 * reference §5.3 (corro-api-types `SqliteValue`): integers bind as INTEGER, other numbers as
 * REAL, booleans as 0/1, strings as TEXT, null as NULL. A `{"blob": "<base64>"}` object binds a
 * BLOB; any other object is refused rather than guessed at. */
export function sqlValueFromJson(value: unknown, where: string): SqlValue {
  if (value === null || value === undefined) return null
  if (typeof value === 'boolean') return value ? 1n : 0n
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new InvalidArgumentError(`${where}: ${value} is not a finite number`)
    return Number.isInteger(value) && Number.isSafeInteger(value) ? BigInt(value) : value
  }
  if (typeof value === 'bigint') return value
  if (typeof value === 'string') return value
  if (typeof value === 'object' && !Array.isArray(value)) {
    const keys = Object.keys(value)
    const blob = (value as { blob?: unknown }).blob
    if (keys.length === 1 && typeof blob === 'string') return Buffer.from(blob, 'base64')
  }
  throw new InvalidArgumentError(`${where}: ${Array.isArray(value) ? 'an array' : 'an object'} is not an SQL value (send JSON as a string, a blob as {"blob": "<base64>"})`)
}

/** An SQL value as JSON text. INTEGER is written as its exact decimal digits (JSON numbers have
 * no size limit; readers above 2^53 get a rounded number), BLOB as `{"blob":"<base64>"}`. */
export function sqlValueToJsonText(value: SqlValue): string {
  if (value === null) return 'null'
  if (typeof value === 'bigint') return value.toString()
  if (typeof value === 'number') return Number.isFinite(value) ? (Number.isInteger(value) ? value.toFixed(1) : String(value)) : 'null'
  if (typeof value === 'string') return JSON.stringify(value)
  return `{"blob":${JSON.stringify(Buffer.from(value).toString('base64'))}}`
}

/** A row of SQL values as a JSON array text. */
export function sqlRowToJsonText(row: readonly SqlValue[]): string {
  let out = '['
  for (let i = 0; i < row.length; i++) {
    if (i > 0) out += ','
    out += sqlValueToJsonText(row[i]!)
  }
  return out + ']'
}

/** Converts an SQL value to a plain JS value for callers that want numbers (bigints that fit
 * become numbers; blobs stay Buffers). */
export function sqlValueToPlain(value: SqlValue): null | number | string | bigint | Uint8Array {
  if (typeof value === 'bigint') return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value
  return value
}
