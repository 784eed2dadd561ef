import { test } from 'node:test'
import assert from 'node:assert/strict'
import { silentLogger, type MachineRoute } from '../core/index.js'
import { RoutingTable } from './routing-table.js'

function route(machineId: string, app: string, fields: Partial<MachineRoute> = {}): MachineRoute {
  return {
    machineId, app, org: 'o', region: 'ams', hostId: 'h1', state: 'started', instanceId: 'i', address: '10.0.0.1',
    services: [{ internal_port: 8080, ports: [{ port: 80, handlers: ['http'] }, { start_port: 9000, end_port: 9002 }], concurrency: { soft_limit: 3, hard_limit: 5 } }],
    checks: [], cordoned: false, processGroup: 'app', stopConfig: {}, primaryRegion: 'ams', updatedAt: 1, ...fields,
  }
}

test('the table indexes ports (ranges expanded), hostnames and groups, and follows upserts and removals', () => {
  let changes = 0
  const table = new RoutingTable({ domain: 'apps.example', rttMs: (h) => (h === 'h1' ? 0 : 50), logger: silentLogger, onChange: () => changes++ })
  table.apply({ kind: 'snapshot', machines: [route('a1', 'a'), route('a2', 'a', { hostId: 'h2' }), route('b1', 'b')], apps: [{ app: 'b', org: 'o', hostnames: ['Shop.Example.com'] }] })
  assert.deepEqual([...table.ports.keys()].sort((x, y) => x - y), [80, 9000, 9001, 9002])
  assert.deepEqual(table.ports.get(80)!.map((b) => b.app), ['a', 'b'])
  assert.equal(table.appForHost('A.APPS.EXAMPLE'), 'a')
  assert.equal(table.appForHost('shop.example.com'), 'b')
  const group = table.apps.get('a')!.groups.get('a/tcp/8080')!
  assert.deepEqual(group.machines.map((m) => [m.machineId, m.rttMs, m.softLimit, m.hardLimit]), [['a1', 0, 3, 5], ['a2', 50, 3, 5]])

  // Load survives an update of the same Machine; routability follows its state.
  group.machines[0]!.load = 2
  table.apply({ kind: 'upsert', machine: route('a1', 'a', { state: 'stopped', updatedAt: 2 }) })
  const same = table.apps.get('a')!.groups.get('a/tcp/8080')!
  assert.equal(same, group, 'the group object is kept, so queued waiters stay attached')
  assert.equal(same.machines.find((m) => m.machineId === 'a1')!.load, 2)
  assert.deepEqual(same.routable.map((m) => m.machineId), ['a2'])

  // Removing every Machine of an app drops its ports, hostnames and entries.
  table.apply({ kind: 'remove', machineId: 'b1' })
  assert.deepEqual(table.ports.get(80)!.map((b) => b.app), ['a'])
  assert.equal(table.appForHost('b.apps.example'), 'b', 'the app route keeps its names; it just has no ports now')
  assert.deepEqual([...table.machineEntries()].map((e) => e.machineId).sort(), ['a1', 'a2'])
  assert.ok(changes >= 3)
})

test('a Machine with an invalid services config is ignored, not fatal', () => {
  const table = new RoutingTable({ domain: 'd', rttMs: () => 0, logger: silentLogger })
  table.apply({ kind: 'snapshot', machines: [route('ok', 'a'), route('bad', 'a', { services: [{ internal_port: 99999 }] })], apps: [] })
  assert.deepEqual(table.apps.get('a')!.groups.get('a/tcp/8080')!.machines.map((m) => m.machineId), ['ok'])
})
