import { test } from 'node:test'
import assert from 'node:assert/strict'
import { silentLogger, type MachineController, type MachineRoute } from '../core/index.js'
import { Dispatcher, RefusedError, type QueueLimits } from './dispatcher.js'
import { ProxyMetrics } from './metrics.js'
import { RoutingTable, type MachineEntry } from './routing-table.js'

// The dispatcher over a real routing table, without sockets: the seed's queueing and 503s,
// refusals counted, and one autostart for many concurrent requests. (The controller here is a
// recording stub: the end-to-end tests in test/ start real processes.)

const hostRtt: Record<string, number> = { 'ams-a': 0, 'ams-b': 0, maa: 120, sea: 150, sin: 170 }

function route(machineId: string, region: string, hostId: string, fields: Partial<MachineRoute> = {}): MachineRoute {
  return {
    machineId, app: 'web', org: 'o', region, hostId, state: 'started', instanceId: 'i', address: '10.0.0.1',
    services: [{ internal_port: 8080, ports: [{ port: 80, handlers: ['http'] }], concurrency: { type: 'requests', soft_limit: 20, hard_limit: 25 }, autostart: true }],
    checks: [], cordoned: false, processGroup: 'app', stopConfig: {}, primaryRegion: 'ams', updatedAt: 1, ...fields,
  }
}

function setup(machines: MachineRoute[], limits: Partial<QueueLimits> = {}, controller?: MachineController) {
  const metrics = new ProxyMetrics()
  const table = new RoutingTable({ domain: 'example', rttMs: (h) => hostRtt[h] ?? 100, logger: silentLogger })
  table.apply({ kind: 'snapshot', machines, apps: [] })
  const dispatcher = new Dispatcher({ table, controller, metrics, logger: silentLogger, limits: { maxQueueLength: 100, maxWaitMs: 200, startTimeoutMs: 2000, ...limits } })
  const group = table.apps.get('web')!.groups.get('web/tcp/8080')!
  return { metrics, table, dispatcher, group }
}

function seedMachines(): MachineRoute[] {
  return [
    route('ams1', 'ams', 'ams-a'), route('ams2', 'ams', 'ams-a'), route('ams3', 'ams', 'ams-b'),
    route('maa1', 'maa', 'maa'), route('maa2', 'maa', 'maa'), route('sea1', 'sea', 'sea'), route('sea2', 'sea', 'sea'),
    route('sin1', 'sin', 'sin'), route('sin2', 'sin', 'sin'), route('sin3', 'sin', 'sin'),
  ]
}

test('seed walkthrough through the dispatcher: 250 served at once, the 251st waits and gets the first freed slot; sustained overload → refused and counted', async () => {
  const { dispatcher, group, metrics } = setup(seedMachines())
  const held: MachineEntry[] = []
  for (let i = 0; i < 250; i++) {
    const result = dispatcher.acquire(group)
    assert.ok(!(result instanceof Promise), `request ${i + 1} is served at once`)
    held.push(result)
  }
  assert.ok(group.machines.every((m) => m.load === 25))
  const waiting = dispatcher.acquire(group)
  assert.ok(waiting instanceof Promise, 'the 251st waits')
  assert.equal(dispatcher.queueDepth(group), 1)
  const freed = held.find((m) => m.machineId === 'sea2')!
  dispatcher.release(freed, group)
  assert.equal(await waiting, freed, 'the waiter gets the freed capacity')
  assert.equal(dispatcher.queueDepth(group), 0)

  const sustained = dispatcher.acquire(group)
  await assert.rejects(sustained as Promise<MachineEntry>, (err: unknown) => err instanceof RefusedError && err.reason === 'queue_timeout')
  assert.match(metrics.render(), /hangar_proxy_queue_depth\{service="web\/tcp\/8080"\} 0/)
})

test('the queue is bounded: past maxQueueLength arrivals are refused at once', async () => {
  const { dispatcher, group, metrics } = setup([route('a', 'ams', 'ams-a', { services: [{ internal_port: 8080, ports: [{ port: 80 }], concurrency: { soft_limit: 1, hard_limit: 1 } }] })], { maxQueueLength: 2, maxWaitMs: 50 })
  assert.ok(!(dispatcher.acquire(group) instanceof Promise))
  const w1 = dispatcher.acquire(group) as Promise<MachineEntry>
  const w2 = dispatcher.acquire(group) as Promise<MachineEntry>
  await assert.rejects(dispatcher.acquire(group) as Promise<MachineEntry>, (err: unknown) => err instanceof RefusedError && err.reason === 'queue_full')
  await assert.rejects(w1)
  await assert.rejects(w2)
  assert.equal(metrics.refusals('web'), 0, 'the dispatcher refuses; its callers count (they know the protocol)')
})

test('only started, check-passing, non-cordoned Machines are routable', () => {
  const passing = [{ name: 'c', status: 'passing' as const, output: '', updated_at: '' }]
  const critical = [{ name: 'c', status: 'critical' as const, output: '', updated_at: '' }]
  const { group } = setup([
    route('ok', 'ams', 'ams-a', { checks: passing }), route('failing', 'ams', 'ams-a', { checks: critical }),
    route('cordoned', 'ams', 'ams-a', { cordoned: true }), route('stopped', 'ams', 'ams-a', { state: 'stopped' }), route('starting', 'ams', 'ams-a', { state: 'starting' }),
  ])
  assert.deepEqual(group.routable.map((m) => m.machineId), ['ok'])
})

test('no Machine at all and none to start: refused at once with no_machines', async () => {
  const { dispatcher, group } = setup([route('s', 'ams', 'ams-a', { state: 'stopped', services: [{ internal_port: 8080, ports: [{ port: 80 }], autostart: false }] })])
  await assert.rejects(dispatcher.acquire(group) as Promise<MachineEntry>, (err: unknown) => err instanceof RefusedError && err.reason === 'no_machines')
})

test('autostart: many concurrent requests start one Machine, the nearest; all are served by it', async () => {
  const starts: string[] = []
  let table: RoutingTable | undefined
  let finishStart: () => void = () => {}
  const controller: MachineController = {
    start: async (_app, machineId) => { starts.push(machineId); await new Promise<void>((resolve) => { finishStart = resolve }) },
    stop: async () => {}, suspend: async () => {},
  }
  const setupResult = setup([route('far', 'sin', 'sin', { state: 'stopped' }), route('near', 'ams', 'ams-a', { state: 'suspended' })], {}, controller)
  table = setupResult.table
  const { dispatcher, group, metrics } = setupResult
  const waiters = Array.from({ length: 10 }, () => dispatcher.acquire(group))
  assert.ok(waiters.every((w) => w instanceof Promise))
  assert.deepEqual(starts, ['near'])
  finishStart()
  const served = await Promise.all(waiters)
  assert.ok(served.every((m) => m.machineId === 'near'))
  assert.equal(metrics.app('web').autostarts, 1)
  assert.ok(table)
})

test('autostart=false never starts; running Machines over soft start another when autostart is on', async () => {
  const starts: string[] = []
  const controller: MachineController = { start: async (_a, id) => { starts.push(id) }, stop: async () => {}, suspend: async () => {} }
  const services = (autostart: boolean) => [{ internal_port: 8080, ports: [{ port: 80 }], concurrency: { type: 'requests' as const, soft_limit: 1, hard_limit: 5 }, autostart }]
  const off = setup([route('run', 'ams', 'ams-a', { services: services(false) }), route('idle', 'ams', 'ams-a', { state: 'stopped', services: services(false) })], {}, controller)
  off.dispatcher.acquire(off.group)
  const second = off.dispatcher.acquire(off.group)
  assert.ok(!(second instanceof Promise), 'served by the running Machine between soft and hard')
  assert.deepEqual(starts, [])
  const on = setup([route('run', 'ams', 'ams-a', { services: services(true) }), route('idle', 'ams', 'ams-a', { state: 'stopped', services: services(true) })], {}, controller)
  on.dispatcher.acquire(on.group)
  const held = on.dispatcher.acquire(on.group)
  assert.ok(held instanceof Promise, 'held until the started Machine is up')
  assert.equal((await held).machineId, 'idle')
  assert.deepEqual(starts, ['idle'])
})

