import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import http2 from 'node:http2'
import net from 'node:net'
import { Agent, request } from 'undici'
import WebSocket from 'ws'
import { createLogger, silentLogger } from '../src/core/index.js'
import { startProxy, type RunningProxy } from '../src/proxy/index.js'
import { freePort, httpService, loopbackAddress, machineRoute, proxyHarness, waitFor, type ProxyHarness } from './kit/backends.js'

// HTTP through `hangar proxy` with real clients (undici, node:http2, ws, raw sockets) and real
// backend processes: routing by port and Host, the headers Fly adds, keep-alive, h2 and h2c,
// WebSockets, force_https, limits, fly-replay, and a routing table that follows changes.

interface Answer { machine: string; method: string; url: string; headers: Record<string, string>; body: string }

describe('proxy: HTTP', () => {
  let harness: ProxyHarness
  let proxy: RunningProxy
  let port: number
  let httpsRedirectPort: number
  let slowPort: number
  let agent: Agent
  const domain = 'apps.test'

  before(async () => {
    harness = await proxyHarness()
    port = await freePort()
    httpsRedirectPort = await freePort()
    slowPort = await freePort()
    const service = httpService(port, { concurrency: { type: 'requests', soft_limit: 20, hard_limit: 25 } })
    await harness.machine(machineRoute({ machineId: 'web1', app: 'web', address: loopbackAddress(), services: [service], region: 'ams' }))
    await harness.machine(machineRoute({ machineId: 'web2', app: 'web', address: loopbackAddress(), services: [service], region: 'sin', hostId: 'host-far' }))
    await harness.machine(machineRoute({ machineId: 'api1', app: 'api', address: loopbackAddress(), region: 'ams', services: [httpService(port, {}, { http_options: { response: { pristine: true, headers: { 'x-api': 'yes' } } } })] }))
    await harness.machine(machineRoute({ machineId: 'sec1', app: 'secure', address: loopbackAddress(), services: [httpService(httpsRedirectPort, {}, { force_https: true })] }))
    await harness.machine(machineRoute({ machineId: 'h2b1', app: 'h2b', address: loopbackAddress(), services: [httpService(port, {}, { http_options: { h2_backend: true } })] }), 'h2c')
    await harness.machine(machineRoute({ machineId: 'slow1', app: 'slow', address: loopbackAddress(), services: [httpService(slowPort, {}, { http_options: { headers_read_timeout: 1, idle_timeout: 1 } })] }))
    harness.source.setApp({ app: 'api', org: 'test-org', hostnames: ['api.custom.example'] })
    proxy = await startProxy({
      routeSource: harness.source, controller: harness.controller, region: 'ams', hostId: 'host-a', domain, caDir: harness.caDir,
      listenHost: '127.0.0.1', logger: process.env.HANGAR_TEST_LOG ? createLogger('proxy') : silentLogger, maxHeaderBytes: 8192, metrics: { host: '127.0.0.1', port: 0 },
      queue: { maxWaitMs: 500 },
    })
    agent = new Agent({ keepAliveTimeout: 10_000 })
  })

  after(async () => {
    await agent?.close()
    await proxy?.close()
    await harness?.close()
  })

  async function get(path: string, host: string, headers: Record<string, string> = {}, targetPort = port) {
    const res = await request(`http://127.0.0.1:${targetPort}${path}`, { headers: { host, ...headers }, dispatcher: agent })
    const text = await res.body.text()
    return { status: res.statusCode, headers: res.headers, text, json: () => JSON.parse(text) as Answer }
  }

  it('routes by Host header on a shared port (<app>.<domain> and custom hostnames) and adds the Fly request headers', async () => {
    const web = await get('/hello?x=1', `web.${domain}`, { 'x-forwarded-for': '203.0.113.9', 'fly-client-ip': '6.6.6.6' })
    assert.equal(web.status, 200)
    const answer = web.json()
    assert.equal(answer.machine, 'web1', 'the closest Machine (same host) takes the request')
    assert.equal(answer.url, '/hello?x=1')
    assert.equal(answer.headers['fly-client-ip'], '127.0.0.1', "a client's own Fly-Client-IP is replaced")
    assert.equal(answer.headers['x-forwarded-for'], '203.0.113.9, 127.0.0.1', 'the rightmost entry is the client')
    assert.equal(answer.headers['x-forwarded-proto'], 'http')
    assert.equal(answer.headers['x-forwarded-ssl'], 'off')
    assert.equal(answer.headers['x-forwarded-port'], String(port))
    assert.equal(answer.headers['fly-forwarded-port'], String(port))
    assert.equal(answer.headers['fly-region'], 'ams')
    assert.match(answer.headers['fly-request-id']!, /^[0-9A-Z]{26}-ams$/)
    assert.equal(web.headers['fly-request-id'], answer.headers['fly-request-id'])
    assert.equal(web.headers.via, '1.1 hangar')
    assert.equal(web.headers.server, 'backend', "the Machine's Server header is kept")

    const api = await get('/', 'api.custom.example')
    assert.equal(api.json().machine, 'api1')
    assert.equal(api.headers.via, undefined, 'response.pristine: no Via')
    assert.equal(api.headers['fly-request-id'], undefined, 'response.pristine: no Fly-Request-Id')
    assert.equal(api.headers['x-api'], 'yes', 'response.headers are set')
    assert.equal((await get('/', `API.${domain.toUpperCase()}:${port}`)).json().machine, 'api1', 'hostnames match case-insensitively, with a port')

    const unknown = await get('/', 'nobody.example')
    assert.equal(unknown.status, 404)
    assert.match(unknown.text, /no app serves nobody\.example/)
  })

  it('keeps client connections alive and reuses upstream connections; bodies in both directions', async () => {
    const socket = net.connect(port, '127.0.0.1')
    await new Promise((resolve) => socket.once('connect', resolve))
    const body = 'x'.repeat(100_000)
    socket.write(`POST /a HTTP/1.1\r\nHost: web.${domain}\r\nContent-Length: ${body.length}\r\n\r\n${body}`)
    socket.write(`GET /chunked HTTP/1.1\r\nHost: web.${domain}\r\n\r\n`)
    socket.write(`POST /b HTTP/1.1\r\nHost: web.${domain}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`)
    let received = ''
    socket.on('data', (d: Buffer) => { received += d.toString('latin1') })
    await waitFor(() => received.includes('"url":"/b"'), 5000, 'three pipelined responses')
    socket.destroy()
    const responses = received.split('HTTP/1.1 200 OK').slice(1)
    assert.equal(responses.length, 3, 'three responses on one connection, in order')
    assert.ok(responses[0]!.includes(`"body":"${body}"`), 'a 100 kB body arrives whole')
    assert.match(responses[1]!, /transfer-encoding: chunked/i)
    assert.match(responses[1]!, /hello /)
    assert.ok(responses[2]!.includes('"body":"hello"'), 'a chunked request body arrives decoded by the Machine')
  })

  it('HEAD, HTTP/1.0 without Host, and Expect: 100-continue', async () => {
    const socket = net.connect(port, '127.0.0.1')
    await new Promise((resolve) => socket.once('connect', resolve))
    try {
      let out = ''
      socket.on('data', (d: Buffer) => { out += d.toString('latin1') })
      socket.write(`HEAD /h HTTP/1.1\r\nHost: web.${domain}\r\n\r\nGET /after-head HTTP/1.1\r\nHost: web.${domain}\r\n\r\n`)
      await waitFor(() => out.includes('"url":"/after-head"'), 3000, 'the request after HEAD')
      assert.equal(out.split('HTTP/1.1 200 OK').length - 1, 2, 'a HEAD response has no body; the next response follows on the same connection')
    } finally { socket.destroy() }

    const http10 = net.connect(port, '127.0.0.1')
    try {
      let out = ''
      http10.on('data', (d: Buffer) => { out += d.toString('latin1') })
      http10.write('GET /old HTTP/1.0\r\n\r\n')
      await new Promise((resolve) => http10.once('close', resolve))
      // Several apps share this port and HTTP/1.0 sent no Host: nothing to route by.
      assert.match(out, /^HTTP\/1.1 404 /)
    } finally { http10.destroy() }
    const slowPortHttp10 = net.connect(slowPort, '127.0.0.1')
    try {
      let out = ''
      slowPortHttp10.on('data', (d: Buffer) => { out += d.toString('latin1') })
      slowPortHttp10.write('GET /old HTTP/1.0\r\n\r\n')
      await new Promise((resolve) => slowPortHttp10.once('close', resolve))
      assert.match(out, /^HTTP\/1.1 200 OK/)
      assert.match(out, /"host":"slow\.apps\.test"/, 'the proxy adds the Host an HTTP/1.1 Machine needs')
    } finally { slowPortHttp10.destroy() }

    // node:http sends the body only after the Machine's 100 Continue came through the proxy.
    const answer = await new Promise<Answer>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, method: 'PUT', path: '/continue', headers: { host: `web.${domain}`, expect: '100-continue', 'content-length': 4 } }, (res) => {
        let body = ''
        res.on('data', (d: Buffer) => { body += d.toString() })
        res.on('end', () => resolve(JSON.parse(body) as Answer))
      })
      req.on('continue', () => req.end('data'))
      req.on('error', reject)
    })
    assert.equal(answer.body, 'data')
  })

  it('answers HTTP/2 with prior knowledge (h2c) and speaks h2c to an h2_backend Machine', async () => {
    const session = http2.connect(`http://127.0.0.1:${port}`)
    try {
      const ask = (authority: string, path: string) => new Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: string }>((resolve, reject) => {
        const stream = session.request({ ':path': path, ':authority': authority })
        let body = ''
        let headers: http2.IncomingHttpHeaders = {}
        stream.on('response', (h) => { headers = h })
        stream.on('data', (d: Buffer) => { body += d.toString() })
        stream.on('end', () => resolve({ status: Number(headers[':status']), headers, body }))
        stream.on('error', reject)
        stream.end()
      })
      const web = await ask(`web.${domain}`, '/over-h2')
      assert.equal(web.status, 200)
      assert.equal((JSON.parse(web.body) as Answer).url, '/over-h2')
      assert.equal(web.headers.via, '2 hangar')
      assert.match(String(web.headers['fly-request-id']), /-ams$/)
      const h2b = await ask(`h2b.${domain}`, '/to-h2c')
      assert.equal(h2b.headers['x-backend-protocol'], 'h2c')
      assert.equal((JSON.parse(h2b.body) as Answer).machine, 'h2b1')
    } finally {
      session.close()
    }
    // An HTTP/1.1 client of the h2_backend service too.
    const viaH1 = await get('/from-h1', `h2b.${domain}`)
    assert.equal(viaH1.headers['x-backend-protocol'], 'h2c')
    assert.equal(viaH1.json().url, '/from-h1')
  })

  it('upgrades WebSockets and relays frames both ways', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { host: `web.${domain}` } })
    try {
      await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
      const reply = new Promise<string>((resolve) => ws.once('message', (data) => resolve(String(data))))
      ws.send('ping')
      assert.equal(await reply, 'web1:ping')
    } finally {
      ws.close()
    }
  })

  it('force_https answers 301 to https', async () => {
    const res = await get('/path?q=1', `secure.${domain}`, {}, httpsRedirectPort)
    assert.equal(res.status, 301)
    assert.equal(res.headers.location, `https://secure.${domain}/path?q=1`)
  })

  it('refuses oversized heads (431), malformed requests (400) and slow heads (408) without holding anything', async () => {
    const raw = async (data: string, waitMs = 0) => {
      const socket = net.connect(port, '127.0.0.1')
      let out = ''
      socket.on('data', (d: Buffer) => { out += d.toString() })
      socket.on('error', () => {})
      await new Promise((resolve) => socket.once('connect', resolve))
      socket.write(data)
      await new Promise((resolve) => { socket.once('close', resolve); if (waitMs) setTimeout(resolve, waitMs) })
      socket.destroy()
      return out
    }
    assert.match(await raw(`GET / HTTP/1.1\r\nHost: web.${domain}\r\nX-Big: ${'a'.repeat(9000)}\r\n\r\n`), /^HTTP\/1.1 431 /)
    assert.match(await raw(`GET / HTTP/1.1\r\nHost: web.${domain}\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n`), /^HTTP\/1.1 400 /)
    assert.match(await raw('BLAH\r\n\r\n'), /^HTTP\/1.1 400 /)
    // A slowloris client: a head that never completes is answered 408 after headers_read_timeout,
    // and meanwhile other clients are served.
    const slowloris = net.connect(slowPort, '127.0.0.1')
    let slowOut = ''
    slowloris.on('data', (d: Buffer) => { slowOut += d.toString() })
    slowloris.on('error', () => {})
    const started = Date.now()
    const drip = setInterval(() => slowloris.write('X-Drip: 1\r\n'), 100)
    slowloris.write('GET / HTTP/1.1\r\nHost: slow\r\n')
    try {
      assert.equal((await get('/', 'slow', {}, slowPort)).json().machine, 'slow1')
      await new Promise((resolve) => slowloris.once('close', resolve))
    } finally {
      clearInterval(drip)
      slowloris.destroy()
    }
    assert.match(slowOut, /^HTTP\/1.1 408 /)
    assert.ok(Date.now() - started < 3500, 'cut off within the timeout and one sweep')
    // An idle keep-alive connection is closed after idle_timeout.
    const idle = net.connect(slowPort, '127.0.0.1')
    idle.on('error', () => {})
    await new Promise((resolve) => idle.once('connect', resolve))
    await new Promise((resolve) => idle.once('close', resolve))
  })

  it('fly-replay: header and JSON forms, region, instance, elsewhere, state, other app, and the 1 MB limit', async () => {
    const toSin = await get(`/replay-unless-src?h=${encodeURIComponent('region=sin;state=s1')}`, `web.${domain}`)
    assert.equal(toSin.json().machine, 'web2', 'replayed to the sin Machine')
    assert.match(toSin.json().headers['fly-replay-src']!, /^instance=web1;region=ams;t=\d+;state=s1$/)

    const toInstance = await get(`/replay-unless-src?h=${encodeURIComponent('instance=web2')}`, `web.${domain}`)
    assert.equal(toInstance.json().machine, 'web2')
    const elsewhere = await get(`/replay-unless-src?h=${encodeURIComponent('elsewhere=true')}`, `web.${domain}`)
    assert.equal(elsewhere.json().machine, 'web2', 'elsewhere excludes the replaying Machine')

    const json = await get(`/replay-json?b=${encodeURIComponent(JSON.stringify({ app: 'api', transform: { path: '/rewritten', set_headers: [{ name: 'x-set', value: 'v' }] } }))}`, `web.${domain}`)
    assert.equal(json.json().machine, 'api1', 'JSON form to another app of the org')
    assert.equal(json.json().url, '/rewritten')
    assert.equal(json.json().headers['x-set'], 'v')

    const post = await request(`http://127.0.0.1:${port}/replay-unless-src?h=${encodeURIComponent('region=sin')}`, { method: 'POST', body: 'payload', headers: { host: `web.${domain}` }, dispatcher: agent })
    assert.equal((await post.body.json() as Answer).body, 'payload', 'the body is replayed')

    const big = await request(`http://127.0.0.1:${port}/replay-unless-src?h=${encodeURIComponent('region=sin')}`, { method: 'POST', body: Buffer.alloc(1024 * 1024 + 1, 97), headers: { host: `web.${domain}` }, dispatcher: agent })
    assert.equal(big.statusCode, 413)
    assert.match(await big.body.text(), /exceeds 1048576 bytes and cannot be replayed/)
  })

  it('fly-replay fallback=force_self: with no target, the request goes back to the replaying Machine with fly-replay-failed (HTTP/1.1 and h2)', async () => {
    const path = `/replay-unless-src?h=${encodeURIComponent('instance=nowhere;fallback=force_self')}`
    const h1 = await get(path, `web.${domain}`)
    assert.equal(h1.json().machine, 'web1')
    assert.match(h1.json().headers['fly-replay-failed']!, /^instance=nowhere;app=web;region=;replay_source=web1;reason=no_candidate;elapsed_ms=\d+$/)
    const session = http2.connect(`http://127.0.0.1:${port}`)
    try {
      const body = await new Promise<string>((resolve, reject) => {
        const stream = session.request({ ':path': path, ':authority': `web.${domain}` })
        let data = ''
        stream.on('data', (d: Buffer) => { data += d.toString() })
        stream.on('end', () => resolve(data))
        stream.on('error', reject)
        stream.end()
      })
      const answer = JSON.parse(body) as Answer
      assert.equal(answer.machine, 'web1')
      assert.match(answer.headers['fly-replay-failed']!, /reason=no_candidate/)
    } finally { session.close() }
  })

  it('client routing headers: fly-force-instance-id, fly-prefer-region, fly-prefer-instance-id', async () => {
    assert.equal((await get('/', `web.${domain}`, { 'fly-force-instance-id': 'web2' })).json().machine, 'web2')
    assert.equal((await get('/', `web.${domain}`, { 'fly-prefer-region': 'sin' })).json().machine, 'web2')
    assert.equal((await get('/', `web.${domain}`, { 'fly-prefer-region': 'nowhere' })).json().machine, 'web1', 'prefer falls back to the nearest')
    const missing = await get('/', `web.${domain}`, { 'fly-prefer-instance-id': 'gone' })
    assert.equal(missing.json().headers['fly-preferred-instance-unavailable'], 'gone')
    const forced = await get('/', `web.${domain}`, { 'fly-force-instance-id': 'gone' })
    assert.equal(forced.status, 503, 'force never falls back')
  })

  it('follows RouteSource changes within a second: new Machines, removals, new ports', async () => {
    harness.source.update('web1', { cordoned: true })
    assert.equal((await get('/', `web.${domain}`)).json().machine, 'web2', 'a cordoned Machine gets no traffic')
    harness.source.update('web1', { cordoned: false })
    assert.equal((await get('/', `web.${domain}`)).json().machine, 'web1')

    const newPort = await freePort()
    await harness.machine(machineRoute({ machineId: 'late1', app: 'late', address: loopbackAddress(), services: [httpService(newPort)] }))
    const started = Date.now()
    await proxy.listening(newPort, 1000)
    assert.ok(Date.now() - started < 1000)
    assert.equal((await get('/', 'anything', {}, newPort)).json().machine, 'late1', 'the only app on a port takes any Host')
    harness.source.remove('late1')
    await waitFor(async () => { try { await get('/', 'anything', {}, newPort); return false } catch { return true } }, 1000, 'the port to close')
  })

  it('a Machine that refuses connections: the request is retried on another Machine and the Machine leaves rotation briefly; with none, a 502, not a hang', async () => {
    // The closest Machine of `retry` is down (its process is gone); requests still succeed.
    harness.source.upsert(machineRoute({ machineId: 'r-dead', app: 'retry', address: loopbackAddress(), services: [httpService(port)] }))
    await harness.machine(machineRoute({ machineId: 'r-live', app: 'retry', address: loopbackAddress(), services: [httpService(port)], hostId: 'host-far' }))
    for (let i = 0; i < 3; i++) {
      const res = await get('/', `retry.${domain}`)
      assert.equal(res.status, 200)
      assert.equal(res.json().machine, 'r-live')
    }
    assert.equal(proxy.metrics.app('retry').upstreamErrors, 1, 'after the first refusal the Machine is out of rotation for a while')

    harness.source.upsert(machineRoute({ machineId: 'dead1', app: 'dead', address: loopbackAddress(), services: [httpService(port)] }))
    const res = await get('/', `dead.${domain}`)
    assert.equal(res.status, 502)
    assert.match(res.text, /could not connect to the Machine dead1 \(ECONNREFUSED\)/)
    assert.ok(proxy.metrics.app('dead').upstreamErrors >= 1)
    harness.source.remove('dead1')
    harness.source.remove('r-dead')
  })

  it('gives back every unit of load it took: all Machines at 0 once clients are done', async () => {
    await waitFor(() => {
      const loads = [...proxy.metrics.machineLoads()]
      return loads.length > 0 && loads.every((m) => m.load === 0)
    }, 3000, `every Machine at load 0, got ${JSON.stringify([...proxy.metrics.machineLoads()].filter((m) => m.load !== 0))}`)
  })

  it('serves Prometheus metrics', async () => {
    const res = await request(`http://127.0.0.1:${proxy.metricsAddress!.port}/metrics`)
    const text = await res.body.text()
    assert.match(text, /hangar_proxy_requests_total\{app="web"\} \d+/)
    assert.match(text, /hangar_proxy_connections_total\{app="secure"\} \d+/)
    assert.match(text, /hangar_proxy_machine_load/)
    assert.match(text, /hangar_proxy_replays_total\{app="web"\} [1-9]/)
    assert.match(text, /hangar_proxy_refusals_total\{app="web",reason="no_machines"\} [1-9]/)
  })
})
