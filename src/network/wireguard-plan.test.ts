import { test } from 'node:test'
import assert from 'node:assert/strict'
import { isInvalidArgument } from '../core/index.js'
import { hostNumber, sixpnAddress } from './addressing.js'
import { generateWireguardPrivateKey, wireguardPublicKey } from './wireguard-keys.js'
import {
  MESH_PREFIX, formatIpv6, hostSixpnPrefix, ipPrefixContains, normaliseEndpoint, normaliseIpPrefix, normalisePeers, overlayAddressFor, parseIpPrefix,
  parseIpv6, parseWgDump, planPeerChanges, wireguardInterfaceName, type AppliedPeer, type MeshPeer,
} from './wireguard-plan.js'

const key = () => wireguardPublicKey(generateWireguardPrivateKey())
const self = { publicKey: key(), overlayAddress: overlayAddressFor('self-host') }

function peer(hostId: string, extra: Partial<MeshPeer> = {}): MeshPeer {
  return { hostId, publicKey: key(), endpoint: '10.9.0.2:51820', overlayAddress: overlayAddressFor(hostId), ...extra }
}

test('overlay address: fdaa:ffff:0:<host 32 bits>::1, inside the mesh /48, host bits from hostNumber', () => {
  for (const hostId of ['a', 'b', 'host-1', '0f3a9c2b77aa', 'x'.repeat(200)]) {
    const address = overlayAddressFor(hostId)
    const n = hostNumber(hostId)
    const value = parseIpv6(address)
    assert.equal(Number((value >> 48n) & 0xffffffffn), n, hostId)
    assert.equal(value & 0xffffffffffffn, 1n, "machine 0, the host itself ::1")
    assert.ok(ipPrefixContains(parseIpPrefix(MESH_PREFIX), parseIpPrefix(`${address}/128`)))
    assert.equal(formatIpv6(value), address, 'already in canonical form')
  }
  assert.notEqual(overlayAddressFor('a'), overlayAddressFor('b'))
})

test('interface names: hgwg + 8 hex digits of the host number, ≤ 15 characters, unique per host', () => {
  const name = wireguardInterfaceName('0f3a9c2b77aa')
  assert.match(name, /^hgwg[0-9a-f]{8}$/)
  assert.ok(name.length <= 15)
  assert.equal(name, `hgwg${hostNumber('0f3a9c2b77aa').toString(16).padStart(8, '0')}`)
  assert.notEqual(wireguardInterfaceName('h1'), wireguardInterfaceName('h2'))
})

test("a host's per-network 6PN /80 holds that host's Machines of that network and nothing else", () => {
  const host = hostNumber('h1')
  const prefix = parseIpPrefix(hostSixpnPrefix(7, host))
  assert.equal(prefix.prefix, 80)
  assert.ok(ipPrefixContains(prefix, parseIpPrefix(`${sixpnAddress(7, host, 1)}/128`)))
  assert.ok(ipPrefixContains(prefix, parseIpPrefix(`${sixpnAddress(7, host, 0xffffffff)}/128`)))
  assert.ok(!ipPrefixContains(prefix, parseIpPrefix(`${sixpnAddress(8, host, 1)}/128`)), 'other network')
  assert.ok(!ipPrefixContains(prefix, parseIpPrefix(`${sixpnAddress(7, hostNumber('h2'), 1)}/128`)), 'other host')
  assert.equal(hostSixpnPrefix(0x12345678, 0x9abcdef0), 'fdaa:1234:5678:9abc:def0::/80')
  assert.equal(hostSixpnPrefix(1, 2), 'fdaa:0:1:0:2::/80')
})

test('IPv6 text: parse and RFC 5952 format round-trip', () => {
  const cases: Array<[string, string]> = [
    ['::', '::'], ['::1', '::1'], ['1::', '1::'], ['FDAA:0:0:0:0:0:0:1', 'fdaa::1'],
    ['fdaa:0:18:a7b:7d:f066:b83b:2', 'fdaa:0:18:a7b:7d:f066:b83b:2'],
    ['1:0:0:1:0:0:0:1', '1:0:0:1::1'], ['1:0:1:0:1:0:1:0', '1:0:1:0:1:0:1:0'], ['0:0:1:0:0:1:0:0', '::1:0:0:1:0:0'],
    ['::ffff:10.1.2.3', '::ffff:a01:203'], ['fdaa:00ff:0000::0001', 'fdaa:ff::1'],
  ]
  for (const [input, canonical] of cases) assert.equal(formatIpv6(parseIpv6(input)), canonical, input)
  assert.throws(() => parseIpv6('fdaa::1::2'), isInvalidArgument)
  assert.throws(() => parseIpv6('10.0.0.1'), isInvalidArgument)
})

test('prefixes: host bits cleared, containment by family and length, bad text refused', () => {
  assert.equal(normaliseIpPrefix('fdaa:0:1:2:3::5/48'), 'fdaa:0:1::/48')
  assert.equal(normaliseIpPrefix('10.1.2.3/8'), '10.0.0.0/8')
  assert.equal(normaliseIpPrefix('10.1.2.3'), '10.1.2.3/32')
  assert.equal(normaliseIpPrefix('fdaa::1'), 'fdaa::1/128')
  assert.equal(normaliseIpPrefix('::/0'), '::/0')
  assert.ok(ipPrefixContains(parseIpPrefix('::/0'), parseIpPrefix('fdaa::/16')))
  assert.ok(!ipPrefixContains(parseIpPrefix('fdaa::/16'), parseIpPrefix('::/0')))
  assert.ok(!ipPrefixContains(parseIpPrefix('0.0.0.0/0'), parseIpPrefix('fdaa::/16')))
  for (const bad of ['fdaa::/129', '10.0.0.0/33', 'fdaa::/x', 'host/8', '', 'fdaa::/-1', '10.0.0.0/08000']) {
    assert.throws(() => parseIpPrefix(bad), isInvalidArgument, bad)
  }
})

test('endpoints: ip:port and [ipv6]:port only', () => {
  assert.equal(normaliseEndpoint('10.0.0.1:51820'), '10.0.0.1:51820')
  assert.equal(normaliseEndpoint('[FDAA:0::1]:1'), '[fdaa::1]:1')
  for (const bad of ['10.0.0.1', '10.0.0.1:0', '10.0.0.1:65536', 'fdaa::1:51820', 'host:51820', '[10.0.0.1]:5', '10.0.0.1:5x']) {
    assert.throws(() => normaliseEndpoint(bad), isInvalidArgument, bad)
  }
})

test('peers: normalised with the overlay /128 first, extra prefixes sorted and deduplicated', () => {
  const p = peer('h1', { allowedIps: ['fdaa:0:9:1:2::/80', 'fdaa:0:7:1:2::7/80', 'fdaa:0:9:1:2::/80', `${overlayAddressFor('h1')}/128`] })
  const applied = normalisePeers([p], self, 25).get(p.publicKey)!
  assert.deepEqual(applied.allowedIps, [`${overlayAddressFor('h1')}/128`, 'fdaa:0:7:1:2::/80', 'fdaa:0:9:1:2::/80'])
  assert.equal(applied.endpoint, '10.9.0.2:51820')
  assert.equal(applied.persistentKeepaliveSeconds, 25)
  const noEndpoint = normalisePeers([peer('h2', { endpoint: undefined })], self, 0)
  assert.equal([...noEndpoint.values()][0]!.endpoint, undefined)
})

test('peers: every mistake that would misroute traffic is refused with a message naming the peer', () => {
  const a = peer('a')
  const cases: Array<[string, MeshPeer[], RegExp]> = [
    ['duplicate host', [a, peer('a')], /host a is listed twice/],
    ['duplicate key', [a, { ...peer('b'), publicKey: a.publicKey }], /also used by host a/],
    ['own key', [{ ...peer('b'), publicKey: self.publicKey }], /this host's own key/],
    ['bad key', [{ ...peer('b'), publicKey: 'abc' }], /publicKey must be a WireGuard key/],
    ['bad endpoint', [{ ...peer('b'), endpoint: 'nowhere' }], /endpoint "nowhere"/],
    ['overlay outside the mesh', [{ ...peer('b'), overlayAddress: 'fdaa:0:1::1' }], /outside the mesh prefix/],
    ['overlay not IPv6', [{ ...peer('b'), overlayAddress: '10.0.0.1' }], /overlayAddress must be an IPv6 address/],
    ['our overlay', [{ ...peer('b'), overlayAddress: self.overlayAddress }], /already routed to \(this host\)/],
    ['another host overlay', [a, { ...peer('b'), allowedIps: [`${a.overlayAddress}/128`] }], /lies in the mesh prefix/],
    ['wider than the mesh', [{ ...peer('b'), allowedIps: ['fdaa::/16'] }], /covers the whole mesh prefix/],
    ['same prefix twice', [{ ...a, allowedIps: ['fdaa:0:1:0:5::/80'] }, { ...peer('b'), allowedIps: ['fdaa:0:1:0:5::/80'] }], /already routed to host a/],
    ['bad prefix', [{ ...peer('b'), allowedIps: ['fdaa::/200'] }], /prefix length/],
    ['empty host id', [{ ...peer('b'), hostId: '' }], /hostId must be a non-empty string/],
  ]
  for (const [what, peers, message] of cases) {
    assert.throws(() => normalisePeers(peers, self, 25), (err: unknown) => isInvalidArgument(err) && message.test((err as Error).message), what)
  }
  assert.throws(() => normalisePeers('nope' as unknown as MeshPeer[], self, 25), isInvalidArgument)
  // Nested prefixes are legitimate: WireGuard routes by longest match.
  assert.equal(normalisePeers([{ ...a, allowedIps: ['fdaa:0:1::/48'] }, { ...peer('b'), allowedIps: ['fdaa:0:1:0:5::/80'] }], self, 25).size, 2)
})

test('plan: add, no-op, update endpoint/prefixes, remove — one wg set each, routes for prefixes outside the mesh', () => {
  const a = peer('a', { allowedIps: ['fdaa:0:1:0:a::/80'] })
  const b = peer('b')
  const empty = new Map<string, AppliedPeer>()
  const first = planPeerChanges(empty, normalisePeers([a, b], self, 25))
  assert.deepEqual(first.added, ['a', 'b'])
  assert.deepEqual(first.wgArgs, [
    'peer', a.publicKey, 'persistent-keepalive', '25', 'allowed-ips', `${a.overlayAddress}/128,fdaa:0:1:0:a::/80`, 'endpoint', '10.9.0.2:51820',
    'peer', b.publicKey, 'persistent-keepalive', '25', 'allowed-ips', `${b.overlayAddress}/128`, 'endpoint', '10.9.0.2:51820',
  ])
  assert.deepEqual(first.routesToAdd, ['fdaa:0:1:0:a::/80'], 'overlay /128s ride the mesh /48 route')
  assert.deepEqual(first.routesToRemove, [])

  const again = planPeerChanges(first.next, normalisePeers([b, a], self, 25))
  assert.deepEqual({ wg: again.wgArgs, add: again.routesToAdd, del: again.routesToRemove, changed: [...again.added, ...again.updated, ...again.removed] }, { wg: [], add: [], del: [], changed: [] })

  const moved = planPeerChanges(first.next, normalisePeers([{ ...a, endpoint: '10.9.0.3:4000', allowedIps: ['fdaa:0:2:0:a::/80'] }, b], self, 25))
  assert.deepEqual(moved.updated, ['a'])
  assert.deepEqual(moved.wgArgs, ['peer', a.publicKey, 'persistent-keepalive', '25', 'allowed-ips', `${a.overlayAddress}/128,fdaa:0:2:0:a::/80`, 'endpoint', '10.9.0.3:4000'])
  assert.deepEqual(moved.routesToAdd, ['fdaa:0:2:0:a::/80'])
  assert.deepEqual(moved.routesToRemove, ['fdaa:0:1:0:a::/80'])

  const removed = planPeerChanges(moved.next, normalisePeers([b], self, 25))
  assert.deepEqual(removed.removed, ['a'])
  assert.deepEqual(removed.wgArgs, ['peer', a.publicKey, 'remove'])
  assert.deepEqual(removed.routesToRemove, ['fdaa:0:2:0:a::/80'])

  const keepalive = planPeerChanges(removed.next, normalisePeers([b], self, 0))
  assert.deepEqual(keepalive.updated, ['b'])
  assert.deepEqual(planPeerChanges(keepalive.next, new Map()).wgArgs, ['peer', b.publicKey, 'remove'])
})

test('plan: a prefix shared by the old and new owner is not removed from the routes when it moves', () => {
  const a = peer('a', { allowedIps: ['fdaa:0:1:0:a::/80'] })
  const b = peer('b')
  const before = planPeerChanges(new Map(), normalisePeers([a, b], self, 25)).next
  const after = planPeerChanges(before, normalisePeers([{ ...a, allowedIps: [] }, { ...b, allowedIps: ['fdaa:0:1:0:a::/80'] }], self, 25))
  assert.deepEqual(after.routesToAdd, [])
  assert.deepEqual(after.routesToRemove, [])
  assert.deepEqual(after.updated.sort(), ['a', 'b'])
})

test('wg show dump: interface line, then peers with roamed endpoints, handshakes and counters', () => {
  const text = [
    'cHJpdmF0ZQ==\tPUBKEY=\t51820\toff',
    'PEERA=\t(none)\t10.9.0.1:40000\tfdaa:ffff:0:1:2::1/128,fdaa:0:1:1:2::/80\t1700000000\t1234\t5678\t25',
    'PEERB=\t(none)\t(none)\tfdaa:ffff:0:3:4::1/128\t0\t0\t0\toff',
    '',
  ].join('\n')
  const dump = parseWgDump(text)
  assert.equal(dump.listenPort, 51820)
  assert.equal(dump.publicKey, 'PUBKEY=')
  assert.deepEqual(dump.peers[0], {
    publicKey: 'PEERA=', endpoint: '10.9.0.1:40000', allowedIps: ['fdaa:ffff:0:1:2::1/128', 'fdaa:0:1:1:2::/80'],
    latestHandshake: new Date(1_700_000_000_000), rxBytes: 1234, txBytes: 5678, persistentKeepaliveSeconds: 25,
  })
  assert.deepEqual(dump.peers[1], { publicKey: 'PEERB=', allowedIps: ['fdaa:ffff:0:3:4::1/128'], rxBytes: 0, txBytes: 0 })
  assert.throws(() => parseWgDump(''), isInvalidArgument)
  assert.throws(() => parseWgDump('a\tb\t1\toff\nbroken'), isInvalidArgument)
})
