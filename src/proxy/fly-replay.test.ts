import { test } from 'node:test'
import assert from 'node:assert/strict'
import { isInvalidArgument } from '../core/index.js'
import { formatReplayFailed, formatReplaySrc, parseReplayHeader, parseReplayJson, regionMatchers, transformHeaderLines } from './fly-replay.js'
import { proxyHeaderV1, proxyHeaderV2 } from './proxy-protocol.js'

test('fly-replay header: every field, quoted region lists, ; separators', () => {
  const r = parseReplayHeader('region="sjc,any";app=worker;instance=abc;prefer_instance=def;state=s1;elsewhere=true;timeout=800ms;fallback=force_self')
  assert.deepEqual(r.regions, ['sjc', 'any'])
  assert.equal(r.app, 'worker')
  assert.equal(r.instance, 'abc')
  assert.equal(r.preferInstance, 'def')
  assert.equal(r.state, 's1')
  assert.equal(r.elsewhere, true)
  assert.equal(r.timeoutMs, 800)
  assert.equal(r.fallback, 'force_self')
  assert.deepEqual(parseReplayHeader('region=sin').regions, ['sin'])
  assert.equal(parseReplayHeader('app=my-worker;timeout=10s;fallback=force_self').timeoutMs, 10_000)
})

test('fly-replay header: bad input is a typed error', () => {
  for (const bad of ['', 'region', 'timeout=soon', 'fallback=maybe']) {
    assert.throws(() => parseReplayHeader(bad), (err: unknown) => isInvalidArgument(err), bad)
  }
})

test('fly-replay JSON form with transform', () => {
  const r = parseReplayJson(JSON.stringify({ region: 'ams', state: 'x', transform: { path: '/new', delete_headers: ['X-Drop'], set_headers: [{ name: 'X-Set', value: '1' }] } }))
  assert.deepEqual(r.regions, ['ams'])
  assert.equal(r.transform.path, '/new')
  assert.equal(transformHeaderLines('Host: a\r\nX-Drop: 1\r\nX-Set: 0\r\n', r.transform), 'Host: a\r\nX-Set: 1\r\n')
  assert.throws(() => parseReplayJson('nope'), (err: unknown) => isInvalidArgument(err))
  assert.throws(() => parseReplayJson('{"transform":{"path":"relative"}}'), (err: unknown) => isInvalidArgument(err))
})

test('region aliases and any', () => {
  const [eu, any, exact] = regionMatchers(['eu', 'any', 'lab1'])
  assert.equal(eu!('ams'), true)
  assert.equal(eu!('sin'), false)
  assert.equal(any!('whatever'), true)
  assert.equal(exact!('lab1'), true)
})

test('fly-replay-src and fly-replay-failed formats', () => {
  assert.equal(formatReplaySrc('m1', 'ams', 'st', 1000), 'instance=m1;region=ams;t=1000000;state=st')
  assert.equal(formatReplaySrc('m1', 'ams', '', 1), 'instance=m1;region=ams;t=1000')
  assert.equal(formatReplayFailed({ instance: 'i', app: 'a', region: 'r', source: 's', reason: 'timeout', elapsedMs: 12.4 }), 'instance=i;app=a;region=r;replay_source=s;reason=timeout;elapsed_ms=12')
})

test('PROXY protocol v1 and v2 headers', () => {
  assert.equal(proxyHeaderV1({ address: '::ffff:10.0.0.1', port: 5555 }, { address: '10.0.0.2', port: 80 }).toString(), 'PROXY TCP4 10.0.0.1 10.0.0.2 5555 80\r\n')
  assert.equal(proxyHeaderV1({ address: 'fdaa::1', port: 1 }, { address: 'fdaa::2', port: 2 }).toString(), 'PROXY TCP6 fdaa::1 fdaa::2 1 2\r\n')
  assert.equal(proxyHeaderV1({ address: 'fdaa::1', port: 1 }, { address: '10.0.0.2', port: 2 }).toString(), 'PROXY UNKNOWN\r\n')
  const v2 = proxyHeaderV2({ address: '10.0.0.1', port: 5555 }, { address: '10.0.0.2', port: 80 })
  assert.equal(v2.length, 28)
  assert.deepEqual([...v2.subarray(0, 12)], [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a])
  assert.equal(v2[12], 0x21)
  assert.equal(v2[13], 0x11)
  assert.equal(v2.readUInt16BE(14), 12)
  assert.deepEqual([...v2.subarray(16, 24)], [10, 0, 0, 1, 10, 0, 0, 2])
  assert.equal(v2.readUInt16BE(24), 5555)
  assert.equal(v2.readUInt16BE(26), 80)
  const v6 = proxyHeaderV2({ address: 'fdaa:0:18::2', port: 1 }, { address: '::1', port: 2 })
  assert.equal(v6.length, 52)
  assert.equal(v6[13], 0x21)
  assert.equal(v6.subarray(16, 32).toString('hex'), 'fdaa0000001800000000000000000002')
  assert.equal(v6.subarray(32, 48).toString('hex'), '00000000000000000000000000000001')
})
