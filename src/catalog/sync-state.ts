import { BinaryReader, BinaryWriter, CodecError } from './binary-codec.js'
import { decodeChangeset, encodeChangeset, SITE_ID_BYTES, type Changeset } from './changeset.js'
import { RangeSet, type VersionRange } from './version-ranges.js'

// reference §5.4: anti-entropy sync exchanges a version-vector-like state, Corrosion's
// SyncStateV1 {actor_id, heads: map<actor, db_version>, need: map<actor, [ranges]>}. A peer
// answers with the changesets the asker lacks plus the version ranges those answers cover, so
// versions whose changes were all overwritten since ("cleared") are settled too.

export interface SyncState {
  siteId: Buffer
  /** Per site (hex): the highest version held. */
  heads: Map<string, number>
  /** Per site (hex): versions below the head that are missing. */
  needs: Map<string, VersionRange[]>
}

export interface SyncAnswer {
  changesets: Changeset[]
  /** Per site (hex): versions the answer settles (applied or known to be cleared). */
  covered: Map<string, RangeSet>
  /** False when the answer stopped at its size budget; ask again for the rest. */
  complete: boolean
}

export function syncStateFromKnown(siteId: Buffer, known: ReadonlyMap<string, RangeSet>): SyncState {
  const heads = new Map<string, number>()
  const needs = new Map<string, VersionRange[]>()
  for (const [site, ranges] of known) {
    if (ranges.isEmpty) continue
    heads.set(site, ranges.max)
    const gaps = ranges.gaps()
    if (gaps.length > 0) needs.set(site, gaps)
  }
  return { siteId, heads, needs }
}

/** What `theirs` holds of one site's versions. */
export function knownBy(state: SyncState, site: string): RangeSet {
  return RangeSet.fromHeadAndNeeds(state.heads.get(site) ?? 0, state.needs.get(site) ?? [])
}

/** Versions a peer holding `mine` can give a node in `theirs`, per site. */
export function missingFor(theirs: SyncState, mine: ReadonlyMap<string, RangeSet>): Map<string, RangeSet> {
  const out = new Map<string, RangeSet>()
  for (const [site, ranges] of mine) {
    const missing = ranges.subtract(knownBy(theirs, site))
    if (!missing.isEmpty) out.set(site, missing)
  }
  return out
}

function writeRanges(writer: BinaryWriter, ranges: VersionRange[]): void {
  writer.varuint(ranges.length)
  for (const [s, e] of ranges) writer.varuint(s).varuint(e - s)
}

function readRanges(reader: BinaryReader): VersionRange[] {
  const count = reader.varuint()
  if (count > reader.remaining) throw new CodecError('sync: more ranges than bytes')
  const out: VersionRange[] = []
  for (let i = 0; i < count; i++) {
    const start = reader.varuint()
    const span = reader.varuint()
    if (start < 1) throw new CodecError('sync: version ranges start at 1')
    out.push([start, start + span])
  }
  return out
}

export function encodeSyncState(state: SyncState): Buffer {
  const writer = new BinaryWriter(64 + state.heads.size * 24)
  writer.raw(state.siteId).varuint(state.heads.size)
  for (const [site, head] of state.heads) {
    writer.raw(Buffer.from(site, 'hex')).varuint(head)
    writeRanges(writer, state.needs.get(site) ?? [])
  }
  return writer.finish()
}

export function decodeSyncState(buffer: Buffer): SyncState {
  const reader = new BinaryReader(buffer)
  const siteId = Buffer.from(reader.raw(SITE_ID_BYTES))
  const count = reader.varuint()
  if (count * (SITE_ID_BYTES + 2) > reader.remaining) throw new CodecError('sync: more sites than bytes')
  const heads = new Map<string, number>()
  const needs = new Map<string, VersionRange[]>()
  for (let i = 0; i < count; i++) {
    const site = reader.raw(SITE_ID_BYTES).toString('hex')
    heads.set(site, reader.varuint())
    const ranges = readRanges(reader)
    if (ranges.length > 0) needs.set(site, ranges)
  }
  if (reader.remaining !== 0) throw new CodecError('sync: trailing bytes after the state')
  return { siteId, heads, needs }
}

export function encodeSyncAnswer(answer: SyncAnswer): Buffer {
  const writer = new BinaryWriter(1024)
  writer.u8(answer.complete ? 1 : 0).varuint(answer.covered.size)
  for (const [site, ranges] of answer.covered) {
    writer.raw(Buffer.from(site, 'hex'))
    writeRanges(writer, ranges.toArray())
  }
  writer.varuint(answer.changesets.length)
  for (const changeset of answer.changesets) encodeChangeset(writer, changeset)
  return writer.finish()
}

export function decodeSyncAnswer(buffer: Buffer): SyncAnswer {
  const reader = new BinaryReader(buffer)
  const complete = reader.u8() === 1
  const siteCount = reader.varuint()
  if (siteCount > reader.remaining) throw new CodecError('sync: more sites than bytes')
  const covered = new Map<string, RangeSet>()
  for (let i = 0; i < siteCount; i++) {
    const site = reader.raw(SITE_ID_BYTES).toString('hex')
    covered.set(site, RangeSet.of(readRanges(reader)))
  }
  const count = reader.varuint()
  if (count > reader.remaining) throw new CodecError('sync: more changesets than bytes')
  const changesets: Changeset[] = []
  for (let i = 0; i < count; i++) changesets.push(decodeChangeset(reader))
  if (reader.remaining !== 0) throw new CodecError('sync: trailing bytes after the answer')
  return { changesets, covered, complete }
}
