import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import Database from 'better-sqlite3'
import { BinaryReader, BinaryWriter, CodecError } from './binary-codec.js'
import { changesetFromBuffer, changesetToBuffer, siteIdFromString, siteIdToUuid, type Changeset } from './changeset.js'
import { chunkChangeset, clusterTag, DatagramKind, decodeDatagram, encodeAnnounceDatagram, encodeSwimDatagram } from './gossip-codec.js'
import { packColumns, unpackColumns } from './packed-columns.js'
import { pick, randomInt, seededRandom, type Random } from './seeded-random.js'
import { compareSqlValues, sqlValueFromJson, sqlValueToJsonText, type SqlValue } from './sqlite-value.js'
import { decodeSyncAnswer, decodeSyncState, encodeSyncAnswer, encodeSyncState } from './sync-state.js'
import { RangeSet } from './version-ranges.js'

function randomValue(random: Random): SqlValue {
  switch (randomInt(random, 5)) {
    case 0: return null
    case 1: return pick(random, [0n, 1n, -1n, 127n, 128n, -129n, 9007199254740993n, -9223372036854775808n, 9223372036854775807n])
    case 2: return pick(random, [0, 1.0, -2.5, 1e300, -0, Number.MIN_VALUE, Infinity, -Infinity])
    case 3: return pick(random, ['', 'a', 'é', '😀', 'A', 'Z', 'a\u0000b', 'x'.repeat(300)])
    default: return Buffer.from(Array.from({ length: randomInt(random, 4) }, () => randomInt(random, 256)))
  }
}

describe('SQL values', () => {
  it('order like SQLite compares them (checked against SQLite itself)', () => {
    const db = new Database(':memory:')
    db.defaultSafeIntegers(true)
    const stmt = db.prepare('SELECT CASE WHEN ? < ? THEN -1 WHEN ? = ? THEN 0 ELSE 1 END').pluck()
    const random = seededRandom(7)
    for (let i = 0; i < 3000; i++) {
      const a = randomValue(random)
      const b = randomValue(random)
      if (a === null || b === null) continue // NULL = NULL is NULL in SQL; the merge order treats NULLs as equal
      assert.equal(compareSqlValues(a, b), Number(stmt.get(a, b, a, b)), `${String(a)} vs ${String(b)}`)
    }
    db.close()
  })

  it('convert from JSON parameters and to JSON text', () => {
    assert.equal(sqlValueFromJson(3, 'p'), 3n)
    assert.equal(sqlValueFromJson(3.5, 'p'), 3.5)
    assert.equal(sqlValueFromJson(true, 'p'), 1n)
    assert.deepEqual(sqlValueFromJson({ blob: 'AAE=' }, 'p'), Buffer.from([0, 1]))
    assert.throws(() => sqlValueFromJson([1], 'p'), /an array is not an SQL value/)
    assert.throws(() => sqlValueFromJson({ a: 1 }, 'p'), /an object is not an SQL value/)
    assert.equal(sqlValueToJsonText(9007199254740993n), '9007199254740993')
    assert.equal(sqlValueToJsonText(1.0), '1.0')
    assert.equal(sqlValueToJsonText(-0.25), '-0.25')
    assert.equal(sqlValueToJsonText('q"'), '"q\\""')
    assert.equal(sqlValueToJsonText(Buffer.from([255])), '{"blob":"/w=="}')
  })
})

describe('binary codecs', () => {
  it('packed primary keys round-trip and read like cr-sqlite (x\'010901\' is the integer 1)', () => {
    assert.deepEqual(packColumns([1n]), Buffer.from('010901', 'hex'))
    assert.deepEqual(unpackColumns(Buffer.from('010901', 'hex')), [1n])
    const random = seededRandom(3)
    for (let i = 0; i < 500; i++) {
      const values = Array.from({ length: 1 + randomInt(random, 3) }, () => randomValue(random))
      const back = unpackColumns(packColumns(values))
      assert.equal(back.length, values.length)
      back.forEach((v, j) => assert.ok(Object.is(compareSqlValues(v, values[j]!), 0) || (v === null && values[j] === null), `${String(values[j])}`))
      back.forEach((v, j) => assert.equal(typeof v, typeof values[j] === 'object' && values[j] !== null ? 'object' : typeof values[j]))
    }
    assert.throws(() => unpackColumns(Buffer.from('0209', 'hex')), CodecError)
    assert.throws(() => unpackColumns(Buffer.from('01090100', 'hex')), /trailing/)
  })

  it('changesets round-trip exactly; truncated or corrupt bytes are errors, not crashes', () => {
    const random = seededRandom(4)
    for (let i = 0; i < 200; i++) {
      const changeset: Changeset = {
        siteId: Buffer.alloc(16, i),
        version: 1 + randomInt(random, 1e6),
        changes: Array.from({ length: randomInt(random, 6) }, (_, seq) => ({
          table: pick(random, ['machines', 'apps']), pk: packColumns([randomValue(random) ?? 'k']), cid: pick(random, ['-1', 'state', 'config']),
          val: randomValue(random), colVersion: 1 + randomInt(random, 9), cl: 1 + randomInt(random, 5), seq,
        })),
      }
      const bytes = changesetToBuffer(changeset)
      const back = changesetFromBuffer(bytes)
      assert.deepEqual(changesetToBuffer(back), bytes)
      for (let cut = 0; cut < bytes.length; cut += Math.max(1, bytes.length >> 3)) {
        assert.throws(() => changesetFromBuffer(bytes.subarray(0, cut)), CodecError)
      }
    }
    // A one-column change is small.
    const small = changesetToBuffer({ siteId: Buffer.alloc(16), version: 1234, changes: [{ table: 'machines', pk: packColumns(['148ed193b95089']), cid: 'state', val: 'started', colVersion: 7, cl: 1, seq: 0 }] })
    assert.ok(small.length < 70, `${small.length} bytes`)
  })

  it('varints cover 64-bit integers', () => {
    for (const v of [0n, 1n, -1n, 63n, -64n, 64n, 2n ** 62n, -(2n ** 63n), 2n ** 63n - 1n]) {
      assert.equal(new BinaryReader(new BinaryWriter().varbigint(v).finish()).varbigint(), v)
    }
    for (const v of [0, 1, 127, 128, 2 ** 31, Number.MAX_SAFE_INTEGER]) {
      assert.equal(new BinaryReader(new BinaryWriter().varuint(v).finish()).varuint(), v)
    }
  })

  it('sync states and answers round-trip', () => {
    const state = { siteId: Buffer.alloc(16, 1), heads: new Map([['02'.repeat(16), 10], ['03'.repeat(16), 4]]), needs: new Map([['02'.repeat(16), [[3, 5] as [number, number]]]]) }
    const back = decodeSyncState(encodeSyncState(state))
    assert.deepEqual([...back.heads], [...state.heads])
    assert.deepEqual([...back.needs], [...state.needs])
    const answer = { complete: false, covered: new Map([['02'.repeat(16), RangeSet.of([[3, 5], [11, 12]])]]), changesets: [{ siteId: Buffer.alloc(16, 2), version: 3, changes: [] }] }
    const decoded = decodeSyncAnswer(encodeSyncAnswer(answer))
    assert.equal(decoded.complete, false)
    assert.deepEqual(decoded.covered.get('02'.repeat(16))!.toArray(), [[3, 5], [11, 12]])
    assert.equal(decoded.changesets[0]!.version, 3)
    assert.throws(() => decodeSyncState(Buffer.from([1, 2, 3])), CodecError)
  })

  it('site ids print as UUIDs and parse back', () => {
    const id = Buffer.from('00112233445566778899aabbccddeeff', 'hex')
    assert.equal(siteIdToUuid(id), '00112233-4455-6677-8899-aabbccddeeff')
    assert.deepEqual(siteIdFromString('00112233-4455-6677-8899-aabbccddeeff'), id)
    assert.throws(() => siteIdFromString('nope'), /not a site id/)
  })
})

describe('gossip datagrams', () => {
  const tag = clusterTag('test-cluster')
  const from = { id: 'ab'.repeat(16), addr: '127.0.0.1:1', incarnation: 5, state: 'alive' as const, meta: { hostId: 'h1' } }

  it('carry SWIM messages, announcements and changes; other clusters and garbage are rejected', () => {
    const swim = decodeDatagram(encodeSwimDatagram(tag, { type: 'ping', seq: 9, from, updates: [] }), tag)
    assert.equal(swim.kind, DatagramKind.Swim)
    assert.deepEqual(swim.kind === DatagramKind.Swim && swim.message, { type: 'ping', seq: 9, from, updates: [] })
    const announce = decodeDatagram(encodeAnnounceDatagram(tag, Buffer.alloc(16, 3), 77), tag)
    assert.equal(announce.kind === DatagramKind.Announce && announce.version, 77)
    assert.throws(() => decodeDatagram(encodeSwimDatagram(tag, { type: 'ping', seq: 9, from, updates: [] }), clusterTag('other')), /another cluster/)
    assert.throws(() => decodeDatagram(Buffer.from('hello world'), tag), CodecError)
    const bad = encodeSwimDatagram(tag, { type: 'ping', seq: 9, from, updates: [] })
    bad[10] = 0xc1 // never-used msgpack byte
    assert.throws(() => decodeDatagram(bad, tag))
  })

  it('split a large transaction into datagrams under the budget that reassemble to the same changes', () => {
    const changeset: Changeset = {
      siteId: Buffer.alloc(16, 1), version: 3,
      changes: Array.from({ length: 200 }, (_, seq) => ({ table: 'machines', pk: packColumns([`m${seq}`]), cid: 'config', val: 'x'.repeat(40), colVersion: 1, cl: 1, seq })),
    }
    const datagrams = chunkChangeset(tag, 2, changeset, 1200)!
    assert.ok(datagrams.length > 5)
    const parts = datagrams.map((d) => decodeDatagram(d, tag))
    assert.ok(datagrams.every((d) => d.length <= 1200))
    assert.ok(parts.every((p, i) => p.kind === DatagramKind.Changes && p.chunkIndex === i && p.chunkCount === datagrams.length && p.hopsLeft === 2))
    const changes = parts.flatMap((p) => (p.kind === DatagramKind.Changes ? p.changeset.changes : []))
    assert.deepEqual(changes, changeset.changes)
    const huge: Changeset = { ...changeset, changes: [{ ...changeset.changes[0]!, val: 'y'.repeat(70_000) }] }
    assert.equal(chunkChangeset(tag, 0, huge, 1200), null, 'too big for datagrams: announce instead')
  })
})

describe('version ranges', () => {
  it('behave like a set of integers', () => {
    const random = seededRandom(11)
    for (let trial = 0; trial < 200; trial++) {
      const model = new Set<number>()
      const set = new RangeSet()
      const other = new RangeSet()
      const otherModel = new Set<number>()
      for (let i = 0; i < 15; i++) {
        const start = 1 + randomInt(random, 40)
        const end = start + randomInt(random, 5)
        set.add(start, end)
        for (let v = start; v <= end; v++) model.add(v)
        const s2 = 1 + randomInt(random, 40)
        other.add(s2)
        otherModel.add(s2)
      }
      const members = (r: RangeSet) => r.toArray().flatMap(([s, e]) => Array.from({ length: e - s + 1 }, (_, k) => s + k))
      assert.deepEqual(members(set), [...model].sort((a, b) => a - b))
      assert.deepEqual(members(set.subtract(other)), [...model].filter((v) => !otherModel.has(v)).sort((a, b) => a - b))
      assert.deepEqual(members(set.intersect(other)), [...model].filter((v) => otherModel.has(v)).sort((a, b) => a - b))
      const max = Math.max(...model)
      assert.equal(set.max, max)
      assert.deepEqual(members(RangeSet.of(set.gaps())), Array.from({ length: max }, (_, k) => k + 1).filter((v) => !model.has(v)))
      assert.ok(RangeSet.fromHeadAndNeeds(set.max, set.gaps()).equals(set))
      for (let v = 0; v <= 50; v++) assert.equal(set.has(v), model.has(v))
    }
    assert.throws(() => new RangeSet().add(0), RangeError)
  })
})
