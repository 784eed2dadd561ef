import { spawn, type ChildProcess } from 'node:child_process'
import { randomInt } from 'node:crypto'
import net from 'node:net'
import { fileURLToPath } from 'node:url'
import type { AppRoute, MachineController, MachineRoute, MachineService, RouteChange, RouteSource } from '../../src/core/index.js'

// Real backends for the proxy's tests, behind the same ports the agent will implement: each
// "Machine" is a Node process (test/kit/backend-server.ts) on its own loopback address
// (127.x.y.z), a RouteSource the test drives, and a MachineController that starts and stops
// those processes for autostart/autostop. Until the agent feeds the proxy real guests, this is
// how the proxy's end-to-end tests reach real sockets.

const SERVER_SCRIPT = fileURLToPath(new URL('./backend-server.js', import.meta.url))

export type BackendMode = 'http' | 'h2c' | 'echo' | 'proxyproto'

export interface Backend {
  machineId: string
  host: string
  port: number
  process: ChildProcess
  stop(signal?: NodeJS.Signals): Promise<void>
}

/** A random loopback address: parallel tests (and other engineers) never share one. */
export function loopbackAddress(): string {
  return `127.${randomInt(100, 250)}.${randomInt(0, 255)}.${randomInt(2, 254)}`
}

/** A port free on 127.0.0.1 now. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, host, () => {
      const port = (server.address() as net.AddressInfo).port
      server.close(() => resolve(port))
    })
  })
}

export async function startBackend(mode: BackendMode, machineId: string, host: string, port: number): Promise<Backend> {
  const child = spawn(process.execPath, [SERVER_SCRIPT, mode, host, String(port), machineId], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString() })
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`backend ${machineId} did not start: ${stderr}`)) }, 10_000)
    child.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('ready')) { clearTimeout(timer); resolve() } })
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`backend ${machineId} exited with ${code}: ${stderr}`)) })
  })
  child.removeAllListeners('exit')
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  return {
    machineId, host, port, process: child,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal)
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(timer)
    },
  }
}

export function machineRoute(fields: Partial<MachineRoute> & { machineId: string; app: string; address: string; services: MachineService[] }): MachineRoute {
  return {
    org: 'test-org',
    region: 'ams',
    hostId: 'host-a',
    state: 'started',
    instanceId: `inst-${fields.machineId}`,
    checks: [],
    cordoned: false,
    processGroup: 'app',
    stopConfig: {},
    primaryRegion: 'ams',
    updatedAt: Date.now(),
    ...fields,
  }
}

/** A RouteSource the test drives: a snapshot on subscribe, then every change it is told. */
export class TestRouteSource implements RouteSource {
  readonly machines = new Map<string, MachineRoute>()
  readonly apps = new Map<string, AppRoute>()
  private readonly subscribers = new Set<(change: RouteChange) => void>()

  subscribe(apply: (change: RouteChange) => void): () => void {
    this.subscribers.add(apply)
    apply({ kind: 'snapshot', machines: [...this.machines.values()], apps: [...this.apps.values()] })
    return () => this.subscribers.delete(apply)
  }

  upsert(machine: MachineRoute): void {
    const next = { ...machine, updatedAt: Math.max(Date.now(), (this.machines.get(machine.machineId)?.updatedAt ?? 0) + 1) }
    this.machines.set(machine.machineId, next)
    for (const apply of this.subscribers) apply({ kind: 'upsert', machine: next })
  }

  update(machineId: string, fields: Partial<MachineRoute>): void {
    const current = this.machines.get(machineId)
    if (!current) throw new Error(`no machine ${machineId}`)
    this.upsert({ ...current, ...fields })
  }

  remove(machineId: string): void {
    this.machines.delete(machineId)
    for (const apply of this.subscribers) apply({ kind: 'remove', machineId })
  }

  setApp(app: AppRoute): void {
    this.apps.set(app.app, app)
    for (const apply of this.subscribers) apply({ kind: 'app', app })
  }
}

/** Starts and stops backend processes as Machines: what the agent does with crun guests. */
export class ProcessController implements MachineController {
  readonly calls: Array<{ op: 'start' | 'stop' | 'suspend'; machineId: string; signal?: string | undefined; timeoutMs?: number | undefined }> = []
  readonly backends = new Map<string, Backend>()
  private readonly source: TestRouteSource
  private readonly modes = new Map<string, BackendMode>()
  /** Extra start latency, to observe concurrent requests sharing one start. */
  startDelayMs = 0

  constructor(source: TestRouteSource) {
    this.source = source
  }

  /** Registers a Machine in the source (stopped) that start() brings up as a process. */
  define(route: MachineRoute, mode: BackendMode = 'http'): void {
    this.modes.set(route.machineId, mode)
    this.source.upsert(route)
  }

  /** Starts the process now, as a Machine that is already running. */
  async launch(machineId: string): Promise<Backend> {
    const route = this.source.machines.get(machineId)!
    const port = route.services[0]!.internal_port!
    const backend = await startBackend(this.modes.get(machineId) ?? 'http', machineId, route.address, port)
    this.backends.set(machineId, backend)
    this.source.update(machineId, { state: 'started' })
    return backend
  }

  async start(_app: string, machineId: string): Promise<void> {
    this.calls.push({ op: 'start', machineId })
    this.source.update(machineId, { state: 'starting' })
    if (this.startDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.startDelayMs))
    const suspended = this.backends.get(machineId)
    if (suspended) { suspended.process.kill('SIGCONT'); this.source.update(machineId, { state: 'started' }); return }
    await this.launch(machineId)
  }

  async stop(_app: string, machineId: string, options: { signal?: string; timeoutMs?: number }): Promise<void> {
    this.calls.push({ op: 'stop', machineId, signal: options.signal, timeoutMs: options.timeoutMs })
    this.source.update(machineId, { state: 'stopping' })
    await this.backends.get(machineId)?.stop((options.signal ?? 'SIGTERM') as NodeJS.Signals)
    this.backends.delete(machineId)
    this.source.update(machineId, { state: 'stopped' })
  }

  async suspend(_app: string, machineId: string): Promise<void> {
    this.calls.push({ op: 'suspend', machineId })
    this.source.update(machineId, { state: 'suspending' })
    const backend = this.backends.get(machineId)
    backend?.process.kill('SIGSTOP')
    this.source.update(machineId, { state: 'suspended' })
  }

  async close(): Promise<void> {
    await Promise.all([...this.backends.values()].map(async (b) => { b.process.kill('SIGCONT'); await b.stop('SIGKILL') }))
    this.backends.clear()
  }
}

/** Everything a proxy end-to-end test needs, cleaned up by `close()` (call it from t.after). */
export interface ProxyHarness {
  source: TestRouteSource
  controller: ProcessController
  caDir: string
  /** Starts a backend process for `route` now (a running Machine) and adds it to the source. */
  machine(route: MachineRoute, mode?: BackendMode): Promise<Backend>
  close(): Promise<void>
}

export async function proxyHarness(): Promise<ProxyHarness> {
  const { mkdtemp, rm } = await import('node:fs/promises')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  const caDir = await mkdtemp(join(tmpdir(), 'hangar-proxy-test-'))
  const source = new TestRouteSource()
  const controller = new ProcessController(source)
  return {
    source, controller, caDir,
    async machine(route, mode = 'http') {
      controller.define({ ...route, state: 'stopped' }, mode)
      return await controller.launch(route.machineId)
    },
    async close() {
      await controller.close()
      await rm(caDir, { recursive: true, force: true })
    },
  }
}

/** An HTTP service on `port` with the given options, for machineRoute's `services`. */
export function httpService(port: number, fields: Partial<MachineService> = {}, portFields: Record<string, unknown> = {}): MachineService {
  return { internal_port: 8080, protocol: 'tcp', ports: [{ port, handlers: ['http'], ...portFields }], ...fields }
}

/** Polls `condition` every 10 ms until it holds (or fails after `timeoutMs`). */
export async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}
