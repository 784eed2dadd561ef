import { test } from 'node:test'
import assert from 'node:assert/strict'
import { isInternalName, parseInternalName, MAX_NEAREST } from './dns-names.js'

const parse = (name: string) => parseInternalName(name.split('.'))

test('every name of reference §3.3 has its meaning', () => {
  assert.deepEqual(parse('internal'), { kind: 'apex' })
  assert.deepEqual(parse('_apps.internal'), { kind: 'apps' })
  assert.deepEqual(parse('_instances.internal'), { kind: 'instances', all: false })
  assert.deepEqual(parse('all._instances.internal'), { kind: 'instances', all: true })
  assert.deepEqual(parse('_peer.internal'), { kind: 'peers' })
  assert.deepEqual(parse('laptop._peer.internal'), { kind: 'peer', peer: 'laptop' })
  assert.deepEqual(parse('web.internal'), { kind: 'app', app: 'web' })
  assert.deepEqual(parse('global.web.internal'), { kind: 'app', app: 'web' })
  assert.deepEqual(parse('vms.web.internal'), { kind: 'vms', app: 'web', all: false })
  assert.deepEqual(parse('all.vms.web.internal'), { kind: 'vms', app: 'web', all: true })
  assert.deepEqual(parse('regions.web.internal'), { kind: 'regions', app: 'web', all: false })
  assert.deepEqual(parse('all.regions.web.internal'), { kind: 'regions', app: 'web', all: true })
  assert.deepEqual(parse('ams.web.internal'), { kind: 'region', app: 'web', region: 'ams' })
  assert.deepEqual(parse('top3.nearest.of.web.internal'), { kind: 'nearest', app: 'web', count: 3 })
  assert.deepEqual(parse('148ed193b95789.vm.web.internal'), { kind: 'vm', app: 'web', machineId: '148ed193b95789' })
  assert.deepEqual(parse('worker.process.web.internal'), { kind: 'process', app: 'web', group: 'worker' })
  assert.deepEqual(parse('blue.color.kv._metadata.web.internal'), { kind: 'metadata', app: 'web', key: 'color', value: 'blue' })
})

test('names outside the grammar have no meaning (NXDOMAIN)', () => {
  for (const name of [
    'web.com', 'internal.web', '_other.internal', 'x._apps.internal', 'a.b.vms.web.internal', 'x.y.web.internal', 'top0.nearest.of.web.internal',
    `top${MAX_NEAREST + 1}.nearest.of.web.internal`, 'topx.nearest.of.web.internal', 'top3.closest.of.web.internal', 'a.b.c.d.web.internal',
    'blue.color.kv._other.web.internal', 'a.b.c.d.e.f.web.internal', 'ams._secret.internal', '.internal', 'a..internal',
  ]) {
    assert.equal(parse(name), undefined, name)
  }
})

test('only names ending in the internal label are ours', () => {
  assert.equal(isInternalName(['web', 'internal']), true)
  assert.equal(isInternalName(['internal']), true)
  assert.equal(isInternalName(['example', 'com']), false)
  assert.equal(isInternalName([]), false)
  assert.equal(isInternalName(['internal', 'example']), false)
})
