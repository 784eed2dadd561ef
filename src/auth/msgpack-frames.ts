import { Packr } from 'msgpackr'

// reference §6: tokens are MessagePack. Signatures cover the exact bytes of the nonce and of each
// caveat, so a decoder must know where each element starts and ends on the wire and must never
// re-encode what it verifies (another encoder may pick a different but equal encoding). This
// walker finds element boundaries in untrusted bytes and accepts only the plain types a token
// uses (nil, bool, int, float, str, bin, array, map) — no extension types, bounded nesting — before
// msgpackr decodes a leaf.

export class MsgpackFrameError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'MsgpackFrameError'
  }
}

/** One Packr for the whole part: plain arrays and Maps, no records, no extensions. */
export const packr = new Packr({ useRecords: false, mapsAsObjects: false, int64AsType: 'number', moreTypes: false, encodeUndefinedAsNil: true, copyBuffers: true })

export const MAX_NESTING = 16

function need(buf: Uint8Array, offset: number, length: number): void {
  if (offset + length > buf.length) throw new MsgpackFrameError(`truncated: needs ${offset + length - buf.length} more byte(s)`)
}

function uint(buf: Uint8Array, offset: number, width: 1 | 2 | 4): number {
  need(buf, offset, width)
  let value = 0
  for (let i = 0; i < width; i++) value = value * 256 + buf[offset + i]!
  return value
}

/** Reads an array header at `offset`: how many elements, and where the first one starts. */
export function readArrayHeader(buf: Uint8Array, offset: number): { count: number; start: number } {
  need(buf, offset, 1)
  const tag = buf[offset]!
  if (tag >= 0x90 && tag <= 0x9f) return { count: tag & 0x0f, start: offset + 1 }
  if (tag === 0xdc) return { count: uint(buf, offset + 1, 2), start: offset + 3 }
  if (tag === 0xdd) return { count: uint(buf, offset + 1, 4), start: offset + 5 }
  throw new MsgpackFrameError(`expected an array at byte ${offset}, found tag 0x${tag.toString(16)}`)
}

/** Where the element starting at `offset` ends (exclusive). Throws on truncation, on types a
 * token never uses, and on nesting deeper than MAX_NESTING. */
export function frameEnd(buf: Uint8Array, offset: number, depth = 0): number {
  if (depth > MAX_NESTING) throw new MsgpackFrameError(`nested deeper than ${MAX_NESTING} levels`)
  need(buf, offset, 1)
  const tag = buf[offset]!
  if (tag <= 0x7f || tag >= 0xe0) return offset + 1 // fixint
  if (tag >= 0x80 && tag <= 0x8f) return elementsEnd(buf, offset + 1, (tag & 0x0f) * 2, depth)
  if (tag >= 0x90 && tag <= 0x9f) return elementsEnd(buf, offset + 1, tag & 0x0f, depth)
  if (tag >= 0xa0 && tag <= 0xbf) return sized(buf, offset + 1, tag & 0x1f)
  switch (tag) {
    case 0xc0: case 0xc2: case 0xc3: return offset + 1
    case 0xc4: case 0xd9: return sized(buf, offset + 2, uint(buf, offset + 1, 1))
    case 0xc5: case 0xda: return sized(buf, offset + 3, uint(buf, offset + 1, 2))
    case 0xc6: case 0xdb: return sized(buf, offset + 5, uint(buf, offset + 1, 4))
    case 0xca: return sized(buf, offset + 1, 4)
    case 0xcb: return sized(buf, offset + 1, 8)
    case 0xcc: case 0xd0: return sized(buf, offset + 1, 1)
    case 0xcd: case 0xd1: return sized(buf, offset + 1, 2)
    case 0xce: case 0xd2: return sized(buf, offset + 1, 4)
    case 0xcf: case 0xd3: return sized(buf, offset + 1, 8)
    case 0xdc: return elementsEnd(buf, offset + 3, uint(buf, offset + 1, 2), depth)
    case 0xdd: return elementsEnd(buf, offset + 5, uint(buf, offset + 1, 4), depth)
    case 0xde: return elementsEnd(buf, offset + 3, uint(buf, offset + 1, 2) * 2, depth)
    case 0xdf: return elementsEnd(buf, offset + 5, uint(buf, offset + 1, 4) * 2, depth)
    default: throw new MsgpackFrameError(`unsupported MessagePack tag 0x${tag.toString(16)} at byte ${offset}`)
  }
}

function sized(buf: Uint8Array, start: number, length: number): number {
  need(buf, start, length)
  return start + length
}

function elementsEnd(buf: Uint8Array, start: number, count: number, depth: number): number {
  // Each element takes at least one byte: a count larger than what is left is a lie, not a
  // reason to loop for a long time.
  if (count > buf.length - start) throw new MsgpackFrameError('truncated: element count exceeds the bytes left')
  let offset = start
  for (let i = 0; i < count; i++) offset = frameEnd(buf, offset, depth + 1)
  return offset
}

/** Splits the array at `offset` into its elements' byte ranges; returns them and the array's end. */
export function splitArray(buf: Uint8Array, offset: number): { elements: Array<[number, number]>; end: number } {
  const { count, start } = readArrayHeader(buf, offset)
  if (count > buf.length - start) throw new MsgpackFrameError('truncated: element count exceeds the bytes left')
  const elements: Array<[number, number]> = []
  let cursor = start
  for (let i = 0; i < count; i++) {
    const end = frameEnd(buf, cursor, 1)
    elements.push([cursor, end])
    cursor = end
  }
  return { elements, end: cursor }
}

/** Decodes one validated element. */
export function decodeFrame(buf: Uint8Array, range: readonly [number, number]): unknown {
  const slice = buf.subarray(range[0], range[1])
  frameEnd(slice, 0) // validate before handing untrusted bytes to the decoder
  return packr.unpack(slice)
}

export function encodeArrayHeader(count: number): Buffer {
  if (count < 16) return Buffer.from([0x90 | count])
  if (count < 0x10000) { const b = Buffer.alloc(3); b[0] = 0xdc; b.writeUInt16BE(count, 1); return b }
  const b = Buffer.alloc(5); b[0] = 0xdd; b.writeUInt32BE(count, 1); return b
}

/** msgpackr writes integers above 2^32 as float64; a caveat type or timestamp must stay an
 * integer on the wire, so large integers go through BigInt (MessagePack int64). */
export function wireInt(value: number): number | bigint {
  return value > 0xffffffff || value < -0x80000000 ? BigInt(value) : value
}

export function pack(value: unknown): Buffer {
  return packr.pack(value)
}
