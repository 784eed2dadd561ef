import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { isInvalidArgument, silentLogger } from '../core/index.js'
import { parseProxyArgs, runProxyProcess } from './process.js'
import { hostIdOfCertificate, issueHostCertificate, loadBackhaulIdentity } from './backhaul-identity.js'
import { X509Certificate } from 'node:crypto'

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

test('parseProxyArgs: backhaul flags, IPv6 listen address, and what needs --cluster-ca', () => {
  const flags = parseProxyArgs(['--region', 'ams', '--host-id', 'h1', '--cluster-ca', '/etc/hangar/cluster-ca', '--backhaul-listen', '[fdaa:ffff:0:1::1]:4003',
    '--peers-file', 'peers.json', '--backhaul-cert', 'h1.crt', '--backhaul-key', 'h1.key'])
  assert.deepEqual(flags.backhaulListen, { host: 'fdaa:ffff:0:1::1', port: 4003 })
  assert.equal(flags.clusterCaDir, '/etc/hangar/cluster-ca')
  assert.equal(flags.peersFile, 'peers.json')
  assert.equal(flags.backhaulCert, 'h1.crt')
  assert.equal(flags.backhaulKey, 'h1.key')
  for (const [argv, message] of [
    [['--backhaul-listen', '127.0.0.1:4003'], /--backhaul-listen needs --cluster-ca/],
    [['--peers-file', 'p.json'], /--peers-file needs --cluster-ca/],
    [['--cluster-ca', 'ca', '--backhaul-listen', '4003'], /--backhaul-listen: "4003" is not host:port/],
    [['--cluster-ca', 'ca', '--backhaul-cert', 'c.crt'], /--backhaul-cert and --backhaul-key go together/],
  ] as Array<[string[], RegExp]>) {
    assert.throws(() => parseProxyArgs(['--region', 'ams', '--host-id', 'h', ...argv]), (err: unknown) => isInvalidArgument(err) && message.test((err as Error).message), argv.join(' '))
  }
})

test('backhaul identity: one cluster CA shared by hosts started together; certificates name their host', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'hangar-backhaul-identity-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const caDir = join(dir, 'ca')
  // Four hosts racing to create the CA in one directory end up with the same one.
  const identities = await Promise.all(['a', 'b', 'c', 'd'].map((hostId) => loadBackhaulIdentity({ caDir, hostId })))
  assert.equal(new Set(identities.map((i) => i.caPem)).size, 1)
  for (const identity of identities) {
    const cert = new X509Certificate(identity.certPem)
    assert.equal(cert.subject, `CN=${identity.hostId}`)
    assert.ok(cert.verify(new X509Certificate(identity.caPem).publicKey), 'signed by the cluster CA')
    assert.equal(hostIdOfCertificate({ subject: { CN: identity.hostId } } as never), identity.hostId)
  }
  assert.equal(hostIdOfCertificate({ subject: { CN: 'bad name!' } } as never), undefined)
  assert.equal(hostIdOfCertificate(undefined), undefined)
  // An operator-issued certificate must name this host.
  const { readFile } = await import('node:fs/promises')
  const issued = await issueHostCertificate(identities[0]!.caPem, await readFile(join(caDir, 'ca.key'), 'utf8'), 'other')
  await writeFile(join(dir, 'h.crt'), issued.certPem)
  await writeFile(join(dir, 'h.key'), issued.keyPem)
  await assert.rejects(loadBackhaulIdentity({ caDir, hostId: 'a', certFile: join(dir, 'h.crt'), keyFile: join(dir, 'h.key') }), (err: unknown) => isInvalidArgument(err) && /names host "other"/.test((err as Error).message))
  const own = await loadBackhaulIdentity({ caDir, hostId: 'other', certFile: join(dir, 'h.crt'), keyFile: join(dir, 'h.key') })
  assert.equal(own.certPem, issued.certPem)
  await assert.rejects(loadBackhaulIdentity({ caDir, hostId: 'a b' }), (err: unknown) => isInvalidArgument(err))
  await assert.rejects(loadBackhaulIdentity({ caDir: join(dir, 'none'), hostId: 'a', create: false }), (err: unknown) => isInvalidArgument(err) && /no cluster CA/.test((err as Error).message))
})
