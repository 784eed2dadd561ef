import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import http from 'node:http'
import { Bus, NatsMachineController, NatsRouteSource } from '../../src/bus/index.js'
import { silentLogger } from '../../src/core/index.js'
import { startProxy, type RunningProxy } from '../../src/proxy/index.js'
import type { Platform } from './platform.js'

// Test kit for deploys: the real Hangar proxy (src/proxy) fed by the agents over NATS, as
// `hangar proxy --nats` runs it, started beside a one-host platform whose kit does not (yet) run
// one; and a load loop of HTTP requests through it that counts every failure.

export const TEST_DOMAIN = 'hangar.test'

export interface TestProxy {
  proxy: RunningProxy
  close(): Promise<void>
}

export async function startTestProxy(platform: Platform): Promise<TestProxy> {
  const caDir = mkdtempSync(join(tmpdir(), 'hangar-deploy-proxy-'))
  const bus = await Bus.connect(platform.natsUrl, { name: 'deploy-test-proxy' })
  const routeSource = new NatsRouteSource(bus, silentLogger)
  const hostId = readFileSync(join(platform.hostDir, 'host-id'), 'utf8').trim()
  let proxy: RunningProxy | undefined
  try {
    proxy = await startProxy({
      routeSource, controller: new NatsMachineController(bus, (id) => routeSource.hostOf(id)), region: platform.region, hostId, domain: TEST_DOMAIN, caDir,
      listenHost: '127.0.0.1', portMap: { 80: 0 }, ports: [80], logger: silentLogger, autostopIntervalMs: 3_600_000,
    })
  } catch (err) {
    await bus.close()
    rmSync(caDir, { recursive: true, force: true })
    throw err
  }
  const running = proxy
  return {
    proxy: running,
    async close() {
      await running.close()
      await bus.close()
      rmSync(caDir, { recursive: true, force: true })
    },
  }
}

/** The local port of service port 80, once the proxy listens on it (ports follow services). */
export async function proxyPort(testProxy: TestProxy, timeoutMs = 15_000): Promise<number> {
  return (await testProxy.proxy.listening(80, timeoutMs)).port
}

export interface LoadStats {
  requests: number
  errors: number
  /** Responses by body (what each release serves). */
  bodies: Record<string, number>
  /** The first few failures, for the assertion message. */
  failures: string[]
}

export interface LoadLoop { stop(): Promise<LoadStats> }

/** Sends GET / for `app` through the proxy from `concurrency` clients (keep-alive) until stopped.
 * An error is anything but a 200 whose body is one of `expectedBodies`. */
export function startLoad(port: number, app: string, expectedBodies: readonly string[], concurrency = 3): LoadLoop {
  const stats: LoadStats = { requests: 0, errors: 0, bodies: {}, failures: [] }
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency })
  let running = true
  const fail = (why: string) => {
    stats.errors++
    if (stats.failures.length < 10) stats.failures.push(`${new Date().toISOString()} ${why}`)
  }
  const once = () => new Promise<void>((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent, headers: { host: `${app}.${TEST_DOMAIN}` }, timeout: 10_000 }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk) => { body += chunk })
      res.on('end', () => {
        stats.requests++
        stats.bodies[body] = (stats.bodies[body] ?? 0) + 1
        if (res.statusCode !== 200 || !expectedBodies.includes(body)) fail(`HTTP ${res.statusCode}: ${JSON.stringify(body.slice(0, 120))}`)
        resolve()
      })
      res.on('error', (err) => { stats.requests++; fail(`response: ${err.message}`); resolve() })
    })
    req.on('timeout', () => req.destroy(new Error('timed out')))
    req.on('error', (err) => { stats.requests++; fail(`request: ${err.message}`); resolve() })
  })
  const workers = Array.from({ length: concurrency }, async () => {
    while (running) await once()
  })
  return {
    async stop() {
      running = false
      await Promise.all(workers)
      agent.destroy()
      return stats
    },
  }
}
