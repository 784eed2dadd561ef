import { Packr } from 'msgpackr'
import { BinaryReader, BinaryWriter, CodecError } from './binary-codec.js'
import { decodeChangeset, encodeChangeset, SITE_ID_BYTES, type ChangeRecord, type Changeset } from './changeset.js'
import { parseSwimMessage, type SwimMessage } from './swim.js'

// Datagrams on the gossip port. Every one starts with an 8-byte header:
//
//   'H' 'C' | version (1) | kind | cluster tag (FNV-1a of the cluster id, 4 bytes)
//
// kinds: SWIM (msgpack body), CHANGES (a changeset, or one chunk of one), ANNOUNCE (a version too
// large for datagrams; receivers fetch it by sync). A datagram of another cluster, another
// version, or that does not parse is dropped and counted, never thrown at the process
// (reference §5.4: DifferentCluster).

export const DATAGRAM_VERSION = 1
export const HEADER_BYTES = 8

export const enum DatagramKind { Swim = 1, Changes = 2, Announce = 3 }

export function clusterTag(clusterId: string): number {
  let hash = 0x811c9dc5
  for (const byte of Buffer.from(clusterId, 'utf8')) {
    hash ^= byte
    hash = Math.imul(hash, 0x01000193) >>> 0
  }
  return hash >>> 0
}

function header(writer: BinaryWriter, kind: DatagramKind, tag: number): BinaryWriter {
  return writer.u8(0x48).u8(0x43).u8(DATAGRAM_VERSION).u8(kind).u32(tag)
}

export type Datagram =
  | { kind: DatagramKind.Swim; message: SwimMessage }
  | { kind: DatagramKind.Changes; hopsLeft: number; chunkIndex: number; chunkCount: number; changeset: Changeset }
  | { kind: DatagramKind.Announce; siteId: Buffer; version: number }

const packr = new Packr({ useRecords: false, mapsAsObjects: true })

export function encodeSwimDatagram(tag: number, message: SwimMessage): Buffer {
  const body = packr.pack(message)
  const writer = new BinaryWriter(HEADER_BYTES + body.length)
  return header(writer, DatagramKind.Swim, tag).raw(body).finish()
}

export function encodeAnnounceDatagram(tag: number, siteId: Buffer, version: number): Buffer {
  return header(new BinaryWriter(32), DatagramKind.Announce, tag).raw(siteId).varuint(version).finish()
}

export function encodeChangesDatagram(tag: number, hopsLeft: number, chunkIndex: number, chunkCount: number, changeset: Changeset): Buffer {
  const writer = header(new BinaryWriter(128), DatagramKind.Changes, tag).u8(hopsLeft).varuint(chunkIndex).varuint(chunkCount)
  encodeChangeset(writer, changeset)
  return writer.finish()
}

/** Splits a changeset into datagrams of at most `maxBytes` (when a single change is larger,
 * its datagram is larger: IP fragments it). Returns null when the version should be announced
 * and fetched by sync instead (over `maxChunks` chunks, or a datagram over 60 000 bytes). */
export function chunkChangeset(tag: number, hopsLeft: number, changeset: Changeset, maxBytes: number, maxChunks = 64): Buffer[] | null {
  const whole = encodeChangesDatagram(tag, hopsLeft, 0, 1, changeset)
  if (whole.length <= maxBytes) return [whole]
  const groups: ChangeRecord[][] = []
  let current: ChangeRecord[] = []
  let currentBytes = 0
  const base = HEADER_BYTES + 8 + SITE_ID_BYTES + 8
  for (const change of changeset.changes) {
    const size = encodeChangesDatagram(tag, hopsLeft, 0, 1, { ...changeset, changes: [change] }).length - base
    if (current.length > 0 && base + currentBytes + size > maxBytes) {
      groups.push(current)
      current = []
      currentBytes = 0
    }
    current.push(change)
    currentBytes += size
  }
  if (current.length > 0) groups.push(current)
  if (groups.length > maxChunks) return null
  const datagrams = groups.map((changes, i) => encodeChangesDatagram(tag, hopsLeft, i, groups.length, { ...changeset, changes }))
  if (datagrams.some((d) => d.length > 60_000)) return null
  return datagrams
}

/** The (site, version, chunk) a CHANGES datagram carries, read without decoding its changes,
 * so duplicates cost almost nothing; null for other kinds or a short datagram. */
export function peekChanges(buffer: Buffer): { site: string; version: number; chunkIndex: number } | null {
  if (buffer.length < HEADER_BYTES + 4 + SITE_ID_BYTES || buffer[3] !== DatagramKind.Changes) return null
  try {
    const reader = new BinaryReader(buffer.subarray(HEADER_BYTES))
    reader.u8()
    const chunkIndex = reader.varuint()
    reader.varuint()
    const site = reader.raw(SITE_ID_BYTES).toString('hex')
    return { site, version: reader.varuint(), chunkIndex }
  } catch {
    return null
  }
}

/** Parses a datagram; throws CodecError (or TypeError for a bad SWIM body). */
export function decodeDatagram(buffer: Buffer, expectedTag: number): Datagram {
  if (buffer.length < HEADER_BYTES) throw new CodecError('datagram shorter than its header')
  if (buffer[0] !== 0x48 || buffer[1] !== 0x43) throw new CodecError('not a catalog datagram')
  if (buffer[2] !== DATAGRAM_VERSION) throw new CodecError(`datagram version ${buffer[2]} is not ${DATAGRAM_VERSION}`)
  const tag = buffer.readUInt32BE(4)
  if (tag !== expectedTag) throw new CodecError('datagram from another cluster')
  const kind = buffer[3]
  const body = buffer.subarray(HEADER_BYTES)
  switch (kind) {
    case DatagramKind.Swim: {
      let decoded: unknown
      try { decoded = packr.unpack(body) } catch (err) { throw new CodecError(`swim body: ${(err as Error).message}`) }
      return { kind: DatagramKind.Swim, message: parseSwimMessage(decoded) }
    }
    case DatagramKind.Changes: {
      const reader = new BinaryReader(body)
      const hopsLeft = reader.u8()
      const chunkIndex = reader.varuint()
      const chunkCount = reader.varuint()
      if (chunkCount < 1 || chunkIndex >= chunkCount || chunkCount > 1024) throw new CodecError(`bad chunk ${chunkIndex}/${chunkCount}`)
      const changeset = decodeChangeset(reader)
      if (reader.remaining !== 0) throw new CodecError('trailing bytes after the changeset')
      return { kind: DatagramKind.Changes, hopsLeft: Math.min(hopsLeft, 8), chunkIndex, chunkCount, changeset }
    }
    case DatagramKind.Announce: {
      const reader = new BinaryReader(body)
      const siteId = Buffer.from(reader.raw(SITE_ID_BYTES))
      const version = reader.varuint()
      return { kind: DatagramKind.Announce, siteId, version }
    }
    default: throw new CodecError(`unknown datagram kind ${kind}`)
  }
}
