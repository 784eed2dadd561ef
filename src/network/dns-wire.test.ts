import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import {
  DNS_TYPE, RCODE, CLASSIC_UDP_BYTES, EDNS_UDP_BYTES, encodeErrorResponse, encodeName, encodeQuery, encodeResponse, formatIpv6, parseIpv6, parseQuery,
  parseResponse, responseLimit, txtRdata, type DnsQuery,
} from './dns-wire.js'

const queryOf = (packet: Buffer): DnsQuery => {
  const parsed = parseQuery(packet)
  assert.equal(parsed.kind, 'query')
  return (parsed as { query: DnsQuery }).query
}

test('IPv6 text ⇄ bytes: every textual form, RFC 5952 output', () => {
  const cases: Array<[string, string]> = [
    ['fdaa:0:18:a7b:7d:f066:b83b:2', 'fdaa:0:18:a7b:7d:f066:b83b:2'],
    ['fdaa::3', 'fdaa::3'],
    ['FDAA:0000:0000:0000:0000:0000:0000:0003', 'fdaa::3'],
    ['::1', '::1'],
    ['::', '::'],
    ['1::', '1::'],
    ['1:0:0:2:0:0:0:3', '1:0:0:2::3'],
    ['1:0:2:0:3:0:4:0', '1:0:2:0:3:0:4:0'],
    ['::ffff:192.0.2.1', '::ffff:c000:201'],
    ['fe80::1%eth0', 'fe80::1'],
  ]
  for (const [input, output] of cases) {
    const bytes = parseIpv6(input)
    assert.ok(bytes, input)
    assert.equal(formatIpv6(bytes), output, input)
  }
  for (const bad of ['', '1.2.3.4', 'fdaa::3::1', '1:2:3:4:5:6:7:8:9', '12345::', 'g::1', '1:2:3:4:5:6:7', ':::', '::ffff:1.2.3.256']) {
    assert.equal(parseIpv6(bad), undefined, bad)
  }
})

test('a query parses into lower-cased labels, keeps the question bytes as sent, and reads EDNS', () => {
  const packet = encodeQuery(0x1234, 'MyApp.Internal', DNS_TYPE.AAAA, { ednsUdpSize: 4096 })
  const query = queryOf(packet)
  assert.equal(query.id, 0x1234)
  assert.equal(query.rd, true)
  assert.deepEqual(query.labels, ['myapp', 'internal'])
  assert.equal(query.name, 'myapp.internal')
  assert.equal(query.qtype, DNS_TYPE.AAAA)
  assert.equal(query.ednsUdpSize, 4096)
  assert.ok(query.questionBytes.toString('latin1').includes('MyApp'), 'case kept for the echo (0x20)')
  assert.equal(responseLimit(query, 'udp'), EDNS_UDP_BYTES, 'capped at what Hangar offers')
  assert.equal(responseLimit(queryOf(encodeQuery(1, 'a.internal', 1)), 'udp'), CLASSIC_UDP_BYTES)
  assert.equal(responseLimit(query, 'tcp'), 65_535)
})

test('responses are dropped, other opcodes get NOTIMP, bad questions FORMERR', () => {
  const response = encodeQuery(7, 'x.internal', 28)
  response.writeUInt16BE(0x8000, 2)
  assert.deepEqual(parseQuery(response), { kind: 'drop' })
  assert.deepEqual(parseQuery(Buffer.alloc(11)), { kind: 'drop' })
  const update = encodeQuery(7, 'x.internal', 28)
  update.writeUInt16BE(5 << 11, 2)
  assert.equal((parseQuery(update) as { rcode: number }).rcode, RCODE.NOTIMP)
  const two = encodeQuery(7, 'x.internal', 28)
  two.writeUInt16BE(2, 4)
  assert.equal((parseQuery(two) as { rcode: number }).rcode, RCODE.FORMERR)
  const pointer = Buffer.concat([encodeQuery(7, 'x.internal', 28).subarray(0, 12), Buffer.from([0xc0, 0x0c, 0, 28, 0, 1])])
  assert.equal((parseQuery(pointer) as { rcode: number }).rcode, RCODE.FORMERR)
  const cut = encodeQuery(7, 'x.internal', 28).subarray(0, 20)
  assert.equal((parseQuery(cut) as { rcode: number }).rcode, RCODE.FORMERR)
  const long = Buffer.concat([Buffer.from([0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]), ...Array.from({ length: 5 }, () => Buffer.concat([Buffer.from([63]), Buffer.alloc(63, 97)])), Buffer.from([0, 0, 28, 0, 1])])
  assert.equal((parseQuery(long) as { rcode: number }).rcode, RCODE.FORMERR, 'names over 255 bytes')
  const error = parseResponse(encodeErrorResponse(9, true, RCODE.FORMERR))!
  assert.equal(error.id, 9)
  assert.equal(error.rcode, RCODE.FORMERR)
})

test('answers point at the question name, and what does not fit is cut with TC', () => {
  const query = queryOf(encodeQuery(42, 'Big.internal', DNS_TYPE.AAAA))
  const address = parseIpv6('fdaa:0:1:0:1:0:1:2')!
  const answers = Array.from({ length: 40 }, () => ({ owner: 'question' as const, type: DNS_TYPE.AAAA, ttl: 5, rdata: address }))
  const small = parseResponse(encodeResponse(query, { rcode: 0, authoritative: true, recursionAvailable: true, answers, authority: [] }, responseLimit(query, 'udp')))!
  assert.equal(small.truncated, true)
  assert.ok(small.answers.length > 10 && small.answers.length < 40)
  assert.equal(small.answers[0]!.name, 'Big.internal', 'the owner is the question as asked')
  assert.equal(small.answers[0]!.address, 'fdaa:0:1:0:1:0:1:2')
  const whole = parseResponse(encodeResponse(query, { rcode: 0, authoritative: true, recursionAvailable: true, answers, authority: [] }, responseLimit(query, 'tcp')))!
  assert.equal(whole.truncated, false)
  assert.equal(whole.answers.length, 40)
  assert.equal(whole.authoritative, true)
  assert.equal(whole.id, 42)
})

test('TXT text longer than 255 bytes is split into strings of one record and joins back', () => {
  const text = 'x'.repeat(600)
  const rdata = txtRdata(text)
  assert.equal(rdata[0], 255)
  assert.equal(rdata.length, 600 + 3)
  const query = queryOf(encodeQuery(1, 'vms.a.internal', DNS_TYPE.TXT))
  const response = parseResponse(encodeResponse(query, { rcode: 0, authoritative: true, recursionAvailable: false, answers: [{ owner: 'question', type: DNS_TYPE.TXT, ttl: 5, rdata }], authority: [] }, 65_535))!
  assert.equal(response.answers[0]!.text, text)
  assert.equal(txtRdata('').length, 1, 'an empty TXT is one empty string')
})

test('names are written with length-prefixed labels', () => {
  assert.deepEqual([...encodeName(['ab', 'internal'])], [2, 97, 98, 8, ...Buffer.from('internal'), 0])
})

test('random bytes never throw: each packet is dropped, refused as malformed, or parsed', () => {
  for (let i = 0; i < 20_000; i++) {
    const packet = randomBytes(Math.floor(Math.random() * 80))
    if (i % 3 === 0 && packet.length >= 6) packet.writeUInt16BE(1, 4)
    if (i % 2 === 0 && packet.length > 3) packet[2] = packet[2]! & 0x07
    const parsed = parseQuery(packet)
    assert.ok(['drop', 'error', 'query'].includes(parsed.kind))
    if (parsed.kind === 'query') assert.ok(encodeResponse(parsed.query, { rcode: 3, authoritative: true, recursionAvailable: false, answers: [], authority: [] }, 512).length >= 12)
    parseResponse(packet)
  }
})
