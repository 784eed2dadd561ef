import { CodecError } from './binary-codec.js'
import type { SqlValue } from './sqlite-value.js'

// reference §5.6: `crsql_changes.pk` is a packed blob such as x'010901' — a column count, then
// for each column a type byte (storage class in the low 3 bits, a byte length in the high 5)
// followed by the bytes. x'010901' is one column, INTEGER in one byte, value 1. Hangar packs
// primary keys the same way so a `pk` reads like cr-sqlite's.

const TYPE_INTEGER = 1
const TYPE_FLOAT = 2
const TYPE_TEXT = 3
const TYPE_BLOB = 4
const TYPE_NULL = 5

function integerBytes(value: bigint): Buffer {
  // Minimal big-endian two's complement, 1..8 bytes.
  for (let length = 1; length <= 8; length++) {
    const bits = BigInt(length * 8)
    const min = -(1n << (bits - 1n))
    const max = (1n << (bits - 1n)) - 1n
    if (value >= min && value <= max) {
      const out = Buffer.alloc(length)
      let v = BigInt.asUintN(length * 8, value)
      for (let i = length - 1; i >= 0; i--) { out[i] = Number(v & 0xffn); v >>= 8n }
      return out
    }
  }
  throw new CodecError(`integer ${value} does not fit in 64 bits`)
}

function lengthBytes(length: number): Buffer {
  const size = length < 0x100 ? 1 : length < 0x10000 ? 2 : length < 0x1000000 ? 3 : 4
  const out = Buffer.alloc(size)
  out.writeUIntBE(length, 0, size)
  return out
}

export function packColumns(values: readonly SqlValue[]): Buffer {
  if (values.length > 255) throw new CodecError('a primary key has at most 255 columns')
  const parts: Buffer[] = [Buffer.from([values.length])]
  for (const value of values) {
    if (value === null) parts.push(Buffer.from([TYPE_NULL]))
    else if (typeof value === 'bigint') {
      const bytes = integerBytes(value)
      parts.push(Buffer.from([TYPE_INTEGER | (bytes.length << 3)]), bytes)
    } else if (typeof value === 'number') {
      const bytes = Buffer.alloc(8)
      bytes.writeDoubleBE(value)
      parts.push(Buffer.from([TYPE_FLOAT | (8 << 3)]), bytes)
    } else {
      const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : Buffer.from(value)
      const length = lengthBytes(bytes.length)
      parts.push(Buffer.from([(typeof value === 'string' ? TYPE_TEXT : TYPE_BLOB) | (length.length << 3)]), length, bytes)
    }
  }
  return Buffer.concat(parts)
}

export function unpackColumns(packed: Uint8Array): SqlValue[] {
  const buffer = Buffer.from(packed.buffer, packed.byteOffset, packed.byteLength)
  if (buffer.length < 1) throw new CodecError('packed columns: empty blob')
  const count = buffer[0]!
  const values: SqlValue[] = []
  let offset = 1
  const need = (n: number) => {
    if (offset + n > buffer.length) throw new CodecError(`packed columns: truncated at byte ${offset}`)
  }
  for (let i = 0; i < count; i++) {
    need(1)
    const typeByte = buffer[offset++]!
    const type = typeByte & 0x07
    const size = typeByte >> 3
    switch (type) {
      case TYPE_NULL: values.push(null); break
      case TYPE_INTEGER: {
        if (size < 1 || size > 8) throw new CodecError(`packed columns: bad integer size ${size}`)
        need(size)
        let v = 0n
        for (let j = 0; j < size; j++) v = (v << 8n) | BigInt(buffer[offset + j]!)
        values.push(BigInt.asIntN(size * 8, v))
        offset += size
        break
      }
      case TYPE_FLOAT: {
        if (size !== 8) throw new CodecError(`packed columns: bad float size ${size}`)
        need(8)
        values.push(buffer.readDoubleBE(offset))
        offset += 8
        break
      }
      case TYPE_TEXT:
      case TYPE_BLOB: {
        if (size < 1 || size > 4) throw new CodecError(`packed columns: bad length size ${size}`)
        need(size)
        const length = buffer.readUIntBE(offset, size)
        offset += size
        need(length)
        const bytes = buffer.subarray(offset, offset + length)
        offset += length
        values.push(type === TYPE_TEXT ? bytes.toString('utf8') : Buffer.from(bytes))
        break
      }
      default: throw new CodecError(`packed columns: unknown type ${type}`)
    }
  }
  if (offset !== buffer.length) throw new CodecError(`packed columns: ${buffer.length - offset} trailing bytes`)
  return values
}
