import { compareSqlValues, type SqlValue } from './sqlite-value.js'

// The merge rule of cr-sqlite, as pure code (reference §5.6, corrosion doc/crdts.md):
//
//   row    = a causal-length set keyed by primary key. `cl` counts inserts and deletes: odd means
//            present, even means deleted. A higher cl always wins; changes carrying a lower cl are
//            from an older life of the row and lose.
//   column = last-writer-wins register inside the row's current life, ordered by
//            (col_version, value by SQLite comparison, site_id).
//
// Because each cell's state is the maximum of everything ever delivered under a total order,
// applying the same changes in any order, any number of times, on any node gives the same
// table (the property test in crr-store.test.ts checks exactly that).

/** The cid cr-sqlite uses for a row's existence record; its col_version is the causal length. */
export const SENTINEL_CID = '-1'

export interface ColumnClock {
  colVersion: number
  value: SqlValue
  siteId: Uint8Array
}

export interface IncomingChange {
  cid: string
  cl: number
  colVersion: number
  value: SqlValue
  siteId: Uint8Array
}

export type MergeDecision =
  /** The change is older than, or equal to, what the node holds. */
  | { action: 'ignore' }
  /** A later delete: remove the row and its column clocks, record the new causal length. */
  | { action: 'delete' }
  /** A later life of the row: reset it to its primary key and defaults, record the new causal
   * length, and (for a column change) then write the column. */
  | { action: 'resurrect'; applyColumn: boolean }
  /** Same life, and the incoming column value wins. */
  | { action: 'apply-column' }

export function compareSiteIds(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! < b[i]! ? -1 : 1
  return a.length - b.length
}

/** reference §5.6: higher col_version, then larger value, then larger site_id. */
export function compareColumnWrites(a: ColumnClock, b: ColumnClock): number {
  if (a.colVersion !== b.colVersion) return a.colVersion < b.colVersion ? -1 : 1
  const byValue = compareSqlValues(a.value, b.value)
  if (byValue !== 0) return byValue
  return compareSiteIds(a.siteId, b.siteId)
}

/**
 * What to do with one incoming change, given the row's local causal length (0 when the node has
 * never seen the row) and the local clock of the same column (undefined when none).
 */
export function decideMerge(localCl: number, localColumn: ColumnClock | undefined, incoming: IncomingChange): MergeDecision {
  if (incoming.cl < localCl) return { action: 'ignore' }
  const isSentinel = incoming.cid === SENTINEL_CID
  if (incoming.cl > localCl) {
    if (incoming.cl % 2 === 0) return { action: 'delete' }
    return { action: 'resurrect', applyColumn: !isSentinel }
  }
  // Same life of the row.
  if (isSentinel || incoming.cl % 2 === 0) return { action: 'ignore' }
  if (!localColumn) return { action: 'apply-column' }
  return compareColumnWrites(incoming, localColumn) > 0 ? { action: 'apply-column' } : { action: 'ignore' }
}
