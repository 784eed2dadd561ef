import { test } from 'node:test'
import assert from 'node:assert/strict'
import { silentLogger, type MachineController, type MachineRoute } from '../core/index.js'
import { AutostopLoop } from './autostop-loop.js'
import { ProxyMetrics } from './metrics.js'
import { RoutingTable } from './routing-table.js'

// The loop runs by itself at its interval, acts only on this host's Machines, passes the stop
// config, and takes a Machine out of rotation as soon as it asks for the stop.

function route(machineId: string, hostId: string, fields: Partial<MachineRoute> = {}): MachineRoute {
  return {
    machineId, app: 'web', org: 'o', region: 'ams', hostId, state: 'started', instanceId: 'i', address: '10.0.0.1',
    services: [{ internal_port: 8080, ports: [{ port: 80 }], autostop: 'stop' }], checks: [], cordoned: false, processGroup: 'app',
    stopConfig: { signal: 'SIGUSR1', timeout: '2s' }, primaryRegion: 'ams', updatedAt: 1, ...fields,
  }
}

test('the loop runs every interval and stops this host’s Machines only, with stop_config', async () => {
  const stops: Array<{ machineId: string; signal?: string | undefined; timeoutMs?: number | undefined }> = []
  const controller: MachineController = {
    start: async () => {},
    stop: async (_app, machineId, options) => { stops.push({ machineId, ...options }) },
    suspend: async () => {},
  }
  const table = new RoutingTable({ domain: 'd', rttMs: () => 0, logger: silentLogger })
  // Two Machines in ams; deterministic choice: the remote one sorts first by id, so this host acts on nothing
  // until the remote one is gone.
  table.apply({ kind: 'snapshot', machines: [route('a-remote', 'host-b'), route('b-local', 'host-a')], apps: [] })
  const loop = new AutostopLoop({ table, controller, metrics: new ProxyMetrics(), logger: silentLogger, hostId: 'host-a', intervalMs: 30 })
  try {
    await new Promise((resolve) => setTimeout(resolve, 120))
    assert.deepEqual(stops, [], 'the decision picked the other host’s Machine; only its own proxy stops it')
    table.apply({ kind: 'upsert', machine: route('a-remote', 'host-b', { state: 'stopped', updatedAt: 2 }) })
    const deadline = Date.now() + 2000
    while (stops.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10))
    assert.deepEqual(stops, [{ machineId: 'b-local', signal: 'SIGUSR1', timeoutMs: 2000 }])
    const group = table.apps.get('web')!.groups.get('web/tcp/8080')!
    assert.deepEqual(group.routable.map((m) => m.machineId), [], 'no new traffic to a Machine being stopped')
  } finally {
    await loop.close()
  }
})
