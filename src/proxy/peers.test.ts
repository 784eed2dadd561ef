import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isInvalidArgument } from '../core/index.js'
import { FilePeerSource, joinHostPort, parsePeers, splitHostPort, StaticPeerSource, type BackhaulPeer } from './peers.js'
import { machineServiceKey, parseMachineAuthority, isAtCapacity, BackhaulError, BACKHAUL_ERROR } from './backhaul-protocol.js'

test('host:port parsing, IPv6 in brackets; typed errors', () => {
  assert.deepEqual(splitHostPort('10.0.0.1:4003'), { host: '10.0.0.1', port: 4003 })
  assert.deepEqual(splitHostPort('[fdaa:ffff:0:1::1]:4003'), { host: 'fdaa:ffff:0:1::1', port: 4003 })
  assert.deepEqual(splitHostPort('proxy.example:1'), { host: 'proxy.example', port: 1 })
  for (const bad of ['10.0.0.1', 'fdaa::1:4003', '[fdaa::1]', 'h:0', 'h:65536', ':80', 'h:x']) {
    assert.throws(() => splitHostPort(bad, '--backhaul-listen'), (err: unknown) => isInvalidArgument(err) && /--backhaul-listen/.test((err as Error).message), bad)
  }
  assert.equal(joinHostPort('fdaa::1', 4003), '[fdaa::1]:4003')
  assert.equal(joinHostPort('10.0.0.1', 4003), '10.0.0.1:4003')
})

test('peer lists: both shapes, validation, static and file sources', async (t) => {
  const peers: BackhaulPeer[] = [{ hostId: 'a', region: 'ams', addr: '127.0.0.1:1' }, { hostId: 'b', region: 'sea', addr: '[::1]:2' }]
  assert.deepEqual(parsePeers(peers), peers)
  assert.deepEqual(parsePeers({ peers }), peers)
  assert.deepEqual(parsePeers([{ hostId: 'c', addr: 'h:3' }]), [{ hostId: 'c', region: '', addr: 'h:3' }])
  for (const bad of [null, {}, [{}], [{ hostId: '', addr: 'h:1' }], [{ hostId: 'x', addr: 'nope' }]]) {
    assert.throws(() => parsePeers(bad), (err: unknown) => isInvalidArgument(err), JSON.stringify(bad))
  }
  const source = new StaticPeerSource(peers)
  const seen: BackhaulPeer[][] = []
  const unsubscribe = source.subscribe((p) => seen.push(p))
  source.set([peers[0]!])
  unsubscribe()
  source.set([])
  assert.deepEqual(seen, [peers, [peers[0]]])

  const dir = await mkdtemp(join(tmpdir(), 'hangar-peers-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'peers.json')
  await writeFile(file, JSON.stringify({ peers }))
  const fileSource = new FilePeerSource(file)
  const fromFile: BackhaulPeer[][] = []
  const stop = fileSource.subscribe((p) => fromFile.push(p))
  t.after(stop)
  assert.deepEqual(fromFile[0], peers)
  await writeFile(file, JSON.stringify([peers[1]]))
  const deadline = Date.now() + 5000
  while (!fromFile.some((p) => p.length === 1 && p[0]!.hostId === 'b')) {
    if (Date.now() > deadline) throw new Error('the peers file change was not noticed')
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  await writeFile(join(dir, 'bad.json'), '{')
  assert.throws(() => new FilePeerSource(join(dir, 'bad.json')), (err: unknown) => isInvalidArgument(err) && /--peers-file/.test((err as Error).message))
})

test('backhaul protocol helpers', () => {
  assert.deepEqual(parseMachineAuthority('3d8d413b-0:8080'), { machineId: '3d8d413b-0', port: 8080 })
  for (const bad of ['', ':80', 'm:', 'm:0', 'm:70000', 'm/x:80', 'm']) assert.equal(parseMachineAuthority(bad), undefined, bad)
  assert.equal(machineServiceKey('m1', 8080), 'm1/tcp/8080')
  assert.equal(isAtCapacity(new BackhaulError(BACKHAUL_ERROR.atCapacity, 'full')), true)
  assert.equal(isAtCapacity(BACKHAUL_ERROR.atCapacity), true)
  assert.equal(isAtCapacity(new BackhaulError('ECONNREFUSED', 'refused')), false)
  assert.equal(isAtCapacity(undefined), false)
})
