import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { WebSocketServer } from 'ws'
import type { MachineRoute } from '../../src/core/index.js'
import { createClusterCa, type BackhaulPeer } from '../../src/proxy/index.js'
import { freePort, loopbackAddress } from './backends.js'

// Several `hangar proxy` processes on loopback joined by the backhaul, for the proxy's cluster
// tests (issue 4 "Backhaul and closeness"): each proxy is its own process with its own public
// address (127.x.y.z), a routes file shared by all (every proxy knows every Machine, as from the
// catalog), a peers file of its own, and one cluster CA. Between two proxies the kit can put a
// delay relay — a TCP relay that holds every chunk for a fixed one-way delay in each direction —
// so that RTTs differ on loopback; the proxies only ever see what their pings measure.
//
// The Machines are backend processes (`node dist/test/kit/proxy-cluster.js web <host> <port> <id>`):
//   GET /hold   answers the head at once (x-machine: <id>) and keeps the body open until the
//               client goes away: a request that stays in flight for as long as the test wants
//   GET /stats  {"current", "max"} held requests now / at most (the test asks the backend directly)
//   other GETs  JSON {machine, headers}; an Upgrade becomes a WebSocket echo ("<id>:<message>")

const CLI_MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url))
const SERVER_SCRIPT = fileURLToPath(import.meta.url)

export interface DelayRelay {
  readonly port: number
  readonly address: string
  close(): Promise<void>
}

/** A TCP relay on 127.0.0.1 to `target`, delaying each chunk `oneWayMs` in each direction. */
export async function startDelayRelay(target: { host: string; port: number }, oneWayMs: number): Promise<DelayRelay> {
  const sockets = new Set<net.Socket>()
  const delayInto = (from: net.Socket, to: net.Socket) => {
    from.on('data', (chunk: Buffer) => { setTimeout(() => { if (!to.destroyed) to.write(chunk) }, oneWayMs) })
    from.on('end', () => setTimeout(() => to.end(), oneWayMs))
  }
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: target.host, port: target.port })
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.setNoDelay(true)
      socket.on('close', () => { sockets.delete(socket); setTimeout(() => { client.destroy(); upstream.destroy() }, oneWayMs) })
      socket.on('error', () => undefined)
    }
    delayInto(client, upstream)
    delayInto(upstream, client)
  })
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', () => resolve()) })
  const port = (server.address() as net.AddressInfo).port
  return {
    port,
    address: `127.0.0.1:${port}`,
    async close() {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

export interface ClusterProxy {
  readonly hostId: string
  readonly region: string
  /** Where its public ports bind. */
  readonly listenHost: string
  readonly backhaulPort: number
  readonly metricsPort: number
  readonly logFile: string
  readonly process: ChildProcess
  metrics(): Promise<string>
  /** One sample of a metric family, by labels (undefined when absent). */
  metric(name: string, labels?: Record<string, string>): Promise<number | undefined>
  stop(): Promise<void>
}

export interface ProxyClusterHost {
  hostId: string
  region: string
}

export interface ProxyCluster {
  readonly dir: string
  readonly caDir: string
  readonly proxies: Map<string, ClusterProxy>
  proxy(hostId: string): ClusterProxy
  /** Rewrites the routes file every proxy watches. */
  setRoutes(machines: MachineRoute[]): void
  /** Puts a delay relay on the link `from` → `to` (both directions of that session). */
  delay(from: string, to: string, oneWayMs: number): Promise<void>
  /** Starts the proxies (after routes and delays are set). */
  start(extraArgs?: (host: ProxyClusterHost) => string[]): Promise<void>
  close(): Promise<void>
}

/** A cluster of `hosts` proxy processes (not yet started: set routes and delays, then start()). */
export async function proxyCluster(hosts: ProxyClusterHost[]): Promise<ProxyCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'hangar-proxy-cluster-'))
  const caDir = join(dir, 'cluster-ca')
  await createClusterCa(caDir)
  const routesFile = join(dir, 'routes.json')
  writeFileSync(routesFile, JSON.stringify({ machines: [] }))
  const backhaulPorts = new Map<string, number>()
  for (const host of hosts) backhaulPorts.set(host.hostId, await freePort())
  const relays = new Map<string, DelayRelay>()
  const proxies = new Map<string, ClusterProxy>()
  const cluster: ProxyCluster = {
    dir, caDir, proxies,
    proxy(hostId) {
      const found = proxies.get(hostId)
      if (!found) throw new Error(`no proxy ${hostId}`)
      return found
    },
    setRoutes(machines) {
      // In place: the proxies watch this inode (a half-written file is skipped, the next event re-reads).
      writeFileSync(routesFile, JSON.stringify({ machines }))
    },
    async delay(from, to, oneWayMs) {
      relays.set(`${from}>${to}`, await startDelayRelay({ host: '127.0.0.1', port: backhaulPorts.get(to)! }, oneWayMs))
    },
    async start(extraArgs) {
      await Promise.all(hosts.map(async (host) => {
        const peers: BackhaulPeer[] = hosts.filter((h) => h.hostId !== host.hostId).map((h) => ({
          hostId: h.hostId, region: h.region, addr: relays.get(`${host.hostId}>${h.hostId}`)?.address ?? `127.0.0.1:${backhaulPorts.get(h.hostId)}`,
        }))
        const peersFile = join(dir, `peers-${host.hostId}.json`)
        writeFileSync(peersFile, JSON.stringify({ peers }))
        proxies.set(host.hostId, await startClusterProxy({
          ...host, dir, caDir, routesFile, peersFile, backhaulPort: backhaulPorts.get(host.hostId)!, extraArgs: extraArgs?.(host) ?? [],
        }))
      }))
    },
    async close() {
      await Promise.allSettled([...proxies.values()].map((p) => p.stop()))
      await Promise.allSettled([...relays.values()].map((r) => r.close()))
      if (!process.env.HANGAR_KEEP_TEST_DIRS) rmSync(dir, { recursive: true, force: true })
    },
  }
  return cluster
}

async function startClusterProxy(options: ProxyClusterHost & { dir: string; caDir: string; routesFile: string; peersFile: string; backhaulPort: number; extraArgs: string[] }): Promise<ClusterProxy> {
  const listenHost = loopbackAddress()
  const metricsPort = await freePort()
  const logFile = join(options.dir, `proxy-${options.hostId}.log`)
  const log = openSync(logFile, 'a')
  const child = spawn(process.execPath, [CLI_MAIN, 'proxy', '--region', options.region, '--host-id', options.hostId, '--domain', 'cluster.test',
    '--ca-dir', join(options.dir, `public-ca-${options.hostId}`), '--listen', listenHost, '--metrics', `127.0.0.1:${metricsPort}`,
    '--routes-file', options.routesFile, '--peers-file', options.peersFile, '--cluster-ca', options.caDir,
    '--backhaul-listen', `127.0.0.1:${options.backhaulPort}`, '--autostop-interval', '1h', ...options.extraArgs], {
    stdio: ['ignore', log, log], env: { ...process.env, HANGAR_SKIP_SETUP: '1', HANGAR_LOG_LEVEL: process.env.HANGAR_LOG_LEVEL ?? 'info' },
  })
  closeSync(log)
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const metrics = async () => {
    const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`)
    return await res.text()
  }
  const deadline = Date.now() + 15_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`hangar proxy ${options.hostId} exited (${child.exitCode}): ${readFileSync(logFile, 'utf8').slice(-2000)}`)
    try { await metrics(); break } catch { /* not up yet */ }
    if (Date.now() > deadline) { child.kill('SIGKILL'); throw new Error(`hangar proxy ${options.hostId} did not start: ${readFileSync(logFile, 'utf8').slice(-2000)}`) }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return {
    hostId: options.hostId, region: options.region, listenHost, backhaulPort: options.backhaulPort, metricsPort, logFile, process: child,
    metrics,
    async metric(name, labels = {}) {
      const text = await metrics()
      for (const line of text.split('\n')) {
        if (!line.startsWith(name)) continue
        const match = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line)
        if (!match || match[1] !== name) continue
        const have = new Map([...(match[2] ?? '').matchAll(/([a-z_]+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1]!, m[2]!]))
        if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) return Number(match[3])
      }
      return undefined
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(timer)
    },
  }
}

export interface WebMachine {
  machineId: string
  host: string
  port: number
  /** The backend's own count of held requests (asked directly, not through a proxy). */
  stats(): Promise<{ current: number; max: number }>
  stop(): Promise<void>
}

/** A `web` backend process (see the top of this file) on a fresh loopback address; Machines of
 * one app must share `port` (the proxy groups a service by its internal port). */
export async function startWebMachine(machineId: string, port?: number): Promise<WebMachine> {
  const host = loopbackAddress()
  port ??= await freePort(host)
  const child = spawn(process.execPath, [SERVER_SCRIPT, 'web', host, String(port), machineId], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString() })
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`web machine ${machineId} did not start: ${stderr}`)) }, 10_000)
    child.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('ready')) { clearTimeout(timer); resolve() } })
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`web machine ${machineId} exited with ${code}: ${stderr}`)) })
  })
  child.removeAllListeners('exit')
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  return {
    machineId, host, port,
    async stats() {
      const res = await fetch(`http://${host}:${port}/stats`)
      return await res.json() as { current: number; max: number }
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(timer)
    },
  }
}

export interface HeldRequest {
  /** The Machine that answered (its x-machine or x-machine-id header). */
  machine: string
  status: number
  headers: http.IncomingHttpHeaders
  /** Ends the request (the client goes away): the Machine's load drops. */
  release(): void
}

/** GET /hold through a proxy: resolves once the response head arrived (the request stays in
 * flight until release()). */
export function holdRequest(host: string, port: number, app: string, domain = 'cluster.test', timeoutMs = 30_000, path = '/hold'): Promise<HeldRequest> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, path, headers: { host: `${app}.${domain}` }, agent: false })
    const timer = setTimeout(() => req.destroy(new Error(`no response head within ${timeoutMs} ms`)), timeoutMs)
    req.on('response', (res) => {
      clearTimeout(timer)
      res.on('data', () => undefined)
      res.on('error', () => undefined)
      resolve({ machine: String(res.headers['x-machine'] ?? res.headers['x-machine-id'] ?? ''), status: res.statusCode ?? 0, headers: res.headers, release: () => req.destroy() })
    })
    req.on('error', (err) => { clearTimeout(timer); reject(err) })
    req.end()
  })
}

// ── the backend process ──

function runWebMachine(host: string, port: number, machineId: string): void {
  let current = 0
  let max = 0
  const server = http.createServer((req, res) => {
    if (req.url === '/stats') {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ current, max }))
      return
    }
    if (req.url === '/hold') {
      current++
      max = Math.max(max, current)
      res.writeHead(200, { 'content-type': 'text/plain', 'x-machine': machineId })
      res.write('held\n')
      res.on('close', () => { current-- })
      return
    }
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', 'x-machine': machineId })
      res.end(JSON.stringify({ machine: machineId, method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString('utf8') }))
    })
  })
  const wss = new WebSocketServer({ noServer: true })
  server.on('upgrade', (req, socket, head) => {
    wss.handleUpgrade(req, socket, head, (ws) => ws.on('message', (data) => ws.send(`${machineId}:${data.toString()}`)))
  })
  server.keepAliveTimeout = 10_000
  server.listen({ host, port }, () => process.stdout.write('ready\n'))
  process.on('SIGTERM', () => process.exit(0))
}

if (process.argv[1] === SERVER_SCRIPT && process.argv[2] === 'web') {
  const [, , , host, portText, machineId] = process.argv as [string, string, string, string, string, string]
  runWebMachine(host, Number(portText), machineId)
}
