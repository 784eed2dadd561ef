import { test } from 'node:test'
import assert from 'node:assert/strict'
import { ReservationLedger } from './ledger.js'
import { rankBestFit } from './best-fit.js'

test('reservations hold capacity until they lapse or are released; offers never exceed capacity', () => {
  let now = 1000
  const ledger = new ReservationLedger(() => now)
  const host = { capacity: { cpus: 4, memoryMb: 1024 }, used: { cpus: 1, memoryMb: 256 } }
  const need = { cpus: 1, memoryMb: 256 }
  assert.equal(ledger.howMany(host, need), 3)
  const held = [ledger.reserve(host, need, 500), ledger.reserve(host, need, 500), ledger.reserve(host, need, 500)]
  assert.ok(held.every(Boolean))
  assert.equal(ledger.reserve(host, need, 500), undefined, 'no fourth: it would double-book')
  ledger.release(held[0]!.id)
  assert.ok(ledger.reserve(host, need, 500), 'a released reservation frees its share')
  now += 501
  assert.equal(ledger.size(), 0, 'reservations lapse after their TTL')
  assert.equal(ledger.extend(held[1]!.id, 500), false, 'a lapsed reservation cannot be confirmed')
  const kept = ledger.reserve(host, need, 500)!
  now += 400
  assert.equal(ledger.extend(kept.id, 500), true)
  now += 400
  assert.equal(ledger.size(), 1, 'extended while the Machine is being made')
})

test('best fit prefers the host fullest after placement, among those that fit', () => {
  const hosts = [
    { hostId: 'a', region: 'ams', capacity: { cpus: 8, memoryMb: 8192 }, used: { cpus: 1, memoryMb: 1024 } },
    { hostId: 'b', region: 'ams', capacity: { cpus: 8, memoryMb: 8192 }, used: { cpus: 6, memoryMb: 6144 } },
    { hostId: 'c', region: 'ams', capacity: { cpus: 8, memoryMb: 8192 }, used: { cpus: 8, memoryMb: 1024 } },
  ]
  assert.deepEqual(rankBestFit(hosts, { cpus: 1, memoryMb: 1024 }).map((h) => h.hostId), ['b', 'a'])
  assert.deepEqual(rankBestFit(hosts, { cpus: 3, memoryMb: 1024 }).map((h) => h.hostId), ['a'])
  assert.deepEqual(rankBestFit(hosts, { cpus: 9, memoryMb: 1024 }), [])
})
