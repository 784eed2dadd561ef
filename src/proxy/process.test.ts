import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isInvalidArgument, silentLogger } from '../core/index.js'
import { parseProxyArgs, runProxyProcess } from './process.js'

test('parseProxyArgs: every flag, both spellings, and typed errors', () => {
  const flags = parseProxyArgs(['--region', 'ams', '--host-id=h1', '--domain', 'apps.example', '--ca-dir', '/tmp/ca', '--listen', '127.0.0.1',
    '--port-map', '443:8443,80:8080', '--ports', '80,443', '--autostop-interval', '2s', '--queue-max', '10', '--queue-wait', '500ms',
    '--start-timeout', '1m', '--metrics', '127.0.0.1:9091', '--max-header-bytes', '4096', '--routes-file', 'r.json'])
  assert.deepEqual(flags, {
    region: 'ams', hostId: 'h1', domain: 'apps.example', caDir: '/tmp/ca', listenHost: '127.0.0.1', portMap: { 443: 8443, 80: 8080 },
    ports: [80, 443], autostopIntervalMs: 2000, queueMax: 10, queueWaitMs: 500, startTimeoutMs: 60_000,
    metrics: { host: '127.0.0.1', port: 9091 }, maxHeaderBytes: 4096, routesFile: 'r.json',
    backhaulListen: undefined, clusterCaDir: undefined, backhaulCert: undefined, backhaulKey: undefined, peersFile: undefined,
  })
  for (const [argv, message] of [
    [['--host-id', 'h'], /--region is required/],
    [['--region', 'ams'], /--host-id is required/],
    [['--region', 'ams', '--host-id', 'h', '--bogus', '1'], /unknown option --bogus/],
    [['--region', 'ams', '--host-id', 'h', '--autostop-interval', 'soon'], /autostop-interval/],
    [['--region', 'ams', '--host-id', 'h', '--port-map', '443'], /port-map/],
    [['--region', 'ams', '--host-id', 'h', '--metrics', '9091'], /--metrics/],
    [['--region'], /--region needs a value/],
  ] as Array<[string[], RegExp]>) {
    assert.throws(() => parseProxyArgs(argv), (err: unknown) => isInvalidArgument(err) && message.test((err as Error).message), argv.join(' '))
  }
})

test('runProxyProcess with --routes-file serves, follows file changes, and stops on abort', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'hangar-proxy-process-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const backend = net.createServer((socket) => socket.pipe(socket))
  await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', () => resolve()))
  t.after(() => backend.close())
  const backendPort = (backend.address() as net.AddressInfo).port
  const probe = net.createServer()
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', () => resolve()))
  const publicPort = (probe.address() as net.AddressInfo).port
  await new Promise<void>((resolve) => probe.close(() => resolve()))
  const routes = join(dir, 'routes.json')
  const machine = {
    machineId: 'm1', app: 'echo', org: 'o', region: 'ams', hostId: 'h1', state: 'started', instanceId: 'i', address: '127.0.0.1',
    services: [{ internal_port: backendPort, ports: [{ port: publicPort }] }], checks: [], cordoned: false, processGroup: 'app', stopConfig: {}, primaryRegion: 'ams', updatedAt: 1,
  }
  await writeFile(routes, JSON.stringify({ machines: [machine] }))
  const abort = new AbortController()
  const flags = parseProxyArgs(['--region', 'ams', '--host-id', 'h1', '--ca-dir', join(dir, 'ca'), '--listen', '127.0.0.1', '--routes-file', routes])
  const running = runProxyProcess({ flags, logger: silentLogger, signal: abort.signal })
  const echo = async () => {
    for (let i = 0; i < 100; i++) {
      const reply = await new Promise<string>((resolve) => {
        const socket = net.connect(publicPort, '127.0.0.1', () => socket.write('hi'))
        socket.on('data', (d: Buffer) => { socket.destroy(); resolve(d.toString()) })
        socket.on('error', () => resolve(''))
        socket.on('close', () => resolve(''))
      })
      if (reply) return reply
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    return ''
  }
  assert.equal(await echo(), 'hi')
  await writeFile(routes, JSON.stringify({ machines: [{ ...machine, state: 'stopped', services: [{ ...machine.services[0], autostart: false }] }] }))
  let refused = false
  for (let i = 0; i < 100 && !refused; i++) {
    refused = await new Promise<boolean>((resolve) => {
      const socket = net.connect(publicPort, '127.0.0.1', () => socket.write('x'))
      socket.on('data', () => { socket.destroy(); resolve(false) })
      socket.on('close', () => resolve(true))
      socket.on('error', () => resolve(true))
    })
    if (!refused) await new Promise((resolve) => setTimeout(resolve, 20))
  }
  assert.ok(refused, 'a stopped Machine (autostart off) gets no connections once the file says so')
  abort.abort()
  await running
})
