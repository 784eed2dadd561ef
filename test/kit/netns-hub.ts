import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, openSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { startNatsServer, type NatsServer } from '../../src/bus/index.js'
import { WanRelay, oneWayDelayMs, validateDelays, type WanEmulator, type WanHost, type WanOptions, type WanPairStats } from './wan-emulator.js'

// The hub of the multi-host kit: one helper process inside the hub network namespace that runs
// what sits "between" hosts — the WAN relay (its own event loop, so the test's work never adds
// jitter to the emulated delays) and the NATS cluster's nodes (started with the bus's
// startNatsServer, which can only start servers in its caller's namespace). The test process
// drives it over Node's IPC channel; when that channel closes (the test process died) the helper
// stops its NATS nodes and exits.

const HUB_MAIN = fileURLToPath(import.meta.url)
const CHILD_FLAG = '--hangar-netns-hub'

type Request = { id: number; method: string; params: Record<string, unknown> }
type Reply = { id: number; result?: unknown; error?: string }

export interface NatsNodeInfo { name: string; url: string; clusterUrl: string; pid: number }

export interface Hub {
  readonly pid: number
  readonly wan: WanEmulator
  /** Starts a NATS cluster of `nodes` servers on `address` (ports 4222+i, routes 6222+i). */
  startNats(options: { nodes: number; dataDir: string; clusterName: string }): Promise<NatsNodeInfo[]>
  /** Stops one NATS node (tests of NATS failover) and starts it again. */
  stopNatsNode(name: string): Promise<void>
  startNatsNode(name: string): Promise<NatsNodeInfo>
  close(): Promise<void>
}

export async function startHub(options: { netns: string; address: string; wan?: WanOptions; logFile: string }): Promise<Hub> {
  validateDelays(options.wan ?? {})
  const log = openSync(options.logFile, 'a')
  // setpriv --pdeathsig: the helper dies with the test process even if the IPC close is missed.
  const child: ChildProcess = spawn('setpriv', ['--pdeathsig', 'SIGTERM', '--', 'nsenter', `--net=/var/run/netns/${options.netns}`, '--',
    process.execPath, '--enable-source-maps', HUB_MAIN, CHILD_FLAG, JSON.stringify({ address: options.address, wan: options.wan ?? {} })], {
    stdio: ['ignore', log, log, 'ipc'],
  })
  closeSync(log)
  let nextId = 1
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>()
  const exited = new Promise<void>((resolve) => child.once('exit', () => {
    for (const waiter of pending.values()) waiter.reject(new Error(`the hub helper exited (see ${options.logFile})`))
    pending.clear()
    resolve()
  }))
  child.on('message', (message: Reply) => {
    const waiter = pending.get(message.id)
    if (!waiter) return
    pending.delete(message.id)
    if (message.error !== undefined) waiter.reject(new Error(message.error))
    else waiter.resolve(message.result)
  })
  const call = <T>(method: string, params: Record<string, unknown> = {}): Promise<T> => new Promise<T>((resolve, reject) => {
    if (!child.connected) { reject(new Error(`the hub helper is not running (see ${options.logFile})`)); return }
    const id = nextId++
    pending.set(id, { resolve: resolve as (v: unknown) => void, reject })
    child.send({ id, method, params } satisfies Request)
  })
  const endpoints = new Map<string, string>()
  const delays = { ...(options.wan ?? {}), delays: { ...(options.wan?.delays ?? {}) } }
  const wan: WanEmulator = {
    async addHosts(hosts) {
      const pairs = await call<Array<[string, string, string]>>('wan.addHosts', { hosts })
      for (const [a, b, endpoint] of pairs) { endpoints.set(`${a} ${b}`, endpoint); endpoints.set(`${b} ${a}`, endpoint) }
    },
    endpointFor(from, to) {
      const endpoint = endpoints.get(`${from} ${to}`)
      if (!endpoint) throw new Error(`no relay between ${from} and ${to} (add both hosts first)`)
      return endpoint
    },
    partition: (hostId) => call('wan.partition', { hostId }),
    heal: (hostId) => call('wan.heal', { hostId }),
    async setDelay(regionA, regionB, ms, opts = {}) {
      await call('wan.setDelay', { regionA, regionB, ms, oneWay: opts.oneWay ?? false })
      if (opts.oneWay && delays.delays[`${regionB}:${regionA}`] === undefined) delays.delays[`${regionB}:${regionA}`] = oneWayDelayMs(delays, regionB, regionA)
      delays.delays[`${regionA}:${regionB}`] = ms
      if (!opts.oneWay) delays.delays[`${regionB}:${regionA}`] = ms
    },
    delayMs: (from, to) => oneWayDelayMs(delays, from, to),
    stats: () => call<WanPairStats[]>('wan.stats'),
    close: async () => { await call('wan.close').catch(() => undefined) },
  }
  try {
    await call('ping')
  } catch (err) {
    child.kill('SIGKILL')
    throw err
  }
  let closing: Promise<void> | undefined
  return {
    pid: child.pid!,
    wan,
    startNats: (opts) => call<NatsNodeInfo[]>('nats.start', opts),
    stopNatsNode: (name) => call('nats.stopNode', { name }),
    startNatsNode: (name) => call<NatsNodeInfo>('nats.startNode', { name }),
    close() {
      closing ??= (async () => {
        await call('close').catch(() => undefined)
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
        if (child.exitCode === null && child.signalCode === null) await exited
        clearTimeout(timer)
      })()
      return closing
    },
  }
}

// ── the helper process ───────────────────────────────────────────────────────────────────────

async function hubMain(config: { address: string; wan: WanOptions }): Promise<void> {
  const relay = new WanRelay(config.address, config.wan)
  const nats = new Map<string, { server?: NatsServer; options: Parameters<typeof startNatsServer>[0] }>()
  const natsInfo = (name: string): NatsNodeInfo => {
    const entry = nats.get(name)!
    return { name, url: `nats://${config.address}:${entry.options.port}`, clusterUrl: `nats://${config.address}:${entry.options.cluster!.port}`, pid: entry.server?.process.pid ?? 0 }
  }
  const stopAll = async () => {
    await relay.close()
    await Promise.all([...nats.values()].map((n) => n.server?.stop()))
  }
  const methods: Record<string, (params: Record<string, unknown>) => Promise<unknown>> = {
    ping: async () => 'pong',
    'wan.addHosts': async (params) => {
      const hosts = params.hosts as WanHost[]
      await relay.addHosts(hosts)
      return (await relay.stats()).map((s) => [s.hosts[0], s.hosts[1], s.endpoint])
    },
    'wan.partition': (params) => relay.partition(params.hostId as string),
    'wan.heal': (params) => relay.heal(params.hostId as string),
    'wan.setDelay': (params) => relay.setDelay(params.regionA as string, params.regionB as string, params.ms as number, { oneWay: params.oneWay as boolean }),
    'wan.stats': () => relay.stats(),
    'wan.close': () => relay.close(),
    'nats.start': async (params) => {
      const count = params.nodes as number
      const names = Array.from({ length: count }, (_, i) => `nats${i}`)
      for (const [i, name] of names.entries()) {
        nats.set(name, {
          options: {
            dataDir: join(params.dataDir as string, name), host: config.address, port: 4222 + i, serverName: name,
            logFile: join(params.dataDir as string, `${name}.log`),
            cluster: { name: params.clusterName as string, port: 6222 + i, routes: names.flatMap((_, j) => (j === i ? [] : [`nats://${config.address}:${6222 + j}`])) },
          },
        })
      }
      await Promise.all(names.map(async (name) => { const entry = nats.get(name)!; entry.server = await startNatsServer(entry.options) }))
      return names.map(natsInfo)
    },
    'nats.stopNode': async (params) => {
      const entry = nats.get(params.name as string)
      if (!entry) throw new Error(`no NATS node ${params.name}`)
      await entry.server?.stop()
      entry.server = undefined
    },
    'nats.startNode': async (params) => {
      const entry = nats.get(params.name as string)
      if (!entry) throw new Error(`no NATS node ${params.name}`)
      if (!entry.server || entry.server.process.exitCode !== null) entry.server = await startNatsServer(entry.options)
      return natsInfo(params.name as string)
    },
    close: async () => { await stopAll(); setImmediate(() => process.exit(0)) },
  }
  process.on('message', (request: Request) => {
    const method = methods[request.method]
    const reply = (message: Reply) => { if (process.connected) process.send!(message) }
    if (!method) { reply({ id: request.id, error: `unknown hub method ${request.method}` }); return }
    method(request.params).then(
      (result) => reply({ id: request.id, result: result ?? null }),
      (err: unknown) => reply({ id: request.id, error: err instanceof Error ? err.message : String(err) }),
    )
  })
  const shutdown = () => { void stopAll().finally(() => process.exit(0)) }
  process.once('disconnect', shutdown)
  process.once('SIGTERM', shutdown)
  process.once('SIGINT', shutdown)
}

if (process.argv[2] === CHILD_FLAG && process.send) {
  void hubMain(JSON.parse(process.argv[3]!) as { address: string; wan: WanOptions })
}
