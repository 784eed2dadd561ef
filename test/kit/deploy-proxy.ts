import http from 'node:http'

// Test kit for deploys: a load loop of HTTP requests through the host's proxy (the platform kit's
// `proxyAddr`, port 80 for an http_service) that counts every failed request.

/** `hangar host`'s default: apps answer at <app>.hangar.local. */
export const PROXY_DOMAIN = 'hangar.local'

export interface LoadStats {
  requests: number
  errors: number
  /** Responses by body (what each release serves). */
  bodies: Record<string, number>
  /** The first few failures, for the assertion message. */
  failures: string[]
}

export interface LoadLoop { stop(): Promise<LoadStats> }

/** Sends GET / for `app` through the proxy at `address`:80 from `concurrency` clients (keep-alive)
 * until stopped. An error is anything but a 200 whose body is one of `expectedBodies`. */
export function startLoad(address: string, app: string, expectedBodies: readonly string[], concurrency = 3, pauseMs = 3): LoadLoop {
  const stats: LoadStats = { requests: 0, errors: 0, bodies: {}, failures: [] }
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency })
  let running = true
  const fail = (why: string) => {
    stats.errors++
    if (stats.failures.length < 10) stats.failures.push(`${new Date().toISOString()} ${why}`)
  }
  const once = () => new Promise<void>((resolve) => {
    const req = http.get({ host: address, port: 80, path: '/', agent, headers: { host: `${app}.${PROXY_DOMAIN}` }, timeout: 10_000 }, (res) => {
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
  // Paced (a request per client every few ms): enough to catch any gap in routing, without
  // taking the shared CPUs from the platform under test.
  const workers = Array.from({ length: concurrency }, async () => {
    while (running) {
      await once()
      await new Promise((resolve) => setTimeout(resolve, pauseMs))
    }
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

/** One GET / for `app` through the proxy: the status and body, or the error's message. */
export function requestOnce(address: string, app: string): Promise<{ status: number; body: string } | { error: string }> {
  return new Promise((resolve) => {
    const req = http.get({ host: address, port: 80, path: '/', headers: { host: `${app}.${PROXY_DOMAIN}`, connection: 'close' }, timeout: 5_000 }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
      res.on('error', (err) => resolve({ error: err.message }))
    })
    req.on('timeout', () => req.destroy(new Error('timed out')))
    req.on('error', (err) => resolve({ error: err.message }))
  })
}
