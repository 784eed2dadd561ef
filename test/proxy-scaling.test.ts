import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import { performance } from 'node:perf_hooks'
import { Agent, request } from 'undici'
import { createLogger, silentLogger, type MachineService } from '../src/core/index.js'
import { startProxy, type RunningProxy } from '../src/proxy/index.js'
import { freePort, httpService, loopbackAddress, machineRoute, proxyHarness, waitFor, type ProxyHarness } from './kit/backends.js'

// Hard limits, queueing and 503s; autostart (one start for many requests, nearest first, never
// with autostart=false) and the autostop loop (one Machine per region per pass, down to
// min_machines_running, with the Machine's stop signal) — through real sockets, with backend
// processes the controller starts and stops.

describe('proxy: limits, queueing, autostart, autostop', () => {
  let harness: ProxyHarness
  let proxy: RunningProxy
  let agent: Agent
  const ports = { limited: 0, tcp: 0, lazy: 0, once: 0, never: 0, idle: 0, sleepy: 0, lazytcp: 0, ws: 0 }

  before(async () => {
    harness = await proxyHarness()
    for (const key of Object.keys(ports) as Array<keyof typeof ports>) ports[key] = await freePort()
    const limited = httpService(ports.limited, { concurrency: { type: 'requests', soft_limit: 1, hard_limit: 2 } })
    await harness.machine(machineRoute({ machineId: 'lim1', app: 'limited', address: loopbackAddress(), services: [limited] }))
    const tcp: MachineService = { internal_port: 8080, ports: [{ port: ports.tcp }], concurrency: { type: 'connections', soft_limit: 1, hard_limit: 1 } }
    await harness.machine(machineRoute({ machineId: 'tcp1', app: 'tcp', address: loopbackAddress(), services: [tcp] }), 'echo')

    // Scaled to zero: a near (same host) and a far Machine, both stopped.
    const lazy = httpService(ports.lazy, { autostart: true, autostop: 'stop' })
    harness.controller.define(machineRoute({ machineId: 'lazy-far', app: 'lazy', address: loopbackAddress(), services: [lazy], state: 'stopped', region: 'sin', hostId: 'host-far' }))
    harness.controller.define(machineRoute({ machineId: 'lazy-near', app: 'lazy', address: loopbackAddress(), services: [lazy], state: 'stopped' }))
    const once = httpService(ports.once, { autostart: true })
    for (const id of ['once-a', 'once-b', 'once-c']) harness.controller.define(machineRoute({ machineId: id, app: 'once', address: loopbackAddress(), services: [once], state: 'stopped' }))
    harness.controller.define(machineRoute({ machineId: 'never1', app: 'never', address: loopbackAddress(), services: [httpService(ports.never, { autostart: false })], state: 'stopped' }))

    // A raw TCP service scaled to zero: the first connection starts the Machine.
    harness.controller.define(machineRoute({ machineId: 'lazytcp1', app: 'lazytcp', address: loopbackAddress(), services: [{ internal_port: 8080, ports: [{ port: ports.lazytcp }], autostart: true }], state: 'stopped' }), 'echo')
    // WebSockets count as load until they close.
    await harness.machine(machineRoute({ machineId: 'ws1', app: 'ws', address: loopbackAddress(), services: [httpService(ports.ws, { concurrency: { type: 'requests', soft_limit: 1, hard_limit: 1 } })] }))

    // Idle: 3 running in ams (the primary region), 2 in sin; autostop on, one must stay in ams.
    const idle = httpService(ports.idle, { autostop: 'stop', min_machines_running: 1 })
    for (const [id, region] of [['idle-ams-1', 'ams'], ['idle-ams-2', 'ams'], ['idle-ams-3', 'ams'], ['idle-sin-1', 'sin'], ['idle-sin-2', 'sin']] as const) {
      await harness.machine(machineRoute({ machineId: id, app: 'idle', address: loopbackAddress(), services: [idle], region, stopConfig: { signal: 'SIGINT', timeout: '5s' } }))
    }
    const sleepy = httpService(ports.sleepy, { autostop: 'suspend', autostart: true })
    await harness.machine(machineRoute({ machineId: 'sleepy1', app: 'sleepy', address: loopbackAddress(), services: [sleepy] }))

    proxy = await startProxy({
      routeSource: harness.source, controller: harness.controller, region: 'ams', hostId: 'host-a', domain: 'apps.test', caDir: harness.caDir,
      listenHost: '127.0.0.1', logger: process.env.HANGAR_TEST_LOG ? createLogger('proxy') : silentLogger,
      queue: { maxWaitMs: 700, maxQueueLength: 100, startTimeoutMs: 10_000 },
      // The loop runs by itself; the autostop test only waits for its effects.
      autostopIntervalMs: 60_000,
      metrics: { host: '127.0.0.1', port: 0 },
    })
    agent = new Agent({ connections: 50 })
  })

  after(async () => {
    await agent?.close()
    await proxy?.close()
    await harness?.close()
  })

  async function get(port: number, path = '/') {
    const started = performance.now()
    const res = await request(`http://127.0.0.1:${port}${path}`, { headers: { host: 'x' }, dispatcher: agent })
    const text = await res.body.text()
    return { status: res.statusCode, text, ms: performance.now() - started, machine: res.statusCode === 200 ? (JSON.parse(text) as { machine: string }).machine : '' }
  }

  it('at hard_limit requests wait in the queue and go out as capacity frees; sustained overload gets 503, counted', async () => {
    // hard_limit 2: two slow requests fill the Machine; the third waits for the first to end.
    const first = get(ports.limited, '/slow?ms=300')
    const second = get(ports.limited, '/slow?ms=300')
    await waitFor(() => proxy.metrics.render().includes('hangar_proxy_machine_load{app="limited",machine="lim1",region="ams",service="lim1/tcp/8080"} 2'), 2000, 'two in flight')
    const third = await get(ports.limited, '/')
    assert.equal(third.status, 200)
    assert.ok(third.ms >= 200, `the third waited for capacity (${third.ms.toFixed(0)} ms)`)
    assert.equal((await first).status, 200)
    assert.equal((await second).status, 200)

    // Sustained: both slots busy for longer than the 700 ms maximum wait.
    const long = [get(ports.limited, '/slow?ms=1500'), get(ports.limited, '/slow?ms=1500')]
    await waitFor(() => proxy.metrics.render().includes('machine="lim1",region="ams",service="lim1/tcp/8080"} 2'), 2000, 'two in flight')
    const refused = await get(ports.limited, '/')
    assert.equal(refused.status, 503)
    assert.match(refused.text, /no Machine of app limited had capacity within 700 ms/)
    assert.ok((await Promise.all(long)).every((r) => r.status === 200))
    assert.equal(proxy.metrics.refusals('limited', 'queue_timeout'), 1)
  })

  it('TCP connections over hard_limit wait, get through when one closes, and are closed after the maximum wait', async () => {
    const connect = () => new Promise<net.Socket>((resolve) => { const s = net.connect(ports.tcp, '127.0.0.1', () => resolve(s)); s.on('error', () => {}) })
    const echo = (socket: net.Socket, text: string) => new Promise<string>((resolve) => { socket.once('data', (d: Buffer) => resolve(d.toString())); socket.write(text) })
    const holder = await connect()
    assert.equal(await echo(holder, 'one'), 'one')
    const waiting = await connect()
    const answered = echo(waiting, 'two')
    setTimeout(() => holder.destroy(), 200)
    assert.equal(await answered, 'two', 'the waiting connection got the freed slot')
    const refused = await connect()
    await new Promise((resolve) => refused.once('close', resolve))
    assert.equal(proxy.metrics.refusals('tcp', 'queue_timeout'), 1)
    waiting.destroy()
  })

  it('autostart: the first request to an app scaled to zero starts the nearest Machine and is served; warm requests are faster', async (t) => {
    const cold = await get(ports.lazy)
    assert.equal(cold.status, 200)
    assert.equal(cold.machine, 'lazy-near')
    assert.deepEqual(harness.controller.calls.filter((c) => c.op === 'start').map((c) => c.machineId), ['lazy-near'])
    const warm = await get(ports.lazy)
    assert.equal(warm.machine, 'lazy-near')
    // Reported by the test run: the extra latency of a cold start over a warm request.
    t.diagnostic(`autostart: cold request ${cold.ms.toFixed(1)} ms (process start included), warm request ${warm.ms.toFixed(1)} ms`)
    assert.ok(cold.ms > warm.ms)
  })

  it('autostart: concurrent requests start one Machine, not many; autostart=false never starts', async () => {
    harness.controller.startDelayMs = 300
    try {
      const results = await Promise.all(Array.from({ length: 8 }, () => get(ports.once)))
      assert.ok(results.every((r) => r.status === 200), JSON.stringify(results.map((r) => r.status)))
      const starts = harness.controller.calls.filter((c) => c.op === 'start' && c.machineId.startsWith('once-'))
      assert.equal(starts.length, 1, `one start for 8 concurrent requests, got ${starts.map((s) => s.machineId)}`)
      assert.ok(results.every((r) => r.machine === starts[0]!.machineId))
    } finally {
      harness.controller.startDelayMs = 0
    }
    const never = await get(ports.never)
    assert.equal(never.status, 503)
    assert.equal(harness.controller.calls.some((c) => c.machineId === 'never1'), false)
  })

  it('autostart for raw TCP: the first connection starts the Machine and its bytes get through', async () => {
    const socket = net.connect(ports.lazytcp, '127.0.0.1')
    socket.on('error', () => {})
    try {
      const reply = await new Promise<string>((resolve) => {
        socket.once('data', (d: Buffer) => resolve(d.toString()))
        socket.write('wake up')
      })
      assert.equal(reply, 'wake up')
      assert.ok(harness.controller.calls.some((c) => c.op === 'start' && c.machineId === 'lazytcp1'))
    } finally { socket.destroy() }
  })

  it('a WebSocket holds its Machine\'s capacity until it closes', async () => {
    const { default: WebSocket } = await import('ws')
    const ws = new WebSocket(`ws://127.0.0.1:${ports.ws}/ws`)
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
    try {
      // hard_limit 1: the open WebSocket is the one unit; a request now waits, then 503s.
      const refused = await get(ports.ws)
      assert.equal(refused.status, 503)
    } finally { ws.close() }
    await waitFor(async () => (await get(ports.ws)).status === 200, 3000, 'capacity back after the WebSocket closed')
  })

  it('autostop: one Machine per region per pass, down to min_machines_running in the primary region, with the stop signal and timeout', async () => {
    const idleCalls = () => harness.controller.calls.filter((c) => c.machineId.startsWith('idle-'))
    await proxy.autostopPass()
    assert.equal(idleCalls().length, 2)
    assert.deepEqual(idleCalls().map((c) => c.machineId.slice(0, 8)).sort(), ['idle-ams', 'idle-sin'], 'one per region')
    assert.ok(idleCalls().every((c) => c.op === 'stop' && c.signal === 'SIGINT' && c.timeoutMs === 5000))
    await proxy.autostopPass()
    assert.equal(idleCalls().length, 4, "second pass: another in ams, and sin's last (zero load)")
    await proxy.autostopPass()
    assert.equal(idleCalls().length, 4, 'ams keeps min_machines_running = 1')
    const running = [...harness.source.machines.values()].filter((m) => m.app === 'idle' && m.state === 'started').map((m) => m.region)
    assert.deepEqual(running, ['ams'])
    // The one left still serves.
    assert.equal((await get(ports.idle)).status, 200)
  })

  it('gives back every unit of load it took: all Machines at 0 once clients are done', async () => {
    await waitFor(() => {
      const loads = [...proxy.metrics.machineLoads()]
      return loads.length > 0 && loads.every((m) => m.load === 0)
    }, 3000, `every Machine at load 0, got ${JSON.stringify([...proxy.metrics.machineLoads()].filter((m) => m.load !== 0))}`)
  })

  it('autostop=suspend suspends, and the next request resumes the Machine', async () => {
    await proxy.autostopPass()
    assert.equal(harness.source.machines.get('sleepy1')!.state, 'suspended')
    assert.ok(harness.controller.calls.some((c) => c.op === 'suspend' && c.machineId === 'sleepy1'))
    const resumed = await get(ports.sleepy)
    assert.equal(resumed.machine, 'sleepy1')
    assert.ok(harness.controller.calls.some((c) => c.op === 'start' && c.machineId === 'sleepy1'))
    const text = await (await request(`http://127.0.0.1:${proxy.metricsAddress!.port}/metrics`)).body.text()
    assert.match(text, /hangar_proxy_autostarts_total\{app="sleepy"\} 1/)
    assert.match(text, /hangar_proxy_autostops_total\{app="idle"\} 4/)
  })
})
