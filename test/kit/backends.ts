import { spawn, type ChildProcess } from 'node:child_process'
import http from 'node:http'
import http2 from 'node:http2'
import { WebSocketServer } from 'ws'
import { randomInt } from 'node:crypto'
import net from 'node:net'
import { fileURLToPath } from 'node:url'
import type { AppRoute, MachineController, MachineRoute, MachineService, RouteChange, RouteSource } from '../../src/core/index.js'

// Real backends for the proxy's tests, behind the same ports the agent will implement: each
// "Machine" is a Node process (test/kit/backend-server.ts) on its own loopback address
// (127.x.y.z), a RouteSource the test drives, and a MachineController that starts and stops
// those processes for autostart/autostop. Until the agent feeds the proxy real guests, this is
// how the proxy's end-to-end tests reach real sockets.

const SERVER_SCRIPT = fileURLToPath(import.meta.url)

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

// ---------------------------------------------------------------------------------------------
// The backend process itself: `node dist/test/kit/backends.js <mode> <host> <port> <machineId>`
// runs one "Machine". Modes:
//   http   HTTP/1.1 server: answers JSON {machine, method, url, headers, body}; /slow?ms=N waits;
//          /replay?h=<fly-replay value> answers with a fly-replay header; /replay-unless-src does
//          so unless the request already carries fly-replay-src; /replay-json?b=<json> answers
//          with the JSON form; /chunked streams; any upgrade becomes a WebSocket echo (`ws`).
//   h2c    HTTP/2 cleartext (prior knowledge) server answering the same JSON.
//   echo   raw TCP: writes back everything it reads.
//   proxyproto  raw TCP: reports the PROXY header it got (JSON line), then echoes.
// It prints "ready" on stdout once listening.
function runBackendServer(mode: string, host: string, portText: string, machineId: string): void {
  const port = Number(portText)

  function answer(method: string, url: string, headers: Record<string, unknown>, body: string): string {
    return JSON.stringify({ machine: machineId, method, url, headers, body })
  }

  function ready(server: net.Server): void {
    server.listen({ host, port }, () => process.stdout.write('ready\n'))
  }

  if (mode === 'http') {
    const server = http.createServer((req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        const url = new URL(req.url ?? '/', 'http://x')
        const body = Buffer.concat(chunks).toString('utf8')
        const send = () => {
          if (url.pathname === '/replay') {
            res.writeHead(200, { 'fly-replay': url.searchParams.get('h') ?? '' })
            res.end('replaying')
            return
          }
          if (url.pathname === '/replay-json') {
            res.writeHead(200, { 'content-type': 'application/vnd.fly.replay+json' })
            res.end(url.searchParams.get('b') ?? '{}')
            return
          }
          if (url.pathname === '/replay-unless-src') {
            if (req.headers['fly-replay-src']) { res.writeHead(200, { 'content-type': 'application/json' }); res.end(answer(req.method ?? '', req.url ?? '', req.headers, body)); return }
            res.writeHead(200, { 'fly-replay': url.searchParams.get('h') ?? '' })
            res.end('replaying')
            return
          }
          if (url.pathname === '/chunked') {
            res.writeHead(200, { 'content-type': 'text/plain' })
            res.write('hello ')
            setTimeout(() => res.end('world'), 10)
            return
          }
          res.writeHead(200, { 'content-type': 'application/json', server: 'backend' })
          res.end(answer(req.method ?? '', req.url ?? '', req.headers, body))
        }
        const ms = Number(url.searchParams.get('ms') ?? 0)
        if (url.pathname === '/slow' && ms > 0) setTimeout(send, ms)
        else send()
      })
    })
    server.keepAliveTimeout = 10_000
    const wss = new WebSocketServer({ noServer: true })
    server.on('upgrade', (req, socket, head) => {
      wss.handleUpgrade(req, socket, head, (ws) => {
        ws.on('message', (data, isBinary) => ws.send(isBinary ? data : `${machineId}:${data.toString()}`))
      })
    })
    ready(server)
  } else if (mode === 'h2c') {
    const server = http2.createServer()
    server.on('stream', (stream, headers) => {
      const chunks: Buffer[] = []
      stream.on('data', (c: Buffer) => chunks.push(c))
      stream.on('end', () => {
        stream.respond({ ':status': 200, 'content-type': 'application/json', 'x-backend-protocol': 'h2c' })
        const plain: Record<string, unknown> = {}
        for (const [k, v] of Object.entries(headers)) plain[k] = v
        stream.end(answer(String(headers[':method']), String(headers[':path']), plain, Buffer.concat(chunks).toString('utf8')))
      })
    })
    ready(server as unknown as net.Server)
  } else if (mode === 'echo') {
    ready(net.createServer((socket) => socket.pipe(socket)))
  } else if (mode === 'proxyproto') {
    ready(net.createServer((socket) => {
      let buffered = Buffer.alloc(0)
      const onData = (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk])
        let header: Buffer | undefined
        let rest: Buffer
        if (buffered.subarray(0, 6).toString('latin1') === 'PROXY ') {
          const end = buffered.indexOf('\r\n')
          if (end === -1) return
          header = buffered.subarray(0, end + 2)
          rest = buffered.subarray(end + 2)
        } else if (buffered.length >= 16 && buffered[12] === 0x21) {
          const len = buffered.readUInt16BE(14)
          if (buffered.length < 16 + len) return
          header = buffered.subarray(0, 16 + len)
          rest = buffered.subarray(16 + len)
        } else {
          if (buffered.length < 16) return
          header = Buffer.alloc(0)
          rest = buffered
        }
        socket.removeListener('data', onData)
        socket.write(JSON.stringify({ machine: machineId, header: header.toString('base64') }) + '\n')
        if (rest.length > 0) socket.write(rest)
        socket.pipe(socket)
      }
      socket.on('data', onData)
    }))
  } else {
    process.stderr.write(`unknown mode ${mode}\n`)
    process.exit(2)
  }

  process.on('SIGTERM', () => process.exit(0))
}

if (process.argv[1] === SERVER_SCRIPT && process.argv.length >= 6) {
  const [mode, host, portText, machineId] = process.argv.slice(2) as [string, string, string, string]
  runBackendServer(mode, host, portText, machineId)
}
