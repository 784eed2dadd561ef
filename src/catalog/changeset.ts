import { BinaryReader, BinaryWriter, CodecError } from './binary-codec.js'
import type { SqlValue } from './sqlite-value.js'

// One transaction's changes as they travel between nodes: the rows of `crsql_changes` that a
// (site_id, db_version) produced, minus the two columns every row of it shares (reference §5.6).
// Table and column names are sent once per changeset in a small string table, so a one-column
// update costs a few dozen bytes plus its value.

export interface ChangeRecord {
  table: string
  /** Packed primary key (packed-columns.ts). */
  pk: Buffer
  /** Column name, or '-1' for the row's existence record. */
  cid: string
  val: SqlValue
  colVersion: number
  /** Causal length of the row this change belongs to: odd present, even deleted. */
  cl: number
  /** Order within the transaction. */
  seq: number
}

export interface Changeset {
  /** The writing node's site id (16 bytes). */
  siteId: Buffer
  /** The writing node's db_version for this transaction. */
  version: number
  changes: ChangeRecord[]
}

export const SITE_ID_BYTES = 16

export function encodeChangeset(writer: BinaryWriter, changeset: Changeset): void {
  if (changeset.siteId.length !== SITE_ID_BYTES) throw new CodecError(`site id must be ${SITE_ID_BYTES} bytes`)
  writer.raw(changeset.siteId).varuint(changeset.version)
  const names = new Map<string, number>()
  const order: string[] = []
  const intern = (name: string) => {
    if (!names.has(name)) { names.set(name, order.length); order.push(name) }
  }
  for (const change of changeset.changes) { intern(change.table); intern(change.cid) }
  writer.varuint(order.length)
  for (const name of order) writer.string(name)
  writer.varuint(changeset.changes.length)
  for (const change of changeset.changes) {
    writer.varuint(names.get(change.table)!).bytes(change.pk).varuint(names.get(change.cid)!)
    writer.value(change.val).varuint(change.colVersion).varuint(change.cl).varuint(change.seq)
  }
}

export function decodeChangeset(reader: BinaryReader): Changeset {
  const siteId = Buffer.from(reader.raw(SITE_ID_BYTES))
  const version = reader.varuint()
  if (version < 1) throw new CodecError('changeset version must be at least 1')
  const nameCount = reader.varuint()
  if (nameCount > reader.remaining) throw new CodecError('changeset: name table larger than the message')
  const names: string[] = []
  for (let i = 0; i < nameCount; i++) names.push(reader.string())
  const count = reader.varuint()
  if (count > reader.remaining) throw new CodecError('changeset: more changes than bytes')
  const changes: ChangeRecord[] = []
  const name = (index: number) => {
    const value = names[index]
    if (value === undefined) throw new CodecError(`changeset: name index ${index} out of range`)
    return value
  }
  for (let i = 0; i < count; i++) {
    const table = name(reader.varuint())
    const pk = Buffer.from(reader.bytes())
    const cid = name(reader.varuint())
    const val = reader.value()
    const colVersion = reader.varuint()
    const cl = reader.varuint()
    const seq = reader.varuint()
    changes.push({ table, pk, cid, val, colVersion, cl, seq })
  }
  return { siteId, version, changes }
}

export function changesetToBuffer(changeset: Changeset): Buffer {
  const writer = new BinaryWriter(64 + changeset.changes.length * 48)
  encodeChangeset(writer, changeset)
  return writer.finish()
}

export function changesetFromBuffer(buffer: Buffer): Changeset {
  const reader = new BinaryReader(buffer)
  const changeset = decodeChangeset(reader)
  if (reader.remaining !== 0) throw new CodecError(`changeset: ${reader.remaining} trailing bytes`)
  return changeset
}

export function siteIdToUuid(siteId: Uint8Array): string {
  const hex = Buffer.from(siteId).toString('hex')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`
}

export function siteIdFromString(text: string): Buffer {
  const hex = text.replace(/-/g, '')
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new CodecError(`"${text}" is not a site id (32 hex digits, dashes allowed)`)
  return Buffer.from(hex, 'hex')
}
