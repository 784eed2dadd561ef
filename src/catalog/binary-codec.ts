import { InvalidArgumentError } from '../core/index.js'
import type { SqlValue } from './sqlite-value.js'

// Small binary writer/reader for the catalog's wire messages (broadcast datagrams, sync bodies).
// Bytes per change matter (issue 4: "bytes per change should be small"), so integers are
// varints and values carry a one-byte storage-class tag instead of JSON.

export class CodecError extends InvalidArgumentError {}

export class BinaryWriter {
  private buffer: Buffer
  private position = 0

  constructor(initialSize = 256) {
    this.buffer = Buffer.allocUnsafe(initialSize)
  }

  get length(): number { return this.position }

  private ensure(extra: number): void {
    if (this.position + extra <= this.buffer.length) return
    let size = this.buffer.length * 2
    while (size < this.position + extra) size *= 2
    const next = Buffer.allocUnsafe(size)
    this.buffer.copy(next, 0, 0, this.position)
    this.buffer = next
  }

  u8(value: number): this {
    this.ensure(1)
    this.buffer[this.position++] = value & 0xff
    return this
  }

  u32(value: number): this {
    this.ensure(4)
    this.buffer.writeUInt32BE(value >>> 0, this.position)
    this.position += 4
    return this
  }

  /** Unsigned LEB128, for non-negative safe integers. */
  varuint(value: number): this {
    if (!Number.isSafeInteger(value) || value < 0) throw new CodecError(`varuint out of range: ${value}`)
    this.ensure(8)
    while (value >= 0x80) {
      this.buffer[this.position++] = (value % 0x80) | 0x80
      value = Math.floor(value / 0x80)
    }
    this.buffer[this.position++] = value
    return this
  }

  /** Signed 64-bit integer, zigzag then LEB128. */
  varbigint(value: bigint): this {
    let zigzag = value >= 0n ? value << 1n : ((-value) << 1n) - 1n
    this.ensure(10)
    while (zigzag >= 0x80n) {
      this.buffer[this.position++] = Number(zigzag & 0x7fn) | 0x80
      zigzag >>= 7n
    }
    this.buffer[this.position++] = Number(zigzag)
    return this
  }

  f64(value: number): this {
    this.ensure(8)
    this.buffer.writeDoubleBE(value, this.position)
    this.position += 8
    return this
  }

  raw(bytes: Uint8Array): this {
    this.ensure(bytes.length)
    this.buffer.set(bytes, this.position)
    this.position += bytes.length
    return this
  }

  bytes(bytes: Uint8Array): this {
    this.varuint(bytes.length)
    return this.raw(bytes)
  }

  string(value: string): this {
    const length = Buffer.byteLength(value, 'utf8')
    this.varuint(length)
    this.ensure(length)
    this.buffer.write(value, this.position, 'utf8')
    this.position += length
    return this
  }

  /** One SQL value: a storage-class tag, then its bytes. */
  value(value: SqlValue): this {
    if (value === null) return this.u8(0)
    if (typeof value === 'bigint') return this.u8(1).varbigint(value)
    if (typeof value === 'number') return this.u8(2).f64(value)
    if (typeof value === 'string') return this.u8(3).string(value)
    return this.u8(4).bytes(value)
  }

  finish(): Buffer {
    return this.buffer.subarray(0, this.position)
  }
}

export class BinaryReader {
  private position = 0
  constructor(private readonly buffer: Buffer) {}

  get remaining(): number { return this.buffer.length - this.position }
  get offset(): number { return this.position }

  private need(count: number): void {
    if (this.position + count > this.buffer.length) throw new CodecError(`message truncated: needed ${count} more bytes at offset ${this.position} of ${this.buffer.length}`)
  }

  u8(): number {
    this.need(1)
    return this.buffer[this.position++]!
  }

  u32(): number {
    this.need(4)
    const value = this.buffer.readUInt32BE(this.position)
    this.position += 4
    return value
  }

  varuint(): number {
    let result = 0
    let multiplier = 1
    for (let i = 0; i < 8; i++) {
      const byte = this.u8()
      result += (byte & 0x7f) * multiplier
      if ((byte & 0x80) === 0) {
        if (!Number.isSafeInteger(result)) throw new CodecError('varuint exceeds 2^53')
        return result
      }
      multiplier *= 0x80
    }
    throw new CodecError('varuint longer than 8 bytes')
  }

  varbigint(): bigint {
    let zigzag = 0n
    let shift = 0n
    for (let i = 0; i < 10; i++) {
      const byte = this.u8()
      zigzag |= BigInt(byte & 0x7f) << shift
      if ((byte & 0x80) === 0) {
        const value = (zigzag & 1n) === 0n ? zigzag >> 1n : -((zigzag + 1n) >> 1n)
        if (value > 0x7fffffffffffffffn || value < -0x8000000000000000n) throw new CodecError('integer exceeds 64 bits')
        return value
      }
      shift += 7n
    }
    throw new CodecError('varint longer than 10 bytes')
  }

  f64(): number {
    this.need(8)
    const value = this.buffer.readDoubleBE(this.position)
    this.position += 8
    return value
  }

  raw(length: number): Buffer {
    this.need(length)
    const out = this.buffer.subarray(this.position, this.position + length)
    this.position += length
    return out
  }

  bytes(): Buffer {
    return this.raw(this.varuint())
  }

  string(): string {
    return this.bytes().toString('utf8')
  }

  value(): SqlValue {
    const tag = this.u8()
    switch (tag) {
      case 0: return null
      case 1: return this.varbigint()
      case 2: return this.f64()
      case 3: return this.string()
      case 4: return Buffer.from(this.bytes())
      default: throw new CodecError(`unknown value tag ${tag}`)
    }
  }
}
