import { test } from 'node:test'
import assert from 'node:assert/strict'
import type { Machine, MachineConfig } from '../core/index.js'
import { batches, configForMachine, expectedCheckCount, healthOf, machinesByGroup, machinesToRemove } from './plan.js'

function machine(id: string, fields: Partial<Machine> & { group?: string } = {}): Machine {
  const { group, ...rest } = fields
  return {
    id, name: id, state: 'started', region: 'ams', instance_id: `${id}-v1`, private_ip: '', image_ref: { registry: '', repository: '', tag: '', digest: '', labels: {} },
    config: { image: 'x', metadata: group ? { fly_process_group: group } : {} }, created_at: `2026-01-01T00:00:0${id.slice(-1)}Z`, updated_at: '', events: [], host_status: 'ok', ...rest,
  }
}

test('machinesByGroup: live Machines by fly_process_group, oldest first; release-command Machines and destroyed ones left out', () => {
  const groups = machinesByGroup([
    machine('m3', { group: 'web' }), machine('m1', { group: 'web' }), machine('m2'), machine('m4', { group: 'fly_app_release_command' }),
    machine('m5', { group: 'web', state: 'destroyed' }), machine('m6', { group: 'worker', state: 'stopped' }),
  ])
  assert.deepEqual([...groups].map(([g, ms]) => [g, ms.map((m) => m.id)]), [['web', ['m1', 'm3']], ['app', ['m2']], ['worker', ['m6']]])
  const deployed = machine('m7', { config: { image: 'x', metadata: { fly_process_group: 'web', fly_platform_version: 'v2' } } })
  assert.deepEqual([...machinesByGroup([machine('m1', { group: 'web' }), deployed], { managedOnly: true })].map(([g, ms]) => [g, ms.map((m) => m.id)]), [['web', ['m7']]], 'Machines made by hand are not a deploy’s to replace')
})

test('configForMachine keeps the size, mounts and user metadata of the Machine unless fly.toml says otherwise', () => {
  const target: MachineConfig = { image: 'new', metadata: { fly_release_version: '2' } }
  const existing = machine('m1', { config: { image: 'old', guest: { cpus: 2, memory_mb: 1024, cpu_kind: 'shared' }, mounts: [{ volume: 'vol_1', path: '/data' }], metadata: { owner: 'ops', fly_release_version: '1' } } })
  assert.deepEqual(configForMachine(target, existing), { image: 'new', guest: { cpus: 2, memory_mb: 1024, cpu_kind: 'shared' }, mounts: [{ volume: 'vol_1', path: '/data' }], metadata: { owner: 'ops', fly_release_version: '2' } })
  assert.deepEqual(configForMachine({ ...target, guest: { cpus: 1, memory_mb: 256, cpu_kind: 'shared' } }, existing).guest, { cpus: 1, memory_mb: 256, cpu_kind: 'shared' })
  assert.deepEqual(configForMachine(target).guest, { cpu_kind: 'shared', cpus: 1, memory_mb: 256 })
  assert.deepEqual(target, { image: 'new', metadata: { fly_release_version: '2' } }, 'the target is not changed')
})

test('batches and check counts', () => {
  assert.deepEqual(batches([1, 2, 3, 4, 5], 2), [[1, 2], [3, 4], [5]])
  assert.deepEqual(batches([], 3), [])
  assert.throws(() => batches([1], 0), /at least 1/)
  assert.equal(expectedCheckCount({ image: 'x', checks: { a: {}, b: {} }, services: [{ checks: [{}, {}] }, {}] }), 4)
})

test('healthOf: the version asked for, started, every check passing; failed states fail at once with the exit', () => {
  const ok = machine('m1', { checks: [{ name: 'http', status: 'passing', output: '', updated_at: '' }] })
  assert.deepEqual(healthOf(ok, { expectedChecks: 1 }), { kind: 'healthy' })
  assert.equal(healthOf(ok, { expectedChecks: 1, version: 'other' }).kind, 'waiting')
  assert.match((healthOf(ok, { expectedChecks: 2 }) as { reason: string }).reason, /waiting for 2 health check/)
  assert.match((healthOf(machine('m1', { state: 'starting' }), { expectedChecks: 0 }) as { reason: string }).reason, /is starting/)
  const critical = machine('m1', { checks: [{ name: 'http', status: 'critical', output: '[500]', updated_at: '' }, { name: 'tcp', status: 'passing', output: '', updated_at: '' }] })
  assert.deepEqual(healthOf(critical, { expectedChecks: 2 }), { kind: 'waiting', reason: '1 of 2 health checks passing: http critical ([500])' })
  const failed = machine('m1', { state: 'failed', events: [{ id: 'e', type: 'launch', status: 'failed', source: 'flyd', timestamp: 0, request: { error: 'the image has no entrypoint' } }] })
  assert.deepEqual(healthOf(failed, { expectedChecks: 0 }), { kind: 'failed', reason: 'Machine m1 is failed: the image has no entrypoint' })
})

test('machinesToRemove: not-running Machines first, then the newest', () => {
  const ms = [machine('m1'), machine('m2', { state: 'stopped' }), machine('m3'), machine('m4')]
  assert.deepEqual(machinesToRemove(ms, 2).map((m) => m.id), ['m2', 'm4'])
  assert.deepEqual(machinesToRemove(ms, 0), [])
})
