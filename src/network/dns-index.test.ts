import { test } from 'node:test'
import assert from 'node:assert/strict'
import { DnsIndex, sixpnNetworkOf, type DnsMachine, type DnsScope } from './dns-index.js'
import { parseInternalName } from './dns-names.js'
import { DNS_TYPE, RCODE, formatIpv6 } from './dns-wire.js'

// The answers `.internal` DNS gives, from an index of plain rows: every name of reference §3.3,
// org scoping by 6PN network (§3.4), started-only AAAA answers, NODATA vs NXDOMAIN.

const ip = (network: number, host: number, machine: number) =>
  `fdaa:${(network >>> 16).toString(16)}:${(network & 0xffff).toString(16)}:${(host >>> 16).toString(16)}:${(host & 0xffff).toString(16)}:${(machine >>> 16).toString(16)}:${(machine & 0xffff).toString(16)}:2`

const machine = (id: string, over: Partial<DnsMachine> = {}): DnsMachine => ({
  id, app: 'web', hostId: 'h1', region: 'ams', state: 'started', privateIp: ip(1, 1, parseInt(id.slice(-2), 16)), ipv4: `172.16.0.${parseInt(id.slice(-2), 16)}`,
  processGroup: 'app', metadata: {}, ...over,
})

function fixture(): DnsIndex {
  const index = new DnsIndex()
  index.upsertApp({ name: 'web', network: 1 })
  index.upsertApp({ name: 'db', network: 1 })
  index.upsertApp({ name: 'empty', network: 1 })
  index.upsertApp({ name: 'secret', network: 2 })
  index.upsertMachine(machine('m01', { metadata: { role: 'Primary', fly_process_group: 'app' } }))
  index.upsertMachine(machine('m02', { region: 'sjc', hostId: 'h2' }))
  index.upsertMachine(machine('m03', { state: 'stopped' }))
  index.upsertMachine(machine('m04', { processGroup: 'worker', region: 'ams', hostId: 'h3' }))
  index.upsertMachine(machine('m05', { app: 'db', metadata: { role: 'primary' } }))
  index.upsertMachine(machine('m06', { app: 'secret', privateIp: ip(2, 1, 6) }))
  return index
}

const org1: DnsScope = { kind: 'network', network: 1 }
const ask = (index: DnsIndex, name: string, qtype: number = DNS_TYPE.AAAA, scope: DnsScope = org1, extra: { hostId?: string; region?: string } = {}) =>
  index.answer(scope, parseInternalName(name.split('.')), qtype, { ttl: 5, ...extra })
const addresses = (answer: ReturnType<typeof ask>) => answer.answers.map((a) => formatIpv6(a.rdata)).sort()
const text = (answer: ReturnType<typeof ask>) => answer.answers.map((a) => {
  const parts: string[] = []
  for (let at = 0; at < a.rdata.length; at += 1 + a.rdata[at]!) parts.push(a.rdata.subarray(at + 1, at + 1 + a.rdata[at]!).toString())
  return parts.join('')
})
const ipOf = (id: string) => machine(id).privateIp
const canonical = (address: string) => formatIpv6(Buffer.from(address.split(':').flatMap((g) => { const n = parseInt(g, 16); return [n >> 8, n & 255] })))

test('<app>.internal and global.<app>.internal: the started Machines only', () => {
  const index = fixture()
  const expected = ['m01', 'm02', 'm04'].map((id) => canonical(ipOf(id))).sort()
  assert.deepEqual(addresses(ask(index, 'web.internal')), expected)
  assert.deepEqual(addresses(ask(index, 'global.web.internal')), expected)
  assert.equal(ask(index, 'web.internal').rcode, RCODE.NOERROR)
  assert.equal(ask(index, 'web.internal').authoritative, true)
})

test('region, process group, metadata, one Machine', () => {
  const index = fixture()
  assert.deepEqual(addresses(ask(index, 'ams.web.internal')), ['m01', 'm04'].map((id) => canonical(ipOf(id))).sort())
  assert.deepEqual(addresses(ask(index, 'sjc.web.internal')), [canonical(ipOf('m02'))])
  assert.deepEqual(addresses(ask(index, 'worker.process.web.internal')), [canonical(ipOf('m04'))])
  assert.deepEqual(addresses(ask(index, 'app.process.web.internal')), ['m01', 'm02'].map((id) => canonical(ipOf(id))).sort())
  assert.deepEqual(addresses(ask(index, 'primary.role.kv._metadata.web.internal')), [canonical(ipOf('m01'))], 'metadata values match case-insensitively')
  assert.deepEqual(addresses(ask(index, 'm02.vm.web.internal')), [canonical(ipOf('m02'))])
  assert.deepEqual(addresses(ask(index, 'M02.VM.WEB.internal'.toLowerCase())), [canonical(ipOf('m02'))])
})

test('a name that exists answers NOERROR without records for other types and for stopped Machines (NODATA)', () => {
  const index = fixture()
  const a = ask(index, 'web.internal', DNS_TYPE.A)
  assert.equal(a.rcode, RCODE.NOERROR)
  assert.equal(a.answers.length, 0)
  assert.equal(a.authority[0]!.type, DNS_TYPE.SOA, 'negative answers carry the SOA for caching')
  const stopped = ask(index, 'm03.vm.web.internal')
  assert.equal(stopped.rcode, RCODE.NOERROR)
  assert.equal(stopped.answers.length, 0)
  const emptyApp = ask(index, 'empty.internal')
  assert.equal(emptyApp.rcode, RCODE.NOERROR, 'an app without Machines exists')
  assert.equal(emptyApp.answers.length, 0)
})

test('unknown apps, Machines, regions, groups and names are NXDOMAIN', () => {
  const index = fixture()
  for (const name of ['nope.internal', 'm99.vm.web.internal', 'm05.vm.web.internal', 'fra.web.internal', 'batch.process.web.internal', 'x.role.kv._metadata.web.internal', 'a.b.c.web.internal', 'laptop._peer.internal']) {
    const answer = ask(index, name)
    assert.equal(answer.rcode, RCODE.NXDOMAIN, name)
    assert.equal(answer.answers.length, 0, name)
  }
})

test('per-org scoping: another org sees nothing of this one; the host sees all', () => {
  const index = fixture()
  const org2: DnsScope = { kind: 'network', network: 2 }
  assert.equal(ask(index, 'web.internal', DNS_TYPE.AAAA, org2).rcode, RCODE.NXDOMAIN)
  assert.equal(ask(index, 'm01.vm.web.internal', DNS_TYPE.AAAA, org2).rcode, RCODE.NXDOMAIN)
  assert.equal(ask(index, 'secret.internal').rcode, RCODE.NXDOMAIN)
  assert.deepEqual(text(ask(index, '_apps.internal', DNS_TYPE.TXT, org2)), ['secret'])
  assert.deepEqual(text(ask(index, '_apps.internal', DNS_TYPE.TXT)), ['db,empty,web'])
  assert.deepEqual(text(ask(index, '_apps.internal', DNS_TYPE.TXT, { kind: 'host' })), ['db,empty,secret,web'])
  assert.deepEqual(addresses(ask(index, 'secret.internal', DNS_TYPE.AAAA, { kind: 'host' })), [canonical(ip(2, 1, 6))])
})

test('TXT: vms, regions, instances — started or all', () => {
  const index = fixture()
  assert.deepEqual(text(ask(index, 'vms.web.internal', DNS_TYPE.TXT)), ['m01 ams,m02 sjc,m04 ams'])
  assert.deepEqual(text(ask(index, 'all.vms.web.internal', DNS_TYPE.TXT)), ['m01 ams,m02 sjc,m03 ams,m04 ams'])
  assert.deepEqual(text(ask(index, 'regions.web.internal', DNS_TYPE.TXT)), ['ams,sjc'])
  index.upsertMachine(machine('m07', { region: 'fra', state: 'stopped' }))
  assert.deepEqual(text(ask(index, 'regions.web.internal', DNS_TYPE.TXT)), ['ams,sjc'])
  assert.deepEqual(text(ask(index, 'all.regions.web.internal', DNS_TYPE.TXT)), ['ams,fra,sjc'])
  const instances = text(ask(index, '_instances.internal', DNS_TYPE.TXT))[0]!.split(';')
  const expected: Array<[string, string, string]> = [['m01', 'web', 'ams'], ['m02', 'web', 'sjc'], ['m04', 'web', 'ams'], ['m05', 'db', 'ams']]
  assert.deepEqual(instances, expected.map(([id, app, region]) => `instance=${id},app=${app},ip=${canonical(ipOf(id))},region=${region}`))
  assert.equal(text(ask(index, 'all._instances.internal', DNS_TYPE.TXT))[0]!.split(';').length, 6)
  assert.equal(ask(index, 'vms.web.internal', DNS_TYPE.AAAA).answers.length, 0, 'TXT names have no AAAA')
  assert.equal(ask(index, '_peer.internal', DNS_TYPE.TXT).rcode, RCODE.NOERROR)
})

test('top<N>.nearest.of: the asking Machine’s host, then its region, then the rest', () => {
  const index = fixture()
  index.upsertMachine(machine('m08', { region: 'sjc', hostId: 'h9' }))
  const querier = index.machineBy6pn(ip(1, 1, 2))!
  assert.equal(querier.id, 'm02')
  const fromSjc: DnsScope = { kind: 'network', network: 1, querier }
  const order = (n: number) => ask(index, `top${n}.nearest.of.web.internal`, DNS_TYPE.AAAA, fromSjc).answers.map((a) => formatIpv6(a.rdata))
  assert.deepEqual(order(1), [canonical(ipOf('m02'))])
  assert.deepEqual(order(2), [canonical(ipOf('m02')), canonical(ipOf('m08'))])
  assert.equal(order(10).length, 4)
  assert.deepEqual(ask(index, 'top1.nearest.of.web.internal', DNS_TYPE.AAAA, { kind: 'host' }, { hostId: 'h3', region: 'ams' }).answers.map((a) => formatIpv6(a.rdata)), [canonical(ipOf('m04'))])
})

test('the index follows changes: state, region, removal, app rows', () => {
  const index = fixture()
  index.upsertMachine(machine('m03', { state: 'started' }))
  assert.equal(ask(index, 'm03.vm.web.internal').answers.length, 1)
  index.upsertMachine(machine('m01', { region: 'fra' }))
  assert.equal(ask(index, 'fra.web.internal').answers.length, 1)
  assert.deepEqual(addresses(ask(index, 'ams.web.internal')), ['m03', 'm04'].map((id) => canonical(ipOf(id))).sort())
  assert.equal(ask(index, 'primary.role.kv._metadata.web.internal').rcode, RCODE.NXDOMAIN, 'the new row has no metadata')
  for (const id of ['m01', 'm02', 'm03', 'm04']) index.removeMachine(id)
  assert.equal(ask(index, 'web.internal').rcode, RCODE.NOERROR, 'the app row keeps the app')
  assert.equal(ask(index, 'ams.web.internal').rcode, RCODE.NXDOMAIN)
  index.removeApp('web')
  assert.equal(ask(index, 'web.internal').rcode, RCODE.NXDOMAIN)
  // An app known only from its Machines (no apps row yet) takes their network.
  index.upsertMachine(machine('m0a', { app: 'fresh', privateIp: ip(2, 1, 10) }))
  assert.equal(ask(index, 'fresh.internal').rcode, RCODE.NXDOMAIN)
  assert.equal(ask(index, 'fresh.internal', DNS_TYPE.AAAA, { kind: 'network', network: 2 }).answers.length, 1)
  const before = index.serial
  index.reset([], [])
  assert.ok(index.serial >= before)
  assert.equal(index.size.machines, 0)
})

test('scope from the source address: 6PN network bits, this host’s Machines by IPv4, loopback is the host', () => {
  const index = fixture()
  assert.deepEqual(index.scopeFor(ip(1, 7, 9)), { kind: 'network', network: 1 })
  assert.equal((index.scopeFor(ip(1, 1, 2)) as { querier: DnsMachine }).querier.id, 'm02')
  assert.deepEqual(index.scopeFor('fdaa:0:2::5'), { kind: 'network', network: 2 })
  assert.deepEqual(index.scopeFor('fdaa::3'), { kind: 'host' }, 'network 0 is no org: the host asking from its resolver address')
  assert.deepEqual(index.scopeFor('fdaa:0:0:1234:5678::3'), { kind: 'host' })
  assert.equal(index.scopeFor('fdaa::3', { hostSeesAll: false }), undefined)
  assert.equal(index.scopeFor('fd00::2'), undefined)
  assert.deepEqual(index.scopeFor('127.0.0.1'), { kind: 'host' })
  assert.deepEqual(index.scopeFor('::1'), { kind: 'host' })
  assert.deepEqual(index.scopeFor('::ffff:127.0.0.1'), { kind: 'host' })
  assert.equal(index.scopeFor('127.0.0.1', { hostSeesAll: false }), undefined)
  const byIpv4 = index.scopeFor('172.16.0.1', { hostId: 'h1' }) as { network: number; querier: DnsMachine }
  assert.equal(byIpv4.network, 1)
  assert.equal(byIpv4.querier.id, 'm01')
  assert.equal(index.scopeFor('172.16.0.1', { hostId: 'h2' }), undefined, 'an IPv4 of another host is not ours to judge')
  assert.equal(index.scopeFor('10.0.0.1', { hostId: 'h1' }), undefined)
  assert.equal(index.scopeFor('garbage'), undefined)
  assert.equal(sixpnNetworkOf('fdaa:0:18:a7b:7d:f066:b83b:2'), 0x18)
  assert.equal(sixpnNetworkOf('fdaa:1:2::2'), 0x10002)
})

test('the apex answers SOA; other names under it follow the grammar', () => {
  const index = fixture()
  const soa = ask(index, 'internal', DNS_TYPE.SOA)
  assert.equal(soa.rcode, RCODE.NOERROR)
  assert.equal(soa.answers[0]!.type, DNS_TYPE.SOA)
  assert.equal(ask(index, 'internal', DNS_TYPE.AAAA).answers.length, 0)
})
