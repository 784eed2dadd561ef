import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createSocket } from 'node:dgram'
import { connect } from 'node:net'
import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { startCatalogNode, CatalogClient, PLATFORM_SCHEMA_SQL, upsertApp, upsertMachine, deleteMachine, type CatalogNode, type MachineRow } from '../src/catalog/index.js'
import {
  DNS_TYPE, RCODE, DnsIndex, createCatalogDnsFeed, encodeQuery, encodeResponse, parseQuery, queryDns, startDnsServer, type DnsServer, type CatalogDnsFeed,
} from '../src/network/index.js'
import { silentLogger } from '../src/core/index.js'
import { eventually } from './kit/eventually.js'

// `.internal` DNS against a real catalog node over real sockets: rows written through the
// catalog's API become answers (and changes change them), busybox's nslookup reads them, big
// answers fall back to TCP, other names are forwarded, and random bytes never stop the server.

const CLI_MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url))

const sixpn = (network: number, machine: number) => `fdaa:0:${network.toString(16)}:0:1:0:${machine.toString(16)}:2`

function machineRow(id: string, app: string, n: number, over: Partial<MachineRow> = {}): MachineRow {
  return {
    id, name: id, app, org: 'personal', host_id: 'h1', region: 'ams', state: 'started', instance_id: 'v1', private_ip: sixpn(1, n), address: `172.16.0.${n}`,
    image: 'busybox', config: { image: 'busybox', metadata: {} }, services: [], checks: [], cordoned: false, process_group: 'app', created_at: 0, updated_at: 0, ...over,
  }
}

const nslookup = (args: string[]): Promise<{ code: number; stdout: string }> => new Promise((resolve) => {
  execFile('busybox', ['nslookup', ...args], { encoding: 'utf8', timeout: 10_000 }, (err, stdout) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout }))
})

const sorted = (list: Array<string | undefined>) => list.map(String).sort()

test('.internal DNS answers from a real catalog node', { timeout: 90_000 }, async (t) => {
  let node: CatalogNode | undefined
  let client: CatalogClient | undefined
  let feed: CatalogDnsFeed | undefined
  let server: DnsServer | undefined
  const upstream = createSocket('udp4')
  let upstreamSilent = false
  t.after(async () => {
    await server?.close()
    feed?.close()
    await client?.close()
    await node?.close()
    upstream.close()
  })
  // An upstream resolver for names outside .internal: answers every A question with 192.0.2.7.
  upstream.on('message', (message, rinfo) => {
    if (upstreamSilent) return
    const parsed = parseQuery(message)
    if (parsed.kind !== 'query') return
    upstream.send(encodeResponse(parsed.query, { rcode: 0, authoritative: false, recursionAvailable: true, answers: [{ owner: 'question', type: DNS_TYPE.A, ttl: 60, rdata: Buffer.from([192, 0, 2, 7]) }], authority: [] }, 512), rinfo.port, rinfo.address)
  })
  await new Promise<void>((resolve) => upstream.bind(0, '127.0.0.1', resolve))

  node = await startCatalogNode({ dbPath: ':memory:', schemaSql: PLATFORM_SCHEMA_SQL, logger: silentLogger })
  client = new CatalogClient(node.apiUrl)
  await client.transaction([
    upsertApp({ name: 'web', org: 'personal', network: '1', primary_region: 'ams', hostnames: [], created_at: 0, updated_at: 0 }),
    upsertApp({ name: 'other-org-app', org: 'other', network: '2', primary_region: 'ams', hostnames: [], created_at: 0, updated_at: 0 }),
    upsertMachine(machineRow('a1', 'web', 1, { config: { image: 'busybox', metadata: { role: 'primary' } } })),
    upsertMachine(machineRow('a2', 'web', 2, { region: 'sjc' })),
    upsertMachine(machineRow('a3', 'web', 3, { state: 'stopped' })),
    upsertMachine(machineRow('a4', 'web', 4, { config: { image: 'busybox', dns: { skip_registration: true } } })),
    upsertMachine(machineRow('b1', 'other-org-app', 1, { private_ip: sixpn(2, 1) })),
  ])
  const index = new DnsIndex()
  feed = createCatalogDnsFeed(client, index)
  server = await startDnsServer({ index, isReady: () => feed!.loaded, listen: [{ host: '127.0.0.1', port: 0 }], hostId: 'h1', region: 'ams', upstreams: [{ host: '127.0.0.1', port: (upstream.address()).port }], forwardTimeoutMs: 300 })
  const port = server.listening[0]!.port
  const ask = (name: string, type: keyof typeof DNS_TYPE = 'AAAA', transport: 'udp' | 'tcp' = 'udp') => queryDns(name, type, { server: '127.0.0.1', port, transport })
  await feed.ready

  await t.test('AAAA and TXT names answer from the catalog rows, started Machines only', async () => {
    const app = await ask('web.internal')
    assert.equal(app.rcode, RCODE.NOERROR)
    assert.equal(app.authoritative, true)
    assert.deepEqual(sorted(app.answers.map((a) => a.address)), [sixpn(1, 1), sixpn(1, 2)], 'a3 is stopped, a4 skips registration')
    assert.ok(app.answers.every((a) => a.ttl === 5))
    assert.deepEqual((await ask('a2.vm.web.internal')).answers.map((a) => a.address), [sixpn(1, 2)])
    assert.deepEqual((await ask('sjc.web.internal')).answers.map((a) => a.address), [sixpn(1, 2)])
    assert.deepEqual((await ask('primary.role.kv._metadata.web.internal')).answers.map((a) => a.address), [sixpn(1, 1)])
    assert.deepEqual((await ask('app.process.web.internal')).answers.length, 2)
    assert.deepEqual((await ask('top1.nearest.of.web.internal')).answers.map((a) => a.address), [sixpn(1, 1)], 'this host (h1) first')
    assert.deepEqual((await ask('vms.web.internal', 'TXT')).answers.map((a) => a.text), ['a1 ams,a2 sjc'])
    assert.deepEqual((await ask('all.vms.web.internal', 'TXT')).answers.map((a) => a.text), ['a1 ams,a2 sjc,a3 ams'])
    assert.deepEqual((await ask('regions.web.internal', 'TXT')).answers.map((a) => a.text), ['ams,sjc'])
    // The host's own (loopback) queries see every org; Machines see only theirs (dns-index tests, and the e2e test).
    assert.deepEqual((await ask('_apps.internal', 'TXT')).answers.map((a) => a.text), ['other-org-app,web'])
    const instances = (await ask('_instances.internal', 'TXT')).answers[0]!.text!.split(';')
    assert.ok(instances.includes(`instance=a1,app=web,ip=${sixpn(1, 1)},region=ams`), instances.join(';'))
    assert.equal((await ask('a3.vm.web.internal')).answers.length, 0)
    assert.equal((await ask('a3.vm.web.internal')).rcode, RCODE.NOERROR)
    assert.equal((await ask('web.internal', 'A')).rcode, RCODE.NOERROR, 'NODATA for A: resolvers asking both get the AAAA')
  })

  await t.test('unknown names are NXDOMAIN with the zone SOA', async () => {
    for (const name of ['nope.internal', 'zz.vm.web.internal', 'fra.web.internal', 'what.ever.else.web.internal']) {
      const answer = await ask(name)
      assert.equal(answer.rcode, RCODE.NXDOMAIN, name)
      assert.equal(answer.authority[0]?.type, DNS_TYPE.SOA, name)
    }
  })

  await t.test('busybox nslookup reads the answers', async () => {
    const aaaa = await nslookup(['-type=AAAA', 'web.internal', `127.0.0.1:${port}`])
    assert.equal(aaaa.code, 0, aaaa.stdout)
    assert.ok(aaaa.stdout.includes(`Address: ${sixpn(1, 1)}`) && aaaa.stdout.includes(`Address: ${sixpn(1, 2)}`), aaaa.stdout)
    const txt = await nslookup(['-type=TXT', 'vms.web.internal', `127.0.0.1:${port}`])
    assert.match(txt.stdout, /text = "a1 ams,a2 sjc"/)
    const missing = await nslookup(['nope.internal', `127.0.0.1:${port}`])
    assert.notEqual(missing.code, 0)
    assert.match(missing.stdout, /NXDOMAIN/)
  })

  await t.test('catalog changes reach the answers: a start, a stop, a new Machine, a destroy', async () => {
    await client!.transaction([upsertMachine(machineRow('a3', 'web', 3))])
    await eventually('a3 started in DNS', async () => (await ask('web.internal')).answers.length === 3)
    await client!.transaction([upsertMachine(machineRow('a1', 'web', 1, { state: 'stopped' })), upsertMachine(machineRow('a5', 'web', 5, { region: 'fra' }))])
    await eventually('a1 stopped and a5 in fra', async () => {
      const all = sorted((await ask('web.internal')).answers.map((a) => a.address))
      return JSON.stringify(all) === JSON.stringify(sorted([sixpn(1, 2), sixpn(1, 3), sixpn(1, 5)]))
    })
    assert.deepEqual((await ask('fra.web.internal')).answers.map((a) => a.address), [sixpn(1, 5)])
    await client!.transaction([deleteMachine('a5')])
    await eventually('a5 gone', async () => (await ask('a5.vm.web.internal')).rcode === RCODE.NXDOMAIN)
    assert.equal((await ask('fra.web.internal')).rcode, RCODE.NXDOMAIN)
  })

  await t.test('an answer too big for a datagram is truncated over UDP and whole over TCP', async () => {
    await client!.transaction(Array.from({ length: 40 }, (_, i) => upsertMachine(machineRow(`big${i}`, 'big', 100 + i))))
    await eventually('40 Machines of big', async () => (await ask('big.internal', 'AAAA', 'tcp')).answers.length === 40)
    const socket = createSocket('udp4')
    const udp = await new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no UDP answer')), 3000)
      socket.on('message', (message) => { clearTimeout(timer); resolve(message) })
      socket.send(encodeQuery(99, 'big.internal', DNS_TYPE.AAAA), port, '127.0.0.1')
    }).finally(() => socket.close())
    assert.ok(udp.length <= 512)
    assert.ok(udp.readUInt16BE(2) & 0x0200, 'TC set')
    const viaFallback = await ask('big.internal')
    assert.equal(viaFallback.truncated, false)
    assert.equal(viaFallback.answers.length, 40, 'queryDns retried over TCP')
    assert.equal((await ask('big.internal', 'AAAA', 'tcp')).answers.length, 40)
  })

  await t.test('other names are forwarded to the upstream; a silent upstream gives SERVFAIL', async () => {
    const forwarded = await ask('example.com', 'A')
    assert.equal(forwarded.rcode, RCODE.NOERROR)
    assert.deepEqual(forwarded.answers.map((a) => a.address), ['192.0.2.7'])
    assert.equal(forwarded.authoritative, false)
    upstreamSilent = true
    const failed = await ask('example.org', 'A')
    assert.equal(failed.rcode, RCODE.SERVFAIL)
    upstreamSilent = false
    assert.deepEqual((await ask('example.net', 'A', 'tcp')).rcode, RCODE.SERVFAIL, 'the upstream has no TCP: SERVFAIL, not a hang')
  })

  await t.test('random bytes over UDP and TCP never stop the server', async () => {
    const before = server!.stats()
    const socket = createSocket('udp4')
    try {
      await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve))
      const replies: Buffer[] = []
      socket.on('message', (message) => replies.push(message))
      const handled = () => server!.stats().queries - before.queries
      for (let sent = 1; sent <= 3000; sent++) {
        const packet = randomBytes(1 + Math.floor(Math.random() * 300))
        // Half look like queries (QR clear, opcode 0, one question) so they reach the parser's depths.
        if (sent % 2 === 0 && packet.length >= 12) { packet[2] = packet[2]! & 0x01; packet.writeUInt16BE(1, 4) }
        socket.send(packet, port, '127.0.0.1')
        // In batches, so the flood measures the parser rather than the socket buffer.
        if (sent % 100 === 0) await eventually('the server to take the batch', () => handled() >= sent * 0.8, 10_000, 5)
      }
      for (let i = 0; i < 20; i++) {
        await new Promise<void>((resolve) => {
          const tcp = connect({ host: '127.0.0.1', port }, () => { tcp.end(randomBytes(1 + Math.floor(Math.random() * 600))) })
          tcp.on('error', () => resolve())
          tcp.on('close', () => resolve())
          tcp.resume()
        })
      }
      const stats = server!.stats()
      assert.ok(stats.dropped > before.dropped && stats.malformed > before.malformed, JSON.stringify(stats))
      assert.equal(stats.failures, 0)
      for (const reply of replies) assert.ok(reply.readUInt16BE(2) & 0x8000, 'every reply is a response')
    } finally {
      socket.close()
    }
    const still = await ask('web.internal')
    assert.equal(still.rcode, RCODE.NOERROR, 'the server answers as before')
    assert.equal(still.answers.length, 2)
  })

  await t.test('`hangar dns` serves from the catalog and `hangar dns <name>` asks it', async () => {
    const cliPort = await new Promise<number>((resolve) => { const probe = createSocket('udp4'); probe.bind(0, '127.0.0.1', () => { const p = probe.address().port; probe.close(() => resolve(p)) }) })
    const child = spawn(process.execPath, [CLI_MAIN, 'dns', '--catalog', node!.apiUrl, '--listen', `127.0.0.1:${cliPort}`, '--no-forward', '--host-id', 'h1'], { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (chunk) => { stderr += chunk })
    const exited = new Promise((resolve) => child.once('exit', resolve))
    try {
      await eventually('hangar dns answering', async () => (await queryDns('web.internal', 'AAAA', { server: '127.0.0.1', port: cliPort, timeoutMs: 300 })).answers.length === 2, 20_000)
      assert.equal((await queryDns('example.com', 'A', { server: '127.0.0.1', port: cliPort })).rcode, RCODE.REFUSED, '--no-forward refuses other names')
      const lookup = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => execFile(process.execPath, [CLI_MAIN, 'dns', 'vms.web.internal', 'txt', '--server', '127.0.0.1', '--port', String(cliPort)], { encoding: 'utf8' }, (err, stdout, errText) => resolve({ code: err ? 1 : 0, stdout, stderr: errText })))
      assert.equal(lookup.code, 0, lookup.stderr)
      assert.equal(lookup.stdout.trim(), '"a2 sjc,a3 ams"')
      const missing = await new Promise<{ code: number; stderr: string }>((resolve) => execFile(process.execPath, [CLI_MAIN, 'dns', 'nope.internal', '--server', '127.0.0.1', '--port', String(cliPort)], { encoding: 'utf8' }, (err, _out, errText) => resolve({ code: err ? 1 : 0, stderr: errText })))
      assert.equal(missing.code, 1)
      assert.match(missing.stderr, /nope\.internal: NXDOMAIN/)
    } finally {
      child.kill('SIGTERM')
      await exited
    }
    assert.match(stderr, /dns listening/)
  })
})
