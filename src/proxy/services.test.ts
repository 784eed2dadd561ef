import { test } from 'node:test'
import assert from 'node:assert/strict'
import { isInvalidArgument } from '../core/index.js'
import { normaliseAutostop, normaliseService } from './services.js'

test('defaults: connections, soft 20, no hard limit, autostart on, autostop off', () => {
  const spec = normaliseService({ internal_port: 8080, ports: [{ port: 80, handlers: ['http'] }] })
  assert.deepEqual(spec.concurrency, { type: 'connections', softLimit: 20, hardLimit: Infinity })
  assert.equal(spec.autostart, true)
  assert.equal(spec.autostop, 'off')
  assert.equal(spec.minMachinesRunning, 0)
  assert.equal(spec.protocol, 'tcp')
  const port = spec.ports[0]!
  assert.deepEqual([port.startPort, port.endPort, port.handlers, port.forceHttps, port.proxyProtoVersion], [80, 80, ['http'], false, 1])
  assert.deepEqual(port.alpn, ['h2', 'http/1.1'])
})

test('ranges, limits, autostop forms, proxy_proto v2, response headers', () => {
  const spec = normaliseService({
    internal_port: 5432, autostop: 'suspend', autostart: false, min_machines_running: 2,
    concurrency: { type: 'requests', soft_limit: 30, hard_limit: 25 },
    ports: [{ start_port: 1000, end_port: 1009, handlers: ['proxy_proto'], proxy_proto_options: { version: 'v2' } }, { port: 443, handlers: ['tls', 'http'], http_options: { idle_timeout: 5, response: { pristine: true, headers: { 'x-a': 'b', server: false } } } }],
  })
  assert.deepEqual(spec.concurrency, { type: 'requests', softLimit: 25, hardLimit: 25 })
  assert.equal(spec.autostop, 'suspend')
  assert.equal(spec.autostart, false)
  assert.equal(spec.ports[0]!.endPort, 1009)
  assert.equal(spec.ports[0]!.proxyProtoVersion, 2)
  assert.equal(spec.ports[1]!.http.idleTimeoutMs, 5000)
  assert.equal(spec.ports[1]!.http.pristine, true)
  assert.deepEqual(spec.ports[1]!.http.responseHeaders, [{ name: 'x-a', value: 'b' }, { name: 'server', value: false }])
  assert.deepEqual([false, true, 'off', 'stop', 'suspend', undefined].map((v) => normaliseAutostop(v)), ['off', 'stop', 'off', 'stop', 'suspend', 'off'])
})

test('invalid services are typed errors naming the field', () => {
  const cases: Array<[unknown, RegExp]> = [
    [{ ports: [] }, /internal_port/],
    [{ internal_port: 1, ports: [{ port: 70000 }] }, /ports\[0\]\.port/],
    [{ internal_port: 1, ports: [{ start_port: 10, end_port: 5 }] }, /end_port/],
    [{ internal_port: 1, ports: [{ start_port: 1, end_port: 5000 }] }, /at most/],
    [{ internal_port: 1, ports: [{ port: 1, handlers: ['gopher'] }] }, /unknown handler/],
    [{ internal_port: 1, ports: [{ port: 1, handlers: ['pg_tls', 'http'] }] }, /pg_tls/],
    [{ internal_port: 1, concurrency: { type: 'bytes' } }, /concurrency.type/],
    [{ internal_port: 1, concurrency: { soft_limit: -1 } }, /soft_limit/],
    [{ internal_port: 1, autostop: 'later' }, /autostop/],
    [{ internal_port: 1, ports: [{ port: 1 }, {}] }, /ports\[1\]/],
  ]
  for (const [service, message] of cases) {
    assert.throws(() => normaliseService(service as never), (err: unknown) => isInvalidArgument(err) && message.test((err as Error).message), JSON.stringify(service))
  }
})
